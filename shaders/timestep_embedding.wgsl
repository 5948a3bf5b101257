// diffusers' get_timestep_embedding: for timestep t and j < half = dim / 2,
//   angle_j = scale * t * exp(-ln(max_period) * j / (half - downscale_freq_shift)),
// out[b] = [sin(angle), cos(angle)] ([cos, sin] when flipped), zero-padded to an odd dim.
// One invocation per output element. Also serves LCM's guidance-scale embedding.
#include "common.wgsl"

const WG: u32 = 256u;

// 2*pi split so that k * TWO_PI_HI is exact (201/32 needs 8 bits) for |k| < 2^16.
const TWO_PI_HI: f32 = 6.28125;
const TWO_PI_LO: f32 = 1.9353071795864769e-3;
const INV_TWO_PI: f32 = 0.15915494309189535;

struct Params {
    n: u32,               // batch * dim
    dim: u32,
    half_dim: u32,
    flip: u32,            // 1: [cos, sin]
    neg_log_max_period: f32,
    freq_divisor: f32,    // half - downscale_freq_shift
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> timesteps: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

// The angle moved into [-pi, pi]: WGSL bounds the error of sin and cos only there,
// and angles reach ~1000 (timesteps) or more (LCM's guidance scale times 1000).
fn reduce_angle(x: f32) -> f32 {
    let k = round(x * INV_TWO_PI);
    return (x - k * TWO_PI_HI) - k * TWO_PI_LO;
}

@compute @workgroup_size(WG)
fn timestep_embedding(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_workgroup(wid, nwg) * WG + lid.x;
    if (i >= p.n) { return; }
    let b = i / p.dim;
    let c = i % p.dim;
    var value = 0.0; // the padding column of an odd dim
    if (c < 2u * p.half_dim) {
        let j = c % p.half_dim;
        // Same operation order as diffusers, in f32 like torch.
        let frequency = exp(p.neg_log_max_period * f32(j) / p.freq_divisor);
        let angle = reduce_angle(p.scale * (timesteps[b] * frequency));
        let sine = (c < p.half_dim) != (p.flip != 0u);
        value = select(cos(angle), sin(angle), sine);
    }
    out[i] = value;
}
