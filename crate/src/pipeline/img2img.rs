//! Image to image as diffusers' `StableDiffusionImg2ImgPipeline`: the init image's VAE
//! sample (the generator's first draw), noised by the sampler's `add_noise` to the level of
//! the step that `strength` starts at (the second draw), then the usual loop from there.
//! A latent consistency model follows `LatentConsistencyModelImg2ImgPipeline` instead,
//! whose LCM schedule is picked by strength and run whole. Also the request checks and
//! the image encoding that inpainting shares.

use super::Request;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::image::RgbImage;
use crate::kernels::elementwise as ew;
use crate::models::vae::{AutoencoderKl, sample_latents};
use crate::schedulers::lcm::Lcm;
use crate::schedulers::{self, Noise, Scheduler, SchedulerConfig};

/// Checks what image to image and inpainting take from a request for a `width` x `height`
/// generation: strength in (0, 1], the init image (and the mask) of that size, a mask only
/// with an init image, no given latents with one.
pub(super) fn check_request(request: &Request, width: usize, height: usize) -> Result<()> {
    let bad = |option: &'static str, detail: String| Err(Error::request(option, detail));
    let Some(init) = &request.init_image else {
        return match request.mask {
            Some(_) => bad("mask", "a mask needs an init image to inpaint".into()),
            None => Ok(()),
        };
    };
    // NaN fails this too.
    if !(request.strength > 0.0 && request.strength <= 1.0) {
        return bad("strength", format!("strength must be in (0, 1], got {}", request.strength));
    }
    if request.latents.is_some() {
        return bad("latents", "given latents and an init image do not go together (the image gives the start)".into());
    }
    for (option, what, image) in [("init_image", "the init image", Some(init)), ("mask", "the mask", request.mask.as_ref())] {
        if let Some(image) = image.filter(|image| (image.width, image.height) != (width, height)) {
            return bad(option, format!("{what} is {}x{}, the generation {width}x{height}", image.width, image.height));
        }
    }
    Ok(())
}

/// What picks the sampler: the checkpoint's scheduler config (and its file, for errors),
/// and whether the model is a latent consistency model.
pub(super) struct Sampler<'a> {
    pub config: &'a SchedulerConfig,
    pub file: &'a str,
    pub consistency_model: bool,
}

impl Sampler<'_> {
    /// The sampler called `name` for `request`, and the index of its first step: image to
    /// image skips steps by strength, except for a latent consistency model, whose diffusers
    /// pipeline (`LatentConsistencyModelImg2ImgPipeline`) runs every step of an LCM schedule
    /// picked by strength.
    pub fn build(&self, request: &Request, name: &str) -> Result<(Box<dyn Scheduler>, usize)> {
        if self.consistency_model && request.init_image.is_some() && request.mask.is_none() {
            if name != "lcm" {
                let detail = format!("image to image with the {name} sampler (a latent consistency model's runs lcm)");
                return Err(Error::request("scheduler", detail));
            }
            let strength = python_float(request.strength);
            return Ok((Box::new(Lcm::with_strength(self.config, self.file, request.steps, strength)?), 0));
        }
        let mut scheduler = schedulers::by_name(name, self.config, self.file, request.steps)?;
        let begin = match request.init_image {
            Some(_) => begin_index(request.steps, request.strength, scheduler.order())?,
            None => 0,
        };
        scheduler.set_begin_index(begin)?;
        Ok((scheduler, begin))
    }
}

/// diffusers' `get_timesteps`: `steps - int(steps * strength)` steps of the schedule are
/// skipped, `order` timesteps each; the result is the index of the first step run.
pub(super) fn begin_index(steps: usize, strength: f32, order: usize) -> Result<usize> {
    let strength = python_float(strength);
    let run = ((steps as f64 * strength) as usize).min(steps);
    if run == 0 {
        return Err(Error::request(
            "strength",
            format!("strength {strength} of {steps} steps runs no step (int({steps} * {strength}) is 0)"),
        ));
    }
    Ok((steps - run) * order)
}

/// The strength as diffusers sees it: Python multiplies the number the user wrote as a
/// double (0.7 * 10 is 7 there, while the f32 nearest 0.7 gives 6.99...). The shortest
/// decimal that gives back the f32 is that number.
pub(super) fn python_float(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(value as f64)
}

/// `image` as the VAE's input `[1, 3, H, W]` in [-1, 1], as diffusers' image processor makes it.
pub(super) fn upload_image(gpu: &Gpu, image: &RgbImage) -> Result<Tensor> {
    gpu.upload_f32(&[1, 3, image.height, image.width], &image.to_model_input())
}

/// `scaling_factor * (mean + std * draw)`: a sample of `image`'s latent distribution with
/// one draw from `noise` (diffusers' `retrieve_latents` in "sample" mode).
pub(super) fn encode(vae: &AutoencoderKl, image: &Tensor, noise: &mut Noise) -> Result<Tensor> {
    let (mean, logvar) = vae.encode(image)?;
    let draw = noise.randn(mean.shape())?;
    ew::scale(image.gpu(), &sample_latents(&mean, &logvar, &draw)?, vae.scaling_factor())
}

/// The latents entering the loop at `begin`: the init image's latents, then noise at the
/// level of that step. Strength 1 also starts from the image (at the first timestep's
/// level), not from pure noise.
pub(super) fn start(vae: &AutoencoderKl, scheduler: &dyn Scheduler, begin: usize, image: &Tensor, noise: &mut Noise) -> Result<Tensor> {
    let image_latents = encode(vae, image, noise)?;
    let fresh = noise.randn(image_latents.shape())?;
    scheduler.add_noise(&image_latents, &fresh, begin)
}

#[cfg(test)]
mod tests {
    use super::begin_index;

    #[test]
    fn strength_picks_the_first_step_as_diffusers() {
        assert_eq!(begin_index(5, 0.6, 1).unwrap(), 2);
        assert_eq!(begin_index(5, 1.0, 1).unwrap(), 0);
        assert_eq!(begin_index(4, 0.75, 2).unwrap(), 2, "Heun skips two timesteps per step");
        // int(10 * 0.7) is 7 in Python: the f32 0.7 must not give 6.
        assert_eq!(begin_index(10, 0.7, 1).unwrap(), 3);
        assert!(begin_index(4, 0.2, 1).is_err(), "int(4 * 0.2) = 0 steps");
    }
}
