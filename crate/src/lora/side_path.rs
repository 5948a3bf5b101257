//! LoRAs at run time: every adaptable layer registers a slot under its module name as
//! it loads (`LoraTargets`, handed out through `Weights`); `attach` fills the slots with
//! side paths and empties them again, without touching the layers' weights. A layer
//! with a side path computes `layer(x) + up(scales * down(x))`, where the LoRAs on it are
//! stacked along the rank (`down` `[R1+R2+.., in]`, `up` `[out, R1+R2+..]`) and `scales`
//! holds each rank's user scale times its module's alpha/rank: one pair of products per
//! layer however many LoRAs are active.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use super::file::{LoraFile, LoraModule};
use super::matching::{LayerShape, ModuleIndex, match_modules};
use crate::error::Result;
use crate::gpu::{Gpu, Tensor};
use crate::kernels::conv2d::{Conv2dOptions, ConvPart, conv2d, conv2d_into};
use crate::kernels::elementwise::{self as ew, Unary};
use crate::kernels::matmul::{MatmulOptions, matmul, matmul_accumulate};

/// The adaptable layers of one loaded network, by module name.
#[derive(Clone, Default)]
pub struct LoraTargets {
    layers: Arc<Mutex<BTreeMap<String, (LayerShape, SidePathSlot)>>>,
}

impl LoraTargets {
    /// The slot of layer `name` (its weight is `name.weight`), which LoRAs attached later
    /// fill. A name registered twice is one module: both callers share the slot.
    pub fn register(&self, name: &str, shape: LayerShape) -> SidePathSlot {
        let mut layers = self.layers.lock().unwrap_or_else(|p| p.into_inner());
        layers.entry(name.to_string()).or_insert_with(|| (shape, SidePathSlot::default())).1.clone()
    }

    fn layers(&self) -> Vec<(String, LayerShape, SidePathSlot)> {
        let layers = self.layers.lock().unwrap_or_else(|p| p.into_inner());
        layers.iter().map(|(name, (shape, slot))| (name.clone(), *shape, slot.clone())).collect()
    }
}

/// A layer's current side path, if any LoRA adapts it.
#[derive(Clone, Default)]
pub struct SidePathSlot(Arc<RwLock<Option<SidePath>>>);

impl SidePathSlot {
    /// The side path at this moment (its tensors are shared, not copied).
    pub fn current(&self) -> Option<SidePath> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, path: Option<SidePath>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = path;
    }
}

/// The LoRAs on one layer, stacked along the rank.
#[derive(Clone)]
pub struct SidePath {
    /// `[R, in]` or `[R, in, k, k]`, f16 where every LoRA stored f16, else f32.
    down: Tensor,
    /// `[out, R]` or `[out, R, 1, 1]`.
    up: Tensor,
    /// `[R]` (`[R, 1, 1]` for convolutions), f32: kept apart from `up` so that f16
    /// matrices are used exactly as the file has them.
    scales: Tensor,
}

impl SidePath {
    /// Stacks `parts` (each module with its total factor) for a layer of `shape`.
    fn upload(gpu: &Gpu, shape: LayerShape, parts: &[(&LoraModule, f32)]) -> Result<Self> {
        let rank: usize = parts.iter().map(|(module, _)| module.rank()).sum();
        let out = shape.out_features();
        let mut down = Vec::with_capacity(rank * shape.row_len());
        let mut up = vec![0.0; out * rank];
        let mut scales = Vec::with_capacity(rank);
        let mut first_rank = 0;
        for (module, scale) in parts {
            let r = module.rank();
            down.extend_from_slice(&module.down.values);
            for (o, row) in module.up.values.chunks_exact(r).enumerate() {
                up[o * rank + first_rank..][..r].copy_from_slice(row);
            }
            scales.extend(std::iter::repeat_n(*scale, r));
            first_rank += r;
        }
        let upload = |shape: &[usize], values: &[f32]| {
            if parts.iter().all(|(module, _)| module.stored_f16) {
                gpu.upload_f32_as_f16(shape, values)
            } else {
                gpu.upload_f32(shape, values)
            }
        };
        let scales_shape = match shape {
            LayerShape::Linear { .. } => vec![rank],
            LayerShape::Conv2d { .. } => vec![rank, 1, 1],
        };
        Ok(Self {
            down: upload(&shape.down_shape(rank), &down)?,
            up: upload(&shape.up_shape(rank), &up)?,
            scales: gpu.upload_f32(&scales_shape, &scales)?,
        })
    }

    /// `y = activation(y + up(scales * down(x)))` in place for a Linear: `x` `[rows, in]`,
    /// `y` `[rows, out]` (the layer's output, before its activation).
    pub fn add_to_linear(&self, x: &Tensor, y: &Tensor, activation: Option<Unary>) -> Result<()> {
        let gpu = x.gpu();
        let transposed = MatmulOptions { transpose_b: true, ..Default::default() };
        let low = ew::mul(gpu, &matmul(gpu, x, &self.down, &transposed)?, &self.scales)?;
        matmul_accumulate(gpu, &low, &self.up, &MatmulOptions { activation, ..transposed }, y)
    }

    /// Adds `up(scales * down(x))` into a Conv2d's output `y`; the down convolution has
    /// the layer's stride and padding, the up one is 1x1.
    pub fn add_to_conv(&self, x: &Tensor, stride: usize, padding: [usize; 4], y: &Tensor) -> Result<()> {
        let gpu = x.gpu();
        let low = conv2d(gpu, x, &self.down, &Conv2dOptions { stride, padding, ..Default::default() })?;
        let low = ew::mul(gpu, &low, &self.scales)?;
        conv2d_into(gpu, &low, &self.up, &Conv2dOptions::default(), ConvPart { accumulate: true, ..Default::default() }, y)
    }
}

/// The modules of the attached LoRAs on one layer, each with its total factor.
struct LayerLoras<'a> {
    shape: LayerShape,
    parts: Vec<(&'a LoraModule, f32)>,
}

/// Puts `loras` (each with its user scale) on the layers of `networks` (`(component,
/// targets)`, e.g. `("unet", ...)`), replacing what was attached before; no LoRAs
/// restores the plain layers. Every file is matched and every side path uploaded before
/// any layer changes, so an error leaves the previous state in place.
pub fn attach(gpu: &Gpu, networks: &[(&str, &LoraTargets)], loras: &[(&LoraFile, f32)]) -> Result<()> {
    let layers: Vec<_> = networks.iter().map(|(_, targets)| targets.layers()).collect();
    let indices: Vec<ModuleIndex> = networks
        .iter()
        .zip(&layers)
        .map(|((component, _), layers)| ModuleIndex::new(component, layers.iter().map(|(name, shape, _)| (name.clone(), *shape))))
        .collect();
    let named: Vec<(&str, &ModuleIndex)> = networks.iter().map(|(component, _)| *component).zip(&indices).collect();
    let mut per_layer: BTreeMap<(usize, String), LayerLoras> = BTreeMap::new();
    for &(lora, scale) in loras {
        for matched in match_modules(lora, &named)? {
            // Checked all the same: a LoRA at scale 0 is still refused where it does not fit.
            if scale != 0.0 {
                let layer = per_layer
                    .entry((matched.network, matched.layer))
                    .or_insert_with(|| LayerLoras { shape: matched.shape, parts: Vec::new() });
                layer.parts.push((matched.module, scale * matched.module.scale));
            }
        }
    }
    let mut paths = BTreeMap::new();
    for (layer, loras) in per_layer {
        paths.insert(layer, SidePath::upload(gpu, loras.shape, &loras.parts)?);
    }
    for (network, layers) in layers.into_iter().enumerate() {
        for (name, _, slot) in layers {
            slot.set(paths.remove(&(network, name)));
        }
    }
    Ok(())
}
