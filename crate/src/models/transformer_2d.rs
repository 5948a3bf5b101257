//! diffusers' `Transformer2DModel` on continuous inputs (models/transformers/transformer_2d.py)
//! with `BasicTransformerBlock` and its GEGLU `FeedForward` (models/attention.py), as the
//! Stable Diffusion UNet's cross-attention blocks build them: layer norms, no attention
//! biases, `activation_fn = "geglu"`.

use std::collections::HashMap;

use super::attention::{Attend, Attention, AttentionConfig};
use super::nn::{Conv2d, GroupNorm, LayerNorm, Linear};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::kernels::elementwise as ew;
use crate::kernels::gather::gather_rows;
use crate::models::weights::Weights;

/// The group norm before `proj_in` (fixed in diffusers, not from the config).
const GROUP_NORM_EPS: f32 = 1e-6;
/// The blocks' layer norms: `norm_eps`'s default, which the UNet's blocks never override.
const LAYER_NORM_EPS: f32 = 1e-5;
/// `FeedForward`'s `mult`: the GEGLU's inner width is four times the model width.
const FF_MULT: usize = 4;

/// What the UNet's blocks pass to `Transformer2DModel`.
#[derive(Debug, Clone, Copy)]
pub struct Transformer2DConfig {
    pub in_channels: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Transformer blocks (`num_layers`).
    pub layers: usize,
    pub cross_attention_dim: usize,
    pub norm_groups: usize,
    /// `proj_in`/`proj_out` are Linear layers on tokens instead of 1x1 convs.
    pub use_linear_projection: bool,
    /// `attn1` attends to the text too instead of to the image.
    pub only_cross_attention: bool,
}

/// ToDo (Smith, Fang, Choi and Ermon, "ToDo: Token Downsampling for Efficient Generation of
/// High-Resolution Images", 2024; the survey's token merging): self-attention at the UNet's
/// largest resolution takes its keys and values from the tokens of a grid `factor` times
/// coarser (nearest-exact sampling, its authors' default), so the key and value projections
/// and the attention cost about `factor²` less. Queries, and so the output, keep every token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenDownsampling {
    pub factor: f32,
    /// The largest resolution's tokens, `height x width`: only layers there downsample.
    pub height: usize,
    pub width: usize,
}

impl TokenDownsampling {
    /// The coarse grid's side for a side of `size` (`int(size / factor)`, as ToDo sizes it).
    fn coarse(&self, size: usize) -> usize {
        (size as f32 / self.factor) as usize
    }

    /// A request error (the factor is the user's `token_merge`) when `factor` is not a
    /// number of at least 1 or leaves no token.
    pub fn check(&self) -> Result<()> {
        if !(self.factor >= 1.0 && self.factor.is_finite()) {
            return Err(Error::request("token_merge", format!("the factor must be a number of at least 1, got {}", self.factor)));
        }
        if self.coarse(self.height) == 0 || self.coarse(self.width) == 0 {
            return Err(Error::request(
                "token_merge",
                format!("factor {} leaves no token of the {}x{} grid", self.factor, self.height, self.width),
            ));
        }
        Ok(())
    }

    /// For a pass over `batch` samples, the rows of the largest resolution's tokens
    /// `[batch, height * width, C]` (the batch flattened) that the coarse grid keeps:
    /// PyTorch's `nearest-exact` source index `floor((i + 0.5) * size / coarse)` on each
    /// axis. Uploaded once for every transformer there; `None` for a factor of 1.
    pub fn kept_rows(&self, gpu: &Gpu, batch: usize) -> Result<Option<KeptRows>> {
        if self.factor == 1.0 {
            return Ok(None);
        }
        let (height, width) = (self.height, self.width);
        let source =
            |i: usize, size: usize, coarse: usize| ((i as f64 + 0.5) * size as f64 / coarse as f64).floor().min(size as f64 - 1.0) as usize;
        let (rows, cols) = (self.coarse(height), self.coarse(width));
        let mut kept = Vec::with_capacity(batch * rows * cols);
        for b in 0..batch {
            for y in 0..rows {
                for x in 0..cols {
                    kept.push((b * height * width + source(y, height, rows) * width + source(x, width, cols)) as u32);
                }
            }
        }
        Ok(Some(KeptRows { height, width, rows: gpu.upload_u32(&[kept.len()], &kept)? }))
    }
}

/// The token rows ToDo keeps in one UNet pass (`TokenDownsampling::kept_rows`).
pub struct KeptRows {
    height: usize,
    width: usize,
    rows: Tensor,
}

impl KeptRows {
    /// The rows, for a transformer over a `height x width` grid at the largest resolution.
    fn at(&self, height: usize, width: usize) -> Option<&Tensor> {
        ((height, width) == (self.height, self.width)).then_some(&self.rows)
    }
}

/// Every cross-attention's keys and values for one text, computed once
/// (`UNet2DConditionModel::text_keys_values`) and shared by all the steps of a generation: the
/// text does not change between steps, so neither do they.
pub struct TextKeysValues {
    text: Tensor,
    by_attention: HashMap<String, (Tensor, Tensor)>,
}

impl TextKeysValues {
    pub fn new(text: &Tensor) -> Self {
        Self { text: text.clone(), by_attention: HashMap::new() }
    }

    /// Whether these were computed for `text` (the very tensor, not equal values).
    pub fn is_for(&self, text: &Tensor) -> bool {
        self.text.same_tensor(text)
    }

    fn add(&mut self, attention: &Attention) -> Result<()> {
        let keys_values = attention.keys_values(&self.text)?;
        self.by_attention.insert(attention.name().to_string(), keys_values);
        Ok(())
    }
}

/// The text a transformer's cross-attentions attend to, with its keys and values if they
/// were computed ahead.
#[derive(Clone, Copy)]
pub struct Text<'a> {
    pub states: &'a Tensor,
    pub keys_values: Option<&'a TextKeysValues>,
}

impl<'a> Text<'a> {
    fn attend(&self, attention: &Attention) -> Attend<'a> {
        match self.keys_values.and_then(|kv| kv.by_attention.get(attention.name())) {
            Some((k, v)) => Attend::KeysValues(k, v),
            None => Attend::To(self.states),
        }
    }
}

/// `GEGLU(dim, 4*dim)` then `Linear(4*dim, dim)`: `ff.net.0.proj` and `ff.net.2`.
struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    fn load(w: &Weights, dim: usize) -> Result<Self> {
        let inner = dim * FF_MULT;
        Ok(Self { proj: Linear::load(&w.at("net.0.proj"), dim, 2 * inner, true)?, out: Linear::load(&w.at("net.2"), inner, dim, true)? })
    }

    /// With `residual` added in the output projection's epilogue.
    fn forward_adding(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let gated = ew::geglu(x.gpu(), &self.proj.forward(x)?)?;
        self.out.forward_adding(&gated, residual)
    }
}

/// Pre-norm self-attention, cross-attention and feed-forward, each added to the residual stream.
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
    only_cross_attention: bool,
}

impl BasicTransformerBlock {
    pub fn load(w: &Weights, c: &Transformer2DConfig) -> Result<Self> {
        let dim = c.heads * c.head_dim;
        let attention = |cross_attention_dim| AttentionConfig {
            query_dim: dim,
            cross_attention_dim,
            heads: c.heads,
            head_dim: c.head_dim,
            qkv_bias: false,
            group_norm: None,
            residual_connection: false,
            rescale_output_factor: 1.0,
        };
        let attn1_context = c.only_cross_attention.then_some(c.cross_attention_dim);
        Ok(Self {
            norm1: LayerNorm::load(&w.at("norm1"), dim, LAYER_NORM_EPS)?,
            attn1: Attention::load(&w.at("attn1"), &attention(attn1_context))?,
            norm2: LayerNorm::load(&w.at("norm2"), dim, LAYER_NORM_EPS)?,
            attn2: Attention::load(&w.at("attn2"), &attention(Some(c.cross_attention_dim)))?,
            norm3: LayerNorm::load(&w.at("norm3"), dim, LAYER_NORM_EPS)?,
            ff: FeedForward::load(&w.at("ff"), dim)?,
            only_cross_attention: c.only_cross_attention,
        })
    }

    /// The attentions that attend to the text.
    fn text_attentions(&self) -> impl Iterator<Item = &Attention> {
        std::iter::once(&self.attn2).chain(self.only_cross_attention.then_some(&self.attn1))
    }

    /// `x [B, S, dim]` with the text `[B, S', cross_attention_dim]`; self-attention takes its
    /// keys and values from the tokens `kept_rows` (of the batch flattened) when given. Each
    /// skip connection is added in the epilogue of the projection before it.
    pub fn forward(&self, x: &Tensor, text: Text, kept_rows: Option<&Tensor>) -> Result<Tensor> {
        let normed = self.norm1.forward(x)?;
        let coarse = match kept_rows {
            Some(rows) if !self.only_cross_attention => {
                let &[batch, tokens, dim] = normed.shape() else {
                    return Err(Error::shape("BasicTransformerBlock", format!("expects [B, S, dim], got {:?}", normed.shape())));
                };
                let kept = gather_rows(x.gpu(), &normed.reshape(&[batch * tokens, dim])?, rows)?;
                Some(kept.reshape(&[batch, rows.numel() / batch, dim])?)
            }
            _ => None,
        };
        let attn1 = match &coarse {
            _ if self.only_cross_attention => text.attend(&self.attn1),
            Some(coarse) => Attend::To(coarse),
            None => Attend::Itself,
        };
        let x = self.attn1.forward_adding(&normed, attn1, x)?;
        let x = self.attn2.forward_adding(&self.norm2.forward(&x)?, text.attend(&self.attn2), &x)?;
        self.ff.forward_adding(&self.norm3.forward(&x)?, &x)
    }
}

/// `proj_in`: a 1x1 conv, or a Linear run as the 1x1 conv it is, writing the image's
/// tokens straight from its channels-first pixels.
fn projection_in(w: &Weights, linear: bool, in_channels: usize, out_channels: usize) -> Result<Conv2d> {
    if linear {
        Conv2d::load_linear_as_pointwise(w, in_channels, out_channels)
    } else {
        Conv2d::load(w, in_channels, out_channels, 1, 1, 0)
    }
}

/// `proj_out`: a Linear, or a 1x1 conv run as the Linear it is, writing the tokens back
/// channels first.
fn projection_out(w: &Weights, linear: bool, in_features: usize, out_features: usize) -> Result<Linear> {
    if linear { Linear::load(w, in_features, out_features, true) } else { Linear::load_pointwise_conv(w, in_features, out_features) }
}

/// Group norm, `proj_in`, the transformer blocks over the `H*W` positions, `proj_out`, plus the input.
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Conv2d,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Linear,
}

impl Transformer2DModel {
    pub fn load(w: &Weights, c: &Transformer2DConfig) -> Result<Self> {
        let inner_dim = c.heads * c.head_dim;
        Ok(Self {
            norm: GroupNorm::load(&w.at("norm"), c.norm_groups, c.in_channels, GROUP_NORM_EPS)?,
            proj_in: projection_in(&w.at("proj_in"), c.use_linear_projection, c.in_channels, inner_dim)?,
            blocks: (0..c.layers)
                .map(|i| BasicTransformerBlock::load(&w.at(&format!("transformer_blocks.{i}")), c))
                .collect::<Result<_>>()?,
            proj_out: projection_out(&w.at("proj_out"), c.use_linear_projection, inner_dim, c.in_channels)?,
        })
    }

    /// Adds its cross-attentions' keys and values for `keys_values`' text.
    pub fn add_text_keys_values(&self, keys_values: &mut TextKeysValues) -> Result<()> {
        self.blocks.iter().flat_map(BasicTransformerBlock::text_attentions).try_for_each(|attention| keys_values.add(attention))
    }

    /// `x [B, C, H, W]` attending to the text `[B, S, cross_attention_dim]`, with ToDo's
    /// downsampled self-attention where it applies; the result has `x`'s shape.
    pub fn forward(&self, x: &Tensor, text: Text, kept_rows: Option<&KeptRows>) -> Result<Tensor> {
        let &[_, _, height, width] = x.shape() else {
            return Err(Error::shape("Transformer2DModel", format!("expects [B, C, H, W], got {:?}", x.shape())));
        };
        let mut tokens = self.proj_in.forward_to_tokens(&self.norm.forward(x, false)?)?;
        let kept_rows = kept_rows.and_then(|k| k.at(height, width));
        for block in &self.blocks {
            tokens = block.forward(&tokens, text, kept_rows)?;
        }
        self.proj_out.forward_to_channels_first_adding(&tokens, x)
    }
}
