//! LoRA adapters: low-rank updates `W + s * up @ down` of a network's Linear and Conv2d
//! weights, read from kohya-ss and diffusers/PEFT files (`file`), and either run as a
//! side path next to the unchanged layers, several at once and switchable without
//! reloading the model (`side_path`), or merged into the weights at conversion
//! (`convert::merge_lora`).
//! Both find their layers by module name (`matching`), so a key that fits no layer is
//! an error naming it in either case.

mod file;
mod keys;
mod matching;
mod side_path;

use std::path::PathBuf;
use std::str::FromStr;

pub use file::{LoraFile, LoraMatrix, LoraModule};
pub use keys::ModuleName;
pub use matching::LayerShape;
// For the converter, which merges LoRAs into the weights it writes.
pub(crate) use matching::{ModuleIndex, match_modules};
pub use side_path::{LoraTargets, OutputLayout, SidePath, SidePathSlot, attach};

/// A LoRA named on a command line: `FILE` or `FILE:SCALE` (scale 1 when omitted).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub path: PathBuf,
    pub scale: f32,
}

impl FromStr for LoraSpec {
    type Err = String;

    /// The text after the last `:` is the scale when it is a finite number; otherwise the
    /// whole text is the path (so `C:\loras\x.safetensors` is a path).
    fn from_str(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("expected FILE or FILE:SCALE".into());
        }
        let split = text.rsplit_once(':').and_then(|(path, scale)| Some((path, scale.parse::<f32>().ok().filter(|s| s.is_finite())?)));
        Ok(match split {
            Some((path, scale)) if !path.is_empty() => Self { path: path.into(), scale },
            _ => Self { path: text.into(), scale: 1.0 },
        })
    }
}
