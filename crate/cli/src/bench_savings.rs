//! `webdiffusion bench savings`: what the training-free step savings (DeepCache's
//! `--cache-interval`/`--cache-branch`, ToDo's `--token-merge`) buy and cost. The same prompts
//! and seeds are generated whole and with each setting, every step waited for and timed; each
//! setting's final images are compared with the whole ones.

use std::path::PathBuf;

use web_time::Instant;
use webdiffusion::gpu::Gpu;
use webdiffusion::image::RgbImage;
use webdiffusion::pipeline::{DeepCache, Request, StableDiffusion, median_min_max};
use webdiffusion::{Error, Result};

use webdiffusion_cli::image_metrics::{psnr, squared_error, ssim};
use webdiffusion_cli::prompts::PromptList;
use webdiffusion_cli::{first_image, open_model};

#[derive(clap::Args)]
pub struct SavingsBenchArgs {
    /// A package folder or a diffusers folder.
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Scheduler (sampler), as `generate --scheduler`; the model's own when omitted.
    #[arg(long)]
    scheduler: Option<String>,
    #[arg(long, default_value_t = webdiffusion::pipeline::DEFAULT_GUIDANCE)]
    guidance: f32,
    /// Image side in pixels (the checkpoint's own size when omitted).
    #[arg(long)]
    size: Option<usize>,
    /// Prompts taken from the evaluation list, evenly spread over it.
    #[arg(long, default_value_t = 4)]
    prompts: usize,
    /// Images per prompt, with seeds 0, 1, ...
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// The settings to measure: DeepCache as INTERVAL:BRANCH, ToDo as todoFACTOR, or both
    /// joined by `+` (`2:0+todo2`).
    #[arg(long, value_delimiter = ',', default_value = "2:0,3:0,5:0,3:2,todo2,2:0+todo2")]
    settings: Vec<String>,
}

/// One `--settings` entry: the request's `deep_cache` and `token_merge`.
fn parse_setting(text: &str) -> Result<(Option<DeepCache>, Option<f32>)> {
    let bad = || Error::shape("bench savings", format!("--settings entry {text:?} is not INTERVAL:BRANCH, todoFACTOR or both joined by +"));
    let (mut cache, mut factor) = (None, None);
    for part in text.split('+').map(str::trim) {
        if let Some(f) = part.strip_prefix("todo") {
            factor = Some(f.parse().map_err(|_| bad())?);
        } else {
            let (interval, branch) = part.split_once(':').ok_or_else(bad)?;
            cache = Some(DeepCache { interval: interval.parse().map_err(|_| bad())?, branch: branch.parse().map_err(|_| bad())? });
        }
    }
    Ok((cache, factor))
}

/// One generation, each step waited for: the image, the time of each whole and each
/// reusing step, and the launches of the last of each kind.
struct Timed {
    image: RgbImage,
    whole_seconds: Vec<f64>,
    reused_seconds: Vec<f64>,
    denoise_seconds: f64,
    launches: [u64; 2],
}

async fn generate_timed(gpu: &Gpu, sd: &StableDiffusion, request: &Request) -> Result<Timed> {
    let cache = request.deep_cache.unwrap_or(DeepCache::OFF);
    let mut denoising = sd.start_generation(request)?;
    gpu.finish().await?;
    let (mut whole_seconds, mut reused_seconds, mut launches) = (Vec::new(), Vec::new(), [0; 2]);
    let begin = Instant::now();
    for done in 0usize.. {
        let (start, before) = (Instant::now(), gpu.counters());
        if denoising.step()?.is_none() {
            break;
        }
        gpu.finish().await?;
        let reused = cache.reuses(done);
        let seconds = if reused { &mut reused_seconds } else { &mut whole_seconds };
        seconds.push(start.elapsed().as_secs_f64());
        launches[usize::from(reused)] = (gpu.counters() - before).launches;
    }
    let denoise_seconds = begin.elapsed().as_secs_f64();
    let generation = denoising.finish()?;
    let image = first_image(&generation).await?;
    Ok(Timed { image, whole_seconds, reused_seconds, denoise_seconds, launches })
}

fn median_ms(values: &[f64]) -> String {
    if values.is_empty() { "-".into() } else { format!("{:.0}", median_min_max(values)[0] * 1e3) }
}

pub async fn run(gpu: &Gpu, args: SavingsBenchArgs) -> Result<()> {
    let settings = args.settings.iter().map(|s| parse_setting(s)).collect::<Result<Vec<_>>>()?;
    let sd = open_model(gpu, &args.model).await?;
    let list = PromptList::builtin()?;
    let prompts = list.spread(args.prompts);
    let count = prompts.len();
    let requests: Vec<Request> = (0..args.seeds)
        .flat_map(|seed| prompts.iter().map(move |prompt| (seed, prompt)))
        .map(|(seed, prompt)| Request {
            prompt: prompt.prompt.clone(),
            steps: args.steps,
            guidance_scale: args.guidance,
            scheduler: args.scheduler.clone(),
            seed,
            width: args.size,
            height: args.size,
            ..Default::default()
        })
        .collect();
    // A first generation compiles the pipelines, so that none of the timed ones does.
    generate_timed(gpu, &sd, &Request { steps: 2, ..requests[0].clone() }).await?;
    let mut whole = Vec::new();
    for request in &requests {
        whole.push(generate_timed(gpu, &sd, request).await?);
    }
    println!("adapter: {} ({})", gpu.info().adapter, gpu.info().backend);
    println!(
        "model: {}, {} steps, sampler {}, guidance {}, {} images ({count} prompts x {} seeds), every step waited for",
        args.model.display(),
        args.steps,
        args.scheduler.as_deref().map_or_else(|| sd.default_scheduler().unwrap_or("?").to_string(), str::to_string),
        args.guidance,
        requests.len(),
        args.seeds
    );
    let whole_denoise = median_min_max(&whole.iter().map(|t| t.denoise_seconds).collect::<Vec<_>>())[0];
    println!(
        "\n| setting | whole / reusing steps | ms a whole step | ms a reusing step | launches whole / reusing | denoising s (median) | speed-up | PSNR vs whole (all images) | worst image | mean SSIM | lowest SSIM |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let steps_of = |runs: &[Timed], reused: bool| -> Vec<f64> {
        runs.iter().flat_map(|t| if reused { t.reused_seconds.clone() } else { t.whole_seconds.clone() }).collect()
    };
    println!(
        "| whole | {} / 0 | {} | - | {} / - | {whole_denoise:.2} | 1.00x | reference | | | |",
        whole[0].whole_seconds.len(),
        median_ms(&steps_of(&whole, false)),
        whole[0].launches[0]
    );
    for (text, (deep_cache, token_merge)) in args.settings.iter().zip(settings) {
        let mut runs = Vec::new();
        for request in &requests {
            runs.push(generate_timed(gpu, &sd, &Request { deep_cache, token_merge, ..request.clone() }).await?);
        }
        let errors: Vec<f64> = runs.iter().zip(&whole).map(|(a, b)| squared_error(&a.image, &b.image).0).collect();
        let similarity: Vec<f64> = runs.iter().zip(&whole).map(|(a, b)| ssim(&a.image, &b.image)).collect();
        let denoise = median_min_max(&runs.iter().map(|t| t.denoise_seconds).collect::<Vec<_>>())[0];
        println!(
            "| {text} | {} / {} | {} | {} | {} / {} | {denoise:.2} | {:.2}x | {} | {} | {:.4} | {:.4} |",
            runs[0].whole_seconds.len(),
            runs[0].reused_seconds.len(),
            median_ms(&steps_of(&runs, false)),
            median_ms(&steps_of(&runs, true)),
            runs[0].launches[0],
            runs[0].launches[1],
            whole_denoise / denoise,
            psnr(errors.iter().sum::<f64>() / errors.len() as f64),
            psnr(errors.iter().copied().fold(0.0, f64::max)),
            similarity.iter().sum::<f64>() / similarity.len() as f64,
            similarity.iter().copied().fold(1.0, f64::min),
        );
    }
    Ok(())
}
