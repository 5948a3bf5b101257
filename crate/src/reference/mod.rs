//! Plain-Rust CPU implementations of every kernel, written for clarity, not speed:
//! the independent reference the GPU kernels are tested against.

pub mod attention;
pub mod conv2d;
pub mod elementwise;
pub mod embedding;
pub mod gather;
pub mod layout;
pub mod matmul;
pub mod norm;
pub mod softmax;
