//! diffusers' `UNetMidBlock2D` as the VAE builds it (unets/unet_2d_blocks.py): a resnet,
//! spatial self-attention with a group norm and a residual connection, another resnet;
//! no time embedding.

use super::ActivationLimit;
use crate::error::{Error, Result};
use crate::gpu::Tensor;
use crate::loader::Weights;
use crate::models::attention::{Attention, AttentionConfig};
use crate::models::nn::join;
use crate::models::resnet::{ResnetBlock2D, ResnetConfig};

/// The VAE's resnets and norms all use this epsilon.
pub(super) const EPS: f32 = 1e-6;

pub(super) struct MidBlock {
    prefix: String,
    first: ResnetBlock2D,
    attention: Option<Attention>,
    second: ResnetBlock2D,
}

impl MidBlock {
    pub fn load(w: &Weights, prefix: &str, channels: usize, groups: usize, add_attention: bool) -> Result<Self> {
        let resnet =
            ResnetConfig { in_channels: channels, out_channels: channels, temb_channels: None, groups, eps: EPS, output_scale_factor: 1.0 };
        // diffusers passes attention_head_dim = channels: a single head.
        let attention = AttentionConfig {
            query_dim: channels,
            cross_attention_dim: None,
            heads: 1,
            head_dim: channels,
            qkv_bias: true,
            group_norm: Some((groups, EPS)),
            residual_connection: true,
            rescale_output_factor: 1.0,
        };
        let attention_prefix = join(prefix, "attentions.0");
        if add_attention && w.contains(&join(&attention_prefix, "query.weight")) {
            return Err(Error::Unsupported {
                file: w.file().to_string(),
                detail: format!(
                    "the legacy attention weight names under {attention_prefix} (query/key/value/proj_attn, written by diffusers before 0.14; re-save the model with a current diffusers)"
                ),
            });
        }
        Ok(Self {
            prefix: prefix.to_string(),
            first: ResnetBlock2D::load(w, &join(prefix, "resnets.0"), &resnet)?,
            attention: add_attention.then(|| Attention::load(w, &attention_prefix, &attention)).transpose()?,
            second: ResnetBlock2D::load(w, &join(prefix, "resnets.1"), &resnet)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.first.forward(x, None)?;
        if let Some(attention) = &self.attention {
            h = attention.forward_spatial(&h)?;
        }
        self.second.forward(&h, None)
    }

    /// Every activation has the input's shape (the attention's tokens too, transposed).
    pub fn check_sizes(&self, x: [usize; 4], limit: &ActivationLimit) -> Result<[usize; 4]> {
        limit.check(&self.prefix, x)?;
        Ok(x)
    }
}
