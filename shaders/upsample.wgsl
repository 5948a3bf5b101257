// Nearest-neighbour 2x upsampling of NCHW (diffusers' Upsample2D with
// interpolate(scale_factor=2, mode="nearest")): out[n, c, y, x] = in[n, c, y/2, x/2].
// One invocation per output element. Defines: X_F16 (input stored as packed f16).
#include "common.wgsl"

const WG: u32 = 256u;

struct Params {
    n: u32, // output elements
    h: u32, // input height
    w: u32, // input width
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

#include "input_x.wgsl"

@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn upsample_nearest_2x(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_workgroup(wid, nwg) * WG + lid.x;
    if (i >= p.n) { return; }
    let out_w = 2u * p.w;
    let out_h = 2u * p.h;
    let ox = i % out_w;
    let oy = (i / out_w) % out_h;
    let plane = i / (out_w * out_h); // n * C + c
    out[i] = load_x((plane * p.h + oy / 2u) * p.w + ox / 2u);
}
