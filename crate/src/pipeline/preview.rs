//! Cheap previews of the latents at every step: a linear map from the latent channels
//! to RGB (plus a bias), applied on the GPU at latent resolution. The map is fitted to
//! the model's own VAE by least squares, so it needs no per-model table.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::kernels::elementwise as ew;
use crate::kernels::layout;
use crate::kernels::matmul::{MatmulOptions, matmul};
use crate::models::taesd::AutoencoderTiny;
use crate::models::vae::AutoencoderKl;
use crate::rng::TorchGenerator;

/// `rgb = weight @ latent + bias` per latent pixel, RGB in [-1, 1] like a VAE's output.
pub struct LatentPreview {
    weight: Tensor, // [3, C]
    bias: Tensor,   // [3]
    channels: usize,
}

/// How step previews are drawn: the fitted linear map (nearly free, latent resolution)
/// or TAESD (a tiny decoder, full resolution, still far cheaper than a step).
pub enum Previewer {
    Linear(LatentPreview),
    Taesd(AutoencoderTiny),
}

impl Previewer {
    /// The preview of the sampler's `latents` as an image `[B, 3, H, W]` in about [-1, 1].
    pub fn render(&self, latents: &Tensor) -> Result<Tensor> {
        match self {
            Previewer::Linear(map) => map.project(latents),
            // Like diffusers with TAESD as the VAE: decode(latents / scaling_factor).
            Previewer::Taesd(taesd) => taesd.decode(&ew::scale(latents.gpu(), latents, 1.0 / taesd.scaling_factor())?),
        }
    }
}

/// Latent pixels the fit decodes: a 16x16 grid is plenty for C+1 unknowns per colour
/// and keeps the decode at a sixteenth of a 512x512 image's cost.
const FIT_SIDE: usize = 16;

impl LatentPreview {
    /// `weight` rows are R, G, B over the latent channels.
    pub fn from_coefficients(gpu: &Gpu, weight: &[Vec<f32>; 3], bias: [f32; 3]) -> Result<Self> {
        let channels = weight[0].len();
        if weight.iter().any(|row| row.len() != channels) || channels == 0 {
            return Err(Error::shape("LatentPreview", "the three rows need one coefficient per latent channel"));
        }
        Ok(Self { weight: gpu.upload_f32(&[3, channels], &weight.concat())?, bias: gpu.upload_f32(&[3], &bias)?, channels })
    }

    /// Fits the map to `vae`: decodes seeded standard-normal latents (the sampler's
    /// scale) and regresses each decoded pixel block's mean colour on its latent.
    pub async fn fit(gpu: &Gpu, vae: &AutoencoderKl) -> Result<Self> {
        let channels = vae.config().latent_channels;
        let factor = vae.downsampling_factor();
        let shape = [1, channels, FIT_SIDE, FIT_SIDE];
        let latents = TorchGenerator::new(0).randn(shape.iter().product());
        let scaled: Vec<f32> = latents.iter().map(|v| v / vae.scaling_factor()).collect();
        let image = vae.decode(&gpu.upload_f32(&shape, &scaled)?)?.to_vec().await?;
        let side = FIT_SIDE * factor;
        let pixels = FIT_SIDE * FIT_SIDE;
        let mut samples = Vec::with_capacity(pixels);
        for y in 0..FIT_SIDE {
            for x in 0..FIT_SIDE {
                let input: Vec<f64> = (0..channels).map(|c| latents[c * pixels + y * FIT_SIDE + x] as f64).collect();
                let colour: [f64; 3] = std::array::from_fn(|rgb| {
                    let block =
                        (0..factor * factor).map(|i| image[rgb * side * side + (y * factor + i / factor) * side + x * factor + i % factor]);
                    block.map(f64::from).sum::<f64>() / (factor * factor) as f64
                });
                samples.push((input, colour));
            }
        }
        let (weight, bias) = least_squares(&samples, channels)?;
        Self::from_coefficients(gpu, &weight, bias)
    }

    /// `latents [B, C, h, w]` to an RGB preview `[B, 3, h, w]` in about [-1, 1].
    pub fn project(&self, latents: &Tensor) -> Result<Tensor> {
        let gpu = latents.gpu();
        let &[batch, channels, h, w] = latents.shape() else {
            return Err(Error::shape("preview", format!("latents must be [B, C, h, w], got {:?}", latents.shape())));
        };
        if channels != self.channels {
            return Err(Error::shape("preview", format!("{channels} latent channels, the preview map has {}", self.channels)));
        }
        let pixels = layout::permute(gpu, latents, &[0, 2, 3, 1])?.reshape(&[batch * h * w, channels])?;
        let rgb = matmul(gpu, &pixels, &self.weight, &MatmulOptions { transpose_b: true, bias: Some(&self.bias), ..Default::default() })?;
        layout::permute(gpu, &rgb.reshape(&[batch, h, w, 3])?, &[0, 3, 1, 2])
    }
}

/// Per colour, the `channels` weights and bias minimising the squared error over
/// `samples` (normal equations in f64; (C+1)x(C+1) is tiny).
fn least_squares(samples: &[(Vec<f64>, [f64; 3])], channels: usize) -> Result<([Vec<f32>; 3], [f32; 3])> {
    let n = channels + 1;
    let mut gram = vec![vec![0.0f64; n]; n];
    let mut rhs = vec![[0.0f64; 3]; n];
    for (input, colour) in samples {
        let row: Vec<f64> = input.iter().copied().chain([1.0]).collect();
        for i in 0..n {
            for j in 0..n {
                gram[i][j] += row[i] * row[j];
            }
            for (k, c) in colour.iter().enumerate() {
                rhs[i][k] += row[i] * c;
            }
        }
    }
    // Gauss-Jordan elimination with partial pivoting.
    for col in 0..n {
        let pivot = (col..n).max_by(|&a, &b| gram[a][col].abs().total_cmp(&gram[b][col].abs())).unwrap_or(col);
        if gram[pivot][col].abs() < 1e-12 {
            return Err(Error::shape("preview fit", "the latent samples are degenerate"));
        }
        gram.swap(col, pivot);
        rhs.swap(col, pivot);
        let (pivot_row, pivot_rhs) = (gram[col].clone(), rhs[col]);
        for row in (0..n).filter(|&row| row != col) {
            let f = gram[row][col] / pivot_row[col];
            gram[row].iter_mut().zip(&pivot_row).for_each(|(g, p)| *g -= f * p);
            rhs[row].iter_mut().zip(&pivot_rhs).for_each(|(r, p)| *r -= f * p);
        }
    }
    let solution: Vec<[f64; 3]> = (0..n).map(|i| rhs[i].map(|v| v / gram[i][i])).collect();
    let weight = std::array::from_fn(|k| (0..channels).map(|c| solution[c][k] as f32).collect());
    Ok((weight, std::array::from_fn(|k| solution[channels][k] as f32)))
}

#[cfg(test)]
mod tests {
    use super::least_squares;

    #[test]
    fn least_squares_recovers_an_exact_linear_map() {
        let weight = [[0.3, -0.2, 0.5, 0.1], [0.0, 0.4, -0.3, 0.2], [-0.5, 0.1, 0.2, 0.6]];
        let bias = [0.1, -0.2, 0.05];
        let samples: Vec<(Vec<f64>, [f64; 3])> = (0..50)
            .map(|i| {
                let x: Vec<f64> = (0..4).map(|c| ((i * 7 + c * 13) % 17) as f64 / 8.0 - 1.0).collect();
                let y = std::array::from_fn(|k| (0..4).map(|c| weight[k][c] * x[c]).sum::<f64>() + bias[k]);
                (x, y)
            })
            .collect();
        let (w, b) = least_squares(&samples, 4).unwrap();
        for k in 0..3 {
            assert!((b[k] as f64 - bias[k]).abs() < 1e-5, "bias {k}");
            for c in 0..4 {
                assert!((w[k][c] as f64 - weight[k][c]).abs() < 1e-5, "weight {k},{c}");
            }
        }
        assert!(least_squares(&vec![(vec![1.0, 1.0], [0.0; 3]); 5], 2).is_err(), "degenerate samples");
    }
}
