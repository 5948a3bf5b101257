//! Packages streamed in a real browser (headless Chromium): `FetchSource` over an
//! injected `fetch` that serves a package written in memory and fails on request
//! (HTTP errors, truncated and corrupted shards, connections cut mid-body), with Cache
//! Storage keeping shards between loads. Tensor values are checked against the source
//! model's values in their storage types, and wasm memory is measured while a 48 MB
//! package streams through.
#![cfg(target_arch = "wasm32")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use js_sys::{Array, Function, JSON, Map, Reflect, Uint8Array};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;
use web_sys::{Cache, CacheStorage, Response};
use webdiffusion::Error;
use webdiffusion::convert::{HostTensor, SourceComponent, SourceModel};
use webdiffusion::gpu::{DType, Gpu};
use webdiffusion::loader::ModelFiles;
use webdiffusion::package::manifest::{Component, Manifest, ShardEntry, TensorEntry};
use webdiffusion::package::{LoadProgress, Package, Policy, Quantization, WriteOptions, load_package, write_package};
use webdiffusion::quant;
use webdiffusion_web::FetchSource;

wasm_bindgen_test_configure!(run_in_browser);

/// Counts live heap bytes and their peak, to measure what a load allocates.
struct CountingAllocator;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        grew(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const BASE: &str = "https://packages.test/tiny/";
/// Small shards, so that tensors span several of them and every fault has room.
const SHARD_BYTES: u64 = 4096;

/// A fake server in JavaScript: `files` served from Uint8Arrays, `generated` shards
/// whose byte at stream position p is p % 251 (made in JS, never in wasm memory),
/// per-path `faults`, and a log of (path, Range header) requests. Bodies arrive in
/// chunks of 1000 bytes (`chunk` bytes for generated shards).
const SERVER_JS: &str = r#"
const files = new Map(), generated = new Map(), faults = new Map(), requests = [];
function body(bytes, cutAt) {
  let at = 0;
  return new ReadableStream({ pull(controller) {
    if (cutAt !== undefined && at >= cutAt) { controller.error(new TypeError("connection reset")); return; }
    if (at >= bytes.length) { controller.close(); return; }
    const end = Math.min(bytes.length, at + 1000, cutAt ?? Infinity);
    controller.enqueue(bytes.slice(at, end));
    at = end;
  } });
}
function pattern(start, length, chunk) {
  let at = 0;
  return new ReadableStream({ pull(controller) {
    if (at >= length) { controller.close(); return; }
    const bytes = new Uint8Array(Math.min(chunk, length - at));
    for (let i = 0; i < bytes.length; i++) bytes[i] = (start + at + i) % 251;
    controller.enqueue(bytes);
    at += bytes.length;
  } });
}
async function fetch(request) {
  const path = request.url.slice(base.length), range = request.headers.get("Range");
  requests.push([path, range ?? ""]);
  const fault = faults.get(path) ?? {};
  if (fault.offline) throw new TypeError("Failed to fetch");
  if (generated.has(path)) {
    const [start, length, chunk] = generated.get(path);
    return new Response(pattern(start, length, chunk));
  }
  let bytes = files.get(path);
  if (bytes === undefined || fault.status) return new Response("none", { status: fault.status ?? 404, statusText: "Not Found" });
  if (fault.truncate !== undefined) bytes = bytes.subarray(0, fault.truncate);
  if (fault.flip !== undefined) { bytes = bytes.slice(); bytes[fault.flip] ^= 1; }
  let start = 0, status = 200;
  const headers = new Headers();
  if (range && !fault.ignoreRange) {
    start = Number(/^bytes=(\d+)-$/.exec(range)[1]);
    status = 206;
    headers.set("Content-Range", `bytes ${start}-${bytes.length - 1}/${bytes.length}`);
  }
  const cut = (fault.cuts ?? []).shift();
  return new Response(body(bytes.subarray(start), cut === undefined ? undefined : cut - start), { status, headers });
}
return { files, generated, faults, fetch, take: () => requests.splice(0) };
"#;

struct Server(JsValue);

impl Server {
    fn new() -> Self {
        Self(Function::new_with_args("base", SERVER_JS).call1(&JsValue::NULL, &BASE.into()).unwrap())
    }

    fn field<T: JsCast>(&self, name: &str) -> T {
        Reflect::get(&self.0, &name.into()).unwrap().dyn_into().unwrap()
    }

    fn serve(&self, files: &BTreeMap<String, Vec<u8>>) {
        for (path, bytes) in files {
            self.field::<Map>("files").set(&path.into(), &Uint8Array::from(&bytes[..]));
        }
    }

    /// Serves `path` as `length` pattern bytes from stream position `start`.
    fn generate(&self, path: &str, start: u64, length: u64, chunk: u32) {
        let entry = Array::of3(&(start as f64).into(), &(length as f64).into(), &chunk.into());
        self.field::<Map>("generated").set(&path.into(), &entry);
    }

    /// Sets `path`'s fault from JSON (`{"status": 404}`, `{"cuts": [1500]}`, ...); `None` clears it.
    fn fault(&self, path: &str, fault: Option<&str>) {
        let faults: Map = self.field("faults");
        if let Some(json) = fault {
            faults.set(&path.into(), &JSON::parse(json).unwrap());
        } else {
            faults.delete(&path.into());
        }
    }

    /// The source over this server's `fetch`, keeping shards in `cache`.
    fn source(&self, cache: Option<&str>) -> FetchSource {
        FetchSource::new(BASE).with_fetch(self.field("fetch")).with_cache(cache)
    }

    /// The (path, Range) requests since the last call.
    fn take_requests(&self) -> Vec<(String, String)> {
        let taken: Array = self.field::<Function>("take").call0(&JsValue::NULL).unwrap().dyn_into().unwrap();
        taken
            .iter()
            .map(|pair| {
                let pair: Array = pair.dyn_into().unwrap();
                (pair.get(0).as_string().unwrap(), pair.get(1).as_string().unwrap())
            })
            .collect()
    }

    fn shard_requests(&self) -> Vec<(String, String)> {
        self.take_requests().into_iter().filter(|(path, _)| path.starts_with("shard-")).collect()
    }
}

async fn caches() -> CacheStorage {
    Reflect::get(&js_sys::global(), &"caches".into()).unwrap().dyn_into().unwrap()
}

async fn open_cache(name: &str) -> Cache {
    JsFuture::from(caches().await.open(name)).await.unwrap().dyn_into().unwrap()
}

async fn delete_cache(name: &str) {
    JsFuture::from(caches().await.delete(name)).await.unwrap();
}

async fn cached(name: &str, key: &str) -> bool {
    !JsFuture::from(open_cache(name).await.match_with_str(key)).await.unwrap().is_undefined()
}

/// A small SD-shaped model: each component has quantized weights, f16 biases and
/// an f32 position table, with seeded values.
fn tiny_model() -> SourceModel {
    let mut rng = SmallRng::seed_from_u64(5);
    let mut tensor =
        |shape: &[usize]| HostTensor::new(shape.to_vec(), (0..shape.iter().product()).map(|_| rng.random_range(-1.0f32..1.0)).collect());
    let mut component = |tensors: &[(&str, &[usize])]| SourceComponent {
        config: serde_json::json!({ "note": "values only" }),
        tensors: tensors.iter().map(|(name, shape)| (name.to_string(), tensor(shape))).collect(),
    };
    let components = BTreeMap::from([
        (
            "text_encoder".to_string(),
            component(&[
                ("embeddings.position_embedding.weight", &[77, 16]),
                ("encoder.layers.0.mlp.fc1.weight", &[40, 64]),
                ("encoder.layers.0.mlp.fc1.bias", &[40]),
            ]),
        ),
        (
            "unet".to_string(),
            component(&[
                ("down_blocks.0.resnets.0.conv1.weight", &[24, 32, 3, 3]),
                ("down_blocks.0.resnets.0.conv1.bias", &[24]),
                ("mid_block.attentions.0.proj_in.weight", &[48, 96]),
            ]),
        ),
        ("vae".to_string(), component(&[("decoder.up_blocks.0.resnets.0.conv1.weight", &[16, 32, 3, 3]), ("decoder.conv_in.bias", &[7])])),
    ]);
    SourceModel {
        family: "sd1".into(),
        name: "tiny".into(),
        components,
        scheduler: None,
        model_index: None,
        tokenizer: BTreeMap::from([("vocab.json".to_string(), br#"{"a</w>": 0}"#.to_vec())]),
    }
}

/// The tiny model as package files, and its manifest.
fn tiny_package() -> (SourceModel, BTreeMap<String, Vec<u8>>, Manifest) {
    let model = tiny_model();
    let options = WriteOptions {
        policy: Policy::new(Quantization::Mixed),
        shard_bytes: SHARD_BYTES,
        source: "tests".into(),
        model_hash: None,
        latent_rgb: None,
    };
    let mut files = BTreeMap::new();
    let manifest = write_package(&model, &options, &mut |path, bytes| {
        files.insert(path.to_string(), bytes.to_vec());
        Ok(())
    })
    .unwrap();
    (model, files, manifest)
}

/// Loads through `source`, returning the package and every progress report.
async fn load(gpu: &Gpu, source: &FetchSource) -> (Result<Package, Error>, Vec<LoadProgress>) {
    let mut reports = Vec::new();
    let package = load_package(gpu, source, &mut |p| reports.push(p.clone())).await;
    (package, reports)
}

/// Every tensor holds the source's values in its storage type, and the tokenizer file arrived.
async fn assert_tensors(package: &Package, model: &SourceModel) {
    let mut dtypes = Vec::new();
    for entry in &package.manifest().tensors {
        let source = &model.components[&entry.component].tensors[&entry.name];
        let dtype = DType::from_name(&entry.dtype).unwrap();
        dtypes.push(dtype);
        let want =
            quant::dequantize(dtype, &source.shape, &quant::quantize(dtype, &source.shape, &source.values().unwrap()).unwrap()).unwrap();
        let tensor = &package.uploaded(&entry.component).unwrap().tensors[&entry.name];
        let got = tensor.to_vec().await.unwrap();
        assert_eq!(got, want, "{}/{} ({})", entry.component, entry.name, entry.dtype);
    }
    for dtype in [DType::F32, DType::F16, DType::Q8, DType::Q4] {
        assert!(dtypes.contains(&dtype), "the package holds no {dtype:?} tensor");
    }
    assert_eq!(package.read("tokenizer/vocab.json").unwrap(), model.tokenizer["vocab.json"]);
}

/// Reports only ever grow, overall and per component, and end complete.
fn assert_progress(reports: &[LoadProgress], total: u64) {
    let last = reports.last().expect("progress was reported");
    assert_eq!((last.done, last.total), (total, total));
    assert!(last.components.iter().all(|c| c.done == c.total), "{last:?}");
    for pair in reports.windows(2) {
        assert!(pair[1].done >= pair[0].done, "progress went back from {} to {}", pair[0].done, pair[1].done);
        for (a, b) in pair[0].components.iter().zip(&pair[1].components) {
            assert!(b.done >= a.done, "{} went back from {} to {}", a.name, a.done, b.done);
        }
    }
}

fn shard_names(manifest: &Manifest) -> Vec<String> {
    manifest.shards.iter().map(|s| s.file.clone()).collect()
}

#[wasm_bindgen_test]
async fn package_loads_through_fetch_and_a_second_visit_downloads_no_shard() {
    let cache = "webdiffusion-test-second-visit";
    delete_cache(cache).await;
    let gpu = Gpu::new().await.unwrap();
    let (model, files, manifest) = tiny_package();
    assert!(manifest.shards.len() >= 5, "{} shards", manifest.shards.len());
    let server = Server::new();
    server.serve(&files);

    let (package, reports) = load(&gpu, &server.source(Some(cache))).await;
    assert_tensors(&package.unwrap(), &model).await;
    assert_progress(&reports, manifest.stream_bytes());
    let first: Vec<String> = server.shard_requests().into_iter().map(|(path, _)| path).collect();
    assert_eq!(first, shard_names(&manifest));

    let (package, reports) = load(&gpu, &server.source(Some(cache))).await;
    assert_tensors(&package.unwrap(), &model).await;
    assert_progress(&reports, manifest.stream_bytes());
    assert_eq!(server.shard_requests(), vec![], "the second load fetched shards");
    delete_cache(cache).await;
}

#[wasm_bindgen_test]
async fn bad_cached_shards_are_dropped_and_fetched_again() {
    let cache = "webdiffusion-test-bad-entries";
    delete_cache(cache).await;
    let gpu = Gpu::new().await.unwrap();
    let (model, files, manifest) = tiny_package();
    let server = Server::new();
    server.serve(&files);
    let source = server.source(Some(cache));
    load(&gpu, &source).await.0.unwrap();
    server.take_requests();

    // One flipped byte, one truncated copy, one with bytes appended.
    let stored = open_cache(cache).await;
    let bad_shards = [1, 2, 3];
    for shard in bad_shards {
        let entry = &manifest.shards[shard];
        let mut bytes = files[&entry.file].clone();
        match shard {
            1 => bytes[100] ^= 0x10,
            2 => bytes.truncate(1000),
            _ => bytes.extend_from_slice(&[0; 300]),
        }
        let response = Response::new_with_opt_u8_array(Some(bytes.as_mut_slice())).unwrap();
        JsFuture::from(stored.put_with_str(&source.cache_key(entry), &response)).await.unwrap();
    }

    let (package, reports) = load(&gpu, &server.source(Some(cache))).await;
    assert_tensors(&package.unwrap(), &model).await;
    assert_progress(&reports, manifest.stream_bytes());
    let refetched: Vec<String> = server.shard_requests().into_iter().map(|(path, _)| path).collect();
    assert_eq!(refetched, bad_shards.map(|shard| manifest.shards[shard].file.clone()));

    // Good copies replaced the bad ones.
    load(&gpu, &server.source(Some(cache))).await.0.unwrap();
    assert_eq!(server.shard_requests(), vec![]);
    delete_cache(cache).await;
}

#[wasm_bindgen_test]
async fn interrupted_downloads_resume_from_the_byte_they_stopped_at() {
    let cache = "webdiffusion-test-resume";
    delete_cache(cache).await;
    let gpu = Gpu::new().await.unwrap();
    let (model, files, manifest) = tiny_package();
    let server = Server::new();
    server.serve(&files);
    let names = shard_names(&manifest);
    server.fault(&names[1], Some(r#"{"cuts": [1500]}"#));
    // This server ignores ranges: the resumed 200 response's first bytes are skipped.
    server.fault(&names[2], Some(r#"{"cuts": [700], "ignoreRange": true}"#));
    server.fault(&names[3], Some(r#"{"cuts": [300, 2900]}"#));

    let (package, reports) = load(&gpu, &server.source(Some(cache))).await;
    assert_tensors(&package.unwrap(), &model).await;
    assert_progress(&reports, manifest.stream_bytes());
    let requests = server.shard_requests();
    let ranges = |shard: &str| requests.iter().filter(|(path, _)| path == shard).map(|(_, range)| range.as_str()).collect::<Vec<_>>();
    assert_eq!(ranges(&names[0]), [""]);
    assert_eq!(ranges(&names[1]), ["", "bytes=1500-"]);
    assert_eq!(ranges(&names[2]), ["", "bytes=700-"]);
    assert_eq!(ranges(&names[3]), ["", "bytes=300-", "bytes=2900-"]);

    // The resumed shards were kept whole.
    load(&gpu, &server.source(Some(cache))).await.0.unwrap();
    assert_eq!(server.shard_requests(), vec![]);
    delete_cache(cache).await;
}

#[wasm_bindgen_test]
async fn network_failures_name_the_url() {
    let cache = "webdiffusion-test-failures";
    delete_cache(cache).await;
    let gpu = Gpu::new().await.unwrap();
    let (_, files, manifest) = tiny_package();
    let server = Server::new();
    server.serve(&files);
    let source = server.source(Some(cache));
    let shard = &manifest.shards[2];
    let url = format!("{BASE}{}", shard.file);
    let cases = [
        (r#"{"status": 404}"#, "HTTP 404"),
        (r#"{"truncate": 1000}"#, "truncated: 1000 of"),
        (r#"{"flip": 5}"#, "does not match the manifest"),
        (r#"{"cuts": [100, 200, 300, 400, 500]}"#, "network failure after 500 bytes and 4 resumes"),
        (r#"{"offline": true}"#, "network failure after 0 bytes"),
    ];
    for (fault, expected) in cases {
        server.fault(&shard.file, Some(fault));
        let error = load(&gpu, &source).await.0.err().unwrap_or_else(|| panic!("{fault} loaded"));
        let message = error.to_string();
        assert!(message.contains(&url) && message.contains(expected), "{fault}: {message}");
        assert!(!cached(cache, &source.cache_key(shard)).await, "{fault}: a bad copy was kept");
    }
    server.fault(&shard.file, None);

    server.fault("manifest.json", Some(r#"{"status": 500}"#));
    let message = load(&gpu, &source).await.0.err().unwrap().to_string();
    assert!(message.contains(&format!("{BASE}manifest.json")) && message.contains("HTTP 500"), "{message}");
    delete_cache(cache).await;
}

/// The byte at position `p` of the generated shard stream.
fn pattern(p: u64) -> u8 {
    (p % 251) as u8
}

#[wasm_bindgen_test]
async fn wasm_memory_stays_far_below_the_package_size() {
    const SHARD: u64 = 16 << 20;
    const ROWS: usize = 1000;
    let cache = "webdiffusion-test-memory";
    delete_cache(cache).await;
    let gpu = Gpu::new().await.unwrap();
    // Twelve 4 MB f32 tensors back to back: three shards, tensors spanning both boundaries.
    let tensor_bytes = (ROWS * ROWS * 4) as u64;
    let tensors: Vec<TensorEntry> = (0..12)
        .map(|i| TensorEntry {
            component: "unet".into(),
            name: format!("weight{i}"),
            shape: vec![ROWS, ROWS],
            dtype: "f32".into(),
            shard: (i * tensor_bytes / SHARD) as usize,
            offset: i * tensor_bytes % SHARD,
            length: tensor_bytes,
        })
        .collect();
    let total = 12 * tensor_bytes;
    let server = Server::new();
    let shards: Vec<ShardEntry> = (0..total.div_ceil(SHARD))
        .map(|i| {
            let (start, bytes) = (i * SHARD, SHARD.min(total - i * SHARD));
            let mut hasher = Sha256::new();
            let mut chunk = vec![0u8; 1 << 16];
            for at in (start..start + bytes).step_by(chunk.len()) {
                let len = (start + bytes - at).min(chunk.len() as u64) as usize;
                chunk[..len].iter_mut().zip(at..).for_each(|(b, p)| *b = pattern(p));
                hasher.update(&chunk[..len]);
            }
            let file = format!("shard-{i:05}.bin");
            server.generate(&file, start, bytes, 256 << 10);
            ShardEntry { file, bytes, sha256: hasher.finalize().iter().map(|b| format!("{b:02x}")).collect() }
        })
        .collect();
    let manifest = Manifest {
        format: "webdiffusion-package".into(),
        version: 1,
        family: "sd1".into(),
        name: "pattern".into(),
        source: "tests/web_package.rs".into(),
        model_hash: None,
        components: BTreeMap::from([("unet".to_string(), Component { config: Some(serde_json::json!({})), files: None })]),
        model_index: None,
        latent_rgb: None,
        files: vec![],
        shards,
        tensors,
    };
    assert_eq!(manifest.shards.len(), 3);
    server.serve(&BTreeMap::from([("manifest.json".to_string(), serde_json::to_vec(&manifest).unwrap())]));

    let memory =
        || wasm_bindgen::memory().dyn_into::<js_sys::WebAssembly::Memory>().unwrap().buffer().dyn_into::<js_sys::ArrayBuffer>().unwrap();
    let memory_before = memory().byte_length() as u64;
    let heap_before = LIVE.load(Ordering::Relaxed);
    PEAK.store(heap_before, Ordering::Relaxed);
    let started = js_sys::Date::now();
    let mut last = None;
    let package = load_package(&gpu, &server.source(Some(cache)), &mut |p| last = Some(p.clone())).await.unwrap();
    let seconds = (js_sys::Date::now() - started) / 1000.0;
    let memory_growth = memory().byte_length() as u64 - memory_before;
    let heap_peak = (PEAK.load(Ordering::Relaxed) - heap_before) as u64;
    web_sys::console::log_1(
        &format!(
            "package of {total} bytes in 3 shards loaded in {seconds:.1} s: wasm memory {memory_before} -> {} bytes (+{memory_growth}), \
             peak heap during the load +{heap_peak} bytes",
            memory_before + memory_growth
        )
        .into(),
    );
    assert!(memory_growth < 8 << 20 && heap_peak < 8 << 20, "wasm memory grew {memory_growth} bytes, heap peak {heap_peak}");
    assert_eq!(last.map(|p| (p.done, p.total)), Some((total, total)));

    // The tensor that spans the first shard boundary, and the last one, bit for bit.
    let tensors = package.uploaded("unet").unwrap().tensors;
    for i in [4u64, 11] {
        let got = tensors[&format!("weight{i}")].to_vec().await.unwrap();
        let start = i * tensor_bytes;
        let mismatch = got.iter().enumerate().find(|&(k, v)| {
            let p = start + 4 * k as u64;
            v.to_bits() != u32::from_le_bytes([pattern(p), pattern(p + 1), pattern(p + 2), pattern(p + 3)])
        });
        assert_eq!(mismatch.map(|(k, _)| k), None, "weight{i}");
    }
    delete_cache(cache).await;
}
