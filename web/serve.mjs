// A static file server for the built page (web/dist by default), with no dependencies:
// correct MIME types (WebAssembly streaming compilation needs application/wasm) and
// single byte ranges, so an interrupted shard download resumes where it broke off.
//
//   node web/serve.mjs [ROOT] [--port N] [--log]
//
// --port 0 picks a free port. The first line printed is "serving http://localhost:PORT/".
// --log prints one line per request: "METHOD PATH STATUS [RANGE]".

import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { createServer } from "node:http";
import { extname, join, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

const MIME = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".wasm": "application/wasm",
  ".bin": "application/octet-stream",
  ".txt": "text/plain; charset=utf-8",
  ".png": "image/png",
  ".svg": "image/svg+xml",
  ".ts": "text/plain; charset=utf-8",
  ".map": "application/json",
};

function parseArgs(argv) {
  const options = { root: fileURLToPath(new URL("dist/", import.meta.url)), port: 8080, log: false };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--port") options.port = Number(argv[++i]);
    else if (argv[i] === "--log") options.log = true;
    else options.root = resolve(argv[i]);
  }
  if (!Number.isInteger(options.port) || options.port < 0 || options.port > 65535) {
    throw new Error(`--port must be an integer from 0 to 65535`);
  }
  return options;
}

/** The file `urlPath` names under `root`, or null when it would leave `root`. */
function fileFor(root, urlPath) {
  let path;
  try {
    path = decodeURIComponent(urlPath.split("?")[0]);
  } catch {
    return null;
  }
  if (path.endsWith("/")) path += "index.html";
  const file = resolve(join(root, path));
  return file === root || file.startsWith(root.endsWith(sep) ? root : root + sep) ? file : null;
}

/** [start, end] (inclusive) of a single "bytes=a-b" / "bytes=a-" / "bytes=-n" range, "unsatisfiable", or null for none. */
function parseRange(header, size) {
  const match = /^bytes=(\d*)-(\d*)$/.exec(header ?? "");
  if (!match || (match[1] === "" && match[2] === "")) return null;
  let start, end;
  if (match[1] === "") {
    start = Math.max(0, size - Number(match[2]));
    end = size - 1;
  } else {
    start = Number(match[1]);
    end = match[2] === "" ? size - 1 : Math.min(Number(match[2]), size - 1);
  }
  return start > end || start >= size ? "unsatisfiable" : [start, end];
}

async function handle(root, request, response) {
  if (request.method !== "GET" && request.method !== "HEAD") {
    response.writeHead(405, { Allow: "GET, HEAD" }).end();
    return;
  }
  const file = fileFor(root, request.url ?? "/");
  const info = file && (await stat(file).catch(() => null));
  if (!info || !info.isFile()) {
    response.writeHead(404, { "Content-Type": "text/plain" }).end("not found\n");
    return;
  }
  const headers = {
    "Content-Type": MIME[extname(file)] ?? "application/octet-stream",
    "Accept-Ranges": "bytes",
    "Cache-Control": "no-cache",
  };
  const range = parseRange(request.headers.range, info.size);
  if (range === "unsatisfiable") {
    response.writeHead(416, { ...headers, "Content-Range": `bytes */${info.size}` }).end();
    return;
  }
  const [start, end] = range ?? [0, info.size - 1];
  const status = range ? 206 : 200;
  if (range) headers["Content-Range"] = `bytes ${start}-${end}/${info.size}`;
  headers["Content-Length"] = String(info.size === 0 ? 0 : end - start + 1);
  response.writeHead(status, headers);
  if (request.method === "HEAD" || info.size === 0) {
    response.end();
    return;
  }
  createReadStream(file, { start, end })
    .on("error", () => response.destroy())
    .pipe(response);
}

const options = parseArgs(process.argv.slice(2));
const root = resolve(options.root);
const server = createServer((request, response) => {
  if (options.log) {
    response.on("finish", () => {
      const range = request.headers.range ? ` ${request.headers.range}` : "";
      console.log(`${request.method} ${request.url} ${response.statusCode}${range}`);
    });
  }
  handle(root, request, response).catch((error) => {
    console.error(`${request.url}: ${error.message}`);
    if (!response.headersSent) response.writeHead(500).end();
    else response.destroy();
  });
});
server.listen(options.port, "127.0.0.1", () => {
  console.log(`serving http://localhost:${server.address().port}/ from ${root}`);
});
