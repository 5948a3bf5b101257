//! CPU reference for the sinusoidal timestep embedding, in f64.

/// diffusers' `get_timestep_embedding` for `timesteps`, row-major `[B, dim]`.
pub fn timestep_embedding(
    timesteps: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f32,
    scale: f32,
    max_period: f32,
) -> Vec<f32> {
    let half = dim / 2;
    let mut out = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let angles: Vec<f64> = (0..half)
            .map(|j| {
                let exponent = -(max_period as f64).ln() * j as f64 / (half as f64 - downscale_freq_shift as f64);
                scale as f64 * t as f64 * exponent.exp()
            })
            .collect();
        let sines = angles.iter().map(|a| a.sin());
        let cosines = angles.iter().map(|a| a.cos());
        let row: Vec<f64> = if flip_sin_to_cos { cosines.chain(sines).collect() } else { sines.chain(cosines).collect() };
        out.extend(row.iter().map(|&v| v as f32));
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    out
}
