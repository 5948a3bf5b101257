// 2-d convolution over NCHW f32 input as an implicit GEMM, per batch item:
//   out[oc, pixel] = sum_k weight[oc, k] * patch[k, pixel] (+ bias[oc])
// with k = (c, ky, kx) flattened like the weight's [OC, C, KH, KW] layout. The patch
// (im2col) matrix is never stored: each K step gathers its BK x BN slice straight from
// the input into workgroup memory, zero outside the image (that is the padding).
// A launch may use a block of a larger weight (input channels in_start.., output channels
// out_start..): w_first_row and w_first_col locate it, so a convolution can be summed over
// input-channel chunks or computed by output-channel chunks without copying weights.
// Defines: W_F16 (weight stored as packed f16), WEIGHT_QUANT (a q8 weight, dequantized
//          while staging; + WEIGHT_Q4 for q4), BIAS (a bias binding), BIAS_F16 (it is packed f16),
//          F16_MATH (tiles and products in f16, sums in f32; needs shader-f16),
//          ACCUMULATE (add to the output's contents instead of overwriting them).
#ifdef F16_MATH
enable f16;
#endif
#include "common.wgsl"

#ifdef F16_MATH
alias tile_t = f16;
#else
alias tile_t = f32;
#endif

// A 16 x 16 workgroup computes a BM x BN output tile; each invocation a 4 x 4 register
// block, strided by 16 so neighbouring invocations touch neighbouring pixels.
const THREADS: u32 = 16u;
const BLOCK: u32 = 4u;
const BM: u32 = 64u; // output channels per tile (THREADS * BLOCK)
const BN: u32 = 64u; // output pixels per tile
const BK: u32 = 16u; // reduction step
// One spare column: the weight loaders write down a column of a_tile, and a stride of
// exactly 64 words would put all 16 of them in one memory bank.
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
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

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

#ifdef BIAS
#ifdef BIAS_F16
@group(0) @binding(3) var<storage, read> bias: array<u32>;
fn load_bias(i: u32) -> f32 { return f16_word(bias[i >> 1u], i); }
#else
@group(0) @binding(3) var<storage, read> bias: array<f32>;
fn load_bias(i: u32) -> f32 { return bias[i]; }
#endif
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
#else
fn load_bias(i: u32) -> f32 { return 0.0; }
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#endif

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
    if (lid >= BM * words_per_row) { return; }
    let m = lid / words_per_row;
    let k = k0 + (lid % words_per_row) * QUANTS_PER_WORD;
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

@compute @workgroup_size(THREADS, THREADS)
fn conv2d(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let pixels = p.out_h * p.out_w;
    let batch = wid.z;
    let image = batch * p.channels * p.height * p.width;
    let oc0 = wid.y * BM;
    let pixel0 = wid.x * BN;
    let tx = lid % THREADS; // pixel lane of the register block
    let ty = lid / THREADS; // channel lane

    // Loader roles. Weights: 16 consecutive invocations read 16 consecutive k of one
    // row. Patches: 64 consecutive invocations read 64 consecutive pixels, and each
    // invocation keeps one pixel for the whole reduction.
    let a_k = lid % BK;
    let a_row = lid / BK;                 // + 16 * r
    let b_pixel = lid % BN;
    let b_row = lid / BN;                 // + 4 * r
    let pixel = pixel0 + b_pixel;
    let pixel_ok = pixel < pixels;
    let oy = pixel / p.out_w;
    let ox = pixel - oy * p.out_w;

    var acc: array<vec4<f32>, BLOCK>; // acc[i][j]: channel ty + 16i, pixel tx + 16j
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
#ifdef WEIGHT_QUANT
        let by_word = p.w_first_col % BK == 0u;
        if (by_word) { stage_quant_words(lid, k0, oc0); }
#else
        let by_word = false;
#endif
        if (!by_word) {
            for (var r = 0u; r < BM / THREADS; r++) {
                let m = a_row + r * (THREADS * THREADS / BK);
                a_tile[a_k * A_STRIDE + m] = tile_t(weight_at(oc0 + m, k0 + a_k));
            }
        }
        for (var r = 0u; r < BK / (THREADS * THREADS / BN); r++) {
            let kk = b_row + r * (THREADS * THREADS / BN);
            b_tile[kk * BN + b_pixel] = tile_t(patch_at(image, k0 + kk, oy, ox, pixel_ok));
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a_base = kk * A_STRIDE + ty;
            let b_base = kk * BN + tx;
            let b = vec4<tile_t>(b_tile[b_base], b_tile[b_base + THREADS],
                                 b_tile[b_base + 2u * THREADS], b_tile[b_base + 3u * THREADS]);
            for (var i = 0u; i < BLOCK; i++) {
                // The product in tile precision, the sum in f32.
                acc[i] += vec4<f32>(a_tile[a_base + i * THREADS] * b);
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < BLOCK; i++) {
        let oc = oc0 + ty + i * THREADS;
        if (oc >= p.out_channels) { continue; }
        let row = (batch * p.out_channels + oc) * pixels;
        let b = load_bias(p.bias_offset + oc);
        for (var j = 0u; j < BLOCK; j++) {
            let n = pixel0 + tx + j * THREADS;
#ifdef ACCUMULATE
            if (n < pixels) { out[row + n] = out[row + n] + (acc[i][j] + b); }
#else
            if (n < pixels) { out[row + n] = acc[i][j] + b; }
#endif
        }
    }
}
