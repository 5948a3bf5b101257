//! Launchers for `matmul.wgsl`: batched matrix products with either operand
//! transposed, f32, packed-f16 or (as a Linear weight) q8/q4 `b`, a fused bias and
//! activation, an f16-math variant for devices with shader-f16, and a variant that adds
//! into an existing output.

use bytemuck::{Pod, Zeroable};

use super::elementwise::Unary;
use crate::error::{Error, Result};
use crate::gpu::{Access, DType, Gpu, KernelKey, Launch, Tensor};
use crate::quant;

const SHADER: &str = "matmul.wgsl";
const ENTRY: &str = "matmul";
/// The side of each invocation's register block (8 x 8 in the shader).
const BLOCK: usize = super::REGISTER_BLOCK;

/// How a launch tiles the output: `tm` x `tn` invocations (`TM`, `TN` in the shader), so
/// a tile of `8 tm` rows by `8 tn` columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tiling {
    tm: usize,
    tn: usize,
}

impl Tiling {
    /// The tile that wastes least on `rows` x `cols` (`kernels::tile_threads`, as conv2d's).
    fn for_output(rows: usize, cols: usize) -> Tiling {
        Tiling { tm: super::tile_threads(rows), tn: super::tile_threads(cols) }
    }

    fn rows(&self) -> usize {
        BLOCK * self.tm
    }

    fn cols(&self) -> usize {
        BLOCK * self.tn
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    m_tiles: u32,
    batches: u32,
    a_batch_stride: u32,
    b_batch_stride: u32,
    act_a: f32,
    act_b: f32,
    b_row_words: u32,
    epilogue: u32,
    activation: u32,
    split: u32,
}

/// `Params::epilogue` bits, as matmul.wgsl's `EPILOGUE_*` (the bias's: `kernels::bias_epilogue_bits`).
const EPILOGUE_RESIDUAL: u32 = 4;

/// matmul.wgsl's `activate` code for an activation: common.wgsl's, and two with parameters.
fn activation_code(op: Option<Unary>) -> u32 {
    const MATMUL_CLAMP: u32 = 8;
    const MATMUL_AFFINE: u32 = 9;
    match op {
        None => 0,
        Some(Unary::Clamp { .. }) => MATMUL_CLAMP,
        Some(Unary::Affine { .. }) => MATMUL_AFFINE,
        Some(op) => op.epilogue_code().unwrap_or(0),
    }
}

/// What `matmul` computes besides the plain product.
#[derive(Debug, Clone, Copy, Default)]
pub struct MatmulOptions<'a> {
    /// `a` is stored `[.., K, M]`.
    pub transpose_a: bool,
    /// `b` is stored `[.., N, K]` (PyTorch's Linear weight layout `[out, in]`).
    pub transpose_b: bool,
    /// Added to every row: `[N]`, f32 or f16.
    pub bias: Option<&'a Tensor>,
    /// Applied after the bias.
    pub activation: Option<Unary>,
    /// f32 of the output's shape, added last (after the activation): a residual connection.
    pub residual: Option<&'a Tensor>,
    /// Tiles and products in f16 (sums stay f32); honoured only when the device has
    /// shader-f16, otherwise the f32 kernel runs.
    pub f16_math: bool,
    /// The output's columns in parts of this many, each a contiguous matrix: `[N / split,
    /// M, split]` (per batch) instead of `[M, N]`: stacked Linear layers get one output
    /// each, and split 1 writes the product transposed (tokens in, channels-first out).
    /// Must divide N.
    pub split_columns: Option<usize>,
}

/// The compile-time choices of one kernel variant (the epilogue is not one: its bias,
/// activation and residual are switched by parameters).
#[derive(Debug, Clone, Copy)]
struct Variant {
    tiling: Tiling,
    transpose_a: bool,
    transpose_b: bool,
    b: DType,
    f16_math: bool,
    accumulate: bool,
}

impl Variant {
    fn key(self) -> KernelKey {
        let flags = [
            (self.transpose_a, "TRANS_A"),
            (self.transpose_b, "TRANS_B"),
            (self.b == DType::F16, "B_F16"),
            (self.b.is_quantized(), "WEIGHT_QUANT"),
            (self.b == DType::Q4, "WEIGHT_Q4"),
            (self.f16_math, "F16_MATH"),
            (self.accumulate, "ACCUMULATE"),
        ];
        let mut defines: Vec<(&'static str, String)> = flags.iter().filter(|(on, _)| *on).map(|(_, name)| (*name, String::new())).collect();
        defines.extend([("TM", self.tiling.tm.to_string()), ("TN", self.tiling.tn.to_string())]);
        // a, b, the bias, the residual (read), the output.
        let bindings = vec![Access::Read, Access::Read, Access::Read, Access::Read, Access::ReadWrite];
        KernelKey { shader: SHADER, entry: ENTRY, defines, bindings }
    }
}

/// The product's sizes after shape checks.
struct Dims {
    batches: usize,
    m: usize,
    n: usize,
    k: usize,
    a_batch_stride: usize,
    b_batch_stride: usize,
    /// Output columns per part (`MatmulOptions::split_columns`, else N).
    split: usize,
    out_shape: Vec<usize>,
}

/// Splits a rank-2 or rank-3 shape into (batch, rows, cols) as stored.
fn matrix(op: &'static str, name: &str, t: &Tensor) -> Result<(Option<usize>, usize, usize)> {
    match *t.shape() {
        [r, c] => Ok((None, r, c)),
        [b, r, c] => Ok((Some(b), r, c)),
        _ => Err(Error::shape(op, format!("{name} must be [rows, cols] or [batch, rows, cols], got {:?}", t.shape()))),
    }
}

fn dims(a: &Tensor, b: &Tensor, opts: &MatmulOptions) -> Result<Dims> {
    const OP: &str = "matmul";
    if a.dtype() != DType::F32 {
        return Err(Error::shape(OP, format!("a must be f32, got {:?}", a.dtype())));
    }
    if b.dtype().is_quantized() {
        if !opts.transpose_b || b.shape().len() != 2 {
            return Err(Error::shape(
                OP,
                format!("{} b must be a 2-d [N, K] weight used transposed, got {:?}", b.dtype().name(), b.shape()),
            ));
        }
    } else {
        b.is_f16_float(OP)?;
    }
    if let Some(bias) = opts.bias {
        bias.is_f16_float(OP)?;
    }
    let (a_batch, a_rows, a_cols) = matrix(OP, "a", a)?;
    let (b_batch, b_rows, b_cols) = matrix(OP, "b", b)?;
    let (m, k) = if opts.transpose_a { (a_cols, a_rows) } else { (a_rows, a_cols) };
    let (b_k, n) = if opts.transpose_b { (b_cols, b_rows) } else { (b_rows, b_cols) };
    if k != b_k {
        return Err(Error::shape(OP, format!("inner dimensions differ: a {:?} has K={k}, b {:?} has K={b_k}", a.shape(), b.shape())));
    }
    let batches = match (a_batch, b_batch) {
        (Some(x), Some(y)) if x != y => {
            return Err(Error::shape(OP, format!("batch sizes differ: a {:?}, b {:?}", a.shape(), b.shape())));
        }
        (x, y) => x.or(y),
    };
    if let Some(bias) = opts.bias.filter(|bias| bias.shape() != [n]) {
        return Err(Error::shape(OP, format!("bias must be [{n}], got {:?}", bias.shape())));
    }
    let out_numel = batches.unwrap_or(1) * m * n;
    if let Some(residual) = opts.residual.filter(|r| r.dtype() != DType::F32 || r.numel() != out_numel) {
        return Err(Error::shape(
            OP,
            format!("residual must be f32 with the output's {out_numel} elements, got {:?} {:?}", residual.dtype(), residual.shape()),
        ));
    }
    let largest = a.numel().max(b.numel()).max(batches.unwrap_or(1) * m * n);
    if largest > u32::MAX as usize {
        return Err(Error::shape(OP, format!("{largest} elements overflow the kernel's 32-bit indices")));
    }
    let split = opts.split_columns.unwrap_or(n);
    if split == 0 || !n.is_multiple_of(split) {
        return Err(Error::shape(OP, format!("split_columns {split} must divide the output's {n} columns")));
    }
    let out_shape = match batches {
        Some(count) if split != n => vec![count, n / split, m, split],
        Some(count) => vec![count, m, n],
        None if split != n => vec![n / split, m, split],
        None => vec![m, n],
    };
    let dims = Dims {
        batches: batches.unwrap_or(1),
        m,
        n,
        k,
        a_batch_stride: if a_batch.is_some() { m * k } else { 0 },
        b_batch_stride: if b_batch.is_some() { k * n } else { 0 },
        split,
        out_shape,
    };
    // A shared 2-D b (the linear layer) and a row-major a: the batches stack into one
    // tall matrix, so partial row tiles are paid once, not per batch (unless the output
    // is split, whose parts are per batch).
    let stack = b_batch.is_none() && !opts.transpose_a && split == n;
    Ok(if stack { Dims { batches: 1, m: dims.batches * m, a_batch_stride: 0, ..dims } } else { dims })
}

/// The dispatch of a product with `rows` x `cols` outputs per batch: column tiles in
/// x, and (batch, row tile) folded into y and z so each stays within the device limit.
pub fn workgroups(gpu: &Gpu, rows: usize, cols: usize, batches: usize) -> Result<[u32; 3]> {
    let tiling = Tiling::for_output(rows, cols);
    let total = rows.div_ceil(tiling.rows()) * batches;
    let fits = |v: usize, what: &str| {
        u32::try_from(v).map_err(|_| Error::TooLarge { what: format!("matmul {what}"), needed: v as u64, limit: u32::MAX as u64 })
    };
    let [y, z, _] = gpu.grid(fits(total, "row tiles")?);
    Ok([fits(cols.div_ceil(tiling.cols()), "column tiles")?, y, z])
}

/// `act(op(a) @ op(b) + bias)`. `a` is f32 `[M, K]` or `[B, M, K]`; `b` is f32 or
/// packed f16 `[K, N]` or `[B, K, N]` (a 2-D operand is shared by every batch of the
/// other), or a q8/q4 weight `[N, K]` with `transpose_b`; `transpose_*` swap the stored
/// order of the last two dimensions. The result is f32 `[M, N]`, or `[B, M, N]` when
/// either operand has a batch (with `split_columns`, `[.., N / split, M, split]`).
pub fn matmul(gpu: &Gpu, a: &Tensor, b: &Tensor, opts: &MatmulOptions) -> Result<Tensor> {
    let dims = dims(a, b, opts)?;
    let out = gpu.empty(&dims.out_shape, DType::F32)?;
    launch(gpu, a, b, opts, &dims, false, &out)?;
    Ok(out)
}

/// `out = act(out + op(a) @ op(b) + bias)` in place: `out` is f32 and shaped as
/// `matmul` would return the product.
pub fn matmul_accumulate(gpu: &Gpu, a: &Tensor, b: &Tensor, opts: &MatmulOptions, out: &Tensor) -> Result<()> {
    let dims = dims(a, b, opts)?;
    if out.dtype() != DType::F32 || out.shape() != dims.out_shape {
        return Err(Error::shape(
            "matmul_accumulate",
            format!("out must be f32 {:?}, got {:?} {:?}", dims.out_shape, out.dtype(), out.shape()),
        ));
    }
    launch(gpu, a, b, opts, &dims, true, out)
}

fn launch(gpu: &Gpu, a: &Tensor, b: &Tensor, opts: &MatmulOptions, dims: &Dims, accumulate: bool, out: &Tensor) -> Result<()> {
    let (act_a, act_b) = match opts.activation {
        Some(Unary::Affine { a, b }) => (a, b),
        Some(Unary::Clamp { min, max }) => (min, max),
        _ => (1.0, 0.0),
    };
    let tiling = Tiling::for_output(dims.m, dims.n);
    let variant = Variant {
        tiling,
        transpose_a: opts.transpose_a,
        transpose_b: opts.transpose_b,
        b: b.dtype(),
        f16_math: opts.f16_math && gpu.has_shader_f16(),
        accumulate,
    };
    let bias_bits = super::bias_epilogue_bits(opts.bias);
    let params = Params {
        m: dims.m as u32,
        n: dims.n as u32,
        k: dims.k as u32,
        m_tiles: dims.m.div_ceil(tiling.rows()) as u32,
        batches: dims.batches as u32,
        a_batch_stride: dims.a_batch_stride as u32,
        b_batch_stride: dims.b_batch_stride as u32,
        act_a,
        act_b,
        b_row_words: quant::row_words(b.dtype(), dims.k) as u32,
        epilogue: bias_bits | if opts.residual.is_some() { EPILOGUE_RESIDUAL } else { 0 },
        activation: activation_code(opts.activation),
        split: dims.split as u32,
    };
    // An absent operand binds `a`, which the epilogue then never reads.
    let bindings = [
        (a, Access::Read),
        (b, Access::Read),
        (opts.bias.unwrap_or(a), Access::Read),
        (opts.residual.unwrap_or(a), Access::Read),
        (out, Access::ReadWrite),
    ];
    let key = variant.key();
    gpu.launch(Launch {
        shader: key.shader,
        entry: key.entry,
        defines: key.defines,
        params: bytemuck::bytes_of(&params),
        bindings: &bindings,
        workgroups: workgroups(gpu, dims.m, dims.n, dims.batches)?,
    })
}

/// PyTorch's `Linear`: `x` is `[.., in]` with any leading dimensions, `weight` is
/// `[out, in]` (f32, f16, q8 or q4), `bias` `[out]`; the result is `[.., out]`.
pub fn linear(gpu: &Gpu, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (&features, leading) = x.shape().split_last().ok_or_else(|| Error::shape("linear", "x needs at least one dimension"))?;
    if weight.shape().len() != 2 {
        return Err(Error::shape("linear", format!("weight must be [out, in], got {:?}", weight.shape())));
    }
    let rows: usize = leading.iter().product();
    let opts = MatmulOptions { transpose_b: true, bias, ..Default::default() };
    let out = matmul(gpu, &x.reshape(&[rows, features])?, weight, &opts)?;
    out.reshape(&[leading, &[weight.shape()[0]]].concat())
}

/// Every variant this module can launch, for shader validation.
pub fn variants() -> Vec<KernelKey> {
    let plain = Variant {
        tiling: Tiling { tm: 8, tn: 8 },
        transpose_a: false,
        transpose_b: true,
        b: DType::F32,
        f16_math: false,
        accumulate: false,
    };
    let mut keys = Vec::new();
    for bits in 0..16u32 {
        let on = |bit: u32| bits & (1 << bit) != 0;
        for b in [DType::F32, DType::F16, DType::Q8, DType::Q4] {
            // Quantized b is only ever the transposed Linear weight.
            if b.is_quantized() && !on(1) {
                continue;
            }
            keys.push(Variant { b, transpose_a: on(0), transpose_b: on(1), f16_math: on(2), accumulate: on(3), ..plain }.key());
        }
    }
    // The other tilings change only constants: each once.
    for tm in super::TILE_THREADS {
        for tn in super::TILE_THREADS {
            keys.push(Variant { tiling: Tiling { tm, tn }, b: DType::Q8, ..plain }.key());
        }
    }
    keys
}
