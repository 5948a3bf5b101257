//! Linear multistep (Karras et al. 2022's k-diffusion `sample_lms`) as diffusers'
//! `LMSDiscreteScheduler`: the latest (up to) four derivatives, weighted by integrals of
//! their Lagrange basis polynomials over the step's sigma interval. Two GPU launches per
//! step, three where the derivative is not the model output itself.

use std::collections::VecDeque;

use super::clean_estimate::CleanEstimate;
use super::config::{Prediction, SchedulerConfig};
use super::sigmas::{self, Reschedule, TrainSigmas};
use super::{Noise, Scheduler, StepCursor};
use crate::error::Result;
use crate::gpu::Tensor;

/// diffusers' default (and largest) order.
const ORDER: usize = 4;

pub struct Lms {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    prediction: Prediction,
    init_noise_sigma: f32,
    estimate: Option<CleanEstimate>,
    /// The latest derivatives, oldest first.
    derivatives: VecDeque<Tensor>,
    cursor: StepCursor,
}

impl Lms {
    /// `file` names the config in errors. Honours `timestep_spacing` (default "linspace"),
    /// `steps_offset`, every `prediction_type` and the sigma reschedules as diffusers has
    /// them: Karras always between the interpolated end points, exponential and beta
    /// between `sigma_min` / `sigma_max` where the file sets them. Like diffusers it ignores
    /// `rescale_betas_zero_snr`, which this class does not have.
    pub fn new(config: &SchedulerConfig, file: &str, steps: usize) -> Result<Self> {
        let config = config.with_spacing_default("linspace");
        let prediction = config.prediction(file)?;
        let train = TrainSigmas::new(&config.alphas_cumprod(file)?);
        let mut timesteps: Vec<f64> = sigmas::spaced_timesteps_f32(&config, file, steps)?.into_iter().map(f64::from).collect();
        let mut schedule: Vec<f64> = timesteps.iter().map(|&t| train.interp(t)).collect();
        if let Some(reschedule) = Reschedule::from_config(&config, file)? {
            let (sigma_min, sigma_max) = sigmas::sigma_bounds(&config, &schedule, reschedule != Reschedule::Karras);
            schedule = reschedule.sigmas(sigma_min, sigma_max, steps);
            timesteps = schedule.iter().map(|&s| train.sigma_to_t(s)).collect();
        }
        let sigmas: Vec<f32> = schedule.iter().map(|&s| s as f32).chain([0.0]).collect();
        Ok(Self {
            init_noise_sigma: sigmas::init_noise_sigma(&sigmas, &config.timestep_spacing),
            timesteps: timesteps.into_iter().map(|t| t as f32 as f64).collect(),
            sigmas,
            prediction,
            derivatives: VecDeque::new(),
            cursor: StepCursor::default(),
            estimate: None,
        })
    }

    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn sigma(&self, step: usize) -> Result<f32> {
        sigmas::step_sigma(&self.sigmas, self.timesteps.len(), step, "LMS step")
    }
}

/// diffusers' `get_lms_coefficient(order, t, current_order)`: the integral over
/// `[sigmas[t], sigmas[t + 1]]` of the Lagrange basis polynomial that is 1 at
/// `sigmas[t - current_order]` and 0 at the other nodes `sigmas[t - k]`, `k < order`.
/// The polynomial has degree at most 3, which two-point Gauss-Legendre integrates exactly:
/// the result is exact up to f64 rounding (diffusers' scipy `quad` of an f32 integrand
/// agrees to about 1e-7 relative).
pub fn lms_coefficient(sigmas: &[f32], order: usize, t: usize, current_order: usize) -> f64 {
    let node = |k: usize| sigmas[t - k] as f64;
    let basis =
        |tau: f64| (0..order).filter(|&k| k != current_order).map(|k| (tau - node(k)) / (node(current_order) - node(k))).product::<f64>();
    let (low, high) = (sigmas[t] as f64, sigmas[t + 1] as f64);
    let (mid, half) = ((low + high) / 2.0, (high - low) / 2.0);
    let offset = half / 3f64.sqrt();
    half * (basis(mid - offset) + basis(mid + offset))
}

impl Scheduler for Lms {
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
        self.cursor.advance("LMS step", step, self.timesteps.len())?;
        let sigma = self.sigma(step)?;
        self.estimate = Some(CleanEstimate::new(sigmas::denoised_coefficients(self.prediction, sigma), sample, model_output));
        let derivative = match sigmas::derivative_coefficients(self.prediction, sigma, sigma) {
            (0.0, 1.0) => model_output.clone(),
            (a, b) => sigmas::linear_combination(&[(a, sample), (b, model_output)])?,
        };
        if self.derivatives.len() == ORDER {
            self.derivatives.pop_front();
        }
        self.derivatives.push_back(derivative);
        // diffusers takes the order from the step index, not from the derivatives it has:
        // started past step 0 (image to image), the first steps weight their few derivatives
        // with the coefficients of a higher order, as here.
        let order = (step + 1).min(ORDER);
        // The newest derivative goes with the node at this step, the oldest with the earliest.
        let terms: Vec<(f64, &Tensor)> = [(1.0, sample)]
            .into_iter()
            .chain(self.derivatives.iter().rev().enumerate().map(|(k, d)| (lms_coefficient(&self.sigmas, order, step, k), d)))
            .collect();
        sigmas::linear_combination(&terms)
    }

    fn set_begin_index(&mut self, index: usize) -> Result<()> {
        self.cursor.begin_at(index, self.timesteps.len())
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        sigmas::add_noise_at_sigma(original, noise, self.sigma(step)?)
    }

    fn denoised(&self) -> Result<Option<Tensor>> {
        self.estimate.as_ref().map(CleanEstimate::compute).transpose()
    }
}
