//! Writing a `SourceModel` as a package: every tensor in its policy's storage type,
//! laid out in component order in one stream cut into shards of a fixed size, with
//! SHA-256s, and the manifest last. The same model and options give the same bytes.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::manifest::{ALIGNMENT, Component, FORMAT, FileEntry, MANIFEST, Manifest, ShardEntry, TensorEntry, VERSION};
use super::policy::Policy;
use crate::convert::diffusers::COMPONENTS;
use crate::convert::{SourceComponent, SourceModel};
use crate::error::{Error, Result};
use crate::gpu::DType;
use crate::loader::LatentRgb;
use crate::quant;

/// The default shard size: small enough for a browser to cache and retry each one.
pub const DEFAULT_SHARD_BYTES: u64 = 16 << 20;

pub struct WriteOptions {
    pub policy: Policy,
    /// Every shard but the last is exactly this long; a multiple of 256.
    pub shard_bytes: u64,
    /// Provenance recorded in the manifest (the source and the converter).
    pub source: String,
    pub model_hash: Option<String>,
    /// The VAE's preview map (see `pipeline::fit_latent_rgb`).
    pub latent_rgb: Option<LatentRgb>,
}

/// Writes the package's files through `write(path, bytes)`: the shards in order, then
/// the tokenizer files, then `manifest.json`. Returns the manifest.
pub fn write_package(model: &SourceModel, options: &WriteOptions, write: &mut dyn FnMut(&str, &[u8]) -> Result<()>) -> Result<Manifest> {
    if options.shard_bytes == 0 || !options.shard_bytes.is_multiple_of(ALIGNMENT) {
        return Err(Error::shape(
            "write_package",
            format!("the shard size must be a positive multiple of {ALIGNMENT}, got {}", options.shard_bytes),
        ));
    }
    let components = ordered_components(model);
    let shapes =
        components.iter().flat_map(|(c, component)| component.tensors.iter().map(move |(name, t)| (*c, name.as_str(), t.shape.as_slice())));
    let tensors = layout(shapes, &options.policy, options.shard_bytes);
    let values = components.iter().flat_map(|(_, component)| component.tensors.values());
    let mut stream = ShardStream::new(options.shard_bytes);
    for (entry, tensor) in tensors.iter().zip(values) {
        let dtype =
            DType::from_name(&entry.dtype).ok_or_else(|| Error::shape("write_package", format!("layout gave dtype {}", entry.dtype)))?;
        let bytes = quant::quantize(dtype, &tensor.shape, &tensor.values()?)
            .map_err(|e| Error::Format { file: model.name.clone(), detail: format!("tensor {}/{}: {e}", entry.component, entry.name) })?;
        stream.write_at(entry.shard as u64 * options.shard_bytes + entry.offset, &bytes, write)?;
    }
    let shards = stream.finish(write)?;

    let mut components: BTreeMap<String, Component> =
        model.components.iter().map(|(name, c)| (name.clone(), Component { config: Some(c.config.clone()), files: None })).collect();
    if let Some(config) = &model.scheduler {
        components.insert("scheduler".into(), Component { config: Some(config.clone()), files: None });
    }
    let mut files = Vec::new();
    for (name, bytes) in &model.tokenizer {
        let path = format!("tokenizer/{name}");
        write(&path, bytes)?;
        files.push(FileEntry { path, bytes: bytes.len() as u64, sha256: sha256_hex(bytes) });
    }
    if !files.is_empty() {
        components.insert("tokenizer".into(), Component { config: None, files: Some(files.iter().map(|f| f.path.clone()).collect()) });
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        family: model.family.clone(),
        name: model.name.clone(),
        source: options.source.clone(),
        model_hash: options.model_hash.clone(),
        components,
        model_index: Some(model.model_index.clone().unwrap_or_else(|| serde_json::json!({ "_class_name": "StableDiffusionPipeline" }))),
        latent_rgb: options.latent_rgb.clone(),
        files,
        shards,
        tensors,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Format { file: MANIFEST.into(), detail: e.to_string() })?;
    write(MANIFEST, &json)?;
    Ok(manifest)
}

/// Where each tensor goes, from names and shapes alone: its policy's storage type, and
/// the next multiple of `ALIGNMENT` in the shard stream after the previous tensor.
pub fn layout<'a>(tensors: impl Iterator<Item = (&'a str, &'a str, &'a [usize])>, policy: &Policy, shard_bytes: u64) -> Vec<TensorEntry> {
    let mut position = 0u64;
    tensors
        .map(|(component, name, shape)| {
            let dtype = policy.storage_type(component, name, shape);
            let start = position.next_multiple_of(ALIGNMENT);
            let length = quant::storage_bytes(dtype, shape);
            position = start + length;
            TensorEntry {
                component: component.to_string(),
                name: name.to_string(),
                shape: shape.to_vec(),
                dtype: dtype.name().to_string(),
                shard: (start / shard_bytes) as usize,
                offset: start % shard_bytes,
                length,
            }
        })
        .collect()
}

/// The networks in the order the pipeline first needs them, then any others by name.
fn ordered_components(model: &SourceModel) -> Vec<(&str, &SourceComponent)> {
    let known = COMPONENTS.iter().filter_map(|name| model.components.get_key_value(*name));
    let others = model.components.iter().filter(|(name, _)| !COMPONENTS.contains(&name.as_str()));
    known.chain(others).map(|(name, c)| (name.as_str(), c)).collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lowercase hex, as the manifest writes digests.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The shard stream being written: one shard's bytes in memory at a time.
struct ShardStream {
    shard_bytes: u64,
    current: Vec<u8>,
    shards: Vec<ShardEntry>,
}

impl ShardStream {
    fn new(shard_bytes: u64) -> Self {
        Self { shard_bytes, current: Vec::new(), shards: Vec::new() }
    }

    /// Pads with zeros up to stream position `start`, then appends `bytes`, cutting
    /// shards as they fill.
    fn write_at(&mut self, start: u64, bytes: &[u8], write: &mut dyn FnMut(&str, &[u8]) -> Result<()>) -> Result<()> {
        let padding = vec![0u8; (start - self.position()) as usize];
        self.append(&padding, write)?;
        self.append(bytes, write)
    }

    fn position(&self) -> u64 {
        self.shards.len() as u64 * self.shard_bytes + self.current.len() as u64
    }

    fn append(&mut self, mut bytes: &[u8], write: &mut dyn FnMut(&str, &[u8]) -> Result<()>) -> Result<()> {
        while !bytes.is_empty() {
            let room = (self.shard_bytes - self.current.len() as u64) as usize;
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            self.current.extend_from_slice(now);
            bytes = later;
            if self.current.len() as u64 == self.shard_bytes {
                self.flush(write)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self, write: &mut dyn FnMut(&str, &[u8]) -> Result<()>) -> Result<()> {
        let file = format!("shard-{:05}.bin", self.shards.len());
        write(&file, &self.current)?;
        self.shards.push(ShardEntry { file, bytes: self.current.len() as u64, sha256: sha256_hex(&self.current) });
        self.current.clear();
        Ok(())
    }

    fn finish(mut self, write: &mut dyn FnMut(&str, &[u8]) -> Result<()>) -> Result<Vec<ShardEntry>> {
        if !self.current.is_empty() {
            self.flush(write)?;
        }
        Ok(self.shards)
    }
}
