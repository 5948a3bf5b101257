//! The networks of a diffusers Stable Diffusion checkpoint, composed from kernels.
//! Module names follow diffusers (and candle's stable_diffusion split).

pub mod attention;
pub mod clip;
pub mod embeddings;
pub mod feature_map;
pub mod nn;
pub mod resnet;
pub mod taesd;
pub mod time_projections;
pub mod transformer_2d;
pub mod unet_2d;
pub mod unet_2d_blocks;
pub mod vae;
pub mod weights;
