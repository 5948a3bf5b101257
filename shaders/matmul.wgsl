// Tiled matmul with a fused epilogue: out[b] = ACT(op(a[b]) @ op(b[b]) + bias), or with
// ACCUMULATE out[b] = ACT(out[b] + op(a[b]) @ op(b[b]) + bias).
// A 16x16 workgroup computes a 64x64 output tile; each invocation owns a 4x4 register
// block. Each step stages a 64x16 slice of a and a 16x64 slice of b in workgroup memory
// (8 KiB as f32, 4 KiB as f16), k-major so the inner loop reads whole vec4s.
// Defines: TRANS_A (a stored [.., K, M]), TRANS_B (b stored [.., N, K]), B_F16 (b is
//          packed f16), WEIGHT_QUANT (b is a q8 weight [N, K] with TRANS_B; + WEIGHT_Q4
//          for q4), BIAS (+ BIAS_F16), ACT (an activation from common.wgsl, or affine),
//          F16_MATH (tiles and products in f16, sums in f32; needs shader-f16),
//          ACCUMULATE (add the output's contents before the activation: a LoRA's side
//          path adds into its layer's output).
#ifdef F16_MATH
enable f16;
#endif
#include "common.wgsl"

#ifdef F16_MATH
alias tile_t = f16;
#else
alias tile_t = f32;
#endif

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;
const THREADS: u32 = 256u;

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
    pad1: u32,
    pad2: u32,
}

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

#ifdef BIAS
#ifdef BIAS_F16
@group(0) @binding(3) var<storage, read> bias: array<u32>;
fn bias_at(i: u32) -> f32 { return f16_word(bias[i >> 1u], i); }
#else
@group(0) @binding(3) var<storage, read> bias: array<f32>;
fn bias_at(i: u32) -> f32 { return bias[i]; }
#endif
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
#else
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#endif

fn affine(v: f32) -> f32 { return p.act_a * v + p.act_b; }
fn clamp_ab(v: f32) -> f32 { return clamp(v, p.act_a, p.act_b); }

// Tiles are k-major: entry [k][i / 4] holds columns (or rows) i..i+3 at step k.
var<workgroup> a_tile: array<vec4<tile_t>, BK * BM / 4u>;
var<workgroup> b_tile: array<vec4<tile_t>, BK * BN / 4u>;

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
    if (tid >= BN * words_per_col) { return; }
    let n = tid / words_per_col;
    let k = k0 + (tid % words_per_col) * QUANTS_PER_WORD;
    var word = 0u;
    var scale = 0.0;
    if (col0 + n < cols) {
        let row = (col0 + n) * p.b_row_words;
        word = b[row + quant_word(k)];
        scale = block_scale(b[row + scale_word(p.k, k)], k);
    }
    for (var j = 0u; j < QUANTS_PER_WORD; j++) {
        b_tile[(k - k0 + j) * (BN / 4u) + n / 4u][n % 4u] = tile_t(quant_at(word, j) * scale);
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

// acc + x * y with the product taken in tile precision.
fn mac(acc: vec4<f32>, x: tile_t, y: vec4<tile_t>) -> vec4<f32> {
    return acc + vec4<f32>(x * y);
}

// Grid: x = column tiles; y and z fold (batch, row tile), see Gpu::grid.
@compute @workgroup_size(16, 16)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
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

    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // Consecutive invocations read consecutive addresses of each operand's layout.
        // Fixed trip counts keep the barriers below in uniform control flow for Tint.
        for (var i = 0u; i < BM * BK / THREADS; i++) {
            let e = tid + i * THREADS;
#ifdef TRANS_A
            let m = e % BM;
            let k = e / BM;
#else
            let k = e % BK;
            let m = e / BK;
#endif
            a_tile[k * (BM / 4u) + m / 4u][m % 4u] = tile_t(load_a(a_base, row0 + m, k0 + k, rows));
        }
#ifdef WEIGHT_QUANT
        stage_quant_b(tid, k0, col0, cols);
#else
        for (var i = 0u; i < BK * BN / THREADS; i++) {
            let e = tid + i * THREADS;
#ifdef TRANS_B
            let k = e % BK;
            let n = e / BK;
#else
            let n = e % BN;
            let k = e / BN;
#endif
            b_tile[k * (BN / 4u) + n / 4u][n % 4u] = tile_t(load_b(b_base, k0 + k, col0 + n, cols));
        }
#endif
        workgroupBarrier();
        for (var k = 0u; k < BK; k++) {
            let av = a_tile[k * (BM / 4u) + lid.y];
            let bv = b_tile[k * (BN / 4u) + lid.x];
            acc[0] = mac(acc[0], av.x, bv);
            acc[1] = mac(acc[1], av.y, bv);
            acc[2] = mac(acc[2], av.z, bv);
            acc[3] = mac(acc[3], av.w, bv);
        }
        workgroupBarrier();
    }

    let out_base = batch * p.m * p.n;
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + lid.y * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lid.x * 4u + j;
            if (row < rows && col < cols) {
                var v = acc[i][j];
#ifdef ACCUMULATE
                v += out[out_base + row * p.n + col];
#endif
#ifdef BIAS
                v += bias_at(col);
#endif
#ifdef ACT
                v = ACT(v);
#endif
                out[out_base + row * p.n + col] = v;
            }
        }
    }
}
