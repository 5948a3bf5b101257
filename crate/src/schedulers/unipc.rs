//! UniPC (Zhao et al. 2023) as diffusers' `UniPCMultistepScheduler`: a multistep predictor
//! (UniP) and, from the second step on, a corrector (UniC) that refines the previous step's
//! result with the new model output before predicting. B(h) variants bh1 and bh2, data or
//! noise prediction, solver orders 1 and 2. The coefficients are f32 scalar math in torch's
//! order; the differences `D1 = (m_i - m0) / r_k` are folded into them, so each step is one
//! launch for the model output conversion and one or two per update.

use super::config::{Prediction, SchedulerConfig, unsupported};
use super::multistep::{Schedule, Solver, add_noise_at_sigma, alpha_sigma, combine, data_prediction, lambda, noise_prediction};
use super::{Noise, Scheduler, StepCursor};
use crate::error::Result;
use crate::gpu::Tensor;

pub struct UniPc {
    schedule: Schedule,
    prediction: Prediction,
    predict_x0: bool,
    bh2: bool,
    order: usize,
    lower_order_final: bool,
    disable_corrector: Vec<usize>,
    /// The converted model outputs of the latest `order` steps, oldest first.
    outputs: Vec<Tensor>,
    /// The (corrected) sample the last predictor started from, and that predictor's order.
    last_sample: Option<(Tensor, usize)>,
    lower_order_nums: usize,
    cursor: StepCursor,
}

/// The scalars the predictor and corrector share for a step from sigma `s0` to sigma `t`:
/// `x_t = sample * x + m0 * model_s0 - scale * (sum of rho_k * D1_k)`.
struct Bh {
    sample: f32,
    m0: f32,
    scale: f32,
    h: f32,
    hh: f32,
    h_phi_1: f32,
    b_h: f32,
    lambda_s0: f32,
}

impl UniPc {
    /// `file` names the config in errors. Keys the file does not set take
    /// UniPCMultistepScheduler's defaults (`timestep_spacing` "linspace", `solver_type` "bh2").
    pub fn new(config: &SchedulerConfig, file: &str, steps: usize) -> Result<Self> {
        let mut config = config.with_spacing_default("linspace");
        if !config.gives("solver_type") {
            config.solver_type = "bh2".into();
        }
        let prediction = config.prediction(file)?;
        if config.thresholding && config.predict_x0 {
            return Err(unsupported(file, "thresholding with UniPC".into()));
        }
        if !(1..=2).contains(&config.solver_order) {
            return Err(unsupported(file, format!("UniPC solver_order {} (1 and 2 are implemented)", config.solver_order)));
        }
        // diffusers maps DPM-Solver's solver types to "bh2".
        let bh2 = match config.solver_type.as_str() {
            "bh1" => false,
            "bh2" | "midpoint" | "heun" | "logrho" => true,
            other => return Err(unsupported(file, format!("UniPC solver_type {other:?}"))),
        };
        // Stepping to sigma 0 makes these coefficients 0 * inf: diffusers returns NaN latents.
        if config.final_sigmas_type == "zero" && !(bh2 && config.predict_x0) {
            let what = if bh2 { "predict_x0 false" } else { "solver_type \"bh1\"" };
            return Err(unsupported(file, format!("UniPC with {what} and final_sigmas_type \"zero\" (NaN in diffusers)")));
        }
        Ok(Self {
            schedule: Schedule::new(&config, file, steps, Solver::UniPc, config.use_karras_sigmas)?,
            prediction,
            predict_x0: config.predict_x0,
            bh2,
            order: config.solver_order,
            lower_order_final: config.lower_order_final,
            disable_corrector: config.disable_corrector.clone(),
            outputs: Vec::new(),
            last_sample: None,
            lower_order_nums: 0,
            cursor: StepCursor::default(),
        })
    }

    /// The sigmas of every step and the final one.
    pub fn sigmas(&self) -> &[f32] {
        &self.schedule.sigmas
    }

    fn convert(&self, model_output: &Tensor, sample: &Tensor, step: usize) -> Result<Tensor> {
        let sigma = self.schedule.sigmas[step];
        if self.predict_x0 {
            data_prediction(self.prediction, model_output, sample, sigma)
        } else {
            noise_prediction(self.prediction, model_output, sample, sigma)
        }
    }

    fn bh(&self, sigma_t: f32, sigma_s0: f32) -> Bh {
        let (alpha_t, sigma_t) = alpha_sigma(sigma_t);
        let (alpha_s0, sigma_s0) = alpha_sigma(sigma_s0);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda(alpha_t, sigma_t) - lambda_s0;
        let hh = if self.predict_x0 { -h } else { h };
        let h_phi_1 = hh.exp_m1();
        let b_h = if self.bh2 { hh.exp_m1() } else { hh };
        let (sample, weight) = if self.predict_x0 { (sigma_t / sigma_s0, alpha_t) } else { (alpha_t / alpha_s0, sigma_t) };
        Bh { sample, m0: -(weight * h_phi_1), scale: weight * b_h, h, hh, h_phi_1, b_h, lambda_s0 }
    }

    /// `r_k` of the model output at sigma `sigma_si`.
    fn rk(bh: &Bh, sigma_si: f32) -> f32 {
        let (alpha, sigma) = alpha_sigma(sigma_si);
        (lambda(alpha, sigma) - bh.lambda_s0) / bh.h
    }

    /// UniP from `sample` at `step` with the converted outputs of the last `order` steps.
    fn predict(&self, sample: &Tensor, step: usize, order: usize) -> Result<Tensor> {
        let sigmas = &self.schedule.sigmas;
        let bh = self.bh(sigmas[step + 1], sigmas[step]);
        let outputs = &self.outputs;
        let mut terms = vec![(bh.sample, sample), (bh.m0, &outputs[outputs.len() - 1])];
        if order == 2 {
            // rhos_p = [0.5] for order 2.
            let c = bh.scale * 0.5 / Self::rk(&bh, sigmas[step - 1]);
            terms[1].0 += c;
            terms.push((-c, &outputs[outputs.len() - 2]));
        }
        combine(&terms)
    }

    /// UniC: `step`'s corrected sample from the last predictor's start `last_sample`, that
    /// predictor's outputs and `model_t`, this step's converted output.
    fn correct(&self, model_t: &Tensor, last_sample: &Tensor, step: usize, order: usize) -> Result<Tensor> {
        let sigmas = &self.schedule.sigmas;
        let bh = self.bh(sigmas[step], sigmas[step - 1]);
        let outputs = &self.outputs;
        let mut terms = vec![(bh.sample, last_sample), (bh.m0, &outputs[outputs.len() - 1])];
        let rho_t = if order == 1 {
            0.5
        } else {
            let rk = Self::rk(&bh, sigmas[step - 2]);
            let b = self.b_vector(&bh);
            let [rho_0, rho_t] = solve_2x2([[1.0, 1.0], [rk, 1.0]], b);
            let c = bh.scale * rho_0 / rk;
            terms[1].0 += c;
            terms.push((-c, &outputs[outputs.len() - 2]));
            rho_t
        };
        let c = bh.scale * rho_t;
        terms[1].0 += c;
        terms.push((-c, model_t));
        combine(&terms)
    }

    /// The right-hand side `b` of UniC's order-2 system (diffusers' `h_phi_k` recursion).
    fn b_vector(&self, bh: &Bh) -> [f32; 2] {
        let mut h_phi_k = bh.h_phi_1 / bh.hh - 1.0;
        let mut factorial = 1.0f32;
        let mut b = [0.0; 2];
        for (i, b_i) in b.iter_mut().enumerate() {
            *b_i = h_phi_k * factorial / bh.b_h;
            factorial *= (i + 2) as f32;
            h_phi_k = h_phi_k / bh.hh - 1.0 / factorial;
        }
        b
    }
}

/// `torch.linalg.solve` of a 2x2 system in f32: LU with partial pivoting, as LAPACK does.
fn solve_2x2(a: [[f32; 2]; 2], b: [f32; 2]) -> [f32; 2] {
    let (p, q) = if a[1][0].abs() > a[0][0].abs() { (1, 0) } else { (0, 1) };
    let l = a[q][0] / a[p][0];
    let x1 = (b[q] - l * b[p]) / (a[q][1] - l * a[p][1]);
    [(b[p] - a[p][1] * x1) / a[p][0], x1]
}

impl Scheduler for UniPc {
    fn timesteps(&self) -> &[f64] {
        &self.schedule.timesteps
    }

    fn step(&mut self, model_output: &Tensor, step: usize, sample: &Tensor, _noise: &mut Noise) -> Result<Tensor> {
        let steps = self.schedule.timesteps.len();
        self.cursor.advance("UniPC step", step, steps)?;
        // Converted with the sample before correction, as diffusers does.
        let model_t = self.convert(model_output, sample, step)?;
        let sample = match &self.last_sample {
            Some((last, order)) if !self.disable_corrector.contains(&(step - 1)) => self.correct(&model_t, last, step, *order)?,
            _ => sample.clone(),
        };
        if self.outputs.len() == self.order {
            self.outputs.remove(0);
        }
        self.outputs.push(model_t);
        let order = if self.lower_order_final { self.order.min(steps - step) } else { self.order };
        let order = order.min(self.lower_order_nums + 1);
        let prev_sample = self.predict(&sample, step, order)?;
        self.last_sample = Some((sample, order));
        self.lower_order_nums = (self.lower_order_nums + 1).min(self.order);
        Ok(prev_sample)
    }

    /// Started later, the first step has no corrector and a first-order predictor (the
    /// warm-up counts from there), as in diffusers.
    fn set_begin_index(&mut self, index: usize) -> Result<()> {
        self.cursor.begin_at(index, self.schedule.timesteps.len())
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        add_noise_at_sigma(&self.schedule, original, noise, step, "UniPC add_noise")
    }

    /// The last step's data prediction (with `predict_x0`, diffusers' default; the noise
    /// prediction of the other mode is no clean estimate).
    fn denoised(&self) -> Result<Option<Tensor>> {
        Ok(if self.predict_x0 { self.outputs.last().cloned() } else { None })
    }
}

#[cfg(test)]
mod tests {
    use super::solve_2x2;

    #[test]
    fn solves_with_either_pivot() {
        let [x0, x1] = solve_2x2([[1.0, 1.0], [-2.0, 1.0]], [3.0, 0.0]);
        assert!((x0 - 1.0).abs() < 1e-6 && (x1 - 2.0).abs() < 1e-6, "{x0} {x1}");
        let [x0, x1] = solve_2x2([[1.0, 1.0], [0.5, 1.0]], [3.0, 2.5]);
        assert!((x0 - 1.0).abs() < 1e-6 && (x1 - 2.0).abs() < 1e-6, "{x0} {x1}");
    }
}
