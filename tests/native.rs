//! Every native test in one binary: linking the GPU stack (wgpu, naga, tokenizers)
//! once instead of once per file keeps CI's disk and link time small. Each file is a
//! module named after its subject (`cargo test --test native matmul::`); the GPU
//! device in `common` is shared by all of them. The CLI package (crate/cli) hosts it, so
//! that `cli` can run the package's own `webdiffusion` binary.

mod common;

mod attention;
mod checkpoint;
mod cli;
mod clip;
mod conv2d;
mod elementwise;
mod embedded;
mod kernel_params;
mod large_tensors;
mod layers;
mod layout;
mod loader;
mod lora;
mod matmul;
mod norm;
mod package;
mod pipeline;
mod quant;
mod rng;
mod runtime;
mod samplers_euler;
mod samplers_multistep;
mod schedulers;
mod shaders_validate;
mod softmax;
mod unet;
mod vae;
