// Elementwise kernels: activations, broadcasting binary ops, GEGLU, the sampler
// update a*x + b*y (+ c*z), and f32 -> packed f16 conversion.
// Defines: OP (unary: an activation of common.wgsl, exp, affine, clamp_ab or identity;
//          binary: add | mul), X_F16 (input x stored as packed f16), THREE (axpby with z).
#include "common.wgsl"

const WG: u32 = 256u;

struct Params {
    n: u32,          // output elements
    a: f32,
    b: f32,
    c: f32,
    // binary: output shape and the element strides of x and y (0 where broadcast), 4-d.
    shape: vec4<u32>,
    x_strides: vec4<u32>,
    y_strides: vec4<u32>,
}

@group(0) @binding(0) var<uniform> p: Params;

#include "input_x.wgsl"

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return flat_workgroup(wid, nwg) * WG + lid.x;
}

fn affine(v: f32) -> f32 { return p.a * v + p.b; }
fn clamp_ab(v: f32) -> f32 { return clamp(v, p.a, p.b); }
fn identity(v: f32) -> f32 { return v; }
fn add(u: f32, v: f32) -> f32 { return u + v; }
fn mul(u: f32, v: f32) -> f32 { return u * v; }

#ifdef UNARY
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn unary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = OP(load_x(i));
}
#endif

#ifdef BINARY
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn binary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    // Unravel i over the 4-d output shape, then apply each operand's strides.
    var rest = i;
    var xi = 0u;
    var yi = 0u;
    for (var d = 3; d >= 0; d--) {
        let coord = rest % p.shape[d];
        rest = rest / p.shape[d];
        xi += coord * p.x_strides[d];
        yi += coord * p.y_strides[d];
    }
    out[i] = OP(load_x(xi), y[yi]);
}
#endif

#ifdef GEGLU
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

// x is [rows, 2*d]; the first half is the value, the second the gate (diffusers' GEGLU).
@compute @workgroup_size(WG)
fn geglu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    let d = p.shape.x;
    let row = i / d;
    let col = i % d;
    out[i] = load_x(row * 2u * d + col) * gelu_erf(load_x(row * 2u * d + d + col));
}
#endif

#ifdef AXPBY
@group(0) @binding(2) var<storage, read> y: array<f32>;
#ifdef THREE
@group(0) @binding(3) var<storage, read> z: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
#else
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#endif

@compute @workgroup_size(WG)
fn axpby(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    var v = p.a * load_x(i) + p.b * y[i];
#ifdef THREE
    v += p.c * z[i];
#endif
    out[i] = v;
}
#endif

#ifdef TO_F16
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

// One invocation per output word: elements 2w and 2w+1 (p.n counts elements).
@compute @workgroup_size(WG)
fn to_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let w = index(wid, nwg, lid);
    let i = 2u * w;
    if (i >= p.n) { return; }
    let hi = select(0.0, load_x(i + 1u), i + 1u < p.n);
    out[w] = pack2x16float(vec2<f32>(load_x(i), hi));
}
#endif
