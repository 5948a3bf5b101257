//! DDIM, PNDM (PLMS, and with its Runge-Kutta warm-up), Euler, Euler ancestral, Heun and LMS against diffusers: every case
//! of theirs in outputs/schedulers.safetensors (timesteps, sigmas and a whole stateful run
//! driven as a pipeline drives it, with each step's clean estimate), Karras sigmas against
//! DPM-Solver's, the LMS coefficients, per-class config defaults, and the configs they must
//! refuse.

use crate::common;

use common::fixtures::{Outputs, SchedulerCase, scheduler_cases};
use common::{gpu, read};
use webdiffusion::Error;
use webdiffusion::schedulers::ddim::Ddim;
use webdiffusion::schedulers::euler::Euler;
use webdiffusion::schedulers::euler_ancestral::EulerAncestral;
use webdiffusion::schedulers::heun::Heun;
use webdiffusion::schedulers::lms::{Lms, lms_coefficient};
use webdiffusion::schedulers::pndm::Pndm;
use webdiffusion::schedulers::{self, Noise, Scheduler, SchedulerConfig};

/// `pndm-prk` is PNDMScheduler with `skip_prk_steps` false, which our `pndm` follows
/// from the config.
const SAMPLERS: [&str; 7] = ["ddim", "pndm", "euler", "euler-a", "heun", "lms", "pndm-prk"];

/// Timesteps and sigmas: numpy and torch compute them in f64 and f32 with the same
/// formulas as ours; 1e-6 relative allows the last f32 ulp of a logarithm or an exp.
const SCHEDULE_RTOL: f64 = 1e-6;

/// Zero-terminal-SNR sigmas: this torch build's f32 `sqrt` is not correctly rounded (one
/// ulp off for about a fifth of `alphas_cumprod`, checked against numpy), and the rescale
/// turns that ulp into up to 4e-6 of `alphas_cumprod`; `(1 - a) / a` then magnifies it
/// where `a` is near 1.
const ZSNR_SCHEDULE_RTOL: f64 = 2e-5;

/// Scaled inputs: diffusers divides by sqrt(sigma^2 + 1), we multiply by its f32
/// reciprocal: an ulp of the value, checked as 1e-6 of the largest one.
const SCALED_TOL: f32 = 1e-6;

/// A whole run, compared step by step against `1e-5` of the latent scale (the largest
/// `|sample|` going into or out of the step, or of the run so far): diffusers forms each update from separate f32
/// tensor operations (x0, derivative, Adams-Bashforth or LMS sums, then the step) while we
/// fold them into one f32 coefficient per tensor, so the roundings differ by a few ulps of
/// the largest term. That is the input sample, not the result, when a step removes almost
/// all of it: the first zero-terminal-SNR step starts from sigma 4096 (samples ~1e4) and
/// lands on ~2, where diffusers' own f32 cancellation leaves errors of ~1e-3. Over up to 49
/// dependent steps the differences stay well under 1e-5 of the latent scale.
const RUN_TOL: f32 = 1e-5;

/// Heun's correction divides `sample - denoised` by the sigma it steps to and multiplies
/// by half the step: in diffusers' f32 the ulp of the sample is lost in that difference,
/// so with few steps (n2: dt / sigma ~ 500) diffusers' own rounding reaches ~1.5e-5 of the
/// latent scale. We compute the derivative as the model output directly.
const HEUN_RUN_TOL: f32 = 3e-5;

fn cases(outputs: &Outputs) -> Vec<SchedulerCase> {
    let mine = scheduler_cases(outputs, &SAMPLERS);
    // 7 samplers x 6 bases x 5 step counts, less zsnr for both PNDMs, Heun and LMS (no
    // such option in diffusers), "sample" for both PNDMs and Euler ancestral (diffusers
    // raises) and the Runge-Kutta warm-up in 1 or 2 steps (diffusers cannot).
    assert_eq!(mine.len(), 210 - 35 - 8, "cases of our samplers");
    mine
}

/// The sampler and its sigmas (none for DDIM and PNDM).
fn build(case: &SchedulerCase) -> (Box<dyn Scheduler>, Option<Vec<f32>>) {
    let (config, file, steps) = (&case.config, case.name.as_str(), case.steps);
    match case.sampler.as_str() {
        "ddim" => (Box::new(Ddim::new(config, file, steps).unwrap()), None),
        "pndm" | "pndm-prk" => (Box::new(Pndm::new(config, file, steps).unwrap()), None),
        "euler" => {
            let sampler = Euler::new(config, file, steps).unwrap();
            let sigmas = sampler.sigmas().to_vec();
            (Box::new(sampler), Some(sigmas))
        }
        "euler-a" => {
            let sampler = EulerAncestral::new(config, file, steps).unwrap();
            let sigmas = sampler.sigmas().to_vec();
            (Box::new(sampler), Some(sigmas))
        }
        "heun" => {
            let sampler = Heun::new(config, file, steps).unwrap();
            let sigmas = sampler.sigmas().to_vec();
            (Box::new(sampler), Some(sigmas))
        }
        "lms" => {
            let sampler = Lms::new(config, file, steps).unwrap();
            let sigmas = sampler.sigmas().to_vec();
            (Box::new(sampler), Some(sigmas))
        }
        other => panic!("not ours: {other}"),
    }
}

/// Asserts `|got - want| <= rtol * |want|` everywhere; returns the largest relative error.
fn assert_rel(what: &str, got: &[f64], want: &[f64], rtol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length ({got:?} vs {want:?})");
    let mut worst = 0.0f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= rtol * w.abs(), "{what}[{i}]: {g} but diffusers has {w}");
        if *w != 0.0 {
            worst = worst.max((g - w).abs() / w.abs());
        }
    }
    worst
}

fn f64s(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| v as f64).collect()
}

#[test]
fn schedules_match_diffusers() {
    let outputs = Outputs::load("schedulers");
    let (mut worst_t, mut worst_s, mut worst_zsnr) = (0.0f64, 0.0f64, 0.0f64);
    for case in cases(&outputs) {
        let (sampler, sigmas) = build(&case);
        let rtol = if case.config.rescale_betas_zero_snr { ZSNR_SCHEDULE_RTOL } else { SCHEDULE_RTOL };
        let want = outputs.f64(&format!("{}.timesteps", case.name));
        worst_t = worst_t.max(assert_rel(&format!("{}.timesteps", case.name), sampler.timesteps(), &want, rtol));
        if let Some(sigmas) = sigmas {
            let want = outputs.f64(&format!("{}.sigmas", case.name));
            let error = assert_rel(&format!("{}.sigmas", case.name), &f64s(&sigmas), &want, rtol);
            let slot = if case.config.rescale_betas_zero_snr { &mut worst_zsnr } else { &mut worst_s };
            *slot = slot.max(error);
        }
        let init = [sampler.init_noise_sigma() as f64];
        assert_rel(&format!("{} init_noise_sigma", case.name), &init, &[case.init_noise_sigma as f64], rtol);
        // The same sampler by name, as the CLI builds it (`pndm` reads skip_prk_steps from the config).
        let name = if case.sampler == "pndm-prk" { "pndm" } else { &case.sampler };
        let by_name = schedulers::by_name(name, &case.config, &case.name, case.steps).unwrap();
        assert_eq!(by_name.timesteps(), sampler.timesteps(), "{}", case.name);
    }
    eprintln!("largest relative error: timesteps {worst_t:e}, sigmas {worst_s:e} (zero-terminal-SNR: {worst_zsnr:e})");
}

fn max_abs(values: &[f32]) -> f32 {
    values.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// `tensor[k]` of a stacked fixture tensor, and the shape of one entry.
fn entry(values: &[f32], shape: &[usize], k: usize) -> (Vec<f32>, Vec<usize>) {
    let n: usize = shape[1..].iter().product();
    (values[k * n..(k + 1) * n].to_vec(), shape[1..].to_vec())
}

/// The largest `|got - want|` as a fraction of `scale`, asserted under `tol`.
fn scaled_error(what: &str, got: &[f32], want: &[f32], scale: f32, tol: f32) -> f32 {
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

/// How a run is fed: its own previous sample, or diffusers' (which isolates each step's
/// rounding while the sampler still carries its state through the whole run).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Feed {
    Own,
    Diffusers,
}

/// Runs every case, checking each scaled input and sample; returns the largest error per
/// sampler as `(sampler, fraction of the latent scale, where)`. The latent scale is the
/// largest `|sample|` of the step (fed diffusers' samples) or of the run so far (fed its own,
/// where what an earlier step left carries on).
fn run_cases(feed: Feed) -> Vec<(&'static str, f32, String)> {
    let gpu = gpu();
    let outputs = Outputs::load("schedulers");
    let mut worst: Vec<(&str, f32, String)> = SAMPLERS.iter().map(|&s| (s, 0.0, String::new())).collect();
    for case in cases(&outputs) {
        let (mut sampler, _) = build(&case);
        let (model_outputs, mshape) = outputs.f32(&format!("{}.model_outputs", case.name));
        let (samples, sshape) = outputs.f32(&format!("{}.samples", case.name));
        let (scaled, _) = outputs.f32(&format!("{}.scaled_inputs", case.name));
        assert_eq!(mshape[0], sampler.timesteps().len(), "{}: one model output per timestep", case.name);
        let (start, latent) = entry(&samples, &sshape, 0);
        let mut sample = gpu.upload_f32(&latent, &start).unwrap();
        let mut run_scale = max_abs(&start);
        // One generator for the whole run, seeded with seed_c, as the pipeline's.
        let mut noise = Noise::new(gpu, case.seed_c);
        for k in 0..mshape[0] {
            let (before, after) = (entry(&samples, &sshape, k).0, entry(&samples, &sshape, k + 1).0);
            if feed == Feed::Diffusers {
                sample = gpu.upload_f32(&latent, &before).unwrap();
                // scale_model_input alone: one ulp (a reciprocal multiply, not a division).
                let input = read(&sampler.scale_model_input(&sample, k).unwrap());
                let want_input = entry(&scaled, &mshape, k).0;
                scaled_error(&format!("{} scaled input {k}", case.name), &input, &want_input, max_abs(&want_input), SCALED_TOL);
            }
            let output = gpu.upload_f32(&latent, &entry(&model_outputs, &mshape, k).0).unwrap();
            sample = sampler.step(&output, k, &sample, &mut noise).unwrap();
            run_scale = run_scale.max(max_abs(&after));
            let scale = if feed == Feed::Diffusers { max_abs(&before).max(max_abs(&after)) } else { run_scale };
            let what = format!("{} step {k}", case.name);
            let tol = if case.sampler == "heun" { HEUN_RUN_TOL } else { RUN_TOL };
            let ratio = scaled_error(&what, &read(&sample), &after, scale, tol);
            // The clean estimate where diffusers' output carries one (`pred_original_sample`).
            let estimate = sampler.denoised().unwrap();
            let key = format!("{}.denoised", case.name);
            match (estimate, outputs.has(&key)) {
                (Some(got), true) => {
                    let (want, _) = entry(&outputs.f32(&key).0, &mshape, k);
                    scaled_error(&format!("{what} estimate"), &read(&got), &want, max_abs(&want).max(scale), tol);
                }
                (None, false) => {}
                (got, _) => panic!("{what}: our estimate is {}, diffusers' {}", got.is_some(), outputs.has(&key)),
            }
            let slot = worst.iter_mut().find(|w| w.0 == case.sampler).unwrap();
            if ratio > slot.1 {
                (slot.1, slot.2) = (ratio, what);
            }
        }
    }
    worst
}

/// Image to image runs the tail of the schedule; diffusers' PNDM counts its evaluations
/// from there, so the Runge-Kutta warm-up reads its steps' first timesteps from the start
/// of the table while stepping the tail's timesteps. Ours follows, step by step.
#[test]
fn pndm_warm_up_on_a_schedules_tail_matches_diffusers() {
    let gpu = gpu();
    let outputs = Outputs::load("schedulers");
    let tails: serde_json::Value = serde_json::from_str(&outputs.metadata("tails").expect("tails metadata")).unwrap();
    let tails = tails.as_object().unwrap();
    assert!(!tails.is_empty());
    for (name, case) in tails {
        let config = SchedulerConfig::from_json(&case["config"].to_string(), name).unwrap();
        assert!(!config.skip_prk_steps, "{name}");
        let (steps, begin) = (case["steps"].as_u64().unwrap() as usize, case["begin"].as_u64().unwrap() as usize);
        let mut pndm = schedulers::by_name("pndm", &config, name, steps).unwrap();
        pndm.set_begin_index(begin).unwrap();
        let (model_outputs, mshape) = outputs.f32(&format!("{name}.model_outputs"));
        let (samples, sshape) = outputs.f32(&format!("{name}.samples"));
        assert_eq!(begin + mshape[0], pndm.timesteps().len(), "{name}: the tail's length");
        let (start, latent) = entry(&samples, &sshape, 0);
        let mut sample = gpu.upload_f32(&latent, &start).unwrap();
        let mut run_scale = max_abs(&start);
        for k in 0..mshape[0] {
            let output = gpu.upload_f32(&latent, &entry(&model_outputs, &mshape, k).0).unwrap();
            sample = pndm.step(&output, begin + k, &sample, &mut Noise::new(gpu, 0)).unwrap();
            let want = entry(&samples, &sshape, k + 1).0;
            run_scale = run_scale.max(max_abs(&want));
            scaled_error(&format!("{name} step {k}"), &read(&sample), &want, run_scale, RUN_TOL);
        }
    }
}

#[test]
fn steps_match_diffusers() {
    for (sampler, ratio, at) in run_cases(Feed::Diffusers) {
        eprintln!("{sampler}: largest step error {ratio:e} of the step's latent scale ({at})");
    }
}

#[test]
fn runs_match_diffusers() {
    for (sampler, ratio, at) in run_cases(Feed::Own) {
        eprintln!("{sampler}: largest run error {ratio:e} of the run's latent scale ({at})");
    }
}

/// Euler's Karras sigmas with linspace spacing span the whole training range, as
/// DPM-Solver's do: both must be diffusers' `_convert_to_karras` of the same end points,
/// and DPM's rounded timesteps are `_sigma_to_t` of them.
#[test]
fn karras_sigmas_match_dpm_solvers() {
    let outputs = Outputs::load("schedulers");
    for steps in [2, 4, 7, 25] {
        let dpm = format!("dpm++2m-karras.linspace.n{steps}");
        let want_sigmas = outputs.f64(&format!("{dpm}.sigmas"));
        let want_timesteps = outputs.f64(&format!("{dpm}.timesteps"));
        let config = SchedulerConfig {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: "scaled_linear".into(),
            timestep_spacing: "linspace".into(),
            use_karras_sigmas: true,
            ..Default::default()
        };
        let euler = Euler::new(&config, "karras", steps).unwrap();
        assert_rel(&format!("{dpm} sigmas"), &f64s(&euler.sigmas()[..steps]), &want_sigmas[..steps], SCHEDULE_RTOL);
        let rounded: Vec<f64> = euler.timesteps().iter().map(|t| t.round_ties_even()).collect();
        assert_eq!(rounded, want_timesteps, "{dpm} timesteps");
        // Decreasing sigmas, a final 0, and timesteps from 999 down to 0.
        assert!(euler.sigmas().windows(2).all(|w| w[0] > w[1]) && euler.sigmas()[steps] == 0.0);
        assert_eq!((euler.timesteps()[0], euler.timesteps()[steps - 1]), (999.0, 0.0));
    }
}

/// The Lagrange weights of diffusers' `get_lms_coefficient`: order 1 is the interval; the
/// basis polynomials sum to 1, so their integrals sum to the interval; a cubic through
/// four nodes is reproduced exactly.
#[test]
fn lms_coefficients_integrate_the_lagrange_basis() {
    let sigmas = [14.6f32, 9.7, 5.1, 2.3, 0.9, 0.0];
    assert_eq!(lms_coefficient(&sigmas, 1, 0, 0), (sigmas[1] - sigmas[0]) as f64);
    for t in 3..5 {
        let (low, high) = (sigmas[t] as f64, sigmas[t + 1] as f64);
        let coefficients: Vec<f64> = (0..4).map(|k| lms_coefficient(&sigmas, 4, t, k)).collect();
        let total: f64 = coefficients.iter().sum();
        assert!((total - (high - low)).abs() < 1e-13, "{total} vs {}", high - low);
        // The integral of p(s) = s^3 - 2s from low to high from its values at the nodes.
        let p = |s: f64| s * s * s - 2.0 * s;
        let by_weights: f64 = (0..4).map(|k| coefficients[k] * p(sigmas[t - k] as f64)).sum();
        let exact = (high.powi(4) - low.powi(4)) / 4.0 - (high * high - low * low);
        assert!((by_weights - exact).abs() < 1e-12 * exact.abs().max(1.0), "{by_weights} vs {exact}");
    }
}

/// Keys a config file leaves out take the defaults of the diffusers class the sampler
/// is (`from_config` semantics), not DDIM's.
#[test]
fn missing_keys_take_the_class_defaults() {
    let json = r#"{"_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}"#;
    let sparse = SchedulerConfig::from_json(json, "sparse").unwrap();
    // Euler family: linspace spacing, so the first timestep is the last training step.
    let spelled = SchedulerConfig { timestep_spacing: "linspace".into(), given: None, ..sparse.clone() };
    for name in ["euler", "euler-a", "heun", "lms"] {
        let got = schedulers::by_name(name, &sparse, "sparse", 10).unwrap();
        let want = schedulers::by_name(name, &spelled, "spelled", 10).unwrap();
        assert_eq!(got.timesteps(), want.timesteps(), "{name}");
        assert_eq!(got.timesteps()[0], 999.0, "{name}");
    }
    // Heun: betas 0.00085..0.012 and no clipping unless the file says otherwise.
    let bare = SchedulerConfig::from_json(r#"{"beta_schedule": "linear"}"#, "bare").unwrap();
    let heun_defaults = SchedulerConfig {
        beta_start: 0.00085,
        beta_end: 0.012,
        timestep_spacing: "linspace".into(),
        clip_sample: false,
        given: None,
        ..bare.clone()
    };
    let heun = Heun::new(&bare, "bare", 5).unwrap();
    assert_eq!(heun.sigmas(), Heun::new(&heun_defaults, "spelled", 5).unwrap().sigmas());
    // Euler keeps SchedulerConfig's (and its own) betas, 0.0001..0.02.
    assert_ne!(heun.sigmas()[0], Euler::new(&bare, "bare", 5).unwrap().sigmas()[0]);
}

#[test]
fn pndm_set_alpha_to_one_defaults_to_false() {
    let gpu = gpu();
    let sample = gpu.upload_f32(&[4], &[1.0, -2.0, 0.5, 3.0]).unwrap();
    let output = gpu.upload_f32(&[4], &[0.3, 0.1, -0.7, 0.2]).unwrap();
    let last_step = |config: &SchedulerConfig| {
        // One step goes from the only timestep straight to the final alpha.
        let mut pndm = Pndm::new(config, "c", 1).unwrap();
        read(&pndm.step(&output, 0, &sample, &mut Noise::new(gpu, 0)).unwrap())
    };
    let sparse = SchedulerConfig::from_json(r#"{"beta_schedule": "scaled_linear", "skip_prk_steps": true}"#, "c").unwrap();
    let explicit_false = SchedulerConfig { set_alpha_to_one: false, ..sparse.clone() };
    let explicit_true = SchedulerConfig { set_alpha_to_one: true, given: None, ..sparse.clone() };
    assert_eq!(last_step(&sparse), last_step(&explicit_false));
    assert_ne!(last_step(&sparse), last_step(&explicit_true));
}

#[test]
fn steps_must_run_in_order() {
    let gpu = gpu();
    let config = SchedulerConfig { beta_schedule: "scaled_linear".into(), clip_sample: false, ..Default::default() };
    let latent = gpu.upload_f32(&[1, 4, 2, 2], &[0.5; 16]).unwrap();
    for name in ["pndm", "heun", "lms"] {
        let mut sampler = schedulers::by_name(name, &config, "c", 4).unwrap();
        let err = sampler.step(&latent, 1, &latent, &mut Noise::new(gpu, 0)).err().unwrap();
        assert!(matches!(err, Error::Shape { .. }), "{name}: {err}");
    }
    let mut euler = schedulers::by_name("euler", &config, "c", 4).unwrap();
    assert!(euler.step(&latent, 4, &latent, &mut Noise::new(gpu, 0)).is_err(), "past the last step");
    assert!(euler.scale_model_input(&latent, 4).is_err(), "past the last step");
}

#[test]
fn bad_configs_are_unsupported() {
    let base = SchedulerConfig { beta_schedule: "scaled_linear".into(), clip_sample: false, ..Default::default() };
    let cases: Vec<(&str, SchedulerConfig, &str)> = vec![
        ("euler", SchedulerConfig { interpolation_type: "cubic".into(), ..base.clone() }, "cubic"),
        ("euler", SchedulerConfig { final_sigmas_type: "one".into(), ..base.clone() }, "final_sigmas_type"),
        ("euler", SchedulerConfig { timestep_type: "warped".into(), ..base.clone() }, "warped"),
        ("euler", SchedulerConfig { use_karras_sigmas: true, use_beta_sigmas: true, ..base.clone() }, "more than one"),
        ("heun", SchedulerConfig { use_exponential_sigmas: true, use_karras_sigmas: true, ..base.clone() }, "more than one"),
        ("lms", SchedulerConfig { prediction_type: "x0".into(), ..base.clone() }, "x0"),
        ("euler-a", SchedulerConfig { prediction_type: "sample".into(), ..base.clone() }, "sample"),
        ("pndm", SchedulerConfig { prediction_type: "sample".into(), ..base.clone() }, "sample"),
        ("pndm", SchedulerConfig { timestep_spacing: "sideways".into(), ..base.clone() }, "sideways"),
        ("euler", SchedulerConfig { timestep_spacing: "sideways".into(), ..base.clone() }, "sideways"),
        ("euler", SchedulerConfig { beta_schedule: "exp".into(), ..base.clone() }, "exp"),
        ("lms", SchedulerConfig { beta_schedule: "exotic".into(), ..base.clone() }, "exotic"),
        ("heun", SchedulerConfig { trained_betas: Some(vec![0.01; 10]), ..base.clone() }, "trained_betas"),
    ];
    for (name, config, needle) in cases {
        let err = schedulers::by_name(name, &config, "scheduler_config.json", 10).err().unwrap();
        assert!(matches!(err, Error::Unsupported { .. }) && err.to_string().contains(needle), "{name}: {err}");
    }
    for name in ["pndm", "euler", "euler-a", "heun", "lms"] {
        // Step counts are the request's, not the config's, to get wrong.
        assert!(matches!(schedulers::by_name(name, &base, "c", 0), Err(Error::Request { option: "steps", .. })), "{name}: 0 steps");
        assert!(matches!(schedulers::by_name(name, &base, "c", 1001), Err(Error::Request { option: "steps", .. })), "{name}: 1001 steps");
    }
    // The Runge-Kutta warm-up takes the last four timesteps, so fewer steps are refused
    // (diffusers fails on them), as PLMS is not.
    let err = schedulers::by_name("pndm", &base, "c", 3).err().unwrap();
    assert!(matches!(&err, Error::Request { option: "steps", detail } if detail.contains("skip_prk_steps false")), "{err}");
    let plms = SchedulerConfig { skip_prk_steps: true, ..base.clone() };
    assert_eq!(schedulers::by_name("pndm", &plms, "c", 3).unwrap().timesteps().len(), 4);
    // Heun alone has diffusers' "exp" beta schedule.
    assert!(Heun::new(&SchedulerConfig { beta_schedule: "exp".into(), ..base }, "c", 10).is_ok());
}

/// The reschedules the fixtures do not cover (checked against diffusers 0.42 by hand to
/// 5e-7 relative): their defining properties.
#[test]
fn reschedules_follow_their_definitions() {
    let base = SchedulerConfig {
        beta_start: 0.00085,
        beta_end: 0.012,
        beta_schedule: "scaled_linear".into(),
        timestep_spacing: "trailing".into(),
        sigma_min: Some(0.05),
        sigma_max: Some(12.0),
        ..Default::default()
    };
    let steps = 9;
    let euler = |config: SchedulerConfig| Euler::new(&config, "c", steps).unwrap();
    // Exponential: a geometric sequence between the configured end points, then 0.
    let exponential = euler(SchedulerConfig { use_exponential_sigmas: true, ..base.clone() });
    let s = f64s(exponential.sigmas());
    assert_eq!((s[0] as f32, s[steps - 1] as f32, s[steps]), (12.0, 0.05, 0.0));
    let ratio = s[1] / s[0];
    assert!(s[..steps].windows(2).all(|w| (w[1] / w[0] / ratio - 1.0).abs() < 1e-6), "{s:?}");
    // Beta(0.6, 0.6) quantiles: symmetric about the midpoint.
    let beta = euler(SchedulerConfig { use_beta_sigmas: true, ..base.clone() });
    let s = f64s(beta.sigmas());
    assert!((s[2] + s[steps - 3] - (12.0 + 0.05)).abs() < 1e-5, "{s:?}");
    // Karras: linear in sigma^(1/7).
    let karras = euler(SchedulerConfig { use_karras_sigmas: true, ..base.clone() });
    let roots: Vec<f64> = f64s(&karras.sigmas()[..steps]).iter().map(|s| s.powf(1.0 / 7.0)).collect();
    assert!(roots.windows(3).all(|w| ((w[2] - w[1]) - (w[1] - w[0])).abs() < 1e-6), "{roots:?}");
    // final_sigmas_type "sigma_min": the last sigma is the first training step's.
    let sigma_min = euler(SchedulerConfig { final_sigmas_type: "sigma_min".into(), ..base.clone() });
    let first_train = ((1.0f32 - (1.0 - 0.00085f32)) / (1.0 - 0.00085f32)).sqrt();
    assert!((sigma_min.sigmas()[steps] / first_train - 1.0).abs() < 1e-6);
    // log_linear: steps + 1 interpolated sigmas and the final one.
    let log_linear = euler(SchedulerConfig { interpolation_type: "log_linear".into(), ..base.clone() });
    assert_eq!((log_linear.sigmas().len(), log_linear.timesteps().len()), (steps + 2, steps));
    // Continuous v-prediction timesteps are 0.25 * ln(sigma).
    let continuous = euler(SchedulerConfig { timestep_type: "continuous".into(), prediction_type: "v_prediction".into(), ..base.clone() });
    for (t, s) in continuous.timesteps().iter().zip(continuous.sigmas()) {
        assert!((t - 0.25 * (*s as f64).ln()).abs() < 1e-6);
    }
    // Heun visits each sigma after the first twice.
    let heun = Heun::new(&SchedulerConfig { use_karras_sigmas: true, ..base }, "c", steps).unwrap();
    assert_eq!((heun.sigmas().len(), heun.timesteps().len()), (2 * steps, 2 * steps - 1));
    assert_eq!(heun.sigmas()[1..2 * steps - 1].chunks(2).map(|p| p[0] == p[1]).filter(|&same| same).count(), steps - 1);
}
