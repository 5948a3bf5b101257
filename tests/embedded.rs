//! The committed embedded packages (models/embedded, models/embedded-lcm) generate what
//! diffusers generates from the same stored weights: tests/fixtures/generate_embedded.py
//! decodes the packages in numpy and runs diffusers' pipelines in f32 on the CPU.

use crate::common;

use std::path::PathBuf;

use common::fixtures::Outputs;
use common::{gpu, read};
use webdiffusion::loader::{LatentRgb, WeightPrecision};
use webdiffusion::package::{DirSource, load_package};
use webdiffusion::pipeline::{LatentPreview, MIN_EXPLAINED, Previewer, Request, StableDiffusion, fit_latent_rgb};

fn load(package: &str) -> StableDiffusion {
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models").join(package);
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

/// PSNR (in dB, for pixels in [-1, 1]) of `got` against `want`.
fn psnr(got: &[f32], want: &[f32]) -> f32 {
    let mse = got.iter().zip(want).map(|(g, w)| ((g.clamp(-1.0, 1.0) - w) / 2.0).powi(2)).sum::<f32>() / got.len() as f32;
    -10.0 * mse.log10()
}

/// The preview map the converter fitted into the LCM package: a refit on the package's
/// own (q8) VAE gives nearly the same map. It explains about a quarter of the colour variance of
/// an image it was not fitted on, and real generations agree: on their final latents its
/// preview is further from the decoded picture (at latent resolution) than a flat image
/// of the picture's own mean colour. So previews of this model do not use the map: they
/// decode with the preview decoder the packages ship (models/train/preview_decoder.py),
/// which comes far closer to the picture than the flat image.
#[test]
fn previews_decode_with_the_shipped_decoder_as_no_linear_map_reads_the_latents() {
    let sd = load("embedded-lcm");
    let stored = sd.vae().latent_rgb().expect("the package stores a preview map").clone();
    let refit = pollster::block_on(fit_latent_rgb(gpu(), sd.vae())).unwrap();
    let values = |map: &LatentRgb| map.weight.concat().into_iter().chain(map.bias).chain(map.explained).collect::<Vec<f32>>();
    for (i, (s, r)) in values(&stored).iter().zip(values(&refit)).enumerate() {
        // Fitted to the f32 VAE at conversion; q8 weights move it a little.
        assert!((s - r).abs() < 0.05 * (1.0 + s.abs()), "coefficient {i}: stored {s}, refit {r}");
    }
    let explained = stored.explained.unwrap();
    assert!(explained < MIN_EXPLAINED, "the map explains {explained}");
    assert!(matches!(pollster::block_on(Previewer::for_vae(gpu(), sd.vae())).unwrap(), Previewer::Decoder));
    let previewer = pollster::block_on(Previewer::for_model(gpu(), &sd)).unwrap();
    assert!(matches!(previewer, Previewer::Taesd(_)), "previews use {}", previewer.name());
    let full_model = load("embedded");
    assert!(full_model.preview_decoder().is_some(), "the 20-step package ships the same decoder");
    // Steps when none are asked for, as diffusers' two pipelines default.
    assert_eq!((sd.default_steps(), full_model.default_steps()), (4, 50));

    let linear = LatentPreview::new(gpu(), &stored).unwrap();
    let prompts = [
        "a small red circle at the top left on a white background",
        "a large blue square at the center on a light yellow background",
        "a large yellow star at the right on a dark blue background",
        "a small green ring at the bottom on a black background",
        "a large pink triangle at the center on a gray background",
        "a large purple diamond at the left on a light green background",
    ];
    // `image [3, H, W]` averaged over blocks of `factor` x `factor` pixels.
    let block_average = |image: &[f32], side: usize, factor: usize| -> Vec<f32> {
        let small = side / factor;
        (0..3 * small * small)
            .map(|i| {
                let (k, y, x) = (i / (small * small), i / small % small, i % small);
                let block = (0..factor * factor).map(|j| image[(k * side + y * factor + j / factor) * side + x * factor + j % factor]);
                block.sum::<f32>() / (factor * factor) as f32
            })
            .collect()
    };
    // A flat image of each channel's mean colour.
    let flat = |image: &[f32]| -> Vec<f32> {
        let pixels = image.len() / 3;
        (0..image.len()).map(|i| image[i / pixels * pixels..][..pixels].iter().sum::<f32>() / pixels as f32).collect()
    };
    let (mut previews, mut flats, mut decoded, mut flats_decoded) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for prompt in prompts {
        let request = Request { prompt: prompt.into(), steps: 4, guidance_scale: 6.0, seed: 0, ..Default::default() };
        let generation = sd.generate(&request).unwrap();
        let (side, image) = (generation.width, read(&generation.image));
        let &[_, _, latent_side, _] = generation.latents.shape() else { unreachable!() };
        let target = block_average(&image, side, side / latent_side);
        previews.push(psnr(&read(&linear.project(&generation.latents).unwrap()), &target));
        flats.push(psnr(&flat(&target), &target));
        // The preview decoder's at its own resolution (a fraction of the picture's).
        let preview = previewer.render(sd.vae(), &generation.latents).unwrap();
        let target = block_average(&image, side, side / preview.shape()[3]);
        decoded.push(psnr(&read(&preview), &target));
        flats_decoded.push(psnr(&flat(&target), &target));
    }
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    // Measured 10.1 dB for the map, 19.0 dB for the flat mean colour.
    assert!(mean(&previews) < mean(&flats), "linear preview {previews:?} dB, flat mean colour {flats:?} dB");
    // Measured 26.0 dB for the preview decoder at its half resolution (23.7 to 27.3), 18.5 dB for
    // the flat mean colour (the full-resolution decoder shipped before: 23.4 dB averaged to half).
    assert!(mean(&decoded) > mean(&flats_decoded) + 3.0, "preview decoder {decoded:?} dB, flat mean colour {flats_decoded:?} dB");
}
