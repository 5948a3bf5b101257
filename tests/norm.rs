//! Group and layer normalisation on the GPU against the f64 CPU reference.
//!
//! Tolerances: outputs are normalised values of order 1 (times weights in [-1.5, 1.5]),
//! computed in f32 with a handful of roundings per element, so 1e-5 absolute plus
//! 1e-5 relative is about 100 ulp of headroom. Inputs offset by 1000 are the
//! exception (see `statistics_are_stable_under_a_large_offset`).

use crate::common;

use common::{assert_close, gpu, random, read};
use webdiffusion::Error;
use webdiffusion::gpu::Tensor;
use webdiffusion::kernels::cases::{self, Shapes};
use webdiffusion::kernels::norm;
use webdiffusion::reference::norm as cpu;

const EPS: f32 = 1e-5;
const ATOL: f32 = 1e-5;
const RTOL: f32 = 1e-5;

/// Per-channel weight and bias of `len` values, uploaded as f32 or packed f16.
/// Returns the tensors and the values the GPU really sees (rounded for f16).
fn affine(len: usize, seed: u64, f16: bool) -> (Tensor, Tensor, Vec<f32>, Vec<f32>) {
    let weight: Vec<f32> = random(len, seed, 0.5).iter().map(|v| v + 1.0).collect();
    let bias = random(len, seed + 1, 0.5);
    let gpu = gpu();
    if f16 {
        let round = |v: &[f32]| v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect::<Vec<f32>>();
        (gpu.upload_f32_as_f16(&[len], &weight).unwrap(), gpu.upload_f32_as_f16(&[len], &bias).unwrap(), round(&weight), round(&bias))
    } else {
        (gpu.upload_f32(&[len], &weight).unwrap(), gpu.upload_f32(&[len], &bias).unwrap(), weight, bias)
    }
}

fn check_group_norm(shape: &[usize], groups: usize, x: &[f32], f16_affine: bool, silu: bool, atol: f32) {
    let gpu = gpu();
    let (w, b, wv, bv) = affine(shape[1], shape.len() as u64 + groups as u64, f16_affine);
    let tx = gpu.upload_f32(shape, x).unwrap();
    let got = norm::group_norm(gpu, &tx, groups, &w, &b, EPS, silu).unwrap();
    assert_eq!(got.shape(), shape);
    let want = cpu::group_norm(x, shape, groups, &wv, &bv, EPS, silu);
    let what = format!("group_norm {shape:?} groups={groups} f16_affine={f16_affine} silu={silu}");
    assert_close(&what, &read(&got), &want, atol, RTOL);
}

#[test]
fn group_norm_matches_reference() {
    // Odd spatial sizes, batch > 1, groups = 1 and groups = C, no spatial dims, one element.
    let cases: [(&[usize], usize); 7] = [
        (&[2, 6, 5, 7], 3),
        (&[1, 4, 3], 1),
        (&[3, 5, 2, 3], 5),
        (&[2, 8], 4),
        (&[1, 1, 1, 1], 1),
        (&[2, 32, 9, 11], 32),
        (&[1, 12, 3, 2, 5], 4), // 3-d spatial
    ];
    for (i, (shape, groups)) in cases.into_iter().enumerate() {
        let x = random(shape.iter().product(), i as u64, 3.0);
        for silu in [false, true] {
            check_group_norm(shape, groups, &x, false, silu, ATOL);
        }
    }
}

/// The benchmark's cases (`kernels::cases`): the built-in model's norms.
#[test]
fn the_benchmarks_embedded_cases() {
    for (i, c) in cases::group_norm(Shapes::Embedded).into_iter().enumerate() {
        let shape = [c.batch, c.channels, c.size, c.size];
        check_group_norm(&shape, c.groups, &random(shape.iter().product(), 900 + i as u64, 2.0), false, true, ATOL);
    }
    let gpu = gpu();
    for (i, c) in cases::layer_norm(Shapes::Embedded).into_iter().enumerate() {
        let shape = [c.batch, c.rows, c.width];
        let x = random(shape.iter().product(), 950 + i as u64, 3.0);
        let (w, b, wv, bv) = affine(c.width, 960 + i as u64, false);
        let got = norm::layer_norm(gpu, &gpu.upload_f32(&shape, &x).unwrap(), &w, &b, EPS).unwrap();
        assert_close(&format!("layer_norm {}", c.shape()), &read(&got), &cpu::layer_norm(&x, c.width, &wv, &bv, EPS), ATOL, RTOL);
    }
}

#[test]
fn group_norm_with_f16_affine() {
    let shape = [2, 10, 7, 9];
    let x = random(shape.iter().product(), 40, 2.0);
    for silu in [false, true] {
        check_group_norm(&shape, 5, &x, true, silu, ATOL);
    }
}

/// Groups on both sides of the one-launch limit (16384 elements: one workgroup a group
/// below it, 4096-element chunks over three passes above it), chunked groups none a whole
/// number of chunks, up to a VAE-sized group of a million values (the UNet at 64x64 has
/// 40960 per group).
#[test]
fn group_norm_large_groups() {
    let unet = [2, 20, 61, 67]; // 2 channels per group: 8174 elements, one launch
    check_group_norm(&unet, 10, &random(unet.iter().product(), 50, 2.0), false, true, ATOL);
    let at_limit = [1, 4, 128, 128]; // 16384 elements: the largest one-launch group
    check_group_norm(&at_limit, 1, &random(at_limit.iter().product(), 52, 2.0), false, true, ATOL);
    let past_limit = [2, 6, 7, 781]; // 3 channels per group: 16401 elements, 5 chunks
    check_group_norm(&past_limit, 2, &random(past_limit.iter().product(), 53, 2.0), true, false, ATOL);
    let vae = [1, 4, 511, 513]; // 1 group of 1_048_572 elements, 256 chunks
    check_group_norm(&vae, 1, &random(vae.iter().product(), 51, 2.0), true, false, ATOL);
}

/// Values 1000 + U(-1, 1): E[x^2] - E[x]^2 in f32 subtracts two numbers near 1e6 (ulp
/// 0.06) to get a variance of 0.33; swapping it into the group-norm shader put outputs
/// 20% off here. Welford/Chan (and the two passes of layer norm and short groups) keep the variance; what
/// remains is the mean's own rounding, about one ulp of 1000 (6e-5) times 1/std = 1.7
/// (measured worst: 1.5e-4), so this case is held to 5e-4 absolute instead of 1e-5.
#[test]
fn statistics_are_stable_under_a_large_offset() {
    let shape = [2, 6, 100, 101]; // groups of 3 * 10100 values, 8 chunks each
    let x: Vec<f32> = random(shape.iter().product(), 60, 1.0).iter().map(|v| v + 1000.0).collect();
    check_group_norm(&shape, 2, &x, false, false, 5e-4);
    let shape = [2, 6, 30, 31]; // groups of 3 * 930 values: one launch, two passes like layer norm
    let x: Vec<f32> = random(shape.iter().product(), 63, 1.0).iter().map(|v| v + 1000.0).collect();
    check_group_norm(&shape, 2, &x, false, false, 5e-4);

    let gpu = gpu();
    let dim = 1280;
    let x: Vec<f32> = random(3 * dim, 61, 1.0).iter().map(|v| v + 1000.0).collect();
    let (w, b, wv, bv) = affine(dim, 62, false);
    let got = norm::layer_norm(gpu, &gpu.upload_f32(&[3, dim], &x).unwrap(), &w, &b, EPS).unwrap();
    assert_close("layer_norm with offset 1000", &read(&got), &cpu::layer_norm(&x, dim, &wv, &bv, EPS), 5e-4, RTOL);
}

#[test]
fn layer_norm_matches_reference() {
    let gpu = gpu();
    // CLIP (77 tokens, 768), UNet transformer widths, a single value, and a width past
    // 2048 that takes the 256-invocation variant with a partial last sweep; rows up to
    // 256 wide take one invocation each: the built-in model's widths over more rows than
    // one workgroup's 64, and the widest such row.
    let cases: [(&[usize], bool); 9] = [
        (&[2, 77, 768], false),
        (&[3, 320], true),
        (&[1, 1], false),
        (&[2, 5, 1280], true),
        (&[4, 1024], false),
        (&[3, 2500], false),
        (&[2, 77, 64], true),
        (&[3, 50, 96], false),
        (&[5, 256], false),
    ];
    for (i, (shape, f16_affine)) in cases.into_iter().enumerate() {
        let dim = *shape.last().unwrap();
        let x = random(shape.iter().product(), 70 + i as u64, 3.0);
        let (w, b, wv, bv) = affine(dim, 80 + i as u64, f16_affine);
        let got = norm::layer_norm(gpu, &gpu.upload_f32(shape, &x).unwrap(), &w, &b, EPS).unwrap();
        assert_eq!(got.shape(), shape);
        assert_close(
            &format!("layer_norm {shape:?} f16_affine={f16_affine}"),
            &read(&got),
            &cpu::layer_norm(&x, dim, &wv, &bv, EPS),
            ATOL,
            RTOL,
        );
    }
}

#[test]
fn bad_inputs_are_shape_errors() {
    let gpu = gpu();
    let x = gpu.upload_f32(&[1, 6, 2, 2], &[0.0; 24]).unwrap();
    let (w6, b6, _, _) = affine(6, 1, false);
    let (w4, b4, _, _) = affine(4, 1, false);
    let (w6_f16, _, _, _) = affine(6, 1, true);
    let x_f16 = gpu.upload_f32_as_f16(&[1, 6, 2, 2], &[0.0; 24]).unwrap();
    let flat = gpu.upload_f32(&[6], &[0.0; 6]).unwrap();
    let cases = [
        ("C not divisible by groups", norm::group_norm(gpu, &x, 4, &w6, &b6, EPS, false)),
        ("zero groups", norm::group_norm(gpu, &x, 0, &w6, &b6, EPS, false)),
        ("weight of the wrong length", norm::group_norm(gpu, &x, 3, &w4, &b6, EPS, false)),
        ("weight and bias of different dtypes", norm::group_norm(gpu, &x, 3, &w6_f16, &b6, EPS, false)),
        ("f16 input", norm::group_norm(gpu, &x_f16, 3, &w6, &b6, EPS, false)),
        ("rank 1 input", norm::group_norm(gpu, &flat, 3, &w6, &b6, EPS, false)),
        ("layer norm weight of the wrong length", norm::layer_norm(gpu, &x, &w4, &b4, EPS)),
    ];
    for (what, result) in cases {
        assert!(matches!(result, Err(Error::Shape { .. })), "{what}: {result:?}");
    }
}
