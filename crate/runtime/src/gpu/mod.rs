//! The GPU runtime: device, tensors, buffer pool, kernel cache and the batch
//! that records every dispatch into one compute pass. It knows nothing of models.

// wgpu handles are not Send in the browser, where everything runs on one thread;
// the same Arc-based sharing serves native threads and costs nothing there.
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]

mod batch;
mod bind_groups;
mod context;
mod kernel;
mod pool;
mod preprocess;
mod readback;
mod stats;
mod tensor;
mod upload;

pub use batch::{Access, Launch};
pub use context::{Gpu, GpuInfo};
pub use kernel::KernelKey;
pub use preprocess::preprocess;
pub use stats::{Counters, KernelTime};
// Tensors are typed by it; `gpu::DType` is the path users write.
pub use crate::dtype::DType;
pub use tensor::Tensor;
pub use upload::StreamedTensor;
