//! The largest activation a network may create, checked layer by layer from shapes
//! alone before any work is queued, so a too-large image fails at once with the layer's
//! name instead of deep inside a pass.

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu};

#[derive(Debug, Clone, Copy)]
pub(crate) struct ActivationLimit {
    bytes: u64,
}

impl ActivationLimit {
    /// Every kernel binds each tensor whole as one storage buffer, so an activation may
    /// take at most the adapter's binding size (WebGPU's default is 128 MiB).
    pub fn of(gpu: &Gpu) -> Self {
        let info = gpu.info();
        Self { bytes: info.max_storage_binding.min(info.max_buffer_size) }
    }

    /// Fails naming `layer` when an f32 activation of `shape` would not fit.
    pub fn check(&self, layer: &str, shape: [usize; 4]) -> Result<()> {
        let elements = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).unwrap_or(usize::MAX);
        let needed = DType::F32.storage_bytes(elements.min(u64::MAX as usize / 4));
        if needed > self.bytes {
            return Err(Error::TooLarge { what: format!("{layer} (an f32 activation of shape {shape:?})"), needed, limit: self.bytes });
        }
        Ok(())
    }
}
