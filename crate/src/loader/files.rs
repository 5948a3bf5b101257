//! Where a model's files come from.

use super::weights::UploadedWeights;
use crate::error::Result;

/// Read access to the files of one model folder, by path relative to its root
/// (`unet/config.json`). Native code reads a directory; the browser fetches.
pub trait ModelFiles {
    fn read(&self, path: &str) -> Result<Vec<u8>>;
    fn exists(&self, path: &str) -> bool;
    /// How to name `path` in an error message (the full path or URL).
    fn describe(&self, path: &str) -> String;
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
pub use native::DirFiles;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::path::PathBuf;

    use super::ModelFiles;
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
    }
}
