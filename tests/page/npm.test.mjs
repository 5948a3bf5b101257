// web/pkg as an npm package, as a user installs it: `npm pack` it, install the tarball into
// an empty project (offline: it has no dependencies) and import it by name. The tarball must
// hold exactly the bindings, the wasm, the types and the README, at the crate's version, and
// the types must describe the API the page test exercises.
//
//   node --test tests/page/     after ./build.sh has built web/pkg

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

const PKG = new URL("../../web/pkg/", import.meta.url).pathname;
const CRATE_MANIFEST = new URL("../../crate/Cargo.toml", import.meta.url).pathname;

function npm(args, cwd) {
  return execFileSync("npm", [...args, "--no-audit", "--no-fund", "--loglevel=error"], { cwd, encoding: "utf8" });
}

test("web/pkg packs, installs and imports as the npm package webdiffusion", async () => {
  const folder = mkdtempSync(join(tmpdir(), "webdiffusion-npm-"));
  try {
    const [packed] = JSON.parse(npm(["pack", "--json", "--pack-destination", folder], PKG));
    const crateVersion = /^version = "([^"]+)"/m.exec(readFileSync(CRATE_MANIFEST, "utf8"))[1];
    assert.equal(packed.name, "webdiffusion");
    assert.equal(packed.version, crateVersion, "the npm package's version is the crate's");
    const files = packed.files.map((f) => f.path).sort();
    assert.deepEqual(files, [
      "README.md",
      "package.json",
      "webdiffusion.d.ts",
      "webdiffusion.js",
      "webdiffusion_bg.wasm",
      "webdiffusion_bg.wasm.d.ts",
    ]);

    const project = join(folder, "project");
    mkdirSync(project);
    writeFileSync(join(project, "package.json"), JSON.stringify({ name: "consumer", private: true, type: "module" }));
    npm(["install", "--offline", join(folder, packed.filename)], project);
    writeFileSync(
      join(project, "check.mjs"),
      `import init, { Engine } from "webdiffusion";
       import { fileURLToPath } from "node:url";
       const wasm = fileURLToPath(import.meta.resolve("webdiffusion/webdiffusion_bg.wasm"));
       console.log(JSON.stringify({ init: typeof init, load: typeof Engine.load, wasm }));`,
    );
    const imported = JSON.parse(execFileSync(process.execPath, ["check.mjs"], { cwd: project, encoding: "utf8" }));
    assert.deepEqual({ init: imported.init, load: imported.load }, { init: "function", load: "function" });
    assert.ok(readFileSync(imported.wasm).subarray(0, 4).equals(Buffer.from([0, 0x61, 0x73, 0x6d])), "the wasm resolves by its export path");

    const types = readFileSync(join(project, "node_modules/webdiffusion/webdiffusion.d.ts"), "utf8");
    for (const declaration of ["export class Engine", "export interface GenerateOptions", "scheduler?: string", "initImage?: RgbaImage", "export interface GeneratedImage", "setLoras(loras: LoraOptions[]): void"]) {
      assert.ok(types.includes(declaration), `webdiffusion.d.ts declares ${declaration}`);
    }
  } finally {
    rmSync(folder, { recursive: true, force: true });
  }
});
