//! The evaluation's fixed prompt list, `models/eval/prompts.json` (written by
//! `models/eval/make_prompts.py` from the training data's vocabulary), built into the
//! binaries so `webdiffusion-eval` and the benches that draw prompts run from anywhere.

use serde::Deserialize;
use webdiffusion::{Error, Result};

const PROMPTS_JSON: &str = include_str!("../../../models/eval/prompts.json");
pub const PROMPTS_FILE: &str = "models/eval/prompts.json";

#[derive(Deserialize)]
pub struct PromptList {
    /// The training data's colours, in its order.
    pub colours: Vec<NamedColour>,
    pub shapes: Vec<String>,
    /// The 3x3 position cells in reading order ("top left", "top", ...).
    pub cells: Vec<String>,
    pub prompts: Vec<EvalPrompt>,
    pub ground_truth: SheetLayout,
}

/// How a sheet of evaluation images is laid out, as `ground_truth.png` is: square tiles,
/// `columns` to a row, tile t showing prompt t % prompts.
#[derive(Deserialize)]
pub struct SheetLayout {
    pub tile: usize,
    pub columns: usize,
}

#[derive(Deserialize)]
pub struct NamedColour {
    pub name: String,
    /// The reference RGB in [0, 1] (the data jitters it by at most 0.04 per channel).
    pub rgb: [f32; 3],
}

#[derive(Deserialize)]
pub struct EvalPrompt {
    pub prompt: String,
    pub shape: String,
    pub colour: String,
    pub size: String,
    pub cell: usize,
    /// Which combination training never showed: `colour_shape`, `shape_position`, or none.
    pub held_out_kind: Option<String>,
}

impl PromptList {
    /// `count` of the prompts (at least 1, at most all), evenly spread over the list.
    pub fn spread(&self, count: usize) -> Vec<&EvalPrompt> {
        let count = count.clamp(1, self.prompts.len());
        (0..count).map(|i| &self.prompts[i * self.prompts.len() / count]).collect()
    }

    pub fn builtin() -> Result<Self> {
        let list: PromptList = serde_json::from_str(PROMPTS_JSON).map_err(|e| format_error(e.to_string()))?;
        for prompt in &list.prompts {
            if list.colour_index(&prompt.colour).is_none() || !list.shapes.contains(&prompt.shape) || prompt.cell >= list.cells.len() {
                return Err(format_error(format!("prompt {:?} names an unknown colour, shape or cell", prompt.prompt)));
            }
        }
        Ok(list)
    }

    pub fn colour_index(&self, name: &str) -> Option<usize> {
        self.colours.iter().position(|colour| colour.name == name)
    }

    pub fn palette(&self) -> Vec<[f32; 3]> {
        self.colours.iter().map(|colour| colour.rgb).collect()
    }
}

pub fn format_error(detail: String) -> Error {
    Error::Format { file: PROMPTS_FILE.into(), detail }
}
