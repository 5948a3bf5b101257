//! diffusers' `Attention` module (models/attention_processor.py) as the SD UNet's
//! transformer blocks and the VAE's mid block use it: q/k/v projections, fused
//! multi-head attention, the output projection; optionally a group norm before and a
//! residual connection after (the VAE's spatial form on `[B, C, H, W]`).

use super::nn::{GroupNorm, Linear, StackedLinear};
use crate::error::{Error, Result};
use crate::gpu::Tensor;
use crate::kernels::attention::{AttentionOptions, attention};
use crate::kernels::elementwise as ew;
use crate::kernels::layout;
use crate::models::weights::Weights;

#[derive(Debug, Clone, Copy)]
pub struct AttentionConfig {
    pub query_dim: usize,
    /// Width of the context for cross-attention; `None` for self-attention.
    pub cross_attention_dim: Option<usize>,
    pub heads: usize,
    pub head_dim: usize,
    /// Whether to_q/to_k/to_v have biases (the VAE's do, the UNet's do not).
    pub qkv_bias: bool,
    /// A group norm before the projections: `(groups, eps)` (the VAE).
    pub group_norm: Option<(usize, f32)>,
    /// Add the input to the output (the VAE).
    pub residual_connection: bool,
    /// The output is divided by this.
    pub rescale_output_factor: f32,
}

/// What an attention's keys and values come from.
#[derive(Clone, Copy)]
pub enum Attend<'a> {
    /// The tokens it is given (self-attention).
    Itself,
    /// Other tokens, projected by its `to_k` and `to_v` on every call.
    To(&'a Tensor),
    /// Keys and values projected ahead (`keys_values`), for a context that many calls share.
    KeysValues(&'a Tensor, &'a Tensor),
}

/// to_q, to_k and to_v.
enum Projections {
    /// A self-attention's, stacked: q, k and v in one launch (k and v in one for ToDo).
    Stacked(StackedLinear),
    /// to_q, to_k, to_v (a cross-attention's keys and values take another input).
    Separate(Box<[Linear; 3]>),
}

impl Projections {
    fn load(w: &Weights, c: &AttentionConfig) -> Result<Self> {
        let inner = c.heads * c.head_dim;
        let context = c.cross_attention_dim.unwrap_or(c.query_dim);
        let separate = [
            Linear::load(&w.at("to_q"), c.query_dim, inner, c.qkv_bias)?,
            Linear::load(&w.at("to_k"), context, inner, c.qkv_bias)?,
            Linear::load(&w.at("to_v"), context, inner, c.qkv_bias)?,
        ];
        // Self-attention's three take one input: one launch computes them.
        if c.cross_attention_dim.is_none()
            && let Some(stacked) = StackedLinear::stack(&separate.each_ref())?
        {
            return Ok(Projections::Stacked(stacked));
        }
        Ok(Projections::Separate(Box::new(separate)))
    }

    fn queries(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Projections::Stacked(stacked) => stacked.layer(0).forward(x),
            Projections::Separate(separate) => separate[0].forward(x),
        }
    }

    fn keys_values(&self, context: &Tensor) -> Result<(Tensor, Tensor)> {
        match self {
            Projections::Stacked(stacked) => {
                let [k, v]: [Tensor; 2] =
                    stacked.forward(context, 1, 2)?.try_into().map_err(|_| Error::shape("Attention", "two outputs"))?;
                Ok((k, v))
            }
            Projections::Separate(separate) => Ok((separate[1].forward(context)?, separate[2].forward(context)?)),
        }
    }

    /// Queries, keys and values of a self-attention over `x`.
    fn all(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        match self {
            Projections::Stacked(stacked) => {
                let [q, k, v]: [Tensor; 3] =
                    stacked.forward(x, 0, 3)?.try_into().map_err(|_| Error::shape("Attention", "three outputs"))?;
                Ok((q, k, v))
            }
            Projections::Separate(_) => {
                let (k, v) = self.keys_values(x)?;
                Ok((self.queries(x)?, k, v))
            }
        }
    }
}

pub struct Attention {
    /// Its weights' prefix: which attention this is (`TextKeysValues` files them under it).
    name: String,
    group_norm: Option<GroupNorm>,
    projections: Projections,
    to_out: Linear,
    heads: usize,
    residual_connection: bool,
    rescale_output_factor: f32,
}

impl Attention {
    pub fn load(w: &Weights, c: &AttentionConfig) -> Result<Self> {
        let inner = c.heads * c.head_dim;
        Ok(Self {
            name: w.prefix().to_string(),
            group_norm: c.group_norm.map(|(groups, eps)| GroupNorm::load(&w.at("group_norm"), groups, c.query_dim, eps)).transpose()?,
            projections: Projections::load(w, c)?,
            to_out: Linear::load(&w.at("to_out.0"), inner, c.query_dim, true)?,
            heads: c.heads,
            residual_connection: c.residual_connection,
            rescale_output_factor: c.rescale_output_factor,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its keys and values for `context [B, S', cross_dim]`, for `Attend::KeysValues`.
    pub fn keys_values(&self, context: &Tensor) -> Result<(Tensor, Tensor)> {
        self.projections.keys_values(context)
    }

    /// `x [B, S, query_dim]` attending to what `attend` says, plus `residual` (of the
    /// output's shape) added in the output projection's epilogue: a transformer block's
    /// skip around its norm and attention.
    pub fn forward_adding(&self, x: &Tensor, attend: Attend, residual: &Tensor) -> Result<Tensor> {
        if self.group_norm.is_some() || self.residual_connection || self.rescale_output_factor != 1.0 {
            return Err(Error::shape(
                "Attention",
                "a residual is added in the projection only without a norm, residual connection or rescale",
            ));
        }
        let out = self.attention(x, attend)?;
        self.to_out.forward_adding(&out, residual)
    }

    /// `x [B, S, query_dim]` attending to `context [B, S', cross_dim]` (or to itself).
    /// Upcasting (`upcast_attention`) needs nothing: the scores are always f32.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let gpu = x.gpu();
        let normed = match &self.group_norm {
            // Group norm over channels wants [B, C, S]; the projections want [B, S, C].
            Some(norm) => {
                let channels_first = layout::permute(gpu, x, &[0, 2, 1])?;
                layout::permute(gpu, &norm.forward(&channels_first, false)?, &[0, 2, 1])?
            }
            None => x.clone(),
        };
        let out = self.attend(&normed, context.map_or(Attend::Itself, Attend::To))?;
        self.finish(out, x)
    }

    /// The spatial form: `x [B, C, H, W]` attends over its `H*W` positions.
    pub fn forward_spatial(&self, x: &Tensor) -> Result<Tensor> {
        let gpu = x.gpu();
        let &[b, c, h, w] = x.shape() else {
            return Err(Error::shape("Attention", format!("spatial attention needs [B, C, H, W], got {:?}", x.shape())));
        };
        // NCHW already is the [B, C, S] layout group norm wants.
        let normed = match &self.group_norm {
            Some(norm) => norm.forward(x, false)?,
            None => x.clone(),
        };
        let tokens = layout::permute(gpu, &normed.reshape(&[b, c, h * w])?, &[0, 2, 1])?;
        let out = self.attend(&tokens, Attend::Itself)?;
        let out = layout::permute(gpu, &out, &[0, 2, 1])?.reshape(&[b, c, h, w])?;
        self.finish(out, x)
    }

    /// Projections, attention and the output projection on `[B, S, C]` tokens.
    fn attend(&self, tokens: &Tensor, attend: Attend) -> Result<Tensor> {
        self.to_out.forward(&self.attention(tokens, attend)?)
    }

    /// Projections and attention on `[B, S, C]` tokens, before the output projection.
    fn attention(&self, tokens: &Tensor, attend: Attend) -> Result<Tensor> {
        let (q, k, v) = match attend {
            Attend::Itself => self.projections.all(tokens)?,
            Attend::To(context) => {
                let (k, v) = self.keys_values(context)?;
                (self.projections.queries(tokens)?, k, v)
            }
            Attend::KeysValues(k, v) => (self.projections.queries(tokens)?, k.clone(), v.clone()),
        };
        attention(tokens.gpu(), &q, &k, &v, &AttentionOptions { heads: self.heads, scale: None, causal: false })
    }

    /// The residual connection and output rescaling, in the input's layout.
    fn finish(&self, mut out: Tensor, input: &Tensor) -> Result<Tensor> {
        let gpu = input.gpu();
        if self.residual_connection {
            out = ew::add(gpu, &out, input)?;
        }
        if self.rescale_output_factor != 1.0 {
            out = ew::scale(gpu, &out, 1.0 / self.rescale_output_factor)?;
        }
        Ok(out)
    }
}
