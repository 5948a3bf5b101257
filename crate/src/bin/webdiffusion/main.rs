//! The native command-line tool: adapter information, kernel benchmarks, and
//! (as the models land) image generation.

#[cfg(not(target_arch = "wasm32"))]
mod bench;
#[cfg(not(target_arch = "wasm32"))]
mod bench_savings;
#[cfg(not(target_arch = "wasm32"))]
mod bench_step;
#[cfg(not(target_arch = "wasm32"))]
mod cli;
#[cfg(not(target_arch = "wasm32"))]
mod convert;
#[cfg(not(target_arch = "wasm32"))]
mod default_model;
#[cfg(not(target_arch = "wasm32"))]
mod fidelity;
#[cfg(not(target_arch = "wasm32"))]
mod generate;
#[cfg(not(target_arch = "wasm32"))]
mod image_metrics;
#[cfg(not(target_arch = "wasm32"))]
mod package_info;
#[cfg(not(target_arch = "wasm32"))]
mod quality;
#[cfg(not(target_arch = "wasm32"))]
mod step_saving_args;

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

// The browser uses the library through wasm-bindgen, not this binary.
#[cfg(target_arch = "wasm32")]
fn main() {}
