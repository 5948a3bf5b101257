//! One component's weights, served by name as a model asks for them, with every name
//! and shape checked against what the config implies: a safetensors file uploaded
//! tensor by tensor, or a package's tensors already on the GPU in their storage type.
//! The builder also keeps the registry of the layers LoRAs can adapt, which is why it
//! lives with the models, above `loader` (the files) and `lora`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use safetensors::tensor::Dtype;

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::kernels::elementwise::{self as ew, Unary};
use crate::loader::{ByteRanges, ModelFiles, SafetensorsFile, UploadedWeights, WeightPrecision, weights_file, widen};
use crate::lora::LoraTargets;

pub struct Weights {
    gpu: Gpu,
    file: String,
    store: Store,
    precision: WeightPrecision,
    used: Mutex<BTreeSet<String>>,
    /// Where the component's LoRA-adaptable layers register as they load.
    lora_targets: LoraTargets,
}

enum Store {
    /// A safetensors file, its tensors read and uploaded on request.
    File(SafetensorsFile),
    /// Tensors on the GPU in the storage type a package chose.
    Uploaded(HashMap<String, Tensor>),
}

impl Weights {
    /// The weights of one component folder (`unet`, `vae`, `text_encoder`), or the
    /// component's tensors where `files` has them on the GPU already (a package, whose
    /// storage types stand: `precision` applies to files only).
    pub fn load(gpu: &Gpu, files: &dyn ModelFiles, component: &str, precision: WeightPrecision) -> Result<Self> {
        if let Some(uploaded) = files.uploaded(component) {
            return Ok(Self::from_uploaded(gpu, uploaded));
        }
        let path = weights_file(files, component)?;
        Self::from_file(gpu, files.describe(&path), files.open(&path)?, precision)
    }

    /// A safetensors file in memory; `file` names it in errors.
    pub fn from_bytes(gpu: &Gpu, file: String, bytes: Vec<u8>, precision: WeightPrecision) -> Result<Self> {
        Self::from_file(gpu, file, Arc::new(bytes), precision)
    }

    /// A safetensors file, read a tensor at a time as the model asks for them.
    pub fn from_file(gpu: &Gpu, file: String, source: Arc<dyn ByteRanges>, precision: WeightPrecision) -> Result<Self> {
        let store = Store::File(SafetensorsFile::open(source, file.clone())?);
        Ok(Self { gpu: gpu.clone(), file, store, precision, used: Mutex::default(), lora_targets: LoraTargets::default() })
    }

    pub fn from_uploaded(gpu: &Gpu, uploaded: UploadedWeights) -> Self {
        let store = Store::Uploaded(uploaded.tensors);
        let precision = WeightPrecision::AsStored;
        Self { gpu: gpu.clone(), file: uploaded.file, store, precision, used: Mutex::default(), lora_targets: LoraTargets::default() }
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    /// The registry of this component's layers that LoRAs can adapt (see `lora`): layers
    /// register as they load, the model keeps it to attach LoRAs later.
    pub fn lora_targets(&self) -> &LoraTargets {
        &self.lora_targets
    }

    pub fn contains(&self, name: &str) -> bool {
        match &self.store {
            Store::File(file) => file.info(name).is_some(),
            Store::Uploaded(tensors) => tensors.contains_key(name),
        }
    }

    /// A weight in the storage precision policy: for matmul/conv weights, biases and
    /// norm parameters, which the kernels read as f32 or packed f16.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if let Store::Uploaded(tensors) = &self.store {
            return self.uploaded(tensors, name, shape).cloned();
        }
        let (dtype, data) = self.raw(name, shape)?;
        match (dtype, self.precision) {
            (Dtype::F16, _) => {
                let halves: Vec<half::f16> = bytemuck::pod_collect_to_vec(&data);
                self.gpu.upload_f16(shape, &halves)
            }
            (_, WeightPrecision::F16) => self.gpu.upload_f32_as_f16(shape, &widen(dtype, &data)),
            (_, WeightPrecision::AsStored) => self.gpu.upload_f32(shape, &widen(dtype, &data)),
        }
    }

    /// A weight as f32 on the GPU, whatever the file stores (for operands the kernels
    /// need in f32, such as embeddings that are added to activations).
    pub fn get_f32(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let Store::Uploaded(tensors) = &self.store else {
            return self.gpu.upload_f32(shape, &self.values(name, shape)?);
        };
        let tensor = self.uploaded(tensors, name, shape)?;
        match tensor.dtype() {
            DType::F32 => Ok(tensor.clone()),
            // Widening is exact.
            DType::F16 => ew::unary(&self.gpu, tensor, Unary::Identity),
            other => Err(Error::Unsupported {
                file: self.file.clone(),
                detail: format!("tensor {name} stored as {}, where f32 is needed", other.name()),
            }),
        }
    }

    /// A weight's values on the CPU, widened to f32 (from a weights file only: a
    /// package's tensors go straight to the GPU).
    pub fn values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        if let Store::Uploaded(_) = &self.store {
            return Err(Error::Unsupported { file: self.file.clone(), detail: format!("reading tensor {name} back to the CPU") });
        }
        let (dtype, data) = self.raw(name, shape)?;
        Ok(widen(dtype, &data))
    }

    /// The names no model code asked for: a config that does not match the file
    /// leaves weights behind, which is worth an error rather than a silent wrong model.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let names: Vec<&str> = match &self.store {
            Store::File(file) => file.tensors().map(|(name, _)| name).collect(),
            Store::Uploaded(tensors) => tensors.keys().map(String::as_str).collect(),
        };
        let mut unused: Vec<String> = names.into_iter().filter(|name| !used.contains(*name)).map(str::to_string).collect();
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

    /// A float tensor's type and bytes from the file, once its shape checks out.
    fn raw(&self, name: &str, shape: &[usize]) -> Result<(Dtype, Vec<u8>)> {
        let Store::File(file) = &self.store else {
            return Err(Error::Unsupported { file: self.file.clone(), detail: format!("reading tensor {name} as file bytes") });
        };
        let info = file.info(name).ok_or_else(|| self.missing(name))?;
        self.check_shape(name, shape, &info.shape)?;
        Ok((file.float_info(name)?.dtype, file.bytes(name)?))
    }

    fn uploaded<'t>(&self, tensors: &'t HashMap<String, Tensor>, name: &str, shape: &[usize]) -> Result<&'t Tensor> {
        let tensor = tensors.get(name).ok_or_else(|| self.missing(name))?;
        self.check_shape(name, shape, tensor.shape())?;
        Ok(tensor)
    }

    fn missing(&self, name: &str) -> Error {
        Error::MissingTensor { file: self.file.clone(), name: name.to_string() }
    }

    /// Refuses a stored shape other than the config's; else marks the tensor used.
    fn check_shape(&self, name: &str, expected: &[usize], found: &[usize]) -> Result<()> {
        if found != expected {
            return Err(Error::WeightShape {
                file: self.file.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
                found: found.to_vec(),
            });
        }
        self.used.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string());
        Ok(())
    }
}
