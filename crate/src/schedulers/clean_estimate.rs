//! A step's clean estimate (diffusers' `pred_original_sample`): `a * sample + b *
//! model_output`, clamped where the sampler clips. Samplers keep its inputs, so that it
//! costs a launch only when someone asks for it (a step preview), not on every step.

use super::sigmas::linear_combination;
use crate::error::Result;
use crate::gpu::Tensor;
use crate::kernels::elementwise::{self as ew, Unary};

#[derive(Clone)]
pub(super) struct CleanEstimate {
    a: f64,
    b: f64,
    sample: Tensor,
    model_output: Tensor,
    clamp: Option<f32>,
}

impl CleanEstimate {
    pub fn new((a, b): (f64, f64), sample: &Tensor, model_output: &Tensor) -> Self {
        Self { a, b, sample: sample.clone(), model_output: model_output.clone(), clamp: None }
    }

    /// Clamped to `[-range, range]` (samplers with `clip_sample`).
    pub fn clamped(self, range: Option<f32>) -> Self {
        Self { clamp: range, ..self }
    }

    pub fn compute(&self) -> Result<Tensor> {
        let estimate = linear_combination(&[(self.a, &self.sample), (self.b, &self.model_output)])?;
        match self.clamp {
            Some(range) => ew::unary(estimate.gpu(), &estimate, Unary::Clamp { min: -range, max: range }),
            None => Ok(estimate),
        }
    }
}
