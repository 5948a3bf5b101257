//! The tiled matmul on the GPU against the CPU reference.
//!
//! Tolerances are relative to the scale of each dot product, S = sum_k |a_ik * b_kj| + |bias_j|
//! (the reference run on absolute values), because cancellation makes |result| a poor scale.
//! - f32 math: f32 summation of K terms errs by at most about K * 2^-24 * S, which is 1.8e-5 * S
//!   for the largest K here (300); F32_TOL = 1e-4 covers it with margin, while any indexing or
//!   tiling mistake errs by a sizeable fraction of S.
//! - f16 math: a, b (when f32) and each product are rounded to f16, 2^-11 = 4.9e-4 relative
//!   each, so a term errs by at most about 1.5e-3 of its size: F16_TOL = 2e-3.
//!   f16 weights with f32 math use the f16-rounded weights in the reference, so F32_TOL holds.
//!
//! Activations are at most 1.13-Lipschitz (GELU's slope peaks there), hence the 1.2 factor, and
//! their approximations (erf to 1.2e-7) add at most ATOL.

use crate::common;

use common::{assert_within, gpu, random, read};
use webdiffusion::Error;
use webdiffusion::gpu::{DType, Gpu, Tensor};
use webdiffusion::kernels::cases::{self, Shapes};
use webdiffusion::kernels::elementwise::Unary;
use webdiffusion::kernels::matmul::{self, MatmulOptions};
use webdiffusion::reference::elementwise::unary;
use webdiffusion::reference::matmul::{self as cpu, Operand};

const F32_TOL: f32 = 1e-4;
const F16_TOL: f32 = 2e-3;
const ATOL: f32 = 1e-6;
const LIPSCHITZ: f32 = 1.2;

/// One product to check: stored shapes, layout and the fused extras.
#[derive(Clone, Copy)]
struct Case<'a> {
    a: &'a [usize],
    b: &'a [usize],
    transpose_a: bool,
    transpose_b: bool,
    b_dtype: DType,
    bias: Option<DType>,
    activation: Option<Unary>,
    f16_math: bool,
}

impl<'a> Case<'a> {
    fn new(a: &'a [usize], b: &'a [usize]) -> Self {
        Case { a, b, transpose_a: false, transpose_b: false, b_dtype: DType::F32, bias: None, activation: None, f16_math: false }
    }

    fn transposed(self, transpose_a: bool, transpose_b: bool) -> Self {
        Case { transpose_a, transpose_b, ..self }
    }

    fn describe(&self) -> String {
        let (a, b, ta, tb, bd, bias, act, f16) =
            (self.a, self.b, self.transpose_a, self.transpose_b, self.b_dtype, self.bias, self.activation, self.f16_math);
        format!("a{a:?}{} b{b:?}{} {bd:?} bias={bias:?} act={act:?} f16_math={f16}", if ta { "^T" } else { "" }, if tb { "^T" } else { "" })
    }
}

/// Uploads values in the given dtype and returns them as the GPU holds them.
fn upload(gpu: &Gpu, shape: &[usize], values: Vec<f32>, dtype: DType) -> (Tensor, Vec<f32>) {
    match dtype {
        DType::F32 => (gpu.upload_f32(shape, &values).unwrap(), values),
        DType::F16 => {
            let rounded = values.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
            (gpu.upload_f32_as_f16(shape, &values).unwrap(), rounded)
        }
        // The reference sees the values the kernel dequantizes.
        DType::Q8 | DType::Q4 => {
            let bytes = webdiffusion::quant::quantize(dtype, shape, &values).unwrap();
            let seen = webdiffusion::quant::dequantize(dtype, shape, &bytes).unwrap();
            (gpu.upload_bytes(shape, dtype, &bytes).unwrap(), seen)
        }
        DType::U32 => unreachable!("the matmul cases use float operands"),
    }
}

fn check(case: Case, seed: u64) {
    let gpu = gpu();
    let count = |s: &[usize]| s.iter().product::<usize>();
    let (ta, a) = upload(gpu, case.a, random(count(case.a), seed, 1.0), DType::F32);
    let (tb, b) = upload(gpu, case.b, random(count(case.b), seed + 1, 1.0), case.b_dtype);
    let a_op = Operand { values: &a, shape: case.a, transposed: case.transpose_a };
    let b_op = Operand { values: &b, shape: case.b, transposed: case.transpose_b };
    let n = b_op_cols(&b_op);
    let bias = case.bias.map(|dtype| upload(gpu, &[n], random(n, seed + 2, 1.0), dtype));
    let opts = MatmulOptions {
        transpose_a: case.transpose_a,
        transpose_b: case.transpose_b,
        bias: bias.as_ref().map(|(t, _)| t),
        activation: case.activation,
        f16_math: case.f16_math,
        residual: None,
        split_columns: None,
    };
    let got = matmul::matmul(gpu, &ta, &tb, &opts).unwrap();

    let bias_values = bias.as_ref().map(|(_, v)| v.as_slice());
    let (want, shape) = cpu::matmul(a_op, b_op, bias_values, case.activation);
    assert_eq!(got.shape(), shape.as_slice(), "{}: shape", case.describe());

    let scale = dot_scale(a_op, b_op, bias_values);
    let tol = if case.f16_math && gpu.has_shader_f16() { F16_TOL } else { F32_TOL };
    let slope = match case.activation {
        Some(Unary::Affine { a, .. }) => a.abs(),
        Some(_) => LIPSCHITZ,
        None => 1.0,
    };
    let bound: Vec<f32> = scale.iter().map(|s| tol * slope * s + ATOL).collect();
    assert_within(&case.describe(), &read(&got), &want, &bound);
}

/// S of the module comment for every output: the product run on absolute values.
fn dot_scale(a: Operand, b: Operand, bias: Option<&[f32]>) -> Vec<f32> {
    let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
    let (abs_a, abs_b, abs_bias) = (abs(a.values), abs(b.values), bias.map(abs));
    cpu::matmul(Operand { values: &abs_a, ..a }, Operand { values: &abs_b, ..b }, abs_bias.as_deref(), None).0
}

/// N of the logical product for a stored b.
fn b_op_cols(b: &Operand) -> usize {
    let [rows, cols] = b.shape[b.shape.len() - 2..] else { unreachable!("rank checked by the case") };
    if b.transposed { rows } else { cols }
}

const LAYOUTS: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];

#[test]
fn transposes_with_ragged_tiles() {
    // No size is a multiple of the 64x64x16 tiling.
    for (i, (ta, tb)) in LAYOUTS.into_iter().enumerate() {
        let a = if ta { [67, 130] } else { [130, 67] };
        let b = if tb { [33, 67] } else { [67, 33] };
        check(Case::new(&a, &b).transposed(ta, tb), 10 + i as u64);
    }
}

#[test]
fn batched_and_broadcast_operands() {
    for (i, (ta, tb)) in LAYOUTS.into_iter().enumerate() {
        let a = if ta { [3, 45, 37] } else { [3, 37, 45] };
        let b = if tb { [3, 29, 45] } else { [3, 45, 29] };
        check(Case::new(&a, &b).transposed(ta, tb), 20 + i as u64);
        // A 2-D b shared by every batch: the folded path when a is row-major, strided otherwise.
        check(Case::new(&a, &b[1..]).transposed(ta, tb), 30 + i as u64);
        // A 2-D a shared by every batch of b.
        check(Case::new(&a[1..], &b).transposed(ta, tb), 40 + i as u64);
    }
}

#[test]
fn degenerate_sizes() {
    check(Case::new(&[1, 1], &[1, 1]), 50);
    check(Case::new(&[1, 70], &[70, 65]), 51); // a single row
    check(Case::new(&[65, 1], &[1, 70]), 52); // K = 1
    check(Case::new(&[1, 1, 1], &[1, 1]).transposed(true, true), 53);
    // K = 0: only the bias and activation remain.
    check(Case { bias: Some(DType::F32), activation: Some(Unary::Silu), ..Case::new(&[5, 0], &[0, 7]) }, 54);
}

#[test]
fn linear_layer_with_f16_weights() {
    let gpu = gpu();
    let (x, w, bias) = (random(2 * 77 * 96, 60, 1.0), random(130 * 96, 61, 1.0), random(130, 62, 1.0));
    let got = matmul::linear(
        gpu,
        &gpu.upload_f32(&[2, 77, 96], &x).unwrap(),
        &gpu.upload_f32(&[130, 96], &w).unwrap(),
        Some(&gpu.upload_f32(&[130], &bias).unwrap()),
    )
    .unwrap();
    assert_eq!(got.shape(), &[2, 77, 130]);
    // Values of size 1 over K = 96: S <= 97, so 1e-4 * S bounds the f32 error as above.
    common::assert_close("linear", &read(&got), &cpu::linear(&x, &w, 130, Some(&bias)), 1e-4 * 97.0, 0.0);

    let weight = Case { transpose_b: true, b_dtype: DType::F16, ..Case::new(&[2, 77, 96], &[130, 96]) };
    check(weight, 63);
    check(Case { bias: Some(DType::F16), activation: Some(Unary::GeluErf), ..weight }, 64);
    check(Case { bias: Some(DType::F32), b_dtype: DType::F32, ..Case::new(&[2, 77, 96], &[96, 130]) }, 65);
}

#[test]
fn fused_bias_and_activations() {
    let activations = [Unary::Silu, Unary::GeluErf, Unary::GeluTanh, Unary::QuickGelu, Unary::Affine { a: -0.5, b: 2.0 }, Unary::Identity];
    for (i, act) in activations.into_iter().enumerate() {
        for bias in [DType::F32, DType::F16] {
            let case = Case { bias: Some(bias), activation: Some(act), ..Case::new(&[2, 40, 50], &[50, 70]) };
            check(case, 70 + i as u64);
        }
    }
}

#[test]
fn large_enough_for_many_tiles() {
    // 5 x 4 output tiles, 19 steps along K, ragged in every direction.
    let case = Case { transpose_b: true, b_dtype: DType::F16, bias: Some(DType::F32), ..Case::new(&[257, 300], &[200, 300]) };
    check(case, 80);
}

#[test]
fn f16_math_variant() {
    if !gpu().has_shader_f16() {
        eprintln!("skipped: this device has no shader-f16, so the f32 kernel would run");
        return;
    }
    for (i, (ta, tb)) in LAYOUTS.into_iter().enumerate() {
        let a = if ta { [2, 67, 130] } else { [2, 130, 67] };
        let b = if tb { [33, 67] } else { [67, 33] };
        check(Case { f16_math: true, ..Case::new(&a, &b).transposed(ta, tb) }, 90 + i as u64);
    }
    let weight = Case {
        transpose_b: true,
        b_dtype: DType::F16,
        bias: Some(DType::F16),
        activation: Some(Unary::GeluErf),
        f16_math: true,
        ..Case::new(&[3, 50, 96], &[3, 130, 96])
    };
    check(weight, 95);

    // The variant really ran: rounding to f16 moves the result away from the f32 kernel's.
    let gpu = gpu();
    let a = gpu.upload_f32(&[70, 90], &random(70 * 90, 96, 1.0)).unwrap();
    let b = gpu.upload_f32(&[90, 40], &random(90 * 40, 97, 1.0)).unwrap();
    let run = |f16_math| read(&matmul::matmul(gpu, &a, &b, &MatmulOptions { f16_math, ..Default::default() }).unwrap());
    let differs = run(true).iter().zip(run(false)).any(|(x, y)| (x - y).abs() > 1e-3);
    assert!(differs, "f16_math gave the f32 kernel's result");
}

/// `out = act(out + a @ b^T + bias)`: how a LoRA side path adds its second product into
/// its layer's output. The output's old contents join the tolerance's scale.
#[test]
fn accumulates_into_its_output() {
    let gpu = gpu();
    let cases =
        [(DType::F32, None, None), (DType::F16, Some(DType::F32), Some(Unary::GeluErf)), (DType::F32, Some(DType::F16), Some(Unary::Silu))];
    for (i, (b_dtype, bias_dtype, activation)) in cases.into_iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        let (a_shape, b_shape, out_shape) = ([3, 40, 20], [70, 20], [3, 40, 70]);
        let (ta, a) = upload(gpu, &a_shape, random(3 * 40 * 20, seed, 1.0), DType::F32);
        let (tb, b) = upload(gpu, &b_shape, random(70 * 20, seed + 1, 1.0), b_dtype);
        let bias = bias_dtype.map(|dtype| upload(gpu, &[70], random(70, seed + 2, 1.0), dtype));
        let start = random(3 * 40 * 70, seed + 3, 1.0);
        let out = gpu.upload_f32(&out_shape, &start).unwrap();
        let opts = MatmulOptions { transpose_b: true, bias: bias.as_ref().map(|(t, _)| t), activation, ..Default::default() };
        matmul::matmul_accumulate(gpu, &ta, &tb, &opts, &out).unwrap();

        let a_op = Operand { values: &a, shape: &a_shape, transposed: false };
        let b_op = Operand { values: &b, shape: &b_shape, transposed: true };
        let bias_values = bias.as_ref().map(|(_, v)| v.as_slice());
        let (product, _) = cpu::matmul(a_op, b_op, bias_values, None);
        let want: Vec<f32> = product.iter().zip(&start).map(|(p, s)| activation.map_or(p + s, |op| unary(op, p + s))).collect();
        let scale = dot_scale(a_op, b_op, bias_values);
        let slope = if activation.is_some() { LIPSCHITZ } else { 1.0 };
        let bound: Vec<f32> = scale.iter().zip(&start).map(|(s, o)| F32_TOL * slope * (s + o.abs()) + ATOL).collect();
        assert_within(&format!("accumulate {b_dtype:?} bias={bias_dtype:?} act={activation:?}"), &read(&out), &want, &bound);
    }

    let wrong = gpu.upload_f32(&[40, 70], &vec![0.0; 40 * 70]).unwrap();
    let a = gpu.upload_f32(&[3, 40, 20], &vec![0.0; 3 * 40 * 20]).unwrap();
    let b = gpu.upload_f32(&[70, 20], &vec![0.0; 70 * 20]).unwrap();
    let result = matmul::matmul_accumulate(gpu, &a, &b, &MatmulOptions { transpose_b: true, ..Default::default() }, &wrong);
    assert!(matches!(result, Err(Error::Shape { .. })), "out of the wrong shape: {result:?}");
}

/// `act(a @ b + bias) + residual`: the residual is added after the activation, in the
/// epilogue; with f16 and q8 weights, several tilings, and rows of a batch stacked.
#[test]
fn adds_a_residual() {
    let gpu = gpu();
    let cases =
        [(DType::F32, Some(DType::F32), None, 40), (DType::F16, None, Some(Unary::Silu), 70), (DType::Q8, Some(DType::F16), None, 9)];
    for (i, (b_dtype, bias_dtype, activation, n)) in cases.into_iter().enumerate() {
        let seed = 300 + 10 * i as u64;
        let (a_shape, b_shape, out_shape) = ([3, 13, 32], [n, 32], [3, 13, n]);
        let (ta, a) = upload(gpu, &a_shape, random(3 * 13 * 32, seed, 1.0), DType::F32);
        let (tb, b) = upload(gpu, &b_shape, random(n * 32, seed + 1, 1.0), b_dtype);
        let bias = bias_dtype.map(|dtype| upload(gpu, &[n], random(n, seed + 2, 1.0), dtype));
        let residual = random(3 * 13 * n, seed + 3, 1.0);
        let tr = gpu.upload_f32(&out_shape, &residual).unwrap();
        let opts =
            MatmulOptions { transpose_b: true, bias: bias.as_ref().map(|(t, _)| t), activation, residual: Some(&tr), ..Default::default() };
        let got = matmul::matmul(gpu, &ta, &tb, &opts).unwrap();

        let a_op = Operand { values: &a, shape: &a_shape, transposed: false };
        let b_op = Operand { values: &b, shape: &b_shape, transposed: true };
        let bias_values = bias.as_ref().map(|(_, v)| v.as_slice());
        let (product, _) = cpu::matmul(a_op, b_op, bias_values, activation);
        let want: Vec<f32> = product.iter().zip(&residual).map(|(p, r)| p + r).collect();
        let slope = if activation.is_some() { LIPSCHITZ } else { 1.0 };
        let scale = dot_scale(a_op, b_op, bias_values);
        let bound: Vec<f32> = scale.iter().zip(&residual).map(|(s, r)| F32_TOL * slope * s + 1e-7 * r.abs() + ATOL).collect();
        assert_within(&format!("residual {b_dtype:?} bias={bias_dtype:?} act={activation:?}"), &read(&got), &want, &bound);
    }

    let a = gpu.upload_f32(&[4, 32], &[0.0; 128]).unwrap();
    let b = gpu.upload_f32(&[5, 32], &[0.0; 160]).unwrap();
    let wrong = gpu.upload_f32(&[4, 6], &[0.0; 24]).unwrap();
    let result = matmul::matmul(gpu, &a, &b, &MatmulOptions { transpose_b: true, residual: Some(&wrong), ..Default::default() });
    assert!(matches!(result, Err(Error::Shape { .. })), "residual of the wrong size: {result:?}");
}

/// Stacked Linear layers: q8/f16/f32 weights of three layers concatenated by rows on the
/// GPU (`concat_rows`), one product with `split_columns`, each layer's output a contiguous
/// `[M, out]` part equal to that layer's own product; with a bias and a ragged tile.
#[test]
fn stacked_layers_split_their_outputs() {
    let gpu = gpu();
    for (i, (dtype, out, rows)) in [(DType::F32, 24, 37), (DType::F16, 40, 16), (DType::Q8, 16, 70)].into_iter().enumerate() {
        let seed = 700 + 10 * i as u64;
        let (ta, a) = upload(gpu, &[rows, 64], random(rows * 64, seed, 1.0), DType::F32);
        let layers: Vec<_> = (0..3).map(|l| upload(gpu, &[out, 64], random(out * 64, seed + 1 + l, 1.0), dtype)).collect();
        let biases: Vec<_> = (0..3).map(|l| random(out, seed + 5 + l, 1.0)).collect();
        let stacked = gpu.concat_rows(&layers.iter().map(|(t, _)| t).collect::<Vec<_>>()).unwrap();
        assert_eq!(stacked.shape(), [3 * out, 64]);
        let bias = gpu.upload_f32(&[3 * out], &biases.concat()).unwrap();
        let opts = MatmulOptions { transpose_b: true, bias: Some(&bias), split_columns: Some(out), ..Default::default() };
        let got = matmul::matmul(gpu, &ta, &stacked, &opts).unwrap();
        assert_eq!(got.shape(), [3, rows, out]);
        let got = read(&got);
        for (l, ((_, b), layer_bias)) in layers.iter().zip(&biases).enumerate() {
            let a_op = Operand { values: &a, shape: &[rows, 64], transposed: false };
            let b_op = Operand { values: b, shape: &[out, 64], transposed: true };
            let (want, _) = cpu::matmul(a_op, b_op, Some(layer_bias), None);
            let bound: Vec<f32> = dot_scale(a_op, b_op, Some(layer_bias)).iter().map(|s| F32_TOL * s + ATOL).collect();
            assert_within(&format!("{dtype:?} layer {l}"), &got[l * rows * out..(l + 1) * rows * out], &want, &bound);
        }
    }

    let a = gpu.upload_f32(&[4, 32], &[0.0; 128]).unwrap();
    let b = gpu.upload_f32(&[6, 32], &[0.0; 192]).unwrap();
    let result = matmul::matmul(gpu, &a, &b, &MatmulOptions { transpose_b: true, split_columns: Some(4), ..Default::default() });
    assert!(matches!(result, Err(Error::Shape { .. })), "a split that does not divide N: {result:?}");
    let odd = gpu.upload_f32_as_f16(&[3, 3], &[0.0; 9]).unwrap();
    let result = gpu.concat_rows(&[&odd, &odd]);
    assert!(matches!(result, Err(Error::Shape { .. })), "f16 parts that would split a word: {result:?}");
}

/// Tokens projected back to an image (a transformer's proj_out): the product written
/// transposed per batch item (`split_columns` 1), `[B, P, K] . [N, K]^T -> [B, N, P, 1]`,
/// with a residual in the image's layout; f32 and q8 weights, ragged tiles.
#[test]
fn tokens_back_to_an_image() {
    let gpu = gpu();
    let (batch, pixels, width) = (2, 37, 64);
    for (i, (dtype, out)) in [(DType::F32, 24), (DType::Q8, 40)].into_iter().enumerate() {
        let seed = 800 + 10 * i as u64;
        let bias = random(out, seed + 2, 1.0);
        let tbias = gpu.upload_f32(&[out], &bias).unwrap();
        let (tw, w) = upload(gpu, &[out, width], random(out * width, seed + 1, 1.0), dtype);
        let w_op = Operand { values: &w, shape: &[out, width], transposed: true };
        let (tokens, t) = upload(gpu, &[batch, pixels, width], random(batch * pixels * width, seed + 3, 1.0), DType::F32);
        let (residual, r) = upload(gpu, &[batch, out, pixels], random(batch * out * pixels, seed + 4, 1.0), DType::F32);
        let t_op = Operand { values: &t, shape: &[batch, pixels, width], transposed: false };
        let opts = MatmulOptions {
            transpose_b: true,
            bias: Some(&tbias),
            residual: Some(&residual),
            split_columns: Some(1),
            ..Default::default()
        };
        let got = matmul::matmul(gpu, &tokens, &tw, &opts).unwrap();
        assert_eq!(got.shape(), [batch, out, pixels, 1]);
        // The reference's [B, P, out] product, transposed per batch item, plus the residual.
        let (product, _) = cpu::matmul(t_op, w_op, Some(&bias), None);
        let scale = dot_scale(t_op, w_op, Some(&bias));
        let channels_first = |v: &[f32], b: usize, n: usize, p: usize| v[(b * pixels + p) * out + n];
        let (mut want, mut bound) = (Vec::new(), Vec::new());
        for b in 0..batch {
            for n in 0..out {
                for p in 0..pixels {
                    let residual_value = r[(b * out + n) * pixels + p];
                    want.push(channels_first(&product, b, n, p) + residual_value);
                    bound.push(F32_TOL * (channels_first(&scale, b, n, p) + residual_value.abs()) + ATOL);
                }
            }
        }
        assert_within(&format!("{dtype:?} tokens to image"), &read(&got), &want, &bound);
    }
}

/// The benchmark's cases (`kernels::cases`): the built-in model's projections, q8 weights.
#[test]
fn the_benchmarks_embedded_cases() {
    for (i, c) in cases::matmul(Shapes::Embedded).into_iter().enumerate() {
        let (a, b) = ([c.m, c.k], [c.n, c.k]);
        let case = Case { b_dtype: c.weights, f16_math: c.f16_math, ..Case::new(&a, &b).transposed(false, true) };
        check(case, 900 + 10 * i as u64);
    }
}

#[test]
fn grid_folds_past_the_dimension_limit() {
    // More (batch, row tile) pairs than one dimension allows: the y/z fold must
    // still give each its own workgroup, and keep harmless the one spare workgroup
    // that folding limit + 2 into 2 x (limit + 3) / 2 leaves.
    let limit = gpu().info().max_workgroups_per_dim as usize;
    let batches = limit + 2;
    check(Case::new(&[batches, 1, 2], &[batches, 2, 3]), 100);
}

#[test]
fn stable_diffusion_shapes_fit_the_dispatch_limits() {
    let gpu = gpu();
    let limit = gpu.info().max_workgroups_per_dim;
    // (rows, cols, batches) per batch of the output, for a batch of 2 images (CFG).
    let shapes = [
        (2 * 77, 3072, 1),     // CLIP MLP
        (2 * 4096, 1280, 1),   // UNet projections at 64x64 latents, rows folded
        (4096, 4096, 2 * 8),   // attention scores, 8 heads
        (4096, 40, 2 * 8),     // attention values
        (2 * 4096, 77, 2 * 8), // cross-attention scores
        (2 * 262_144, 512, 1), // VAE at 512x512 pixels, channels as columns
        (262_144, 128, 2),     // the same with the batch in the grid
    ];
    for (rows, cols, batches) in shapes {
        let grid = matmul::workgroups(gpu, rows, cols, batches).unwrap();
        assert!(grid.iter().all(|&d| d <= limit), "{rows}x{cols} x{batches}: {grid:?}");
        let covered = grid[1] as usize * grid[2] as usize;
        assert!(covered >= rows.div_ceil(64) * batches && grid[0] as usize * 64 >= cols, "{grid:?} misses tiles");
    }
}

#[test]
fn bad_inputs_are_errors() {
    let gpu = gpu();
    let t = |shape: &[usize]| gpu.upload_f32(shape, &vec![0.0; shape.iter().product()]).unwrap();
    let plain = MatmulOptions::default();
    let bias = t(&[5]);
    let f16 = gpu.upload_f32_as_f16(&[4, 3], &[0.0; 12]).unwrap();
    let cases = [
        ("rank 1 a", matmul::matmul(gpu, &t(&[4]), &t(&[4, 3]), &plain)),
        ("rank 4 b", matmul::matmul(gpu, &t(&[2, 4]), &t(&[1, 1, 4, 3]), &plain)),
        ("K mismatch", matmul::matmul(gpu, &t(&[2, 4]), &t(&[5, 3]), &plain)),
        ("K mismatch when transposed", matmul::matmul(gpu, &t(&[2, 4]), &t(&[4, 3]), &MatmulOptions { transpose_b: true, ..plain })),
        ("batch mismatch", matmul::matmul(gpu, &t(&[2, 2, 4]), &t(&[3, 4, 3]), &plain)),
        ("f16 a", matmul::matmul(gpu, &f16, &t(&[3, 2]), &plain)),
        ("bias length", matmul::matmul(gpu, &t(&[2, 4]), &t(&[4, 3]), &MatmulOptions { bias: Some(&bias), ..plain })),
        ("linear weight rank", matmul::linear(gpu, &t(&[2, 4]), &t(&[1, 3, 4]), None)),
        ("linear features", matmul::linear(gpu, &t(&[2, 4]), &t(&[3, 5]), None)),
    ];
    for (what, result) in cases {
        assert!(matches!(result, Err(Error::Shape { .. })), "{what}: {result:?}");
    }
}
