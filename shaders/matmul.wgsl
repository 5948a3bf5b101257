// Tiled matmul with a fused epilogue: out[b] = act(op(a[b]) @ op(b[b]) + bias) + residual,
// or with ACCUMULATE out[b] = act(out[b] + op(a[b]) @ op(b[b]) + bias) + residual.
// A workgroup of TM x TN invocations computes a BM x BN output tile (value defines TM and
// TN, picked by the launcher to fit the output); each invocation an 8 x 8 register block,
// strided by TM and TN so neighbouring invocations read neighbouring words. Each step
// stages a BM x 16 slice of a and a 16 x BN slice of b in workgroup memory, k-major.
// The register block is written out with constant indices (see conv2d.wgsl).
// Defines: TRANS_A (a stored [.., K, M]), TRANS_B (b stored [.., N, K]), B_F16 (b is
//          packed f16), WEIGHT_QUANT (b is a q8 weight [N, K] with TRANS_B; + WEIGHT_Q4
//          for q4), F16_MATH (tiles and products in f16, sums in f32; needs shader-f16),
//          ACCUMULATE (add the output's contents before the activation: a LoRA's side
//          path adds into its layer's output).
// The epilogue is chosen by parameters, not defines, so that one pipeline serves every
// layer of a tiling (SwiftShader compiles a pipeline in about a second): p.epilogue's bits
// say whether the bias (f32 or packed f16, binding 3) and the residual (f32 of the output's
// shape, added after the activation: the skip after an attention or feed-forward output
// projection; binding 4) are there (a launch without one binds `a` in its place), and
// p.activation picks the activation (see activate()). p.split lays the output out as
// [.., n / split, m, split] (column c in part c / split): stacked Linear layers (a
// self-attention's q, k and v) each get a contiguous output; split = 1 writes the product
// transposed (tokens to an image's channels); split = n is the plain layout.
#ifdef F16_MATH
enable f16;
#endif
#include "common.wgsl"

#ifdef F16_MATH
alias tile_t = f16;
#else
alias tile_t = f32;
#endif

const THREADS: u32 = TM * TN;
const BM: u32 = TM * 8u;
const BN: u32 = TN * 8u;
const BK: u32 = 16u;

struct Params {
    m: u32,              // rows of the output (per batch)
    n: u32,              // columns of the output
    k: u32,              // the summed dimension
    m_tiles: u32,        // ceil(m / BM)
    batches: u32,
    a_batch_stride: u32, // elements between batches of a (0: broadcast)
    b_batch_stride: u32,
    act_a: f32,          // affine activation: act_a * v + act_b
    act_b: f32,
    b_row_words: u32,    // WEIGHT_QUANT: words per row of b (quants and scales)
    epilogue: u32,       // EPILOGUE_* bits
    activation: u32,     // see activate()
    split: u32,          // output columns per part (n: one part)
}

const EPILOGUE_BIAS: u32 = 1u;
const EPILOGUE_BIAS_F16: u32 = 2u;
const EPILOGUE_RESIDUAL: u32 = 4u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;

#ifdef WEIGHT_QUANT
#include "quant.wgsl"
@group(0) @binding(2) var<storage, read> b: array<u32>;
#else
#ifdef B_F16
@group(0) @binding(2) var<storage, read> b: array<u32>;
fn b_at(i: u32) -> f32 { return f16_word(b[i >> 1u], i); }
#else
@group(0) @binding(2) var<storage, read> b: array<f32>;
fn b_at(i: u32) -> f32 { return b[i]; }
#endif
#endif

@group(0) @binding(3) var<storage, read> bias: array<u32>;
@group(0) @binding(4) var<storage, read> residual: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

fn bias_at(i: u32) -> f32 {
    if ((p.epilogue & EPILOGUE_BIAS_F16) != 0u) { return f16_word(bias[i >> 1u], i); }
    return bitcast<f32>(bias[i]);
}

// common.wgsl's codes, and two with parameters (MATMUL_CLAMP, MATMUL_AFFINE in matmul.rs).
fn activate(v: f32) -> f32 {
    switch p.activation {
        case 8u: { return clamp(v, p.act_a, p.act_b); }
        case 9u: { return p.act_a * v + p.act_b; }
        default: { return epilogue_activation(v, p.activation); }
    }
}

// Tiles are k-major: entry [k * BM + i] holds row (or column) i at step k.
var<workgroup> a_tile: array<tile_t, BK * BM>;
var<workgroup> b_tile: array<tile_t, BK * BN>;

// a[row, k] of this batch, zero outside the matrix so partial tiles add nothing.
fn load_a(base: u32, row: u32, k: u32, rows: u32) -> f32 {
    if (row >= rows || k >= p.k) { return 0.0; }
#ifdef TRANS_A
    return a[base + k * p.m + row];
#else
    return a[base + row * p.k + k];
#endif
}

#ifdef WEIGHT_QUANT
// Stages b's slice from one word of quants per invocation (QUANTS_PER_WORD consecutive
// k of one column), dequantized in registers. K is a multiple of 32, so a BK step lies
// within one block and never past the row's end.
fn stage_quant_b(tid: u32, k0: u32, col0: u32, cols: u32) {
    let words_per_col = BK / QUANTS_PER_WORD;
    for (var e = tid; e < BN * words_per_col; e += THREADS) {
        let n = e / words_per_col;
        let k = k0 + (e % words_per_col) * QUANTS_PER_WORD;
        var word = 0u;
        var scale = 0.0;
        if (col0 + n < cols) {
            let row = (col0 + n) * p.b_row_words;
            word = b[row + quant_word(k)];
            scale = block_scale(b[row + scale_word(p.k, k)], k);
        }
        for (var j = 0u; j < QUANTS_PER_WORD; j++) {
            b_tile[(k - k0 + j) * BN + n] = tile_t(quant_at(word, j) * scale);
        }
    }
}
#else
fn load_b(base: u32, k: u32, col: u32, cols: u32) -> f32 {
    if (col >= cols || k >= p.k) { return 0.0; }
#ifdef TRANS_B
    return b_at(base + col * p.k + k);
#else
    return b_at(base + k * p.n + col);
#endif
}
#endif

// Grid: x = column tiles; y and z fold (batch, row tile), see Gpu::grid.
@compute @workgroup_size(THREADS)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) tid: u32) {
    let tx = tid % TN; // column lane of the register block
    let ty = tid / TN; // row lane
    let flat = wid.y + wid.z * nwg.y;
    let batch = flat / p.m_tiles;
    // Workgroups past the folded grid's end still reach every barrier; they see an
    // empty matrix instead of returning.
    let live = batch < p.batches;
    let rows = select(0u, p.m, live);
    let cols = select(0u, p.n, live);
    let row0 = (flat % p.m_tiles) * BM;
    let col0 = wid.x * BN;
    let a_base = batch * p.a_batch_stride;
    let b_base = batch * p.b_batch_stride;

    // acc[2i + h]: row ty + TM i, columns tx + TN (4h + 0..3).
    var acc: array<vec4<f32>, 16>;
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // Consecutive invocations read consecutive addresses of each operand's layout.
        for (var e = tid; e < BM * BK; e += THREADS) {
#ifdef TRANS_A
            let m = e % BM;
            let k = e / BM;
#else
            let k = e % BK;
            let m = e / BK;
#endif
            a_tile[k * BM + m] = tile_t(load_a(a_base, row0 + m, k0 + k, rows));
        }
#ifdef WEIGHT_QUANT
        stage_quant_b(tid, k0, col0, cols);
#else
        for (var e = tid; e < BK * BN; e += THREADS) {
#ifdef TRANS_B
            let k = e % BK;
            let n = e / BK;
#else
            let n = e % BN;
            let k = e / BN;
#endif
            b_tile[k * BN + n] = tile_t(load_b(b_base, k0 + k, col0 + n, cols));
        }
#endif
        workgroupBarrier();
        for (var k = 0u; k < BK; k++) {
            let a_at = k * BM + ty;
            let b_at = k * BN + tx;
            let b0 = vec4<tile_t>(b_tile[b_at], b_tile[b_at + TN], b_tile[b_at + 2u * TN], b_tile[b_at + 3u * TN]);
            let b1 = vec4<tile_t>(b_tile[b_at + 4u * TN], b_tile[b_at + 5u * TN], b_tile[b_at + 6u * TN], b_tile[b_at + 7u * TN]);
            // The products in tile precision, the sums in f32.
            let a0 = a_tile[a_at + 0u * TM];
            acc[0] += vec4<f32>(a0 * b0);
            acc[1] += vec4<f32>(a0 * b1);
            let a1 = a_tile[a_at + 1u * TM];
            acc[2] += vec4<f32>(a1 * b0);
            acc[3] += vec4<f32>(a1 * b1);
            let a2 = a_tile[a_at + 2u * TM];
            acc[4] += vec4<f32>(a2 * b0);
            acc[5] += vec4<f32>(a2 * b1);
            let a3 = a_tile[a_at + 3u * TM];
            acc[6] += vec4<f32>(a3 * b0);
            acc[7] += vec4<f32>(a3 * b1);
            let a4 = a_tile[a_at + 4u * TM];
            acc[8] += vec4<f32>(a4 * b0);
            acc[9] += vec4<f32>(a4 * b1);
            let a5 = a_tile[a_at + 5u * TM];
            acc[10] += vec4<f32>(a5 * b0);
            acc[11] += vec4<f32>(a5 * b1);
            let a6 = a_tile[a_at + 6u * TM];
            acc[12] += vec4<f32>(a6 * b0);
            acc[13] += vec4<f32>(a6 * b1);
            let a7 = a_tile[a_at + 7u * TM];
            acc[14] += vec4<f32>(a7 * b0);
            acc[15] += vec4<f32>(a7 * b1);
        }
        workgroupBarrier();
    }

    let out_base = batch * p.m * p.n;
    store_row(out_base, row0 + ty + 0u * TM, col0 + tx, rows, cols, acc[0], acc[1]);
    store_row(out_base, row0 + ty + 1u * TM, col0 + tx, rows, cols, acc[2], acc[3]);
    store_row(out_base, row0 + ty + 2u * TM, col0 + tx, rows, cols, acc[4], acc[5]);
    store_row(out_base, row0 + ty + 3u * TM, col0 + tx, rows, cols, acc[6], acc[7]);
    store_row(out_base, row0 + ty + 4u * TM, col0 + tx, rows, cols, acc[8], acc[9]);
    store_row(out_base, row0 + ty + 5u * TM, col0 + tx, rows, cols, acc[10], acc[11]);
    store_row(out_base, row0 + ty + 6u * TM, col0 + tx, rows, cols, acc[12], acc[13]);
    store_row(out_base, row0 + ty + 7u * TM, col0 + tx, rows, cols, acc[14], acc[15]);
}

// Finishes one register row: row `row` at columns col, col + TN, ... col + 7 TN; the
// epilogue, then the store.
fn store_row(out_base: u32, row: u32, col: u32, rows: u32, cols: u32, low: vec4<f32>, high: vec4<f32>) {
    if (row >= rows) { return; }
    for (var j = 0u; j < 8u; j++) {
        let c = col + j * TN;
        if (c < cols) {
            var v = select(high, low, j < 4u)[j % 4u];
            let part = c / p.split;
            let at = out_base + (part * p.m + row) * p.split + c - part * p.split;
#ifdef ACCUMULATE
            v += out[at];
#endif
            if ((p.epilogue & EPILOGUE_BIAS) != 0u) { v += bias_at(c); }
            v = activate(v);
            if ((p.epilogue & EPILOGUE_RESIDUAL) != 0u) { v += residual[at]; }
            out[at] = v;
        }
    }
}
