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

/// How a layer lays out its output: `Plain` as its kind does (a Linear `[rows, out]`, a
/// conv `[N, OC, OH, OW]`), or `Transposed` (a Linear over tokens `[N, out, pixels]`, a
/// conv `[N, OH, OW, OC]`): a pointwise projection between an image and its tokens then
/// needs no permute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutputLayout {
    #[default]
    Plain,
    Transposed,
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

    /// The side path's matrices as a Linear's (`[R, in]`, `[out, R]`, `[R]`), or as a 1x1
    /// conv's (`[R, in, 1, 1]`, `[out, R, 1, 1]`, `[R, 1, 1]`): a pointwise layer of either
    /// kind may run as the other.
    fn shaped(&self, conv: bool) -> Result<[Tensor; 3]> {
        let [rank, inputs] = [self.down.shape()[0], self.down.shape()[1]];
        let out = self.up.shape()[0];
        let pointwise = |shape: [usize; 2]| if conv { vec![shape[0], shape[1], 1, 1] } else { shape.to_vec() };
        let scales = if conv { vec![rank, 1, 1] } else { vec![rank] };
        Ok([self.down.reshape(&pointwise([rank, inputs]))?, self.up.reshape(&pointwise([out, rank]))?, self.scales.reshape(&scales)?])
    }

    /// `y = activation(y + up(scales * down(x)))` in place for a Linear (or a 1x1 conv run
    /// as one): `x` `[rows, in]`, `y` `[rows, out]` (the layer's output, before its
    /// activation), or `y` `[N, out, pixels]` for `x` `[N, pixels, in]` transposed.
    pub fn add_to_linear(&self, x: &Tensor, y: &Tensor, activation: Option<Unary>, layout: OutputLayout) -> Result<()> {
        let gpu = x.gpu();
        let [down, up, scales] = self.shaped(false)?;
        let transposed = MatmulOptions { transpose_b: true, ..Default::default() };
        let low = ew::mul(gpu, &matmul(gpu, x, &down, &transposed)?, &scales)?;
        let split_columns = (layout == OutputLayout::Transposed).then_some(1);
        matmul_accumulate(gpu, &low, &up, &MatmulOptions { activation, split_columns, ..transposed }, y)
    }

    /// Adds `up(scales * down(x))` into a Conv2d's output `y` (or a Linear's run as a 1x1
    /// conv), laid out as `layout` says; the down convolution has the layer's stride and
    /// padding, the up one is 1x1.
    pub fn add_to_conv(&self, x: &Tensor, stride: usize, padding: [usize; 4], y: &Tensor, layout: OutputLayout) -> Result<()> {
        let gpu = x.gpu();
        let [down, up, scales] =
            if self.down.shape().len() == 4 { [self.down.clone(), self.up.clone(), self.scales.clone()] } else { self.shaped(true)? };
        let low = conv2d(gpu, x, &down, &Conv2dOptions { stride, padding, ..Default::default() })?;
        let low = ew::mul(gpu, &low, &scales)?;
        let opts = Conv2dOptions { channels_last: layout == OutputLayout::Transposed, ..Default::default() };
        conv2d_into(gpu, &low, &up, &opts, ConvPart { accumulate: true, ..Default::default() }, y)
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
