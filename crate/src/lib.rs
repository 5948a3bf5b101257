//! webdiffusion: text-to-image diffusion on WebGPU with hand-written WGSL kernels,
//! the same code in the browser (wasm32) and natively (wgpu on Vulkan, Metal, DX12).

pub mod convert;
pub mod error;
pub mod gpu;
pub mod image;
pub mod kernels;
pub mod loader;
pub mod lora;
pub mod models;
pub mod package;
pub mod pipeline;
pub mod quant;
pub mod reference;
pub mod rng;
pub mod schedulers;
pub mod shaders;
pub mod tokenizer;
#[cfg(target_arch = "wasm32")]
pub mod web_api;

pub use error::{Error, Result};
