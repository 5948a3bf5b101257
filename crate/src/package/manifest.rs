//! `manifest.json`: what a package holds and where each tensor's bytes lie, parsed
//! and checked in full before a single shard is read, so that a bad package fails
//! early with the manifest field or tensor at fault.
//!
//! The shards, concatenated in order, form one byte stream; a tensor starts at `offset`
//! in shard `shard` (a multiple of [`ALIGNMENT`]) and may run on into the following
//! shards, which keeps every shard under the size limit even for tensors larger than it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::DType;
use crate::loader::{DEFAULT_LATENT_CHANNELS, LatentRgb};
use crate::quant;

/// The `format` field of every package manifest.
pub const FORMAT: &str = "webdiffusion-package";
/// The manifest version this build writes and reads.
pub const VERSION: u32 = 1;
/// Tensor offsets in the shard stream are multiples of this.
pub const ALIGNMENT: u64 = 256;
/// The manifest's file name inside a package.
pub const MANIFEST: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub family: String,
    pub name: String,
    pub source: String,
    /// AUTOMATIC1111's short hash of the source model, where the converter knew it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_hash: Option<String>,
    pub components: BTreeMap<String, Component>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_index: Option<serde_json::Value>,
    /// The VAE's preview map, fitted by the converter; served as `vae/latent_rgb.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latent_rgb: Option<LatentRgb>,
    pub files: Vec<FileEntry>,
    pub shards: Vec<ShardEntry>,
    pub tensors: Vec<TensorEntry>,
}

/// A network (`config`), the scheduler (`config`) or the tokenizer (`files`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Component {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<String>>,
}

/// A small file stored as itself (the tokenizer's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorEntry {
    pub component: String,
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
    pub shard: usize,
    pub offset: u64,
    pub length: u64,
}

/// Where a tensor lies once the manifest is checked: its storage type and its byte
/// range in the concatenated shard stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub dtype: DType,
    pub start: u64,
    pub end: u64,
}

/// The storage types a package may hold.
pub const STORAGE_TYPES: [DType; 4] = [DType::F32, DType::F16, DType::Q8, DType::Q4];

/// Parses and validates a manifest. Pure: the fuzz target's entry point.
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest> {
    Ok(parse_placed_manifest(bytes)?.0)
}

/// [`parse_manifest`], with the tensor placements its check computed, so a loader need
/// not compute them again.
pub(super) fn parse_placed_manifest(bytes: &[u8]) -> Result<(Manifest, Vec<Placement>)> {
    let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| invalid(format!("{e}")))?;
    // Format and version first: a future version may change anything else.
    if manifest.format != FORMAT {
        return Err(invalid(format!("field `format` is {:?}, not {FORMAT:?}", manifest.format)));
    }
    if manifest.version != VERSION {
        return Err(Error::Unsupported {
            file: MANIFEST.into(),
            detail: format!("package format version {} (this build reads version {VERSION})", manifest.version),
        });
    }
    let placements = manifest.placements()?;
    manifest.check_files()?;
    manifest.check_latent_rgb()?;
    Ok((manifest, placements))
}

fn invalid(detail: String) -> Error {
    Error::Format { file: MANIFEST.into(), detail }
}

/// A lowercase SHA-256 in hex.
fn is_sha256(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A relative path of plain names: nothing a browser cache key or a folder join could
/// turn into somewhere else.
fn is_plain_path(path: &str) -> bool {
    !path.is_empty()
        && path.split('/').all(|part| {
            !part.is_empty() && part != "." && part != ".." && part.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
}

impl Manifest {
    /// Total bytes of all shards.
    pub fn stream_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.bytes).sum()
    }

    /// Where each shard starts in the stream.
    pub fn shard_starts(&self) -> Vec<u64> {
        self.shards.iter().scan(0u64, |start, shard| Some(std::mem::replace(start, *start + shard.bytes))).collect()
    }

    /// Every tensor's storage type and stream range, in manifest order, after checking
    /// each against its shard, its shape and the others.
    pub fn placements(&self) -> Result<Vec<Placement>> {
        let mut shard_files = BTreeSet::new();
        for (i, shard) in self.shards.iter().enumerate() {
            if !is_plain_path(&shard.file) || shard.file.contains('/') || !shard_files.insert(shard.file.as_str()) {
                return Err(invalid(format!("shards[{i}].file {:?} is not a distinct plain file name", shard.file)));
            }
            if !is_sha256(&shard.sha256) {
                return Err(invalid(format!("shards[{i}].sha256 of {} is not 64 lowercase hex digits", shard.file)));
            }
        }
        let starts = self.shard_starts();
        let total = starts.last().zip(self.shards.last()).map_or(Some(0), |(start, last)| start.checked_add(last.bytes));
        let total = total.ok_or_else(|| invalid("the shard sizes overflow".into()))?;
        let mut names = BTreeSet::new();
        let mut placements = Vec::with_capacity(self.tensors.len());
        for (i, t) in self.tensors.iter().enumerate() {
            let at = |detail: String| invalid(format!("tensors[{i}] ({}/{}): {detail}", t.component, t.name));
            if self.components.get(&t.component).is_none_or(|c| c.config.is_none()) {
                return Err(at(format!("component {:?} is not a component with a config", t.component)));
            }
            if !names.insert((t.component.as_str(), t.name.as_str())) {
                return Err(at("listed twice".into()));
            }
            let dtype = DType::from_name(&t.dtype)
                .filter(|d| STORAGE_TYPES.contains(d))
                .ok_or_else(|| at(format!("unknown dtype {:?} (expected f32, f16, q8 or q4)", t.dtype)))?;
            if dtype.is_quantized() && !quant::is_quantizable(&t.shape) {
                return Err(at(format!("shape {:?} cannot be stored as {}", t.shape, t.dtype)));
            }
            let numel = t.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
            if numel.is_none_or(|n| n > total) {
                return Err(at(format!("shape {:?} is larger than the whole package", t.shape)));
            }
            let expected = quant::storage_bytes(dtype, &t.shape);
            if t.length != expected {
                return Err(at(format!("length {} but shape {:?} as {} takes {expected} bytes", t.length, t.shape, t.dtype)));
            }
            let shard_start = *starts.get(t.shard).ok_or_else(|| at(format!("shard {} does not exist", t.shard)))?;
            if t.offset % ALIGNMENT != 0 || t.offset >= self.shards[t.shard].bytes.max(1) {
                return Err(at(format!("offset {} is not a multiple of {ALIGNMENT} inside {}", t.offset, self.shards[t.shard].file)));
            }
            let start = shard_start + t.offset;
            let end = start.checked_add(t.length).filter(|&end| end <= total);
            let end = end.ok_or_else(|| at(format!("its {} bytes run past the end of the last shard", t.length)))?;
            placements.push(Placement { dtype, start, end });
        }
        let mut order: Vec<usize> = (0..placements.len()).collect();
        order.sort_by_key(|&i| placements[i].start);
        for pair in order.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if placements[a].end > placements[b].start {
                let name = |i: usize| format!("{}/{}", self.tensors[i].component, self.tensors[i].name);
                return Err(invalid(format!("tensors {} and {} overlap", name(a), name(b))));
            }
        }
        Ok(placements)
    }

    /// The preview map, if any, against the VAE config's `latent_channels`.
    fn check_latent_rgb(&self) -> Result<()> {
        let Some(map) = &self.latent_rgb else { return Ok(()) };
        let vae = self.components.get("vae").and_then(|c| c.config.as_ref());
        let vae = vae.ok_or_else(|| invalid("`latent_rgb` is given but there is no `vae` component with a config".into()))?;
        let channels = match vae.get("latent_channels") {
            None => DEFAULT_LATENT_CHANNELS,
            Some(value) => value.as_u64().ok_or_else(|| invalid(format!("components.vae.config.latent_channels is {value}")))? as usize,
        };
        map.validate(channels, MANIFEST)
    }

    /// The small files: plain paths, valid hashes, and every tokenizer file listed.
    fn check_files(&self) -> Result<()> {
        let mut paths = BTreeSet::new();
        for (i, file) in self.files.iter().enumerate() {
            if !is_plain_path(&file.path) || file.path == MANIFEST || !paths.insert(file.path.as_str()) {
                return Err(invalid(format!("files[{i}].path {:?} is not a distinct plain relative path", file.path)));
            }
            if !is_sha256(&file.sha256) {
                return Err(invalid(format!("files[{i}].sha256 of {} is not 64 lowercase hex digits", file.path)));
            }
        }
        for (name, component) in &self.components {
            for path in component.files.iter().flatten() {
                if !paths.contains(path.as_str()) {
                    return Err(invalid(format!("components.{name}.files names {path:?}, which `files` does not list")));
                }
            }
        }
        Ok(())
    }
}
