//! The UNet: `model.diffusion_model.*` (ldm's openaimodel.UNetModel) to diffusers'
//! UNet2DConditionModel, with its config inferred from the tensors.
//!
//! UNetModel numbers its input blocks 0 (conv_in), then per level `layers` blocks of a
//! ResBlock (`.0`) and, at attention levels, a SpatialTransformer (`.1`), and below the
//! last level one Downsample block (`.0.op`). Output blocks are per level `layers + 1`
//! such blocks, the last of each level but the final one also holding the Upsample after
//! them (`.1.conv`, or `.2.conv` after a transformer). SpatialTransformer names its
//! insides as diffusers' Transformer2DModel does.

use serde_json::{Value, json};

use super::file::CheckpointFile;
use super::rules::{Layer, Params, Rules, join};
use super::{CheckpointOptions, Family};
use crate::convert::SourceComponent;
use crate::error::Result;

pub(super) const ROOT: &str = "model.diffusion_model.";

const RESNET: [Layer; 5] = [
    ("in_layers.0", "norm1", Params::WeightBias),
    ("in_layers.2", "conv1", Params::WeightBias),
    ("emb_layers.1", "time_emb_proj", Params::WeightBias),
    ("out_layers.0", "norm2", Params::WeightBias),
    ("out_layers.3", "conv2", Params::WeightBias),
];
/// Present where a ResBlock changes the channel count.
const RESNET_SHORTCUT: [Layer; 1] = [("skip_connection", "conv_shortcut", Params::WeightBias)];

const TRANSFORMER: [Layer; 3] =
    [("norm", "norm", Params::WeightBias), ("proj_in", "proj_in", Params::WeightBias), ("proj_out", "proj_out", Params::WeightBias)];

const TRANSFORMER_BLOCK: [Layer; 13] = [
    ("norm1", "norm1", Params::WeightBias),
    ("attn1.to_q", "attn1.to_q", Params::Weight),
    ("attn1.to_k", "attn1.to_k", Params::Weight),
    ("attn1.to_v", "attn1.to_v", Params::Weight),
    ("attn1.to_out.0", "attn1.to_out.0", Params::WeightBias),
    ("norm2", "norm2", Params::WeightBias),
    ("attn2.to_q", "attn2.to_q", Params::Weight),
    ("attn2.to_k", "attn2.to_k", Params::Weight),
    ("attn2.to_v", "attn2.to_v", Params::Weight),
    ("attn2.to_out.0", "attn2.to_out.0", Params::WeightBias),
    ("norm3", "norm3", Params::WeightBias),
    ("ff.net.0.proj", "ff.net.0.proj", Params::WeightBias),
    ("ff.net.2", "ff.net.2", Params::WeightBias),
];

const TOP: [Layer; 5] = [
    ("time_embed.0", "time_embedding.linear_1", Params::WeightBias),
    ("time_embed.2", "time_embedding.linear_2", Params::WeightBias),
    ("input_blocks.0.0", "conv_in", Params::WeightBias),
    ("out.0", "conv_norm_out", Params::WeightBias),
    ("out.2", "conv_out", Params::WeightBias),
];

/// What the tensors say about the network.
struct Layout {
    layers: usize,
    /// Per level, top to bottom.
    channels: Vec<usize>,
    down_attention: Vec<bool>,
    /// Per up level, in diffusers' order (bottom to top).
    up_attention: Vec<bool>,
    /// Transformer layers per level, top to bottom (diffusers' `transformer_layers_per_block`).
    depth: Vec<usize>,
}

impl Layout {
    fn levels(&self) -> usize {
        self.channels.len()
    }

    fn input_block(&self, level: usize, layer: usize) -> usize {
        1 + level * (self.layers + 1) + layer
    }

    fn output_block(&self, level: usize, layer: usize) -> usize {
        level * (self.layers + 1) + layer
    }
}

fn name(local: &str) -> String {
    format!("{ROOT}{local}")
}

/// The number of `transformer_blocks.N` in the SpatialTransformer at `module` (at least 1,
/// so that a transformer without blocks is reported as missing them).
fn transformer_depth(file: &CheckpointFile, module: &str) -> usize {
    file.indices(&name(&format!("{module}.transformer_blocks."))).len().max(1)
}

fn layout(file: &CheckpointFile) -> Result<Layout> {
    // Split the input blocks after conv_in into levels at the Downsample blocks.
    let blocks: Vec<usize> = file.indices(&name("input_blocks.")).into_iter().filter(|&b| b > 0).collect();
    let levels: Vec<&[usize]> = blocks.split(|block| file.contains(&name(&format!("input_blocks.{block}.0.op.weight")))).collect();
    let layers = levels[0].len();
    if layers == 0 {
        return Err(file.missing(&name("input_blocks.1.0.in_layers.0.weight")));
    }
    if levels.iter().any(|level| level.len() != layers) {
        let counts: Vec<usize> = levels.iter().map(|level| level.len()).collect();
        return Err(
            file.unsupported(format!("a UNet with {counts:?} input blocks per level (diffusers needs the same number in every level)"))
        );
    }
    let mut channels = Vec::new();
    let mut down_attention = Vec::new();
    let mut depth = Vec::new();
    for level in &levels {
        let first = level[0];
        channels.push(file.shape(&name(&format!("input_blocks.{first}.0.out_layers.3.weight")))?[0]);
        let attention = file.any_under(&name(&format!("input_blocks.{first}.1.")));
        down_attention.push(attention);
        depth.push(if attention { transformer_depth(file, &format!("input_blocks.{first}.1")) } else { 1 });
    }
    // diffusers' mid block takes the last level's transformer depth; where that level has
    // no transformer, the mid block's own depth is the only one there is.
    let last = levels.len() - 1;
    if !down_attention[last] {
        depth[last] = transformer_depth(file, "middle_block.1");
    }
    let up_attention =
        (0..levels.len()).map(|level| file.any_under(&name(&format!("output_blocks.{}.1.", level * (layers + 1))))).collect();
    Ok(Layout { layers, channels, down_attention, up_attention, depth })
}

/// Every tensor the layout implies. Whether a ResBlock has a shortcut follows from its
/// own norm and conv widths.
fn rules(file: &CheckpointFile, layout: &Layout) -> Result<Rules> {
    let mut rules = Rules::new(ROOT, "in the UNet (model.diffusion_model)");
    rules.table("", "", &TOP);
    let resnet = |rules: &mut Rules, ldm: &str, diffusers: &str| -> Result<()> {
        rules.table(ldm, diffusers, &RESNET);
        let width_in = file.shape(&name(&format!("{ldm}.in_layers.0.weight")))?[0];
        let width_out = file.shape(&name(&format!("{ldm}.out_layers.3.weight")))?[0];
        if width_in != width_out {
            rules.table(ldm, diffusers, &RESNET_SHORTCUT);
        }
        Ok(())
    };
    let transformer = |rules: &mut Rules, ldm: &str, diffusers: &str, depth: usize| {
        rules.table(ldm, diffusers, &TRANSFORMER);
        for block in 0..depth {
            let inner = format!("transformer_blocks.{block}");
            rules.table(&join(ldm, &inner), &join(diffusers, &inner), &TRANSFORMER_BLOCK);
        }
    };
    let levels = layout.levels();
    for level in 0..levels {
        for layer in 0..layout.layers {
            let block = layout.input_block(level, layer);
            resnet(&mut rules, &format!("input_blocks.{block}.0"), &format!("down_blocks.{level}.resnets.{layer}"))?;
            if layout.down_attention[level] {
                let (ldm, diffusers) = (format!("input_blocks.{block}.1"), format!("down_blocks.{level}.attentions.{layer}"));
                transformer(&mut rules, &ldm, &diffusers, layout.depth[level]);
            }
        }
        if level + 1 < levels {
            let block = layout.input_block(level, layout.layers);
            rules.layer(&format!("input_blocks.{block}.0.op"), &format!("down_blocks.{level}.downsamplers.0.conv"), Params::WeightBias);
        }
    }
    resnet(&mut rules, "middle_block.0", "mid_block.resnets.0")?;
    transformer(&mut rules, "middle_block.1", "mid_block.attentions.0", layout.depth[levels - 1]);
    resnet(&mut rules, "middle_block.2", "mid_block.resnets.1")?;
    for level in 0..levels {
        let attention = layout.up_attention[level];
        for layer in 0..=layout.layers {
            let block = layout.output_block(level, layer);
            resnet(&mut rules, &format!("output_blocks.{block}.0"), &format!("up_blocks.{level}.resnets.{layer}"))?;
            if attention {
                let (ldm, diffusers) = (format!("output_blocks.{block}.1"), format!("up_blocks.{level}.attentions.{layer}"));
                transformer(&mut rules, &ldm, &diffusers, layout.depth[levels - 1 - level]);
            }
        }
        if level + 1 < levels {
            let block = layout.output_block(level, layout.layers);
            let slot = if attention { 2 } else { 1 };
            rules.layer(&format!("output_blocks.{block}.{slot}.conv"), &format!("up_blocks.{level}.upsamplers.0.conv"), Params::WeightBias);
        }
    }
    Ok(rules)
}

/// diffusers' `attention_head_dim` (the head count, in its legacy naming): the option,
/// else SD 1.x's 8 heads everywhere or SD 2.x's 64-wide heads.
fn heads(file: &CheckpointFile, family: Family, channels: &[usize], options: &CheckpointOptions) -> Result<Value> {
    match (&options.unet_heads, family) {
        (Some(heads), _) if heads.len() == 1 => Ok(json!(heads[0])),
        (Some(heads), _) if heads.len() == channels.len() => Ok(json!(heads)),
        (Some(heads), _) => Err(file.format(format!("{} UNet head counts given for {} levels", heads.len(), channels.len()))),
        (None, Family::Sd1) => Ok(json!(8)),
        (None, Family::Sd2) => {
            if let Some(&odd) = channels.iter().find(|&&c| !c.is_multiple_of(64)) {
                return Err(
                    file.unsupported(format!("inferring SD 2.x UNet heads (64 wide) for {odd} channels; give the head counts explicitly"))
                );
            }
            Ok(json!(channels.iter().map(|c| c / 64).collect::<Vec<_>>()))
        }
    }
}

/// The UNet's config and tensors.
pub(super) fn read(file: &CheckpointFile, family: Family, options: &CheckpointOptions) -> Result<SourceComponent> {
    let layout = layout(file)?;
    let tensors = rules(file, &layout)?.apply(file)?;
    let proj_in = file.shape(&name("middle_block.1.proj_in.weight"))?;
    let cross_attention_dim = file.shape(&name("middle_block.1.transformer_blocks.0.attn2.to_k.weight"))?[1];
    let in_channels = file.shape(&name("input_blocks.0.0.weight"))?[1];
    let out_channels = file.shape(&name("out.2.weight"))?[0];
    let down_types: Vec<&str> = layout.down_attention.iter().map(|&a| if a { "CrossAttnDownBlock2D" } else { "DownBlock2D" }).collect();
    let up_types: Vec<&str> = layout.up_attention.iter().map(|&a| if a { "CrossAttnUpBlock2D" } else { "UpBlock2D" }).collect();
    let depth = match layout.depth.iter().all(|&d| d == layout.depth[0]) {
        true => json!(layout.depth[0]),
        false => json!(layout.depth),
    };
    let config = json!({
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "attention_head_dim": heads(file, family, &layout.channels, options)?,
        "block_out_channels": layout.channels,
        "center_input_sample": false,
        "cross_attention_dim": cross_attention_dim,
        "down_block_types": down_types,
        "downsample_padding": 1,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "in_channels": in_channels,
        "layers_per_block": layout.layers,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-5,
        "norm_num_groups": options.norm_num_groups(),
        "out_channels": out_channels,
        "sample_size": options.sample_size(family),
        "transformer_layers_per_block": depth,
        "up_block_types": up_types,
        "upcast_attention": options.upcast_attention(family),
        "use_linear_projection": proj_in.len() == 2,
    });
    Ok(SourceComponent { config, tensors })
}
