//! Schedulers against diffusers: timesteps and whole stateful runs on fixed model outputs.

use crate::common;

use common::fixtures::{Outputs, path};
use common::{assert_close, gpu, read};
use webdiffusion::schedulers::{Ddim, Noise, Scheduler, SchedulerConfig, display_name, spaced_timesteps};

fn config(model: &str) -> SchedulerConfig {
    let file = path(&format!("models/{model}/scheduler/scheduler_config.json"));
    serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap()
}

/// PNG `parameters` name PNDM as AUTOMATIC1111 does only where it runs A1111's PLMS.
#[test]
fn pndm_is_named_plms_only_without_its_runge_kutta_warm_up() {
    let mut config = SchedulerConfig::default();
    assert!(!config.skip_prk_steps, "diffusers' PNDMScheduler default");
    assert_eq!(display_name("pndm", &config), "PNDM");
    config.skip_prk_steps = true;
    assert_eq!(display_name("pndm", &config), "PLMS");
    assert_eq!(display_name("euler-a", &config), "Euler a");
}

#[test]
fn ddim_timesteps_match_diffusers() {
    let (config, outputs) = (config("sd2-tiny"), Outputs::load("sd2-tiny"));
    for steps in [4, 25] {
        let want: Vec<f64> = outputs.i64(&format!("sched.timesteps.n{steps}")).into_iter().map(|t| t as f64).collect();
        assert_eq!(Ddim::new(&config, "sd2", steps).unwrap().timesteps(), want.as_slice(), "{steps} steps");
    }
}

#[test]
fn ddim_v_prediction_run_matches_diffusers() {
    let gpu = gpu();
    let (config, outputs) = (config("sd2-tiny"), Outputs::load("sd2-tiny"));
    let (model_outputs, mshape) = outputs.f32("sched.step.n4.model_outputs");
    let (samples, _) = outputs.f32("sched.step.n4.samples");
    let latent: Vec<usize> = mshape[1..].to_vec();
    let n: usize = latent.iter().product();
    let mut ddim = Ddim::new(&config, "sd2", 4).unwrap();
    let mut sample = gpu.upload_f32(&latent, &samples[..n]).unwrap();
    for step in 0..4 {
        let output = gpu.upload_f32(&latent, &model_outputs[step * n..(step + 1) * n]).unwrap();
        sample = ddim.step(&output, step, &sample, &mut Noise::new(gpu, 0)).unwrap();
        // diffusers folds the same coefficients in another order in f32.
        assert_close(&format!("step {step}"), &read(&sample), &samples[(step + 1) * n..(step + 2) * n], 1e-5, 1e-5);
    }
}

#[test]
fn spacing_rules_and_bad_configs() {
    let mut config = SchedulerConfig { timestep_spacing: "trailing".into(), ..Default::default() };
    assert_eq!(spaced_timesteps(&config, "c", 4).unwrap(), vec![999.0, 749.0, 499.0, 249.0]);
    config.timestep_spacing = "linspace".into();
    assert_eq!(spaced_timesteps(&config, "c", 4).unwrap(), vec![999.0, 666.0, 333.0, 0.0]);
    config.timestep_spacing = "sideways".into();
    assert!(matches!(spaced_timesteps(&config, "c", 4), Err(webdiffusion::Error::Unsupported { .. })));
    let mut config = SchedulerConfig { clip_sample: false, ..Default::default() };
    assert!(spaced_timesteps(&config, "c", 0).is_err());
    assert!(spaced_timesteps(&config, "c", 1001).is_err());
    config.beta_schedule = "exotic".into();
    let err = Ddim::new(&config, "scheduler_config.json", 4).err().unwrap();
    assert!(err.to_string().contains("exotic"), "{err}");
}

/// The scheduler config of SD 1.5 (PNDM, scaled_linear betas, "leading" + offset 1).
fn sd15() -> SchedulerConfig {
    let json = r#"{"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "set_alpha_to_one": false,
        "skip_prk_steps": true, "steps_offset": 1, "clip_sample": false, "trained_betas": null}"#;
    SchedulerConfig::from_json(json, "sd15").unwrap()
}

#[test]
fn add_noise_follows_each_family_and_begin_index_starts_later() {
    use webdiffusion::schedulers::{NAMES, by_name, dpm_solver, euler, euler_ancestral, heun, lms};
    let gpu = gpu();
    let config = sd15();
    let shape = [1, 4, 2, 2];
    let (x, n) = ([0.5f32, -1.0, 2.0, 0.25].repeat(4), [1.0f32, 0.5, -0.75, -2.0].repeat(4));
    let (xt, nt) = (gpu.upload_f32(&shape, &x).unwrap(), gpu.upload_f32(&shape, &n).unwrap());
    let alphas_cumprod = config.alphas_cumprod("sd15").unwrap();
    let noised = |a: f32, b: f32| -> Vec<f32> { x.iter().zip(&n).map(|(x, n)| a * x + b * n).collect() };
    for name in NAMES {
        let mut sampler = by_name(name, &config, "sd15", 5).unwrap();
        let len = sampler.timesteps().len();
        assert_eq!(sampler.order(), if *name == "heun" { 2 } else { 1 }, "{name}");
        // The level of step 2: alphas_cumprod at the timestep (DDPM family), sigma (Euler
        // family: x + sigma * n), or alpha_t and sigma_t of sigma (multistep solvers).
        let t = sampler.timesteps()[2] as usize;
        let want = match *name {
            "ddim" | "pndm" | "lcm" => noised(alphas_cumprod[t].sqrt(), (1.0 - alphas_cumprod[t]).sqrt()),
            "euler" => noised(1.0, euler::Euler::new(&config, "sd15", 5).unwrap().sigmas()[2]),
            "euler-a" => noised(1.0, euler_ancestral::EulerAncestral::new(&config, "sd15", 5).unwrap().sigmas()[2]),
            "heun" => noised(1.0, heun::Heun::new(&config, "sd15", 5).unwrap().sigmas()[2]),
            "lms" => noised(1.0, lms::Lms::new(&config, "sd15", 5).unwrap().sigmas()[2]),
            _ => {
                let variant = if name.contains("karras") { dpm_solver::DpmVariant::TWO_M_KARRAS } else { dpm_solver::DpmVariant::TWO_M };
                let sigma = dpm_solver::DpmSolver::new(&config, "sd15", 5, variant).unwrap().sigmas()[2];
                let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
                noised(alpha, sigma * alpha)
            }
        };
        assert_close(&format!("{name} add_noise"), &read(&sampler.add_noise(&xt, &nt, 2).unwrap()), &want, 1e-6, 1e-6);
        assert!(sampler.add_noise(&xt, &nt, len).is_err(), "{name}: add_noise past the schedule");

        // Started at index 2, the run takes step 2 first, then 3, and cannot restart.
        assert!(sampler.set_begin_index(len).is_err(), "{name}: a begin index past the schedule");
        sampler.set_begin_index(2).unwrap();
        let mut noise = Noise::new(gpu, 0);
        let input = sampler.scale_model_input(&xt, 2).unwrap();
        let sample = sampler.step(&input, 2, &xt, &mut noise).unwrap_or_else(|e| panic!("{name}: {e}"));
        sampler.step(&input, 3, &sample, &mut noise).unwrap_or_else(|e| panic!("{name}: {e}"));
        let stateful = ["pndm", "heun", "lms", "dpm++2m", "dpm++2m-karras", "dpm++2m-sde-karras", "unipc"].contains(name);
        if stateful {
            assert!(sampler.step(&input, 2, &sample, &mut noise).is_err(), "{name}: steps out of order");
            assert!(sampler.set_begin_index(0).is_err(), "{name}: a begin index after the first step");
        }
    }
}
