//! One way into a model for every front end (the CLI, the page's bindings, the
//! benchmarks): a package from any source, or natively a folder holding a package or a
//! diffusers model, loaded onto the GPU as a `StableDiffusion`.

#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;

use crate::Result;
use crate::gpu::Gpu;
use crate::loader::WeightPrecision;
use crate::package::{LoadProgress, PackageSource, load_package};
use crate::pipeline::StableDiffusion;

/// Where a model comes from.
pub enum ModelSource<'a> {
    /// A package from any source: a folder (`DirSource`), bytes in memory (`MemorySource`),
    /// the network (webdiffusion-web's `FetchSource`).
    Package(&'a dyn PackageSource),
    /// A folder on disk: a package when it holds `manifest.json`, else a diffusers folder
    /// (`model_index.json`, `unet/`, `vae/`, ...).
    #[cfg(not(target_arch = "wasm32"))]
    Folder(&'a Path),
}

impl StableDiffusion {
    /// Loads the model at `source` onto `gpu`, its weights kept as stored or widened to f16
    /// (`precision`), reporting a package's shards as they arrive to `on_progress`. The
    /// model hash is the package's, or for a diffusers folder the hash of its UNet file
    /// (read whole once).
    pub async fn open(
        gpu: &Gpu,
        source: ModelSource<'_>,
        precision: WeightPrecision,
        on_progress: &mut dyn FnMut(&LoadProgress),
    ) -> Result<Self> {
        let sd = Self::open_source(gpu, source, precision, on_progress).await?;
        // What the load set aside (a package's tensors, the parts of stacked layers) sits
        // in the pool: give it back rather than hold it beside the model.
        gpu.trim_pool();
        Ok(sd)
    }

    async fn open_source(
        gpu: &Gpu,
        source: ModelSource<'_>,
        precision: WeightPrecision,
        on_progress: &mut dyn FnMut(&LoadProgress),
    ) -> Result<Self> {
        match source {
            ModelSource::Package(source) => open_package(gpu, source, precision, on_progress).await,
            #[cfg(not(target_arch = "wasm32"))]
            ModelSource::Folder(path) => {
                use crate::loader::{DirFiles, model_hash};
                use crate::package::DirSource;
                use crate::package::manifest::MANIFEST;
                if path.join(MANIFEST).is_file() {
                    return open_package(gpu, &DirSource::new(path)?, precision, on_progress).await;
                }
                let files = DirFiles::new(path)?;
                let hash = model_hash(&files)?;
                Ok(Self::load(gpu, &files, precision)?.with_model_hash(Some(hash)))
            }
        }
    }
}

async fn open_package(
    gpu: &Gpu,
    source: &dyn PackageSource,
    precision: WeightPrecision,
    on_progress: &mut dyn FnMut(&LoadProgress),
) -> Result<StableDiffusion> {
    let package = load_package(gpu, source, on_progress).await?;
    let hash = package.model_hash().map(str::to_string);
    Ok(StableDiffusion::load(gpu, &package, precision)?.with_model_hash(hash))
}
