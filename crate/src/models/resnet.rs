//! diffusers' `ResnetBlock2D`, `Downsample2D` and `Upsample2D` (models/resnet.py,
//! models/downsampling.py, models/upsampling.py), shared by the UNet and the VAE.

use super::nn::{Conv2d, GroupNorm, Linear};
use crate::error::{Error, Result};
use crate::gpu::Tensor;
use crate::models::feature_map::FeatureMap;
use crate::models::weights::Weights;

/// What a `ResnetBlock2D` is built with (the arguments diffusers passes).
#[derive(Debug, Clone, Copy)]
pub struct ResnetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Width of the time embedding, or `None` (the VAE) for no time projection.
    pub temb_channels: Option<usize>,
    pub groups: usize,
    pub eps: f32,
    /// The block's output is divided by this (1 in SD).
    pub output_scale_factor: f32,
}

/// `silu(norm1(x)) -> conv1 (+ time projection) -> silu(norm2) -> conv2`, plus a
/// shortcut (a 1x1 conv when the channel count changes).
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    /// Where this block's time projection is among the UNet's, once the UNet took it.
    time_slot: Option<usize>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f32,
}

impl ResnetBlock2D {
    pub fn load(w: &Weights, c: &ResnetConfig) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::load(&w.at("norm1"), c.groups, c.in_channels, c.eps)?,
            conv1: Conv2d::load(&w.at("conv1"), c.in_channels, c.out_channels, 3, 1, 1)?,
            time_emb_proj: c.temb_channels.map(|t| Linear::load(&w.at("time_emb_proj"), t, c.out_channels, true)).transpose()?,
            norm2: GroupNorm::load(&w.at("norm2"), c.groups, c.out_channels, c.eps)?,
            conv2: Conv2d::load(&w.at("conv2"), c.out_channels, c.out_channels, 3, 1, 1)?,
            conv_shortcut: (c.in_channels != c.out_channels)
                .then(|| Conv2d::load(&w.at("conv_shortcut"), c.in_channels, c.out_channels, 1, 1, 0))
                .transpose()?,
            time_slot: None,
            output_scale_factor: c.output_scale_factor,
        })
    }

    /// Hands over this block's `time_emb_proj` to be computed with the others' once a pass
    /// (`TimeProjections`); the block then reads its projection at `slot` of what that gives.
    pub fn take_time_projection(&mut self, slot: usize) -> Option<Linear> {
        let proj = self.time_emb_proj.take()?;
        self.time_slot = Some(slot);
        Some(proj)
    }

    /// `x [B, C, H, W]`; `time_projections` are the UNet's resnets' projections of its time
    /// embedding (`TimeProjections::forward`), by slot; none in the VAE.
    pub fn forward<F: FeatureMap>(&self, x: &F, time_projections: Option<&[Tensor]>) -> Result<F> {
        const OP: &str = "ResnetBlock2D";
        // The time projection and the shortcut are added in the convs' epilogues.
        let t = match (self.time_slot, time_projections) {
            (Some(slot), Some(projected)) => {
                Some(projected.get(slot).cloned().ok_or_else(|| Error::shape(OP, format!("no time projection at slot {slot}")))?)
            }
            (Some(_), None) => return Err(Error::shape(OP, "this block needs a time embedding")),
            (None, _) if self.time_emb_proj.is_some() => {
                return Err(Error::shape(OP, "this block's time projection was never taken into the UNet's TimeProjections"));
            }
            (None, None) => None,
            (None, Some(_)) => return Err(Error::shape(OP, "this block takes no time embedding")),
        };
        let h = self.conv1.forward_adding(&self.norm1.forward(x, true)?, t.as_ref(), None)?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        let sum = self.conv2.forward_adding(&self.norm2.forward(&h, true)?, None, Some(&shortcut))?;
        if self.output_scale_factor == 1.0 { Ok(sum) } else { sum.scale(1.0 / self.output_scale_factor) }
    }
}

/// A 3x3 stride-2 conv. diffusers pads 1 on every side, or with `padding = 0`
/// pads only bottom and right by one (the VAE encoder) before a padding-0 conv.
pub struct Downsample2D {
    conv: Conv2d,
}

impl Downsample2D {
    pub fn load(w: &Weights, channels: usize, padding: usize) -> Result<Self> {
        let pad = if padding == 0 { [0, 1, 0, 1] } else { [padding; 4] };
        Ok(Self { conv: Conv2d::load_padded(&w.at("conv"), [channels, channels, 3, 2], pad)? })
    }

    pub fn forward<F: FeatureMap>(&self, x: &F) -> Result<F> {
        self.conv.forward(x)
    }
}

/// Nearest-neighbour 2x upsampling followed by a 3x3 conv.
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn load(w: &Weights, channels: usize) -> Result<Self> {
        Ok(Self { conv: Conv2d::load(&w.at("conv"), channels, channels, 3, 1, 1)? })
    }

    pub fn forward<F: FeatureMap>(&self, x: &F) -> Result<F> {
        self.conv.forward(&x.upsample_nearest_2x()?)
    }
}
