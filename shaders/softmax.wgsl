// Softmax over the last dimension of x [rows, len], of scale * x. One workgroup per
// row: the row maximum is subtracted before exp so large scores cannot overflow.
// Defines: THREADS (invocations per workgroup, a power of two).
#include "common.wgsl"

const WG: u32 = THREADS;
// The most negative finite f32, the identity of max (WGSL has no infinity literal).
const LOWEST: f32 = -0x1.fffffep+127f;

struct Params {
    rows: u32,
    len: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

var<workgroup> partials: array<f32, WG>;

// Both reductions end with a barrier after everyone has read the result, so the
// next one may overwrite `partials`. Call from uniform control flow.
fn workgroup_max(lid: u32, own: f32) -> f32 {
    partials[lid] = own;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            partials[lid] = max(partials[lid], partials[lid + stride]);
        }
        workgroupBarrier();
    }
    let total = partials[0];
    workgroupBarrier();
    return total;
}

fn workgroup_sum(lid: u32, own: f32) -> f32 {
    partials[lid] = own;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            partials[lid] += partials[lid + stride];
        }
        workgroupBarrier();
    }
    let total = partials[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WG)
fn softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = flat_workgroup(wid, nwg);
    // A folded grid can round past the last row: those workgroups touch nothing.
    let len = select(0u, p.len, row < p.rows);
    let base = row * p.len;
    var own_max = LOWEST;
    for (var j = lid.x; j < len; j += WG) {
        own_max = max(own_max, p.scale * x[base + j]);
    }
    let row_max = workgroup_max(lid.x, own_max);
    var own_sum = 0.0;
    for (var j = lid.x; j < len; j += WG) {
        own_sum += exp(p.scale * x[base + j] - row_max);
    }
    let inv_sum = 1.0 / workgroup_sum(lid.x, own_sum);
    for (var j = lid.x; j < len; j += WG) {
        out[base + j] = exp(p.scale * x[base + j] - row_max) * inv_sum;
    }
}
