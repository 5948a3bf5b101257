// One UNet call timed in onnxruntime-web, in the same headless Chromium (WebGPU on SwiftShader)
// as tests/bench/browser.mjs, so that our engine's step can be put beside it. Not a test: it
// prints numbers. The .onnx files come from tests/bench/export_onnx.py.
//
//   node tests/bench/ort.mjs --model /tmp/webdiffusion-onnx/tiny-sd.onnx [--runs 5]
//                            [--providers webgpu,wasm] [--threads 1,2]
//
// Providers: webgpu (ORT's WebGPU EP, bundle ort.webgpu.min.mjs), webgpu-jsep (its older
// JavaScript WebGPU EP, ort.min.mjs) and wasm (CPU, ort.wasm.min.mjs, once per --threads count;
// ORT's default is min(4, cores / 2)). Each run gets its own page, since ORT fixes the thread
// count when it first loads. Needs web/node_modules (npm ci in web/) for the browser driver and
// tests/bench/node_modules (npm ci in tests/bench/) for onnxruntime-web, which CI never installs.

import { mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import { launchChromium, serve } from "../chromium.mjs";
import { spread } from "./spread.mjs";

const HERE = new URL("../../", import.meta.url).pathname;
const TIMEOUT_MS = 3_600_000;
const PROVIDERS = {
  webgpu: { bundle: "ort.webgpu.min.mjs", ep: "webgpu" },
  "webgpu-jsep": { bundle: "ort.min.mjs", ep: "webgpu" },
  wasm: { bundle: "ort.wasm.min.mjs", ep: "wasm" },
};

function parseArgs(argv) {
  const args = { model: undefined, runs: 5, providers: ["webgpu", "wasm"], threads: [1] };
  for (let i = 0; i < argv.length; i++) {
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${argv[i]} needs a value`);
      return argv[++i];
    };
    switch (argv[i]) {
      case "--model": args.model = resolve(value()); break;
      case "--runs": args.runs = Number(value()); break;
      case "--providers": args.providers = value().split(","); break;
      case "--threads": args.threads = value().split(",").map(Number); break;
      default: throw new Error(`unknown argument ${argv[i]}`);
    }
  }
  if (!args.model) throw new Error("--model FILE.onnx is required");
  if (![args.runs, ...args.threads].every((n) => Number.isInteger(n) && n > 0)) throw new Error("--runs and --threads take positive integers");
  const unknown = args.providers.filter((p) => !(p in PROVIDERS));
  if (unknown.length) throw new Error(`unknown providers ${unknown} (known: ${Object.keys(PROVIDERS)})`);
  return args;
}

const args = parseArgs(process.argv.slice(2));
// The model lives outside the repository (hundreds of MB), so the server gets a folder of links:
// the page, ORT's dist/ and the model, all same-origin.
const root = mkdtempSync(join(tmpdir(), "ort-bench-"));
symlinkSync(`${HERE}tests/bench/ort.html`, join(root, "ort.html"));
symlinkSync(`${HERE}tests/bench/node_modules/onnxruntime-web/dist`, join(root, "ort"));
symlinkSync(args.model, join(root, "model.onnx"));
const { child: server, url } = await serve(root);
const browser = await launchChromium();
try {
  const rows = [];
  const runs = args.providers.flatMap((name) => (PROVIDERS[name].ep === "wasm" ? args.threads : [1]).map((threads) => [name, threads]));
  for (const [name, threads] of runs) {
    const { bundle, ep } = PROVIDERS[name];
    const page = await browser.newPage();
    page.on("console", (message) => process.stderr.write(`page (${name}): ${message.text()}\n`));
    // More than one wasm thread needs SharedArrayBuffer, so the page and its workers must be
    // cross-origin isolated: every response but the (large) model gets COOP and COEP.
    await page.route((u) => !u.pathname.endsWith("/model.onnx"), async (route) => {
      const response = await route.fetch();
      const headers = { ...response.headers(), "cross-origin-opener-policy": "same-origin", "cross-origin-embedder-policy": "require-corp" };
      await route.fulfill({ response, headers });
    });
    const query = new URLSearchParams({ bundle, provider: ep, threads: String(threads), runs: String(args.runs) });
    await page.goto(`${url}ort.html?${query}`);
    await page.waitForSelector("body[data-state=done], body[data-state=error]", { timeout: TIMEOUT_MS });
    const text = await page.textContent("#out");
    if ((await page.getAttribute("body", "data-state")) === "error") throw new Error(`${name}: ${text}`);
    const result = JSON.parse(text);
    if (!rows.length) console.log(`model: ${args.model} (${result.inputs.join(", ")}), onnxruntime-web ${result.version} in Chromium ${browser.version()}`);
    const label = ep === "wasm" ? `${name}, ${threads} thread${threads > 1 ? "s" : ""}` : `${name} (${result.adapter})`;
    rows.push(`| ${label} | ${result.createMs.toFixed(0)} | ${spread(result.times)} |`);
    await page.close();
  }
  console.log(`${args.runs} timed runs after one warm-up, batch 2 (one guided step)\n`);
  console.log("| provider | session create ms | median ms | min | max |\n|---|---:|---:|---:|---:|");
  console.log(rows.join("\n"));
} finally {
  await browser.close();
  server.kill();
  rmSync(root, { recursive: true });
}
