//! Samplers: the scalar math of diffusers' schedulers in plain Rust, the per-step
//! latent update on the GPU.

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

use config::unsupported;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::rng::TorchGenerator;

/// A sampling run over a fixed list of timesteps.
pub trait Scheduler {
    /// The model's timesteps, first to last.
    fn timesteps(&self) -> &[f64];
    /// The standard deviation of the initial noise.
    fn init_noise_sigma(&self) -> f32;
    /// The UNet's input at `step` (some samplers scale the latents).
    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor>;
    /// The latents after `step`, given the model's output there. Ancestral and SDE
    /// samplers draw their fresh noise from `noise`, as diffusers does from its generator.
    fn step(&mut self, model_output: &Tensor, step: usize, sample: &Tensor, noise: &mut Noise) -> Result<Tensor>;
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
}

/// The sampler names of the CLI and the web API.
pub const NAMES: &[&str] =
    &["ddim", "pndm", "euler", "euler-a", "heun", "lms", "dpm++2m", "dpm++2m-karras", "dpm++2m-sde-karras", "unipc", "lcm"];

/// The name AUTOMATIC1111 shows for a sampler (its PNG `parameters` use these).
pub fn display_name(name: &str) -> &str {
    match name {
        "ddim" => "DDIM",
        "pndm" => "PLMS",
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
        other => Err(Error::Unsupported { file: "--scheduler".into(), detail: format!("sampler {other:?} (known: {})", NAMES.join(", ")) }),
    }
}

/// diffusers' `timestep_spacing` ("leading", "trailing", "linspace"; Table 2 of
/// Lin et al. 2023) for `steps` of the `num_train_timesteps` training steps.
pub fn spaced_timesteps(config: &SchedulerConfig, file: &str, steps: usize) -> Result<Vec<f64>> {
    let n = config.num_train_timesteps;
    if steps == 0 || steps > n {
        return Err(unsupported(file, format!("{steps} inference steps with {n} training timesteps")));
    }
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
