//! Models between a source (a diffusers folder, a single-file checkpoint) and a
//! webdiffusion package: every component's config and tensors, so that readers, LoRA
//! merging and the package writer share one representation. Tensors stay in their
//! source file until asked for, so a conversion holds about one tensor at a time.

pub mod checkpoint;
pub mod diffusers;
mod host_tensor;
mod lora_merge;
mod on_gpu;

pub use host_tensor::HostTensor;
pub use lora_merge::merge_lora;
pub use on_gpu::ComponentOnGpu;

use std::collections::BTreeMap;

/// A whole Stable Diffusion model as the converter holds it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceModel {
    /// `sd1`, `sd2`, ...: detected from the configs or the tensors.
    pub family: String,
    /// Provenance: the source folder or file name.
    pub name: String,
    /// `unet`, `vae`, `text_encoder`, ...
    pub components: BTreeMap<String, SourceComponent>,
    /// diffusers' `scheduler_config.json`.
    pub scheduler: Option<serde_json::Value>,
    /// diffusers' `model_index.json`.
    pub model_index: Option<serde_json::Value>,
    /// The tokenizer folder's files by bare file name (`vocab.json`, `merges.txt`,
    /// `special_tokens_map.json`, `tokenizer_config.json`); may be empty.
    pub tokenizer: BTreeMap<String, Vec<u8>>,
}

/// One network: its diffusers `config.json` and its tensors by diffusers name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceComponent {
    pub config: serde_json::Value,
    pub tensors: BTreeMap<String, HostTensor>,
}
