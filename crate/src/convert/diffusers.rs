//! Reading a diffusers Stable Diffusion folder (`model_index.json`, `unet/`, `vae/`,
//! `text_encoder/`, `scheduler/`, `tokenizer/`, optionally `preview_decoder/`) into a
//! `SourceModel`.

use std::collections::BTreeMap;

use safetensors::tensor::Dtype;

use super::{HostTensor, SourceComponent, SourceModel};
use crate::error::{Error, Result};
use crate::loader::{ModelFiles, SafetensorsFile, component_file, weights_file};
use crate::pipeline::{PREVIEW_DECODER, has_preview_decoder};

/// The networks a Stable Diffusion pipeline runs, in the order a package stores them.
pub const COMPONENTS: [&str; 3] = ["text_encoder", "unet", "vae"];

/// The tokenizer files `ClipTokenizer` reads (the last two are optional).
pub const TOKENIZER_FILES: [&str; 4] = ["vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"];

const SCHEDULER_CONFIG: &str = "scheduler/scheduler_config.json";

/// Non-float buffers that checkpoints carry but no model reads (CLIP's `arange` of
/// positions, stored as i64): dropped rather than widened.
const INTEGER_BUFFERS: [&str; 2] = ["text_model.embeddings.position_ids", "embeddings.position_ids"];

/// Reads every component (and the optional preview decoder), the scheduler config, `model_index.json` and the tokenizer.
/// `name` is the provenance recorded in the package (usually the folder's name).
pub fn read_diffusers(files: &dyn ModelFiles, name: &str) -> Result<SourceModel> {
    let mut components = BTreeMap::new();
    for component in COMPONENTS {
        components.insert(component.to_string(), read_component(files, component)?);
    }
    if has_preview_decoder(files) {
        components.insert(PREVIEW_DECODER.to_string(), read_component(files, PREVIEW_DECODER)?);
    }
    let mut tokenizer = BTreeMap::new();
    for file in TOKENIZER_FILES {
        let path = component_file("tokenizer", file);
        if files.exists(&path) {
            tokenizer.insert(file.to_string(), files.read(&path)?);
        }
    }
    let family = detect_family(&components, &files.describe(&component_file("text_encoder", "config.json")))?;
    Ok(SourceModel {
        family,
        name: name.to_string(),
        components,
        scheduler: Some(read_json(files, SCHEDULER_CONFIG)?),
        model_index: Some(read_json(files, "model_index.json")?),
        tokenizer,
    })
}

/// One component folder: its `config.json` and its weights (left in their file).
pub fn read_component(files: &dyn ModelFiles, component: &str) -> Result<SourceComponent> {
    let config = read_json(files, &component_file(component, "config.json"))?;
    let path = weights_file(files, component)?;
    let tensors = read_safetensors(&SafetensorsFile::open(files.open(&path)?, files.describe(&path))?)?;
    Ok(SourceComponent { config, tensors })
}

/// Every float tensor (f32, f16 or bf16) of a safetensors file, read as f32 when asked for.
pub fn read_safetensors(file: &SafetensorsFile) -> Result<BTreeMap<String, HostTensor>> {
    file.tensors()
        .filter(|(name, info)| matches!(info.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) || !INTEGER_BUFFERS.contains(name))
        .map(|(name, _)| Ok((name.to_string(), HostTensor::in_file(file, name)?)))
        .collect()
}

/// A JSON file as a value. Python writes non-finite floats as bare `-Infinity`; they
/// become strings, which the scheduler config reader accepts.
fn read_json(files: &dyn ModelFiles, path: &str) -> Result<serde_json::Value> {
    let bytes = files.read(path)?;
    let format = |detail: String| Error::Format { file: files.describe(path), detail };
    let text = std::str::from_utf8(&bytes).map_err(|e| format(e.to_string()))?;
    serde_json::from_str(&crate::schedulers::config::quote_non_finite(text)).map_err(|e| format(e.to_string()))
}

/// SD 1.x uses OpenAI's CLIP-L (quick GELU), SD 2.x OpenCLIP-H (exact GELU): the text
/// encoder's activation tells them apart at any size.
fn detect_family(components: &BTreeMap<String, SourceComponent>, file: &str) -> Result<String> {
    let activation = components.get("text_encoder").and_then(|c| c.config.get("hidden_act")).and_then(|v| v.as_str());
    match activation {
        Some("quick_gelu") => Ok("sd1".into()),
        Some("gelu") => Ok("sd2".into()),
        other => Err(Error::Unsupported { file: file.to_string(), detail: format!("a text encoder with hidden_act {other:?}") }),
    }
}
