//! One network of a `SourceModel` seen as a model folder whose tensors are already on
//! the GPU (f32), so that the converter can run it: the VAE, to fit the preview map.

use std::collections::HashMap;

use super::SourceModel;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::loader::{ModelFiles, UploadedWeights, component_file};

pub struct ComponentOnGpu<'a> {
    model: &'a SourceModel,
    component: String,
    weights: UploadedWeights,
}

impl<'a> ComponentOnGpu<'a> {
    /// Uploads `component`'s tensors.
    pub fn upload(gpu: &Gpu, model: &'a SourceModel, component: &str) -> Result<Self> {
        let source = model
            .components
            .get(component)
            .ok_or_else(|| Error::Io { path: format!("{}/{component}", model.name), detail: "the model has no such component".into() })?;
        let tensors = source
            .tensors
            .iter()
            .map(|(name, t)| Ok((name.clone(), gpu.upload_f32(&t.shape, &t.values()?)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        let weights = UploadedWeights { file: format!("{}/{component}", model.name), tensors };
        Ok(Self { model, component: component.to_string(), weights })
    }

    fn config_path(&self) -> String {
        component_file(&self.component, "config.json")
    }
}

impl ModelFiles for ComponentOnGpu<'_> {
    fn read(&self, path: &str) -> Result<Vec<u8>> {
        if path != self.config_path() {
            return Err(Error::Io { path: self.describe(path), detail: "no such file".into() });
        }
        let config = &self.model.components[&self.component].config;
        serde_json::to_vec(config).map_err(|e| Error::Format { file: self.describe(path), detail: e.to_string() })
    }

    fn exists(&self, path: &str) -> bool {
        path == self.config_path()
    }

    fn describe(&self, path: &str) -> String {
        format!("{}/{path}", self.model.name)
    }

    fn uploaded(&self, component: &str) -> Option<UploadedWeights> {
        (component == self.component).then(|| self.weights.clone())
    }
}
