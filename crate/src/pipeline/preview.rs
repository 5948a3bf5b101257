//! Cheap previews of the latents at every step: a linear map from the latent channels
//! to RGB (plus a bias), applied on the GPU at latent resolution. The map is the one
//! stored with the VAE (the converter fits one into every package), or one fitted to
//! the VAE at load, so no model needs a hand-made table. Where no linear map reads a
//! VAE's latents (our small embedded model's: a flat image of the right mean colour is
//! closer than the best map), a model ships a preview decoder (a tiny TAESD trained on
//! its VAE, `models/train/preview_decoder.py`), and without one previews decode with the
//! VAE itself.

use std::rc::Rc;

use rand_mt::Mt;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::kernels::elementwise as ew;
use crate::kernels::layout;
use crate::kernels::matmul::{MatmulOptions, matmul};
use crate::loader::LatentRgb;
use crate::models::taesd::AutoencoderTiny;
use crate::models::vae::AutoencoderKl;

/// `rgb = weight @ latent + bias` per latent pixel, RGB in [-1, 1] like a VAE's output.
pub struct LatentPreview {
    weight: Tensor, // [3, C]
    bias: Tensor,   // [3]
    channels: usize,
}

/// How step previews are drawn: the fitted linear map (nearly free, latent resolution),
/// the model's own VAE decoder (full resolution; for VAEs no linear map reads), or TAESD
/// (a tiny decoder, at the image's resolution or a fraction of it, far cheaper than a step).
pub enum Previewer {
    Linear(LatentPreview),
    Decoder,
    Taesd(Rc<AutoencoderTiny>),
}

/// A map explaining less of the colour variance than this previews by decoding.
pub const MIN_EXPLAINED: f32 = 0.5;

impl Previewer {
    /// The model's own preview decoder where it ships one, else `for_vae`.
    pub async fn for_model(gpu: &Gpu, sd: &super::StableDiffusion) -> Result<Self> {
        match sd.preview_decoder() {
            Some(decoder) => Ok(Previewer::Taesd(decoder.clone())),
            None => Self::for_vae(gpu, sd.vae()).await,
        }
    }

    /// The linear map stored with `vae` (else fitted now), or the decoder where that map
    /// says it explains too little.
    pub async fn for_vae(gpu: &Gpu, vae: &AutoencoderKl) -> Result<Self> {
        let map = match vae.latent_rgb() {
            Some(map) => map.clone(),
            None => fit_latent_rgb(gpu, vae).await?,
        };
        if map.explained.is_some_and(|e| e < MIN_EXPLAINED) {
            return Ok(Previewer::Decoder);
        }
        Ok(Previewer::Linear(LatentPreview::new(gpu, &map)?))
    }

    /// Previews decoded by `taesd` (far cheaper than the VAE), which must be made for
    /// latents like `vae`'s (`check_taesd_fits`).
    pub fn taesd(taesd: AutoencoderTiny, vae: &AutoencoderKl) -> Result<Self> {
        check_taesd_fits(&taesd, vae)?;
        Ok(Previewer::Taesd(Rc::new(taesd)))
    }

    /// The preview of the sampler's `latents` as an image `[B, 3, H, W]` in about [-1, 1];
    /// `vae` is the model's (what `Decoder` decodes with).
    pub fn render(&self, vae: &AutoencoderKl, latents: &Tensor) -> Result<Tensor> {
        match self {
            Previewer::Linear(map) => map.project(latents),
            Previewer::Decoder => vae.decode(&ew::scale(latents.gpu(), latents, 1.0 / vae.scaling_factor())?),
            // Like diffusers with TAESD as the VAE: decode(latents / scaling_factor).
            Previewer::Taesd(taesd) => taesd.decode(&ew::scale(latents.gpu(), latents, 1.0 / taesd.scaling_factor())?),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Previewer::Linear(_) => "linear map",
            Previewer::Decoder => "VAE decoder",
            Previewer::Taesd(_) => "TAESD",
        }
    }
}

/// Fails unless `taesd` decodes latents like `vae`'s: as many channels, upsampled by the
/// VAE's factor or by a divisor of it (a preview decoder may stop at a fraction of the
/// image's resolution, as the linear map stops at the latents': the page scales it up).
pub fn check_taesd_fits(taesd: &AutoencoderTiny, vae: &AutoencoderKl) -> Result<()> {
    let theirs = (taesd.config().latent_channels, taesd.downsampling_factor());
    let ours = (vae.config().latent_channels, vae.downsampling_factor());
    if theirs.0 != ours.0 || !ours.1.is_multiple_of(theirs.1) {
        return Err(Error::shape(
            "TAESD previews",
            format!(
                "the TAESD decodes {} latent channels at {}x, the model's VAE {} at {}x: not a TAESD for this model",
                theirs.0, theirs.1, ours.0, ours.1
            ),
        ));
    }
    Ok(())
}

impl LatentPreview {
    pub fn new(gpu: &Gpu, map: &LatentRgb) -> Result<Self> {
        let channels = map.channels();
        if map.weight.iter().any(|row| row.len() != channels) || channels == 0 {
            return Err(Error::shape("LatentPreview", "the three rows need one coefficient per latent channel"));
        }
        Ok(Self { weight: gpu.upload_f32(&[3, channels], &map.weight.concat())?, bias: gpu.upload_f32(&[3], &map.bias)?, channels })
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

/// Latent pixels per side of the image the fit encodes: 256 samples for C+1 unknowns
/// per colour, at a sixteenth of a 512x512 image's encoding cost for SD.
const FIT_SIDE: usize = 16;
/// Flat patches painted over the fit image's background.
const FIT_PATCHES: usize = 48;

/// Fits a preview map to `vae` on what a preview should show: an image's colours. A
/// seeded image of flat colour patches (aligned to latent pixels, colours uniform over
/// the RGB cube) is encoded, and each latent pixel's mean latent, scaled as the sampler
/// holds it, is regressed on its patch colour; a second such image, not fitted on,
/// measures the share of colour variance the map explains. (Fitting the decoder on
/// random latents instead fits it where no sampler goes.)
pub async fn fit_latent_rgb(gpu: &Gpu, vae: &AutoencoderKl) -> Result<LatentRgb> {
    let (weight, bias) = least_squares(&patch_samples(gpu, vae, 0).await?, vae.config().latent_channels)?;
    let held_out = patch_samples(gpu, vae, 1).await?;
    let predict = |latent: &[f64], k: usize| bias[k] as f64 + latent.iter().zip(&weight[k]).map(|(l, w)| l * *w as f64).sum::<f64>();
    let mut mean = [0.0f64; 3];
    for (_, colour) in &held_out {
        (0..3).for_each(|k| mean[k] += colour[k] / held_out.len() as f64);
    }
    let (mut residual, mut total) = (0.0, 0.0);
    for (latent, colour) in &held_out {
        for k in 0..3 {
            residual += (colour[k] - predict(latent, k)).powi(2);
            total += (colour[k] - mean[k]).powi(2);
        }
    }
    Ok(LatentRgb { weight, bias, explained: Some((1.0 - residual / total) as f32) })
}

/// (scaled mean latent, patch colour) of every latent pixel of patch image `seed`.
async fn patch_samples(gpu: &Gpu, vae: &AutoencoderKl, seed: u32) -> Result<Vec<(Vec<f64>, [f64; 3])>> {
    let channels = vae.config().latent_channels;
    let factor = vae.downsampling_factor();
    let colours = patch_colours(FIT_SIDE, FIT_PATCHES, seed);
    let side = FIT_SIDE * factor;
    let image: Vec<f32> = (0..3 * side * side)
        .map(|i| {
            let (rgb, y, x) = (i / (side * side), i / side % side, i % side);
            colours[(y / factor) * FIT_SIDE + x / factor][rgb]
        })
        .collect();
    let (mean, _) = vae.encode(&gpu.upload_f32(&[1, 3, side, side], &image)?)?;
    let latents = mean.to_vec().await?;
    let scale = vae.scaling_factor() as f64;
    let pixels = FIT_SIDE * FIT_SIDE;
    Ok((0..pixels).map(|p| ((0..channels).map(|c| latents[c * pixels + p] as f64 * scale).collect(), colours[p].map(f64::from))).collect())
}

/// A `side` x `side` grid of RGB colours in [-1, 1]: a background with `patches`
/// rectangles of 1 to 4 cells a side painted over it.
fn patch_colours(side: usize, patches: usize, seed: u32) -> Vec<[f32; 3]> {
    let mut engine = Mt::new(seed);
    let mut unit = || engine.next_u32() as f32 / 4_294_967_296.0;
    let mut grid = vec![std::array::from_fn(|_| unit() * 2.0 - 1.0); side * side];
    for _ in 0..patches {
        let fill: [f32; 3] = std::array::from_fn(|_| unit() * 2.0 - 1.0);
        let [w, h] = std::array::from_fn(|_| 1 + (unit() * 4.0) as usize);
        let [x0, y0] = std::array::from_fn(|_| (unit() * side as f32) as usize);
        for y in y0..(y0 + h).min(side) {
            grid[y * side + x0..y * side + (x0 + w).min(side)].fill(fill);
        }
    }
    grid
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
