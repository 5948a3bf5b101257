//! DPM-Solver++ (Lu et al. 2022) as diffusers' `DPMSolverMultistepScheduler` with
//! `solver_order` 2: the second-order multistep update in data prediction, its SDE variant
//! (`sde-dpmsolver++`) and Karras sigmas. The coefficients are f32 scalar math in torch's
//! order; each step is one launch for the data prediction and one or two for the update.

use super::config::{Prediction, SchedulerConfig, unsupported};
use super::multistep::{Schedule, Solver, add_noise_at_sigma, alpha_sigma, combine, data_prediction, lambda};
use super::{Noise, Scheduler, StepCursor};
use crate::error::Result;
use crate::gpu::Tensor;

/// Which of our DPM-Solver++ samplers: the name fixes these, whatever the config says
/// (its `algorithm_type`, `solver_order` and `use_karras_sigmas` are not read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DpmVariant {
    /// `sde-dpmsolver++` (fresh noise every step) instead of `dpmsolver++`.
    pub sde: bool,
    pub karras: bool,
}

impl DpmVariant {
    /// "DPM++ 2M".
    pub const TWO_M: Self = Self { sde: false, karras: false };
    /// "DPM++ 2M Karras".
    pub const TWO_M_KARRAS: Self = Self { sde: false, karras: true };
    /// "DPM++ 2M SDE Karras".
    pub const TWO_M_SDE_KARRAS: Self = Self { sde: true, karras: true };
}

pub struct DpmSolver {
    schedule: Schedule,
    prediction: Prediction,
    sde: bool,
    heun: bool,
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigma_zero: bool,
    /// The data prediction of the step before, once there is one.
    previous: Option<Tensor>,
    cursor: StepCursor,
}

/// One update `c_sample * sample + c_current * x0 + c_previous * x0_prev + c_noise * z`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Update {
    sample: f32,
    current: f32,
    previous: f32,
    noise: f32,
}

impl DpmSolver {
    /// `file` names the config in errors. Keys the file does not set take
    /// DPMSolverMultistepScheduler's defaults (`timestep_spacing` "linspace").
    pub fn new(config: &SchedulerConfig, file: &str, steps: usize, variant: DpmVariant) -> Result<Self> {
        let config = config.with_spacing_default("linspace");
        let prediction = config.prediction(file)?;
        if config.thresholding {
            return Err(unsupported(file, "thresholding with DPM-Solver".into()));
        }
        let learned_variance = matches!(config.variance_type.as_deref(), Some("learned" | "learned_range"));
        if learned_variance && prediction == Prediction::Epsilon {
            return Err(unsupported(file, format!("variance_type {:?} with DPM-Solver", config.variance_type.unwrap_or_default())));
        }
        // diffusers maps UniPC's and DEIS's solver types to "midpoint".
        let heun = match config.solver_type.as_str() {
            "midpoint" | "logrho" | "bh1" | "bh2" => false,
            "heun" => true,
            other => return Err(unsupported(file, format!("DPM-Solver solver_type {other:?}"))),
        };
        Ok(Self {
            schedule: Schedule::new(&config, file, steps, Solver::Dpm, variant.karras)?,
            prediction,
            sde: variant.sde,
            heun,
            lower_order_final: config.lower_order_final,
            euler_at_final: config.euler_at_final,
            final_sigma_zero: config.final_sigmas_type == "zero",
            previous: None,
            cursor: StepCursor::default(),
        })
    }

    /// The sigmas of every step and the final one.
    pub fn sigmas(&self) -> &[f32] {
        &self.schedule.sigmas
    }

    /// diffusers' `lower_order_final`: the last step is first order when `euler_at_final`,
    /// when `lower_order_final` with fewer than 15 steps, or when it goes to sigma 0.
    fn lower_order_final_at(&self, step: usize) -> bool {
        let steps = self.schedule.timesteps.len();
        step + 1 == steps && (self.euler_at_final || (self.lower_order_final && steps < 15) || self.final_sigma_zero)
    }

    /// `dpm_solver_first_order_update` in f32.
    fn first_order(&self, step: usize) -> Update {
        let sigmas = &self.schedule.sigmas;
        let (alpha_t, sigma_t) = alpha_sigma(sigmas[step + 1]);
        let (alpha_s, sigma_s) = alpha_sigma(sigmas[step]);
        let h = lambda(alpha_t, sigma_t) - lambda(alpha_s, sigma_s);
        if self.sde {
            let decay = 1.0 - (-2.0 * h).exp();
            Update { sample: sigma_t / sigma_s * (-h).exp(), current: alpha_t * decay, previous: 0.0, noise: sigma_t * decay.sqrt() }
        } else {
            Update { sample: sigma_t / sigma_s, current: -(alpha_t * ((-h).exp() - 1.0)), previous: 0.0, noise: 0.0 }
        }
    }

    /// `multistep_dpm_solver_second_order_update` in f32, with `D1 = (x0 - x0_prev) / r0`
    /// folded into the coefficients of the two data predictions.
    fn second_order(&self, step: usize) -> Update {
        let sigmas = &self.schedule.sigmas;
        let (alpha_t, sigma_t) = alpha_sigma(sigmas[step + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(sigmas[step]);
        let (alpha_s1, sigma_s1) = alpha_sigma(sigmas[step - 1]);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda(alpha_t, sigma_t) - lambda_s0;
        let inv_r0 = 1.0 / ((lambda_s0 - lambda(alpha_s1, sigma_s1)) / h);
        // x_t = c_sample * x + c_d0 * D0 + c_d1 * D1 (+ noise), then D0 = x0, D1 = inv_r0 * (x0 - x0_prev).
        let (sample, c_d0, c_d1, noise) = if self.sde {
            let decay = 1.0 - (-2.0 * h).exp();
            let c_d0 = alpha_t * decay;
            let c_d1 = if self.heun { alpha_t * (decay / (-2.0 * h) + 1.0) } else { 0.5 * c_d0 };
            (sigma_t / sigma_s0 * (-h).exp(), c_d0, c_d1, sigma_t * decay.sqrt())
        } else {
            let c_d0 = -(alpha_t * ((-h).exp() - 1.0));
            let c_d1 = if self.heun { alpha_t * (((-h).exp() - 1.0) / h + 1.0) } else { 0.5 * c_d0 };
            (sigma_t / sigma_s0, c_d0, c_d1, 0.0)
        };
        Update { sample, current: c_d0 + c_d1 * inv_r0, previous: -(c_d1 * inv_r0), noise }
    }
}

impl Scheduler for DpmSolver {
    fn timesteps(&self) -> &[f64] {
        &self.schedule.timesteps
    }

    fn step(&mut self, model_output: &Tensor, step: usize, sample: &Tensor, noise: &mut Noise) -> Result<Tensor> {
        self.cursor.advance("DPM-Solver step", step, self.schedule.timesteps.len())?;
        let x0 = data_prediction(self.prediction, model_output, sample, self.schedule.sigmas[step])?;
        // Drawn on every step, the last included, as diffusers does.
        let z = if self.sde { Some(noise.randn(model_output.shape())?) } else { None };
        // The first step has no previous prediction: first order, as diffusers' warm-up.
        let previous = self.previous.as_ref().filter(|_| !self.lower_order_final_at(step));
        let update = if previous.is_some() { self.second_order(step) } else { self.first_order(step) };
        let mut terms = vec![(update.sample, sample), (update.current, &x0)];
        terms.extend(previous.map(|p| (update.previous, p)));
        terms.extend(z.as_ref().map(|z| (update.noise, z)));
        let prev_sample = combine(&terms)?;
        self.previous = Some(x0);
        Ok(prev_sample)
    }

    /// Started later, the first step is first order (no previous prediction yet), and
    /// `lower_order_final` still looks at the whole schedule, as in diffusers.
    fn set_begin_index(&mut self, index: usize) -> Result<()> {
        self.cursor.begin_at(index, self.schedule.timesteps.len())
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        add_noise_at_sigma(&self.schedule, original, noise, step, "DPM-Solver add_noise")
    }

    /// The data prediction of the last step (kept as the next step's previous one).
    fn denoised(&self) -> Result<Option<Tensor>> {
        Ok(self.previous.clone())
    }
}
