//! Where a model's files come from.

use std::sync::Arc;

use super::weight_files::UploadedWeights;
use crate::error::Result;

/// One file's bytes, read a range at a time: a weights file is read tensor by tensor,
/// natively straight from disk, so no more than a tensor of it is in memory at once.
pub trait ByteRanges {
    fn byte_len(&self) -> u64;
    /// `len` bytes from `offset`; a range past the end is an error.
    fn read_range(&self, offset: u64, len: usize) -> Result<Vec<u8>>;
}

/// A file already in memory (fetched, or small).
impl ByteRanges for Vec<u8> {
    fn byte_len(&self) -> u64 {
        self.len() as u64
    }

    fn read_range(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let range = usize::try_from(offset).ok().and_then(|start| self.get(start..start.checked_add(len)?));
        range.map(<[u8]>::to_vec).ok_or_else(|| crate::Error::Io {
            path: "a file in memory".into(),
            detail: format!("bytes {offset}..+{len} are past its end ({})", self.len()),
        })
    }
}

/// Read access to the files of one model folder, by path relative to its root
/// (`unet/config.json`). Native code reads a directory; the browser fetches.
pub trait ModelFiles {
    fn read(&self, path: &str) -> Result<Vec<u8>>;
    fn exists(&self, path: &str) -> bool;
    /// How to name `path` in an error message (the full path or URL).
    fn describe(&self, path: &str) -> String;
    /// The file at `path` for reading by ranges; by default read whole into memory.
    fn open(&self, path: &str) -> Result<Arc<dyn ByteRanges>> {
        Ok(Arc::new(self.read(path)?))
    }
    /// A component's tensors already on the GPU (a loaded package), which `Weights`
    /// serves instead of reading a weights file; `None` for folders of files.
    fn uploaded(&self, _component: &str) -> Option<UploadedWeights> {
        None
    }
}

/// A model held in memory, file by file (what the browser has after fetching).
#[derive(Default)]
pub struct MemoryFiles {
    files: std::collections::HashMap<String, Vec<u8>>,
    name: String,
}

impl MemoryFiles {
    /// An empty model; `name` prefixes paths in error messages.
    pub fn new(name: impl Into<String>) -> Self {
        Self { files: Default::default(), name: name.into() }
    }

    pub fn insert(&mut self, path: impl Into<String>, bytes: Vec<u8>) {
        self.files.insert(path.into(), bytes);
    }
}

impl ModelFiles for MemoryFiles {
    fn read(&self, path: &str) -> Result<Vec<u8>> {
        self.files.get(path).cloned().ok_or_else(|| crate::Error::Io { path: self.describe(path), detail: "no such file".into() })
    }

    fn exists(&self, path: &str) -> bool {
        self.files.contains_key(path)
    }

    fn describe(&self, path: &str) -> String {
        format!("{}/{path}", self.name)
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::{DirFiles, OpenFile};

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::fs::File;
    use std::io::{Read, Seek, SeekFrom};
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};

    use super::{ByteRanges, ModelFiles};
    use crate::error::{Error, Result};

    /// A model folder on disk.
    pub struct DirFiles {
        root: PathBuf,
    }

    impl DirFiles {
        pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
            let root = root.into();
            if !root.is_dir() {
                return Err(Error::Io { path: root.display().to_string(), detail: "not a directory".into() });
            }
            Ok(Self { root })
        }
    }

    impl ModelFiles for DirFiles {
        fn read(&self, path: &str) -> Result<Vec<u8>> {
            std::fs::read(self.root.join(path)).map_err(|e| Error::Io { path: self.describe(path), detail: e.to_string() })
        }

        fn exists(&self, path: &str) -> bool {
            self.root.join(path).is_file()
        }

        fn describe(&self, path: &str) -> String {
            self.root.join(path).display().to_string()
        }

        fn open(&self, path: &str) -> Result<Arc<dyn ByteRanges>> {
            Ok(Arc::new(OpenFile::open(self.root.join(path))?))
        }
    }

    /// A file on disk, read where asked.
    pub struct OpenFile {
        path: PathBuf,
        len: u64,
        // Seek and read are one operation on a shared handle.
        file: Mutex<File>,
    }

    impl OpenFile {
        pub fn open(path: PathBuf) -> Result<Self> {
            let io = |e: std::io::Error| Error::Io { path: path.display().to_string(), detail: e.to_string() };
            let file = File::open(&path).map_err(io)?;
            let len = file.metadata().map_err(io)?.len();
            Ok(Self { path, len, file: Mutex::new(file) })
        }
    }

    impl ByteRanges for OpenFile {
        fn byte_len(&self) -> u64 {
            self.len
        }

        fn read_range(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
            let io =
                |e: std::io::Error| Error::Io { path: self.path.display().to_string(), detail: format!("bytes {offset}..+{len}: {e}") };
            let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
            let mut bytes = vec![0; len];
            file.seek(SeekFrom::Start(offset)).map_err(io)?;
            file.read_exact(&mut bytes).map_err(io)?;
            Ok(bytes)
        }
    }
}
