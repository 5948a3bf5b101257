//! The browser's package source: files fetched from the package's base URL, shards
//! read from the response body a chunk at a time straight into the loader, kept in
//! Cache Storage once complete (so that a second visit downloads nothing), and resumed
//! with a `Range` request where a download breaks off. Wasm memory holds one chunk of
//! a shard at a time, never the shard.

use std::cell::{OnceCell, RefCell};
use std::collections::BTreeSet;

use js_sys::{Array, Function, Promise, Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Blob, Cache, CacheStorage, Headers, ReadableStreamDefaultReader, Request, RequestInit, Response};

use webdiffusion::error::{Error, Result};
use webdiffusion::package::manifest::ShardEntry;
use webdiffusion::package::{BoxFuture, ChunkSink, PackageSource};

/// The Cache Storage cache that keeps downloaded shards unless told otherwise.
pub const DEFAULT_CACHE: &str = "webdiffusion-packages";
/// How often one shard's download may fail and be resumed before the load gives up.
const MAX_RESUMES: u32 = 4;
/// The most bytes of a JavaScript chunk copied into wasm memory at once: a stream
/// may hand over a whole shard as one chunk.
const COPY_BYTES: u32 = 1 << 20;

/// A package served over HTTP(S) from `base_url` (the folder holding `manifest.json`).
pub struct FetchSource {
    base: String,
    /// Called as `fetch(request)` in place of the global `fetch` (tests inject failures).
    fetch: Option<Function>,
    cache_name: Option<String>,
    /// Opened on first use; `None` inside when Cache Storage is unavailable.
    cache: OnceCell<Option<Cache>>,
    /// Shards whose last stream started from a cached copy: only for those can
    /// streaming again after `discard` give different bytes.
    from_cache: RefCell<BTreeSet<String>>,
}

impl FetchSource {
    pub fn new(base_url: &str) -> Self {
        let base = if base_url.ends_with('/') { base_url.to_string() } else { format!("{base_url}/") };
        Self { base, fetch: None, cache_name: Some(DEFAULT_CACHE.into()), cache: OnceCell::new(), from_cache: RefCell::default() }
    }

    /// Requests go through `fetch` (a function with the signature of the global
    /// `fetch`, called with one `Request`) instead of the global one.
    pub fn with_fetch(mut self, fetch: Function) -> Self {
        self.fetch = Some(fetch);
        self
    }

    /// Keeps shards in the Cache Storage cache `name`, or nowhere with `None`.
    pub fn with_cache(mut self, name: Option<&str>) -> Self {
        self.cache_name = name.map(str::to_string);
        self.cache = OnceCell::new();
        self
    }

    /// The cache key of `shard`: its URL with its SHA-256, so that a new package
    /// version at the same URL never reads an old copy.
    pub fn cache_key(&self, shard: &ShardEntry) -> String {
        let url = self.url(&shard.file);
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}sha256={}", shard.sha256)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn open_cache(&self) -> Option<Cache> {
        if let Some(cache) = self.cache.get() {
            return cache.clone();
        }
        let name = self.cache_name.as_deref()?;
        let opened = async {
            let caches: CacheStorage = Reflect::get(&js_sys::global(), &"caches".into())?.dyn_into()?;
            JsFuture::from(caches.open(name)).await?.dyn_into::<Cache>()
        };
        let cache = match opened.await {
            Ok(cache) => Some(cache),
            Err(e) => {
                // An insecure page or a private window: the package still loads, uncached.
                log::warn!("Cache Storage {name:?} is unavailable ({}); shards will not be kept", js_detail(&e));
                None
            }
        };
        self.cache.get_or_init(|| cache).clone()
    }

    /// `fetch` for `url` from byte `from` on (a `Range` request past byte 0).
    async fn fetch(&self, url: &str, from: u64) -> Result<Response, Break> {
        let init = RequestInit::new();
        if from > 0 {
            let headers = Headers::new().map_err(|e| Break::fatal(url, &e))?;
            headers.set("Range", &format!("bytes={from}-")).map_err(|e| Break::fatal(url, &e))?;
            init.set_headers(&headers);
        }
        let request = Request::new_with_str_and_init(url, &init).map_err(|e| Break::fatal(url, &e))?;
        let global = js_sys::global();
        let fetch = match &self.fetch {
            Some(fetch) => fetch.clone(),
            None => Reflect::get(&global, &"fetch".into())
                .and_then(|f| f.dyn_into::<Function>())
                .map_err(|e| Break::Fatal(Error::Io { path: url.into(), detail: format!("this scope has no fetch: {}", js_detail(&e)) }))?,
        };
        let pending = fetch.call1(&global, &request).map_err(|e| Break::Network(js_detail(&e)))?;
        let response = JsFuture::from(Promise::resolve(&pending)).await.map_err(|e| Break::Network(js_detail(&e)))?;
        response.dyn_into::<Response>().map_err(|e| Break::fatal(url, &e))
    }

    /// Downloads `url` into `sink` from byte `delivered` on, resuming after network
    /// failures; every byte passed on is appended to `keep` as well.
    async fn download(&self, url: &str, sink: &mut dyn ChunkSink, delivered: &mut u64, keep: Option<&Array>) -> Result<()> {
        let mut failures = 0;
        loop {
            match self.download_once(url, sink, delivered, keep).await {
                Ok(()) => return Ok(()),
                Err(Break::Fatal(e)) => return Err(e),
                Err(Break::Network(detail)) if failures < MAX_RESUMES => {
                    failures += 1;
                    log::warn!("{url}: {detail} after {delivered} bytes; resuming ({failures} of {MAX_RESUMES})");
                }
                Err(Break::Network(detail)) => {
                    return Err(Error::Io {
                        path: url.into(),
                        detail: format!("network failure after {delivered} bytes and {MAX_RESUMES} resumes: {detail}"),
                    });
                }
            }
        }
    }

    async fn download_once(&self, url: &str, sink: &mut dyn ChunkSink, delivered: &mut u64, keep: Option<&Array>) -> Result<(), Break> {
        let from = *delivered;
        let response = self.fetch(url, from).await?;
        let skip = body_start(&response, url, from).map_err(Break::Fatal)?;
        pump(&response, url, skip, sink, delivered, keep).await
    }
}

impl PackageSource for FetchSource {
    fn read_file<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Vec<u8>>> {
        Box::pin(async move {
            let url = self.url(path);
            let response = self.fetch(&url, 0).await.map_err(|b| b.into_error(&url))?;
            body_start(&response, &url, 0)?;
            let body = response.array_buffer().map_err(|e| Break::fatal(&url, &e).into_error(&url))?;
            let body = JsFuture::from(body).await.map_err(|e| Break::Network(js_detail(&e)).into_error(&url))?;
            Ok(Uint8Array::new(&body).to_vec())
        })
    }

    fn stream_shard<'a>(&'a self, shard: &'a ShardEntry, sink: &'a mut dyn ChunkSink) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let url = self.url(&shard.file);
            let key = self.cache_key(shard);
            let cache = self.open_cache().await;
            let mut delivered = 0;
            self.from_cache.borrow_mut().remove(&shard.file);
            if let Some(response) = cached(cache.as_ref(), &key).await {
                self.from_cache.borrow_mut().insert(shard.file.clone());
                match pump(&response, &url, 0, sink, &mut delivered, None).await {
                    Ok(()) => return Ok(()),
                    Err(Break::Fatal(e)) => return Err(e),
                    Err(Break::Network(detail)) => {
                        log::warn!("the cached copy of {url} failed after {delivered} bytes ({detail}); fetching the rest");
                        delete(cache.as_ref(), &key).await;
                    }
                }
            }
            // Only a download from byte 0 can be kept whole.
            let keep = (delivered == 0 && cache.is_some()).then(Array::new);
            self.download(&url, sink, &mut delivered, keep.as_ref()).await?;
            if let (Some(cache), Some(parts)) = (&cache, &keep) {
                // A short download is never kept; a wrong hash is the loader's to find,
                // and `discard` drops the copy then.
                if delivered == shard.bytes {
                    store(cache, &key, parts).await;
                }
            }
            Ok(())
        })
    }

    fn discard<'a>(&'a self, shard: &'a ShardEntry) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let read_cached_copy = self.from_cache.borrow_mut().remove(&shard.file);
            delete(self.open_cache().await.as_ref(), &self.cache_key(shard)).await;
            Ok(read_cached_copy)
        })
    }

    fn describe(&self, path: &str) -> String {
        self.url(path)
    }
}

/// Why reading a body stopped early.
enum Break {
    /// The network failed (`fetch` rejected or the body errored): worth resuming.
    Network(String),
    /// Anything else (an HTTP status, the sink's own error): final.
    Fatal(Error),
}

impl Break {
    fn fatal(url: &str, value: &JsValue) -> Self {
        Break::Fatal(Error::Io { path: url.into(), detail: js_detail(value) })
    }

    fn into_error(self, url: &str) -> Error {
        match self {
            Break::Network(detail) => Error::Io { path: url.into(), detail: format!("network failure: {detail}") },
            Break::Fatal(e) => e,
        }
    }
}

/// How many leading bytes of `response`'s body to skip, for a request from byte `from`:
/// none for a 206 that starts there, `from` for a server that ignored the range.
fn body_start(response: &Response, url: &str, from: u64) -> Result<u64> {
    let status = response.status();
    let error = |detail: String| Error::Io { path: url.into(), detail };
    if status == 206 && from > 0 {
        let range = response.headers().get("Content-Range").ok().flatten().unwrap_or_default();
        if !range.starts_with(&format!("bytes {from}-")) {
            return Err(error(format!("asked for bytes {from}- but the server sent the range {range:?}")));
        }
        return Ok(0);
    }
    if response.ok() && status != 206 {
        return Ok(from);
    }
    Err(error(format!("HTTP {status} {}", response.status_text()).trim_end().to_string()))
}

/// Passes `response`'s body to `sink` after skipping `skip` bytes, counting what it
/// passed in `delivered` and appending it to `keep`.
async fn pump(
    response: &Response,
    url: &str,
    mut skip: u64,
    sink: &mut dyn ChunkSink,
    delivered: &mut u64,
    keep: Option<&Array>,
) -> Result<(), Break> {
    let body = response.body().ok_or_else(|| Break::Fatal(Error::Io { path: url.into(), detail: "the response has no body".into() }))?;
    let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let mut buffer = Vec::new();
    loop {
        let read = JsFuture::from(reader.read()).await.map_err(|e| Break::Network(js_detail(&e)))?;
        if Reflect::get(&read, &"done".into()).is_ok_and(|done| done.is_truthy()) {
            return Ok(());
        }
        let chunk =
            Reflect::get(&read, &"value".into()).and_then(|value| value.dyn_into::<Uint8Array>()).map_err(|e| Break::fatal(url, &e))?;
        let dropped = skip.min(chunk.length() as u64) as u32;
        skip -= dropped as u64;
        let chunk = chunk.subarray(dropped, chunk.length());
        if let Some(keep) = keep.filter(|_| chunk.length() > 0) {
            keep.push(&chunk);
        }
        let mut at = 0;
        while at < chunk.length() {
            let end = (at + COPY_BYTES).min(chunk.length());
            buffer.resize((end - at) as usize, 0);
            chunk.subarray(at, end).copy_to(&mut buffer);
            if let Err(e) = sink.accept(&buffer).await {
                // Stop the download; the error is the sink's to report.
                let _ = reader.cancel();
                return Err(Break::Fatal(e));
            }
            *delivered += buffer.len() as u64;
            at = end;
        }
    }
}

/// The cached response under `key`, if any.
async fn cached(cache: Option<&Cache>, key: &str) -> Option<Response> {
    let found = JsFuture::from(cache?.match_with_str(key)).await;
    match found {
        Ok(value) => value.dyn_into::<Response>().ok(),
        Err(e) => {
            log::warn!("looking up {key} in Cache Storage failed: {}", js_detail(&e));
            None
        }
    }
}

/// Keeps the downloaded `parts` under `key`. A failure (a full disk, a quota) costs
/// only a download next time.
async fn store(cache: &Cache, key: &str, parts: &Array) {
    let stored = async {
        let response = Response::new_with_opt_blob(Some(&Blob::new_with_u8_array_sequence(parts)?))?;
        JsFuture::from(cache.put_with_str(key, &response)).await
    };
    if let Err(e) = stored.await {
        log::warn!("keeping {key} in Cache Storage failed: {}", js_detail(&e));
    }
}

async fn delete(cache: Option<&Cache>, key: &str) {
    if let Some(cache) = cache {
        if let Err(e) = JsFuture::from(cache.delete_with_str(key)).await {
            log::warn!("dropping {key} from Cache Storage failed: {}", js_detail(&e));
        }
    }
}

/// A JavaScript exception as text.
fn js_detail(value: &JsValue) -> String {
    if let Some(error) = value.dyn_ref::<js_sys::Error>() {
        return format!("{}: {}", String::from(error.name()), String::from(error.message()));
    }
    value.as_string().unwrap_or_else(|| format!("{value:?}"))
}
