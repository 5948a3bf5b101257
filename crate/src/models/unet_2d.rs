//! diffusers' `UNet2DConditionModel` (models/unets/unet_2d_condition.py) as Stable
//! Diffusion 1.x and 2.x, SD-Turbo and LCM checkpoints configure it: the noise (or v)
//! predictor conditioned on a timestep, text embeddings and, for LCM, a guidance embedding.

use serde::Deserialize;

use super::embeddings::{TimestepEmbedding, TimestepEmbeddingConfig, Timesteps};
use super::nn::{Conv2d, GroupNorm};
use super::time_projections::TimeProjections;
use super::transformer_2d::{Text, TextKeysValues, TokenDownsampling};
use super::unet_2d_blocks::{BlockConfig, Conditioning, CrossAttentionConfig, DownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::kernels::elementwise::{self as ew, Unary};
use crate::loader::{ModelFiles, WeightPrecision, read_config};
use crate::lora::LoraTargets;
use crate::models::weights::Weights;

/// A config value given once for every block or as a list with one per block.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    Each(Vec<T>),
    One(T),
}

impl<T: Clone> PerBlock<T> {
    /// One value per block, or an error naming `field` when a list has the wrong length.
    fn per_block(&self, blocks: usize, field: &str, file: &str) -> Result<Vec<T>> {
        match self {
            PerBlock::One(value) => Ok(vec![value.clone(); blocks]),
            PerBlock::Each(values) if values.len() == blocks => Ok(values.clone()),
            PerBlock::Each(values) => {
                Err(Error::Format { file: file.to_string(), detail: format!("{field} has {} entries for {blocks} blocks", values.len()) })
            }
        }
    }
}

/// `unet/config.json`. Missing keys take diffusers' defaults. Keys not listed here do not
/// change the computation for these block types, so they are ignored as diffusers ignores
/// them: `sample_size`, `dropout`, `resnet_skip_time_act`, `resnet_out_scale_factor`,
/// `cross_attention_norm` and `mid_block_only_cross_attention` (only the Simple* and
/// ResnetDownsample* blocks read those), and the `addition_*` / `projection_*` widths that
/// only matter with a class or addition embedding (which is rejected).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct UNet2DConditionConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f32,
    pub down_block_types: Vec<String>,
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub only_cross_attention: PerBlock<bool>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: PerBlock<usize>,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f32,
    pub act_fn: String,
    pub norm_num_groups: Option<usize>,
    pub norm_eps: f32,
    pub cross_attention_dim: PerBlock<usize>,
    /// Per block; a per-layer list inside (SDXL-style asymmetric UNets) is rejected.
    pub transformer_layers_per_block: PerBlock<PerBlock<usize>>,
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    pub encoder_hid_dim: Option<usize>,
    pub encoder_hid_dim_type: Option<String>,
    /// For these models the number of heads (diffusers' legacy naming, see `heads`).
    pub attention_head_dim: PerBlock<usize>,
    pub num_attention_heads: Option<PerBlock<usize>>,
    pub dual_cross_attention: bool,
    pub use_linear_projection: bool,
    pub class_embed_type: Option<String>,
    pub addition_embed_type: Option<String>,
    pub num_class_embeds: Option<usize>,
    /// Accepted: attention scores are always computed in f32 here.
    pub upcast_attention: bool,
    pub resnet_time_scale_shift: String,
    pub time_embedding_type: String,
    pub time_embedding_dim: Option<usize>,
    pub time_embedding_act_fn: Option<String>,
    pub timestep_post_act: Option<String>,
    /// LCM: the width of the guidance embedding passed as `timestep_cond`.
    pub time_cond_proj_dim: Option<usize>,
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
    pub attention_type: String,
    pub class_embeddings_concat: bool,
}

impl Default for UNet2DConditionConfig {
    /// `UNet2DConditionModel.__init__`'s defaults (SD 1.x's layout).
    fn default() -> Self {
        let strings = |names: &[&str]| names.iter().map(|s| s.to_string()).collect();
        Self {
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: strings(&["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".into()),
            up_block_types: strings(&["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]),
            only_cross_attention: PerBlock::One(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            act_fn: "silu".into(),
            norm_num_groups: Some(32),
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::One(1280),
            transformer_layers_per_block: PerBlock::One(PerBlock::One(1)),
            reverse_transformer_layers_per_block: None,
            encoder_hid_dim: None,
            encoder_hid_dim_type: None,
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            dual_cross_attention: false,
            use_linear_projection: false,
            class_embed_type: None,
            addition_embed_type: None,
            num_class_embeds: None,
            upcast_attention: false,
            resnet_time_scale_shift: "default".into(),
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            time_embedding_act_fn: None,
            timestep_post_act: None,
            time_cond_proj_dim: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            attention_type: "default".into(),
            class_embeddings_concat: false,
        }
    }
}

/// diffusers' `get_activation` for the activations the kernels have.
fn activation(name: &str) -> Option<Unary> {
    match name.to_lowercase().as_str() {
        "silu" | "swish" => Some(Unary::Silu),
        "gelu" => Some(Unary::GeluErf),
        "relu" => Some(Unary::Relu),
        _ => None,
    }
}

/// The block kinds this model builds. diffusers strips a `UNetRes` prefix first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Plain,
    CrossAttn,
}

fn block_kind(name: &str, plain: &str, cross_attn: &str) -> Option<BlockKind> {
    let name = name.strip_prefix("UNetRes").unwrap_or(name);
    if name == plain {
        Some(BlockKind::Plain)
    } else if name == cross_attn {
        Some(BlockKind::CrossAttn)
    } else {
        None
    }
}

fn block_kinds(names: &[String], plain: &str, cross_attn: &str, field: &str, file: &str) -> Result<Vec<BlockKind>> {
    names.iter().map(|n| block_kind(n, plain, cross_attn).ok_or_else(|| unsupported(file, format!("{field} entry {n:?}")))).collect()
}

/// Everything the config decides, checked and expanded per block.
struct Plan {
    down: Vec<BlockConfig>,
    mid: BlockConfig,
    /// With each block's `prev_output_channel`.
    up: Vec<(BlockConfig, usize)>,
    time: TimestepEmbeddingConfig,
    time_embed_act: Option<Unary>,
    groups: usize,
}

impl UNet2DConditionConfig {
    /// The number of attention heads per block. diffusers' legacy rule for this model is
    /// `num_attention_heads = num_attention_heads or attention_head_dim`, and it refuses an
    /// explicit `num_attention_heads`, so `attention_head_dim` (8 in SD 1.x) is the head count.
    fn heads(&self, blocks: usize, file: &str) -> Result<Vec<usize>> {
        if let Some(heads) = &self.num_attention_heads {
            return Err(unsupported(
                file,
                format!("num_attention_heads {heads:?} (diffusers refuses it too; the head count is attention_head_dim)"),
            ));
        }
        self.attention_head_dim.per_block(blocks, "attention_head_dim", file)
    }

    /// Checks every field against what is implemented and expands the per-block lists.
    fn plan(&self, file: &str) -> Result<Plan> {
        self.reject_unsupported(file)?;
        let blocks = self.block_out_channels.len();
        if blocks == 0 || self.down_block_types.len() != blocks || self.up_block_types.len() != blocks {
            let detail = format!(
                "{} down blocks, {} up blocks and {blocks} block_out_channels must agree (and be at least one)",
                self.down_block_types.len(),
                self.up_block_types.len()
            );
            return Err(Error::Format { file: file.to_string(), detail });
        }
        let down_kinds = block_kinds(&self.down_block_types, "DownBlock2D", "CrossAttnDownBlock2D", "down_block_types", file)?;
        let up_kinds = block_kinds(&self.up_block_types, "UpBlock2D", "CrossAttnUpBlock2D", "up_block_types", file)?;
        let groups = self.norm_num_groups.ok_or_else(|| unsupported(file, "norm_num_groups null".into()))?;
        let act = activation(&self.act_fn).filter(|&a| a == Unary::Silu);
        let act = act.ok_or_else(|| unsupported(file, format!("act_fn {:?} (the resnets use SiLU)", self.act_fn)))?;
        let optional_act = |field: &str, name: &Option<String>| -> Result<Option<Unary>> {
            name.as_deref().map(|n| activation(n).ok_or_else(|| unsupported(file, format!("{field} {n:?}")))).transpose()
        };

        let heads = self.heads(blocks, file)?;
        let cross_dims = self.cross_attention_dim.per_block(blocks, "cross_attention_dim", file)?;
        // Every block attends to the same encoder_hidden_states, so one width has to serve all.
        let cross_dim = cross_dims[0];
        if cross_dims.iter().any(|&d| d != cross_dim) {
            return Err(unsupported(file, format!("cross_attention_dim {cross_dims:?} differing between blocks")));
        }
        let layers = self.layers_per_block.per_block(blocks, "layers_per_block", file)?;
        let only_cross = self.only_cross_attention.per_block(blocks, "only_cross_attention", file)?;
        let transformer_layers = self
            .transformer_layers_per_block
            .per_block(blocks, "transformer_layers_per_block", file)?
            .into_iter()
            .map(|per_layer| match per_layer {
                PerBlock::One(n) => Ok(n),
                PerBlock::Each(list) => Err(unsupported(file, format!("transformer_layers_per_block with a per-layer list {list:?}"))),
            })
            .collect::<Result<Vec<_>>>()?;

        let channels = &self.block_out_channels;
        let time_embed_dim = self.time_embedding_dim.unwrap_or(4 * channels[0]);
        let block = |i: usize, kind: BlockKind, in_channels, out_channels, layers, scale| BlockConfig {
            in_channels,
            out_channels,
            temb_channels: time_embed_dim,
            layers,
            resnet_eps: self.norm_eps,
            resnet_groups: groups,
            output_scale_factor: scale,
            cross_attention: (kind == BlockKind::CrossAttn).then_some(CrossAttentionConfig {
                heads: heads[i],
                transformer_layers: transformer_layers[i],
                cross_attention_dim: cross_dim,
                use_linear_projection: self.use_linear_projection,
                only_cross_attention: only_cross[i],
            }),
        };
        let down = (0..blocks).map(|i| block(i, down_kinds[i], channels[i.saturating_sub(1)], channels[i], layers[i], 1.0)).collect();
        // The mid block takes the last block's settings but never only_cross_attention.
        let last = blocks - 1;
        let mut mid = block(last, BlockKind::CrossAttn, channels[last], channels[last], 1, self.mid_block_scale_factor);
        if let Some(attention) = mid.cross_attention.as_mut() {
            attention.only_cross_attention = false;
        }
        // Up block i mirrors down block last - i: same heads, layers + 1 resnets.
        let up = (0..blocks)
            .map(|i| {
                let mirror = last - i;
                let prev_output = channels[(mirror + 1).min(last)];
                let in_channels = channels[mirror.saturating_sub(1)];
                (block(mirror, up_kinds[i], in_channels, channels[mirror], layers[mirror] + 1, 1.0), prev_output)
            })
            .collect();
        let time = TimestepEmbeddingConfig {
            in_channels: channels[0],
            time_embed_dim,
            act,
            post_act: optional_act("timestep_post_act", &self.timestep_post_act)?,
            cond_proj_dim: self.time_cond_proj_dim,
        };
        let time_embed_act = optional_act("time_embedding_act_fn", &self.time_embedding_act_fn)?;
        Ok(Plan { down, mid, up, time, time_embed_act, groups })
    }

    /// The options that select another architecture than SD's.
    fn reject_unsupported(&self, file: &str) -> Result<()> {
        let checks: [(bool, String); 14] = [
            (self.mid_block_type.as_deref() != Some("UNetMidBlock2DCrossAttn"), format!("mid_block_type {:?}", self.mid_block_type)),
            (self.class_embed_type.is_some(), format!("class_embed_type {:?}", self.class_embed_type)),
            (self.num_class_embeds.is_some(), format!("num_class_embeds {:?}", self.num_class_embeds)),
            (self.class_embeddings_concat, "class_embeddings_concat true".into()),
            (self.addition_embed_type.is_some(), format!("addition_embed_type {:?}", self.addition_embed_type)),
            (self.encoder_hid_dim.is_some(), format!("encoder_hid_dim {:?}", self.encoder_hid_dim)),
            (self.encoder_hid_dim_type.is_some(), format!("encoder_hid_dim_type {:?}", self.encoder_hid_dim_type)),
            (self.time_embedding_type != "positional", format!("time_embedding_type {:?}", self.time_embedding_type)),
            (self.resnet_time_scale_shift != "default", format!("resnet_time_scale_shift {:?}", self.resnet_time_scale_shift)),
            (self.dual_cross_attention, "dual_cross_attention true".into()),
            (self.attention_type != "default", format!("attention_type {:?}", self.attention_type)),
            (
                self.reverse_transformer_layers_per_block.is_some(),
                format!("reverse_transformer_layers_per_block {:?}", self.reverse_transformer_layers_per_block),
            ),
            // Even kernels would shift the image by half a pixel (diffusers pads (k - 1) / 2).
            (self.conv_in_kernel.is_multiple_of(2), format!("conv_in_kernel {}", self.conv_in_kernel)),
            (self.conv_out_kernel.is_multiple_of(2), format!("conv_out_kernel {}", self.conv_out_kernel)),
        ];
        match checks.into_iter().find(|(rejected, _)| *rejected) {
            Some((_, detail)) => Err(unsupported(file, detail)),
            None => Ok(()),
        }
    }
}

fn unsupported(file: &str, detail: String) -> Error {
    Error::Unsupported { file: file.to_string(), detail }
}

/// DeepCache (Ma, Fang and Wang, 2023): a step either computes all of the UNet or reuses
/// the deep features of the last one that did. A branch `b` splits the UNet at skip
/// connection `b` (`branches`): the down layers that make skips `0..=b` and the up layers
/// that take them are computed every step; the rest only on storing steps.
#[derive(Clone, Copy)]
pub enum FeatureReuse<'a> {
    /// Compute all of it; keep nothing.
    None,
    /// Compute all of it and keep the input of the up layer that takes skip `branch`.
    Store { branch: usize },
    /// Compute the shallow layers only, starting the up path at skip `branch` from `feature`
    /// (what a `Store` of the same branch kept).
    Reuse { branch: usize, feature: &'a Tensor },
}

/// How one UNet pass runs: DeepCache's reuse, ToDo's token downsampling, and the text's
/// keys and values if computed ahead (all off by default).
#[derive(Clone, Copy)]
pub struct PassOptions<'a> {
    pub reuse: FeatureReuse<'a>,
    /// ToDo's factor (`TokenDownsampling`) for the self-attention at the sample's resolution;
    /// `None` or 1 keeps every token.
    pub token_merge: Option<f32>,
    /// `text_keys_values` of the pass's `encoder_hidden_states`.
    pub text_keys_values: Option<&'a TextKeysValues>,
}

impl Default for PassOptions<'_> {
    fn default() -> Self {
        Self { reuse: FeatureReuse::None, token_merge: None, text_keys_values: None }
    }
}

pub struct UNet2DConditionModel {
    config: UNet2DConditionConfig,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    time_embed_act: Option<Unary>,
    /// Every resnet's time projection, computed together once a pass.
    time_projections: TimeProjections,
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock2D>,
    mid_block: UNetMidBlock2DCrossAttn,
    up_blocks: Vec<UpBlock2D>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    lora_targets: LoraTargets,
}

impl UNet2DConditionModel {
    /// Loads `component/config.json` and its weights (e.g. component `unet`).
    pub fn load(gpu: &Gpu, files: &dyn ModelFiles, component: &str, precision: WeightPrecision) -> Result<Self> {
        let config_path = crate::loader::component_file(component, "config.json");
        let config: UNet2DConditionConfig = read_config(files, &config_path)?;
        let plan = config.plan(&files.describe(&config_path))?;
        let weights = Weights::load(gpu, files, component, precision)?;
        let model = Self::from_weights(config, &plan, &weights)?;
        weights.ensure_all_used()?;
        Ok(model)
    }

    fn from_weights(config: UNet2DConditionConfig, plan: &Plan, w: &Weights) -> Result<Self> {
        let c = &config;
        let first = c.block_out_channels[0];
        let conv = |name: &str, in_channels, out_channels, kernel: usize| {
            Conv2d::load(&w.at(name), in_channels, out_channels, kernel, 1, (kernel - 1) / 2)
        };
        let blocks = plan.down.len();
        let mut down_blocks = plan
            .down
            .iter()
            .enumerate()
            .map(|(i, b)| DownBlock2D::load(&w.at(&format!("down_blocks.{i}")), b, (i + 1 < blocks).then_some(c.downsample_padding)))
            .collect::<Result<Vec<_>>>()?;
        let mut mid_block = UNetMidBlock2DCrossAttn::load(&w.at("mid_block"), &plan.mid)?;
        let mut up_blocks = plan
            .up
            .iter()
            .enumerate()
            .map(|(i, (b, prev_output))| UpBlock2D::load(&w.at(&format!("up_blocks.{i}")), b, *prev_output, i + 1 < blocks))
            .collect::<Result<Vec<_>>>()?;
        let resnets = down_blocks
            .iter_mut()
            .flat_map(DownBlock2D::resnets_mut)
            .chain(mid_block.resnets_mut())
            .chain(up_blocks.iter_mut().flat_map(UpBlock2D::resnets_mut));
        let time_projections = TimeProjections::take(resnets)?;
        Ok(Self {
            time_proj: Timesteps { dim: first, flip_sin_to_cos: c.flip_sin_to_cos, downscale_freq_shift: c.freq_shift },
            time_embedding: TimestepEmbedding::load(&w.at("time_embedding"), &plan.time)?,
            time_embed_act: plan.time_embed_act,
            conv_in: conv("conv_in", c.in_channels, first, c.conv_in_kernel)?,
            down_blocks,
            mid_block,
            time_projections,
            up_blocks,
            conv_norm_out: GroupNorm::load(&w.at("conv_norm_out"), plan.groups, first, c.norm_eps)?,
            conv_out: conv("conv_out", first, c.out_channels, c.conv_out_kernel)?,
            lora_targets: w.lora_targets().clone(),
            config,
        })
    }

    pub fn config(&self) -> &UNet2DConditionConfig {
        &self.config
    }

    /// The layers LoRAs can adapt (`lora::attach`).
    pub fn lora_targets(&self) -> &LoraTargets {
        &self.lora_targets
    }

    /// The prediction for `sample [B, in_channels, H, W]` at one `timestep` for the whole
    /// batch, attending to `encoder_hidden_states [B, S, cross_attention_dim]`;
    /// `timestep_cond [B, time_cond_proj_dim]` is LCM's guidance embedding (see
    /// `embeddings::guidance_scale_embedding`). Returns `[B, out_channels, H, W]`.
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f32,
        encoder_hidden_states: &Tensor,
        timestep_cond: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.forward_timesteps(sample, &Self::timesteps(sample, timestep)?, encoder_hidden_states, timestep_cond)
    }

    /// `timestep` for every sample of `sample`'s batch: `forward_timesteps`' `[B]` timesteps.
    pub fn timesteps(sample: &Tensor, timestep: f32) -> Result<Tensor> {
        let batch = sample.shape().first().copied().unwrap_or(0);
        sample.gpu().upload_f32(&[batch], &vec![timestep; batch])
    }

    /// `forward` with one timestep per sample: `timesteps [B]` f32.
    pub fn forward_timesteps(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        encoder_hidden_states: &Tensor,
        timestep_cond: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (prediction, _) = self.forward_with(sample, timesteps, encoder_hidden_states, timestep_cond, PassOptions::default())?;
        Ok(prediction)
    }

    /// Every cross-attention's keys and values for `encoder_hidden_states`, for passes over
    /// the same text (`PassOptions::text_keys_values`): computed once instead of every step.
    pub fn text_keys_values(&self, encoder_hidden_states: &Tensor) -> Result<TextKeysValues> {
        let mut keys_values = TextKeysValues::new(encoder_hidden_states);
        let transformers = self.down_blocks.iter().map(DownBlock2D::transformers);
        let transformers = transformers.chain([self.mid_block.transformers()]).chain(self.up_blocks.iter().map(UpBlock2D::transformers));
        transformers.flatten().try_for_each(|t| t.add_text_keys_values(&mut keys_values))?;
        Ok(keys_values)
    }

    /// The skip connections the down path makes (conv_in's output, then every down layer's):
    /// DeepCache's branches are `0..branches()`, shallowest first.
    pub fn branches(&self) -> usize {
        1 + self.down_blocks.iter().map(DownBlock2D::layer_count).sum::<usize>()
    }

    /// What is wrong with `branch` when it is not one of `branches()`: a pass reports it
    /// as a shape error, a request (`DeepCache::check`) as the user's option.
    pub fn unknown_branch(&self, branch: usize) -> Option<String> {
        let branches = self.branches();
        (branch >= branches).then(|| format!("cache branch {branch} is not below this UNet's {branches} branches"))
    }

    /// `forward_timesteps` computing all of the UNet (`FeatureReuse::None`, `Store`) or only
    /// its shallow part (`Reuse`), with ToDo's downsampled self-attention if asked; with
    /// `Store`, also the feature a later `Reuse` of the same branch starts from.
    pub fn forward_with(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        encoder_hidden_states: &Tensor,
        timestep_cond: Option<&Tensor>,
        options: PassOptions,
    ) -> Result<(Tensor, Option<Tensor>)> {
        self.check_inputs(sample, timesteps, encoder_hidden_states)?;
        let token_downsampling = self.check_pass(sample, encoder_hidden_states, &options)?;
        let reuse = options.reuse;
        let branch = match reuse {
            FeatureReuse::None => None,
            FeatureReuse::Store { branch } | FeatureReuse::Reuse { branch, .. } => Some(branch),
        };
        let gpu = sample.gpu();
        let sample =
            if self.config.center_input_sample { ew::unary(gpu, sample, Unary::Affine { a: 2.0, b: -1.0 })? } else { sample.clone() };
        let mut temb = self.time_embedding.forward(&self.time_proj.forward(timesteps)?, timestep_cond)?;
        if let Some(act) = self.time_embed_act {
            temb = ew::unary(gpu, &temb, act)?;
        }
        // Every resnet block takes the embedding through a SiLU: once here, not per block.
        let temb = ew::unary(gpu, &temb, Unary::Silu)?;
        let text = Text { states: encoder_hidden_states, keys_values: options.text_keys_values };
        let kept_rows = match token_downsampling {
            Some(downsampling) => downsampling.kept_rows(gpu, sample.shape()[0])?,
            None => None,
        };
        let projected = self.time_projections.forward(&temb)?;
        let c = Conditioning { time_projections: &projected, text, kept_rows: kept_rows.as_ref() };
        // Reusing branch b computes skips 0..=b only, and the up layers that take them.
        let fresh_skips = match reuse {
            FeatureReuse::Reuse { branch, .. } => branch + 1,
            _ => self.branches(),
        };

        let mut h = self.conv_in.forward(&sample)?;
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            for i in 0..block.layer_count() {
                if skips.len() == fresh_skips {
                    break;
                }
                h = block.forward_layer(i, &h, &c)?;
                skips.push(h.clone());
            }
        }
        let mut h = match reuse {
            FeatureReuse::Reuse { .. } => None,
            _ => Some(self.mid_block.forward(&h, &c)?),
        };
        let mut stored = None;
        // Up layers take the skips last first: the layer that takes skip b is where a
        // reusing pass starts, from the input a storing pass saw there.
        let mut next_skip = self.branches();
        for block in &self.up_blocks {
            for i in 0..block.layer_count() {
                next_skip -= 1;
                if Some(next_skip) == branch {
                    match reuse {
                        FeatureReuse::Store { .. } => stored = h.clone(),
                        FeatureReuse::Reuse { feature, .. } => h = Some(feature.clone()),
                        FeatureReuse::None => {}
                    }
                }
                if let Some(x) = &h {
                    h = Some(block.forward_layer(i, x, &skips[next_skip], &c)?);
                }
            }
            if let Some(x) = &h {
                h = Some(block.upsample(x)?);
            }
        }
        let h = h.ok_or_else(|| Error::shape("UNet2DConditionModel", "the up path never reached the cached feature"))?;
        let prediction = self.conv_out.forward(&self.conv_norm_out.forward(&h, true)?)?;
        Ok((prediction, stored))
    }

    /// Clear errors for pass options that do not fit this UNet or these inputs; the token
    /// downsampling the pass runs with.
    fn check_pass(&self, sample: &Tensor, encoder_hidden_states: &Tensor, options: &PassOptions) -> Result<Option<TokenDownsampling>> {
        const OP: &str = "UNet2DConditionModel";
        if options.text_keys_values.is_some_and(|kv| !kv.is_for(encoder_hidden_states)) {
            return Err(Error::shape(OP, "the text's keys and values were computed for other encoder_hidden_states"));
        }
        let (FeatureReuse::Store { branch } | FeatureReuse::Reuse { branch, .. }) = options.reuse else {
            return self.token_downsampling(sample, options.token_merge);
        };
        if let Some(detail) = self.unknown_branch(branch) {
            return Err(Error::shape(OP, detail));
        }
        if let FeatureReuse::Reuse { feature, .. } = options.reuse
            && feature.shape().first() != sample.shape().first()
        {
            return Err(Error::shape(OP, format!("cached feature {:?} is not of this batch", feature.shape())));
        }
        self.token_downsampling(sample, options.token_merge)
    }

    /// ToDo at `factor` for this sample's resolution, checked.
    fn token_downsampling(&self, sample: &Tensor, factor: Option<f32>) -> Result<Option<TokenDownsampling>> {
        let (Some(factor), &[_, _, height, width]) = (factor, sample.shape()) else { return Ok(None) };
        let downsampling = TokenDownsampling { factor, height, width };
        downsampling.check()?;
        Ok(Some(downsampling))
    }

    /// Clear errors for inputs the kernels would reject less legibly, or that diffusers
    /// handles with its `upsample_size` path (which this model does not implement).
    fn check_inputs(&self, sample: &Tensor, timesteps: &Tensor, encoder_hidden_states: &Tensor) -> Result<()> {
        const OP: &str = "UNet2DConditionModel";
        let c = &self.config;
        let &[batch, channels, height, width] = sample.shape() else {
            return Err(Error::shape(OP, format!("sample must be [B, C, H, W], got {:?}", sample.shape())));
        };
        if channels != c.in_channels {
            return Err(Error::shape(OP, format!("sample has {channels} channels, the config says {}", c.in_channels)));
        }
        let factor = 1usize << (c.block_out_channels.len() - 1);
        if height == 0 || width == 0 || height % factor != 0 || width % factor != 0 {
            return Err(Error::shape(OP, format!("sample height and width ({height}x{width}) must be positive multiples of {factor}")));
        }
        if timesteps.shape() != [batch] {
            return Err(Error::shape(OP, format!("timesteps must be [{batch}], got {:?}", timesteps.shape())));
        }
        match encoder_hidden_states.shape() {
            &[b, _, _] if b == batch => Ok(()),
            shape => Err(Error::shape(OP, format!("encoder_hidden_states must be [{batch}, tokens, width], got {shape:?}"))),
        }
    }
}
