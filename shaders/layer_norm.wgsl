// Layer normalisation over the last dimension of x [rows, dim] (PyTorch semantics:
// biased variance, eps inside the square root). Two passes over the row (mean, then the
// mean squared deviation: no E[x^2] - E[x]^2 cancellation), then the normalised write; the
// row (at most a few KiB) stays in cache between passes.
//   layer_norm:      one workgroup per row, the passes' sums reduced across it;
//   layer_norm_rows: one invocation per row, for short rows: no workgroup memory and no
//                    barrier, which on GPUs emulated on a CPU cost far more than the loop.
// Defines: THREADS (invocations per workgroup, a power of two),
//          AFFINE_F16 (weight and bias stored as packed f16), ROWS (the second entry).
#include "common.wgsl"

const WG: u32 = THREADS;

struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
#ifdef AFFINE_F16
@group(0) @binding(2) var<storage, read> weight: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<u32>;
fn load_weight(j: u32) -> f32 { return f16_word(weight[j >> 1u], j); }
fn load_bias(j: u32) -> f32 { return f16_word(bias[j >> 1u], j); }
#else
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
fn load_weight(j: u32) -> f32 { return weight[j]; }
fn load_bias(j: u32) -> f32 { return bias[j]; }
#endif
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

#ifdef ROWS
@compute @workgroup_size(WG)
fn layer_norm_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = flat_workgroup(wid, nwg) * WG + lid.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.dim;
    var sum = 0.0;
    for (var j = 0u; j < p.dim; j++) {
        sum += x[base + j];
    }
    let mean = sum / f32(p.dim);
    var squares = 0.0;
    for (var j = 0u; j < p.dim; j++) {
        let d = x[base + j] - mean;
        squares += d * d;
    }
    let inv_std = 1.0 / sqrt(squares / f32(p.dim) + p.eps);
    for (var j = 0u; j < p.dim; j++) {
        out[base + j] = (x[base + j] - mean) * inv_std * load_weight(j) + load_bias(j);
    }
}
#else
var<workgroup> partial_sums: array<f32, WG>;

// The sum of every invocation's value; call from uniform control flow.
fn workgroup_sum(lid: u32, own: f32) -> f32 {
    partial_sums[lid] = own;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            partial_sums[lid] += partial_sums[lid + stride];
        }
        workgroupBarrier();
    }
    let total = partial_sums[0];
    // Everyone reads the total before a following call overwrites the array.
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WG)
fn layer_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = flat_workgroup(wid, nwg);
    // A folded grid can round past the last row: those workgroups touch nothing.
    let len = select(0u, p.dim, row < p.rows);
    let base = row * p.dim;
    var sum = 0.0;
    for (var j = lid.x; j < len; j += WG) {
        sum += x[base + j];
    }
    let mean = workgroup_sum(lid.x, sum) / f32(p.dim);
    var squares = 0.0;
    for (var j = lid.x; j < len; j += WG) {
        let d = x[base + j] - mean;
        squares += d * d;
    }
    let inv_std = 1.0 / sqrt(workgroup_sum(lid.x, squares) / f32(p.dim) + p.eps);
    for (var j = lid.x; j < len; j += WG) {
        out[base + j] = (x[base + j] - mean) * inv_std * load_weight(j) + load_bias(j);
    }
}
#endif
