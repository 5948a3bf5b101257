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
        #[arg(long, conflicts_with = "embedded")]
        full: bool,
        /// Use the built-in model's layer shapes instead.
        #[arg(long)]
        embedded: bool,
        /// Only the kernels whose name contains this ("conv2d", "matmul", ...).
        #[arg(long, default_value = "")]
        only: String,
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
    /// One guided denoising step, again and again: wall time, the CPU's share, launches,
    /// bind groups, pipelines and buffers created per step, and (with --profile) the GPU
    /// time of each kernel where the adapter has timestamp queries.
    Step {
        #[arg(long)]
        model: std::path::PathBuf,
        /// Steps timed (after one warm-up step).
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Image side in pixels (the checkpoint's own size when omitted).
        #[arg(long)]
        size: Option<usize>,
        /// Guidance scale; above 1 runs classifier-free guidance (a batch of 2).
        #[arg(long, default_value_t = webdiffusion::pipeline::DEFAULT_GUIDANCE)]
        guidance: f32,
        /// Time one more step kernel by kernel.
        #[arg(long)]
        profile: bool,
    },
    /// Package size and final-image PSNR against the f32 folder for f16, q8, q4 and mixed.
    Fidelity(crate::fidelity::FidelityArgs),
    /// The step savings (DeepCache, ToDo) against whole steps: time per step and per image,
    /// launches, and PSNR and SSIM of the final images against the whole ones.
    Savings(crate::bench_savings::SavingsBenchArgs),
}

pub fn main() -> ExitCode {
    webdiffusion_cli::init_logging();
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
        Command::Bench { what: BenchTarget::Step { model, steps, size, guidance, profile } } => {
            crate::bench_step::run(&gpu, crate::bench_step::StepArgs { model: &model, steps, size, guidance, profile }).await
        }
        Command::Bench { what: BenchTarget::Kernels { full, embedded, only, iterations } } => {
            use webdiffusion::kernels::bench::Shapes;
            let shapes = if full {
                Shapes::Full
            } else if embedded {
                Shapes::Embedded
            } else {
                Shapes::Reduced
            };
            crate::bench::kernels(&gpu, shapes, &only, iterations).await
        }
        Command::Bench { what: BenchTarget::Fidelity(args) } => crate::fidelity::run(&gpu, args).await,
        Command::Bench { what: BenchTarget::Savings(args) } => crate::bench_savings::run(&gpu, args).await,
        Command::Convert(args) => crate::convert::run(*args),
    }
}
