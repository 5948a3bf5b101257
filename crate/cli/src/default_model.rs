//! The model compiled into the CLI, so `generate` makes pictures on a fresh machine with
//! nothing downloaded: `models/embedded-lcm`, the 4-step LCM distillation of the model
//! trained in `models/train/`, as a q8 package (about 10 MB).

use webdiffusion::package::MemorySource;

/// The name images record as their model.
pub const NAME: &str = "embedded-lcm";

macro_rules! package_file {
    ($path:literal) => {
        ($path, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/embedded-lcm/", $path)) as &'static [u8])
    };
}

/// CLIP's BPE vocabulary, the real one every SD 1.x and 2.x model uses: what a
/// single-file checkpoint, which carries no tokenizer, is converted with by default.
pub const CLIP_VOCABULARY: [(&str, &[u8]); 2] = [package_file!("tokenizer/vocab.json"), package_file!("tokenizer/merges.txt")];

pub fn source() -> MemorySource {
    MemorySource::new(
        concat!("(built in) ", "embedded-lcm"),
        [
            package_file!("manifest.json"),
            package_file!("shard-00000.bin"),
            CLIP_VOCABULARY[0],
            CLIP_VOCABULARY[1],
            package_file!("tokenizer/special_tokens_map.json"),
            package_file!("tokenizer/tokenizer_config.json"),
        ],
    )
}
