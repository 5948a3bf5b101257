//! Merging a LoRA into a model's weights at conversion: `W += s * up @ down` for every
//! adapted Linear, and for every adapted conv with `down` a kernel and `up` a 1x1 conv
//! (the product is then a kernel of the conv's size).

use super::{HostTensor, SourceModel};
use crate::error::{Error, Result};
use crate::lora::{LayerShape, LoraFile, LoraModule, ModuleIndex, match_modules};

/// The networks LoRAs adapt (Stable Diffusion LoRAs never touch the VAE).
const NETWORKS: [&str; 3] = ["unet", "text_encoder", "text_encoder_2"];

/// Adds `lora` at user scale `scale` into the weights of `model`. Fails, changing nothing,
/// when a module matches no layer (all such are named) or does not fit its layer.
pub fn merge_lora(model: &mut SourceModel, lora: &LoraFile, scale: f32) -> Result<()> {
    let present: Vec<&str> = NETWORKS.into_iter().filter(|name| model.components.contains_key(*name)).collect();
    let indices: Vec<ModuleIndex> =
        present.iter().map(|name| ModuleIndex::new(name, adaptable_layers(&model.components[*name].tensors))).collect();
    let named: Vec<(&str, &ModuleIndex)> = present.iter().copied().zip(&indices).collect();
    let matches = match_modules(lora, &named)?;
    for matched in matches {
        let component = present[matched.network];
        let name = format!("{}.weight", matched.layer);
        let weight = model
            .components
            .get_mut(component)
            .and_then(|c| c.tensors.get_mut(&name))
            .ok_or_else(|| Error::MissingTensor { file: format!("{} ({component})", model.name), name: name.clone() })?;
        add_low_rank(weight, matched.module, scale * matched.module.scale, matched.shape)?;
    }
    Ok(())
}

/// The Linear and square-kernel conv weights of a network's tensors, by module name. An
/// embedding table is 2-D too but is looked up, not multiplied: LoRAs do not adapt it here.
fn adaptable_layers(tensors: &std::collections::BTreeMap<String, HostTensor>) -> Vec<(String, LayerShape)> {
    tensors
        .iter()
        .filter_map(|(name, tensor)| {
            let module = name.strip_suffix(".weight")?;
            if module.rsplit('.').next().is_some_and(|last| last.ends_with("_embedding")) {
                return None;
            }
            let shape = match tensor.shape[..] {
                [out_features, in_features] => LayerShape::Linear { in_features, out_features },
                [out_channels, in_channels, kernel, kernel_w] if kernel == kernel_w => {
                    LayerShape::Conv2d { in_channels, out_channels, kernel }
                }
                _ => return None,
            };
            Some((module.to_string(), shape))
        })
        .collect()
}

/// `weight += factor * up @ down`, with `up` `[out, rank]` and `down` `[rank, row_len]`
/// (the shapes `match_modules` checked).
fn add_low_rank(weight: &mut HostTensor, module: &LoraModule, factor: f32, shape: LayerShape) -> Result<()> {
    let (rank, row_len) = (module.rank(), shape.row_len());
    let down = &module.down.values;
    for (row, up_row) in weight.values_mut()?.chunks_exact_mut(row_len).zip(module.up.values.chunks_exact(rank)) {
        for (r, &u) in up_row.iter().enumerate() {
            let u = factor * u;
            for (w, &d) in row.iter_mut().zip(&down[r * row_len..][..row_len]) {
                *w += u * d;
            }
        }
    }
    Ok(())
}
