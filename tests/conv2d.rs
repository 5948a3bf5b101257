//! conv2d on the GPU against the CPU reference.

use crate::common;

use common::{assert_within, gpu, random, read};
use webdiffusion::Error;
use webdiffusion::gpu::DType;
use webdiffusion::kernels::cases::{self, Shapes};
use webdiffusion::kernels::conv2d::{Conv2dOptions, ConvPart, conv2d, conv2d_into};
use webdiffusion::kernels::elementwise::Unary;
use webdiffusion::reference::conv2d as cpu;
use webdiffusion::reference::elementwise::unary;

/// The GPU sums `C*KH*KW` products in f32 in its own order, so its error grows with the
/// magnitude of the terms, not of the (possibly cancelling) result: at most about
/// `K * 2^-24` of `sum |w*x| + |bias|` (K <= 288 here: < 2e-5). 1e-4 of that leaves
/// room for fused multiply-adds and reordering, and still catches any wrong or missing
/// term, which is off by a whole product.
const TOLERANCE: f32 = 1e-4;
/// f16 math rounds the input, the weight (when f32) and each product to f16, 2^-11 =
/// 4.9e-4 relative each, so a term errs by at most about 1.5e-3 of its size; with the
/// f32 summation above that stays under 2e-3 of the same magnitude (as for matmul).
const F16_TOLERANCE: f32 = 2e-3;
/// Absolute slack per element: f32 rounding of tiny results.
const ATOL: f32 = 1e-6;
/// Extra absolute slack per term under f16 math: below 2^-14 f16 is subnormal, where
/// rounding errs by up to 2^-25 absolute instead of relatively; for |x| < 2 and
/// |w| < 0.5 the three roundings of a term add less than 2^-23.
const F16_SUBNORMAL_PER_TERM: f32 = 1.0 / (1u32 << 23) as f32;

struct Case {
    batch: usize,
    channels: usize,
    out_channels: usize,
    size: [usize; 2],
    kernel: [usize; 2],
    stride: usize,
    padding: [usize; 4],
    weight: DType,
    bias: Option<DType>,
    f16_math: bool,
    /// A 1-Lipschitz activation in the epilogue (the bound holds through it).
    activation: Option<Unary>,
}

impl Case {
    fn new(channels: usize, out_channels: usize, size: [usize; 2], kernel: usize, stride: usize, padding: usize) -> Case {
        Case {
            batch: 2,
            channels,
            out_channels,
            size,
            kernel: [kernel; 2],
            stride,
            padding: [padding; 4],
            weight: DType::F32,
            bias: None,
            f16_math: false,
            activation: None,
        }
    }

    fn name(&self) -> String {
        format!(
            "{}x{}x{:?} -> {} kernel {:?} stride {} padding {:?} weight {:?} bias {:?} f16_math {} activation {:?}",
            self.batch,
            self.channels,
            self.size,
            self.out_channels,
            self.kernel,
            self.stride,
            self.padding,
            self.weight,
            self.bias,
            self.f16_math,
            self.activation
        )
    }

    /// Runs the case on the GPU and compares with the reference.
    fn check(&self, seed: u64) {
        let gpu = gpu();
        let x_shape = [self.batch, self.channels, self.size[0], self.size[1]];
        let w_shape = [self.out_channels, self.channels, self.kernel[0], self.kernel[1]];
        let x = random(x_shape.iter().product(), seed, 2.0);
        let (w, w_gpu) = upload(self.weight, &w_shape, random(w_shape.iter().product(), seed + 1, 0.5));
        let bias = self.bias.map(|dtype| upload(dtype, &[self.out_channels], random(self.out_channels, seed + 2, 1.0)));
        let x_gpu = gpu.upload_f32(&x_shape, &x).unwrap();
        let opts = Conv2dOptions {
            bias: bias.as_ref().map(|(_, t)| t),
            f16_math: self.f16_math,
            padding: self.padding,
            activation: self.activation,
            ..Conv2dOptions::new(self.stride, 0)
        };
        let got = conv2d(gpu, &x_gpu, &w_gpu, &opts).unwrap();

        let bias_values = bias.as_ref().map(|(values, _)| values.as_slice());
        let (mut want, shape) = cpu::conv2d(&x, x_shape, &w, w_shape, bias_values, self.stride, self.padding);
        if let Some(op) = self.activation {
            want.iter_mut().for_each(|v| *v = unary(op, *v));
        }
        assert_eq!(got.shape(), shape.as_slice(), "{}", self.name());
        // The same convolution of absolute values bounds every partial sum.
        let abs = |v: &[f32]| v.iter().map(|a| a.abs()).collect::<Vec<f32>>();
        let abs_bias = bias_values.map(abs);
        let (magnitude, _) = cpu::conv2d(&abs(&x), x_shape, &abs(&w), w_shape, abs_bias.as_deref(), self.stride, self.padding);
        let bound: Vec<f32> = magnitude.iter().map(|m| self.tolerance() * m + self.atol()).collect();
        assert_within(&self.name(), &read(&got), &want, &bound);
    }

    /// f16 math only runs where the device has shader-f16; elsewhere the f32 kernel does.
    fn uses_f16_math(&self) -> bool {
        self.f16_math && gpu().has_shader_f16()
    }

    fn tolerance(&self) -> f32 {
        if self.uses_f16_math() { F16_TOLERANCE } else { TOLERANCE }
    }

    fn atol(&self) -> f32 {
        let terms = self.channels * self.kernel[0] * self.kernel[1];
        if self.uses_f16_math() { ATOL + terms as f32 * F16_SUBNORMAL_PER_TERM } else { ATOL }
    }
}

/// Uploads `values` as `dtype`; returns the values the GPU sees (rounded for f16).
fn upload(dtype: DType, shape: &[usize], values: Vec<f32>) -> (Vec<f32>, webdiffusion::gpu::Tensor) {
    let gpu = gpu();
    match dtype {
        DType::F32 => {
            let tensor = gpu.upload_f32(shape, &values).unwrap();
            (values, tensor)
        }
        DType::F16 => {
            let rounded = values.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
            (rounded, gpu.upload_f32_as_f16(shape, &values).unwrap())
        }
        // The reference sees the values the kernel dequantizes.
        DType::Q8 | DType::Q4 => {
            let bytes = webdiffusion::quant::quantize(dtype, shape, &values).unwrap();
            (webdiffusion::quant::dequantize(dtype, shape, &bytes).unwrap(), gpu.upload_bytes(shape, dtype, &bytes).unwrap())
        }
        DType::U32 => unreachable!("the conv cases use float operands"),
    }
}

#[test]
fn same_size_3x3_and_1x1() {
    Case { bias: Some(DType::F32), ..Case::new(3, 5, [9, 11], 3, 1, 1) }.check(1);
    Case::new(7, 13, [9, 11], 1, 1, 0).check(2);
    // One input pixel, one channel: everything but the centre tap is padding.
    Case { batch: 1, ..Case::new(1, 1, [1, 1], 3, 1, 1) }.check(3);
}

/// The benchmark's cases (`kernels::cases`): the built-in model's convs as its packages
/// store them (q8, f16 where rows are short) and its preview decoder's (a ReLU fused).
#[test]
fn the_benchmarks_embedded_cases() {
    for (i, c) in cases::conv2d(Shapes::Embedded).into_iter().enumerate() {
        let layer = Case::new(c.in_channels, c.out_channels, [c.size; 2], c.kernel, c.stride, c.padding());
        let case = Case {
            batch: c.batch,
            weight: c.weights,
            bias: c.bias.then_some(DType::F32),
            f16_math: c.f16_math,
            activation: c.activation,
            ..layer
        };
        case.check(900 + i as u64);
    }
}

#[test]
fn stride_2_downsampling() {
    // The UNet/VAE decoder downsampler (padding 1) on an odd size.
    Case::new(7, 13, [9, 11], 3, 2, 1).check(10);
    // The VAE encoder's: pad bottom and right by one, then a padding-0 stride-2 conv.
    Case { padding: [0, 1, 0, 1], bias: Some(DType::F32), ..Case::new(5, 6, [10, 12], 3, 2, 0) }.check(11);
    Case { padding: [0, 1, 0, 1], ..Case::new(5, 6, [9, 11], 3, 2, 0) }.check(12);
}

#[test]
fn uneven_kernels_and_padding() {
    Case { kernel: [2, 3], padding: [1, 0, 2, 1], ..Case::new(4, 3, [7, 5], 0, 1, 0) }.check(20);
    Case { kernel: [3, 1], padding: [2, 0, 0, 3], ..Case::new(4, 3, [7, 5], 0, 2, 0) }.check(21);
}

#[test]
fn f16_weights_and_bias() {
    // An odd K (3*3*3) puts weight rows across packed word boundaries.
    Case { weight: DType::F16, bias: Some(DType::F16), ..Case::new(3, 5, [9, 11], 3, 1, 1) }.check(30);
    Case { weight: DType::F16, bias: Some(DType::F32), ..Case::new(7, 13, [9, 11], 3, 2, 1) }.check(31);
    Case { weight: DType::F16, ..Case::new(7, 13, [9, 11], 1, 1, 0) }.check(32);
}

#[test]
fn larger_than_one_tile() {
    // 18 reduction steps, 4 pixel tiles; the second case spans two channel tiles.
    Case { bias: Some(DType::F32), ..Case::new(32, 40, [16, 16], 3, 1, 1) }.check(40);
    Case { weight: DType::F16, bias: Some(DType::F16), ..Case::new(32, 72, [16, 16], 3, 1, 1) }.check(41);
}

#[test]
fn tiles_shaped_to_small_outputs() {
    // The launcher shapes the tile to the output: 96 channels at 4x4 (a 32 x 16 tile, as
    // the built-in model's deepest layers), 8 channels at 16x16 (an 8 x 64 tile, its output
    // conv), 36 pixels (8-pixel tiles, five of them) and 3 channels at 1 pixel.
    Case { bias: Some(DType::F16), weight: DType::F16, ..Case::new(40, 96, [4, 4], 3, 1, 1) }.check(60);
    Case { bias: Some(DType::F32), ..Case::new(24, 8, [16, 16], 3, 1, 1) }.check(61);
    Case { weight: DType::F16, ..Case::new(17, 20, [6, 6], 3, 1, 1) }.check(62);
    Case { batch: 3, ..Case::new(5, 3, [1, 1], 1, 1, 0) }.check(63);
}

/// Channels-last output (a 1x1 conv from an image to its tokens): the channels-first
/// output's values at `[n, y, x, oc]`, bit for bit (only the store differs), for a q8 1x1
/// and an f32 3x3 conv; with a residual in that layout, and added into (a LoRA's up conv).
#[test]
fn writes_channels_last() {
    let gpu = gpu();
    for (i, (channels, out, [h, w], kernel, dtype)) in
        [(64, 40, [5, 7], 1, DType::Q8), (6, 13, [9, 11], 3, DType::F32)].into_iter().enumerate()
    {
        let seed = 180 + 10 * i as u64;
        let x_shape = [2, channels, h, w];
        let tx = gpu.upload_f32(&x_shape, &random(x_shape.iter().product(), seed, 2.0)).unwrap();
        let (_, tw) = upload(dtype, &[out, channels, kernel, kernel], random(out * channels * kernel * kernel, seed + 1, 0.5));
        let (_, tb) = upload(DType::F32, &[out], random(out, seed + 2, 1.0));
        let plain_opts = Conv2dOptions::new(1, kernel / 2).with_bias(&tb);
        let plain = read(&conv2d(gpu, &tx, &tw, &plain_opts).unwrap());
        let want = webdiffusion::reference::layout::permute(&plain, &[2, out, h, w], &[0, 2, 3, 1]).0;
        let last_opts = Conv2dOptions { channels_last: true, ..plain_opts };
        let last = conv2d(gpu, &tx, &tw, &last_opts).unwrap();
        assert_eq!(last.shape(), [2, h, w, out]);
        assert_eq!(read(&last), want, "{dtype:?} k{kernel} channels last");

        let residual = random(want.len(), seed + 3, 1.0);
        let plus: Vec<f32> = want.iter().zip(&residual).map(|(v, r)| v + r).collect();
        let tr = gpu.upload_f32(&[2, h, w, out], &residual).unwrap();
        let got = conv2d(gpu, &tx, &tw, &last_opts.with_residual(Some(&tr))).unwrap();
        assert_eq!(read(&got), plus, "{dtype:?} k{kernel} channels last with a residual");
        let into = gpu.upload_f32(&[2, h, w, out], &residual).unwrap();
        conv2d_into(gpu, &tx, &tw, &last_opts, ConvPart { accumulate: true, ..Default::default() }, &into).unwrap();
        assert_eq!(read(&into), plus, "{dtype:?} k{kernel} channels last added into");
        let wrong = gpu.upload_f32(&[2, out, h, w], &residual).unwrap();
        let result = conv2d(gpu, &tx, &tw, &last_opts.with_residual(Some(&wrong)));
        assert!(matches!(result, Err(Error::Shape { .. })), "a channels-first residual: {result:?}");
    }
}

/// What the epilogue adds after the bias: a value per (sample, channel) and a residual of
/// the output's shape, together and apart, including the output-channel chunk of a
/// partial conv (whose channel_add values start at its first channel).
#[test]
fn adds_channel_values_and_a_residual_then_activates() {
    let gpu = gpu();
    let (x_shape, w_shape) = ([2, 6, 7, 9], [10, 6, 3, 3]);
    let x = random(2 * 6 * 7 * 9, 70, 2.0);
    let w = random(10 * 6 * 9, 71, 0.5);
    let bias = random(10, 72, 1.0);
    let per_channel = random(2 * 10, 73, 1.0);
    let residual = random(2 * 10 * 7 * 9, 74, 1.0);
    let (base, _) = cpu::conv2d(&x, x_shape, &w, w_shape, Some(&bias), 1, [1; 4]);
    let (tx, tw, tb) =
        (gpu.upload_f32(&x_shape, &x).unwrap(), gpu.upload_f32(&w_shape, &w).unwrap(), gpu.upload_f32(&[10], &bias).unwrap());
    let (ta, tr) = (gpu.upload_f32(&[2, 10], &per_channel).unwrap(), gpu.upload_f32(&[2, 10, 7, 9], &residual).unwrap());
    let with = |i: usize, add: bool, res: bool| base[i] + if add { per_channel[i / 63] } else { 0.0 } + if res { residual[i] } else { 0.0 };
    for (add, res) in [(true, false), (false, true), (true, true)] {
        let opts = Conv2dOptions::new(1, 1).with_bias(&tb).with_channel_add(add.then_some(&ta)).with_residual(res.then_some(&tr));
        let got = read(&conv2d(gpu, &tx, &tw, &opts).unwrap());
        let want: Vec<f32> = (0..base.len()).map(|i| with(i, add, res)).collect();
        assert_within(&format!("channel_add={add} residual={res}"), &got, &want, &vec![1e-5; want.len()]);
    }
    // TAESD's block end: relu(conv(h) + bias + x), the activation after the residual.
    let opts = Conv2dOptions::new(1, 1).with_bias(&tb).with_residual(Some(&tr)).with_activation(Some(Unary::Relu));
    let got = read(&conv2d(gpu, &tx, &tw, &opts).unwrap());
    let want: Vec<f32> = (0..base.len()).map(|i| with(i, false, true).max(0.0)).collect();
    assert!(want.iter().filter(|v| **v == 0.0).count() > want.len() / 4, "the relu must clip a good share");
    assert_within("residual then relu", &got, &want, &vec![1e-5; want.len()]);
    // Output channels 4..10 of the same conv, written into their own tensor.
    let chunk = gpu.empty(&[2, 6, 7, 9], DType::F32).unwrap();
    let chunk_residual: Vec<f32> = (0..2 * 6 * 63).map(|i| residual[(i / 378) * 630 + 4 * 63 + i % 378]).collect();
    let tcr = gpu.upload_f32(&[2, 6, 7, 9], &chunk_residual).unwrap();
    let opts = Conv2dOptions::new(1, 1).with_bias(&tb).with_channel_add(Some(&ta)).with_residual(Some(&tcr));
    conv2d_into(gpu, &tx, &tw, &opts, ConvPart { out_start: 4, ..Default::default() }, &chunk).unwrap();
    let want: Vec<f32> = (0..2 * 6 * 63).map(|i| with((i / 378) * 630 + 4 * 63 + i % 378, true, true)).collect();
    assert_within("output channels 4..10", &read(&chunk), &want, &vec![1e-5; want.len()]);

    let wrong = gpu.upload_f32(&[2, 9], &[0.0; 18]).unwrap();
    let result = conv2d(gpu, &tx, &tw, &Conv2dOptions::new(1, 1).with_channel_add(Some(&wrong)));
    assert!(matches!(result, Err(Error::Shape { .. })), "channel_add of the wrong width: {result:?}");
    let result = conv2d(gpu, &tx, &tw, &Conv2dOptions::new(1, 1).with_residual(Some(&ta)));
    assert!(matches!(result, Err(Error::Shape { .. })), "residual of the wrong shape: {result:?}");
    let relu = Conv2dOptions::new(1, 1).with_activation(Some(Unary::Relu));
    let result = conv2d_into(gpu, &tx, &tw, &relu, ConvPart { accumulate: true, ..Default::default() }, &chunk);
    assert!(matches!(result, Err(Error::Shape { .. })), "an activation on one part of a sum: {result:?}");
}

#[test]
fn f16_math() {
    // Checked against the f16 tolerance where the device has shader-f16, and against the
    // f32 one where f16_math falls back to the f32 kernel.
    Case { bias: Some(DType::F32), f16_math: true, ..Case::new(3, 5, [9, 11], 3, 1, 1) }.check(50);
    Case { batch: 1, f16_math: true, ..Case::new(1, 1, [1, 1], 3, 1, 1) }.check(51);
    let downsampler = Case::new(5, 6, [10, 12], 3, 2, 0);
    Case { padding: [0, 1, 0, 1], weight: DType::F16, bias: Some(DType::F16), f16_math: true, ..downsampler }.check(52);
    // 18 reduction steps, two channel tiles, four pixel tiles.
    Case { weight: DType::F16, bias: Some(DType::F32), f16_math: true, ..Case::new(32, 72, [16, 16], 3, 1, 1) }.check(53);
}

#[test]
fn f16_math_runs_only_with_shader_f16() {
    let gpu = gpu();
    let (x_shape, w_shape) = ([1, 32, 12, 12], [24, 32, 3, 3]);
    let x = gpu.upload_f32(&x_shape, &random(x_shape.iter().product(), 60, 2.0)).unwrap();
    let w = gpu.upload_f32(&w_shape, &random(w_shape.iter().product(), 61, 0.5)).unwrap();
    let run = |f16_math| read(&conv2d(gpu, &x, &w, &Conv2dOptions::new(1, 1).with_f16_math(f16_math)).unwrap());
    let (f16, f32) = (run(true), run(false));
    if gpu.has_shader_f16() {
        // Rounding to f16 moves sums of 288 terms of size ~0.5 by ~1e-3; the f32 kernel's
        // own error is ~1e-5.
        let differs = f16.iter().zip(&f32).any(|(a, b)| (a - b).abs() > 1e-3);
        assert!(differs, "f16_math gave the f32 kernel's result");
    } else {
        assert_eq!(f16, f32, "without shader-f16, f16_math must run the f32 kernel");
    }
}

#[test]
fn bad_inputs_are_shape_errors() {
    let gpu = gpu();
    let x = gpu.upload_f32(&[1, 3, 4, 4], &[0.0; 48]).unwrap();
    let w = |shape: &[usize]| gpu.upload_f32(shape, &vec![0.0; shape.iter().product()]).unwrap();
    let opts = Conv2dOptions::new(1, 1);
    let bias = w(&[4]);
    let cases = [
        ("channel mismatch", conv2d(gpu, &x, &w(&[5, 4, 3, 3]), &opts)),
        ("weight rank", conv2d(gpu, &x, &w(&[5, 27]), &opts)),
        ("input rank", conv2d(gpu, &x.reshape(&[3, 16]).unwrap(), &w(&[5, 3, 3, 3]), &opts)),
        ("bias length", conv2d(gpu, &x, &w(&[5, 3, 3, 3]), &opts.with_bias(&bias))),
        ("kernel larger than the padded input", conv2d(gpu, &x, &w(&[5, 3, 7, 7]), &opts)),
        ("stride 0", conv2d(gpu, &x, &w(&[5, 3, 3, 3]), &Conv2dOptions::new(0, 1))),
        ("f16 input", conv2d(gpu, &gpu.upload_f32_as_f16(&[1, 3, 4, 4], &[0.0; 48]).unwrap(), &w(&[5, 3, 3, 3]), &opts)),
    ];
    for (what, result) in cases {
        assert!(matches!(result, Err(Error::Shape { .. })), "{what}: {result:?}");
    }
}

/// `values` `[N, C, H, W]` restricted to channels `range`.
fn channel_slice(values: &[f32], [n, c, h, w]: [usize; 4], range: std::ops::Range<usize>) -> Vec<f32> {
    (0..n).flat_map(|b| values[(b * c + range.start) * h * w..(b * c + range.end) * h * w].iter().copied()).collect()
}

#[test]
fn partial_convs_over_channel_chunks_add_up_to_the_whole() {
    // A conv summed over input channels 0..4 and 4..10 and written as output channels
    // 0..5 and 5..13, with f16 weight and bias blocks read in place (odd offsets into
    // packed words), stride 2 and a batch of 2.
    let gpu = gpu();
    let x_shape = [2, 10, 9, 11];
    let w_shape = [13, 10, 3, 3];
    let x = random(x_shape.iter().product(), 70, 2.0);
    let (w, w_gpu) = upload(DType::F16, &w_shape, random(w_shape.iter().product(), 71, 0.5));
    let (bias, bias_gpu) = upload(DType::F16, &[13], random(13, 72, 1.0));
    let (want, [_, _, out_h, out_w]) = cpu::conv2d(&x, x_shape, &w, w_shape, Some(&bias), 2, [1; 4]);
    let abs = |v: &[f32]| v.iter().map(|a| a.abs()).collect::<Vec<f32>>();
    let (magnitude, _) = cpu::conv2d(&abs(&x), x_shape, &abs(&w), w_shape, Some(&abs(&bias)), 2, [1; 4]);
    let inputs: Vec<_> = [0..4, 4..10]
        .into_iter()
        .map(|range| {
            let piece = gpu.upload_f32(&[2, range.len(), 9, 11], &channel_slice(&x, x_shape, range.clone())).unwrap();
            (range.start, piece)
        })
        .collect();
    let out_shape = [2, 13, out_h, out_w];
    for outputs in [0..5, 5..13] {
        let out = gpu.empty(&[2, outputs.len(), out_h, out_w], DType::F32).unwrap();
        for (i, (in_start, piece)) in inputs.iter().enumerate() {
            let opts = Conv2dOptions { bias: (i == 0).then_some(&bias_gpu), ..Conv2dOptions::new(2, 1) };
            let part = ConvPart { in_start: *in_start, out_start: outputs.start, accumulate: i > 0 };
            conv2d_into(gpu, piece, &w_gpu, &opts, part, &out).unwrap();
        }
        let bound: Vec<f32> = channel_slice(&magnitude, out_shape, outputs.clone()).iter().map(|m| TOLERANCE * m + ATOL).collect();
        let want = channel_slice(&want, out_shape, outputs.clone());
        assert_within(&format!("output channels {outputs:?}"), &read(&out), &want, &bound);
    }
}

#[test]
fn bad_partial_convs_are_shape_errors() {
    let gpu = gpu();
    let x = gpu.upload_f32(&[1, 3, 4, 4], &[0.0; 48]).unwrap();
    let w = gpu.upload_f32(&[5, 6, 3, 3], &[0.0; 270]).unwrap();
    let opts = Conv2dOptions::new(1, 1);
    let out = |channels| gpu.empty(&[1, channels, 4, 4], DType::F32).unwrap();
    let part = |in_start, out_start| ConvPart { in_start, out_start, accumulate: false };
    let cases = [
        ("input channels past the weight", conv2d_into(gpu, &x, &w, &opts, part(4, 0), &out(5))),
        ("output channels past the weight", conv2d_into(gpu, &x, &w, &opts, part(3, 1), &out(5))),
        ("output of the wrong size", conv2d_into(gpu, &x, &w, &opts, part(0, 0), &gpu.empty(&[1, 5, 3, 4], DType::F32).unwrap())),
        ("f16 output", conv2d_into(gpu, &x, &w, &opts, part(0, 0), &gpu.empty(&[1, 5, 4, 4], DType::F16).unwrap())),
    ];
    for (what, result) in cases {
        assert!(matches!(result, Err(Error::Shape { .. })), "{what}: {result:?}");
    }
    conv2d_into(gpu, &x, &w, &opts, part(3, 1), &out(4)).unwrap();
}
