//! webdiffusion packages: a model as a manifest, fixed-size shards of GPU-ready tensor
//! bytes (f32, f16, q8, q4) and the tokenizer's files, made by the converter and
//! streamed onto the GPU a chunk at a time by the loader (natively from a folder, in
//! the browser from the network: webdiffusion-web's `FetchSource`).

mod load;
pub mod manifest;
mod memory;
mod plan;
pub mod policy;
mod source;
mod writer;

pub use load::{ComponentProgress, LoadProgress, Package, load_package};
pub use manifest::{Manifest, parse_manifest};
pub use memory::MemorySource;
pub use plan::{PackageSize, package_size};
pub use policy::{Policy, Quantization};
#[cfg(not(target_arch = "wasm32"))]
pub use source::DirSource;
pub use source::{BoxFuture, ChunkSink, PackageSource};
pub use writer::{DEFAULT_SHARD_BYTES, WriteOptions, layout, sha256_hex, write_package};
