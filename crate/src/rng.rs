//! Seeded noise that means what it means in diffusers: the values of
//! `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))` in f32,
//! reproduced from torch's CPU kernels (aten/src/ATen/native/cpu/DistributionTemplates.h):
//! a Mersenne Twister; under 16 values one Box-Muller pair per two doubles with the
//! second value cached; from 16 values uniform floats transformed 16 at a time.

use rand_mt::Mt;

/// A `torch.Generator("cpu")` after `manual_seed(seed)`.
pub struct TorchGenerator {
    engine: Mt,
    cached_normal: Option<f64>,
}

impl TorchGenerator {
    pub fn new(seed: u64) -> Self {
        // torch seeds its mt19937 with the low 32 bits.
        Self { engine: Mt::new(seed as u32), cached_normal: None }
    }

    /// `torch.randn(n)`; a shape only matters through its element count.
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        if n >= 16 { self.fill_normal_16(n) } else { (0..n).map(|_| self.normal_f64() as f32).collect() }
    }

    /// A float in [0, 1) from 24 random bits.
    fn uniform_f32(&mut self) -> f32 {
        (self.engine.next_u32() & 0xff_ffff) as f32 / (1u32 << 24) as f32
    }

    /// A double in [0, 1) from 53 of 64 random bits (the first draw is the high word).
    fn uniform_f64(&mut self) -> f64 {
        let high = self.engine.next_u32() as u64;
        let low = self.engine.next_u32() as u64;
        ((high << 32 | low) & ((1u64 << 53) - 1)) as f64 / (1u64 << 53) as f64
    }

    fn normal_f64(&mut self) -> f64 {
        if let Some(cached) = self.cached_normal.take() {
            return cached;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let radius = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.cached_normal = Some(radius * theta.sin());
        radius * theta.cos()
    }

    fn fill_normal_16(&mut self, n: usize) -> Vec<f32> {
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        for chunk in data.chunks_exact_mut(16) {
            box_muller_16(chunk);
        }
        if !n.is_multiple_of(16) {
            // torch redraws the last 16 values, overlapping the full chunks.
            let tail = &mut data[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            box_muller_16(tail);
        }
        data
    }
}

/// Pairs element j with j + 8: `[0, 1)` uniforms in, normals out (all f32 math).
fn box_muller_16(data: &mut [f32]) {
    for j in 0..8 {
        let u1 = 1.0 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0 * u1.ln()).sqrt();
        let theta = (2.0 * std::f64::consts::PI * u2 as f64) as f32;
        data[j] = radius * theta.cos();
        data[j + 8] = radius * theta.sin();
    }
}
