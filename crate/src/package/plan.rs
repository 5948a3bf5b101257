//! A package's size from tensor names and shapes alone (no weights read): the same
//! layout the writer uses, summed per component and storage type.

use std::collections::BTreeMap;

use super::policy::Policy;
use super::writer::layout;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageSize {
    /// Tensor bytes by component, then by storage type name (`f16`, `q8`, ...).
    pub components: BTreeMap<String, BTreeMap<String, u64>>,
    /// All shard bytes, alignment padding included.
    pub stream_bytes: u64,
    pub shards: usize,
}

impl PackageSize {
    /// A component's tensor bytes, all types together.
    pub fn component_bytes(&self, component: &str) -> u64 {
        self.components.get(component).map_or(0, |types| types.values().sum())
    }
}

/// The size of a package holding `tensors` (component, name, shape) in layout order.
pub fn package_size<'a>(tensors: impl Iterator<Item = (&'a str, &'a str, &'a [usize])>, policy: &Policy, shard_bytes: u64) -> PackageSize {
    let entries = layout(tensors, policy, shard_bytes);
    let mut components: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for entry in &entries {
        *components.entry(entry.component.clone()).or_default().entry(entry.dtype.clone()).or_default() += entry.length;
    }
    let stream_bytes = entries.last().map_or(0, |e| e.shard as u64 * shard_bytes + e.offset + e.length);
    PackageSize { components, stream_bytes, shards: stream_bytes.div_ceil(shard_bytes) as usize }
}
