//! `scheduler_config.json` and the training noise schedule it defines, computed in
//! f32 the way diffusers' torch code does so the coefficients match it to the ulp.

use std::collections::BTreeSet;

use serde::{Deserialize, Deserializer};

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
    /// PNDMScheduler: false (its default) runs the pseudo Runge-Kutta warm-up first.
    pub skip_prk_steps: bool,
    /// DPMSolverMultistepScheduler's variant ("dpmsolver++", "sde-dpmsolver++", ...).
    pub algorithm_type: String,
    pub use_karras_sigmas: bool,
    // DPMSolverMultistepScheduler and UniPCMultistepScheduler (same defaults in both).
    pub solver_order: usize,
    /// DPM-Solver's "midpoint" (its default) or "heun"; UniPC's "bh1" or "bh2" (its default).
    pub solver_type: String,
    pub lower_order_final: bool,
    pub euler_at_final: bool,
    pub final_sigmas_type: String,
    #[serde(deserialize_with = "float_or_non_finite")]
    pub lambda_min_clipped: f64,
    pub variance_type: Option<String>,
    pub predict_x0: bool,
    pub disable_corrector: Vec<usize>,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub use_lu_lambdas: bool,
    pub use_flow_sigmas: bool,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    // EulerDiscreteScheduler: "linear" or "log_linear" sigmas between the timesteps.
    pub interpolation_type: String,
    /// EulerDiscreteScheduler: "discrete", or "continuous" (`0.25 * ln(sigma)` timesteps for v-prediction).
    pub timestep_type: String,
    // LCMScheduler.
    pub original_inference_steps: usize,
    pub timestep_scaling: f64,
    /// The keys the file set, when it was read with [`SchedulerConfig::from_json`]; `None`
    /// counts every key as set. See [`SchedulerConfig::gives`].
    #[serde(skip)]
    pub given: Option<BTreeSet<String>>,
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
            skip_prk_steps: false,
            algorithm_type: "dpmsolver++".into(),
            use_karras_sigmas: false,
            solver_order: 2,
            solver_type: "midpoint".into(),
            lower_order_final: true,
            euler_at_final: false,
            final_sigmas_type: "zero".into(),
            lambda_min_clipped: f64::NEG_INFINITY,
            variance_type: None,
            predict_x0: true,
            disable_corrector: Vec::new(),
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_lu_lambdas: false,
            use_flow_sigmas: false,
            sigma_min: None,
            sigma_max: None,
            interpolation_type: "linear".into(),
            timestep_type: "discrete".into(),
            original_inference_steps: 50,
            timestep_scaling: 10.0,
            given: None,
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
    /// Reads `scheduler_config.json` and remembers which keys it sets: diffusers'
    /// `Class.from_config` gives every other key the defaults of the class it builds,
    /// which differ between classes (DPM-Solver's `timestep_spacing` is "linspace",
    /// LCM's betas are scaled_linear), and so must a sampler built from this config.
    /// Keys a diffusers config lists in `_use_default_values` count as unset, as there.
    /// Also accepts the bare `-Infinity` that diffusers writes for `lambda_min_clipped`.
    pub fn from_json(json: &str, file: &str) -> Result<Self> {
        let bad = |e: serde_json::Error| Error::Format { file: file.to_string(), detail: e.to_string() };
        let value: serde_json::Value = serde_json::from_str(&quote_non_finite(json)).map_err(bad)?;
        let mut config = Self::deserialize(&value).map_err(bad)?;
        let defaulted: BTreeSet<&str> = value
            .get("_use_default_values")
            .and_then(|v| v.as_array())
            .map(|keys| keys.iter().filter_map(|k| k.as_str()).collect())
            .unwrap_or_default();
        let keys = value.as_object().map(|map| map.keys()).into_iter().flatten();
        config.given = Some(keys.filter(|k| !defaulted.contains(k.as_str())).cloned().collect());
        Ok(config)
    }

    /// Whether the file set `key` (true for every key of a config not read by `from_json`).
    /// A sampler whose diffusers class defaults `key` differently from this struct uses its
    /// own default when this is false.
    /// A copy whose `timestep_spacing`, when the file does not set it, is `default`: most
    /// of diffusers' scheduler classes default to "linspace", unlike DDIM's "leading".
    pub fn with_spacing_default(&self, default: &str) -> Self {
        let mut config = self.clone();
        if !config.gives("timestep_spacing") {
            config.timestep_spacing = default.into();
        }
        config
    }

    pub fn gives(&self, key: &str) -> bool {
        self.given.as_ref().is_none_or(|keys| keys.contains(key))
    }

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
        Ok(cumprod_one_minus(&betas))
    }
}

/// Python's json writes non-finite floats as bare `-Infinity`, `Infinity` and `NaN`, which
/// are not JSON: quote them (outside strings) for [`float_or_non_finite`].
pub(crate) fn quote_non_finite(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = json;
    while let Some(c) = rest.chars().next() {
        if !in_string {
            if let Some(word) = ["-Infinity", "Infinity", "NaN"].into_iter().find(|w| rest.starts_with(w)) {
                out.push_str(&format!("\"{word}\""));
                rest = &rest[word.len()..];
                continue;
            }
        }
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            _ => {}
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// A float, or a non-finite one spelled as a string ("-inf", "-Infinity", "nan", ...).
fn float_or_non_finite<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Float {
        Number(f64),
        Named(String),
    }
    match Float::deserialize(deserializer)? {
        Float::Number(v) => Ok(v),
        Float::Named(name) => match name.to_ascii_lowercase().as_str() {
            "-inf" | "-infinity" => Ok(f64::NEG_INFINITY),
            "inf" | "infinity" => Ok(f64::INFINITY),
            "nan" => Ok(f64::NAN),
            _ => Err(serde::de::Error::custom(format!("expected a number, got {name:?}"))),
        },
    }
}

pub(super) fn unsupported(file: &str, detail: String) -> Error {
    Error::Unsupported { file: file.to_string(), detail }
}

/// Refuses a request for no steps or for more than the model's training timesteps: the
/// request's `steps` option, not the config, is what does not fit.
pub(super) fn check_steps(config: &SchedulerConfig, file: &str, steps: usize) -> Result<()> {
    let n = config.num_train_timesteps;
    if steps == 0 || steps > n {
        return Err(Error::request(
            "steps",
            format!("{steps} inference steps: the sampler takes 1 to the {n} training timesteps of {file}"),
        ));
    }
    Ok(())
}

/// `torch.linspace(start, end, n, dtype=float32)`: computed from both ends so the
/// last value is exactly `end`, as torch does; its CPU kernel is compiled with fused
/// multiply-adds, which change about one value in seven by an ulp.
pub(super) fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n).map(|i| if i < half { step.mul_add(i as f32, start) } else { (-step).mul_add((n - 1 - i) as f32, end) }).collect()
}

/// `torch.cumprod(1.0 - betas, dim=0)` in f32: torch's CPU kernel accumulates in f64.
fn cumprod_one_minus(betas: &[f32]) -> Vec<f32> {
    let mut product = 1.0f64;
    betas
        .iter()
        .map(|&beta| {
            product *= (1.0 - beta) as f64;
            product as f32
        })
        .collect()
}

/// diffusers' `betas_for_alpha_bar` with the cosine schedule (in f64, then f32).
fn cosine_betas(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
    (0..n).map(|i| (1.0 - alpha_bar((i + 1) as f64 / n as f64) / alpha_bar(i as f64 / n as f64)).min(0.999) as f32).collect()
}

/// Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed":
/// shift and scale sqrt(alphas_cumprod) so the last timestep has zero SNR.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let mut sqrt_bar: Vec<f32> = cumprod_one_minus(betas).into_iter().map(f32::sqrt).collect();
    let (first, last) = (sqrt_bar[0], sqrt_bar[sqrt_bar.len() - 1]);
    // The same f32 operations in the same order as diffusers.
    let scale = first / (first - last);
    for v in &mut sqrt_bar {
        *v = (*v - last) * scale;
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
