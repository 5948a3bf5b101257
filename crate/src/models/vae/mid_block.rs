//! diffusers' `UNetMidBlock2D` as the VAE builds it (unets/unet_2d_blocks.py): a resnet,
//! spatial self-attention with a group norm and a residual connection, another resnet;
//! no time embedding.

use super::channel_chunks::ChannelChunks;
use super::layers::{ChunkPlan, Resnet};
use crate::error::{Error, Result};
use crate::models::attention::{Attention, AttentionConfig};
use crate::models::weights::Weights;

/// The VAE's resnets and norms all use this epsilon.
pub(super) const EPS: f32 = 1e-6;

pub(super) struct MidBlock {
    first: Resnet,
    /// The attention and its weights' prefix.
    attention: Option<(Attention, String)>,
    second: Resnet,
}

impl MidBlock {
    pub fn load(w: &Weights, channels: usize, groups: usize, add_attention: bool) -> Result<Self> {
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
        let attention_weights = w.at("attentions.0");
        if add_attention && attention_weights.contains("query.weight") {
            return Err(Error::Unsupported {
                file: w.file().to_string(),
                detail: format!(
                    "the legacy attention weight names under {} (query/key/value/proj_attn, written by diffusers before 0.14; re-save the model with a current diffusers)",
                    attention_weights.prefix()
                ),
            });
        }
        let resnet = |name: &str| Resnet::load(&w.at(name), [channels, channels], groups, EPS);
        Ok(Self {
            first: resnet("resnets.0")?,
            attention: add_attention
                .then(|| Attention::load(&attention_weights, &attention).map(|a| (a, attention_weights.prefix().to_string())))
                .transpose()?,
            second: resnet("resnets.1")?,
        })
    }

    pub fn forward(&self, x: &ChannelChunks, plan: &ChunkPlan) -> Result<ChannelChunks> {
        let mut h = self.first.forward(x, plan)?;
        if let Some((attention, name)) = &self.attention {
            // Every position attends to every other across all channels: no channel split.
            h = ChannelChunks::whole(attention.forward_spatial(&plan.whole(name, &h)?)?)?;
        }
        self.second.forward(&h, plan)
    }

    /// Every activation has the input's shape; the attention needs it whole.
    pub fn check_sizes(&self, x: [usize; 4], plan: &ChunkPlan) -> Result<[usize; 4]> {
        let h = self.first.check(x, plan)?;
        if let Some((_, name)) = &self.attention {
            plan.check_whole(name, h)?;
        }
        self.second.check(h, plan)
    }
}
