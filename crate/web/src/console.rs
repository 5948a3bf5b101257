//! The library's log messages in the browser's console.

use wasm_bindgen::JsValue;

/// The library reports recoverable trouble (an unavailable cache, a resumed download)
/// through `log`; in the browser that goes to the console.
struct ConsoleLogger;

impl log::Log for ConsoleLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let text = JsValue::from(format!("webdiffusion: {}", record.args()));
            match record.level() {
                log::Level::Error => web_sys::console::error_1(&text),
                _ => web_sys::console::warn_1(&text),
            }
        }
    }

    fn flush(&self) {}
}

static CONSOLE_LOGGER: ConsoleLogger = ConsoleLogger;

pub(crate) fn install_console_logger() {
    // Fails only when a logger is already installed, which then keeps the messages.
    if log::set_logger(&CONSOLE_LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}
