//! diffusers' VAE `Encoder` (models/autoencoders/vae.py) with its `DownEncoderBlock2D`s:
//! image to the latent distribution's moments (mean and log-variance stacked on channels).

use super::mid_block::{EPS, MidBlock};
use super::{ActivationLimit, AutoencoderKlConfig};
use crate::error::Result;
use crate::gpu::Tensor;
use crate::kernels::conv2d::output_size;
use crate::loader::Weights;
use crate::models::nn::{Conv2d, GroupNorm, join};
use crate::models::resnet::{Downsample2D, ResnetBlock2D, ResnetConfig};

/// The encoder's downsamplers pad only bottom and right, then convolve with stride 2.
const DOWNSAMPLE_PADDING: [usize; 4] = [0, 1, 0, 1];

/// Resnets at one resolution, then (except in the last block) a stride-2 downsampler.
struct DownEncoderBlock2D {
    prefix: String,
    in_channels: usize,
    out_channels: usize,
    resnets: Vec<ResnetBlock2D>,
    downsampler: Option<Downsample2D>,
}

impl DownEncoderBlock2D {
    fn load(w: &Weights, prefix: &str, [in_channels, out_channels]: [usize; 2], c: &AutoencoderKlConfig, downsample: bool) -> Result<Self> {
        let resnets = (0..c.layers_per_block)
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
        let downsampler = downsample.then(|| Downsample2D::load(w, &join(prefix, "downsamplers.0"), out_channels, 0)).transpose()?;
        Ok(Self { prefix: prefix.to_string(), in_channels, out_channels, resnets, downsampler })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for resnet in &self.resnets {
            h = resnet.forward(&h, None)?;
        }
        match &self.downsampler {
            Some(downsampler) => downsampler.forward(&h),
            None => Ok(h),
        }
    }

    /// The widest activation is the first resnet's input or output; downsampling only shrinks.
    fn check_sizes(&self, [b, _, h, w]: [usize; 4], limit: &ActivationLimit) -> Result<[usize; 4]> {
        limit.check(&join(&self.prefix, "resnets.0"), [b, self.in_channels.max(self.out_channels), h, w])?;
        if self.downsampler.is_none() {
            return Ok([b, self.out_channels, h, w]);
        }
        let [out_h, out_w] = output_size(h, w, [3, 3], 2, DOWNSAMPLE_PADDING)?;
        Ok([b, self.out_channels, out_h, out_w])
    }
}

pub(super) struct Encoder {
    prefix: String,
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock2D>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    pub fn load(w: &Weights, prefix: &str, c: &AutoencoderKlConfig) -> Result<Self> {
        let p = |name: &str| join(prefix, name);
        let channels = &c.block_out_channels;
        let last = channels[channels.len() - 1];
        let down_blocks = channels
            .iter()
            .enumerate()
            .map(|(i, &out)| {
                let input = if i == 0 { channels[0] } else { channels[i - 1] };
                DownEncoderBlock2D::load(w, &p(&format!("down_blocks.{i}")), [input, out], c, i + 1 < channels.len())
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            prefix: prefix.to_string(),
            conv_in: Conv2d::load(w, &p("conv_in"), c.in_channels, channels[0], 3, 1, 1)?,
            down_blocks,
            mid_block: MidBlock::load(w, &p("mid_block"), last, c.norm_num_groups, c.mid_block_add_attention)?,
            conv_norm_out: GroupNorm::load(w, &p("conv_norm_out"), c.norm_num_groups, last, EPS)?,
            // Mean and log-variance for every latent channel (diffusers' double_z).
            conv_out: Conv2d::load(w, &p("conv_out"), last, 2 * c.latent_channels, 3, 1, 1)?,
        })
    }

    /// `x [B, in_channels, H, W]` to the moments `[B, 2 * latent_channels, h, w]` (before `quant_conv`).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for block in &self.down_blocks {
            h = block.forward(&h)?;
        }
        h = self.mid_block.forward(&h)?;
        self.conv_out.forward(&self.conv_norm_out.forward(&h, true)?)
    }

    /// Walks the shapes `forward` would create, failing at the first one over `limit`.
    pub fn check_sizes(&self, [b, _, h, w]: [usize; 4], limit: &ActivationLimit) -> Result<[usize; 4]> {
        let mut shape = [b, self.conv_in.out_channels, h, w];
        limit.check(&join(&self.prefix, "conv_in"), shape)?;
        for block in &self.down_blocks {
            shape = block.check_sizes(shape, limit)?;
        }
        shape = self.mid_block.check_sizes(shape, limit)?;
        let [b, _, h, w] = shape;
        let moments = [b, self.conv_out.out_channels, h, w];
        limit.check(&join(&self.prefix, "conv_out"), moments)?;
        Ok(moments)
    }
}
