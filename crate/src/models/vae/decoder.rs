//! diffusers' VAE `Decoder` (models/autoencoders/vae.py) with its `UpDecoderBlock2D`s:
//! latents (after `post_quant_conv`) to an image.

use super::AutoencoderKlConfig;
use super::channel_chunks::ChannelChunks;
use super::layers::{ChunkPlan, Conv, Resnet, Upsample, group_norm};
use super::mid_block::{EPS, MidBlock};
use crate::error::Result;
use crate::gpu::Tensor;
use crate::models::nn::GroupNorm;
use crate::models::weights::Weights;

/// Resnets at one resolution, then (except in the last block) nearest 2x upsampling and a conv.
struct UpDecoderBlock2D {
    resnets: Vec<Resnet>,
    upsampler: Option<Upsample>,
}

impl UpDecoderBlock2D {
    fn load(w: &Weights, [in_channels, out_channels]: [usize; 2], c: &AutoencoderKlConfig, upsample: bool) -> Result<Self> {
        // One resnet more than the encoder's blocks have.
        let resnets = (0..c.layers_per_block + 1)
            .map(|i| {
                let input = if i == 0 { in_channels } else { out_channels };
                Resnet::load(&w.at(&format!("resnets.{i}")), [input, out_channels], c.norm_num_groups, EPS)
            })
            .collect::<Result<_>>()?;
        let upsampler = upsample.then(|| Upsample::load(&w.at("upsamplers.0"), out_channels)).transpose()?;
        Ok(Self { resnets, upsampler })
    }

    fn forward(&self, x: &ChannelChunks, plan: &ChunkPlan) -> Result<ChannelChunks> {
        let mut h = x.clone();
        for resnet in &self.resnets {
            h = resnet.forward(&h, plan)?;
        }
        match &self.upsampler {
            Some(upsampler) => upsampler.forward(&h, plan),
            None => Ok(h),
        }
    }

    fn check_sizes(&self, mut shape: [usize; 4], plan: &ChunkPlan) -> Result<[usize; 4]> {
        for resnet in &self.resnets {
            shape = resnet.check(shape, plan)?;
        }
        match &self.upsampler {
            Some(upsampler) => upsampler.check(shape, plan),
            None => Ok(shape),
        }
    }
}

pub(super) struct Decoder {
    conv_in: Conv,
    mid_block: MidBlock,
    up_blocks: Vec<UpDecoderBlock2D>,
    conv_norm_out: GroupNorm,
    conv_out: Conv,
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
            conv_in: Conv::same(&w.at("conv_in"), c.latent_channels, reversed[0], 3, 1)?,
            mid_block: MidBlock::load(&w.at("mid_block"), reversed[0], c.norm_num_groups, c.mid_block_add_attention)?,
            up_blocks,
            conv_norm_out: GroupNorm::load(&w.at("conv_norm_out"), c.norm_num_groups, first, EPS)?,
            conv_out: Conv::same(&w.at("conv_out"), first, c.out_channels, 3, 1)?,
        })
    }

    /// `z [B, latent_channels, h, w]` to the image `[B, out_channels, H, W]`.
    pub fn forward(&self, z: &Tensor, plan: &ChunkPlan) -> Result<Tensor> {
        let z = plan.split(self.conv_in.name(), z)?;
        let mut h = self.mid_block.forward(&self.conv_in.forward(&z, plan)?, plan)?;
        for block in &self.up_blocks {
            h = block.forward(&h, plan)?;
        }
        let image = self.conv_out.forward(&group_norm(&h, &self.conv_norm_out)?, plan)?;
        plan.whole(self.conv_out.name(), &image)
    }

    /// Walks the shapes `forward` would create, failing at the first one the plan cannot hold.
    pub fn check_sizes(&self, shape: [usize; 4], plan: &ChunkPlan) -> Result<[usize; 4]> {
        plan.check(self.conv_in.name(), shape)?;
        let mut shape = self.mid_block.check_sizes(self.conv_in.check(shape, plan)?, plan)?;
        for block in &self.up_blocks {
            shape = block.check_sizes(shape, plan)?;
        }
        let image = self.conv_out.check(shape, plan)?;
        plan.check_whole(self.conv_out.name(), image)?;
        Ok(image)
    }
}
