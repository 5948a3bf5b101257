//! The library's errors as JavaScript errors.

use wasm_bindgen::JsValue;
use webdiffusion::error::Error;

pub(crate) fn type_error(message: &str) -> JsValue {
    js_sys::TypeError::new(message).into()
}

/// The library's error as a JavaScript error with its message: a `TypeError` for a request
/// the model cannot take (a bad argument, as the option checks report theirs), an
/// `Error` for what the engine meets.
pub(crate) fn to_js(error: Error) -> JsValue {
    match error {
        Error::Request { .. } => type_error(&error.to_string()),
        _ => js_sys::Error::new(&error.to_string()).into(),
    }
}
