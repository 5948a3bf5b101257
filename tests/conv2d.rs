//! conv2d on the GPU against the CPU reference.

mod common;

use common::{gpu, random, read};
use webdiffusion::gpu::DType;
use webdiffusion::kernels::conv2d::{conv2d, Conv2dOptions};
use webdiffusion::reference::conv2d as cpu;
use webdiffusion::Error;

/// The GPU sums `C*KH*KW` products in f32 in its own order, so its error grows with the
/// magnitude of the terms, not of the (possibly cancelling) result: at most about
/// `K * 2^-24` of `sum |w*x| + |bias|` (K <= 288 here: < 2e-5). 1e-4 of that leaves
/// room for fused multiply-adds and reordering, and still catches any wrong or missing
/// term, which is off by a whole product.
const TOLERANCE: f32 = 1e-4;

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
}

impl Case {
    fn new(channels: usize, out_channels: usize, size: [usize; 2], kernel: usize, stride: usize, padding: usize) -> Case {
        Case { batch: 2, channels, out_channels, size, kernel: [kernel; 2], stride, padding: [padding; 4], weight: DType::F32, bias: None }
    }

    fn name(&self) -> String {
        format!(
            "{}x{}x{:?} -> {} kernel {:?} stride {} padding {:?} weight {:?} bias {:?}",
            self.batch, self.channels, self.size, self.out_channels, self.kernel, self.stride, self.padding, self.weight, self.bias
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
        let opts = Conv2dOptions { stride: self.stride, padding: self.padding, bias: bias.as_ref().map(|(_, t)| t) };
        let got = conv2d(gpu, &x_gpu, &w_gpu, &opts).unwrap();

        let bias_values = bias.as_ref().map(|(values, _)| values.as_slice());
        let (want, shape) = cpu::conv2d(&x, x_shape, &w, w_shape, bias_values, self.stride, self.padding);
        assert_eq!(got.shape(), shape.as_slice(), "{}", self.name());
        // The same convolution of absolute values bounds every partial sum.
        let abs = |v: &[f32]| v.iter().map(|a| a.abs()).collect::<Vec<f32>>();
        let abs_bias = bias_values.map(abs);
        let (magnitude, _) = cpu::conv2d(&abs(&x), x_shape, &abs(&w), w_shape, abs_bias.as_deref(), self.stride, self.padding);
        assert_within(&self.name(), &read(&got), &want, &magnitude);
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
    }
}

fn assert_within(what: &str, got: &[f32], want: &[f32], magnitude: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for i in 0..got.len() {
        let allowed = TOLERANCE * magnitude[i] + 1e-6;
        assert!((got[i] - want[i]).abs() <= allowed, "{what}: element {i} is {} but the reference says {} (allowed error {allowed})", got[i], want[i]);
    }
}

#[test]
fn same_size_3x3_and_1x1() {
    Case { bias: Some(DType::F32), ..Case::new(3, 5, [9, 11], 3, 1, 1) }.check(1);
    Case::new(7, 13, [9, 11], 1, 1, 0).check(2);
    // One input pixel, one channel: everything but the centre tap is padding.
    Case { batch: 1, ..Case::new(1, 1, [1, 1], 3, 1, 1) }.check(3);
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
