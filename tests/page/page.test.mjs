// The page end to end in headless Chromium (WebGPU on SwiftShader): the built web/dist
// served by web/serve.mjs, driven by playwright-core with Debian's /usr/bin/chromium.
// A prompt is typed and Generate clicked; the four LCM step previews and a final image
// must appear with no page error, and the image must be the native CLI's for the same
// prompt and seed (the CLI's pipeline is the one matched to diffusers). A bad option shows
// the engine's message; Cancel after the first preview stops after the step in flight and
// keeps its preview. A reload then generates again and must fetch no shard: Cache Storage
// kept them. The engine's other options (sampler, size, image to image, inpainting), called
// and LoRAs, as an npm user calls them, must give the CLI's images for the same options too,
// and so must the same options set in the form's "More options".
//
//   node --test tests/page/     after ./build.sh has built web/dist and cargo the native
//                               CLI (target/debug/webdiffusion, or $WEBDIFFUSION_CLI)

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { launchChromium, serve } from "../chromium.mjs";

// SwiftShader runs WebGPU on the CPU: loading compiles every kernel, and a 2-core CI
// machine is shared.
const LOAD_TIMEOUT_MS = 300_000;
const GENERATE_TIMEOUT_MS = 300_000;
const PROMPT = "a small yellow star at the top left on a dark blue background";
const LORA = new URL("../../models/lcm-lora/embedded-lcm-lora.safetensors", import.meta.url).pathname;
const SEED = 7;
const CLI =
  process.env.WEBDIFFUSION_CLI ?? join(process.env.CARGO_TARGET_DIR ?? new URL("../../target", import.meta.url).pathname, "debug/webdiffusion");

let server;
let baseUrl;
let browser;

before(async () => {
  ({ child: server, url: baseUrl } = await serve());
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  server?.kill();
});

/** Types the prompt, clicks Generate and waits for the result; returns what the page recorded. */
async function generateOnce(page) {
  await page.waitForSelector("body[data-state=ready], body[data-state=error]", { timeout: LOAD_TIMEOUT_MS });
  await assertNoError(page);
  await page.fill("#prompt", PROMPT);
  await page.fill("#seed", String(SEED));
  // The longest the main thread went without running a 20 ms timer: generation must
  // leave the page responsive.
  await page.evaluate(() => {
    let last = performance.now();
    window.longestStall = 0;
    window.stallTimer = setInterval(() => {
      const now = performance.now();
      window.longestStall = Math.max(window.longestStall, now - last);
      last = now;
    }, 20);
  });
  await page.click("#generate");
  await page.waitForSelector("body[data-state=done], body[data-state=error]", { timeout: GENERATE_TIMEOUT_MS });
  await assertNoError(page);
  return page.evaluate(() => {
    clearInterval(window.stallTimer);
    const canvas = document.querySelector("#result");
    return {
      width: canvas.width,
      height: canvas.height,
      pixels: Array.from(canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data),
      previewMs: document.body.dataset.previewMs.split(",").map(Number),
      stepLabel: document.querySelector("#step-label").textContent,
      info: document.querySelector("#result-info").textContent,
      longestStallMs: window.longestStall,
      loadMs: Number(document.body.dataset.loadMs),
      generateMs: Number(document.body.dataset.generateMs),
    };
  });
}

/** The native CLI's PNG for the seed, the prompt (PROMPT unless `args` has --prompt) and
 *  `args`, base64. `files` (name to base64 PNG) are written beside it first, for
 *  arguments that name them. */
function nativePng(args = [], files = {}) {
  assert.ok(existsSync(CLI), `${CLI} is missing: build the native CLI (cargo build -p webdiffusion-cli) or set WEBDIFFUSION_CLI`);
  const folder = mkdtempSync(join(tmpdir(), "webdiffusion-page-"));
  try {
    for (const [name, base64] of Object.entries(files)) writeFileSync(join(folder, name), Buffer.from(base64, "base64"));
    const out = join(folder, "native.png");
    const prompt = args.includes("--prompt") ? [] : ["--prompt", PROMPT];
    const command = ["generate", ...prompt, "--seed", String(SEED), "--out", out, ...args];
    execFileSync(CLI, command, { cwd: folder, stdio: ["ignore", "ignore", "pipe"] });
    return readFileSync(out).toString("base64");
  } finally {
    rmSync(folder, { recursive: true, force: true });
  }
}

/** A base64 PNG as RGBA decoded by the page's browser. */
function decoded(page, png) {
  return page.evaluate(async (base64) => {
    const image = new Image();
    image.src = `data:image/png;base64,${base64}`;
    await image.decode();
    const canvas = new OffscreenCanvas(image.width, image.height);
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0);
    return Array.from(context.getImageData(0, 0, image.width, image.height).data);
  }, png);
}

/** The native CLI's image for the same prompt and seed, as RGBA decoded by the page's browser. */
function nativeImage(page, args = [], files = {}) {
  return decoded(page, nativePng(args, files));
}

/** The page engine's image for `options` (prompt and seed added); `images` (option name to
 *  base64 PNG) become ImageData options, decoded in the page. */
function engineImage(page, options, images = {}) {
  return page.evaluate(
    async ({ options, images }) => {
      for (const [name, base64] of Object.entries(images)) {
        const image = new Image();
        image.src = `data:image/png;base64,${base64}`;
        await image.decode();
        const context = new OffscreenCanvas(image.width, image.height).getContext("2d");
        context.drawImage(image, 0, 0);
        options[name] = context.getImageData(0, 0, image.width, image.height);
      }
      const image = await window.webdiffusionEngine.generate(options);
      return { width: image.width, height: image.height, pixels: Array.from(image.rgba) };
    },
    { options: { prompt: PROMPT, seed: SEED, ...options }, images },
  );
}

/** A width x height PNG (base64), black with a white rectangle: an inpainting mask. */
function maskPng(page, width, height, [x, y, w, h]) {
  return page.evaluate(
    async ({ width, height, rect }) => {
      const canvas = new OffscreenCanvas(width, height);
      const context = canvas.getContext("2d");
      context.fillStyle = "#000";
      context.fillRect(0, 0, width, height);
      context.fillStyle = "#fff";
      context.fillRect(...rect);
      const bytes = new Uint8Array(await (await canvas.convertToBlob({ type: "image/png" })).arrayBuffer());
      return btoa(Array.from(bytes, (b) => String.fromCharCode(b)).join(""));
    },
    { width, height, rect: [x, y, w, h] },
  );
}

/** Per-channel mean and largest absolute difference of two RGBA images, alpha ignored. */
function difference(a, b) {
  assert.equal(a.length, b.length, "image sizes differ");
  let sum = 0;
  let max = 0;
  for (let i = 0; i < a.length; i++) {
    if (i % 4 === 3) continue;
    const d = Math.abs(a[i] - b[i]);
    sum += d;
    max = Math.max(max, d);
  }
  return { mean: sum / ((a.length / 4) * 3), max };
}

/** The largest per-channel standard deviation over the image's pixels. */
function largestChannelStdDev(rgba) {
  const pixels = rgba.length / 4;
  return Math.max(
    ...[0, 1, 2].map((channel) => {
      let sum = 0;
      let sumSquares = 0;
      for (let i = channel; i < rgba.length; i += 4) {
        sum += rgba[i];
        sumSquares += rgba[i] * rgba[i];
      }
      const mean = sum / pixels;
      return Math.sqrt(Math.max(0, sumSquares / pixels - mean * mean));
    }),
  );
}

async function assertNoError(page) {
  const error = await page.textContent("#error");
  assert.equal(error, "", `the page shows an error: ${error}`);
}

/** A new browser context's page, loaded and ready; `pageErrors` collects its uncaught errors. */
async function readyPage() {
  const context = await browser.newContext();
  const page = await context.newPage();
  const pageErrors = [];
  page.on("pageerror", (error) => pageErrors.push(error.message));
  await page.goto(baseUrl);
  await page.waitForSelector("body[data-state=ready], body[data-state=error]", { timeout: LOAD_TIMEOUT_MS });
  await assertNoError(page);
  return { context, page, pageErrors };
}

/** `got` (RGBA) is the CLI's `want` up to float rounding: Tint on SwiftShader and naga on the
 *  native driver round differently, nothing more. */
function assertLikeCli(what, got, want) {
  assert.equal(got.length, want.length, `${what}: the CLI's image has another size`);
  const native = difference(got, want);
  console.log(`${what}: vs native CLI, mean |difference| ${native.mean.toFixed(3)}, largest ${native.max} (of 255)`);
  assert.ok(native.mean < 0.5 && native.max <= 8, `${what}: the image differs from the native CLI's by ${JSON.stringify(native)}`);
}

test("the page generates with the embedded model, then again from cached shards", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const pageErrors = [];
  page.on("pageerror", (error) => pageErrors.push(error.message));
  page.on("console", (message) => {
    if (message.type() === "error") pageErrors.push(`console: ${message.text()}`);
  });
  const shardRequests = [];
  page.on("request", (request) => {
    if (/\/shard-\d+\.bin/.test(request.url())) shardRequests.push(request.url());
  });

  let started = Date.now();
  await page.goto(baseUrl);
  const first = await generateOnce(page);
  const firstWallMs = Date.now() - started;
  console.log(
    `first visit: model loaded in ${first.loadMs} ms, generated in ${first.generateMs} ms (previews at ${first.previewMs} ms; ` +
      `${firstWallMs} ms from navigation); ` +
      `${shardRequests.length} shard requests; main thread stalled at most ${first.longestStallMs.toFixed(0)} ms`,
  );
  assert.deepEqual(pageErrors, []);
  assert.equal(first.previewMs.length, 4, "one preview per LCM step");
  assert.match(first.stepLabel, /^step 4 of 4 /);
  // Each preview arrives as the GPU finishes its step, not all at the end (where they
  // would come within milliseconds of each other): steps take seconds on SwiftShader.
  assert.ok(first.previewMs[3] - first.previewMs[0] > 0.1 * first.generateMs, `previews at ${first.previewMs} ms`);
  assert.equal(first.width, 64);
  assert.equal(first.height, 64);
  assert.match(first.info, new RegExp(`^seed ${SEED}, `));
  const spread = largestChannelStdDev(first.pixels);
  assert.ok(spread > 5, `the image is flat (largest channel standard deviation ${spread.toFixed(2)})`);
  assert.ok(first.longestStallMs < 3000, `generating froze the page for ${first.longestStallMs.toFixed(0)} ms`);
  assertLikeCli("page", first.pixels, await nativeImage(page));

  // A bad option reaches the page as the engine's error message, and the page recovers.
  await page.fill("#guidance", "");
  await page.click("#generate");
  await page.waitForSelector("body[data-state=error]", { timeout: GENERATE_TIMEOUT_MS });
  assert.equal(await page.textContent("#error"), "generate: options.guidance must be finite, got NaN");
  assert.equal(pageErrors.length, 1, "the page logs the error once");
  assert.match(pageErrors[0], /options\.guidance must be finite/);
  pageErrors.length = 0;
  await page.fill("#guidance", "7.5");
  assert.ok(shardRequests.length >= 1, "the first visit downloads the shards");

  // Cancel after the first preview: the step in flight finishes, its preview stays, no error.
  await page.click("#generate");
  await page.waitForFunction(() => document.body.dataset.previewMs !== "", null, { timeout: GENERATE_TIMEOUT_MS });
  await page.click("#cancel");
  await page.waitForSelector("body[data-state=cancelled], body[data-state=error]", { timeout: GENERATE_TIMEOUT_MS });
  await assertNoError(page);
  const cancelled = await page.evaluate(() => ({
    label: document.querySelector("#step-label").textContent,
    previews: document.body.dataset.previewMs.split(",").length,
    generateDisabled: document.querySelector("#generate").disabled,
    cancelDisabled: document.querySelector("#cancel").disabled,
    downloadHidden: document.querySelector("#download").hidden,
  }));
  console.log(`cancelled: ${cancelled.label}, ${cancelled.previews} previews shown`);
  const [, step] = cancelled.label.match(/^cancelled after step (\d) of 4$/) ?? [];
  assert.ok(Number(step) >= 1 && Number(step) < 4, `the step label says ${cancelled.label}`);
  assert.equal(cancelled.previews, Number(step), "the cancelled step's preview was delivered");
  assert.ok(!cancelled.generateDisabled && cancelled.cancelDisabled && cancelled.downloadHidden, JSON.stringify(cancelled));
  assert.deepEqual(pageErrors, [], "cancelling is not an error");

  shardRequests.length = 0;
  started = Date.now();
  await page.reload();
  const second = await generateOnce(page);
  console.log(`second visit: model loaded in ${second.loadMs} ms, generated in ${second.generateMs} ms (${Date.now() - started} ms)`);
  assert.deepEqual(pageErrors, []);
  assert.deepEqual(shardRequests, [], "the second visit reads every shard from Cache Storage");
  assert.equal(second.previewMs.length, 4);
  assert.deepEqual(second.pixels, first.pixels, "the same seed and prompt give the same image");
  await context.close();
});

test("the engine's options give the CLI's images: sampler, size, image to image, inpainting, LoRA", async () => {
  const { context, page, pageErrors } = await readyPage();

  const init = nativePng();
  const mask = await maskPng(page, 64, 64, [8, 8, 32, 24]);
  const cases = [
    ["euler, 3 steps, 96x64, DeepCache every 2nd step", { scheduler: "euler", steps: 3, width: 96, height: 64, cacheInterval: 2, cacheBranch: 1 }, {},
      ["--scheduler", "euler", "--steps", "3", "--width", "96", "--height", "64", "--cache-interval", "2", "--cache-branch", "1"]],
    ["image to image, ToDo token merging", { prompt: "a large green ring at the center on a white background", strength: 0.6, tokenMerge: 2 }, { initImage: init },
      ["--prompt", "a large green ring at the center on a white background", "--init-image", "init.png", "--strength", "0.6", "--token-merge", "2"]],
    ["inpainting, clip skip 1", { strength: 1, clipSkip: 1 }, { initImage: init, mask },
      ["--init-image", "init.png", "--mask", "mask.png", "--strength", "1", "--clip-skip", "1"]],
  ];
  for (const [what, options, images, args] of cases) {
    const got = await engineImage(page, options, images);
    const want = await nativeImage(page, args, { "init.png": init, "mask.png": mask });
    const expectedWidth = options.width ?? 64;
    assert.equal(got.width, expectedWidth, what);
    assertLikeCli(`engine, ${what}`, got.pixels, want);
    assert.ok(largestChannelStdDev(got.pixels) > 5, `${what}: the image is flat`);
  }

  // A LoRA set on the engine: the CLI's image with --lora at the same scale; [] restores
  // the plain model exactly; a call while a generation runs is refused.
  const lora = readFileSync(LORA).toString("base64");
  const setLoras = (loras) =>
    page.evaluate((loras) => {
      const bytes = (base64) => Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
      try {
        window.webdiffusionEngine.setLoras(loras.map((l) => ({ ...l, data: bytes(l.data) })));
        return "ok";
      } catch (e) {
        return `${e.name}: ${e.message}`;
      }
    }, loras);
  const plain = await engineImage(page, {});
  assert.equal(await setLoras([{ data: lora, name: "lcm-lora", scale: 0.7 }]), "ok");
  const withLora = await engineImage(page, {});
  assertLikeCli("engine, LoRA at 0.7", withLora.pixels, await nativeImage(page, ["--lora", `${LORA}:0.7`]));
  assert.ok(difference(withLora.pixels, plain.pixels).mean > 2, "the LoRA changes the image");
  const during = await page.evaluate(async () => {
    let refused = "accepted";
    // From a step's preview callback: the generation is under way.
    await window.webdiffusionEngine.generate({ prompt: "x", seed: 1 }, () => {
      try {
        window.webdiffusionEngine.setLoras([]);
      } catch (e) {
        refused = e.message;
      }
    });
    return refused;
  });
  assert.match(during, /^setLoras: a generation is running/);
  assert.match(await setLoras([{ data: btoa("not a lora"), name: "broken.safetensors" }]), /^Error: .*broken\.safetensors/);
  assert.equal(await setLoras([]), "ok");
  assert.deepEqual((await engineImage(page, {})).pixels, plain.pixels, "setLoras([]) restores the plain model");

  // Bad options are TypeErrors naming the option.
  const rejected = (optionsSource) =>
    page.evaluate(`window.webdiffusionEngine.generate({ prompt: "x", ...(${optionsSource}) }).then(() => "accepted", (e) => e.name + ": " + e.message)`);
  assert.match(await rejected(`{ scheduler: "warp" }`), /^TypeError: .*options\.scheduler "warp" is none of ddim, pndm/);
  assert.match(await rejected(`{ width: 64.5 }`), /^TypeError: .*options\.width must be an integer/);
  assert.match(await rejected(`{ strength: 0 }`), /^TypeError: .*options\.strength must be in \(0, 1\]/);
  assert.match(await rejected(`{ strength: 0.5 }`), /^TypeError: .*options\.strength needs options\.initImage/);
  assert.match(await rejected(`{ mask: { data: new Uint8Array(4), width: 1, height: 1 } }`), /^TypeError: .*options\.mask needs options\.initImage/);
  assert.match(await rejected(`{ initImage: { data: [1, 2, 3], width: 1, height: 1 } }`), /^TypeError: .*options\.initImage must be an ImageData/);
  assert.match(await rejected(`{ initImage: { data: new Uint8Array(12), width: 2, height: 2 } }`), /^TypeError: .*holds 12 bytes, not 2 x 2 RGBA pixels \(16\)/);
  assert.match(await rejected(`{ cacheInterval: 0 }`), /^TypeError: .*options\.cacheInterval must be an integer from 1/);
  assert.match(await rejected(`{ tokenMerge: 0.5 }`), /^TypeError: .*options\.tokenMerge must be a number from 1/);
  // What the pipeline refuses for this model is a TypeError too, with its message: a size
  // the VAE cannot take, a cache branch the UNet does not have.
  assert.match(await rejected(`{ width: 66 }`), /^TypeError: .*66/);
  assert.match(await rejected(`{ cacheBranch: 40 }`), /^TypeError: .*cache branch 40 is not below this UNet's 6 branches/);
  assert.deepEqual(pageErrors, []);
  await context.close();
});

test("the form's more options reach the engine: sampler, size, LoRA, then image to image with a mask", async () => {
  const { context, page, pageErrors } = await readyPage();
  const submit = async () => {
    await page.click("#generate");
    await page.waitForSelector("body[data-state=done], body[data-state=error]", { timeout: GENERATE_TIMEOUT_MS });
    await assertNoError(page);
    return page.evaluate(() => {
      const canvas = document.querySelector("#result");
      return { width: canvas.width, height: canvas.height, pixels: Array.from(canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data) };
    });
  };

  await page.fill("#prompt", PROMPT);
  await page.fill("#seed", String(SEED));
  await page.click("#more-options > summary");
  await page.selectOption("#scheduler", "euler");
  await page.fill("#steps", "3");
  await page.fill("#width", "96");
  await page.fill("#height", "64");
  await page.setInputFiles("#lora", LORA);
  await page.fill("#lora-scale", "0.7");
  const sized = await submit();
  assert.equal(sized.width, 96);
  assert.equal(sized.height, 64);
  const sizedArgs = ["--scheduler", "euler", "--steps", "3", "--width", "96", "--height", "64", "--lora", `${LORA}:0.7`];
  assertLikeCli("form, euler, 3 steps, 96x64, LoRA at 0.7", sized.pixels, await nativeImage(page, sizedArgs));

  // The LoRA cleared, the size and sampler back to the model's; a start image and a mask.
  const init = nativePng();
  const mask = await maskPng(page, 64, 64, [8, 8, 32, 24]);
  await page.setInputFiles("#lora", []);
  await page.selectOption("#scheduler", "");
  await page.fill("#steps", "4");
  await page.fill("#width", "");
  await page.fill("#height", "");
  await page.setInputFiles("#init-image", { name: "init.png", mimeType: "image/png", buffer: Buffer.from(init, "base64") });
  await page.setInputFiles("#mask", { name: "mask.png", mimeType: "image/png", buffer: Buffer.from(mask, "base64") });
  await page.fill("#strength", "1");
  await page.fill("#clip-skip", "1");
  const inpainted = await submit();
  const inpaintArgs = ["--init-image", "init.png", "--mask", "mask.png", "--strength", "1", "--clip-skip", "1"];
  assertLikeCli("form, inpainting, clip skip 1", inpainted.pixels, await nativeImage(page, inpaintArgs, { "init.png": init, "mask.png": mask }));

  // A file that is no picture is refused by name.
  await page.setInputFiles("#mask", { name: "notes.png", mimeType: "image/png", buffer: Buffer.from("not a png") });
  await page.click("#generate");
  await page.waitForSelector("body[data-state=error]", { timeout: GENERATE_TIMEOUT_MS });
  assert.equal(await page.textContent("#error"), "notes.png is not an image this browser can decode");
  assert.equal(pageErrors.length, 0, "a refused file is shown, not thrown");
  await context.close();
});
