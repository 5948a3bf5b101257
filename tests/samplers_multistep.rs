//! DPM-Solver++ (2M, 2M Karras, 2M SDE Karras), UniPC and LCM against diffusers: every case
//! of theirs in outputs/schedulers.safetensors (timesteps, sigmas and a whole stateful run
//! driven as a pipeline drives it), the lcm-tiny run, and the configs they must refuse.

use crate::common;

use common::fixtures::{Outputs, SchedulerCase, path, scheduler_cases};
use common::{assert_close, gpu, read};
use webdiffusion::Error;
use webdiffusion::schedulers::dpm_solver::{DpmSolver, DpmVariant};
use webdiffusion::schedulers::lcm::Lcm;
use webdiffusion::schedulers::unipc::UniPc;
use webdiffusion::schedulers::{self, Noise, Scheduler, SchedulerConfig};

const SAMPLERS: [&str; 5] = ["dpm++2m", "dpm++2m-karras", "dpm++2m-sde-karras", "unipc", "lcm"];

/// Timesteps and sigmas: numpy and torch compute them in f64 and f32 with the same formulas
/// as ours; 1e-6 relative allows the last f32 ulp of a logarithm or a power.
const SCHEDULE_RTOL: f64 = 1e-6;
/// Zero terminal SNR rescales `sqrt(alphas_cumprod)` with torch's vectorised f32 sqrt, which
/// is not correctly rounded on every CPU (0.63 ulp seen); the ulp it loses is amplified by
/// the shift and by the ratios of neighbours that follow, to 1.3e-6 in one sigma of 25.
const ZSNR_SCHEDULE_RTOL: f64 = 2e-6;

/// A whole run, compared step by step against `1e-5 * max|reference sample|`: diffusers forms
/// each update from separate f32 tensor operations (x0 conversion, differences of model
/// outputs, then the weighted sum) while we fold them into one coefficient per tensor, so the
/// roundings differ by a few f32 ulps of the largest term (x0 at high noise is ~15x the
/// sample); over up to 25 dependent steps that stays well under 1e-5 of the latent scale.
const RUN_TOL: f32 = 1e-5;

fn cases(outputs: &Outputs) -> Vec<SchedulerCase> {
    let mine = scheduler_cases(outputs, &SAMPLERS);
    // 3 DPM samplers x 6 bases x 5 step counts less 2 skipped, 30 UniPC, 10 LCM.
    assert_eq!(mine.len(), 88 + 30 + 10, "cases of our samplers");
    mine
}

/// The sampler and, for the multistep solvers, its sigmas.
fn build(case: &SchedulerCase) -> (Box<dyn Scheduler>, Option<Vec<f32>>) {
    let (config, file, steps) = (&case.config, case.name.as_str(), case.steps);
    let dpm = |variant| {
        let solver = DpmSolver::new(config, file, steps, variant).unwrap();
        let sigmas = solver.sigmas().to_vec();
        (Box::new(solver) as Box<dyn Scheduler>, Some(sigmas))
    };
    match case.sampler.as_str() {
        "dpm++2m" => dpm(DpmVariant::TWO_M),
        "dpm++2m-karras" => dpm(DpmVariant::TWO_M_KARRAS),
        "dpm++2m-sde-karras" => dpm(DpmVariant::TWO_M_SDE_KARRAS),
        "unipc" => {
            let solver = UniPc::new(config, file, steps).unwrap();
            let sigmas = solver.sigmas().to_vec();
            (Box::new(solver), Some(sigmas))
        }
        "lcm" => (Box::new(Lcm::new(config, file, steps).unwrap()), None),
        other => panic!("not ours: {other}"),
    }
}

fn assert_rel(what: &str, got: &[f64], want: &[f64], rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length ({got:?} vs {want:?})");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= rtol * w.abs(), "{what}[{i}]: {g} but diffusers has {w}");
    }
}

#[test]
fn schedules_match_diffusers() {
    let outputs = Outputs::load("schedulers");
    for case in cases(&outputs) {
        let (sampler, sigmas) = build(&case);
        assert_rel(
            &format!("{}.timesteps", case.name),
            sampler.timesteps(),
            &outputs.f64(&format!("{}.timesteps", case.name)),
            SCHEDULE_RTOL,
        );
        if let Some(sigmas) = sigmas {
            let got: Vec<f64> = sigmas.iter().map(|&s| s as f64).collect();
            let rtol = if case.config.rescale_betas_zero_snr { ZSNR_SCHEDULE_RTOL } else { SCHEDULE_RTOL };
            assert_rel(&format!("{}.sigmas", case.name), &got, &outputs.f64(&format!("{}.sigmas", case.name)), rtol);
        }
        assert_eq!(sampler.init_noise_sigma(), 1.0);
        // The same sampler by name, as the CLI builds it.
        let by_name = schedulers::by_name(&case.sampler, &case.config, &case.name, case.steps).unwrap();
        assert_eq!(by_name.timesteps(), sampler.timesteps(), "{}", case.name);
    }
}

/// `tensor[k]` of a stacked fixture tensor, and the shape of one entry.
fn entry(values: &[f32], shape: &[usize], k: usize) -> (Vec<f32>, Vec<usize>) {
    let n: usize = shape[1..].iter().product();
    (values[k * n..(k + 1) * n].to_vec(), shape[1..].to_vec())
}

/// The largest `|got - want|` as a fraction of `max|want|`, asserted under `tol`.
fn scaled_error(what: &str, got: &[f32], want: &[f32], tol: f32) -> f32 {
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let (i, err) = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .enumerate()
        .fold((0, 0.0f32), |best, (i, e)| if e > best.1 || e.is_nan() { (i, e) } else { best });
    let ratio = err / scale;
    assert!(ratio <= tol, "{what}: element {i} is {} but diffusers has {} ({ratio:e} of the scale {scale})", got[i], want[i]);
    ratio
}

#[test]
fn runs_match_diffusers() {
    let gpu = gpu();
    let outputs = Outputs::load("schedulers");
    let mut worst = (String::new(), 0.0f32);
    for case in cases(&outputs) {
        let (mut sampler, _) = build(&case);
        let (model_outputs, mshape) = outputs.f32(&format!("{}.model_outputs", case.name));
        let (samples, sshape) = outputs.f32(&format!("{}.samples", case.name));
        let (scaled, _) = outputs.f32(&format!("{}.scaled_inputs", case.name));
        let (start, latent) = entry(&samples, &sshape, 0);
        let mut sample = gpu.upload_f32(&latent, &start).unwrap();
        // One generator for the whole run, seeded with seed_c, as the pipeline's.
        let mut noise = Noise::new(gpu, case.seed_c);
        for k in 0..mshape[0] {
            let input = sampler.scale_model_input(&sample, k).unwrap();
            scaled_error(&format!("{} scaled input {k}", case.name), &read(&input), &entry(&scaled, &mshape, k).0, RUN_TOL);
            let output = gpu.upload_f32(&latent, &entry(&model_outputs, &mshape, k).0).unwrap();
            sample = sampler.step(&output, k, &sample, &mut noise).unwrap();
            let what = format!("{} step {k}", case.name);
            let ratio = scaled_error(&what, &read(&sample), &entry(&samples, &sshape, k + 1).0, RUN_TOL);
            if ratio > worst.1 {
                worst = (what, ratio);
            }
        }
    }
    eprintln!("largest error: {:e} of the latent scale at {}", worst.1, worst.0);
}

#[test]
fn lcm_denoised_matches_diffusers() {
    let gpu = gpu();
    let outputs = Outputs::load("schedulers");
    for case in cases(&outputs).into_iter().filter(|c| c.sampler == "lcm") {
        let mut lcm = Lcm::new(&case.config, &case.name, case.steps).unwrap();
        let (model_outputs, mshape) = outputs.f32(&format!("{}.model_outputs", case.name));
        let (samples, sshape) = outputs.f32(&format!("{}.samples", case.name));
        let (denoised, _) = outputs.f32(&format!("{}.denoised", case.name));
        let mut noise = Noise::new(gpu, case.seed_c);
        for k in 0..mshape[0] {
            // Each step from diffusers' own sample: this checks the step alone.
            let (start, latent) = entry(&samples, &sshape, k);
            let sample = gpu.upload_f32(&latent, &start).unwrap();
            let output = gpu.upload_f32(&latent, &entry(&model_outputs, &mshape, k).0).unwrap();
            lcm.step(&output, k, &sample, &mut noise).unwrap();
            let got = read(&lcm.denoised().unwrap().unwrap());
            scaled_error(&format!("{} denoised {k}", case.name), &got, &entry(&denoised, &mshape, k).0, RUN_TOL);
        }
    }
}

/// The run of models/lcm-tiny's own scheduler config in outputs/lcm-tiny.safetensors.
#[test]
fn lcm_tiny_run_matches_diffusers() {
    let gpu = gpu();
    let outputs = Outputs::load("lcm-tiny");
    let json = std::fs::read_to_string(path("models/lcm-tiny/scheduler/scheduler_config.json")).unwrap();
    let config = SchedulerConfig::from_json(&json, "lcm-tiny").unwrap();
    for steps in [4, 8] {
        let want: Vec<f64> = outputs.i64(&format!("sched.timesteps.n{steps}")).into_iter().map(|t| t as f64).collect();
        assert_eq!(Lcm::new(&config, "lcm-tiny", steps).unwrap().timesteps(), want.as_slice());
    }
    let (model_outputs, mshape) = outputs.f32("sched.step.n4.model_outputs");
    let (samples, sshape) = outputs.f32("sched.step.n4.samples");
    let (denoised, _) = outputs.f32("sched.step.n4.denoised");
    let (noises, nshape) = outputs.f32("sched.step.n4.noises");
    let mut lcm = Lcm::new(&config, "lcm-tiny", 4).unwrap();
    // generate.py seeds the step generator with the run's seed (3300) + 1.
    let mut noise = Noise::new(gpu, 3301);
    let mut check_noise = Noise::new(gpu, 3301);
    let (start, latent) = entry(&samples, &sshape, 0);
    let mut sample = gpu.upload_f32(&latent, &start).unwrap();
    for k in 0..4 {
        if k < nshape[0] {
            // torch draws with vectorised log/sin/cos (Sleef, 1 ulp), as in tests/rng.rs.
            assert_close(&format!("noise {k}"), &read(&check_noise.randn(&latent).unwrap()), &entry(&noises, &nshape, k).0, 2e-6, 2e-6);
        }
        let output = gpu.upload_f32(&latent, &entry(&model_outputs, &mshape, k).0).unwrap();
        sample = lcm.step(&output, k, &sample, &mut noise).unwrap();
        scaled_error(&format!("denoised {k}"), &read(&lcm.denoised().unwrap().unwrap()), &entry(&denoised, &mshape, k).0, RUN_TOL);
        scaled_error(&format!("sample {k}"), &read(&sample), &entry(&samples, &sshape, k + 1).0, RUN_TOL);
    }
}

fn sd15() -> SchedulerConfig {
    let json = r#"{"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "set_alpha_to_one": false,
        "skip_prk_steps": true, "steps_offset": 1, "clip_sample": false, "trained_betas": null}"#;
    SchedulerConfig::from_json(json, "sd15").unwrap()
}

#[test]
fn missing_keys_take_each_class_default() {
    // SD 1.5's config has no timestep_spacing: DPM-Solver and UniPC use their "linspace",
    // as `Class.from_config` does, not DDIM's "leading".
    let config = sd15();
    assert!(!config.gives("timestep_spacing") && config.gives("steps_offset"));
    let linspace = SchedulerConfig { timestep_spacing: "linspace".into(), ..sd15() };
    let dpm = |c: &SchedulerConfig| DpmSolver::new(c, "c", 4, DpmVariant::TWO_M).unwrap().timesteps().to_vec();
    assert_eq!(dpm(&config), vec![999.0, 749.0, 500.0, 250.0]);
    assert_eq!(dpm(&config), dpm(&linspace));
    assert_eq!(UniPc::new(&config, "c", 4).unwrap().timesteps(), dpm(&linspace).as_slice());
    // Keys listed in `_use_default_values` count as unset, and diffusers' bare -Infinity parses.
    let json = r#"{"timestep_spacing": "leading", "solver_type": "midpoint", "lambda_min_clipped": -Infinity,
        "_use_default_values": ["solver_type"], "name": "not -Infinity"}"#;
    let config = SchedulerConfig::from_json(json, "c").unwrap();
    assert_eq!(config.lambda_min_clipped, f64::NEG_INFINITY);
    assert!(config.gives("timestep_spacing") && !config.gives("solver_type"));
    assert!(matches!(SchedulerConfig::from_json("{", "c"), Err(Error::Format { .. })));
}

fn assert_unsupported<T>(what: &str, result: webdiffusion::Result<T>, mentions: &str) {
    match result {
        Err(Error::Unsupported { detail, .. }) => assert!(detail.contains(mentions), "{what}: {detail}"),
        Err(other) => panic!("{what}: expected Unsupported, got {other}"),
        Ok(_) => panic!("{what}: accepted"),
    }
}

fn assert_request<T>(what: &str, result: webdiffusion::Result<T>, option: &str, mentions: &str) {
    match result {
        Err(Error::Request { option: named, detail }) => assert!(named == option && detail.contains(mentions), "{what}: {named}: {detail}"),
        Err(other) => panic!("{what}: expected a request error, got {other}"),
        Ok(_) => panic!("{what}: accepted"),
    }
}

/// sd15 with every field counting as set, so that the fields a test changes are read.
fn sd15_as_given() -> SchedulerConfig {
    SchedulerConfig { given: None, ..sd15() }
}

#[test]
fn unsupported_configs_are_refused() {
    let dpm = |config: SchedulerConfig| DpmSolver::new(&config, "c", 4, DpmVariant::TWO_M_SDE_KARRAS);
    assert_unsupported("thresholding", dpm(SchedulerConfig { thresholding: true, ..sd15_as_given() }), "thresholding");
    let learned = SchedulerConfig { variance_type: Some("learned_range".into()), ..sd15_as_given() };
    assert_unsupported("learned variance", dpm(learned), "learned_range");
    assert_unsupported("solver type", dpm(SchedulerConfig { solver_type: "rk4".into(), ..sd15_as_given() }), "rk4");
    assert_unsupported("final sigma", dpm(SchedulerConfig { final_sigmas_type: "one".into(), ..sd15_as_given() }), "final_sigmas_type");
    assert_unsupported("exponential", dpm(SchedulerConfig { use_exponential_sigmas: true, ..sd15_as_given() }), "use_exponential_sigmas");
    assert_unsupported("flow", dpm(SchedulerConfig { prediction_type: "flow_prediction".into(), ..sd15_as_given() }), "flow_prediction");
    assert_unsupported("spacing", dpm(SchedulerConfig { timestep_spacing: "sideways".into(), ..sd15_as_given() }), "sideways");
    assert_request("no steps", DpmSolver::new(&sd15(), "c", 0, DpmVariant::TWO_M), "steps", "0 inference steps");

    let unipc = |config: SchedulerConfig| UniPc::new(&config, "c", 4);
    assert_unsupported("order 3", unipc(SchedulerConfig { solver_order: 3, ..sd15_as_given() }), "solver_order 3");
    assert_unsupported("thresholding", unipc(SchedulerConfig { thresholding: true, ..sd15_as_given() }), "thresholding");
    assert_unsupported("solver type", unipc(SchedulerConfig { solver_type: "bh3".into(), ..sd15_as_given() }), "bh3");
    assert_unsupported("beta sigmas", unipc(SchedulerConfig { use_beta_sigmas: true, ..sd15_as_given() }), "use_beta_sigmas");
    assert_unsupported("bh1 to zero", unipc(SchedulerConfig { solver_type: "bh1".into(), ..sd15_as_given() }), "NaN");
    assert_unsupported("noise prediction to zero", unipc(SchedulerConfig { predict_x0: false, ..sd15_as_given() }), "NaN");

    assert_request("LCM steps", Lcm::new(&sd15(), "c", 51), "steps", "51 LCM steps");
    assert_unsupported("LCM thresholding", Lcm::new(&SchedulerConfig { thresholding: true, ..sd15_as_given() }, "c", 4), "thresholding");
    let no_origin = SchedulerConfig { original_inference_steps: 0, ..sd15_as_given() };
    assert_unsupported("LCM origin", Lcm::new(&no_origin, "c", 4), "original_inference_steps 0");
    assert_request("unknown name", schedulers::by_name("dpm++3m", &sd15(), "c", 4), "scheduler", "dpm++3m");
}

#[test]
fn multistep_solvers_refuse_steps_out_of_order() {
    let gpu = gpu();
    let latent = gpu.upload_f32(&[1, 4, 2, 2], &[0.5; 16]).unwrap();
    let mut noise = Noise::new(gpu, 0);
    let mut dpm = DpmSolver::new(&sd15(), "c", 4, DpmVariant::TWO_M).unwrap();
    assert!(matches!(dpm.step(&latent, 1, &latent, &mut noise), Err(Error::Shape { .. })));
    let mut unipc = UniPc::new(&sd15(), "c", 4).unwrap();
    unipc.step(&latent, 0, &latent, &mut noise).unwrap();
    assert!(matches!(unipc.step(&latent, 0, &latent, &mut noise), Err(Error::Shape { .. })));
    let mut lcm = Lcm::new(&sd15(), "c", 4).unwrap();
    assert!(matches!(lcm.step(&latent, 4, &latent, &mut noise), Err(Error::Shape { .. })));
}

#[test]
fn lcm_strength_picks_from_the_start_of_the_distillation_schedule() {
    // diffusers' LCMScheduler.set_timesteps(steps, strength=...) with 50 original steps.
    assert_eq!(Lcm::with_strength(&sd15(), "c", 4, 0.5).unwrap().timesteps(), [499.0, 379.0, 259.0, 139.0]);
    assert_eq!(Lcm::with_strength(&sd15(), "c", 3, 0.7).unwrap().timesteps(), [699.0, 479.0, 239.0]);
    assert_eq!(Lcm::with_strength(&sd15(), "c", 4, 1.0).unwrap().timesteps(), Lcm::new(&sd15(), "c", 4).unwrap().timesteps());
    assert_request("too few kept", Lcm::with_strength(&sd15(), "c", 4, 0.06), "steps", "at most int(50 * 0.06) = 3");
}
