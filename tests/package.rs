//! webdiffusion packages: conversion from the diffusers fixture folders, streaming
//! loads (odd chunk sizes, tensors spanning shards), outputs against the folder the
//! package came from, deterministic bytes, every manifest and shard error, and the
//! sizes of full-size SD 1.5 / SD 2.1 packages from their real tensor shapes.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::fixtures::{Outputs, path};
use common::{gpu, read};
use webdiffusion::Error;
use webdiffusion::convert::diffusers::read_diffusers;
use webdiffusion::convert::{HostTensor, SourceModel};
use webdiffusion::gpu::{DType, Tensor};
use webdiffusion::loader::{DirFiles, ModelFiles, WeightPrecision};
use webdiffusion::models::unet_2d::UNet2DConditionModel;
use webdiffusion::open::ModelSource;
use webdiffusion::package::{
    DirSource, LoadProgress, MemorySource, Package, Policy, Quantization, WriteOptions, load_package, package_size, parse_manifest,
    write_package,
};
use webdiffusion::pipeline::{Request, StableDiffusion};
use webdiffusion::quant;

/// Small shards, so that the token embedding (3 MiB in f16) spans many of them.
const SHARD_BYTES: u64 = 64 << 10;
/// An odd chunk size: words split between chunks, and chunks between shards.
const CHUNK_BYTES: usize = 4099;

fn source(model: &str) -> SourceModel {
    read_diffusers(&DirFiles::new(path(&format!("models/{model}"))).unwrap(), model).unwrap()
}

fn options(quantization: Quantization) -> WriteOptions {
    WriteOptions {
        policy: Policy::new(quantization),
        shard_bytes: SHARD_BYTES,
        source: "tests/package.rs".into(),
        model_hash: None,
        latent_rgb: None,
    }
}

/// The package's files in memory.
fn package_bytes(model: &SourceModel, options: &WriteOptions) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    write_package(model, options, &mut |path, bytes| {
        files.insert(path.to_string(), bytes.to_vec());
        Ok(())
    })
    .unwrap();
    files
}

/// A fresh folder holding `files`.
fn write_folder(name: &str, files: &BTreeMap<String, Vec<u8>>) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("webdiffusion-package-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (path, bytes) in files {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, bytes).unwrap();
    }
    dir
}

fn try_load(dir: &Path) -> Result<Package, Error> {
    pollster::block_on(load_package(gpu(), &DirSource::new(dir)?.with_chunk_bytes(CHUNK_BYTES), &mut |_| {}))
}

fn fixture_dir(model: &str) -> DirFiles {
    DirFiles::new(path(&format!("models/{model}"))).unwrap()
}

/// The UNet's noise prediction for the fixture's samples and prompts at t = 500.
fn unet_output(files: &dyn ModelFiles, precision: WeightPrecision) -> Vec<f32> {
    let outputs = Outputs::load("sd1-tiny");
    let unet = UNet2DConditionModel::load(gpu(), files, "unet", precision).unwrap();
    let upload = |name: &str| {
        let (values, shape) = outputs.f32(name);
        gpu().upload_f32(&shape, &values).unwrap()
    };
    read(&unet.forward(&upload("unet.sample"), 500.0, &upload("unet.encoder_hidden_states"), None).unwrap())
}

fn request() -> Request {
    Request {
        prompt: "a photograph of an astronaut riding a horse".into(),
        steps: 2,
        seed: 7,
        width: Some(16),
        height: Some(16),
        ..Default::default()
    }
}

/// `max |got - want|` relative to `max |want|`.
fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    got.iter().zip(want).fold(0.0f32, |m, (g, w)| m.max((g - w).abs())) / scale
}

#[test]
fn f16_package_gives_exactly_the_folder_loaded_as_f16() {
    let dir = write_folder("f16", &package_bytes(&source("sd1-tiny"), &options(Quantization::F16)));
    let mut reports: Vec<LoadProgress> = Vec::new();
    let source = DirSource::new(&dir).unwrap().with_chunk_bytes(CHUNK_BYTES);
    let package = pollster::block_on(load_package(gpu(), &source, &mut |p| reports.push(p.clone()))).unwrap();

    // Progress: monotone, per component, ending at the totals.
    let last = reports.last().unwrap();
    assert_eq!(last.done, last.total);
    assert_eq!(last.total, package.manifest().stream_bytes());
    assert!(reports.windows(2).all(|w| w[0].done < w[1].done));
    let names: Vec<&str> = last.components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["text_encoder", "unet", "vae"]);
    for component in &last.components {
        let listed: u64 = package.manifest().tensors.iter().filter(|t| t.component == component.name).map(|t| t.length).sum();
        assert_eq!((component.done, component.total), (listed, listed), "{}", component.name);
    }

    // GPU memory holds exactly the package's tensor bytes, in the policy's types.
    let unet = package.uploaded("unet").unwrap().tensors;
    let unet_bytes: u64 = unet.values().map(Tensor::byte_len).sum();
    let listed: u64 = package.manifest().tensors.iter().filter(|t| t.component == "unet").map(|t| t.length).sum();
    assert_eq!(unet_bytes, listed);
    assert!(unet.values().all(|t| t.dtype() == DType::F16));
    let text = package.uploaded("text_encoder").unwrap().tensors;
    assert_eq!(text["embeddings.position_embedding.weight"].dtype(), DType::F32);

    let folder = fixture_dir("sd1-tiny");
    assert_eq!(unet_output(&package, WeightPrecision::AsStored), unet_output(&folder, WeightPrecision::F16));

    let from_package = StableDiffusion::load(gpu(), &package, WeightPrecision::AsStored).unwrap().generate(&request()).unwrap();
    let from_folder = StableDiffusion::load(gpu(), &folder, WeightPrecision::F16).unwrap().generate(&request()).unwrap();
    assert_eq!(read(&from_package.latents), read(&from_folder.latents));
    assert_eq!(read(&from_package.image), read(&from_folder.image));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn quantized_packages_load_and_stay_close_to_f32() {
    let model = source("sd1-tiny");
    let folder = fixture_dir("sd1-tiny");
    let want = unet_output(&folder, WeightPrecision::AsStored);
    let f32_pipeline = StableDiffusion::load(gpu(), &folder, WeightPrecision::AsStored).unwrap().generate(&request()).unwrap();
    let want_latents = read(&f32_pipeline.latents);
    // Bounds about twice what sd1-tiny measures (UNet / latents: f16 5.8e-4 / 1.4e-3,
    // q8 1.5e-2 / 3.7e-2, q4 0.20 / 0.42, mixed 0.10 / 0.15). Its random weights are
    // uniform within blocks, the worst case for absmax scaling, and the random network
    // amplifies errors: a trained model loses far less (docs/BENCHMARKS.md).
    for (quantization, unet_bound, latent_bound) in
        [(Quantization::F16, 1.2e-3, 3e-3), (Quantization::Q8, 3e-2, 8e-2), (Quantization::Q4, 0.4, 0.8), (Quantization::Mixed, 0.2, 0.3)]
    {
        let name = quantization.name();
        let dir = write_folder(name, &package_bytes(&model, &options(quantization)));
        let package = try_load(&dir).unwrap();
        let unet = package.uploaded("unet").unwrap().tensors;
        let dtype = |name: &str| unet[name].dtype();
        assert_eq!(dtype("conv_in.weight"), DType::F16, "{name}");
        assert_eq!(dtype("time_embedding.linear_1.weight"), DType::F16, "{name}");
        assert_eq!(dtype("down_blocks.0.resnets.0.norm1.weight"), DType::F16, "{name}");
        let attention = dtype("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight");
        let conv = dtype("down_blocks.0.resnets.0.conv1.weight");
        let expected = match quantization {
            Quantization::F16 => (DType::F16, DType::F16),
            Quantization::Q8 => (DType::Q8, DType::Q8),
            Quantization::Q4 => (DType::Q4, DType::Q4),
            Quantization::Mixed => (DType::Q8, DType::Q4),
        };
        assert_eq!((attention, conv), expected, "{name}");
        // CLIP's MLP rows of 37 do not fit 32-element blocks: f16 whatever the choice.
        let text = package.uploaded("text_encoder").unwrap().tensors;
        assert_eq!(text["encoder.layers.0.mlp.fc2.weight"].dtype(), DType::F16, "{name}");

        let unet_error = relative_error(&unet_output(&package, WeightPrecision::AsStored), &want);
        let generation = StableDiffusion::load(gpu(), &package, WeightPrecision::AsStored).unwrap().generate(&request()).unwrap();
        let latent_error = relative_error(&read(&generation.latents), &want_latents);
        let bytes = package.manifest().stream_bytes();
        eprintln!("{name}: {bytes} bytes, UNet error {unet_error:.2e}, 2-step latents error {latent_error:.2e} of their scale");
        assert!(unet_error <= unet_bound, "{name}: UNet error {unet_error}");
        assert!(latent_error <= latent_bound, "{name}: latents error {latent_error}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// `model` with every weight replaced by the values its storage type under `policy`
/// stands for (dequantized on the CPU), as f32.
fn dequantized(model: &SourceModel, policy: &Policy) -> SourceModel {
    let mut model = model.clone();
    for (component, source) in &mut model.components {
        for (name, tensor) in &mut source.tensors {
            let dtype = policy.storage_type(component, name, &tensor.shape);
            let bytes = quant::quantize(dtype, &tensor.shape, &tensor.values().unwrap()).unwrap();
            *tensor = HostTensor::new(tensor.shape.clone(), quant::dequantize(dtype, &tensor.shape, &bytes).unwrap());
        }
    }
    model
}

#[test]
fn quantized_package_computes_what_its_dequantized_weights_compute() {
    let model = source("sd1-tiny");
    let policy = Policy::new(Quantization::Mixed);
    let quantized = write_folder("mixed-q", &package_bytes(&model, &options(Quantization::Mixed)));
    let all_f32 = WriteOptions { policy: Policy::new(Quantization::F16).with_override("*=f32").unwrap(), ..options(Quantization::F16) };
    let reference = write_folder("mixed-deq", &package_bytes(&dequantized(&model, &policy), &all_f32));
    let reference_package = try_load(&reference).unwrap();
    assert!(reference_package.uploaded("unet").unwrap().tensors.values().all(|t| t.dtype() == DType::F32));
    let want = unet_output(&reference_package, WeightPrecision::AsStored);
    let got = unet_output(&try_load(&quantized).unwrap(), WeightPrecision::AsStored);
    // The same weights in f32 arithmetic: only summation order differs.
    let error = relative_error(&got, &want);
    eprintln!("mixed package against its dequantized weights in f32: {error:.2e} of the output scale");
    assert!(error < 1e-4, "{error}");
    std::fs::remove_dir_all(quantized).unwrap();
    std::fs::remove_dir_all(reference).unwrap();
}

#[test]
fn package_bytes_are_deterministic_and_shards_are_bounded() {
    let options = options(Quantization::Mixed);
    let first = package_bytes(&source("sd1-tiny"), &options);
    assert_eq!(first, package_bytes(&source("sd1-tiny"), &options));
    let manifest = parse_manifest(&first["manifest.json"]).unwrap();
    for (i, shard) in manifest.shards.iter().enumerate() {
        assert_eq!(shard.file, format!("shard-{i:05}.bin"));
        let bytes = &first[&shard.file];
        assert_eq!(bytes.len() as u64, shard.bytes);
        assert!(shard.bytes <= SHARD_BYTES);
        assert_eq!(webdiffusion::package::sha256_hex(bytes), shard.sha256);
    }
    for file in &manifest.files {
        assert_eq!(webdiffusion::package::sha256_hex(&first[&file.path]), file.sha256, "{}", file.path);
    }
    assert_eq!(manifest.components["tokenizer"].files.as_ref().unwrap().len(), 4);
    // Component order in the stream: the text encoder first, the VAE last.
    let first_shard = |component: &str| manifest.tensors.iter().find(|t| t.component == component).unwrap().shard;
    assert!(first_shard("text_encoder") < first_shard("unet") && first_shard("unet") < first_shard("vae"));
}

/// The manifest of a small package as JSON, to be broken in the tests below.
fn manifest_json() -> serde_json::Value {
    let files = package_bytes(&source("sd1-tiny"), &options(Quantization::Q8));
    serde_json::from_slice(&files["manifest.json"]).unwrap()
}

fn parse_error(json: &serde_json::Value) -> String {
    parse_manifest(&serde_json::to_vec(json).unwrap()).unwrap_err().to_string()
}

#[test]
fn bad_manifests_are_refused_naming_the_field_or_tensor() {
    let good = manifest_json();
    parse_manifest(&serde_json::to_vec(&good).unwrap()).unwrap();
    let broken = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut json = good.clone();
        edit(&mut json);
        parse_error(&json)
    };
    let tensor = |json: &serde_json::Value, i: usize| {
        format!("{}/{}", json["tensors"][i]["component"].as_str().unwrap(), json["tensors"][i]["name"].as_str().unwrap())
    };
    let first = tensor(&good, 0);

    let error = broken(&|j| j["version"] = 2.into());
    assert!(error.contains("manifest.json") && error.contains("version 2") && error.contains("reads version 1"), "{error}");
    let error = broken(&|j| j["format"] = "safetensors".into());
    assert!(error.contains("`format`"), "{error}");
    let error = broken(&|j| j["tensors"][0]["length"] = (j["tensors"][0]["length"].as_u64().unwrap() + 4).into());
    assert!(error.contains(&first) && error.contains("length"), "{error}");
    let error = broken(&|j| j["tensors"][0]["dtype"] = "q3".into());
    assert!(error.contains(&first) && error.contains("unknown dtype \"q3\""), "{error}");
    let error = broken(&|j| j["tensors"][0]["offset"] = 100.into());
    assert!(error.contains(&first) && error.contains("offset 100"), "{error}");
    let error = broken(&|j| j["tensors"][0]["shard"] = 999.into());
    assert!(error.contains(&first) && error.contains("shard 999 does not exist"), "{error}");
    let error = broken(&|j| j["tensors"][1]["offset"] = j["tensors"][0]["offset"].clone());
    assert!(error.contains("overlap") && error.contains(&first), "{error}");
    let error = broken(&|j| {
        let last = j["tensors"].as_array().unwrap().len() - 1;
        j["tensors"][last]["offset"] =
            j["shards"][j["tensors"][last]["shard"].as_u64().unwrap() as usize]["bytes"].as_u64().unwrap().next_multiple_of(256).into();
    });
    assert!(error.contains("offset"), "{error}");
    let error = broken(&|j| j["tensors"][0]["component"] = "tokenizer".into());
    assert!(error.contains("not a component with a config"), "{error}");
    let error = broken(&|j| j["tensors"][0]["shape"] = serde_json::json!([3, 5]));
    assert!(error.contains(&first) && error.contains("[3, 5]"), "{error}");
    let error = broken(&|j| j["shards"][0]["file"] = "../etc/passwd".into());
    assert!(error.contains("shards[0].file"), "{error}");
    let error = broken(&|j| j["shards"][1]["sha256"] = "abc".into());
    assert!(error.contains("shards[1].sha256"), "{error}");
    let error = broken(&|j| {
        j["files"].as_array_mut().unwrap().remove(0);
    });
    assert!(error.contains("components.tokenizer.files") && error.contains("tokenizer/merges.txt"), "{error}");
    let error = broken(&|j| j["shards"].as_array_mut().unwrap().truncate(1));
    assert!(error.contains("larger than the whole package"), "{error}");
    let error = broken(&|j| j["latent_rgb"] = serde_json::json!({"weight": [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "bias": [0, 0, 0]}));
    assert!(error.contains("manifest.json") && error.contains("3 coefficients for 4 latent channels"), "{error}");
    let error = broken(&|j| {
        j["latent_rgb"] = serde_json::json!({"weight": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], "bias": [0, 0, 0]});
        j["components"]["vae"]["config"]["latent_channels"] = "four".into();
    });
    assert!(error.contains("latent_channels is \"four\""), "{error}");
    let error = broken(&|j| j["unknown_field"] = 1.into());
    assert!(error.contains("unknown_field"), "{error}");
    let error = parse_manifest(b"{\"format\": ").unwrap_err().to_string();
    assert!(error.contains("manifest.json is not valid"), "{error}");
}

/// A package folder of sd1-tiny in q8, broken by `edit` (which gets the folder).
fn broken_package(name: &str, edit: impl FnOnce(&Path)) -> Result<Package, Error> {
    let dir = write_folder(name, &package_bytes(&source("sd1-tiny"), &options(Quantization::Q8)));
    edit(&dir);
    let result = try_load(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    result
}

fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let file = dir.join("manifest.json");
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(file, serde_json::to_vec(&json).unwrap()).unwrap();
}

fn load_error(name: &str, edit: impl FnOnce(&Path)) -> Error {
    broken_package(name, edit).err().unwrap_or_else(|| panic!("{name}: the broken package loaded"))
}

#[test]
fn damaged_shards_and_files_are_errors_naming_the_file() {
    let error = load_error("truncated", |dir| {
        let file = dir.join("shard-00001.bin");
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() - 1000]).unwrap();
    });
    assert!(
        matches!(&error, Error::Format { file, detail } if file.ends_with("shard-00001.bin") && detail.contains("truncated")),
        "{error}"
    );

    let error = load_error("flipped", |dir| {
        let file = dir.join("shard-00002.bin");
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[12345] ^= 0x10;
        std::fs::write(&file, bytes).unwrap();
    });
    assert!(matches!(&error, Error::Format { file, detail } if file.ends_with("shard-00002.bin") && detail.contains("SHA-256")), "{error}");

    let error = load_error("longer", |dir| {
        let file = dir.join("shard-00000.bin");
        let mut bytes = std::fs::read(&file).unwrap();
        bytes.push(0);
        std::fs::write(&file, bytes).unwrap();
    });
    assert!(matches!(&error, Error::Format { file, detail } if file.ends_with("shard-00000.bin") && detail.contains("longer")), "{error}");

    let error = load_error("missing-shard", |dir| std::fs::remove_file(dir.join("shard-00003.bin")).unwrap());
    assert!(matches!(&error, Error::Io { path, .. } if path.ends_with("shard-00003.bin")), "{error}");

    let error = load_error("vocab", |dir| std::fs::write(dir.join("tokenizer/vocab.json"), b"{}").unwrap());
    assert!(matches!(&error, Error::Format { file, .. } if file.ends_with("tokenizer/vocab.json")), "{error}");

    let error = load_error("version", |dir| edit_manifest(dir, |j| j["version"] = 7.into()));
    assert!(
        matches!(&error, Error::Unsupported { file, detail } if file.ends_with("manifest.json") && detail.contains("version 7")),
        "{error}"
    );
}

#[test]
fn missing_or_misshapen_tensors_name_the_package_and_tensor() {
    let package = broken_package("missing-tensor", |dir| {
        edit_manifest(dir, |j| {
            j["tensors"].as_array_mut().unwrap().retain(|t| !(t["component"] == "unet" && t["name"] == "conv_in.weight"))
        })
    })
    .unwrap();
    let error = StableDiffusion::load(gpu(), &package, WeightPrecision::AsStored).err().unwrap();
    assert!(
        matches!(&error, Error::MissingTensor { file, name } if file.ends_with("manifest.json [unet]") && name == "conv_in.weight"),
        "{error}"
    );

    let package =
        broken_package("wrong-shape", |dir| edit_manifest(dir, |j| j["components"]["unet"]["config"]["cross_attention_dim"] = 48.into()))
            .unwrap();
    let error = StableDiffusion::load(gpu(), &package, WeightPrecision::AsStored).err().unwrap();
    assert!(
        matches!(&error, Error::WeightShape { file, name, expected, found }
            if file.ends_with("manifest.json [unet]") && name.ends_with("attn2.to_k.weight") && expected[1] == 48 && found[1] == 32),
        "{error}"
    );
}

/// (component, tensor name, shape)
type Shapes = Vec<(String, String, Vec<usize>)>;

/// Full-size SD 1.5 and SD 2.1 tensor shapes (tests/fixtures/package_shapes.json, from
/// diffusers/transformers on the meta device) and torch's parameter counts.
fn full_size_shapes(model: &str) -> (Shapes, BTreeMap<String, u64>) {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path("package_shapes.json")).unwrap()).unwrap();
    let mut shapes = Vec::new();
    for component in ["text_encoder", "unet", "vae"] {
        for (name, shape) in json[model]["tensors"][component].as_object().unwrap() {
            let shape = shape.as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            shapes.push((component.to_string(), name.clone(), shape));
        }
    }
    let parameters = json[model]["parameters"].as_object().unwrap().iter().map(|(c, n)| (c.clone(), n.as_u64().unwrap())).collect();
    (shapes, parameters)
}

#[test]
fn full_size_package_sizes() {
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    let mut table = String::from("| model | quant | text_encoder | unet | vae | total MiB | shards |\n|---|---|---|---|---|---|---|");
    for model in ["sd15", "sd21"] {
        let (shapes, parameters) = full_size_shapes(model);
        for quantization in [Quantization::F16, Quantization::Q8, Quantization::Q4, Quantization::Mixed] {
            let size = package_size(
                shapes.iter().map(|(c, n, s)| (c.as_str(), n.as_str(), s.as_slice())),
                &Policy::new(quantization),
                webdiffusion::package::DEFAULT_SHARD_BYTES,
            );
            let columns: Vec<String> =
                ["text_encoder", "unet", "vae"].iter().map(|c| format!("{:.1}", mib(size.component_bytes(c)))).collect();
            table.push_str(&format!(
                "\n| {model} | {} | {} | {:.1} | {} |",
                quantization.name(),
                columns.join(" | "),
                mib(size.stream_bytes),
                size.shards
            ));
            // Bytes per parameter against torch's counts: 2 for f16 (the f32 position
            // table adds a little), 34/32 (q8) or 18/32 (q4) for the quantized bulk.
            for (component, &count) in &parameters {
                let per_parameter = size.component_bytes(component) as f64 / count as f64;
                let range = match quantization {
                    Quantization::F16 => 2.0..2.002,
                    Quantization::Q8 => 1.0625..1.08,
                    Quantization::Q4 => 0.5625..0.60,
                    Quantization::Mixed => 0.5625..1.08,
                };
                assert!(range.contains(&per_parameter), "{model} {} {component}: {per_parameter} bytes per parameter", quantization.name());
            }
            assert!(size.stream_bytes.div_ceil(webdiffusion::package::DEFAULT_SHARD_BYTES) as usize == size.shards);
        }
    }
    eprintln!("{table}");
}

/// `StableDiffusion::open`, the front ends' one way in: a package folder, the same package
/// from memory (the browser's route, through a `PackageSource`) and a folder that is
/// neither package nor diffusers model. The two routes give the same model (same image)
/// and the manifest's model hash; a diffusers folder's hash is asserted against coreutils
/// by tests/cli.rs.
#[test]
fn open_takes_a_package_folder_or_any_package_source() {
    let mut options = options(Quantization::F16);
    options.model_hash = Some("0123456789".into());
    let files = package_bytes(&source("sd1-tiny"), &options);
    let dir = write_folder("open", &files);
    let mut reports: Vec<LoadProgress> = Vec::new();
    let from_folder = pollster::block_on(StableDiffusion::open(gpu(), ModelSource::Folder(&dir), WeightPrecision::AsStored, &mut |p| {
        reports.push(p.clone())
    }))
    .unwrap();
    let last = reports.last().expect("no progress reported");
    assert!(last.total > 0 && last.done == last.total, "{last:?}");

    let leaked: Vec<(&'static str, &'static [u8])> =
        files.into_iter().map(|(path, bytes)| (&*Box::leak(path.into_boxed_str()), &*Box::leak(bytes.into_boxed_slice()))).collect();
    let memory = MemorySource::new("in memory", leaked);
    let from_memory =
        pollster::block_on(StableDiffusion::open(gpu(), ModelSource::Package(&memory), WeightPrecision::AsStored, &mut |_| {})).unwrap();
    for sd in [&from_folder, &from_memory] {
        assert_eq!(sd.model_hash(), Some("0123456789"));
    }
    let image = |sd: &StableDiffusion| read(&sd.generate(&request()).unwrap().image);
    assert_eq!(image(&from_folder), image(&from_memory));

    let neither = write_folder("open-neither", &BTreeMap::from([("notes.txt".to_string(), b"no model here".to_vec())]));
    let error = pollster::block_on(StableDiffusion::open(gpu(), ModelSource::Folder(&neither), WeightPrecision::AsStored, &mut |_| {}))
        .err()
        .expect("a folder without a model opened");
    assert!(error.to_string().contains(neither.to_str().unwrap()), "{error}");
    for folder in [dir, neither] {
        std::fs::remove_dir_all(folder).unwrap();
    }
}
