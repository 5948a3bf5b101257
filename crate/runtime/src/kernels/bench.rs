//! The kernel benchmark's cases: each kernel family at a few sizes, and the timing loop.
//! `webdiffusion bench kernels` prints them natively, `benchKernels` in a browser.

use serde::Serialize;
use web_time::Instant;

use super::attention::{AttentionOptions, attention};
use super::conv2d::{Conv2dOptions, conv2d};
use super::elementwise::{self as ew, Unary};
use super::matmul::{MatmulOptions, matmul};
use super::{embedding, layout, norm, softmax};
use crate::error::Result;
use crate::gpu::{DType, Gpu, Tensor};

/// Which shapes the cases use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shapes {
    /// A quarter of Stable Diffusion 1.5's 512x512 activations (a CPU driver finishes in minutes).
    Reduced,
    /// Stable Diffusion 1.5 at 512x512 with classifier-free guidance (batch 2).
    Full,
    /// The built-in model's own layers (16x16 latents, 64 and 96 channels, head dim 32, batch 2).
    Embedded,
}

/// What one launch does, for the throughput column.
enum Work {
    Flops(f64),
    /// Bytes read plus bytes written.
    Bytes(f64),
}

struct Case {
    kernel: &'static str,
    shape: String,
    work: Work,
    launch: Box<dyn Fn() -> Result<Tensor>>,
}

/// Deterministic values in [-1, 1) without an RNG dependency.
fn values(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i as u64 * 2_654_435_761 % 1_000_003) as f32 / 500_001.5) - 1.0).collect()
}

fn tensor(gpu: &Gpu, shape: &[usize]) -> Result<Tensor> {
    gpu.upload_f32(shape, &values(shape.iter().product()))
}

/// A weight stored as `dtype` (f16, q8 or q4), as a package holds it.
fn weight(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Tensor> {
    gpu.upload_bytes(shape, dtype, &crate::quant::quantize(dtype, shape, &values(shape.iter().product()))?)
}

fn sd_cases(gpu: &Gpu, full: bool) -> Result<Vec<Case>> {
    // `full` uses Stable Diffusion 1.5 shapes at 512x512 with CFG (batch 2);
    // the default is a fraction of that, so a CPU driver finishes in a minute or two.
    let (hw, tokens) = if full { (64, 4096) } else { (32, 1024) };
    let mut cases = Vec::new();
    let g = gpu.clone();

    let n = 2 * 320 * hw * hw;
    let x = tensor(gpu, &[2, 320, hw, hw])?;
    let (gx, bytes) = (g.clone(), 8.0 * n as f64);
    cases.push(Case {
        kernel: "silu",
        shape: format!("[2,320,{hw},{hw}]"),
        work: Work::Bytes(bytes),
        launch: Box::new(move || ew::unary(&gx, &x, Unary::Silu)),
    });
    let (x, bias) = (tensor(gpu, &[2, 320, hw, hw])?, tensor(gpu, &[2, 320, 1, 1])?);
    let gx = g.clone();
    cases.push(Case {
        kernel: "add (broadcast)",
        shape: format!("[2,320,{hw},{hw}]+[2,320,1,1]"),
        work: Work::Bytes(bytes),
        launch: Box::new(move || ew::add(&gx, &x, &bias)),
    });
    let (x, y, z) = (tensor(gpu, &[2, 4, hw, hw])?, tensor(gpu, &[2, 4, hw, hw])?, tensor(gpu, &[2, 4, hw, hw])?);
    let gx = g.clone();
    cases.push(Case {
        kernel: "axpby (3 terms)",
        shape: format!("[2,4,{hw},{hw}]"),
        work: Work::Bytes(16.0 * (8 * hw * hw) as f64),
        launch: Box::new(move || ew::axpby(&gx, 0.5, &x, 0.3, &y, Some((0.2, &z)))),
    });

    for (m, k, n, b, f16_math) in [
        (2 * tokens, 320, 320, DType::F32, false),
        (2 * tokens, 320, 1280, DType::F32, false),
        (2 * tokens, 320, 1280, DType::F16, false),
        (2 * tokens, 320, 1280, DType::F16, true),
        (2 * tokens, 320, 1280, DType::Q8, false),
        (2 * tokens, 320, 1280, DType::Q4, false),
        (154, 768, 3072, DType::F16, false),
        (154, 768, 3072, DType::Q8, false),
        (154, 768, 3072, DType::Q4, false),
    ] {
        if f16_math && !gpu.has_shader_f16() {
            continue;
        }
        let a = tensor(gpu, &[m, k])?;
        let w = weight(gpu, &[n, k], b)?;
        let gx = g.clone();
        let kernel = match (b, f16_math) {
            (_, true) => "matmul (linear, f16 math)",
            (DType::F16, false) => "matmul (linear, f16 weights)",
            (DType::Q8, false) => "matmul (linear, q8 weights)",
            (DType::Q4, false) => "matmul (linear, q4 weights)",
            _ => "matmul (linear, f32 weights)",
        };
        cases.push(Case {
            kernel,
            shape: format!("{m}x{k} . {k}x{n}"),
            work: Work::Flops(2.0 * (m * k * n) as f64),
            launch: Box::new(move || matmul(&gx, &a, &w, &MatmulOptions { transpose_b: true, f16_math, ..Default::default() })),
        });
    }

    for (c_in, c_out, size, kernel, stride, w_dtype, f16_math) in [
        (320, 320, hw, 3, 1, DType::F16, false),
        (320, 320, hw, 3, 1, DType::F16, true),
        (320, 320, hw, 3, 1, DType::Q8, false),
        (320, 320, hw, 3, 1, DType::Q4, false),
        (320, 320, hw, 1, 1, DType::F16, false),
        (320, 320, hw, 3, 2, DType::F16, false),
        (128, 128, hw * 4, 3, 1, DType::F16, false),
    ] {
        if f16_math && !gpu.has_shader_f16() {
            continue;
        }
        let x = tensor(gpu, &[if size > hw { 1 } else { 2 }, c_in, size, size])?;
        let w = weight(gpu, &[c_out, c_in, kernel, kernel], w_dtype)?;
        let batch = x.shape()[0];
        let out = size / stride;
        let gx = g.clone();
        cases.push(Case {
            kernel: match (w_dtype, f16_math) {
                (_, true) => "conv2d (f16 weights, f16 math)",
                (DType::Q8, _) => "conv2d (q8 weights)",
                (DType::Q4, _) => "conv2d (q4 weights)",
                _ => "conv2d (f16 weights)",
            },
            shape: format!("{batch}x{c_in}x{size}x{size} k{kernel} s{stride} -> {c_out}"),
            work: Work::Flops(2.0 * (batch * c_out * out * out * c_in * kernel * kernel) as f64),
            launch: Box::new(move || conv2d(&gx, &x, &w, &Conv2dOptions::new(stride, kernel / 2).with_f16_math(f16_math))),
        });
    }

    let x = tensor(gpu, &[2, 320, hw, hw])?;
    let (w, b) = (tensor(gpu, &[320])?, tensor(gpu, &[320])?);
    let gx = g.clone();
    cases.push(Case {
        kernel: "group_norm + silu",
        shape: format!("[2,320,{hw},{hw}] g32"),
        work: Work::Bytes(12.0 * n as f64),
        launch: Box::new(move || norm::group_norm(&gx, &x, 32, &w, &b, 1e-5, true)),
    });
    let x = tensor(gpu, &[2, tokens, 320])?;
    let (w, b) = (tensor(gpu, &[320])?, tensor(gpu, &[320])?);
    let gx = g.clone();
    cases.push(Case {
        kernel: "layer_norm",
        shape: format!("[2,{tokens},320]"),
        work: Work::Bytes(8.0 * (2 * tokens * 320) as f64),
        launch: Box::new(move || norm::layer_norm(&gx, &x, &w, &b, 1e-5)),
    });
    let x = tensor(gpu, &[16, tokens, 77])?;
    let gx = g.clone();
    cases.push(Case {
        kernel: "softmax",
        shape: format!("[16,{tokens},77]"),
        work: Work::Bytes(8.0 * (16 * tokens * 77) as f64),
        launch: Box::new(move || softmax::softmax(&gx, &x)),
    });

    for (heads, q_len, kv_len, head_dim) in [(8, tokens, tokens, 40), (8, tokens, 77, 40), (1, tokens, tokens, 512)] {
        let q = tensor(gpu, &[if heads == 1 { 1 } else { 2 }, q_len, heads * head_dim])?;
        let batch = q.shape()[0];
        let (k, v) = (tensor(gpu, &[batch, kv_len, heads * head_dim])?, tensor(gpu, &[batch, kv_len, heads * head_dim])?);
        let gx = g.clone();
        cases.push(Case {
            kernel: "attention (fused)",
            shape: format!("B{batch} H{heads} {q_len}x{kv_len} d{head_dim}"),
            work: Work::Flops(4.0 * (batch * heads * q_len * kv_len * head_dim) as f64),
            launch: Box::new(move || attention(&gx, &q, &k, &v, &AttentionOptions { heads, scale: None, causal: false })),
        });
    }

    let (a, b) = (tensor(gpu, &[2, 640, hw, hw])?, tensor(gpu, &[2, 320, hw, hw])?);
    let gx = g.clone();
    cases.push(Case {
        kernel: "concat (channels)",
        shape: format!("[2,640|320,{hw},{hw}]"),
        work: Work::Bytes(8.0 * (2 * 960 * hw * hw) as f64),
        launch: Box::new(move || layout::concat(&gx, &[&a, &b], 1)),
    });
    let x = tensor(gpu, &[2, 640, hw / 2, hw / 2])?;
    let gx = g.clone();
    cases.push(Case {
        kernel: "upsample nearest 2x",
        shape: format!("[2,640,{},{}]", hw / 2, hw / 2),
        work: Work::Bytes(20.0 * (2 * 640 * hw * hw / 4) as f64),
        launch: Box::new(move || layout::upsample_nearest_2x(&gx, &x)),
    });
    let x = tensor(gpu, &[2, 320, hw, hw])?;
    let gx = g.clone();
    cases.push(Case {
        kernel: "permute NCHW->NHWC",
        shape: format!("[2,320,{hw},{hw}]"),
        work: Work::Bytes(bytes),
        launch: Box::new(move || layout::permute(&gx, &x, &[0, 2, 3, 1])),
    });
    let t = gpu.upload_f32(&[2], &[999.0, 999.0])?;
    cases.push(Case {
        kernel: "timestep embedding",
        shape: "[2] -> [2,320]".into(),
        work: Work::Bytes(8.0 + 2560.0),
        launch: Box::new(move || embedding::timestep_embedding(&g, &t, 320, true, 0.0, 1.0, 10000.0)),
    });
    Ok(cases)
}

/// The built-in model's layers as its UNet runs them at 64x64 (16x16 latents) with
/// classifier-free guidance, weights in q8 (f16 where rows are too short) as its package
/// stores them.
fn embedded_cases(gpu: &Gpu) -> Result<Vec<Case>> {
    let mut cases = Vec::new();
    for (c_in, c_out, size, kernel, stride) in [
        (8, 64, 16, 3, 1),
        (64, 64, 16, 3, 1),
        (64, 64, 16, 3, 2),
        (160, 64, 16, 3, 1),
        (160, 64, 16, 1, 1),
        (96, 96, 8, 3, 1),
        (192, 96, 4, 3, 1),
        (64, 8, 16, 3, 1),
    ] {
        let x = tensor(gpu, &[2, c_in, size, size])?;
        // Rows too short for q8 blocks stay f16, as the package keeps them.
        let dtype = if (c_in * kernel * kernel) % 32 == 0 { DType::Q8 } else { DType::F16 };
        let w = weight(gpu, &[c_out, c_in, kernel, kernel], dtype)?;
        let b = tensor(gpu, &[c_out])?;
        let out = size / stride;
        let g = gpu.clone();
        cases.push(Case {
            kernel: if dtype == DType::Q8 { "conv2d (q8 weights, bias)" } else { "conv2d (f16 weights, bias)" },
            shape: format!("2x{c_in}x{size}x{size} k{kernel} s{stride} -> {c_out}"),
            work: Work::Flops(2.0 * (2 * c_out * out * out * c_in * kernel * kernel) as f64),
            launch: Box::new(move || conv2d(&g, &x, &w, &Conv2dOptions::new(stride, kernel / 2).with_bias(&b))),
        });
    }
    // The preview decoder's convs (one image, f16 weights, a ReLU in the epilogue): its
    // blocks at the latents' 16x16, its last two convs at 32x32.
    for (c_out, size) in [(16, 16), (16, 32), (3, 32)] {
        let x = tensor(gpu, &[1, 16, size, size])?;
        let (w, b) = (weight(gpu, &[c_out, 16, 3, 3], DType::F16)?, tensor(gpu, &[c_out])?);
        let g = gpu.clone();
        cases.push(Case {
            kernel: "conv2d (f16 weights, bias, relu)",
            shape: format!("1x16x{size}x{size} k3 s1 -> {c_out}"),
            work: Work::Flops(2.0 * (c_out * size * size * 16 * 9) as f64),
            launch: Box::new(move || conv2d(&g, &x, &w, &Conv2dOptions::new(1, 1).with_bias(&b).with_activation(Some(Unary::Relu)))),
        });
    }
    for (m, k, n) in [(512, 64, 64), (512, 64, 512), (512, 256, 64), (154, 64, 64), (128, 96, 96)] {
        let a = tensor(gpu, &[m, k])?;
        let w = weight(gpu, &[n, k], DType::Q8)?;
        let g = gpu.clone();
        cases.push(Case {
            kernel: "matmul (linear, q8 weights)",
            shape: format!("{m}x{k} . {k}x{n}"),
            work: Work::Flops(2.0 * (m * k * n) as f64),
            launch: Box::new(move || matmul(&g, &a, &w, &MatmulOptions { transpose_b: true, ..Default::default() })),
        });
    }
    for (heads, q_len, kv_len) in [(2, 256, 256), (2, 256, 77), (3, 64, 64)] {
        let head_dim = 32;
        let q = tensor(gpu, &[2, q_len, heads * head_dim])?;
        let (k, v) = (tensor(gpu, &[2, kv_len, heads * head_dim])?, tensor(gpu, &[2, kv_len, heads * head_dim])?);
        let g = gpu.clone();
        cases.push(Case {
            kernel: "attention (fused)",
            shape: format!("B2 H{heads} {q_len}x{kv_len} d{head_dim}"),
            work: Work::Flops(4.0 * (2 * heads * q_len * kv_len * head_dim) as f64),
            launch: Box::new(move || attention(&g, &q, &k, &v, &AttentionOptions { heads, scale: None, causal: false })),
        });
    }
    for (channels, size) in [(64, 16), (160, 16), (96, 4)] {
        let x = tensor(gpu, &[2, channels, size, size])?;
        let (w, b) = (tensor(gpu, &[channels])?, tensor(gpu, &[channels])?);
        let g = gpu.clone();
        cases.push(Case {
            kernel: "group_norm + silu",
            shape: format!("[2,{channels},{size},{size}] g32"),
            work: Work::Bytes(12.0 * (2 * channels * size * size) as f64),
            launch: Box::new(move || norm::group_norm(&g, &x, 32, &w, &b, 1e-5, true)),
        });
    }
    let x = tensor(gpu, &[2, 256, 64])?;
    let (w, b) = (tensor(gpu, &[64])?, tensor(gpu, &[64])?);
    let g = gpu.clone();
    cases.push(Case {
        kernel: "layer_norm",
        shape: "[2,256,64]".into(),
        work: Work::Bytes(8.0 * (2 * 256 * 64) as f64),
        launch: Box::new(move || norm::layer_norm(&g, &x, &w, &b, 1e-5)),
    });
    Ok(cases)
}

/// One case's result.
#[derive(Debug, Clone, Serialize)]
pub struct KernelRow {
    pub kernel: &'static str,
    pub shape: String,
    pub seconds_per_launch: f64,
    /// Wall time of the warm-up launch, waited for: it compiles the case's pipeline unless
    /// an earlier case did (the cost a first generation pays per pipeline).
    pub first_launch_seconds: f64,
    /// GFLOP/s or GB/s, as `unit` says.
    pub throughput: f64,
    pub unit: &'static str,
}

/// Runs every case whose kernel name contains `filter`: one warm-up launch (it compiles the
/// pipelines), then `iterations` launches timed by GPU timestamps where the adapter has
/// them (`timed_on_gpu`), otherwise by the wall clock around the whole batch.
pub async fn run(gpu: &Gpu, shapes: Shapes, filter: &str, iterations: u32) -> Result<(Vec<KernelRow>, bool)> {
    let iterations = iterations.max(1);
    let cases = match shapes {
        Shapes::Reduced => sd_cases(gpu, false)?,
        Shapes::Full => sd_cases(gpu, true)?,
        Shapes::Embedded => embedded_cases(gpu)?,
    };
    let on_gpu = gpu.can_profile();
    let mut rows = Vec::new();
    for case in cases.into_iter().filter(|c| c.kernel.contains(filter)) {
        let start = Instant::now();
        drop((case.launch)()?);
        gpu.finish().await?;
        let first_launch_seconds = start.elapsed().as_secs_f64();
        if on_gpu {
            gpu.start_profile()?;
        }
        let start = Instant::now();
        for _ in 0..iterations {
            drop((case.launch)()?);
        }
        let seconds = if on_gpu {
            gpu.take_profile().await?.iter().map(|k| k.seconds).sum::<f64>()
        } else {
            gpu.finish().await?;
            start.elapsed().as_secs_f64()
        } / iterations as f64;
        let (throughput, unit) = match case.work {
            Work::Flops(f) => (f / seconds / 1e9, "GFLOP/s"),
            Work::Bytes(b) => (b / seconds / 1e9, "GB/s"),
        };
        rows.push(KernelRow {
            kernel: case.kernel,
            shape: case.shape,
            seconds_per_launch: seconds,
            first_launch_seconds,
            throughput,
            unit,
        });
    }
    Ok((rows, on_gpu))
}

/// The rows as a Markdown table.
pub fn table(rows: &[KernelRow], timed_on_gpu: bool) -> String {
    let clock = if timed_on_gpu { "GPU timestamps" } else { "wall clock" };
    let mut out =
        format!("| kernel | shape | ms / launch ({clock}) | throughput | first launch ms (compiles) |\n|---|---|---:|---:|---:|\n");
    for r in rows {
        let (per_launch, first) = (r.seconds_per_launch * 1e3, r.first_launch_seconds * 1e3);
        out += &format!("| {} | {} | {per_launch:.3} | {:.2} {} | {first:.0} |\n", r.kernel, r.shape, r.throughput, r.unit);
    }
    out
}
