//! Launcher for `conv2d.wgsl`: 2-d convolution of NCHW f32 activations by f32,
//! packed-f16, q8 or q4 weights, as an implicit GEMM (no im2col buffer), with an f16-math
//! variant for devices with shader-f16.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{Access, DType, Gpu, KernelKey, Launch, Tensor};
use crate::kernels::elementwise::Unary;
use crate::quant;

const SHADER: &str = "conv2d.wgsl";
const OP: &str = "conv2d";
/// How a launch tiles the output: `tm` x `tn` invocations, each an 8 x 8 register block
/// (`TM`, `TN` in the shader), so a tile of `8 tm` channels by `8 tn` pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConvTiling {
    tm: usize,
    tn: usize,
}

/// The register block's side in the shader (`RM`, `RN`).
const BLOCK: usize = super::REGISTER_BLOCK;

impl ConvTiling {
    /// The tiling that wastes least of its tile on an output of `channels` x `pixels`
    /// (`kernels::tile_threads`): 64 x 64 for SD's layers, 16 pixels wide at a 4x4 latent,
    /// 16 channels for an 8-channel output, instead of a mostly empty 64 x 64 tile.
    fn for_output(channels: usize, pixels: usize) -> ConvTiling {
        ConvTiling { tm: super::tile_threads(channels), tn: super::tile_threads(pixels) }
    }

    fn defines(&self) -> [(&'static str, String); 2] {
        [("TM", self.tm.to_string()), ("TN", self.tn.to_string())]
    }

    /// Every tiling `for_output` can pick, for shader validation.
    fn all() -> impl Iterator<Item = ConvTiling> {
        super::TILE_THREADS.into_iter().flat_map(|tm| super::TILE_THREADS.into_iter().map(move |tn| ConvTiling { tm, tn }))
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    channels: u32,
    height: u32,
    width: u32,
    out_channels: u32,
    kernel_h: u32,
    kernel_w: u32,
    out_h: u32,
    out_w: u32,
    stride: u32,
    pad_top: u32,
    pad_left: u32,
    k: u32,
    w_first_row: u32,
    w_first_col: u32,
    w_stride: u32,
    bias_offset: u32,
    w_row_words: u32,
    channel_add_stride: u32,
    epilogue: u32,
    activation: u32,
}

/// `Params::epilogue` bits, as conv2d.wgsl's `EPILOGUE_*` (the bias's: `kernels::bias_epilogue_bits`).
const EPILOGUE_CHANNEL_ADD: u32 = 4;
const EPILOGUE_RESIDUAL: u32 = 8;
const EPILOGUE_CHANNELS_LAST: u32 = 16;

/// How to convolve: stride, zero padding, an optional bias, what the epilogue adds and
/// the multiply precision.
#[derive(Debug, Clone, Copy)]
pub struct Conv2dOptions<'a> {
    /// The same stride in both directions (SD uses 1, and 2 for downsampling).
    pub stride: usize,
    /// Zero padding `[top, bottom, left, right]`. Asymmetric padding covers the VAE
    /// encoder's downsampler, which pads `(0, 1, 0, 1)` before a padding-0 stride-2 conv:
    /// that is `[0, 1, 0, 1]` here (torch's `F.pad` order is left, right, top, bottom).
    pub padding: [usize; 4],
    /// `[out_channels]`, f32 or packed f16.
    pub bias: Option<&'a Tensor>,
    /// `[N, out_channels]` f32, added to every pixel of its sample and channel after the
    /// bias (a resnet block's projected time embedding).
    pub channel_add: Option<&'a Tensor>,
    /// f32 of the output's shape, added after the bias and channel values (a residual
    /// connection).
    pub residual: Option<&'a Tensor>,
    /// Applied last, after the residual (TAESD's blocks end `relu(conv(h) + x)`). Not with
    /// a partial sum (`ConvPart::accumulate`), whose parts see no finished value.
    pub activation: Option<Unary>,
    /// Tiles and products in f16 (sums stay f32); honoured only when the device has
    /// shader-f16, otherwise the f32 kernel runs.
    pub f16_math: bool,
    /// The output (and the residual) laid out `[N, OH, OW, OC]`: a 1x1 conv from an image
    /// to its tokens writes them with no permute after it.
    pub channels_last: bool,
}

impl<'a> Conv2dOptions<'a> {
    /// `stride`, `padding` on every side, no bias.
    pub fn new(stride: usize, padding: usize) -> Self {
        Self {
            stride,
            padding: [padding; 4],
            bias: None,
            channel_add: None,
            residual: None,
            activation: None,
            f16_math: false,
            channels_last: false,
        }
    }

    pub fn with_bias(self, bias: &'a Tensor) -> Self {
        Self { bias: Some(bias), ..self }
    }

    pub fn with_channel_add(self, channel_add: Option<&'a Tensor>) -> Self {
        Self { channel_add, ..self }
    }

    pub fn with_residual(self, residual: Option<&'a Tensor>) -> Self {
        Self { residual, ..self }
    }

    pub fn with_activation(self, activation: Option<Unary>) -> Self {
        Self { activation, ..self }
    }

    pub fn with_f16_math(self, on: bool) -> Self {
        Self { f16_math: on, ..self }
    }
}

impl Default for Conv2dOptions<'_> {
    fn default() -> Self {
        Self::new(1, 0)
    }
}

/// The output height and width of a convolution, or why there is none.
pub fn output_size(height: usize, width: usize, kernel: [usize; 2], stride: usize, padding: [usize; 4]) -> Result<[usize; 2]> {
    if stride == 0 {
        return Err(Error::shape(OP, "stride must be at least 1"));
    }
    let [top, bottom, left, right] = padding;
    let (padded_h, padded_w) = (height.saturating_add(top).saturating_add(bottom), width.saturating_add(left).saturating_add(right));
    // The shader computes input coordinates as i32.
    if padded_h.max(padded_w).saturating_mul(stride) > i32::MAX as usize {
        return Err(Error::shape(OP, format!("padded size {padded_h}x{padded_w} with stride {stride} is too large")));
    }
    if kernel[0] == 0 || kernel[1] == 0 || padded_h < kernel[0] || padded_w < kernel[1] {
        return Err(Error::shape(OP, format!("a {}x{} kernel does not fit the padded {padded_h}x{padded_w} input", kernel[0], kernel[1])));
    }
    Ok([(padded_h - kernel[0]) / stride + 1, (padded_w - kernel[1]) / stride + 1])
}

fn dims4(what: &str, t: &Tensor) -> Result<[usize; 4]> {
    t.shape().try_into().map_err(|_| Error::shape(OP, format!("{what} must be 4-d, got {:?}", t.shape())))
}

/// The shader indexes with u32.
fn check_indexable(what: &str, shape: &[usize]) -> Result<()> {
    if shape.iter().product::<usize>() > u32::MAX as usize {
        return Err(Error::shape(OP, format!("{what} {shape:?} has more elements than u32 indexing reaches")));
    }
    Ok(())
}

/// Workgroups: x over pixel tiles, y over output-channel tiles, z over the batch.
fn workgroups(tiling: ConvTiling, batch: usize, out_channels: usize, pixels: usize) -> [u32; 3] {
    [pixels.div_ceil(BLOCK * tiling.tn), out_channels.div_ceil(BLOCK * tiling.tm), batch].map(|n| n.min(u32::MAX as usize) as u32)
}

/// The block of a larger weight a partial convolution (`conv2d_into`) uses, and how it
/// writes: the input's channels are the weight's input channels `in_start..`, the
/// output's channels its output channels `out_start..` (and the bias's entries from
/// `out_start`). Summing parts over input-channel chunks, or writing output-channel
/// chunks, splits a convolution whose tensors are too large to bind whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConvPart {
    pub in_start: usize,
    pub out_start: usize,
    /// Add to the output's contents instead of overwriting them. The bias, if given, is
    /// added too: pass it with one part of a sum only.
    pub accumulate: bool,
}

/// The output's shape, `[N, OC, OH, OW]`, or `[N, OH, OW, OC]` channels last.
fn output_shape(opts: &Conv2dOptions, batch: usize, out_channels: usize, [out_h, out_w]: [usize; 2]) -> [usize; 4] {
    if opts.channels_last { [batch, out_h, out_w, out_channels] } else { [batch, out_channels, out_h, out_w] }
}

/// `x` `[N, C, H, W]` f32 convolved with `weight` `[OC, C, KH, KW]` (f32, packed f16,
/// q8 or q4), plus the optional bias: `[N, OC, OH, OW]` f32 (or `[N, OH, OW, OC]`, as
/// `opts.channels_last` says).
pub fn conv2d(gpu: &Gpu, x: &Tensor, weight: &Tensor, opts: &Conv2dOptions) -> Result<Tensor> {
    let [batch, channels, _, _] = dims4("input", x)?;
    let [out_channels, weight_channels, _, _] = dims4("weight", weight)?;
    if weight_channels != channels {
        return Err(Error::shape(
            OP,
            format!("weight {:?} expects {weight_channels} input channels, input {:?} has {channels}", weight.shape(), x.shape()),
        ));
    }
    let (params, out_size) = checked_params(x, weight, opts, ConvPart::default(), out_channels)?;
    let out = gpu.empty(&output_shape(opts, batch, out_channels, out_size), DType::F32)?;
    launch(gpu, x, weight, opts, &params, false, &out)?;
    Ok(out)
}

/// One part of a convolution, into `out` `[N, OC', OH, OW]` (or channels last; f32,
/// allocated by the caller, possibly a view): `x` `[N, C', H, W]` convolved with the block
/// `weight[part.out_start.., part.in_start..]` of `OC'` output and `C'` input channels,
/// plus `bias[part.out_start..]` if given; written over `out` or added to it.
pub fn conv2d_into(gpu: &Gpu, x: &Tensor, weight: &Tensor, opts: &Conv2dOptions, part: ConvPart, out: &Tensor) -> Result<()> {
    let [batch, _, _, _] = dims4("input", x)?;
    let out_channels = dims4("output", out)?[if opts.channels_last { 3 } else { 1 }];
    let (params, out_size) = checked_params(x, weight, opts, part, out_channels)?;
    let shape = output_shape(opts, batch, out_channels, out_size);
    if out.dtype() != DType::F32 || out.shape() != shape {
        return Err(Error::shape(OP, format!("output must be f32 {shape:?}, got {:?} {:?}", out.dtype(), out.shape())));
    }
    launch(gpu, x, weight, opts, &params, part.accumulate, out)
}

/// Checks the operands of a convolution computing `out_channels` output channels of
/// `part`, and returns the kernel's parameters and the output's height and width.
fn checked_params(x: &Tensor, weight: &Tensor, opts: &Conv2dOptions, part: ConvPart, out_channels: usize) -> Result<(Params, [usize; 2])> {
    let [batch, channels, height, width] = dims4("input", x)?;
    let [weight_out, weight_channels, kernel_h, kernel_w] = dims4("weight", weight)?;
    if x.dtype() != DType::F32 {
        return Err(Error::shape(OP, format!("input must be f32, got {:?}", x.dtype())));
    }
    if !weight.dtype().is_quantized() {
        weight.is_f16_float(OP)?;
    }
    if let Some(bias) = opts.bias {
        bias.is_f16_float(OP)?;
    }
    if part.in_start.saturating_add(channels) > weight_channels || part.out_start.saturating_add(out_channels) > weight_out {
        return Err(Error::shape(
            OP,
            format!(
                "input channels {}..{} and output channels {}..{} are not all in weight {:?}",
                part.in_start,
                part.in_start.saturating_add(channels),
                part.out_start,
                part.out_start.saturating_add(out_channels),
                weight.shape()
            ),
        ));
    }
    if let Some(bias) = opts.bias.filter(|b| b.shape() != [weight_out]) {
        return Err(Error::shape(OP, format!("bias must be [{weight_out}], got {:?}", bias.shape())));
    }
    if let Some(add) = opts.channel_add.filter(|a| a.dtype() != DType::F32 || a.shape() != [batch, weight_out]) {
        return Err(Error::shape(OP, format!("channel_add must be f32 [{batch}, {weight_out}], got {:?} {:?}", add.dtype(), add.shape())));
    }
    let activation = match opts.activation {
        Some(_) if part.accumulate => return Err(Error::shape(OP, "an activation applies to a finished sum, not to one part of it")),
        Some(act) => {
            act.epilogue_code().ok_or_else(|| Error::shape(OP, format!("only parameter-free activations are fused, not {act:?}")))?
        }
        None => 0,
    };
    let [out_h, out_w] = output_size(height, width, [kernel_h, kernel_w], opts.stride, opts.padding)?;
    let out_shape = output_shape(opts, batch, out_channels, [out_h, out_w]);
    if let Some(residual) = opts.residual.filter(|r| r.dtype() != DType::F32 || r.shape() != out_shape) {
        return Err(Error::shape(
            OP,
            format!("residual must be f32 of the output's shape {out_shape:?}, got {:?} {:?}", residual.dtype(), residual.shape()),
        ));
    }
    for (what, shape) in [("input", x.shape()), ("weight", weight.shape()), ("output", &out_shape)] {
        check_indexable(what, shape)?;
    }
    let taps = kernel_h * kernel_w;
    let bias_bits = super::bias_epilogue_bits(opts.bias);
    let params = Params {
        channels: channels as u32,
        height: height as u32,
        width: width as u32,
        out_channels: out_channels as u32,
        kernel_h: kernel_h as u32,
        kernel_w: kernel_w as u32,
        out_h: out_h as u32,
        out_w: out_w as u32,
        stride: opts.stride as u32,
        pad_top: opts.padding[0] as u32,
        pad_left: opts.padding[2] as u32,
        k: (channels * taps) as u32,
        // Inside the weight, whose element count check_indexable bounded.
        w_first_row: part.out_start as u32,
        w_first_col: (part.in_start * taps) as u32,
        w_stride: (weight_channels * taps) as u32,
        bias_offset: part.out_start as u32,
        w_row_words: quant::row_words(weight.dtype(), weight_channels * taps) as u32,
        channel_add_stride: weight_out as u32,
        epilogue: bias_bits
            | if opts.channel_add.is_some() { EPILOGUE_CHANNEL_ADD } else { 0 }
            | if opts.residual.is_some() { EPILOGUE_RESIDUAL } else { 0 }
            | if opts.channels_last { EPILOGUE_CHANNELS_LAST } else { 0 },
        activation,
    };
    Ok((params, [out_h, out_w]))
}

fn launch(gpu: &Gpu, x: &Tensor, weight: &Tensor, opts: &Conv2dOptions, params: &Params, accumulate: bool, out: &Tensor) -> Result<()> {
    // An absent operand binds `x`, which the epilogue then never reads.
    let [bias, channel_add, residual] = [opts.bias, opts.channel_add, opts.residual].map(|t| (t.unwrap_or(x), Access::Read));
    let bindings = [(x, Access::Read), (weight, Access::Read), bias, channel_add, residual, (out, Access::ReadWrite)];
    let [batch, out_channels, out_h, out_w] = [out.shape()[0], params.out_channels as usize, params.out_h as usize, params.out_w as usize];
    let variant = Variant {
        weight: weight.dtype(),
        f16_math: opts.f16_math && gpu.has_shader_f16(),
        accumulate,
        tiling: ConvTiling::for_output(out_channels, out_h * out_w),
    };
    let key = variant.key();
    gpu.launch(Launch {
        shader: SHADER,
        entry: key.entry,
        defines: key.defines,
        params: bytemuck::bytes_of(params),
        bindings: &bindings,
        workgroups: workgroups(variant.tiling, batch, out_channels, out_h * out_w),
    })
}

/// The compile-time choices of one kernel variant (the epilogue is not one: its operands
/// and activation are switched by parameters).
#[derive(Debug, Clone, Copy)]
struct Variant {
    weight: DType,
    f16_math: bool,
    accumulate: bool,
    tiling: ConvTiling,
}

impl Variant {
    fn key(self) -> KernelKey {
        let flag = |name: &'static str| (name, String::new());
        let mut defines = Vec::new();
        match self.weight {
            DType::F16 => defines.push(flag("W_F16")),
            DType::Q8 => defines.push(flag("WEIGHT_QUANT")),
            DType::Q4 => defines.extend([flag("WEIGHT_QUANT"), flag("WEIGHT_Q4")]),
            DType::F32 | DType::U32 => {}
        }
        if self.f16_math {
            defines.push(flag("F16_MATH"));
        }
        if self.accumulate {
            defines.push(flag("ACCUMULATE"));
        }
        defines.extend(self.tiling.defines());
        // x, the weight, the bias, the per-channel values, the residual (read), the output.
        let bindings = vec![Access::Read, Access::Read, Access::Read, Access::Read, Access::Read, Access::ReadWrite];
        KernelKey { shader: SHADER, entry: "conv2d", defines, bindings }
    }
}

/// Every variant this module can launch, for shader validation.
pub fn variants() -> Vec<KernelKey> {
    let plain = Variant { weight: DType::F32, f16_math: false, accumulate: false, tiling: ConvTiling { tm: 8, tn: 8 } };
    let mut keys = Vec::new();
    for (f16_math, accumulate) in [(false, false), (false, true), (true, false), (true, true)] {
        for weight in [DType::F32, DType::F16, DType::Q8, DType::Q4] {
            keys.push(Variant { weight, f16_math, accumulate, ..plain }.key());
        }
    }
    // The other tilings change only constants: each once.
    for tiling in ConvTiling::all() {
        keys.push(Variant { weight: DType::Q8, tiling, ..plain }.key());
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_fit_small_outputs() {
        // SD-sized layers take the 64 x 64 tile; the built-in model's 4x4 latents a 16-pixel
        // one, its 96-channel layers 32-channel tiles (no padding) and its 8-channel output
        // a 16-channel one.
        assert_eq!(ConvTiling::for_output(320, 4096), ConvTiling { tm: 8, tn: 8 });
        assert_eq!(ConvTiling::for_output(96, 16), ConvTiling { tm: 4, tn: 2 });
        assert_eq!(ConvTiling::for_output(8, 256), ConvTiling { tm: 2, tn: 8 });
        assert_eq!(ConvTiling::for_output(64, 64), ConvTiling { tm: 8, tn: 8 });
        assert_eq!(ConvTiling::for_output(3, 1), ConvTiling { tm: 2, tn: 2 });
    }

    /// The WebGPU default (and common) per-dimension workgroup limit.
    const MAX_WORKGROUPS: u32 = 65535;

    #[test]
    fn full_size_stable_diffusion_convs_fit_the_grid() {
        // (batch, out channels, output pixels): the VAE decoder at 512x512, UNet convs
        // at the 64x64 and 8x8 latent resolutions (batch 2 for classifier-free guidance).
        let cases = [(1, 128, 512 * 512), (1, 256, 512 * 512), (1, 3, 512 * 512), (2, 1280, 8 * 8), (2, 320, 64 * 64), (2, 4, 64 * 64)];
        for (batch, out_channels, pixels) in cases {
            let grid = workgroups(ConvTiling::for_output(out_channels, pixels), batch, out_channels, pixels);
            assert!(grid.iter().all(|&n| n <= MAX_WORKGROUPS), "{batch}x{out_channels}x{pixels}: {grid:?}");
        }
        assert_eq!(workgroups(ConvTiling::for_output(128, 512 * 512), 1, 128, 512 * 512), [4096, 2, 1]);
    }

    #[test]
    fn output_size_follows_torch() {
        assert_eq!(output_size(9, 11, [3, 3], 1, [1; 4]).unwrap(), [9, 11]);
        assert_eq!(output_size(9, 11, [3, 3], 2, [1; 4]).unwrap(), [5, 6]);
        // The VAE encoder's downsampler: pad right/bottom by one, then stride 2, padding 0.
        assert_eq!(output_size(512, 512, [3, 3], 2, [0, 1, 0, 1]).unwrap(), [256, 256]);
        assert!(output_size(2, 2, [3, 3], 1, [0; 4]).is_err());
        assert!(output_size(9, 9, [3, 3], 0, [1; 4]).is_err());
        assert!(output_size(9, 9, [3, 3], 1, [usize::MAX; 4]).is_err());
    }
}
