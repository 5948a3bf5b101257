// Shared helpers. Included with `#include "common.wgsl"`.

// The index of this invocation when the grid was folded into x and y
// (see Gpu::grid): workgroups are numbered x-fastest.
fn flat_workgroup(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// Element i of an f16 tensor stored packed two per u32 (even index in the low half).
fn f16_word(word: u32, i: u32) -> f32 {
    return unpack2x16float(word)[i & 1u];
}

// erf to within 1.2e-7 (Numerical Recipes' erfc Chebyshev fit); WGSL has no erf.
fn erf_approx(x: f32) -> f32 {
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
        t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
        t * (-0.82215223 + t * 0.17087277))))))));
    let erfc = t * exp(poly);
    return select(erfc - 1.0, 1.0 - erfc, x >= 0.0);
}

fn gelu_erf(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752));
}

// tanh through exp so large |x| saturates instead of producing NaN on some drivers.
fn tanh_saturating(x: f32) -> f32 {
    let e = exp(-2.0 * abs(x));
    return sign(x) * (1.0 - e) / (1.0 + e);
}

fn gelu_tanh(x: f32) -> f32 {
    return 0.5 * x * (1.0 + tanh_saturating(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}

fn relu(x: f32) -> f32 {
    return max(x, 0.0);
}

fn silu(x: f32) -> f32 {
    return x / (1.0 + exp(-x));
}

fn quick_gelu(x: f32) -> f32 {
    return x / (1.0 + exp(-1.702 * x));
}

// The parameter-free activations a fused epilogue applies, by the code that
// `Unary::epilogue_code` gives (0: none). A uniform switch, so one pipeline serves them all.
fn epilogue_activation(v: f32, code: u32) -> f32 {
    switch code {
        case 1u: { return silu(v); }
        case 2u: { return gelu_erf(v); }
        case 3u: { return gelu_tanh(v); }
        case 4u: { return quick_gelu(v); }
        case 5u: { return relu(v); }
        case 6u: { return tanh_saturating(v); }
        case 7u: { return exp(v); }
        default: { return v; }
    }
}
