//! `webdiffusion bench kernels`: wall-clock time per launch, measured by recording
//! `iterations` launches into one batch and waiting for the GPU to finish them,
//! after one warm-up launch that also compiles the pipeline.

use std::time::Instant;

use webdiffusion::Result;
use webdiffusion::gpu::{DType, Gpu, Tensor};
use webdiffusion::kernels::attention::{AttentionOptions, attention};
use webdiffusion::kernels::conv2d::{Conv2dOptions, conv2d};
use webdiffusion::kernels::elementwise::{self as ew, Unary};
use webdiffusion::kernels::matmul::{MatmulOptions, matmul};
use webdiffusion::kernels::{embedding, layout, norm, softmax};

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
    gpu.upload_bytes(shape, dtype, &webdiffusion::quant::quantize(dtype, shape, &values(shape.iter().product()))?)
}

fn cases(gpu: &Gpu, full: bool) -> Result<Vec<Case>> {
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

pub async fn kernels(gpu: &Gpu, full: bool, iterations: u32) -> Result<()> {
    let iterations = iterations.max(1);
    println!("adapter: {} ({})", gpu.info().adapter, gpu.info().backend);
    println!("| kernel | shape | ms / launch | throughput |");
    println!("|---|---|---:|---:|");
    for case in cases(gpu, full)? {
        drop((case.launch)()?);
        gpu.finish().await?;
        let start = Instant::now();
        for _ in 0..iterations {
            drop((case.launch)()?);
        }
        gpu.finish().await?;
        let seconds = start.elapsed().as_secs_f64() / iterations as f64;
        let throughput = match case.work {
            Work::Flops(f) => format!("{:.2} GFLOP/s", f / seconds / 1e9),
            Work::Bytes(b) => format!("{:.2} GB/s", b / seconds / 1e9),
        };
        println!("| {} | {} | {:.3} | {} |", case.kernel, case.shape, seconds * 1e3, throughput);
    }
    Ok(())
}

/// Times a guided generation step by step (each step waited for), a step preview after
/// every step, and the VAE decode; prints the preview's cost relative to a step. `model`
/// is a package or a diffusers folder.
pub async fn pipeline(
    gpu: &Gpu,
    model: &std::path::Path,
    steps: usize,
    size: Option<usize>,
    taesd: Option<&std::path::Path>,
) -> Result<()> {
    use webdiffusion::loader::{DirFiles, WeightPrecision};
    use webdiffusion::models::taesd::AutoencoderTiny;
    use webdiffusion::pipeline::{Control, Previewer, Request};

    let start = Instant::now();
    let sd = crate::quality::load_pipeline(gpu, model).await?;
    let load = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let preview = match taesd {
        Some(dir) => Previewer::Taesd(AutoencoderTiny::load(gpu, &DirFiles::new(dir)?, "", WeightPrecision::AsStored)?),
        None => Previewer::for_vae(gpu, sd.vae()).await?,
    };
    let fit = start.elapsed().as_secs_f64();
    let preview_kind = preview.name();
    let request =
        Request { prompt: "a lighthouse on a cliff at dusk".into(), steps, seed: 1, width: size, height: size, ..Default::default() };
    let (mut step_times, mut preview_times) = (Vec::new(), Vec::new());
    let mut last = Instant::now();
    let generation = sd.generate_with(&request, &mut |progress| {
        pollster::block_on(gpu.finish())?;
        step_times.push(last.elapsed().as_secs_f64());
        let start = Instant::now();
        drop(preview.render(sd.vae(), &progress.preview_latents()?)?);
        pollster::block_on(gpu.finish())?;
        preview_times.push(start.elapsed().as_secs_f64());
        last = Instant::now();
        Ok(Control::Continue)
    })?;
    gpu.finish().await?;
    let decode_and_rest = last.elapsed().as_secs_f64();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    // The first step also encodes the prompt and compiles the pipelines; report the rest.
    let steady = if step_times.len() > 1 { &step_times[1..] } else { &step_times[..] };
    println!("adapter: {} ({})", gpu.info().adapter, gpu.info().backend);
    println!("model: {} at {}x{}, {} steps, sampler {}", model.display(), generation.width, generation.height, steps, generation.scheduler);
    println!("| stage | ms |");
    println!("|---|---:|");
    println!("| load weights | {:.1} |", load * 1e3);
    println!("| set up the {preview_kind} preview (once per model) | {:.1} |", fit * 1e3);
    println!("| first step (prompt encoding, pipeline compilation) | {:.1} |", step_times[0] * 1e3);
    println!("| denoising step (mean of the others, CFG batch 2) | {:.1} |", mean(steady) * 1e3);
    println!("| {preview_kind} preview (mean) | {:.2} |", mean(&preview_times) * 1e3);
    println!("| VAE decode | {:.1} |", decode_and_rest * 1e3);
    println!("preview / step = {:.2}%", 100.0 * mean(&preview_times) / mean(steady));
    Ok(())
}
