//! The kernel benchmark: the kernels' cases from their tables (`kernels::cases`, which
//! the tests check too) and the timing loop.
//! `webdiffusion bench kernels` prints them natively, `benchKernels` in a browser.

use serde::Serialize;
use web_time::Instant;

use super::attention::{AttentionOptions, attention};
pub use super::cases::Shapes;
use super::cases::{self, AttentionCase, BandwidthCase, Conv2dCase, GroupNormCase, LayerNormCase, MatmulCase};
use super::conv2d::{Conv2dOptions, conv2d};
use super::matmul::{MatmulOptions, matmul};
use super::norm;
use crate::error::Result;
use crate::gpu::{DType, Gpu, Tensor};

/// What one launch does, for the throughput column.
enum Work {
    Flops(f64),
    /// Bytes read plus bytes written.
    Bytes(f64),
}

struct Case {
    kernel: String,
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

/// A weight stored as `dtype` (f32, f16, q8 or q4), as a package holds it.
fn weight(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Tensor> {
    match dtype {
        DType::F32 => tensor(gpu, shape),
        _ => gpu.upload_bytes(shape, dtype, &crate::quant::quantize(dtype, shape, &values(shape.iter().product()))?),
    }
}

fn conv2d_case(gpu: &Gpu, c: Conv2dCase) -> Result<Case> {
    let x = tensor(gpu, &[c.batch, c.in_channels, c.size, c.size])?;
    let w = weight(gpu, &[c.out_channels, c.in_channels, c.kernel, c.kernel], c.weights)?;
    let bias = c.bias.then(|| tensor(gpu, &[c.out_channels])).transpose()?;
    let g = gpu.clone();
    Ok(Case {
        kernel: c.name(),
        shape: c.shape(),
        work: Work::Flops(c.flops()),
        launch: Box::new(move || {
            let opts = Conv2dOptions { bias: bias.as_ref(), ..Conv2dOptions::new(c.stride, c.padding()) };
            conv2d(&g, &x, &w, &opts.with_activation(c.activation).with_f16_math(c.f16_math))
        }),
    })
}

fn matmul_case(gpu: &Gpu, c: MatmulCase) -> Result<Case> {
    let (a, w) = (tensor(gpu, &[c.m, c.k])?, weight(gpu, &[c.n, c.k], c.weights)?);
    let g = gpu.clone();
    Ok(Case {
        kernel: c.name(),
        shape: c.shape(),
        work: Work::Flops(c.flops()),
        launch: Box::new(move || matmul(&g, &a, &w, &MatmulOptions { transpose_b: true, f16_math: c.f16_math, ..Default::default() })),
    })
}

fn attention_case(gpu: &Gpu, c: AttentionCase) -> Result<Case> {
    let width = c.heads * c.head_dim;
    let q = tensor(gpu, &[c.batch, c.q_len, width])?;
    let (k, v) = (tensor(gpu, &[c.batch, c.kv_len, width])?, tensor(gpu, &[c.batch, c.kv_len, width])?);
    let g = gpu.clone();
    Ok(Case {
        kernel: "attention (fused)".into(),
        shape: c.shape(),
        work: Work::Flops(c.flops()),
        launch: Box::new(move || attention(&g, &q, &k, &v, &AttentionOptions { heads: c.heads, scale: None, causal: false })),
    })
}

fn group_norm_case(gpu: &Gpu, c: GroupNormCase) -> Result<Case> {
    let x = tensor(gpu, &[c.batch, c.channels, c.size, c.size])?;
    let (w, b) = (tensor(gpu, &[c.channels])?, tensor(gpu, &[c.channels])?);
    let g = gpu.clone();
    Ok(Case {
        kernel: "group_norm + silu".into(),
        shape: c.shape(),
        work: Work::Bytes(c.bytes()),
        launch: Box::new(move || norm::group_norm(&g, &x, c.groups, &w, &b, 1e-5, true)),
    })
}

fn layer_norm_case(gpu: &Gpu, c: LayerNormCase) -> Result<Case> {
    let x = tensor(gpu, &[c.batch, c.rows, c.width])?;
    let (w, b) = (tensor(gpu, &[c.width])?, tensor(gpu, &[c.width])?);
    let g = gpu.clone();
    Ok(Case {
        kernel: "layer_norm".into(),
        shape: c.shape(),
        work: Work::Bytes(c.bytes()),
        launch: Box::new(move || norm::layer_norm(&g, &x, &w, &b, 1e-5)),
    })
}

/// Every table's cases at `shapes`.
fn all_cases(gpu: &Gpu, shapes: Shapes) -> Result<Vec<Case>> {
    let mut all = Vec::new();
    // An f16-math row runs the f32 kernel where the device lacks shader-f16: not shown.
    let runs = |f16_math: bool| !f16_math || gpu.has_shader_f16();
    for c in cases::conv2d(shapes).into_iter().filter(|c| runs(c.f16_math)) {
        all.push(conv2d_case(gpu, c)?);
    }
    for c in cases::matmul(shapes).into_iter().filter(|c| runs(c.f16_math)) {
        all.push(matmul_case(gpu, c)?);
    }
    for c in cases::attention(shapes) {
        all.push(attention_case(gpu, c)?);
    }
    for c in cases::group_norm(shapes) {
        all.push(group_norm_case(gpu, c)?);
    }
    for c in cases::layer_norm(shapes) {
        all.push(layer_norm_case(gpu, c)?);
    }
    for c in cases::bandwidth(shapes) {
        all.push(bandwidth_case(gpu, c)?);
    }
    Ok(all)
}

fn bandwidth_case(gpu: &Gpu, c: BandwidthCase) -> Result<Case> {
    let inputs = c.inputs().iter().map(|shape| tensor(gpu, shape)).collect::<Result<Vec<_>>>()?;
    let g = gpu.clone();
    Ok(Case { kernel: c.name().into(), shape: c.shape(), work: Work::Bytes(c.bytes()), launch: Box::new(move || c.launch(&g, &inputs)) })
}

/// One case's result.
#[derive(Debug, Clone, Serialize)]
pub struct KernelRow {
    pub kernel: String,
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
    let cases = all_cases(gpu, shapes)?;
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
