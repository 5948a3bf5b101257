//! The native command-line tool: image generation, package conversion and information,
//! and the benchmarks and evaluations (the browser uses the library through its bindings).

mod bench;
mod bench_savings;
mod bench_step;
mod cli;
mod convert;
mod default_model;
mod fidelity;
mod generate;
mod image_metrics;
mod package_info;
mod quality;
mod step_saving_args;

fn main() -> std::process::ExitCode {
    cli::main()
}
