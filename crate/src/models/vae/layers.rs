//! The VAE's layers on channel-chunked activations: conv, group norm, diffusers'
//! `ResnetBlock2D` (without time embedding) and `Upsample2D`. They load the same weights
//! as `models::nn` and `models::resnet` and compute the same thing, but every activation
//! larger than the plan's limit is held and processed in chunks of whole norm groups.

use super::ActivationLimit;
use super::channel_chunks::ChannelChunks;
use crate::error::{Error, Result};
use crate::gpu::Tensor;
use crate::kernels::conv2d::{Conv2dOptions, output_size};
use crate::models::nn::GroupNorm;
use crate::models::weights::Weights;

/// How the VAE holds activations: any over `limit` in chunks of whole groups of
/// `groups` (every norm in the VAE has `norm_num_groups`), so each chunk can be normed.
#[derive(Debug, Clone, Copy)]
pub(super) struct ChunkPlan {
    limit: ActivationLimit,
    groups: usize,
}

impl ChunkPlan {
    pub fn new(limit: ActivationLimit, groups: usize) -> Self {
        Self { limit, groups }
    }

    /// Channels per chunk of the activation of `shape` that `layer` creates (all when it fits).
    pub fn chunk_channels(&self, layer: &str, shape: [usize; 4]) -> Result<usize> {
        let channels = shape[1];
        // Channel counts no norm sees (the image, the latents) split channel by channel.
        let unit = if self.groups > 0 && channels.is_multiple_of(self.groups) { channels / self.groups } else { 1 };
        self.limit.chunk_channels(layer, shape, unit.max(1))
    }

    /// Checks that `layer` can hold its activation of `shape`.
    pub fn check(&self, layer: &str, shape: [usize; 4]) -> Result<()> {
        self.chunk_channels(layer, shape).map(|_| ())
    }

    /// Checks that the activation of `shape` fits whole, as `layer` (which cannot split) needs.
    pub fn check_whole(&self, layer: &str, shape: [usize; 4]) -> Result<()> {
        self.limit.check(layer, shape)
    }

    /// A network's input, chunked as `layer` (its first) needs.
    pub fn split(&self, layer: &str, x: &Tensor) -> Result<ChannelChunks> {
        let shape: [usize; 4] =
            x.shape().try_into().map_err(|_| Error::shape("AutoencoderKl", format!("expects NCHW, got {:?}", x.shape())))?;
        ChannelChunks::split(x, self.chunk_channels(layer, shape)?)
    }

    /// The activation as one tensor, for `layer` (attention, a network's output); an
    /// error when it is held in chunks because it does not fit one binding.
    pub fn whole(&self, layer: &str, x: &ChannelChunks) -> Result<Tensor> {
        match x.as_whole() {
            Some(t) => Ok(t.clone()),
            None => Err(Error::TooLarge {
                what: format!("{layer} (a whole f32 activation of shape {:?})", x.shape()),
                needed: x.byte_len(),
                limit: self.limit.bytes(),
            }),
        }
    }
}

/// `torch.nn.Conv2d` with a bias and a square kernel.
pub(super) struct Conv {
    name: String,
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: [usize; 4],
}

impl Conv {
    /// `dims` is `[in, out, kernel, stride]`; `padding` is `[top, bottom, left, right]`.
    pub fn load(w: &Weights, dims: [usize; 4], padding: [usize; 4]) -> Result<Self> {
        let [in_channels, out_channels, kernel, stride] = dims;
        Ok(Self {
            name: w.prefix().to_string(),
            weight: w.get("weight", &[out_channels, in_channels, kernel, kernel])?,
            bias: w.get("bias", &[out_channels])?,
            stride,
            padding,
        })
    }

    /// Stride 1, `padding` on every side.
    pub fn same(w: &Weights, in_channels: usize, out_channels: usize, kernel: usize, padding: usize) -> Result<Self> {
        Self::load(w, [in_channels, out_channels, kernel, 1], [padding; 4])
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn out_channels(&self) -> usize {
        self.weight.shape()[0]
    }

    /// The output's shape for an input of `shape`, after checking the plan can hold it.
    pub fn check(&self, [n, _, h, w]: [usize; 4], plan: &ChunkPlan) -> Result<[usize; 4]> {
        let kernel = self.weight.shape()[2];
        let [out_h, out_w] = output_size(h, w, [kernel, kernel], self.stride, self.padding)?;
        let out = [n, self.out_channels(), out_h, out_w];
        plan.check(&self.name, out)?;
        Ok(out)
    }

    pub fn forward(&self, x: &ChannelChunks, plan: &ChunkPlan) -> Result<ChannelChunks> {
        let out_chunk = plan.chunk_channels(&self.name, self.check(x.shape(), plan)?)?;
        let opts = Conv2dOptions { stride: self.stride, padding: self.padding, bias: Some(&self.bias), ..Default::default() };
        x.conv2d(&self.weight, &opts, out_chunk)
    }
}

/// `norm` then SiLU (the VAE never normalises without it), chunked like `x`.
pub(super) fn group_norm(x: &ChannelChunks, norm: &GroupNorm) -> Result<ChannelChunks> {
    x.group_norm(norm.groups, &norm.weight, &norm.bias, norm.eps, true)
}

/// diffusers' `ResnetBlock2D` as the VAE builds it: `silu(norm1(x)) -> conv1 ->
/// silu(norm2) -> conv2`, plus the input (through a 1x1 conv when the width changes).
pub(super) struct Resnet {
    norm1: GroupNorm,
    conv1: Conv,
    norm2: GroupNorm,
    conv2: Conv,
    conv_shortcut: Option<Conv>,
}

impl Resnet {
    pub fn load(w: &Weights, [in_channels, out_channels]: [usize; 2], groups: usize, eps: f32) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::load(&w.at("norm1"), groups, in_channels, eps)?,
            conv1: Conv::same(&w.at("conv1"), in_channels, out_channels, 3, 1)?,
            norm2: GroupNorm::load(&w.at("norm2"), groups, out_channels, eps)?,
            conv2: Conv::same(&w.at("conv2"), out_channels, out_channels, 3, 1)?,
            conv_shortcut: (in_channels != out_channels)
                .then(|| Conv::same(&w.at("conv_shortcut"), in_channels, out_channels, 1, 0))
                .transpose()?,
        })
    }

    pub fn forward(&self, x: &ChannelChunks, plan: &ChunkPlan) -> Result<ChannelChunks> {
        let h = self.conv1.forward(&group_norm(x, &self.norm1)?, plan)?;
        let h = self.conv2.forward(&group_norm(&h, &self.norm2)?, plan)?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x, plan)?,
            None => x.clone(),
        };
        shortcut.add(&h)
    }

    /// The output's shape for an input of `shape` (held as the plan says: the norms keep
    /// their input's chunks), after checking the plan can hold every activation.
    pub fn check(&self, shape: [usize; 4], plan: &ChunkPlan) -> Result<[usize; 4]> {
        let out = self.conv1.check(shape, plan)?;
        self.conv2.check(out, plan)
    }
}

/// diffusers' `Upsample2D`: nearest 2x upsampling, then a 3x3 conv.
pub(super) struct Upsample {
    conv: Conv,
}

impl Upsample {
    pub fn load(w: &Weights, channels: usize) -> Result<Self> {
        Ok(Self { conv: Conv::same(&w.at("conv"), channels, channels, 3, 1)? })
    }

    fn upsampled([n, c, h, w]: [usize; 4]) -> [usize; 4] {
        [n, c, 2 * h, 2 * w]
    }

    pub fn forward(&self, x: &ChannelChunks, plan: &ChunkPlan) -> Result<ChannelChunks> {
        let shape = Self::upsampled(x.shape());
        let upsampled = x.upsample_nearest_2x(plan.chunk_channels(self.conv.name(), shape)?)?;
        self.conv.forward(&upsampled, plan)
    }

    pub fn check(&self, shape: [usize; 4], plan: &ChunkPlan) -> Result<[usize; 4]> {
        let shape = Self::upsampled(shape);
        plan.check(self.conv.name(), shape)?;
        self.conv.check(shape, plan)
    }
}
