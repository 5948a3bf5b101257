//! diffusers' VAE `Decoder` (models/autoencoders/vae.py) with its `UpDecoderBlock2D`s:
//! latents (after `post_quant_conv`) to an image. Its layers are the UNet's (`nn`,
//! `resnet`), run on activations held in channel chunks where they outgrow a binding.

use super::AutoencoderKlConfig;
use super::mid_block::{EPS, MidBlock, resnet_config};
use crate::error::Result;
use crate::gpu::Tensor;
use crate::models::feature_map::{ChunkPlan, FeatureMap};
use crate::models::nn::{Conv2d, GroupNorm};
use crate::models::resnet::{ResnetBlock2D, Upsample2D};
use crate::models::weights::Weights;

/// Resnets at one resolution, then (except in the last block) nearest 2x upsampling and a conv.
struct UpDecoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
}

impl UpDecoderBlock2D {
    fn load(w: &Weights, [in_channels, out_channels]: [usize; 2], c: &AutoencoderKlConfig, upsample: bool) -> Result<Self> {
        // One resnet more than the encoder's blocks have.
        let resnets = (0..c.layers_per_block + 1)
            .map(|i| {
                let input = if i == 0 { in_channels } else { out_channels };
                ResnetBlock2D::load(&w.at(&format!("resnets.{i}")), &resnet_config([input, out_channels], c.norm_num_groups))
            })
            .collect::<Result<_>>()?;
        let upsampler = upsample.then(|| Upsample2D::load(&w.at("upsamplers.0"), out_channels)).transpose()?;
        Ok(Self { resnets, upsampler })
    }

    fn forward<F: FeatureMap>(&self, x: &F) -> Result<F> {
        let mut h = x.clone();
        for resnet in &self.resnets {
            h = resnet.forward(&h, None)?;
        }
        match &self.upsampler {
            Some(upsampler) => upsampler.forward(&h),
            None => Ok(h),
        }
    }
}

pub(super) struct Decoder {
    /// The up blocks' widths, deepest first.
    widths: Vec<usize>,
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<UpDecoderBlock2D>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    pub fn load(w: &Weights, c: &AutoencoderKlConfig) -> Result<Self> {
        let reversed: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let up_blocks = reversed
            .iter()
            .enumerate()
            .map(|(i, &out)| {
                let input = if i == 0 { reversed[0] } else { reversed[i - 1] };
                UpDecoderBlock2D::load(&w.at(&format!("up_blocks.{i}")), [input, out], c, i + 1 < reversed.len())
            })
            .collect::<Result<_>>()?;
        let first = c.block_out_channels[0];
        Ok(Self {
            conv_in: Conv2d::load(&w.at("conv_in"), c.latent_channels, reversed[0], 3, 1, 1)?,
            mid_block: MidBlock::load(&w.at("mid_block"), reversed[0], c.norm_num_groups, c.mid_block_add_attention)?,
            up_blocks,
            conv_norm_out: GroupNorm::load(&w.at("conv_norm_out"), c.norm_num_groups, first, EPS)?,
            conv_out: Conv2d::load(&w.at("conv_out"), first, c.out_channels, 3, 1, 1)?,
            widths: reversed,
        })
    }

    /// `z [B, latent_channels, h, w]` to the image `[B, out_channels, H, W]`.
    pub fn forward(&self, z: &Tensor, plan: &ChunkPlan) -> Result<Tensor> {
        let z = plan.split("decoder.conv_in", z)?;
        let mut h = self.mid_block.forward(&self.conv_in.forward(&z)?, plan)?;
        for block in &self.up_blocks {
            h = block.forward(&h)?;
        }
        self.conv_out.forward(&self.conv_norm_out.forward(&h, true)?)?.whole("decoder.conv_out")
    }

    /// Checks from shapes alone that the plan holds every activation `forward` makes for
    /// latents of `[n, _, h, w]`: each up block's width at its resolution and, upsampled,
    /// at the next (a resnet's activations all have its output's shape, the next block's
    /// first input is the last upsampled one); the mid-block attention's and the image whole.
    pub fn check_sizes(&self, [n, _, mut h, mut w]: [usize; 4], plan: &ChunkPlan) -> Result<()> {
        plan.check("decoder.conv_in", [n, self.widths[0], h, w])?;
        self.mid_block.check_sizes([n, self.widths[0], h, w], plan)?;
        for (i, (block, &width)) in self.up_blocks.iter().zip(&self.widths).enumerate() {
            plan.check(&format!("decoder.up_blocks.{i}"), [n, width, h, w])?;
            if block.upsampler.is_some() {
                (h, w) = (2 * h, 2 * w);
                plan.check(&format!("decoder.up_blocks.{i}.upsamplers.0"), [n, width, h, w])?;
            }
        }
        plan.check_whole("decoder.conv_out", [n, self.conv_out.out_channels, h, w])
    }
}
