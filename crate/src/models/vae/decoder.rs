//! diffusers' VAE `Decoder` (models/autoencoders/vae.py) with its `UpDecoderBlock2D`s:
//! latents (after `post_quant_conv`) to an image.

use super::mid_block::{EPS, MidBlock};
use super::{ActivationLimit, AutoencoderKlConfig};
use crate::error::Result;
use crate::gpu::Tensor;
use crate::loader::Weights;
use crate::models::nn::{Conv2d, GroupNorm, join};
use crate::models::resnet::{ResnetBlock2D, ResnetConfig, Upsample2D};

/// Resnets at one resolution, then (except in the last block) nearest 2x upsampling and a conv.
struct UpDecoderBlock2D {
    prefix: String,
    in_channels: usize,
    out_channels: usize,
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
}

impl UpDecoderBlock2D {
    fn load(w: &Weights, prefix: &str, [in_channels, out_channels]: [usize; 2], c: &AutoencoderKlConfig, upsample: bool) -> Result<Self> {
        // One resnet more than the encoder's blocks have.
        let resnets = (0..c.layers_per_block + 1)
            .map(|i| {
                let resnet = ResnetConfig {
                    in_channels: if i == 0 { in_channels } else { out_channels },
                    out_channels,
                    temb_channels: None,
                    groups: c.norm_num_groups,
                    eps: EPS,
                    output_scale_factor: 1.0,
                };
                ResnetBlock2D::load(w, &join(prefix, &format!("resnets.{i}")), &resnet)
            })
            .collect::<Result<_>>()?;
        let upsampler = upsample.then(|| Upsample2D::load(w, &join(prefix, "upsamplers.0"), out_channels)).transpose()?;
        Ok(Self { prefix: prefix.to_string(), in_channels, out_channels, resnets, upsampler })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for resnet in &self.resnets {
            h = resnet.forward(&h, None)?;
        }
        match &self.upsampler {
            Some(upsampler) => upsampler.forward(&h),
            None => Ok(h),
        }
    }

    /// The first resnet binds the widest tensor at the input resolution; the upsampler's
    /// output (and its conv's input and output) is four times the pixels.
    fn check_sizes(&self, [b, _, h, w]: [usize; 4], limit: &ActivationLimit) -> Result<[usize; 4]> {
        limit.check(&join(&self.prefix, "resnets.0"), [b, self.in_channels.max(self.out_channels), h, w])?;
        if self.upsampler.is_none() {
            return Ok([b, self.out_channels, h, w]);
        }
        let upsampled = [b, self.out_channels, 2 * h, 2 * w];
        limit.check(&join(&self.prefix, "upsamplers.0"), upsampled)?;
        Ok(upsampled)
    }
}

pub(super) struct Decoder {
    prefix: String,
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<UpDecoderBlock2D>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    pub fn load(w: &Weights, prefix: &str, c: &AutoencoderKlConfig) -> Result<Self> {
        let p = |name: &str| join(prefix, name);
        let reversed: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let up_blocks = reversed
            .iter()
            .enumerate()
            .map(|(i, &out)| {
                let input = if i == 0 { reversed[0] } else { reversed[i - 1] };
                UpDecoderBlock2D::load(w, &p(&format!("up_blocks.{i}")), [input, out], c, i + 1 < reversed.len())
            })
            .collect::<Result<_>>()?;
        let first = c.block_out_channels[0];
        Ok(Self {
            prefix: prefix.to_string(),
            conv_in: Conv2d::load(w, &p("conv_in"), c.latent_channels, reversed[0], 3, 1, 1)?,
            mid_block: MidBlock::load(w, &p("mid_block"), reversed[0], c.norm_num_groups, c.mid_block_add_attention)?,
            up_blocks,
            conv_norm_out: GroupNorm::load(w, &p("conv_norm_out"), c.norm_num_groups, first, EPS)?,
            conv_out: Conv2d::load(w, &p("conv_out"), first, c.out_channels, 3, 1, 1)?,
        })
    }

    /// `z [B, latent_channels, h, w]` to the image `[B, out_channels, H, W]`.
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self.mid_block.forward(&self.conv_in.forward(z)?)?;
        for block in &self.up_blocks {
            h = block.forward(&h)?;
        }
        self.conv_out.forward(&self.conv_norm_out.forward(&h, true)?)
    }

    /// Walks the shapes `forward` would create, failing at the first one over `limit`.
    pub fn check_sizes(&self, [b, _, h, w]: [usize; 4], limit: &ActivationLimit) -> Result<[usize; 4]> {
        let mut shape = [b, self.conv_in.out_channels, h, w];
        limit.check(&join(&self.prefix, "conv_in"), shape)?;
        shape = self.mid_block.check_sizes(shape, limit)?;
        for block in &self.up_blocks {
            shape = block.check_sizes(shape, limit)?;
        }
        let [b, _, h, w] = shape;
        let image = [b, self.conv_out.out_channels, h, w];
        limit.check(&join(&self.prefix, "conv_out"), image)?;
        Ok(image)
    }
}
