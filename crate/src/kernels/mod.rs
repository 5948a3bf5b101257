//! Thin Rust launchers over the WGSL kernels in `shaders/`: each checks shapes,
//! allocates the output and records one or more dispatches.

pub mod attention;
pub mod bench;
pub mod conv2d;
pub mod elementwise;
pub mod embedding;
pub mod gather;
pub mod layout;
pub mod matmul;
pub mod norm;
pub mod softmax;

use crate::error::Result;
use crate::gpu::{KernelKey, Tensor};

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
