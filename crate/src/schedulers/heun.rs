//! Heun's method (Karras et al. 2022, Algorithm 1 without churn) as diffusers'
//! `HeunDiscreteScheduler`: every sigma but the first is visited twice, an Euler
//! prediction then a trapezoidal correction from the first point, so `n` steps take
//! `2n - 1` model evaluations. One or two GPU launches per step.

use super::clean_estimate::CleanEstimate;
use super::config::{Prediction, SchedulerConfig};
use super::sigmas::{self, Reschedule, TrainSigmas};
use super::{Noise, Scheduler, StepCursor};
use crate::error::Result;
use crate::gpu::Tensor;
use crate::kernels::elementwise::{self as ew, Unary};

pub struct Heun {
    timesteps: Vec<f64>,
    /// `[s0, s1, s1, s2, s2, ..., 0]`, aligned with the timesteps plus the final 0.
    sigmas: Vec<f32>,
    prediction: Prediction,
    clip: Option<f32>,
    init_noise_sigma: f32,
    estimate: Option<CleanEstimate>,
    /// After a prediction: where it started, its derivative and its dt.
    first: Option<FirstOrder>,
    cursor: StepCursor,
}

struct FirstOrder {
    sample: Tensor,
    derivative: Derivative,
    dt: f64,
}

/// `on_sample * sample + on_other * other`: `other` is the model output, or the clamped
/// x0 estimate with `clip_sample`.
struct Derivative {
    on_sample: f64,
    on_other: f64,
    other: Tensor,
}

impl Heun {
    /// `file` names the config in errors. Honours `timestep_spacing` (default "linspace"),
    /// `steps_offset`, the beta schedules with "exp", `beta_start` / `beta_end` (defaults
    /// 0.00085 / 0.012 here), the sigma reschedules (with `sigma_min` / `sigma_max` where
    /// the file sets them), every `prediction_type` and `clip_sample`. Like diffusers it
    /// ignores `rescale_betas_zero_snr`, which this class does not have.
    pub fn new(config: &SchedulerConfig, file: &str, steps: usize) -> Result<Self> {
        let config = heun_defaults(config);
        let prediction = config.prediction(file)?;
        let train = TrainSigmas::new(&config.alphas_cumprod(file)?);
        let mut timesteps: Vec<f64> = sigmas::spaced_timesteps_f32(&config, file, steps)?.into_iter().map(f64::from).collect();
        let mut schedule: Vec<f64> = timesteps.iter().map(|&t| train.interp(t)).collect();
        if let Some(reschedule) = Reschedule::from_config(&config, file)? {
            let (sigma_min, sigma_max) = sigmas::sigma_bounds(&config, &schedule, true);
            schedule = reschedule.sigmas(sigma_min, sigma_max, steps);
            timesteps = schedule.iter().map(|&s| train.sigma_to_t(s)).collect();
        }
        let sigmas: Vec<f32> = schedule.iter().map(|&s| s as f32).chain([0.0]).collect();
        // Every sigma between the first and the final 0 twice, every timestep but the first twice.
        let last = sigmas.len() - 1;
        let sigmas: Vec<f32> = [sigmas[0]].into_iter().chain(sigmas[1..last].iter().flat_map(|&s| [s, s])).chain([sigmas[last]]).collect();
        let timesteps: Vec<f64> =
            [timesteps[0]].into_iter().chain(timesteps[1..].iter().flat_map(|&t| [t, t])).map(|t| t as f32 as f64).collect();
        Ok(Self {
            init_noise_sigma: sigmas::init_noise_sigma(&sigmas, &config.timestep_spacing),
            clip: config.clip_sample.then_some(config.clip_sample_range as f32),
            timesteps,
            sigmas,
            prediction,
            first: None,
            cursor: StepCursor::default(),
            estimate: None,
        })
    }

    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn sigma(&self, step: usize) -> Result<f32> {
        sigmas::step_sigma(&self.sigmas, self.timesteps.len(), step, "Heun step")
    }

    /// The derivative `(sample - denoised) / sigma` as terms of a linear combination: on
    /// the sample and the model output, or with `clip_sample` on the clamped `denoised`.
    fn derivative(&self, sample: &Tensor, model_output: &Tensor, sigma: f32) -> Result<Derivative> {
        let Some(range) = self.clip else {
            let (on_sample, on_other) = sigmas::derivative_coefficients(self.prediction, sigma, sigma);
            return Ok(Derivative { on_sample, on_other, other: model_output.clone() });
        };
        let (a, b) = sigmas::denoised_coefficients(self.prediction, sigma);
        let denoised = sigmas::linear_combination(&[(a, sample), (b, model_output)])?;
        let clamped = ew::unary(sample.gpu(), &denoised, Unary::Clamp { min: -range, max: range })?;
        let s = sigma as f64;
        Ok(Derivative { on_sample: 1.0 / s, on_other: -1.0 / s, other: clamped })
    }
}

/// HeunDiscreteScheduler's defaults where they differ from [`SchedulerConfig`]'s, and its
/// extra "exp" beta schedule (`betas_for_alpha_bar` with `exp(-12 t)`), as trained betas.
fn heun_defaults(config: &SchedulerConfig) -> SchedulerConfig {
    let mut config = config.with_spacing_default("linspace");
    if !config.gives("beta_start") {
        config.beta_start = 0.00085;
    }
    if !config.gives("beta_end") {
        config.beta_end = 0.012;
    }
    if !config.gives("clip_sample") {
        config.clip_sample = false;
    }
    if config.beta_schedule == "exp" && config.trained_betas.is_none() {
        let n = config.num_train_timesteps;
        let alpha_bar = |t: f64| (t * -12.0).exp();
        let betas = (0..n).map(|i| (1.0 - alpha_bar((i + 1) as f64 / n as f64) / alpha_bar(i as f64 / n as f64)).min(0.999));
        config.trained_betas = Some(betas.collect());
    }
    config
}

impl Scheduler for Heun {
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
        self.cursor.advance("Heun step", step, self.timesteps.len())?;
        // The prediction evaluates the model at this sigma, and so does the correction
        // (there the sigma it steps to, which the schedule repeats at this index).
        let sigma = self.sigma(step)?;
        let clean = sigmas::denoised_coefficients(self.prediction, sigma);
        self.estimate = Some(CleanEstimate::new(clean, sample, model_output).clamped(self.clip));
        let derivative = self.derivative(sample, model_output, sigma)?;
        let prev = match self.first.take() {
            None => {
                // Euler prediction to the next sigma; diffusers' dt is an f32 difference.
                let dt = (self.sigmas[step + 1] - sigma) as f64;
                let d = &derivative;
                let prev = sigmas::linear_combination(&[(1.0 + dt * d.on_sample, sample), (dt * d.on_other, &d.other)])?;
                self.first = Some(FirstOrder { sample: sample.clone(), derivative, dt });
                prev
            }
            Some(FirstOrder { sample: start, derivative: first, dt }) => {
                // Correction: from the first point with the mean of both derivatives.
                let (half_dt, d) = (dt / 2.0, &derivative);
                sigmas::linear_combination(&[
                    (1.0 + half_dt * first.on_sample, &start),
                    (half_dt * first.on_other, &first.other),
                    (half_dt * d.on_sample, sample),
                    (half_dt * d.on_other, &d.other),
                ])?
            }
        };
        Ok(prev)
    }

    /// Each step of the nominal schedule is a prediction and a correction.
    fn order(&self) -> usize {
        2
    }

    /// diffusers' begin index `t_start * 2` lands on the second copy of a timestep, where
    /// a prediction starts (and at the first, index 0): no correction is pending there.
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
