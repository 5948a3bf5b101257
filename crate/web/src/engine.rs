//! The JavaScript API the page uses: `Engine.load(baseUrl, onProgress)` streams a package
//! onto the browser's GPU, `engine.generate(options, onStep)` makes one image with a
//! preview after every step (its options read by `options.rs`), and the benchmarks' entry
//! points.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use js_sys::{Function, Object, Reflect, Uint8ClampedArray};
use wasm_bindgen::prelude::*;

use webdiffusion::error::{Error, Result};
use webdiffusion::gpu::{Gpu, Tensor};
use webdiffusion::image::from_decoded;
use webdiffusion::loader::WeightPrecision;
use webdiffusion::open::ModelSource;
use webdiffusion::package::LoadProgress;
use webdiffusion::pipeline::{Previewer, StableDiffusion};

use crate::console::install_console_logger;
use crate::fetch_source::FetchSource;
use crate::js_error::{to_js, type_error};
use crate::options::{field, lora_from, request_from};

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &'static str = r#"
/** What `Engine.generate` makes; omitted fields take the defaults shown. */
export interface GenerateOptions {
  prompt: string;
  /** "" */
  negativePrompt?: string;
  /** A random one; the result reports it. Integers up to 2^53 - 1. */
  seed?: number;
  /** The model's own: 4 for an LCM such as the embedded model, else 50 (diffusers' defaults). */
  steps?: number;
  /** 7.5 (1 or less: no guidance). */
  guidance?: number;
  /** A sampler: "ddim", "pndm", "euler", "euler-a", "heun", "lms", "dpm++2m", "dpm++2m-karras",
   * "dpm++2m-sde-karras", "unipc" or "lcm"; the model's own (its scheduler config) when omitted. */
  scheduler?: string;
  /** The image size in pixels, a multiple of the VAE's downsampling; the model's own (or the init
   * image's) when omitted. */
  width?: number;
  height?: number;
  /** Image to image: start from this picture (RGBA, as an `ImageData` holds it). */
  initImage?: RgbaImage;
  /** Image to image: how much of the schedule runs, in (0, 1]. 0.8 */
  strength?: number;
  /** Inpainting, with `initImage` and of its size: white repaints, black keeps. */
  mask?: RgbaImage;
  /** Text-encoder layers to skip from the end. 0 */
  clipSkip?: number;
  /** DeepCache: the whole UNet runs every `cacheInterval` steps, the steps between reuse its deep
   * features (faster, slightly different images). 1 (every step whole) */
  cacheInterval?: number;
  /** DeepCache's branch: 0 reuses the most (fastest); higher computes more of each step. 0 */
  cacheBranch?: number;
  /** Token merging as ToDo does it: self-attention at the latents' resolution takes its keys and
   * values from a grid this many times coarser (faster attention, slightly different images). 1 */
  tokenMerge?: number;
  /** Cancels between steps: the promise then rejects with a DOMException named "AbortError". */
  signal?: AbortSignal;
}

/** RGBA pixels, row-major: an `ImageData`, or anything with its three fields. */
export interface RgbaImage {
  data: Uint8ClampedArray | Uint8Array;
  width: number;
  height: number;
}

/** RGBA pixels, row-major, as `ImageData` takes them. */
export interface GeneratedImage {
  rgba: Uint8ClampedArray<ArrayBuffer>;
  width: number;
  height: number;
  seed: number;
}

/** A LoRA for `Engine.setLoras`: a kohya-ss or diffusers/PEFT safetensors file's bytes. */
export interface LoraOptions {
  data: Uint8Array;
  /** How errors name it. "LoRA" */
  name?: string;
  /** The LoRA's weight (diffusers' `set_adapters` weight). 1 */
  scale?: number;
}

/** Bytes of the package's shards loaded so far, of `total`. */
export type LoadProgressCallback = (done: number, total: number) => void;

/** After step `step` of `total`: a cheap RGBA preview of the latents, `width` x `height`. */
export type StepCallback = (step: number, total: number, rgba: Uint8ClampedArray<ArrayBuffer>, width: number, height: number) => void;
"#;

/// A model loaded onto the browser's GPU, ready to generate.
#[wasm_bindgen]
pub struct Engine {
    // Shared with the futures `generate` hands to JavaScript, which must own what they use.
    loaded: Rc<Loaded>,
}

struct Loaded {
    gpu: Gpu,
    // Borrowed for the whole of a generation, so `setLoras` (which borrows it mutably, never
    // waiting) is refused while one runs instead of changing weights between its steps.
    sd: RefCell<StableDiffusion>,
    preview: Previewer,
}

#[wasm_bindgen]
impl Engine {
    /// Opens WebGPU and loads the package whose `manifest.json` is at `baseUrl`
    /// (shards kept in Cache Storage, so a second visit downloads none), calling
    /// `onProgress(done, total)` in bytes as shards arrive.
    #[wasm_bindgen(js_name = load)]
    pub async fn load(
        #[wasm_bindgen(js_name = baseUrl)] base_url: String,
        #[wasm_bindgen(js_name = onProgress, unchecked_param_type = "LoadProgressCallback | undefined")] on_progress: Option<Function>,
    ) -> Result<Engine, JsValue> {
        console_error_panic_hook::set_once();
        install_console_logger();
        let gpu = Gpu::new().await.map_err(to_js)?;
        let source = FetchSource::new(&base_url);
        let mut callback_error = None;
        let mut report = |progress: &LoadProgress| {
            if let (Some(callback), None) = (&on_progress, &callback_error) {
                // The loader's callback cannot fail; the first exception is rethrown after it.
                if let Err(e) = callback.call2(&JsValue::NULL, &(progress.done as f64).into(), &(progress.total as f64).into()) {
                    callback_error = Some(e);
                }
            }
        };
        let opened = StableDiffusion::open(&gpu, ModelSource::Package(&source), WeightPrecision::AsStored, &mut report).await;
        if let Some(thrown) = callback_error {
            return Err(thrown);
        }
        let sd = opened.map_err(to_js)?;
        let preview = Previewer::for_model(&gpu, &sd).await.map_err(to_js)?;
        Ok(Engine { loaded: Rc::new(Loaded { gpu, sd: RefCell::new(sd), preview }) })
    }

    /// The WebGPU adapter in use, for display (browsers often withhold its name).
    #[wasm_bindgen(getter)]
    pub fn adapter(&self) -> String {
        let info = self.loaded.gpu.info();
        let name = if info.adapter.is_empty() { "WebGPU".to_string() } else { format!("WebGPU ({})", info.adapter) };
        format!("{name}, {} shader-f16", if info.shader_f16 { "with" } else { "without" })
    }

    /// Runs later generations with `loras` (`LoraOptions`: safetensors bytes, a name, a
    /// scale) instead of the ones set before; `[]` restores the plain model exactly. A LoRA
    /// that does not fit the model fails the call and leaves the previous ones in place, and
    /// so does a call while a generation runs.
    #[wasm_bindgen(js_name = setLoras)]
    pub fn set_loras(&self, #[wasm_bindgen(unchecked_param_type = "LoraOptions[]")] loras: js_sys::Array) -> Result<(), JsValue> {
        let parsed = loras.iter().enumerate().map(|(i, lora)| lora_from(&lora, i)).collect::<Result<Vec<_>, JsValue>>()?;
        let mut sd =
            self.loaded.sd.try_borrow_mut().map_err(|_| js_sys::Error::new("setLoras: a generation is running; cancel it or wait"))?;
        sd.set_loras(&parsed.iter().map(|(file, scale)| (file, *scale)).collect::<Vec<_>>()).map_err(to_js)
    }

    /// Generates one image. `onStep(step, total, rgba, width, height)` is called with a
    /// preview after every step, as the GPU finishes it.
    #[wasm_bindgen(unchecked_return_type = "Promise<GeneratedImage>")]
    pub fn generate(
        &self,
        #[wasm_bindgen(unchecked_param_type = "GenerateOptions")] options: JsValue,
        #[wasm_bindgen(js_name = onStep, unchecked_param_type = "StepCallback | undefined")] on_step: Option<Function>,
    ) -> js_sys::Promise {
        let loaded = self.loaded.clone();
        wasm_bindgen_futures::future_to_promise(async move { loaded.generate(&options, on_step.as_ref()).await })
    }
}

#[wasm_bindgen]
impl Engine {
    /// Times denoising steps for a benchmark: one warm-up step, then `steps` timed ones, each
    /// waited for; with `profile`, one more step timed kernel by kernel where the browser
    /// grants timestamp queries. `options` are `generate`'s (its `steps` ignored). Resolves
    /// with a JSON string: the numbers and, under `table`, the same as Markdown.
    // The borrow is held across the awaits as in `generate`; `setLoras` only try-borrows.
    #[allow(clippy::await_holding_refcell_ref)]
    #[wasm_bindgen(js_name = benchSteps, unchecked_return_type = "Promise<string>")]
    pub fn bench_steps(
        &self,
        #[wasm_bindgen(unchecked_param_type = "GenerateOptions")] options: JsValue,
        steps: usize,
        profile: bool,
    ) -> js_sys::Promise {
        let loaded = self.loaded.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let sd = loaded.sd.try_borrow().map_err(|_| js_sys::Error::new("benchSteps: setLoras is running"))?;
            let request = request_from(&options, sd.default_steps())?;
            let timings = sd.time_steps(&request, steps, profile).await.map_err(to_js)?;
            let mut json = serde_json::to_value(&timings).map_err(|e| js_sys::Error::new(&e.to_string()))?;
            json["table"] = timings.table().into();
            Ok(json.to_string().into())
        })
    }
}

/// Times each kernel family on the built-in model's layer shapes (`shapes: "embedded"`) or a
/// quarter of Stable Diffusion 1.5's (`"reduced"`), those whose name contains `only`, for a
/// benchmark. Resolves with a JSON string: the rows and, under `table`, the same as Markdown.
#[wasm_bindgen(js_name = benchKernels, unchecked_return_type = "Promise<string>")]
pub fn bench_kernels(shapes: String, only: String, iterations: u32) -> js_sys::Promise {
    use webdiffusion::kernels::bench::{self, Shapes};
    wasm_bindgen_futures::future_to_promise(async move {
        let shapes = match shapes.as_str() {
            "embedded" => Shapes::Embedded,
            "reduced" => Shapes::Reduced,
            other => return Err(type_error(&format!("benchKernels: shapes must be \"embedded\" or \"reduced\", got {other:?}"))),
        };
        let gpu = Gpu::new().await.map_err(to_js)?;
        let (rows, on_gpu) = bench::run(&gpu, shapes, &only, iterations).await.map_err(to_js)?;
        let json = serde_json::json!({ "adapter": gpu.info().adapter, "rows": rows, "table": bench::table(&rows, on_gpu) });
        Ok(json.to_string().into())
    })
}

impl Loaded {
    // Holding the borrow across the awaits is the point (see `Loaded::sd`): nothing borrows
    // it mutably but `setLoras`, with `try_borrow_mut`, so this cannot panic.
    #[allow(clippy::await_holding_refcell_ref)]
    async fn generate(&self, options: &JsValue, on_step: Option<&Function>) -> Result<JsValue, JsValue> {
        let sd = self.sd.borrow();
        let request = request_from(options, sd.default_steps())?;
        let signal = abort_signal(options)?;
        let mut run = sd.start_generation(&request).map_err(to_js)?;
        // One step at a time, at most one queued behind the one the GPU works on: after
        // recording step k the page waits for step k-1 (its preview, read right behind it),
        // so the GPU stays busy, the page stays responsive and a cancel takes effect after
        // the step in flight.
        let mut pending: Option<StepRead> = None;
        while let Some(progress) = run.step().map_err(to_js)? {
            let (done, total) = (progress.done, progress.total);
            // Without `onStep` the latents are read instead: the same wait, no preview work.
            let shown = match on_step {
                Some(_) => self.preview.render(sd.vae(), &progress.preview_latents().map_err(to_js)?).map_err(to_js)?,
                None => progress.latents.clone(),
            };
            let read = StepRead { done, total, shape: shown.shape().to_vec(), read: start_read(shown) };
            if let Some(previous) = pending.replace(read) {
                previous.deliver(on_step).await?;
            }
            if is_aborted(signal.as_ref())? {
                // The step in flight finishes and its preview is delivered: it is kept.
                if let Some(last) = pending {
                    last.deliver(on_step).await?;
                }
                return Err(cancelled(done, total));
            }
        }
        if let Some(last) = pending {
            last.deliver(on_step).await?;
        }
        let generation = run.finish().map_err(to_js)?;
        let (rgba, width, height) = rgba(&generation.image.to_vec().await.map_err(to_js)?, generation.image.shape()).map_err(to_js)?;
        let result = Object::new();
        for (key, value) in [("rgba", rgba), ("width", width.into()), ("height", height.into()), ("seed", (request.seed as f64).into())] {
            Reflect::set(&result, &key.into(), &value)?;
        }
        Ok(result.into())
    }
}

/// A step's preview (or, with no `onStep`, its latents) on its way back from the GPU.
struct StepRead {
    done: usize,
    total: usize,
    shape: Vec<usize>,
    read: Read,
}

impl StepRead {
    /// Waits for the step, then hands its preview to `onStep(step, total, rgba, width, height)`.
    async fn deliver(self, on_step: Option<&Function>) -> Result<(), JsValue> {
        let values = self.read.await.map_err(to_js)?;
        let Some(callback) = on_step else { return Ok(()) };
        let (rgba, width, height) = rgba(&values, &self.shape).map_err(to_js)?;
        let args = js_sys::Array::of5(&self.done.into(), &self.total.into(), &rgba, &width.into(), &height.into());
        callback.apply(&JsValue::NULL, &args).map(|_| ())
    }
}

/// `options.signal`, an `AbortSignal` (anything with a boolean `aborted`).
fn abort_signal(options: &JsValue) -> Result<Option<JsValue>, JsValue> {
    let signal = field(options, "signal")?;
    if let Some(signal) = &signal
        && (!signal.is_object() || Reflect::get(signal, &"aborted".into())?.as_bool().is_none())
    {
        return Err(type_error("generate: options.signal must be an AbortSignal"));
    }
    Ok(signal)
}

fn is_aborted(signal: Option<&JsValue>) -> Result<bool, JsValue> {
    Ok(match signal {
        Some(signal) => Reflect::get(signal, &"aborted".into())?.is_truthy(),
        None => false,
    })
}

/// The rejection of a cancelled generation: a `DOMException` named `AbortError`, as
/// `fetch` rejects when its signal aborts.
fn cancelled(done: usize, total: usize) -> JsValue {
    let message = Error::Cancelled { done, total }.to_string();
    match web_sys::DomException::new_with_message_and_name(&message, "AbortError") {
        Ok(exception) => exception.into(),
        Err(_) => js_sys::Error::new(&message).into(),
    }
}

type Read = Pin<Box<dyn Future<Output = Result<Vec<f32>>>>>;

/// Reads `tensor` back, submitting the copy now: `to_vec` submits on its first poll,
/// so it queues right behind the step it shows, not behind whatever is recorded next.
fn start_read(tensor: Tensor) -> Read {
    let mut read: Read = Box::pin(async move { tensor.to_vec().await });
    match read.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        // Polled again later with the executor's waker, which the map callback then wakes.
        Poll::Pending => read,
        Poll::Ready(done) => Box::pin(std::future::ready(done)),
    }
}

/// `[1, 3, H, W]` values in [-1, 1] to RGBA bytes, post-processed as PNGs are.
fn rgba(values: &[f32], shape: &[usize]) -> Result<(JsValue, usize, usize)> {
    let image = from_decoded(values, shape)?.swap_remove(0);
    let pixels: Vec<u8> = image.pixels.chunks(3).flat_map(|rgb| [rgb[0], rgb[1], rgb[2], 255]).collect();
    Ok((Uint8ClampedArray::from(&pixels[..]).into(), image.width, image.height))
}
