//! DeepCache (Ma, Fang and Wang, "DeepCache: Accelerating Diffusion Models for Free",
//! 2023; the survey's §5 feature caching) as a generation option: every `interval`-th UNet
//! evaluation computes the whole UNet and keeps its deep features, the ones between
//! compute only the shallow layers above `branch` and reuse them. Training-free; the
//! price is fidelity, which `webdiffusion bench savings` measures.

use crate::error::{Error, Result};
use crate::gpu::Tensor;
use crate::models::unet_2d::{FeatureReuse, UNet2DConditionModel};

/// How often the whole UNet runs, and where the reuse splits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeepCache {
    /// Evaluations `0, interval, 2 interval, ...` of a generation are whole; 1 is every one.
    pub interval: usize,
    /// `UNet2DConditionModel::branches` index: 0 (the shallowest) reuses the most and is
    /// the fastest, deeper branches compute more every step and stay closer to the whole.
    pub branch: usize,
}

impl DeepCache {
    /// Every step whole: what a request without `deep_cache` runs.
    pub const OFF: DeepCache = DeepCache { interval: 1, branch: 0 };

    /// An error naming the option that does not fit `unet`.
    pub fn check(&self, unet: &UNet2DConditionModel) -> Result<()> {
        if self.interval == 0 {
            return Err(Error::request("deep_cache", "the cache interval must be at least 1 (1 computes every step whole)"));
        }
        match unet.unknown_branch(self.branch) {
            Some(detail) => Err(Error::request("deep_cache", detail)),
            None => Ok(()),
        }
    }

    /// Whether UNet evaluation `done` (counted from the generation's first) reuses deep
    /// features rather than computing the whole UNet.
    pub fn reuses(&self, done: usize) -> bool {
        !done.is_multiple_of(self.interval)
    }

    /// What evaluation `done` does, given the feature the last whole one kept.
    pub fn reuse<'a>(&self, done: usize, feature: Option<&'a Tensor>) -> FeatureReuse<'a> {
        match feature {
            _ if self.interval == 1 => FeatureReuse::None,
            Some(feature) if self.reuses(done) => FeatureReuse::Reuse { branch: self.branch, feature },
            _ => FeatureReuse::Store { branch: self.branch },
        }
    }
}
