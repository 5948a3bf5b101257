//! `webdiffusion convert`: a diffusers folder or a single-file checkpoint (original
//! LDM / AUTOMATIC1111 layout), optionally with LoRAs merged in, into a webdiffusion
//! package (manifest, shards, tokenizer) with the storage types the policy and the
//! user's overrides give; `--plan` prints the sizes at every type without writing. The
//! steps are the library's (`packaging`); this reads the arguments and reports.

use std::collections::BTreeMap;
use std::path::PathBuf;

use webdiffusion::convert::SourceModel;
use webdiffusion::convert::checkpoint::CheckpointOptions;
use webdiffusion::convert::diffusers::COMPONENTS;
use webdiffusion::gpu::Gpu;
use webdiffusion::loader::LatentRgb;
use webdiffusion::lora::LoraSpec;
use webdiffusion::package::{DEFAULT_SHARD_BYTES, PackageSize, Policy, Quantization, WriteOptions, package_size};
use webdiffusion::packaging::{PackagingSource, complete_tokenizer, fit_preview_map, read_source, source_hash, write_package_folder};
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
    let PackagingSource { mut model, description } = read_source(&args.from, &args.checkpoint.options(), &args.loras)?;
    if args.plan {
        let shapes = model
            .components
            .iter()
            .flat_map(|(c, component)| component.tensors.iter().map(move |(n, t)| (c.as_str(), n.clone(), t.shape.clone())));
        println!("{}", plan_table(&shapes.collect::<Vec<_>>(), |q| policy(&args, q), args.shard_mib << 20)?);
        return Ok(());
    }
    let fallback = default_model::CLIP_VOCABULARY.map(|(file, bytes)| (file.trim_start_matches("tokenizer/"), bytes));
    complete_tokenizer(&mut model, args.tokenizer.as_deref(), &fallback)?;
    let to = args.to.as_deref().ok_or_else(|| Error::Format { file: "--to".into(), detail: "missing".into() })?;
    let quantization = quantization(&args)?;
    let options = WriteOptions {
        policy: policy(&args, quantization)?,
        shard_bytes: args.shard_mib << 20,
        source: format!("{description}, webdiffusion {} convert --quant {}", env!("CARGO_PKG_VERSION"), quantization.name()),
        // A merged LoRA makes another model than the one the hash names.
        model_hash: if args.loras.is_empty() { Some(source_hash(&args.from)?) } else { None },
        latent_rgb: preview_map(&model)?,
    };
    let manifest = write_package_folder(&model, &options, to)?;
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

/// The VAE's preview map, fitted on the first GPU adapter (lavapipe will do). Without
/// any adapter the package goes without one, and loaders fit it at load instead.
fn preview_map(model: &SourceModel) -> Result<Option<LatentRgb>> {
    match pollster::block_on(Gpu::new()) {
        Ok(gpu) => Ok(Some(pollster::block_on(fit_preview_map(&gpu, model))?)),
        Err(e) => {
            eprintln!("warning: no GPU to fit the preview map on ({e}); the package goes without one");
            Ok(None)
        }
    }
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
