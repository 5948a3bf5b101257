//! Opening the adapter and device, and the shared state every operation uses.

use std::fmt;
use std::sync::{Arc, Mutex};

use super::batch::Batch;
use super::kernel::KernelCache;
use super::pool::BufferPool;
use super::stats::{Counters, Profile};
use crate::error::{Error, Result};

/// What the adapter is and what it allows; printed by `webdiffusion info`.
#[derive(Debug, Clone)]
pub struct GpuInfo {
    pub adapter: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    /// `shader-f16` is enabled on the device (and not disabled by `WEBDIFFUSION_FORCE_F32`).
    pub shader_f16: bool,
    pub subgroups: bool,
    pub timestamp_query: bool,
    pub max_buffer_size: u64,
    pub max_storage_binding: u64,
    pub max_workgroup_storage: u32,
    pub max_workgroups_per_dim: u32,
    pub max_invocations_per_workgroup: u32,
    pub max_storage_buffers_per_stage: u32,
    pub uniform_offset_alignment: u32,
    /// Where a storage binding may start: tensor views (`Tensor::view_narrow`) begin on a
    /// multiple of this many bytes.
    pub storage_offset_alignment: u32,
}

impl fmt::Display for GpuInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        writeln!(f, "adapter            {}", self.adapter)?;
        writeln!(f, "backend            {} ({})", self.backend, self.device_type)?;
        writeln!(f, "driver             {}", self.driver)?;
        writeln!(f, "shader-f16         {}", self.shader_f16)?;
        writeln!(f, "subgroups          {}", self.subgroups)?;
        writeln!(f, "timestamp queries  {}", self.timestamp_query)?;
        writeln!(f, "max buffer         {:.0} MiB", mib(self.max_buffer_size))?;
        writeln!(f, "max storage bind   {:.0} MiB", mib(self.max_storage_binding))?;
        writeln!(f, "workgroup storage  {} KiB", self.max_workgroup_storage / 1024)?;
        writeln!(f, "workgroups/dim     {}", self.max_workgroups_per_dim)?;
        writeln!(f, "invocations/group  {}", self.max_invocations_per_workgroup)?;
        writeln!(f, "storage buffers    {} per stage", self.max_storage_buffers_per_stage)?;
        write!(f, "storage alignment  {} bytes", self.storage_offset_alignment)
    }
}

/// A handle to one GPU device. Cheap to clone; all clones share caches and the batch.
#[derive(Clone)]
pub struct Gpu {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: GpuInfo,
    /// The first asynchronous failure (device lost, out of memory, validation);
    /// every later operation returns it instead of touching the device.
    pub fault: Arc<Mutex<Option<Error>>>,
    pub kernels: Mutex<KernelCache>,
    pub pool: Mutex<BufferPool>,
    pub batch: Mutex<Batch>,
    pub counters: Mutex<Counters>,
    /// Set while launches are being timed (`Gpu::start_profile`).
    pub profile: Mutex<Option<Profile>>,
}

/// Choices made when opening the device.
#[derive(Debug, Clone, Copy)]
pub struct GpuOptions {
    /// Use shader-f16 kernels where the adapter has the feature.
    pub use_shader_f16: bool,
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self { use_shader_f16: !env_flag("WEBDIFFUSION_FORCE_F32") }
    }
}

fn env_flag(name: &str) -> bool {
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = name;
        false
    }
}

fn instance() -> wgpu::Instance {
    #[cfg(not(target_arch = "wasm32"))]
    let desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    #[cfg(target_arch = "wasm32")]
    let desc =
        wgpu::InstanceDescriptor { backends: wgpu::Backends::BROWSER_WEBGPU, ..wgpu::InstanceDescriptor::new_without_display_handle() };
    wgpu::Instance::new(desc)
}

impl Gpu {
    /// Opens the default adapter (natively `WGPU_BACKEND` and `WGPU_POWER_PREF` are honoured).
    pub async fn new() -> Result<Gpu> {
        Self::with_options(GpuOptions::default()).await
    }

    pub async fn with_options(options: GpuOptions) -> Result<Gpu> {
        let instance = instance();
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::from_env().unwrap_or(wgpu::PowerPreference::HighPerformance),
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| Error::NoAdapter(e.to_string()))?;
        let wanted = wgpu::Features::SHADER_F16 | wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SUBGROUP;
        let mut features = adapter.features() & wanted;
        if !options.use_shader_f16 {
            features.remove(wgpu::Features::SHADER_F16);
        }
        // Ask for everything the adapter really allows: the defaults (128 MiB per
        // binding, 256 MiB per buffer) are far below what full-size SD wants.
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("webdiffusion"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::DeviceRequest(e.to_string()))?;
        let adapter_info = adapter.get_info();
        let limits = device.limits();
        let info = GpuInfo {
            adapter: adapter_info.name.clone(),
            backend: format!("{:?}", adapter_info.backend),
            device_type: format!("{:?}", adapter_info.device_type),
            driver: format!("{} {}", adapter_info.driver, adapter_info.driver_info).trim().to_string(),
            shader_f16: device.features().contains(wgpu::Features::SHADER_F16),
            subgroups: device.features().contains(wgpu::Features::SUBGROUP),
            timestamp_query: device.features().contains(wgpu::Features::TIMESTAMP_QUERY),
            max_buffer_size: limits.max_buffer_size,
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            max_workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
            max_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_storage_buffers_per_stage: limits.max_storage_buffers_per_shader_stage,
            uniform_offset_alignment: limits.min_uniform_buffer_offset_alignment,
            storage_offset_alignment: limits.min_storage_buffer_offset_alignment,
        };

        let fault: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
        let lost = fault.clone();
        device.set_device_lost_callback(move |reason, message| {
            record_fault(&lost, Error::DeviceLost(format!("{reason:?}: {message}")));
        });
        let uncaptured = fault.clone();
        device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| record_fault(&uncaptured, Error::from(error))));

        let batch = Mutex::new(Batch::new(&device));
        Ok(Gpu {
            inner: Arc::new(Inner {
                device,
                queue,
                info,
                fault,
                kernels: Mutex::new(KernelCache::default()),
                pool: Mutex::new(BufferPool::default()),
                batch,
                counters: Mutex::new(Counters::default()),
                profile: Mutex::new(None),
            }),
        })
    }

    pub fn info(&self) -> &GpuInfo {
        &self.inner.info
    }

    /// Whether kernels may use `enable f16;` arithmetic.
    pub fn has_shader_f16(&self) -> bool {
        self.inner.info.shader_f16
    }

    /// The stored asynchronous failure, if any: every operation calls this first.
    pub(super) fn check(&self) -> Result<()> {
        match lock(&self.inner.fault).as_ref() {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    /// Gives the device up. Pending work is dropped; later calls fail with `DeviceLost`.
    pub fn destroy(&self) {
        let mut batch = lock(&self.inner.batch);
        batch.clear();
        batch.bind_groups.clear();
        drop(batch);
        self.inner.device.destroy();
        // The lost callback runs on the next poll natively; record the state now so
        // callers see it at once on every platform.
        record_fault(&self.inner.fault, Error::DeviceLost("the device was destroyed".into()));
    }

    /// Buffers held for reuse, in bytes (freed tensors land here).
    pub fn pooled_bytes(&self) -> u64 {
        lock(&self.inner.pool).held_bytes()
    }

    /// Releases every pooled buffer back to the driver (the cached bind groups hold
    /// buffers too, so they go first).
    pub fn trim_pool(&self) {
        lock(&self.inner.batch).bind_groups.clear();
        lock(&self.inner.pool).clear();
    }
}

impl From<wgpu::Error> for Error {
    fn from(error: wgpu::Error) -> Self {
        match error {
            wgpu::Error::OutOfMemory { source } => Error::OutOfMemory(source.to_string()),
            wgpu::Error::Validation { description, .. } => Error::Gpu(description),
            wgpu::Error::Internal { description, .. } => Error::Gpu(description),
        }
    }
}

fn record_fault(fault: &Mutex<Option<Error>>, error: Error) {
    let mut slot = lock(fault);
    if slot.is_none() {
        log::error!("{error}");
        *slot = Some(error);
    }
}

/// Locks a mutex, carrying on through poisoning: the state it guards stays valid
/// because no operation leaves it half-written before a panic.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn wgpu_out_of_memory_becomes_a_typed_error() {
        let source: Box<dyn std::error::Error + Send + Sync> = "allocation of 3 GiB failed".into();
        let error = Error::from(wgpu::Error::OutOfMemory { source });
        assert_eq!(error, Error::OutOfMemory("allocation of 3 GiB failed".into()));
        assert!(error.to_string().contains("out of memory"), "{error}");
    }
}
