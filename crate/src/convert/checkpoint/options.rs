//! What a checkpoint's tensors cannot tell, with each family's convention as the default.

use super::Family;
use crate::schedulers::Prediction;

/// Choices for reading a single-file checkpoint. The defaults are right for released
/// SD 1.x and SD 2.x models, except that SD 2.x 768-v models (stable-diffusion-2,
/// stable-diffusion-2-1) need `prediction: Some(Prediction::VPrediction)`: nothing in the
/// file says whether a UNet predicts noise or v.
#[derive(Debug, Clone, Default)]
pub struct CheckpointOptions {
    /// What the UNet predicts. Default epsilon (SD 1.x, SD 2.x base).
    pub prediction: Option<Prediction>,
    /// UNet attention heads: one count for every level or one per level. Default: SD 1.x's
    /// 8 heads everywhere, SD 2.x's 64-wide heads (channels / 64 per level).
    pub unet_heads: Option<Vec<usize>>,
    /// Text encoder attention heads. Default: 64-wide heads (12 for CLIP-L, 16 for OpenCLIP-H).
    pub text_encoder_heads: Option<usize>,
    /// Group count of every GroupNorm in the UNet and the VAE. Default 32.
    pub norm_num_groups: Option<usize>,
    /// The latent size the UNet was trained at (the default image size is 8 times it).
    /// Default 64 (512 px), 96 (768 px) for v-prediction SD 2.x.
    pub sample_size: Option<usize>,
    /// The VAE latent scale. Default 0.18215 (SD 1.x and 2.x).
    pub vae_scaling_factor: Option<f64>,
}

impl CheckpointOptions {
    pub(super) fn prediction(&self) -> Prediction {
        self.prediction.unwrap_or(Prediction::Epsilon)
    }

    pub(super) fn prediction_name(&self) -> &'static str {
        match self.prediction() {
            Prediction::Epsilon => "epsilon",
            Prediction::VPrediction => "v_prediction",
            Prediction::Sample => "sample",
        }
    }

    pub(super) fn norm_num_groups(&self) -> usize {
        self.norm_num_groups.unwrap_or(32)
    }

    pub(super) fn sample_size(&self, family: Family) -> usize {
        self.sample_size.unwrap_or(if self.is_768_v(family) { 96 } else { 64 })
    }

    /// diffusers' SD 2.x 768-v UNet configs set `upcast_attention` (it only changes
    /// precision in torch; attention scores are always f32 here).
    pub(super) fn upcast_attention(&self, family: Family) -> bool {
        self.is_768_v(family)
    }

    pub(super) fn vae_scaling_factor(&self) -> f64 {
        self.vae_scaling_factor.unwrap_or(0.18215)
    }

    fn is_768_v(&self, family: Family) -> bool {
        family == Family::Sd2 && self.prediction() == Prediction::VPrediction
    }
}
