//! Safetensors files a user hands us: a single-file checkpoint and a LoRA. Any bytes
//! must be read or refused with an error, never a panic: the header, then every tensor
//! it admits, read as the converter reads them.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use webdiffusion::convert::checkpoint::{CheckpointOptions, read_checkpoint};
use webdiffusion::loader::SafetensorsFile;
use webdiffusion::lora::LoraFile;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(file) = SafetensorsFile::open(Arc::new(bytes.to_vec()), "fuzz.safetensors".into()) {
        for (name, _) in file.tensors() {
            let _ = file.values(name);
        }
        if let Ok(model) = read_checkpoint(&file, &CheckpointOptions::default()) {
            for tensor in model.components.values().flat_map(|component| component.tensors.values()) {
                let _ = tensor.values();
            }
        }
    }
    let _ = LoraFile::parse(bytes, "fuzz.safetensors");
});
