// Multi-head attention for short heads (up to 32 values, a multiple of 4), one invocation
// per query row: softmax(scale * q k^T) v with an online softmax, no workgroup memory and
// no barrier. On GPUs emulated on a CPU, attention.wgsl's staging and barriers cost more
// than the arithmetic at the small models' sizes; here every key and value load has the
// same address in all invocations of a head (one load, broadcast), and the query row and
// the output row stay in registers.
// Same layout, bindings and parameters as attention.wgsl: q and out [B, Sq, H*D], k and v
// [B, Skv, H*D]. Value define: HEAD_VECS (D / 4). The row is written out with constant
// indices (see the register block's comment in conv2d.wgsl).
#include "common.wgsl"

const WG: u32 = 64u;
// Far below any real score yet finite, as in attention.wgsl.
const MASKED: f32 = -1e30;

struct Params {
    q_len: u32,
    kv_len: u32,
    heads: u32,
    head_dim: u32,
    scale_log2: f32, // the softmax scale times log2(e)
    causal: u32,
    batch: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qv: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> kv_k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> kv_v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;

// The vec4 index of element 0 of `head` of token `token` in a [B, seq_len, H*D] tensor.
fn head_start(batch: u32, seq_len: u32, token: u32, head: u32) -> u32 {
    return ((batch * seq_len + token) * p.heads + head) * HEAD_VECS;
}

@compute @workgroup_size(WG)
fn attention_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    // Rows ordered (batch, head, query): the invocations of a workgroup share a head, so
    // they read the same keys at the same time.
    let row = flat_workgroup(wid, nwg) * WG + lid;
    let query = row % p.q_len;
    let head = (row / p.q_len) % p.heads;
    let batch = row / (p.q_len * p.heads);
    if (batch >= p.batch) {
        return;
    }
    let qs = head_start(batch, p.q_len, query, head);
    var q: array<vec4<f32>, 8>;
    q[0] = qv[qs + 0u] * p.scale_log2;
    if (HEAD_VECS > 1u) { q[1] = qv[qs + 1u] * p.scale_log2; }
    if (HEAD_VECS > 2u) { q[2] = qv[qs + 2u] * p.scale_log2; }
    if (HEAD_VECS > 3u) { q[3] = qv[qs + 3u] * p.scale_log2; }
    if (HEAD_VECS > 4u) { q[4] = qv[qs + 4u] * p.scale_log2; }
    if (HEAD_VECS > 5u) { q[5] = qv[qs + 5u] * p.scale_log2; }
    if (HEAD_VECS > 6u) { q[6] = qv[qs + 6u] * p.scale_log2; }
    if (HEAD_VECS > 7u) { q[7] = qv[qs + 7u] * p.scale_log2; }
    var acc: array<vec4<f32>, 8>;
    var run_max = MASKED;
    var run_sum = 0.0;
    // Causal: keys past the query are never visited (key 0 always is).
    let end = select(p.kv_len, min(p.kv_len, query + 1u), p.causal != 0u);
    for (var key = 0u; key < end; key++) {
        let ks = head_start(batch, p.kv_len, key, head);
        var s = 0.0;
        s += dot(q[0], kv_k[ks]);
        if (HEAD_VECS > 1u) { s += dot(q[1], kv_k[ks + 1u]); }
        if (HEAD_VECS > 2u) { s += dot(q[2], kv_k[ks + 2u]); }
        if (HEAD_VECS > 3u) { s += dot(q[3], kv_k[ks + 3u]); }
        if (HEAD_VECS > 4u) { s += dot(q[4], kv_k[ks + 4u]); }
        if (HEAD_VECS > 5u) { s += dot(q[5], kv_k[ks + 5u]); }
        if (HEAD_VECS > 6u) { s += dot(q[6], kv_k[ks + 6u]); }
        if (HEAD_VECS > 7u) { s += dot(q[7], kv_k[ks + 7u]); }
        let new_max = max(run_max, s);
        let rescale = exp2(run_max - new_max);
        let weight = exp2(s - new_max);
        run_sum = run_sum * rescale + weight;
        acc[0] = acc[0] * rescale + weight * kv_v[ks];
        if (HEAD_VECS > 1u) { acc[1] = acc[1] * rescale + weight * kv_v[ks + 1u]; }
        if (HEAD_VECS > 2u) { acc[2] = acc[2] * rescale + weight * kv_v[ks + 2u]; }
        if (HEAD_VECS > 3u) { acc[3] = acc[3] * rescale + weight * kv_v[ks + 3u]; }
        if (HEAD_VECS > 4u) { acc[4] = acc[4] * rescale + weight * kv_v[ks + 4u]; }
        if (HEAD_VECS > 5u) { acc[5] = acc[5] * rescale + weight * kv_v[ks + 5u]; }
        if (HEAD_VECS > 6u) { acc[6] = acc[6] * rescale + weight * kv_v[ks + 6u]; }
        if (HEAD_VECS > 7u) { acc[7] = acc[7] * rescale + weight * kv_v[ks + 7u]; }
        run_max = new_max;
    }
    let inv_sum = 1.0 / run_sum;
    out[qs + 0u] = acc[0] * inv_sum;
    if (HEAD_VECS > 1u) { out[qs + 1u] = acc[1] * inv_sum; }
    if (HEAD_VECS > 2u) { out[qs + 2u] = acc[2] * inv_sum; }
    if (HEAD_VECS > 3u) { out[qs + 3u] = acc[3] * inv_sum; }
    if (HEAD_VECS > 4u) { out[qs + 4u] = acc[4] * inv_sum; }
    if (HEAD_VECS > 5u) { out[qs + 5u] = acc[5] * inv_sum; }
    if (HEAD_VECS > 6u) { out[qs + 6u] = acc[6] * inv_sum; }
    if (HEAD_VECS > 7u) { out[qs + 7u] = acc[7] * inv_sum; }
}
