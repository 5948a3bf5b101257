//! The committed embedded packages (models/embedded, models/embedded-lcm) generate what
//! diffusers generates from the same stored weights: tests/fixtures/generate_embedded.py
//! decodes the packages in numpy and runs diffusers' pipelines in f32 on the CPU.

use crate::common;

use std::path::PathBuf;

use common::fixtures::Outputs;
use common::{gpu, read};
use webdiffusion::loader::WeightPrecision;
use webdiffusion::package::{DirSource, load_package};
use webdiffusion::pipeline::{Request, StableDiffusion};

fn load(package: &str) -> StableDiffusion {
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models").join(package);
    let package = pollster::block_on(load_package(gpu(), &DirSource::new(folder).unwrap(), &mut |_| {})).unwrap();
    StableDiffusion::load(gpu(), &package, WeightPrecision::AsStored).unwrap()
}

/// Generates the fixture's prompts for `package` with it and compares final latents (relative to
/// their largest magnitude) and 8-bit images.
fn matches_diffusers(package: &str) {
    let outputs = Outputs::load("embedded");
    let args: serde_json::Value = serde_json::from_str(&outputs.metadata("args").unwrap()).unwrap();
    let run = args["runs"].as_array().unwrap().iter().find(|r| r["package"] == package).unwrap();
    let sd = load(package);
    for (index, prompt) in run["prompts"].as_array().unwrap().iter().enumerate() {
        let request = Request {
            prompt: prompt.as_str().unwrap().into(),
            steps: run["steps"].as_u64().unwrap() as usize,
            guidance_scale: run["guidance_scale"].as_f64().unwrap() as f32,
            seed: args["seed"].as_u64().unwrap(),
            ..Default::default()
        };
        let generation = sd.generate(&request).unwrap();
        let (want, shape) = outputs.f32(&format!("{package}.{index}.latents"));
        assert_eq!(generation.latents.shape(), shape.as_slice());
        let got = read(&generation.latents);
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let error = got.iter().zip(&want).fold(0.0f32, |m, (g, w)| m.max((g - w).abs())) / scale;
        // The same stored weights and f32 arithmetic in another order: measured 1e-6 to 4e-6
        // after 4 or 20 guided steps.
        assert!(error < 1e-4, "{package} prompt {index}: latents differ by {error} of their scale");

        let (want_image, _) = outputs.f32(&format!("{package}.{index}.image"));
        let to_level = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as i32;
        let levels =
            read(&generation.image).iter().zip(&want_image).map(|(g, w)| (to_level(g / 2.0 + 0.5) - to_level(*w)).abs()).max().unwrap();
        // Measured 0: identical 8-bit images.
        assert!(levels <= 1, "{package} prompt {index}: images differ by {levels} of 255");
    }
}

#[test]
fn full_model_package_matches_diffusers() {
    matches_diffusers("embedded");
}

#[test]
fn lcm_package_matches_diffusers() {
    matches_diffusers("embedded-lcm");
}
