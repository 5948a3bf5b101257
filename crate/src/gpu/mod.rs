//! The GPU runtime: device, tensors, buffer pool, kernel cache and the batch
//! that records every dispatch into one compute pass. It knows nothing of models.

mod batch;
mod context;
mod kernel;
mod pool;
mod preprocess;
mod readback;
mod tensor;

pub use batch::{Access, Launch};
pub use context::{Gpu, GpuInfo};
pub use kernel::KernelKey;
pub use preprocess::preprocess;
pub use tensor::{DType, Tensor};
