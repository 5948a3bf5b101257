//! diffusers' `DiagonalGaussianDistribution` (models/autoencoders/vae.py) over latents:
//! the log-variance clamp and drawing a sample.

use crate::error::{Error, Result};
use crate::gpu::Tensor;
use crate::kernels::elementwise::{self as ew, Unary};

/// diffusers clamps the log-variance to this range before using it.
const LOGVAR_MIN: f32 = -30.0;
const LOGVAR_MAX: f32 = 20.0;

/// `logvar.clamp(-30, 20)`.
pub(super) fn clamp_logvar(logvar: &Tensor) -> Result<Tensor> {
    ew::unary(logvar.gpu(), logvar, Unary::Clamp { min: LOGVAR_MIN, max: LOGVAR_MAX })
}

/// `mean + exp(0.5 * logvar) * noise`: a draw from the distribution `encode` returns
/// (diffusers' `DiagonalGaussianDistribution.sample`), `noise` being standard normal.
pub fn sample_latents(mean: &Tensor, logvar: &Tensor, noise: &Tensor) -> Result<Tensor> {
    if logvar.shape() != mean.shape() || noise.shape() != mean.shape() {
        return Err(Error::shape(
            "sample_latents",
            format!("mean {:?}, logvar {:?} and noise {:?} must have one shape", mean.shape(), logvar.shape(), noise.shape()),
        ));
    }
    let gpu = mean.gpu();
    let std = ew::unary(gpu, &ew::scale(gpu, logvar, 0.5)?, Unary::Exp)?;
    ew::add(gpu, mean, &ew::mul(gpu, &std, noise)?)
}
