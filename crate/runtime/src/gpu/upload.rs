//! Filling a tensor piece by piece as its bytes arrive (from a package shard read or
//! downloaded in chunks), so that no host copy of the whole tensor is ever made.

use super::tensor::Tensor;
use crate::error::{Error, Result};

/// Queue writes must start and end on a multiple of this many bytes.
const WRITE_ALIGNMENT: u64 = wgpu::COPY_BUFFER_ALIGNMENT;

impl Tensor {
    /// Writes `bytes` into this tensor's storage starting `offset` bytes in. Both
    /// `offset` and the length must be multiples of 4 and the range inside the tensor;
    /// [`StreamedTensor`] handles arbitrary chunk boundaries.
    pub fn write_bytes(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        let len = bytes.len() as u64;
        if !offset.is_multiple_of(WRITE_ALIGNMENT) || !len.is_multiple_of(WRITE_ALIGNMENT) || offset + len > self.byte_len() {
            return Err(Error::shape(
                "write_bytes",
                format!(
                    "{len} bytes at offset {offset} into a tensor of {} bytes: the range must lie inside it and both be multiples of {WRITE_ALIGNMENT}",
                    self.byte_len()
                ),
            ));
        }
        let gpu = self.gpu();
        if len > 0 {
            // Pending dispatches may still read this buffer's previous contents; a queue
            // write would land before them, so they go first.
            gpu.write_after_pending(|queue| queue.write_buffer(self.buffer(), self.byte_offset() + offset, bytes));
        }
        gpu.check()
    }
}

/// A tensor being filled in order from chunks of any size: whole words go to the GPU
/// as they arrive, and the at most 3 bytes of a word split between chunks wait for the next.
/// A clone shares the tensor and resumes writing where the original stood.
#[derive(Clone)]
pub struct StreamedTensor {
    tensor: Tensor,
    /// Bytes already written to the GPU (a multiple of 4).
    written: u64,
    carry: Vec<u8>,
}

impl StreamedTensor {
    pub fn new(tensor: Tensor) -> Self {
        Self { tensor, written: 0, carry: Vec::with_capacity(WRITE_ALIGNMENT as usize) }
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.written + self.carry.len() as u64
    }

    /// Appends the next bytes of the tensor's storage.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<()> {
        if self.received() + bytes.len() as u64 > self.tensor.byte_len() {
            return Err(Error::shape(
                "StreamedTensor::push",
                format!("{} bytes after {} overflow a tensor of {} bytes", bytes.len(), self.received(), self.tensor.byte_len()),
            ));
        }
        if !self.carry.is_empty() {
            let take = (WRITE_ALIGNMENT as usize - self.carry.len()).min(bytes.len());
            self.carry.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.carry.len() < WRITE_ALIGNMENT as usize {
                return Ok(());
            }
            self.tensor.write_bytes(self.written, &self.carry)?;
            self.written += WRITE_ALIGNMENT;
            self.carry.clear();
        }
        let whole = bytes.len() - bytes.len() % WRITE_ALIGNMENT as usize;
        self.tensor.write_bytes(self.written, &bytes[..whole])?;
        self.written += whole as u64;
        self.carry.extend_from_slice(&bytes[whole..]);
        Ok(())
    }

    /// The tensor, once every one of its bytes has arrived.
    pub fn finish(self) -> Result<Tensor> {
        if self.received() != self.tensor.byte_len() {
            return Err(Error::shape(
                "StreamedTensor::finish",
                format!("received {} of the tensor's {} bytes", self.received(), self.tensor.byte_len()),
            ));
        }
        Ok(self.tensor)
    }
}
