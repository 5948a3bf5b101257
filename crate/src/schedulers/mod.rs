//! Samplers: the scalar math of diffusers' schedulers in plain Rust, the per-step
//! latent update on the GPU.

mod clean_estimate;
pub mod config;
pub mod ddim;
pub mod dpm_solver;
pub mod euler;
pub mod euler_ancestral;
pub mod heun;
pub mod lcm;
pub mod lms;
mod multistep;
pub mod pndm;
mod sigmas;
pub mod unipc;

pub use config::{Prediction, SchedulerConfig};
pub use ddim::Ddim;

use config::{check_steps, unsupported};

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::kernels::elementwise as ew;
use crate::rng::TorchGenerator;

/// A sampling run over a fixed list of timesteps.
pub trait Scheduler {
    /// The model's timesteps, first to last.
    fn timesteps(&self) -> &[f64];
    /// The standard deviation of the initial noise: 1 for samplers on the alphas'
    /// variance-preserving latents, larger for those on the sigma (Karras) scale.
    fn init_noise_sigma(&self) -> f32 {
        1.0
    }
    /// The UNet's input at `step`: the latents themselves, unless the sampler works on the
    /// sigma scale and divides by sqrt(sigma^2 + 1).
    fn scale_model_input(&self, sample: &Tensor, _step: usize) -> Result<Tensor> {
        Ok(sample.clone())
    }
    /// The latents after `step`, given the model's output there. Ancestral and SDE
    /// samplers draw their fresh noise from `noise`, as diffusers does from its generator.
    fn step(&mut self, model_output: &Tensor, step: usize, sample: &Tensor, noise: &mut Noise) -> Result<Tensor>;
    /// diffusers' `order`: the model evaluations per step of the nominal schedule (Heun's
    /// 2, the others' 1). Image to image skips `t_start * order` of the timesteps.
    fn order(&self) -> usize {
        1
    }
    /// Starts the run at `timesteps()[index]` instead of the first (diffusers'
    /// `set_begin_index`, which image to image calls): the first `step` is then `index`.
    /// Only before the first step. Samplers that keep state between steps override it.
    fn set_begin_index(&mut self, index: usize) -> Result<()> {
        check_begin_index(index, self.timesteps().len(), false)
    }
    /// `original` noised to the level of `timesteps()[step]` with `noise` (diffusers'
    /// `add_noise`, as the pipelines call it at the begin index and, for inpainting with
    /// a 4-channel UNet, after each step at the next one).
    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor>;
    /// The model's estimate of the clean latents at the last `step` (diffusers'
    /// `pred_original_sample`, LCM's `denoised`, DPM-Solver's data prediction), computed
    /// when asked: what a step preview should show, since the latents still hold noise.
    /// `None` before the first step, and from PNDM, which forms none.
    fn denoised(&self) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

/// A begin index must name a timestep and come before the first step.
pub(super) fn check_begin_index(index: usize, len: usize, started: bool) -> Result<()> {
    if index >= len {
        return Err(Error::shape("set_begin_index", format!("index {index} is past the {len} timesteps")));
    }
    if started {
        return Err(Error::shape("set_begin_index", "the run has started: the begin index comes before the first step"));
    }
    Ok(())
}

/// The step a stateful sampler accepts next: steps run in order from the begin index.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StepCursor {
    next: usize,
    started: bool,
}

impl StepCursor {
    /// `Scheduler::set_begin_index` for a sampler with `len` timesteps.
    pub fn begin_at(&mut self, index: usize, len: usize) -> Result<()> {
        check_begin_index(index, len, self.started)?;
        self.next = index;
        Ok(())
    }

    /// Accepts `step` of `len` if it is the next one, and moves on.
    pub fn advance(&mut self, op: &'static str, step: usize, len: usize) -> Result<()> {
        if step != self.next || step >= len {
            return Err(Error::shape(op, format!("step {step} out of order: expected step {} of {len}", self.next)));
        }
        self.next += 1;
        self.started = true;
        Ok(())
    }
}

/// The forward process of DDPM-style schedulers (DDIM, PNDM, LCM): `sqrt(a) * x +
/// sqrt(1 - a) * noise` with `a = alphas_cumprod[t]`, the coefficients in f32 as torch.
pub(super) fn add_noise_at_alpha(original: &Tensor, noise: &Tensor, alpha_cumprod: f32) -> Result<Tensor> {
    ew::axpby(original.gpu(), alpha_cumprod.sqrt(), original, (1.0 - alpha_cumprod).sqrt(), noise, None)
}

/// `timesteps[step]`, or a clear error for a step past them.
pub(super) fn timestep_at(timesteps: &[f64], step: usize, op: &'static str) -> Result<f64> {
    timesteps.get(step).copied().ok_or_else(|| Error::shape(op, format!("step {step} of {}", timesteps.len())))
}

/// Gaussian noise on the GPU drawn as `torch.randn(shape, generator=...)` would draw it
/// from a CPU generator seeded with the same seed.
pub struct Noise {
    gpu: Gpu,
    generator: TorchGenerator,
}

impl Noise {
    pub fn new(gpu: &Gpu, seed: u64) -> Self {
        Self { gpu: gpu.clone(), generator: TorchGenerator::new(seed) }
    }

    pub fn randn(&mut self, shape: &[usize]) -> Result<Tensor> {
        self.gpu.upload_f32(shape, &self.generator.randn(shape.iter().product()))
    }

    /// Draws noise of `shape` and drops it: keeps the generator where diffusers' is after
    /// a draw whose result goes unused.
    pub fn skip(&mut self, shape: &[usize]) {
        self.generator.randn(shape.iter().product());
    }
}

/// The sampler names of the CLI and the web API.
pub const NAMES: &[&str] =
    &["ddim", "pndm", "euler", "euler-a", "heun", "lms", "dpm++2m", "dpm++2m-karras", "dpm++2m-sde-karras", "unipc", "lcm"];

/// The name AUTOMATIC1111 shows for a sampler (its PNG `parameters` use these). PNDM
/// with `skip_prk_steps` is its PLMS; A1111 has no name for PNDM's Runge-Kutta warm-up,
/// so that one keeps the paper's.
pub fn display_name<'a>(name: &'a str, config: &SchedulerConfig) -> &'a str {
    match name {
        "ddim" => "DDIM",
        "pndm" if config.skip_prk_steps => "PLMS",
        "pndm" => "PNDM",
        "euler" => "Euler",
        "euler-a" => "Euler a",
        "heun" => "Heun",
        "lms" => "LMS",
        "dpm++2m" => "DPM++ 2M",
        "dpm++2m-karras" => "DPM++ 2M Karras",
        "dpm++2m-sde-karras" => "DPM++ 2M SDE Karras",
        "unipc" => "UniPC",
        "lcm" => "LCM",
        other => other,
    }
}

/// Our name for the sampler a checkpoint's `scheduler_config.json` names by class
/// (its default), when we have one.
pub fn default_for(config: &SchedulerConfig) -> Option<&'static str> {
    let karras = config.use_karras_sigmas;
    Some(match (config.class_name.as_str(), config.algorithm_type.as_str()) {
        ("DDIMScheduler", _) => "ddim",
        ("PNDMScheduler", _) => "pndm",
        ("EulerDiscreteScheduler", _) => "euler",
        ("EulerAncestralDiscreteScheduler", _) => "euler-a",
        ("HeunDiscreteScheduler", _) => "heun",
        ("LMSDiscreteScheduler", _) => "lms",
        ("DPMSolverMultistepScheduler", "sde-dpmsolver++") if karras => "dpm++2m-sde-karras",
        ("DPMSolverMultistepScheduler", "dpmsolver++") => {
            if karras {
                "dpm++2m-karras"
            } else {
                "dpm++2m"
            }
        }
        ("UniPCMultistepScheduler", _) => "unipc",
        ("LCMScheduler", _) => "lcm",
        _ => return None,
    })
}

/// The sampler called `name` (see [`NAMES`]) for `steps` steps, configured by the
/// checkpoint's scheduler config (`file` names it in errors).
pub fn by_name(name: &str, config: &SchedulerConfig, file: &str, steps: usize) -> Result<Box<dyn Scheduler>> {
    match name {
        "ddim" => Ok(Box::new(Ddim::new(config, file, steps)?)),
        "pndm" => Ok(Box::new(pndm::Pndm::new(config, file, steps)?)),
        "euler" => Ok(Box::new(euler::Euler::new(config, file, steps)?)),
        "euler-a" => Ok(Box::new(euler_ancestral::EulerAncestral::new(config, file, steps)?)),
        "heun" => Ok(Box::new(heun::Heun::new(config, file, steps)?)),
        "lms" => Ok(Box::new(lms::Lms::new(config, file, steps)?)),
        "dpm++2m" => Ok(Box::new(dpm_solver::DpmSolver::new(config, file, steps, dpm_solver::DpmVariant::TWO_M)?)),
        "dpm++2m-karras" => Ok(Box::new(dpm_solver::DpmSolver::new(config, file, steps, dpm_solver::DpmVariant::TWO_M_KARRAS)?)),
        "dpm++2m-sde-karras" => Ok(Box::new(dpm_solver::DpmSolver::new(config, file, steps, dpm_solver::DpmVariant::TWO_M_SDE_KARRAS)?)),
        "unipc" => Ok(Box::new(unipc::UniPc::new(config, file, steps)?)),
        "lcm" => Ok(Box::new(lcm::Lcm::new(config, file, steps)?)),
        other => Err(Error::request("scheduler", format!("unknown sampler {other:?} (known: {})", NAMES.join(", ")))),
    }
}

/// diffusers' `timestep_spacing` ("leading", "trailing", "linspace"; Table 2 of
/// Lin et al. 2023) for `steps` of the `num_train_timesteps` training steps.
pub fn spaced_timesteps(config: &SchedulerConfig, file: &str, steps: usize) -> Result<Vec<f64>> {
    check_steps(config, file, steps)?;
    let n = config.num_train_timesteps;
    let timesteps: Vec<f64> = match config.timestep_spacing.as_str() {
        "leading" => {
            let ratio = n / steps;
            (0..steps).rev().map(|i| (i * ratio + config.steps_offset) as f64).collect()
        }
        "trailing" => {
            let ratio = n as f64 / steps as f64;
            (0..steps).map(|i| (n as f64 - i as f64 * ratio).round_ties_even() - 1.0).collect()
        }
        "linspace" => {
            let last = (n - 1) as f64;
            (0..steps).rev().map(|i| if steps == 1 { 0.0 } else { (last * i as f64 / (steps - 1) as f64).round_ties_even() }).collect()
        }
        other => return Err(unsupported(file, format!("timestep_spacing {other:?}"))),
    };
    Ok(timesteps)
}
