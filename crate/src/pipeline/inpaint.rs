//! Inpainting as diffusers' `StableDiffusionInpaintPipeline`. The mask is binarised
//! (`>= 0.5`), the masked image is the init image with the repaint region set to 0, and
//! the latent mask takes every `f`-th pixel (`F.interpolate`'s nearest). Then either an
//! inpainting UNet (9 input channels) sees `[latents, mask, masked image latents]` every
//! step, or an ordinary 4-channel UNet denoises everything and the known region is put
//! back after each step, noised to the next step's level with the initial noise.

use super::img2img::{encode, upload_image};
use crate::error::Result;
use crate::gpu::{Gpu, Tensor};
use crate::image::RgbImage;
use crate::kernels::{elementwise as ew, layout};
use crate::models::vae::AutoencoderKl;
use crate::schedulers::{Noise, Scheduler};

/// What inpainting adds to each step.
pub(super) enum Inpainting {
    /// An inpainting UNet: `[mask, masked image latents]`, doubled along the batch under
    /// guidance, appended to its input channels.
    Channels { extra: Tensor },
    /// A 4-channel UNet: `latents = keep * known + mask * latents` after each step, `keep`
    /// being `1 - mask` and `known` the init image's latents noised with `noise` (the
    /// initial noise) to the next step's level.
    Blend { mask: Tensor, keep: Tensor, image_latents: Tensor, noise: Tensor },
}

/// The pieces `start` needs from the pipeline.
pub(super) struct Setup<'a> {
    pub gpu: &'a Gpu,
    pub vae: &'a AutoencoderKl,
    pub scheduler: &'a dyn Scheduler,
    pub begin: usize,
    pub strength: f32,
    /// Whether the UNet takes the mask and masked image as extra input channels.
    pub inpainting_unet: bool,
    pub cfg: bool,
}

/// The latents entering the loop and what each step adds, from `init` and `mask`, drawing
/// from `noise` in diffusers' order: the init image's VAE sample (unless an inpainting UNet
/// starts from pure noise at strength 1), the initial noise, the masked image's VAE sample.
pub(super) fn start(setup: &Setup, init: &RgbImage, mask: &RgbImage, noise: &mut Noise) -> Result<(Tensor, Inpainting)> {
    let gpu = setup.gpu;
    let image = upload_image(gpu, init)?;
    // diffusers compares the strength with 1.0 exactly.
    let from_noise = setup.strength == 1.0;
    let image_latents = if setup.inpainting_unet && from_noise { None } else { Some(encode(setup.vae, &image, noise)?) };
    let latent_channels = setup.vae.config().latent_channels;
    let factor = setup.vae.downsampling_factor();
    let latent_shape = [1, latent_channels, init.height / factor, init.width / factor];
    let fresh = noise.randn(&latent_shape)?;
    let latents = match &image_latents {
        Some(image_latents) if !from_noise => setup.scheduler.add_noise(image_latents, &fresh, setup.begin)?,
        _ => ew::scale(gpu, &fresh, setup.scheduler.init_noise_sigma())?,
    };

    let binary = mask.to_binary_mask();
    let latent_mask = gpu.upload_f32(&[1, 1, latent_shape[2], latent_shape[3]], &nearest_downsample(&binary, init.width, factor))?;
    // A 4-channel UNet always has the image latents: they are what the blend puts back.
    let inpainting = match (setup.inpainting_unet, image_latents) {
        (false, Some(image_latents)) => {
            // diffusers encodes the masked image here too but never uses it: only its draw
            // matters, for the generator's later draws.
            noise.skip(&latent_shape);
            let kept = nearest_downsample(&binary, init.width, factor).into_iter().map(|m| 1.0 - m).collect::<Vec<f32>>();
            let keep = gpu.upload_f32(latent_mask.shape(), &kept)?;
            Inpainting::Blend { mask: latent_mask, keep, image_latents, noise: fresh }
        }
        _ => {
            let masked = gpu.upload_f32(image.shape(), &masked_image(&init.to_model_input(), &binary))?;
            let masked_latents = encode(setup.vae, &masked, noise)?;
            let extra = layout::concat(gpu, &[&latent_mask, &masked_latents], 1)?;
            let extra = if setup.cfg { layout::concat(gpu, &[&extra, &extra], 0)? } else { extra };
            Inpainting::Channels { extra }
        }
    };
    Ok((latents, inpainting))
}

impl Inpainting {
    /// The UNet's input at a step from the scaled latents (`[2, C, h, w]` under guidance).
    pub fn unet_input(&self, input: &Tensor) -> Result<Tensor> {
        match self {
            Self::Channels { extra } => layout::concat(input.gpu(), &[input, extra], 1),
            Self::Blend { .. } => Ok(input.clone()),
        }
    }

    /// The latents after `step`'s sampler update `latents`: for a 4-channel UNet, the known
    /// region put back at the level of the next step, or clean after the last.
    pub fn after_step(&self, scheduler: &dyn Scheduler, latents: &Tensor, step: usize) -> Result<Tensor> {
        let Self::Blend { mask, keep, image_latents, noise } = self else {
            return Ok(latents.clone());
        };
        let gpu = latents.gpu();
        let known = if step + 1 < scheduler.timesteps().len() {
            scheduler.add_noise(image_latents, noise, step + 1)?
        } else {
            image_latents.clone()
        };
        ew::add(gpu, &ew::mul(gpu, keep, &known)?, &ew::mul(gpu, mask, latents)?)
    }
}

/// `mask[..., ::factor, ::factor]` of a `width`-wide `[H, W]` mask.
fn nearest_downsample(mask: &[f32], width: usize, factor: usize) -> Vec<f32> {
    let height = mask.len() / width;
    (0..height).step_by(factor).flat_map(|y| (0..width).step_by(factor).map(move |x| mask[y * width + x])).collect()
}

/// `image * (mask < 0.5)` for an image `[3, H, W]` and a binary mask `[H, W]`.
fn masked_image(image: &[f32], mask: &[f32]) -> Vec<f32> {
    image.iter().zip(mask.iter().cycle()).map(|(&v, &m)| if m < 0.5 { v } else { 0.0 }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latent_mask_takes_every_factor_th_pixel() {
        // 4x4, factor 2: pixels (0,0), (0,2), (2,0), (2,2).
        let mask: Vec<f32> = (0..16).map(|i| i as f32).collect();
        assert_eq!(nearest_downsample(&mask, 4, 2), vec![0.0, 2.0, 8.0, 10.0]);
        assert_eq!(masked_image(&[1.0, 2.0, 3.0, 4.0], &[1.0, 0.0]), vec![0.0, 2.0, 0.0, 4.0]);
    }
}
