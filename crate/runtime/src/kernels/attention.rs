//! Launcher for `attention.wgsl` and `attention_rows.wgsl`: fused multi-head attention
//! with an online softmax, straight from the `[B, S, H*D]` projections (no permutes, no
//! score matrix in memory).

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{Access, DType, Gpu, KernelKey, Launch, Tensor};

const SHADER: &str = "attention.wgsl";
const ENTRY: &str = "attention";
/// Invocations per workgroup (the shader's `WG`).
const WG: usize = 256;
/// WebGPU's default `maxComputeWorkgroupStorageSize`, which the browser guarantees.
const WORKGROUP_BYTES: usize = 16 * 1024;

/// (invocations per query row, head-dim elements each), by padded head dim. Ten slots make
/// SD's 40, 80 and 160 exact, sixteen make 64 and 512 exact; any other head dim up to
/// 1024 pads to the next one.
const TILINGS: [(usize, usize); 10] = [(4, 10), (4, 16), (8, 10), (8, 16), (16, 10), (16, 16), (32, 10), (32, 16), (64, 10), (64, 16)];

/// The largest head dim any tiling covers.
pub const MAX_HEAD_DIM: usize = 64 * 16;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionOptions {
    /// Heads the last dimension is split into: head `h` is elements `h*D .. (h+1)*D`.
    pub heads: usize,
    /// Multiplies the scores before the softmax; `None` means `1/sqrt(D)`.
    pub scale: Option<f32>,
    /// Query `i` sees only keys `j <= i` (CLIP's text encoder; PyTorch's `is_causal`).
    pub causal: bool,
}

/// How `attention` splits one head dim over a workgroup: the shader's defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    /// Invocations that share one query row, each owning `slots` elements of the head dim.
    pub row_threads: usize,
    pub slots: usize,
    /// Keys staged in workgroup memory at a time.
    pub key_block: usize,
}

impl Tiling {
    fn new(row_threads: usize, slots: usize) -> Tiling {
        let rows = WG / row_threads;
        let floats_per_key = row_threads * slots + WG + rows;
        Tiling { row_threads, slots, key_block: WORKGROUP_BYTES / 4 / floats_per_key }
    }

    /// The tiling for head dim `head_dim`: the least padding, or `None` past `MAX_HEAD_DIM`.
    pub fn for_head_dim(head_dim: usize) -> Option<Tiling> {
        TILINGS.iter().find(|(threads, slots)| threads * slots >= head_dim).map(|&(threads, slots)| Tiling::new(threads, slots))
    }

    /// Query rows one workgroup handles.
    pub fn rows(&self) -> usize {
        WG / self.row_threads
    }

    /// Workgroup memory the shader declares: the K/V tile, the partial dot products and the scores.
    pub fn workgroup_bytes(&self) -> usize {
        4 * self.key_block * (self.row_threads * self.slots + WG + self.rows())
    }

    /// The grid for `batch` x `q_len` queries of `heads` heads: [query blocks, heads, batch].
    pub fn workgroups(&self, batch: usize, q_len: usize, heads: usize) -> [u32; 3] {
        // Past u32 the launch reports the dimension as too large.
        [q_len.div_ceil(self.rows()), heads, batch].map(|n| u32::try_from(n).unwrap_or(u32::MAX))
    }

    fn key(&self) -> KernelKey {
        KernelKey {
            shader: SHADER,
            entry: ENTRY,
            defines: vec![
                ("ROW_THREADS", self.row_threads.to_string()),
                ("SLOTS", self.slots.to_string()),
                ("KEY_BLOCK", self.key_block.to_string()),
            ],
            bindings: vec![Access::Read, Access::Read, Access::Read, Access::ReadWrite],
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    q_len: u32,
    kv_len: u32,
    heads: u32,
    head_dim: u32,
    scale_log2: f32,
    causal: u32,
    batch: u32,
    _pad: u32,
}

/// Head dims up to this (and multiples of 4) run `attention_rows.wgsl`, an invocation per
/// query row with no workgroup memory: at small models' sizes the flash kernel's staging
/// and barriers cost more than the arithmetic, above all on GPUs emulated on a CPU.
const ROWS_MAX_HEAD_DIM: usize = 32;
/// Invocations per `attention_rows` workgroup (`WG` there).
const ROWS_WG: usize = 64;

fn rows_key(head_dim: usize) -> KernelKey {
    KernelKey {
        shader: "attention_rows.wgsl",
        entry: "attention_rows",
        defines: vec![("HEAD_VECS", (head_dim / 4).to_string())],
        bindings: vec![Access::Read, Access::Read, Access::Read, Access::ReadWrite],
    }
}

fn shape_err(detail: impl std::fmt::Display) -> Error {
    Error::shape("attention", detail)
}

/// Checks the inputs; returns (batch, q_len, kv_len, head_dim).
fn check_inputs(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions) -> Result<(usize, usize, usize, usize)> {
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        if t.dtype() != DType::F32 {
            return Err(shape_err(format!("{name} must be f32, got {:?}", t.dtype())));
        }
        if t.shape().len() != 3 {
            return Err(shape_err(format!("{name} must be [batch, tokens, heads*head_dim], got {:?}", t.shape())));
        }
    }
    if k.shape() != v.shape() {
        return Err(shape_err(format!("k {:?} and v {:?} differ", k.shape(), v.shape())));
    }
    let (qs, ks) = (q.shape(), k.shape());
    if qs[0] != ks[0] || qs[2] != ks[2] {
        return Err(shape_err(format!("q {qs:?} and k/v {ks:?} must agree in batch and width")));
    }
    if opts.heads == 0 || qs[2] % opts.heads != 0 || qs[2] == 0 {
        return Err(shape_err(format!("width {} does not split into {} heads", qs[2], opts.heads)));
    }
    let head_dim = qs[2] / opts.heads;
    if head_dim > MAX_HEAD_DIM {
        return Err(shape_err(format!("head dim {head_dim} is over the supported {MAX_HEAD_DIM}")));
    }
    if ks[1] == 0 {
        return Err(shape_err("needs at least one key"));
    }
    if opts.scale.is_some_and(|s| !s.is_finite()) {
        return Err(shape_err(format!("scale {:?} is not finite", opts.scale)));
    }
    // The shader indexes with u32.
    if [q, k].iter().any(|t| t.numel() >= 1 << 31) {
        return Err(shape_err(format!("q {qs:?} or k {ks:?} has more than 2^31 elements")));
    }
    Ok((qs[0], qs[1], ks[1], head_dim))
}

/// `softmax(scale * q k^T) v` for every batch and head. `q` is `[B, Sq, H*D]`, `k` and `v`
/// are `[B, Skv, H*D]` (f32); the result is `[B, Sq, H*D]`, heads laid out as in `q`.
pub fn attention(gpu: &Gpu, q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions) -> Result<Tensor> {
    let (batch, q_len, kv_len, head_dim) = check_inputs(q, k, v, opts)?;
    let out = gpu.empty(q.shape(), DType::F32)?;
    let scale = opts.scale.unwrap_or(1.0 / (head_dim as f32).sqrt());
    let params = Params {
        q_len: q_len as u32,
        kv_len: kv_len as u32,
        heads: opts.heads as u32,
        head_dim: head_dim as u32,
        scale_log2: scale * std::f32::consts::LOG2_E,
        causal: opts.causal as u32,
        batch: batch as u32,
        _pad: 0,
    };
    let (key, workgroups) = if head_dim <= ROWS_MAX_HEAD_DIM && head_dim.is_multiple_of(4) {
        let rows = u32::try_from((batch * opts.heads * q_len).div_ceil(ROWS_WG)).unwrap_or(u32::MAX);
        (rows_key(head_dim), gpu.grid(rows))
    } else {
        let tiling = Tiling::for_head_dim(head_dim).ok_or_else(|| shape_err(format!("no tiling for head dim {head_dim}")))?;
        (tiling.key(), tiling.workgroups(batch, q_len, opts.heads))
    };
    gpu.launch(Launch {
        shader: key.shader,
        entry: key.entry,
        defines: key.defines,
        params: bytemuck::bytes_of(&params),
        bindings: &[(q, Access::Read), (k, Access::Read), (v, Access::Read), (&out, Access::ReadWrite)],
        workgroups,
    })?;
    Ok(out)
}

/// Every variant this module can launch, for shader validation.
pub fn variants() -> Vec<KernelKey> {
    let flash = TILINGS.iter().map(|&(threads, slots)| Tiling::new(threads, slots).key());
    flash.chain((4..=ROWS_MAX_HEAD_DIM).step_by(4).map(rows_key)).collect()
}
