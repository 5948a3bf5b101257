//! The Stable Diffusion UNet's blocks (diffusers models/unets/unet_2d_blocks.py):
//! `DownBlock2D` / `CrossAttnDownBlock2D`, `UNetMidBlock2DCrossAttn` and
//! `UpBlock2D` / `CrossAttnUpBlock2D`. A cross-attention block is the plain block with a
//! `Transformer2DModel` after each resnet, so one type serves both.

use super::resnet::{Downsample2D, ResnetBlock2D, ResnetConfig, Upsample2D};
use super::transformer_2d::{KeptRows, Text, Transformer2DConfig, Transformer2DModel};
use crate::error::{Error, Result};
use crate::gpu::Tensor;
use crate::kernels::layout;
use crate::models::weights::Weights;

/// The cross-attention part of a `CrossAttn*` block.
#[derive(Debug, Clone, Copy)]
pub struct CrossAttentionConfig {
    pub heads: usize,
    /// Transformer blocks in each `Transformer2DModel` (`transformer_layers_per_block`).
    pub transformer_layers: usize,
    pub cross_attention_dim: usize,
    pub use_linear_projection: bool,
    pub only_cross_attention: bool,
}

/// What `get_down_block` / `get_up_block` / `get_mid_block` pass to a block.
#[derive(Debug, Clone, Copy)]
pub struct BlockConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub temb_channels: usize,
    /// Resnets in the block (`num_layers`).
    pub layers: usize,
    pub resnet_eps: f32,
    pub resnet_groups: usize,
    /// The resnets' outputs are divided by this.
    pub output_scale_factor: f32,
    /// `None` for `DownBlock2D` / `UpBlock2D`.
    pub cross_attention: Option<CrossAttentionConfig>,
}

impl BlockConfig {
    fn resnet(&self, in_channels: usize) -> ResnetConfig {
        ResnetConfig {
            in_channels,
            out_channels: self.out_channels,
            temb_channels: Some(self.temb_channels),
            groups: self.resnet_groups,
            eps: self.resnet_eps,
            output_scale_factor: self.output_scale_factor,
        }
    }

    /// The `Transformer2DModel` after each resnet: `heads` heads of `out_channels / heads`.
    fn transformer(&self, w: &Weights) -> Result<Option<Transformer2DConfig>> {
        let Some(a) = self.cross_attention else { return Ok(None) };
        let head_dim = self.out_channels.checked_div(a.heads).unwrap_or(0);
        if head_dim == 0 {
            return Err(Error::Unsupported {
                file: w.file().to_string(),
                detail: format!("{}: {} attention heads for {} channels", w.prefix(), a.heads, self.out_channels),
            });
        }
        Ok(Some(Transformer2DConfig {
            in_channels: self.out_channels,
            heads: a.heads,
            head_dim,
            layers: a.transformer_layers,
            cross_attention_dim: a.cross_attention_dim,
            norm_groups: self.resnet_groups,
            use_linear_projection: a.use_linear_projection,
            only_cross_attention: a.only_cross_attention,
        }))
    }
}

/// Loads `attentions.{i}` for `i < count`, or nothing for a block without cross-attention.
fn load_attentions(w: &Weights, c: &BlockConfig, count: usize) -> Result<Vec<Transformer2DModel>> {
    match c.transformer(w)? {
        Some(t) => (0..count).map(|i| Transformer2DModel::load(&w.at(&format!("attentions.{i}")), &t)).collect(),
        None => Ok(Vec::new()),
    }
}

/// What every layer of one UNet pass sees besides its input.
#[derive(Clone, Copy)]
pub struct Conditioning<'a> {
    /// Every resnet's projection of the time embedding, by slot (`TimeProjections`).
    pub time_projections: &'a [Tensor],
    /// The text, `[B, S, cross_attention_dim]`, and its keys and values if computed ahead.
    pub text: Text<'a>,
    /// The token rows ToDo keeps at the largest resolution, if it runs.
    pub kept_rows: Option<&'a KeptRows>,
}

/// A resnet, then its transformer when the block has them.
fn resnet_then_attention(resnet: &ResnetBlock2D, attention: Option<&Transformer2DModel>, x: &Tensor, c: &Conditioning) -> Result<Tensor> {
    let h = resnet.forward(x, Some(c.time_projections))?;
    match attention {
        Some(attention) => attention.forward(&h, c.text, c.kept_rows),
        None => Ok(h),
    }
}

/// `DownBlock2D`, or `CrossAttnDownBlock2D` with attentions: resnets (each followed by a
/// transformer) and an optional stride-2 conv. Every intermediate result is a skip connection.
pub struct DownBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock2D {
    /// `downsample_padding` is `Some` when the block ends with a downsampler.
    pub fn load(w: &Weights, c: &BlockConfig, downsample_padding: Option<usize>) -> Result<Self> {
        let resnets = (0..c.layers)
            .map(|i| {
                let in_channels = if i == 0 { c.in_channels } else { c.out_channels };
                ResnetBlock2D::load(&w.at(&format!("resnets.{i}")), &c.resnet(in_channels))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            resnets,
            attentions: load_attentions(w, c, c.layers)?,
            downsampler: downsample_padding
                .map(|padding| Downsample2D::load(&w.at("downsamplers.0"), c.out_channels, padding))
                .transpose()?,
        })
    }

    pub fn transformers(&self) -> &[Transformer2DModel] {
        &self.attentions
    }

    pub fn resnets_mut(&mut self) -> impl Iterator<Item = &mut ResnetBlock2D> {
        self.resnets.iter_mut()
    }

    /// Its layers: the resnets (each with its transformer), then the downsampler. Each
    /// layer's output is a skip connection.
    pub fn layer_count(&self) -> usize {
        self.resnets.len() + usize::from(self.downsampler.is_some())
    }

    /// Layer `i` (of `layer_count`) on `x [B, C, H, W]`.
    pub fn forward_layer(&self, i: usize, x: &Tensor, c: &Conditioning) -> Result<Tensor> {
        match (self.resnets.get(i), &self.downsampler) {
            (Some(resnet), _) => resnet_then_attention(resnet, self.attentions.get(i), x, c),
            (None, Some(downsampler)) if i == self.resnets.len() => downsampler.forward(x),
            _ => Err(Error::shape("DownBlock2D", format!("layer {i} of {}", self.layer_count()))),
        }
    }
}

/// `UNetMidBlock2DCrossAttn` with diffusers' `num_layers = 1`: resnet, transformer, resnet.
pub struct UNetMidBlock2DCrossAttn {
    first: ResnetBlock2D,
    attentions: Vec<Transformer2DModel>,
    resnets: Vec<ResnetBlock2D>,
}

impl UNetMidBlock2DCrossAttn {
    /// `c.layers` counts the transformer/resnet pairs after the first resnet;
    /// `c.cross_attention` must be set and in and out channels agree.
    pub fn load(w: &Weights, c: &BlockConfig) -> Result<Self> {
        if c.cross_attention.is_none() || c.in_channels != c.out_channels {
            let detail = format!(
                "{}: UNetMidBlock2DCrossAttn without cross-attention or with {} -> {} channels",
                w.prefix(),
                c.in_channels,
                c.out_channels
            );
            return Err(Error::Unsupported { file: w.file().to_string(), detail });
        }
        Ok(Self {
            first: ResnetBlock2D::load(&w.at("resnets.0"), &c.resnet(c.in_channels))?,
            attentions: load_attentions(w, c, c.layers)?,
            resnets: (1..=c.layers)
                .map(|i| ResnetBlock2D::load(&w.at(&format!("resnets.{i}")), &c.resnet(c.out_channels)))
                .collect::<Result<_>>()?,
        })
    }

    pub fn transformers(&self) -> &[Transformer2DModel] {
        &self.attentions
    }

    pub fn resnets_mut(&mut self) -> impl Iterator<Item = &mut ResnetBlock2D> {
        std::iter::once(&mut self.first).chain(&mut self.resnets)
    }

    pub fn forward(&self, x: &Tensor, c: &Conditioning) -> Result<Tensor> {
        let mut h = self.first.forward(x, Some(c.time_projections))?;
        for (attention, resnet) in self.attentions.iter().zip(&self.resnets) {
            h = resnet.forward(&attention.forward(&h, c.text, c.kept_rows)?, Some(c.time_projections))?;
        }
        Ok(h)
    }
}

/// `UpBlock2D`, or `CrossAttnUpBlock2D` with attentions: each resnet takes the previous
/// output concatenated (along channels) with the latest unused skip connection; then an
/// optional nearest 2x upsampling and conv.
pub struct UpBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock2D {
    /// `c.in_channels` is diffusers' `in_channels` (the width of the last skip this block
    /// takes); `prev_output_channels` the width of the block's input.
    pub fn load(w: &Weights, c: &BlockConfig, prev_output_channels: usize, add_upsample: bool) -> Result<Self> {
        let resnets = (0..c.layers)
            .map(|i| {
                let skip_channels = if i + 1 == c.layers { c.in_channels } else { c.out_channels };
                let input_channels = if i == 0 { prev_output_channels } else { c.out_channels };
                ResnetBlock2D::load(&w.at(&format!("resnets.{i}")), &c.resnet(input_channels + skip_channels))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            resnets,
            attentions: load_attentions(w, c, c.layers)?,
            upsampler: add_upsample.then(|| Upsample2D::load(&w.at("upsamplers.0"), c.out_channels)).transpose()?,
        })
    }

    pub fn transformers(&self) -> &[Transformer2DModel] {
        &self.attentions
    }

    pub fn resnets_mut(&mut self) -> impl Iterator<Item = &mut ResnetBlock2D> {
        self.resnets.iter_mut()
    }

    /// Its resnets (each with its transformer), each taking one skip connection.
    pub fn layer_count(&self) -> usize {
        self.resnets.len()
    }

    /// Layer `i`: `x` concatenated (along channels) with `skip`, through resnet `i` and its
    /// transformer.
    pub fn forward_layer(&self, i: usize, x: &Tensor, skip: &Tensor, c: &Conditioning) -> Result<Tensor> {
        let resnet = self.resnets.get(i).ok_or_else(|| Error::shape("UpBlock2D", format!("layer {i} of {}", self.resnets.len())))?;
        let joined = layout::concat(x.gpu(), &[x, skip], 1)?;
        resnet_then_attention(resnet, self.attentions.get(i), &joined, c)
    }

    /// The block's end after its last layer: the upsampler, if it has one.
    pub fn upsample(&self, x: &Tensor) -> Result<Tensor> {
        match &self.upsampler {
            Some(upsampler) => upsampler.forward(x),
            None => Ok(x.clone()),
        }
    }
}
