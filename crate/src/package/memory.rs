//! A package whose files are already in memory: the model compiled into the CLI, or
//! bytes a host application holds. Shards are still handed over a chunk at a time, so
//! the loader's checks and its GPU upload path are the same as for a folder.

use std::collections::HashMap;

use super::manifest::ShardEntry;
use super::source::{BoxFuture, ChunkSink, PackageSource};
use crate::error::{Error, Result};

/// Shards are passed on in pieces of this size, as a folder source reads them.
const CHUNK_BYTES: usize = 1 << 20;

pub struct MemorySource {
    /// What the package is called in messages (`<name>/manifest.json`).
    name: String,
    files: HashMap<String, &'static [u8]>,
}

impl MemorySource {
    /// `files` maps package paths (`manifest.json`, `shard-00000.bin`,
    /// `tokenizer/vocab.json`, ...) to their bytes.
    pub fn new(name: &str, files: impl IntoIterator<Item = (&'static str, &'static [u8])>) -> Self {
        Self { name: name.to_string(), files: files.into_iter().map(|(path, bytes)| (path.to_string(), bytes)).collect() }
    }

    fn file(&self, path: &str) -> Result<&'static [u8]> {
        self.files.get(path).copied().ok_or_else(|| Error::Io { path: self.describe(path), detail: "not in this package".into() })
    }
}

impl PackageSource for MemorySource {
    fn read_file<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Vec<u8>>> {
        Box::pin(async move { self.file(path).map(<[u8]>::to_vec) })
    }

    fn stream_shard<'a>(&'a self, shard: &'a ShardEntry, sink: &'a mut dyn ChunkSink) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            for chunk in self.file(&shard.file)?.chunks(CHUNK_BYTES) {
                sink.accept(chunk).await?;
            }
            Ok(())
        })
    }

    fn describe(&self, path: &str) -> String {
        format!("{}/{path}", self.name)
    }
}
