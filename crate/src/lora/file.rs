//! Reading a LoRA safetensors file into its modules: each module's down and up
//! matrices and the factor alpha/rank, with the file's structure checked (every down
//! has its up, ranks agree, shapes are matrices or convolution kernels).

use std::collections::{BTreeMap, HashMap};

use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::Value;

use super::keys::{ModuleName, Role, parse_key};
use crate::error::{Error, Result};
use crate::loader::widen;

/// diffusers' safetensors metadata key for the PEFT configs of the saved adapters
/// (`{"unet.r": 4, "unet.lora_alpha": 8, "unet.alpha_pattern": {...}, ...}`).
const ADAPTER_METADATA: &str = "lora_adapter_metadata";

/// One adapted layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraModule {
    /// The module as the file names it, without the role suffix (`lora_unet_conv_in`,
    /// `unet.conv_in`): how errors name it.
    pub key: String,
    /// The network (`unet`, `text_encoder`, `text_encoder_2`); `None` where the file does not say.
    pub component: Option<&'static str>,
    pub name: ModuleName,
    /// `[rank, in]`, or `[rank, in, kh, kw]` for a convolution.
    pub down: LoraMatrix,
    /// `[out, rank]` or `[out, rank, 1, 1]`.
    pub up: LoraMatrix,
    /// Both matrices are f16 in the file, so f16 storage holds them exactly.
    pub stored_f16: bool,
    /// What the update is multiplied by at a user scale of 1: alpha / rank
    /// (alpha / sqrt(rank) for rsLoRA).
    pub scale: f32,
}

/// A LoRA matrix (or kernel) in memory, widened to f32: LoRA files are small.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraMatrix {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

impl LoraModule {
    pub fn rank(&self) -> usize {
        self.down.shape[0]
    }
}

/// A parsed LoRA file.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraFile {
    file: String,
    modules: Vec<LoraModule>,
}

/// The tensors of one module as they are found.
struct Parts {
    stem: String,
    down: Option<(LoraMatrix, bool)>,
    up: Option<(LoraMatrix, bool)>,
    alpha: Option<f32>,
}

impl LoraFile {
    /// Parses a kohya-ss or diffusers/PEFT LoRA; `file` names it in errors.
    pub fn parse(bytes: &[u8], file: &str) -> Result<Self> {
        let format = |detail: String| Error::Format { file: file.to_string(), detail };
        let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| format(e.to_string()))?;
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| format(e.to_string()))?;
        let adapters = AdapterConfigs::parse(metadata.metadata().as_ref().and_then(|m| m.get(ADAPTER_METADATA)), file)?;
        let mut tensors = tensors.tensors();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let mut found: BTreeMap<(Option<&'static str>, ModuleName), Parts> = BTreeMap::new();
        for (name, view) in &tensors {
            let key = parse_key(name).ok_or_else(|| Error::Unsupported {
                file: file.to_string(),
                detail: format!("tensor {name}: not a LoRA down, up or alpha tensor of the kohya or diffusers/PEFT layout"),
            })?;
            let (values, f16) = float_values(view, name, file)?;
            let parts =
                found.entry((key.component, key.module)).or_insert_with(|| Parts { stem: key.stem, down: None, up: None, alpha: None });
            let tensor = LoraMatrix { shape: view.shape().to_vec(), values };
            let duplicate = match key.role {
                Role::Down => parts.down.replace((tensor, f16)).is_some(),
                Role::Up => parts.up.replace((tensor, f16)).is_some(),
                Role::Alpha => {
                    let [alpha] = tensor.values[..] else {
                        return Err(format(format!("{name}: alpha must be one number, got shape {:?}", tensor.shape)));
                    };
                    parts.alpha.replace(alpha).is_some()
                }
            };
            if duplicate {
                return Err(format(format!("{name}: module {} has two {:?} tensors", parts.stem, key.role)));
            }
        }
        if found.is_empty() {
            return Err(format("no LoRA tensors".into()));
        }
        let modules = found
            .into_iter()
            .map(|((component, name), parts)| module(component, name, parts, &adapters).map_err(format))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { file: file.to_string(), modules })
    }

    /// The file name given to `parse`.
    pub fn file(&self) -> &str {
        &self.file
    }

    pub fn modules(&self) -> &[LoraModule] {
        &self.modules
    }
}

/// Checks one module's tensors and works out its factor; the error is the detail of a
/// `Format` error.
fn module(component: Option<&'static str>, name: ModuleName, parts: Parts, adapters: &AdapterConfigs) -> Result<LoraModule, String> {
    let stem = parts.stem;
    let ((down, down_f16), (up, up_f16)) = match (parts.down, parts.up) {
        (Some(down), Some(up)) => (down, up),
        (Some(_), None) => return Err(format!("{stem}: a down tensor without its up tensor")),
        (None, Some(_)) => return Err(format!("{stem}: an up tensor without its down tensor")),
        (None, None) => return Err(format!("{stem}: an alpha without down and up tensors")),
    };
    let rank = down.shape.first().copied().unwrap_or(0);
    let down_ok = matches!(down.shape.len(), 2 | 4) && rank > 0;
    let up_ok = matches!(up.shape[..], [_, r] | [_, r, 1, 1] if r == rank);
    if !down_ok || !up_ok {
        return Err(format!(
            "{stem}: down {:?} and up {:?} are not a LoRA pair (down [rank, in] or [rank, in, kh, kw], up [out, rank] or [out, rank, 1, 1])",
            down.shape, up.shape
        ));
    }
    let config = component.and_then(|c| adapters.by_component.get(c));
    let alpha = match (parts.alpha, &name, config) {
        (Some(alpha), ..) => alpha,
        (None, ModuleName::Dotted(path), Some(config)) => config.alpha_of(path).unwrap_or(rank as f32),
        // kohya-ss and PEFT both default alpha to the rank (a factor of 1).
        _ => rank as f32,
    };
    let divisor = if config.is_some_and(|c| c.rslora) { (rank as f32).sqrt() } else { rank as f32 };
    Ok(LoraModule { key: stem, component, name, down, up, stored_f16: down_f16 && up_f16, scale: alpha / divisor })
}

/// A float tensor's values as f32, and whether it was f16.
fn float_values(view: &TensorView, name: &str, file: &str) -> Result<(Vec<f32>, bool)> {
    match view.dtype() {
        dtype @ (Dtype::F32 | Dtype::F16 | Dtype::BF16) => Ok((widen(dtype, view.data()), dtype == Dtype::F16)),
        other => Err(Error::Unsupported { file: file.to_string(), detail: format!("tensor {name} of type {other:?}") }),
    }
}

/// The PEFT configs diffusers stores with saved adapters, by network.
#[derive(Default)]
struct AdapterConfigs {
    by_component: HashMap<String, AdapterConfig>,
}

#[derive(Default)]
struct AdapterConfig {
    lora_alpha: Option<f32>,
    /// Module name (or a trailing part of it, at a `.`) -> alpha, as PEFT matches them.
    alpha_pattern: Vec<(String, f32)>,
    rslora: bool,
}

impl AdapterConfig {
    fn alpha_of(&self, path: &str) -> Option<f32> {
        let pattern = self.alpha_pattern.iter().find(|(key, _)| path == key || path.ends_with(&format!(".{key}")));
        pattern.map(|(_, alpha)| *alpha).or(self.lora_alpha)
    }
}

impl AdapterConfigs {
    fn parse(json: Option<&String>, file: &str) -> Result<Self> {
        let Some(json) = json else { return Ok(Self::default()) };
        let format = |detail: String| Error::Format { file: file.to_string(), detail: format!("metadata {ADAPTER_METADATA}: {detail}") };
        let value: Value = serde_json::from_str(json).map_err(|e| format(e.to_string()))?;
        let Value::Object(fields) = value else { return Err(format("not a JSON object".into())) };
        let mut configs = Self::default();
        for (key, value) in &fields {
            let Some((component, field)) = key.split_once('.') else { continue };
            let config = configs.by_component.entry(component.to_string()).or_default();
            match field {
                "lora_alpha" => config.lora_alpha = Some(value.as_f64().ok_or_else(|| format(format!("{key} is not a number")))? as f32),
                "alpha_pattern" => {
                    let patterns = value.as_object().ok_or_else(|| format(format!("{key} is not an object")))?;
                    for (module, alpha) in patterns {
                        let alpha = alpha.as_f64().ok_or_else(|| format(format!("{key}.{module} is not a number")))?;
                        config.alpha_pattern.push((module.clone(), alpha as f32));
                    }
                }
                "use_rslora" => config.rslora = value.as_bool().unwrap_or(false),
                "use_dora" if value.as_bool() == Some(true) => {
                    return Err(Error::Unsupported { file: file.to_string(), detail: format!("DoRA adapters ({key})") });
                }
                _ => {}
            }
        }
        Ok(configs)
    }
}
