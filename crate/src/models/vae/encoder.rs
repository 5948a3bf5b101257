//! diffusers' VAE `Encoder` (models/autoencoders/vae.py) with its `DownEncoderBlock2D`s:
//! image to the latent distribution's moments (mean and log-variance stacked on channels).

use super::AutoencoderKlConfig;
use super::channel_chunks::ChannelChunks;
use super::layers::{ChunkPlan, Conv, Resnet, group_norm};
use super::mid_block::{EPS, MidBlock};
use crate::error::Result;
use crate::gpu::Tensor;
use crate::models::nn::GroupNorm;
use crate::models::weights::Weights;

/// The encoder's downsamplers pad only bottom and right, then convolve with stride 2.
const DOWNSAMPLE_PADDING: [usize; 4] = [0, 1, 0, 1];

/// Resnets at one resolution, then (except in the last block) a stride-2 downsampler.
struct DownEncoderBlock2D {
    resnets: Vec<Resnet>,
    /// diffusers' `Downsample2D` with padding 0: only its conv.
    downsampler: Option<Conv>,
}

impl DownEncoderBlock2D {
    fn load(w: &Weights, [in_channels, out_channels]: [usize; 2], c: &AutoencoderKlConfig, downsample: bool) -> Result<Self> {
        let resnets = (0..c.layers_per_block)
            .map(|i| {
                let input = if i == 0 { in_channels } else { out_channels };
                Resnet::load(&w.at(&format!("resnets.{i}")), [input, out_channels], c.norm_num_groups, EPS)
            })
            .collect::<Result<_>>()?;
        let downsampler = downsample
            .then(|| Conv::load(&w.at("downsamplers.0.conv"), [out_channels, out_channels, 3, 2], DOWNSAMPLE_PADDING))
            .transpose()?;
        Ok(Self { resnets, downsampler })
    }

    fn forward(&self, x: &ChannelChunks, plan: &ChunkPlan) -> Result<ChannelChunks> {
        let mut h = x.clone();
        for resnet in &self.resnets {
            h = resnet.forward(&h, plan)?;
        }
        match &self.downsampler {
            Some(downsampler) => downsampler.forward(&h, plan),
            None => Ok(h),
        }
    }

    fn check_sizes(&self, mut shape: [usize; 4], plan: &ChunkPlan) -> Result<[usize; 4]> {
        for resnet in &self.resnets {
            shape = resnet.check(shape, plan)?;
        }
        match &self.downsampler {
            Some(downsampler) => downsampler.check(shape, plan),
            None => Ok(shape),
        }
    }
}

pub(super) struct Encoder {
    conv_in: Conv,
    down_blocks: Vec<DownEncoderBlock2D>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv,
}

impl Encoder {
    pub fn load(w: &Weights, c: &AutoencoderKlConfig) -> Result<Self> {
        let channels = &c.block_out_channels;
        let last = channels[channels.len() - 1];
        let down_blocks = channels
            .iter()
            .enumerate()
            .map(|(i, &out)| {
                let input = if i == 0 { channels[0] } else { channels[i - 1] };
                DownEncoderBlock2D::load(&w.at(&format!("down_blocks.{i}")), [input, out], c, i + 1 < channels.len())
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            conv_in: Conv::same(&w.at("conv_in"), c.in_channels, channels[0], 3, 1)?,
            down_blocks,
            mid_block: MidBlock::load(&w.at("mid_block"), last, c.norm_num_groups, c.mid_block_add_attention)?,
            conv_norm_out: GroupNorm::load(&w.at("conv_norm_out"), c.norm_num_groups, last, EPS)?,
            // Mean and log-variance for every latent channel (diffusers' double_z).
            conv_out: Conv::same(&w.at("conv_out"), last, 2 * c.latent_channels, 3, 1)?,
        })
    }

    /// `x [B, in_channels, H, W]` to the moments `[B, 2 * latent_channels, h, w]` (before `quant_conv`).
    pub fn forward(&self, x: &Tensor, plan: &ChunkPlan) -> Result<Tensor> {
        let x = plan.split(self.conv_in.name(), x)?;
        let mut h = self.conv_in.forward(&x, plan)?;
        for block in &self.down_blocks {
            h = block.forward(&h, plan)?;
        }
        h = self.mid_block.forward(&h, plan)?;
        let moments = self.conv_out.forward(&group_norm(&h, &self.conv_norm_out)?, plan)?;
        plan.whole(self.conv_out.name(), &moments)
    }

    /// Walks the shapes `forward` would create, failing at the first one the plan cannot hold.
    pub fn check_sizes(&self, shape: [usize; 4], plan: &ChunkPlan) -> Result<[usize; 4]> {
        plan.check(self.conv_in.name(), shape)?;
        let mut shape = self.conv_in.check(shape, plan)?;
        for block in &self.down_blocks {
            shape = block.check_sizes(shape, plan)?;
        }
        shape = self.mid_block.check_sizes(shape, plan)?;
        let moments = self.conv_out.check(shape, plan)?;
        plan.check_whole(self.conv_out.name(), moments)?;
        Ok(moments)
    }
}
