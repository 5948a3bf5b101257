// Fused multi-head attention, flash-attention style: out = softmax(scale * q k^T) v per
// head, with an online softmax, so the Sq x Skv score matrix never exists in memory.
//
// Layout: q and out are [B, Sq, H*D], k and v [B, Skv, H*D] (what diffusers' to_q/to_k/to_v
// produce): head h of a token is the D values starting at h*D.
//
// Design (256 invocations, at most 16 KiB of workgroup memory):
// - A workgroup owns ROWS = 256 / ROW_THREADS query rows of one (batch, head):
//   grid x = query block, y = head, z = batch.
// - Each query row belongs to ROW_THREADS invocations; invocation t of a row owns the SLOTS
//   head-dim elements d = t, t + ROW_THREADS, t + 2*ROW_THREADS, ... (strided, so
//   neighbouring invocations touch neighbouring words). The head dim is padded with zeros to
//   PADDED = ROW_THREADS * SLOTS. Each invocation keeps its slice of the pre-scaled query
//   row and of the output accumulator in registers for the whole kernel.
// - Keys and values go through workgroup memory KEY_BLOCK rows at a time:
//   1. the block's K rows are staged in `kv`;
//   2. every invocation writes its partial dot product (over its slice) with each key of
//      the block to `partial`;
//   3. the ROW_THREADS partials of each (row, key) are summed into `scores`, masked keys
//      set to MASKED; meanwhile the block's V rows replace K in `kv`;
//   4. every invocation updates its row's running max and running sum and rescales and
//      accumulates its output slice (the online softmax; every invocation of a row does
//      the same few exp2s, which is cheaper than another barrier).
//   The softmax runs in base 2: log2(e) is folded into the query scale.
//   Workgroup memory: KEY_BLOCK * (PADDED + 256 + ROWS) f32; the launcher picks KEY_BLOCK
//   to fit 16 KiB.
// - Causal (key j visible to query i when j <= i, PyTorch's is_causal): a workgroup stops at
//   the last key its last row can see, so fully masked key blocks are never loaded.
// Defines: ROW_THREADS (power of two dividing 256), SLOTS, KEY_BLOCK.

const WG: u32 = 256u;
const ROWS: u32 = WG / ROW_THREADS;
const PADDED: u32 = ROW_THREADS * SLOTS;
const KV_TILE: u32 = KEY_BLOCK * PADDED;
const SCORE_TILE: u32 = ROWS * KEY_BLOCK;
const PARTIAL_TILE: u32 = SCORE_TILE * ROW_THREADS;
// Far below any real score yet finite (WGSL has no infinity): exp2(MASKED - m) is exactly 0
// for any real running max m, and MASKED - MASKED stays finite.
const MASKED: f32 = -1e30;

struct Params {
    q_len: u32,
    kv_len: u32,
    heads: u32,
    head_dim: u32,
    scale_log2: f32, // the softmax scale times log2(e)
    causal: u32,
    batch: u32,      // (attention_rows.wgsl's)
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> kv: array<f32, KV_TILE>;
var<workgroup> partial: array<f32, PARTIAL_TILE>;
var<workgroup> scores: array<f32, SCORE_TILE>;

// Index of element 0 of `head` of token `token` in a [B, seq_len, H*D] tensor.
fn head_start(batch: u32, seq_len: u32, token: u32, head: u32) -> u32 {
    return ((batch * seq_len + token) * p.heads + head) * p.head_dim;
}

// Copies keys (or values) [k0, k0 + KEY_BLOCK) of one head into `kv` as KEY_BLOCK rows of
// PADDED, with zeros past the sequence and past the head dim.
fn stage(keys: bool, batch: u32, head: u32, k0: u32, lid: u32) {
    for (var i = lid; i < KV_TILE; i += WG) {
        let key = k0 + i / PADDED;
        let d = i % PADDED;
        var value = 0.0;
        if (key < p.kv_len && d < p.head_dim) {
            let at = head_start(batch, p.kv_len, key, head) + d;
            if (keys) { value = k[at]; } else { value = v[at]; }
        }
        kv[i] = value;
    }
}

// Step 2: this invocation's share of q . k for every key of the staged block.
fn partial_dots(qs: ptr<function, array<f32, SLOTS>>, row: u32, t: u32) {
    for (var j = 0u; j < KEY_BLOCK; j++) {
        var share = 0.0;
        for (var i = 0u; i < SLOTS; i++) {
            share += (*qs)[i] * kv[j * PADDED + t + i * ROW_THREADS];
        }
        partial[(row * KEY_BLOCK + j) * ROW_THREADS + t] = share;
    }
}

// Step 3: invocation t of a row finishes the scores of keys t, t + ROW_THREADS, ...
fn finish_scores(row: u32, t: u32, query: u32, k0: u32) {
    for (var j = t; j < KEY_BLOCK; j += ROW_THREADS) {
        let first = (row * KEY_BLOCK + j) * ROW_THREADS;
        var score = 0.0;
        for (var s = 0u; s < ROW_THREADS; s++) {
            score += partial[first + s];
        }
        let key = k0 + j;
        let hidden = key >= p.kv_len || (p.causal != 0u && key > query);
        scores[row * KEY_BLOCK + j] = select(score, MASKED, hidden);
    }
}

// Step 4: folds the staged value block into the running max, sum and output slice.
fn accumulate(acc: ptr<function, array<f32, SLOTS>>, run_max: ptr<function, f32>,
              run_sum: ptr<function, f32>, row: u32, t: u32) {
    var block_max = MASKED;
    for (var j = 0u; j < KEY_BLOCK; j++) {
        block_max = max(block_max, scores[row * KEY_BLOCK + j]);
    }
    let new_max = max(*run_max, block_max);
    let rescale = exp2(*run_max - new_max);
    var sum = *run_sum * rescale;
    for (var i = 0u; i < SLOTS; i++) {
        (*acc)[i] *= rescale;
    }
    for (var j = 0u; j < KEY_BLOCK; j++) {
        let weight = exp2(scores[row * KEY_BLOCK + j] - new_max);
        sum += weight;
        for (var i = 0u; i < SLOTS; i++) {
            (*acc)[i] += weight * kv[j * PADDED + t + i * ROW_THREADS];
        }
    }
    *run_max = new_max;
    *run_sum = sum;
}

// Keys the workgroup whose first query row is q0 must visit (uniform: barriers depend on it).
fn keys_to_visit(q0: u32) -> u32 {
    if (p.causal != 0u) {
        return min(p.kv_len, min(q0 + ROWS, p.q_len));
    }
    return p.kv_len;
}

@compute @workgroup_size(WG)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = lid / ROW_THREADS;
    let t = lid % ROW_THREADS;
    let head = wid.y;
    let batch = wid.z;
    let q0 = wid.x * ROWS;
    let query = q0 + row;
    // Rows past the sequence compute on zeros and store nothing: no early return, the
    // barriers below need every invocation.
    let live = query < p.q_len;

    var qs: array<f32, SLOTS>;
    var acc: array<f32, SLOTS>;
    for (var i = 0u; i < SLOTS; i++) {
        let d = t + i * ROW_THREADS;
        var x = 0.0;
        if (live && d < p.head_dim) {
            x = q[head_start(batch, p.q_len, query, head) + d];
        }
        qs[i] = x * p.scale_log2;
        acc[i] = 0.0;
    }
    var run_max = MASKED;
    var run_sum = 0.0;

    let end = keys_to_visit(q0);
    for (var k0 = 0u; k0 < end; k0 += KEY_BLOCK) {
        stage(true, batch, head, k0, lid);
        workgroupBarrier();
        partial_dots(&qs, row, t);
        workgroupBarrier();
        finish_scores(row, t, query, k0);
        stage(false, batch, head, k0, lid);
        workgroupBarrier();
        accumulate(&acc, &run_max, &run_sum, row, t);
        // The next block's K overwrites `kv` and `scores` only after everyone has read them.
        workgroupBarrier();
    }

    if (live) {
        // Key 0 is always visible, so run_sum >= 1 (the max key's weight is exp2(0)).
        let inv_sum = 1.0 / run_sum;
        let start = head_start(batch, p.q_len, query, head);
        for (var i = 0u; i < SLOTS; i++) {
            let d = t + i * ROW_THREADS;
            if (d < p.head_dim) {
                out[start + d] = acc[i] * inv_sum;
            }
        }
    }
}
