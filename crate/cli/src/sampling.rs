//! How the front ends ask for sampling: the step savings (DeepCache, ToDo) `generate` and
//! the benches take, and the steps, sampler and guidance each evaluation prompt is drawn with.

use webdiffusion::pipeline::{DeepCache, Request};

/// `--cache-interval`, `--cache-branch` and `--token-merge`: the training-free step savings.

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

/// How the evaluation benches sample each prompt.
#[derive(clap::Args)]
pub struct SamplingArgs {
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Scheduler (sampler), as `generate --scheduler`; the model's own when omitted.
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Classifier-free guidance scale (an LCM model's guidance embedding takes it too).
    #[arg(long, default_value_t = webdiffusion::pipeline::DEFAULT_GUIDANCE)]
    pub guidance: f32,
    #[command(flatten)]
    pub savings: StepSavingArgs,
}

impl SamplingArgs {
    pub fn request(&self, prompt: &str, seed: u64) -> Request {
        Request {
            prompt: prompt.to_string(),
            steps: self.steps,
            guidance_scale: self.guidance,
            scheduler: self.scheduler.clone(),
            seed,
            deep_cache: self.savings.deep_cache(),
            token_merge: self.savings.token_merge,
            ..Default::default()
        }
    }
}
