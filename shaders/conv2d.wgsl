// 2-d convolution over NCHW f32 input as an implicit GEMM, per batch item:
//   out[oc, pixel] = sum_k weight[oc, k] * patch[k, pixel] (+ bias[oc])
// with k = (c, ky, kx) flattened like the weight's [OC, C, KH, KW] layout. The patch
// (im2col) matrix is never stored: each K step gathers its BK x BN slice straight from
// the input into workgroup memory, zero outside the image (that is the padding).
// A launch may use a block of a larger weight (input channels in_start.., output channels
// out_start..): w_first_row and w_first_col locate it, so a convolution can be summed over
// input-channel chunks or computed by output-channel chunks without copying weights.
// The epilogue adds, after the bias, what diffusers adds right after a conv: a value per
// (sample, output channel) (a resnet's time embedding) and a tensor of the output's shape
// (a residual), then an activation, so none costs a launch and a pass over memory of its own.
// It is chosen by parameters, not defines, so that one pipeline serves every layer of a
// tiling and weight type (SwiftShader compiles a pipeline in about a second): p.epilogue's
// bits say which operands are there (a launch without one binds `x` in its place): the bias
// (binding 3, f32 or packed f16), the per-channel values (binding 4, [N, channel_add_stride]
// f32, at channel bias_offset + oc), the residual (binding 5), and whether the output (and
// the residual) is laid out channels last, [N, OH, OW, OC] (a 1x1 conv from an image to
// its tokens, with no permute after it); p.activation is common.wgsl's
// epilogue_activation code, applied last (never with ACCUMULATE).
// Defines: W_F16 (weight stored as packed f16), WEIGHT_QUANT (a q8 weight, dequantized
//          while staging; + WEIGHT_Q4 for q4), F16_MATH (tiles and products in f16, sums in
//          f32; needs shader-f16), ACCUMULATE (add to the output's contents instead of
//          overwriting them).
#ifdef F16_MATH
enable f16;
#endif
#include "common.wgsl"

#ifdef F16_MATH
alias tile_t = f16;
#else
alias tile_t = f32;
#endif

// A workgroup of TM x TN invocations computes a BM x BN output tile; each invocation an
// 8 x 8 register block, strided by TM and TN so neighbouring invocations touch
// neighbouring pixels. The launcher picks TM and TN by shape (value defines).
// The register block is written out with constant indices: a loop over it, or any
// dynamic index into `acc`, makes some drivers (Mesa's llvmpipe) keep the block in
// memory, which costs more than the arithmetic.
const THREADS: u32 = TM * TN;
const RM: u32 = 8u;
const RN: u32 = 8u;
const BM: u32 = TM * RM; // output channels per tile
const BN: u32 = TN * RN; // output pixels per tile
const BK: u32 = 16u;     // reduction step
// One spare column: the weight loaders write down a column of a_tile, and a stride of a
// power of two would put them all in one memory bank.
const A_STRIDE: u32 = BM + 1u;

struct Params {
    channels: u32,      // C
    height: u32,        // H
    width: u32,         // W
    out_channels: u32,  // OC
    kernel_h: u32,
    kernel_w: u32,
    out_h: u32,
    out_w: u32,
    stride: u32,
    pad_top: u32,
    pad_left: u32,
    k: u32,             // C * KH * KW
    w_first_row: u32,   // the weight's row (output channel) of output channel 0
    w_first_col: u32,   // the element of input channel 0, tap 0 within a weight row
    w_stride: u32,      // weight elements per output channel (all its input channels)
    bias_offset: u32,   // bias element of output channel 0
    w_row_words: u32,   // WEIGHT_QUANT: words per weight row (quants and scales)
    channel_add_stride: u32, // the per-channel values' values per sample
    epilogue: u32,      // EPILOGUE_* bits
    activation: u32,    // common.wgsl's epilogue_activation code
}

const EPILOGUE_BIAS: u32 = 1u;
const EPILOGUE_BIAS_F16: u32 = 2u;
const EPILOGUE_CHANNEL_ADD: u32 = 4u;
const EPILOGUE_RESIDUAL: u32 = 8u;
const EPILOGUE_CHANNELS_LAST: u32 = 16u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;

// Element `col` of weight row `row`.
#ifdef WEIGHT_QUANT
#include "quant.wgsl"
@group(0) @binding(2) var<storage, read> w: array<u32>;
fn load_w(row: u32, col: u32) -> f32 {
    let base = row * p.w_row_words;
    let word = w[base + quant_word(col)];
    return quant_at(word, col % QUANTS_PER_WORD) * block_scale(w[base + scale_word(p.w_stride, col)], col);
}
#else
#ifdef W_F16
@group(0) @binding(2) var<storage, read> w: array<u32>;
fn load_w(row: u32, col: u32) -> f32 { let i = row * p.w_stride + col; return f16_word(w[i >> 1u], i); }
#else
@group(0) @binding(2) var<storage, read> w: array<f32>;
fn load_w(row: u32, col: u32) -> f32 { return w[row * p.w_stride + col]; }
#endif
#endif

@group(0) @binding(3) var<storage, read> bias: array<u32>;
@group(0) @binding(4) var<storage, read> channel_add: array<f32>;
@group(0) @binding(5) var<storage, read> residual: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

fn load_bias(i: u32) -> f32 {
    if ((p.epilogue & EPILOGUE_BIAS) == 0u) { return 0.0; }
    if ((p.epilogue & EPILOGUE_BIAS_F16) != 0u) { return f16_word(bias[i >> 1u], i); }
    return bitcast<f32>(bias[i]);
}
fn load_channel_add(batch: u32, oc: u32) -> f32 {
    if ((p.epilogue & EPILOGUE_CHANNEL_ADD) == 0u) { return 0.0; }
    return channel_add[batch * p.channel_add_stride + p.bias_offset + oc];
}
fn load_residual(i: u32) -> f32 {
    if ((p.epilogue & EPILOGUE_RESIDUAL) == 0u) { return 0.0; }
    return residual[i];
}

var<workgroup> a_tile: array<tile_t, BK * A_STRIDE>; // weight slice, [k][oc]
var<workgroup> b_tile: array<tile_t, BK * BN>;       // patch slice, [k][pixel]

// weight[oc, k] of this launch's block, zero past the block's edges.
fn weight_at(oc: u32, k: u32) -> f32 {
    if (oc >= p.out_channels || k >= p.k) { return 0.0; }
    return load_w(p.w_first_row + oc, p.w_first_col + k);
}

#ifdef WEIGHT_QUANT
// Stages the weight slice from one word of quants per invocation (QUANTS_PER_WORD
// consecutive k of one output channel), dequantized in registers. Only for blocks whose
// first column is a multiple of BK: then each step is word-aligned and within one scale
// block, and never past the row's end (K is a multiple of 32); columns past the block's
// own k are zero.
fn stage_quant_words(lid: u32, k0: u32, oc0: u32) {
    let words_per_row = BK / QUANTS_PER_WORD;
    for (var i = lid; i < BM * words_per_row; i += THREADS) {
        let m = i / words_per_row;
        let k = k0 + (i % words_per_row) * QUANTS_PER_WORD;
        var word = 0u;
        var scale = 0.0;
        if (oc0 + m < p.out_channels && k < p.k) {
            let col = p.w_first_col + k;
            let base = (p.w_first_row + oc0 + m) * p.w_row_words;
            word = w[base + quant_word(col)];
            scale = block_scale(w[base + scale_word(p.w_stride, col)], col);
        }
        for (var j = 0u; j < QUANTS_PER_WORD; j++) {
            a_tile[(k - k0 + j) * A_STRIDE + m] = tile_t(select(0.0, quant_at(word, j) * scale, k + j < p.k));
        }
    }
}
#endif

// patch[k, pixel] for the output pixel at (oy, ox): the input value under kernel tap k,
// zero in the padding. `image` is the offset of this batch item's input.
fn patch_at(image: u32, k: u32, oy: u32, ox: u32, pixel_ok: bool) -> f32 {
    let taps = p.kernel_h * p.kernel_w;
    let c = k / taps;
    let tap = k - c * taps;
    let ky = tap / p.kernel_w;
    let kx = tap - ky * p.kernel_w;
    let iy = i32(oy * p.stride + ky) - i32(p.pad_top);
    let ix = i32(ox * p.stride + kx) - i32(p.pad_left);
    let inside = iy >= 0 && iy < i32(p.height) && ix >= 0 && ix < i32(p.width);
    if (!pixel_ok || k >= p.k || !inside) { return 0.0; }
    return x[image + (c * p.height + u32(iy)) * p.width + u32(ix)];
}

// The patch loaders keep one pixel each for the whole reduction: BN divides THREADS.
@compute @workgroup_size(THREADS)
fn conv2d(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let pixels = p.out_h * p.out_w;
    let batch = wid.z;
    let image = batch * p.channels * p.height * p.width;
    let oc0 = wid.y * BM;
    let pixel0 = wid.x * BN;
    let tx = lid % TN; // pixel lane of the register block
    let ty = lid / TN; // channel lane

    // Loader roles. Weights: consecutive invocations read consecutive k of one row.
    // Patches: consecutive invocations read consecutive pixels; where BN divides THREADS
    // each keeps one pixel for the whole reduction.
    let fixed_pixel = THREADS % BN == 0u;
    let b_pixel = lid % BN;
    let pixel = pixel0 + b_pixel;
    let oy = pixel / p.out_w;
    let ox = pixel - oy * p.out_w;

    // acc[2i + h]: channel ty + TM i, pixels tx + TN (4h + 0..3).
    var acc: array<vec4<f32>, 16>;
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
#ifdef WEIGHT_QUANT
        let by_word = p.w_first_col % BK == 0u;
        if (by_word) { stage_quant_words(lid, k0, oc0); }
#else
        let by_word = false;
#endif
        if (!by_word) {
            for (var i = lid; i < BK * BM; i += THREADS) {
                let k = i % BK;
                let m = i / BK;
                a_tile[k * A_STRIDE + m] = tile_t(weight_at(oc0 + m, k0 + k));
            }
        }
        if (fixed_pixel) {
            for (var kk = lid / BN; kk < BK; kk += THREADS / BN) {
                b_tile[kk * BN + b_pixel] = tile_t(patch_at(image, k0 + kk, oy, ox, pixel < pixels));
            }
        } else {
            for (var i = lid; i < BK * BN; i += THREADS) {
                let n = pixel0 + i % BN;
                let y = n / p.out_w;
                b_tile[i] = tile_t(patch_at(image, k0 + i / BN, y, n - y * p.out_w, n < pixels));
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a_base = kk * A_STRIDE + ty;
            let at = kk * BN + tx;
            let b0 = vec4<tile_t>(b_tile[at], b_tile[at + TN], b_tile[at + 2u * TN], b_tile[at + 3u * TN]);
            let b1 = vec4<tile_t>(b_tile[at + 4u * TN], b_tile[at + 5u * TN], b_tile[at + 6u * TN], b_tile[at + 7u * TN]);
            // The products in tile precision, the sums in f32.
            let a0 = a_tile[a_base + 0u * TM];
            acc[0] += vec4<f32>(a0 * b0);
            acc[1] += vec4<f32>(a0 * b1);
            let a1 = a_tile[a_base + 1u * TM];
            acc[2] += vec4<f32>(a1 * b0);
            acc[3] += vec4<f32>(a1 * b1);
            let a2 = a_tile[a_base + 2u * TM];
            acc[4] += vec4<f32>(a2 * b0);
            acc[5] += vec4<f32>(a2 * b1);
            let a3 = a_tile[a_base + 3u * TM];
            acc[6] += vec4<f32>(a3 * b0);
            acc[7] += vec4<f32>(a3 * b1);
            let a4 = a_tile[a_base + 4u * TM];
            acc[8] += vec4<f32>(a4 * b0);
            acc[9] += vec4<f32>(a4 * b1);
            let a5 = a_tile[a_base + 5u * TM];
            acc[10] += vec4<f32>(a5 * b0);
            acc[11] += vec4<f32>(a5 * b1);
            let a6 = a_tile[a_base + 6u * TM];
            acc[12] += vec4<f32>(a6 * b0);
            acc[13] += vec4<f32>(a6 * b1);
            let a7 = a_tile[a_base + 7u * TM];
            acc[14] += vec4<f32>(a7 * b0);
            acc[15] += vec4<f32>(a7 * b1);
        }
        workgroupBarrier();
    }
    store_row(batch, oc0 + ty + 0u * TM, pixel0 + tx, acc[0], acc[1]);
    store_row(batch, oc0 + ty + 1u * TM, pixel0 + tx, acc[2], acc[3]);
    store_row(batch, oc0 + ty + 2u * TM, pixel0 + tx, acc[4], acc[5]);
    store_row(batch, oc0 + ty + 3u * TM, pixel0 + tx, acc[6], acc[7]);
    store_row(batch, oc0 + ty + 4u * TM, pixel0 + tx, acc[8], acc[9]);
    store_row(batch, oc0 + ty + 5u * TM, pixel0 + tx, acc[10], acc[11]);
    store_row(batch, oc0 + ty + 6u * TM, pixel0 + tx, acc[12], acc[13]);
    store_row(batch, oc0 + ty + 7u * TM, pixel0 + tx, acc[14], acc[15]);
}

// Writes one register row: output channel `oc` at pixels n, n + TN, ... n + 7 TN, plus
// the epilogue's additions.
fn store_row(batch: u32, oc: u32, n: u32, low: vec4<f32>, high: vec4<f32>) {
    if (oc >= p.out_channels) { return; }
    let pixels = p.out_h * p.out_w;
    let channels_last = (p.epilogue & EPILOGUE_CHANNELS_LAST) != 0u;
    let row = (batch * p.out_channels + oc) * pixels;
    let b = load_bias(p.bias_offset + oc) + load_channel_add(batch, oc);
    for (var j = 0u; j < RN; j++) {
        let at = n + j * TN;
        if (at < pixels) {
            let i = select(row + at, (batch * pixels + at) * p.out_channels + oc, channels_last);
            let v = epilogue_activation(select(high, low, j < 4u)[j % 4u] + b + load_residual(i), p.activation);
#ifdef ACCUMULATE
            out[i] = out[i] + v;
#else
            out[i] = v;
#endif
        }
    }
}
