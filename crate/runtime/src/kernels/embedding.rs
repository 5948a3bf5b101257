//! Launcher for `timestep_embedding.wgsl`: diffusers' sinusoidal timestep embedding
//! (also LCM's guidance-scale embedding: `(w - 1) * 1000` with no flip and shift 1).

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{Access, DType, Gpu, KernelKey, Launch, Tensor};

const SHADER: &str = "timestep_embedding.wgsl";
const ENTRY: &str = "timestep_embedding";
const WG: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    dim: u32,
    half_dim: u32,
    flip: u32,
    neg_log_max_period: f32,
    freq_divisor: f32,
    scale: f32,
    _pad: u32,
}

/// diffusers' `get_timestep_embedding(timesteps, dim, flip_sin_to_cos, downscale_freq_shift,
/// scale, max_period)`: `timesteps` is `[B]` f32, the result `[B, dim]`. With `half = dim / 2`
/// the angles are `scale * t * exp(-ln(max_period) * j / (half - downscale_freq_shift))`;
/// the row is `[sin, cos]` of them (`[cos, sin]` when flipped), zero-padded when `dim` is odd.
/// Stable Diffusion uses `flip_sin_to_cos = true`, shift 0, scale 1, max_period 10000.
pub fn timestep_embedding(
    gpu: &Gpu,
    timesteps: &Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f32,
    scale: f32,
    max_period: f32,
) -> Result<Tensor> {
    const OP: &str = "timestep_embedding";
    let &[batch] = timesteps.shape() else {
        return Err(Error::shape(OP, format!("timesteps must be one-dimensional [B], got {:?}", timesteps.shape())));
    };
    if timesteps.dtype() != DType::F32 {
        return Err(Error::shape(OP, format!("timesteps must be f32, got {:?}", timesteps.dtype())));
    }
    if dim == 0 {
        return Err(Error::shape(OP, "dim must be positive"));
    }
    if !(max_period > 0.0 && max_period.is_finite()) {
        return Err(Error::shape(OP, format!("max_period must be finite and positive, got {max_period}")));
    }
    if !scale.is_finite() {
        return Err(Error::shape(OP, format!("scale must be finite, got {scale}")));
    }
    let half = dim / 2;
    let freq_divisor = (half as f64 - downscale_freq_shift as f64) as f32;
    if half > 0 && !(freq_divisor.is_finite() && freq_divisor != 0.0) {
        return Err(Error::shape(OP, format!("dim / 2 - downscale_freq_shift must be finite and nonzero, got {freq_divisor}")));
    }
    let out = gpu.empty(&[batch, dim], DType::F32)?;
    let n = u32::try_from(out.numel()).map_err(|_| Error::shape(OP, format!("{batch} x {dim} is too many elements")))?;
    let params = Params {
        n,
        dim: dim as u32,
        half_dim: half as u32,
        flip: flip_sin_to_cos as u32,
        neg_log_max_period: -(max_period as f64).ln() as f32,
        freq_divisor,
        scale,
        _pad: 0,
    };
    gpu.launch(Launch {
        shader: SHADER,
        entry: ENTRY,
        defines: Vec::new(),
        params: bytemuck::bytes_of(&params),
        bindings: &[(timesteps, Access::Read), (&out, Access::ReadWrite)],
        workgroups: gpu.grid(out.numel().div_ceil(WG) as u32),
    })?;
    Ok(out)
}

/// Every variant this module can launch, for shader validation.
pub fn variants() -> Vec<KernelKey> {
    vec![KernelKey { shader: SHADER, entry: ENTRY, defines: Vec::new(), bindings: vec![Access::Read, Access::ReadWrite] }]
}
