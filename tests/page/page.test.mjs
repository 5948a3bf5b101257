// The page end to end in headless Chromium (WebGPU on SwiftShader): the built web/dist
// served by web/serve.mjs, driven by playwright-core with Debian's /usr/bin/chromium.
// A prompt is typed and Generate clicked; the four LCM step previews and a final image
// must appear with no page error, and the image must be the native CLI's for the same
// prompt and seed (the CLI's pipeline is the one matched to diffusers). A bad option shows
// the engine's message; Cancel after the first preview stops after the step in flight and
// keeps its preview. A reload then generates again and must fetch no shard: Cache Storage
// kept them.
//
//   node --test tests/page/     after ./build.sh has built web/dist and cargo the native
//                               CLI (target/debug/webdiffusion, or $WEBDIFFUSION_CLI)

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createRequire } from "node:module";
import { after, before, test } from "node:test";

const require = createRequire(new URL("../../web/package.json", import.meta.url));
const { chromium } = require("playwright-core");

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const CHROMIUM_FLAGS = [
  "--headless=new",
  "--no-sandbox",
  "--enable-unsafe-webgpu",
  "--use-webgpu-adapter=swiftshader",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];
// SwiftShader runs WebGPU on the CPU: loading compiles every kernel, and a 2-core CI
// machine is shared.
const LOAD_TIMEOUT_MS = 300_000;
const GENERATE_TIMEOUT_MS = 300_000;
const PROMPT = "a small yellow star at the top left on a dark blue background";
const SEED = 7;
const CLI =
  process.env.WEBDIFFUSION_CLI ?? join(process.env.CARGO_TARGET_DIR ?? new URL("../../target", import.meta.url).pathname, "debug/webdiffusion");

let server;
let baseUrl;
let browser;

/** Starts web/serve.mjs on a free port and resolves with its URL. */
function startServer() {
  const script = new URL("../../web/serve.mjs", import.meta.url).pathname;
  const child = spawn(process.execPath, [script, "--port", "0"], { stdio: ["ignore", "pipe", "inherit"] });
  return new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", (code) => reject(new Error(`serve.mjs exited with ${code} before serving`)));
    child.stdout.setEncoding("utf8");
    child.stdout.once("data", (line) => {
      const url = /serving (http:\/\/\S+)/.exec(line)?.[1];
      if (url) resolve({ child, url });
      else reject(new Error(`unexpected first line from serve.mjs: ${line}`));
    });
  });
}

before(async () => {
  ({ child: server, url: baseUrl } = await startServer());
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_FLAGS, headless: true });
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

/** The native CLI's image for the same prompt and seed, as RGBA decoded by the page's browser. */
async function nativeImage(page) {
  assert.ok(existsSync(CLI), `${CLI} is missing: build the native CLI (cargo build -p webdiffusion) or set WEBDIFFUSION_CLI`);
  const folder = mkdtempSync(join(tmpdir(), "webdiffusion-page-"));
  try {
    const out = join(folder, "native.png");
    execFileSync(CLI, ["generate", "--prompt", PROMPT, "--seed", String(SEED), "--out", out], { stdio: ["ignore", "ignore", "pipe"] });
    const png = readFileSync(out).toString("base64");
    return await page.evaluate(async (base64) => {
      const image = new Image();
      image.src = `data:image/png;base64,${base64}`;
      await image.decode();
      const canvas = new OffscreenCanvas(image.width, image.height);
      const context = canvas.getContext("2d");
      context.drawImage(image, 0, 0);
      return Array.from(context.getImageData(0, 0, image.width, image.height).data);
    }, png);
  } finally {
    rmSync(folder, { recursive: true, force: true });
  }
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
  // Tint on SwiftShader and naga on the native driver differ in float rounding only.
  const native = difference(first.pixels, await nativeImage(page));
  console.log(`page vs native CLI: mean |difference| ${native.mean.toFixed(3)}, largest ${native.max} (of 255)`);
  assert.ok(native.mean < 0.5 && native.max <= 8, `the page's image differs from the native CLI's by ${JSON.stringify(native)}`);

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
