// The input `x` at binding 1 of the one-input kernels (elementwise, concat, upsample), read
// as f32 through `load_x` whether it is stored as f32 or packed f16. Included with
// `#include "input_x.wgsl"` after common.wgsl; define X_F16 for packed f16.

#ifdef X_F16
@group(0) @binding(1) var<storage, read> x: array<u32>;
fn load_x(i: u32) -> f32 { return f16_word(x[i >> 1u], i); }
#else
@group(0) @binding(1) var<storage, read> x: array<f32>;
fn load_x(i: u32) -> f32 { return x[i]; }
#endif
