//! Launcher for `softmax.wgsl`: a numerically stable softmax over the last dimension.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{Access, DType, Gpu, KernelKey, Launch, Tensor};

const SHADER: &str = "softmax.wgsl";

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    len: u32,
    scale: f32,
    _pad: u32,
}

/// Invocations for a kernel that gives one workgroup to each row of `len` values.
/// Short rows (77 text tokens, a 320-wide layer norm) would leave most of 256
/// invocations idle and pay for two more reduction steps; long rows want them all.
pub(super) fn row_threads(len: usize) -> u32 {
    if len >= 2048 { 256 } else { 64 }
}

/// The row-kernel sizes `row_threads` can pick, for `variants()`.
pub(super) const ROW_THREADS: [u32; 2] = [64, 256];

/// Checks that `x` is f32 and small enough for the shaders' u32 indices (with
/// headroom for a folded grid's last workgroups).
pub(super) fn check_f32_input(op: &'static str, x: &Tensor) -> Result<()> {
    if x.dtype() != DType::F32 {
        return Err(Error::shape(op, format!("x must be f32, got {:?}", x.dtype())));
    }
    if x.numel() >= 1 << 31 {
        return Err(Error::shape(op, format!("x {:?} has more than 2^31 elements", x.shape())));
    }
    Ok(())
}

/// `(rows, len)` of `x` seen as `[rows, len]` over its last dimension (f32), or a
/// shape error for `op`; no rows when `len` is 0.
pub(super) fn rows_of(op: &'static str, x: &Tensor) -> Result<(usize, usize)> {
    let len = *x.shape().last().ok_or_else(|| Error::shape(op, "x needs at least one dimension"))?;
    check_f32_input(op, x)?;
    Ok((x.numel().checked_div(len).unwrap_or(0), len))
}

fn key(threads: u32) -> KernelKey {
    KernelKey {
        shader: SHADER,
        entry: "softmax",
        defines: vec![("THREADS", threads.to_string())],
        bindings: vec![Access::Read, Access::ReadWrite],
    }
}

/// `softmax(x)` over the last dimension of `x` (f32); the result has `x`'s shape.
pub fn softmax(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    scaled_softmax(gpu, x, 1.0)
}

/// `softmax(scale * x)` over the last dimension of `x` (f32), e.g. attention scores
/// with `scale = 1/sqrt(head_dim)`.
pub fn scaled_softmax(gpu: &Gpu, x: &Tensor, scale: f32) -> Result<Tensor> {
    let (rows, len) = rows_of("softmax", x)?;
    let out = gpu.empty(x.shape(), DType::F32)?;
    let params = Params { rows: rows as u32, len: len as u32, scale, _pad: 0 };
    let KernelKey { shader, entry, defines, .. } = key(row_threads(len));
    gpu.launch(Launch {
        shader,
        entry,
        defines,
        params: bytemuck::bytes_of(&params),
        bindings: &[(x, Access::Read), (&out, Access::ReadWrite)],
        workgroups: gpu.grid(rows as u32),
    })?;
    Ok(out)
}

/// Every variant this module can launch, for shader validation.
pub fn variants() -> Vec<KernelKey> {
    ROW_THREADS.into_iter().map(key).collect()
}
