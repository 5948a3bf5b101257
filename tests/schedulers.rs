//! Schedulers against diffusers: timesteps and whole stateful runs on fixed model outputs.

mod common;

use common::fixtures::{Outputs, path};
use common::{assert_close, gpu, read};
use webdiffusion::schedulers::{Ddim, Noise, Scheduler, SchedulerConfig, spaced_timesteps};

fn config(model: &str) -> SchedulerConfig {
    let file = path(&format!("models/{model}/scheduler/scheduler_config.json"));
    serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap()
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
