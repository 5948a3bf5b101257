//! The layers every network is made of, loaded by their diffusers/PyTorch names
//! (`weight`, `bias` under the layer's scope of `Weights`) and run with the kernels. Linear and Conv2d
//! register under their name for LoRAs (`lora::LoraTargets`) and add the side path of
//! whatever LoRAs are attached at the time they run.

use crate::error::{Error, Result};
use crate::gpu::Tensor;
use crate::kernels::conv2d::{Conv2dOptions, output_size};
use crate::kernels::elementwise as ew;
use crate::kernels::elementwise::Unary;
use crate::kernels::matmul::{MatmulOptions, matmul};
use crate::kernels::norm;
use crate::lora::{LayerShape, OutputLayout, SidePathSlot};
use crate::models::feature_map::FeatureMap;
use crate::models::weights::Weights;

/// `torch.nn.Linear`: weight `[out, in]`, optional bias `[out]`.
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    pub in_features: usize,
    pub out_features: usize,
    lora: SidePathSlot,
}

impl Linear {
    pub fn load(w: &Weights, in_features: usize, out_features: usize, bias: bool) -> Result<Self> {
        let weight = w.get("weight", &[out_features, in_features])?;
        let bias = if bias { Some(w.get("bias", &[out_features])?) } else { None };
        let lora = w.register_lora(LayerShape::Linear { in_features, out_features });
        Ok(Self { weight, bias, in_features, out_features, lora })
    }

    /// A 1x1 `torch.nn.Conv2d` (weight `[out, in, 1, 1]`, bias `[out]`) as the Linear it
    /// computes, registered for LoRAs as the conv it is.
    pub fn load_pointwise_conv(w: &Weights, in_features: usize, out_features: usize) -> Result<Self> {
        let weight = w.get("weight", &[out_features, in_features, 1, 1])?.reshape(&[out_features, in_features])?;
        let bias = Some(w.get("bias", &[out_features])?);
        let lora = w.register_lora(LayerShape::Conv2d { in_channels: in_features, out_channels: out_features, kernel: 1 });
        Ok(Self { weight, bias, in_features, out_features, lora })
    }

    /// `x [.., in] -> [.., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, None)
    }

    /// With an activation fused after the bias (and after the LoRA side path, if any, whose
    /// second product adds into the output and applies it).
    pub fn forward_with(&self, x: &Tensor, activation: Option<Unary>) -> Result<Tensor> {
        self.forward_fused(x, activation, None)
    }

    /// With `residual` (of the output's shape) added in the epilogue: the residual
    /// connection after an output projection.
    pub fn forward_adding(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.forward_fused(x, None, Some(residual))
    }

    /// From tokens back to an image with `residual [B, out, H, W]` added: `x [B, H * W, in]
    /// -> [B, out, H, W]`, the product written transposed (no permute after it).
    pub fn forward_to_channels_first_adding(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let &[batch, pixels, _] = x.shape() else {
            return Err(Error::shape("Linear", format!("tokens [B, S, C] are needed, got {:?}", x.shape())));
        };
        let flat_residual = residual.reshape(&[batch, self.out_features, pixels])?;
        self.product(x, None, Some(&flat_residual), OutputLayout::Transposed)?.reshape(residual.shape())
    }

    fn forward_fused(&self, x: &Tensor, activation: Option<Unary>, residual: Option<&Tensor>) -> Result<Tensor> {
        let shape = x.shape();
        let rows: usize = shape[..shape.len().saturating_sub(1)].iter().product();
        let flat = x.reshape(&[rows, *shape.last().unwrap_or(&0)])?;
        let out = self.product(&flat, activation, residual, OutputLayout::Plain)?;
        let mut out_shape = shape.to_vec();
        if let Some(last) = out_shape.last_mut() {
            *last = self.out_features;
        }
        out.reshape(&out_shape)
    }

    /// The product with its epilogue, then the LoRA side path if one is attached.
    fn product(&self, x: &Tensor, activation: Option<Unary>, residual: Option<&Tensor>, layout: OutputLayout) -> Result<Tensor> {
        let side_path = self.lora.current();
        let fused_activation = if side_path.is_some() { None } else { activation };
        let opts = MatmulOptions {
            transpose_b: true,
            bias: self.bias.as_ref(),
            activation: fused_activation,
            residual,
            split_columns: (layout == OutputLayout::Transposed).then_some(1),
            ..Default::default()
        };
        let out = matmul(x.gpu(), x, &self.weight, &opts)?;
        if let Some(side_path) = side_path {
            // Adding after the residual is the same sum: no activation runs on these layers.
            side_path.add_to_linear(x, &out, activation, layout)?;
        }
        Ok(out)
    }
}

/// Linear layers of the same shape on the same input, stacked: their weights one
/// `[layers * out, in]` tensor (and their biases one), so one launch computes several
/// layers' outputs, each a contiguous `[.., out]` (the matmul's `split_columns`). Each
/// layer stays a `Linear` of its own name (a view of its rows) for LoRAs and lone use.
pub struct StackedLinear {
    weight: Tensor,
    bias: Option<Tensor>,
    layers: Vec<Linear>,
}

impl StackedLinear {
    /// `layers` (one shape, one input) stacked: each becomes a view of its weight's rows
    /// that keeps its bias and its name's LoRA slot. `None` where the device cannot bind a
    /// layer's rows as a view (the storage offset alignment) or only some layers have a
    /// bias; the caller then keeps the layers as they are.
    pub fn stack(layers: &[&Linear]) -> Result<Option<Self>> {
        let Some(first) = layers.first() else {
            return Ok(None);
        };
        let (in_features, out_features) = (first.in_features, first.out_features);
        if layers.iter().any(|l| (l.in_features, l.out_features, l.bias.is_some()) != (in_features, out_features, first.bias.is_some())) {
            return Ok(None);
        }
        let gpu = first.weight.gpu();
        let weight = gpu.concat_rows(&layers.iter().map(|l| &l.weight).collect::<Vec<_>>())?;
        let bias = match first.bias {
            Some(_) => Some(gpu.concat_rows(&layers.iter().filter_map(|l| l.bias.as_ref()).collect::<Vec<_>>())?),
            None => None,
        };
        // Each layer's own bias stays: a few bytes, and a view of an f16 stack's rows
        // rarely lands on the device's offset alignment.
        let view = |i: usize, layer: &Linear| -> Result<Linear> {
            let weight = weight.view_narrow(0, i * out_features, out_features)?;
            Ok(Linear { weight, bias: layer.bias.clone(), in_features, out_features, lora: layer.lora.clone() })
        };
        let Ok(layers) = layers.iter().enumerate().map(|(i, layer)| view(i, layer)).collect::<Result<Vec<_>>>() else {
            return Ok(None);
        };
        Ok(Some(Self { weight, bias, layers }))
    }

    /// Every layer on `x`, as `forward` gives them.
    pub fn forward_all(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        self.forward(x, 0, self.layers.len())
    }

    pub fn layer(&self, i: usize) -> &Linear {
        &self.layers[i]
    }

    /// Layers `first..first + count` on `x [.., in]`: one `[.., out]` output each, from
    /// one launch where the device can bind each output as a view, else one per layer.
    pub fn forward(&self, x: &Tensor, first: usize, count: usize) -> Result<Vec<Tensor>> {
        let layers = &self.layers[first..first + count];
        let out_features = layers[0].out_features;
        let shape = x.shape();
        let rows: usize = shape[..shape.len().saturating_sub(1)].iter().product();
        let alignment = x.gpu().info().storage_offset_alignment as usize;
        if !(rows * out_features * 4).is_multiple_of(alignment) {
            return layers.iter().map(|layer| layer.forward(x)).collect();
        }
        let rows_of = |t: &Tensor| t.view_narrow(0, first * out_features, count * out_features);
        let flat = x.reshape(&[rows, *shape.last().unwrap_or(&0)])?;
        let bias = self.bias.as_ref().map(rows_of).transpose()?;
        let opts = MatmulOptions { transpose_b: true, bias: bias.as_ref(), split_columns: Some(out_features), ..Default::default() };
        let stacked = matmul(x.gpu(), &flat, &rows_of(&self.weight)?, &opts)?;
        let mut out_shape = shape.to_vec();
        if let Some(last) = out_shape.last_mut() {
            *last = out_features;
        }
        layers
            .iter()
            .enumerate()
            .map(|(i, layer)| {
                let out = stacked.view_narrow(0, i, 1)?.reshape(&[rows, out_features])?;
                if let Some(side_path) = layer.lora.current() {
                    side_path.add_to_linear(&flat, &out, None, OutputLayout::Plain)?;
                }
                out.reshape(&out_shape)
            })
            .collect()
    }
}

/// `torch.nn.Conv2d` with square kernels: weight `[out, in, k, k]`, bias `[out]`.
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: [usize; 4],
    pub out_channels: usize,
    lora: SidePathSlot,
}

impl Conv2d {
    /// A conv with the same `padding` on all sides.
    pub fn load(w: &Weights, in_channels: usize, out_channels: usize, kernel: usize, stride: usize, padding: usize) -> Result<Self> {
        Self::load_padded(w, [in_channels, out_channels, kernel, stride], [padding; 4])
    }

    /// `dims` is `[in, out, kernel, stride]`; `padding` is `[top, bottom, left, right]`.
    pub fn load_padded(w: &Weights, dims: [usize; 4], padding: [usize; 4]) -> Result<Self> {
        Self::load_with_bias(w, dims, padding, true)
    }

    /// As `load_padded`, with a bias only when `bias` (TAESD's encoder has convs without).
    pub fn load_with_bias(w: &Weights, dims: [usize; 4], padding: [usize; 4], bias: bool) -> Result<Self> {
        let [in_channels, out_channels, kernel, stride] = dims;
        let weight = w.get("weight", &[out_channels, in_channels, kernel, kernel])?;
        let bias = bias.then(|| w.get("bias", &[out_channels])).transpose()?;
        let lora = w.register_lora(LayerShape::Conv2d { in_channels, out_channels, kernel });
        Ok(Self { weight, bias, stride, padding, out_channels, lora })
    }

    /// A `torch.nn.Linear` (weight `[out, in]`, bias `[out]`) as the 1x1 conv it computes
    /// on an image's pixels, registered for LoRAs as the Linear it is.
    pub fn load_linear_as_pointwise(w: &Weights, in_channels: usize, out_channels: usize) -> Result<Self> {
        let weight = w.get("weight", &[out_channels, in_channels])?.reshape(&[out_channels, in_channels, 1, 1])?;
        let bias = Some(w.get("bias", &[out_channels])?);
        let lora = w.register_lora(LayerShape::Linear { in_features: in_channels, out_features: out_channels });
        Ok(Self { weight, bias, stride: 1, padding: [0; 4], out_channels, lora })
    }

    pub fn forward<F: FeatureMap>(&self, x: &F) -> Result<F> {
        self.forward_adding(x, None, None)
    }

    /// With what follows the conv in diffusers added in its epilogue: `channel_add`
    /// `[N, out]` per sample and channel (a projected time embedding), `residual` of the
    /// output's shape.
    pub fn forward_adding<F: FeatureMap>(&self, x: &F, channel_add: Option<&Tensor>, residual: Option<&F>) -> Result<F> {
        self.run(x, &self.options().with_channel_add(channel_add), residual, OutputLayout::Plain)
    }

    /// With `residual` added, then `activation` applied, in the epilogue (TAESD's
    /// `relu(conv(h) + x)`); with a LoRA side path the activation runs after it, apart.
    pub fn forward_activated(&self, x: &Tensor, residual: Option<&Tensor>, activation: Option<Unary>) -> Result<Tensor> {
        match (self.lora.current(), activation) {
            (Some(_), Some(activation)) => ew::unary(x.gpu(), &self.run(x, &self.options(), residual, OutputLayout::Plain)?, activation),
            _ => self.run(x, &self.options().with_activation(activation), residual, OutputLayout::Plain),
        }
    }

    /// The output's `[N, OC, OH, OW]` for an input of `[N, C, H, W]`.
    pub fn output_shape(&self, [n, _, h, w]: [usize; 4]) -> Result<[usize; 4]> {
        let [kernel_h, kernel_w] = [self.weight.shape()[2], self.weight.shape()[3]];
        let [out_h, out_w] = output_size(h, w, [kernel_h, kernel_w], self.stride, self.padding)?;
        Ok([n, self.out_channels, out_h, out_w])
    }

    /// From an image to its tokens, `x [N, C, H, W] -> [N, H * W, out]`: the output
    /// written channels last (no permute after it).
    pub fn forward_to_tokens(&self, x: &Tensor) -> Result<Tensor> {
        let opts = Conv2dOptions { channels_last: true, ..self.options() };
        let out = self.run(x, &opts, None, OutputLayout::Transposed)?;
        let [batch, height, width, channels] = out.shape()[..] else {
            return Err(Error::shape("Conv2d", format!("tokens from a 4-d output, got {:?}", out.shape())));
        };
        out.reshape(&[batch, height * width, channels])
    }

    /// The layer's stride, padding and bias.
    fn options(&self) -> Conv2dOptions<'_> {
        Conv2dOptions { stride: self.stride, padding: self.padding, bias: self.bias.as_ref(), ..Default::default() }
    }

    /// The conv `opts` describe with `residual` added, then the LoRA side path if one is
    /// attached (on whole tensors only).
    fn run<F: FeatureMap>(&self, x: &F, opts: &Conv2dOptions, residual: Option<&F>, layout: OutputLayout) -> Result<F> {
        let out = x.conv2d(&self.weight, opts, residual)?;
        if let Some(side_path) = self.lora.current() {
            let whole = |f: &F| f.whole("a LoRA's side path");
            side_path.add_to_conv(&whole(x)?, self.stride, self.padding, &whole(&out)?, layout)?;
        }
        Ok(out)
    }
}

/// `torch.nn.GroupNorm` with affine parameters.
pub struct GroupNorm {
    pub(super) weight: Tensor,
    pub(super) bias: Tensor,
    pub(super) groups: usize,
    pub(super) eps: f32,
}

impl GroupNorm {
    pub fn load(w: &Weights, groups: usize, channels: usize, eps: f32) -> Result<Self> {
        Ok(Self { weight: w.get("weight", &[channels])?, bias: w.get("bias", &[channels])?, groups, eps })
    }

    /// Normalises `x [N, C, ...]`, then applies SiLU when `silu` (fused).
    pub fn forward<F: FeatureMap>(&self, x: &F, silu: bool) -> Result<F> {
        x.group_norm(self, silu)
    }
}

/// `torch.nn.LayerNorm` over the last dimension.
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    pub fn load(w: &Weights, dim: usize, eps: f32) -> Result<Self> {
        Ok(Self { weight: w.get("weight", &[dim])?, bias: w.get("bias", &[dim])?, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        norm::layer_norm(x.gpu(), x, &self.weight, &self.bias, self.eps)
    }
}
