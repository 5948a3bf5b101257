//! CPU references for group and layer normalisation: two passes in f64 (the mean,
//! then the mean squared deviation), PyTorch semantics (biased variance, eps inside
//! the square root).

/// Normalises `values` in place to zero mean and unit variance (with `eps`).
fn standardise(values: &mut [f64], eps: f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let inv_std = 1.0 / (variance + eps).sqrt();
    for v in values {
        *v = (*v - mean) * inv_std;
    }
}

fn silu(v: f64) -> f64 {
    v / (1.0 + (-v).exp())
}

/// `torch.nn.functional.group_norm` on `x` of `shape` `[N, C, *spatial]`, then
/// SiLU when `fused_silu`. Panics when `C` is not a multiple of `groups`.
pub fn group_norm(x: &[f32], shape: &[usize], groups: usize, weight: &[f32], bias: &[f32], eps: f32, fused_silu: bool) -> Vec<f32> {
    let channels = shape[1];
    assert!(channels.is_multiple_of(groups), "{channels} channels do not split into {groups} groups");
    let spatial: usize = shape[2..].iter().product();
    let group_len = channels / groups * spatial;
    let mut out = Vec::with_capacity(x.len());
    // In [N, C, *spatial] order every group is one contiguous run of group_len values.
    for (run, values) in x.chunks(group_len).enumerate() {
        let mut normalised: Vec<f64> = values.iter().map(|&v| v as f64).collect();
        standardise(&mut normalised, eps as f64);
        let first_channel = (run % groups) * (channels / groups);
        for (i, v) in normalised.into_iter().enumerate() {
            let c = first_channel + i / spatial;
            let affine = v * weight[c] as f64 + bias[c] as f64;
            out.push(if fused_silu { silu(affine) } else { affine } as f32);
        }
    }
    out
}

/// `torch.nn.functional.layer_norm` over the last dimension (`dim` values per row).
pub fn layer_norm(x: &[f32], dim: usize, weight: &[f32], bias: &[f32], eps: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(dim) {
        let mut normalised: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        standardise(&mut normalised, eps as f64);
        out.extend(normalised.iter().zip(weight.iter().zip(bias)).map(|(v, (&w, &b))| (v * w as f64 + b as f64) as f32));
    }
    out
}
