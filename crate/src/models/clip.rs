//! transformers' `CLIPTextModel` (models/clip/modeling_clip.py), the text encoder of
//! Stable Diffusion 1.x and 2.x: token and position embeddings, pre-LN transformer
//! layers with causal self-attention, and a final layer norm.

use serde::Deserialize;

use super::nn::{LayerNorm, Linear};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::kernels::attention::{AttentionOptions, MAX_HEAD_DIM, attention};
use crate::kernels::elementwise::{self as ew, Unary};
use crate::kernels::gather::gather_rows_chunked;
use crate::kernels::layout;
use crate::loader::{ModelFiles, WeightPrecision, read_config};
use crate::lora::LoraTargets;
use crate::models::weights::Weights;

const OP: &str = "ClipTextModel";
/// The weight names' prefix in hub checkpoints (transformers 4 saves it).
const PREFIX: &str = "text_model";
const TOKEN_EMBEDDING: &str = "embeddings.token_embedding.weight";

/// Tensors a text encoder file may hold that this model does not use (with or without
/// the `text_model.` prefix): `position_ids` is the `arange` buffer older transformers
/// saved (SD 1.5's file has it; transformers ignores it now), `text_projection` belongs
/// to `CLIPTextModelWithProjection` and only feeds the pooled output.
const IGNORED_TENSORS: [&str; 3] = ["text_model.embeddings.position_ids", "embeddings.position_ids", "text_projection.weight"];

/// `text_encoder/config.json`: the fields that shape the computation.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f32,
    pub vocab_size: usize,
    #[serde(default)]
    pub model_type: Option<String>,
}

impl ClipTextConfig {
    /// The MLP activation, by transformers' `ACT2FN` name.
    fn activation(&self) -> Option<Unary> {
        Some(match self.hidden_act.as_str() {
            "quick_gelu" => Unary::QuickGelu,
            "gelu" => Unary::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" => Unary::GeluTanh,
            "relu" => Unary::Relu,
            "silu" | "swish" => Unary::Silu,
            _ => return None,
        })
    }

    /// Rejects what this implementation does not compute; returns the MLP activation.
    fn check(&self, file: &str) -> Result<Unary> {
        let unsupported = |detail: String| Err(Error::Unsupported { file: file.to_string(), detail });
        if let Some(model_type) = self.model_type.as_deref().filter(|t| *t != "clip_text_model") {
            return unsupported(format!("model_type {model_type:?}"));
        }
        let Some(activation) = self.activation() else {
            return unsupported(format!("hidden_act {:?}", self.hidden_act));
        };
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return unsupported(format!("hidden_size {} with num_attention_heads {}", self.hidden_size, self.num_attention_heads));
        }
        if self.hidden_size / self.num_attention_heads > MAX_HEAD_DIM {
            return unsupported(format!(
                "a head dim over {MAX_HEAD_DIM} (hidden_size {}, num_attention_heads {})",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.max_position_embeddings == 0 || self.vocab_size == 0 {
            return unsupported(format!("max_position_embeddings {} with vocab_size {}", self.max_position_embeddings, self.vocab_size));
        }
        Ok(activation)
    }
}

/// `CLIPEncoderLayer`: `h + attn(ln1(h))`, then `h + fc2(act(fc1(ln2(h))))`.
struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl EncoderLayer {
    fn load(w: &Weights, c: &ClipTextConfig) -> Result<Self> {
        let (hidden, eps) = (c.hidden_size, c.layer_norm_eps);
        let projection = |name: &str| Linear::load(&w.at(&format!("self_attn.{name}")), hidden, hidden, true);
        Ok(Self {
            layer_norm1: LayerNorm::load(&w.at("layer_norm1"), hidden, eps)?,
            q_proj: projection("q_proj")?,
            k_proj: projection("k_proj")?,
            v_proj: projection("v_proj")?,
            out_proj: projection("out_proj")?,
            layer_norm2: LayerNorm::load(&w.at("layer_norm2"), hidden, eps)?,
            fc1: Linear::load(&w.at("mlp.fc1"), hidden, c.intermediate_size, true)?,
            fc2: Linear::load(&w.at("mlp.fc2"), c.intermediate_size, hidden, true)?,
        })
    }

    /// `h [B, S, hidden]`; every token sees itself and the tokens before it.
    fn forward(&self, h: &Tensor, heads: usize, activation: Unary) -> Result<Tensor> {
        let gpu = h.gpu();
        let normed = self.layer_norm1.forward(h)?;
        let (q, k, v) = (self.q_proj.forward(&normed)?, self.k_proj.forward(&normed)?, self.v_proj.forward(&normed)?);
        // scale None is 1/sqrt(head_dim), CLIPAttention's scale.
        let attended = attention(gpu, &q, &k, &v, &AttentionOptions { heads, scale: None, causal: true })?;
        let h = ew::add(gpu, h, &self.out_proj.forward(&attended)?)?;
        let mlp = self.fc2.forward(&self.fc1.forward_with(&self.layer_norm2.forward(&h)?, Some(activation))?)?;
        ew::add(gpu, &h, &mlp)
    }
}

pub struct ClipTextModel {
    config: ClipTextConfig,
    activation: Unary,
    /// `[vocab, hidden]` in the storage precision: it is only gathered from, in row
    /// chunks where it is larger than a storage binding (CLIP-L/H in f32).
    token_embedding: Tensor,
    /// The most bytes of the table one gather binds; `None` is the device's limit.
    embedding_chunk_bytes: Option<u64>,
    /// `[max_positions, hidden]` f32, added to the gathered rows.
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    lora_targets: LoraTargets,
}

impl ClipTextModel {
    /// Loads `<component>/config.json` and the weights (`model.safetensors` or its fp16 variant).
    pub fn load(gpu: &Gpu, files: &dyn ModelFiles, component: &str, precision: WeightPrecision) -> Result<Self> {
        let config_path = crate::loader::component_file(component, "config.json");
        let config: ClipTextConfig = read_config(files, &config_path)?;
        let activation = config.check(&files.describe(&config_path))?;
        let w = Weights::load(gpu, files, component, precision)?;
        // Hub checkpoints name everything `text_model.*`; transformers 5 saves
        // `CLIPTextModel` without that prefix. Both load the same model.
        let root = if w.at(PREFIX).contains(TOKEN_EMBEDDING) { w.at(PREFIX) } else { w.clone() };
        let hidden = config.hidden_size;
        let model = Self {
            activation,
            token_embedding: root.get(TOKEN_EMBEDDING, &[config.vocab_size, hidden])?,
            embedding_chunk_bytes: None,
            position_embedding: root.get_f32("embeddings.position_embedding.weight", &[config.max_position_embeddings, hidden])?,
            layers: (0..config.num_hidden_layers)
                .map(|i| EncoderLayer::load(&root.at(&format!("encoder.layers.{i}")), &config))
                .collect::<Result<_>>()?,
            final_layer_norm: LayerNorm::load(&root.at("final_layer_norm"), hidden, config.layer_norm_eps)?,
            lora_targets: w.lora_targets().clone(),
            config,
        };
        ensure_all_used_but_ignored(&w)?;
        Ok(model)
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// The layers LoRAs can adapt (`lora::attach`).
    pub fn lora_targets(&self) -> &LoraTargets {
        &self.lora_targets
    }

    /// Reads the token embedding table in row chunks of at most `bytes` (normally the
    /// device's storage binding limit, and never more). The result is the same; tests
    /// use a small value to run the chunked gather on small models.
    pub fn with_embedding_chunk_bytes(mut self, bytes: u64) -> Self {
        self.embedding_chunk_bytes = Some(bytes);
        self
    }

    /// Token ids as a `[B, S]` u32 tensor, after checking on the CPU that the rows have
    /// one length `S` of at most `max_position_embeddings` and every id is in the
    /// vocabulary (the GPU gather cannot report a bad id).
    pub fn upload_ids(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        let len = ids.first().map_or(0, Vec::len);
        if ids.is_empty() || len == 0 || ids.iter().any(|row| row.len() != len) {
            let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
            return Err(Error::shape(OP, format!("needs one or more rows of equal, non-zero length, got lengths {lengths:?}")));
        }
        self.check_length(len)?;
        for (b, row) in ids.iter().enumerate() {
            if let Some((s, id)) = row.iter().enumerate().find(|&(_, &id)| id as usize >= self.config.vocab_size) {
                return Err(Error::shape(
                    OP,
                    format!("token id {id} at [{b}][{s}] is outside the vocabulary of {}", self.config.vocab_size),
                ));
            }
        }
        self.token_embedding.gpu().upload_u32(&[ids.len(), len], &ids.concat())
    }

    /// The text embeddings `[B, S, hidden]` for ids `[B, S]` (from `upload_ids`): with
    /// `clip_skip` 0 the `last_hidden_state`, else the hidden state `clip_skip` layers
    /// before the end, both after the final layer norm (diffusers' `clip_skip`).
    pub fn encode(&self, ids: &Tensor, clip_skip: usize) -> Result<Tensor> {
        self.final_layer_norm.forward(&self.hidden_state(ids, clip_skip)?)
    }

    /// transformers' `hidden_states[-(clip_skip + 1)]`, without the final layer norm:
    /// the embeddings followed by all but the last `clip_skip` layers.
    pub fn hidden_state(&self, ids: &Tensor, clip_skip: usize) -> Result<Tensor> {
        let layers = self.config.num_hidden_layers;
        if clip_skip > layers {
            return Err(Error::shape(OP, format!("clip_skip {clip_skip} is more than the {layers} layers")));
        }
        let mut h = self.embed(ids)?;
        for layer in &self.layers[..layers - clip_skip] {
            h = layer.forward(&h, self.config.num_attention_heads, self.activation)?;
        }
        Ok(h)
    }

    /// Token plus position embeddings, `[B, S, hidden]`.
    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let &[_, len] = ids.shape() else {
            return Err(Error::shape(OP, format!("ids must be [batch, tokens], got {:?}", ids.shape())));
        };
        if ids.dtype() != DType::U32 {
            return Err(Error::shape(OP, format!("ids must be u32, got {:?}", ids.dtype())));
        }
        self.check_length(len)?;
        let gpu = ids.gpu();
        let chunk_bytes = self.embedding_chunk_bytes.unwrap_or(gpu.info().max_storage_binding);
        let tokens = gather_rows_chunked(gpu, &self.token_embedding, ids, chunk_bytes)?;
        let positions = if len == self.config.max_position_embeddings {
            self.position_embedding.clone()
        } else {
            layout::narrow(gpu, &self.position_embedding, 0, 0, len)?
        };
        ew::add(gpu, &tokens, &positions)
    }

    fn check_length(&self, len: usize) -> Result<()> {
        let max = self.config.max_position_embeddings;
        if len == 0 || len > max {
            return Err(Error::shape(OP, format!("{len} tokens per prompt; the model takes 1 to {max}")));
        }
        Ok(())
    }
}

/// `Weights::ensure_all_used`, except for the known tensors the model does not need.
fn ensure_all_used_but_ignored(w: &Weights) -> Result<()> {
    let unused: Vec<String> = w.unused().into_iter().filter(|name| !IGNORED_TENSORS.contains(&name.as_str())).collect();
    if unused.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = unused.iter().take(5).map(String::as_str).collect();
    Err(Error::Format {
        file: w.file().to_string(),
        detail: format!("{} tensors do not belong to the configured model, e.g. {}", unused.len(), shown.join(", ")),
    })
}
