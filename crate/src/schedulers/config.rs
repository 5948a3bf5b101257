//! `scheduler_config.json` and the training noise schedule it defines, computed in
//! f32 the way diffusers' torch code does so the coefficients match it to the ulp.

use serde::Deserialize;

use crate::error::{Error, Result};

/// The fields of diffusers' scheduler configs that change the math. Missing keys take
/// DDIMScheduler's defaults; Stable Diffusion configs spell out the ones that differ.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: String,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: String,
    pub timestep_spacing: String,
    pub steps_offset: usize,
    pub set_alpha_to_one: bool,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub thresholding: bool,
    pub rescale_betas_zero_snr: bool,
    /// DPMSolverMultistepScheduler's variant ("dpmsolver++", "sde-dpmsolver++", ...).
    pub algorithm_type: String,
    pub use_karras_sigmas: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            class_name: String::new(),
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: "linear".into(),
            trained_betas: None,
            prediction_type: "epsilon".into(),
            timestep_spacing: "leading".into(),
            steps_offset: 0,
            set_alpha_to_one: true,
            clip_sample: true,
            clip_sample_range: 1.0,
            thresholding: false,
            rescale_betas_zero_snr: false,
            algorithm_type: "dpmsolver++".into(),
            use_karras_sigmas: false,
        }
    }
}

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    VPrediction,
    Sample,
}

impl SchedulerConfig {
    pub fn prediction(&self, file: &str) -> Result<Prediction> {
        match self.prediction_type.as_str() {
            "epsilon" => Ok(Prediction::Epsilon),
            "v_prediction" => Ok(Prediction::VPrediction),
            "sample" => Ok(Prediction::Sample),
            other => Err(unsupported(file, format!("prediction_type {other:?}"))),
        }
    }

    /// `alphas_cumprod` of the training schedule, in f32 like diffusers.
    pub fn alphas_cumprod(&self, file: &str) -> Result<Vec<f32>> {
        let n = self.num_train_timesteps;
        if n < 2 {
            return Err(unsupported(file, format!("num_train_timesteps {n}")));
        }
        let mut betas: Vec<f32> = match (&self.trained_betas, self.beta_schedule.as_str()) {
            (Some(betas), _) if betas.len() == n => betas.iter().map(|&b| b as f32).collect(),
            (Some(betas), _) => return Err(unsupported(file, format!("{} trained_betas for {n} timesteps", betas.len()))),
            (None, "linear") => linspace_f32(self.beta_start as f32, self.beta_end as f32, n),
            (None, "scaled_linear") => {
                linspace_f32(self.beta_start.sqrt() as f32, self.beta_end.sqrt() as f32, n).into_iter().map(|b| b * b).collect()
            }
            (None, "squaredcos_cap_v2") => cosine_betas(n),
            (None, other) => return Err(unsupported(file, format!("beta_schedule {other:?}"))),
        };
        if self.rescale_betas_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let mut product = 1.0f32;
        Ok(betas
            .iter()
            .map(|&beta| {
                product *= 1.0 - beta;
                product
            })
            .collect())
    }
}

pub(super) fn unsupported(file: &str, detail: String) -> Error {
    Error::Unsupported { file: file.to_string(), detail }
}

/// `torch.linspace(start, end, n, dtype=float32)`: computed from both ends so the
/// last value is exactly `end`, as torch does.
fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n).map(|i| if i < half { start + step * i as f32 } else { end - step * (n - 1 - i) as f32 }).collect()
}

/// diffusers' `betas_for_alpha_bar` with the cosine schedule (in f64, then f32).
fn cosine_betas(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
    (0..n).map(|i| (1.0 - alpha_bar((i + 1) as f64 / n as f64) / alpha_bar(i as f64 / n as f64)).min(0.999) as f32).collect()
}

/// Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed":
/// shift and scale sqrt(alphas_cumprod) so the last timestep has zero SNR.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let mut product = 1.0f32;
    let mut sqrt_bar: Vec<f32> = betas
        .iter()
        .map(|&b| {
            product *= 1.0 - b;
            product.sqrt()
        })
        .collect();
    let (first, last) = (sqrt_bar[0], sqrt_bar[sqrt_bar.len() - 1]);
    for v in &mut sqrt_bar {
        *v = (*v - last) * first / (first - last);
    }
    let bar: Vec<f32> = sqrt_bar.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    out.extend(bar.windows(2).map(|w| 1.0 - w[1] / w[0]));
    out
}

#[cfg(test)]
mod tests {
    use super::linspace_f32;

    #[test]
    fn linspace_hits_both_ends_exactly() {
        let v = linspace_f32(0.00085f64.sqrt() as f32, 0.012f64.sqrt() as f32, 1000);
        assert_eq!((v[0], v[999]), (0.00085f64.sqrt() as f32, 0.012f64.sqrt() as f32));
        assert!(v.windows(2).all(|w| w[1] > w[0]));
    }
}
