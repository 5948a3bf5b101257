//! A model on disk made into a package, the steps every front end would otherwise write
//! itself: the source read (a diffusers folder or a single-file checkpoint; tensors stay
//! in their files until written), LoRAs merged in, CLIP's vocabulary completed, the model
//! hashed, the VAE's preview map fitted, and the package written into a new folder.

use std::path::Path;
use std::sync::Arc;

use crate::convert::checkpoint::{CheckpointOptions, read_checkpoint};
use crate::convert::diffusers::read_diffusers;
use crate::convert::{ComponentOnGpu, SourceModel, merge_lora};
use crate::gpu::Gpu;
use crate::loader::{DirFiles, LatentRgb, OpenFile, SafetensorsFile, WeightPrecision, file_hash, model_hash, model_name};
use crate::lora::{LoraFile, LoraSpec};
use crate::models::vae::AutoencoderKl;
use crate::package::manifest::Manifest;
use crate::package::{WriteOptions, write_package};
use crate::pipeline::fit_latent_rgb;
use crate::{Error, Result};

/// A source model read for packaging.
pub struct PackagingSource {
    pub model: SourceModel,
    /// What it is, for the manifest's `source`: `name (diffusers folder) + LoRA x:0.8`.
    pub description: String,
}

/// Reads `from` (a diffusers folder, or a single-file checkpoint, which `checkpoint` says
/// what its tensors cannot) and merges `loras` into it in order.
pub fn read_source(from: &Path, checkpoint: &CheckpointOptions, loras: &[LoraSpec]) -> Result<PackagingSource> {
    let is_folder = from.is_dir();
    let (mut model, kind) = if is_folder {
        (read_diffusers(&DirFiles::new(from)?, &model_name(from))?, "diffusers folder")
    } else {
        let file = SafetensorsFile::open(Arc::new(OpenFile::open(from.to_path_buf())?), from.display().to_string())?;
        (read_checkpoint(&file, checkpoint)?, "checkpoint")
    };
    let mut description = format!("{} ({kind})", model.name);
    for spec in loras {
        let bytes = std::fs::read(&spec.path).map_err(|e| Error::io(&spec.path, e))?;
        merge_lora(&mut model, &LoraFile::parse(&bytes, &spec.path.display().to_string())?, spec.scale)?;
        description.push_str(&format!(" + LoRA {}:{}", model_name(&spec.path), spec.scale));
    }
    Ok(PackagingSource { model, description })
}

/// AUTOMATIC1111's hash of the model at `from`: of a diffusers folder's UNet weights file,
/// or of a whole checkpoint (read once, a chunk at a time). A package of the model with a
/// LoRA merged in is another model, which this does not name.
pub fn source_hash(from: &Path) -> Result<String> {
    if from.is_dir() { model_hash(&DirFiles::new(from)?) } else { file_hash(&OpenFile::open(from.to_path_buf())?) }
}

/// CLIP's BPE vocabulary (`vocab.json`, `merges.txt`) from the `tokenizer` folder when
/// given, else the source's own, else (a checkpoint has none) `fallback`'s files, named
/// as in a tokenizer folder. The settings files (padding token, length) stay the
/// source's, since they differ by family.
pub fn complete_tokenizer(model: &mut SourceModel, tokenizer: Option<&Path>, fallback: &[(&str, &[u8])]) -> Result<()> {
    if let Some(folder) = tokenizer {
        for file in ["vocab.json", "merges.txt"] {
            let path = folder.join(file);
            model.tokenizer.insert(file.to_string(), std::fs::read(&path).map_err(|e| Error::io(&path, e))?);
        }
    }
    for (file, bytes) in fallback {
        model.tokenizer.entry(file.to_string()).or_insert_with(|| bytes.to_vec());
    }
    Ok(())
}

/// The VAE's preview map (latents to RGB), fitted on `gpu` with the source's VAE.
pub async fn fit_preview_map(gpu: &Gpu, model: &SourceModel) -> Result<LatentRgb> {
    let vae = AutoencoderKl::load(gpu, &ComponentOnGpu::upload(gpu, model, "vae")?, "vae", WeightPrecision::AsStored)?;
    fit_latent_rgb(gpu, &vae).await
}

/// Writes the package into `to`, which must be new or empty: stale shards of another
/// package would otherwise sit beside the new manifest.
pub fn write_package_folder(model: &SourceModel, options: &WriteOptions, to: &Path) -> Result<Manifest> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    if std::fs::read_dir(to).map_err(|e| Error::io(to, e))?.next().is_some() {
        return Err(Error::io(to, "the folder is not empty"));
    }
    let mut write_file = |path: &str, bytes: &[u8]| -> Result<()> {
        let file = to.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::fs::write(&file, bytes).map_err(|e| Error::io(&file, e))
    };
    write_package(model, options, &mut write_file)
}
