//! Euler (Karras et al. 2022, Algorithm 2 without churn) as diffusers'
//! `EulerDiscreteScheduler`: `prev = sample + (sigma_next - sigma) * derivative`, the
//! derivative linear in the sample and the model output, so a step is one GPU launch.

use super::clean_estimate::CleanEstimate;
use super::config::{Prediction, SchedulerConfig, unsupported};
use super::sigmas::{self, Reschedule, TrainSigmas};
use super::{Noise, Scheduler};
use crate::error::Result;
use crate::gpu::Tensor;

pub struct Euler {
    timesteps: Vec<f64>,
    /// One more than the steps (the last is `final_sigmas_type`'s), in f32 like diffusers.
    sigmas: Vec<f32>,
    prediction: Prediction,
    init_noise_sigma: f32,
    estimate: Option<CleanEstimate>,
}

impl Euler {
    /// `file` names the config in errors. Honours `timestep_spacing` (default "linspace"),
    /// `steps_offset`, `interpolation_type`, `use_karras_sigmas` / `use_exponential_sigmas` /
    /// `use_beta_sigmas` with `sigma_min` / `sigma_max`, `final_sigmas_type`,
    /// `timestep_type`, `rescale_betas_zero_snr` and every `prediction_type`.
    pub fn new(config: &SchedulerConfig, file: &str, steps: usize) -> Result<Self> {
        let config = config.with_spacing_default("linspace");
        let prediction = config.prediction(file)?;
        let train = TrainSigmas::new(&sigmas::euler_alphas_cumprod(&config, file)?);
        let mut timesteps: Vec<f64> = sigmas::spaced_timesteps_f32(&config, file, steps)?.into_iter().map(f64::from).collect();
        let mut schedule: Vec<f64> = match config.interpolation_type.as_str() {
            "linear" => timesteps.iter().map(|&t| train.interp(t)).collect(),
            "log_linear" => sigmas::log_linear_sigmas(&train, steps),
            other => return Err(unsupported(file, format!("interpolation_type {other:?}"))),
        };
        if let Some(reschedule) = Reschedule::from_config(&config, file)? {
            let (sigma_min, sigma_max) = sigmas::sigma_bounds(&config, &schedule, true);
            schedule = reschedule.sigmas(sigma_min, sigma_max, steps);
            timesteps = schedule.iter().map(|&s| train.sigma_to_t(s)).collect();
        }
        let final_sigma = match config.final_sigmas_type.as_str() {
            "zero" => 0.0,
            "sigma_min" => train.sigmas[0],
            other => return Err(unsupported(file, format!("final_sigmas_type {other:?}"))),
        };
        let sigmas: Vec<f32> = schedule.iter().map(|&s| s as f32).chain([final_sigma]).collect();
        let timesteps = match (config.timestep_type.as_str(), prediction) {
            // v-prediction models trained on continuous time take `0.25 * ln(sigma)`.
            ("continuous", Prediction::VPrediction) => {
                sigmas[..sigmas.len() - 1].iter().map(|&s| (0.25 * (s as f64).ln() as f32) as f64).collect()
            }
            ("discrete" | "continuous", _) => timesteps.into_iter().map(|t| t as f32 as f64).collect(),
            (other, _) => return Err(unsupported(file, format!("timestep_type {other:?}"))),
        };
        let init_noise_sigma = sigmas::init_noise_sigma(&sigmas, &config.timestep_spacing);
        Ok(Self { init_noise_sigma, timesteps, sigmas, prediction, estimate: None })
    }

    /// The noise levels, one more than the timesteps.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn sigma(&self, step: usize) -> Result<f32> {
        sigmas::step_sigma(&self.sigmas, self.timesteps.len(), step, "Euler step")
    }
}

impl Scheduler for Euler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        sigmas::scale_model_input(sample, self.sigma(step)?)
    }

    fn step(&mut self, model_output: &Tensor, step: usize, sample: &Tensor, _noise: &mut Noise) -> Result<Tensor> {
        let sigma = self.sigma(step)?;
        let (a, b) = sigmas::derivative_coefficients(self.prediction, sigma, sigma);
        self.estimate = Some(CleanEstimate::new(sigmas::denoised_coefficients(self.prediction, sigma), sample, model_output));
        // diffusers' dt is an f32 difference.
        let dt = (self.sigmas[step + 1] - sigma) as f64;
        sigmas::linear_combination(&[(1.0 + dt * a, sample), (dt * b, model_output)])
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        sigmas::add_noise_at_sigma(original, noise, self.sigma(step)?)
    }

    fn denoised(&self) -> Result<Option<Tensor>> {
        self.estimate.as_ref().map(CleanEstimate::compute).transpose()
    }
}
