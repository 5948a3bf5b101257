//! Every WGSL file of `shaders/`, compiled into the library.

const FILES: &[(&str, &str)] = &[
    ("common.wgsl", include_str!("../../../shaders/common.wgsl")),
    ("quant.wgsl", include_str!("../../../shaders/quant.wgsl")),
    ("input_x.wgsl", include_str!("../../../shaders/input_x.wgsl")),
    ("elementwise.wgsl", include_str!("../../../shaders/elementwise.wgsl")),
    ("matmul.wgsl", include_str!("../../../shaders/matmul.wgsl")),
    ("conv2d.wgsl", include_str!("../../../shaders/conv2d.wgsl")),
    ("group_norm.wgsl", include_str!("../../../shaders/group_norm.wgsl")),
    ("layer_norm.wgsl", include_str!("../../../shaders/layer_norm.wgsl")),
    ("softmax.wgsl", include_str!("../../../shaders/softmax.wgsl")),
    ("attention.wgsl", include_str!("../../../shaders/attention.wgsl")),
    ("attention_rows.wgsl", include_str!("../../../shaders/attention_rows.wgsl")),
    ("concat.wgsl", include_str!("../../../shaders/concat.wgsl")),
    ("concat_pair.wgsl", include_str!("../../../shaders/concat_pair.wgsl")),
    ("upsample.wgsl", include_str!("../../../shaders/upsample.wgsl")),
    ("timestep_embedding.wgsl", include_str!("../../../shaders/timestep_embedding.wgsl")),
    ("gather.wgsl", include_str!("../../../shaders/gather.wgsl")),
];

/// The source of a shader file by its file name.
pub fn source(name: &str) -> Option<&'static str> {
    FILES.iter().find(|(file, _)| *file == name).map(|(_, src)| *src)
}

/// The static name of a shader file, for `#include`.
pub fn name_of(name: &str) -> Option<&'static str> {
    FILES.iter().find(|(file, _)| *file == name).map(|(file, _)| *file)
}

/// All shader file names.
pub fn names() -> impl Iterator<Item = &'static str> {
    FILES.iter().map(|(file, _)| *file)
}
