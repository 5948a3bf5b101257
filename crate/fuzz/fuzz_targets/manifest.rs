//! A package manifest from the network: any bytes must give a manifest or an error,
//! never a panic, and an accepted manifest must lay its tensors out without one either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use webdiffusion::package::parse_manifest;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(manifest) = parse_manifest(bytes) {
        let _ = manifest.placements();
        let _ = manifest.stream_bytes();
    }
});
