//! CPU reference for the softmax over the last dimension, in f64.

/// `softmax(scale * x)` over each row of `len` values.
pub fn softmax(x: &[f32], len: usize, scale: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(len) {
        let scaled: Vec<f64> = row.iter().map(|&v| scale as f64 * v as f64).collect();
        let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exps: Vec<f64> = scaled.iter().map(|v| (v - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        out.extend(exps.iter().map(|e| (e / sum) as f32));
    }
    out
}
