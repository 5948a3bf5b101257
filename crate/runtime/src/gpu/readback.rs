//! Copying results back to the CPU, asynchronously on both targets: natively the
//! device is polled to completion, in the browser the event loop resolves the map.

use super::context::Gpu;
use super::tensor::Tensor;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::quant;

impl Gpu {
    async fn read_bytes(&self, tensor: &Tensor) -> Result<Vec<u8>> {
        self.check()?;
        let len = tensor.byte_len();
        if len == 0 {
            return Ok(Vec::new());
        }
        let staging = self.inner.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: len,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.submit_with(|encoder| encoder.copy_buffer_to_buffer(tensor.buffer(), tensor.byte_offset(), &staging, 0, len));
        self.read_mappable(&staging).await
    }

    /// The contents of a `MAP_READ` buffer once the work submitted before has finished.
    pub(super) async fn read_mappable(&self, staging: &wgpu::Buffer) -> Result<Vec<u8>> {
        let (sender, receiver) = futures_channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |result| {
            let _ = sender.send(result);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.inner
            .device
            .poll(wgpu::PollType::Wait { submission_index: None, timeout: None })
            .map_err(|e| Error::Readback(e.to_string()))?;
        let mapped = receiver.await.map_err(|_| Error::Readback("the map request was dropped".into()))?;
        self.check()?;
        mapped.map_err(|e| Error::Readback(e.to_string()))?;
        let bytes = staging.get_mapped_range(..).map_err(|e| Error::Readback(e.to_string()))?.to_vec();
        staging.unmap();
        Ok(bytes)
    }
}

impl Tensor {
    /// The values as f32 (f16 storage is widened exactly; u32 indices are converted;
    /// q8 and q4 are dequantized as the kernels read them).
    pub async fn to_vec(&self) -> Result<Vec<f32>> {
        let bytes = self.gpu().read_bytes(self).await?;
        Ok(match self.dtype() {
            DType::F32 => bytemuck::pod_collect_to_vec(&bytes),
            DType::U32 => bytemuck::pod_collect_to_vec::<u8, u32>(&bytes).into_iter().map(|i| i as f32).collect(),
            DType::F16 => {
                let halves: Vec<half::f16> = bytemuck::pod_collect_to_vec(&bytes);
                halves[..self.numel()].iter().map(|h| h.to_f32()).collect()
            }
            DType::Q8 | DType::Q4 => quant::dequantize(self.dtype(), self.shape(), &bytes)?,
        })
    }
}

impl Gpu {
    /// Submits pending work and waits until the GPU has finished all of it
    /// (for timing; results are read with `Tensor::to_vec`).
    pub async fn finish(&self) -> Result<()> {
        self.check()?;
        self.submit_with(|_| {});
        let (sender, receiver) = futures_channel::oneshot::channel();
        self.inner.queue.on_submitted_work_done(move || {
            let _ = sender.send(());
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.inner
            .device
            .poll(wgpu::PollType::Wait { submission_index: None, timeout: None })
            .map_err(|e| Error::Readback(e.to_string()))?;
        receiver.await.map_err(|_| Error::Readback("the device stopped before the work finished".into()))?;
        self.check()
    }
}
