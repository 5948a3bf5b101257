//! Elementwise kernels on the GPU against the CPU reference.

use crate::common;

use common::{assert_close, gpu, random, read};
use webdiffusion::kernels::elementwise::{self as ew, Unary};
use webdiffusion::reference::elementwise as cpu;

// Sizes that are not multiples of the 256-wide workgroup, and one element.
const SIZES: [usize; 4] = [1, 255, 257, 4099];

#[test]
fn activations_match_reference() {
    let gpu = gpu();
    let cases = [
        (Unary::Silu, cpu::silu as fn(f32) -> f32),
        (Unary::GeluErf, cpu::gelu_erf),
        (Unary::GeluTanh, cpu::gelu_tanh),
        (Unary::QuickGelu, cpu::quick_gelu),
    ];
    for n in SIZES {
        // Wide range so the tails (saturation, exp overflow) are exercised.
        let x = random(n, n as u64, 12.0);
        let t = gpu.upload_f32(&[n], &x).unwrap();
        for (op, f) in cases {
            let want: Vec<f32> = x.iter().map(|&v| f(v)).collect();
            assert_close(&format!("{op:?} n={n}"), &read(&ew::unary(gpu, &t, op).unwrap()), &want, 1e-6, 1e-5);
        }
        // exp only on a range where f32 holds it; WGSL's exp is good to 3 + 2|x| ulp.
        let small: Vec<f32> = x.iter().map(|v| v / 2.0).collect();
        let want: Vec<f32> = small.iter().map(|&v| cpu::unary(Unary::Exp, v)).collect();
        let got = ew::unary(gpu, &gpu.upload_f32(&[n], &small).unwrap(), Unary::Exp).unwrap();
        assert_close("exp", &read(&got), &want, 1e-6, 2e-6);
        let clamp = Unary::Clamp { min: -3.0, max: 2.5 };
        let want: Vec<f32> = x.iter().map(|&v| cpu::unary(clamp, v)).collect();
        assert_eq!(read(&ew::unary(gpu, &t, clamp).unwrap()), want, "clamp is exact");
        let affine: Vec<f32> = x.iter().map(|&v| 0.5 * v - 2.0).collect();
        assert_close("affine", &read(&ew::unary(gpu, &t, Unary::Affine { a: 0.5, b: -2.0 }).unwrap()), &affine, 1e-6, 1e-6);
    }
}

#[test]
fn f16_storage_round_trips_and_feeds_kernels() {
    let gpu = gpu();
    let x = random(1001, 7, 4.0);
    let rounded: Vec<f32> = x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
    let packed = gpu.upload_f32_as_f16(&[7, 143], &x).unwrap();
    assert_eq!(read(&packed), rounded, "upload then readback of packed f16");
    let silu: Vec<f32> = rounded.iter().map(|&v| cpu::silu(v)).collect();
    assert_close("silu on f16 input", &read(&ew::unary(gpu, &packed, Unary::Silu).unwrap()), &silu, 1e-6, 1e-5);
    // The GPU conversion rounds exactly as `half` does.
    let f32_tensor = gpu.upload_f32(&[1001], &x).unwrap();
    assert_eq!(read(&ew::to_f16(gpu, &f32_tensor).unwrap()), rounded, "to_f16 kernel");
}

#[test]
fn broadcasting_add_and_mul() {
    let gpu = gpu();
    let cases: [(&[usize], &[usize]); 5] = [
        (&[3, 5, 7], &[3, 5, 7]),
        (&[2, 4, 9, 9], &[1, 4, 1, 1]), // per-channel bias on NCHW
        (&[2, 4, 9, 9], &[2, 4, 1, 1]), // per-sample, per-channel (time embedding)
        (&[5, 1], &[1, 6]),
        (&[77, 33], &[33]),
    ];
    for (i, (xs, ys)) in cases.iter().enumerate() {
        let x = random(xs.iter().product(), 100 + i as u64, 3.0);
        let y = random(ys.iter().product(), 200 + i as u64, 3.0);
        let (tx, ty) = (gpu.upload_f32(xs, &x).unwrap(), gpu.upload_f32(ys, &y).unwrap());
        let (sum, shape) = cpu::broadcast(&x, xs, &y, ys, |a, b| a + b);
        let got = ew::add(gpu, &tx, &ty).unwrap();
        assert_eq!(got.shape(), shape.as_slice());
        assert_close(&format!("add {xs:?}+{ys:?}"), &read(&got), &sum, 1e-6, 1e-6);
        let (prod, _) = cpu::broadcast(&x, xs, &y, ys, |a, b| a * b);
        assert_close(&format!("mul {xs:?}*{ys:?}"), &read(&ew::mul(gpu, &tx, &ty).unwrap()), &prod, 1e-6, 1e-6);
    }
    let bad = ew::add(gpu, &gpu.upload_f32(&[3, 4], &[0.0; 12]).unwrap(), &gpu.upload_f32(&[5], &[0.0; 5]).unwrap());
    assert!(matches!(bad, Err(webdiffusion::Error::Shape { .. })), "{bad:?}");
}

#[test]
fn geglu_and_sampler_update() {
    let gpu = gpu();
    let (rows, d) = (13, 40);
    let x = random(rows * 2 * d, 3, 4.0);
    let got = ew::geglu(gpu, &gpu.upload_f32(&[1, rows, 2 * d], &x).unwrap()).unwrap();
    assert_eq!(got.shape(), &[1, rows, d]);
    assert_close("geglu", &read(&got), &cpu::geglu(&x, d), 1e-6, 1e-5);

    let n = 4 * 9 * 11;
    let (x, y, z) = (random(n, 11, 2.0), random(n, 12, 2.0), random(n, 13, 2.0));
    let (tx, ty, tz) =
        (gpu.upload_f32(&[4, 9, 11], &x).unwrap(), gpu.upload_f32(&[4, 9, 11], &y).unwrap(), gpu.upload_f32(&[4, 9, 11], &z).unwrap());
    let two: Vec<f32> = (0..n).map(|i| 0.9 * x[i] - 0.3 * y[i]).collect();
    assert_close("a*x+b*y", &read(&ew::axpby(gpu, 0.9, &tx, -0.3, &ty, None).unwrap()), &two, 1e-6, 1e-6);
    let three: Vec<f32> = (0..n).map(|i| 0.9 * x[i] - 0.3 * y[i] + 1.7 * z[i]).collect();
    assert_close("a*x+b*y+c*z", &read(&ew::axpby(gpu, 0.9, &tx, -0.3, &ty, Some((1.7, &tz))).unwrap()), &three, 1e-6, 1e-6);
}
