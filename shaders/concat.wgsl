// Layout kernels: gather by index. One strided copy serves concat (each input is
// copied into its slice of the output), narrow (a slice is read out) and permute
// (the output is read through the input's permuted strides).
// Defines: X_F16 (input stored as packed f16).
#include "common.wgsl"

const WG: u32 = 256u;

struct Params {
    n: u32,                 // elements copied
    src_offset: u32,        // first element read
    dst_offset: u32,        // first element written
    _pad: u32,
    shape: vec4<u32>,       // the copied region, innermost dimension last
    src_strides: vec4<u32>, // element strides of that region in the input
    dst_strides: vec4<u32>, // and in the output
}

@group(0) @binding(0) var<uniform> p: Params;

#include "input_x.wgsl"

@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn copy_strided(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_workgroup(wid, nwg) * WG + lid.x;
    if (i >= p.n) { return; }
    // Unravel i over the region, then apply each side's strides.
    var rest = i;
    var src = p.src_offset;
    var dst = p.dst_offset;
    for (var d = 3; d >= 0; d--) {
        let coord = rest % p.shape[d];
        rest = rest / p.shape[d];
        src += coord * p.src_strides[d];
        dst += coord * p.dst_strides[d];
    }
    out[dst] = load_x(src);
}
