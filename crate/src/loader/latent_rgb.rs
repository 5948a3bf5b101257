//! The VAE's latent-to-RGB map for cheap previews, as data: `rgb = weight @ latent +
//! bias` per latent pixel, on latents as the sampler holds them (scaled) and RGB in
//! [-1, 1] like the decoder's output. A package stores it (fitted by the converter);
//! a model folder may carry it as `vae/latent_rgb.json`. It lives with the model's files
//! rather than with the VAE because the package's manifest reads and checks it too, and
//! the package layer sits below the models.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The file name beside the VAE's `config.json`.
pub const LATENT_RGB_FILE: &str = "latent_rgb.json";

/// diffusers' `AutoencoderKL` default `latent_channels`, for a VAE config that leaves it out.
pub const DEFAULT_LATENT_CHANNELS: usize = 4;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatentRgb {
    /// Rows R, G, B; one coefficient per latent channel.
    pub weight: [Vec<f32>; 3],
    pub bias: [f32; 3],
    /// The share of colour variance the map explained on an image it was not fitted on,
    /// where it was fitted (see `pipeline::fit_latent_rgb`); previews decode instead
    /// when it is low.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explained: Option<f32>,
}

impl LatentRgb {
    pub fn channels(&self) -> usize {
        self.weight[0].len()
    }

    /// Checks the map fits a VAE with `latent_channels`; `file` names its origin.
    pub fn validate(&self, latent_channels: usize, file: &str) -> Result<()> {
        let invalid = |detail: String| Err(Error::Format { file: file.to_string(), detail });
        if let Some(row) = self.weight.iter().position(|row| row.len() != latent_channels) {
            return invalid(format!(
                "latent_rgb weight row {row} has {} coefficients for {latent_channels} latent channels",
                self.weight[row].len()
            ));
        }
        if !self.weight.iter().flatten().chain(&self.bias).chain(&self.explained).all(|v| v.is_finite()) {
            return invalid("latent_rgb has a value that is not finite".into());
        }
        if self.explained.is_some_and(|e| e > 1.0) {
            return invalid(format!("latent_rgb explained {:?} is over 1", self.explained));
        }
        Ok(())
    }
}
