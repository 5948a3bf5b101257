//! What diffusers' k-diffusion samplers (Euler, Euler ancestral, Heun, LMS) share: the
//! noise levels `sigma = sqrt((1 - alphas_cumprod) / alphas_cumprod)`, spaced and
//! interpolated with numpy's arithmetic (f64, stored as f32 like diffusers), the
//! Karras / exponential / beta reschedules, the input scaling, and the latent update as a
//! linear combination of tensors, each coefficient folded into one f32.

use super::config::{Prediction, SchedulerConfig, check_steps, linspace_f32, unsupported};
use crate::error::{Error, Result};
use crate::gpu::Tensor;
use crate::kernels::elementwise as ew;

/// The training schedule's sigmas, index `t` for timestep `t`, and their logarithms.
pub(super) struct TrainSigmas {
    pub sigmas: Vec<f32>,
    log_sigmas: Vec<f32>,
}

impl TrainSigmas {
    /// `((1 - alphas_cumprod) / alphas_cumprod) ** 0.5` in f32 as torch computes it.
    pub fn new(alphas_cumprod: &[f32]) -> Self {
        let sigmas: Vec<f32> = alphas_cumprod.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect();
        // numpy's f32 log; the f64 logarithm rounded once is within its ulp.
        let log_sigmas = sigmas.iter().map(|&s| (s as f64).ln() as f32).collect();
        Self { sigmas, log_sigmas }
    }

    /// `np.interp(t, np.arange(len(sigmas)), sigmas)`, numpy's formula and clamping.
    pub fn interp(&self, t: f64) -> f64 {
        let last = self.sigmas.len() - 1;
        if t <= 0.0 {
            return self.sigmas[0] as f64;
        }
        if t >= last as f64 {
            return self.sigmas[last] as f64;
        }
        let j = t.floor() as usize;
        let (low, high) = (self.sigmas[j] as f64, self.sigmas[j + 1] as f64);
        if t == j as f64 { low } else { (high - low) * (t - j as f64) + low }
    }

    /// diffusers' `_sigma_to_t`: the fractional timestep whose log-sigma, interpolated
    /// linearly between the two neighbouring training steps, is `ln(sigma)`.
    pub fn sigma_to_t(&self, sigma: f64) -> f64 {
        let log_sigma = sigma.max(1e-10).ln();
        // numpy: the last index whose log-sigma is <= ln(sigma) (0 if none), at most len - 2.
        let low_idx = self.log_sigmas.iter().rposition(|&l| log_sigma - l as f64 >= 0.0).unwrap_or(0).min(self.log_sigmas.len() - 2);
        let (low, high) = (self.log_sigmas[low_idx] as f64, self.log_sigmas[low_idx + 1] as f64);
        let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
        (1.0 - w) * low_idx as f64 + w * (low_idx + 1) as f64
    }
}

/// `alphas_cumprod` as the Euler schedulers keep it: with zero-terminal-SNR rescaling the
/// last value is set to 2^-24 so its sigma stays finite.
pub(super) fn euler_alphas_cumprod(config: &SchedulerConfig, file: &str) -> Result<Vec<f32>> {
    let mut alphas_cumprod = config.alphas_cumprod(file)?;
    if config.rescale_betas_zero_snr {
        *alphas_cumprod.last_mut().expect("at least two training steps") = 2f32.powi(-24);
    }
    Ok(alphas_cumprod)
}

/// `numpy.linspace(start, stop, n)` in f64: `i * step + start`, the last value `stop`.
pub(super) fn numpy_linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let div = (n - 1) as f64;
    let step = (stop - start) / div;
    let mut values: Vec<f64> =
        (0..n).map(|i| if step == 0.0 { i as f64 / div * (stop - start) + start } else { i as f64 * step + start }).collect();
    values[n - 1] = stop;
    values
}

/// `numpy.arange(start, 0, -step)` for a positive `step`: numpy's length
/// `ceil(start / step)` (one more than expected for some step counts, which diffusers
/// keeps) and its fill `start + i * (v1 - start)` with `v1 = start - step`.
pub(super) fn numpy_arange_down(start: f64, step: f64) -> Vec<f64> {
    let len = ((0.0 - start) / -step).ceil().max(0.0) as usize;
    let delta = (start + -step) - start;
    (0..len).map(|i| if i == 0 { start } else { start + i as f64 * delta }).collect()
}

/// The inference timesteps of the Euler family's `set_timesteps`, first to last, in f32:
/// "linspace" (fractional), "leading" (+ `steps_offset`) or "trailing".
pub(super) fn spaced_timesteps_f32(config: &SchedulerConfig, file: &str, steps: usize) -> Result<Vec<f32>> {
    check_steps(config, file, steps)?;
    let n = config.num_train_timesteps;
    Ok(match config.timestep_spacing.as_str() {
        "linspace" => numpy_linspace(0.0, (n - 1) as f64, steps).into_iter().rev().map(|t| t as f32).collect(),
        "leading" => {
            let ratio = n / steps;
            (0..steps).rev().map(|i| (i * ratio) as f32 + config.steps_offset as f32).collect()
        }
        "trailing" => numpy_arange_down(n as f64, n as f64 / steps as f64).into_iter().map(|t| t.round_ties_even() as f32 - 1.0).collect(),
        other => return Err(unsupported(file, format!("timestep_spacing {other:?}"))),
    })
}

/// A reschedule of the interpolated sigmas (`use_karras_sigmas` and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reschedule {
    /// Karras et al. 2022, rho = 7.
    Karras,
    /// Evenly spaced in log-sigma.
    Exponential,
    /// Beta(0.6, 0.6) quantiles (Lee et al. 2024, "Beta Sampling is All You Need").
    Beta,
}

impl Reschedule {
    /// The one the config asks for; diffusers refuses more than one.
    pub fn from_config(config: &SchedulerConfig, file: &str) -> Result<Option<Self>> {
        let asked: Vec<Self> = [
            (config.use_karras_sigmas, Self::Karras),
            (config.use_exponential_sigmas, Self::Exponential),
            (config.use_beta_sigmas, Self::Beta),
        ]
        .into_iter()
        .filter_map(|(on, kind)| on.then_some(kind))
        .collect();
        match asked[..] {
            [] => Ok(None),
            [kind] => Ok(Some(kind)),
            _ => Err(unsupported(file, "more than one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas".into())),
        }
    }

    /// `steps` sigmas from `sigma_max` down to `sigma_min`, in f64 as numpy computes them.
    pub fn sigmas(self, sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
        match self {
            Self::Karras => {
                let rho = 7.0;
                let (min_inv_rho, max_inv_rho) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
                let span = min_inv_rho - max_inv_rho;
                numpy_linspace(0.0, 1.0, steps).into_iter().map(|ramp| (max_inv_rho + ramp * span).powf(rho)).collect()
            }
            Self::Exponential => numpy_linspace(sigma_max.ln(), sigma_min.ln(), steps).into_iter().map(f64::exp).collect(),
            Self::Beta => numpy_linspace(0.0, 1.0, steps)
                .into_iter()
                .map(|x| sigma_min + beta_ppf(1.0 - x, 0.6, 0.6) * (sigma_max - sigma_min))
                .collect(),
        }
    }
}

/// The end points of a reschedule: the config's `sigma_min` / `sigma_max` where the class
/// reads them, else the interpolated schedule's last and first sigma.
pub(super) fn sigma_bounds(config: &SchedulerConfig, interpolated: &[f64], honour_config: bool) -> (f64, f64) {
    let (first, last) = (interpolated[0], interpolated[interpolated.len() - 1]);
    if honour_config { (config.sigma_min.unwrap_or(last), config.sigma_max.unwrap_or(first)) } else { (last, first) }
}

/// `torch.linspace(ln(sigmas[-1]), ln(sigmas[0]), steps + 1).exp()` in f32: Euler's
/// "log_linear" interpolation over the whole training range.
pub(super) fn log_linear_sigmas(train: &TrainSigmas, steps: usize) -> Vec<f64> {
    let (high, low) = (train.log_sigmas[train.log_sigmas.len() - 1], train.log_sigmas[0]);
    linspace_f32(high, low, steps + 1).into_iter().map(|l| (l as f64).exp() as f32 as f64).collect()
}

/// The regularized incomplete beta function `I_x(a, b)` (continued fraction, modified
/// Lentz; about 1e-15 relative).
fn incomplete_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front = (libm::lgamma(a + b) - libm::lgamma(a) - libm::lgamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    // The fraction converges fast below the mean; use the symmetry above it.
    if x < (a + 1.0) / (a + b + 2.0) { front * beta_fraction(x, a, b) / a } else { 1.0 - front * beta_fraction(1.0 - x, b, a) / b }
}

fn beta_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut c = 1.0;
    let mut d = 1.0 - (a + b) * x / (a + 1.0);
    d = 1.0 / if d.abs() < TINY { TINY } else { d };
    let mut h = d;
    for m in 1..1000 {
        let m = m as f64;
        for numerator in
            [m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m)), -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0))]
        {
            d = 1.0 + numerator * d;
            d = 1.0 / if d.abs() < TINY { TINY } else { d };
            c = 1.0 + numerator / c;
            c = if c.abs() < TINY { TINY } else { c };
            h *= d * c;
        }
        if (d * c - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// `scipy.stats.beta.ppf(q, a, b)`: the quantile, by bisection of [`incomplete_beta`] down
/// to adjacent doubles.
pub(super) fn beta_ppf(q: f64, a: f64, b: f64) -> f64 {
    if q <= 0.0 {
        return 0.0;
    }
    if q >= 1.0 {
        return 1.0;
    }
    let (mut low, mut high) = (0.0f64, 1.0f64);
    loop {
        let mid = 0.5 * (low + high);
        if mid <= low || mid >= high {
            return mid;
        }
        if incomplete_beta(mid, a, b) < q {
            low = mid;
        } else {
            high = mid;
        }
    }
}

/// diffusers' `init_noise_sigma` for the Euler family: the largest sigma, or
/// `sqrt(sigma^2 + 1)` of it for "leading" spacing (all in f32).
pub(super) fn init_noise_sigma(sigmas: &[f32], timestep_spacing: &str) -> f32 {
    let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if matches!(timestep_spacing, "linspace" | "trailing") { max } else { (max * max + 1.0).sqrt() }
}

/// `sample / sqrt(sigma^2 + 1)`, the UNet input of the Euler family.
pub(super) fn scale_model_input(sample: &Tensor, sigma: f32) -> Result<Tensor> {
    ew::scale(sample.gpu(), sample, 1.0 / (sigma * sigma + 1.0).sqrt())
}

/// The Euler family's forward process: `original + sigma * noise`.
pub(super) fn add_noise_at_sigma(original: &Tensor, noise: &Tensor, sigma: f32) -> Result<Tensor> {
    ew::axpby(original.gpu(), 1.0, original, sigma, noise, None)
}

/// The sigma of `step` of `steps`, or a clear error for a step past the schedule.
pub(super) fn step_sigma(sigmas: &[f32], steps: usize, step: usize, op: &'static str) -> Result<f32> {
    if step >= steps {
        return Err(Error::shape(op, format!("step {step} of {steps}")));
    }
    sigmas.get(step).copied().ok_or_else(|| Error::shape(op, format!("step {step} is past the {} sigmas", sigmas.len())))
}

/// The k-diffusion derivative `(sample - denoised) / sigma` as coefficients on the sample
/// and the model output, `denoised` being the model's x0 estimate at `sigma_in` (the same
/// sigma but in Heun's correction, which divides by the sigma it evaluated the model at).
pub(super) fn derivative_coefficients(prediction: Prediction, sigma_in: f32, sigma: f32) -> (f64, f64) {
    let (denoised_sample, denoised_model) = denoised_coefficients(prediction, sigma_in);
    let s = sigma as f64;
    ((1.0 - denoised_sample) / s, -denoised_model / s)
}

/// `denoised = a * sample + b * model_output` at `sigma`.
pub(super) fn denoised_coefficients(prediction: Prediction, sigma: f32) -> (f64, f64) {
    let s = sigma as f64;
    match prediction {
        Prediction::Epsilon => (1.0, -s),
        Prediction::VPrediction => (1.0 / (s * s + 1.0), -s / (s * s + 1.0).sqrt()),
        Prediction::Sample => (0.0, 1.0),
    }
}

/// `sum(c * x)` over `terms` (all of one shape), each coefficient rounded to f32 once:
/// zero coefficients are skipped, then one `a*x + b*y + c*z` launch per three terms, each
/// later launch folding the running sum in as its `x`.
pub(super) fn linear_combination(terms: &[(f64, &Tensor)]) -> Result<Tensor> {
    let (_, anchor) = terms.first().ok_or_else(|| Error::shape("linear_combination", "no terms"))?;
    let gpu = anchor.gpu();
    let live: Vec<(f32, &Tensor)> = terms.iter().filter(|(c, _)| *c != 0.0).map(|&(c, t)| (c as f32, t)).collect();
    let Some((&(a, x), rest)) = live.split_first() else {
        return ew::scale(gpu, anchor, 0.0);
    };
    let mut pairs = rest.chunks(2);
    let Some(pair) = pairs.next() else {
        return ew::scale(gpu, x, a);
    };
    let mut sum = axpby_pair(a, x, pair)?;
    for pair in pairs {
        sum = axpby_pair(1.0, &sum, pair)?;
    }
    Ok(sum)
}

/// `a*x + b*y (+ c*z)` for one or two `(coefficient, tensor)` terms.
fn axpby_pair(a: f32, x: &Tensor, pair: &[(f32, &Tensor)]) -> Result<Tensor> {
    let (b, y) = pair[0];
    ew::axpby(x.gpu(), a, x, b, y, pair.get(1).copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_quantiles_match_closed_forms() {
        for q in [1e-6, 0.1, 0.25, 0.5, 0.8, 0.999_999] {
            // Beta(1, 1) is uniform; Beta(1/2, 1/2) is the arcsine law, sin^2(pi q / 2).
            assert!((beta_ppf(q, 1.0, 1.0) - q).abs() < 1e-15, "{q}");
            let arcsine = (std::f64::consts::FRAC_PI_2 * q).sin().powi(2);
            assert!((beta_ppf(q, 0.5, 0.5) - arcsine).abs() < 1e-13, "{q}: {} vs {arcsine}", beta_ppf(q, 0.5, 0.5));
            // Symmetric shapes give symmetric quantiles.
            assert!((beta_ppf(q, 0.6, 0.6) + beta_ppf(1.0 - q, 0.6, 0.6) - 1.0).abs() < 1e-13, "{q}");
        }
        assert_eq!((beta_ppf(0.0, 0.6, 0.6), beta_ppf(1.0, 0.6, 0.6)), (0.0, 1.0));
        assert!((beta_ppf(0.5, 0.6, 0.6) - 0.5).abs() < 1e-15);
    }

    #[test]
    fn numpy_spacing_quirks() {
        // numpy's arange(1000, 0, -1000/61) has 62 values (its length is ceil in f64).
        assert_eq!(numpy_arange_down(1000.0, 1000.0 / 61.0).len(), 62);
        assert_eq!(numpy_arange_down(1000.0, 250.0), vec![1000.0, 750.0, 500.0, 250.0]);
        assert_eq!(numpy_linspace(0.0, 999.0, 1), vec![0.0]);
        assert_eq!(numpy_linspace(0.0, 999.0, 7)[1..3], [166.5, 333.0]);
        let train = TrainSigmas::new(&[0.99, 0.9, 0.5, 0.1]);
        assert_eq!(
            (train.interp(1.0), train.interp(-3.0), train.interp(7.0)),
            (train.sigmas[1] as f64, train.sigmas[0] as f64, train.sigmas[3] as f64)
        );
        assert!((train.sigma_to_t(train.sigmas[2] as f64) - 2.0).abs() < 1e-6);
    }
}
