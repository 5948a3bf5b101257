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
/// Groups up to this long are normalised in one launch, a workgroup each (`fused`): at
/// the UNet's latent sizes that saves two launches and most barriers; longer groups (the
/// VAE at full size) need the three passes' parallelism.
const FUSED_MAX_GROUP_LEN: usize = 16384;

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
    Fused { affine_f16: bool, silu: bool },
    StatsPartial,
    StatsCombine,
    Normalise { affine_f16: bool, silu: bool },
}

fn flag(name: &'static str) -> (&'static str, String) {
    (name, String::new())
}

fn group_norm_key(pass: Pass) -> KernelKey {
    let affine = |first: &'static str, affine_f16: bool, silu: bool| {
        let mut defines = vec![flag(first)];
        if affine_f16 {
            defines.push(flag("AFFINE_F16"));
        }
        if silu {
            defines.push(flag("SILU"));
        }
        defines
    };
    let (entry, defines, storage_bindings) = match pass {
        Pass::Fused { affine_f16, silu } => ("fused", affine("FUSED", affine_f16, silu), 4),
        Pass::StatsPartial => ("stats_partial", vec![flag("STATS_PARTIAL")], 2),
        Pass::StatsCombine => ("stats_combine", vec![flag("STATS_COMBINE")], 2),
        Pass::Normalise { affine_f16, silu } => ("normalise", affine("NORMALISE", affine_f16, silu), 5),
    };
    KernelKey { shader: GROUP_NORM, entry, defines, bindings: outputs_last(storage_bindings) }
}

/// Rows up to this long are normalised one invocation each (`layer_norm_rows`): short
/// loops instead of a workgroup's barriers, at the UNet and text-encoder widths of small
/// models; longer rows share a workgroup.
const ROW_PER_INVOCATION_MAX_DIM: usize = 256;
/// Invocations per `layer_norm_rows` workgroup.
const ROWS_WG: u32 = 64;

/// `threads` invocations a row, or `None` for one invocation a row.
fn layer_norm_key(threads: Option<u32>, affine_f16: bool) -> KernelKey {
    let mut defines = vec![("THREADS", threads.unwrap_or(ROWS_WG).to_string())];
    if affine_f16 {
        defines.push(flag("AFFINE_F16"));
    }
    let entry = match threads {
        Some(_) => "layer_norm",
        None => {
            defines.push(flag("ROWS"));
            "layer_norm_rows"
        }
    };
    KernelKey { shader: LAYER_NORM, entry, defines, bindings: outputs_last(4) }
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
    let read = Access::Read;
    let write = Access::ReadWrite;
    if group_len <= FUSED_MAX_GROUP_LEN {
        let fused = group_norm_key(Pass::Fused { affine_f16, silu: fused_silu });
        launch(gpu, fused, &params, &[(x, read), (weight, read), (bias, read), (&out, write)], all_groups)?;
        return Ok(out);
    }
    let partials = gpu.empty(&[all_groups * chunks_per_group, 3], DType::F32)?;
    let stats = gpu.empty(&[all_groups, 2], DType::F32)?;
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
    if dim <= ROW_PER_INVOCATION_MAX_DIM {
        launch(gpu, layer_norm_key(None, affine_f16), &params, &bindings, rows.div_ceil(ROWS_WG as usize))?;
    } else {
        launch(gpu, layer_norm_key(Some(row_threads(dim)), affine_f16), &params, &bindings, rows)?;
    }
    Ok(out)
}

/// Every variant this module can launch, for shader validation.
pub fn variants() -> Vec<KernelKey> {
    let mut keys = vec![group_norm_key(Pass::StatsPartial), group_norm_key(Pass::StatsCombine)];
    for affine_f16 in [false, true] {
        for silu in [false, true] {
            keys.push(group_norm_key(Pass::Normalise { affine_f16, silu }));
            keys.push(group_norm_key(Pass::Fused { affine_f16, silu }));
        }
        for threads in ROW_THREADS.map(Some).into_iter().chain([None]) {
            keys.push(layer_norm_key(threads, affine_f16));
        }
    }
    keys
}
