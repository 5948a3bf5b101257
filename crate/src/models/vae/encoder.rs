//! diffusers' VAE `Encoder` (models/autoencoders/vae.py) with its `DownEncoderBlock2D`s:
//! image to the latent distribution's moments (mean and log-variance stacked on channels).

use super::AutoencoderKlConfig;
use super::mid_block::{EPS, MidBlock, resnet_config};
use crate::error::Result;
use crate::gpu::Tensor;
use crate::kernels::conv2d::output_size;
use crate::models::feature_map::{ChunkPlan, FeatureMap};
use crate::models::nn::{Conv2d, GroupNorm};
use crate::models::resnet::{Downsample2D, ResnetBlock2D};
use crate::models::weights::Weights;

/// The encoder's downsamplers pad only bottom and right, then convolve with stride 2.
/// diffusers' VAE downsampler: `downsample_padding` 0, so it pads bottom and right by one.
const DOWNSAMPLE_PADDING: usize = 0;

struct DownEncoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    downsampler: Option<Downsample2D>,
}

impl DownEncoderBlock2D {
    fn load(w: &Weights, [in_channels, out_channels]: [usize; 2], c: &AutoencoderKlConfig, downsample: bool) -> Result<Self> {
        let resnets = (0..c.layers_per_block)
            .map(|i| {
                let input = if i == 0 { in_channels } else { out_channels };
                ResnetBlock2D::load(&w.at(&format!("resnets.{i}")), &resnet_config([input, out_channels], c.norm_num_groups))
            })
            .collect::<Result<_>>()?;
        let downsampler = downsample.then(|| Downsample2D::load(&w.at("downsamplers.0"), out_channels, DOWNSAMPLE_PADDING)).transpose()?;
        Ok(Self { resnets, downsampler })
    }

    fn forward<F: FeatureMap>(&self, x: &F) -> Result<F> {
        let mut h = x.clone();
        for resnet in &self.resnets {
            h = resnet.forward(&h, None)?;
        }
        match &self.downsampler {
            Some(downsampler) => downsampler.forward(&h),
            None => Ok(h),
        }
    }
}

pub(super) struct Encoder {
    /// The down blocks' widths, first to last.
    widths: Vec<usize>,
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock2D>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
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
            conv_in: Conv2d::load(&w.at("conv_in"), c.in_channels, channels[0], 3, 1, 1)?,
            down_blocks,
            mid_block: MidBlock::load(&w.at("mid_block"), last, c.norm_num_groups, c.mid_block_add_attention)?,
            conv_norm_out: GroupNorm::load(&w.at("conv_norm_out"), c.norm_num_groups, last, EPS)?,
            // Mean and log-variance for every latent channel (diffusers' double_z).
            conv_out: Conv2d::load(&w.at("conv_out"), last, 2 * c.latent_channels, 3, 1, 1)?,
            widths: channels.clone(),
        })
    }

    pub fn forward(&self, x: &Tensor, plan: &ChunkPlan) -> Result<Tensor> {
        let x = plan.split("encoder.conv_in", x)?;
        let mut h = self.conv_in.forward(&x)?;
        for block in &self.down_blocks {
            h = block.forward(&h)?;
        }
        h = self.mid_block.forward(&h, plan)?;
        self.conv_out.forward(&self.conv_norm_out.forward(&h, true)?)?.whole("encoder.conv_out")
    }

    /// Checks from shapes alone that the plan holds every activation `forward` makes for
    /// an image of `[n, _, h, w]`: each down block's width at its resolution and,
    /// downsampled, at the next; the mid-block attention's and the moments whole.
    pub fn check_sizes(&self, [n, _, mut h, mut w]: [usize; 4], plan: &ChunkPlan) -> Result<()> {
        for (i, (block, &width)) in self.down_blocks.iter().zip(&self.widths).enumerate() {
            plan.check(&format!("encoder.down_blocks.{i}"), [n, width, h, w])?;
            if block.downsampler.is_some() {
                [h, w] = output_size(h, w, [3, 3], 2, [0, 1, 0, 1])?;
                plan.check(&format!("encoder.down_blocks.{i}.downsamplers.0"), [n, width, h, w])?;
            }
        }
        let last = self.widths[self.widths.len() - 1];
        self.mid_block.check_sizes([n, last, h, w], plan)?;
        plan.check_whole("encoder.conv_out", [n, self.conv_out.out_channels, h, w])
    }
}
