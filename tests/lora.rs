//! LoRAs against diffusers (tests/fixtures/generate_lora.py, on sd1-tiny): a kohya-ss and a
//! diffusers/PEFT file applied at run time, alone and together at different scales,
//! switched off again, and merged into the weights at conversion; and the errors that
//! files which do not fit give, naming the modules.

use crate::common;

use common::fixtures::path;
use common::{gpu, random, read};
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};
use webdiffusion::Error;
use webdiffusion::convert::diffusers::read_diffusers;
use webdiffusion::convert::{SourceModel, merge_lora};
use webdiffusion::gpu::{DType, Tensor};
use webdiffusion::loader::{DirFiles, MemoryFiles, ModelFiles, UploadedWeights, WeightPrecision};
use webdiffusion::lora::{LoraFile, LoraModule, LoraSpec, LoraTargets, ModuleName, attach};
use webdiffusion::models::clip::ClipTextModel;
use webdiffusion::models::nn::{Conv2d, Linear};
use webdiffusion::models::unet_2d::UNet2DConditionModel;
use webdiffusion::models::weights::Weights;
use webdiffusion::pipeline::{Request, StableDiffusion};
use webdiffusion::quant;
use webdiffusion::reference::conv2d::conv2d as cpu_conv2d;
use webdiffusion::reference::matmul::linear as cpu_linear;

/// Everything is f32 math on the same weights (f16 LoRA matrices are used exactly), so
/// only summation order differs from torch, as in tests/unet.rs; a LoRA scale or alpha
/// wrong by a few percent would cost over 1e-2.
const RELATIVE_TOLERANCE: f32 = 1e-4;

fn model_dir() -> DirFiles {
    DirFiles::new(path("models/sd1-tiny")).unwrap()
}

fn lora(name: &str) -> LoraFile {
    LoraFile::parse(&std::fs::read(path(&format!("lora/{name}.safetensors"))).unwrap(), name).unwrap()
}

/// `lora/outputs.safetensors`.
struct Reference(Vec<u8>);

impl Reference {
    fn load() -> Self {
        Self(std::fs::read(path("lora/outputs.safetensors")).unwrap())
    }

    fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let file = SafeTensors::deserialize(&self.0).unwrap();
        let view = file.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(view.dtype(), Dtype::F32, "{name}");
        (view.shape().to_vec(), bytemuck::pod_collect_to_vec(view.data()))
    }

    fn upload(&self, name: &str) -> Tensor {
        let (shape, values) = self.f32(name);
        gpu().upload_f32(&shape, &values).unwrap()
    }

    fn ids(&self) -> Vec<u32> {
        let file = SafeTensors::deserialize(&self.0).unwrap();
        let view = file.tensor("text.ids").unwrap();
        bytemuck::pod_collect_to_vec::<u8, i64>(view.data()).into_iter().map(|id| id as u32).collect()
    }

    fn timestep(&self) -> f32 {
        let (_, metadata) = SafeTensors::read_metadata(&self.0).unwrap();
        metadata.metadata().as_ref().unwrap()["unet.timestep"].parse().unwrap()
    }
}

/// The sd1-tiny text encoder and UNet, the two networks LoRAs adapt.
struct Networks {
    text: ClipTextModel,
    unet: UNet2DConditionModel,
}

impl Networks {
    fn load(files: &dyn ModelFiles) -> Self {
        Self {
            text: ClipTextModel::load(gpu(), files, "text_encoder", WeightPrecision::AsStored).unwrap(),
            unet: UNet2DConditionModel::load(gpu(), files, "unet", WeightPrecision::AsStored).unwrap(),
        }
    }

    fn targets(&self) -> [(&'static str, &LoraTargets); 2] {
        [("text_encoder", self.text.lora_targets()), ("unet", self.unet.lora_targets())]
    }

    fn attach(&self, loras: &[(&LoraFile, f32)]) -> webdiffusion::Result<()> {
        attach(gpu(), &self.targets(), loras)
    }

    /// The text encoder's last hidden state and the UNet's output on the fixture inputs.
    fn run(&self, reference: &Reference) -> (Vec<f32>, Vec<f32>) {
        let ids = self.text.upload_ids(&[reference.ids()]).unwrap();
        let text = read(&self.text.encode(&ids, 0).unwrap());
        let sample = reference.upload("unet.sample");
        let context = reference.upload("unet.encoder_hidden_states");
        let unet = read(&self.unet.forward(&sample, reference.timestep(), &context, None).unwrap());
        (text, unet)
    }
}

/// Fails when `got` is off by more than the tolerance, relative to the output's scale.
fn check(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let error = got.iter().zip(want).fold(0.0f32, |m, (g, w)| m.max((g - w).abs())) / scale;
    eprintln!("{what}: max error {error:.2e} of the output scale {scale:.3}");
    assert!(error <= RELATIVE_TOLERANCE, "{what}: max error {error:e} of the output scale is over {RELATIVE_TOLERANCE:e}");
}

fn check_case(reference: &Reference, case: &str, (text, unet): &(Vec<f32>, Vec<f32>)) {
    check(&format!("text encoder, {case}"), text, &reference.f32(&format!("text.{case}")).1);
    check(&format!("UNet, {case}"), unet, &reference.f32(&format!("unet.{case}")).1);
}

#[test]
fn a_kohya_lora_matches_diffusers() {
    let (reference, networks, kohya) = (Reference::load(), Networks::load(&model_dir()), lora("kohya"));
    networks.attach(&[(&kohya, 1.0)]).unwrap();
    check_case(&reference, "kohya", &networks.run(&reference));
}

#[test]
fn a_peft_lora_saved_by_diffusers_matches_diffusers() {
    let (reference, networks, peft) = (Reference::load(), Networks::load(&model_dir()), lora("peft"));
    networks.attach(&[(&peft, 0.5)]).unwrap();
    check_case(&reference, "peft", &networks.run(&reference));
}

/// Both at once as `set_adapters(["kohya", "peft"], [0.7, -0.4])` (they share a UNet and a
/// text-encoder layer); then none, which is the plain model again, bit for bit.
#[test]
fn two_loras_at_once_match_diffusers_and_switch_off_exactly() {
    let (reference, networks) = (Reference::load(), Networks::load(&model_dir()));
    let (kohya, peft) = (lora("kohya"), lora("peft"));
    let plain = networks.run(&reference);
    check_case(&reference, "base", &plain);
    networks.attach(&[(&kohya, 0.7), (&peft, -0.4)]).unwrap();
    check_case(&reference, "both", &networks.run(&reference));
    networks.attach(&[(&peft, 0.5)]).unwrap();
    check_case(&reference, "peft", &networks.run(&reference));
    networks.attach(&[]).unwrap();
    assert!(networks.run(&reference) == plain, "without LoRAs the outputs must be the plain model's exactly");
}

/// The PEFT fixture rewritten in other layouts, with its alphas as `.alpha` tensors instead
/// of metadata: PEFT's own `base_model.model.` names (no network named: each module is
/// found where such a layer exists), and diffusers' older `.lora.down.weight` (UNet) and
/// `.lora_linear_layer.down.weight` (text encoder, with transformers 4's `text_model.`).
#[test]
fn other_layouts_of_a_lora_give_the_same_outputs() {
    let peft = lora("peft");
    let rewrite = |name: &dyn Fn(&LoraModule, &str) -> String| -> LoraFile {
        let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
        for module in peft.modules() {
            tensors.push((name(module, "down"), module.down.shape.clone(), module.down.values.clone()));
            tensors.push((name(module, "up"), module.up.shape.clone(), module.up.values.clone()));
            tensors.push((name(module, "alpha"), vec![], vec![module.scale * module.rank() as f32]));
        }
        let views: Vec<(&str, TensorView)> = tensors
            .iter()
            .map(|(name, shape, values)| (name.as_str(), TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(values)).unwrap()))
            .collect();
        LoraFile::parse(&safetensors::serialize(views, None).unwrap(), "rewritten").unwrap()
    };
    let path = |module: &LoraModule| match &module.name {
        ModuleName::Dotted(path) => path.clone(),
        ModuleName::Underscored(_) => panic!("the PEFT fixture has dotted names"),
    };
    let peft_own = rewrite(&|module, role| match role {
        "down" => format!("base_model.model.{}.lora_A.weight", path(module)),
        "up" => format!("base_model.model.{}.lora_B.weight", path(module)),
        _ => format!("base_model.model.{}.alpha", path(module)),
    });
    let diffusers_old = rewrite(&|module, role| {
        let (prefix, layer) = match module.component {
            Some("unet") => ("unet.".to_string(), "lora"),
            _ => ("text_encoder.text_model.".to_string(), "lora_linear_layer"),
        };
        match role {
            "alpha" => format!("{prefix}{}.alpha", path(module)),
            _ => format!("{prefix}{}.{layer}.{role}.weight", path(module)),
        }
    });
    let (reference, networks) = (Reference::load(), Networks::load(&model_dir()));
    for file in [&peft_own, &diffusers_old] {
        networks.attach(&[(file, 0.5)]).unwrap();
        check_case(&reference, "peft", &networks.run(&reference));
    }
}

/// A LoRA side path next to q8 and q4 weights (a quantized package's layers): the layer's
/// output is that of the dequantized weight plus `s * up @ down`, computed on the CPU.
#[test]
fn loras_run_next_to_quantized_weights() {
    let gpu = gpu();
    let ([rows, in_features, out_features], [batch, in_channels, out_channels, side]) = ([5, 64, 48], [2, 32, 16, 7]);
    let host = |name: &str, shape: &[usize], seed: u64| (name.to_string(), shape.to_vec(), random(shape.iter().product(), seed, 0.5));
    let weights = [host("lin.weight", &[out_features, in_features], 1), host("conv.weight", &[out_channels, in_channels, 3, 3], 2)];
    let biases = [host("lin.bias", &[out_features], 3), host("conv.bias", &[out_channels], 4)];
    let mut tensors = std::collections::HashMap::new();
    let mut dequantized = Vec::new();
    for ((name, shape, values), dtype) in weights.iter().zip([DType::Q8, DType::Q4]) {
        let bytes = quant::quantize(dtype, shape, values).unwrap();
        dequantized.push(quant::dequantize(dtype, shape, &bytes).unwrap());
        tensors.insert(name.clone(), gpu.upload_bytes(shape, dtype, &bytes).unwrap());
    }
    for (name, shape, values) in &biases {
        tensors.insert(name.clone(), gpu.upload_f32(shape, values).unwrap());
    }
    let w = Weights::from_uploaded(gpu, UploadedWeights { file: "quantized".into(), tensors });
    let linear = Linear::load(&w.at("lin"), in_features, out_features, true).unwrap();
    let conv = Conv2d::load(&w.at("conv"), in_channels, out_channels, 3, 2, 1).unwrap();

    let rank = 4;
    let lora_tensors = [
        host("unet.lin.lora_A.weight", &[rank, in_features], 5),
        host("unet.lin.lora_B.weight", &[out_features, rank], 6),
        host("unet.conv.lora_A.weight", &[rank, in_channels, 3, 3], 7),
        host("unet.conv.lora_B.weight", &[out_channels, rank, 1, 1], 8),
        ("unet.lin.alpha".into(), vec![], vec![2.0]),
        ("unet.conv.alpha".into(), vec![], vec![8.0]),
    ];
    let views: Vec<(&str, TensorView)> = lora_tensors
        .iter()
        .map(|(name, shape, values)| (name.as_str(), TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(values)).unwrap()))
        .collect();
    let lora = LoraFile::parse(&safetensors::serialize(views, None).unwrap(), "quantized-lora").unwrap();
    attach(gpu, &[("unet", w.lora_targets())], &[(&lora, 0.8)]).unwrap();

    // W + 0.8 * alpha / rank * up @ down, rows of `row_len`.
    let merged = |weight: &[f32], down: &[f32], up: &[f32], alpha: f32| -> Vec<f32> {
        let row_len = down.len() / rank;
        let factor = 0.8 * alpha / rank as f32;
        let mut merged = weight.to_vec();
        for (o, row) in merged.chunks_exact_mut(row_len).enumerate() {
            for (j, w) in row.iter_mut().enumerate() {
                *w += factor * (0..rank).map(|r| up[o * rank + r] * down[r * row_len + j]).sum::<f32>();
            }
        }
        merged
    };
    let x = random(rows * in_features, 9, 1.0);
    let got = read(&linear.forward(&gpu.upload_f32(&[rows, in_features], &x).unwrap()).unwrap());
    let weight = merged(&dequantized[0], &lora_tensors[0].2, &lora_tensors[1].2, 2.0);
    check("q8 Linear with a LoRA", &got, &cpu_linear(&x, &weight, out_features, Some(&biases[0].2)));

    let x = random(batch * in_channels * side * side, 10, 1.0);
    let got = read(&conv.forward(&gpu.upload_f32(&[batch, in_channels, side, side], &x).unwrap()).unwrap());
    let weight = merged(&dequantized[1], &lora_tensors[2].2, &lora_tensors[3].2, 8.0);
    let x_shape = [batch, in_channels, side, side];
    let (want, _) = cpu_conv2d(&x, x_shape, &weight, [out_channels, in_channels, 3, 3], Some(&biases[1].2), 2, [1; 4]);
    check("q4 Conv2d (stride 2) with a LoRA", &got, &want);
}

/// `safetensors` bytes of a component's f32 tensors.
fn safetensors_bytes(model: &SourceModel, component: &str) -> Vec<u8> {
    let tensors = &model.components[component].tensors;
    let values: Vec<(&String, &[usize], Vec<f32>)> =
        tensors.iter().map(|(name, t)| (name, &t.shape[..], t.values().unwrap().into_owned())).collect();
    let views: Vec<(String, TensorView)> = values
        .iter()
        .map(|(name, shape, values)| ((*name).clone(), TensorView::new(Dtype::F32, shape.to_vec(), bytemuck::cast_slice(values)).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// Merged into the weights at conversion, as diffusers' `fuse_lora` with the same scales.
#[test]
fn merged_loras_match_diffusers_fuse_lora() {
    let mut model = read_diffusers(&model_dir(), "sd1-tiny").unwrap();
    merge_lora(&mut model, &lora("kohya"), 0.7).unwrap();
    merge_lora(&mut model, &lora("peft"), -0.4).unwrap();
    let mut files = MemoryFiles::new("merged");
    for (component, weights) in [("text_encoder", "model.safetensors"), ("unet", "diffusion_pytorch_model.safetensors")] {
        files.insert(format!("{component}/config.json"), serde_json::to_vec(&model.components[component].config).unwrap());
        files.insert(format!("{component}/{weights}"), safetensors_bytes(&model, component));
    }
    let reference = Reference::load();
    check_case(&reference, "fused", &Networks::load(&files).run(&reference));
}

/// The tensors of a made-up LoRA file: `(name, shape)`.
type Tensors<'a> = &'a [(&'a str, &'a [usize])];

/// A safetensors file of f32 tensors filled with 0.01.
fn lora_bytes(tensors: Tensors) -> Vec<u8> {
    let data: Vec<Vec<f32>> = tensors.iter().map(|(_, shape)| vec![0.01; shape.iter().product()]).collect();
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .zip(&data)
        .map(|((name, shape), values)| (*name, TensorView::new(Dtype::F32, shape.to_vec(), bytemuck::cast_slice(values)).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// Modules that match no layer are all named, at run time and when merging; a failed
/// attach leaves the LoRAs attached before in place.
#[test]
fn modules_that_match_no_layer_are_named() {
    let stray = LoraFile::parse(
        &lora_bytes(&[
            ("lora_unet_conv_in.lora_down.weight", &[2, 4, 3, 3]),
            ("lora_unet_conv_in.lora_up.weight", &[32, 2, 1, 1]),
            ("lora_unet_down_blocks_0_attentions_0_no_such_proj.lora_down.weight", &[2, 32]),
            ("lora_unet_down_blocks_0_attentions_0_no_such_proj.lora_up.weight", &[32, 2]),
            ("text_encoder.encoder.layers.7.self_attn.q_proj.lora_A.weight", &[2, 32]),
            ("text_encoder.encoder.layers.7.self_attn.q_proj.lora_B.weight", &[32, 2]),
        ]),
        "stray.safetensors",
    )
    .unwrap();
    let want = Error::UnmatchedLora {
        file: "stray.safetensors".into(),
        modules: vec!["text_encoder.encoder.layers.7.self_attn.q_proj".into(), "lora_unet_down_blocks_0_attentions_0_no_such_proj".into()],
    };
    let mut model = read_diffusers(&model_dir(), "sd1-tiny").unwrap();
    let before = model.clone();
    assert_eq!(merge_lora(&mut model, &stray, 1.0), Err(want.clone()));
    assert!(model == before, "a failed merge changes nothing");

    let (reference, networks, peft) = (Reference::load(), Networks::load(&model_dir()), lora("peft"));
    networks.attach(&[(&peft, 0.5)]).unwrap();
    assert_eq!(networks.attach(&[(&peft, 1.0), (&stray, 1.0)]), Err(want));
    check_case(&reference, "peft", &networks.run(&reference));
}

fn parse_error(tensors: Tensors) -> String {
    LoraFile::parse(&lora_bytes(tensors), "bad.safetensors").unwrap_err().to_string()
}

#[test]
fn malformed_loras_are_refused_naming_the_module() {
    let cases: [(Tensors, &str); 5] = [
        (&[("lora_unet_conv_in.lora_down.weight", &[2, 4, 3, 3])], "lora_unet_conv_in: a down tensor without its up tensor"),
        (&[("unet.conv_out.lora_B.weight", &[4, 2, 1, 1])], "unet.conv_out: an up tensor without its down tensor"),
        (
            &[
                ("lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", &[4, 32]),
                ("lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight", &[37, 2]),
            ],
            "lora_te_text_model_encoder_layers_0_mlp_fc1: down [4, 32] and up [37, 2] are not a LoRA pair",
        ),
        (&[("lora_unet_conv_in.hada_w1_a", &[4, 4])], "tensor lora_unet_conv_in.hada_w1_a: not a LoRA down, up or alpha tensor"),
        (
            &[
                ("lora_unet_conv_in.lora_down.weight", &[2, 4, 3, 3]),
                ("lora_unet_conv_in.lora_up.weight", &[32, 2, 1, 1]),
                ("lora_unet_conv_in.alpha", &[2]),
            ],
            "lora_unet_conv_in.alpha: alpha must be one number",
        ),
    ];
    for (tensors, want) in cases {
        let got = parse_error(tensors);
        assert!(got.contains(want) && got.contains("bad.safetensors"), "{got:?} should say {want:?}");
    }
    assert!(
        matches!(LoraFile::parse(b"not safetensors", "junk.safetensors"), Err(Error::Format { file, .. }) if file == "junk.safetensors")
    );
}

/// A module whose matrices contradict its layer (conv_in has 4 input channels, not 5).
#[test]
fn a_lora_that_does_not_fit_its_layer_is_refused() {
    let misfit = LoraFile::parse(
        &lora_bytes(&[("lora_unet_conv_in.lora_down.weight", &[2, 5, 3, 3]), ("lora_unet_conv_in.lora_up.weight", &[32, 2, 1, 1])]),
        "misfit.safetensors",
    )
    .unwrap();
    let want = "misfit.safetensors is not valid: lora_unet_conv_in: down [2, 5, 3, 3] and up [32, 2, 1, 1] do not fit unet layer conv_in (Conv2d 4 -> 32, 3x3)";
    let mut model = read_diffusers(&model_dir(), "sd1-tiny").unwrap();
    assert_eq!(merge_lora(&mut model, &misfit, 1.0).unwrap_err().to_string(), want);
    let networks = Networks::load(&model_dir());
    assert_eq!(networks.attach(&[(&misfit, 1.0)]).unwrap_err().to_string(), want);
}

#[test]
fn alphas_come_from_the_file_or_the_adapter_metadata() {
    let scales = |file: &LoraFile| -> Vec<(String, f32)> { file.modules().iter().map(|m| (m.key.clone(), m.scale)).collect() };
    let kohya = scales(&lora("kohya"));
    assert!(kohya.contains(&("lora_unet_time_embedding_linear_1".into(), 0.75)), "{kohya:?}");
    assert!(kohya.contains(&("lora_te_text_model_encoder_layers_1_mlp_fc2".into(), 0.5)), "{kohya:?}");
    let peft = scales(&lora("peft"));
    // lora_alpha 6 over r 4, alpha_pattern 3 over 4, 6 over rank_pattern's 2; text encoder 3 over 2.
    for (key, scale) in [
        ("unet.up_blocks.0.resnets.1.conv2", 1.5),
        ("unet.time_embedding.linear_2", 0.75),
        ("unet.conv_out", 3.0),
        ("text_encoder.encoder.layers.0.mlp.fc2", 1.5),
    ] {
        assert!(peft.contains(&(key.into(), scale)), "{key} should have scale {scale}: {peft:?}");
    }
}

#[test]
fn lora_specs_are_a_file_and_an_optional_scale() {
    let spec = |text: &str| text.parse::<LoraSpec>().unwrap();
    assert_eq!(spec("style.safetensors:0.8"), LoraSpec { path: "style.safetensors".into(), scale: 0.8 });
    assert_eq!(spec("style.safetensors:-1"), LoraSpec { path: "style.safetensors".into(), scale: -1.0 });
    assert_eq!(spec("style.safetensors"), LoraSpec { path: "style.safetensors".into(), scale: 1.0 });
    assert_eq!(spec(r"C:\loras\style.safetensors"), LoraSpec { path: r"C:\loras\style.safetensors".into(), scale: 1.0 });
    assert_eq!(spec(r"C:\loras\style.safetensors:0.5"), LoraSpec { path: r"C:\loras\style.safetensors".into(), scale: 0.5 });
    assert!("".parse::<LoraSpec>().is_err());
}

/// A loaded pipeline takes LoRAs, changes them and drops them between generations.
#[test]
fn a_pipeline_switches_loras_without_reloading() {
    let mut sd = StableDiffusion::load(gpu(), &model_dir(), WeightPrecision::AsStored).unwrap();
    let request = Request { prompt: "a cat".into(), steps: 2, seed: 7, width: Some(16), height: Some(16), ..Default::default() };
    let image = |sd: &StableDiffusion| read(&sd.generate(&request).unwrap().image);
    let plain = image(&sd);
    let (kohya, peft) = (lora("kohya"), lora("peft"));
    sd.set_loras(&[(&kohya, 1.0)]).unwrap();
    let with_kohya = image(&sd);
    sd.set_loras(&[(&kohya, 1.0), (&peft, 0.5)]).unwrap();
    let with_both = image(&sd);
    assert!(with_kohya != plain && with_both != with_kohya, "each LoRA changes the image");
    sd.set_loras(&[]).unwrap();
    assert!(image(&sd) == plain, "without LoRAs the image is the plain model's exactly");
}
