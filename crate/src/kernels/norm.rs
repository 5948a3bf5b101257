//! Launchers for `group_norm.wgsl` and `layer_norm.wgsl` (PyTorch semantics: biased
//! variance, eps inside the square root, per-channel affine after).

use bytemuck::{Pod, Zeroable};

use super::softmax::{ROW_THREADS, check_f32_input, row_threads, rows_of};
use crate::error::{Error, Result};
use crate::gpu::{Access, DType, Gpu, KernelKey, Launch, Tensor};

const GROUP_NORM: &str = "group_norm.wgsl";
const LAYER_NORM: &str = "layer_norm.wgsl";
/// Invocations per group-norm workgroup (`WG` in the shader).
const GROUP_NORM_WG: usize = 256;
/// Elements one `stats_partial` workgroup reduces (`CHUNK` in the shader).
const CHUNK: usize = 4096;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct GroupNormParams {
    groups: u32,
    group_len: u32,
    chunks_per_group: u32,
    channels: u32,
    spatial: u32,
    numel: u32,
    eps: f32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct LayerNormParams {
    rows: u32,
    dim: u32,
    eps: f32,
    _pad: u32,
}

/// The group-norm passes, in launch order.
#[derive(Clone, Copy)]
enum Pass {
    StatsPartial,
    StatsCombine,
    Normalise { affine_f16: bool, silu: bool },
}

fn flag(name: &'static str) -> (&'static str, String) {
    (name, String::new())
}

fn group_norm_key(pass: Pass) -> KernelKey {
    let (entry, defines, storage_bindings) = match pass {
        Pass::StatsPartial => ("stats_partial", vec![flag("STATS_PARTIAL")], 2),
        Pass::StatsCombine => ("stats_combine", vec![flag("STATS_COMBINE")], 2),
        Pass::Normalise { affine_f16, silu } => {
            let mut defines = vec![flag("NORMALISE")];
            if affine_f16 {
                defines.push(flag("AFFINE_F16"));
            }
            if silu {
                defines.push(flag("SILU"));
            }
            ("normalise", defines, 5)
        }
    };
    KernelKey { shader: GROUP_NORM, entry, defines, bindings: outputs_last(storage_bindings) }
}

fn layer_norm_key(threads: u32, affine_f16: bool) -> KernelKey {
    let mut defines = vec![("THREADS", threads.to_string())];
    if affine_f16 {
        defines.push(flag("AFFINE_F16"));
    }
    KernelKey { shader: LAYER_NORM, entry: "layer_norm", defines, bindings: outputs_last(4) }
}

/// `n` storage bindings: inputs, then the one output.
fn outputs_last(n: usize) -> Vec<Access> {
    (0..n).map(|i| if i + 1 == n { Access::ReadWrite } else { Access::Read }).collect()
}

fn launch<P: Pod>(gpu: &Gpu, key: KernelKey, params: &P, bindings: &[(&Tensor, Access)], workgroups: usize) -> Result<()> {
    gpu.launch(Launch {
        shader: key.shader,
        entry: key.entry,
        defines: key.defines,
        params: bytemuck::bytes_of(params),
        bindings,
        workgroups: gpu.grid(workgroups as u32),
    })
}

/// Checks that `weight` and `bias` are `[len]` of one dtype; true when that is f16.
fn affine_is_f16(op: &'static str, weight: &Tensor, bias: &Tensor, len: usize) -> Result<bool> {
    for (name, t) in [("weight", weight), ("bias", bias)] {
        if t.shape() != [len] {
            return Err(Error::shape(op, format!("{name} must be [{len}], got {:?}", t.shape())));
        }
    }
    if weight.dtype() != bias.dtype() {
        return Err(Error::shape(op, format!("weight is {:?} but bias is {:?}; they must match", weight.dtype(), bias.dtype())));
    }
    weight.is_f16_float(op)
}

/// Group normalisation of `x` `[N, C, *spatial]` (f32) over `groups` groups of
/// channels, then `* weight[c] + bias[c]` (both `[C]`, f32 or packed f16) and, when
/// `fused_silu`, SiLU. The result is f32 with `x`'s shape.
pub fn group_norm(gpu: &Gpu, x: &Tensor, groups: usize, weight: &Tensor, bias: &Tensor, eps: f32, fused_silu: bool) -> Result<Tensor> {
    const OP: &str = "group_norm";
    let shape = x.shape();
    if shape.len() < 2 {
        return Err(Error::shape(OP, format!("x must be [N, C, *spatial], got {shape:?}")));
    }
    check_f32_input(OP, x)?;
    let channels = shape[1];
    if groups == 0 || !channels.is_multiple_of(groups) {
        return Err(Error::shape(OP, format!("{channels} channels do not split into {groups} groups")));
    }
    let affine_f16 = affine_is_f16(OP, weight, bias, channels)?;
    let out = gpu.empty(shape, DType::F32)?;
    if x.numel() == 0 {
        return Ok(out);
    }
    let spatial: usize = shape[2..].iter().product();
    let group_len = channels / groups * spatial;
    let chunks_per_group = group_len.div_ceil(CHUNK);
    let all_groups = shape[0] * groups;
    let params = GroupNormParams {
        groups: all_groups as u32,
        group_len: group_len as u32,
        chunks_per_group: chunks_per_group as u32,
        channels: channels as u32,
        spatial: spatial as u32,
        numel: x.numel() as u32,
        eps,
        _pad: 0,
    };
    let partials = gpu.empty(&[all_groups * chunks_per_group, 3], DType::F32)?;
    let stats = gpu.empty(&[all_groups, 2], DType::F32)?;
    let read = Access::Read;
    let write = Access::ReadWrite;
    launch(gpu, group_norm_key(Pass::StatsPartial), &params, &[(x, read), (&partials, write)], all_groups * chunks_per_group)?;
    launch(gpu, group_norm_key(Pass::StatsCombine), &params, &[(&partials, read), (&stats, write)], all_groups)?;
    let normalise = group_norm_key(Pass::Normalise { affine_f16, silu: fused_silu });
    let bindings = [(x, read), (&stats, read), (weight, read), (bias, read), (&out, write)];
    launch(gpu, normalise, &params, &bindings, x.numel().div_ceil(GROUP_NORM_WG))?;
    Ok(out)
}

/// Layer normalisation of `x` `[.., D]` (f32) over its last dimension, then
/// `* weight + bias` (both `[D]`, f32 or packed f16). The result is f32 with `x`'s shape.
pub fn layer_norm(gpu: &Gpu, x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    const OP: &str = "layer_norm";
    let (rows, dim) = rows_of(OP, x)?;
    let affine_f16 = affine_is_f16(OP, weight, bias, dim)?;
    let out = gpu.empty(x.shape(), DType::F32)?;
    let params = LayerNormParams { rows: rows as u32, dim: dim as u32, eps, _pad: 0 };
    let bindings = [(x, Access::Read), (weight, Access::Read), (bias, Access::Read), (&out, Access::ReadWrite)];
    launch(gpu, layer_norm_key(row_threads(dim), affine_f16), &params, &bindings, rows)?;
    Ok(out)
}

/// Every variant this module can launch, for shader validation.
pub fn variants() -> Vec<KernelKey> {
    let mut keys = vec![group_norm_key(Pass::StatsPartial), group_norm_key(Pass::StatsCombine)];
    for affine_f16 in [false, true] {
        for silu in [false, true] {
            keys.push(group_norm_key(Pass::Normalise { affine_f16, silu }));
        }
        for threads in ROW_THREADS {
            keys.push(layer_norm_key(threads, affine_f16));
        }
    }
    keys
}
