//! `webdiffusion generate`: one image from a package or a diffusers folder, written as PNG with
//! its parameters; optional starting latents in and final latents out (safetensors),
//! or an init image (image to image) and a mask (inpainting) as PNG.

use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};
use webdiffusion::gpu::Gpu;
use webdiffusion::image::{RgbImage, decode_png, encode_png, from_decoded};
use webdiffusion::loader::{DirFiles, WeightPrecision, model_name};
use webdiffusion::lora::{LoraFile, LoraSpec};
use webdiffusion::models::taesd::AutoencoderTiny;
use webdiffusion::open::ModelSource;
use webdiffusion::package::LoadProgress;
use webdiffusion::pipeline::{Control, Previewer, Progress, Request, StableDiffusion};
use webdiffusion::{Error, Result};

use crate::default_model;
use webdiffusion_cli::sampling::StepSavingArgs;

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// A package folder (`webdiffusion convert`) or a diffusers Stable Diffusion folder
    /// (model_index.json, unet/, vae/, ...); the built-in model when omitted.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Denoising steps: the model's own when omitted (diffusers' defaults: 4 for an LCM such
    /// as the built-in model, else 50).
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale (1 or less: no guidance).
    #[arg(long, default_value_t = webdiffusion::pipeline::DEFAULT_GUIDANCE)]
    guidance: f32,
    /// Sampler; the checkpoint's own when omitted.
    #[arg(long)]
    scheduler: Option<String>,
    /// Seed of torch's CPU generator, as in diffusers; random when omitted.
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    width: Option<usize>,
    #[arg(long)]
    height: Option<usize>,
    /// Starting latents: a safetensors file with one f32 tensor `latents` [1, 4, H/8, W/8].
    #[arg(long)]
    latents: Option<PathBuf>,
    /// Image to image: start from this PNG (its size unless --width/--height say so,
    /// which must then match).
    #[arg(long)]
    init_image: Option<PathBuf>,
    /// How much of the schedule image to image runs, in (0, 1] (diffusers' default 0.8).
    #[arg(long, requires = "init_image")]
    strength: Option<f32>,
    /// Inpainting: a PNG of the init image's size, white where to repaint.
    #[arg(long, requires = "init_image")]
    mask: Option<PathBuf>,
    /// Write the final latents (before VAE decoding) here, as tensor `latents`.
    #[arg(long)]
    save_latents: Option<PathBuf>,
    /// Skip this many text-encoder layers from the end.
    #[arg(long, default_value_t = 0)]
    clip_skip: usize,
    #[command(flatten)]
    savings: StepSavingArgs,
    /// Store weights as f16 on the GPU (half the memory).
    #[arg(long)]
    f16_weights: bool,
    /// Images to make, with seeds seed, seed+1, ... (files OUT-1.png, OUT-2.png, ...).
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Write a cheap preview of the latents after every step into this folder.
    #[arg(long)]
    preview_dir: Option<PathBuf>,
    /// Draw those previews with this TAESD (a diffusers AutoencoderTiny folder, such as
    /// madebyollin/taesd for SD 1.x and 2.x) instead of the model's own preview decoder or
    /// its latent-to-RGB map.
    #[arg(long, requires = "preview_dir")]
    preview_taesd: Option<PathBuf>,
    /// A LoRA (kohya-ss or diffusers/PEFT safetensors) at a scale (1 when omitted);
    /// repeat for several at once.
    #[arg(long = "lora", value_name = "FILE[:SCALE]")]
    loras: Vec<LoraSpec>,
    #[arg(long)]
    out: PathBuf,
}

fn read_latents(path: &Path) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let format = |detail: String| Error::Format { file: path.display().to_string(), detail };
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| format(e.to_string()))?;
    let view = tensors.tensor("latents").map_err(|_| format("it has no tensor named `latents`".into()))?;
    if view.dtype() != Dtype::F32 || view.shape().len() != 4 || view.shape()[0] != 1 {
        return Err(format(format!("`latents` must be f32 [1, C, H/f, W/f], got {:?} {:?}", view.dtype(), view.shape())));
    }
    Ok(bytemuck::pod_collect_to_vec(view.data()))
}

fn read_loras(specs: &[LoraSpec]) -> Result<Vec<(LoraFile, f32)>> {
    let read = |spec: &LoraSpec| {
        let bytes = std::fs::read(&spec.path).map_err(|e| Error::io(&spec.path, e))?;
        Ok((LoraFile::parse(&bytes, &spec.path.display().to_string())?, spec.scale))
    };
    specs.iter().map(read).collect()
}

fn read_png(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_png(&bytes).map_err(|e| match e {
        Error::Format { detail, .. } => Error::Format { file: path.display().to_string(), detail },
        other => other,
    })
}

fn write_latents(path: &Path, shape: &[usize], values: &[f32]) -> Result<()> {
    let bytes: &[u8] = bytemuck::cast_slice(values);
    let view = TensorView::new(Dtype::F32, shape.to_vec(), bytes).map_err(|e| Error::io(path, e))?;
    let file = safetensors::serialize([("latents", view)], None).map_err(|e| Error::io(path, e))?;
    std::fs::write(path, file).map_err(|e| Error::io(path, e))
}

pub async fn run(gpu: &Gpu, args: GenerateArgs) -> Result<()> {
    let loras = read_loras(&args.loras)?;
    let precision = if args.f16_weights { WeightPrecision::F16 } else { WeightPrecision::AsStored };
    let mut sd = match &args.model {
        Some(path) => {
            StableDiffusion::open(gpu, ModelSource::Folder(path), precision, &mut load_report(&path.display().to_string())).await?
        }
        None => {
            let built_in = default_model::source();
            StableDiffusion::open(gpu, ModelSource::Package(&built_in), precision, &mut load_report(default_model::NAME)).await?
        }
    };
    sd.set_loras(&loras.iter().map(|(lora, scale)| (lora, *scale)).collect::<Vec<_>>())?;
    let preview = match (&args.preview_dir, &args.preview_taesd) {
        (Some(dir), taesd) => {
            let previewer = match taesd {
                Some(folder) => {
                    let taesd = AutoencoderTiny::load(gpu, &DirFiles::new(folder)?, "", WeightPrecision::AsStored)?;
                    Previewer::taesd(taesd, sd.vae())?
                }
                None => Previewer::for_model(gpu, &sd).await?,
            };
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            Some(previewer)
        }
        (None, _) => None,
    };
    let first_seed = args.seed.unwrap_or_else(random_seed);
    let model = match &args.model {
        Some(path) => model_name(path),
        None => default_model::NAME.to_string(),
    };
    let steps = args.steps.unwrap_or(sd.default_steps());
    let latents = args.latents.as_deref().map(read_latents).transpose()?;
    let init_image = args.init_image.as_deref().map(read_png).transpose()?;
    let mask = args.mask.as_deref().map(read_png).transpose()?;
    for index in 0..args.count {
        let seed = first_seed + index;
        let request = Request {
            prompt: args.prompt.clone(),
            negative_prompt: args.negative_prompt.clone(),
            steps,
            guidance_scale: args.guidance,
            scheduler: args.scheduler.clone(),
            seed,
            width: args.width,
            height: args.height,
            latents: latents.clone(),
            init_image: init_image.clone(),
            strength: args.strength.unwrap_or(Request::default().strength),
            mask: mask.clone(),
            clip_skip: args.clip_skip,
            deep_cache: args.savings.deep_cache(),
            token_merge: args.savings.token_merge,
        };
        let name = |path: &Path| numbered(path, index, args.count);
        let mut write_preview = |progress: &Progress| -> Result<Control> {
            if let (Some(preview), Some(dir)) = (&preview, &args.preview_dir) {
                let rgb = preview.render(sd.vae(), &progress.preview_latents()?)?;
                let image = from_decoded(&pollster::block_on(rgb.to_vec())?, rgb.shape())?;
                let file = name(&dir.join(format!("step-{:03}.png", progress.done)));
                std::fs::write(&file, encode_png(&image[0], None)?).map_err(|e| Error::io(&file, e))?;
            }
            Ok(Control::Continue)
        };
        let generation = sd.generate_with(&request, &mut write_preview)?;
        if let Some(path) = &args.save_latents {
            write_latents(&name(path), generation.latents.shape(), &generation.latents.to_vec().await?)?;
        }
        let image = from_decoded(&generation.image.to_vec().await?, generation.image.shape())?;
        let png = encode_png(&image[0], Some(&generation.parameters(&request, &model, sd.model_hash())))?;
        let out = name(&args.out);
        std::fs::write(&out, png).map_err(|e| Error::io(&out, e))?;
        let mut start = if request.latents.is_some() { "given latents".to_string() } else { format!("seed {seed}") };
        if request.init_image.is_some() {
            start.push_str(&format!(", strength {}", request.strength));
        }
        eprintln!(
            "wrote {} ({}x{}, {} {} steps, {start})",
            out.display(),
            generation.width,
            generation.height,
            generation.scheduler,
            request.steps
        );
    }
    Ok(())
}

/// A package's loading progress on stderr every 10%.
fn load_report(name: &str) -> impl FnMut(&LoadProgress) {
    let name = name.to_string();
    let mut shown = 0;
    move |progress: &LoadProgress| {
        let percent = progress.done * 100 / progress.total.max(1);
        if percent >= shown + 10 || progress.done == progress.total {
            shown = percent;
            eprintln!("loading {name}: {percent}% of {} MiB", progress.total >> 20);
        }
    }
}

/// `path` itself for a single image, else `stem-<index+1>.ext`.
fn numbered(path: &Path, index: u64, count: u64) -> PathBuf {
    if count == 1 {
        return path.to_path_buf();
    }
    let stem = path.file_stem().map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{}.{}", index + 1, ext.to_string_lossy()),
        None => format!("{stem}-{}", index + 1),
    };
    path.with_file_name(name)
}

/// A seed for runs that did not ask for one (printed, so the image can be repeated).
fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    (nanos as u64 ^ (nanos >> 64) as u64) % (1 << 32)
}
