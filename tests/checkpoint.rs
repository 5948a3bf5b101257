//! Single-file LDM / AUTOMATIC1111 checkpoints against the diffusers folders they were
//! made from (tests/fixtures/checkpoints, written by generate_checkpoints.py with its own
//! mapping): every tensor, every config field the models read, the family, the scheduler
//! and pipeline class, the inputs' storage types, and the errors bad files give. Then the
//! networks built from a checkpoint, and a package converted from it, compute exactly what
//! the folders compute.

use crate::common;

use std::collections::BTreeMap;

use common::{gpu, read};
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::Value;
use webdiffusion::Error;
use webdiffusion::convert::checkpoint::{CheckpointOptions, read_checkpoint};
use webdiffusion::convert::{HostTensor, SourceComponent, SourceModel};
use webdiffusion::gpu::Tensor;
use webdiffusion::loader::SafetensorsFile;
use webdiffusion::loader::{DirFiles, MemoryFiles, WeightPrecision};
use webdiffusion::models::clip::{ClipTextConfig, ClipTextModel};
use webdiffusion::models::unet_2d::{UNet2DConditionConfig, UNet2DConditionModel};
use webdiffusion::models::vae::{AutoencoderKl, AutoencoderKlConfig};
use webdiffusion::package::{DEFAULT_SHARD_BYTES, DirSource, Policy, Quantization, WriteOptions, load_package, write_package};
use webdiffusion::pipeline::{Request, StableDiffusion};
use webdiffusion::schedulers::{Prediction, SchedulerConfig};

const SD1_FILE: &str = "checkpoints/sd1-inpaint-tiny.safetensors";
const SD2_FILE: &str = "checkpoints/sd2-tiny.safetensors";

fn fixture(relative: &str) -> Vec<u8> {
    let path = common::fixtures::path(relative);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What the tiny fixtures chose where the tensors say nothing and the family convention
/// is for full-size models: 4 text heads of width 8, 8 norm groups, 8x8 latents.
fn tiny_options() -> CheckpointOptions {
    CheckpointOptions { text_encoder_heads: Some(4), norm_num_groups: Some(8), sample_size: Some(8), ..Default::default() }
}

fn sd2_options() -> CheckpointOptions {
    // sd2-tiny: heads (2, 4, 4) are 8 wide, not SD 2.x's 64; its VAE scale is 0.13025;
    // it is a v-prediction model like SD 2.x 768-v.
    CheckpointOptions {
        prediction: Some(Prediction::VPrediction),
        unet_heads: Some(vec![2, 4, 4]),
        vae_scaling_factor: Some(0.13025),
        ..tiny_options()
    }
}

/// A checkpoint's bytes read as the converter reads a file.
fn read_file(bytes: &[u8], file: &str, options: &CheckpointOptions) -> webdiffusion::Result<SourceModel> {
    read_checkpoint(&SafetensorsFile::open(std::sync::Arc::new(bytes.to_vec()), file.to_string())?, options)
}

fn read_sd1() -> SourceModel {
    read_file(&fixture(SD1_FILE), SD1_FILE, &tiny_options()).unwrap()
}

fn read_sd2() -> SourceModel {
    read_file(&fixture(SD2_FILE), SD2_FILE, &sd2_options()).unwrap()
}

/// A diffusers component folder's tensors, every float widened to f32, and its config.
fn folder_component(folder: &str, weights: &str) -> (BTreeMap<String, HostTensor>, Value) {
    let bytes = fixture(&format!("models/{folder}/{weights}"));
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = BTreeMap::new();
    for (name, view) in file.tensors() {
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytemuck::pod_collect_to_vec(view.data()),
            Dtype::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(view.data()).into_iter().map(half::f16::to_f32).collect(),
            other => panic!("{folder}: {name} is {other:?}"),
        };
        tensors.insert(name, HostTensor::new(view.shape().to_vec(), values));
    }
    let config = serde_json::from_slice(&fixture(&format!("models/{folder}/config.json"))).unwrap();
    (tensors, config)
}

/// transformers 5 saves CLIPTextModel without the `text_model.` level that hub folders
/// (and the checkpoint reader) use.
fn with_text_model_prefix(tensors: BTreeMap<String, HostTensor>) -> BTreeMap<String, HostTensor> {
    tensors
        .into_iter()
        .map(|(name, t)| if name.starts_with("text_model.") { (name, t) } else { (format!("text_model.{name}"), t) })
        .collect()
}

/// The same names and shapes, and every value equal to the folder's rounded to f16
/// (the checkpoints store f16).
fn assert_same_tensors(what: &str, got: &BTreeMap<String, HostTensor>, want: &BTreeMap<String, HostTensor>) {
    let got_names: Vec<&String> = got.keys().collect();
    let want_names: Vec<&String> = want.keys().collect();
    assert_eq!(got_names, want_names, "{what}: tensor names");
    for (name, want) in want {
        let got = &got[name];
        assert_eq!(got.shape, want.shape, "{what}: {name} shape");
        let differing = got
            .values()
            .unwrap()
            .iter()
            .zip(want.values().unwrap().iter())
            .position(|(&g, &w)| g.to_bits() != half::f16::from_f32(w).to_f32().to_bits());
        assert_eq!(differing, None, "{what}: {name} differs at that element");
    }
}

fn unet_config(config: &Value) -> UNet2DConditionConfig {
    serde_json::from_value(config.clone()).unwrap()
}

/// The configs the models parse, compared field by field (the structs hold exactly the
/// fields that change the computation).
fn assert_same_configs(got: &SourceModel, unet: &Value, vae: &Value, text_encoder: &Value) {
    assert_eq!(unet_config(&got.components["unet"].config), unet_config(unet), "unet config");
    let vae_config = |v: &Value| format!("{:?}", serde_json::from_value::<AutoencoderKlConfig>(v.clone()).unwrap());
    assert_eq!(vae_config(&got.components["vae"].config), vae_config(vae), "vae config");
    let clip_config = |v: &Value| format!("{:?}", serde_json::from_value::<ClipTextConfig>(v.clone()).unwrap());
    assert_eq!(clip_config(&got.components["text_encoder"].config), clip_config(text_encoder), "text encoder config");
}

fn json_without_version(bytes: &[u8]) -> Value {
    let mut value: Value = serde_json::from_slice(bytes).unwrap();
    value.as_object_mut().unwrap().remove("_diffusers_version");
    value
}

#[test]
fn sd1_checkpoint_is_the_diffusers_folder() {
    let model = read_sd1();
    assert_eq!(model.family, "sd1");
    assert_eq!(model.name, "sd1-inpaint-tiny.safetensors");
    assert_eq!(model.components.keys().collect::<Vec<_>>(), ["text_encoder", "unet", "vae"]);

    let (unet, unet_config) = folder_component("sd1-inpaint-tiny/unet", "diffusion_pytorch_model.safetensors");
    let (vae, vae_config) = folder_component("sd1-tiny/vae", "diffusion_pytorch_model.safetensors");
    let (text, text_config) = folder_component("sd1-tiny/text_encoder", "model.safetensors");
    assert_same_tensors("unet", &model.components["unet"].tensors, &unet);
    assert_same_tensors("vae", &model.components["vae"].tensors, &vae);
    assert_same_tensors("text_encoder", &model.components["text_encoder"].tensors, &with_text_model_prefix(text));
    assert_same_configs(&model, &unet_config, &vae_config, &text_config);
    assert_eq!(model.components["unet"].config["in_channels"], 9, "an inpainting UNet");

    // diffusers' own SD scheduler config, field for field.
    let scheduler = json_without_version(&fixture("models/sd1-tiny/scheduler/scheduler_config.json"));
    assert_eq!(model.scheduler.as_ref().unwrap(), &scheduler);
    let index = json_without_version(&fixture("models/sd1-inpaint-tiny/model_index.json"));
    assert_eq!(model.model_index.as_ref().unwrap()["_class_name"], index["_class_name"]);
    for component in ["scheduler", "text_encoder", "tokenizer", "unet", "vae"] {
        assert_eq!(model.model_index.as_ref().unwrap()[component], index[component], "model_index {component}");
    }
    let special: Value = serde_json::from_slice(&model.tokenizer["special_tokens_map.json"]).unwrap();
    assert_eq!(special["pad_token"], "<|endoftext|>");
}

#[test]
fn sd2_checkpoint_is_the_diffusers_folder() {
    let model = read_sd2();
    assert_eq!(model.family, "sd2");
    let (unet, unet_config) = folder_component("sd2-tiny/unet", "diffusion_pytorch_model.safetensors");
    let (vae, vae_config) = folder_component("sd2-tiny/vae", "diffusion_pytorch_model.safetensors");
    let (text, text_config) = folder_component("sd2-tiny/text_encoder", "model.safetensors");
    // The OpenCLIP file has 4 resblocks, fused q/k/v and a projection; diffusers' model
    // is the first 3 layers.
    assert_eq!(text_config["num_hidden_layers"], 3);
    assert_same_tensors("unet", &model.components["unet"].tensors, &unet);
    assert_same_tensors("vae", &model.components["vae"].tensors, &vae);
    assert_same_tensors("text_encoder", &model.components["text_encoder"].tensors, &with_text_model_prefix(text));
    assert_same_configs(&model, &unet_config, &vae_config, &text_config);
    assert_eq!(model.components["unet"].config["transformer_layers_per_block"], serde_json::json!([1, 2, 1]));

    // The folder uses DDIM; the noise schedule and prediction agree with the PNDM config.
    let ours = SchedulerConfig::from_json(&model.scheduler.as_ref().unwrap().to_string(), "ours").unwrap();
    let text = String::from_utf8(fixture("models/sd2-tiny/scheduler/scheduler_config.json")).unwrap();
    let theirs = SchedulerConfig::from_json(&text, "sd2-tiny").unwrap();
    assert_eq!(ours.class_name, "PNDMScheduler");
    assert_eq!(
        (ours.num_train_timesteps, ours.beta_start, ours.beta_end, &ours.beta_schedule, &ours.prediction_type),
        (theirs.num_train_timesteps, theirs.beta_start, theirs.beta_end, &theirs.beta_schedule, &theirs.prediction_type)
    );
    assert_eq!(
        (ours.steps_offset, ours.set_alpha_to_one, &ours.timestep_spacing, &ours.trained_betas),
        (theirs.steps_offset, theirs.set_alpha_to_one, &theirs.timestep_spacing, &theirs.trained_betas)
    );
    assert_eq!(model.model_index.as_ref().unwrap()["_class_name"], "StableDiffusionPipeline");
    let special: Value = serde_json::from_slice(&model.tokenizer["special_tokens_map.json"]).unwrap();
    assert_eq!(special["pad_token"], "!");
}

#[test]
fn family_conventions_fill_what_the_tensors_cannot_tell() {
    // Without options an SD 1.x UNet has 8 heads per block and 32 groups, SD 2.x
    // 64-wide heads (which the 8-wide tiny model cannot have: a clear refusal).
    let mut options = tiny_options();
    options.norm_num_groups = None;
    let model = read_file(&fixture(SD1_FILE), SD1_FILE, &options).unwrap();
    let unet = &model.components["unet"].config;
    assert_eq!((unet["attention_head_dim"].clone(), unet["norm_num_groups"].clone()), (8.into(), 32.into()));
    assert_eq!(model.scheduler.as_ref().unwrap()["prediction_type"], "epsilon");
    assert_eq!(model.components["vae"].config["scaling_factor"], 0.18215);

    let options = CheckpointOptions { unet_heads: None, ..sd2_options() };
    match read_file(&fixture(SD2_FILE), SD2_FILE, &options) {
        Err(Error::Unsupported { file, detail }) => {
            assert_eq!(file, SD2_FILE);
            assert!(detail.contains("heads") && detail.contains("16 channels"), "{detail}");
        }
        other => panic!("expected a refusal to guess the heads, got {other:?}"),
    }
    let options = CheckpointOptions { text_encoder_heads: None, ..tiny_options() };
    let error = read_file(&fixture(SD1_FILE), SD1_FILE, &options).unwrap_err();
    assert!(error.to_string().contains("text encoder heads"), "{error}");
}

/// Rewrites a safetensors file tensor by tensor: `edit` returns the new name and
/// (dtype, shape, bytes), or `None` to drop the tensor.
type Edited = Option<(String, Dtype, Vec<usize>, Vec<u8>)>;

fn rewrite(bytes: &[u8], edit: impl Fn(&str, Dtype, &[usize], &[u8]) -> Edited) -> Vec<u8> {
    let file = SafeTensors::deserialize(bytes).unwrap();
    let edited: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> =
        file.tensors().into_iter().filter_map(|(name, view)| edit(&name, view.dtype(), view.shape(), view.data())).collect();
    let views: Vec<(&str, TensorView)> =
        edited.iter().map(|(name, dtype, shape, data)| (name.as_str(), TensorView::new(*dtype, shape.clone(), data).unwrap())).collect();
    safetensors::serialize(views, None).unwrap()
}

fn unchanged(name: &str, dtype: Dtype, shape: &[usize], data: &[u8]) -> Edited {
    Some((name.to_string(), dtype, shape.to_vec(), data.to_vec()))
}

fn f16_values(data: &[u8]) -> Vec<f32> {
    bytemuck::pod_collect_to_vec::<u8, half::f16>(data).into_iter().map(half::f16::to_f32).collect()
}

#[test]
fn f32_and_bf16_files_and_the_old_clip_layout_read_the_same() {
    let original = fixture(SD1_FILE);
    let reference = read_sd1();

    let as_f32 = rewrite(&original, |name, dtype, shape, data| match dtype {
        Dtype::F16 => Some((name.to_string(), Dtype::F32, shape.to_vec(), bytemuck::cast_slice(&f16_values(data)).to_vec())),
        _ => unchanged(name, dtype, shape, data),
    });
    assert_eq!(read_file(&as_f32, SD1_FILE, &tiny_options()).unwrap(), reference, "f32 file");

    let as_bf16 = rewrite(&original, |name, dtype, shape, data| match dtype {
        Dtype::F16 => {
            let values: Vec<half::bf16> = f16_values(data).into_iter().map(half::bf16::from_f32).collect();
            Some((name.to_string(), Dtype::BF16, shape.to_vec(), bytemuck::cast_slice(&values).to_vec()))
        }
        _ => unchanged(name, dtype, shape, data),
    });
    let bf16 = read_file(&as_bf16, SD1_FILE, &tiny_options()).unwrap();
    for (component, want) in &reference.components {
        for (name, want) in &want.tensors {
            let got = &bf16.components[component].tensors[name];
            let rounded: Vec<f32> = want.values().unwrap().iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect();
            assert!(got.values().unwrap()[..] == rounded[..], "bf16 file: {component} {name}");
        }
    }

    // Older SD 1.x files name the CLIP model without `text_model.`.
    let old_layout = rewrite(&original, |name, dtype, shape, data| {
        let name = name.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer.");
        unchanged(&name, dtype, shape, data)
    });
    assert_eq!(read_file(&old_layout, SD1_FILE, &tiny_options()).unwrap(), reference, "old CLIP layout");
}

#[test]
fn a_non_standard_noise_schedule_becomes_trained_betas() {
    let zero_terminal_snr = rewrite(&fixture(SD1_FILE), |name, dtype, shape, data| {
        if name != "betas" {
            return unchanged(name, dtype, shape, data);
        }
        let mut betas: Vec<f32> = bytemuck::pod_collect_to_vec(data);
        *betas.last_mut().unwrap() = 1.0;
        Some((name.to_string(), dtype, shape.to_vec(), bytemuck::cast_slice(&betas).to_vec()))
    });
    let model = read_file(&zero_terminal_snr, SD1_FILE, &tiny_options()).unwrap();
    let betas = model.scheduler.as_ref().unwrap()["trained_betas"].as_array().unwrap().clone();
    assert_eq!(betas.len(), 1000);
    assert_eq!(betas[999], 1.0);
    assert!((betas[0].as_f64().unwrap() - 0.00085).abs() < 1e-9);
}

fn assert_error_names(bytes: &[u8], what: &str, check: impl Fn(&Error) -> bool) {
    match read_file(bytes, "bad.safetensors", &tiny_options()) {
        Err(error) => assert!(check(&error), "{what}: unexpected error {error}"),
        Ok(_) => panic!("{what}: read without error"),
    }
}

#[test]
fn bad_files_give_errors_naming_the_tensor() {
    let original = fixture(SD1_FILE);
    for missing in [
        "model.diffusion_model.input_blocks.1.1.proj_in.weight",
        "model.diffusion_model.output_blocks.3.0.skip_connection.bias",
        "first_stage_model.decoder.mid.attn_1.q.weight",
        "cond_stage_model.transformer.text_model.final_layer_norm.bias",
    ] {
        let file = rewrite(&original, |name, dtype, shape, data| if name == missing { None } else { unchanged(name, dtype, shape, data) });
        assert_error_names(
            &file,
            missing,
            |e| matches!(e, Error::MissingTensor { file, name } if file == "bad.safetensors" && name == missing),
        );
    }
    for extra in [
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn3.to_q.weight",
        "first_stage_model.encoder.down.0.block.0.nin_shortcut.weight",
        "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.extra.weight",
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
    ] {
        let file = add_tensor(&original, extra);
        assert_error_names(&file, extra, |e| matches!(e, Error::Format { detail, .. } if detail.contains(extra)));
    }
    // SD 2.x: the penultimate-layer model needs the last resblock too; q/k/v must split in 3.
    let sd2 = fixture(SD2_FILE);
    let missing = "cond_stage_model.model.transformer.resblocks.3.mlp.c_fc.weight";
    let file = rewrite(&sd2, |name, dtype, shape, data| if name == missing { None } else { unchanged(name, dtype, shape, data) });
    match read_file(&file, "bad.safetensors", &sd2_options()) {
        Err(Error::MissingTensor { name, .. }) => assert_eq!(name, missing),
        other => panic!("expected the missing resblock tensor, got {other:?}"),
    }

    // Not Stable Diffusion in the LDM layout at all: a diffusers UNet file, SDXL, garbage.
    let diffusers_unet = fixture("models/sd1-tiny/unet/diffusion_pytorch_model.safetensors");
    assert_error_names(
        &diffusers_unet,
        "diffusers layout",
        |e| matches!(e, Error::Format { file, detail } if file == "bad.safetensors" && detail.contains("model.diffusion_model")),
    );
    let sdxl = rewrite(&original, |name, dtype, shape, data| {
        let name = name.replace("model.diffusion_model.", "x.").replace("cond_stage_model.", "conditioner.embedders.0.");
        unchanged(&name, dtype, shape, data)
    });
    assert_error_names(&sdxl, "SDXL", |e| matches!(e, Error::Unsupported { detail, .. } if detail.contains("SDXL")));
    assert_error_names(&original[..original.len() / 2], "truncated", |e| matches!(e, Error::Format { .. }));
    let no_text_encoder =
        rewrite(
            &original,
            |name, dtype, shape, data| if name.starts_with("cond_stage_model.") { None } else { unchanged(name, dtype, shape, data) },
        );
    assert_error_names(
        &no_text_encoder,
        "no text encoder",
        |e| matches!(e, Error::Format { detail, .. } if detail.contains("no text encoder")),
    );
}

/// `bytes` with one more (f16, 4-element) tensor named `name`.
fn add_tensor(bytes: &[u8], name: &str) -> Vec<u8> {
    let file = SafeTensors::deserialize(bytes).unwrap();
    let extra = vec![0u8; 8];
    let mut views: Vec<(String, TensorView)> = file.tensors();
    views.push((name.to_string(), TensorView::new(Dtype::F16, vec![4], &extra).unwrap()));
    safetensors::serialize(views, None).unwrap()
}

/// A diffusers folder in memory: each component's config and its tensors as f16.
fn memory_folder(components: &BTreeMap<String, SourceComponent>) -> MemoryFiles {
    let mut files = MemoryFiles::new("checkpoint");
    for (component, SourceComponent { config, tensors }) in components {
        let halves: Vec<(String, Vec<usize>, Vec<half::f16>)> = tensors
            .iter()
            .map(|(name, t)| (name.clone(), t.shape.clone(), t.values().unwrap().iter().map(|&v| half::f16::from_f32(v)).collect()))
            .collect();
        let views: Vec<(&str, TensorView)> = halves
            .iter()
            .map(|(name, shape, values)| (name.as_str(), TensorView::new(Dtype::F16, shape.clone(), bytemuck::cast_slice(values)).unwrap()))
            .collect();
        let weights = if component == "text_encoder" { "model.safetensors" } else { "diffusion_pytorch_model.safetensors" };
        files.insert(format!("{component}/{weights}"), safetensors::serialize(views, None).unwrap());
        files.insert(format!("{component}/config.json"), config.to_string().into_bytes());
    }
    files
}

/// The diffusers folders' components, as `memory_folder` stores them (f16, as the
/// checkpoints hold them; embeddings would otherwise stay f32 from an f32 folder).
fn folders_in_f16(unet: &str, vae: &str, text_encoder: &str) -> MemoryFiles {
    let component = |folder: String, weights: &str| {
        let (tensors, config) = folder_component(&folder, weights);
        SourceComponent { config, tensors }
    };
    memory_folder(&BTreeMap::from([
        ("unet".to_string(), component(format!("{unet}/unet"), "diffusion_pytorch_model.safetensors")),
        ("vae".to_string(), component(format!("{vae}/vae"), "diffusion_pytorch_model.safetensors")),
        ("text_encoder".to_string(), component(format!("{text_encoder}/text_encoder"), "model.safetensors")),
    ]))
}

fn assert_same_bits(what: &str, got: &Tensor, want: &Tensor) {
    let (got, want) = (read(got), read(want));
    assert_eq!(got.len(), want.len(), "{what}: length");
    let differing = got.iter().zip(&want).position(|(g, w)| g.to_bits() != w.to_bits());
    assert!(differing.is_none(), "{what}: element {differing:?} differs");
}

/// The text encoder, UNet and VAE built from the checkpoint and from the diffusers
/// folders: the same weights, so the same bits out.
fn assert_same_networks(model: &SourceModel, theirs: &MemoryFiles) {
    let gpu = gpu();
    let ours = memory_folder(&model.components);
    let precision = WeightPrecision::AsStored;

    let text_ours = ClipTextModel::load(gpu, &ours, "text_encoder", precision).unwrap();
    let text_theirs = ClipTextModel::load(gpu, theirs, "text_encoder", precision).unwrap();
    let ids: Vec<Vec<u32>> = vec![(0..77).map(|i| [49406, 320, 1125, 539, 320, 2368, 49407][i.min(6)]).collect()];
    let states = text_ours.encode(&text_ours.upload_ids(&ids).unwrap(), 0).unwrap();
    assert_same_bits("text encoder", &states, &text_theirs.encode(&text_theirs.upload_ids(&ids).unwrap(), 0).unwrap());

    let unet_ours = UNet2DConditionModel::load(gpu, &ours, "unet", precision).unwrap();
    let unet_theirs = UNet2DConditionModel::load(gpu, theirs, "unet", precision).unwrap();
    let in_channels = unet_ours.config().in_channels;
    let sample = gpu.upload_f32(&[1, in_channels, 8, 8], &common::random(in_channels * 64, 7, 1.0)).unwrap();
    let got = unet_ours.forward(&sample, 500.0, &states, None).unwrap();
    assert_same_bits("UNet", &got, &unet_theirs.forward(&sample, 500.0, &states, None).unwrap());

    let vae_ours = AutoencoderKl::load(gpu, &ours, "vae", precision).unwrap();
    let vae_theirs = AutoencoderKl::load(gpu, theirs, "vae", precision).unwrap();
    let latents = gpu.upload_f32(&[1, 4, 4, 4], &common::random(64, 8, 1.0)).unwrap();
    assert_same_bits("VAE decode", &vae_ours.decode(&latents).unwrap(), &vae_theirs.decode(&latents).unwrap());
}

#[test]
fn networks_from_a_checkpoint_compute_what_the_folders_compute() {
    assert_same_networks(&read_sd1(), &folders_in_f16("sd1-inpaint-tiny", "sd1-tiny", "sd1-tiny"));
    assert_same_networks(&read_sd2(), &folders_in_f16("sd2-tiny", "sd2-tiny", "sd2-tiny"));
}

/// The converter's path: checkpoint -> f16 package (with the CLIP vocabulary from a
/// tokenizer folder, as `convert --tokenizer` adds it) -> streamed load -> the whole
/// pipeline. Same image, bit for bit, as the diffusers folder with f16 weights, under the
/// same sampler (the folder's config is DDIM, the checkpoint's PNDM).
#[test]
fn checkpoint_package_generates_the_folders_image() {
    let mut model = read_sd2();
    for file in ["vocab.json", "merges.txt"] {
        model.tokenizer.insert(file.to_string(), fixture(&format!("tokenizer/{file}")));
    }
    let options = WriteOptions {
        policy: Policy::new(Quantization::F16),
        shard_bytes: DEFAULT_SHARD_BYTES,
        source: SD2_FILE.into(),
        model_hash: None,
        latent_rgb: None,
    };
    let dir = std::env::temp_dir().join(format!("webdiffusion-checkpoint-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write_package(&model, &options, &mut |path, bytes| {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, bytes).unwrap();
        Ok(())
    })
    .unwrap();
    let package = pollster::block_on(load_package(gpu(), &DirSource::new(&dir).unwrap(), &mut |_| {})).unwrap();
    assert_eq!(package.manifest().family, "sd2");

    let request = Request {
        prompt: "a castle on a hill".into(),
        steps: 2,
        seed: 11,
        width: Some(16),
        height: Some(16),
        scheduler: Some("ddim".into()),
        ..Default::default()
    };
    let ours = StableDiffusion::load(gpu(), &package, WeightPrecision::AsStored).unwrap().generate(&request).unwrap();
    let folder = DirFiles::new(common::fixtures::path("models/sd2-tiny")).unwrap();
    let theirs = StableDiffusion::load(gpu(), &folder, WeightPrecision::F16).unwrap().generate(&request).unwrap();
    assert_same_bits("latents", &ours.latents, &theirs.latents);
    assert_same_bits("image", &ours.image, &theirs.image);
    std::fs::remove_dir_all(dir).unwrap();
}
