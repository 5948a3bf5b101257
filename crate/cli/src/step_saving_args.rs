//! `--cache-interval`, `--cache-branch` and `--token-merge`: the training-free step savings
//! (DeepCache, ToDo) for `generate` and the evaluation benches.

use webdiffusion::pipeline::DeepCache;

#[derive(clap::Args, Clone, Copy)]
pub struct StepSavingArgs {
    /// DeepCache: compute the whole UNet every N steps and reuse its deep features in
    /// between (1: every step whole).
    #[arg(long, default_value_t = 1)]
    pub cache_interval: usize,
    /// DeepCache's branch: 0 reuses the most (fastest); higher computes more each step.
    #[arg(long, default_value_t = 0)]
    pub cache_branch: usize,
    /// Token merging as ToDo does it: self-attention at the latents' resolution takes its keys
    /// and values from a grid this many times coarser (1: every token).
    #[arg(long)]
    pub token_merge: Option<f32>,
}

impl StepSavingArgs {
    pub fn deep_cache(&self) -> Option<DeepCache> {
        (self.cache_interval != 1 || self.cache_branch != 0)
            .then_some(DeepCache { interval: self.cache_interval, branch: self.cache_branch })
    }
}
