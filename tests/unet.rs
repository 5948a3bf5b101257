//! UNet2DConditionModel against diffusers (tests/fixtures: sd1-tiny in f32, sd2-tiny with
//! f16 weights, linear projections, per-block heads and transformer depths, lcm-tiny with a
//! guidance embedding), plus the errors a bad config, bad weights or bad inputs give.

use crate::common;

use std::collections::HashMap;

use common::{gpu, read};
use safetensors::SafeTensors;
use webdiffusion::Error;
use webdiffusion::gpu::Tensor;
use webdiffusion::loader::{DirFiles, ModelFiles, WeightPrecision};
use webdiffusion::models::embeddings::guidance_scale_embedding;
use webdiffusion::models::unet_2d::{FeatureReuse, PassOptions, UNet2DConditionModel};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");
const TIMESTEPS: [f32; 3] = [1.0, 500.0, 999.0];
/// All math is f32 (f16 weights are widened exactly, as the reference widened them), so
/// only summation order and the GPU's exp/sin/cos differ from torch: a few 1e-6 relative
/// per op, grown through ~40 layers. 1e-4 of the output's largest magnitude covers that
/// with room, and is far below what a wrong weight, order or eps would cost (>1e-2).
const RELATIVE_TOLERANCE: f32 = 1e-4;

/// The reference tensors of one fixture model.
struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    fn new(model: &str) -> Self {
        Self { bytes: std::fs::read(format!("{FIXTURES}/outputs/{model}.safetensors")).expect("fixture outputs") }
    }

    fn values(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let file = SafeTensors::deserialize(&self.bytes).unwrap();
        let view = file.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        (view.shape().to_vec(), bytemuck::pod_collect_to_vec(view.data()))
    }

    fn upload(&self, name: &str) -> Tensor {
        let (shape, values) = self.values(name);
        gpu().upload_f32(&shape, &values).unwrap()
    }

    /// `name` stacked `times` times along the batch.
    fn upload_repeated(&self, name: &str, times: usize) -> Tensor {
        let (mut shape, values) = self.values(name);
        shape[0] *= times;
        gpu().upload_f32(&shape, &values.repeat(times)).unwrap()
    }
}

fn model_dir(model: &str) -> DirFiles {
    DirFiles::new(format!("{FIXTURES}/models/{model}")).unwrap()
}

fn load(model: &str) -> UNet2DConditionModel {
    UNet2DConditionModel::load(gpu(), &model_dir(model), "unet", WeightPrecision::AsStored).unwrap()
}

/// Fails when `got` is off by more than the tolerance; returns the error relative to the output scale.
fn check(what: &str, got: &Tensor, want: &[f32]) -> f32 {
    let got = read(got);
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let error = got.iter().zip(want).fold(0.0f32, |m, (g, w)| m.max((g - w).abs())) / scale;
    eprintln!("{what}: max error {error:.2e} of the output scale {scale:.3}");
    assert!(error <= RELATIVE_TOLERANCE, "{what}: max error {error:e} of the output scale is over {RELATIVE_TOLERANCE:e}");
    error
}

/// The three timesteps in one batch (through the per-sample timestep path), the uncond
/// embeddings, and a non-square batch of one.
fn check_plain_outputs(model: &str, unet: &UNet2DConditionModel, reference: &Reference, timestep_cond: Option<&Tensor>, eps: &str) {
    let (sample_shape, _) = reference.values("unet.sample");
    let per_t = sample_shape[0];
    let sample = reference.upload_repeated("unet.sample", TIMESTEPS.len());
    let context = reference.upload_repeated("unet.encoder_hidden_states", TIMESTEPS.len());
    let timesteps: Vec<f32> = TIMESTEPS.iter().flat_map(|&t| vec![t; per_t]).collect();
    let timesteps = gpu().upload_f32(&[timesteps.len()], &timesteps).unwrap();
    let cond = timestep_cond.map(|c| {
        let values = read(c).repeat(TIMESTEPS.len());
        gpu().upload_f32(&[values.len() / c.shape()[1], c.shape()[1]], &values).unwrap()
    });
    let out = unet.forward_timesteps(&sample, &timesteps, &context, cond.as_ref()).unwrap();
    let want: Vec<f32> = TIMESTEPS.iter().flat_map(|t| reference.values(&format!("unet.{eps}.t{t}")).1).collect();
    check(&format!("{model} {eps} t=1,500,999"), &out, &want);

    if timestep_cond.is_none() {
        let uncond = reference.upload("unet.encoder_hidden_states_uncond");
        let out = unet.forward(&reference.upload("unet.sample"), 500.0, &uncond, None).unwrap();
        check(&format!("{model} eps_uncond t=500"), &out, &reference.values("unet.eps_uncond.t500").1);
    }

    // The rect case uses the first prompt only.
    let (context_shape, context_values) = reference.values("unet.encoder_hidden_states");
    let first_context =
        gpu().upload_f32(&[1, context_shape[1], context_shape[2]], &context_values[..context_shape[1] * context_shape[2]]).unwrap();
    let first_cond = timestep_cond.map(|c| gpu().upload_f32(&[1, c.shape()[1]], &read(c)[..c.shape()[1]]).unwrap());
    let out = unet.forward(&reference.upload("unet.rect.sample"), 500.0, &first_context, first_cond.as_ref()).unwrap();
    check(&format!("{model} rect {eps} t=500"), &out, &reference.values(&format!("unet.rect.{eps}.t500")).1);
}

#[test]
fn sd1_tiny_matches_diffusers() {
    let unet = load("sd1-tiny");
    assert_eq!(unet.config().block_out_channels, vec![32, 64]);
    check_plain_outputs("sd1-tiny", &unet, &Reference::new("sd1-tiny"), None, "eps");
}

#[test]
fn sd2_tiny_with_f16_weights_and_linear_projection_matches_diffusers() {
    let unet = load("sd2-tiny");
    assert!(unet.config().use_linear_projection && unet.config().upcast_attention);
    check_plain_outputs("sd2-tiny", &unet, &Reference::new("sd2-tiny"), None, "eps");
}

#[test]
fn lcm_tiny_with_and_without_guidance_embedding_matches_diffusers() {
    let unet = load("lcm-tiny");
    let reference = Reference::new("lcm-tiny");
    check_plain_outputs("lcm-tiny", &unet, &reference, None, "eps");

    // The embedding the pipeline would compute from w = guidance_scale - 1.
    let (_, w) = reference.values("unet.w");
    let (cond_shape, want_cond) = reference.values("unet.timestep_cond");
    let cond = guidance_scale_embedding(gpu(), &w, cond_shape[1]).unwrap();
    assert_eq!(cond.shape(), cond_shape);
    // Angles reach 7000 rad, where one f32 ulp of the angle is 5e-4, and torch's f32 exp is not
    // correctly rounded, so values may differ by up to that much (1.1e-4 measured).
    common::assert_close("lcm guidance embedding", &read(&cond), &want_cond, 5e-4, 0.0);
    check_plain_outputs("lcm-tiny", &unet, &reference, Some(&reference.upload("unet.timestep_cond")), "eps_tcond");

    // Fed our own embedding, as the pipeline will: its rounding moves the output by ~1e-5 of its scale.
    let sample = reference.upload("unet.sample");
    let out = unet.forward(&sample, 500.0, &reference.upload("unet.encoder_hidden_states"), Some(&cond)).unwrap();
    check("lcm-tiny eps_tcond t=500 with our embedding", &out, &reference.values("unet.eps_tcond.t500").1);
}

/// The model folder with some files replaced.
struct Patched {
    dir: DirFiles,
    replaced: HashMap<String, Vec<u8>>,
}

impl ModelFiles for Patched {
    fn read(&self, path: &str) -> webdiffusion::Result<Vec<u8>> {
        self.replaced.get(path).cloned().map_or_else(|| self.dir.read(path), Ok)
    }

    fn exists(&self, path: &str) -> bool {
        self.replaced.contains_key(path) || self.dir.exists(path)
    }

    fn describe(&self, path: &str) -> String {
        self.dir.describe(path)
    }
}

/// sd1-tiny's UNet with `key` of its config set to `value`.
fn load_with_config(model: &str, key: &str, value: serde_json::Value) -> webdiffusion::Result<UNet2DConditionModel> {
    let dir = model_dir(model);
    let mut config: serde_json::Value = serde_json::from_slice(&dir.read("unet/config.json").unwrap()).unwrap();
    config[key] = value;
    let replaced = HashMap::from([("unet/config.json".to_string(), serde_json::to_vec(&config).unwrap())]);
    UNet2DConditionModel::load(gpu(), &Patched { dir, replaced }, "unet", WeightPrecision::AsStored)
}

#[test]
fn unsupported_config_values_are_named() {
    use serde_json::json;
    for (key, value) in [
        ("resnet_time_scale_shift", json!("scale_shift")),
        ("class_embed_type", json!("timestep")),
        ("addition_embed_type", json!("text_time")),
        ("time_embedding_type", json!("fourier")),
        ("dual_cross_attention", json!(true)),
        ("mid_block_type", json!("UNetMidBlock2DSimpleCrossAttn")),
        ("mid_block_type", json!(null)),
        ("down_block_types", json!(["AttnDownBlock2D", "DownBlock2D"])),
        ("act_fn", json!("mish")),
        ("time_embedding_act_fn", json!("mish")),
        ("num_attention_heads", json!(8)),
        ("transformer_layers_per_block", json!([[1, 1], 1])),
        ("encoder_hid_dim", json!(32)),
        ("attention_type", json!("gated")),
    ] {
        match load_with_config("sd1-tiny", key, value.clone()) {
            Err(Error::Unsupported { file, detail }) => {
                assert!(file.ends_with("unet/config.json"), "{key}: {file}");
                assert!(detail.contains(key), "{key} = {value}: {detail}");
            }
            Err(other) => panic!("{key} = {value}: {other}"),
            Ok(_) => panic!("{key} = {value} was accepted"),
        }
    }
    let err = load_with_config("sd1-tiny", "attention_head_dim", serde_json::json!([8, 8, 8])).err().unwrap();
    assert!(matches!(&err, Error::Format { detail, .. } if detail.contains("attention_head_dim")), "{err}");
}

#[test]
fn weights_that_do_not_fit_the_config_are_errors() {
    // A guidance projection the weights lack, and one the config does not know about.
    let err = load_with_config("sd1-tiny", "time_cond_proj_dim", 32.into()).err().unwrap();
    assert!(matches!(&err, Error::MissingTensor { name, .. } if name == "time_embedding.cond_proj.weight"), "{err}");
    let err = load_with_config("lcm-tiny", "time_cond_proj_dim", serde_json::Value::Null).err().unwrap();
    assert!(matches!(&err, Error::Format { detail, .. } if detail.contains("time_embedding.cond_proj.weight")), "{err}");
    // A context width the attention weights were not made for.
    let err = load_with_config("sd1-tiny", "cross_attention_dim", 48.into()).err().unwrap();
    assert!(matches!(&err, Error::WeightShape { name, found, .. } if name.ends_with("attn2.to_k.weight") && found == &[32, 32]), "{err}");

    let dir = model_dir("sd1-tiny");
    let path = "unet/diffusion_pytorch_model.safetensors";
    let bytes = dir.read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let missing = "mid_block.attentions.0.transformer_blocks.0.ff.net.2.bias";
    let kept: Vec<_> = file.tensors().into_iter().filter(|(name, _)| name != missing).collect();
    let replaced = HashMap::from([(path.to_string(), safetensors::serialize(kept, None).unwrap())]);
    let err = UNet2DConditionModel::load(gpu(), &Patched { dir, replaced }, "unet", WeightPrecision::AsStored).err().unwrap();
    assert!(matches!(&err, Error::MissingTensor { file, name } if name == missing && file.ends_with(path)), "{err}");
}

#[test]
fn bad_inputs_are_shape_errors() {
    let unet = load("sd2-tiny");
    let context = gpu().upload_f32(&[1, 77, 32], &vec![0.0; 77 * 32]).unwrap();
    let sample = |shape: &[usize]| gpu().upload_f32(shape, &vec![0.0; shape.iter().product()]).unwrap();
    let shape_error = |result: webdiffusion::Result<Tensor>, needle: &str| match result {
        Err(Error::Shape { detail, .. }) => assert!(detail.contains(needle), "{needle}: {detail}"),
        other => panic!("{needle}: {other:?}"),
    };
    // Two upsamplers: diffusers' upsample_size path for other sizes is not implemented.
    shape_error(unet.forward(&sample(&[1, 4, 8, 10]), 1.0, &context, None), "multiples of 4");
    shape_error(unet.forward(&sample(&[1, 3, 8, 8]), 1.0, &context, None), "channels");
    shape_error(unet.forward(&sample(&[2, 4, 8, 8]), 1.0, &context, None), "encoder_hidden_states");
    let cond = gpu().upload_f32(&[1, 32], &[0.0; 32]).unwrap();
    shape_error(unet.forward(&sample(&[1, 4, 8, 8]), 1.0, &context, Some(&cond)), "time_cond_proj_dim");
}

/// DeepCache's split: a pass reusing the feature a whole pass stored, on the same inputs,
/// computes exactly what the whole pass did, for every branch; a feature from another
/// timestep changes the output (so the reuse does read it), and a bad branch or batch is named.
#[test]
fn reusing_the_stored_deep_feature_of_the_same_inputs_is_the_whole_pass() {
    let unet = load("sd1-tiny");
    let reference = Reference::new("sd1-tiny");
    let sample = reference.upload("unet.sample");
    let context = reference.upload("unet.encoder_hidden_states");
    let batch = sample.shape()[0];
    let timesteps = |t: f32| gpu().upload_f32(&[batch], &vec![t; batch]).unwrap();
    let whole = read(&unet.forward_timesteps(&sample, &timesteps(500.0), &context, None).unwrap());
    // conv_in, two resnets and a downsampler, two resnets.
    assert_eq!(unet.branches(), 6);
    for branch in 0..unet.branches() {
        let pass =
            |t: f32, reuse| unet.forward_with(&sample, &timesteps(t), &context, None, PassOptions { reuse, ..Default::default() }).unwrap();
        let (stored_out, feature) = pass(500.0, FeatureReuse::Store { branch });
        assert_eq!(read(&stored_out), whole, "branch {branch}: storing changed the output");
        let feature = feature.expect("a stored feature");
        let (reused, kept) = pass(500.0, FeatureReuse::Reuse { branch, feature: &feature });
        assert!(kept.is_none());
        assert_eq!(read(&reused), whole, "branch {branch}");
        let (_, other) = pass(999.0, FeatureReuse::Store { branch });
        let (moved, _) = pass(500.0, FeatureReuse::Reuse { branch, feature: &other.unwrap() });
        let moved = read(&moved).iter().zip(&whole).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(moved > 1e-3, "branch {branch}: another step's feature moved the output by only {moved}");
    }
    let with = |reuse| unet.forward_with(&sample, &timesteps(1.0), &context, None, PassOptions { reuse, ..Default::default() });
    let err = with(FeatureReuse::Store { branch: 6 }).err().unwrap();
    assert!(matches!(&err, Error::Shape { detail, .. } if detail.contains("cache branch 6 is not below this UNet's 6 branches")), "{err}");
    let single = gpu().upload_f32(&[1, 4, 2, 2], &[0.0; 16]).unwrap();
    let err = with(FeatureReuse::Reuse { branch: 0, feature: &single }).err().unwrap();
    assert!(matches!(&err, Error::Shape { detail, .. } if detail.contains("not of this batch")), "{err}");
}

/// The text's cross-attention keys and values computed once give what each pass computing
/// them gives, on sd1-tiny and on sd2-tiny (linear projections, per-block heads); keys and
/// values of another text are refused, not used.
#[test]
fn text_keys_values_computed_ahead_are_what_each_pass_computes() {
    for model in ["sd1-tiny", "sd2-tiny"] {
        let unet = load(model);
        let reference = Reference::new(model);
        let sample = reference.upload("unet.sample");
        let context = reference.upload("unet.encoder_hidden_states");
        let batch = sample.shape()[0];
        let timesteps = gpu().upload_f32(&[batch], &vec![500.0; batch]).unwrap();
        let whole = read(&unet.forward_timesteps(&sample, &timesteps, &context, None).unwrap());
        let keys_values = unet.text_keys_values(&context).unwrap();
        let options = PassOptions { text_keys_values: Some(&keys_values), ..Default::default() };
        let (ahead, _) = unet.forward_with(&sample, &timesteps, &context, None, options).unwrap();
        assert_eq!(read(&ahead), whole, "{model}");
        let other = reference.upload("unet.encoder_hidden_states_uncond");
        let err = unet.forward_with(&sample, &timesteps, &other, None, options).err().unwrap();
        assert!(matches!(&err, Error::Shape { detail, .. } if detail.contains("computed for other encoder_hidden_states")), "{err}");
    }
}
