//! One generation a step at a time. `generate_with` drives it in a loop; an async driver
//! (the browser page) steps it itself, so that it can wait for the GPU between steps,
//! keep the page responsive, bound the work queued ahead, and cancel between steps.

use super::deep_cache::DeepCache;
use super::inpaint::Inpainting;
use super::{Generation, Progress, Request, StableDiffusion};
use crate::error::{Error, Result};
use crate::gpu::Tensor;
use crate::kernels::{elementwise as ew, layout};
use crate::models::embeddings::guidance_scale_embedding;
use crate::models::transformer_2d::{TextKeysValues, TokenDownsampling};
use crate::models::unet_2d::{PassOptions, UNet2DConditionModel};
use crate::schedulers::{self, Noise, Scheduler};

/// A generation under way: the prompt encoded, the latents at the current step.
pub struct Denoising<'a> {
    sd: &'a StableDiffusion,
    scheduler: Box<dyn Scheduler>,
    scheduler_name: String,
    /// The steps still to run are `timesteps[done..]`, from the sampler's index `begin`.
    timesteps: Vec<f64>,
    begin: usize,
    done: usize,
    guidance_scale: f32,
    /// Classifier-free guidance: a batch of 2 through the UNet (not with LCM UNets, which
    /// take the guidance as an embedding).
    cfg: bool,
    context: Tensor,
    /// The UNet's cross-attention keys and values for `context`, computed once.
    context_keys_values: TextKeysValues,
    timestep_cond: Option<Tensor>,
    noise: Noise,
    latents: Tensor,
    inpainting: Option<Inpainting>,
    size: (usize, usize),
    deep_cache: DeepCache,
    /// What the last whole UNet evaluation kept for the reusing ones after it.
    deep_features: Option<Tensor>,
    token_merge: Option<f32>,
}

impl StableDiffusion {
    /// Checks `request`, encodes its prompts and prepares the starting latents; no step
    /// runs until `Denoising::step`.
    pub fn start_generation(&self, request: &Request) -> Result<Denoising<'_>> {
        let gpu = &self.gpu;
        let (width, height) = self.size(request)?;
        super::img2img::check_request(request, width, height)?;
        let deep_cache = request.deep_cache.unwrap_or(DeepCache::OFF);
        deep_cache.check(&self.unet)?;
        if let Some(factor) = request.token_merge {
            let vae_factor = self.vae_scale_factor();
            TokenDownsampling { factor, height: height / vae_factor, width: width / vae_factor }.check()?;
        }
        if self.is_inpainting_model() && request.mask.is_none() {
            return Err(Error::request("init_image", "this is an inpainting UNet: it needs an init image and a mask"));
        }
        let text_layers = self.text_encoder.config().num_hidden_layers;
        if request.clip_skip > text_layers {
            return Err(Error::request(
                "clip_skip",
                format!("{} is more than this text encoder's {text_layers} layers", request.clip_skip),
            ));
        }
        let scheduler_name = match &request.scheduler {
            Some(name) => name.clone(),
            None => self.default_scheduler()?.to_string(),
        };
        let sampler = super::img2img::Sampler {
            config: &self.scheduler_config,
            file: &self.scheduler_file,
            consistency_model: self.consistency_model,
        };
        let (scheduler, begin) = sampler.build(request, &scheduler_name)?;

        let guidance_embedding = self.unet.config().time_cond_proj_dim;
        let cfg = self.guided(request);
        let context = self.encode_prompts(request, cfg)?;
        let context_keys_values = self.unet.text_keys_values(&context)?;
        let timestep_cond = match guidance_embedding {
            Some(dim) => Some(guidance_scale_embedding(gpu, &[request.guidance_scale - 1.0], dim)?),
            None => None,
        };
        // One generator serves the initial noise (and the VAE samples) and then the
        // sampler, as in diffusers.
        let mut noise = Noise::new(gpu, request.seed);
        let (latents, inpainting) = self.start(request, scheduler.as_ref(), begin, cfg, (width, height), &mut noise)?;
        let timesteps = scheduler.timesteps()[begin..].to_vec();
        Ok(Denoising {
            sd: self,
            scheduler,
            scheduler_name,
            timesteps,
            begin,
            done: 0,
            guidance_scale: request.guidance_scale,
            cfg,
            context,
            context_keys_values,
            timestep_cond,
            noise,
            latents,
            inpainting,
            size: (width, height),
            deep_cache,
            deep_features: None,
            token_merge: request.token_merge,
        })
    }
}

impl Denoising<'_> {
    /// The steps this generation runs.
    pub fn total(&self) -> usize {
        self.timesteps.len()
    }

    /// The image's width and height.
    pub fn size(&self) -> (usize, usize) {
        self.size
    }

    /// Whether each step runs the UNet over a classifier-free guidance batch of 2.
    pub fn guided(&self) -> bool {
        self.cfg
    }

    /// The sampler that runs.
    pub fn scheduler_name(&self) -> &str {
        &self.scheduler_name
    }

    /// Records the next step's GPU work and reports it; `None` once every step has run.
    pub fn step(&mut self) -> Result<Option<Progress<'_>>> {
        let Some(&t) = self.timesteps.get(self.done) else { return Ok(None) };
        let (sd, gpu) = (self.sd, &self.sd.gpu);
        let step = self.begin + self.done;
        let input = if self.cfg { layout::concat(gpu, &[&self.latents, &self.latents], 0)? } else { self.latents.clone() };
        let input = self.scheduler.scale_model_input(&input, step)?;
        let input = match &self.inpainting {
            Some(inpainting) => inpainting.unet_input(&input)?,
            None => input,
        };
        let timesteps = UNet2DConditionModel::timesteps(&input, t as f32)?;
        let options = PassOptions {
            reuse: self.deep_cache.reuse(self.done, self.deep_features.as_ref()),
            token_merge: self.token_merge,
            text_keys_values: Some(&self.context_keys_values),
        };
        let (prediction, kept) = sd.unet.forward_with(&input, &timesteps, &self.context, self.timestep_cond.as_ref(), options)?;
        if kept.is_some() {
            self.deep_features = kept;
        }
        let prediction = if self.cfg {
            let [uncond, text] = [0, 1].map(|i| layout::narrow(gpu, &prediction, 0, i, 1));
            ew::axpby(gpu, 1.0 - self.guidance_scale, &uncond?, self.guidance_scale, &text?, None)?
        } else {
            prediction
        };
        self.latents = self.scheduler.step(&prediction, step, &self.latents, &mut self.noise)?;
        if let Some(inpainting) = &self.inpainting {
            self.latents = inpainting.after_step(self.scheduler.as_ref(), &self.latents, step)?;
        }
        self.done += 1;
        Ok(Some(Progress { done: self.done, total: self.total(), timestep: t, latents: &self.latents, scheduler: self.scheduler.as_ref() }))
    }

    /// Runs the steps left, then decodes.
    pub fn finish(mut self) -> Result<Generation> {
        while self.step()?.is_some() {}
        let sd = self.sd;
        let image = sd.vae.decode(&ew::scale(&sd.gpu, &self.latents, 1.0 / sd.vae.scaling_factor())?)?;
        let (width, height) = self.size;
        let sampler_display_name = schedulers::display_name(&self.scheduler_name, &sd.scheduler_config).to_string();
        Ok(Generation { latents: self.latents, image, scheduler: self.scheduler_name, sampler_display_name, width, height })
    }
}
