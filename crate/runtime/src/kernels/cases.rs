//! The kernels' cases, one table per kernel: `bench kernels` times them
//! (`kernels::bench`) and the tests check them against the CPU reference (the built-in
//! model's compute cases in tests/conv2d.rs, matmul.rs, attention.rs, norm.rs; the
//! bandwidth cases at reduced scale in tests/layout.rs), so every shape the benchmark
//! reports is one the tests have proven right. The compute tables are data: their launch
//! and reference belong to their users. A bandwidth case is one call, so it carries it.

use super::elementwise::{self as ew, Unary};
use super::{embedding, layout, softmax};
use crate::error::Result;
use crate::gpu::{DType, Gpu, Tensor};

/// Which shapes the cases use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shapes {
    /// A quarter of Stable Diffusion 1.5's 512x512 activations (a CPU driver finishes in minutes).
    Reduced,
    /// Stable Diffusion 1.5 at 512x512 with classifier-free guidance (batch 2).
    Full,
    /// The built-in model's own layers (16x16 latents, 64 and 96 channels, head dim 32,
    /// batch 2), weights stored as its packages store them.
    Embedded,
}

impl Shapes {
    /// The latents' side and the tokens at the first level (`Embedded` has its own tables).
    pub(super) fn sd_sizes(self) -> (usize, usize) {
        if self == Shapes::Full { (64, 4096) } else { (32, 1024) }
    }
}

/// A conv2d on `[batch, in_channels, size, size]` with a square kernel and padding
/// `kernel / 2`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conv2dCase {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub size: usize,
    pub kernel: usize,
    pub stride: usize,
    pub weights: DType,
    pub f16_math: bool,
    pub bias: bool,
    pub activation: Option<Unary>,
}

impl Conv2dCase {
    fn new(batch: usize, [in_channels, out_channels]: [usize; 2], size: usize, [kernel, stride]: [usize; 2], weights: DType) -> Self {
        Self { batch, in_channels, out_channels, size, kernel, stride, weights, f16_math: false, bias: false, activation: None }
    }

    pub fn name(&self) -> String {
        let weights = self.weights.name();
        let mut name = format!("conv2d ({weights} weights");
        for (on, what) in [(self.bias, ", bias"), (self.activation == Some(Unary::Relu), ", relu"), (self.f16_math, ", f16 math")] {
            if on {
                name += what;
            }
        }
        name + ")"
    }

    pub fn shape(&self) -> String {
        let Self { batch, in_channels, out_channels, size, kernel, stride, .. } = *self;
        format!("{batch}x{in_channels}x{size}x{size} k{kernel} s{stride} -> {out_channels}")
    }

    pub fn padding(&self) -> usize {
        self.kernel / 2
    }

    pub fn flops(&self) -> f64 {
        let out = self.size.div_ceil(self.stride);
        2.0 * (self.batch * self.out_channels * out * out * self.in_channels * self.kernel * self.kernel) as f64
    }
}

pub fn conv2d(shapes: Shapes) -> Vec<Conv2dCase> {
    if shapes == Shapes::Embedded {
        let layers: [([usize; 2], usize, [usize; 2]); 8] = [
            ([8, 64], 16, [3, 1]),
            ([64, 64], 16, [3, 1]),
            ([64, 64], 16, [3, 2]),
            ([160, 64], 16, [3, 1]),
            ([160, 64], 16, [1, 1]),
            ([96, 96], 8, [3, 1]),
            ([192, 96], 4, [3, 1]),
            ([64, 8], 16, [3, 1]),
        ];
        let mut cases: Vec<Conv2dCase> = layers
            .into_iter()
            .map(|(channels, size, kernel)| {
                // Rows too short for q8 blocks stay f16, as the package keeps them.
                let weights = if (channels[0] * kernel[0] * kernel[0]).is_multiple_of(32) { DType::Q8 } else { DType::F16 };
                Conv2dCase { bias: true, ..Conv2dCase::new(2, channels, size, kernel, weights) }
            })
            .collect();
        // The preview decoder's convs (one image, f16 weights, a ReLU in the epilogue): its
        // blocks at the latents' 16x16, its last two convs at 32x32.
        cases.extend([(16, 16), (16, 32), (3, 32)].map(|(out, size)| Conv2dCase {
            bias: true,
            activation: Some(Unary::Relu),
            ..Conv2dCase::new(1, [16, out], size, [3, 1], DType::F16)
        }));
        return cases;
    }
    let (hw, _) = shapes.sd_sizes();
    let sd = |weights| Conv2dCase::new(2, [320, 320], hw, [3, 1], weights);
    vec![
        sd(DType::F16),
        Conv2dCase { f16_math: true, ..sd(DType::F16) },
        sd(DType::Q8),
        sd(DType::Q4),
        Conv2dCase { kernel: 1, ..sd(DType::F16) },
        Conv2dCase { stride: 2, ..sd(DType::F16) },
        Conv2dCase::new(1, [128, 128], hw * 4, [3, 1], DType::F16),
    ]
}

/// A Linear layer: `[m, k]` times a `[n, k]` weight, transposed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatmulCase {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub weights: DType,
    pub f16_math: bool,
}

impl MatmulCase {
    pub fn name(&self) -> String {
        if self.f16_math { "matmul (linear, f16 math)".into() } else { format!("matmul (linear, {} weights)", self.weights.name()) }
    }

    pub fn shape(&self) -> String {
        let Self { m, k, n, .. } = *self;
        format!("{m}x{k} . {k}x{n}")
    }

    pub fn flops(&self) -> f64 {
        2.0 * (self.m * self.k * self.n) as f64
    }
}

pub fn matmul(shapes: Shapes) -> Vec<MatmulCase> {
    let case = |m, k, n, weights| MatmulCase { m, k, n, weights, f16_math: false };
    if shapes == Shapes::Embedded {
        // The projections at 256 tokens (batch 2), of the text (154 tokens), at 8x8 (128).
        return [(512, 64, 64), (512, 64, 512), (512, 256, 64), (154, 64, 64), (128, 96, 96)]
            .map(|(m, k, n)| case(m, k, n, DType::Q8))
            .to_vec();
    }
    let (_, tokens) = shapes.sd_sizes();
    vec![
        case(2 * tokens, 320, 320, DType::F32),
        case(2 * tokens, 320, 1280, DType::F32),
        case(2 * tokens, 320, 1280, DType::F16),
        MatmulCase { f16_math: true, ..case(2 * tokens, 320, 1280, DType::F16) },
        case(2 * tokens, 320, 1280, DType::Q8),
        case(2 * tokens, 320, 1280, DType::Q4),
        case(154, 768, 3072, DType::F16),
        case(154, 768, 3072, DType::Q8),
        case(154, 768, 3072, DType::Q4),
    ]
}

/// Fused multi-head attention: queries `[batch, q_len, heads * head_dim]`, keys and values
/// `[batch, kv_len, heads * head_dim]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionCase {
    pub batch: usize,
    pub heads: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub head_dim: usize,
}

impl AttentionCase {
    pub fn shape(&self) -> String {
        let Self { batch, heads, q_len, kv_len, head_dim } = *self;
        format!("B{batch} H{heads} {q_len}x{kv_len} d{head_dim}")
    }

    pub fn flops(&self) -> f64 {
        4.0 * (self.batch * self.heads * self.q_len * self.kv_len * self.head_dim) as f64
    }
}

pub fn attention(shapes: Shapes) -> Vec<AttentionCase> {
    let case = |batch, heads, q_len, kv_len, head_dim| AttentionCase { batch, heads, q_len, kv_len, head_dim };
    if shapes == Shapes::Embedded {
        return vec![case(2, 2, 256, 256, 32), case(2, 2, 256, 77, 32), case(2, 3, 64, 64, 32)];
    }
    let (_, tokens) = shapes.sd_sizes();
    // Self- and cross-attention at the first level, and the VAE's single wide head.
    vec![case(2, 8, tokens, tokens, 40), case(2, 8, tokens, 77, 40), case(1, 1, tokens, tokens, 512)]
}

/// Group norm (32 groups) with the SiLU fused, on `[batch, channels, size, size]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupNormCase {
    pub batch: usize,
    pub channels: usize,
    pub size: usize,
    pub groups: usize,
}

impl GroupNormCase {
    pub fn shape(&self) -> String {
        let Self { batch, channels, size, groups } = *self;
        format!("[{batch},{channels},{size},{size}] g{groups}")
    }

    /// Read twice (statistics, then the normalisation) and written once.
    pub fn bytes(&self) -> f64 {
        12.0 * (self.batch * self.channels * self.size * self.size) as f64
    }
}

pub fn group_norm(shapes: Shapes) -> Vec<GroupNormCase> {
    let case = |channels, size| GroupNormCase { batch: 2, channels, size, groups: 32 };
    match shapes {
        Shapes::Embedded => vec![case(64, 16), case(160, 16), case(96, 4)],
        _ => vec![case(320, shapes.sd_sizes().0)],
    }
}

/// Layer norm over the last dimension of `[batch, rows, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerNormCase {
    pub batch: usize,
    pub rows: usize,
    pub width: usize,
}

impl LayerNormCase {
    pub fn shape(&self) -> String {
        let Self { batch, rows, width } = *self;
        format!("[{batch},{rows},{width}]")
    }

    pub fn bytes(&self) -> f64 {
        8.0 * (self.batch * self.rows * self.width) as f64
    }
}

pub fn layer_norm(shapes: Shapes) -> Vec<LayerNormCase> {
    match shapes {
        Shapes::Embedded => vec![LayerNormCase { batch: 2, rows: 256, width: 64 }],
        _ => vec![LayerNormCase { batch: 2, rows: shapes.sd_sizes().1, width: 320 }],
    }
}

/// An element-wise or layout launch: no arithmetic to speak of, so its rate is memory
/// bandwidth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BandwidthCase {
    Silu([usize; 4]),
    /// `x + bias`, the bias `[batch, channels, 1, 1]` broadcast over the pixels (a
    /// resnet's time embedding).
    AddBroadcast([usize; 4]),
    /// `0.5 x + 0.3 y + 0.2 z`: a sampler's update of the latents.
    Axpby([usize; 4]),
    /// Over the last dimension.
    Softmax([usize; 3]),
    /// A skip connection: `[batch, channels[0], size, size]` then `channels[1]`.
    ConcatChannels {
        batch: usize,
        channels: [usize; 2],
        size: usize,
    },
    Upsample2x([usize; 4]),
    PermuteToNhwc([usize; 4]),
    /// `[batch]` timesteps to `[batch, dim]` as Stable Diffusion embeds them (cosines
    /// first, no shift, max period 10000).
    TimestepEmbedding {
        batch: usize,
        dim: usize,
    },
}

impl BandwidthCase {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Silu(_) => "silu",
            Self::AddBroadcast(_) => "add (broadcast)",
            Self::Axpby(_) => "axpby (3 terms)",
            Self::Softmax(_) => "softmax",
            Self::ConcatChannels { .. } => "concat (channels)",
            Self::Upsample2x(_) => "upsample nearest 2x",
            Self::PermuteToNhwc(_) => "permute NCHW->NHWC",
            Self::TimestepEmbedding { .. } => "timestep embedding",
        }
    }

    pub fn shape(&self) -> String {
        let list = |s: &[usize]| s.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        match *self {
            Self::AddBroadcast(s) => format!("[{}]+[{},{},1,1]", list(&s), s[0], s[1]),
            Self::ConcatChannels { batch, channels: [c0, c1], size } => format!("[{batch},{c0}|{c1},{size},{size}]"),
            Self::TimestepEmbedding { batch, dim } => format!("[{batch}] -> [{batch},{dim}]"),
            _ => format!("[{}]", list(&self.inputs()[0])),
        }
    }

    /// The operands' shapes, in the order `launch` takes them.
    pub fn inputs(&self) -> Vec<Vec<usize>> {
        match *self {
            Self::Silu(s) | Self::Upsample2x(s) | Self::PermuteToNhwc(s) => vec![s.to_vec()],
            Self::AddBroadcast(s) => vec![s.to_vec(), vec![s[0], s[1], 1, 1]],
            Self::Axpby(s) => vec![s.to_vec(); 3],
            Self::Softmax(s) => vec![s.to_vec()],
            Self::ConcatChannels { batch, channels, size } => channels.map(|c| vec![batch, c, size, size]).to_vec(),
            Self::TimestepEmbedding { batch, .. } => vec![vec![batch]],
        }
    }

    pub fn output(&self) -> Vec<usize> {
        match *self {
            Self::Upsample2x([b, c, h, w]) => vec![b, c, 2 * h, 2 * w],
            Self::PermuteToNhwc([b, c, h, w]) => vec![b, h, w, c],
            Self::ConcatChannels { batch, channels: [c0, c1], size } => vec![batch, c0 + c1, size, size],
            Self::TimestepEmbedding { batch, dim } => vec![batch, dim],
            _ => self.inputs().swap_remove(0),
        }
    }

    /// Bytes read plus bytes written, all f32.
    pub fn bytes(&self) -> f64 {
        let elements: usize = self.inputs().iter().chain([&self.output()]).map(|s| s.iter().product::<usize>()).sum();
        4.0 * elements as f64
    }

    /// The launch, on tensors of the shapes `inputs` gives.
    pub fn launch(&self, gpu: &Gpu, x: &[Tensor]) -> Result<Tensor> {
        match *self {
            Self::Silu(_) => ew::unary(gpu, &x[0], Unary::Silu),
            Self::AddBroadcast(_) => ew::add(gpu, &x[0], &x[1]),
            Self::Axpby(_) => ew::axpby(gpu, 0.5, &x[0], 0.3, &x[1], Some((0.2, &x[2]))),
            Self::Softmax(_) => softmax::softmax(gpu, &x[0]),
            Self::ConcatChannels { .. } => layout::concat(gpu, &[&x[0], &x[1]], 1),
            Self::Upsample2x(_) => layout::upsample_nearest_2x(gpu, &x[0]),
            Self::PermuteToNhwc(_) => layout::permute(gpu, &x[0], &[0, 2, 3, 1]),
            Self::TimestepEmbedding { dim, .. } => embedding::timestep_embedding(gpu, &x[0], dim, true, 0.0, 1.0, 10000.0),
        }
    }
}

/// The bandwidth-bound launches at Stable Diffusion's first level (none for `Embedded`:
/// the built-in model's are too small to say anything about bandwidth).
pub fn bandwidth(shapes: Shapes) -> Vec<BandwidthCase> {
    if shapes == Shapes::Embedded {
        return Vec::new();
    }
    let (hw, tokens) = shapes.sd_sizes();
    let level = [2, 320, hw, hw];
    vec![
        BandwidthCase::Silu(level),
        BandwidthCase::AddBroadcast(level),
        BandwidthCase::Axpby([2, 4, hw, hw]),
        BandwidthCase::Softmax([16, tokens, 77]),
        BandwidthCase::ConcatChannels { batch: 2, channels: [640, 320], size: hw },
        BandwidthCase::Upsample2x([2, 640, hw / 2, hw / 2]),
        BandwidthCase::PermuteToNhwc(level),
        BandwidthCase::TimestepEmbedding { batch: 2, dim: 320 },
    ]
}
