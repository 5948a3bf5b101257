//! Whole generations against diffusers' pipelines on the tiny fixture models.

use crate::common;

use common::fixtures::{Outputs, path};
use common::{assert_close, gpu, read};
use webdiffusion::Error;
use webdiffusion::kernels::elementwise as ew;
use webdiffusion::loader::{DirFiles, LatentRgb, MemoryFiles, WeightPrecision};
use webdiffusion::models::vae::AutoencoderKl;
use webdiffusion::pipeline::{Control, DeepCache, LatentPreview, Previewer, Request, StableDiffusion};
use webdiffusion::rng::TorchGenerator;

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
    // Each is the user's option, named as the request names it: a request error.
    for (request, option, needle) in [
        (Request { width: Some(30), ..base.clone() }, "width", "multiples of"),
        (Request { scheduler: Some("warp-drive".into()), ..base.clone() }, "scheduler", "warp-drive"),
        (Request { latents: Some(vec![0.0; 7]), ..base.clone() }, "latents", "latents must be"),
        (Request { steps: 0, ..base.clone() }, "steps", "0 inference steps"),
        (Request { steps: 1001, ..base.clone() }, "steps", "1 to the 1000 training timesteps"),
        (
            Request { deep_cache: Some(DeepCache { interval: 0, branch: 0 }), ..base.clone() },
            "deep_cache",
            "cache interval must be at least 1",
        ),
        (Request { deep_cache: Some(DeepCache { interval: 2, branch: 99 }), ..base.clone() }, "deep_cache", "cache branch 99 is not below"),
        (Request { token_merge: Some(0.5), ..base.clone() }, "token_merge", "at least 1, got 0.5"),
        (Request { token_merge: Some(40.0), ..base.clone() }, "token_merge", "factor 40 leaves no token of the"),
        (Request { clip_skip: 99, ..base.clone() }, "clip_skip", "99 is more than this text encoder's"),
    ] {
        let err = sd.generate(&request).err().expect(needle);
        assert!(err.to_string().contains(needle), "{err}");
        assert!(matches!(&err, Error::Request { option: named, .. } if *named == option), "{option}: {err:?}");
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

#[test]
fn every_step_is_reported_and_a_callback_can_cancel() {
    let sd = load("sd2-tiny");
    let request = Request { prompt: "a cat".into(), steps: 4, seed: 3, ..Default::default() };
    let mut seen = Vec::new();
    let mut last = Vec::new();
    let generation = sd
        .generate_with(&request, &mut |p| {
            seen.push((p.done, p.total, p.timestep));
            last = pollster::block_on(p.latents.to_vec())?;
            Ok(Control::Continue)
        })
        .unwrap();
    assert_eq!(seen, vec![(1, 4, 751.0), (2, 4, 501.0), (3, 4, 251.0), (4, 4, 1.0)]);
    assert_eq!(last, read(&generation.latents), "the last report carries the final latents");

    let result = sd.generate_with(&request, &mut |p| Ok(if p.done == 2 { Control::Cancel } else { Control::Continue }));
    assert_eq!(result.err(), Some(Error::Cancelled { done: 2, total: 4 }));
}

#[test]
fn a_generation_stepped_by_hand_is_the_generation() {
    let sd = load("sd2-tiny");
    let request = Request { prompt: "a cat".into(), steps: 4, seed: 3, ..Default::default() };
    let want = sd.generate(&request).unwrap();
    let mut run = sd.start_generation(&request).unwrap();
    assert_eq!(run.total(), 4);
    let first = run.step().unwrap().map(|p| (p.done, p.total)).unwrap();
    assert_eq!(first, (1, 4));
    // `finish` runs the steps left, then decodes.
    let got = run.finish().unwrap();
    assert_eq!(read(&got.latents), read(&want.latents));
    assert_eq!(read(&got.image), read(&want.image));
    assert_eq!((got.width, got.height, got.scheduler.as_str()), (want.width, want.height, want.scheduler.as_str()));
    // Past the last step there is nothing more to record.
    let mut run = sd.start_generation(&request).unwrap();
    while run.step().unwrap().is_some() {}
    assert!(run.step().unwrap().is_none());
}

#[test]
fn steps_carry_the_samplers_clean_estimate_where_it_forms_one() {
    let sd = load("sd2-tiny");
    for (sampler, forms_one) in [("lcm", true), ("dpm++2m", true), ("unipc", true), ("ddim", true), ("pndm", false)] {
        let request = Request { prompt: "a cat".into(), steps: 3, seed: 3, scheduler: Some(sampler.into()), ..Default::default() };
        let mut reports = Vec::new();
        let generation = sd
            .generate_with(&request, &mut |p| {
                let denoised = p.denoised()?.map(|d| pollster::block_on(d.to_vec())).transpose()?;
                let preview = pollster::block_on(p.preview_latents()?.to_vec())?;
                let latents = pollster::block_on(p.latents.to_vec())?;
                assert_eq!(&preview, denoised.as_ref().unwrap_or(&latents), "previews show the estimate, else the latents");
                reports.push((latents, denoised));
                Ok(Control::Continue)
            })
            .unwrap();
        if !forms_one {
            assert!(reports.iter().all(|(_, d)| d.is_none()), "{sampler} forms no clean estimate");
            continue;
        }
        let (first_latents, first_denoised) = &reports[0];
        assert_ne!(first_latents, first_denoised.as_ref().unwrap(), "{sampler}: after step 1 the latents still hold noise");
        // LCM returns its estimate at the end; DPM-Solver's and UniPC's last (first-order)
        // step goes to sigma 0.
        if sampler != "ddim" {
            let final_latents = read(&generation.latents);
            assert_close(&format!("{sampler} final estimate"), reports[2].1.as_ref().unwrap(), &final_latents, 1e-5, 1e-5);
            assert_eq!(reports.len(), 3);
        }
    }
}

#[test]
fn latent_previews_project_on_the_gpu() {
    let gpu = gpu();
    // A known map: the GPU projection against the same arithmetic on the CPU.
    let weight = [vec![0.5, -0.25, 0.125, 1.0], vec![0.0, 1.0, -1.0, 0.5], vec![-0.75, 0.25, 0.5, 0.0]];
    let bias = [0.1, -0.2, 0.3];
    let preview = LatentPreview::new(gpu, &LatentRgb { weight: weight.clone(), bias, explained: None }).unwrap();
    let latents = TorchGenerator::new(5).randn(2 * 4 * 3 * 5);
    let got = read(&preview.project(&gpu.upload_f32(&[2, 4, 3, 5], &latents).unwrap()).unwrap());
    let want: Vec<f32> = (0..2 * 3 * 15)
        .map(|i| {
            let (b, k, p) = (i / 45, (i / 15) % 3, i % 15);
            bias[k] + (0..4).map(|c| weight[k][c] * latents[b * 60 + c * 15 + p]).sum::<f32>()
        })
        .collect();
    assert_close("projection", &got, &want, 1e-6, 1e-6);
}

/// sd1-tiny's VAE folder in memory, with `latent_rgb` as its `vae/latent_rgb.json`.
fn vae_with_map(latent_rgb: &str) -> MemoryFiles {
    let mut files = MemoryFiles::new("sd1-tiny");
    for entry in std::fs::read_dir(path("models/sd1-tiny/vae")).unwrap() {
        let entry = entry.unwrap();
        files.insert(format!("vae/{}", entry.file_name().to_string_lossy()), std::fs::read(entry.path()).unwrap());
    }
    files.insert("vae/latent_rgb.json", latent_rgb.as_bytes().to_vec());
    files
}

#[test]
fn a_stored_preview_map_is_used_as_it_says_and_a_bad_one_is_named() {
    let gpu = gpu();
    let load_vae = |json: &str| AutoencoderKl::load(gpu, &vae_with_map(json), "vae", WeightPrecision::AsStored);
    let map = r#"{"weight": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], "bias": [0, 0, 0]}"#;
    let vae = load_vae(map).unwrap();
    let latents = gpu.upload_f32(&[1, 4, 2, 3], &TorchGenerator::new(3).randn(24)).unwrap();
    // A map with no measured fit is trusted: the preview is its projection, here the first three channels.
    let previewer = pollster::block_on(Previewer::for_vae(gpu, &vae)).unwrap();
    assert!(matches!(previewer, Previewer::Linear(_)), "{}", previewer.name());
    assert_eq!(read(&previewer.render(&vae, &latents).unwrap()), read(&latents)[..18]);
    // One that says it explains little gives way to the decoder.
    let poor = load_vae(&map.replace("}", r#", "explained": 0.2}"#)).unwrap();
    let previewer = pollster::block_on(Previewer::for_vae(gpu, &poor)).unwrap();
    assert!(matches!(previewer, Previewer::Decoder), "{}", previewer.name());
    let scaled = ew::scale(gpu, &latents, 1.0 / poor.scaling_factor()).unwrap();
    assert_eq!(read(&previewer.render(&poor, &latents).unwrap()), read(&poor.decode(&scaled).unwrap()));

    for (json, needle) in [
        (r#"{"weight": [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "bias": [0, 0, 0]}"#, "row 0 has 3 coefficients for 4 latent channels"),
        (r#"{"weight": [[1, 0, 0, 0], [0, 1, 0, 0]], "bias": [0, 0, 0]}"#, "expected an array of length 3"),
        (r#"{"weight": [[1e39, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], "bias": [0, 0, 0]}"#, "not finite"),
        (&map.replace("}", r#", "explained": 1.5}"#), "over 1"),
        (&map.replace("}", r#", "fitted": true}"#), "unknown field `fitted`"),
    ] {
        let error = load_vae(json).err().unwrap_or_else(|| panic!("{json} loaded")).to_string();
        assert!(error.contains("sd1-tiny/vae/latent_rgb.json") && error.contains(needle), "{json}: {error}");
    }
}

#[test]
fn init_images_and_masks_are_prepared_as_diffusers_prepares_them() {
    use webdiffusion::image::decode_png;
    let outputs = Outputs::load("pipelines");
    let image = decode_png(&std::fs::read(path("img2img_init.png")).unwrap()).unwrap();
    let (want, _) = outputs.f32("img2img.init_image");
    let want: Vec<f32> = want.iter().map(|v| 2.0 * v - 1.0).collect();
    assert_close("init image", &image.to_model_input(), &want, 1e-6, 0.0);
    let mask = decode_png(&std::fs::read(path("inpaint_mask.png")).unwrap()).unwrap();
    assert_eq!(mask.to_binary_mask(), outputs.f32("inpaint.mask_binary").0, "grey 128 repaints, 127 keeps");
    assert!(decode_png(b"not a png").is_err());
}

/// The `cases` table of `outputs/pipelines.safetensors` (see tests/fixtures/README.md).
fn pipeline_cases(outputs: &Outputs) -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&outputs.metadata("cases").unwrap()).unwrap().as_object().unwrap().clone()
}

fn request_for(case: &serde_json::Value) -> Request {
    Request {
        prompt: case["prompt"].as_str().unwrap().into(),
        negative_prompt: case["negative_prompt"].as_str().unwrap_or("").into(),
        steps: case["num_inference_steps"].as_u64().unwrap() as usize,
        guidance_scale: case["guidance_scale"].as_f64().unwrap() as f32,
        scheduler: Some(case["sampler"].as_str().unwrap().into()),
        seed: case["seed"].as_u64().unwrap(),
        width: Some(case["width"].as_u64().unwrap() as usize),
        height: Some(case["height"].as_u64().unwrap() as usize),
        ..Default::default()
    }
}

#[test]
fn text_to_image_from_a_seed_matches_diffusers_for_every_sampler() {
    let outputs = Outputs::load("pipelines");
    let mut models = std::collections::HashMap::new();
    let mut checked = Vec::new();
    for (name, case) in pipeline_cases(&outputs) {
        if !["txt2img", "txt2img-g1", "sd2-txt2img", "lcm", "multi"].contains(&case["kind"].as_str().unwrap()) {
            continue;
        }
        let model = case["model"].as_str().unwrap().trim_start_matches("models/").to_string();
        let sd = models.entry(model.clone()).or_insert_with(|| load(&model));
        let generation = sd.generate(&request_for(&case)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (want, _) = outputs.f32(&format!("{name}.latents"));
        // Seeded noise, every sampler step and the guided UNet in f32: ~1e-6 per
        // layer (tests/unet.rs), compounded over the steps.
        let error = relative_error(&read(&generation.latents), &want);
        assert!(error < 2e-4, "{name}: latents differ by {error} of their scale");
        let (want_image, _) = outputs.f32(&format!("{name}.image"));
        let image: Vec<f32> = read(&generation.image).iter().map(|v| (v / 2.0 + 0.5).clamp(0.0, 1.0)).collect();
        assert_close(&format!("{name} image"), &image, &want_image, 2e-4, 0.0);
        checked.push(name);
    }
    assert!(checked.len() >= 17, "{checked:?}");
}

#[test]
fn deep_cache_and_token_merging_skip_what_their_authors_code_skips() {
    let outputs = Outputs::load("step_savings");
    let sd = load("sd1-tiny");
    let cases = pipeline_cases(&outputs);
    assert_eq!(cases.len(), 7);
    for (name, case) in cases {
        let deep_cache = case["cache_interval"]
            .as_u64()
            .map(|interval| DeepCache { interval: interval as usize, branch: case["cache_branch"].as_u64().unwrap() as usize });
        let token_merge = case["token_merge"].as_f64().map(|f| f as f32);
        let whole = sd.generate(&request_for(&case)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let saving = Request { deep_cache, token_merge, ..request_for(&case) };
        let saved = sd.generate(&saving).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (want_whole, _) = outputs.f32(&format!("whole.{name}.latents"));
        let (want, _) = outputs.f32(&format!("{name}.latents"));
        // As the whole generations (text_to_image_from_a_seed_matches_diffusers_for_every_sampler).
        let whole_error = relative_error(&read(&whole.latents), &want_whole);
        let error = relative_error(&read(&saved.latents), &want);
        // Each saving moves these random-weight latents by far more than the tolerance, so
        // skipping the wrong layers or tokens (or none) fails.
        let moved = relative_error(&want, &want_whole);
        eprintln!("{name}: with the saving {error:.2e}, whole {whole_error:.2e}, saving vs whole {moved:.2e}");
        assert!(whole_error < 2e-4 && error < 2e-4, "{name}: latents differ by {error} (whole: {whole_error}) of their scale");
        assert!(moved > 0.02, "{name}: the saving moved the latents by only {moved}");
    }
}

#[test]
fn taesd_previews_decode_like_diffusers() {
    use webdiffusion::models::taesd::AutoencoderTiny;
    let gpu = gpu();
    let files = DirFiles::new(path("models/taesd-tiny")).unwrap();
    let previewer = Previewer::Taesd(std::rc::Rc::new(AutoencoderTiny::load(gpu, &files, "", WeightPrecision::AsStored).unwrap()));
    let outputs = Outputs::load("taesd-tiny");
    let (latents, shape) = outputs.f32("taesd.decode.latents");
    let (want, want_shape) = outputs.f32("taesd.decode.image");
    // taesd-tiny's scaling factor is 1, so the preview is diffusers' decode itself (the
    // model's own VAE, which only `Previewer::Decoder` uses, is sd1-tiny's).
    let got = previewer.render(load("sd1-tiny").vae(), &gpu.upload_f32(&shape, &latents).unwrap()).unwrap();
    assert_eq!(got.shape(), want_shape.as_slice());
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert_close("TAESD preview", &read(&got), &want, 1e-4 * scale, 0.0);
}

fn fixture_png(name: &str) -> webdiffusion::image::RgbImage {
    webdiffusion::image::decode_png(&std::fs::read(path(name)).unwrap()).unwrap()
}

#[test]
fn image_to_image_and_inpainting_match_diffusers() {
    let outputs = Outputs::load("pipelines");
    let (init, mask) = (fixture_png("img2img_init.png"), fixture_png("inpaint_mask.png"));
    let mut models = std::collections::HashMap::new();
    let mut checked = Vec::new();
    for (name, case) in pipeline_cases(&outputs) {
        let kind = case["kind"].as_str().unwrap();
        if !["img2img", "inpaint9", "inpaint4"].contains(&kind) {
            continue;
        }
        let model = case["model"].as_str().unwrap().trim_start_matches("models/").to_string();
        let sd = models.entry(model.clone()).or_insert_with(|| load(&model));
        let request = Request {
            init_image: Some(init.clone()),
            mask: (kind != "img2img").then(|| mask.clone()),
            strength: case["strength"].as_f64().unwrap() as f32,
            ..request_for(&case)
        };
        let mut steps = Vec::new();
        let generation = sd
            .generate_with(&request, &mut |p| {
                steps.push((p.timestep, pollster::block_on(p.latents.to_vec())?));
                Ok(Control::Continue)
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let timesteps: Vec<f64> = steps.iter().map(|(t, _)| *t).collect();
        assert_eq!(timesteps, outputs.f64(&format!("{name}.timesteps")), "{name}: strength picks the tail of the schedule");
        // As text to image: the VAE encoder's samples add a few layers, ~1e-6 each.
        let (want_steps, shape) = outputs.f32(&format!("{name}.step_latents"));
        let n: usize = shape[1..].iter().product();
        for (i, (_, got)) in steps.iter().enumerate() {
            let error = relative_error(got, &want_steps[i * n..(i + 1) * n]);
            assert!(error < 2e-4, "{name}: step {i} latents differ by {error} of their scale");
        }
        let (want, _) = outputs.f32(&format!("{name}.latents"));
        let error = relative_error(&read(&generation.latents), &want);
        assert!(error < 2e-4, "{name}: latents differ by {error} of their scale");
        let (want_image, _) = outputs.f32(&format!("{name}.image"));
        let image: Vec<f32> = read(&generation.image).iter().map(|v| (v / 2.0 + 0.5).clamp(0.0, 1.0)).collect();
        assert_close(&format!("{name} image"), &image, &want_image, 2e-4, 0.0);
        if kind == "inpaint4" {
            // Outside the mask the final latents are the init image's latents exactly.
            let (image_latents, _) = outputs.f32(&format!("{name}.image_latents"));
            let (latent_mask, _) = outputs.f32(&format!("{name}.mask_latents"));
            let kept: Vec<(f32, f32)> = read(&generation.latents)
                .into_iter()
                .zip(image_latents)
                .enumerate()
                .filter(|(i, _)| latent_mask[i % latent_mask.len()] == 0.0)
                .map(|(_, pair)| pair)
                .collect();
            let (got, want): (Vec<f32>, Vec<f32>) = kept.into_iter().unzip();
            assert!(relative_error(&got, &want) < 2e-4, "{name}: the known region");
        }
        checked.push(name);
    }
    assert_eq!(checked.len(), 12, "{checked:?}");
}

#[test]
fn bad_image_requests_are_clear_errors() {
    let sd = load("sd1-tiny");
    let (init, mask) = (fixture_png("img2img_init.png"), fixture_png("inpaint_mask.png"));
    let base = Request { prompt: "a cat".into(), steps: 4, init_image: Some(init.clone()), ..Default::default() };
    // Request errors, apart from what the engine finds wrong, naming the option at fault.
    for (request, option, needle) in [
        (Request { width: Some(32), ..base.clone() }, "init_image", "the init image is 16x16, the generation 32x16"),
        (Request { init_image: None, mask: Some(mask.clone()), ..base.clone() }, "mask", "a mask needs an init image"),
        (Request { strength: 0.0, ..base.clone() }, "strength", "strength must be in (0, 1]"),
        (Request { strength: 1.5, ..base.clone() }, "strength", "strength must be in (0, 1]"),
        (Request { strength: 0.2, ..base.clone() }, "strength", "runs no step"),
        (Request { latents: Some(vec![0.0; 256]), ..base.clone() }, "latents", "given latents and an init image"),
        (Request { mask: Some(corner(&mask, 8)), ..base.clone() }, "mask", "the mask is 8x8"),
        (Request { width: Some(17), init_image: None, ..base.clone() }, "width", "positive multiples of"),
    ] {
        let err = sd.generate(&request).err().expect(needle);
        assert!(matches!(&err, Error::Request { option: named, .. } if *named == option) && err.to_string().contains(needle), "{err}");
    }
    let inpainting = load("sd1-inpaint-tiny");
    assert!(inpainting.is_inpainting_model() && !sd.is_inpainting_model());
    for request in [Request { mask: None, ..base.clone() }, Request { init_image: None, ..base.clone() }] {
        let err = inpainting.generate(&request).err().unwrap();
        assert!(err.to_string().contains("inpainting UNet: it needs an init image and a mask"), "{err}");
    }
}

/// The top-left `side` x `side` corner of `image`.
fn corner(image: &webdiffusion::image::RgbImage, side: usize) -> webdiffusion::image::RgbImage {
    let pixels = (0..side).flat_map(|y| image.pixels[y * image.width * 3..][..side * 3].to_vec()).collect();
    webdiffusion::image::RgbImage { width: side, height: side, pixels }
}

#[test]
fn image_requests_report_every_step_and_their_strength() {
    let sd = load("sd1-tiny");
    let request = Request {
        prompt: "a cat".into(),
        steps: 5,
        scheduler: Some("heun".into()),
        init_image: Some(fixture_png("img2img_init.png")),
        strength: 0.6,
        ..Default::default()
    };
    let mut seen = Vec::new();
    let result = sd.generate_with(&request, &mut |p| {
        seen.push((p.done, p.total));
        Ok(if p.done == 3 { Control::Cancel } else { Control::Continue })
    });
    // Heun: int(5 * 0.6) = 3 steps of two evaluations but the first: 5 from index 4 of 9.
    assert_eq!(result.err(), Some(Error::Cancelled { done: 3, total: 5 }));
    assert_eq!(seen, vec![(1, 5), (2, 5), (3, 5)]);
    let generation = sd.generate(&Request { steps: 2, scheduler: None, ..request.clone() }).unwrap();
    let parameters = generation.parameters(&Request { steps: 2, ..request }, "sd1-tiny", Some("0123456789"));
    assert!(parameters.ends_with("Model hash: 0123456789, Model: sd1-tiny, Denoising strength: 0.6"), "{parameters}");
}
