//! Where a package's files come from: a folder natively, the network (with a cache)
//! in the browser. One object-safe async trait serves both; its futures are boxed and
//! not `Send`, since browser futures hold JavaScript values.

use std::future::Future;
use std::pin::Pin;

use super::manifest::ShardEntry;
use crate::error::Result;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Receives a shard's bytes in order, a chunk at a time.
pub trait ChunkSink {
    fn accept<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, Result<()>>;
}

pub trait PackageSource {
    /// A small file whole (`manifest.json`, the tokenizer's files).
    fn read_file<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Vec<u8>>>;
    /// Delivers `shard`'s bytes to `sink` in order, in chunks of the source's choosing,
    /// then returns. The caller checks the length and hash; a source that sees a short
    /// or failed read may report it itself.
    fn stream_shard<'a>(&'a self, shard: &'a ShardEntry, sink: &'a mut dyn ChunkSink) -> BoxFuture<'a, Result<()>>;
    /// Drops any stored copy of `shard` after its bytes failed the loader's checks.
    /// True when the last `stream_shard` read such a copy, so that streaming the shard
    /// again fetches fresh bytes; a source without a store has nothing to drop.
    fn discard<'a>(&'a self, _shard: &'a ShardEntry) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async { Ok(false) })
    }
    /// How to name `path` in an error message (a full path or URL).
    fn describe(&self, path: &str) -> String;
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::DirSource;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::io::Read;
    use std::path::PathBuf;

    use super::{BoxFuture, ChunkSink, PackageSource};
    use crate::error::{Error, Result};
    use crate::package::manifest::ShardEntry;

    /// A package folder on disk, read in chunks of `chunk_bytes` (1 MiB by default).
    pub struct DirSource {
        root: PathBuf,
        chunk_bytes: usize,
    }

    impl DirSource {
        pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
            let root = root.into();
            if !root.is_dir() {
                return Err(Error::Io { path: root.display().to_string(), detail: "not a directory".into() });
            }
            Ok(Self { root, chunk_bytes: 1 << 20 })
        }

        /// Reads shards in chunks of this many bytes (tests use odd sizes).
        pub fn with_chunk_bytes(mut self, chunk_bytes: usize) -> Self {
            self.chunk_bytes = chunk_bytes.max(1);
            self
        }

        fn io_error(&self, path: &str, e: std::io::Error) -> Error {
            Error::Io { path: self.describe(path), detail: e.to_string() }
        }
    }

    impl PackageSource for DirSource {
        fn read_file<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Vec<u8>>> {
            Box::pin(async move { std::fs::read(self.root.join(path)).map_err(|e| self.io_error(path, e)) })
        }

        fn stream_shard<'a>(&'a self, shard: &'a ShardEntry, sink: &'a mut dyn ChunkSink) -> BoxFuture<'a, Result<()>> {
            Box::pin(async move {
                let path = shard.file.as_str();
                let mut file = std::fs::File::open(self.root.join(path)).map_err(|e| self.io_error(path, e))?;
                let mut chunk = vec![0u8; self.chunk_bytes];
                loop {
                    let read = file.read(&mut chunk).map_err(|e| self.io_error(path, e))?;
                    if read == 0 {
                        return Ok(());
                    }
                    sink.accept(&chunk[..read]).await?;
                }
            })
        }

        fn describe(&self, path: &str) -> String {
            self.root.join(path).display().to_string()
        }
    }
}
