//! The largest activation one storage binding takes, checked layer by layer from shapes
//! alone before any work is queued, and how a network splits larger ones into chunks of
//! channels; so a too-large image fails at once with the layer's name instead of deep
//! inside a pass.

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu};

#[derive(Debug, Clone, Copy)]
pub struct ActivationLimit {
    bytes: u64,
}

/// f32 bytes of `shape`, saturating instead of overflowing.
fn f32_bytes(shape: &[usize]) -> u64 {
    let elements = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).unwrap_or(usize::MAX);
    crate::quant::storage_bytes(DType::F32, &[elements.min(u64::MAX as usize / 4)])
}

impl ActivationLimit {
    /// Every kernel binds each tensor whole as one storage buffer, so an activation that
    /// is not split may take at most the adapter's binding size (WebGPU's default is 128 MiB).
    pub fn of(gpu: &Gpu) -> Self {
        let info = gpu.info();
        Self { bytes: info.max_storage_binding.min(info.max_buffer_size) }
    }

    /// At most `bytes`, when given: a smaller limit than the device's, to split earlier.
    pub fn at_most(self, bytes: Option<u64>) -> Self {
        Self { bytes: bytes.map_or(self.bytes, |b| b.min(self.bytes)) }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Fails naming `layer` when an f32 activation of `shape` would not fit.
    pub fn check(&self, layer: &str, shape: [usize; 4]) -> Result<()> {
        let needed = f32_bytes(&shape);
        if needed > self.bytes {
            return Err(Error::TooLarge { what: format!("{layer} (an f32 activation of shape {shape:?})"), needed, limit: self.bytes });
        }
        Ok(())
    }

    /// How many channels each chunk of an f32 activation of `shape` holds: all of them
    /// when it fits, else the most whole `unit`s of channels (a norm group) that fit.
    /// Fails naming `layer` when a single unit does not fit.
    pub fn chunk_channels(&self, layer: &str, shape: [usize; 4], unit: usize) -> Result<usize> {
        let [n, channels, h, w] = shape;
        if f32_bytes(&shape) <= self.bytes {
            return Ok(channels.max(1));
        }
        let unit_bytes = f32_bytes(&[n, unit, h, w]);
        if unit_bytes > self.bytes {
            return Err(Error::TooLarge {
                what: format!(
                    "{layer} ({unit} channels, one norm group, of an f32 activation of shape {shape:?}: the least it splits into)"
                ),
                needed: unit_bytes,
                limit: self.bytes,
            });
        }
        Ok((self.bytes / unit_bytes) as usize * unit)
    }
}
