//! An NCHW activation held as consecutive channel chunks, each a tensor of its own that
//! one storage binding can take, and the launchers that run on it chunk by chunk (conv,
//! group norm, upsampling, addition, scaling). At 512x512 the SD decoder makes
//! [1, 256, 512, 512] f32 activations (256 MiB) while WebGPU binds 128 MiB: held as two
//! chunks of 128 channels, every layer still runs on whole bindings.
//!
//! Chunks are separate tensors rather than views of one large buffer, so the kernels that
//! allocate their outputs (group norm, upsampling, addition) need no output-offset
//! variants, and no buffer ever exceeds the binding limit (nor WebGPU's default
//! `maxBufferSize` of 256 MiB). Views serve where a whole tensor is cut into chunks.
//! Each operation gives the same numbers as on the whole tensor, except that a
//! convolution over several input chunks sums their partial results in f32.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::kernels::conv2d::{Conv2dOptions, ConvPart, conv2d_into, output_size};
use crate::kernels::elementwise as ew;
use crate::kernels::layout;
use crate::kernels::norm;

const OP: &str = "ChannelChunks";

/// `[N, C, H, W]` f32 as chunks of consecutive channels, in order, covering all of them.
#[derive(Clone)]
pub struct ChannelChunks {
    shape: [usize; 4],
    /// Each chunk's first channel and its `[N, len, H, W]` tensor.
    chunks: Vec<(usize, Tensor)>,
}

impl std::fmt::Debug for ChannelChunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<Range<usize>> = self.ranges().collect();
        write!(f, "ChannelChunks({:?}, channels {ranges:?})", self.shape)
    }
}

/// `t`'s shape as `[N, C, H, W]` of f32, or a shape error naming `what`.
fn nchw(what: &str, t: &Tensor) -> Result<[usize; 4]> {
    match (t.shape(), t.dtype()) {
        (&[n, c, h, w], DType::F32) => Ok([n, c, h, w]),
        (shape, dtype) => Err(Error::shape(OP, format!("{what} must be f32 [N, C, H, W], got {dtype:?} {shape:?}"))),
    }
}

/// `t.narrow(axis, start, len)`: a view where the device can bind one, else a copy.
fn view_or_copy(t: &Tensor, axis: usize, start: usize, len: usize) -> Result<Tensor> {
    t.view_narrow(axis, start, len).or_else(|_| layout::narrow(t.gpu(), t, axis, start, len))
}

impl ChannelChunks {
    /// The tensor as a single chunk.
    pub fn whole(x: Tensor) -> Result<Self> {
        let shape = nchw("the tensor", &x)?;
        Ok(Self { shape, chunks: vec![(0, x)] })
    }

    /// `x` cut into chunks of `chunk_channels` (the last may be smaller): views of it where
    /// the slice is contiguous and aligned (batch 1), copies otherwise.
    pub fn split(x: &Tensor, chunk_channels: usize) -> Result<Self> {
        let shape = nchw("the tensor", x)?;
        let channels = shape[1];
        if chunk_channels >= channels {
            return Self::whole(x.clone());
        }
        let chunks = chunk_starts(channels, chunk_channels)?
            .map(|start| Ok((start, view_or_copy(x, 1, start, chunk_channels.min(channels - start))?)))
            .collect::<Result<_>>()?;
        Ok(Self { shape, chunks })
    }

    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// The chunks' channel ranges, in order.
    pub fn ranges(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        self.chunks.iter().map(|(start, t)| *start..start + t.shape()[1])
    }

    /// Each chunk with its channel range.
    pub fn chunks(&self) -> impl Iterator<Item = (Range<usize>, &Tensor)> + '_ {
        self.ranges().zip(self.chunks.iter().map(|(_, t)| t))
    }

    /// The tensor, when it is held in one chunk.
    pub fn as_whole(&self) -> Option<&Tensor> {
        match self.chunks.as_slice() {
            [(_, t)] => Some(t),
            _ => None,
        }
    }

    /// Bytes all the chunks hold together.
    pub fn byte_len(&self) -> u64 {
        self.chunks.iter().map(|(_, t)| t.byte_len()).sum()
    }

    fn gpu(&self) -> &Gpu {
        self.chunks[0].1.gpu()
    }

    /// Channels `range` as one tensor: a chunk itself, a view or copy of part of one, or
    /// the pieces of several concatenated (which must then fit one binding).
    pub fn channels(&self, range: Range<usize>) -> Result<Tensor> {
        if range.start >= range.end || range.end > self.shape[1] {
            return Err(Error::shape(OP, format!("channels {range:?} of {:?}", self.shape)));
        }
        let pieces: Vec<Tensor> = self
            .chunks()
            .filter(|(held, _)| held.start < range.end && range.start < held.end)
            .map(|(held, t)| {
                let start = range.start.max(held.start);
                view_or_copy(t, 1, start - held.start, range.end.min(held.end) - start)
            })
            .collect::<Result<_>>()?;
        match pieces.as_slice() {
            [one] => Ok(one.clone()),
            _ => layout::concat(self.gpu(), &pieces.iter().collect::<Vec<_>>(), 1),
        }
    }

    /// The values in NCHW order (reads every chunk back).
    pub async fn to_vec(&self) -> Result<Vec<f32>> {
        let [n, c, h, w] = self.shape;
        let plane = h * w;
        let mut out = vec![0.0; n * c * plane];
        for (range, t) in self.chunks() {
            let values = t.to_vec().await?;
            let len = range.len() * plane;
            for (batch, item) in values.chunks(len.max(1)).enumerate() {
                let at = (batch * c + range.start) * plane;
                out[at..at + item.len()].copy_from_slice(item);
            }
        }
        Ok(out)
    }

    /// Group normalisation (`kernels::norm::group_norm`, `groups` over all channels), chunk
    /// by chunk: each chunk must hold whole groups, whose statistics are then its own.
    pub fn group_norm(&self, groups: usize, weight: &Tensor, bias: &Tensor, eps: f32, silu: bool) -> Result<Self> {
        let channels = self.shape[1];
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(Error::shape(OP, format!("{channels} channels do not split into {groups} groups")));
        }
        let per_group = channels / groups;
        let gpu = self.gpu();
        let chunks = self
            .chunks()
            .map(|(range, x)| {
                if !range.start.is_multiple_of(per_group) || !range.len().is_multiple_of(per_group) {
                    return Err(Error::shape(OP, format!("chunk of channels {range:?} does not hold whole groups of {per_group}")));
                }
                let out = if range.len() == channels {
                    norm::group_norm(gpu, x, groups, weight, bias, eps, silu)?
                } else {
                    let (weight, bias) = affine_slices(weight, bias, &range)?;
                    norm::group_norm(gpu, x, range.len() / per_group, &weight, &bias, eps, silu)?
                };
                Ok((range.start, out))
            })
            .collect::<Result<_>>()?;
        Ok(Self { shape: self.shape, chunks })
    }

    /// `kernels::conv2d` with `weight` `[OC, C, KH, KW]`, its output held in chunks of
    /// `out_chunk_channels`: each output chunk sums one partial convolution per input chunk
    /// (what the epilogue adds, and `residual`'s channels, added with the first), reading
    /// the weight block in place. `opts.residual` must be none: the residual is chunked too.
    pub fn conv2d(
        &self,
        weight: &Tensor,
        opts: &Conv2dOptions,
        residual: Option<&ChannelChunks>,
        out_chunk_channels: usize,
    ) -> Result<Self> {
        let [n, channels, h, w] = self.shape;
        let &[out_channels, weight_channels, kernel_h, kernel_w] = weight.shape() else {
            return Err(Error::shape(OP, format!("a conv weight must be [OC, C, KH, KW], got {:?}", weight.shape())));
        };
        if weight_channels != channels {
            return Err(Error::shape(OP, format!("weight {:?} does not take the {channels} channels of {:?}", weight.shape(), self.shape)));
        }
        let [out_h, out_w] = output_size(h, w, [kernel_h, kernel_w], opts.stride, opts.padding)?;
        if opts.residual.is_some() || opts.channels_last {
            return Err(Error::shape(OP, "a chunked conv takes its residual in chunks and writes channels first"));
        }
        if let Some(residual) = residual.filter(|r| r.shape != [n, out_channels, out_h, out_w]) {
            return Err(Error::shape(
                OP,
                format!("residual {:?} is not the output's [{n}, {out_channels}, {out_h}, {out_w}]", residual.shape),
            ));
        }
        let gpu = self.gpu();
        let later_parts = Conv2dOptions { bias: None, channel_add: None, ..*opts };
        let chunks = chunk_starts(out_channels, out_chunk_channels)?
            .map(|out_start| {
                let len = out_chunk_channels.min(out_channels - out_start);
                let out = gpu.empty(&[n, len, out_h, out_w], DType::F32)?;
                let residual = residual.map(|r| r.channels(out_start..out_start + len)).transpose()?;
                let first = opts.with_residual(residual.as_ref());
                for (i, (range, x)) in self.chunks().enumerate() {
                    let part = ConvPart { in_start: range.start, out_start, accumulate: i > 0 };
                    conv2d_into(gpu, x, weight, if i == 0 { &first } else { &later_parts }, part, &out)?;
                }
                Ok((out_start, out))
            })
            .collect::<Result<_>>()?;
        Ok(Self { shape: [n, out_channels, out_h, out_w], chunks })
    }

    /// `kernels::layout::upsample_nearest_2x`, its output held in chunks of `out_chunk_channels`.
    pub fn upsample_nearest_2x(&self, out_chunk_channels: usize) -> Result<Self> {
        let [n, channels, h, w] = self.shape;
        let gpu = self.gpu();
        let chunks = chunk_starts(channels, out_chunk_channels)?
            .map(|start| {
                let x = self.channels(start..(start + out_chunk_channels).min(channels))?;
                Ok((start, layout::upsample_nearest_2x(gpu, &x)?))
            })
            .collect::<Result<_>>()?;
        Ok(Self { shape: [n, channels, 2 * h, 2 * w], chunks })
    }

    /// `self * factor`, chunk by chunk.
    pub fn scale(&self, factor: f32) -> Result<Self> {
        let gpu = self.gpu();
        let chunks = self.chunks().map(|(range, x)| Ok((range.start, ew::scale(gpu, x, factor)?))).collect::<Result<_>>()?;
        Ok(Self { shape: self.shape, chunks })
    }

    /// `self + other` (same shape), in `self`'s chunks.
    pub fn add(&self, other: &ChannelChunks) -> Result<Self> {
        if other.shape != self.shape {
            return Err(Error::shape(OP, format!("cannot add {:?} to {:?}", other.shape, self.shape)));
        }
        let gpu = self.gpu();
        let chunks = self.chunks().map(|(range, x)| Ok((range.start, ew::add(gpu, x, &other.channels(range)?)?))).collect::<Result<_>>()?;
        Ok(Self { shape: self.shape, chunks })
    }
}

/// The first channel of each chunk of `chunk_channels` out of `channels`.
fn chunk_starts(channels: usize, chunk_channels: usize) -> Result<std::iter::StepBy<Range<usize>>> {
    if chunk_channels == 0 {
        return Err(Error::shape(OP, "chunks need at least one channel"));
    }
    // An empty tensor still has one (empty) chunk.
    Ok((0..channels.max(1)).step_by(chunk_channels))
}

/// A norm's weight and bias for the channels `range`: views of both, or copies of both
/// (the norm takes them in one dtype; a copy widens f16 to f32, exactly).
fn affine_slices(weight: &Tensor, bias: &Tensor, range: &Range<usize>) -> Result<(Tensor, Tensor)> {
    let view = |t: &Tensor| t.view_narrow(0, range.start, range.len());
    if let (Ok(weight), Ok(bias)) = (view(weight), view(bias)) {
        return Ok((weight, bias));
    }
    let copy = |t: &Tensor| layout::narrow(t.gpu(), t, 0, range.start, range.len());
    Ok((copy(weight)?, copy(bias)?))
}
