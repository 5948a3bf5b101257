//! webdiffusion in the browser: the JavaScript API of the page and the npm package
//! (`Engine`, built with wasm-bindgen) and the browser's package source (`FetchSource`:
//! fetch, Cache Storage, resumed downloads). The only crate that touches JavaScript or
//! the DOM's APIs; natively it is empty. Every failure reaches JavaScript as an `Error`
//! (a `TypeError` for a bad option) carrying the library's message; nothing panics across
//! the boundary.
#![cfg(target_arch = "wasm32")]

mod console;
mod engine;
mod fetch_source;
mod js_error;
mod options;

pub use engine::{Engine, bench_kernels};
pub use fetch_source::{DEFAULT_CACHE, FetchSource};
