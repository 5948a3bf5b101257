//! Whole generations against diffusers' pipelines on the tiny fixture models.

mod common;

use common::fixtures::{Outputs, path};
use common::{assert_close, gpu, read};
use webdiffusion::loader::{DirFiles, WeightPrecision};
use webdiffusion::pipeline::{Request, StableDiffusion};

fn load(model: &str) -> StableDiffusion {
    let files = DirFiles::new(path(&format!("models/{model}"))).unwrap();
    StableDiffusion::load(gpu(), &files, WeightPrecision::AsStored).unwrap()
}

/// The request the fixture generator made (`pipeline.args`), from the given latents.
fn fixture_request(outputs: &Outputs) -> Request {
    let args: serde_json::Value = serde_json::from_str(&outputs.metadata("pipeline.args").unwrap()).unwrap();
    let (latents, _) = outputs.f32("pipeline.init_latents");
    Request {
        prompt: args["prompt"].as_str().unwrap().into(),
        negative_prompt: args["negative_prompt"].as_str().unwrap_or("").into(),
        steps: args["num_inference_steps"].as_u64().unwrap() as usize,
        guidance_scale: args["guidance_scale"].as_f64().unwrap() as f32,
        width: Some(args["width"].as_u64().unwrap() as usize),
        height: Some(args["height"].as_u64().unwrap() as usize),
        latents: Some(latents),
        ..Default::default()
    }
}

/// `max |got - want|` relative to `max |want|`.
fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    got.iter().zip(want).fold(0.0f32, |m, (g, w)| m.max((g - w).abs())) / scale
}

#[test]
fn sd2_v_prediction_ddim_with_guidance_matches_diffusers() {
    let outputs = Outputs::load("sd2-tiny");
    let sd = load("sd2-tiny");
    assert_eq!(sd.default_scheduler().unwrap(), "ddim");
    let generation = sd.generate(&fixture_request(&outputs)).unwrap();
    let (want_latents, shape) = outputs.f32("pipeline.latents");
    assert_eq!(generation.latents.shape(), shape.as_slice());
    let got = read(&generation.latents);
    // Three guided UNet evaluations and DDIM steps in f32: each layer agrees with
    // diffusers to ~1e-6 of its scale (see tests/unet.rs); 1e-4 leaves room to compound.
    let error = relative_error(&got, &want_latents);
    assert!(error < 1e-4, "latents differ by {error} of their scale");
    let (want_image, _) = outputs.f32("pipeline.image");
    let image: Vec<f32> = read(&generation.image).iter().map(|v| (v / 2.0 + 0.5).clamp(0.0, 1.0)).collect();
    assert_close("image", &image, &want_image, 1e-4, 0.0);
}

#[test]
fn bad_requests_are_clear_errors() {
    let sd = load("sd2-tiny");
    let base = Request { prompt: "a cat".into(), steps: 2, ..Default::default() };
    for (request, needle) in [
        (Request { width: Some(30), ..base.clone() }, "multiples of"),
        (Request { scheduler: Some("warp-drive".into()), ..base.clone() }, "warp-drive"),
        (Request { latents: Some(vec![0.0; 7]), ..base.clone() }, "latents must be"),
        (Request { steps: 0, ..base.clone() }, "0 inference steps"),
    ] {
        let err = sd.generate(&request).err().expect(needle);
        assert!(err.to_string().contains(needle), "{err}");
    }
}

#[test]
fn a_seed_is_reproducible_and_starts_from_torch_noise() {
    let sd = load("sd2-tiny");
    let outputs = Outputs::load("sd2-tiny");
    // The fixture's initial latents are torch.randn from seed 2400: the same request by
    // seed must give the same generation as the one given those latents.
    let by_latents = sd.generate(&Request { steps: 2, ..fixture_request(&outputs) }).unwrap();
    let by_seed = sd.generate(&Request { steps: 2, latents: None, seed: 2400, ..fixture_request(&outputs) }).unwrap();
    let error = relative_error(&read(&by_seed.latents), &read(&by_latents.latents));
    assert!(error < 1e-5, "{error}");
}
