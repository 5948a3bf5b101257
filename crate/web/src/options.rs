//! `engine.generate`'s and `setLoras`' JavaScript options read into the library's request
//! and LoRA files, each wrong field a `TypeError` naming it.

use js_sys::{Reflect, Uint8ClampedArray};
use wasm_bindgen::prelude::*;
use webdiffusion::image::RgbImage;
use webdiffusion::lora::LoraFile;
use webdiffusion::pipeline::{DEFAULT_GUIDANCE, DeepCache, Request};
use webdiffusion::schedulers;

use crate::js_error::{to_js, type_error};

const MAX_STEPS: usize = 1000;
/// Image sides (and `clipSkip`) past these are surely mistakes; the pipeline checks the
/// sizes a model and a GPU can take.
const MAX_SIDE: usize = 16384;
const MAX_CLIP_SKIP: usize = 64;
/// A cache interval or branch, or a token merge factor, past this is surely a mistake (the
/// pipeline checks the branches a UNet has and the tokens a factor leaves).
const MAX_CACHE_SETTING: usize = 1000;
/// The largest integer a JavaScript number holds exactly.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// The request `options` (a `GenerateOptions`) describes, with the defaults above.
pub(crate) fn request_from(options: &JsValue, default_steps: usize) -> Result<Request, JsValue> {
    if !options.is_object() {
        return Err(type_error("generate: options must be an object such as { prompt: \"a red circle\" }"));
    }
    let prompt = string_field(options, "prompt")?.ok_or_else(|| type_error("generate: options.prompt is required"))?;
    let negative_prompt = string_field(options, "negativePrompt")?.unwrap_or_default();
    let seed = match number_field(options, "seed")? {
        Some(seed) if seed < 0.0 || seed.fract() != 0.0 || seed > MAX_SAFE_INTEGER => {
            return Err(type_error(&format!("generate: options.seed must be an integer from 0 to 2^53 - 1, got {seed}")));
        }
        Some(seed) => seed as u64,
        None => (js_sys::Math::random() * 4_294_967_296.0) as u64,
    };
    let steps = integer_field(options, "steps", 1, MAX_STEPS)?.unwrap_or(default_steps);
    let guidance_scale = match number_field(options, "guidance")? {
        Some(guidance) if !guidance.is_finite() => {
            return Err(type_error(&format!("generate: options.guidance must be finite, got {guidance}")));
        }
        Some(guidance) => guidance as f32,
        None => DEFAULT_GUIDANCE,
    };
    let scheduler = string_field(options, "scheduler")?;
    if let Some(name) = &scheduler
        && !schedulers::NAMES.contains(&name.as_str())
    {
        return Err(type_error(&format!("generate: options.scheduler {name:?} is none of {}", schedulers::NAMES.join(", "))));
    }
    let defaults = Request::default();
    let strength = match number_field(options, "strength")? {
        Some(strength) if !(strength > 0.0 && strength <= 1.0) => {
            return Err(type_error(&format!("generate: options.strength must be in (0, 1], got {strength}")));
        }
        strength => strength.map(|s| s as f32),
    };
    let init_image = image_field(options, "initImage")?;
    let mask = image_field(options, "mask")?;
    if init_image.is_none() {
        if mask.is_some() {
            return Err(type_error("generate: options.mask needs options.initImage, the picture it masks"));
        }
        if strength.is_some() {
            return Err(type_error("generate: options.strength needs options.initImage, the picture it starts from"));
        }
    }
    Ok(Request {
        prompt,
        negative_prompt,
        steps,
        guidance_scale,
        scheduler,
        seed,
        width: integer_field(options, "width", 1, MAX_SIDE)?,
        height: integer_field(options, "height", 1, MAX_SIDE)?,
        init_image,
        strength: strength.unwrap_or(defaults.strength),
        mask,
        clip_skip: integer_field(options, "clipSkip", 0, MAX_CLIP_SKIP)?.unwrap_or(0),
        deep_cache: deep_cache(options)?,
        token_merge: match number_field(options, "tokenMerge")? {
            Some(factor) if !(factor >= 1.0 && factor <= MAX_CACHE_SETTING as f64) => {
                return Err(type_error(&format!(
                    "generate: options.tokenMerge must be a number from 1 to {MAX_CACHE_SETTING}, got {factor}"
                )));
            }
            factor => factor.map(|f| f as f32),
        },
        ..defaults
    })
}

/// `cacheInterval` and `cacheBranch`: DeepCache when either is given.
fn deep_cache(options: &JsValue) -> Result<Option<DeepCache>, JsValue> {
    let interval = integer_field(options, "cacheInterval", 1, MAX_CACHE_SETTING)?;
    let branch = integer_field(options, "cacheBranch", 0, MAX_CACHE_SETTING)?;
    Ok((interval.is_some() || branch.is_some()).then(|| DeepCache { interval: interval.unwrap_or(1), branch: branch.unwrap_or(0) }))
}

/// The `index`th of `setLoras`' array, parsed, with its scale.
pub(crate) fn lora_from(lora: &JsValue, index: usize) -> Result<(LoraFile, f32), JsValue> {
    let bad = |what: &str| type_error(&format!("setLoras: loras[{index}] {what}"));
    if !lora.is_object() {
        return Err(bad("must be an object such as { data: Uint8Array, scale: 0.8 }"));
    }
    let data = Reflect::get(lora, &"data".into())?.dyn_into::<js_sys::Uint8Array>().map_err(|_| bad("data must be a Uint8Array"))?;
    let name = match field(lora, "name")? {
        Some(name) => name.as_string().ok_or_else(|| bad("name must be a string"))?,
        None => "LoRA".to_string(),
    };
    let scale = match field(lora, "scale")? {
        Some(scale) => scale.as_f64().filter(|s| s.is_finite()).ok_or_else(|| bad("scale must be a finite number"))? as f32,
        None => 1.0,
    };
    Ok((LoraFile::parse(&data.to_vec(), &name).map_err(to_js)?, scale))
}

/// `options[name]`, an integer in `min..=max`, if given.
fn integer_field(options: &JsValue, name: &str, min: usize, max: usize) -> Result<Option<usize>, JsValue> {
    match number_field(options, name)? {
        Some(n) if n.fract() != 0.0 || n < min as f64 || n > max as f64 => {
            Err(type_error(&format!("generate: options.{name} must be an integer from {min} to {max}, got {n}")))
        }
        n => Ok(n.map(|n| n as usize)),
    }
}

/// `options[name]`, an `RgbaImage`, as the pipeline's RGB image (alpha dropped).
fn image_field(options: &JsValue, name: &str) -> Result<Option<RgbImage>, JsValue> {
    let Some(image) = field(options, name)? else { return Ok(None) };
    let bad = || type_error(&format!("generate: options.{name} must be an ImageData or {{ data: RGBA bytes, width, height }}"));
    let size = |key: &str| -> Result<usize, JsValue> {
        let n = Reflect::get(&image, &key.into())?.as_f64().ok_or_else(bad)?;
        if n.fract() != 0.0 || !(1.0..=MAX_SIDE as f64).contains(&n) {
            return Err(type_error(&format!("generate: options.{name}.{key} must be an integer from 1 to {MAX_SIDE}, got {n}")));
        }
        Ok(n as usize)
    };
    let (width, height) = (size("width")?, size("height")?);
    let data = Reflect::get(&image, &"data".into())?;
    let bytes = match (data.dyn_ref::<Uint8ClampedArray>(), data.dyn_ref::<js_sys::Uint8Array>()) {
        (Some(clamped), _) => clamped.to_vec(),
        (None, Some(plain)) => plain.to_vec(),
        (None, None) => return Err(bad()),
    };
    if bytes.len() != width * height * 4 {
        return Err(type_error(&format!(
            "generate: options.{name}.data holds {} bytes, not {width} x {height} RGBA pixels ({})",
            bytes.len(),
            width * height * 4
        )));
    }
    let pixels = bytes.chunks_exact(4).flat_map(|rgba| [rgba[0], rgba[1], rgba[2]]).collect();
    Ok(Some(RgbImage { width, height, pixels }))
}

pub(crate) fn field(options: &JsValue, name: &str) -> Result<Option<JsValue>, JsValue> {
    let value = Reflect::get(options, &name.into())?;
    Ok((!value.is_undefined() && !value.is_null()).then_some(value))
}

fn string_field(options: &JsValue, name: &str) -> Result<Option<String>, JsValue> {
    field(options, name)?
        .map(|value| value.as_string().ok_or_else(|| type_error(&format!("generate: options.{name} must be a string"))))
        .transpose()
}

fn number_field(options: &JsValue, name: &str) -> Result<Option<f64>, JsValue> {
    field(options, name)?
        .map(|value| value.as_f64().ok_or_else(|| type_error(&format!("generate: options.{name} must be a number"))))
        .transpose()
}
