//! What the two front ends share: `webdiffusion` (generate, convert, info, the benchmarks)
//! and `webdiffusion-eval` (the built-in model's evaluation). Opening a model, the first
//! image of a generation, the sampling arguments, the evaluation prompts, image metrics
//! (PSNR, SSIM) and the logger.

pub mod image_metrics;
pub mod prompts;
pub mod sampling;

use std::path::Path;

use webdiffusion::Result;
use webdiffusion::gpu::Gpu;
use webdiffusion::image::{RgbImage, from_decoded};
use webdiffusion::loader::WeightPrecision;
use webdiffusion::open::ModelSource;
use webdiffusion::pipeline::{Generation, Request, StableDiffusion};

/// A package folder (with `manifest.json`) or a diffusers folder, loaded as stored.
pub async fn open_model(gpu: &Gpu, path: &Path) -> Result<StableDiffusion> {
    StableDiffusion::open(gpu, ModelSource::Folder(path), WeightPrecision::AsStored, &mut |_| {}).await
}

/// The first image `request` makes, as 8-bit pixels.
pub async fn generate_image(sd: &StableDiffusion, request: &Request) -> Result<RgbImage> {
    first_image(&sd.generate(request)?).await
}

/// A generation's first image, as 8-bit pixels.
pub async fn first_image(generation: &Generation) -> Result<RgbImage> {
    let mut images = from_decoded(&generation.image.to_vec().await?, generation.image.shape())?;
    Ok(images.swap_remove(0))
}

/// wgpu logs through `log`; without a logger its messages would vanish, so
/// print warnings and errors to stderr.
pub fn init_logging() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, metadata: &log::Metadata) -> bool {
            metadata.level() <= log::Level::Warn
        }
        fn log(&self, record: &log::Record) {
            if self.enabled(record.metadata()) {
                eprintln!("{}: {}", record.level(), record.args());
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    let _ = log::set_logger(&LOGGER).map(|()| log::set_max_level(log::LevelFilter::Warn));
}
