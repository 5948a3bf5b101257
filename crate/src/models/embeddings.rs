//! diffusers' timestep embeddings (models/embeddings.py): the sinusoidal `Timesteps`
//! projection, the `TimestepEmbedding` MLP (with LCM's `cond_proj`), and LCM's
//! guidance-scale embedding (the pipeline's `get_guidance_scale_embedding`).

use super::nn::Linear;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::kernels::elementwise::{self as ew, Unary};
use crate::kernels::embedding::timestep_embedding;
use crate::models::weights::Weights;

/// `get_timestep_embedding`'s default period, which neither the UNet nor LCM changes.
const MAX_PERIOD: f32 = 10000.0;

/// `Timesteps(num_channels, flip_sin_to_cos, downscale_freq_shift)`: `[B]` -> `[B, dim]`.
#[derive(Debug, Clone, Copy)]
pub struct Timesteps {
    pub dim: usize,
    pub flip_sin_to_cos: bool,
    pub downscale_freq_shift: f32,
}

impl Timesteps {
    pub fn forward(&self, timesteps: &Tensor) -> Result<Tensor> {
        timestep_embedding(timesteps.gpu(), timesteps, self.dim, self.flip_sin_to_cos, self.downscale_freq_shift, 1.0, MAX_PERIOD)
    }
}

/// The widths of a `TimestepEmbedding` and its activations (diffusers' `act_fn`, `post_act_fn`).
#[derive(Debug, Clone, Copy)]
pub struct TimestepEmbeddingConfig {
    pub in_channels: usize,
    pub time_embed_dim: usize,
    pub act: Unary,
    pub post_act: Option<Unary>,
    /// Width of LCM's guidance embedding (`time_cond_proj_dim`), when the model takes one.
    pub cond_proj_dim: Option<usize>,
}

/// `linear_1 -> act -> linear_2 (-> post_act)`, with `cond_proj(condition)` added to the
/// input first when a condition is given (`TimestepEmbedding.forward`).
pub struct TimestepEmbedding {
    cond_proj: Option<Linear>,
    linear_1: Linear,
    act: Unary,
    linear_2: Linear,
    post_act: Option<Unary>,
}

impl TimestepEmbedding {
    pub fn load(w: &Weights, c: &TimestepEmbeddingConfig) -> Result<Self> {
        Ok(Self {
            cond_proj: c.cond_proj_dim.map(|dim| Linear::load(&w.at("cond_proj"), dim, c.in_channels, false)).transpose()?,
            linear_1: Linear::load(&w.at("linear_1"), c.in_channels, c.time_embed_dim, true)?,
            act: c.act,
            linear_2: Linear::load(&w.at("linear_2"), c.time_embed_dim, c.time_embed_dim, true)?,
            post_act: c.post_act,
        })
    }

    /// `sample [B, in]`, `condition [B, cond_proj_dim]` -> `[B, time_embed_dim]`.
    pub fn forward(&self, sample: &Tensor, condition: Option<&Tensor>) -> Result<Tensor> {
        let sample = match (condition, &self.cond_proj) {
            (None, _) => sample.clone(),
            (Some(condition), Some(cond_proj)) => {
                let expected = [sample.shape()[0], cond_proj.in_features];
                if condition.shape() != expected {
                    return Err(Error::shape(
                        "TimestepEmbedding",
                        format!("timestep_cond must be {expected:?}, got {:?}", condition.shape()),
                    ));
                }
                ew::add(sample.gpu(), sample, &cond_proj.forward(condition)?)?
            }
            (Some(_), None) => {
                return Err(Error::shape("TimestepEmbedding", "timestep_cond was given but the config has no time_cond_proj_dim"));
            }
        };
        let hidden = self.linear_1.forward_with(&sample, Some(self.act))?;
        self.linear_2.forward_with(&hidden, self.post_act)
    }
}

/// LCM's guidance-scale embedding of `w` (the pipeline passes `guidance_scale - 1`), `[B, dim]`:
/// `get_guidance_scale_embedding` embeds `w * 1000` as `[sin, cos]` with frequencies
/// `exp(-k * ln(10000) / (dim/2 - 1))`, zero-padded to an odd `dim`.
///
/// Computed on the CPU in f32 with torch's order of operations, because the angles reach
/// `1000 * w` radians, where one ulp of a frequency moves an angle by ~1e-4: this lands
/// 1e-4 from the pipeline's values (torch's own `exp` is 1 ulp off in places), the
/// `timestep_embedding` kernel, which rounds in another order, twice as far.
pub fn guidance_scale_embedding(gpu: &Gpu, w: &[f32], dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let step = libm::logf(MAX_PERIOD) / (half as f32 - 1.0);
    let frequencies: Vec<f32> = (0..half).map(|k| libm::expf(k as f32 * -step)).collect();
    let mut values = Vec::with_capacity(w.len() * dim);
    for &w in w {
        let angles: Vec<f32> = frequencies.iter().map(|&f| (w * 1000.0) * f).collect();
        values.extend(angles.iter().map(|&a| libm::sinf(a)));
        values.extend(angles.iter().map(|&a| libm::cosf(a)));
        values.resize(values.len() + dim % 2, 0.0);
    }
    gpu.upload_f32(&[w.len(), dim], &values)
}
