use crate::gpu::KernelKey;

pub fn variants() -> Vec<KernelKey> {
    Vec::new()
}
