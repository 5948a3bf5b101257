//! Reading a diffusers model folder: its files (from disk natively, from the
//! network in the browser), its JSON configs and its safetensors weights.

mod files;
mod latent_rgb;
mod safetensors;
mod weight_files;

pub use files::{ByteRanges, MemoryFiles, ModelFiles};
#[cfg(not(target_arch = "wasm32"))]
pub use files::{DirFiles, OpenFile};
pub use latent_rgb::{DEFAULT_LATENT_CHANNELS, LATENT_RGB_FILE, LatentRgb};
pub use safetensors::{SafetensorsFile, widen};
pub use weight_files::{UploadedWeights, WeightPrecision, weights_file};

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// The name images and manifests give a model on disk: its folder's or file's name.
pub fn model_name(path: &std::path::Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// The path of `name` inside a component folder (`unet`); an empty component is
/// the root, as in standalone VAE and TAESD repositories.
pub fn component_file(component: &str, name: &str) -> String {
    if component.is_empty() { name.to_string() } else { format!("{component}/{name}") }
}

/// The short model hash AUTOMATIC1111 shows ("Model hash"): the first 10 hex digits
/// of the SHA-256 of the UNet's weights file, which is what makes a checkpoint itself.
pub fn model_hash(files: &dyn ModelFiles) -> Result<String> {
    file_hash(files.open(&weights_file(files, "unet")?)?.as_ref())
}

/// AUTOMATIC1111's short hash of a whole file (of a single-file checkpoint, it is the
/// model hash): the first 10 hex digits of its SHA-256, read a chunk at a time.
pub fn file_hash(file: &dyn ByteRanges) -> Result<String> {
    use sha2::{Digest, Sha256};
    const CHUNK: u64 = 8 << 20;
    let mut hasher = Sha256::new();
    for offset in (0..file.byte_len()).step_by(CHUNK as usize) {
        hasher.update(file.read_range(offset, CHUNK.min(file.byte_len() - offset) as usize)?);
    }
    Ok(hasher.finalize().iter().take(5).map(|b| format!("{b:02x}")).collect())
}

/// Parses the JSON config at `path` inside the model.
pub fn read_config<T: DeserializeOwned>(files: &dyn ModelFiles, path: &str) -> Result<T> {
    let bytes = files.read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Format { file: files.describe(path), detail: e.to_string() })
}
