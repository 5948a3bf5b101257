//! Finding the layer each LoRA module adapts, by name, in the networks of a model, and
//! checking that its matrices fit that layer. The runtime side path and the merge at
//! conversion share this, so both accept and refuse the same files.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::file::{LoraFile, LoraModule};
use super::keys::ModuleName;
use crate::error::{Error, Result};

/// The weight shape of a layer a LoRA can adapt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerShape {
    /// `torch.nn.Linear`, weight `[out, in]`.
    Linear { in_features: usize, out_features: usize },
    /// `torch.nn.Conv2d` with a square kernel, weight `[out, in, k, k]`.
    Conv2d { in_channels: usize, out_channels: usize, kernel: usize },
}

impl LayerShape {
    pub fn out_features(self) -> usize {
        match self {
            Self::Linear { out_features, .. } => out_features,
            Self::Conv2d { out_channels, .. } => out_channels,
        }
    }

    /// The length of one weight row (one output's inputs): `in`, or `in * k * k`.
    pub fn row_len(self) -> usize {
        match self {
            Self::Linear { in_features, .. } => in_features,
            Self::Conv2d { in_channels, kernel, .. } => in_channels * kernel * kernel,
        }
    }

    /// The shape the side path stores a (combined) down matrix of `rank` rows in.
    pub(super) fn down_shape(self, rank: usize) -> Vec<usize> {
        match self {
            Self::Linear { in_features, .. } => vec![rank, in_features],
            Self::Conv2d { in_channels, kernel, .. } => vec![rank, in_channels, kernel, kernel],
        }
    }

    /// The shape the side path stores a (combined) up matrix of `rank` columns in.
    pub(super) fn up_shape(self, rank: usize) -> Vec<usize> {
        match self {
            Self::Linear { out_features, .. } => vec![out_features, rank],
            Self::Conv2d { out_channels, .. } => vec![out_channels, rank, 1, 1],
        }
    }

    /// Whether a module's down and up fit: a Linear's as matrices (or 1x1 kernels), a
    /// conv's down as a kernel of the conv's size and its up as a 1x1 kernel (a 1x1
    /// conv's also as matrices).
    fn fits(self, module: &LoraModule) -> bool {
        let (rank, out, down, up) = (module.rank(), self.out_features(), &module.down.shape[..], &module.up.shape[..]);
        let up_fits = up == [out, rank] || up == [out, rank, 1, 1];
        let down_fits = match self {
            Self::Linear { in_features, .. } => down == [rank, in_features] || down == [rank, in_features, 1, 1],
            Self::Conv2d { in_channels, kernel, .. } => {
                down == [rank, in_channels, kernel, kernel] || (kernel == 1 && down == [rank, in_channels])
            }
        };
        up_fits && down_fits
    }
}

impl fmt::Display for LayerShape {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::Linear { in_features, out_features } => write!(f, "Linear {in_features} -> {out_features}"),
            Self::Conv2d { in_channels, out_channels, kernel } => write!(f, "Conv2d {in_channels} -> {out_channels}, {kernel}x{kernel}"),
        }
    }
}

/// The adaptable layers of one network, by name.
pub(crate) struct ModuleIndex {
    component: String,
    /// Canonical name -> (the model's name, shape).
    layers: BTreeMap<String, (String, LayerShape)>,
    /// Canonical name with `.` written `_` -> canonical name, or `None` where two names
    /// collide that way (then kohya names cannot tell them apart).
    underscored: HashMap<String, Option<String>>,
}

impl ModuleIndex {
    pub(crate) fn new(component: &str, layers: impl IntoIterator<Item = (String, LayerShape)>) -> Self {
        let mut index = Self { component: component.to_string(), layers: BTreeMap::new(), underscored: HashMap::new() };
        for (name, shape) in layers {
            let canonical = index.canonical(&name).to_string();
            index
                .underscored
                .entry(canonical.replace('.', "_"))
                .and_modify(|known| {
                    if known.as_deref() != Some(canonical.as_str()) {
                        *known = None;
                    }
                })
                .or_insert_with(|| Some(canonical.clone()));
            index.layers.insert(canonical, (name, shape));
        }
        index
    }

    /// CLIP text encoders are saved with and without the `text_model.` level
    /// (transformers 4 and 5), and LoRAs name them either way.
    fn canonical<'a>(&self, name: &'a str) -> &'a str {
        if self.component.starts_with("text_encoder") {
            name.strip_prefix("text_model.").or_else(|| name.strip_prefix("text_model_")).unwrap_or(name)
        } else {
            name
        }
    }

    /// The model's name and shape of the layer `name` adapts here.
    fn resolve(&self, name: &ModuleName) -> Option<&(String, LayerShape)> {
        match name {
            ModuleName::Dotted(path) => self.layers.get(self.canonical(path)),
            ModuleName::Underscored(path) => {
                let canonical = self.underscored.get(self.canonical(path))?.as_ref()?;
                self.layers.get(canonical)
            }
        }
    }
}

/// One module of a LoRA file and the layer it adapts.
pub(crate) struct Match<'a> {
    /// The position of the layer's network in the list given to `match_modules`.
    pub network: usize,
    /// The layer's name in the model.
    pub layer: String,
    pub shape: LayerShape,
    pub module: &'a LoraModule,
}

/// Pairs every module of `lora` with its layer in `networks` (`(component, index)`):
/// in the network the file names, or the first that has such a layer where the file
/// names none. Fails on a module whose matrices do not fit its layer, and lists by name
/// the modules that match no layer.
pub(crate) fn match_modules<'a>(lora: &'a LoraFile, networks: &[(&str, &ModuleIndex)]) -> Result<Vec<Match<'a>>> {
    let mut matches = Vec::new();
    let mut unmatched = Vec::new();
    for module in lora.modules() {
        let found = networks
            .iter()
            .enumerate()
            .filter(|(_, (component, _))| module.component.is_none_or(|c| c == *component))
            .find_map(|(network, (_, index))| index.resolve(&module.name).map(|layer| (network, layer)));
        let Some((network, (layer, shape))) = found else {
            unmatched.push(module.key.clone());
            continue;
        };
        if !shape.fits(module) {
            return Err(Error::Format {
                file: lora.file().to_string(),
                detail: format!(
                    "{}: down {:?} and up {:?} do not fit {} layer {layer} ({shape})",
                    module.key, module.down.shape, module.up.shape, networks[network].0
                ),
            });
        }
        matches.push(Match { network, layer: layer.clone(), shape: *shape, module });
    }
    if !unmatched.is_empty() {
        return Err(Error::UnmatchedLora { file: lora.file().to_string(), modules: unmatched });
    }
    Ok(matches)
}
