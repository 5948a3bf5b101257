//! `webdiffusion bench fidelity`: what each package storage type costs. The diffusers
//! folder is converted to an f16, a q8, a q4 and a mixed package in a temporary folder
//! (through the package writer, as `convert` does), each is loaded and run on a few
//! evaluation prompts and seeds, and its final images are compared with the f32 folder's:
//! package size per component and PSNR of the 8-bit images.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use webdiffusion::convert::diffusers::{COMPONENTS, read_diffusers};
use webdiffusion::gpu::Gpu;
use webdiffusion::image::RgbImage;
use webdiffusion::loader::{DirFiles, WeightPrecision, model_name};
use webdiffusion::package::{DEFAULT_SHARD_BYTES, Policy, Quantization, WriteOptions};
use webdiffusion::packaging::write_package_folder;
use webdiffusion::pipeline::{Request, StableDiffusion};
use webdiffusion::{Error, Result};

use webdiffusion_cli::image_metrics::{psnr, squared_error};
use webdiffusion_cli::prompts::PromptList;
use webdiffusion_cli::sampling::SamplingArgs;
use webdiffusion_cli::{generate_image, open_model};

#[derive(clap::Args)]
pub struct FidelityArgs {
    /// A diffusers folder: the f32 reference and the source of the packages.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Prompts taken from the evaluation list, evenly spread over it.
    #[arg(long, default_value_t = 4)]
    prompts: usize,
    /// Images per prompt, with seeds 0, 1, ...
    #[arg(long, default_value_t = 2)]
    seeds: u64,
    /// The storage types to measure.
    #[arg(long, value_delimiter = ',', default_value = "f16,q8,q4,mixed", value_parser = Quantization::NAMES)]
    quant: Vec<String>,
    /// PATTERN=TYPE (f32, f16, q8, q4) for tensors matching PATTERN in every package, as
    /// `convert --quant-override` takes it. Repeatable.
    #[arg(long)]
    quant_override: Vec<String>,
}

/// A folder removed with everything in it when dropped.
struct TempFolder(PathBuf);

impl Drop for TempFolder {
    fn drop(&mut self) {
        // Best effort: a leftover temporary folder is harmless.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A package written to `folder`: bytes per component's tensors and in all its files.
struct Written {
    component_bytes: BTreeMap<String, u64>,
    folder_bytes: u64,
}

fn write_to(folder: &Path, model: &webdiffusion::convert::SourceModel, policy: Policy) -> Result<Written> {
    let quantization = policy.quantization;
    let options = WriteOptions {
        policy,
        shard_bytes: DEFAULT_SHARD_BYTES,
        source: format!("{} (bench fidelity, {})", model.name, quantization.name()),
        model_hash: None,
        latent_rgb: None,
    };
    let manifest = write_package_folder(model, &options, folder)?;
    let mut component_bytes = BTreeMap::new();
    for tensor in &manifest.tensors {
        *component_bytes.entry(tensor.component.clone()).or_default() += tensor.length;
    }
    Ok(Written { component_bytes, folder_bytes: bytes_under(folder)? })
}

/// The bytes of every file under `folder`.
fn bytes_under(folder: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(folder).map_err(|e| Error::io(folder, e))? {
        let path = entry.map_err(|e| Error::io(folder, e))?.path();
        total += if path.is_dir() { bytes_under(&path)? } else { path.metadata().map_err(|e| Error::io(&path, e))?.len() };
    }
    Ok(total)
}

fn mib(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / (1 << 20) as f64)
}

async fn generate_all(sd: &StableDiffusion, requests: &[Request]) -> Result<Vec<RgbImage>> {
    let mut images = Vec::with_capacity(requests.len());
    for request in requests {
        images.push(generate_image(sd, request).await?);
    }
    Ok(images)
}

pub async fn run(gpu: &Gpu, args: FidelityArgs) -> Result<()> {
    let list = PromptList::builtin()?;
    let prompts = list.spread(args.prompts);
    let count = prompts.len();
    let mut requests = Vec::new();
    for seed in 0..args.seeds {
        for prompt in &prompts {
            requests.push(args.sampling.request(&prompt.prompt, seed));
        }
    }
    let files = DirFiles::new(&args.model)?;
    let name = model_name(&args.model);
    let model = read_diffusers(&files, &name)?;
    let reference = generate_all(&StableDiffusion::load(gpu, &files, WeightPrecision::AsStored)?, &requests).await?;

    let temp = TempFolder(std::env::temp_dir().join(format!("webdiffusion-fidelity-{}", std::process::id())));
    let columns: Vec<String> = COMPONENTS.iter().map(|c| format!("{c} MiB")).collect();
    println!("adapter: {} ({})", gpu.info().adapter, gpu.info().backend);
    println!(
        "model: {}, {} steps, guidance {}, {} images ({count} prompts x {} seeds)",
        args.model.display(),
        args.sampling.steps,
        args.sampling.guidance,
        requests.len(),
        args.seeds
    );
    println!("\n| storage | {} | weights MiB | package MiB | PSNR (all images) | worst image | max diff |", columns.join(" | "));
    println!("|---|{}---:|---:|---:|---:|---:|", "---:|".repeat(COMPONENTS.len()));
    let f32_bytes =
        |component: &str| model.components.get(component).map_or(0, |c| c.tensors.values().map(|t| 4 * t.element_count() as u64).sum());
    let f32_columns: Vec<String> = COMPONENTS.iter().map(|c| mib(f32_bytes(c))).collect();
    println!(
        "| f32 (the folder) | {} | {} | - | reference | | |",
        f32_columns.join(" | "),
        mib(COMPONENTS.iter().map(|c| f32_bytes(c)).sum())
    );
    for quantization in args.quant.iter().filter_map(|n| Quantization::from_name(n)) {
        let mut policy = Policy::new(quantization);
        for spec in &args.quant_override {
            policy = policy.with_override(spec)?;
        }
        let folder = temp.0.join(quantization.name());
        let written = write_to(&folder, &model, policy)?;
        let images = generate_all(&open_model(gpu, &folder).await?, &requests).await?;
        std::fs::remove_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
        let errors: Vec<(f64, u8)> = images.iter().zip(&reference).map(|(a, b)| squared_error(a, b)).collect();
        let pooled = errors.iter().map(|e| e.0).sum::<f64>() / errors.len() as f64;
        let worst = errors.iter().map(|e| e.0).fold(0.0, f64::max);
        let max = errors.iter().map(|e| e.1).max().unwrap_or(0);
        let sizes: Vec<String> = COMPONENTS.iter().map(|c| mib(written.component_bytes.get(*c).copied().unwrap_or(0))).collect();
        let overrides = if args.quant_override.is_empty() { String::new() } else { format!(" + {}", args.quant_override.join(", ")) };
        println!(
            "| {}{overrides} | {} | {} | {} | {} | {} | {max} |",
            quantization.name(),
            sizes.join(" | "),
            mib(written.component_bytes.values().sum()),
            mib(written.folder_bytes),
            psnr(pooled),
            psnr(worst)
        );
    }
    Ok(())
}
