// Two f32 tensors joined along one axis in a single launch (the UNet's skip connections,
// where the strided copy would take a launch per input): both are seen as [outer, len *
// inner] rows, and each output row is a's row followed by b's.
#include "common.wgsl"

const WG: u32 = 256u;

struct Params {
    n: u32,     // output elements
    a_row: u32, // a's elements per outer index (its axis length times inner)
    b_row: u32, // and b's
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn concat_pair(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_workgroup(wid, nwg) * WG + lid.x;
    if (i >= p.n) { return; }
    let row = i / (p.a_row + p.b_row);
    let col = i % (p.a_row + p.b_row);
    if (col < p.a_row) {
        out[i] = a[row * p.a_row + col];
    } else {
        out[i] = b[row * p.b_row + col - p.a_row];
    }
}
