//! Recording: every kernel launch lands in one pending batch whose parameters share
//! one uniform arena; a flush encodes the whole batch as one compute pass and one submit.

use std::sync::Arc;

use super::bind_groups::{BindGroupCache, Bindings};
use super::context::{Gpu, lock};
use super::kernel::{Compiled, KernelKey};
use super::stats::Profile;
use super::tensor::Tensor;
use crate::error::{Error, Result};

/// How a kernel uses a storage binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    ReadWrite,
}

/// One kernel launch: which variant, its parameters (a `#[repr(C)]` struct that
/// matches the shader's `Params`), its tensors in binding order, and its grid.
pub struct Launch<'a> {
    pub shader: &'static str,
    pub entry: &'static str,
    pub defines: Vec<(&'static str, String)>,
    pub params: &'a [u8],
    pub bindings: &'a [(&'a Tensor, Access)],
    pub workgroups: [u32; 3],
}

struct Dispatch {
    kernel: Arc<Compiled>,
    /// `shader:entry`, for timing launches.
    name: (&'static str, &'static str),
    buffers: Bindings,
    uniform_offset: u32,
    uniform_size: u64,
    workgroups: [u32; 3],
}

pub(super) struct Batch {
    arena: Vec<u8>,
    dispatches: Vec<Dispatch>,
    pub bind_groups: BindGroupCache,
}

impl Batch {
    pub fn new(device: &wgpu::Device) -> Self {
        Self { arena: Vec::new(), dispatches: Vec::new(), bind_groups: BindGroupCache::new(device) }
    }

    /// Drops the pending launches.
    pub fn clear(&mut self) {
        self.arena.clear();
        self.dispatches.clear();
    }
}

/// WebGPU tracks a dispatch's buffer usage per buffer, not per range: a buffer written
/// through one binding may not be bound again in the same dispatch, even as a disjoint
/// view. Refused here with the launch named, instead of a device validation failure.
fn check_aliasing(launch: &Launch<'_>) -> Result<()> {
    for (i, (written, access)) in launch.bindings.iter().enumerate() {
        if *access != Access::ReadWrite {
            continue;
        }
        if let Some((other, _)) =
            launch.bindings.iter().enumerate().find(|&(j, (t, _))| j != i && t.shares_storage(written)).map(|(_, b)| b)
        {
            return Err(Error::shape(
                "launch",
                format!(
                    "{}:{} writes a {:?} tensor and binds a {:?} tensor of the same storage; give the output its own buffer",
                    launch.shader,
                    launch.entry,
                    written.shape(),
                    other.shape()
                ),
            ));
        }
    }
    Ok(())
}

impl Gpu {
    /// Records a launch; it runs at the next flush (a readback flushes).
    pub fn launch(&self, launch: Launch<'_>) -> Result<()> {
        self.check()?;
        let info = &self.inner.info;
        if let Some(&n) = launch.workgroups.iter().find(|&&n| n > info.max_workgroups_per_dim) {
            return Err(Error::TooLarge {
                what: format!("{}:{} with {:?} workgroups", launch.shader, launch.entry, launch.workgroups),
                needed: n as u64,
                limit: info.max_workgroups_per_dim as u64,
            });
        }
        check_aliasing(&launch)?;
        let mut buffers = Vec::with_capacity(launch.bindings.len());
        for (tensor, _) in launch.bindings {
            let bytes = tensor.byte_len().max(4);
            if bytes > info.max_storage_binding {
                return Err(Error::TooLarge {
                    what: format!("binding a {:?} tensor to {}:{}", tensor.shape(), launch.shader, launch.entry),
                    needed: bytes,
                    limit: info.max_storage_binding,
                });
            }
            buffers.push((tensor.buffer().clone(), tensor.byte_offset(), bytes));
        }
        let key = KernelKey {
            shader: launch.shader,
            entry: launch.entry,
            defines: launch.defines,
            bindings: launch.bindings.iter().map(|(_, access)| *access).collect(),
        };
        let kernel = lock(&self.inner.kernels).get(&self.inner.device, &key)?;
        self.check()?; // a pipeline the device rejected is reported here
        if launch.workgroups.contains(&0) {
            return Ok(()); // nothing to compute
        }
        lock(&self.inner.counters).launches += 1;
        let mut batch = lock(&self.inner.batch);
        let align = info.uniform_offset_alignment.max(16) as usize;
        let uniform_offset = batch.arena.len().next_multiple_of(align);
        let uniform_size = launch.params.len().max(16).next_multiple_of(16);
        batch.arena.resize(uniform_offset, 0);
        batch.arena.extend_from_slice(launch.params);
        batch.arena.resize(uniform_offset + uniform_size, 0);
        batch.dispatches.push(Dispatch {
            kernel,
            name: (key.shader, key.entry),
            buffers,
            uniform_offset: uniform_offset as u32,
            uniform_size: uniform_size as u64,
            workgroups: launch.workgroups,
        });
        Ok(())
    }

    /// A grid of `total` workgroups folded into x and y so no dimension passes the
    /// limit; kernels compute `wid.x + wid.y * nwg.x` and skip ids past `total`.
    pub fn grid(&self, total: u32) -> [u32; 3] {
        let max = self.inner.info.max_workgroups_per_dim;
        if total <= max {
            [total, 1, 1]
        } else {
            let y = total.div_ceil(max);
            [total.div_ceil(y), y, 1]
        }
    }

    /// Submits everything recorded so far.
    pub fn flush(&self) -> Result<()> {
        self.check()?;
        self.submit_with(|_| {});
        self.check()
    }

    /// Encodes the pending batch, then whatever `then` adds, and submits it all, holding
    /// the batch lock until the queue has it: another thread's queue write or submit
    /// must not land between this batch's encoding and its submission.
    pub(super) fn submit_with<R>(&self, then: impl FnOnce(&mut wgpu::CommandEncoder) -> R) -> R {
        let mut batch = lock(&self.inner.batch);
        let mut encoder = self.inner.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("batch") });
        self.encode_pending(&mut batch, &mut encoder);
        let result = then(&mut encoder);
        self.inner.queue.submit([encoder.finish()]);
        lock(&self.inner.counters).submits += 1;
        result
    }

    /// Runs `write` (a queue write) after everything recorded so far, holding the
    /// batch lock so no launch from another thread slips in between.
    pub(super) fn write_after_pending(&self, write: impl FnOnce(&wgpu::Queue)) {
        let mut batch = lock(&self.inner.batch);
        if !batch.dispatches.is_empty() {
            let mut encoder = self.inner.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("batch") });
            self.encode_pending(&mut batch, &mut encoder);
            self.inner.queue.submit([encoder.finish()]);
            lock(&self.inner.counters).submits += 1;
        }
        write(&self.inner.queue);
    }

    /// Encodes the pending batch as one compute pass into `encoder` and empties it.
    fn encode_pending(&self, batch: &mut Batch, encoder: &mut wgpu::CommandEncoder) {
        if batch.dispatches.is_empty() {
            return;
        }
        let device = &self.inner.device;
        let Batch { arena, dispatches, bind_groups: cache } = &mut *batch;
        cache.write_uniforms(device, &self.inner.queue, arena);
        let mut created = 0;
        // The batch is emptied below, so each launch's bindings move into the cache's key.
        let bind_groups: Vec<wgpu::BindGroup> = dispatches
            .iter_mut()
            .map(|d| cache.get(device, &d.kernel.layout, d.uniform_size, std::mem::take(&mut d.buffers), &mut created))
            .collect();
        cache.evict_unused();
        lock(&self.inner.counters).bind_groups += created;
        let mut profile = lock(&self.inner.profile);
        match profile.as_mut() {
            // Timed: a pass per launch, with a timestamp at its start and end.
            Some(profile) => {
                let dispatches: Vec<_> = batch.dispatches.iter().zip(&bind_groups).collect();
                for chunk in dispatches.chunks(Profile::LAUNCHES_PER_SET) {
                    let queries = profile.query_set(device, chunk.len());
                    for (i, (d, group)) in chunk.iter().enumerate() {
                        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: Some("timed launch"),
                            timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                                query_set: &queries,
                                beginning_of_pass_write_index: Some(2 * i as u32),
                                end_of_pass_write_index: Some(2 * i as u32 + 1),
                            }),
                        });
                        pass.set_pipeline(&d.kernel.pipeline);
                        pass.set_bind_group(0, *group, &[d.uniform_offset]);
                        pass.dispatch_workgroups(d.workgroups[0], d.workgroups[1], d.workgroups[2]);
                    }
                    let labels = chunk.iter().map(|(d, _)| format!("{}:{}", d.name.0, d.name.1)).collect();
                    profile.resolve(device, encoder, &queries, labels);
                }
            }
            None => {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("batch"), timestamp_writes: None });
                for (d, group) in batch.dispatches.iter().zip(&bind_groups) {
                    pass.set_pipeline(&d.kernel.pipeline);
                    pass.set_bind_group(0, group, &[d.uniform_offset]);
                    pass.dispatch_workgroups(d.workgroups[0], d.workgroups[1], d.workgroups[2]);
                }
            }
        }
        batch.clear();
    }
}
