// Row gather: out[r, c] = table[ids[r], c], the token embedding lookup. One
// invocation per output element.
// Defines: TABLE_F16 (table stored as packed f16); WEIGHT_QUANT (a q8 table, + WEIGHT_Q4
// for q4, dequantized as it is read); ROW_RANGE (the table binding is the
// chunk of rows row_start.. of a larger table: only output rows whose id falls in it
// are written, the others are left as they are).
#include "common.wgsl"

const WG: u32 = 256u;

struct Params {
    n: u32,           // output elements: ids * dim
    dim: u32,         // row width
    table_rows: u32,  // rows bound: at least 1
    row_start: u32,   // ROW_RANGE: the id of the first row bound
    row_words: u32,   // WEIGHT_QUANT: words per table row (quants and scales)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Element `col` of table row `row`.
#ifdef WEIGHT_QUANT
#include "quant.wgsl"
@group(0) @binding(1) var<storage, read> table: array<u32>;
fn load_table(row: u32, col: u32) -> f32 {
    let base = row * p.row_words;
    return quant_at(table[base + quant_word(col)], col % QUANTS_PER_WORD) * block_scale(table[base + scale_word(p.dim, col)], col);
}
#else
#ifdef TABLE_F16
@group(0) @binding(1) var<storage, read> table: array<u32>;
fn load_table(row: u32, col: u32) -> f32 { let i = row * p.dim + col; return f16_word(table[i >> 1u], i); }
#else
@group(0) @binding(1) var<storage, read> table: array<f32>;
fn load_table(row: u32, col: u32) -> f32 { return table[row * p.dim + col]; }
#endif
#endif

@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn gather_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_workgroup(wid, nwg) * WG + lid.x;
    if (i >= p.n) { return; }
    let row = i / p.dim;
    let col = i % p.dim;
#ifdef ROW_RANGE
    // Ids below row_start wrap around past table_rows: another chunk's rows.
    let id = ids[row] - p.row_start;
    if (id >= p.table_rows) { return; }
#else
    // Callers reject out-of-range ids on the CPU; the clamp only keeps a bad id
    // from reading past the table.
    let id = min(ids[row], p.table_rows - 1u);
#endif
    out[i] = load_table(id, col);
}
