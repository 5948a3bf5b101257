//! The library's modules form layers (ARCHITECTURE.md, "Layers"): each may import only the
//! runtime's modules, its own, and the layers before it. A `crate::` path in a module's
//! source naming a later layer fails here, with the file and the path.

use std::path::{Path, PathBuf};

/// The library's top-level modules, layer by layer.
const LAYERS: &[&[&str]] = &[
    &["loader", "rng", "image", "reference"],
    &["lora", "tokenizer", "schedulers"],
    &["models"],
    &["pipeline"],
    &["convert"],
    &["package"],
    &["open", "packaging"],
];

/// The runtime's modules, which the library re-exports and every layer may use.
const RUNTIME: &[&str] = &["error", "gpu", "kernels", "quant", "shaders", "Error", "Result"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_imports_only_earlier_layers() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut breaks = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let module = relative.components().next().unwrap().as_os_str().to_str().unwrap().trim_end_matches(".rs");
        if module == "lib" {
            continue;
        }
        let Some(own) = layer_of(module) else {
            breaks.push(format!("{}: module `{module}` is in no layer of tests/layers.rs", relative.display()));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (at, _) in text.match_indices("crate::") {
            let name: String = text[at + 7..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if name.is_empty() || name == module || RUNTIME.contains(&name.as_str()) {
                continue;
            }
            match layer_of(&name) {
                Some(layer) if layer < own => {}
                _ => breaks.push(format!("{}: `crate::{name}` (module `{module}` may not import it)", relative.display())),
            }
        }
    }
    assert!(files.len() > 50, "found only {} source files under {}", files.len(), src.display());
    assert!(breaks.is_empty(), "layering breaks:\n{}", breaks.join("\n"));
}
