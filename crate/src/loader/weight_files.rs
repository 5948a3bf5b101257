//! Where a component's weights come from, below the models: the file diffusers names,
//! the storage precision asked for, and tensors a package has already put on the GPU.

use std::collections::HashMap;

use super::component_file;
use super::files::ModelFiles;
use crate::error::{Error, Result};
use crate::gpu::Tensor;

/// How weights are stored on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightPrecision {
    /// As the file has them: f16 stays packed f16, f32 stays f32 (bf16 becomes f32).
    #[default]
    AsStored,
    /// Everything the kernels can read as f16 is stored packed f16: half the memory.
    F16,
}

/// A component's tensors already on the GPU; `file` names their origin in errors.
#[derive(Clone)]
pub struct UploadedWeights {
    pub file: String,
    pub tensors: HashMap<String, Tensor>,
}

/// The weight file names diffusers writes, preferred first.
const FILE_NAMES: [&str; 4] =
    ["diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors"];

/// The path of a component's weights file (the first of diffusers' names present).
pub fn weights_file(files: &dyn ModelFiles, component: &str) -> Result<String> {
    FILE_NAMES.iter().map(|name| component_file(component, name)).find(|path| files.exists(path)).ok_or_else(|| Error::Io {
        path: files.describe(component),
        detail: format!("no weights file (looked for {})", FILE_NAMES.join(", ")),
    })
}
