//! The native command-line tool: image generation, package conversion and information,
//! and the benchmarks (the built-in model's evaluation is `webdiffusion-eval`; the browser
//! uses the library through its bindings).

mod bench;
mod bench_savings;
mod bench_step;
mod cli;
mod convert;
mod default_model;
mod fidelity;
mod generate;
mod package_info;

fn main() -> std::process::ExitCode {
    cli::main()
}
