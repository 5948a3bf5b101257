//! diffusers' `UNetMidBlock2D` as the VAE builds it (unets/unet_2d_blocks.py): a resnet,
//! spatial self-attention with a group norm and a residual connection, another resnet;
//! no time embedding.

use crate::error::{Error, Result};
use crate::models::attention::{Attention, AttentionConfig};
use crate::models::feature_map::{ChunkPlan, ChunkedFeatures, FeatureMap};
use crate::models::resnet::{ResnetBlock2D, ResnetConfig};
use crate::models::weights::Weights;

/// The VAE's resnets and norms all use this epsilon.
pub(super) const EPS: f32 = 1e-6;

pub(super) struct MidBlock {
    first: ResnetBlock2D,
    /// The attention and its weights' prefix.
    attention: Option<(Attention, String)>,
    second: ResnetBlock2D,
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
        let resnet = |name: &str| ResnetBlock2D::load(&w.at(name), &resnet_config([channels, channels], groups));
        Ok(Self {
            first: resnet("resnets.0")?,
            attention: add_attention
                .then(|| Attention::load(&attention_weights, &attention).map(|a| (a, attention_weights.prefix().to_string())))
                .transpose()?,
            second: resnet("resnets.1")?,
        })
    }

    pub fn forward(&self, x: &ChunkedFeatures, plan: &ChunkPlan) -> Result<ChunkedFeatures> {
        let mut h = self.first.forward(x, None)?;
        if let Some((attention, name)) = &self.attention {
            // Every position attends to every other across all channels: no channel split.
            h = ChunkedFeatures::whole_tensor(attention.forward_spatial(&h.whole(name)?)?, *plan)?;
        }
        self.second.forward(&h, None)
    }

    /// Every activation has the input's shape; the attention needs it whole.
    pub fn check_sizes(&self, x: [usize; 4], plan: &ChunkPlan) -> Result<()> {
        match &self.attention {
            Some((_, name)) => plan.check_whole(name, x),
            None => Ok(()),
        }
    }
}

/// A resnet of the VAE: no time embedding, `groups` groups, the VAE's epsilon.
pub(super) fn resnet_config([in_channels, out_channels]: [usize; 2], groups: usize) -> ResnetConfig {
    ResnetConfig { in_channels, out_channels, temb_channels: None, groups, eps: EPS, output_scale_factor: 1.0 }
}
