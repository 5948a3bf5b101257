//! `webdiffusion convert`: a diffusers folder or a single-file checkpoint (original
//! LDM / AUTOMATIC1111 layout), optionally with LoRAs merged in, into a webdiffusion
//! package (manifest, shards, tokenizer) with the storage types the policy and the
//! user's overrides give; `--plan` prints the sizes at every type without writing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use webdiffusion::convert::checkpoint::{CheckpointOptions, read_checkpoint};
use webdiffusion::convert::diffusers::{COMPONENTS, read_diffusers};
use webdiffusion::convert::{ComponentOnGpu, SourceModel, merge_lora};
use webdiffusion::gpu::Gpu;
use webdiffusion::loader::{DirFiles, LatentRgb, OpenFile, SafetensorsFile, WeightPrecision, file_hash, model_hash};
use webdiffusion::lora::{LoraFile, LoraSpec};
use webdiffusion::models::vae::AutoencoderKl;
use webdiffusion::package::{DEFAULT_SHARD_BYTES, PackageSize, Policy, Quantization, WriteOptions, package_size, write_package};
use webdiffusion::pipeline::fit_latent_rgb;
use webdiffusion::schedulers::Prediction;
use webdiffusion::{Error, Result};

use crate::default_model;

#[derive(clap::Args)]
pub struct ConvertArgs {
    /// A diffusers Stable Diffusion folder, or a single-file `.safetensors` checkpoint in
    /// the original LDM / AUTOMATIC1111 layout (SD 1.x or SD 2.x, detected).
    #[arg(long)]
    from: PathBuf,
    /// The package folder to write (created; it must not hold files already).
    #[arg(long, required_unless_present = "plan")]
    to: Option<PathBuf>,
    /// Storage of the quantizable weights: f16, q8, q4, or mixed (q8, with q4 for the UNet's 3x3 convs).
    #[arg(long, default_value = "f16", value_parser = Quantization::NAMES)]
    quant: String,
    /// Merge a LoRA (kohya-ss or diffusers/PEFT safetensors) into the weights at a scale
    /// (1 when omitted). Repeatable; applied in order.
    #[arg(long = "lora", value_name = "FILE[:SCALE]")]
    loras: Vec<LoraSpec>,
    /// A tokenizer folder whose `vocab.json` and `merges.txt` (CLIP's BPE vocabulary) the
    /// package gets; by default a diffusers folder's own, and for a checkpoint, which has
    /// none, the built-in model's copy of CLIP's vocabulary.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[command(flatten)]
    checkpoint: CheckpointArgs,
    /// Shard size in MiB.
    #[arg(long, default_value_t = DEFAULT_SHARD_BYTES >> 20, value_parser = clap::value_parser!(u64).range(1..=1024))]
    shard_mib: u64,
    /// Keep tensors matching this glob in f16 (`*` matches anything; `unet/*attn2*` limits
    /// it to a component). Repeatable.
    #[arg(long)]
    keep_f16: Vec<String>,
    /// PATTERN=TYPE (f32, f16, q8, q4) for tensors matching PATTERN; later ones win. Repeatable.
    #[arg(long)]
    quant_override: Vec<String>,
    /// Print the package size at every --quant type instead of writing it (from the
    /// weight files' headers alone).
    #[arg(long)]
    plan: bool,
}

/// What a single-file checkpoint cannot tell; the defaults are the released SD 1.x /
/// SD 2.x conventions.
#[derive(clap::Args)]
#[command(next_help_heading = "Checkpoint options")]
struct CheckpointArgs {
    /// What the UNet predicts: nothing in the file says, and SD 2.x 768-v models
    /// (stable-diffusion-2, -2-1) need v_prediction.
    #[arg(long, default_value = "epsilon", value_parser = ["epsilon", "v_prediction"])]
    prediction: String,
    /// UNet attention heads: one count for every level, or one per level (`5,10,20,20`).
    #[arg(long, value_delimiter = ',')]
    unet_heads: Option<Vec<usize>>,
    #[arg(long)]
    text_encoder_heads: Option<usize>,
    /// Groups of every GroupNorm in the UNet and VAE.
    #[arg(long)]
    norm_groups: Option<usize>,
    /// The latent size the UNet was trained at (images are 8 times larger).
    #[arg(long)]
    sample_size: Option<usize>,
    #[arg(long)]
    vae_scaling_factor: Option<f64>,
}

impl CheckpointArgs {
    fn options(&self) -> CheckpointOptions {
        CheckpointOptions {
            prediction: Some(if self.prediction == "v_prediction" { Prediction::VPrediction } else { Prediction::Epsilon }),
            unet_heads: self.unet_heads.clone(),
            text_encoder_heads: self.text_encoder_heads,
            norm_num_groups: self.norm_groups,
            sample_size: self.sample_size,
            vae_scaling_factor: self.vae_scaling_factor,
        }
    }
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io { path: path.display().to_string(), detail: e.to_string() }
}

fn folder_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn policy(args: &ConvertArgs, quantization: Quantization) -> Result<Policy> {
    let mut policy = Policy::new(quantization);
    for pattern in &args.keep_f16 {
        policy = policy.keep_f16(pattern);
    }
    for spec in &args.quant_override {
        policy = policy.with_override(spec)?;
    }
    Ok(policy)
}

fn quantization(args: &ConvertArgs) -> Result<Quantization> {
    Quantization::from_name(&args.quant).ok_or_else(|| Error::Format { file: "--quant".into(), detail: args.quant.clone() })
}

/// Reads the source's headers and configs only: each tensor is read from its file when
/// written (or merged with a LoRA), so a conversion holds about one tensor in memory.
pub fn run(args: ConvertArgs) -> Result<()> {
    let is_folder = args.from.is_dir();
    let (mut model, kind) = if is_folder {
        (read_diffusers(&DirFiles::new(&args.from)?, &folder_name(&args.from))?, "diffusers folder")
    } else {
        let file = SafetensorsFile::open(Arc::new(OpenFile::open(args.from.clone())?), args.from.display().to_string())?;
        (read_checkpoint(&file, &args.checkpoint.options())?, "checkpoint")
    };
    let mut source = format!("{} ({kind})", model.name);
    for spec in &args.loras {
        let bytes = std::fs::read(&spec.path).map_err(|e| io_error(&spec.path, e))?;
        merge_lora(&mut model, &LoraFile::parse(&bytes, &spec.path.display().to_string())?, spec.scale)?;
        source.push_str(&format!(" + LoRA {}:{}", folder_name(&spec.path), spec.scale));
    }
    if args.plan {
        let shapes = model
            .components
            .iter()
            .flat_map(|(c, component)| component.tensors.iter().map(move |(n, t)| (c.as_str(), n.clone(), t.shape.clone())));
        println!("{}", plan_table(&shapes.collect::<Vec<_>>(), |q| policy(&args, q), args.shard_mib << 20)?);
        return Ok(());
    }
    add_tokenizer(&mut model, args.tokenizer.as_deref())?;
    let to = args.to.as_deref().ok_or_else(|| Error::Format { file: "--to".into(), detail: "missing".into() })?;
    let quantization = quantization(&args)?;
    let options = WriteOptions {
        policy: policy(&args, quantization)?,
        shard_bytes: args.shard_mib << 20,
        source: format!("{source}, webdiffusion {} convert --quant {}", env!("CARGO_PKG_VERSION"), quantization.name()),
        // A merged LoRA makes another model than the one the hash names.
        model_hash: if args.loras.is_empty() { Some(source_hash(&args.from, is_folder)?) } else { None },
        latent_rgb: preview_map(&model)?,
    };
    write(&model, &options, to)
}

/// AUTOMATIC1111's model hash: of a folder's UNet weights file, or of a whole checkpoint.
fn source_hash(from: &Path, is_folder: bool) -> Result<String> {
    if is_folder { model_hash(&DirFiles::new(from)?) } else { file_hash(&OpenFile::open(from.to_path_buf())?) }
}

/// The VAE's preview map, fitted on the first GPU adapter (lavapipe will do). Without
/// any adapter the package goes without one, and loaders fit it at load instead.
fn preview_map(model: &SourceModel) -> Result<Option<LatentRgb>> {
    let gpu = match pollster::block_on(Gpu::new()) {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("warning: no GPU to fit the preview map on ({e}); the package goes without one");
            return Ok(None);
        }
    };
    let vae = AutoencoderKl::load(&gpu, &ComponentOnGpu::upload(&gpu, model, "vae")?, "vae", WeightPrecision::AsStored)?;
    Ok(Some(pollster::block_on(fit_latent_rgb(&gpu, &vae))?))
}

/// CLIP's BPE vocabulary from `--tokenizer`, else the source's, else (a checkpoint has
/// none) the built-in copy; the settings files (padding token, length) stay the
/// source's, since they differ by family.
fn add_tokenizer(model: &mut SourceModel, folder: Option<&Path>) -> Result<()> {
    if let Some(folder) = folder {
        for file in ["vocab.json", "merges.txt"] {
            let path = folder.join(file);
            model.tokenizer.insert(file.to_string(), std::fs::read(&path).map_err(|e| io_error(&path, e))?);
        }
    }
    for (file, bytes) in default_model::CLIP_VOCABULARY {
        let file = file.trim_start_matches("tokenizer/");
        model.tokenizer.entry(file.to_string()).or_insert_with(|| bytes.to_vec());
    }
    Ok(())
}

/// Writes the package into `to`, which must be new or empty: stale shards of another
/// package would otherwise sit beside the new manifest.
fn write(model: &SourceModel, options: &WriteOptions, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| io_error(to, e))?;
    if std::fs::read_dir(to).map_err(|e| io_error(to, e))?.next().is_some() {
        return Err(io_error(to, "the folder is not empty"));
    }
    let mut write_file = |path: &str, bytes: &[u8]| -> Result<()> {
        let file = to.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
        }
        std::fs::write(&file, bytes).map_err(|e| io_error(&file, e))
    };
    let manifest = write_package(model, options, &mut write_file)?;
    let mut by_type: BTreeMap<&str, u64> = BTreeMap::new();
    for tensor in &manifest.tensors {
        *by_type.entry(tensor.dtype.as_str()).or_default() += tensor.length;
    }
    let types: Vec<String> = by_type.iter().map(|(dtype, bytes)| format!("{dtype} {}", mib(*bytes))).collect();
    eprintln!(
        "wrote {}: {} tensors ({}), {} in {} shards",
        to.display(),
        manifest.tensors.len(),
        types.join(", "),
        mib(manifest.stream_bytes()),
        manifest.shards.len()
    );
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// One row per quantization: bytes per component, the total and the shard count.
fn plan_table(shapes: &[(&str, String, Vec<usize>)], policy: impl Fn(Quantization) -> Result<Policy>, shard_bytes: u64) -> Result<String> {
    let mut table = format!("| quant | {} | total | shards |\n|---|", COMPONENTS.join(" | "));
    table.push_str(&"---|".repeat(COMPONENTS.len() + 2));
    for name in Quantization::NAMES {
        let quantization = Quantization::from_name(name).ok_or_else(|| Error::Format { file: "--quant".into(), detail: name.into() })?;
        let size: PackageSize =
            package_size(shapes.iter().map(|(c, n, s)| (*c, n.as_str(), s.as_slice())), &policy(quantization)?, shard_bytes);
        let columns: Vec<String> = COMPONENTS.iter().map(|c| mib(size.component_bytes(c))).collect();
        table.push_str(&format!("\n| {name} | {} | {} | {} |", columns.join(" | "), mib(size.stream_bytes), size.shards));
    }
    Ok(table)
}
