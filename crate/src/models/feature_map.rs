//! What the convolutional layers (`nn::Conv2d`, `nn::GroupNorm`, `resnet`) run on: an
//! NCHW tensor, or one held in channel chunks (`kernels::channel_chunks`) where it is
//! larger than one storage binding takes. The UNet's activations are tensors, the VAE's
//! are chunked by its plan; both run through the same layers.

use crate::error::{Error, Result};
use crate::gpu::Tensor;
use crate::kernels::activation_limit::ActivationLimit;
use crate::kernels::channel_chunks::ChannelChunks;
use crate::kernels::conv2d::{Conv2dOptions, conv2d, output_size};
use crate::kernels::elementwise as ew;
use crate::kernels::{layout, norm};
use crate::models::nn::GroupNorm;

/// An NCHW activation a convolutional layer takes and gives.
pub trait FeatureMap: Clone + Sized {
    /// The convolution `opts` describe, with `residual` (of the output's shape) added in
    /// its epilogue; `opts.residual` is unused.
    fn conv2d(&self, weight: &Tensor, opts: &Conv2dOptions, residual: Option<&Self>) -> Result<Self>;

    /// `norm`, then SiLU when `silu`.
    fn group_norm(&self, norm: &GroupNorm, silu: bool) -> Result<Self>;

    fn upsample_nearest_2x(&self) -> Result<Self>;

    fn scale(&self, factor: f32) -> Result<Self>;

    /// The activation as one tensor, for `what` (attention, a LoRA's side path) that runs
    /// on whole tensors only; an error naming it where the activation is held in chunks.
    fn whole(&self, what: &str) -> Result<Tensor>;
}

impl FeatureMap for Tensor {
    fn conv2d(&self, weight: &Tensor, opts: &Conv2dOptions, residual: Option<&Self>) -> Result<Self> {
        conv2d(self.gpu(), self, weight, &opts.with_residual(residual))
    }

    fn group_norm(&self, n: &GroupNorm, silu: bool) -> Result<Self> {
        norm::group_norm(self.gpu(), self, n.groups, &n.weight, &n.bias, n.eps, silu)
    }

    fn upsample_nearest_2x(&self) -> Result<Self> {
        layout::upsample_nearest_2x(self.gpu(), self)
    }

    fn scale(&self, factor: f32) -> Result<Self> {
        ew::scale(self.gpu(), self, factor)
    }

    fn whole(&self, _: &str) -> Result<Tensor> {
        Ok(self.clone())
    }
}

/// How a network holds its activations: any over `limit` in chunks of whole groups of
/// `groups` (every norm of the VAE has `norm_num_groups`), so each chunk can be normed.
#[derive(Debug, Clone, Copy)]
pub struct ChunkPlan {
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

    /// Checks that `layer` can hold its activation of `shape`, in chunks if need be.
    pub fn check(&self, layer: &str, shape: [usize; 4]) -> Result<()> {
        self.chunk_channels(layer, shape).map(|_| ())
    }

    /// Checks that the activation of `shape` fits whole, as `layer` (which cannot split) needs.
    pub fn check_whole(&self, layer: &str, shape: [usize; 4]) -> Result<()> {
        self.limit.check(layer, shape)
    }

    /// A network's input, chunked as `layer` (its first) needs.
    pub fn split(&self, layer: &str, x: &Tensor) -> Result<ChunkedFeatures> {
        let shape: [usize; 4] =
            x.shape().try_into().map_err(|_| Error::shape("ChunkPlan", format!("{layer} expects NCHW, got {:?}", x.shape())))?;
        Ok(ChunkedFeatures { chunks: ChannelChunks::split(x, self.chunk_channels(layer, shape)?)?, plan: *self })
    }
}

/// An activation held in channel chunks as its plan says, each layer's output chunked
/// anew for its own shape.
#[derive(Clone)]
pub struct ChunkedFeatures {
    chunks: ChannelChunks,
    plan: ChunkPlan,
}

impl ChunkedFeatures {
    /// A tensor that fits one binding, held as one chunk.
    pub fn whole_tensor(x: Tensor, plan: ChunkPlan) -> Result<Self> {
        Ok(Self { chunks: ChannelChunks::whole(x)?, plan })
    }

    fn with(&self, chunks: ChannelChunks) -> Self {
        Self { chunks, plan: self.plan }
    }

    /// Chunk channels for an output of `shape` (the plan was checked before any work, so
    /// this names no layer).
    fn out_chunk(&self, shape: [usize; 4]) -> Result<usize> {
        self.plan.chunk_channels("an activation", shape)
    }
}

impl FeatureMap for ChunkedFeatures {
    fn conv2d(&self, weight: &Tensor, opts: &Conv2dOptions, residual: Option<&Self>) -> Result<Self> {
        let [n, _, h, w] = self.chunks.shape();
        let (out_channels, kernel) = (weight.shape()[0], [weight.shape()[2], weight.shape()[3]]);
        let [out_h, out_w] = output_size(h, w, kernel, opts.stride, opts.padding)?;
        let out_chunk = self.out_chunk([n, out_channels, out_h, out_w])?;
        Ok(self.with(self.chunks.conv2d(weight, opts, residual.map(|r| &r.chunks), out_chunk)?))
    }

    fn group_norm(&self, n: &GroupNorm, silu: bool) -> Result<Self> {
        Ok(self.with(self.chunks.group_norm(n.groups, &n.weight, &n.bias, n.eps, silu)?))
    }

    fn upsample_nearest_2x(&self) -> Result<Self> {
        let [n, c, h, w] = self.chunks.shape();
        Ok(self.with(self.chunks.upsample_nearest_2x(self.out_chunk([n, c, 2 * h, 2 * w])?)?))
    }

    fn scale(&self, factor: f32) -> Result<Self> {
        Ok(self.with(self.chunks.scale(factor)?))
    }

    fn whole(&self, what: &str) -> Result<Tensor> {
        match self.chunks.as_whole() {
            Some(t) => Ok(t.clone()),
            None => Err(Error::TooLarge {
                what: format!("{what} (a whole f32 activation of shape {:?})", self.chunks.shape()),
                needed: self.chunks.byte_len(),
                limit: self.plan.limit.bytes(),
            }),
        }
    }
}
