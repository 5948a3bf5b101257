//! A checkpoint's safetensors file: its tensor names, shapes and values (widened to
//! f32 when read), with errors that name the file and the tensor.

use std::collections::{BTreeMap, BTreeSet};

use crate::convert::HostTensor;
use crate::error::{Error, Result};
use crate::loader::SafetensorsFile;

pub(super) struct CheckpointFile<'a> {
    tensors: &'a SafetensorsFile,
}

impl<'a> CheckpointFile<'a> {
    pub fn new(tensors: &'a SafetensorsFile) -> Self {
        Self { tensors }
    }

    pub fn file(&self) -> &str {
        self.tensors.file()
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.tensors().map(|(name, _)| name)
    }

    /// The names that start with `prefix`, sorted.
    pub fn names_under<'s>(&'s self, prefix: &'s str) -> impl Iterator<Item = &'s str> {
        self.tensors.tensors_from(prefix).map(|(name, _)| name).take_while(move |name| name.starts_with(prefix))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.info(name).is_some()
    }

    pub fn any_under(&self, prefix: &str) -> bool {
        self.names_under(prefix).next().is_some()
    }

    /// The distinct numbers `N` of the names `{prefix}N.…` (block and layer indices).
    pub fn indices(&self, prefix: &str) -> BTreeSet<usize> {
        self.names_under(prefix).filter_map(|name| name[prefix.len()..].split('.').next()?.parse().ok()).collect()
    }

    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.tensors.info(name).ok_or_else(|| self.missing(name))?.shape.clone())
    }

    /// A float tensor (f16, bf16 or f32; f16 and bf16 widen exactly), read when needed.
    pub fn values(&self, name: &str) -> Result<HostTensor> {
        HostTensor::in_file(self.tensors, name)
    }

    /// Values of the 1-d f32/f16/bf16 tensor `name`, if the file has it.
    pub fn vector(&self, name: &str) -> Result<Option<Vec<f32>>> {
        if !self.contains(name) {
            return Ok(None);
        }
        let tensor = self.values(name)?;
        if tensor.shape.len() != 1 {
            return Err(Error::WeightShape {
                file: self.file().to_string(),
                name: name.to_string(),
                expected: vec![0],
                found: tensor.shape,
            });
        }
        Ok(Some(tensor.into_values()?))
    }

    pub fn missing(&self, name: &str) -> Error {
        Error::MissingTensor { file: self.file().to_string(), name: name.to_string() }
    }

    pub fn format(&self, detail: impl Into<String>) -> Error {
        Error::Format { file: self.file().to_string(), detail: detail.into() }
    }

    pub fn unsupported(&self, detail: impl Into<String>) -> Error {
        Error::Unsupported { file: self.file().to_string(), detail: detail.into() }
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
