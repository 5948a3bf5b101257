// Group normalisation of x [N, C, *spatial] (PyTorch semantics: biased variance, eps
// inside the square root). A group is contiguous in memory (channels g*C/G .. (g+1)*C/G
// of one sample, every position).
// A short group (a UNet's at latent sizes: hundreds to a few thousand elements) is one
// workgroup's whole job in one launch:
//   fused:         mean, then the mean squared deviation (two passes, no E[x^2] - E[x]^2
//                  cancellation), then the normalised write, with three short reductions.
// A long one can be a million elements (the VAE at 512x512), so its statistics are split
// over many workgroups in three passes:
//   stats_partial: each workgroup reduces one CHUNK of a group to (count, mean, M2);
//   stats_combine: one workgroup per group merges its chunks into (mean, 1/std);
//   normalise:     one invocation per element applies the statistics and the affine.
// Welford updates and Chan's merge keep the variance exact-ish even when the mean is
// far larger than the spread.
// Defines: FUSED | STATS_PARTIAL | STATS_COMBINE | NORMALISE (the entry point);
//          AFFINE_F16 (weight and bias stored as packed f16), SILU (fused SiLU after).
#include "common.wgsl"

const WG: u32 = 256u;
const CHUNK: u32 = 4096u; // elements one stats_partial workgroup reduces: 16 per invocation

struct Params {
    groups: u32,           // N * G
    group_len: u32,        // C / G * spatial
    chunks_per_group: u32, // ceil(group_len / CHUNK)
    channels: u32,
    spatial: u32,
    numel: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Summary of a set of values: how many, their mean, and the sum of squared deviations.
struct Moments {
    count: f32,
    mean: f32,
    m2: f32,
}

// Welford's update with one more value.
fn push(m: Moments, v: f32) -> Moments {
    let count = m.count + 1.0;
    let delta = v - m.mean;
    let mean = m.mean + delta / count;
    return Moments(count, mean, m.m2 + delta * (v - mean));
}

// Chan et al.'s merge of two disjoint sets.
fn merge(a: Moments, b: Moments) -> Moments {
    if (b.count == 0.0) {
        return a; // also keeps two empty sets from dividing 0 by 0
    }
    let count = a.count + b.count;
    let delta = b.mean - a.mean;
    let b_share = b.count / count;
    return Moments(count, a.mean + delta * b_share, a.m2 + b.m2 + delta * delta * a.count * b_share);
}

#ifdef FUSED
const FUSED_WG: u32 = 64u;
// The reduction's two levels: FUSED_WG partial sums, then LANES sums of LANES each.
const LANES: u32 = 8u;

var<workgroup> sums: array<f32, FUSED_WG>;
var<workgroup> sums_of_sums: array<f32, LANES>;

// The sum of every invocation's value, with three barriers and no more than LANES loads
// an invocation (on GPUs emulated on a CPU a barrier and a scattered load are the dear
// parts); call from uniform control flow.
fn workgroup_sum(lid: u32, own: f32) -> f32 {
    sums[lid] = own;
    workgroupBarrier();
    if (lid < LANES) {
        var s = 0.0;
        for (var i = 0u; i < LANES; i++) {
            s += sums[lid * LANES + i];
        }
        sums_of_sums[lid] = s;
    }
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < LANES; i++) {
        total += sums_of_sums[i];
    }
    // Everyone has read the total before a following call overwrites the arrays.
    workgroupBarrier();
    return total;
}

@group(0) @binding(1) var<storage, read> x: array<f32>;
#ifdef AFFINE_F16
@group(0) @binding(2) var<storage, read> weight: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<u32>;
fn load_weight(c: u32) -> f32 { return f16_word(weight[c >> 1u], c); }
fn load_bias(c: u32) -> f32 { return f16_word(bias[c >> 1u], c); }
#else
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
fn load_weight(c: u32) -> f32 { return weight[c]; }
fn load_bias(c: u32) -> f32 { return bias[c]; }
#endif
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(FUSED_WG)
fn fused(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_id) lid: vec3<u32>) {
    let group = flat_workgroup(wid, nwg);
    // A folded grid can round past the last group: those workgroups touch nothing.
    let len = select(0u, p.group_len, group < p.groups);
    let start = group * p.group_len;
    var sum = 0.0;
    for (var i = lid.x; i < len; i += FUSED_WG) {
        sum += x[start + i];
    }
    let mean = workgroup_sum(lid.x, sum) / f32(p.group_len);
    var squares = 0.0;
    for (var i = lid.x; i < len; i += FUSED_WG) {
        let d = x[start + i] - mean;
        squares += d * d;
    }
    let inv_std = 1.0 / sqrt(workgroup_sum(lid.x, squares) / f32(p.group_len) + p.eps);
    // The group's first channel; a group spans group_len / spatial channels.
    let first_channel = (start / p.spatial) % p.channels;
    for (var i = lid.x; i < len; i += FUSED_WG) {
        let channel = first_channel + i / p.spatial;
        var v = (x[start + i] - mean) * inv_std * load_weight(channel) + load_bias(channel);
#ifdef SILU
        v = silu(v);
#endif
        out[start + i] = v;
    }
}
#endif

#ifndef NORMALISE
#ifndef FUSED
var<workgroup> moments: array<Moments, WG>;

// Merges every invocation's moments into one; call from uniform control flow.
fn workgroup_merge(lid: u32, own: Moments) -> Moments {
    moments[lid] = own;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            moments[lid] = merge(moments[lid], moments[lid + stride]);
        }
        workgroupBarrier();
    }
    return moments[0];
}
#endif
#endif

#ifdef STATS_PARTIAL
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>; // [groups * chunks_per_group, 3]

@compute @workgroup_size(WG)
fn stats_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let chunk_id = flat_workgroup(wid, nwg);
    let group = chunk_id / p.chunks_per_group;
    // A folded grid can round past the last chunk: those workgroups reduce an empty range.
    let in_range = group < p.groups;
    let group_start = group * p.group_len;
    let start = select(0u, group_start + (chunk_id % p.chunks_per_group) * CHUNK, in_range);
    let end = select(0u, min(start + CHUNK, group_start + p.group_len), in_range);
    var own = Moments(0.0, 0.0, 0.0);
    for (var i = start + lid.x; i < end; i += WG) {
        own = push(own, x[i]);
    }
    let total = workgroup_merge(lid.x, own);
    if (lid.x == 0u && in_range) {
        partials[3u * chunk_id] = total.count;
        partials[3u * chunk_id + 1u] = total.mean;
        partials[3u * chunk_id + 2u] = total.m2;
    }
}
#endif

#ifdef STATS_COMBINE
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> stats: array<f32>; // [groups, 2]: mean, 1/std

@compute @workgroup_size(WG)
fn stats_combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let group = flat_workgroup(wid, nwg);
    let in_range = group < p.groups;
    let first = group * p.chunks_per_group;
    let chunks = select(0u, p.chunks_per_group, in_range);
    var own = Moments(0.0, 0.0, 0.0);
    for (var c = lid.x; c < chunks; c += WG) {
        let k = 3u * (first + c);
        own = merge(own, Moments(partials[k], partials[k + 1u], partials[k + 2u]));
    }
    let total = workgroup_merge(lid.x, own);
    if (lid.x == 0u && in_range) {
        stats[2u * group] = total.mean;
        stats[2u * group + 1u] = 1.0 / sqrt(total.m2 / total.count + p.eps);
    }
}
#endif

#ifdef NORMALISE
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> stats: array<f32>;
#ifdef AFFINE_F16
@group(0) @binding(3) var<storage, read> weight: array<u32>;
@group(0) @binding(4) var<storage, read> bias: array<u32>;
fn load_weight(c: u32) -> f32 { return f16_word(weight[c >> 1u], c); }
fn load_bias(c: u32) -> f32 { return f16_word(bias[c >> 1u], c); }
#else
@group(0) @binding(3) var<storage, read> weight: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
fn load_weight(c: u32) -> f32 { return weight[c]; }
fn load_bias(c: u32) -> f32 { return bias[c]; }
#endif
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn normalise(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_workgroup(wid, nwg) * WG + lid.x;
    if (i >= p.numel) {
        return;
    }
    let group = i / p.group_len;
    let channel = (i / p.spatial) % p.channels;
    var v = (x[i] - stats[2u * group]) * stats[2u * group + 1u] * load_weight(channel) + load_bias(channel);
#ifdef SILU
    v = silu(v);
#endif
    out[i] = v;
}
#endif
