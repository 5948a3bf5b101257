//! Layout kernels (concat, narrow/chunk, permute, nearest upsampling) and the
//! timestep embedding on the GPU against the CPU reference.

use crate::common;

use common::{assert_close, gpu, random, read};
use webdiffusion::Error;
use webdiffusion::gpu::Tensor;
use webdiffusion::kernels::cases::{self, BandwidthCase, Shapes};
use webdiffusion::kernels::embedding::timestep_embedding;
use webdiffusion::kernels::layout::{chunk, concat, narrow, permute, upsample_nearest_2x};
use webdiffusion::reference::{elementwise as cpu_elementwise, embedding as cpu_embedding, layout as cpu, softmax as cpu_softmax};

// Data movement does no arithmetic, so every layout result must be bit-exact.

fn upload(shape: &[usize], seed: u64) -> (Vec<f32>, Tensor) {
    let data = random(shape.iter().product(), seed, 5.0);
    let tensor = gpu().upload_f32(shape, &data).unwrap();
    (data, tensor)
}

fn assert_shape_error<T: std::fmt::Debug>(what: &str, result: webdiffusion::Result<T>) {
    assert!(matches!(result, Err(Error::Shape { .. })), "{what}: expected a shape error, got {result:?}");
}

#[test]
fn concat_along_every_axis() {
    let base = [2, 3, 4, 5];
    for axis in 0..4 {
        let pieces: Vec<(Vec<f32>, Vec<usize>, Tensor)> = [1, 3, 2]
            .iter()
            .enumerate()
            .map(|(k, &len)| {
                let mut shape = base.to_vec();
                shape[axis] = len;
                let (data, tensor) = upload(&shape, 10 * axis as u64 + k as u64);
                (data, shape, tensor)
            })
            .collect();
        let tensors: Vec<&Tensor> = pieces.iter().map(|p| &p.2).collect();
        let got = concat(gpu(), &tensors, axis).unwrap();
        let inputs: Vec<(&[f32], &[usize])> = pieces.iter().map(|p| (p.0.as_slice(), p.1.as_slice())).collect();
        let (want, shape) = cpu::concat(&inputs, axis);
        assert_eq!(got.shape(), shape.as_slice(), "axis {axis}");
        assert_eq!(read(&got), want, "concat along axis {axis}");
    }
}

#[test]
fn concat_skip_connection_cfg_batch_and_other_ranks() {
    let gpu = gpu();
    // The UNet's skip connection: NCHW along channels, batch 2, odd sizes; big
    // enough (~53k elements) for hundreds of workgroups. One input packed f16 (a copy per
    // input), then both f32 (one launch).
    let (a, ta) = upload(&[2, 45, 17, 19], 1);
    let b = random(2 * 37 * 17 * 19, 2, 5.0);
    let b16: Vec<f32> = b.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
    let tb = gpu.upload_f32_as_f16(&[2, 37, 17, 19], &b).unwrap();
    let got = concat(gpu, &[&ta, &tb], 1).unwrap();
    let (want, shape) = cpu::concat(&[(&a, &[2, 45, 17, 19]), (&b16, &[2, 37, 17, 19])], 1);
    assert_eq!(got.shape(), shape.as_slice());
    assert_eq!(read(&got), want, "skip connection");
    // Both f32, as the UNet's are: the one-launch pair kernel (concat_pair.wgsl).
    let (c, tc) = upload(&[2, 37, 17, 19], 8);
    let got = concat(gpu, &[&ta, &tc], 1).unwrap();
    let (want, shape) = cpu::concat(&[(&a, &[2, 45, 17, 19]), (&c, &[2, 37, 17, 19])], 1);
    assert_eq!(got.shape(), shape.as_slice());
    assert_eq!(read(&got), want, "f32 skip connection");

    // Classifier-free guidance doubles the batch; a single input is a plain copy.
    let (latent, t) = upload(&[1, 4, 9, 9], 3);
    assert_eq!(read(&concat(gpu, &[&t, &t], 0).unwrap()), [latent.clone(), latent.clone()].concat());
    assert_eq!(read(&concat(gpu, &[&t], 2).unwrap()), latent);

    // Rank 1 and rank 5 (the kernel sees any rank as [outer, axis, inner]).
    let (x, tx) = upload(&[7], 4);
    let (y, ty) = upload(&[1], 5);
    assert_eq!(read(&concat(gpu, &[&tx, &ty, &tx], 0).unwrap()), [x.clone(), y, x].concat());
    let (p, tp) = upload(&[2, 1, 3, 2, 3], 6);
    let (q, tq) = upload(&[2, 1, 3, 1, 3], 7);
    let (want, shape) = cpu::concat(&[(&p, &[2, 1, 3, 2, 3]), (&q, &[2, 1, 3, 1, 3])], 3);
    let got = concat(gpu, &[&tp, &tq], 3).unwrap();
    assert_eq!(got.shape(), shape.as_slice());
    assert_eq!(read(&got), want, "rank 5");
}

#[test]
fn concat_rejects_bad_inputs() {
    let gpu = gpu();
    let (_, a) = upload(&[2, 3, 4], 1);
    let (_, b) = upload(&[2, 5, 4], 2);
    let (_, c) = upload(&[2, 3], 3);
    assert_shape_error("mismatched outside the axis", concat(gpu, &[&a, &b], 0));
    assert_shape_error("mismatched outside the axis", concat(gpu, &[&a, &b], 2));
    assert!(concat(gpu, &[&a, &b], 1).is_ok());
    assert_shape_error("mismatched rank", concat(gpu, &[&a, &c], 1));
    assert_shape_error("axis out of range", concat(gpu, &[&a, &a], 3));
    assert_shape_error("no inputs", concat(gpu, &[], 0));
}

#[test]
fn narrow_along_every_axis_and_chunk() {
    let gpu = gpu();
    let shape = [3, 5, 4, 7];
    let (x, t) = upload(&shape, 20);
    for axis in 0..4 {
        let size = shape[axis];
        for (start, len) in [(0, size), (1, size - 2), (size - 1, 1), (2, 0)] {
            let got = narrow(gpu, &t, axis, start, len).unwrap();
            let (want, want_shape) = cpu::narrow(&x, &shape, axis, start, len);
            assert_eq!(got.shape(), want_shape.as_slice());
            assert_eq!(read(&got), want, "narrow axis {axis} {start}+{len}");
        }
    }
    // torch.chunk: ceil-sized pieces, the last smaller, and fewer pieces when needed.
    let sizes = |pieces: &[Tensor]| pieces.iter().map(|p| p.shape()[1]).collect::<Vec<_>>();
    assert_eq!(sizes(&chunk(gpu, &t, 2, 1).unwrap()), [3, 2]);
    assert_eq!(sizes(&chunk(gpu, &t, 4, 1).unwrap()), [2, 2, 1]);
    assert_eq!(sizes(&chunk(gpu, &t, 9, 1).unwrap()), [1; 5]);
    let halves = chunk(gpu, &t, 3, 0).unwrap();
    assert_eq!(halves.len(), 3);
    for (k, piece) in halves.iter().enumerate() {
        assert_eq!(read(piece), cpu::narrow(&x, &shape, 0, k, 1).0, "chunk {k}");
    }
}

#[test]
fn narrow_and_chunk_reject_bad_inputs() {
    let gpu = gpu();
    let (_, t) = upload(&[3, 5], 1);
    assert_shape_error("past the end", narrow(gpu, &t, 1, 3, 3));
    assert_shape_error("start past the end", narrow(gpu, &t, 0, 4, 0));
    assert_shape_error("overflowing range", narrow(gpu, &t, 0, 1, usize::MAX));
    assert_shape_error("axis out of range", narrow(gpu, &t, 2, 0, 1));
    assert_shape_error("zero chunks", chunk(gpu, &t, 0, 0));
    assert_shape_error("chunk axis out of range", chunk(gpu, &t, 2, 2));
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for rest in permutations(n - 1) {
        for at in 0..=rest.len() {
            let mut perm = rest.clone();
            perm.insert(at, n - 1);
            out.push(perm);
        }
    }
    out
}

#[test]
fn permute_every_4d_order_and_lower_ranks() {
    let gpu = gpu();
    for shape in [vec![2, 3, 4, 5], vec![3, 1, 6], vec![7, 9], vec![11]] {
        let (x, t) = upload(&shape, shape.len() as u64);
        for perm in permutations(shape.len()) {
            let got = permute(gpu, &t, &perm).unwrap();
            let (want, want_shape) = cpu::permute(&x, &shape, &perm);
            assert_eq!(got.shape(), want_shape.as_slice(), "{shape:?} by {perm:?}");
            assert_eq!(read(&got), want, "{shape:?} by {perm:?}");
        }
    }
    // NCHW -> [N, HW, C] for attention and back, odd sizes, ~70k elements, f16 input too.
    let (n, c, h, w) = (2, 37, 29, 33);
    let (x, t) = upload(&[n, c, h, w], 9);
    let tokens = permute(gpu, &t.reshape(&[n, c, h * w]).unwrap(), &[0, 2, 1]).unwrap();
    assert_eq!(tokens.shape(), &[n, h * w, c]);
    assert_eq!(read(&tokens), cpu::permute(&x, &[n, c, h, w], &[0, 2, 3, 1]).0, "NCHW -> NHWC");
    let back = permute(gpu, &tokens.reshape(&[n, h, w, c]).unwrap(), &[0, 3, 1, 2]).unwrap();
    assert_eq!(read(&back), x, "round trip");
    let x16: Vec<f32> = x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
    let t16 = gpu.upload_f32_as_f16(&[n, c, h, w], &x).unwrap();
    assert_eq!(read(&permute(gpu, &t16, &[0, 2, 3, 1]).unwrap()), cpu::permute(&x16, &[n, c, h, w], &[0, 2, 3, 1]).0, "f16 input");
}

#[test]
fn permute_rejects_bad_permutations() {
    let gpu = gpu();
    let (_, t) = upload(&[2, 3, 4], 1);
    assert_shape_error("repeated dimension", permute(gpu, &t, &[0, 1, 1]));
    assert_shape_error("dimension out of range", permute(gpu, &t, &[0, 1, 3]));
    assert_shape_error("too short", permute(gpu, &t, &[1, 0]));
    assert_shape_error("too long", permute(gpu, &t, &[0, 1, 2, 3]));
    let (_, five) = upload(&[1, 2, 1, 2, 1], 2);
    assert_shape_error("rank 5", permute(gpu, &five, &[0, 1, 2, 3, 4]));
}

#[test]
fn upsample_matches_reference() {
    let gpu = gpu();
    for shape in [[2, 3, 5, 7], [1, 1, 1, 1], [1, 4, 33, 17]] {
        let (x, t) = upload(&shape, shape[3] as u64);
        let got = upsample_nearest_2x(gpu, &t).unwrap();
        assert_eq!(got.shape(), &[shape[0], shape[1], 2 * shape[2], 2 * shape[3]]);
        assert_eq!(read(&got), cpu::upsample_nearest_2x(&x, shape), "{shape:?}");
    }
    let x = random(3 * 5 * 9, 4, 5.0);
    let x16: Vec<f32> = x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
    let t16 = gpu.upload_f32_as_f16(&[1, 3, 5, 9], &x).unwrap();
    assert_eq!(read(&upsample_nearest_2x(gpu, &t16).unwrap()), cpu::upsample_nearest_2x(&x16, [1, 3, 5, 9]), "f16 input");
    let (_, flat) = upload(&[3, 5, 9], 5);
    assert_shape_error("rank 3", upsample_nearest_2x(gpu, &flat));
}

/// Past 65535 x 256 elements the grid folds into y; these run at full VAE size
/// (128 MiB of f32, exactly lavapipe's and WebGPU's default storage binding limit).
#[test]
fn folded_grids_cover_vae_sized_tensors() {
    let gpu = gpu();
    let max_flat = gpu.info().max_workgroups_per_dim as usize * 256;
    // 512x512x128 VAE activations: 33.5M outputs, 131072 workgroups folded into [43691, 3].
    // Distinct values (exact in f32 below 2^24) so any misplaced element shows.
    let shape = [1, 128, 256, 256];
    let x: Vec<f32> = (0..shape.iter().product::<usize>()).map(|i| i as f32).collect();
    let t = gpu.upload_f32(&shape, &x).unwrap();
    let up = upsample_nearest_2x(gpu, &t).unwrap();
    assert!(up.numel() > max_flat);
    // assert! rather than assert_eq!: a failure should not print 33.5M values.
    let up_cpu = cpu::upsample_nearest_2x(&x, shape);
    assert!(read(&up) == up_cpu, "upsample at VAE size");
    // The strided copy with a folded grid: swap H and W of the upsampled tensor.
    let swapped = permute(gpu, &up, &[0, 1, 3, 2]).unwrap();
    assert!(read(&swapped) == cpu::permute(&up_cpu, up.shape(), &[0, 1, 3, 2]).0, "permute at VAE size");
}

/// A per-element bound for the f32 embedding against the f64 reference. With
/// `x = -ln(max_period) * j / (half - shift)` and `angle = scale * t * exp(x)`, in ulps
/// (2^-23 relative at most): the roundings of x (up to 2|x| ulp of exp(x)), WGSL's
/// bound for exp (3 + 2|x| ulp) and the two products (1 ulp) put the angle off by up to
/// (4 + 4|x|) ulp; sin/cos after reduction to [-pi, pi] add ~1e-6. Across a row this peaks at
/// x = 0: ~4.8e-4 at t = 999 (torch's own f32 result is off by the same order).
fn embedding_tolerance(angle: f64, x: f64) -> f64 {
    2e-6 + angle.abs() * (4.0 + 4.0 * x.abs()) * f64::from(f32::EPSILON)
}

fn check_embedding(timesteps: &[f32], dim: usize, flip: bool, shift: f32, scale: f32, max_period: f32) -> f64 {
    let gpu = gpu();
    let t = gpu.upload_f32(&[timesteps.len()], timesteps).unwrap();
    let got = timestep_embedding(gpu, &t, dim, flip, shift, scale, max_period).unwrap();
    assert_embedding(&got, timesteps, dim, flip, shift, scale, max_period)
}

/// The largest error of `got` against the f64 reference, each within its bound.
fn assert_embedding(got: &Tensor, timesteps: &[f32], dim: usize, flip: bool, shift: f32, scale: f32, max_period: f32) -> f64 {
    assert_eq!(got.shape(), &[timesteps.len(), dim]);
    let got = read(got);
    let want = cpu_embedding::timestep_embedding(timesteps, dim, flip, shift, scale, max_period);
    let half = dim / 2;
    let mut worst = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        let (b, c) = (i / dim, i % dim);
        if c == 2 * half {
            assert_eq!(g, 0.0, "padding column of row {b}");
            continue;
        }
        let j = c % half;
        let x = -(max_period as f64).ln() * j as f64 / (half as f64 - shift as f64);
        let angle = scale as f64 * timesteps[b] as f64 * x.exp();
        let error = (g as f64 - w as f64).abs();
        assert!(error <= embedding_tolerance(angle, x), "dim {dim} row {b} col {c}: {g} vs {w} (angle {angle})");
        worst = worst.max(error);
    }
    worst
}

#[test]
fn timestep_embedding_matches_diffusers() {
    // Stable Diffusion: dim 320, flip_sin_to_cos, shift 0, timesteps up to 999.
    let sd = check_embedding(&[999.0, 0.0, 1.0, 500.0, 981.0], 320, true, 0.0, 1.0, 10000.0);
    // Odd dim with diffusers' defaults (no flip, shift 1) and a scale.
    check_embedding(&[3.0, 250.5, 998.0], 33, false, 1.0, 2.0, 10000.0);
    // dim 1 is all padding; dim 2 is [cos t, sin t].
    check_embedding(&[7.0, 123.0], 1, true, 0.0, 1.0, 10000.0);
    check_embedding(&[7.0, 123.0], 2, true, 0.0, 1.0, 10000.0);
    // LCM's guidance-scale embedding: (w - 1) * 1000 for w up to ~15, dim 256, [sin, cos]
    // with the divisor half - 1 (diffusers' get_guidance_scale_embedding).
    let lcm = check_embedding(&[0.0, 3500.0, 7000.0, 14000.0], 256, false, 1.0, 1.0, 10000.0);
    eprintln!("worst embedding error: SD {sd:.2e}, LCM {lcm:.2e}");
}

#[test]
fn timestep_embedding_rejects_bad_inputs() {
    let gpu = gpu();
    let t = gpu.upload_f32(&[2], &[1.0, 2.0]).unwrap();
    let embed = |t: &Tensor, dim, shift, max_period| timestep_embedding(gpu, t, dim, true, shift, 1.0, max_period);
    assert_shape_error("2-d timesteps", embed(&t.reshape(&[1, 2]).unwrap(), 8, 0.0, 10000.0));
    assert_shape_error("f16 timesteps", embed(&gpu.upload_f32_as_f16(&[2], &[1.0, 2.0]).unwrap(), 8, 0.0, 10000.0));
    assert_shape_error("dim 0", embed(&t, 0, 0.0, 10000.0));
    assert_shape_error("zero divisor", embed(&t, 8, 4.0, 10000.0));
    assert_shape_error("max_period 0", embed(&t, 8, 0.0, 0.0));
}

/// The benchmark's element-wise and layout cases (`kernels::cases::bandwidth`) at the
/// reduced scale, each by the launch the benchmark times, against the CPU reference.
#[test]
fn the_benchmarks_bandwidth_cases() {
    let gpu = gpu();
    for (i, c) in cases::bandwidth(Shapes::Reduced).into_iter().enumerate() {
        let what = format!("{} {}", c.name(), c.shape());
        let data: Vec<Vec<f32>> = match c {
            // Timesteps as a sampler spreads them over [0, 999].
            BandwidthCase::TimestepEmbedding { batch, .. } => vec![(0..batch).map(|b| (999 - 500 * b) as f32).collect()],
            _ => c.inputs().iter().enumerate().map(|(j, s)| random(s.iter().product(), 970 + 10 * i as u64 + j as u64, 5.0)).collect(),
        };
        let inputs: Vec<Tensor> = c.inputs().iter().zip(&data).map(|(s, d)| gpu.upload_f32(s, d).unwrap()).collect();
        let got = c.launch(gpu, &inputs).unwrap();
        assert_eq!(got.shape(), c.output(), "{what}");
        let (x, shape) = (&data[0], c.inputs()[0].clone());
        match c {
            BandwidthCase::Silu(_) => {
                let want: Vec<f32> = x.iter().map(|&v| cpu_elementwise::silu(v)).collect();
                assert_close(&what, &read(&got), &want, 1e-6, 1e-5);
            }
            BandwidthCase::AddBroadcast(s) => {
                let want = cpu_elementwise::broadcast(x, &s, &data[1], &c.inputs()[1], |a, b| a + b).0;
                assert_close(&what, &read(&got), &want, 1e-6, 1e-6);
            }
            BandwidthCase::Axpby(_) => {
                let want: Vec<f32> = (0..x.len()).map(|k| 0.5 * x[k] + 0.3 * data[1][k] + 0.2 * data[2][k]).collect();
                assert_close(&what, &read(&got), &want, 1e-6, 1e-6);
            }
            BandwidthCase::Softmax(s) => assert_close(&what, &read(&got), &cpu_softmax::softmax(x, s[2], 1.0), 1e-6, 1e-4),
            BandwidthCase::ConcatChannels { .. } => {
                let want = cpu::concat(&[(x, &shape), (&data[1], &c.inputs()[1])], 1).0;
                assert!(read(&got) == want, "{what}");
            }
            BandwidthCase::Upsample2x(s) => assert!(read(&got) == cpu::upsample_nearest_2x(x, s), "{what}"),
            BandwidthCase::PermuteToNhwc(_) => assert!(read(&got) == cpu::permute(x, &shape, &[0, 2, 3, 1]).0, "{what}"),
            BandwidthCase::TimestepEmbedding { dim, .. } => {
                assert_embedding(&got, x, dim, true, 0.0, 1.0, 10000.0);
            }
        }
    }
}
