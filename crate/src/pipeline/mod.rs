//! Text to image as diffusers' `StableDiffusionPipeline` does it: encode the prompt
//! and the negative prompt, start from seeded (or given) latents, run the sampler
//! with classifier-free guidance (or LCM's guidance embedding), decode with the VAE.
//! Image to image and inpainting (`StableDiffusionImg2ImgPipeline`,
//! `StableDiffusionInpaintPipeline`) change only where the loop starts and, for
//! inpainting, what each step sees or keeps: see `img2img` and `inpaint`.

mod deep_cache;
mod denoising;
mod img2img;
mod inpaint;
mod lora;
mod preview;
mod step_timing;

pub use deep_cache::DeepCache;
pub use denoising::Denoising;
use inpaint::Inpainting;
pub use preview::{LatentPreview, MIN_EXPLAINED, Previewer, check_taesd_fits, fit_latent_rgb};
pub use step_timing::{StepTimings, median_min_max};

use std::rc::Rc;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::image::RgbImage;
use crate::kernels::elementwise as ew;
use crate::loader::{ModelFiles, WeightPrecision, read_config};
use crate::models::clip::ClipTextModel;
use crate::models::taesd::AutoencoderTiny;
use crate::models::unet_2d::UNet2DConditionModel;
use crate::models::vae::AutoencoderKl;
use crate::schedulers::{self, Noise, Scheduler, SchedulerConfig};
use crate::tokenizer::ClipTokenizer;

/// What to generate. `Default` gives diffusers' defaults (50 steps, guidance 7.5,
/// the checkpoint's sampler, its native size, strength 0.8 for image to image).
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub guidance_scale: f32,
    /// A sampler name from `schedulers::NAMES`; `None` for the checkpoint's own.
    pub scheduler: Option<String>,
    pub seed: u64,
    /// The image size; with an init image, its size when `None` (and it must match when given).
    pub width: Option<usize>,
    pub height: Option<usize>,
    /// Image to image: start from this image, noised to `strength`.
    pub init_image: Option<RgbImage>,
    /// How much of the schedule image to image runs, in (0, 1]: 1 starts from the noisiest
    /// step (still from the image, unlike text to image).
    pub strength: f32,
    /// Inpainting (with `init_image`, of its size): white repaints, black keeps (grey
    /// from 128 repaints).
    pub mask: Option<RgbImage>,
    /// Starting latents `[1, C, H/f, W/f]` instead of seeded noise (diffusers' `latents=`).
    pub latents: Option<Vec<f32>>,
    /// Text-encoder layers to skip from the end (0: the last layer).
    pub clip_skip: usize,
    /// Reuse the UNet's deep features between steps (`None`: every step computes all of it).
    pub deep_cache: Option<DeepCache>,
    /// ToDo's token downsampling factor for self-attention at the latents' resolution
    /// (`models::transformer_2d::TokenDownsampling`); `None` or 1 keeps every token.
    pub token_merge: Option<f32>,
}

/// Denoising steps when none are asked for: diffusers' `StableDiffusionPipeline` default
/// (`StableDiffusion::default_steps` gives a model's own: 4 for an LCM).
pub const DEFAULT_STEPS: usize = 50;
/// Diffusers' guidance scale default, which every front end offers.
pub const DEFAULT_GUIDANCE: f32 = 7.5;
/// Diffusers' `LatentConsistencyModelPipeline` default steps.
const CONSISTENCY_MODEL_STEPS: usize = 4;

impl Default for Request {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: DEFAULT_STEPS,
            guidance_scale: DEFAULT_GUIDANCE,
            scheduler: None,
            seed: 0,
            width: None,
            height: None,
            init_image: None,
            strength: 0.8,
            mask: None,
            latents: None,
            clip_skip: 0,
            deep_cache: None,
            token_merge: None,
        }
    }
}

/// The result of one generation.
pub struct Generation {
    /// The final latents, before VAE decoding (diffusers' `output_type="latent"`).
    pub latents: Tensor,
    /// The decoded image `[1, 3, H, W]` in [-1, 1].
    pub image: Tensor,
    /// The sampler that ran.
    pub scheduler: String,
    /// Its name in AUTOMATIC1111's terms (`schedulers::display_name`), for `parameters`.
    pub sampler_display_name: String,
    pub width: usize,
    pub height: usize,
}

impl Generation {
    /// How the image was made, in the AUTOMATIC1111 `parameters` convention, so tools
    /// that read those PNGs can show and repeat it.
    /// `model_hash` is `loader::model_hash` (AUTOMATIC1111's short checkpoint hash).
    pub fn parameters(&self, request: &Request, model: &str, model_hash: Option<&str>) -> String {
        let mut text = request.prompt.clone();
        if !request.negative_prompt.is_empty() {
            text.push_str(&format!("\nNegative prompt: {}", request.negative_prompt));
        }
        let seed = if request.latents.is_some() { "given latents".to_string() } else { request.seed.to_string() };
        text.push_str(&format!(
            "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {seed}, Size: {}x{}",
            request.steps, self.sampler_display_name, request.guidance_scale, self.width, self.height,
        ));
        if let Some(hash) = model_hash {
            text.push_str(&format!(", Model hash: {hash}"));
        }
        text.push_str(&format!(", Model: {model}"));
        if request.init_image.is_some() {
            text.push_str(&format!(", Denoising strength: {}", request.strength));
        }
        if request.clip_skip > 0 {
            text.push_str(&format!(", Clip skip: {}", request.clip_skip + 1));
        }
        if let Some(cache) = request.deep_cache.filter(|c| c.interval > 1) {
            text.push_str(&format!(", DeepCache: interval {} branch {}", cache.interval, cache.branch));
        }
        if let Some(factor) = request.token_merge.filter(|&f| f != 1.0) {
            text.push_str(&format!(", ToDo factor: {factor}"));
        }
        text
    }
}

/// What a step callback sees: the latents after step `done` of `total`.
pub struct Progress<'a> {
    pub done: usize,
    pub total: usize,
    pub timestep: f64,
    pub latents: &'a Tensor,
    scheduler: &'a dyn Scheduler,
}

impl Progress<'_> {
    /// The sampler's estimate of the clean latents at this step, where it forms one;
    /// computed on asking (a launch at latent size), so steps nobody previews pay nothing.
    pub fn denoised(&self) -> Result<Option<Tensor>> {
        self.scheduler.denoised()
    }

    /// What a step preview shows: the clean estimate where the sampler has one (LCM's
    /// intermediate latents are that estimate noised again), else the latents.
    pub fn preview_latents(&self) -> Result<Tensor> {
        Ok(self.denoised()?.unwrap_or_else(|| self.latents.clone()))
    }
}

/// A step callback's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// Stop between steps; `generate_with` returns `Error::Cancelled`.
    Cancel,
}

#[derive(Deserialize)]
struct ModelIndex {
    #[serde(rename = "_class_name")]
    class_name: String,
}

#[derive(Deserialize)]
struct UNetSize {
    sample_size: Option<usize>,
}

/// A loaded Stable Diffusion model: a diffusers folder or a webdiffusion package.
pub struct StableDiffusion {
    gpu: Gpu,
    tokenizer: ClipTokenizer,
    text_encoder: ClipTextModel,
    unet: UNet2DConditionModel,
    vae: AutoencoderKl,
    /// A tiny decoder trained on this VAE for step previews (`preview_decoder/`), where
    /// the model ships one: no linear map reads some VAEs' latents.
    preview_decoder: Option<Rc<AutoencoderTiny>>,
    scheduler_config: SchedulerConfig,
    scheduler_file: String,
    sample_size: usize,
    /// A `LatentConsistencyModelPipeline` folder: its image to image is
    /// `LatentConsistencyModelImg2ImgPipeline`'s, which applies the strength in the sampler.
    consistency_model: bool,
    /// AUTOMATIC1111's short hash of the checkpoint, where the way in knew it (`open`).
    model_hash: Option<String>,
}

const SCHEDULER_CONFIG: &str = "scheduler/scheduler_config.json";
/// The optional component a model's previews decode with (an `AutoencoderTiny`, often
/// decoder-only); diffusers' pipelines do not list it and leave it alone.
pub const PREVIEW_DECODER: &str = "preview_decoder";

/// Whether `files` hold a preview decoder (`PREVIEW_DECODER`).
pub fn has_preview_decoder(files: &dyn ModelFiles) -> bool {
    files.exists(&crate::loader::component_file(PREVIEW_DECODER, "config.json"))
}

/// diffusers writes non-finite floats (`-Infinity`) and tracks which keys a file set;
/// `SchedulerConfig::from_json` handles both, plain serde does not.
fn scheduler_config(files: &dyn ModelFiles) -> Result<SchedulerConfig> {
    let bytes = files.read(SCHEDULER_CONFIG)?;
    let text = std::str::from_utf8(&bytes).map_err(|e| Error::Format { file: files.describe(SCHEDULER_CONFIG), detail: e.to_string() })?;
    SchedulerConfig::from_json(text, &files.describe(SCHEDULER_CONFIG))
}

const PIPELINES: [&str; 4] =
    ["StableDiffusionPipeline", "LatentConsistencyModelPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"];

impl StableDiffusion {
    /// Loads the model `files` holds: a diffusers folder, whose weights are uploaded in
    /// `precision`, or a loaded `package::Package`, whose tensors are on the GPU already
    /// in the package's storage types. Both go through the same name and shape checks.
    pub fn load(gpu: &Gpu, files: &dyn ModelFiles, precision: WeightPrecision) -> Result<Self> {
        let index: ModelIndex = read_config(files, "model_index.json")?;
        if !PIPELINES.contains(&index.class_name.as_str()) {
            return Err(Error::Unsupported { file: files.describe("model_index.json"), detail: format!("pipeline {}", index.class_name) });
        }
        let unet_size: UNetSize = read_config(files, "unet/config.json")?;
        let vae = AutoencoderKl::load(gpu, files, "vae", precision)?;
        let preview_decoder = if has_preview_decoder(files) {
            let decoder = AutoencoderTiny::load(gpu, files, PREVIEW_DECODER, precision)?;
            check_taesd_fits(&decoder, &vae)?;
            Some(Rc::new(decoder))
        } else {
            None
        };
        let sd = Self {
            gpu: gpu.clone(),
            tokenizer: ClipTokenizer::load(files, "tokenizer")?,
            text_encoder: ClipTextModel::load(gpu, files, "text_encoder", precision)?,
            unet: UNet2DConditionModel::load(gpu, files, "unet", precision)?,
            vae,
            preview_decoder,
            scheduler_config: scheduler_config(files)?,
            scheduler_file: files.describe(SCHEDULER_CONFIG),
            sample_size: unet_size.sample_size.unwrap_or(64),
            consistency_model: index.class_name == "LatentConsistencyModelPipeline",
            model_hash: None,
        };
        // The latents alone, or (inpainting UNets) with the mask and the masked image's latents.
        let (unet_in, latent) = (sd.unet.config().in_channels, sd.vae.config().latent_channels);
        if unet_in != latent && unet_in != 2 * latent + 1 {
            let detail =
                format!("UNet in_channels {unet_in} with {latent} latent channels (only {latent}, or {} to inpaint)", 2 * latent + 1);
            return Err(Error::Unsupported { file: files.describe("unet/config.json"), detail });
        }
        Ok(sd)
    }

    /// AUTOMATIC1111's short model hash (`loader::model_hash`), which images record, when
    /// the model was opened with `StableDiffusion::open`.
    pub fn model_hash(&self) -> Option<&str> {
        self.model_hash.as_deref()
    }

    pub(crate) fn with_model_hash(mut self, hash: Option<String>) -> Self {
        self.model_hash = hash;
        self
    }

    /// The steps diffusers' pipeline for this model draws with when none are asked for:
    /// 4 for a latent consistency model, else 50.
    pub fn default_steps(&self) -> usize {
        if self.consistency_model { CONSISTENCY_MODEL_STEPS } else { DEFAULT_STEPS }
    }

    /// Whether `request`'s steps run the UNet over a classifier-free guidance batch of 2
    /// (not with guidance 1 or less, nor with LCM UNets, which take the guidance as an
    /// embedding).
    pub fn guided(&self, request: &Request) -> bool {
        request.guidance_scale > 1.0 && self.unet.config().time_cond_proj_dim.is_none()
    }

    /// Whether the UNet is an inpainting UNet (mask and masked image as extra input
    /// channels): it needs an init image and a mask.
    pub fn is_inpainting_model(&self) -> bool {
        self.unet.config().in_channels != self.vae.config().latent_channels
    }

    /// The latent grid's downsampling factor (8 for SD).
    pub fn vae_scale_factor(&self) -> usize {
        self.vae.downsampling_factor()
    }

    /// The image size the checkpoint was trained at.
    pub fn default_size(&self) -> usize {
        self.sample_size * self.vae_scale_factor()
    }

    /// The sampler `generate` uses when the request names none.
    pub fn default_scheduler(&self) -> Result<&'static str> {
        schedulers::default_for(&self.scheduler_config).ok_or_else(|| Error::Unsupported {
            file: self.scheduler_file.clone(),
            detail: format!("scheduler class {:?} (choose one with --scheduler)", self.scheduler_config.class_name),
        })
    }

    pub fn vae(&self) -> &AutoencoderKl {
        &self.vae
    }

    pub fn preview_decoder(&self) -> Option<&Rc<AutoencoderTiny>> {
        self.preview_decoder.as_ref()
    }

    pub fn generate(&self, request: &Request) -> Result<Generation> {
        self.generate_with(request, &mut |_| Ok(Control::Continue))
    }

    /// `generate`, calling `on_step` after every step (for previews and progress;
    /// it may cancel).
    pub fn generate_with(&self, request: &Request, on_step: &mut dyn FnMut(&Progress) -> Result<Control>) -> Result<Generation> {
        let mut run = self.start_generation(request)?;
        while let Some(progress) = run.step()? {
            if on_step(&progress)? == Control::Cancel {
                return Err(Error::Cancelled { done: progress.done, total: progress.total });
            }
        }
        run.finish()
    }

    /// The latents entering the loop at `begin` and, for inpainting, what each step adds:
    /// seeded (or given) noise for text to image, else from the init image and mask.
    fn start(
        &self,
        request: &Request,
        scheduler: &dyn Scheduler,
        begin: usize,
        cfg: bool,
        (width, height): (usize, usize),
        noise: &mut Noise,
    ) -> Result<(Tensor, Option<Inpainting>)> {
        let gpu = &self.gpu;
        let factor = self.vae_scale_factor();
        let latent_shape = [1, self.vae.config().latent_channels, height / factor, width / factor];
        let (Some(init), mask) = (&request.init_image, &request.mask) else {
            let start = match &request.latents {
                Some(values) if values.len() != latent_shape.iter().product::<usize>() => {
                    let detail = format!("the given latents must be {latent_shape:?} for a {width}x{height} image");
                    return Err(Error::request("latents", detail));
                }
                Some(values) => gpu.upload_f32(&latent_shape, values)?,
                None => noise.randn(&latent_shape)?,
            };
            return Ok((ew::scale(gpu, &start, scheduler.init_noise_sigma())?, None));
        };
        let Some(mask) = mask else {
            let image = img2img::upload_image(gpu, init)?;
            return Ok((img2img::start(&self.vae, scheduler, begin, &image, noise)?, None));
        };
        let setup = inpaint::Setup {
            gpu,
            vae: &self.vae,
            scheduler,
            begin,
            strength: request.strength,
            inpainting_unet: self.is_inpainting_model(),
            cfg,
        };
        let (latents, inpainting) = inpaint::start(&setup, init, mask, noise)?;
        Ok((latents, Some(inpainting)))
    }

    /// `[negative; positive]` embeddings with guidance, else the prompt's alone.
    fn encode_prompts(&self, request: &Request, cfg: bool) -> Result<Tensor> {
        let mut prompts = Vec::new();
        if cfg {
            prompts.push(self.tokenizer.encode(&request.negative_prompt)?);
        }
        prompts.push(self.tokenizer.encode(&request.prompt)?);
        let ids = self.text_encoder.upload_ids(&prompts)?;
        self.text_encoder.encode(&ids, request.clip_skip)
    }

    /// The request's size; an init image's own when it names none.
    fn size(&self, request: &Request) -> Result<(usize, usize)> {
        let default = self.default_size();
        let (default_width, default_height) = request.init_image.as_ref().map_or((default, default), |image| (image.width, image.height));
        let (width, height) = (request.width.unwrap_or(default_width), request.height.unwrap_or(default_height));
        // The UNet halves the latent grid once per down block after the first.
        let multiple = self.vae_scale_factor() * (1 << (self.unet.config().block_out_channels.len() - 1));
        if width == 0 || height == 0 || width % multiple != 0 || height % multiple != 0 {
            return Err(Error::request(
                "width",
                format!("width and height must be positive multiples of {multiple}, got {width}x{height}"),
            ));
        }
        Ok((width, height))
    }
}
