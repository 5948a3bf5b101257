//! Which storage type each tensor gets in a package: a default rule per tensor role,
//! then the user's overrides by name pattern.

use crate::error::{Error, Result};
use crate::gpu::DType;
use crate::quant;

/// What `--quant` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    F16,
    Q8,
    Q4,
    /// q8 for linear and attention weights (and 1x1 convs, the token embedding), q4 for
    /// the UNet's 3x3 convs, which hold most of its weights and tolerate it best.
    Mixed,
}

impl Quantization {
    pub const NAMES: [&str; 4] = ["f16", "q8", "q4", "mixed"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "f16" => Some(Self::F16),
            "q8" => Some(Self::Q8),
            "q4" => Some(Self::Q4),
            "mixed" => Some(Self::Mixed),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::Q8 => "q8",
            Self::Q4 => "q4",
            Self::Mixed => "mixed",
        }
    }
}

/// The storage policy: a base quantization and per-pattern overrides, the later
/// override winning. Patterns are globs (`*` matches any run of characters) over
/// `component/name` when they contain a `/`, else over the tensor name alone.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub quantization: Quantization,
    pub overrides: Vec<(String, DType)>,
}

/// Weights the default rule keeps in f16 whatever their shape: the first and last
/// layers (their errors reach the input or the output unattenuated) and the small
/// time embedding MLP, by diffusers name.
const KEEP_F16: [&str; 8] = [
    "unet/conv_in.*",
    "unet/conv_out.*",
    "unet/time_embedding.*",
    "vae/*conv_in.*",
    "vae/*conv_out.*",
    "vae/quant_conv.*",
    "vae/post_quant_conv.*",
    // A few thousand parameters that draw every preview: not worth an error.
    "preview_decoder/*",
];

/// Tensors the model reads as f32 (added to activations): stored f32, as the
/// diffusers loader would give them.
const KEEP_F32: [&str; 1] = ["*position_embedding.weight"];

impl Policy {
    pub fn new(quantization: Quantization) -> Self {
        Self { quantization, overrides: Vec::new() }
    }

    /// Adds `--keep-f16 PATTERN`.
    pub fn keep_f16(mut self, pattern: &str) -> Self {
        self.overrides.push((pattern.to_string(), DType::F16));
        self
    }

    /// Adds `--quant-override PATTERN=TYPE` (TYPE f32, f16, q8 or q4).
    pub fn with_override(mut self, spec: &str) -> Result<Self> {
        let bad = || Error::Format {
            file: "--quant-override".into(),
            detail: format!("{spec:?} is not PATTERN=TYPE with TYPE f32, f16, q8 or q4"),
        };
        let (pattern, name) = spec.rsplit_once('=').ok_or_else(bad)?;
        let dtype = DType::from_name(name).filter(|d| *d != DType::U32).ok_or_else(bad)?;
        self.overrides.push((pattern.to_string(), dtype));
        Ok(self)
    }

    /// The storage type of `component`'s tensor `name`: the default rule, then the
    /// last matching override; a quantized type falls back to f16 where the rows do not
    /// fit whole blocks, and what the model reads as f32 stays f32 whatever was asked
    /// (a broad `text_encoder/*=q8` would otherwise write a package that cannot load).
    pub fn storage_type(&self, component: &str, name: &str, shape: &[usize]) -> DType {
        if KEEP_F32.iter().any(|p| glob(p, name)) {
            return DType::F32;
        }
        let path = format!("{component}/{name}");
        let matches = |pattern: &str| if pattern.contains('/') { glob(pattern, &path) } else { glob(pattern, name) };
        let chosen = self
            .overrides
            .iter()
            .rev()
            .find(|(pattern, _)| matches(pattern))
            .map_or_else(|| self.default_type(component, name, shape), |o| o.1);
        if chosen.is_quantized() && !quant::is_quantizable(shape) { DType::F16 } else { chosen }
    }

    fn default_type(&self, component: &str, name: &str, shape: &[usize]) -> DType {
        let path = format!("{component}/{name}");
        // Biases and norm parameters are tiny and feed activations directly.
        if shape.len() < 2 || KEEP_F16.iter().any(|p| glob(p, &path)) {
            return DType::F16;
        }
        let spatial_conv = shape.len() == 4 && shape[2] * shape[3] > 1;
        match self.quantization {
            Quantization::F16 => DType::F16,
            Quantization::Q8 => DType::Q8,
            Quantization::Q4 => DType::Q4,
            Quantization::Mixed if spatial_conv && component == "unet" => DType::Q4,
            Quantization::Mixed => DType::Q8,
        }
    }
}

/// `*` matches any run of characters (dots included); everything else itself.
fn glob(pattern: &str, text: &str) -> bool {
    let Some((first, rest)) = pattern.split_once('*') else { return pattern == text };
    let Some(mut remaining) = text.strip_prefix(first) else { return false };
    let parts: Vec<&str> = rest.split('*').collect();
    let (last, middle) = parts.split_last().unwrap_or((&"", &[]));
    for part in middle {
        match remaining.find(part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::{DType, Policy, Quantization, glob};

    #[test]
    fn defaults_then_overrides_the_last_match_winning() {
        let mixed = Policy::new(Quantization::Mixed);
        let attention = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight";
        assert_eq!(mixed.storage_type("unet", attention, &[320, 768]), DType::Q8);
        assert_eq!(mixed.storage_type("unet", "down_blocks.0.resnets.0.conv1.weight", &[320, 320, 3, 3]), DType::Q4);
        assert_eq!(mixed.storage_type("vae", "decoder.up_blocks.0.resnets.0.conv1.weight", &[512, 512, 3, 3]), DType::Q8);
        assert_eq!(mixed.storage_type("unet", "conv_in.weight", &[320, 4, 3, 3]), DType::F16);
        assert_eq!(mixed.storage_type("vae", "decoder.conv_out.weight", &[3, 128, 3, 3]), DType::F16);
        assert_eq!(mixed.storage_type("vae", "post_quant_conv.weight", &[4, 4, 1, 1]), DType::F16);
        assert_eq!(mixed.storage_type("unet", "down_blocks.0.resnets.0.norm1.bias", &[320]), DType::F16);
        assert_eq!(mixed.storage_type("text_encoder", "embeddings.position_embedding.weight", &[77, 768]), DType::F32);
        assert_eq!(mixed.storage_type("text_encoder", "embeddings.token_embedding.weight", &[49408, 768]), DType::Q8);
        // Rows that are not whole blocks stay f16 whatever was asked.
        assert_eq!(mixed.storage_type("text_encoder", "encoder.layers.0.mlp.fc2.weight", &[32, 37]), DType::F16);

        let custom = Policy::new(Quantization::Q4).keep_f16("*attn2*").with_override("unet/*attn2.to_k*=q8").unwrap();
        assert_eq!(custom.storage_type("unet", attention, &[320, 768]), DType::Q8);
        assert_eq!(custom.storage_type("unet", &attention.replace("to_k", "to_v"), &[320, 768]), DType::F16);
        assert_eq!(custom.storage_type("unet", "mid_block.resnets.0.conv1.weight", &[1280, 1280, 3, 3]), DType::Q4);
        let overridden = Policy::new(Quantization::F16).with_override("*=q4").unwrap();
        assert_eq!(overridden.storage_type("unet", "conv_out.weight", &[4, 320, 3, 3]), DType::Q4);
        assert_eq!(overridden.storage_type("unet", "conv_in.bias", &[320]), DType::F16);
        let text_q8 = Policy::new(Quantization::F16).with_override("text_encoder/*=q8").unwrap();
        for policy in [&overridden, &text_q8] {
            assert_eq!(policy.storage_type("text_encoder", "embeddings.position_embedding.weight", &[77, 768]), DType::F32);
        }
        assert_eq!(text_q8.storage_type("text_encoder", "embeddings.token_embedding.weight", &[49408, 768]), DType::Q8);
        for bad in ["no-type", "*=q3", "*=u32"] {
            assert!(Policy::new(Quantization::F16).with_override(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn glob_matches_runs() {
        assert!(glob("unet/conv_in.*", "unet/conv_in.weight"));
        assert!(!glob("unet/conv_in.*", "unet/conv_in_x"));
        assert!(glob("*attn2*", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"));
        assert!(glob("vae/*conv_in.*", "vae/decoder.conv_in.bias"));
        assert!(glob("a*b*b", "abb"));
        assert!(!glob("a*b*b", "ab"));
        assert!(glob("*", ""));
        assert!(glob("exact", "exact"));
    }
}
