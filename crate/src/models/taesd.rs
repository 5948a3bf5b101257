//! diffusers' `AutoencoderTiny` (models/autoencoders/autoencoder_tiny.py and vae.py's
//! `EncoderTiny`/`DecoderTiny`): TAESD, a small conv-only VAE that decodes SD latents
//! approximately at a fraction of the cost. A decoder-only model (no `encoder.*` weights,
//! as preview decoders ship) loads too; encoding with it is an error.

use serde::Deserialize;

use super::nn::Conv2d;
use super::vae::dims4;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::kernels::activation_limit::ActivationLimit;
use crate::kernels::elementwise::{self as ew, Unary};
use crate::kernels::layout;
use crate::loader::{ModelFiles, WeightPrecision, read_config};
use crate::models::weights::Weights;

/// The tiny VAE's `config.json`; absent fields take diffusers' defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AutoencoderTinyConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub encoder_block_out_channels: Vec<usize>,
    pub decoder_block_out_channels: Vec<usize>,
    pub act_fn: String,
    pub upsample_fn: String,
    pub latent_channels: usize,
    pub upsampling_scaling_factor: usize,
    pub num_encoder_blocks: Vec<usize>,
    pub num_decoder_blocks: Vec<usize>,
    /// Only `AutoencoderTiny.forward`'s 8-bit latent round trip uses these two, not
    /// `encode`/`decode` (the decoder's input clamp is a fixed `3 * tanh(x / 3)`).
    pub latent_magnitude: f32,
    pub latent_shift: f32,
    /// Run in f32: activations always are here, so it needs nothing.
    pub force_upcast: bool,
    pub scaling_factor: f32,
    pub shift_factor: f32,
}

impl Default for AutoencoderTinyConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            encoder_block_out_channels: vec![64; 4],
            decoder_block_out_channels: vec![64; 4],
            act_fn: "relu".into(),
            upsample_fn: "nearest".into(),
            latent_channels: 4,
            upsampling_scaling_factor: 2,
            num_encoder_blocks: vec![1, 3, 3, 3],
            num_decoder_blocks: vec![3, 3, 3, 1],
            latent_magnitude: 3.0,
            latent_shift: 0.5,
            force_upcast: false,
            scaling_factor: 1.0,
            shift_factor: 0.0,
        }
    }
}

/// diffusers' `get_activation` names.
fn activation(name: &str) -> Option<Unary> {
    match name {
        "relu" => Some(Unary::Relu),
        "silu" | "swish" => Some(Unary::Silu),
        "gelu" => Some(Unary::GeluErf),
        _ => None,
    }
}

impl AutoencoderTinyConfig {
    /// Rejects what this implementation does not compute (or what diffusers could not run).
    fn validate(&self, file: &str) -> Result<Unary> {
        let unsupported = |detail: String| Err(Error::Unsupported { file: file.to_string(), detail });
        let Some(act) = activation(&self.act_fn) else {
            return unsupported(format!("act_fn {:?} (relu, silu or gelu)", self.act_fn));
        };
        if self.upsample_fn != "nearest" || self.upsampling_scaling_factor != 2 {
            return unsupported(format!("upsampling {:?} by {} (only nearest by 2)", self.upsample_fn, self.upsampling_scaling_factor));
        }
        // The pipeline only divides latents by scaling_factor.
        if self.shift_factor != 0.0 {
            return unsupported(format!("shift_factor {} (only 0)", self.shift_factor));
        }
        for (side, channels, blocks) in [
            ("encoder", &self.encoder_block_out_channels, &self.num_encoder_blocks),
            ("decoder", &self.decoder_block_out_channels, &self.num_decoder_blocks),
        ] {
            if channels.is_empty() || channels.len() != blocks.len() {
                return unsupported(format!("{} {side} block widths for {} block counts", channels.len(), blocks.len()));
            }
            // Each stage's first layer takes its own width as input, so widths must agree
            // for diffusers' model to run at all.
            if channels.iter().any(|&c| c != channels[0]) {
                return unsupported(format!("{side}_block_out_channels {channels:?} of differing widths"));
            }
        }
        Ok(act)
    }
}

/// TAESD's convs: 3x3 with padding 1, a bias unless the encoder's strided ones.
fn tiny_conv(w: &Weights, [in_channels, out_channels]: [usize; 2], stride: usize, bias: bool) -> Result<Conv2d> {
    Conv2d::load_with_bias(w, [in_channels, out_channels, 3, stride], [1; 4], bias)
}

/// diffusers' `AutoencoderTinyBlock` with equal input and output widths (the only kind
/// the tiny VAE builds, so the skip is the identity): `relu(convs(x) + x)`, three launches
/// (each activation and the skip in a conv's epilogue).
struct TinyBlock {
    convs: [Conv2d; 3],
    act: Unary,
}

impl TinyBlock {
    fn load(w: &Weights, channels: usize, act: Unary) -> Result<Self> {
        // Positions 1 and 3 of the inner `nn.Sequential` are the activations.
        let conv = |i: usize| tiny_conv(&w.at(&format!("conv.{i}")), [channels, channels], 1, true);
        Ok(Self { convs: [conv(0)?, conv(2)?, conv(4)?], act })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [first, second, third] = &self.convs;
        let h = first.forward_activated(x, None, Some(self.act))?;
        let h = second.forward_activated(&h, None, Some(self.act))?;
        third.forward_activated(&h, Some(x), Some(Unary::Relu))
    }
}

enum Layer {
    Conv(Conv2d),
    Activation(Unary),
    // Boxed: a block is three convs, far larger than the other layers.
    Block(Box<TinyBlock>),
    Upsample,
}

/// An `nn.Sequential` (its weights under `layers.<position>` of its scope); the
/// parameter-free activations and upsamplers take positions too.
struct Layers {
    weights: Weights,
    layers: Vec<Layer>,
}

impl Layers {
    fn new(w: Weights) -> Self {
        Self { weights: w, layers: Vec::new() }
    }

    /// The weights of the layer at `position`.
    fn at(&self, position: usize) -> Weights {
        self.weights.at(&format!("layers.{position}"))
    }

    /// The weights of the layer at the next position.
    fn next(&self) -> Weights {
        self.at(self.layers.len())
    }

    fn conv(&mut self, channels: [usize; 2], stride: usize, bias: bool) -> Result<()> {
        let conv = tiny_conv(&self.next(), channels, stride, bias)?;
        self.layers.push(Layer::Conv(conv));
        Ok(())
    }

    fn block(&mut self, channels: usize, act: Unary) -> Result<()> {
        let block = TinyBlock::load(&self.next(), channels, act)?;
        self.layers.push(Layer::Block(Box::new(block)));
        Ok(())
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gpu = x.gpu();
        let mut h = x.clone();
        let mut layers = self.layers.iter().peekable();
        while let Some(layer) = layers.next() {
            h = match layer {
                // A conv and the activation after it are one launch.
                Layer::Conv(conv) => match layers.next_if(|next| matches!(next, Layer::Activation(_))) {
                    Some(&Layer::Activation(act)) => conv.forward_activated(&h, None, Some(act))?,
                    _ => conv.forward(&h)?,
                },
                Layer::Activation(act) => ew::unary(gpu, &h, *act)?,
                Layer::Block(block) => block.forward(&h)?,
                Layer::Upsample => layout::upsample_nearest_2x(gpu, &h)?,
            };
        }
        Ok(h)
    }

    /// Walks the shapes `forward` would create, failing at the first one over `limit`.
    fn check_sizes(&self, mut shape: [usize; 4], limit: &ActivationLimit) -> Result<[usize; 4]> {
        for (position, layer) in self.layers.iter().enumerate() {
            shape = match layer {
                Layer::Conv(conv) => conv.output_shape(shape)?,
                Layer::Upsample => {
                    let [b, c, h, w] = shape;
                    [b, c, 2 * h, 2 * w]
                }
                Layer::Activation(_) | Layer::Block(_) => shape,
            };
            limit.check(self.at(position).prefix(), shape)?;
        }
        Ok(shape)
    }
}

/// `EncoderTiny`: a conv, then per stage a stride-2 conv (from the second stage on) and
/// tiny blocks, then a conv to the latent channels.
fn load_encoder(w: &Weights, c: &AutoencoderTinyConfig, act: Unary) -> Result<Layers> {
    let mut layers = Layers::new(w.at("encoder"));
    let width = c.encoder_block_out_channels[0];
    for (stage, &blocks) in c.num_encoder_blocks.iter().enumerate() {
        match stage {
            0 => layers.conv([c.in_channels, width], 1, true)?,
            _ => layers.conv([width, width], 2, false)?,
        }
        for _ in 0..blocks {
            layers.block(width, act)?;
        }
    }
    layers.conv([width, c.latent_channels], 1, true)?;
    Ok(layers)
}

/// `DecoderTiny`: a conv and activation, then per stage tiny blocks, a nearest 2x
/// upsample (all but the last stage) and a conv, bias-free except the last (to the image).
fn load_decoder(w: &Weights, c: &AutoencoderTinyConfig, act: Unary) -> Result<Layers> {
    let mut layers = Layers::new(w.at("decoder"));
    let width = c.decoder_block_out_channels[0];
    layers.conv([c.latent_channels, width], 1, true)?;
    layers.layers.push(Layer::Activation(act));
    let stages = c.num_decoder_blocks.len();
    for (stage, &blocks) in c.num_decoder_blocks.iter().enumerate() {
        for _ in 0..blocks {
            layers.block(width, act)?;
        }
        let last = stage + 1 == stages;
        if !last {
            layers.layers.push(Layer::Upsample);
        }
        layers.conv([width, if last { c.out_channels } else { width }], 1, last)?;
    }
    Ok(layers)
}

pub struct AutoencoderTiny {
    config: AutoencoderTinyConfig,
    /// `None` for a decoder-only model.
    encoder: Option<Layers>,
    decoder: Layers,
}

impl AutoencoderTiny {
    /// Loads `component/config.json` and the component's weights.
    pub fn load(gpu: &Gpu, files: &dyn ModelFiles, component: &str, precision: WeightPrecision) -> Result<Self> {
        let config_path = crate::loader::component_file(component, "config.json");
        let config: AutoencoderTinyConfig = read_config(files, &config_path)?;
        let act = config.validate(&files.describe(&config_path))?;
        let weights = Weights::load(gpu, files, component, precision)?;
        // The encoder's first conv always has a weight: without it the file is decoder-only.
        let encoder = weights.contains("encoder.layers.0.weight").then(|| load_encoder(&weights, &config, act)).transpose()?;
        let model = Self { encoder, decoder: load_decoder(&weights, &config, act)?, config };
        weights.ensure_all_used()?;
        Ok(model)
    }

    pub fn config(&self) -> &AutoencoderTinyConfig {
        &self.config
    }

    /// The pipeline multiplies encoded latents by this and divides latents by it before `decode`.
    pub fn scaling_factor(&self) -> f32 {
        self.config.scaling_factor
    }

    /// How many image pixels one latent pixel spans in each direction.
    pub fn downsampling_factor(&self) -> usize {
        1 << (self.config.num_decoder_blocks.len() - 1)
    }

    /// `image [B, in_channels, H, W]` in [-1, 1] to latents `[B, latent_channels, h, w]`
    /// (`AutoencoderTiny.encode(image).latents`).
    pub fn encode(&self, image: &Tensor) -> Result<Tensor> {
        let Some(encoder) = &self.encoder else {
            return Err(Error::shape("AutoencoderTiny::encode", "this tiny autoencoder has no encoder (a decoder-only preview decoder)"));
        };
        let shape = dims4("AutoencoderTiny::encode", "image", image, self.config.in_channels)?;
        encoder.check_sizes(shape, &ActivationLimit::of(image.gpu()))?;
        // EncoderTiny works on images in [0, 1].
        encoder.forward(&ew::unary(image.gpu(), image, Unary::Affine { a: 0.5, b: 0.5 })?)
    }

    /// `latents [B, latent_channels, h, w]` to the image `[B, out_channels, H, W]` in
    /// [-1, 1] (`AutoencoderTiny.decode(latents).sample`).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let shape = dims4("AutoencoderTiny::decode", "latents", latents, self.config.latent_channels)?;
        self.check_decode_size(latents.gpu(), shape)?;
        let gpu = latents.gpu();
        // DecoderTiny first soft-clamps its input to (-3, 3): 3 * tanh(x / 3).
        let squashed = ew::unary(gpu, &ew::unary(gpu, latents, Unary::Affine { a: 1.0 / 3.0, b: 0.0 })?, Unary::Tanh)?;
        let image = self.decoder.forward(&ew::scale(gpu, &squashed, 3.0)?)?;
        // ... and ends in [0, 1], which diffusers maps to [-1, 1].
        ew::unary(gpu, &image, Unary::Affine { a: 2.0, b: -1.0 })
    }

    /// Fails with `Error::TooLarge`, naming the first layer concerned, when decoding latents
    /// of `latent_shape` would create an activation larger than one storage binding may be.
    pub fn check_decode_size(&self, gpu: &Gpu, latent_shape: [usize; 4]) -> Result<()> {
        self.decoder.check_sizes(latent_shape, &ActivationLimit::of(gpu)).map(|_| ())
    }
}
