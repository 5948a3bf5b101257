//! The VAE: `first_stage_model.*` (ldm's AutoencoderKL: model.py's Encoder and Decoder)
//! to diffusers' AutoencoderKL, with its config inferred from the tensors.
//!
//! The encoder's levels are `down.{i}.block.{j}` plus `down.{i}.downsample` below all but
//! the last; the decoder numbers its levels from the bottom (`up.0` runs last), diffusers
//! from the top. The mid block's attention computes q, k, v and its output with 1x1
//! convolutions where diffusers has linear layers.

use serde_json::json;

use super::file::CheckpointFile;
use super::rules::{Layer, Params, Rules, join};
use super::{CheckpointOptions, Family};
use crate::convert::SourceComponent;
use crate::error::Result;

pub(super) const ROOT: &str = "first_stage_model.";

const RESNET: [Layer; 4] = [
    ("norm1", "norm1", Params::WeightBias),
    ("conv1", "conv1", Params::WeightBias),
    ("norm2", "norm2", Params::WeightBias),
    ("conv2", "conv2", Params::WeightBias),
];
/// Present where a block changes the channel count.
const RESNET_SHORTCUT: [Layer; 1] = [("nin_shortcut", "conv_shortcut", Params::WeightBias)];

/// The attention's 1x1 convolutions and the diffusers linear layers they become.
const ATTENTION_PROJECTIONS: [(&str, &str); 4] = [("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")];

/// Encoder and decoder layers outside the levels.
const ENDS: [Layer; 3] = [
    ("conv_in", "conv_in", Params::WeightBias),
    ("norm_out", "conv_norm_out", Params::WeightBias),
    ("conv_out", "conv_out", Params::WeightBias),
];

fn name(local: &str) -> String {
    format!("{ROOT}{local}")
}

struct Layout {
    layers: usize,
    channels: Vec<usize>,
    attention: bool,
    quant_conv: bool,
    post_quant_conv: bool,
}

fn layout(file: &CheckpointFile) -> Result<Layout> {
    let levels = file.indices(&name("encoder.down.")).len();
    let layers = file.indices(&name("encoder.down.0.block.")).len();
    if levels == 0 || layers == 0 {
        return Err(file.missing(&name("encoder.down.0.block.0.conv1.weight")));
    }
    let channels =
        (0..levels).map(|i| Ok(file.shape(&name(&format!("encoder.down.{i}.block.0.conv1.weight")))?[0])).collect::<Result<_>>()?;
    Ok(Layout {
        layers,
        channels,
        attention: file.any_under(&name("encoder.mid.attn_1.")),
        quant_conv: file.any_under(&name("quant_conv.")),
        post_quant_conv: file.any_under(&name("post_quant_conv.")),
    })
}

fn rules(file: &CheckpointFile, layout: &Layout) -> Result<Rules> {
    let mut rules = Rules::new(ROOT, "in the VAE (first_stage_model)");
    let resnet = |rules: &mut Rules, ldm: &str, diffusers: &str| -> Result<()> {
        rules.table(ldm, diffusers, &RESNET);
        let width_in = file.shape(&name(&format!("{ldm}.norm1.weight")))?[0];
        let width_out = file.shape(&name(&format!("{ldm}.conv2.weight")))?[0];
        if width_in != width_out {
            rules.table(ldm, diffusers, &RESNET_SHORTCUT);
        }
        Ok(())
    };
    if layout.quant_conv {
        rules.layer("quant_conv", "quant_conv", Params::WeightBias);
    }
    if layout.post_quant_conv {
        rules.layer("post_quant_conv", "post_quant_conv", Params::WeightBias);
    }
    for part in ["encoder", "decoder"] {
        rules.table(part, part, &ENDS);
        resnet(&mut rules, &format!("{part}.mid.block_1"), &format!("{part}.mid_block.resnets.0"))?;
        resnet(&mut rules, &format!("{part}.mid.block_2"), &format!("{part}.mid_block.resnets.1"))?;
        if layout.attention {
            let (ldm, diffusers) = (format!("{part}.mid.attn_1"), format!("{part}.mid_block.attentions.0"));
            rules.layer(&join(&ldm, "norm"), &join(&diffusers, "group_norm"), Params::WeightBias);
            for (conv, linear) in ATTENTION_PROJECTIONS {
                rules.conv_to_linear(&join(&ldm, conv), &join(&diffusers, linear));
            }
        }
    }
    let levels = layout.channels.len();
    for level in 0..levels {
        for layer in 0..layout.layers {
            resnet(&mut rules, &format!("encoder.down.{level}.block.{layer}"), &format!("encoder.down_blocks.{level}.resnets.{layer}"))?;
        }
        let from_bottom = levels - 1 - level;
        for layer in 0..=layout.layers {
            resnet(&mut rules, &format!("decoder.up.{from_bottom}.block.{layer}"), &format!("decoder.up_blocks.{level}.resnets.{layer}"))?;
        }
        if level + 1 < levels {
            rules.layer(
                &format!("encoder.down.{level}.downsample.conv"),
                &format!("encoder.down_blocks.{level}.downsamplers.0.conv"),
                Params::WeightBias,
            );
            rules.layer(
                &format!("decoder.up.{from_bottom}.upsample.conv"),
                &format!("decoder.up_blocks.{level}.upsamplers.0.conv"),
                Params::WeightBias,
            );
        }
    }
    Ok(rules)
}

/// The VAE's config and tensors.
pub(super) fn read(file: &CheckpointFile, family: Family, options: &CheckpointOptions) -> Result<SourceComponent> {
    let layout = layout(file)?;
    let tensors = rules(file, &layout)?.apply(file)?;
    let levels = layout.channels.len();
    let config = json!({
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": layout.channels,
        "down_block_types": vec!["DownEncoderBlock2D"; levels],
        "force_upcast": true,
        "in_channels": file.shape(&name("encoder.conv_in.weight"))?[1],
        "latent_channels": file.shape(&name("decoder.conv_in.weight"))?[1],
        "layers_per_block": layout.layers,
        "mid_block_add_attention": layout.attention,
        "norm_num_groups": options.norm_num_groups(),
        "out_channels": file.shape(&name("decoder.conv_out.weight"))?[0],
        "sample_size": options.sample_size(family) << (levels - 1),
        "scaling_factor": options.vae_scaling_factor(),
        "up_block_types": vec!["UpDecoderBlock2D"; levels],
        "use_post_quant_conv": layout.post_quant_conv,
        "use_quant_conv": layout.quant_conv,
    });
    Ok(SourceComponent { config, tensors })
}
