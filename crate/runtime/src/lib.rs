//! webdiffusion's GPU runtime: tensors on a wgpu device, the buffer pool, batched launches,
//! and the launchers of the hand-written WGSL kernels in `shaders/`. It knows no models:
//! the library (`webdiffusion`) builds Stable Diffusion from these pieces, and this crate
//! cannot reach back into it.

pub mod dtype;
pub mod error;
pub mod gpu;
pub mod kernels;
pub mod quant;
pub mod shaders;

pub use error::{Error, Result};
