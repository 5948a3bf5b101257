//! Euler ancestral as diffusers' `EulerAncestralDiscreteScheduler`: an Euler step down to
//! `sigma_down`, then fresh noise of standard deviation `sigma_up` (one draw from the
//! pipeline's generator every step), so that the marginal lands on `sigma_next`. One GPU
//! launch per step.

use super::clean_estimate::CleanEstimate;
use super::config::{Prediction, SchedulerConfig, unsupported};
use super::sigmas::{self, TrainSigmas};
use super::{Noise, Scheduler};
use crate::error::Result;
use crate::gpu::Tensor;

pub struct EulerAncestral {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    prediction: Prediction,
    init_noise_sigma: f32,
    estimate: Option<CleanEstimate>,
}

impl EulerAncestral {
    /// `file` names the config in errors. Honours `timestep_spacing` (default "linspace"),
    /// `steps_offset`, `rescale_betas_zero_snr` and epsilon / v-prediction; like diffusers
    /// it ignores the sigma reschedules, which this class does not have.
    pub fn new(config: &SchedulerConfig, file: &str, steps: usize) -> Result<Self> {
        let config = config.with_spacing_default("linspace");
        let prediction = config.prediction(file)?;
        if prediction == Prediction::Sample {
            return Err(unsupported(file, "prediction_type \"sample\" with Euler ancestral (diffusers has none)".into()));
        }
        let train = TrainSigmas::new(&sigmas::euler_alphas_cumprod(&config, file)?);
        let timesteps = sigmas::spaced_timesteps_f32(&config, file, steps)?;
        let sigmas: Vec<f32> = timesteps.iter().map(|&t| train.interp(t as f64) as f32).chain([0.0]).collect();
        Ok(Self {
            init_noise_sigma: sigmas::init_noise_sigma(&sigmas, &config.timestep_spacing),
            timesteps: timesteps.into_iter().map(f64::from).collect(),
            sigmas,
            prediction,
            estimate: None,
        })
    }

    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn sigma(&self, step: usize) -> Result<f32> {
        sigmas::step_sigma(&self.sigmas, self.timesteps.len(), step, "Euler ancestral step")
    }
}

/// `(sigma_up, sigma_down)` from `sigma_from` to `sigma_to`, in f32 as diffusers.
fn ancestral_sigmas(sigma_from: f32, sigma_to: f32) -> (f32, f32) {
    let (from2, to2) = (sigma_from * sigma_from, sigma_to * sigma_to);
    let sigma_up = (to2 * (from2 - to2) / from2).sqrt();
    (sigma_up, (to2 - sigma_up * sigma_up).sqrt())
}

impl Scheduler for EulerAncestral {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        sigmas::scale_model_input(sample, self.sigma(step)?)
    }

    fn step(&mut self, model_output: &Tensor, step: usize, sample: &Tensor, noise: &mut Noise) -> Result<Tensor> {
        let sigma = self.sigma(step)?;
        let (sigma_up, sigma_down) = ancestral_sigmas(sigma, self.sigmas[step + 1]);
        let (a, b) = sigmas::derivative_coefficients(self.prediction, sigma, sigma);
        self.estimate = Some(CleanEstimate::new(sigmas::denoised_coefficients(self.prediction, sigma), sample, model_output));
        let dt = (sigma_down - sigma) as f64;
        // Drawn every step, also the last where sigma_up is 0, to keep the generator in step.
        let fresh = noise.randn(model_output.shape())?;
        sigmas::linear_combination(&[(1.0 + dt * a, sample), (dt * b, model_output), (sigma_up as f64, &fresh)])
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        sigmas::add_noise_at_sigma(original, noise, self.sigma(step)?)
    }

    fn denoised(&self) -> Result<Option<Tensor>> {
        self.estimate.as_ref().map(CleanEstimate::compute).transpose()
    }
}
