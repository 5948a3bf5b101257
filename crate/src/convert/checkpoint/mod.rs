//! Single-file Stable Diffusion checkpoints in the original LDM / AUTOMATIC1111 key
//! layout (`.safetensors`): the UNet under `model.diffusion_model.`, the VAE under
//! `first_stage_model.`, the text encoder under `cond_stage_model.transformer.` (SD 1.x,
//! CLIP) or `cond_stage_model.model.` (SD 2.x, OpenCLIP). The family follows from the
//! text encoder's layout, the configs from the tensors' names and shapes, and what no
//! tensor says (head counts, norm groups, prediction type, ...) from the family's
//! convention or [`CheckpointOptions`]. Every tensor is accounted for: a weight the
//! inferred model lacks is an unknown key, one it needs is a missing tensor.

mod file;
mod options;
mod pipeline;
mod rules;
mod text_encoder;
mod unet;
mod vae;

use std::collections::BTreeMap;

pub use options::CheckpointOptions;

use self::file::CheckpointFile;
use super::SourceModel;
use crate::error::Result;
use crate::loader::SafetensorsFile;

/// The model families a checkpoint can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// SD 1.x: OpenAI CLIP ViT-L/14 text encoder.
    Sd1,
    /// SD 2.x: OpenCLIP ViT-H/14 text encoder, penultimate layer.
    Sd2,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::Sd1 => "sd1",
            Family::Sd2 => "sd2",
        }
    }
}

/// Tensors outside the networks that ldm's checkpoints carry: the DDPM noise-schedule
/// buffers (`register_schedule`) and the learnable log-variance. `betas` is read for the
/// scheduler config; the rest follow from it.
const SCHEDULE_BUFFERS: [&str; 13] = [
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
];

/// ldm's EMA copy of the UNet (names flattened without dots) and its counters: a
/// training artefact; the weights under `model.diffusion_model.` are the ones released.
const EMA_PREFIX: &str = "model_ema.";

/// Reads a single-file checkpoint (its tensors stay in the file until asked for); the
/// file's name becomes the model's.
pub fn read_checkpoint(tensors: &SafetensorsFile, options: &CheckpointOptions) -> Result<SourceModel> {
    let checkpoint = CheckpointFile::new(tensors);
    let file = checkpoint.file();
    let (family, text_root) = detect_family(&checkpoint)?;
    let outside: Vec<&str> = checkpoint
        .names()
        .filter(|name| {
            let known_root = [unet::ROOT, vae::ROOT, text_root].iter().any(|root| name.starts_with(root));
            !known_root && !name.starts_with(EMA_PREFIX) && !SCHEDULE_BUFFERS.contains(name)
        })
        .collect();
    checkpoint.refuse_unknown(&outside, "outside the UNet, VAE and text encoder")?;

    let unet = unet::read(&checkpoint, family, options)?;
    let vae = vae::read(&checkpoint, family, options)?;
    let text_encoder = text_encoder::read(&checkpoint, family, text_root, options.text_encoder_heads)?;
    let dim = |config: &serde_json::Value, key: &str| config[key].as_u64().unwrap_or(0) as usize;
    let (context, width) = (dim(&unet.config, "cross_attention_dim"), dim(&text_encoder.config, "hidden_size"));
    if context != width {
        return Err(checkpoint.format(format!("the UNet attends to {context}-wide text states but the text encoder is {width} wide")));
    }
    let model_index = pipeline::model_index(dim(&unet.config, "in_channels"), dim(&vae.config, "latent_channels"));
    let tokenizer = pipeline::tokenizer_settings(family, dim(&text_encoder.config, "max_position_embeddings"));
    Ok(SourceModel {
        family: family.name().to_string(),
        name: file.rsplit(['/', '\\']).next().unwrap_or(file).to_string(),
        components: BTreeMap::from([("text_encoder".to_string(), text_encoder), ("unet".to_string(), unet), ("vae".to_string(), vae)]),
        scheduler: Some(pipeline::scheduler_config(&checkpoint, options)?),
        model_index: Some(model_index),
        tokenizer,
    })
}

/// The family and the text encoder's root, from which text encoder the file has.
fn detect_family(file: &CheckpointFile) -> Result<(Family, &'static str)> {
    if !file.any_under(unet::ROOT) {
        if file.any_under("conditioner.embedders.") {
            return Err(file.unsupported("an SDXL checkpoint (conditioner.embedders.*)"));
        }
        let example = file.names().next().unwrap_or("nothing");
        return Err(file.format(format!(
            "not a Stable Diffusion checkpoint in the LDM / AUTOMATIC1111 layout: no {}* tensors (it has {example}, ...)",
            unet::ROOT
        )));
    }
    let clip = text_encoder::CLIP_ROOTS.iter().find(|root| file.any_under(root));
    let open_clip = file.any_under(text_encoder::OPEN_CLIP_ROOT);
    match (clip, open_clip) {
        (Some(root), false) => Ok((Family::Sd1, root)),
        (None, true) => Ok((Family::Sd2, text_encoder::OPEN_CLIP_ROOT)),
        (Some(_), true) => {
            Err(file.format("both a CLIP (cond_stage_model.transformer) and an OpenCLIP (cond_stage_model.model) text encoder"))
        }
        (None, false) => {
            Err(file
                .format("no text encoder: neither cond_stage_model.transformer.* (SD 1.x) nor cond_stage_model.model.* (SD 2.x) tensors"))
        }
    }
}
