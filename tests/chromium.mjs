// What the page tests (tests/page/) and the browser benchmarks (tests/bench/) share:
// Debian's headless Chromium with WebGPU on SwiftShader, launched through playwright-core
// (from web/node_modules), and web/serve.mjs on a free port.

import { spawn } from "node:child_process";
import { createRequire } from "node:module";

const require = createRequire(new URL("../web/package.json", import.meta.url));
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

/** A headless Chromium with WebGPU (playwright's Browser). */
export function launchChromium() {
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_FLAGS, headless: true });
}

/** Starts web/serve.mjs over `root` (its default, web/dist, when omitted) on a free port;
 * resolves with the child process and its URL. */
export function serve(root) {
  const script = new URL("../web/serve.mjs", import.meta.url).pathname;
  const args = [script, ...(root ? [root] : []), "--port", "0"];
  const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "inherit"] });
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
