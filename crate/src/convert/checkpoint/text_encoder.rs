//! The text encoder, as transformers' CLIPTextModel (names `text_model.*`, as hub
//! folders have them), with its config inferred from the tensors.
//!
//! SD 1.x (ldm's FrozenCLIPEmbedder) keeps the transformers model itself under
//! `cond_stage_model.transformer.` (older files without the `text_model.` level).
//! SD 2.x (FrozenOpenCLIPEmbedder) keeps open_clip's text tower under
//! `cond_stage_model.model.`: q, k and v fused in `in_proj`, the MLP as `c_fc`/`c_proj`,
//! and one resblock more than it uses, since SD 2.x conditions on the penultimate
//! layer (with `ln_final` applied): diffusers' model is the first `resblocks - 1` layers.

use serde_json::json;

use super::Family;
use super::file::CheckpointFile;
use super::rules::{Layer, Params, Rules, join};
use crate::convert::SourceComponent;
use crate::error::Result;

/// The SD 1.x text encoder's root in current files, and in older ones.
pub(super) const CLIP_ROOTS: [&str; 2] = ["cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."];
pub(super) const OPEN_CLIP_ROOT: &str = "cond_stage_model.model.";

const CLIP_LAYER: [Layer; 8] = [
    ("layer_norm1", "layer_norm1", Params::WeightBias),
    ("self_attn.q_proj", "self_attn.q_proj", Params::WeightBias),
    ("self_attn.k_proj", "self_attn.k_proj", Params::WeightBias),
    ("self_attn.v_proj", "self_attn.v_proj", Params::WeightBias),
    ("self_attn.out_proj", "self_attn.out_proj", Params::WeightBias),
    ("layer_norm2", "layer_norm2", Params::WeightBias),
    ("mlp.fc1", "mlp.fc1", Params::WeightBias),
    ("mlp.fc2", "mlp.fc2", Params::WeightBias),
];

const CLIP_ENDS: [Layer; 3] = [
    ("embeddings.token_embedding", "embeddings.token_embedding", Params::Weight),
    ("embeddings.position_embedding", "embeddings.position_embedding", Params::Weight),
    ("final_layer_norm", "final_layer_norm", Params::WeightBias),
];

/// An OpenCLIP resblock's layers besides the fused `attn.in_proj_weight` / `_bias`.
const OPEN_CLIP_LAYER: [Layer; 5] = [
    ("ln_1", "layer_norm1", Params::WeightBias),
    ("attn.out_proj", "self_attn.out_proj", Params::WeightBias),
    ("ln_2", "layer_norm2", Params::WeightBias),
    ("mlp.c_fc", "mlp.fc1", Params::WeightBias),
    ("mlp.c_proj", "mlp.fc2", Params::WeightBias),
];

/// The text model's prefix in the diffusers names.
const TEXT_MODEL: &str = "text_model";

/// SD 1.x's CLIP ViT-L/14 and SD 2.x's OpenCLIP ViT-H/14 both use 64-wide heads.
const HEAD_WIDTH: usize = 64;

/// What the config needs beyond the family.
struct Shape {
    width: usize,
    vocab: usize,
    positions: usize,
    intermediate: usize,
    layers: usize,
    projection: usize,
}

/// The text encoder's config and tensors, from under `root` (one of the roots above);
/// `heads` overrides the 64-wide convention.
pub(super) fn read(file: &CheckpointFile, family: Family, root: &str, heads: Option<usize>) -> Result<SourceComponent> {
    let (rules, shape) = match family {
        Family::Sd1 => clip(file, root)?,
        Family::Sd2 => open_clip(file)?,
    };
    let tensors = rules.apply(file)?;
    let heads = match heads {
        Some(heads) => heads,
        None if shape.width.is_multiple_of(HEAD_WIDTH) => shape.width / HEAD_WIDTH,
        None => {
            let detail =
                format!("inferring text encoder heads ({HEAD_WIDTH} wide) for width {}; give the head count explicitly", shape.width);
            return Err(file.unsupported(detail));
        }
    };
    let (activation, pad_token_id) = match family {
        // SD 1.x pads with <|endoftext|>, SD 2.x with "!" (id 0).
        Family::Sd1 => ("quick_gelu", 49407),
        Family::Sd2 => ("gelu", 0),
    };
    let config = json!({
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "hidden_act": activation,
        "hidden_size": shape.width,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": shape.intermediate,
        "layer_norm_eps": 1e-5,
        "max_position_embeddings": shape.positions,
        "model_type": "clip_text_model",
        "num_attention_heads": heads,
        "num_hidden_layers": shape.layers,
        "pad_token_id": pad_token_id,
        "projection_dim": shape.projection,
        "vocab_size": shape.vocab,
    });
    Ok(SourceComponent { config, tensors })
}

fn clip(file: &CheckpointFile, root: &str) -> Result<(Rules, Shape)> {
    let name = |local: &str| format!("{root}{local}");
    let layers = file.indices(&name("encoder.layers.")).len();
    let mut rules = Rules::new(root, "in the text encoder (cond_stage_model.transformer)");
    rules.table("", TEXT_MODEL, &CLIP_ENDS);
    for layer in 0..layers.max(1) {
        rules.table(&format!("encoder.layers.{layer}"), &format!("{TEXT_MODEL}.encoder.layers.{layer}"), &CLIP_LAYER);
    }
    // The `arange` of positions transformers 4 registered as a buffer.
    rules.ignore("embeddings.position_ids");
    let token_embedding = file.shape(&name("embeddings.token_embedding.weight"))?;
    let shape = Shape {
        width: token_embedding[1],
        vocab: token_embedding[0],
        positions: file.shape(&name("embeddings.position_embedding.weight"))?[0],
        intermediate: file.shape(&name("encoder.layers.0.mlp.fc1.weight"))?[0],
        layers,
        projection: token_embedding[1],
    };
    Ok((rules, shape))
}

fn open_clip(file: &CheckpointFile) -> Result<(Rules, Shape)> {
    let name = |local: &str| format!("{OPEN_CLIP_ROOT}{local}");
    let resblocks = file.indices(&name("transformer.resblocks.")).len();
    if resblocks < 2 {
        let detail = format!("an OpenCLIP text encoder with {resblocks} resblocks (SD 2.x uses the penultimate of at least 2)");
        return Err(file.unsupported(detail));
    }
    let layers = resblocks - 1;
    let mut rules = Rules::new(OPEN_CLIP_ROOT, "in the text encoder (cond_stage_model.model)");
    rules.tensor("token_embedding.weight", &format!("{TEXT_MODEL}.embeddings.token_embedding.weight"));
    rules.tensor("positional_embedding", &format!("{TEXT_MODEL}.embeddings.position_embedding.weight"));
    rules.layer("ln_final", &format!("{TEXT_MODEL}.final_layer_norm"), Params::WeightBias);
    for layer in 0..layers {
        let (ldm, diffusers) = (format!("transformer.resblocks.{layer}"), format!("{TEXT_MODEL}.encoder.layers.{layer}"));
        rules.table(&ldm, &diffusers, &OPEN_CLIP_LAYER);
        for param in ["weight", "bias"] {
            let parts = ["q_proj", "k_proj", "v_proj"].iter().map(|p| join(&join(&diffusers, "self_attn"), &join(p, param))).collect();
            rules.split_rows(&join(&ldm, &format!("attn.in_proj_{param}")), parts);
        }
    }
    let unused = format!("transformer.resblocks.{layers}");
    rules.drop_table(&unused, &OPEN_CLIP_LAYER);
    rules.drop(&join(&unused, "attn.in_proj_weight"));
    rules.drop(&join(&unused, "attn.in_proj_bias"));
    // The contrastive head: SD conditions on the token states, not the pooled projection.
    rules.ignore("text_projection");
    rules.ignore("logit_scale");
    let token_embedding = file.shape(&name("token_embedding.weight"))?;
    let projection = match file.contains(&name("text_projection")) {
        true => *file.shape(&name("text_projection"))?.last().unwrap_or(&token_embedding[1]),
        false => token_embedding[1],
    };
    let shape = Shape {
        width: token_embedding[1],
        vocab: token_embedding[0],
        positions: file.shape(&name("positional_embedding"))?[0],
        intermediate: file.shape(&name("transformer.resblocks.0.mlp.c_fc.weight"))?[0],
        layers,
        projection,
    };
    Ok((rules, shape))
}
