//! Thin Rust launchers over the WGSL kernels in `shaders/`: each checks shapes,
//! allocates the output and records one or more dispatches.

pub mod activation_limit;
pub mod attention;
pub mod bench;
pub mod cases;
pub mod channel_chunks;
pub mod conv2d;
pub mod elementwise;
pub mod embedding;
pub mod gather;
pub mod layout;
pub mod matmul;
pub mod norm;
pub mod softmax;

use crate::error::Result;
use crate::gpu::{DType, KernelKey, Tensor};

/// The side of each invocation's register block in conv2d.wgsl and matmul.wgsl (8 x 8).
const REGISTER_BLOCK: usize = 8;

/// The invocations along one side of a conv2d or matmul tile (`TM`, `TN`): 8, 4 or 2 (a
/// 64-, 32- or 16-wide tile), not 1. Each (TM, TN) pair used is a pipeline to compile (0.8 to
/// 1.8 s each on SwiftShader, which every fresh page pays); an 8-wide tile served only a
/// one-row product (the time embedding) or an output of 8 channels, which a 16-wide one
/// pads for nothing that matters.
const TILE_THREADS: [usize; 3] = [8, 4, 2];

/// Of `TILE_THREADS`, the one whose tile pads `side` least (the larger when they tie).
fn tile_threads(side: usize) -> usize {
    let padded = |threads: usize| side.div_ceil(REGISTER_BLOCK * threads) * REGISTER_BLOCK * threads;
    TILE_THREADS.into_iter().min_by_key(|&t| padded(t)).unwrap_or(TILE_THREADS[0])
}

/// conv2d.wgsl's and matmul.wgsl's epilogue bits for an optional bias, f32 or packed f16
/// (their `EPILOGUE_BIAS` and `EPILOGUE_BIAS_F16`).
fn bias_epilogue_bits(bias: Option<&Tensor>) -> u32 {
    const EPILOGUE_BIAS: u32 = 1;
    const EPILOGUE_BIAS_F16: u32 = 2;
    match bias.map(Tensor::dtype) {
        Some(DType::F16) => EPILOGUE_BIAS | EPILOGUE_BIAS_F16,
        Some(_) => EPILOGUE_BIAS,
        None => 0,
    }
}

/// `defines` plus `X_F16` when `x` holds packed f16: the element-wise and layout shaders
/// read their input as either storage.
fn with_x_dtype(op: &'static str, x: &Tensor, mut defines: Vec<(&'static str, String)>) -> Result<Vec<(&'static str, String)>> {
    if x.is_f16_float(op)? {
        defines.push(("X_F16", String::new()));
    }
    Ok(defines)
}

/// Every kernel variant the library can launch (validated by naga in the tests).
pub fn all_variants() -> Vec<KernelKey> {
    let mut keys = Vec::new();
    keys.extend(attention::variants());
    keys.extend(conv2d::variants());
    keys.extend(elementwise::variants());
    keys.extend(embedding::variants());
    keys.extend(gather::variants());
    keys.extend(layout::variants());
    keys.extend(matmul::variants());
    keys.extend(norm::variants());
    keys.extend(softmax::variants());
    keys
}
