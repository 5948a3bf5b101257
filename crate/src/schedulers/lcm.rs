//! Latent Consistency Models (Luo et al. 2023) as diffusers' `LCMScheduler`: timesteps
//! picked from the distillation schedule of `original_inference_steps`, the consistency
//! boundary condition `denoised = c_out * x0 + c_skip * sample` (Song et al. 2023, with the
//! timestep scaled by `timestep_scaling`), then fresh noise at the next timestep's level on
//! every step but the last. The guidance embedding (`timestep_cond`) is the pipeline's job.

use super::config::{Prediction, SchedulerConfig, unsupported};
use super::{Noise, Scheduler, add_noise_at_alpha, timestep_at};
use crate::error::{Error, Result};
use crate::gpu::Tensor;
use crate::kernels::elementwise::{self as ew, Unary};

pub struct Lcm {
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<f64>,
    timestep_scaling: f32,
    prediction: Prediction,
    clip_sample: Option<f32>,
    denoised: Option<Tensor>,
}

impl Lcm {
    /// `file` names the config in errors. Keys the file does not set take LCMScheduler's
    /// defaults (scaled_linear betas 0.00085..0.012, `clip_sample` false).
    pub fn new(config: &SchedulerConfig, file: &str, steps: usize) -> Result<Self> {
        Self::with_strength(config, file, steps, 1.0)
    }

    /// `LatentConsistencyModelImg2ImgPipeline`'s sampler: `set_timesteps(steps, strength=...)`
    /// picks all `steps` from the first `int(original_inference_steps * strength)` timesteps
    /// of the distillation schedule, instead of skipping steps as the other pipelines do.
    pub fn with_strength(config: &SchedulerConfig, file: &str, steps: usize, strength: f64) -> Result<Self> {
        let mut config = config.clone();
        if !config.gives("beta_start") {
            config.beta_start = 0.00085;
        }
        if !config.gives("beta_end") {
            config.beta_end = 0.012;
        }
        if !config.gives("beta_schedule") {
            config.beta_schedule = "scaled_linear".into();
        }
        if !config.gives("clip_sample") {
            config.clip_sample = false;
        }
        if config.thresholding {
            return Err(unsupported(file, "thresholding with LCM".into()));
        }
        Ok(Self {
            alphas_cumprod: config.alphas_cumprod(file)?,
            timesteps: lcm_timesteps(&config, file, steps, strength)?,
            timestep_scaling: config.timestep_scaling as f32,
            prediction: config.prediction(file)?,
            clip_sample: config.clip_sample.then_some(config.clip_sample_range as f32),
            denoised: None,
        })
    }

    /// `get_scalings_for_boundary_condition_discrete` in f32, as torch computes it for a
    /// timestep tensor: `(c_skip, c_out)` with `sigma_data` 0.5.
    pub fn boundary_scalings(&self, timestep: f64) -> (f32, f32) {
        let scaled = timestep as f32 * self.timestep_scaling;
        let denominator = scaled * scaled + 0.25;
        (0.25 / denominator, scaled / denominator.sqrt())
    }
}

/// LCMScheduler's `set_timesteps(steps)`: the distillation schedule `k - 1, 2k - 1, ...`
/// with `k = num_train_timesteps / original_inference_steps`, reversed, then `steps` of them
/// at evenly spaced indices. `timestep_spacing` and `steps_offset` play no part. A
/// `strength` below 1 keeps the first `int(original_inference_steps * strength)` of that
/// schedule (the least noisy ones) to pick from.
fn lcm_timesteps(config: &SchedulerConfig, file: &str, steps: usize, strength: f64) -> Result<Vec<f64>> {
    let (n, original) = (config.num_train_timesteps, config.original_inference_steps);
    if original == 0 || original > n {
        return Err(unsupported(file, format!("original_inference_steps {original} with {n} training timesteps")));
    }
    if steps == 0 || steps > original {
        return Err(Error::request("steps", format!("{steps} LCM steps (1 to original_inference_steps = {original} in {file})")));
    }
    let kept = (original as f64 * strength) as usize;
    if kept < steps {
        let detail = format!("{steps} LCM steps at strength {strength} (at most int({original} * {strength}) = {kept})");
        return Err(Error::request("steps", detail));
    }
    let k = n / original;
    let origin: Vec<usize> = (1..=kept).rev().map(|i| i * k - 1).collect();
    // np.floor(np.linspace(0, len, steps, endpoint=False)).
    let stride = kept as f64 / steps as f64;
    Ok((0..steps).map(|i| origin[(i as f64 * stride).floor() as usize] as f64).collect())
}

impl Scheduler for Lcm {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(&mut self, model_output: &Tensor, step: usize, sample: &Tensor, noise: &mut Noise) -> Result<Tensor> {
        let timestep = timestep_at(&self.timesteps, step, "LCM step")?;
        let last = step + 1 == self.timesteps.len();
        let prev_timestep = if last { timestep } else { self.timesteps[step + 1] };
        let alpha = self.alphas_cumprod[timestep as usize];
        let alpha_prev = self.alphas_cumprod[prev_timestep as usize];
        let (sa, sb) = (alpha.sqrt(), (1.0 - alpha).sqrt());
        // x0 = a * sample + b * model_output.
        let (a, b) = match self.prediction {
            Prediction::Epsilon => (1.0 / sa, -sb / sa),
            Prediction::VPrediction => (sa, -sb),
            Prediction::Sample => (0.0, 1.0),
        };
        let (c_skip, c_out) = self.boundary_scalings(timestep);
        let gpu = sample.gpu();
        let denoised = match self.clip_sample {
            // Without clipping, one launch: denoised = (c_out * a + c_skip) * sample + c_out * b * model_output.
            None => ew::axpby(gpu, c_out * a + c_skip, sample, c_out * b, model_output, None)?,
            Some(range) => {
                let x0 = ew::axpby(gpu, a, sample, b, model_output, None)?;
                let x0 = ew::unary(gpu, &x0, Unary::Clamp { min: -range, max: range })?;
                ew::axpby(gpu, c_out, &x0, c_skip, sample, None)?
            }
        };
        let prev_sample = if last {
            denoised.clone()
        } else {
            let z = noise.randn(model_output.shape())?;
            ew::axpby(gpu, alpha_prev.sqrt(), &denoised, (1.0 - alpha_prev).sqrt(), &z, None)?
        };
        self.denoised = Some(denoised);
        Ok(prev_sample)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        let timestep = timestep_at(&self.timesteps, step, "LCM add_noise")? as usize;
        add_noise_at_alpha(original, noise, self.alphas_cumprod[timestep])
    }

    /// `LCMSchedulerOutput.denoised`; after the final step it equals the returned latents.
    fn denoised(&self) -> Result<Option<Tensor>> {
        Ok(self.denoised.clone())
    }
}
