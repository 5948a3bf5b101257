//! The kernels inside a real browser: wasm32 in headless Chromium, WebGPU on
//! SwiftShader, WGSL compiled by Tint. Each case runs a kernel on random data and
//! compares it with the same CPU reference the native tests use.
#![cfg(target_arch = "wasm32")]

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use wasm_bindgen_test::*;
use webdiffusion::gpu::{Gpu, Tensor};
use webdiffusion::kernels::elementwise::{self as ew, Unary};
use webdiffusion::reference::elementwise as cpu_ew;

wasm_bindgen_test_configure!(run_in_browser);

fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

async fn read(t: &Tensor) -> Vec<f32> {
    t.to_vec().await.expect("readback")
}

fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= atol + rtol * w.abs(), "{what}: element {i} is {g}, reference {w}");
    }
}

#[wasm_bindgen_test]
async fn browser_adapter_is_webgpu_with_real_limits() {
    let gpu = Gpu::new().await.expect("WebGPU adapter");
    let info = gpu.info();
    web_sys::console::log_1(&format!("{info}").into());
    assert_eq!(info.backend, "BrowserWebGpu");
    assert!(info.max_storage_binding >= 128 << 20);
}

#[wasm_bindgen_test]
async fn elementwise_in_browser() {
    let gpu = Gpu::new().await.unwrap();
    let x = random(1025, 1, 8.0);
    let t = gpu.upload_f32(&[1025], &x).unwrap();
    let want: Vec<f32> = x.iter().map(|&v| cpu_ew::gelu_erf(v)).collect();
    assert_close("gelu_erf", &read(&ew::unary(&gpu, &t, Unary::GeluErf).unwrap()).await, &want, 1e-6, 1e-5);
    let rounded: Vec<f32> = x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
    let want: Vec<f32> = rounded.iter().map(|&v| cpu_ew::silu(v)).collect();
    let packed = gpu.upload_f32_as_f16(&[1025], &x).unwrap();
    assert_close("silu on f16 storage", &read(&ew::unary(&gpu, &packed, Unary::Silu).unwrap()).await, &want, 1e-6, 1e-5);
    let y = random(5, 2, 1.0);
    let ty = gpu.upload_f32(&[5], &y).unwrap();
    let (want, _) = cpu_ew::broadcast(&x[..205 * 5], &[205, 5], &y, &[5], |a, b| a + b);
    let tx = gpu.upload_f32(&[205, 5], &x[..205 * 5]).unwrap();
    assert_close("broadcast add", &read(&ew::add(&gpu, &tx, &ty).unwrap()).await, &want, 1e-6, 1e-6);
}
