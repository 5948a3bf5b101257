//! Safetensors files a user hands us: a single-file checkpoint and a LoRA. Any bytes
//! must be read or refused with an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use webdiffusion::convert::checkpoint::{CheckpointOptions, read_checkpoint};
use webdiffusion::lora::LoraFile;

fuzz_target!(|bytes: &[u8]| {
    let _ = read_checkpoint(bytes, "fuzz.safetensors", &CheckpointOptions::default());
    let _ = LoraFile::parse(bytes, "fuzz.safetensors");
});
