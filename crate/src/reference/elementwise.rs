//! CPU references for the elementwise kernels (f64 math, exact erf from libm).

use crate::kernels::elementwise::Unary;

/// Any pointwise activation of the kernels, in f64 math.
pub fn unary(op: Unary, x: f32) -> f32 {
    match op {
        Unary::Silu => silu(x),
        Unary::GeluErf => gelu_erf(x),
        Unary::GeluTanh => gelu_tanh(x),
        Unary::QuickGelu => quick_gelu(x),
        Unary::Relu => x.max(0.0),
        Unary::Tanh => (x as f64).tanh() as f32,
        Unary::Exp => (x as f64).exp() as f32,
        Unary::Affine { a, b } => (a as f64 * x as f64 + b as f64) as f32,
        Unary::Clamp { min, max } => x.clamp(min, max),
        Unary::Identity => x,
    }
}

pub fn silu(x: f32) -> f32 {
    let x = x as f64;
    (x / (1.0 + (-x).exp())) as f32
}

pub fn gelu_erf(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))) as f32
}

pub fn gelu_tanh(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())) as f32
}

pub fn quick_gelu(x: f32) -> f32 {
    let x = x as f64;
    (x / (1.0 + (-1.702 * x).exp())) as f32
}

/// numpy-style broadcast of `f` over `x` (shape `xs`) and `y` (shape `ys`).
pub fn broadcast(x: &[f32], xs: &[usize], y: &[f32], ys: &[usize], f: impl Fn(f32, f32) -> f32) -> (Vec<f32>, Vec<usize>) {
    let rank = xs.len().max(ys.len());
    let pad = |s: &[usize]| [vec![1; rank - s.len()], s.to_vec()].concat();
    let (xs, ys) = (pad(xs), pad(ys));
    let shape: Vec<usize> = xs.iter().zip(&ys).map(|(&a, &b)| a.max(b)).collect();
    let n: usize = shape.iter().product();
    let offset = |s: &[usize], coords: &[usize]| coords.iter().zip(s).fold(0, |acc, (&c, &d)| acc * d + if d == 1 { 0 } else { c });
    let mut out = Vec::with_capacity(n);
    let mut coords = vec![0usize; rank];
    for _ in 0..n {
        out.push(f(x[offset(&xs, &coords)], y[offset(&ys, &coords)]));
        for d in (0..rank).rev() {
            coords[d] += 1;
            if coords[d] < shape[d] {
                break;
            }
            coords[d] = 0;
        }
    }
    (out, shape)
}

/// GEGLU over rows of `2d` values: `value * gelu(gate)`.
pub fn geglu(x: &[f32], d: usize) -> Vec<f32> {
    x.chunks(2 * d).flat_map(|row| (0..d).map(move |j| row[j] * gelu_erf(row[d + j]))).collect()
}
