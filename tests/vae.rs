//! The SD VAE (AutoencoderKL) and TAESD (AutoencoderTiny) against diffusers' outputs on
//! the tiny fixture models, and the errors a bad config, bad weights or a too-large
//! image must give.
//!
//! Tolerance: the GPU and PyTorch both compute in f32 but sum convolutions, norms and
//! attention in different orders, so results differ by a few f32 roundings per layer
//! (about 1e-6 of the output scale after a dozen layers). 1e-4 of the output's largest
//! magnitude leaves room for that and still catches any wrong operation.

use crate::common;

use std::collections::HashMap;

use common::fixtures::{Outputs, path};
use common::{gpu, random, read};
use safetensors::SafeTensors;
use webdiffusion::Error;
use webdiffusion::gpu::{DType, Tensor};
use webdiffusion::loader::{DirFiles, ModelFiles, WeightPrecision};
use webdiffusion::models::taesd::AutoencoderTiny;
use webdiffusion::models::vae::{AutoencoderKl, sample_latents};

const TOLERANCE: f32 = 1e-4;

/// With f16 weights each weight moves by up to 2^-11 of itself; through a dozen layers
/// that shifts the output by about 2e-3 of its scale.
const F16_WEIGHTS_TOLERANCE: f32 = 1e-2;

/// Asserts `got` is within `tolerance` of `want`'s largest magnitude everywhere.
fn assert_close_to_scale(what: &str, got: &Tensor, (want, shape): &(Vec<f32>, Vec<usize>), tolerance: f32) {
    assert_eq!(got.shape(), shape.as_slice(), "{what}: shape");
    let got = read(got);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (worst, at) = got.iter().zip(want).enumerate().fold((0f32, 0), |(worst, at), (i, (g, w))| {
        let error = (g - w).abs();
        if error > worst || error.is_nan() { (error, i) } else { (worst, at) }
    });
    eprintln!("{what}: max error {worst:.3e} = {:.3e} of the scale {scale:.3}", worst / scale);
    assert!(worst <= tolerance * scale, "{what}: element {at} is {} but diffusers says {} (scale {scale})", got[at], want[at]);
}

fn assert_matches(what: &str, got: &Tensor, want: &(Vec<f32>, Vec<usize>)) {
    assert_close_to_scale(what, got, want, TOLERANCE);
}

fn upload(gpu: &webdiffusion::gpu::Gpu, (values, shape): &(Vec<f32>, Vec<usize>)) -> Tensor {
    gpu.upload_f32(shape, values).unwrap()
}

fn model_dir(model: &str) -> DirFiles {
    DirFiles::new(path(&format!("models/{model}"))).unwrap()
}

fn vae(model: &str) -> AutoencoderKl {
    AutoencoderKl::load(gpu(), &model_dir(model), "vae", WeightPrecision::AsStored).unwrap()
}

/// Decodes and encodes the fixture inputs; returns the image, mean and log-variance.
fn vae_matches_diffusers_with(model: &str, vae: &AutoencoderKl, what: &str) -> [Vec<f32>; 3] {
    let gpu = gpu();
    let outputs = Outputs::load(model);
    let image = vae.decode(&upload(gpu, &outputs.f32("vae.decode.latents"))).unwrap();
    assert_matches(&format!("{model} decode{what}"), &image, &outputs.f32("vae.decode.image"));
    let (mean, logvar) = vae.encode(&upload(gpu, &outputs.f32("vae.encode.image"))).unwrap();
    assert_matches(&format!("{model} encode mean{what}"), &mean, &outputs.f32("vae.encode.mean"));
    assert_matches(&format!("{model} encode logvar{what}"), &logvar, &outputs.f32("vae.encode.logvar"));
    [read(&image), read(&mean), read(&logvar)]
}

fn vae_matches_diffusers(model: &str) {
    vae_matches_diffusers_with(model, &vae(model), "");
}

/// Activations over 16 KiB held in channel chunks: in both models the upsampled
/// activations (e.g. sd1-tiny's 64 channels at 10x14, 35 KiB; sd2-tiny's 32 at 20x28,
/// 70 KiB) and the encoder's first blocks split, while the mid-block attention's input
/// (at most 15 KiB) still fits whole as it must. Convs over several input chunks sum in
/// another order, so the result is close to the unsplit one but not bit-identical.
fn split_vae_matches_diffusers(model: &str) {
    let whole = vae_matches_diffusers_with(model, &vae(model), "");
    let split = vae_matches_diffusers_with(model, &vae(model).with_activation_limit(16 << 10), " in 16 KiB chunks");
    for (what, (split, whole)) in ["image", "mean", "logvar"].iter().zip(split.iter().zip(&whole)) {
        assert_ne!(split, whole, "{model} {what}: nothing was split");
        let scale = whole.iter().fold(0f32, |m, v| m.max(v.abs()));
        common::assert_close(&format!("{model} {what} split vs whole"), split, whole, 1e-5 * scale, 0.0);
    }
}

#[test]
fn sd1_vae_in_channel_chunks_matches_diffusers() {
    split_vae_matches_diffusers("sd1-tiny");
}

#[test]
fn sd2_vae_in_channel_chunks_matches_diffusers() {
    split_vae_matches_diffusers("sd2-tiny");
}

#[test]
fn sd1_vae_matches_diffusers() {
    vae_matches_diffusers("sd1-tiny");
    let vae = vae("sd1-tiny");
    assert_eq!((vae.downsampling_factor(), vae.scaling_factor()), (2, 0.18215));
}

#[test]
fn sd2_vae_matches_diffusers() {
    vae_matches_diffusers("sd2-tiny");
    let vae = vae("sd2-tiny");
    assert_eq!((vae.downsampling_factor(), vae.scaling_factor()), (4, 0.13025));
}

#[test]
fn taesd_matches_diffusers() {
    let gpu = gpu();
    // The TAESD folder is the model itself: no component subfolder.
    let taesd = AutoencoderTiny::load(gpu, &DirFiles::new(path("models/taesd-tiny")).unwrap(), "", WeightPrecision::AsStored).unwrap();
    assert_eq!(taesd.downsampling_factor(), 8);
    let outputs = Outputs::load("taesd-tiny");
    let image = taesd.decode(&upload(gpu, &outputs.f32("taesd.decode.latents"))).unwrap();
    assert_matches("taesd decode", &image, &outputs.f32("taesd.decode.image"));
    let latents = taesd.encode(&upload(gpu, &outputs.f32("taesd.encode.image"))).unwrap();
    assert_matches("taesd encode", &latents, &outputs.f32("taesd.encode.latents"));
}

/// A preview decoder ships without the encoder: the decoder alone decodes as the whole
/// model does, and encoding with it is a clear error.
#[test]
fn decoder_only_taesd_decodes_and_refuses_to_encode() {
    let gpu = gpu();
    let files = Patched { dir: DirFiles::new(path("models")).unwrap(), files: HashMap::new() }
        .weights("taesd-tiny/diffusion_pytorch_model.safetensors", |name, v| (!name.starts_with("encoder.")).then_some(v));
    let taesd = AutoencoderTiny::load(gpu, &files, "taesd-tiny", WeightPrecision::AsStored).unwrap();
    let outputs = Outputs::load("taesd-tiny");
    let image = taesd.decode(&upload(gpu, &outputs.f32("taesd.decode.latents"))).unwrap();
    assert_matches("decoder-only taesd decode", &image, &outputs.f32("taesd.decode.image"));
    let err = taesd.encode(&upload(gpu, &outputs.f32("taesd.encode.image"))).err().unwrap();
    assert!(err.to_string().contains("no encoder"), "{err}");
}

#[test]
fn samples_follow_mean_and_log_variance() {
    let gpu = gpu();
    // Log-variances over the whole clamped range, so the standard deviation spans e^-15..e^10.
    let n = 97;
    let logvar: Vec<f32> = (0..n).map(|i| -30.0 + 50.0 * i as f32 / (n - 1) as f32).collect();
    let mean = random(n, 1, 2.0);
    let noise = random(n, 2, 3.0);
    let up = |v: &[f32]| gpu.upload_f32(&[1, 1, 1, n], v).unwrap();
    let got = read(&sample_latents(&up(&mean), &up(&logvar), &up(&noise)).unwrap());
    for i in 0..n {
        let spread = (0.5 * logvar[i] as f64).exp() * noise[i] as f64;
        let want = mean[i] as f64 + spread;
        // The softmax route to exp costs a few f32 roundings of its (shifted) argument.
        let allowed = 3e-5 * (mean[i].abs() as f64 + spread.abs());
        assert!((got[i] as f64 - want).abs() <= allowed, "logvar {}: got {} want {want}", logvar[i], got[i]);
    }
    let err = sample_latents(&up(&mean), &gpu.upload_f32(&[1, n], &logvar).unwrap(), &up(&noise)).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
}

/// A fixture model folder with some files replaced in memory.
struct Patched {
    dir: DirFiles,
    files: HashMap<String, Vec<u8>>,
}

impl Patched {
    fn new(model: &str) -> Self {
        Self { dir: model_dir(model), files: HashMap::new() }
    }

    /// Sets `key` in `file` (a JSON config) to `value`.
    fn config(mut self, file: &str, key: &str, value: serde_json::Value) -> Self {
        let mut config: serde_json::Value = serde_json::from_slice(&self.read(file).unwrap()).unwrap();
        config[key] = value;
        self.files.insert(file.into(), serde_json::to_vec(&config).unwrap());
        self
    }

    /// Rewrites the safetensors `file`, changing the tensors `edit` is given (`None` drops one).
    fn weights(mut self, file: &str, edit: impl Fn(&str, Vec<f32>) -> Option<Vec<f32>>) -> Self {
        let bytes = self.read(file).unwrap();
        let tensors = SafeTensors::deserialize(&bytes).unwrap();
        let mut kept: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, view) in tensors.tensors() {
            if let Some(values) = edit(&name, bytemuck::pod_collect_to_vec(view.data())) {
                kept.push((name, view.shape().to_vec(), bytemuck::cast_slice(&values).to_vec()));
            }
        }
        let views = kept.iter().map(|(name, shape, data)| {
            (name.as_str(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data).unwrap())
        });
        self.files.insert(file.into(), safetensors::serialize(views, None).unwrap());
        self
    }

    fn load_vae(&self) -> Result<AutoencoderKl, Error> {
        AutoencoderKl::load(gpu(), self, "vae", WeightPrecision::AsStored)
    }
}

impl ModelFiles for Patched {
    fn read(&self, path: &str) -> Result<Vec<u8>, Error> {
        match self.files.get(path) {
            Some(bytes) => Ok(bytes.clone()),
            None => self.dir.read(path),
        }
    }

    fn exists(&self, path: &str) -> bool {
        self.files.contains_key(path) || self.dir.exists(path)
    }

    fn describe(&self, path: &str) -> String {
        self.dir.describe(path)
    }
}

const VAE_CONFIG: &str = "vae/config.json";
const VAE_WEIGHTS: &str = "vae/diffusion_pytorch_model.safetensors";

fn assert_unsupported(result: Result<impl Sized, Error>, field: &str) {
    match result {
        Err(Error::Unsupported { file, detail }) => {
            assert!(file.ends_with("config.json") && detail.contains(field), "{file}: {detail}");
        }
        Err(other) => panic!("{field}: {other}"),
        Ok(_) => panic!("{field}: accepted"),
    }
}

#[test]
fn unsupported_configs_are_rejected() {
    let attention_blocks = serde_json::json!(["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]);
    assert_unsupported(
        Patched::new("sd1-tiny").config(VAE_CONFIG, "down_block_types", attention_blocks).load_vae(),
        "AttnDownEncoderBlock2D",
    );
    assert_unsupported(Patched::new("sd1-tiny").config(VAE_CONFIG, "shift_factor", 0.1.into()).load_vae(), "shift_factor");
    assert_unsupported(Patched::new("sd1-tiny").config(VAE_CONFIG, "act_fn", "gelu".into()).load_vae(), "act_fn");
    let taesd = Patched { dir: DirFiles::new(path("models")).unwrap(), files: HashMap::new() }.config(
        "taesd-tiny/config.json",
        "upsample_fn",
        "bilinear".into(),
    );
    assert_unsupported(AutoencoderTiny::load(gpu(), &taesd, "taesd-tiny", WeightPrecision::AsStored), "bilinear");
}

#[test]
fn weights_that_do_not_fit_the_config_are_errors() {
    let missing = Patched::new("sd1-tiny").weights(VAE_WEIGHTS, |name, v| (name != "decoder.conv_out.bias").then_some(v));
    let err = missing.load_vae().err().unwrap();
    assert!(matches!(&err, Error::MissingTensor { name, .. } if name == "decoder.conv_out.bias"), "{err}");

    let wider = Patched::new("sd1-tiny").config(VAE_CONFIG, "block_out_channels", serde_json::json!([32, 48]));
    let err = wider.load_vae().err().unwrap();
    assert!(matches!(&err, Error::WeightShape { expected, found, .. } if expected[0] == 48 && found[0] == 64), "{err}");

    // Without the mid-block attention its weights are left over.
    let err = Patched::new("sd1-tiny").config(VAE_CONFIG, "mid_block_add_attention", false.into()).load_vae().err().unwrap();
    assert!(matches!(&err, Error::Format { detail, .. } if detail.contains("mid_block.attentions.0")), "{err}");
}

#[test]
fn log_variance_is_clamped() {
    // quant_conv's bias pushes the four log-variance channels far past both ends.
    let biased = Patched::new("sd1-tiny").weights(VAE_WEIGHTS, |name, v| {
        Some(if name == "quant_conv.bias" { vec![0.0, 0.0, 0.0, 0.0, 100.0, -100.0, 100.0, -100.0] } else { v })
    });
    let image = Outputs::load("sd1-tiny").f32("vae.encode.image");
    let (_, logvar) = biased.load_vae().unwrap().encode(&upload(gpu(), &image)).unwrap();
    let values = read(&logvar);
    let per_channel = values.len() / 4;
    for (i, v) in values.iter().enumerate() {
        let want = [20.0, -30.0][(i / per_channel) % 2];
        assert!((v - want).abs() <= 1e-4, "element {i}: {v}, want {want}");
    }
}

fn expect_too_large(result: Result<(), Error>, layer: &str, limit: u64) {
    match result {
        Err(Error::TooLarge { what, needed, limit: reported }) => {
            assert!(what.contains(layer), "{what}");
            assert!(needed > limit && reported == limit, "{needed} vs {reported}");
        }
        other => panic!("{layer}: {other:?}"),
    }
}

#[test]
fn oversized_activations_split_and_what_cannot_is_refused_before_any_work() {
    let gpu = gpu();
    let vae = vae("sd1-tiny");
    let limit = gpu.info().max_storage_binding.min(gpu.info().max_buffer_size);
    // sd1-tiny upsamples 64 channels to twice the latent size, 1024 bytes per latent
    // pixel: past the limit, it is held in chunks of whole 8-channel groups.
    let side = ((limit / 1024) as f64).sqrt() as usize + 1;
    vae.check_decode_size(gpu, [1, 4, side, side]).unwrap();
    // The mid-block attention needs its 64 channels whole: 256 bytes per latent pixel.
    let side = ((limit / 256) as f64).sqrt() as usize + 1;
    expect_too_large(vae.check_decode_size(gpu, [1, 4, side, side]), "decoder.mid_block.attentions.0", limit);
    vae.check_decode_size(gpu, [1, 4, side - 1, side - 1]).unwrap();
    expect_too_large(vae.check_decode_size(gpu, [1, 4, 1 << 20, 1 << 20]), "latents", limit);
    assert!(vae.check_encode_size(gpu, [1, 3, 1 << 16, 1 << 16]).is_err());

    // One norm group is the least a chunk holds: sd2-tiny's up_blocks.1 upsamples 32
    // channels in groups of 4 to 20x28, 8960 bytes a group, over an 8 KiB limit.
    let small = 8 << 10;
    let sd2 = self::vae("sd2-tiny").with_activation_limit(small);
    let latents = gpu.empty(&[1, 4, 5, 7], DType::F32).unwrap();
    expect_too_large(sd2.check_decode_size(gpu, [1, 4, 5, 7]), "decoder.up_blocks.1.upsamplers.0", small);
    // decode itself refuses before queueing work (the latents here are never read).
    expect_too_large(sd2.decode(&latents).map(|_| ()), "decoder.up_blocks.1.upsamplers.0", small);
    let wrong = gpu.upload_f32(&[1, 3, 2, 2], &[0.0; 12]).unwrap();
    assert!(matches!(vae.decode(&wrong), Err(Error::Shape { .. })));
}

#[test]
fn f16_weights_stay_close() {
    let gpu = gpu();
    let vae = AutoencoderKl::load(gpu, &model_dir("sd2-tiny"), "vae", WeightPrecision::F16).unwrap();
    let outputs = Outputs::load("sd2-tiny");
    let image = vae.decode(&upload(gpu, &outputs.f32("vae.decode.latents"))).unwrap();
    assert_close_to_scale("sd2-tiny decode, f16 weights", &image, &outputs.f32("vae.decode.image"), F16_WEIGHTS_TOLERANCE);
}
