//! Bind groups kept across flushes, and the one uniform buffer they all bind. A
//! diffusion step launches the same kernels on the same pooled buffers as the step
//! before, so after the first step no bind group (and no uniform buffer) is created.

use std::collections::HashMap;
use std::num::NonZeroU64;

/// Flushes a bind group survives unused: a step takes a few flushes, so the groups of
/// the previous step are kept, while those of dropped tensors let their buffers go soon.
const KEEP_FLUSHES: u64 = 32;

/// Each storage binding of a launch: the buffer, where the tensor starts in it, its size.
pub(super) type Bindings = Vec<(wgpu::Buffer, u64, u64)>;

#[derive(PartialEq, Eq, Hash)]
struct Key {
    /// The compiled kernel's layout.
    layout: wgpu::BindGroupLayout,
    uniform_size: u64,
    buffers: Bindings,
}

pub(super) struct BindGroupCache {
    /// The uniform arena's buffer, grown as needed (every group binds it).
    uniforms: wgpu::Buffer,
    groups: HashMap<Key, (wgpu::BindGroup, u64)>,
    flush: u64,
}

fn uniform_buffer(device: &wgpu::Device, size: u64) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("uniform arena"),
        size: size.next_power_of_two().max(4096),
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

impl BindGroupCache {
    pub fn new(device: &wgpu::Device) -> Self {
        Self { uniforms: uniform_buffer(device, 0), groups: HashMap::new(), flush: 0 }
    }

    /// Writes this flush's parameters into the uniform buffer (a queue write, so it lands
    /// after the work already submitted has read the previous ones), and starts a flush.
    pub fn write_uniforms(&mut self, device: &wgpu::Device, queue: &wgpu::Queue, arena: &[u8]) {
        self.flush += 1;
        let needed = arena.len() as u64;
        if self.uniforms.size() < needed {
            // Every cached group binds the old buffer.
            self.groups.clear();
            self.uniforms = uniform_buffer(device, needed);
        }
        queue.write_buffer(&self.uniforms, 0, arena);
    }

    /// The group binding `uniform_size` bytes of parameters and `buffers` to `layout`:
    /// the cached one, or a new one (`created` counts those). `buffers` becomes the key.
    pub fn get(
        &mut self,
        device: &wgpu::Device,
        layout: &wgpu::BindGroupLayout,
        uniform_size: u64,
        buffers: Bindings,
        created: &mut u64,
    ) -> wgpu::BindGroup {
        let flush = self.flush;
        let key = Key { layout: layout.clone(), uniform_size, buffers };
        if let Some((group, used)) = self.groups.get_mut(&key) {
            *used = flush;
            return group.clone();
        }
        let buffers = &key.buffers;
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.uniforms,
                offset: 0,
                size: NonZeroU64::new(uniform_size),
            }),
        }];
        for (i, (buffer, offset, bytes)) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer, offset: *offset, size: NonZeroU64::new(*bytes) }),
            });
        }
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout, entries: &entries });
        *created += 1;
        self.groups.insert(key, (group.clone(), flush));
        group
    }

    /// Drops the groups no flush has used for a while, and with them their hold on buffers.
    pub fn evict_unused(&mut self) {
        let flush = self.flush;
        self.groups.retain(|_, (_, used)| flush - *used < KEEP_FLUSHES);
    }

    /// Drops every group (the pool is being emptied: the buffers must go too).
    pub fn clear(&mut self) {
        self.groups.clear();
    }
}
