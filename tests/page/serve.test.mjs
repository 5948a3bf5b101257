// web/serve.mjs over real HTTP: MIME types the page depends on (application/wasm for
// streaming compilation), byte ranges as FetchSource's resume sends them, and no way out
// of the served folder.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

const SHARD = Buffer.from(Array.from({ length: 1000 }, (_, i) => i % 251));
let folder;
let server;
let port;

before(async () => {
  folder = mkdtempSync(join(tmpdir(), "webdiffusion-serve-"));
  mkdirSync(join(folder, "site/models"), { recursive: true });
  writeFileSync(join(folder, "site/index.html"), "<!doctype html>");
  writeFileSync(join(folder, "site/main.js"), "export {};");
  writeFileSync(join(folder, "site/module_bg.wasm"), Buffer.from([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0]));
  writeFileSync(join(folder, "site/models/manifest.json"), "{}");
  writeFileSync(join(folder, "site/models/shard-00000.bin"), SHARD);
  writeFileSync(join(folder, "secret.txt"), "outside the served folder");
  const script = new URL("../../web/serve.mjs", import.meta.url).pathname;
  server = spawn(process.execPath, [script, join(folder, "site"), "--port", "0"], { stdio: ["ignore", "pipe", "inherit"] });
  port = await new Promise((resolve, reject) => {
    server.once("exit", (code) => reject(new Error(`serve.mjs exited with ${code}`)));
    server.stdout.once("data", (line) => resolve(Number(/localhost:(\d+)\//.exec(String(line))[1])));
  });
});

after(() => {
  server?.kill();
  rmSync(folder, { recursive: true, force: true });
});

/** GET `path` (sent as is, no normalisation) with `headers`: status, headers and body. */
function get(path, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path, headers }, (response) => {
      const chunks = [];
      response.on("data", (chunk) => chunks.push(chunk));
      response.on("end", () => resolve({ status: response.statusCode, headers: response.headers, body: Buffer.concat(chunks) }));
    });
    req.on("error", reject);
    req.end();
  });
}

test("files are served whole with the MIME types browsers require", async () => {
  const expected = {
    "/": "text/html; charset=utf-8",
    "/main.js": "text/javascript; charset=utf-8",
    "/module_bg.wasm": "application/wasm",
    "/models/manifest.json": "application/json",
    "/models/shard-00000.bin": "application/octet-stream",
  };
  for (const [path, type] of Object.entries(expected)) {
    const response = await get(path);
    assert.equal(response.status, 200, path);
    assert.equal(response.headers["content-type"], type, path);
    assert.equal(response.headers["accept-ranges"], "bytes", path);
  }
  const shard = await get("/models/shard-00000.bin");
  assert.deepEqual(shard.body, SHARD);
  assert.equal(shard.headers["content-length"], "1000");
});

test("byte ranges resume a download", async () => {
  const open = await get("/models/shard-00000.bin", { Range: "bytes=600-" });
  assert.equal(open.status, 206);
  assert.equal(open.headers["content-range"], "bytes 600-999/1000");
  assert.deepEqual(open.body, SHARD.subarray(600));

  const closed = await get("/models/shard-00000.bin", { Range: "bytes=10-19" });
  assert.equal(closed.status, 206);
  assert.equal(closed.headers["content-range"], "bytes 10-19/1000");
  assert.deepEqual(closed.body, SHARD.subarray(10, 20));

  const suffix = await get("/models/shard-00000.bin", { Range: "bytes=-5" });
  assert.equal(suffix.headers["content-range"], "bytes 995-999/1000");
  assert.deepEqual(suffix.body, SHARD.subarray(995));

  const beyond = await get("/models/shard-00000.bin", { Range: "bytes=1000-" });
  assert.equal(beyond.status, 416);
  assert.equal(beyond.headers["content-range"], "bytes */1000");
});

test("nothing outside the served folder is reachable", async () => {
  for (const path of ["/../secret.txt", "/%2e%2e/secret.txt", "/models/..%2f..%2fsecret.txt", "/missing.js"]) {
    assert.equal((await get(path)).status, 404, path);
  }
});
