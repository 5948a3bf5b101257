//! The parts of a diffusers folder that a checkpoint has no tensors for: the scheduler
//! config (from the training noise schedule), `model_index.json` and the tokenizer settings.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::file::CheckpointFile;
use super::{CheckpointOptions, Family};
use crate::error::Result;

/// SD 1.x and 2.x train with ldm's "linear" schedule between these (diffusers'
/// `scaled_linear`): betas = linspace(sqrt(start), sqrt(end), 1000)^2.
const BETA_START: f64 = 0.00085;
const BETA_END: f64 = 0.012;
const TRAIN_STEPS: usize = 1000;

/// ldm's `betas` buffer, when a file has it, agrees with the standard schedule to f32
/// rounding; anything further off is a different schedule.
const SCHEDULE_TOLERANCE: f64 = 1e-5;

fn standard_betas() -> Vec<f64> {
    let (from, to) = (BETA_START.sqrt(), BETA_END.sqrt());
    let last = (TRAIN_STEPS - 1) as f64;
    (0..TRAIN_STEPS).map(|i| (from + (to - from) * i as f64 / last).powi(2)).collect()
}

/// The file's own training betas if they differ from the standard schedule (zero
/// terminal SNR fine-tunes, for example), else `None`.
fn trained_betas(file: &CheckpointFile) -> Result<Option<Vec<f64>>> {
    let Some(betas) = file.vector("betas")? else { return Ok(None) };
    let standard = standard_betas();
    let same =
        betas.len() == standard.len() && betas.iter().zip(&standard).all(|(&b, &s)| (f64::from(b) - s).abs() <= SCHEDULE_TOLERANCE * s);
    Ok((!same).then(|| betas.iter().map(|&b| f64::from(b)).collect()))
}

/// diffusers' PNDMScheduler config as it writes it for Stable Diffusion.
pub(super) fn scheduler_config(file: &CheckpointFile, options: &CheckpointOptions) -> Result<Value> {
    let trained = trained_betas(file)?;
    let steps = trained.as_ref().map_or(TRAIN_STEPS, Vec::len);
    Ok(json!({
        "_class_name": "PNDMScheduler",
        "beta_end": BETA_END,
        "beta_schedule": "scaled_linear",
        "beta_start": BETA_START,
        "clip_sample": false,
        "num_train_timesteps": steps,
        "prediction_type": options.prediction_name(),
        "set_alpha_to_one": false,
        "skip_prk_steps": true,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": trained,
    }))
}

/// `model_index.json`: an inpainting pipeline when the UNet also takes the mask and the
/// masked image's latents (`2 * latent + 1` input channels).
pub(super) fn model_index(unet_in_channels: usize, latent_channels: usize) -> Value {
    let pipeline = if unet_in_channels == 2 * latent_channels + 1 { "StableDiffusionInpaintPipeline" } else { "StableDiffusionPipeline" };
    json!({
        "_class_name": pipeline,
        "feature_extractor": [null, null],
        "requires_safety_checker": false,
        "safety_checker": [null, null],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })
}

/// The tokenizer settings that differ between the families: SD 1.x pads with
/// `<|endoftext|>`, SD 2.x with `!`. Both use CLIP's BPE vocabulary, which a checkpoint
/// does not contain: `vocab.json` and `merges.txt` come from a tokenizer folder.
pub(super) fn tokenizer_settings(family: Family, max_length: usize) -> BTreeMap<String, Vec<u8>> {
    let pad = match family {
        Family::Sd1 => "<|endoftext|>",
        Family::Sd2 => "!",
    };
    let special_tokens =
        json!({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad, "unk_token": "<|endoftext|>"});
    let mut config = special_tokens.clone();
    config["model_max_length"] = json!(max_length);
    config["do_lower_case"] = json!(true);
    config["tokenizer_class"] = json!("CLIPTokenizer");
    let bytes = |value: &Value| format!("{value:#}\n").into_bytes();
    BTreeMap::from([("special_tokens_map.json".to_string(), bytes(&special_tokens)), ("tokenizer_config.json".to_string(), bytes(&config))])
}
