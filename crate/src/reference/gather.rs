//! CPU reference for the row gather (embedding lookup).

/// Rows `ids` of the row-major `[rows, dim]` `table`, concatenated. Every id must be
/// a row of the table.
pub fn gather_rows(table: &[f32], dim: usize, ids: &[u32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(ids.len() * dim);
    for &id in ids {
        let start = id as usize * dim;
        out.extend_from_slice(&table[start..start + dim]);
    }
    out
}
