//! A checkpoint's safetensors file: its tensor names, shapes and values (widened to
//! f32), with errors that name the file and the tensor.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use safetensors::SafeTensors;
use safetensors::tensor::Dtype;

use crate::convert::HostTensor;
use crate::error::{Error, Result};

pub(super) struct CheckpointFile<'a> {
    file: &'a str,
    tensors: SafeTensors<'a>,
    names: BTreeSet<String>,
}

impl<'a> CheckpointFile<'a> {
    pub fn parse(bytes: &'a [u8], file: &'a str) -> Result<Self> {
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| Error::Format { file: file.to_string(), detail: e.to_string() })?;
        let names = tensors.iter().map(|(name, _)| name.to_string()).collect();
        Ok(Self { file, tensors, names })
    }

    pub fn file(&self) -> &str {
        self.file
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// The names that start with `prefix`, sorted.
    pub fn names_under<'s>(&'s self, prefix: &'s str) -> impl Iterator<Item = &'s str> {
        let from: (Bound<&str>, Bound<&str>) = (Bound::Included(prefix), Bound::Unbounded);
        self.names.range::<str, _>(from).map(String::as_str).take_while(move |name| name.starts_with(prefix))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    pub fn any_under(&self, prefix: &str) -> bool {
        self.names_under(prefix).next().is_some()
    }

    /// The distinct numbers `N` of the names `{prefix}N.…` (block and layer indices).
    pub fn indices(&self, prefix: &str) -> BTreeSet<usize> {
        self.names_under(prefix).filter_map(|name| name[prefix.len()..].split('.').next()?.parse().ok()).collect()
    }

    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.tensors.tensor(name).map_err(|_| self.missing(name))?.shape().to_vec())
    }

    /// A tensor's values as f32 (f16, bf16 and f32 files; f16 and bf16 widen exactly).
    pub fn values(&self, name: &str) -> Result<HostTensor> {
        let view = self.tensors.tensor(name).map_err(|_| self.missing(name))?;
        let data = view.data();
        let values = match view.dtype() {
            Dtype::F32 => bytemuck::pod_collect_to_vec(data),
            Dtype::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(data).into_iter().map(half::f16::to_f32).collect(),
            Dtype::BF16 => bytemuck::pod_collect_to_vec::<u8, half::bf16>(data).into_iter().map(half::bf16::to_f32).collect(),
            other => return Err(self.unsupported(format!("tensor {name} of type {other:?}"))),
        };
        Ok(HostTensor { shape: view.shape().to_vec(), values })
    }

    /// Values of the 1-d f32/f16/bf16 tensor `name`, if the file has it.
    pub fn vector(&self, name: &str) -> Result<Option<Vec<f32>>> {
        if !self.contains(name) {
            return Ok(None);
        }
        let tensor = self.values(name)?;
        if tensor.shape.len() != 1 {
            return Err(Error::WeightShape { file: self.file.to_string(), name: name.to_string(), expected: vec![0], found: tensor.shape });
        }
        Ok(Some(tensor.values))
    }

    pub fn missing(&self, name: &str) -> Error {
        Error::MissingTensor { file: self.file.to_string(), name: name.to_string() }
    }

    pub fn format(&self, detail: impl Into<String>) -> Error {
        Error::Format { file: self.file.to_string(), detail: detail.into() }
    }

    pub fn unsupported(&self, detail: impl Into<String>) -> Error {
        Error::Unsupported { file: self.file.to_string(), detail: detail.into() }
    }

    /// Fails naming up to five of `names` (tensors that fit no known layout).
    pub fn refuse_unknown(&self, names: &[&str], context: &str) -> Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        let shown: Vec<&str> = names.iter().take(5).copied().collect();
        let more = if names.len() > shown.len() { format!(" and {} more", names.len() - shown.len()) } else { String::new() };
        Err(self.format(format!("unknown tensors {context}: {}{more}", shown.join(", "))))
    }
}

/// Tensors keyed by name, as a component holds them.
pub(super) type Tensors = BTreeMap<String, HostTensor>;
