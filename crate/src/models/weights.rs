//! One component's weights, served by name as a model asks for them, with every name
//! and shape checked against what the config implies: a safetensors file uploaded
//! tensor by tensor, or a package's tensors already on the GPU in their storage type.
//! As candle's `VarBuilder` does, the builder owns the name prefixes: `w.at("norm1")`
//! is the same weights scoped one level down, so each layer loads by its own names
//! and never joins a prefix. It also keeps the registry of the layers LoRAs can adapt,
//! which is why it lives with the models, above `loader` (the files) and `lora`.

use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use safetensors::tensor::Dtype;

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::kernels::elementwise::{self as ew, Unary};
use crate::loader::{ByteRanges, ModelFiles, SafetensorsFile, UploadedWeights, WeightPrecision, weights_file, widen};
use crate::lora::{LayerShape, LoraTargets, SidePathSlot};

/// A component's weights at a name prefix. Cloning and scoping share the component
/// (loading runs on one thread).
#[derive(Clone)]
pub struct Weights {
    component: Rc<Component>,
    /// Where this scope's names start (`""` at the component's root).
    prefix: String,
}

struct Component {
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
        Ok(Self::new(Component { gpu: gpu.clone(), file, store, precision, used: Mutex::default(), lora_targets: LoraTargets::default() }))
    }

    pub fn from_uploaded(gpu: &Gpu, uploaded: UploadedWeights) -> Self {
        let store = Store::Uploaded(uploaded.tensors);
        let precision = WeightPrecision::AsStored;
        Self::new(Component {
            gpu: gpu.clone(),
            file: uploaded.file,
            store,
            precision,
            used: Mutex::default(),
            lora_targets: LoraTargets::default(),
        })
    }

    fn new(component: Component) -> Self {
        Self { component: Rc::new(component), prefix: String::new() }
    }

    /// The same weights one level down: names under `prefix.name`.
    pub fn at(&self, name: &str) -> Weights {
        Weights { component: self.component.clone(), prefix: self.full_name(name) }
    }

    /// This scope's prefix: the name of the layer it loads.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `name` under this scope, as the file names it.
    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) }
    }

    /// Registers the layer at this scope's prefix as one LoRAs can adapt.
    pub fn register_lora(&self, shape: LayerShape) -> SidePathSlot {
        self.component.lora_targets.register(&self.prefix, shape)
    }

    pub fn gpu(&self) -> &Gpu {
        &self.component.gpu
    }

    pub fn file(&self) -> &str {
        &self.component.file
    }

    /// The registry of this component's layers that LoRAs can adapt (see `lora`): layers
    /// register as they load, the model keeps it to attach LoRAs later.
    pub fn lora_targets(&self) -> &LoraTargets {
        &self.component.lora_targets
    }

    pub fn contains(&self, name: &str) -> bool {
        let name = &self.full_name(name);
        match &self.component.store {
            Store::File(file) => file.info(name).is_some(),
            Store::Uploaded(tensors) => tensors.contains_key(name),
        }
    }

    /// A weight in the storage precision policy: for matmul/conv weights, biases and
    /// norm parameters, which the kernels read as f32 or packed f16.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let name = &self.full_name(name);
        if let Store::Uploaded(tensors) = &self.component.store {
            return self.uploaded(tensors, name, shape).cloned();
        }
        let (dtype, data) = self.raw(name, shape)?;
        match (dtype, self.component.precision) {
            (Dtype::F16, _) => {
                let halves: Vec<half::f16> = bytemuck::pod_collect_to_vec(&data);
                self.component.gpu.upload_f16(shape, &halves)
            }
            (_, WeightPrecision::F16) => self.component.gpu.upload_f32_as_f16(shape, &widen(dtype, &data)),
            (_, WeightPrecision::AsStored) => self.component.gpu.upload_f32(shape, &widen(dtype, &data)),
        }
    }

    /// A weight as f32 on the GPU, whatever the file stores (for operands the kernels
    /// need in f32, such as embeddings that are added to activations).
    pub fn get_f32(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let Store::Uploaded(tensors) = &self.component.store else {
            return self.component.gpu.upload_f32(shape, &self.values(name, shape)?);
        };
        let name = &self.full_name(name);
        let tensor = self.uploaded(tensors, name, shape)?;
        match tensor.dtype() {
            DType::F32 => Ok(tensor.clone()),
            // Widening is exact.
            DType::F16 => ew::unary(&self.component.gpu, tensor, Unary::Identity),
            other => Err(Error::Unsupported {
                file: self.component.file.clone(),
                detail: format!("tensor {name} stored as {}, where f32 is needed", other.name()),
            }),
        }
    }

    /// A weight's values on the CPU, widened to f32 (from a weights file only: a
    /// package's tensors go straight to the GPU).
    pub fn values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let name = &self.full_name(name);
        if let Store::Uploaded(_) = &self.component.store {
            return Err(Error::Unsupported { file: self.component.file.clone(), detail: format!("reading tensor {name} back to the CPU") });
        }
        let (dtype, data) = self.raw(name, shape)?;
        Ok(widen(dtype, &data))
    }

    /// The names no model code asked for: a config that does not match the file
    /// leaves weights behind, which is worth an error rather than a silent wrong model.
    pub fn unused(&self) -> Vec<String> {
        let used = self.component.used.lock().unwrap_or_else(|p| p.into_inner());
        let names: Vec<&str> = match &self.component.store {
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
            file: self.component.file.clone(),
            detail: format!("{} tensors do not belong to the configured model, e.g. {}", unused.len(), shown.join(", ")),
        })
    }

    /// A float tensor's type and bytes from the file, once its shape checks out.
    fn raw(&self, name: &str, shape: &[usize]) -> Result<(Dtype, Vec<u8>)> {
        let Store::File(file) = &self.component.store else {
            return Err(Error::Unsupported { file: self.component.file.clone(), detail: format!("reading tensor {name} as file bytes") });
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
        Error::MissingTensor { file: self.component.file.clone(), name: name.to_string() }
    }

    /// Refuses a stored shape other than the config's; else marks the tensor used.
    fn check_shape(&self, name: &str, expected: &[usize], found: &[usize]) -> Result<()> {
        if found != expected {
            return Err(Error::WeightShape {
                file: self.component.file.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
                found: found.to_vec(),
            });
        }
        self.component.used.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string());
        Ok(())
    }
}
