//! One safetensors file of weights, uploaded tensor by tensor as a model asks for
//! them, with every name and shape checked against what the config implies.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorInfo};

use super::component_file;
use super::files::ModelFiles;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};

/// How weights are stored on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightPrecision {
    /// As the file has them: f16 stays packed f16, f32 stays f32 (bf16 becomes f32).
    #[default]
    AsStored,
    /// Everything the kernels can read as f16 is stored packed f16: half the memory.
    F16,
}

pub struct Weights {
    gpu: Gpu,
    file: String,
    bytes: Vec<u8>,
    data_start: usize,
    index: HashMap<String, TensorInfo>,
    precision: WeightPrecision,
    used: Mutex<BTreeSet<String>>,
}

/// The weight file names diffusers writes, preferred first.
const FILE_NAMES: [&str; 4] =
    ["diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors"];

impl Weights {
    /// The weights of one component folder (`unet`, `vae`, `text_encoder`).
    pub fn load(gpu: &Gpu, files: &dyn ModelFiles, component: &str, precision: WeightPrecision) -> Result<Self> {
        let path = Self::file_of(files, component)?;
        Self::from_bytes(gpu, files.describe(&path), files.read(&path)?, precision)
    }

    /// The path of a component's weights file (the first of diffusers' names present).
    pub fn file_of(files: &dyn ModelFiles, component: &str) -> Result<String> {
        FILE_NAMES.iter().map(|name| component_file(component, name)).find(|path| files.exists(path)).ok_or_else(|| Error::Io {
            path: files.describe(component),
            detail: format!("no weights file (looked for {})", FILE_NAMES.join(", ")),
        })
    }

    /// Parses a whole safetensors file; `file` names it in errors.
    pub fn from_bytes(gpu: &Gpu, file: String, bytes: Vec<u8>, precision: WeightPrecision) -> Result<Self> {
        let (header_len, metadata) =
            SafeTensors::read_metadata(&bytes).map_err(|e| Error::Format { file: file.clone(), detail: e.to_string() })?;
        let index = metadata.tensors().into_iter().map(|(name, info)| (name, info.clone())).collect();
        Ok(Self { gpu: gpu.clone(), file, bytes, data_start: 8 + header_len, index, precision, used: Mutex::default() })
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// A weight in the storage precision policy: for matmul/conv weights, biases and
    /// norm parameters, which the kernels read as f32 or packed f16.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let (info, data) = self.raw(name, shape)?;
        match (info.dtype, self.precision) {
            (Dtype::F16, _) => {
                let halves: Vec<half::f16> = bytemuck::pod_collect_to_vec(data);
                self.gpu.upload_f16(shape, &halves)
            }
            (_, WeightPrecision::F16) => self.gpu.upload_f32_as_f16(shape, &self.to_f32(name, info, data)?),
            (_, WeightPrecision::AsStored) => self.gpu.upload_f32(shape, &self.to_f32(name, info, data)?),
        }
    }

    /// A weight as f32 on the GPU, whatever the file stores (for operands the kernels
    /// need in f32, such as embeddings that are added to activations).
    pub fn get_f32(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.gpu.upload_f32(shape, &self.values(name, shape)?)
    }

    /// A weight's values on the CPU, widened to f32.
    pub fn values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (info, data) = self.raw(name, shape)?;
        self.to_f32(name, info, data)
    }

    /// The names no model code asked for: a config that does not match the file
    /// leaves weights behind, which is worth an error rather than a silent wrong model.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let mut unused: Vec<String> = self.index.keys().filter(|name| !used.contains(*name)).cloned().collect();
        unused.sort();
        unused
    }

    /// Fails naming the first few unused tensors, if any.
    pub fn ensure_all_used(&self) -> Result<()> {
        let unused = self.unused();
        if unused.is_empty() {
            return Ok(());
        }
        let shown: Vec<&str> = unused.iter().take(5).map(String::as_str).collect();
        Err(Error::Format {
            file: self.file.clone(),
            detail: format!("{} tensors do not belong to the configured model, e.g. {}", unused.len(), shown.join(", ")),
        })
    }

    fn raw(&self, name: &str, shape: &[usize]) -> Result<(&TensorInfo, &[u8])> {
        let info = self.index.get(name).ok_or_else(|| Error::MissingTensor { file: self.file.clone(), name: name.to_string() })?;
        if info.shape != shape {
            return Err(Error::WeightShape {
                file: self.file.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        self.used.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string());
        let (start, end) = info.data_offsets;
        Ok((info, &self.bytes[self.data_start + start..self.data_start + end]))
    }

    fn to_f32(&self, name: &str, info: &TensorInfo, data: &[u8]) -> Result<Vec<f32>> {
        Ok(match info.dtype {
            Dtype::F32 => bytemuck::pod_collect_to_vec(data),
            Dtype::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(data).into_iter().map(half::f16::to_f32).collect(),
            Dtype::BF16 => bytemuck::pod_collect_to_vec::<u8, half::bf16>(data).into_iter().map(half::bf16::to_f32).collect(),
            other => {
                return Err(Error::Unsupported { file: self.file.clone(), detail: format!("tensor {name} of type {other:?}") });
            }
        })
    }
}
