//! `webdiffusion bench step`: `StableDiffusion::time_steps` on a package or a diffusers
//! folder, printed as tables.

use std::path::Path;

use webdiffusion::Result;
use webdiffusion::gpu::Gpu;
use webdiffusion::pipeline::Request;

pub struct StepArgs<'a> {
    pub model: &'a Path,
    pub steps: usize,
    pub size: Option<usize>,
    pub guidance: f32,
    pub profile: bool,
}

pub async fn run(gpu: &Gpu, args: StepArgs<'_>) -> Result<()> {
    let sd = webdiffusion_cli::open_model(gpu, args.model).await?;
    let request = Request {
        prompt: "a lighthouse on a cliff at dusk".into(),
        guidance_scale: args.guidance,
        seed: 1,
        width: args.size,
        height: args.size,
        ..Default::default()
    };
    let timings = sd.time_steps(&request, args.steps, args.profile).await?;
    println!("model: {}", args.model.display());
    print!("{}", timings.table());
    if args.profile && timings.kernels.is_none() {
        println!("\n(no per-kernel times: the adapter has no timestamp queries)");
    }
    Ok(())
}
