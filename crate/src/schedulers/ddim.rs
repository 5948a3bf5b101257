//! DDIM (Song et al. 2021) as diffusers' `DDIMScheduler` with eta 0: a deterministic
//! step whose update is `c_x * sample + c_m * model_output`, the coefficients plain
//! Rust math, the combination one GPU launch.

use super::clean_estimate::CleanEstimate;
use super::config::{Prediction, SchedulerConfig, unsupported};
use super::{Noise, Scheduler, add_noise_at_alpha, spaced_timesteps, timestep_at};
use crate::error::{Error, Result};
use crate::gpu::Tensor;
use crate::kernels::elementwise as ew;

pub struct Ddim {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
    step_ratio: usize,
    prediction: Prediction,
    estimate: Option<CleanEstimate>,
}

impl Ddim {
    /// `file` names the config in errors.
    pub fn new(config: &SchedulerConfig, file: &str, steps: usize) -> Result<Self> {
        if config.thresholding {
            return Err(unsupported(file, "thresholding with DDIM".into()));
        }
        if config.clip_sample {
            return Err(unsupported(file, "clip_sample with DDIM".into()));
        }
        let alphas_cumprod = config.alphas_cumprod(file)?;
        let final_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] };
        Ok(Self {
            timesteps: spaced_timesteps(config, file, steps)?,
            step_ratio: config.num_train_timesteps / steps,
            prediction: config.prediction(file)?,
            alphas_cumprod,
            final_alpha_cumprod,
            estimate: None,
        })
    }

    fn alpha_cumprod(&self, timestep: usize) -> Result<f64> {
        let alpha = self.alphas_cumprod.get(timestep);
        Ok(*alpha.ok_or_else(|| Error::shape("DDIM step", format!("timestep {timestep} is past the schedule")))? as f64)
    }

    /// `(c_x, c_m)` with `prev = c_x * sample + c_m * model_output` at `timestep`.
    pub fn coefficients(&self, timestep: usize) -> Result<(f32, f32)> {
        let alpha = self.alpha_cumprod(timestep)?;
        let prev = timestep.checked_sub(self.step_ratio).map_or(self.final_alpha_cumprod, |t| self.alphas_cumprod[t]) as f64;
        let (sa, sb) = (alpha.sqrt(), (1.0 - alpha).sqrt());
        let (sp, sq) = (prev.sqrt(), (1.0 - prev).sqrt());
        // prev = sqrt(a_prev) * x0 + sqrt(1 - a_prev) * eps, with x0 and eps from the prediction.
        let (cx, cm) = match self.prediction {
            Prediction::Epsilon => (sp / sa, sq - sp * sb / sa),
            Prediction::VPrediction => (sp * sa + sq * sb, sq * sa - sp * sb),
            Prediction::Sample => (sq / sb, sp - sq * sa / sb),
        };
        Ok((cx as f32, cm as f32))
    }
}

impl Scheduler for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(&mut self, model_output: &Tensor, step: usize, sample: &Tensor, _noise: &mut Noise) -> Result<Tensor> {
        let timestep = timestep_at(&self.timesteps, step, "DDIM step")? as usize;
        let (cx, cm) = self.coefficients(timestep)?;
        let alpha = self.alpha_cumprod(timestep)?;
        let (sa, sb) = (alpha.sqrt(), (1.0 - alpha).sqrt());
        let clean = match self.prediction {
            Prediction::Epsilon => (1.0 / sa, -sb / sa),
            Prediction::VPrediction => (sa, -sb),
            Prediction::Sample => (0.0, 1.0),
        };
        self.estimate = Some(CleanEstimate::new(clean, sample, model_output));
        ew::axpby(sample.gpu(), cx, sample, cm, model_output, None)
    }

    fn denoised(&self) -> Result<Option<Tensor>> {
        self.estimate.as_ref().map(CleanEstimate::compute).transpose()
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        let timestep = timestep_at(&self.timesteps, step, "DDIM add_noise")? as usize;
        let alpha = *self
            .alphas_cumprod
            .get(timestep)
            .ok_or_else(|| Error::shape("DDIM add_noise", format!("timestep {timestep} is past the schedule")))?;
        add_noise_at_alpha(original, noise, alpha)
    }
}
