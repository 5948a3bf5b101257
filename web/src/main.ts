// The page: loads the embedded model through the wasm API, then generates on demand,
// drawing a preview after every step and the final image; Cancel stops after the step in
// flight and keeps its preview. "More options" passes the rest of the engine's options
// (sampler, size, CLIP skip, start image, mask) and sets a LoRA file on it. State for tests and users is on <body>: data-state
// (loading, ready, generating, done, cancelled, error), data-load-ms,
// data-generate-ms and data-preview-ms (when each preview of the last generation arrived,
// in ms from its start, comma-separated).

import init, { Engine, type GenerateOptions } from "./pkg/webdiffusion.js";

const MODEL_URL = new URL("models/embedded-lcm/", document.baseURI).href;

function element<T extends HTMLElement>(id: string, type: { new (): T }): T {
  const found = document.getElementById(id);
  if (!(found instanceof type)) throw new Error(`the page has no <${type.name}> #${id}`);
  return found;
}

const ui = {
  status: element("status", HTMLElement),
  loadProgress: element("load-progress", HTMLProgressElement),
  form: element("generate-form", HTMLFormElement),
  prompt: element("prompt", HTMLTextAreaElement),
  negativePrompt: element("negative-prompt", HTMLInputElement),
  seed: element("seed", HTMLInputElement),
  steps: element("steps", HTMLInputElement),
  guidance: element("guidance", HTMLInputElement),
  scheduler: element("scheduler", HTMLSelectElement),
  width: element("width", HTMLInputElement),
  height: element("height", HTMLInputElement),
  clipSkip: element("clip-skip", HTMLInputElement),
  initImage: element("init-image", HTMLInputElement),
  strength: element("strength", HTMLInputElement),
  mask: element("mask", HTMLInputElement),
  lora: element("lora", HTMLInputElement),
  loraScale: element("lora-scale", HTMLInputElement),
  generate: element("generate", HTMLButtonElement),
  cancel: element("cancel", HTMLButtonElement),
  error: element("error", HTMLElement),
  preview: element("preview", HTMLCanvasElement),
  stepLabel: element("step-label", HTMLElement),
  result: element("result", HTMLCanvasElement),
  resultInfo: element("result-info", HTMLElement),
  download: element("download", HTMLAnchorElement),
};

type State = "loading" | "ready" | "generating" | "done" | "cancelled" | "error";

function setState(state: State): void {
  document.body.dataset["state"] = state;
}

function showError(error: unknown): void {
  const message = error instanceof Error ? error.message : String(error);
  ui.error.textContent = message;
  setState("error");
  console.error(error);
}

function draw(canvas: HTMLCanvasElement, rgba: Uint8ClampedArray<ArrayBuffer>, width: number, height: number): void {
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  if (!context) throw new Error("no 2D canvas context");
  context.putImageData(new ImageData(rgba, width, height), 0, 0);
}

function megabytes(bytes: number): string {
  return (bytes / 1e6).toFixed(1);
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}

/** The picture a file input holds, as ImageData at its own size; undefined when none is chosen. */
async function chosenImage(input: HTMLInputElement): Promise<ImageData | undefined> {
  const file = input.files?.[0];
  if (!file) return undefined;
  let bitmap: ImageBitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    throw new Error(`${file.name} is not an image this browser can decode`);
  }
  const context = new OffscreenCanvas(bitmap.width, bitmap.height).getContext("2d");
  if (!context) throw new Error("no 2D canvas context");
  context.drawImage(bitmap, 0, 0);
  bitmap.close();
  return context.getImageData(0, 0, context.canvas.width, context.canvas.height);
}

/** The form as options; an empty field leaves the engine's default (a random seed, the
 *  model's sampler and size). Strength counts only with a start image, so that a value left
 *  in its field does not refuse a plain generation. */
async function readOptions(signal: AbortSignal): Promise<GenerateOptions> {
  const options: GenerateOptions = {
    prompt: ui.prompt.value,
    negativePrompt: ui.negativePrompt.value,
    steps: ui.steps.valueAsNumber,
    guidance: ui.guidance.valueAsNumber,
    signal,
  };
  if (ui.seed.value !== "") options.seed = ui.seed.valueAsNumber;
  if (ui.scheduler.value !== "") options.scheduler = ui.scheduler.value;
  if (ui.width.value !== "") options.width = ui.width.valueAsNumber;
  if (ui.height.value !== "") options.height = ui.height.valueAsNumber;
  if (ui.clipSkip.value !== "") options.clipSkip = ui.clipSkip.valueAsNumber;
  const initImage = await chosenImage(ui.initImage);
  const mask = await chosenImage(ui.mask);
  if (initImage) {
    options.initImage = initImage;
    options.strength = ui.strength.valueAsNumber;
  }
  if (mask) options.mask = mask;
  return options;
}

/** What the engine's LoRA is set to, so a generation calls setLoras only when the form changed it. */
let appliedLora = "";

/** Sets the form's LoRA (or none) on the engine. */
async function applyLora(engine: Engine): Promise<void> {
  const file = ui.lora.files?.[0];
  const scale = ui.loraScale.valueAsNumber;
  const wanted = file ? `${file.name}|${file.size}|${file.lastModified}|${scale}` : "";
  if (wanted === appliedLora) return;
  engine.setLoras(file ? [{ data: new Uint8Array(await file.arrayBuffer()), name: file.name, scale }] : []);
  appliedLora = wanted;
}

async function load(): Promise<Engine> {
  if (!("gpu" in navigator)) {
    throw new Error("This browser has no WebGPU (navigator.gpu is missing). Try a recent Chrome or Edge.");
  }
  await init();
  ui.status.textContent = "Loading the model…";
  const started = performance.now();
  const engine = await Engine.load(MODEL_URL, (done, total) => {
    ui.loadProgress.max = total;
    ui.loadProgress.value = done;
    ui.status.textContent = `Loading the model: ${megabytes(done)} of ${megabytes(total)} MB`;
  });
  const elapsed = performance.now() - started;
  document.body.dataset["loadMs"] = elapsed.toFixed(0);
  ui.status.textContent = `Ready in ${seconds(elapsed)} on ${engine.adapter}.`;
  return engine;
}

async function generate(engine: Engine): Promise<void> {
  const abort = new AbortController();
  const cancel = (): void => abort.abort();
  ui.cancel.addEventListener("click", cancel);
  ui.generate.disabled = true;
  ui.cancel.disabled = false;
  ui.error.textContent = "";
  ui.download.hidden = true;
  setState("generating");
  document.body.dataset["previewMs"] = "";
  const previewMs: string[] = [];
  const started = performance.now();
  try {
    await applyLora(engine);
    const image = await engine.generate(await readOptions(abort.signal), (step, total, rgba, width, height) => {
      const elapsed = performance.now() - started;
      draw(ui.preview, rgba, width, height);
      ui.stepLabel.textContent = `step ${step} of ${total} (${seconds(elapsed)})`;
      previewMs.push(elapsed.toFixed(0));
      document.body.dataset["previewMs"] = previewMs.join(",");
    });
    const elapsed = performance.now() - started;
    draw(ui.result, image.rgba, image.width, image.height);
    ui.resultInfo.textContent = `seed ${image.seed}, ${seconds(elapsed)}`;
    ui.download.href = ui.result.toDataURL("image/png");
    ui.download.download = `webdiffusion-${image.seed}.png`;
    ui.download.hidden = false;
    document.body.dataset["generateMs"] = elapsed.toFixed(0);
    setState("done");
  } catch (error) {
    if (error instanceof DOMException && error.name === "AbortError") {
      // The last step's preview stays on screen: what the steps made is not thrown away.
      ui.stepLabel.textContent = error.message;
      setState("cancelled");
    } else {
      showError(error);
    }
  } finally {
    ui.cancel.removeEventListener("click", cancel);
    ui.cancel.disabled = true;
    ui.generate.disabled = false;
  }
}

async function main(): Promise<void> {
  const engine = await load();
  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    void generate(engine);
  });
  // The engine for the console and for tests that call its API directly.
  Object.assign(window, { webdiffusionEngine: engine });
  ui.generate.disabled = false;
  setState("ready");
}

main().catch((error: unknown) => {
  ui.status.textContent = "The model could not be loaded.";
  showError(error);
});
