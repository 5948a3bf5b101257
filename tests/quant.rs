//! Quantized weight storage: the CPU packing against hand-computed bytes and its own
//! bounds, the upload checks, and the kernels that dequantize in registers (matmul,
//! conv2d, the embedding gather) against the CPU path "dequantize, then compute".
//!
//! Kernel tolerances follow tests/matmul.rs and tests/conv2d.rs: the reference takes the
//! dequantized weights (exactly the values the kernel reconstructs, q * f16 scale, both
//! exact in f32), so only summation order differs: 1e-4 of S = sum |a * w| + |bias| in
//! f32, 2e-3 of S under f16 math (each term rounded to f16 a few times).

use crate::common;

use common::{assert_within, gpu, random, read};
use half::f16;
use webdiffusion::Error;
use webdiffusion::gpu::{DType, Tensor};
use webdiffusion::kernels::conv2d::{Conv2dOptions, ConvPart, conv2d, conv2d_into};
use webdiffusion::kernels::elementwise::Unary;
use webdiffusion::kernels::gather::{gather_rows, gather_rows_chunked};
use webdiffusion::kernels::matmul::{self, MatmulOptions};
use webdiffusion::quant::{self, BLOCK};
use webdiffusion::reference::conv2d as cpu_conv;
use webdiffusion::reference::gather as cpu_gather;
use webdiffusion::reference::matmul::{self as cpu_matmul, Operand};

const QUANTIZED: [DType; 2] = [DType::Q8, DType::Q4];

fn scale_range(dtype: DType) -> f32 {
    if dtype == DType::Q8 { 127.0 } else { 7.0 }
}

/// The f16 scales of each row's blocks, read back from the packed bytes.
fn scales(dtype: DType, shape: &[usize], bytes: &[u8]) -> Vec<f32> {
    let k = quant::row_len(shape);
    let row_bytes = 4 * quant::row_words(dtype, k);
    let quant_bytes = if dtype == DType::Q8 { k } else { k / 2 };
    bytes
        .chunks_exact(row_bytes)
        .flat_map(|row| (0..k / BLOCK).map(move |b| f16::from_le_bytes([row[quant_bytes + 2 * b], row[quant_bytes + 2 * b + 1]]).to_f32()))
        .collect()
}

#[test]
fn round_trip_stays_within_half_a_step() {
    for dtype in QUANTIZED {
        for (seed, shape) in [[3usize, 64].as_slice(), &[5, 2, 4, 4], &[2, 96], &[1, 32]].into_iter().enumerate() {
            let mut values = random(shape.iter().product(), seed as u64, 2.0);
            values[7] = 0.0;
            let bytes = quant::quantize(dtype, shape, &values).unwrap();
            assert_eq!(bytes.len() as u64, quant::storage_bytes(dtype, shape), "{dtype:?} {shape:?}");
            let back = quant::dequantize(dtype, shape, &bytes).unwrap();
            let d = scales(dtype, shape, &bytes);
            for (i, (&w, &v)) in values.iter().zip(&back).enumerate() {
                let block_scale = d[i / BLOCK];
                // The scale is absmax / range rounded to f16, so the largest value may land
                // one f16 rounding (2^-11 of 127 or 7 steps) past the last quant: still
                // within half a step of it after the clamp.
                assert!(
                    (w - v).abs() <= block_scale / 2.0 + 1e-6,
                    "{dtype:?} {shape:?} element {i}: {w} came back as {v} (d {block_scale})"
                );
            }
            // The scales are the f16 of each block's absmax over the quant range.
            for (b, block) in values.chunks(BLOCK).enumerate() {
                let absmax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert_eq!(d[b], f16::from_f32(absmax / scale_range(dtype)).to_f32(), "{dtype:?} {shape:?} block {b}");
            }
        }
    }
}

/// One row of one block, bytes worked out by hand from the layout.
#[test]
fn known_block_bytes() {
    // absmax 127 gives d = 1 for q8: every value is its own quant.
    let mut values: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
    values[31] = 127.0;
    values[0] = -2.5; // rounds half away from zero to -3
    let q8 = quant::quantize(DType::Q8, &[1, 32], &values).unwrap();
    let mut want: Vec<u8> = values.iter().map(|&v| v.round() as i8 as u8).collect();
    assert_eq!(want[0], (-3i8) as u8);
    want.extend_from_slice(&f16::from_f32(1.0).to_le_bytes()); // the scale, low half
    want.extend_from_slice(&[0, 0]); // padding to a whole word
    assert_eq!(q8, want);

    // absmax 14 gives d = 2 for q4; w = 3 is 1.5 steps, rounding away from zero to 2.
    let mut values = vec![0f32; 32];
    values[0] = 14.0;
    values[1] = -14.0;
    values[2] = 3.0;
    values[3] = -3.0;
    values[4] = -13.0; // -6.5 steps rounds to -7
    let q4 = quant::quantize(DType::Q4, &[1, 32], &values).unwrap();
    // Quants stored as q + 8, element k in nibble k % 8 of word k / 8, low nibble first.
    let stored = [7i8, -7, 2, -2, -7].map(|q| (q + 8) as u8);
    let mut want = vec![8u8 | (8 << 4); 16];
    want[0] = stored[0] | (stored[1] << 4);
    want[1] = stored[2] | (stored[3] << 4);
    want[2] = stored[4] | (8 << 4);
    want.extend_from_slice(&f16::from_f32(2.0).to_le_bytes());
    want.extend_from_slice(&[0, 0]);
    assert_eq!(q4, want);
    let back = quant::dequantize(DType::Q4, &[1, 32], &q4).unwrap();
    assert_eq!(&back[..5], &[14.0, -14.0, 4.0, -4.0, -14.0]);
}

#[test]
fn scales_are_f16_two_per_word() {
    // Three blocks per row: scales 1, 2, 3 in the low and high halves of one word, then
    // the third and a zero pad in the next; the second row follows with its own.
    let rows = 2;
    let k = 3 * BLOCK;
    let values: Vec<f32> = (0..rows * k).map(|i| ((i / BLOCK) % 3 + 1) as f32 * 127.0 * if i % 2 == 0 { 1.0 } else { -0.5 }).collect();
    let bytes = quant::quantize(DType::Q8, &[rows, k], &values).unwrap();
    assert_eq!(quant::row_words(DType::Q8, k), k / 4 + 2);
    let row_bytes = 4 * quant::row_words(DType::Q8, k);
    for row in bytes.chunks_exact(row_bytes) {
        let halves: Vec<f16> = row[k..].chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect();
        assert_eq!(halves, [1.0, 2.0, 3.0, 0.0].map(f16::from_f32));
    }
}

#[test]
fn zero_block_has_zero_scale_and_quants() {
    for dtype in QUANTIZED {
        let mut values = vec![0f32; 64];
        values[40] = scale_range(dtype); // d = 1 for the second block
        let bytes = quant::quantize(dtype, &[1, 64], &values).unwrap();
        let d = scales(dtype, &[1, 64], &bytes);
        assert_eq!(d[0], 0.0, "{dtype:?}");
        let first_block_bytes = if dtype == DType::Q8 { 32 } else { 16 };
        let zero_quant = if dtype == DType::Q8 { 0 } else { 8 | (8 << 4) };
        assert!(bytes[..first_block_bytes].iter().all(|&b| b == zero_quant), "{dtype:?}: {:?}", &bytes[..first_block_bytes]);
        let back = quant::dequantize(dtype, &[1, 64], &bytes).unwrap();
        assert!(back[..32].iter().all(|&v| v == 0.0));
        assert_eq!(back[40], scale_range(dtype), "{dtype:?}: the absmax value is exact");
    }
}

#[test]
fn f16_and_f32_are_their_plain_storage() {
    let values = [1.0f32, -2.5, 3.25];
    let f16_bytes = quant::quantize(DType::F16, &[3], &values).unwrap();
    assert_eq!(f16_bytes.len() as u64, quant::storage_bytes(DType::F16, &[3]));
    assert_eq!(f16_bytes.len(), 8);
    assert_eq!(quant::dequantize(DType::F16, &[3], &f16_bytes).unwrap(), values);
    let f32_bytes = quant::quantize(DType::F32, &[3], &values).unwrap();
    assert_eq!(f32_bytes, bytemuck::cast_slice::<f32, u8>(&values));
    assert_eq!(quant::dequantize(DType::F32, &[3], &f32_bytes).unwrap(), values);
}

#[test]
fn storage_sizes() {
    assert_eq!(quant::storage_bytes(DType::F32, &[3, 5]), 60);
    assert_eq!(quant::storage_bytes(DType::F16, &[3, 5]), 32);
    // q8 [4, 64]: 16 quant words + 1 scale word per row.
    assert_eq!(quant::storage_bytes(DType::Q8, &[4, 64]), 4 * 4 * 17);
    // q4 [320, 320, 3, 3]: K = 2880, 360 quant words + 45 scale words per row.
    assert_eq!(quant::storage_bytes(DType::Q4, &[320, 320, 3, 3]), 320 * 4 * 405);
    assert!(quant::is_quantizable(&[10, 32]));
    assert!(quant::is_quantizable(&[4, 32, 3, 3]));
    assert!(!quant::is_quantizable(&[10, 48]));
    assert!(!quant::is_quantizable(&[64]));
    assert!(!quant::is_quantizable(&[4, 0]));
}

#[test]
fn refuses_rows_that_are_not_whole_blocks() {
    for dtype in QUANTIZED {
        let err = quant::quantize(dtype, &[2, 48], &[0.0; 96]).unwrap_err();
        let Error::Shape { detail, .. } = &err else { panic!("{err:?}") };
        assert!(detail.contains("multiple of 32") && detail.contains("[2, 48]"), "{err}");
        assert!(quant::quantize(dtype, &[64], &[0.0; 64]).is_err(), "{dtype:?}: a vector has no rows");
    }
}

#[test]
fn refuses_length_mismatches_and_bad_values() {
    for dtype in QUANTIZED {
        let err = quant::quantize(dtype, &[2, 32], &[0.0; 63]).unwrap_err();
        assert!(err.to_string().contains("holds 64 values, got 63"), "{err}");
        let err = quant::dequantize(dtype, &[2, 32], &[0; 12]).unwrap_err();
        assert!(err.to_string().contains("got 12"), "{err}");
        let mut values = vec![0.5f32; 64];
        values[33] = f32::NAN;
        let err = quant::quantize(dtype, &[2, 32], &values).unwrap_err();
        assert!(err.to_string().contains("row 1") && err.to_string().contains("NaN"), "{err}");
        values[33] = 1e9; // absmax / 7 or / 127 overflows f16
        assert!(quant::quantize(dtype, &[2, 32], &values).is_err(), "{dtype:?}");
    }
    assert!(quant::quantize(DType::U32, &[2], &[0.0; 2]).is_err());
}

#[test]
fn upload_checks_length_and_reads_back_dequantized() {
    let gpu = gpu();
    for dtype in QUANTIZED {
        let shape = [6, 2, 4, 4];
        let values = random(192, 11, 1.0);
        let bytes = quant::quantize(dtype, &shape, &values).unwrap();
        let tensor = gpu.upload_bytes(&shape, dtype, &bytes).unwrap();
        assert_eq!(tensor.byte_len(), bytes.len() as u64);
        assert_eq!(read(&tensor), quant::dequantize(dtype, &shape, &bytes).unwrap(), "{dtype:?}");
        let err = gpu.upload_bytes(&shape, dtype, &bytes[4..]).unwrap_err();
        assert!(err.to_string().contains("takes"), "{err}");
        assert!(gpu.upload_bytes(&[2, 48], dtype, &[0; 2 * 4 * 14]).is_err(), "{dtype:?}: rows of 48");
        // Rows keep their layout: a reshape may regroup a row, not move rows.
        assert_eq!(tensor.reshape(&[6, 32]).unwrap().shape(), [6, 32]);
        assert!(tensor.reshape(&[12, 16]).is_err());
        assert!(tensor.view_narrow(1, 0, 1).is_err());
    }
    let f16_bytes = quant::quantize(DType::F16, &[3], &[1.0, 2.0, 3.0]).unwrap();
    assert_eq!(read(&gpu.upload_bytes(&[3], DType::F16, &f16_bytes).unwrap()), [1.0, 2.0, 3.0]);
}

#[test]
fn row_views_are_contiguous_byte_ranges() {
    let gpu = gpu();
    let alignment = gpu.info().storage_offset_alignment as usize;
    for dtype in QUANTIZED {
        // 64-element rows are 68 (q8) or 36 (q4) bytes; `alignment` rows start at a
        // multiple of the alignment whatever it is.
        let rows = 3 * alignment;
        let shape = [rows, 64];
        let values = random(rows * 64, 5, 1.0);
        let bytes = quant::quantize(dtype, &shape, &values).unwrap();
        let tensor = gpu.upload_bytes(&shape, dtype, &bytes).unwrap();
        let all = quant::dequantize(dtype, &shape, &bytes).unwrap();
        let view = tensor.view_narrow(0, alignment, alignment + 3).unwrap();
        assert_eq!(view.shape(), [alignment + 3, 64]);
        assert_eq!(read(&view), &all[alignment * 64..(2 * alignment + 3) * 64], "{dtype:?}");
    }
}

const F32_TOL: f32 = 1e-4;
const F16_TOL: f32 = 2e-3;
const ATOL: f32 = 1e-6;
/// Activations here are at most 1.13-Lipschitz (GELU's slope peaks there).
const LIPSCHITZ: f32 = 1.2;

/// Quantizes `values` and uploads the bytes; returns the tensor and the values it stands for.
fn upload_quantized(dtype: DType, shape: &[usize], values: &[f32]) -> (Tensor, Vec<f32>) {
    let bytes = quant::quantize(dtype, shape, values).unwrap();
    (gpu().upload_bytes(shape, dtype, &bytes).unwrap(), quant::dequantize(dtype, shape, &bytes).unwrap())
}

fn abs(values: &[f32]) -> Vec<f32> {
    values.iter().map(|v| v.abs()).collect()
}

/// A Linear product `act(a @ w^T + bias)` with a quantized `w` `[N, K]`.
struct LinearCase<'a> {
    a: &'a [usize],
    n: usize,
    weight: DType,
    transpose_a: bool,
    bias: Option<DType>,
    activation: Option<Unary>,
    f16_math: bool,
}

impl<'a> LinearCase<'a> {
    fn new(a: &'a [usize], n: usize, weight: DType) -> Self {
        LinearCase { a, n, weight, transpose_a: false, bias: None, activation: None, f16_math: false }
    }

    fn check(&self, seed: u64) {
        let gpu = gpu();
        let what = format!(
            "a{:?}{} x {:?}[{}, K]^T bias {:?} act {:?} f16_math {}",
            self.a,
            if self.transpose_a { "^T" } else { "" },
            self.weight,
            self.n,
            self.bias,
            self.activation,
            self.f16_math
        );
        let k = if self.transpose_a { self.a[self.a.len() - 2] } else { self.a[self.a.len() - 1] };
        let a = random(self.a.iter().product(), seed, 1.0);
        let (w_gpu, w) = upload_quantized(self.weight, &[self.n, k], &random(self.n * k, seed + 1, 1.0));
        let bias = random(self.n, seed + 2, 1.0);
        let bias_gpu = self.bias.map(|dtype| match dtype {
            DType::F16 => gpu.upload_f32_as_f16(&[self.n], &bias).unwrap(),
            _ => gpu.upload_f32(&[self.n], &bias).unwrap(),
        });
        let bias: Vec<f32> = match self.bias {
            Some(DType::F16) => bias.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
            _ => bias,
        };
        let opts = MatmulOptions {
            transpose_a: self.transpose_a,
            transpose_b: true,
            bias: bias_gpu.as_ref(),
            activation: self.activation,
            f16_math: self.f16_math,
            residual: None,
            split_columns: None,
        };
        let got = matmul::matmul(gpu, &gpu.upload_f32(self.a, &a).unwrap(), &w_gpu, &opts).unwrap();

        let a_op = Operand { values: &a, shape: self.a, transposed: self.transpose_a };
        let w_shape = [self.n, k];
        let w_op = Operand { values: &w, shape: &w_shape, transposed: true };
        let bias_values = self.bias.map(|_| bias.as_slice());
        let (want, shape) = cpu_matmul::matmul(a_op, w_op, bias_values, self.activation);
        assert_eq!(got.shape(), shape.as_slice(), "{what}");
        let (abs_a, abs_w, abs_bias) = (abs(&a), abs(&w), bias_values.map(abs));
        let (scale, _) =
            cpu_matmul::matmul(Operand { values: &abs_a, ..a_op }, Operand { values: &abs_w, ..w_op }, abs_bias.as_deref(), None);
        let tol = if self.f16_math && gpu.has_shader_f16() { F16_TOL } else { F32_TOL };
        let slope = if self.activation.is_some() { LIPSCHITZ } else { 1.0 };
        let bound: Vec<f32> = scale.iter().map(|s| tol * slope * s + ATOL).collect();
        assert_within(&what, &read(&got), &want, &bound);
    }
}

#[test]
fn matmul_with_quantized_weights() {
    for (i, dtype) in QUANTIZED.into_iter().enumerate() {
        let seed = 100 * (i as u64 + 1);
        // Odd M and N, K from one block to several hundred, ragged against the 64x64x16 tiles.
        LinearCase::new(&[37, 32], 13, dtype).check(seed);
        LinearCase::new(&[1, 96], 65, dtype).check(seed + 10);
        LinearCase::new(&[70, 320], 3, dtype).check(seed + 20);
        // The Linear case: a batch of token rows against one shared weight.
        LinearCase::new(&[2, 77, 160], 130, dtype).check(seed + 30);
        LinearCase { transpose_a: true, ..LinearCase::new(&[64, 45], 29, dtype) }.check(seed + 40);
        LinearCase { transpose_a: true, ..LinearCase::new(&[3, 64, 45], 29, dtype) }.check(seed + 50);
    }
}

#[test]
fn matmul_with_quantized_weights_fuses_bias_and_activation() {
    for (i, dtype) in QUANTIZED.into_iter().enumerate() {
        let seed = 200 + 10 * i as u64;
        let case = LinearCase::new(&[2, 41, 96], 70, dtype);
        LinearCase { bias: Some(DType::F32), activation: Some(Unary::GeluErf), ..case }.check(seed);
        LinearCase { bias: Some(DType::F16), activation: Some(Unary::Silu), ..case }.check(seed + 1);
        // f16 math where the device has it (the f32 kernel, and its tolerance, elsewhere).
        LinearCase { bias: Some(DType::F16), f16_math: true, ..case }.check(seed + 2);
    }
}

#[test]
fn matmul_with_quantized_weights_and_the_linear_layer() {
    let gpu = gpu();
    let x = random(3 * 5 * 64, 300, 1.0);
    let (w_gpu, w) = upload_quantized(DType::Q8, &[40, 64], &random(40 * 64, 301, 1.0));
    let got = matmul::linear(gpu, &gpu.upload_f32(&[3, 5, 64], &x).unwrap(), &w_gpu, None).unwrap();
    assert_eq!(got.shape(), [3, 5, 40]);
    // |x|, |w| <= 1 over K = 64: S <= 64.
    common::assert_close("linear q8", &read(&got), &cpu_matmul::linear(&x, &w, 40, None), F32_TOL * 64.0, 0.0);
}

#[test]
fn matmul_refuses_quantized_b_it_cannot_read() {
    let gpu = gpu();
    let (w, _) = upload_quantized(DType::Q4, &[32, 32], &random(32 * 32, 400, 1.0));
    let a = gpu.upload_f32(&[4, 32], &random(4 * 32, 401, 1.0)).unwrap();
    let err = matmul::matmul(gpu, &a, &w, &MatmulOptions::default()).unwrap_err();
    assert!(err.to_string().contains("q4 b must be a 2-d [N, K] weight used transposed"), "{err}");
    // A quantized tensor is a weight, never the activation operand.
    let err = matmul::matmul(gpu, &w, &a, &MatmulOptions { transpose_b: true, ..Default::default() }).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
}

/// `values` `[N, C, H, W]` restricted to channels `range`.
fn channel_slice(values: &[f32], [n, c, h, w]: [usize; 4], range: std::ops::Range<usize>) -> Vec<f32> {
    (0..n).flat_map(|b| values[(b * c + range.start) * h * w..(b * c + range.end) * h * w].iter().copied()).collect()
}

/// A convolution by a quantized weight, on the GPU and on the CPU with the dequantized
/// weight: (GPU weight, x, its shape, dequantized weight, the reference, its shape and
/// the magnitude bound S for each output).
struct ConvCase {
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    stride: usize,
    padding: usize,
    bias: Option<DType>,
    f16_math: bool,
}

impl ConvCase {
    fn check(&self, weight: DType, seed: u64) {
        let gpu = gpu();
        let what = format!(
            "{weight:?} x{:?} w{:?} stride {} padding {} bias {:?} f16_math {}",
            self.x_shape, self.w_shape, self.stride, self.padding, self.bias, self.f16_math
        );
        let x = random(self.x_shape.iter().product(), seed, 2.0);
        let (w_gpu, w) = upload_quantized(weight, &self.w_shape, &random(self.w_shape.iter().product(), seed + 1, 0.5));
        let bias = random(self.w_shape[0], seed + 2, 1.0);
        let bias_gpu = self.bias.map(|dtype| match dtype {
            DType::F16 => gpu.upload_f32_as_f16(&[self.w_shape[0]], &bias).unwrap(),
            _ => gpu.upload_f32(&[self.w_shape[0]], &bias).unwrap(),
        });
        let bias: Vec<f32> = match self.bias {
            Some(DType::F16) => bias.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
            _ => bias,
        };
        let opts = Conv2dOptions { bias: bias_gpu.as_ref(), f16_math: self.f16_math, ..Conv2dOptions::new(self.stride, self.padding) };
        let got = conv2d(gpu, &gpu.upload_f32(&self.x_shape, &x).unwrap(), &w_gpu, &opts).unwrap();
        let bias_values = self.bias.map(|_| bias.as_slice());
        let padding = [self.padding; 4];
        let (want, shape) = cpu_conv::conv2d(&x, self.x_shape, &w, self.w_shape, bias_values, self.stride, padding);
        assert_eq!(got.shape(), shape, "{what}");
        let (magnitude, _) =
            cpu_conv::conv2d(&abs(&x), self.x_shape, &abs(&w), self.w_shape, bias_values.map(abs).as_deref(), self.stride, padding);
        let tol = if self.f16_math && gpu.has_shader_f16() { F16_TOL } else { F32_TOL };
        // Under f16 math, tiny terms are f16 subnormals: 2^-23 absolute per term at most
        // for |x| < 2, |w| < 0.5 (as in tests/conv2d.rs).
        let terms = (self.w_shape[1] * self.w_shape[2] * self.w_shape[3]) as f32;
        let atol = if tol == F16_TOL { ATOL + terms / (1u32 << 23) as f32 } else { ATOL };
        let bound: Vec<f32> = magnitude.iter().map(|m| tol * m + atol).collect();
        assert_within(&what, &read(&got), &want, &bound);
    }
}

#[test]
fn conv2d_with_quantized_weights() {
    for (i, dtype) in QUANTIZED.into_iter().enumerate() {
        let seed = 500 + 10 * i as u64;
        // 3x3 over 32 channels (K = 288), odd output channels and sizes, f16 bias.
        ConvCase { x_shape: [2, 32, 9, 11], w_shape: [37, 32, 3, 3], stride: 1, padding: 1, bias: Some(DType::F16), f16_math: false }
            .check(dtype, seed);
        // 1x1 (K = 64) and a stride-2 downsampler with more than one tile of channels.
        ConvCase { x_shape: [1, 64, 7, 5], w_shape: [70, 64, 1, 1], stride: 1, padding: 0, bias: Some(DType::F32), f16_math: false }
            .check(dtype, seed + 1);
        ConvCase { x_shape: [1, 64, 10, 9], w_shape: [65, 64, 3, 3], stride: 2, padding: 1, bias: None, f16_math: false }
            .check(dtype, seed + 2);
        ConvCase { x_shape: [1, 32, 8, 8], w_shape: [20, 32, 3, 3], stride: 1, padding: 1, bias: Some(DType::F16), f16_math: true }
            .check(dtype, seed + 3);
    }
}

#[test]
fn partial_convs_with_quantized_weights_add_up_to_the_whole() {
    // The VAE's split: input channels 0..20 and 20..32, output channels 0..9 and 9..23
    // (rows read in place). The first input block is staged word by word, its 180 columns
    // ending inside a word; the second starts at column 180, inside a quant word and a
    // scale block, so it is staged element by element.
    let gpu = gpu();
    let x_shape = [1, 32, 6, 7];
    let w_shape = [23, 32, 3, 3];
    for (i, dtype) in QUANTIZED.into_iter().enumerate() {
        let seed = 600 + 10 * i as u64;
        let x = random(x_shape.iter().product(), seed, 2.0);
        let (w_gpu, w) = upload_quantized(dtype, &w_shape, &random(w_shape.iter().product(), seed + 1, 0.5));
        let bias = random(23, seed + 2, 1.0);
        let bias_gpu = gpu.upload_f32(&[23], &bias).unwrap();
        let (want, [_, _, out_h, out_w]) = cpu_conv::conv2d(&x, x_shape, &w, w_shape, Some(&bias), 1, [1; 4]);
        let (magnitude, _) = cpu_conv::conv2d(&abs(&x), x_shape, &abs(&w), w_shape, Some(&abs(&bias)), 1, [1; 4]);
        let out_shape = [1, 23, out_h, out_w];
        for outputs in [0..9, 9..23] {
            let out = gpu.empty(&[1, outputs.len(), out_h, out_w], DType::F32).unwrap();
            for (j, inputs) in [0..20, 20..32].into_iter().enumerate() {
                let piece = gpu.upload_f32(&[1, inputs.len(), 6, 7], &channel_slice(&x, x_shape, inputs.clone())).unwrap();
                let opts = Conv2dOptions { bias: (j == 0).then_some(&bias_gpu), ..Conv2dOptions::new(1, 1) };
                let part = ConvPart { in_start: inputs.start, out_start: outputs.start, accumulate: j > 0 };
                conv2d_into(gpu, &piece, &w_gpu, &opts, part, &out).unwrap();
            }
            let bound: Vec<f32> = channel_slice(&magnitude, out_shape, outputs.clone()).iter().map(|m| F32_TOL * m + ATOL).collect();
            let want = channel_slice(&want, out_shape, outputs.clone());
            assert_within(&format!("{dtype:?} output channels {outputs:?}"), &read(&out), &want, &bound);
        }
    }
}

#[test]
fn conv2d_with_a_row_view_of_a_quantized_weight() {
    let gpu = gpu();
    let alignment = gpu.info().storage_offset_alignment as usize;
    for (i, dtype) in QUANTIZED.into_iter().enumerate() {
        let seed = 700 + 10 * i as u64;
        // A multiple of `alignment` rows always starts at an aligned byte.
        let (start, len) = (alignment, 11);
        let w_shape = [alignment + len, 32, 3, 3];
        let x_shape = [1, 32, 5, 6];
        let x = random(x_shape.iter().product(), seed, 2.0);
        let (w_gpu, w) = upload_quantized(dtype, &w_shape, &random(w_shape.iter().product(), seed + 1, 0.5));
        let view = w_gpu.view_narrow(0, start, len).unwrap();
        let got = conv2d(gpu, &gpu.upload_f32(&x_shape, &x).unwrap(), &view, &Conv2dOptions::new(1, 1)).unwrap();
        let view_values = &w[start * 288..];
        let view_shape = [len, 32, 3, 3];
        let (want, _) = cpu_conv::conv2d(&x, x_shape, view_values, view_shape, None, 1, [1; 4]);
        let (magnitude, _) = cpu_conv::conv2d(&abs(&x), x_shape, &abs(view_values), view_shape, None, 1, [1; 4]);
        let bound: Vec<f32> = magnitude.iter().map(|m| F32_TOL * m + ATOL).collect();
        assert_within(&format!("{dtype:?} rows {start}.."), &read(&got), &want, &bound);
    }
}

#[test]
fn token_embedding_gather_from_quantized_tables() {
    let gpu = gpu();
    let (rows, dim) = (50, 96);
    let ids: Vec<u32> = vec![0, 49, 7, 7, 23, 1, 48, 30, 12];
    let ids_gpu = gpu.upload_u32(&[3, 3], &ids).unwrap();
    for (i, dtype) in QUANTIZED.into_iter().enumerate() {
        let (table_gpu, table) = upload_quantized(dtype, &[rows, dim], &random(rows * dim, 800 + i as u64, 1.0));
        let want = cpu_gather::gather_rows(&table, dim, &ids);
        let got = gather_rows(gpu, &table_gpu, &ids_gpu).unwrap();
        assert_eq!(got.shape(), [3, 3, dim]);
        assert_eq!(read(&got), want, "{dtype:?}: dequantizing is exact");
        // Bound in row chunks (as CLIP-L's table is where the binding limit is small): one
        // byte less than the table splits it, in chunks of whole rows at aligned offsets.
        let chunked = gather_rows_chunked(gpu, &table_gpu, &ids_gpu, table_gpu.byte_len() - 1).unwrap();
        assert_eq!(read(&chunked), want, "{dtype:?}: chunked");
    }
}
