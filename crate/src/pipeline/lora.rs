//! LoRAs on a loaded pipeline: attached to the text encoder and the UNet as side paths,
//! replaced or removed between generations without reloading any weights.

use super::StableDiffusion;
use crate::error::Result;
use crate::lora::{LoraFile, attach};

impl StableDiffusion {
    /// Runs every later generation with `loras`, each at its scale (diffusers'
    /// `set_adapters` weights), instead of the LoRAs set before; `&[]` restores the plain
    /// model exactly. A module of a file that matches no layer fails the call (naming
    /// every such module) and leaves the previous LoRAs in place.
    pub fn set_loras(&mut self, loras: &[(&LoraFile, f32)]) -> Result<()> {
        let networks = [("text_encoder", self.text_encoder.lora_targets()), ("unet", self.unet.lora_targets())];
        attach(&self.gpu, &networks, loras)
    }
}
