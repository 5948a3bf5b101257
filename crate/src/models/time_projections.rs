//! Every resnet of a UNet projects the same time embedding (`time_emb_proj`), so the UNet
//! takes those layers from its resnets and computes them together: stacked by width, one
//! launch per width instead of one per resnet.

use super::nn::{Linear, StackedLinear};
use super::resnet::ResnetBlock2D;
use crate::error::Result;
use crate::gpu::Tensor;

/// Layers of one width: stacked, or one by one where the device cannot view the stack.
enum Group {
    Stacked(StackedLinear),
    Separate(Vec<Linear>),
}

/// The time projections of a UNet's resnets, each group with the slots it fills.
pub struct TimeProjections {
    groups: Vec<(Vec<usize>, Group)>,
    slots: usize,
}

impl TimeProjections {
    /// Takes the time projections of `resnets`, which then read theirs from `forward`'s
    /// output by slot.
    pub fn take<'a>(resnets: impl IntoIterator<Item = &'a mut ResnetBlock2D>) -> Result<Self> {
        let mut by_width: Vec<(usize, Vec<usize>, Vec<Linear>)> = Vec::new();
        let mut slots = 0;
        for resnet in resnets {
            let Some(layer) = resnet.take_time_projection(slots) else { continue };
            match by_width.iter_mut().find(|(width, _, _)| *width == layer.out_features) {
                Some((_, group_slots, layers)) => {
                    group_slots.push(slots);
                    layers.push(layer);
                }
                None => by_width.push((layer.out_features, vec![slots], vec![layer])),
            }
            slots += 1;
        }
        let groups = by_width
            .into_iter()
            .map(|(_, group_slots, layers)| {
                let group = match StackedLinear::stack(&layers.iter().collect::<Vec<_>>())? {
                    Some(stacked) => Group::Stacked(stacked),
                    None => Group::Separate(layers),
                };
                Ok((group_slots, group))
            })
            .collect::<Result<_>>()?;
        Ok(Self { groups, slots })
    }

    /// Every taken layer on `embedding [B, temb]`, by slot.
    pub fn forward(&self, embedding: &Tensor) -> Result<Vec<Tensor>> {
        let mut projected: Vec<Option<Tensor>> = vec![None; self.slots];
        for (slots, group) in &self.groups {
            let outputs = match group {
                Group::Stacked(stacked) => stacked.forward_all(embedding)?,
                Group::Separate(layers) => layers.iter().map(|layer| layer.forward(embedding)).collect::<Result<_>>()?,
            };
            for (&slot, output) in slots.iter().zip(outputs) {
                projected[slot] = Some(output);
            }
        }
        Ok(projected.into_iter().flatten().collect())
    }
}
