//! CPU reference for multi-head attention: the textbook `softmax(scale * q k^T) v` per
//! batch and head, the whole score row at once, in f64.

/// Sizes of an attention problem: q is `[batch, q_len, heads*head_dim]`, k and v are
/// `[batch, kv_len, heads*head_dim]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// `[batch, q_len, heads*head_dim]`: for each head, `softmax(scale * q k^T) v`; with
/// `causal`, query `i` sees keys `j <= i` only.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], shape: &AttentionShape, scale: f32, causal: bool) -> Vec<f32> {
    let AttentionShape { batch, q_len, kv_len, heads, head_dim } = *shape;
    let width = heads * head_dim;
    assert_eq!(q.len(), batch * q_len * width, "q length");
    assert_eq!(k.len(), batch * kv_len * width, "k length");
    assert_eq!(v.len(), batch * kv_len * width, "v length");
    let mut out = vec![0.0f32; q.len()];
    for b in 0..batch {
        for h in 0..heads {
            // Start of head h of token s in a tensor of seq_len tokens.
            let at = |seq_len: usize, s: usize| (b * seq_len + s) * width + h * head_dim;
            for i in 0..q_len {
                let visible = if causal { (i + 1).min(kv_len) } else { kv_len };
                let scores: Vec<f64> = (0..visible)
                    .map(|j| {
                        let dot: f64 = (0..head_dim).map(|d| q[at(q_len, i) + d] as f64 * k[at(kv_len, j) + d] as f64).sum();
                        dot * scale as f64
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for d in 0..head_dim {
                    let value: f64 = weights.iter().enumerate().map(|(j, w)| w * v[at(kv_len, j) + d] as f64).sum();
                    out[at(q_len, i) + d] = (value / total) as f32;
                }
            }
        }
    }
    out
}
