//! PNDM (pseudo numerical methods, Liu et al. 2022) as diffusers' `PNDMScheduler`:
//! Adams-Bashforth combinations of up to four model outputs fed to the DDIM-like
//! transfer of the PNDM paper's formula (9). With `skip_prk_steps` (SD 1.5's config) it
//! is PLMS: the second model evaluation revisits the first timestep (a Heun-like start),
//! so `n` steps take `n + 1` evaluations. Without it (the class default) the first three
//! steps are pseudo Runge-Kutta steps of four evaluations each, so `n` steps take
//! `n + 9`. One or two GPU launches per evaluation.

use std::collections::VecDeque;

use super::config::{Prediction, SchedulerConfig, check_steps, unsupported};
use super::sigmas::{numpy_arange_down, numpy_linspace};
use super::{Noise, Scheduler, add_noise_at_alpha, timestep_at};
use crate::error::{Error, Result};
use crate::gpu::Tensor;

pub struct Pndm {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
    /// `num_train_timesteps // steps`, the distance between timesteps.
    step_ratio: i64,
    prediction: Prediction,
    /// How many of the timesteps are Runge-Kutta evaluations (12, or 0 for PLMS).
    prk_evaluations: usize,
    /// `num_train_timesteps // steps // 2`: a Runge-Kutta step's half step.
    half_step: i64,
    /// The latest model outputs, oldest first (at most four).
    ets: VecDeque<Tensor>,
    /// The sample the evaluations of one step all start from: PLMS's first step (its
    /// second evaluation restarts there), or the Runge-Kutta step in progress.
    step_start: Option<Tensor>,
    /// The model outputs of the Runge-Kutta step in progress.
    rk_outputs: Vec<Tensor>,
    /// The index of the first step run (diffusers' pipelines pass PNDM the tail of its
    /// timesteps and it counts from there).
    begin: usize,
    /// Steps run so far.
    counter: usize,
}

impl Pndm {
    /// `file` names the config in errors. Honours the beta schedule, `set_alpha_to_one`
    /// (default false here), `skip_prk_steps` (default false, as in diffusers: a config
    /// that does not set it gets the Runge-Kutta warm-up), `timestep_spacing`,
    /// `steps_offset` and epsilon / v-prediction; like diffusers it ignores
    /// `rescale_betas_zero_snr`, which this class does not have.
    pub fn new(config: &SchedulerConfig, file: &str, steps: usize) -> Result<Self> {
        let prediction = config.prediction(file)?;
        if prediction == Prediction::Sample {
            return Err(unsupported(file, "prediction_type \"sample\" with PNDM (diffusers has none)".into()));
        }
        let alphas_cumprod = config.alphas_cumprod(file)?;
        let set_alpha_to_one = config.set_alpha_to_one && config.gives("set_alpha_to_one");
        let ascending = ascending_timesteps(config, file, steps)?;
        let half_step = (config.num_train_timesteps / steps / 2) as i64;
        let timesteps = if config.skip_prk_steps {
            plms_timesteps(&ascending)
        } else {
            prk_timesteps(&ascending, half_step).ok_or_else(|| {
                Error::request(
                    "steps",
                    format!("{steps} steps: PNDM's Runge-Kutta warm-up (skip_prk_steps false in {file}) needs 4 at least"),
                )
            })?
        };
        Ok(Self {
            final_alpha_cumprod: if set_alpha_to_one { 1.0 } else { alphas_cumprod[0] },
            alphas_cumprod,
            timesteps: timesteps.into_iter().map(|t| t as f64).collect(),
            step_ratio: (config.num_train_timesteps / steps) as i64,
            prediction,
            prk_evaluations: if config.skip_prk_steps { 0 } else { 4 * RK_STEPS },
            half_step,
            ets: VecDeque::new(),
            step_start: None,
            rk_outputs: Vec::new(),
            begin: 0,
            counter: 0,
        })
    }

    /// One evaluation of a Runge-Kutta step, as diffusers' `step_prk`: each of the four
    /// evaluations moves the step's start sample by a transfer from the step's first
    /// timestep (a half step for the first two, a whole one for the last two), the last
    /// with the outputs' RK4 mean. The step's first timestep is read from the table by
    /// the evaluation count, as diffusers does, also when image to image starts later.
    fn step_prk(&mut self, model_output: &Tensor, step: usize, sample: &Tensor) -> Result<Tensor> {
        let phase = self.counter % 4;
        let prev_timestep = self.timesteps[step] as i64 - if phase % 2 == 1 { 0 } else { self.half_step };
        let timestep = self.timesteps[self.counter / 4 * 4] as i64;
        if phase == 0 {
            self.ets.push_back(model_output.clone());
            self.step_start = Some(sample.clone());
            self.rk_outputs.clear();
        }
        self.rk_outputs.push(model_output.clone());
        let start = self.step_start.clone().ok_or_else(|| Error::shape("PNDM step", "the Runge-Kutta step's sample is gone"))?;
        let (c_sample, c_output) = self.transfer(timestep, prev_timestep)?;
        let outputs: Vec<(f64, &Tensor)> = match phase {
            3 => RK4_WEIGHTS.iter().zip(&self.rk_outputs).map(|(w, e)| (c_output * w, e)).collect(),
            _ => vec![(c_output, model_output)],
        };
        let prev = super::sigmas::linear_combination(&[&[(c_sample, &start)][..], &outputs].concat())?;
        self.counter += 1;
        Ok(prev)
    }

    /// `alphas_cumprod[t]` with Python's indexing, which diffusers relies on for the
    /// timestep -1 that "trailing" spacing gives at some step counts.
    fn alpha_cumprod(&self, t: i64) -> Result<f32> {
        let len = self.alphas_cumprod.len() as i64;
        let index = if t < 0 { t + len } else { t };
        if !(0..len).contains(&index) {
            return Err(Error::shape("PNDM step", format!("timestep {t} is outside the {len} training timesteps")));
        }
        Ok(self.alphas_cumprod[index as usize])
    }

    /// `(c_sample, c_output)` of formula (9): `prev = c_sample * sample + c_output * output`,
    /// scalar math in f32 as diffusers does it on 0-d tensors, folded in f64.
    fn transfer(&self, timestep: i64, prev_timestep: i64) -> Result<(f64, f64)> {
        let alpha = self.alpha_cumprod(timestep)?;
        let alpha_prev = if prev_timestep >= 0 { self.alpha_cumprod(prev_timestep)? } else { self.final_alpha_cumprod };
        let (beta, beta_prev) = (1.0 - alpha, 1.0 - alpha_prev);
        let sample_coeff = (alpha_prev / alpha).sqrt() as f64;
        let denominator = alpha * beta_prev.sqrt() + (alpha * beta * alpha_prev).sqrt();
        let output_coeff = -((alpha_prev - alpha) as f64) / denominator as f64;
        Ok(match self.prediction {
            // The v-prediction becomes epsilon: sqrt(alpha) * v + sqrt(beta) * sample.
            Prediction::VPrediction => (sample_coeff + output_coeff * beta.sqrt() as f64, output_coeff * alpha.sqrt() as f64),
            _ => (sample_coeff, output_coeff),
        })
    }
}

/// Runge-Kutta steps of the warm-up, and RK4's weights of their four outputs.
const RK_STEPS: usize = 3;
const RK4_WEIGHTS: [f64; 4] = [1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0];

/// PLMS order: all but the last, the second to last again, the last; then reversed.
fn plms_timesteps(ascending: &[i64]) -> Vec<i64> {
    let last = ascending.len() - 1;
    ascending[..last].iter().chain(ascending[..last].last()).chain([&ascending[last]]).rev().copied().collect()
}

/// diffusers' `prk_timesteps` then `plms_timesteps`: each of the last four timesteps
/// with its midpoint `t + half_step`, repeated as the Runge-Kutta evaluations visit them
/// (12 entries, descending), then the timesteps below those, descending. `None` with
/// fewer than four timesteps, where diffusers' arrays do not broadcast.
fn prk_timesteps(ascending: &[i64], half_step: i64) -> Option<Vec<i64>> {
    let tail = ascending.len().checked_sub(4)?;
    let with_midpoints: Vec<i64> = ascending[tail..].iter().flat_map(|&t| [t, t + half_step]).collect();
    let doubled: Vec<i64> = with_midpoints[..7].iter().flat_map(|&t| [t, t]).collect();
    let prk = doubled[1..13].iter().rev();
    Some(prk.chain(ascending[..=tail].iter().rev()).copied().collect())
}

/// `PNDMScheduler.set_timesteps`' `_timesteps`, ascending.
fn ascending_timesteps(config: &SchedulerConfig, file: &str, steps: usize) -> Result<Vec<i64>> {
    check_steps(config, file, steps)?;
    let n = config.num_train_timesteps;
    Ok(match config.timestep_spacing.as_str() {
        "linspace" => numpy_linspace(0.0, (n - 1) as f64, steps).into_iter().map(|t| t.round_ties_even() as i64).collect(),
        "leading" => (0..steps).map(|i| (i * (n / steps) + config.steps_offset) as i64).collect(),
        "trailing" => {
            numpy_arange_down(n as f64, n as f64 / steps as f64).into_iter().rev().map(|t| t.round_ties_even() as i64 - 1).collect()
        }
        other => return Err(unsupported(file, format!("timestep_spacing {other:?}"))),
    })
}

impl Scheduler for Pndm {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(&mut self, model_output: &Tensor, step: usize, sample: &Tensor, _noise: &mut Noise) -> Result<Tensor> {
        if step >= self.timesteps.len() {
            return Err(Error::shape("PNDM step", format!("step {step} of {}", self.timesteps.len())));
        }
        if step != self.begin + self.counter {
            let expected = self.begin + self.counter;
            return Err(Error::shape("PNDM step", format!("steps run in order: expected step {expected}, got {step}")));
        }
        if self.counter < self.prk_evaluations {
            return self.step_prk(model_output, step, sample);
        }
        let mut timestep = self.timesteps[step] as i64;
        let mut prev_timestep = timestep - self.step_ratio;
        if self.counter == 1 {
            // The second evaluation is at the first step's target: redo that step with
            // the mean of both outputs.
            prev_timestep = timestep;
            timestep += self.step_ratio;
        } else {
            if self.ets.len() == 4 {
                self.ets.pop_front();
            }
            self.ets.push_back(model_output.clone());
        }
        let newest_first: Vec<&Tensor> = self.ets.iter().rev().collect();
        let (weights, outputs): (&[f64], Vec<&Tensor>) = match (self.counter, newest_first.len()) {
            (0, _) => (&[1.0], vec![model_output]),
            (1, _) => (&[0.5, 0.5], vec![model_output, newest_first[0]]),
            (_, 2) => (&[3.0 / 2.0, -1.0 / 2.0], newest_first),
            (_, 3) => (&[23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0], newest_first),
            _ => (&[55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0], newest_first),
        };
        let start = match self.counter {
            0 => {
                self.step_start = Some(sample.clone());
                sample.clone()
            }
            1 => self.step_start.take().ok_or_else(|| Error::shape("PNDM step", "the first step's sample is gone"))?,
            _ => sample.clone(),
        };
        let (c_sample, c_output) = self.transfer(timestep, prev_timestep)?;
        let terms: Vec<(f64, &Tensor)> =
            [(c_sample, &start)].into_iter().chain(weights.iter().zip(outputs).map(|(w, e)| (c_output * w, e))).collect();
        let prev = super::sigmas::linear_combination(&terms)?;
        self.counter += 1;
        Ok(prev)
    }

    /// diffusers' PNDM has no `set_begin_index`: image to image runs it on the tail of its
    /// timesteps, and its warm-up (the Runge-Kutta steps or the Heun-like restart, the
    /// growing Adams-Bashforth order) starts over there, as here.
    fn set_begin_index(&mut self, index: usize) -> Result<()> {
        super::check_begin_index(index, self.timesteps.len(), self.counter > 0)?;
        self.begin = index;
        Ok(())
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        let timestep = timestep_at(&self.timesteps, step, "PNDM add_noise")? as i64;
        add_noise_at_alpha(original, noise, self.alpha_cumprod(timestep)?)
    }
}
