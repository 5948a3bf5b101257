//! Launchers for the layout kernels. `concat.wgsl` holds one strided copy that
//! serves concat, narrow/chunk and permute; `concat_pair.wgsl` joins two f32 tensors in
//! one launch; `upsample.wgsl` the nearest 2x upsample.
//! Inputs may be f32 or packed f16; outputs are f32.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{Access, DType, Gpu, KernelKey, Launch, Tensor};

const COPY_SHADER: &str = "concat.wgsl";
const PAIR_SHADER: &str = "concat_pair.wgsl";
const UPSAMPLE_SHADER: &str = "upsample.wgsl";
const WG: usize = 256;
/// The strided copy and `permute` work on at most this many dimensions.
const MAX_RANK: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct CopyParams {
    n: u32,
    src_offset: u32,
    dst_offset: u32,
    _pad: u32,
    shape: [u32; 4],
    src_strides: [u32; 4],
    dst_strides: [u32; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct PairParams {
    n: u32,
    a_row: u32,
    b_row: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct UpsampleParams {
    n: u32,
    h: u32,
    w: u32,
    _pad: u32,
}

/// A 4-d region copied from `x` into `out`: element `c` of `shape` is read at
/// `src_offset + c·src_strides` and written at `dst_offset + c·dst_strides`.
struct Region {
    shape: [usize; 4],
    src_strides: [usize; 4],
    dst_strides: [usize; 4],
    src_offset: usize,
    dst_offset: usize,
}

/// The shaders index elements with u32.
fn u32_index(what: &str, t: &Tensor, value: usize) -> Result<u32> {
    u32::try_from(value).map_err(|_| Error::TooLarge {
        what: format!("indexing a {:?} tensor in {what} with 32-bit offsets", t.shape()),
        needed: value as u64,
        limit: u32::MAX as u64,
    })
}

fn launch_elementwise(
    gpu: &Gpu,
    shader: &'static str,
    entry: &'static str,
    x: &Tensor,
    out: &Tensor,
    params: &[u8],
    threads: usize,
) -> Result<()> {
    gpu.launch(Launch {
        shader,
        entry,
        defines: super::with_x_dtype("layout", x, Vec::new())?,
        params,
        bindings: &[(x, Access::Read), (out, Access::ReadWrite)],
        workgroups: gpu.grid(threads.div_ceil(WG) as u32),
    })
}

fn copy_region(gpu: &Gpu, x: &Tensor, out: &Tensor, region: Region) -> Result<()> {
    // Offsets stay inside the tensors, so bounding the element counts bounds them all.
    u32_index("copy_strided", x, x.numel())?;
    u32_index("copy_strided", out, out.numel())?;
    let u32s = |v: [usize; 4]| v.map(|d| d as u32);
    let n: usize = region.shape.iter().product();
    let params = CopyParams {
        n: n as u32,
        src_offset: region.src_offset as u32,
        dst_offset: region.dst_offset as u32,
        _pad: 0,
        shape: u32s(region.shape),
        src_strides: u32s(region.src_strides),
        dst_strides: u32s(region.dst_strides),
    };
    launch_elementwise(gpu, COPY_SHADER, "copy_strided", x, out, bytemuck::bytes_of(&params), n)
}

/// Row-major element strides of `shape`.
fn contiguous_strides<const R: usize>(shape: [usize; R]) -> [usize; R] {
    let mut strides = [1; R];
    for d in (0..R.saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

/// `shape` seen as `[outer, shape[axis], inner]`, so any rank reduces to three.
fn around_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (shape[..axis].iter().product(), shape[axis], shape[axis + 1..].iter().product())
}

fn check_axis(op: &'static str, x: &Tensor, axis: usize) -> Result<()> {
    if axis >= x.shape().len() {
        return Err(Error::shape(op, format!("axis {axis} is out of range for shape {:?}", x.shape())));
    }
    Ok(())
}

/// `torch.cat(inputs, dim=axis)`: shapes must agree outside `axis`. One dispatch for two
/// f32 inputs (the UNet's skip connections), else one per input.
pub fn concat(gpu: &Gpu, inputs: &[&Tensor], axis: usize) -> Result<Tensor> {
    let first = inputs.first().ok_or_else(|| Error::shape("concat", "needs at least one input"))?;
    check_axis("concat", first, axis)?;
    let agrees = |t: &Tensor| {
        t.shape().len() == first.shape().len() && t.shape().iter().zip(first.shape()).enumerate().all(|(d, (a, b))| d == axis || a == b)
    };
    if let Some(bad) = inputs.iter().find(|t| !agrees(t)) {
        return Err(Error::shape("concat", format!("shapes {:?} and {:?} differ outside axis {axis}", first.shape(), bad.shape())));
    }
    let total: usize = inputs.iter().map(|t| t.shape()[axis]).sum();
    let mut out_shape = first.shape().to_vec();
    out_shape[axis] = total;
    let out = gpu.empty(&out_shape, DType::F32)?;
    let (outer, _, inner) = around_axis(&out_shape, axis);
    if let [a, b] = inputs
        && a.dtype() == DType::F32
        && b.dtype() == DType::F32
    {
        u32_index("concat_pair", &out, out.numel())?;
        let params =
            PairParams { n: out.numel() as u32, a_row: (a.shape()[axis] * inner) as u32, b_row: (b.shape()[axis] * inner) as u32, _pad: 0 };
        gpu.launch(Launch {
            shader: PAIR_SHADER,
            entry: "concat_pair",
            defines: Vec::new(),
            params: bytemuck::bytes_of(&params),
            bindings: &[(a, Access::Read), (b, Access::Read), (&out, Access::ReadWrite)],
            workgroups: gpu.grid(out.numel().div_ceil(WG) as u32),
        })?;
        return Ok(out);
    }
    let mut offset = 0;
    for t in inputs {
        let len = t.shape()[axis];
        let region = Region {
            shape: [1, 1, outer, len * inner],
            src_strides: [0, 0, len * inner, 1],
            dst_strides: [0, 0, total * inner, 1],
            src_offset: 0,
            dst_offset: offset * inner,
        };
        copy_region(gpu, t, &out, region)?;
        offset += len;
    }
    Ok(out)
}

/// `x.narrow(axis, start, len)`: elements `start..start + len` along `axis`, copied.
pub fn narrow(gpu: &Gpu, x: &Tensor, axis: usize, start: usize, len: usize) -> Result<Tensor> {
    check_axis("narrow", x, axis)?;
    let (outer, size, inner) = around_axis(x.shape(), axis);
    if start.checked_add(len).is_none_or(|end| end > size) {
        return Err(Error::shape("narrow", format!("{start}..{start}+{len} is out of range for axis {axis} of {:?}", x.shape())));
    }
    let mut out_shape = x.shape().to_vec();
    out_shape[axis] = len;
    let out = gpu.empty(&out_shape, DType::F32)?;
    let region = Region {
        shape: [1, 1, outer, len * inner],
        src_strides: [0, 0, size * inner, 1],
        dst_strides: [0, 0, len * inner, 1],
        src_offset: start * inner,
        dst_offset: 0,
    };
    copy_region(gpu, x, &out, region)?;
    Ok(out)
}

/// `x.chunk(chunks, axis)` as torch does it: pieces of `ceil(size / chunks)` along
/// `axis`, the last one smaller when it does not divide (so there may be fewer pieces).
pub fn chunk(gpu: &Gpu, x: &Tensor, chunks: usize, axis: usize) -> Result<Vec<Tensor>> {
    check_axis("chunk", x, axis)?;
    if chunks == 0 {
        return Err(Error::shape("chunk", "needs at least one chunk"));
    }
    let size = x.shape()[axis];
    if size == 0 {
        // torch keeps the count when every piece is empty.
        return (0..chunks).map(|_| narrow(gpu, x, axis, 0, 0)).collect();
    }
    let step = size.div_ceil(chunks);
    (0..size).step_by(step).map(|start| narrow(gpu, x, axis, start, step.min(size - start))).collect()
}

fn is_permutation(perm: &[usize], rank: usize) -> bool {
    let mut sorted = perm.to_vec();
    sorted.sort_unstable();
    sorted.into_iter().eq(0..rank)
}

/// `x.permute(perm)` for at most 4 dimensions: output dimension `k` is input dimension `perm[k]`.
pub fn permute(gpu: &Gpu, x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let rank = x.shape().len();
    if rank > MAX_RANK {
        return Err(Error::shape("permute", format!("at most {MAX_RANK} dimensions, got {:?}", x.shape())));
    }
    if !is_permutation(perm, rank) {
        return Err(Error::shape("permute", format!("{perm:?} is not a permutation of the {rank} dimensions of {:?}", x.shape())));
    }
    // Right-align in 4 dimensions; the padding dimensions have size 1.
    let pad = MAX_RANK - rank;
    let mut in_shape = [1; MAX_RANK];
    in_shape[pad..].copy_from_slice(x.shape());
    let in_strides = contiguous_strides(in_shape);
    let mut shape = [1; MAX_RANK];
    let mut src_strides = [0; MAX_RANK];
    for (k, &d) in perm.iter().enumerate() {
        shape[pad + k] = in_shape[pad + d];
        src_strides[pad + k] = in_strides[pad + d];
    }
    let out = gpu.empty(&shape[pad..], DType::F32)?;
    let region = Region { shape, src_strides, dst_strides: contiguous_strides(shape), src_offset: 0, dst_offset: 0 };
    copy_region(gpu, x, &out, region)?;
    Ok(out)
}

/// Nearest-neighbour 2x upsampling of `[N, C, H, W]` to `[N, C, 2H, 2W]`
/// (diffusers' Upsample2D: `interpolate(scale_factor=2, mode="nearest")`).
pub fn upsample_nearest_2x(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    let &[n, c, h, w] = x.shape() else {
        return Err(Error::shape("upsample_nearest_2x", format!("expects [N, C, H, W], got {:?}", x.shape())));
    };
    let out = gpu.empty(&[n, c, 2 * h, 2 * w], DType::F32)?;
    let params = UpsampleParams { n: u32_index("upsample_nearest_2x", &out, out.numel())?, h: h as u32, w: w as u32, _pad: 0 };
    launch_elementwise(gpu, UPSAMPLE_SHADER, "upsample_nearest_2x", x, &out, bytemuck::bytes_of(&params), out.numel())?;
    Ok(out)
}

/// Every variant this module can launch, for shader validation.
pub fn variants() -> Vec<KernelKey> {
    let mut keys = Vec::new();
    for (shader, entry) in [(COPY_SHADER, "copy_strided"), (UPSAMPLE_SHADER, "upsample_nearest_2x")] {
        for defines in [Vec::new(), vec![("X_F16", String::new())]] {
            keys.push(KernelKey { shader, entry, defines, bindings: vec![Access::Read, Access::ReadWrite] });
        }
    }
    keys.push(KernelKey {
        shader: PAIR_SHADER,
        entry: "concat_pair",
        defines: Vec::new(),
        bindings: vec![Access::Read, Access::Read, Access::ReadWrite],
    });
    keys
}
