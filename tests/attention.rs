//! Fused attention on the GPU against the textbook CPU reference.
//!
//! Tolerance: atol 1e-4, rtol 1e-4. The outputs are convex combinations of values in
//! [-1, 1]; the GPU sums dot products and weights in f32 in a different order (partial dot
//! products per head-dim slice, blocks of keys rescaled by the online softmax) and uses
//! exp2 with log2(e) folded into the scale. Those are relative errors of a few 1e-7 per
//! term over at most a few hundred terms, well under 1e-4; a wrong mask, block edge or
//! rescale is off by far more.

use crate::common;

use common::{assert_close, gpu, random, read};
use webdiffusion::Error;
use webdiffusion::kernels::attention::{AttentionOptions, Tiling, attention, variants};
use webdiffusion::kernels::cases::{self, Shapes};
use webdiffusion::reference::attention::{self as cpu, AttentionShape};

const TOL: f32 = 1e-4;

/// Runs one random problem on the GPU and the CPU and compares them; `magnitude` scales q
/// and k (so the scores), v stays in [-1, 1].
fn check(shape: AttentionShape, causal: bool, scale: Option<f32>, magnitude: f32, seed: u64) {
    let gpu = gpu();
    let AttentionShape { batch, q_len, kv_len, heads, head_dim } = shape;
    let width = heads * head_dim;
    let q = random(batch * q_len * width, seed, magnitude);
    let k = random(batch * kv_len * width, seed + 1, magnitude);
    let v = random(batch * kv_len * width, seed + 2, 1.0);
    let upload = |data: &[f32], len: usize| gpu.upload_f32(&[batch, len, width], data).unwrap();
    let opts = AttentionOptions { heads, scale, causal };
    let got = attention(gpu, &upload(&q, q_len), &upload(&k, kv_len), &upload(&v, kv_len), &opts).unwrap();
    assert_eq!(got.shape(), &[batch, q_len, width]);
    let scale = scale.unwrap_or(1.0 / (head_dim as f32).sqrt());
    let want = cpu::attention(&q, &k, &v, &shape, scale, causal);
    assert_close(&format!("{shape:?} causal={causal} scale={scale}"), &read(&got), &want, TOL, TOL);
}

fn shape(batch: usize, q_len: usize, kv_len: usize, heads: usize, head_dim: usize) -> AttentionShape {
    AttentionShape { batch, q_len, kv_len, heads, head_dim }
}

#[test]
fn every_sd_head_dim() {
    // 40/80/160: SD 1.x UNet; 64: SD 2.x UNet and CLIP; 512: the VAE mid-block (one head).
    // Lengths are not multiples of any tiling's query rows (4..64) or key block (3..11).
    check(shape(1, 67, 67, 8, 40), false, None, 1.0, 10);
    check(shape(1, 45, 38, 2, 64), false, None, 1.0, 20);
    check(shape(1, 35, 35, 1, 80), false, None, 1.0, 30);
    check(shape(1, 21, 23, 2, 160), false, None, 1.0, 40);
    check(shape(1, 13, 17, 1, 512), false, None, 1.0, 50);
}

/// The benchmark's cases (`kernels::cases`): the built-in model's attentions.
#[test]
fn the_benchmarks_embedded_cases() {
    for (i, c) in cases::attention(Shapes::Embedded).into_iter().enumerate() {
        check(shape(c.batch, c.q_len, c.kv_len, c.heads, c.head_dim), false, None, 1.0, 900 + i as u64);
    }
}

#[test]
fn head_dims_that_need_padding() {
    check(shape(1, 9, 14, 3, 24), false, None, 1.0, 60);
    check(shape(1, 9, 14, 2, 100), false, None, 1.0, 70);
    check(shape(1, 3, 4, 1, 1), false, None, 1.0, 80);
}

#[test]
fn cross_attention_batch_two() {
    // The text context: 77 tokens; and a context shorter than one key block.
    check(shape(2, 100, 77, 8, 40), false, None, 1.0, 90);
    check(shape(2, 70, 5, 2, 80), false, None, 1.0, 100);
    check(shape(2, 1, 1, 2, 64), false, None, 1.0, 110);
}

#[test]
fn causal_text_encoder() {
    // CLIP ViT-L: 12 heads of 64 over 77 tokens; then the top-left mask with Sq != Skv.
    check(shape(1, 77, 77, 12, 64), true, None, 1.0, 120);
    check(shape(2, 77, 77, 2, 40), true, None, 1.0, 130);
    check(shape(1, 30, 20, 2, 40), true, None, 1.0, 140);
    check(shape(1, 20, 30, 2, 40), true, None, 1.0, 150);
}

/// Head dims up to 32 and divisible by 4 take attention_rows.wgsl (an invocation a query
/// row): the built-in model's 32 at its latent and text lengths, 4 to 28, rows past a
/// workgroup's 64, the causal mask both ways, and scores large enough to need the running max.
#[test]
fn short_heads() {
    check(shape(2, 256, 77, 2, 32), false, None, 1.0, 200);
    check(shape(2, 70, 70, 3, 32), false, None, 1.0, 210);
    check(shape(1, 9, 14, 3, 4), false, None, 1.0, 220);
    check(shape(3, 13, 5, 2, 28), false, Some(0.3), 1.0, 230);
    check(shape(1, 77, 77, 4, 16), true, None, 1.0, 240);
    check(shape(1, 30, 20, 2, 8), true, None, 1.0, 250);
    check(shape(1, 20, 30, 2, 8), true, None, 1.0, 260);
    check(shape(1, 40, 50, 2, 32), false, None, 12.0, 270);
}

#[test]
fn long_self_attention() {
    // Ten query blocks and 55 key blocks per head with the D=40 tiling.
    check(shape(1, 600, 600, 2, 40), false, None, 1.0, 160);
}

#[test]
fn large_scores_stay_finite() {
    // Scores spread around +-50 (up to ~150): exp of them overflows f32 without the running max.
    check(shape(1, 40, 50, 2, 64), false, None, 12.0, 170);
    check(shape(1, 40, 50, 2, 64), true, Some(0.5), 5.0, 180);
}

#[test]
fn bad_inputs_are_shape_errors() {
    let gpu = gpu();
    let t = |shape: &[usize]| gpu.upload_f32(shape, &vec![0.0; shape.iter().product()]).unwrap();
    let opts = |heads| AttentionOptions { heads, scale: None, causal: false };
    let cases = [
        ("width not divisible by heads", attention(gpu, &t(&[1, 4, 30]), &t(&[1, 5, 30]), &t(&[1, 5, 30]), &opts(4))),
        ("zero heads", attention(gpu, &t(&[1, 4, 32]), &t(&[1, 5, 32]), &t(&[1, 5, 32]), &opts(0))),
        ("batch mismatch", attention(gpu, &t(&[2, 4, 32]), &t(&[1, 5, 32]), &t(&[1, 5, 32]), &opts(1))),
        ("width mismatch", attention(gpu, &t(&[1, 4, 32]), &t(&[1, 5, 64]), &t(&[1, 5, 64]), &opts(1))),
        ("k and v differ", attention(gpu, &t(&[1, 4, 32]), &t(&[1, 5, 32]), &t(&[1, 6, 32]), &opts(1))),
        ("rank 4", attention(gpu, &t(&[1, 1, 4, 32]), &t(&[1, 5, 32]), &t(&[1, 5, 32]), &opts(1))),
        ("no keys", attention(gpu, &t(&[1, 4, 32]), &t(&[1, 0, 32]), &t(&[1, 0, 32]), &opts(1))),
        ("head dim too big", attention(gpu, &t(&[1, 1, 2048]), &t(&[1, 1, 2048]), &t(&[1, 1, 2048]), &opts(1))),
    ];
    for (what, result) in cases {
        assert!(matches!(result, Err(Error::Shape { .. })), "{what}: {result:?}");
    }
    let half = gpu.upload_f32_as_f16(&[1, 4, 32], &[0.0; 128]).unwrap();
    let f16_q = attention(gpu, &half, &t(&[1, 5, 32]), &t(&[1, 5, 32]), &opts(1));
    assert!(matches!(f16_q, Err(Error::Shape { .. })), "f16 q: {f16_q:?}");
}

#[test]
fn full_size_dispatches_fit() {
    // SD at 512x512: 4096 latent tokens, batch 2 (classifier-free guidance), 8 heads of
    // 40..160; the VAE's single 512-wide head; 77-token text.
    let limit = 65535;
    for (batch, q_len, heads, head_dim) in
        [(2, 4096, 8, 40), (2, 4096, 8, 64), (2, 1024, 8, 80), (2, 256, 8, 160), (1, 4096, 1, 512), (2, 77, 12, 64)]
    {
        let tiling = Tiling::for_head_dim(head_dim).unwrap();
        let grid = tiling.workgroups(batch, q_len, heads);
        assert!(grid.iter().all(|&n| (1..=limit).contains(&n)), "D={head_dim}: grid {grid:?}");
        assert!(tiling.workgroup_bytes() <= 16384 && tiling.key_block >= 3, "D={head_dim}: {tiling:?}");
    }
    // Every variant, measured from the WGSL itself, fits WebGPU's 16 KiB of workgroup memory.
    for key in variants() {
        let module = naga::front::wgsl::parse_str(&key.source().unwrap()).unwrap();
        let bytes: u32 = module
            .global_variables
            .iter()
            .filter(|(_, var)| var.space == naga::AddressSpace::WorkGroup)
            .map(|(_, var)| module.types[var.ty].inner.size(module.to_ctx()))
            .sum();
        assert!(bytes <= 16384, "{:?} declares {bytes} bytes of workgroup memory", key.defines);
    }
}
