//! Helpers shared by the GPU test files: one device per test binary, seeded
//! random data, and closeness checks that name the worst element.
#![allow(dead_code)] // each test binary uses a different subset

pub mod fixtures;

use std::sync::OnceLock;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use webdiffusion::gpu::Gpu;

/// The device every test in this binary shares (lavapipe in CI).
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| pollster::block_on(Gpu::new()).expect("a GPU adapter (install mesa-vulkan-drivers for lavapipe)"))
}

/// Uniform values in [-scale, scale).
pub fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

pub fn read(t: &webdiffusion::gpu::Tensor) -> Vec<f32> {
    pollster::block_on(t.to_vec()).expect("readback")
}

/// Asserts |got - want| <= bound elementwise (a bound per element, as kernels with
/// error bounds derived from their inputs give), naming the worst element.
pub fn assert_within(what: &str, got: &[f32], want: &[f32], bound: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let excess = |i: usize| {
        let e = (got[i] - want[i]).abs() - bound[i];
        if e.is_nan() { f32::INFINITY } else { e }
    };
    if let Some(i) = (0..got.len()).max_by(|&x, &y| excess(x).total_cmp(&excess(y))) {
        assert!(excess(i) <= 0.0, "{what}: element {i} is {} but the reference says {} (bound {})", got[i], want[i], bound[i]);
    }
}

/// Asserts |got - want| <= atol + rtol*|want| everywhere, naming the worst element.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0.0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        let excess = if excess.is_nan() { f32::INFINITY } else { excess };
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    let (i, excess) = worst;
    assert!(excess <= 0.0, "{what}: element {i} is {} but the reference says {} (atol {atol}, rtol {rtol})", got[i], want[i]);
}
