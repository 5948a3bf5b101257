//! Softmax on the GPU against the f64 CPU reference.
//!
//! Tolerance: outputs are probabilities in [0, 1]; each is one exp (WGSL allows
//! 3 + 2|x| ulp, and |x| reaches ~30 here) times a reciprocal of an f32 sum, so
//! 1e-6 absolute plus 1e-4 relative.

use crate::common;

use common::{assert_close, gpu, random, read};
use webdiffusion::Error;
use webdiffusion::kernels::softmax::{scaled_softmax, softmax};
use webdiffusion::reference::softmax as cpu;

const ATOL: f32 = 1e-6;
const RTOL: f32 = 1e-4;

fn check(shape: &[usize], x: &[f32], scale: f32) {
    let gpu = gpu();
    let len = *shape.last().unwrap();
    let tx = gpu.upload_f32(shape, x).unwrap();
    let got = if scale == 1.0 { softmax(gpu, &tx) } else { scaled_softmax(gpu, &tx, scale) }.unwrap();
    assert_eq!(got.shape(), shape);
    assert_close(&format!("softmax {shape:?} scale={scale}"), &read(&got), &cpu::softmax(x, len, scale), ATOL, RTOL);
}

#[test]
fn rows_of_every_length() {
    // One value, text tokens, an odd batch of odd rows, a latent-sized row (4096) and
    // one past it (5000) that leaves the last 256-wide sweep partial.
    let cases: [&[usize]; 6] = [&[3, 1], &[2, 3, 77], &[5, 333], &[2, 2047], &[1, 4096], &[2, 5000]];
    for (i, shape) in cases.into_iter().enumerate() {
        let x = random(shape.iter().product(), i as u64, 6.0);
        check(shape, &x, 1.0);
        check(shape, &x, 0.125);
    }
}

/// Scores up to ±200 overflow exp without the max subtraction (exp(89) is past f32).
#[test]
fn large_scores_do_not_overflow() {
    let x = random(2 * 4100, 9, 200.0);
    // A negative scale flips which score wins.
    for scale in [1.0, -0.15] {
        check(&[2, 4100], &x, scale);
    }
    let probs = read(&softmax(gpu(), &gpu().upload_f32(&[2, 4100], &x).unwrap()).unwrap());
    assert!(probs.iter().all(|p| p.is_finite()), "non-finite probability");
}

#[test]
fn bad_inputs_are_shape_errors() {
    let gpu = gpu();
    let scalar = gpu.upload_f32(&[], &[1.0]).unwrap();
    let half = gpu.upload_f32_as_f16(&[2, 3], &[0.0; 6]).unwrap();
    for (what, result) in [("rank 0", softmax(gpu, &scalar)), ("f16 input", softmax(gpu, &half))] {
        assert!(matches!(result, Err(Error::Shape { .. })), "{what}: {result:?}");
    }
}
