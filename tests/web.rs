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

#[wasm_bindgen_test]
async fn matmul_in_browser() {
    use webdiffusion::kernels::matmul::{MatmulOptions, matmul, matmul_accumulate};
    use webdiffusion::reference::matmul::{self as cpu, Operand};
    let gpu = Gpu::new().await.unwrap();
    // Batch 2, sizes off the 64-wide tile, transposed f16 weights, fused bias and GELU.
    let (m, k, n) = (70, 33, 67);
    let a = random(2 * m * k, 3, 1.0);
    let b: Vec<f32> = random(n * k, 4, 1.0).iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
    let bias = random(n, 5, 1.0);
    let (ta, tb, tbias) =
        (gpu.upload_f32(&[2, m, k], &a).unwrap(), gpu.upload_f32_as_f16(&[n, k], &b).unwrap(), gpu.upload_f32(&[n], &bias).unwrap());
    let opts = MatmulOptions { transpose_b: true, bias: Some(&tbias), activation: Some(Unary::GeluErf), ..Default::default() };
    let out = matmul(&gpu, &ta, &tb, &opts).unwrap();
    let (a_op, b_op) =
        (Operand { values: &a, shape: &[2, m, k], transposed: false }, Operand { values: &b, shape: &[n, k], transposed: true });
    let (want, _) = cpu::matmul(a_op, b_op, Some(&bias), Some(Unary::GeluErf));
    assert_close("matmul", &read(&out).await, &want, 1e-4, 1e-4);
    // The ACCUMULATE variant (a LoRA's up product) adds the plain product into that output.
    matmul_accumulate(&gpu, &ta, &tb, &MatmulOptions { transpose_b: true, ..Default::default() }, &out).unwrap();
    let (product, _) = cpu::matmul(a_op, b_op, None, None);
    let want: Vec<f32> = want.iter().zip(&product).map(|(w, p)| w + p).collect();
    assert_close("matmul accumulate", &read(&out).await, &want, 1e-4, 1e-4);
}

#[wasm_bindgen_test]
async fn quantized_matmul_in_browser() {
    use webdiffusion::gpu::DType;
    use webdiffusion::kernels::matmul::{MatmulOptions, matmul};
    use webdiffusion::quant;
    let gpu = Gpu::new().await.unwrap();
    // A Linear with q8 and q4 weights, dequantized in registers; the reference multiplies
    // by the CPU's dequantized values. |a|, |w| <= 1 over K = 96: 1e-4 * 96 bounds f32 sums.
    let (m, k, n) = (37, 96, 67);
    let a = random(m * k, 9, 1.0);
    let ta = gpu.upload_f32(&[m, k], &a).unwrap();
    for dtype in [DType::Q8, DType::Q4] {
        let bytes = quant::quantize(dtype, &[n, k], &random(n * k, 10, 1.0)).unwrap();
        let w = quant::dequantize(dtype, &[n, k], &bytes).unwrap();
        let tw = gpu.upload_bytes(&[n, k], dtype, &bytes).unwrap();
        let got = read(&matmul(&gpu, &ta, &tw, &MatmulOptions { transpose_b: true, ..Default::default() }).unwrap()).await;
        let want = webdiffusion::reference::matmul::linear(&a, &w, n, None);
        assert_close(&format!("{dtype:?} matmul"), &got, &want, 1e-4 * k as f32, 0.0);
    }
}

#[wasm_bindgen_test]
async fn conv2d_in_browser() {
    use webdiffusion::kernels::conv2d::{Conv2dOptions, conv2d};
    let gpu = Gpu::new().await.unwrap();
    let (xs, ws) = ([2, 7, 9, 11], [13, 7, 3, 3]);
    let x = random(xs.iter().product(), 6, 1.0);
    let w = random(ws.iter().product(), 7, 0.3);
    let bias = random(13, 8, 1.0);
    let (tx, tw, tb) = (gpu.upload_f32(&xs, &x).unwrap(), gpu.upload_f32(&ws, &w).unwrap(), gpu.upload_f32(&[13], &bias).unwrap());
    for (stride, padding) in [(1, [1, 1, 1, 1]), (2, [0, 1, 0, 1])] {
        let opts = Conv2dOptions { stride, padding, bias: Some(&tb), ..Default::default() };
        let got = conv2d(&gpu, &tx, &tw, &opts).unwrap();
        let (want, shape) = webdiffusion::reference::conv2d::conv2d(&x, xs, &w, ws, Some(&bias), stride, padding);
        assert_eq!(got.shape(), shape.as_slice());
        assert_close(&format!("conv2d stride {stride}"), &read(&got).await, &want, 1e-4, 1e-4);
    }
}

#[wasm_bindgen_test]
async fn attention_in_browser() {
    use webdiffusion::kernels::attention::{AttentionOptions, attention};
    use webdiffusion::reference::attention::{self as cpu, AttentionShape};
    let gpu = Gpu::new().await.unwrap();
    // Causal self-attention like CLIP, and cross-attention with the VAE's head size.
    for (shape, causal) in [
        (AttentionShape { batch: 2, q_len: 77, kv_len: 77, heads: 2, head_dim: 64 }, true),
        (AttentionShape { batch: 1, q_len: 40, kv_len: 13, heads: 1, head_dim: 512 }, false),
    ] {
        let width = shape.heads * shape.head_dim;
        let q = random(shape.batch * shape.q_len * width, 9, 1.0);
        let k = random(shape.batch * shape.kv_len * width, 10, 1.0);
        let v = random(shape.batch * shape.kv_len * width, 11, 1.0);
        let tq = gpu.upload_f32(&[shape.batch, shape.q_len, width], &q).unwrap();
        let tk = gpu.upload_f32(&[shape.batch, shape.kv_len, width], &k).unwrap();
        let tv = gpu.upload_f32(&[shape.batch, shape.kv_len, width], &v).unwrap();
        let got = attention(&gpu, &tq, &tk, &tv, &AttentionOptions { heads: shape.heads, scale: None, causal }).unwrap();
        let want = cpu::attention(&q, &k, &v, &shape, 1.0 / (shape.head_dim as f32).sqrt(), causal);
        assert_close(&format!("attention d={}", shape.head_dim), &read(&got).await, &want, 1e-4, 1e-4);
    }
}

#[wasm_bindgen_test]
async fn layout_and_embedding_in_browser() {
    use webdiffusion::kernels::{embedding, layout};
    use webdiffusion::reference::{embedding as cpu_emb, layout as cpu};
    let gpu = Gpu::new().await.unwrap();
    let (a, b) = (random(2 * 3 * 5 * 4, 12, 1.0), random(2 * 2 * 5 * 4, 13, 1.0));
    let (ta, tb) = (gpu.upload_f32(&[2, 3, 5, 4], &a).unwrap(), gpu.upload_f32(&[2, 2, 5, 4], &b).unwrap());
    let (want, _) = cpu::concat(&[(&a, &[2, 3, 5, 4]), (&b, &[2, 2, 5, 4])], 1);
    assert_eq!(read(&layout::concat(&gpu, &[&ta, &tb], 1).unwrap()).await, want, "concat");
    let (want, _) = cpu::permute(&a, &[2, 3, 5, 4], &[0, 2, 3, 1]);
    assert_eq!(read(&layout::permute(&gpu, &ta, &[0, 2, 3, 1]).unwrap()).await, want, "permute");
    let want = cpu::upsample_nearest_2x(&a, [2, 3, 5, 4]);
    assert_eq!(read(&layout::upsample_nearest_2x(&gpu, &ta).unwrap()).await, want, "upsample");
    let t = [0.0, 1.0, 261.0, 999.0];
    let got = embedding::timestep_embedding(&gpu, &gpu.upload_f32(&[4], &t).unwrap(), 320, true, 0.0, 1.0, 10000.0).unwrap();
    let want = cpu_emb::timestep_embedding(&t, 320, true, 0.0, 1.0, 10000.0);
    // sin/cos of f32 angles up to 999 carry ~1 ulp of the angle (see tests/layout.rs).
    assert_close("timestep embedding", &read(&got).await, &want, 5e-4, 0.0);
}

#[wasm_bindgen_test]
async fn norms_and_softmax_in_browser() {
    use webdiffusion::kernels::{norm, softmax};
    use webdiffusion::reference::{norm as cpu_norm, softmax as cpu_softmax};
    let gpu = Gpu::new().await.unwrap();
    // A group larger than one 4096-element chunk, with an offset mean and fused SiLU.
    let shape = [2, 6, 50, 50];
    let x: Vec<f32> = random(shape.iter().product(), 14, 1.0).iter().map(|v| v + 30.0).collect();
    let (w, b) = (random(6, 15, 1.0), random(6, 16, 1.0));
    let tx = gpu.upload_f32(&shape, &x).unwrap();
    let (tw, tb) = (gpu.upload_f32(&[6], &w).unwrap(), gpu.upload_f32(&[6], &b).unwrap());
    let got = norm::group_norm(&gpu, &tx, 3, &tw, &tb, 1e-5, true).unwrap();
    let want = cpu_norm::group_norm(&x, &shape, 3, &w, &b, 1e-5, true);
    assert_close("group_norm", &read(&got).await, &want, 1e-4, 1e-4);

    let x = random(5 * 77, 17, 3.0);
    let (w, b) = (random(77, 18, 1.0), random(77, 19, 1.0));
    let tx = gpu.upload_f32(&[5, 77], &x).unwrap();
    let (tw, tb) = (gpu.upload_f32(&[77], &w).unwrap(), gpu.upload_f32(&[77], &b).unwrap());
    let got = norm::layer_norm(&gpu, &tx, &tw, &tb, 1e-5).unwrap();
    assert_close("layer_norm", &read(&got).await, &cpu_norm::layer_norm(&x, 77, &w, &b, 1e-5), 1e-5, 1e-5);
    let got = softmax::scaled_softmax(&gpu, &tx, 0.5).unwrap();
    assert_close("softmax", &read(&got).await, &cpu_softmax::softmax(&x, 77, 0.5), 1e-6, 1e-4);
}

/// The sd2-tiny fixture model, compiled into the test (the browser has no file system).
fn sd2_tiny_files() -> webdiffusion::loader::MemoryFiles {
    macro_rules! files {
        ($($path:literal),*) => {{
            let mut files = webdiffusion::loader::MemoryFiles::new("sd2-tiny");
            $(files.insert($path, include_bytes!(concat!("fixtures/models/sd2-tiny/", $path)).to_vec());)*
            files
        }};
    }
    files!(
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors"
    )
}

#[wasm_bindgen_test]
async fn whole_pipeline_in_browser_matches_diffusers() {
    use safetensors::SafeTensors;
    use webdiffusion::loader::WeightPrecision;
    use webdiffusion::pipeline::{Request, StableDiffusion};
    let gpu = Gpu::new().await.unwrap();
    let sd = StableDiffusion::load(&gpu, &sd2_tiny_files(), WeightPrecision::AsStored).unwrap();
    let outputs = include_bytes!("fixtures/outputs/sd2-tiny.safetensors");
    let outputs = SafeTensors::deserialize(outputs).unwrap();
    let f32s = |name: &str| -> Vec<f32> { bytemuck::pod_collect_to_vec(outputs.tensor(name).unwrap().data()) };
    let request = Request {
        prompt: "a photograph of an astronaut riding a horse".into(),
        steps: 3,
        guidance_scale: 7.5,
        width: Some(32),
        height: Some(32),
        latents: Some(f32s("pipeline.init_latents")),
        ..Default::default()
    };
    let generation = sd.generate(&request).unwrap();
    let want = f32s("pipeline.latents");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    // The same tolerance as the native pipeline test (tests/pipeline.rs).
    assert_close("latents", &read(&generation.latents).await, &want, 1e-4 * scale, 0.0);
    let image: Vec<f32> = read(&generation.image).await.iter().map(|v| (v / 2.0 + 0.5).clamp(0.0, 1.0)).collect();
    assert_close("image", &image, &f32s("pipeline.image"), 1e-4, 0.0);
}

#[wasm_bindgen_test]
async fn seeded_noise_in_browser_matches_torch() {
    use safetensors::SafeTensors;
    use webdiffusion::rng::TorchGenerator;
    let fixtures = SafeTensors::deserialize(include_bytes!("fixtures/outputs/rng.safetensors")).unwrap();
    for (seed, n) in [(42u64, 3usize), (42, 17), (1400, 256), (123456789, 1000)] {
        let want: Vec<f32> = bytemuck::pod_collect_to_vec(fixtures.tensor(&format!("randn.s{seed}.n{n}")).unwrap().data());
        // The same tolerance as tests/rng.rs: torch's vectorised log/sin/cos are 1 ulp.
        assert_close(&format!("seed {seed} n {n}"), &TorchGenerator::new(seed).randn(n), &want, 2e-6, 2e-6);
    }
}
