//! One error type for the runtime and the library, which re-exports it: every failure a
//! user can cause or meet (bad input, GPU limits, a lost device) is a value, never a panic.

use std::fmt;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("no usable GPU adapter: {0}")]
    NoAdapter(String),
    #[error("could not open the GPU device: {0}")]
    DeviceRequest(String),
    #[error("the GPU device was lost ({0}); create a new context to continue")]
    DeviceLost(String),
    #[error("the GPU ran out of memory: {0}")]
    OutOfMemory(String),
    #[error("GPU error: {0}")]
    Gpu(String),
    /// The engine found a tensor of the wrong shape or type: a bug in a caller or a model
    /// file that does not fit its config, not something the user asked for.
    #[error("{op}: {detail}")]
    Shape { op: &'static str, detail: String },
    /// What the user asked a generation for does not fit the model or does not make sense;
    /// `option` names it as the request does (`strength`, `init_image`, ...).
    #[error("generate: {detail}")]
    Request { option: &'static str, detail: String },
    #[error("{what} needs {needed} bytes but this adapter allows at most {limit}")]
    TooLarge { what: String, needed: u64, limit: u64 },
    #[error("reading a result back from the GPU failed: {0}")]
    Readback(String),
    #[error("shader {shader}: {detail}")]
    Shader { shader: String, detail: String },
    #[error("cannot read {path}: {detail}")]
    Io { path: String, detail: String },
    #[error("{file} is not valid: {detail}")]
    Format { file: String, detail: String },
    #[error("{file} has no tensor named {name}")]
    MissingTensor { file: String, name: String },
    #[error("{file}: tensor {name} has shape {found:?}, the config needs {expected:?}")]
    WeightShape { file: String, name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("{file}: {detail} is not supported")]
    Unsupported { file: String, detail: String },
    #[error("{file}: {} LoRA modules match no layer of the model: {}", .modules.len(), .modules.join(", "))]
    UnmatchedLora { file: String, modules: Vec<String> },
    #[error("cancelled after step {done} of {total}")]
    Cancelled { done: usize, total: usize },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A shape error with a formatted message.
    pub fn shape(op: &'static str, detail: impl fmt::Display) -> Self {
        Error::Shape { op, detail: detail.to_string() }
    }

    /// An I/O error on the file or folder at `path`.
    pub fn io(path: &std::path::Path, detail: impl fmt::Display) -> Self {
        Error::Io { path: path.display().to_string(), detail: detail.to_string() }
    }

    /// A request error naming the request's `option`.
    pub fn request(option: &'static str, detail: impl fmt::Display) -> Self {
        Error::Request { option, detail: detail.to_string() }
    }
}
