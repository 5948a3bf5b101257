//! Argument parsing and dispatch. Every failure is a message and a non-zero exit.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use webdiffusion::gpu::Gpu;

#[derive(Parser)]
#[command(name = "webdiffusion", version, about = "Text-to-image diffusion on WebGPU, natively")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the GPU adapter, its features and its limits.
    Info {
        /// Also load this package (timed) and print what it holds.
        #[arg(long)]
        model: Option<std::path::PathBuf>,
    },
    /// Generate an image from a prompt with a package or a diffusers Stable Diffusion folder.
    Generate(Box<crate::generate::GenerateArgs>),
    /// Convert a model into a webdiffusion package (f16, q8, q4 or mixed storage).
    Convert(Box<crate::convert::ConvertArgs>),
    /// Time the kernels.
    Bench {
        #[command(subcommand)]
        what: BenchTarget,
    },
}

#[derive(Subcommand)]
enum BenchTarget {
    /// Every kernel family at a few sizes: time per launch and GFLOP/s or GB/s.
    Kernels {
        /// Use full Stable Diffusion shapes (slow without a real GPU).
        #[arg(long)]
        full: bool,
        /// Launches timed per row (after one warm-up launch).
        #[arg(long, default_value_t = 5)]
        iterations: u32,
    },
    /// One generation with a package or a diffusers folder: time per denoising step, per
    /// step preview and for the VAE decode.
    Pipeline {
        #[arg(long)]
        model: std::path::PathBuf,
        #[arg(long, default_value_t = 4)]
        steps: usize,
        /// Image side in pixels (the checkpoint's own size when omitted).
        #[arg(long)]
        size: Option<usize>,
        /// Preview with this TAESD (AutoencoderTiny) folder instead of the linear map.
        #[arg(long)]
        taesd: Option<std::path::PathBuf>,
    },
    /// Generate the evaluation prompts (models/eval/prompts.json) and score colour, shape,
    /// position and size with a deterministic image analyser.
    Quality(crate::quality::QualityArgs),
    /// Package size and final-image PSNR against the f32 folder for f16, q8, q4 and mixed.
    Fidelity(crate::fidelity::FidelityArgs),
}

pub fn main() -> ExitCode {
    env_logger_init();
    let cli = Cli::parse();
    let result = match cli.command {
        // Converting opens a GPU only to fit the preview map, and goes on without one.
        Command::Convert(args) => crate::convert::run(*args),
        command => pollster::block_on(run_on_gpu(command)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run_on_gpu(command: Command) -> webdiffusion::Result<()> {
    let gpu = Gpu::new().await?;
    match command {
        Command::Info { model } => {
            println!("{}", gpu.info());
            match model {
                Some(model) => crate::package_info::run(&gpu, &model).await,
                None => Ok(()),
            }
        }
        Command::Generate(args) => crate::generate::run(&gpu, *args).await,
        Command::Bench { what: BenchTarget::Pipeline { model, steps, size, taesd } } => {
            crate::bench::pipeline(&gpu, &model, steps, size, taesd.as_deref()).await
        }
        Command::Bench { what: BenchTarget::Kernels { full, iterations } } => crate::bench::kernels(&gpu, full, iterations).await,
        Command::Bench { what: BenchTarget::Quality(args) } => crate::quality::run(&gpu, args).await,
        Command::Bench { what: BenchTarget::Fidelity(args) } => crate::fidelity::run(&gpu, args).await,
        Command::Convert(args) => crate::convert::run(*args),
    }
}

/// wgpu logs through `log`; without a logger its messages would vanish, so
/// print warnings and errors to stderr.
fn env_logger_init() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, metadata: &log::Metadata) -> bool {
            metadata.level() <= log::Level::Warn
        }
        fn log(&self, record: &log::Record) {
            if self.enabled(record.metadata()) {
                eprintln!("{}: {}", record.level(), record.args());
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    let _ = log::set_logger(&LOGGER).map(|()| log::set_max_level(log::LevelFilter::Warn));
}
