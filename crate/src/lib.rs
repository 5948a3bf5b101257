//! webdiffusion: text-to-image diffusion on WebGPU with hand-written WGSL kernels,
//! the same code in the browser (wasm32) and natively (wgpu on Vulkan, Metal, DX12).

pub mod convert;
pub mod image;
pub mod loader;
pub mod lora;
pub mod models;
pub mod open;
pub mod package;
#[cfg(not(target_arch = "wasm32"))]
pub mod packaging;
pub mod pipeline;
pub mod reference;
pub mod rng;
pub mod schedulers;
pub mod tokenizer;

// The GPU runtime, re-exported under the paths the library and its users have always used.
pub use webdiffusion_runtime::{Error, Result};
pub use webdiffusion_runtime::{error, gpu, kernels, quant, shaders};
