// The benchmarks in headless Chromium (WebGPU on SwiftShader), printed as the native
// `webdiffusion bench step` and `bench kernels` print them. Not tests: they print numbers.
//
//   node tests/bench/browser.mjs step [--model models/embedded] [--steps 3] [--guidance 7.5]
//                                     [--size N] [--profile]
//   node tests/bench/browser.mjs kernels [--shapes embedded|reduced] [--only conv2d] [--iterations 3]
//   node tests/bench/browser.mjs generate [--model models/embedded-lcm] [--steps 4] [--guidance 7.5]
//                                         [--runs 2] [--root CHECKOUT]
//                                         [--cache-interval N --cache-branch B] [--token-merge F]
//
// `generate` times what the page does (Engine.generate with a preview after every step)
// through the public API alone; --root serves another checkout (its web/pkg and models, with
// this page copied in), so a baseline build is timed beside this one in the same browser.
// Needs web/pkg (./build.sh builds it) and web/node_modules (npm ci in web/).

import { copyFileSync, mkdirSync } from "node:fs";
import { resolve } from "node:path";

import { launchChromium, serve } from "../chromium.mjs";
import { spread } from "./spread.mjs";

const HERE = new URL("../../", import.meta.url).pathname;
const TIMEOUT_MS = 1_800_000;
const PROMPT = "a lighthouse on a cliff at dusk";

function parseArgs(argv) {
  const args = {
    bench: argv[0],
    model: undefined, steps: undefined, guidance: 7.5, size: undefined, profile: false,
    shapes: "embedded", only: "", iterations: 3, runs: 2, root: HERE, savings: {},
  };
  if (!["step", "kernels", "generate"].includes(args.bench)) throw new Error("the first argument must be step, kernels or generate");
  for (let i = 1; i < argv.length; i++) {
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${argv[i]} needs a value`);
      return argv[++i];
    };
    switch (argv[i]) {
      case "--model": args.model = value(); break;
      case "--steps": args.steps = Number(value()); break;
      case "--guidance": args.guidance = Number(value()); break;
      case "--size": args.size = Number(value()); break;
      case "--profile": args.profile = true; break;
      case "--shapes": args.shapes = value(); break;
      case "--only": args.only = value(); break;
      case "--iterations": args.iterations = Number(value()); break;
      case "--runs": args.runs = Number(value()); break;
      case "--root": args.root = resolve(value()) + "/"; break;
      // The step savings, as the page's options (Engine.generate) name them.
      case "--cache-interval": args.savings.cacheInterval = Number(value()); break;
      case "--cache-branch": args.savings.cacheBranch = Number(value()); break;
      case "--token-merge": args.savings.tokenMerge = Number(value()); break;
      default: throw new Error(`unknown argument ${argv[i]}`);
    }
  }
  args.model ??= args.bench === "generate" ? "models/embedded-lcm" : "models/embedded";
  args.steps ??= args.bench === "generate" ? 4 : 3;
  for (const key of ["steps", "runs", "iterations"]) {
    if (!Number.isInteger(args[key]) || args[key] < 1) throw new Error(`--${key} must be a positive integer`);
  }
  return args;
}

const args = parseArgs(process.argv.slice(2));
if (args.root !== HERE) {
  mkdirSync(`${args.root}tests/bench`, { recursive: true });
  copyFileSync(`${HERE}tests/bench/page.html`, `${args.root}tests/bench/page.html`);
}
const { child: server, url } = await serve(args.root);
const browser = await launchChromium();
try {
  const page = await browser.newPage();
  page.on("console", (message) => process.stderr.write(`page: ${message.text()}\n`));
  const options = { prompt: PROMPT, seed: 1, guidance: args.guidance, steps: args.steps, ...args.savings };
  if (args.size) Object.assign(options, { width: args.size, height: args.size });
  const model = `/${args.model.replace(/^\/+|\/+$/g, "")}/`;
  const query = {
    step: { bench: "step", model, options: JSON.stringify(options), steps: String(args.steps), profile: args.profile ? "1" : "0" },
    kernels: { bench: "kernels", shapes: args.shapes, only: args.only, iterations: String(args.iterations) },
    generate: { bench: "generate", model, options: JSON.stringify(options), runs: String(args.runs) },
  }[args.bench];
  await page.goto(`${url}tests/bench/page.html?${new URLSearchParams(query)}`);
  await page.waitForSelector("body[data-state=done], body[data-state=error]", { timeout: TIMEOUT_MS });
  const text = await page.textContent("#out");
  if ((await page.getAttribute("body", "data-state")) === "error") throw new Error(text);
  const result = JSON.parse(text);
  if (args.bench === "step") {
    console.log(`model: ${args.model} in Chromium ${browser.version()}`);
    process.stdout.write(result.table);
    if (args.profile && !result.kernels) console.log("\n(no per-kernel times: the browser grants no timestamp queries)");
  } else if (args.bench === "kernels") {
    console.log(`adapter: WebGPU in Chromium ${browser.version()}`);
    process.stdout.write(result.table);
  } else {
    const savings = Object.keys(args.savings).length ? `, ${JSON.stringify(args.savings)}` : "";
    console.log(`${args.root}: ${args.model}, ${args.steps} steps, guidance ${args.guidance}${savings}, in Chromium ${browser.version()} (${result.adapter})`);
    // The first run also compiles every pipeline; the others are what a user waits for again.
    const [first, ...rest] = result.runs;
    const steps = rest.flatMap((run) => run.previews.map((t, i) => (t - (i ? run.previews[i - 1] : 0)) * 1000));
    console.log("| generation | median ms | min | max |\n|---|---:|---:|---:|");
    console.log(`| first (compiles the pipelines) | ${spread([first.seconds * 1000])} |`);
    if (rest.length) {
      console.log(`| later ones, whole | ${spread(rest.map((run) => run.seconds * 1000))} |`);
      console.log(`| later ones, between previews (step and preview) | ${spread(steps)} |`);
    }
  }
} finally {
  await browser.close();
  server.kill();
}
