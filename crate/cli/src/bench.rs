//! `webdiffusion bench kernels` (the cases and timing in `kernels::bench`) and
//! `webdiffusion bench pipeline`.

use std::time::Instant;

use webdiffusion::Result;
use webdiffusion::gpu::Gpu;
use webdiffusion::kernels::bench::{self, Shapes};

pub async fn kernels(gpu: &Gpu, shapes: Shapes, filter: &str, iterations: u32) -> Result<()> {
    println!("adapter: {} ({})", gpu.info().adapter, gpu.info().backend);
    let (rows, on_gpu) = bench::run(gpu, shapes, filter, iterations).await?;
    print!("{}", bench::table(&rows, on_gpu));
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
    let sd = webdiffusion_cli::open_model(gpu, model).await?;
    let load = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let preview = match taesd {
        Some(dir) => Previewer::taesd(AutoencoderTiny::load(gpu, &DirFiles::new(dir)?, "", WeightPrecision::AsStored)?, sd.vae())?,
        None => Previewer::for_model(gpu, &sd).await?,
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
    let batch = if sd.guided(&request) { "CFG batch 2" } else { "batch 1" };
    println!("| denoising step (mean of the others, {batch}) | {:.1} |", mean(steady) * 1e3);
    println!("| {preview_kind} preview (mean) | {:.2} |", mean(&preview_times) * 1e3);
    println!("| VAE decode | {:.1} |", decode_and_rest * 1e3);
    println!("preview / step = {:.2}%", 100.0 * mean(&preview_times) / mean(steady));
    Ok(())
}
