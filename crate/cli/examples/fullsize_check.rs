//! Full-size Stable Diffusion architectures (random weights) against diffusers: one text
//! encoding, one UNet evaluation at 512x512 and one VAE decode to 512x512, on the inputs
//! and outputs `tests/fullsize/make_models.py` recorded. Not a test: the folders are
//! gigabytes and each network takes minutes on lavapipe (see tests/fullsize/README.md).
//!
//! ```text
//! cargo run --release --example fullsize_check -- <model dir> <reference file> [text] [unet] [vae]
//! ```
//!
//! Prints, per network, the shapes, the max error relative to the output scale, the load
//! and run wall times, and PASS/FAIL; exits with 1 if any network fails or errs.

use std::process::ExitCode;
use std::time::Instant;

use safetensors::SafeTensors;
use webdiffusion::gpu::{Gpu, Tensor};
use webdiffusion::loader::{DirFiles, WeightPrecision};
use webdiffusion::models::clip::ClipTextModel;
use webdiffusion::models::unet_2d::UNet2DConditionModel;
use webdiffusion::models::vae::AutoencoderKl;
use webdiffusion::tokenizer::ClipTokenizer;

const NETWORKS: [&str; 3] = ["text", "unet", "vae"];

/// Max |ours - diffusers| over max |diffusers|. Everything runs in f32 with f32 weights,
/// so only summation order and the GPU's exp/erf/sin differ from torch: a few 1e-7
/// relative per operation, grown through the network's depth.
/// - text encoder (12 or 23 pre-LN layers) and UNet (~70 layers, K up to 11520 in a
///   conv): 1e-4, as for the tiny fixtures; a wrong weight, eps or order costs > 1e-2.
/// - VAE decoder: also 1e-4, with no extra allowance. It has more convolutions in a row
///   (30, K up to 4608) and group norms over up to 1M elements, split into channel chunks
///   at 512x512, but every one of them sums in f32 and renormalises what it gets, so
///   rounding does not compound: measured 4e-6 for both models (docs/BENCHMARKS.md).
const TOLERANCE: [(&str, f32); 3] = [("text", 1e-4), ("unet", 1e-4), ("vae", 1e-4)];

/// The reference file: inputs and diffusers' outputs.
struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("a safetensors reference file")
    }

    fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let file = self.tensors();
        let view = file.tensor(name).unwrap_or_else(|e| panic!("reference tensor {name}: {e}"));
        (view.shape().to_vec(), bytemuck::pod_collect_to_vec(view.data()))
    }

    /// The token ids `[B, S]` (stored as i64) as one row per prompt.
    fn token_rows(&self) -> Vec<Vec<u32>> {
        let file = self.tensors();
        let view = file.tensor("text.tokens").expect("reference tensor text.tokens");
        let ids: Vec<i64> = bytemuck::pod_collect_to_vec(view.data());
        ids.chunks(view.shape()[1]).map(|row| row.iter().map(|&id| id as u32).collect()).collect()
    }

    fn upload(&self, gpu: &Gpu, name: &str) -> webdiffusion::Result<Tensor> {
        let (shape, values) = self.f32(name);
        gpu.upload_f32(&shape, &values)
    }

    fn metadata(&self, key: &str) -> Option<String> {
        let (_, metadata) = SafeTensors::read_metadata(&self.bytes).ok()?;
        metadata.metadata().as_ref()?.get(key).cloned()
    }
}

/// One network's outcome.
struct Outcome {
    shapes: String,
    relative_error: f32,
    scale: f32,
    load_s: f64,
    run_s: f64,
}

fn seconds_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

/// Max |got - want| / max |want|, and max |want|.
fn relative_error(got: &[f32], want: &[f32]) -> (f32, f32) {
    assert_eq!(got.len(), want.len(), "output length");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    // A NaN anywhere must fail, so it is carried instead of lost in max().
    let error =
        got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0.0f32, |m, d| if d.is_nan() || m.is_nan() { f32::NAN } else { m.max(d) });
    (error / scale, scale)
}

fn read(t: &Tensor) -> webdiffusion::Result<Vec<f32>> {
    pollster::block_on(t.to_vec())
}

fn check_text(gpu: &Gpu, files: &DirFiles, reference: &Reference) -> webdiffusion::Result<Outcome> {
    let rows = reference.token_rows();
    // The same ids from our tokenizer, so the folder works end to end.
    if let Some(prompts) = reference.metadata("prompts") {
        let prompts: Vec<String> = serde_json::from_str(&prompts).expect("prompts metadata is a JSON list");
        let tokenizer = ClipTokenizer::load(files, "tokenizer")?;
        for (prompt, want) in prompts.iter().zip(&rows) {
            let ids = tokenizer.encode(prompt)?;
            assert_eq!(&ids, want, "our tokenizer's ids for {prompt:?}");
        }
    }
    let start = Instant::now();
    let model = ClipTextModel::load(gpu, files, "text_encoder", WeightPrecision::AsStored)?;
    let load_s = seconds_since(start);
    let start = Instant::now();
    let ids = model.upload_ids(&rows)?;
    let hidden = model.encode(&ids, 0)?;
    let got = read(&hidden)?;
    let run_s = seconds_since(start);
    let (want_shape, want) = reference.f32("text.hidden");
    let (relative_error, scale) = relative_error(&got, &want);
    let shapes = format!("ids {:?} -> {:?} (want {want_shape:?})", ids.shape(), hidden.shape());
    Ok(Outcome { shapes, relative_error, scale, load_s, run_s })
}

fn check_unet(gpu: &Gpu, files: &DirFiles, reference: &Reference) -> webdiffusion::Result<Outcome> {
    let start = Instant::now();
    let model = UNet2DConditionModel::load(gpu, files, "unet", WeightPrecision::AsStored)?;
    let load_s = seconds_since(start);
    let timestep: f32 = reference.metadata("unet.timestep").and_then(|t| t.parse().ok()).expect("unet.timestep metadata");
    let sample = reference.upload(gpu, "unet.sample")?;
    let context = reference.upload(gpu, "unet.encoder_hidden_states")?;
    let start = Instant::now();
    let prediction = model.forward(&sample, timestep, &context, None)?;
    let got = read(&prediction)?;
    let run_s = seconds_since(start);
    let (want_shape, want) = reference.f32("unet.out");
    let (relative_error, scale) = relative_error(&got, &want);
    let shapes = format!(
        "sample {:?}, context {:?}, t {timestep} -> {:?} (want {want_shape:?})",
        sample.shape(),
        context.shape(),
        prediction.shape()
    );
    Ok(Outcome { shapes, relative_error, scale, load_s, run_s })
}

fn check_vae(gpu: &Gpu, files: &DirFiles, reference: &Reference) -> webdiffusion::Result<Outcome> {
    let start = Instant::now();
    let model = AutoencoderKl::load(gpu, files, "vae", WeightPrecision::AsStored)?;
    let load_s = seconds_since(start);
    let latents = reference.upload(gpu, "vae.latents")?;
    let start = Instant::now();
    let image = model.decode(&latents)?;
    let got = read(&image)?;
    let run_s = seconds_since(start);
    let (want_shape, want) = reference.f32("vae.image");
    let (relative_error, scale) = relative_error(&got, &want);
    let shapes = format!("latents {:?} -> {:?} (want {want_shape:?})", latents.shape(), image.shape());
    Ok(Outcome { shapes, relative_error, scale, load_s, run_s })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 || args[2..].iter().any(|n| !NETWORKS.contains(&n.as_str())) {
        eprintln!("usage: fullsize_check <model dir> <reference file> [text] [unet] [vae]   (default: all three)");
        return ExitCode::from(2);
    }
    let files = DirFiles::new(&args[0]).expect("the model folder");
    let reference = Reference { bytes: std::fs::read(&args[1]).expect("the reference file") };
    let networks: Vec<&str> = if args.len() > 2 { args[2..].iter().map(String::as_str).collect() } else { NETWORKS.to_vec() };

    let gpu = pollster::block_on(Gpu::new()).expect("a GPU adapter");
    let info = gpu.info();
    println!("adapter {} ({}), max storage binding {} MiB", info.adapter, info.driver, info.max_storage_binding >> 20);
    println!("model {}, reference {}", args[0], args[1]);

    let mut all_passed = true;
    for network in networks {
        let diffusers_s = reference.metadata(&format!("time.{network}")).unwrap_or_else(|| "?".into());
        let tolerance = TOLERANCE.iter().find(|(name, _)| *name == network).map(|&(_, t)| t).expect("a tolerance per network");
        let outcome = match network {
            "text" => check_text(&gpu, &files, &reference),
            "unet" => check_unet(&gpu, &files, &reference),
            _ => check_vae(&gpu, &files, &reference),
        };
        match outcome {
            Ok(o) => {
                let passed = o.relative_error <= tolerance;
                all_passed &= passed;
                println!(
                    "{network}: {} {}\n  max error {:.2e} of the output scale {:.4} (tolerance {tolerance:.0e}); load {:.1} s, run {:.1} s (diffusers on the CPU: {diffusers_s} s)",
                    if passed { "PASS" } else { "FAIL" },
                    o.shapes,
                    o.relative_error,
                    o.scale,
                    o.load_s,
                    o.run_s,
                );
            }
            Err(e) => {
                all_passed = false;
                println!("{network}: ERROR {e}");
            }
        }
        // Free the network's weights before the next one loads.
        gpu.trim_pool();
    }
    if all_passed { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
