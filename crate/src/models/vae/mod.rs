//! diffusers' `AutoencoderKL` (models/autoencoders/autoencoder_kl.py), the Stable
//! Diffusion VAE: an encoder from images to a diagonal Gaussian over latents and a
//! decoder back. Both run in f32 activations whatever the weights' storage, which is
//! what `force_upcast` asks for. Activations larger than one storage binding (the
//! decoder's [1, 256, 512, 512] at 512x512) are held and processed in channel chunks.

mod decoder;
mod distribution;
mod encoder;
mod mid_block;

pub use distribution::sample_latents;

use serde::Deserialize;

use super::nn::Conv2d;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::kernels::activation_limit::ActivationLimit;
use crate::kernels::attention::MAX_HEAD_DIM;
use crate::kernels::layout;
use crate::loader::{LATENT_RGB_FILE, LatentRgb, ModelFiles, WeightPrecision, read_config};
use crate::models::feature_map::ChunkPlan;
use crate::models::weights::Weights;
use decoder::Decoder;
use encoder::Encoder;

/// `sample_size` is one side or `[height, width]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    Square(usize),
    Rect([usize; 2]),
}

/// The VAE's `config.json`; absent fields take diffusers' defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AutoencoderKlConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub act_fn: String,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    /// The image size the model was trained at (diffusers uses it only to tile).
    pub sample_size: SampleSize,
    /// Latents are multiplied by this after encoding and divided before decoding (by the pipeline).
    pub scaling_factor: f32,
    pub shift_factor: Option<f32>,
    pub latents_mean: Option<Vec<f32>>,
    pub latents_std: Option<Vec<f32>>,
    /// Run the VAE in f32: activations always are here, so it needs nothing.
    pub force_upcast: bool,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
}

impl Default for AutoencoderKlConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into()],
            up_block_types: vec!["UpDecoderBlock2D".into()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".into(),
            latent_channels: crate::loader::DEFAULT_LATENT_CHANNELS,
            norm_num_groups: 32,
            sample_size: SampleSize::Square(32),
            scaling_factor: 0.18215,
            shift_factor: None,
            latents_mean: None,
            latents_std: None,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl AutoencoderKlConfig {
    /// Rejects what this implementation does not compute (or what diffusers could not build).
    fn validate(&self, file: &str) -> Result<()> {
        let unsupported = |detail: String| Err(Error::Unsupported { file: file.to_string(), detail });
        let invalid = |detail: String| Err(Error::Format { file: file.to_string(), detail });
        if let Some(kind) = self.down_block_types.iter().find(|kind| *kind != "DownEncoderBlock2D") {
            return unsupported(format!("down_block_types entry {kind:?} (only DownEncoderBlock2D)"));
        }
        if let Some(kind) = self.up_block_types.iter().find(|kind| *kind != "UpDecoderBlock2D") {
            return unsupported(format!("up_block_types entry {kind:?} (only UpDecoderBlock2D)"));
        }
        let blocks = self.block_out_channels.len();
        if blocks == 0 || self.down_block_types.len() != blocks || self.up_block_types.len() != blocks {
            return unsupported(format!(
                "{} down blocks and {} up blocks for {blocks} block_out_channels",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        // diffusers maps both names to SiLU.
        if !matches!(self.act_fn.as_str(), "silu" | "swish") {
            return unsupported(format!("act_fn {:?} (only silu)", self.act_fn));
        }
        // Both change what the pipeline does with latents, which only knows scaling_factor.
        if let Some(shift) = self.shift_factor {
            return unsupported(format!("shift_factor {shift} (only null)"));
        }
        if self.latents_mean.is_some() || self.latents_std.is_some() {
            return unsupported("latents_mean/latents_std (only null)".into());
        }
        let groups = self.norm_num_groups;
        if let Some(&channels) = self.block_out_channels.iter().find(|&&c| groups == 0 || c % groups != 0) {
            return invalid(format!("norm_num_groups {groups} does not divide block_out_channels entry {channels}"));
        }
        let mid_channels = self.block_out_channels[blocks - 1];
        // The mid block's attention has one head as wide as the channels.
        if self.mid_block_add_attention && mid_channels > MAX_HEAD_DIM {
            return unsupported(format!("a mid-block attention head of {mid_channels} channels (at most {MAX_HEAD_DIM})"));
        }
        Ok(())
    }
}

pub struct AutoencoderKl {
    config: AutoencoderKlConfig,
    encoder: Encoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    decoder: Decoder,
    /// The preview map stored with the model, if it has one.
    latent_rgb: Option<LatentRgb>,
    /// Activations over this many bytes are split; `None` is the device's binding limit.
    activation_limit: Option<u64>,
}

impl AutoencoderKl {
    /// Loads `component/config.json` and the component's weights (usually `vae`).
    pub fn load(gpu: &Gpu, files: &dyn ModelFiles, component: &str, precision: WeightPrecision) -> Result<Self> {
        let config_path = crate::loader::component_file(component, "config.json");
        let config: AutoencoderKlConfig = read_config(files, &config_path)?;
        config.validate(&files.describe(&config_path))?;
        let latent_rgb = read_latent_rgb(files, component, config.latent_channels)?;
        let weights = Weights::load(gpu, files, component, precision)?;
        let moments = 2 * config.latent_channels;
        let model = Self {
            encoder: Encoder::load(&weights.at("encoder"), &config)?,
            quant_conv: config.use_quant_conv.then(|| Conv2d::load(&weights.at("quant_conv"), moments, moments, 1, 1, 0)).transpose()?,
            post_quant_conv: config
                .use_post_quant_conv
                .then(|| Conv2d::load(&weights.at("post_quant_conv"), config.latent_channels, config.latent_channels, 1, 1, 0))
                .transpose()?,
            decoder: Decoder::load(&weights.at("decoder"), &config)?,
            latent_rgb,
            activation_limit: None,
            config,
        };
        weights.ensure_all_used()?;
        Ok(model)
    }

    pub fn config(&self) -> &AutoencoderKlConfig {
        &self.config
    }

    /// The latent-to-RGB preview map stored with the model (`None`: fit one).
    pub fn latent_rgb(&self) -> Option<&LatentRgb> {
        self.latent_rgb.as_ref()
    }

    /// Splits every activation over `bytes` into channel chunks, instead of only those
    /// over the device's storage binding limit (never more than that). The results are
    /// the same up to f32 summation order; tests use a small value to split tiny models.
    pub fn with_activation_limit(mut self, bytes: u64) -> Self {
        self.activation_limit = Some(bytes);
        self
    }

    fn plan(&self, gpu: &Gpu) -> ChunkPlan {
        ChunkPlan::new(ActivationLimit::of(gpu).at_most(self.activation_limit), self.config.norm_num_groups)
    }

    /// The pipeline multiplies encoded latents by this and divides latents by it before `decode`.
    pub fn scaling_factor(&self) -> f32 {
        self.config.scaling_factor
    }

    /// How many image pixels one latent pixel spans in each direction.
    pub fn downsampling_factor(&self) -> usize {
        1 << (self.config.block_out_channels.len() - 1)
    }

    /// `image [B, in_channels, H, W]` in [-1, 1] to the latent distribution's `(mean, logvar)`,
    /// each `[B, latent_channels, h, w]`, the log-variance clamped to [-30, 20] as diffusers does.
    pub fn encode(&self, image: &Tensor) -> Result<(Tensor, Tensor)> {
        let shape = dims4("AutoencoderKl::encode", "image", image, self.config.in_channels)?;
        self.check_encode_size(image.gpu(), shape)?;
        let mut moments = self.encoder.forward(image, &self.plan(image.gpu()))?;
        if let Some(conv) = &self.quant_conv {
            moments = conv.forward(&moments)?;
        }
        let gpu = image.gpu();
        let latent_channels = self.config.latent_channels;
        let mean = layout::narrow(gpu, &moments, 1, 0, latent_channels)?;
        let logvar = layout::narrow(gpu, &moments, 1, latent_channels, latent_channels)?;
        Ok((mean, distribution::clamp_logvar(&logvar)?))
    }

    /// `latents [B, latent_channels, h, w]` (already divided by the scaling factor) to the
    /// image `[B, out_channels, H, W]`, roughly in [-1, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let shape = dims4("AutoencoderKl::decode", "latents", latents, self.config.latent_channels)?;
        self.check_decode_size(latents.gpu(), shape)?;
        let latents = match &self.post_quant_conv {
            Some(conv) => conv.forward(latents)?,
            None => latents.clone(),
        };
        self.decoder.forward(&latents, &self.plan(latents.gpu()))
    }

    /// Fails with `Error::TooLarge`, naming the first layer concerned, when decoding latents
    /// of `latent_shape` would need more than one storage binding where no split helps:
    /// one norm group of channels over the limit, or the mid-block attention's input, the
    /// latents or the image over it. (A 512x512 SD decode splits its 256 MiB activations and
    /// passes.) `decode` calls it first; a pipeline can call it before it starts denoising.
    pub fn check_decode_size(&self, gpu: &Gpu, latent_shape: [usize; 4]) -> Result<()> {
        let plan = self.plan(gpu);
        plan.check_whole("the latents", latent_shape)?;
        self.decoder.check_sizes(latent_shape, &plan)
    }

    /// Like `check_decode_size`, for encoding an image of `image_shape`.
    pub fn check_encode_size(&self, gpu: &Gpu, image_shape: [usize; 4]) -> Result<()> {
        let plan = self.plan(gpu);
        plan.check_whole("the image", image_shape)?;
        self.encoder.check_sizes(image_shape, &plan)
    }
}

/// `component/latent_rgb.json` where the model has one, checked against the VAE.
fn read_latent_rgb(files: &dyn ModelFiles, component: &str, latent_channels: usize) -> Result<Option<LatentRgb>> {
    let path = crate::loader::component_file(component, LATENT_RGB_FILE);
    if !files.exists(&path) {
        return Ok(None);
    }
    let map: LatentRgb = read_config(files, &path)?;
    map.validate(latent_channels, &files.describe(&path))?;
    Ok(Some(map))
}

/// `t`'s shape as `[B, channels, H, W]`, or a shape error for `op`.
pub(crate) fn dims4(op: &'static str, what: &str, t: &Tensor, channels: usize) -> Result<[usize; 4]> {
    match t.shape() {
        &[b, c, h, w] if c == channels => Ok([b, c, h, w]),
        shape => Err(Error::shape(op, format!("{what} must be [batch, {channels}, height, width], got {shape:?}"))),
    }
}
