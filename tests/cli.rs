//! The `webdiffusion` command line and `webdiffusion-eval` as other tools drive them.

use crate::common;

use std::path::PathBuf;
use std::process::Command;

use common::fixtures::{Outputs, path};
use common::{assert_close, gpu};
use safetensors::tensor::{Dtype, TensorView};
use webdiffusion::loader::{DirFiles, LatentRgb, WeightPrecision};
use webdiffusion::models::vae::AutoencoderKl;
use webdiffusion::pipeline::fit_latent_rgb;

fn webdiffusion() -> Command {
    Command::new(env!("CARGO_BIN_EXE_webdiffusion"))
}

fn webdiffusion_eval() -> Command {
    Command::new(env!("CARGO_BIN_EXE_webdiffusion-eval"))
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("webdiffusion-cli-{}-{name}", std::process::id()))
}

fn write_latents(file: &PathBuf, values: &[f32], shape: &[usize]) {
    let view = TensorView::new(Dtype::F32, shape.to_vec(), bytemuck::cast_slice(values)).unwrap();
    std::fs::write(file, safetensors::serialize([("latents", view)], None).unwrap()).unwrap();
}

#[test]
fn generate_reproduces_the_diffusers_pipeline() {
    let outputs = Outputs::load("sd2-tiny");
    let (init, shape) = outputs.f32("pipeline.init_latents");
    let (latents_in, latents_out, png) = (temp("in.safetensors"), temp("out.safetensors"), temp("image.png"));
    write_latents(&latents_in, &init, &shape);
    let model = path("models/sd2-tiny");
    let status = webdiffusion()
        .args(["generate", "--model", model.to_str().unwrap(), "--prompt", "a photograph of an astronaut riding a horse"])
        .args(["--steps", "3", "--guidance", "7.5", "--width", "32", "--height", "32", "--scheduler", "ddim"])
        .arg("--latents")
        .arg(&latents_in)
        .arg("--save-latents")
        .arg(&latents_out)
        .arg("--out")
        .arg(&png)
        .status()
        .unwrap();
    assert!(status.success());

    let saved = std::fs::read(&latents_out).unwrap();
    let saved = safetensors::SafeTensors::deserialize(&saved).unwrap();
    let view = saved.tensor("latents").unwrap();
    let got: Vec<f32> = bytemuck::pod_collect_to_vec(view.data());
    let (want, want_shape) = outputs.f32("pipeline.latents");
    assert_eq!(view.shape(), want_shape.as_slice());
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() <= 1e-4 * scale), "saved latents differ from diffusers");

    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut pixels).unwrap();
    let (image, _) = outputs.f32("pipeline.image"); // [1, 3, 32, 32] in [0, 1]
    let plane = 32 * 32;
    for (i, &p) in pixels.iter().enumerate() {
        let want = (image[(i % 3) * plane + i / 3] * 255.0).round();
        // Values within 1e-4 of a rounding edge may land on either side.
        assert!((p as f32 - want).abs() <= 1.0, "pixel {i}: {p} vs {want}");
    }
    let text = &reader.info().uncompressed_latin1_text[0];
    assert_eq!(text.keyword, "parameters");
    // The model hash is the start of the UNet file's SHA-256, as coreutils computes it.
    let sha256sum = Command::new("sha256sum").arg(model.join("unet/diffusion_pytorch_model.safetensors")).output().unwrap();
    let hash = String::from_utf8(sha256sum.stdout).unwrap()[..10].to_string();
    assert!(text.text.contains(&format!("Model hash: {hash}, Model: sd2-tiny")), "{}", text.text);
    assert!(text.text.starts_with("a photograph of an astronaut riding a horse\nSteps: 3, Sampler: DDIM, CFG scale: 7.5"), "{}", text.text);
    for file in [latents_in, latents_out, png] {
        std::fs::remove_file(file).unwrap();
    }
}

#[test]
fn bad_input_is_a_message_and_a_failure_never_a_panic() {
    let model = path("models/sd2-tiny");
    let model = model.to_str().unwrap();
    let wrong_latents = temp("wrong.safetensors");
    write_latents(&wrong_latents, &[0.0; 16], &[1, 4, 2, 2]);
    let out = temp("never.png");
    // taesd-tiny decodes at 8x, as TAESD for SD does; this model's VAE at 4x.
    let (taesd, previews) = (path("models/taesd-tiny"), temp("refused-previews"));
    let cases: [(Vec<&str>, &str); 7] = [
        (vec!["--model", model, "--scheduler", "warp-drive"], "warp-drive"),
        (vec!["--model", "/no/such/model"], "/no/such/model"),
        (vec!["--model", model, "--width", "33"], "multiples of"),
        (vec!["--model", model, "--latents", wrong_latents.to_str().unwrap()], "latents must be"),
        (vec!["--model", model, "--latents", "/no/such/file"], "/no/such/file"),
        (
            vec!["--model", model, "--preview-dir", previews.to_str().unwrap(), "--preview-taesd", taesd.to_str().unwrap()],
            "not a TAESD for this model",
        ),
        (vec!["--model", model, "--preview-dir", previews.to_str().unwrap(), "--preview-taesd", "/no/such/taesd"], "/no/such/taesd"),
    ];
    for (args, needle) in cases {
        let output =
            webdiffusion().arg("generate").args(&args).args(["--prompt", "x", "--steps", "1"]).arg("--out").arg(&out).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(!out.exists());
    assert!(!previews.exists(), "a refused TAESD leaves no preview folder");
    std::fs::remove_file(wrong_latents).unwrap();
}

#[test]
fn several_images_use_successive_seeds_and_previews_come_every_step() {
    let model = path("models/sd2-tiny");
    let dir = temp("multi");
    std::fs::create_dir_all(&dir).unwrap();
    let run = |extra: &[&str], out: &str| {
        let status = webdiffusion()
            .args(["generate", "--model", model.to_str().unwrap(), "--prompt", "a red cube", "--steps", "3", "--scheduler", "dpm++2m"])
            .args(extra)
            .arg("--out")
            .arg(dir.join(out))
            .status()
            .unwrap();
        assert!(status.success(), "{extra:?}");
    };
    run(&["--seed", "7", "--count", "2", "--preview-dir", dir.join("previews").to_str().unwrap()], "many.png");
    run(&["--seed", "8"], "single.png");
    let pixels = |name: &str| {
        let mut reader = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(dir.join(name)).unwrap())).read_info().unwrap();
        let mut buffer = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buffer).unwrap();
        (info.width, info.height, buffer)
    };
    assert_eq!(pixels("many-2.png"), pixels("single.png"), "the second image is seed 8");
    assert_ne!(pixels("many-1.png").2, pixels("many-2.png").2);
    // No linear map reads this random VAE's latents (a fitted one explains 6% of the
    // colour variance), so previews decode the sampler's clean estimate; DPM-Solver's last
    // step goes to sigma 0, so the last preview is the picture itself.
    let (w, h, _) = pixels("single.png");
    for image in 1..=2 {
        for step in 1..=3 {
            let preview = pixels(&format!("previews/step-{step:03}-{image}.png"));
            assert_eq!((preview.0, preview.1), (w, h), "decoded previews are full size");
            if step == 3 {
                assert_eq!(preview, pixels(&format!("many-{image}.png")), "the last preview is the image");
            }
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn image_to_image_reproduces_the_diffusers_pipeline() {
    let outputs = Outputs::load("pipelines");
    let (latents_out, png) = (temp("img2img.safetensors"), temp("img2img.png"));
    let model = path("models/sd1-tiny");
    // The fixture case img2img.ddim-s60: seed 5500, strength 0.6 of 5 DDIM steps.
    let output = webdiffusion()
        .args(["generate", "--model", model.to_str().unwrap(), "--prompt", "a photograph of an astronaut riding a horse"])
        .args(["--negative-prompt", "blurry, low quality, watermark", "--steps", "5", "--guidance", "7.5", "--scheduler", "ddim"])
        .args(["--seed", "5500", "--strength", "0.6", "--init-image", path("img2img_init.png").to_str().unwrap()])
        .arg("--save-latents")
        .arg(&latents_out)
        .arg("--out")
        .arg(&png)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let saved = std::fs::read(&latents_out).unwrap();
    let saved = safetensors::SafeTensors::deserialize(&saved).unwrap();
    let got: Vec<f32> = bytemuck::pod_collect_to_vec(saved.tensor("latents").unwrap().data());
    let (want, _) = outputs.f32("img2img.ddim-s60.latents");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() <= 2e-4 * scale), "saved latents differ from diffusers");

    let mut reader = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap())).read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut pixels).unwrap();
    let (image, _) = outputs.f32("img2img.ddim-s60.image"); // [1, 3, 16, 16] in [0, 1]
    let plane = 16 * 16;
    assert_eq!(pixels.len(), 3 * plane, "the init image's size");
    for (i, &p) in pixels.iter().enumerate() {
        let want = (image[(i % 3) * plane + i / 3] * 255.0).round();
        assert!((p as f32 - want).abs() <= 1.0, "pixel {i}: {p} vs {want}");
    }
    let text = &reader.info().uncompressed_latin1_text[0].text;
    assert!(text.contains("Seed: 5500, Size: 16x16, Model hash: "), "{text}");
    assert!(text.ends_with(", Model: sd1-tiny, Denoising strength: 0.6"), "{text}");
    for file in [latents_out, png] {
        std::fs::remove_file(file).unwrap();
    }
}

#[test]
fn bad_image_input_is_a_message_and_a_failure() {
    let model = path("models/sd1-tiny");
    let (init, not_png) = (path("img2img_init.png"), model.join("model_index.json"));
    let out = temp("never-img2img.png");
    let cases: [(Vec<&str>, &str); 4] = [
        (vec!["--init-image", "/no/such/image.png"], "/no/such/image.png"),
        (vec!["--init-image", init.to_str().unwrap(), "--strength", "1.5"], "strength must be in (0, 1]"),
        (vec!["--init-image", init.to_str().unwrap(), "--width", "32"], "the init image is 16x16"),
        (vec!["--init-image", not_png.to_str().unwrap()], "model_index.json is not valid"),
    ];
    for (args, needle) in cases {
        let output = webdiffusion()
            .args(["generate", "--model", model.to_str().unwrap(), "--prompt", "x", "--steps", "2"])
            .args(&args)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(needle) && !stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // A mask without an init image is refused before anything runs.
    let output = webdiffusion().args(["generate", "--model", "m", "--prompt", "x", "--mask", "m.png", "--out", "o.png"]).output().unwrap();
    assert!(!output.status.success() && String::from_utf8_lossy(&output.stderr).contains("--init-image"));
    assert!(!out.exists());
}

#[test]
fn packages_from_a_folder_and_a_checkpoint_generate_what_the_folder_does() {
    let folder = path("models/sd2-tiny");
    let checkpoint = path("checkpoints/sd2-tiny.safetensors");
    let (from_folder, from_checkpoint) = (temp("package-folder"), temp("package-checkpoint"));
    let convert = |from: &PathBuf, to: &PathBuf, extra: &[&str]| {
        let output = webdiffusion().arg("convert").arg("--from").arg(from).arg("--to").arg(to).args(extra).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    };
    convert(&folder, &from_folder, &[]);
    // What sd2-tiny's checkpoint cannot say about itself (see tests/checkpoint.rs).
    let tokenizer = folder.join("tokenizer");
    let tiny = ["--text-encoder-heads", "4", "--norm-groups", "8", "--sample-size", "8", "--unet-heads", "2,4,4"];
    let sd2 = ["--vae-scaling-factor", "0.13025", "--prediction", "v_prediction", "--tokenizer", tokenizer.to_str().unwrap()];
    convert(&checkpoint, &from_checkpoint, &[&tiny[..], &sd2[..]].concat());

    let latents = |model: &PathBuf, name: &str| {
        let file = temp(&format!("{name}.safetensors"));
        let output = webdiffusion()
            .args([
                "generate",
                "--prompt",
                "a cat",
                "--steps",
                "2",
                "--seed",
                "3",
                "--width",
                "32",
                "--height",
                "32",
                "--scheduler",
                "ddim",
            ])
            .arg("--model")
            .arg(model)
            .arg("--save-latents")
            .arg(&file)
            .arg("--out")
            .arg(temp(&format!("{name}.png")))
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        std::fs::read(file).unwrap()
    };
    // The converter fits the VAE's preview map into the manifest: the fit of the folder's
    // own VAE (f16 weights, which the converter runs as f32: measured 0.5% apart).
    let vae = AutoencoderKl::load(gpu(), &DirFiles::new(&folder).unwrap(), "vae", WeightPrecision::AsStored).unwrap();
    let fitted = pollster::block_on(fit_latent_rgb(gpu(), &vae)).unwrap();
    for package in [&from_folder, &from_checkpoint] {
        let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(package.join("manifest.json")).unwrap()).unwrap();
        let stored: LatentRgb = serde_json::from_value(manifest["latent_rgb"].clone()).unwrap();
        let values = |map: &LatentRgb| map.weight.concat().into_iter().chain(map.bias).chain(map.explained).collect::<Vec<f32>>();
        assert_close("preview map", &values(&stored), &values(&fitted), 1e-2, 1e-2);
    }
    // f16 weights stay f16 in the package, so the results are identical.
    let want = latents(&folder, "folder");
    assert_eq!(latents(&from_folder, "from-folder"), want);
    assert_eq!(latents(&from_checkpoint, "from-checkpoint"), want);

    let output = webdiffusion().arg("convert").arg("--from").arg(&folder).arg("--plan").output().unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.lines().any(|line| line.starts_with("| q4 |")) && table.lines().count() == 6, "{table}");
    // Without --tokenizer a checkpoint gets the built-in copy of CLIP's vocabulary.
    let default_tokenizer = temp("package-default-tokenizer");
    convert(&checkpoint, &default_tokenizer, &[&tiny[..], &sd2[..4]].concat());
    for file in ["vocab.json", "merges.txt"] {
        assert_eq!(std::fs::read(default_tokenizer.join("tokenizer").join(file)).unwrap(), std::fs::read(tokenizer.join(file)).unwrap());
    }
    let output = webdiffusion().arg("convert").arg("--from").arg(&folder).arg("--to").arg(&from_folder).output().unwrap();
    assert!(!output.status.success() && String::from_utf8_lossy(&output.stderr).contains("not empty"));
    for dir in [from_folder, from_checkpoint, default_tokenizer] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// The pixels and the `parameters` text of a PNG the CLI wrote.
fn read_png_with_parameters(file: &PathBuf) -> (Vec<u8>, String) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(file).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut pixels).unwrap();
    let info = reader.info();
    let text = info.uncompressed_latin1_text.iter().map(|t| t.text.clone()).chain(info.utf8_text.iter().map(|t| t.get_text().unwrap()));
    (pixels, text.collect::<Vec<_>>().join("\n"))
}

#[test]
fn generate_without_a_model_uses_the_built_in_package() {
    let (built_in, from_folder) = (temp("built-in.png"), temp("folder.png"));
    let prompt = "a large blue star at the center on a yellow background";
    let status = webdiffusion().args(["generate", "--prompt", prompt, "--seed", "5", "--out"]).arg(&built_in).status().unwrap();
    assert!(status.success());
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/embedded-lcm");
    let status = webdiffusion()
        .args(["generate", "--prompt", prompt, "--seed", "5", "--steps", "4", "--model"])
        .arg(&folder)
        .arg("--out")
        .arg(&from_folder)
        .status()
        .unwrap();
    assert!(status.success());

    let (pixels, parameters) = read_png_with_parameters(&built_in);
    assert_eq!(pixels, read_png_with_parameters(&from_folder).0, "the built-in model is not models/embedded-lcm");
    assert_eq!(pixels.len(), 64 * 64 * 3);
    assert!(parameters.contains("Steps: 4") && parameters.contains("Model: embedded-lcm"), "{parameters}");
    let mean = pixels.iter().map(|&p| p as f64).sum::<f64>() / pixels.len() as f64;
    let spread = pixels.iter().map(|&p| (p as f64 - mean).abs()).sum::<f64>() / pixels.len() as f64;
    assert!(spread > 5.0, "a flat image: mean absolute deviation {spread}");
    std::fs::remove_file(built_in).ok();
    std::fs::remove_file(from_folder).ok();
}

#[test]
fn eval_scores_a_sheet_without_a_model() {
    let ground_truth = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/eval/ground_truth.png");
    let output = webdiffusion_eval().arg("--score-sheet").arg(&ground_truth).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // The generator's own drawings: the analyser reads every attribute of all 128 right.
    assert!(stdout.contains("| all prompts | 128 | 100.0% | 100.0% | 100.0% | 100.0% | 100.0% |"), "{stdout}");
    // Several sheets (runs over other seeds) are scored together.
    let output = webdiffusion_eval().arg("--score-sheet").args([&ground_truth, &ground_truth]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("| all prompts | 256 | 100.0% | 100.0% | 100.0% | 100.0% | 100.0% |"), "{stdout}");
    let other = path("img2img_init.png");
    let output = webdiffusion_eval().arg("--score-sheet").arg(&other).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("img2img_init.png") && stderr.contains("is not rows of 16 tiles"), "{stderr}");
}

#[test]
fn info_describes_a_package_and_its_previews() {
    let package = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/embedded-lcm");
    let output = webdiffusion().args(["info", "--model"]).arg(&package).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(package.join("manifest.json")).unwrap()).unwrap();
    let explained = manifest["latent_rgb"]["explained"].as_f64().unwrap();
    let line = format!("preview map: explains {:.1}% of the colour variance; previews decode with the VAE", 100.0 * explained);
    assert!(stdout.contains(&line), "{stdout}");
    for component in ["text_encoder", "unet", "vae"] {
        assert!(stdout.lines().any(|l| l.trim_start().starts_with(&format!("{component}: "))), "{stdout}");
    }
}

/// An image of 32x32 pixels from `f(x, y)`.
fn pattern_image(f: impl Fn(usize, usize) -> [u8; 3]) -> webdiffusion::image::RgbImage {
    let pixels = (0..32).flat_map(|y| (0..32).map(move |x| (x, y))).flat_map(|(x, y)| f(x, y)).collect();
    webdiffusion::image::RgbImage { width: 32, height: 32, pixels }
}

/// The benches' SSIM (`webdiffusion_cli::image_metrics`, bench fidelity and savings) against
/// its closed form.
#[test]
fn ssim_is_one_for_the_same_image_the_luminance_term_for_flat_ones_and_falls_with_noise() {
    use webdiffusion_cli::image_metrics::ssim;
    let pattern = pattern_image(|x, y| [(x * 8) as u8, (y * 8) as u8, ((x ^ y) * 8) as u8]);
    assert!((ssim(&pattern, &pattern) - 1.0).abs() < 1e-12);
    // Flat images have no variance: SSIM is the luminance term (2 a b + C1) / (a² + b² + C1).
    let (a, b) = (100.0f64, 150.0f64);
    let c1 = (0.01f64 * 255.0).powi(2);
    let flat = |v: u8| pattern_image(move |_, _| [v, v, v]);
    let want = (2.0 * a * b + c1) / (a * a + b * b + c1);
    assert!((ssim(&flat(100), &flat(150)) - want).abs() < 1e-9, "{} vs {want}", ssim(&flat(100), &flat(150)));
    let noisy = |amount: u8| {
        pattern_image(move |x, y| {
            let n = if (x * 7 + y * 13) % 3 == 0 { amount } else { 0 };
            [((x * 8) as u8).saturating_add(n), (y * 8) as u8, ((x ^ y) * 8) as u8]
        })
    };
    let (less, more) = (ssim(&pattern, &noisy(20)), ssim(&pattern, &noisy(60)));
    assert!(less < 0.99 && more < less, "{less} {more}");
}
