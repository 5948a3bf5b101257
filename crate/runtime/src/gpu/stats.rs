//! What the runtime does on the CPU (launches recorded, pipelines compiled, bind groups and
//! buffers created, submits) and, where the adapter has timestamp queries, how long each
//! launch ran on the GPU: the numbers `bench step` prints.

use std::collections::BTreeMap;

use super::context::{Gpu, lock};
use crate::error::{Error, Result};

/// Running totals since the device was opened; subtract two snapshots for one step's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub launches: u64,
    /// Pipelines compiled (every kernel variant is compiled once per device).
    pub pipelines: u64,
    pub bind_groups: u64,
    /// Storage buffers created because the pool had none of the size class.
    pub buffers: u64,
    pub submits: u64,
}

impl std::ops::Sub for Counters {
    type Output = Counters;
    fn sub(self, earlier: Counters) -> Counters {
        Counters {
            launches: self.launches - earlier.launches,
            pipelines: self.pipelines - earlier.pipelines,
            bind_groups: self.bind_groups - earlier.bind_groups,
            buffers: self.buffers - earlier.buffers,
            submits: self.submits - earlier.submits,
        }
    }
}

/// GPU time of the launches of one kernel entry point (`shader:entry`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct KernelTime {
    pub kernel: String,
    pub launches: u64,
    pub seconds: f64,
}

/// Launch timing in progress: each flush while profiling encodes every launch in a pass of
/// its own with a timestamp before and after; `Gpu::take_profile` reads them.
#[derive(Default)]
pub(super) struct Profile {
    flushes: Vec<ProfiledFlush>,
}

struct ProfiledFlush {
    labels: Vec<String>,
    readback: wgpu::Buffer,
}

impl Profile {
    /// Launches timed by one query set (wgpu allows 4096 queries in a set, two a launch).
    pub(super) const LAUNCHES_PER_SET: usize = 2048;

    /// A query set for `launches` launches' start and end timestamps.
    pub(super) fn query_set(&self, device: &wgpu::Device, launches: usize) -> wgpu::QuerySet {
        let count = (2 * launches) as u32;
        device.create_query_set(&wgpu::QuerySetDescriptor { label: Some("launch timestamps"), ty: wgpu::QueryType::Timestamp, count })
    }

    /// Resolves a query set's timestamps into a buffer to read once the GPU is done;
    /// `labels` names each launch it timed.
    pub(super) fn resolve(&mut self, device: &wgpu::Device, encoder: &mut wgpu::CommandEncoder, set: &wgpu::QuerySet, labels: Vec<String>) {
        let count = 2 * labels.len() as u32;
        let bytes = count as u64 * 8;
        let resolved = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("resolved timestamps"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamp readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        encoder.resolve_query_set(set, 0..count, &resolved, 0);
        encoder.copy_buffer_to_buffer(&resolved, 0, &readback, 0, bytes);
        self.flushes.push(ProfiledFlush { labels, readback });
    }
}

impl Gpu {
    /// A snapshot of the running counters.
    pub fn counters(&self) -> Counters {
        let pipelines = lock(&self.inner.kernels).len() as u64;
        Counters { pipelines, ..*lock(&self.inner.counters) }
    }

    /// Whether launches can be timed on the GPU (the adapter has timestamp queries).
    pub fn can_profile(&self) -> bool {
        self.inner.info.timestamp_query
    }

    /// Starts timing every launch on the GPU: until `take_profile`, each launch runs in a
    /// compute pass of its own (slower to encode, the same work on the device).
    pub fn start_profile(&self) -> Result<()> {
        if !self.can_profile() {
            return Err(Error::Gpu(format!("{} has no timestamp queries to time launches with", self.inner.info.adapter)));
        }
        self.flush()?;
        *lock(&self.inner.profile) = Some(Profile::default());
        Ok(())
    }

    /// Stops timing and returns the GPU time per kernel entry point since `start_profile`,
    /// longest first.
    pub async fn take_profile(&self) -> Result<Vec<KernelTime>> {
        self.finish().await?;
        let Some(profile) = lock(&self.inner.profile).take() else {
            return Err(Error::Gpu("take_profile without start_profile".into()));
        };
        let period = self.inner.queue.get_timestamp_period() as f64 * 1e-9;
        let mut by_kernel: BTreeMap<String, (u64, f64)> = BTreeMap::new();
        for flush in profile.flushes {
            let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&self.read_mappable(&flush.readback).await?);
            for (label, pair) in flush.labels.into_iter().zip(ticks.chunks_exact(2)) {
                let entry = by_kernel.entry(label).or_default();
                entry.0 += 1;
                entry.1 += pair[1].saturating_sub(pair[0]) as f64 * period;
            }
        }
        let mut times: Vec<KernelTime> =
            by_kernel.into_iter().map(|(kernel, (launches, seconds))| KernelTime { kernel, launches, seconds }).collect();
        times.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        Ok(times)
    }
}
