//! Launchers for `elementwise.wgsl`: activations, broadcasting add/mul, GEGLU,
//! the sampler update and f32 -> f16 conversion.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{Access, DType, Gpu, KernelKey, Launch, Tensor};

const SHADER: &str = "elementwise.wgsl";
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    n: u32,
    a: f32,
    b: f32,
    c: f32,
    shape: [u32; 4],
    x_strides: [u32; 4],
    y_strides: [u32; 4],
}

/// A pointwise activation (or `affine`: `a*x + b`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unary {
    Silu,
    GeluErf,
    GeluTanh,
    QuickGelu,
    Relu,
    Tanh,
    Exp,
    Affine { a: f32, b: f32 },
    Clamp { min: f32, max: f32 },
    Identity,
}

impl Unary {
    /// Every operation, with placeholder constants for `Affine`.
    pub const ALL: [Unary; 10] = [
        Unary::Silu,
        Unary::GeluErf,
        Unary::GeluTanh,
        Unary::QuickGelu,
        Unary::Relu,
        Unary::Tanh,
        Unary::Exp,
        Unary::Affine { a: 1.0, b: 0.0 },
        Unary::Clamp { min: -1.0, max: 1.0 },
        Unary::Identity,
    ];

    /// The code of common.wgsl's `epilogue_activation` for a parameter-free activation
    /// (0 for none); `None` for the two with parameters.
    pub fn epilogue_code(self) -> Option<u32> {
        match self {
            Unary::Identity => Some(0),
            Unary::Silu => Some(1),
            Unary::GeluErf => Some(2),
            Unary::GeluTanh => Some(3),
            Unary::QuickGelu => Some(4),
            Unary::Relu => Some(5),
            Unary::Tanh => Some(6),
            Unary::Exp => Some(7),
            Unary::Clamp { .. } | Unary::Affine { .. } => None,
        }
    }

    /// The WGSL function name in `common.wgsl` (used as the `OP` define).
    pub fn name(self) -> &'static str {
        match self {
            Unary::Silu => "silu",
            Unary::GeluErf => "gelu_erf",
            Unary::GeluTanh => "gelu_tanh",
            Unary::QuickGelu => "quick_gelu",
            Unary::Relu => "relu",
            Unary::Tanh => "tanh_saturating",
            Unary::Exp => "exp",
            Unary::Clamp { .. } => "clamp_ab",
            Unary::Affine { .. } => "affine",
            Unary::Identity => "identity",
        }
    }
}

/// A broadcasting binary operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    Add,
    Mul,
}

fn require_f32(op: &'static str, t: &Tensor) -> Result<()> {
    if t.dtype() != DType::F32 {
        return Err(Error::shape(op, format!("expects f32 storage here, got {:?}", t.dtype())));
    }
    Ok(())
}

fn run(
    gpu: &Gpu,
    entry: &'static str,
    defines: Vec<(&'static str, String)>,
    params: Params,
    threads: usize,
    bindings: &[(&Tensor, Access)],
) -> Result<()> {
    gpu.launch(Launch {
        shader: SHADER,
        entry,
        defines,
        params: bytemuck::bytes_of(&params),
        bindings,
        workgroups: gpu.grid(threads.div_ceil(WG as usize) as u32),
    })
}

/// `f(x)` elementwise; `x` may be f32 or packed f16, the result is f32.
pub fn unary(gpu: &Gpu, x: &Tensor, op: Unary) -> Result<Tensor> {
    let out = gpu.empty(x.shape(), DType::F32)?;
    let (a, b) = match op {
        Unary::Affine { a, b } => (a, b),
        Unary::Clamp { min, max } => (min, max),
        _ => (1.0, 0.0),
    };
    let params = Params { n: x.numel() as u32, a, b, ..Default::default() };
    let defines = super::with_x_dtype("unary", x, vec![("UNARY", String::new()), ("OP", op.name().into())])?;
    run(gpu, "unary", defines, params, x.numel(), &[(x, Access::Read), (&out, Access::ReadWrite)])?;
    Ok(out)
}

/// `x op y` with numpy broadcasting over at most 4 dimensions.
pub fn binary(gpu: &Gpu, x: &Tensor, y: &Tensor, op: Binary) -> Result<Tensor> {
    require_f32("binary", y)?;
    let rank = x.shape().len().max(y.shape().len());
    if rank > 4 {
        return Err(Error::shape("binary", format!("at most 4 dimensions, got {:?} and {:?}", x.shape(), y.shape())));
    }
    // Right-align both shapes in 4 dimensions.
    let pad = |s: &[usize]| -> [usize; 4] {
        let mut out = [1; 4];
        out[4 - s.len()..].copy_from_slice(s);
        out
    };
    let (xs, ys) = (pad(x.shape()), pad(y.shape()));
    let mut shape = [1usize; 4];
    for d in 0..4 {
        shape[d] = match (xs[d], ys[d]) {
            (a, b) if a == b => a,
            (1, b) => b,
            (a, 1) => a,
            _ => return Err(Error::shape("binary", format!("shapes {:?} and {:?} do not broadcast", x.shape(), y.shape()))),
        };
    }
    let strides = |s: [usize; 4]| -> [u32; 4] {
        let mut out = [0u32; 4];
        let mut step = 1usize;
        for d in (0..4).rev() {
            out[d] = if s[d] == 1 { 0 } else { step as u32 };
            step *= s[d];
        }
        out
    };
    let out_shape: Vec<usize> = shape[4 - rank..].to_vec();
    let out = gpu.empty(&out_shape, DType::F32)?;
    let params = Params {
        n: out.numel() as u32,
        shape: shape.map(|v| v as u32),
        x_strides: strides(xs),
        y_strides: strides(ys),
        ..Default::default()
    };
    let name = match op {
        Binary::Add => "add",
        Binary::Mul => "mul",
    };
    let defines = super::with_x_dtype("binary", x, vec![("BINARY", String::new()), ("OP", name.into())])?;
    run(gpu, "binary", defines, params, out.numel(), &[(x, Access::Read), (y, Access::Read), (&out, Access::ReadWrite)])?;
    Ok(out)
}

pub fn add(gpu: &Gpu, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    binary(gpu, x, y, Binary::Add)
}

pub fn mul(gpu: &Gpu, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    binary(gpu, x, y, Binary::Mul)
}

/// `s * x`.
pub fn scale(gpu: &Gpu, x: &Tensor, s: f32) -> Result<Tensor> {
    unary(gpu, x, Unary::Affine { a: s, b: 0.0 })
}

/// diffusers' GEGLU: `x` is `[..., 2d]`, the result `[..., d]` is `value * gelu(gate)`.
pub fn geglu(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    let last = *x.shape().last().ok_or_else(|| Error::shape("geglu", "needs at least one dimension"))?;
    if last % 2 != 0 {
        return Err(Error::shape("geglu", format!("last dimension must be even, got {:?}", x.shape())));
    }
    let mut shape = x.shape().to_vec();
    *shape.last_mut().unwrap() = last / 2;
    let out = gpu.empty(&shape, DType::F32)?;
    let params = Params { n: out.numel() as u32, shape: [(last / 2) as u32, 0, 0, 0], ..Default::default() };
    let defines = super::with_x_dtype("geglu", x, vec![("GEGLU", String::new())])?;
    run(gpu, "geglu", defines, params, out.numel(), &[(x, Access::Read), (&out, Access::ReadWrite)])?;
    Ok(out)
}

/// The sampler update `a*x + b*y (+ c*z)`, all of one shape.
pub fn axpby(gpu: &Gpu, a: f32, x: &Tensor, b: f32, y: &Tensor, cz: Option<(f32, &Tensor)>) -> Result<Tensor> {
    for t in [Some(y), cz.map(|(_, z)| z)].into_iter().flatten() {
        require_f32("axpby", t)?;
        if t.shape() != x.shape() {
            return Err(Error::shape("axpby", format!("shapes {:?} and {:?} differ", x.shape(), t.shape())));
        }
    }
    let out = gpu.empty(x.shape(), DType::F32)?;
    let mut params = Params { n: x.numel() as u32, a, b, ..Default::default() };
    let mut defines = super::with_x_dtype("axpby", x, vec![("AXPBY", String::new())])?;
    match cz {
        Some((c, z)) => {
            params.c = c;
            defines.push(("THREE", String::new()));
            run(
                gpu,
                "axpby",
                defines,
                params,
                x.numel(),
                &[(x, Access::Read), (y, Access::Read), (z, Access::Read), (&out, Access::ReadWrite)],
            )?;
        }
        None => run(gpu, "axpby", defines, params, x.numel(), &[(x, Access::Read), (y, Access::Read), (&out, Access::ReadWrite)])?,
    }
    Ok(out)
}

/// Converts to packed f16 storage (round to nearest even).
pub fn to_f16(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    let out = gpu.empty(x.shape(), DType::F16)?;
    let params = Params { n: x.numel() as u32, ..Default::default() };
    let defines = super::with_x_dtype("to_f16", x, vec![("TO_F16", String::new())])?;
    run(gpu, "to_f16", defines, params, x.numel().div_ceil(2), &[(x, Access::Read), (&out, Access::ReadWrite)])?;
    Ok(out)
}

/// Every variant this module can launch, for shader validation.
pub fn variants() -> Vec<KernelKey> {
    let key = |entry: &'static str, defines: Vec<(&'static str, String)>, n: usize| KernelKey {
        shader: SHADER,
        entry,
        defines,
        bindings: (0..n).map(|i| if i + 1 == n { Access::ReadWrite } else { Access::Read }).collect(),
    };
    let mut keys = Vec::new();
    for x16 in [false, true] {
        let with = |d: Vec<(&'static str, String)>| if x16 { [d, vec![("X_F16", String::new())]].concat() } else { d };
        for op in Unary::ALL {
            keys.push(key("unary", with(vec![("UNARY", String::new()), ("OP", op.name().into())]), 2));
        }
        for op in ["add", "mul"] {
            keys.push(key("binary", with(vec![("BINARY", String::new()), ("OP", op.into())]), 3));
        }
        keys.push(key("geglu", with(vec![("GEGLU", String::new())]), 2));
        keys.push(key("axpby", with(vec![("AXPBY", String::new())]), 3));
        keys.push(key("axpby", with(vec![("AXPBY", String::new()), ("THREE", String::new())]), 4));
        keys.push(key("to_f16", with(vec![("TO_F16", String::new())]), 2));
    }
    keys
}
