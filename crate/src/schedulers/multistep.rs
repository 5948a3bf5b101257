//! The noise schedule shared by diffusers' multistep solvers (`DPMSolverMultistepScheduler`,
//! `UniPCMultistepScheduler`): integer timesteps, f32 sigmas `sqrt((1 - ᾱ) / ᾱ)` ending in a
//! final sigma, and the `(alpha_t, sigma_t, lambda_t)` of a sigma, all computed in the float
//! types diffusers uses (numpy f64 for the spacing, torch f32 for everything it keeps).

use super::config::{Prediction, SchedulerConfig, check_steps, unsupported};
use super::sigmas::{Reschedule, TrainSigmas, euler_alphas_cumprod, linear_combination, numpy_arange_down, numpy_linspace};
use crate::error::{Error, Result};
use crate::gpu::Tensor;
use crate::kernels::elementwise as ew;

/// Where the two classes' `set_timesteps` differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Solver {
    /// DPM-Solver: clips the schedule at `lambda_min_clipped`, leaves Karras timesteps of the
    /// cosine schedule unrounded, and ends a `sigma_min` schedule at the training sigma.
    Dpm,
    /// UniPC: honours `sigma_min`/`sigma_max` for Karras sigmas and ends a Karras `sigma_min`
    /// schedule at the last Karras sigma.
    UniPc,
}

/// The timesteps (as the model sees them) and `len + 1` sigmas, the last one final.
#[derive(Debug, Clone)]
pub(super) struct Schedule {
    pub timesteps: Vec<f64>,
    pub sigmas: Vec<f32>,
}

impl Schedule {
    /// `set_timesteps(steps)` of `solver` with `karras` sigmas.
    pub fn new(config: &SchedulerConfig, file: &str, steps: usize, solver: Solver, karras: bool) -> Result<Self> {
        for (set, option) in [
            (config.use_exponential_sigmas, "use_exponential_sigmas"),
            (config.use_beta_sigmas, "use_beta_sigmas"),
            (config.use_flow_sigmas, "use_flow_sigmas"),
            (config.use_lu_lambdas && solver == Solver::Dpm, "use_lu_lambdas"),
        ] {
            if set {
                return Err(unsupported(file, format!("{option} with the {solver:?} solver")));
            }
        }
        check_steps(config, file, steps)?;
        let n = config.num_train_timesteps;
        // Zero terminal SNR sets the last alphas_cumprod to 2^-24, as the Euler family does.
        let alphas_cumprod = euler_alphas_cumprod(config, file)?;
        let train = TrainSigmas::new(&alphas_cumprod);
        let last_timestep = match solver {
            Solver::Dpm => unclipped_timesteps(&alphas_cumprod, config.lambda_min_clipped),
            Solver::UniPc => n,
        };
        let final_sigma = |karras_last: Option<f64>| -> Result<f32> {
            match config.final_sigmas_type.as_str() {
                "zero" => Ok(0.0),
                "sigma_min" => Ok(karras_last.filter(|_| solver == Solver::UniPc).map_or(train.sigmas[0], |s| s as f32)),
                other => Err(unsupported(file, format!("final_sigmas_type {other:?}"))),
            }
        };
        // Spaced first, as diffusers does, so a bad `timestep_spacing` fails even with Karras.
        let spaced_timesteps = spaced(config, file, steps, last_timestep)?;
        let (timesteps, sigmas) = if karras {
            let (in_min, in_max) = (train.sigmas[0] as f64, train.sigmas[n - 1] as f64);
            let (min, max) = match solver {
                Solver::UniPc => (config.sigma_min.unwrap_or(in_min), config.sigma_max.unwrap_or(in_max)),
                Solver::Dpm => (in_min, in_max),
            };
            let sigmas = Reschedule::Karras.sigmas(min, max, steps);
            let round = solver == Solver::UniPc || config.beta_schedule != "squaredcos_cap_v2";
            let timesteps = sigmas
                .iter()
                .map(|&s| {
                    let t = train.sigma_to_t(s);
                    // torch's cast to int64 truncates what was left unrounded.
                    if round { t.round_ties_even() } else { t.trunc() }
                })
                .collect();
            let last = final_sigma(sigmas.last().copied())?;
            (timesteps, sigmas.iter().map(|&s| s as f32).chain([last]).collect::<Vec<f32>>())
        } else {
            let timesteps = spaced_timesteps;
            let sigmas: Vec<f32> = timesteps.iter().map(|&t| train.interp(t) as f32).collect();
            let last = final_sigma(None)?;
            (timesteps, sigmas.into_iter().chain([last]).collect())
        };
        if sigmas.iter().any(|s| !s.is_finite()) {
            return Err(unsupported(file, "a schedule whose sigmas are not finite".into()));
        }
        Ok(Self { timesteps, sigmas })
    }
}

/// `(alpha_t, sigma_t)` of the VP process at `sigma`, as f32 torch computes them.
pub(super) fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// The log signal-to-noise half-ratio `lambda = ln(alpha_t) - ln(sigma_t)` (f32).
pub(super) fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

/// The model's prediction of the clean sample at `sigma` (DPM-Solver++ and UniPC's
/// `convert_model_output` in data-prediction form).
pub(super) fn data_prediction(prediction: Prediction, model_output: &Tensor, sample: &Tensor, sigma: f32) -> Result<Tensor> {
    let (alpha, sigma_t) = alpha_sigma(sigma);
    match prediction {
        Prediction::Epsilon => ew::axpby(sample.gpu(), 1.0 / alpha, sample, -sigma_t / alpha, model_output, None),
        Prediction::VPrediction => ew::axpby(sample.gpu(), alpha, sample, -sigma_t, model_output, None),
        Prediction::Sample => Ok(model_output.clone()),
    }
}

/// The model's prediction of the noise at `sigma` (UniPC with `predict_x0` false).
pub(super) fn noise_prediction(prediction: Prediction, model_output: &Tensor, sample: &Tensor, sigma: f32) -> Result<Tensor> {
    let (alpha, sigma_t) = alpha_sigma(sigma);
    match prediction {
        Prediction::Epsilon => Ok(model_output.clone()),
        Prediction::VPrediction => ew::axpby(sample.gpu(), sigma_t, sample, alpha, model_output, None),
        Prediction::Sample => ew::axpby(sample.gpu(), 1.0 / sigma_t, sample, -alpha / sigma_t, model_output, None),
    }
}

/// `sum(c * t)`, the coefficients computed in f32 as torch does.
pub(super) fn combine(terms: &[(f32, &Tensor)]) -> Result<Tensor> {
    linear_combination(&terms.iter().map(|&(c, t)| (f64::from(c), t)).collect::<Vec<_>>())
}

/// `add_noise` of the multistep solvers: `alpha_t * original + sigma_t * noise` at the
/// step's sigma.
pub(super) fn add_noise_at_sigma(schedule: &Schedule, original: &Tensor, noise: &Tensor, step: usize, op: &'static str) -> Result<Tensor> {
    if step >= schedule.timesteps.len() {
        return Err(Error::shape(op, format!("step {step} of {}", schedule.timesteps.len())));
    }
    let (alpha_t, sigma_t) = alpha_sigma(schedule.sigmas[step]);
    ew::axpby(original.gpu(), alpha_t, original, sigma_t, noise, None)
}

/// DPM-Solver's `lambda_min_clipped`: the number of training timesteps whose lambda is at
/// least the clip (`torch.searchsorted` on the ascending, flipped lambdas, in f32).
fn unclipped_timesteps(alphas_cumprod: &[f32], lambda_min_clipped: f64) -> usize {
    let clip = lambda_min_clipped as f32;
    let below = alphas_cumprod.iter().filter(|&&a| lambda(a.sqrt(), (1.0 - a).sqrt()) < clip).count();
    alphas_cumprod.len() - below
}

/// Integer timesteps of the multistep solvers' `timestep_spacing`, which spaces `steps + 1`
/// points and drops the last (unlike DDIM's), up to `last_timestep`.
fn spaced(config: &SchedulerConfig, file: &str, steps: usize, last_timestep: usize) -> Result<Vec<f64>> {
    let last = last_timestep as f64;
    let timesteps: Vec<f64> = match config.timestep_spacing.as_str() {
        "linspace" => {
            let points = numpy_linspace(0.0, last - 1.0, steps + 1);
            points.iter().rev().take(steps).map(|t| t.round_ties_even()).collect()
        }
        "leading" => {
            let ratio = (last_timestep / (steps + 1)) as f64;
            (1..=steps).rev().map(|i| i as f64 * ratio + config.steps_offset as f64).collect()
        }
        "trailing" => {
            let ratio = config.num_train_timesteps as f64 / steps as f64;
            numpy_arange_down(last, ratio).into_iter().map(|t| t.round_ties_even() - 1.0).collect()
        }
        other => return Err(unsupported(file, format!("timestep_spacing {other:?}"))),
    };
    Ok(timesteps)
}
