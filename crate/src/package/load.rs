//! Loading a package: the manifest checked in full, the small files read and hashed,
//! then every shard streamed chunk by chunk, hashed as it passes and written straight
//! into the GPU tensors it holds. The host never holds more than one chunk of weights.

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};

use super::manifest::{MANIFEST, Manifest, Placement, ShardEntry, parse_placed_manifest};
use super::source::{BoxFuture, ChunkSink, PackageSource};
use super::writer::{hex, sha256_hex};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, StreamedTensor, Tensor};
use crate::loader::{LATENT_RGB_FILE, ModelFiles, UploadedWeights, component_file};

/// How far loading has come: bytes of shards read, overall and per component (a
/// component's bytes are its tensors').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadProgress {
    pub done: u64,
    pub total: u64,
    pub components: Vec<ComponentProgress>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentProgress {
    pub name: String,
    pub done: u64,
    pub total: u64,
}

/// A loaded package: its manifest, its small files, and its tensors on the GPU. As
/// `ModelFiles` it serves the configs and tokenizer as files and the tensors through
/// `uploaded`, so models load from it exactly as from a diffusers folder.
pub struct Package {
    manifest: Manifest,
    /// `describe("")` of the source: the folder or URL, for messages.
    root: String,
    files: HashMap<String, Vec<u8>>,
    tensors: HashMap<String, HashMap<String, Tensor>>,
}

impl Package {
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The source model's AUTOMATIC1111 hash, where the converter recorded it.
    pub fn model_hash(&self) -> Option<&str> {
        self.manifest.model_hash.as_deref()
    }
}

impl ModelFiles for Package {
    fn read(&self, path: &str) -> Result<Vec<u8>> {
        self.files.get(path).cloned().ok_or_else(|| Error::Io { path: self.describe(path), detail: "the package has no such file".into() })
    }

    fn exists(&self, path: &str) -> bool {
        self.files.contains_key(path)
    }

    fn describe(&self, path: &str) -> String {
        format!("{}/{path}", self.root.trim_end_matches('/'))
    }

    fn uploaded(&self, component: &str) -> Option<UploadedWeights> {
        let tensors = self.tensors.get(component)?.clone();
        Some(UploadedWeights { file: format!("{} [{component}]", self.describe(MANIFEST)), tensors })
    }
}

/// Loads the package `source` holds onto `gpu`, calling `on_progress` after every chunk.
pub async fn load_package(gpu: &Gpu, source: &dyn PackageSource, on_progress: &mut dyn FnMut(&LoadProgress)) -> Result<Package> {
    let manifest_file = source.describe(MANIFEST);
    let (manifest, placements) = parse_placed_manifest(&source.read_file(MANIFEST).await?).map_err(|e| rename_file(e, &manifest_file))?;

    let mut files = config_files(&manifest, &manifest_file)?;
    for entry in &manifest.files {
        let bytes = source.read_file(&entry.path).await?;
        let digest = sha256_hex(&bytes);
        if bytes.len() as u64 != entry.bytes || digest != entry.sha256 {
            return Err(Error::Format {
                file: source.describe(&entry.path),
                detail: format!(
                    "{} bytes with SHA-256 {digest}; the manifest lists {} bytes with {}",
                    bytes.len(),
                    entry.bytes,
                    entry.sha256
                ),
            });
        }
        files.insert(entry.path.clone(), bytes);
    }

    let mut stream = TensorStream::new(gpu, &manifest, &placements, on_progress);
    for shard in &manifest.shards {
        let file = source.describe(&shard.file);
        let start = stream.checkpoint();
        let mut retried = false;
        loop {
            match read_shard(source, shard, &file, &mut stream).await {
                Ok(()) => break,
                // Bad bytes: the source drops any stored copy (so that none outlives the
                // load) and, where it had read one, the shard is read once more.
                Err(error @ Error::Format { .. }) => {
                    if !source.discard(shard).await? || retried {
                        return Err(error);
                    }
                    log::warn!("{error}; reading {file} again");
                    retried = true;
                    stream.rewind(&start);
                }
                Err(error) => return Err(error),
            }
        }
    }
    let tensors = stream.finish()?;
    Ok(Package { root: source.describe(""), manifest, files, tensors })
}

/// Streams `shard` (`file` as the source names it) through `stream`, checking its
/// length and SHA-256.
async fn read_shard(source: &dyn PackageSource, shard: &ShardEntry, file: &str, stream: &mut TensorStream<'_>) -> Result<()> {
    let mut sink = ShardSink { stream, hasher: Sha256::new(), received: 0, expected: shard.bytes, file };
    source.stream_shard(shard, &mut sink).await?;
    let (received, digest) = (sink.received, hex(&sink.hasher.finalize()));
    let file = file.to_string();
    if received != shard.bytes {
        return Err(Error::Format { file, detail: format!("truncated: {received} of the manifest's {} bytes", shard.bytes) });
    }
    if digest != shard.sha256 {
        return Err(Error::Format { file, detail: format!("SHA-256 {digest} does not match the manifest's {}", shard.sha256) });
    }
    Ok(())
}

/// A manifest error names the manifest as the source sees it (a path or URL).
fn rename_file(error: Error, file: &str) -> Error {
    match error {
        Error::Format { detail, .. } => Error::Format { file: file.to_string(), detail },
        Error::Unsupported { detail, .. } => Error::Unsupported { file: file.to_string(), detail },
        other => other,
    }
}

/// The configs (and the VAE's preview map) as the files a diffusers folder would hold,
/// so the models' own readers parse them.
fn config_files(manifest: &Manifest, manifest_file: &str) -> Result<HashMap<String, Vec<u8>>> {
    let json = |value: &serde_json::Value| {
        serde_json::to_vec(value).map_err(|e| Error::Format { file: manifest_file.to_string(), detail: e.to_string() })
    };
    let mut files = HashMap::new();
    for (name, component) in &manifest.components {
        if let Some(config) = &component.config {
            let file = if name == "scheduler" { "scheduler_config.json" } else { "config.json" };
            files.insert(component_file(name, file), json(config)?);
        }
    }
    if let Some(index) = &manifest.model_index {
        files.insert("model_index.json".to_string(), json(index)?);
    }
    if let Some(map) = &manifest.latent_rgb {
        let value = serde_json::to_value(map).map_err(|e| Error::Format { file: manifest_file.to_string(), detail: e.to_string() })?;
        files.insert(component_file("vae", LATENT_RGB_FILE), json(&value)?);
    }
    Ok(files)
}

/// The tensors being filled from the shard stream, in stream order.
struct TensorStream<'a> {
    gpu: &'a Gpu,
    manifest: &'a Manifest,
    placements: &'a [Placement],
    /// Tensor indices by stream position, and the next one to start.
    order: Vec<usize>,
    next: usize,
    active: Option<(usize, StreamedTensor)>,
    done: Vec<Option<Tensor>>,
    position: u64,
    progress: LoadProgress,
    /// The most bytes reported done: a shard read again after a rewind is not
    /// reported until it passes this, so that progress never goes back.
    reported: u64,
    /// Each tensor's entry in `progress.components`.
    component_of: Vec<usize>,
    on_progress: &'a mut dyn FnMut(&LoadProgress),
}

/// Where the stream stood at a shard's first byte: the tensors that started earlier are
/// complete but for at most one, part-filled (perhaps with a word split across the boundary).
struct Checkpoint {
    next: usize,
    active: Option<(usize, StreamedTensor)>,
    position: u64,
    progress: LoadProgress,
}

impl<'a> TensorStream<'a> {
    fn new(gpu: &'a Gpu, manifest: &'a Manifest, placements: &'a [Placement], on_progress: &'a mut dyn FnMut(&LoadProgress)) -> Self {
        let mut order: Vec<usize> = (0..placements.len()).collect();
        order.sort_by_key(|&i| placements[i].start);
        let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
        for (t, p) in manifest.tensors.iter().zip(placements) {
            *totals.entry(t.component.as_str()).or_default() += p.end - p.start;
        }
        let names: Vec<&str> = totals.keys().copied().collect();
        let component_of = manifest.tensors.iter().map(|t| names.iter().position(|n| *n == t.component).unwrap_or(0)).collect();
        let components = totals.into_iter().map(|(name, total)| ComponentProgress { name: name.to_string(), done: 0, total }).collect();
        Self {
            gpu,
            manifest,
            placements,
            order,
            next: 0,
            active: None,
            done: vec![None; placements.len()],
            position: 0,
            progress: LoadProgress { done: 0, total: manifest.stream_bytes(), components },
            reported: 0,
            component_of,
            on_progress,
        }
    }

    /// Routes the next bytes of the stream into the tensors they belong to.
    fn consume(&mut self, mut chunk: &[u8]) -> Result<()> {
        while !chunk.is_empty() {
            let taken = if let Some((index, mut tensor)) = self.active.take() {
                let end = self.placements[index].end;
                let take = (end - self.position).min(chunk.len() as u64) as usize;
                tensor.push(&chunk[..take])?;
                self.progress.components[self.component_of[index]].done += take as u64;
                self.keep(index, tensor, self.position + take as u64 == end)?;
                take
            } else {
                match self.order.get(self.next).map(|&i| (i, self.placements[i])) {
                    Some((index, placement)) if placement.start == self.position => {
                        let tensor = self.gpu.empty(&self.manifest.tensors[index].shape, placement.dtype)?;
                        self.next += 1;
                        self.keep(index, StreamedTensor::new(tensor), placement.start == placement.end)?;
                        0
                    }
                    // Alignment padding (or bytes past the last tensor): hashed, not kept.
                    Some((_, placement)) => (placement.start - self.position).min(chunk.len() as u64) as usize,
                    None => chunk.len(),
                }
            };
            chunk = &chunk[taken..];
            self.position += taken as u64;
        }
        Ok(())
    }

    /// Files a tensor as done once complete, else keeps filling it.
    fn keep(&mut self, index: usize, tensor: StreamedTensor, complete: bool) -> Result<()> {
        if complete {
            self.done[index] = Some(tensor.finish()?);
        } else {
            self.active = Some((index, tensor));
        }
        Ok(())
    }

    fn report(&mut self, bytes: u64) {
        self.progress.done += bytes;
        if self.progress.done >= self.reported {
            self.reported = self.progress.done;
            (self.on_progress)(&self.progress);
        }
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint { next: self.next, active: self.active.clone(), position: self.position, progress: self.progress.clone() }
    }

    /// Goes back to `checkpoint` to read a shard again: the bytes that follow are
    /// written over the same GPU ranges, and tensors that start after it are made anew.
    fn rewind(&mut self, checkpoint: &Checkpoint) {
        self.next = checkpoint.next;
        self.active = checkpoint.active.clone();
        self.position = checkpoint.position;
        self.progress = checkpoint.progress.clone();
    }

    /// Every tensor by component and name, once the whole stream has passed.
    fn finish(self) -> Result<HashMap<String, HashMap<String, Tensor>>> {
        let mut out: HashMap<String, HashMap<String, Tensor>> = HashMap::new();
        for (entry, tensor) in self.manifest.tensors.iter().zip(self.done) {
            let tensor = tensor.ok_or_else(|| Error::Format {
                file: MANIFEST.into(),
                detail: format!("tensor {}/{} was not in the shards read", entry.component, entry.name),
            })?;
            out.entry(entry.component.clone()).or_default().insert(entry.name.clone(), tensor);
        }
        Ok(out)
    }
}

/// One shard's pass through the stream: its length and hash are checked by the caller.
struct ShardSink<'s, 'a> {
    stream: &'s mut TensorStream<'a>,
    hasher: Sha256,
    received: u64,
    expected: u64,
    file: &'s str,
}

impl ChunkSink for ShardSink<'_, '_> {
    fn accept<'b>(&'b mut self, chunk: &'b [u8]) -> BoxFuture<'b, Result<()>> {
        Box::pin(async move {
            self.received += chunk.len() as u64;
            if self.received > self.expected {
                return Err(Error::Format {
                    file: self.file.to_string(),
                    detail: format!("longer than the manifest's {} bytes", self.expected),
                });
            }
            self.hasher.update(chunk);
            self.stream.consume(chunk)?;
            self.stream.report(chunk.len() as u64);
            // Queue writes are staged in host memory until submitted: submitting and
            // waiting after every chunk keeps that to one chunk.
            self.stream.gpu.finish().await
        })
    }
}
