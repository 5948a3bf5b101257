//! The CLIP tokenizer and text encoder against transformers' outputs (the fixtures of
//! tests/fixtures/generate.py), and the row-gather kernel against its CPU reference.

use crate::common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::{assert_close, gpu, random, read};
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};
use webdiffusion::Error;
use webdiffusion::kernels::gather::{gather_rows, gather_rows_chunked, gather_rows_in_range};
use webdiffusion::loader::{DirFiles, ModelFiles, WeightPrecision};
use webdiffusion::models::clip::ClipTextModel;
use webdiffusion::reference::gather as cpu_gather;
use webdiffusion::reference::norm::layer_norm;
use webdiffusion::tokenizer::ClipTokenizer;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn model_dir(model: &str) -> DirFiles {
    DirFiles::new(fixtures().join("models").join(model)).unwrap()
}

fn prompts() -> Vec<String> {
    serde_json::from_slice(&std::fs::read(fixtures().join("prompts.json")).unwrap()).unwrap()
}

/// The reference outputs of one fixture model (`outputs/<model>.safetensors`).
struct Outputs(Vec<u8>);

impl Outputs {
    fn of(model: &str) -> Self {
        Outputs(std::fs::read(fixtures().join("outputs").join(format!("{model}.safetensors"))).unwrap())
    }

    fn view(&self, name: &str) -> TensorView<'_> {
        SafeTensors::deserialize(&self.0).unwrap().tensor(name).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        let view = self.view(name);
        assert_eq!(view.dtype(), Dtype::F32, "{name}");
        bytemuck::pod_collect_to_vec(view.data())
    }

    fn ids(&self, name: &str) -> Vec<u32> {
        let view = self.view(name);
        assert_eq!((view.dtype(), view.shape()), (Dtype::I64, &[1, 77][..]), "{name}");
        bytemuck::pod_collect_to_vec::<u8, i64>(view.data()).into_iter().map(|id| u32::try_from(id).unwrap()).collect()
    }
}

// ------------------------------------------------------------------- tokenizer

fn check_tokenizer(model: &str) {
    let tokenizer = ClipTokenizer::load(&model_dir(model), "tokenizer").unwrap();
    let outputs = Outputs::of(model);
    for (i, prompt) in prompts().iter().enumerate() {
        assert_eq!(tokenizer.encode(prompt).unwrap(), outputs.ids(&format!("tokens.{i}")), "{model} prompt {i}: {prompt:?}");
    }
}

#[test]
fn sd1_tokenizer_matches_transformers() {
    check_tokenizer("sd1-tiny");
}

/// SD 2.x pads with "!", which transformers then treats as a special token everywhere.
#[test]
fn sd2_tokenizer_matches_transformers() {
    check_tokenizer("sd2-tiny");
}

#[test]
fn tokenizer_from_files_pads_with_the_given_token() {
    let dir = fixtures().join("tokenizer");
    let (vocab, merges) = (std::fs::read(dir.join("vocab.json")).unwrap(), std::fs::read(dir.join("merges.txt")).unwrap());
    let short = ClipTokenizer::from_files(&vocab, &merges, "!", 8).unwrap();
    // "<|startoftext|> a</w> cat</w> <|endoftext|>" then "!" (id 0).
    assert_eq!(short.encode("A  cat").unwrap(), [49406, 320, 2368, 49407, 0, 0, 0, 0]);
    // Truncation keeps <|endoftext|> last.
    assert_eq!(short.encode("a a a a a a a a a a").unwrap(), [49406, 320, 320, 320, 320, 320, 320, 49407]);
    let err = ClipTokenizer::from_files(&vocab, &merges, "<pad>", 77).err().unwrap();
    assert!(matches!(&err, Error::Format { detail, .. } if detail.contains("<pad>")), "{err}");
}

// ---------------------------------------------------------------- text encoder

/// Within 1e-4 of the reference's largest magnitude: f32 arithmetic in another order
/// than PyTorch's (matmul sums, norms, the online softmax) moves results by ~1e-6 of
/// the scale here; a real mistake moves them by the scale itself.
fn assert_close_to_scale(what: &str, got: &[f32], want: &[f32]) {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_error = got.iter().zip(want).fold(0f32, |m, (g, w)| m.max((g - w).abs()));
    eprintln!("{what}: max error {:.1e} of scale {scale:.2}", max_error);
    assert_close(what, got, want, 1e-4 * scale, 0.0);
}

/// Encodes every fixture prompt in one batch and compares the last hidden state, the
/// penultimate hidden state (no final norm) and clip_skip 1 (with it); with
/// `embedding_chunk_bytes`, the token embedding table is read in chunks of that size.
fn check_encoder(model: &str, embedding_chunk_bytes: Option<u64>) {
    let gpu = gpu();
    let files = model_dir(model);
    let mut encoder = ClipTextModel::load(gpu, &files, "text_encoder", WeightPrecision::AsStored).unwrap();
    if let Some(bytes) = embedding_chunk_bytes {
        encoder = encoder.with_embedding_chunk_bytes(bytes);
    }
    let outputs = Outputs::of(model);
    let count = prompts().len();
    let ids: Vec<Vec<u32>> = (0..count).map(|i| outputs.ids(&format!("tokens.{i}"))).collect();
    let ids = encoder.upload_ids(&ids).unwrap();
    let hidden = encoder.config().hidden_size;
    let per_prompt = 77 * hidden;

    let last = encoder.encode(&ids, 0).unwrap();
    assert_eq!(last.shape(), [count, 77, hidden]);
    let penultimate = encoder.hidden_state(&ids, 1).unwrap();
    let skipped = encoder.encode(&ids, 1).unwrap();
    let (last, penultimate, skipped) = (read(&last), read(&penultimate), read(&skipped));

    // The final layer norm of the file's weights (f16 ones widened, as the fixture did).
    let weights = std::fs::read(fixtures().join("models").join(model).join("text_encoder/model.safetensors")).unwrap();
    let weights = SafeTensors::deserialize(&weights).unwrap();
    let param = |name: &str| -> Vec<f32> {
        let view = weights.tensor(&format!("final_layer_norm.{name}")).unwrap();
        match view.dtype() {
            Dtype::F32 => bytemuck::pod_collect_to_vec(view.data()),
            Dtype::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(view.data()).iter().map(|h| h.to_f32()).collect(),
            other => panic!("final_layer_norm.{name} is {other:?}"),
        }
    };
    let eps = encoder.config().layer_norm_eps;

    for i in 0..count {
        let range = i * per_prompt..(i + 1) * per_prompt;
        let want_last = outputs.f32s(&format!("text.hidden.{i}"));
        let want_penultimate = outputs.f32s(&format!("text.penultimate.{i}"));
        let want_skipped = layer_norm(&want_penultimate, hidden, &param("weight"), &param("bias"), eps);
        for (what, got, want) in
            [("last", &last, &want_last), ("penultimate", &penultimate, &want_penultimate), ("clip_skip 1", &skipped, &want_skipped)]
        {
            assert_close_to_scale(&format!("{model} prompt {i} {what}"), &got[range.clone()], want);
        }
    }
}

#[test]
fn sd1_text_encoder_matches_transformers() {
    check_encoder("sd1-tiny", None);
}

/// f16 weights on disk and on the GPU; the fixture used the same f16 values in f32 math.
#[test]
fn sd2_text_encoder_matches_transformers() {
    check_encoder("sd2-tiny", None);
}

/// The token embedding table read in 1 MiB chunks: sd1-tiny's f32 table (49408 x 32,
/// 6.3 MB) in 7, sd2-tiny's f16 one in 4. The gather copies values, so only the chunking
/// differs from the tests above.
#[test]
fn text_encoders_with_a_chunked_embedding_table_match_transformers() {
    check_encoder("sd1-tiny", Some(1 << 20));
    check_encoder("sd2-tiny", Some(1 << 20));
}

#[test]
fn encoder_rejects_bad_ids_and_clip_skip() {
    let encoder = ClipTextModel::load(gpu(), &model_dir("sd1-tiny"), "text_encoder", WeightPrecision::AsStored).unwrap();
    let err = encoder.upload_ids(&[vec![49406, 49408, 49407]]).unwrap_err();
    assert!(matches!(&err, Error::Shape { detail, .. } if detail.contains("49408")), "{err}");
    let err = encoder.upload_ids(&[vec![1, 2], vec![3]]).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let err = encoder.upload_ids(&[vec![0; 78]]).unwrap_err();
    assert!(matches!(&err, Error::Shape { detail, .. } if detail.contains("78")), "{err}");
    let ids = encoder.upload_ids(&[vec![49406, 320, 49407]]).unwrap();
    let err = encoder.encode(&ids, 3).unwrap_err();
    assert!(matches!(&err, Error::Shape { detail, .. } if detail.contains("clip_skip")), "{err}");
    // Fewer than 77 tokens use the first position embeddings; clip_skip 2 of 2 layers
    // leaves the embeddings themselves.
    assert_eq!(encoder.encode(&ids, 2).unwrap().shape(), [1, 3, 32]);
}

// ------------------------------------------------------------- error handling

/// The sd1-tiny model with some files replaced.
struct Patched {
    dir: DirFiles,
    files: HashMap<String, Vec<u8>>,
}

impl ModelFiles for Patched {
    fn read(&self, path: &str) -> webdiffusion::Result<Vec<u8>> {
        match self.files.get(path) {
            Some(bytes) => Ok(bytes.clone()),
            None => self.dir.read(path),
        }
    }

    fn exists(&self, path: &str) -> bool {
        self.files.contains_key(path) || self.dir.exists(path)
    }

    fn describe(&self, path: &str) -> String {
        self.dir.describe(path)
    }
}

fn patched(path: &str, bytes: Vec<u8>) -> Patched {
    Patched { dir: model_dir("sd1-tiny"), files: HashMap::from([(path.to_string(), bytes)]) }
}

fn load(files: &dyn ModelFiles) -> webdiffusion::Result<ClipTextModel> {
    ClipTextModel::load(gpu(), files, "text_encoder", WeightPrecision::AsStored)
}

/// sd1-tiny's config with `field` set to `value`.
fn with_config(field: &str, value: serde_json::Value) -> Patched {
    let dir = model_dir("sd1-tiny");
    let mut config: serde_json::Value = serde_json::from_slice(&dir.read("text_encoder/config.json").unwrap()).unwrap();
    config[field] = value;
    patched("text_encoder/config.json", serde_json::to_vec(&config).unwrap())
}

/// sd1-tiny's weights renamed by `rename` (`None` drops a tensor), plus `extra` (a
/// 2-element f32 tensor) if given.
fn with_weights(rename: impl Fn(&str) -> Option<String>, extra: Option<&str>) -> Patched {
    let bytes = model_dir("sd1-tiny").read("text_encoder/model.safetensors").unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, TensorView)> =
        file.tensors().into_iter().filter_map(|(name, view)| rename(&name).map(|name| (name, view))).collect();
    let extra_bytes = bytemuck::cast_slice(&[1f32, 2.0]).to_vec();
    if let Some(name) = extra {
        tensors.push((name.to_string(), TensorView::new(Dtype::F32, vec![2], &extra_bytes).unwrap()));
    }
    patched("text_encoder/model.safetensors", safetensors::serialize(tensors, None).unwrap())
}

#[test]
fn config_errors_are_reported() {
    let err = load(&with_config("hidden_act", "gelu_10".into())).err().unwrap();
    assert!(matches!(&err, Error::Unsupported { detail, .. } if detail.contains("hidden_act")), "{err}");
    let err = load(&with_config("hidden_size", 48.into())).err().unwrap();
    assert!(matches!(&err, Error::WeightShape { expected, found, .. } if expected[1] == 48 && found[1] == 32), "{err}");
    let err = load(&with_config("num_attention_heads", 5.into())).err().unwrap();
    assert!(matches!(&err, Error::Unsupported { detail, .. } if detail.contains("num_attention_heads")), "{err}");
    let err = load(&with_config("model_type", "t5".into())).err().unwrap();
    assert!(matches!(&err, Error::Unsupported { detail, .. } if detail.contains("model_type")), "{err}");
}

#[test]
fn weight_errors_are_reported() {
    let missing = "encoder.layers.1.mlp.fc2.bias";
    let err = load(&with_weights(|name| (name != missing).then(|| name.to_string()), None)).err().unwrap();
    assert!(matches!(&err, Error::MissingTensor { name, .. } if name == missing), "{err}");
    let keep = |name: &str| Some(name.to_string());
    let err = load(&with_weights(keep, Some("encoder.layers.2.mlp.fc2.bias"))).err().unwrap();
    assert!(matches!(&err, Error::Format { detail, .. } if detail.contains("layers.2")), "{err}");
    // CLIPTextModelWithProjection's projection is the one extra allowed.
    load(&with_weights(keep, Some("text_projection.weight"))).unwrap();
}

/// Hub checkpoints (saved by transformers 4) prefix every name with `text_model.`.
#[test]
fn hub_weight_names_load_the_same_model() {
    let encoder = load(&with_weights(|name| Some(format!("text_model.{name}")), None)).unwrap();
    let outputs = Outputs::of("sd1-tiny");
    let ids = encoder.upload_ids(&[outputs.ids("tokens.0")]).unwrap();
    let want = outputs.f32s("text.hidden.0");
    assert_close_to_scale("prefixed weights", &read(&encoder.encode(&ids, 0).unwrap()), &want);
}

// ---------------------------------------------------------------- gather kernel

/// Exact: the kernel copies values (f16 ones widened exactly).
#[test]
fn gather_rows_matches_reference() {
    let gpu = gpu();
    // (table rows, dim, ids shape): odd widths, one id, ids in two dimensions, and
    // enough ids for many workgroups.
    let cases: [(usize, usize, &[usize]); 4] = [(5, 1, &[1]), (7, 3, &[2, 3]), (50, 33, &[300]), (1000, 37, &[2, 77])];
    for (rows, dim, ids_shape) in cases {
        let table = random(rows * dim, (rows * dim) as u64, 2.0);
        let count: usize = ids_shape.iter().product();
        // Scattered ids, with repeats when count > rows, starting with the last row.
        let ids: Vec<u32> = (0..count).map(|i| ((i * 7919 + rows - 1) % rows) as u32).collect();
        let id_tensor = gpu.upload_u32(ids_shape, &ids).unwrap();
        let out_shape = [ids_shape, &[dim]].concat();

        let f32_table = gpu.upload_f32(&[rows, dim], &table).unwrap();
        let got = gather_rows(gpu, &f32_table, &id_tensor).unwrap();
        assert_eq!(got.shape(), out_shape);
        assert_eq!(read(&got), cpu_gather::gather_rows(&table, dim, &ids), "f32 table {rows}x{dim}, ids {ids_shape:?}");

        let rounded: Vec<f32> = table.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        let f16_table = gpu.upload_f32_as_f16(&[rows, dim], &table).unwrap();
        let got = read(&gather_rows(gpu, &f16_table, &id_tensor).unwrap());
        assert_eq!(got, cpu_gather::gather_rows(&rounded, dim, &ids), "f16 table {rows}x{dim}, ids {ids_shape:?}");
    }
}

#[test]
fn gather_rows_rejects_bad_inputs() {
    let gpu = gpu();
    let table = gpu.upload_f32(&[4, 3], &[0.0; 12]).unwrap();
    let float_ids = gpu.upload_f32(&[2], &[0.0, 1.0]).unwrap();
    let ids = gpu.upload_u32(&[2], &[0, 1]).unwrap();
    for (table, ids, what) in [
        (&table, &float_ids, "ids must be u32"),
        (&table.reshape(&[12]).unwrap(), &ids, "table must be [rows, dim]"),
        (&ids.reshape(&[1, 2]).unwrap(), &ids, "u32 indices"),
    ] {
        let err = gather_rows(gpu, table, ids).unwrap_err();
        assert!(matches!(&err, Error::Shape { detail, .. } if detail.contains(what)), "{err}");
    }
    let empty = gpu.upload_f32(&[0, 3], &[]).unwrap();
    assert!(gather_rows(gpu, &empty, &ids).is_err(), "a table without rows");
}

/// Exact, like the unchunked gather: chunks of whole rows, each bound at an aligned
/// offset, every id written by the chunk that holds it.
#[test]
fn gather_rows_in_chunks_matches_reference() {
    let gpu = gpu();
    let alignment = gpu.info().storage_offset_alignment.max(4) as usize;
    // Rows whose bytes are not a multiple of the alignment (an f16 row of 37 is 74 bytes),
    // in chunks of about a fifth of the f32 table, yet at least `alignment` rows (more
    // than the fewest that keep chunks aligned), and not a whole number of rows.
    for (rows, dim) in [(1000, 37), (333, 64), (50, 1)] {
        let chunk_bytes = ((rows * dim * 4 / 5).max(alignment * dim * 4) + 4) as u64;
        let table = random(rows * dim, (rows + dim) as u64, 2.0);
        let ids: Vec<u32> = (0..154).map(|i| ((i * 7919 + rows - 1) % rows) as u32).collect();
        let id_tensor = gpu.upload_u32(&[2, 77], &ids).unwrap();
        let f32_table = gpu.upload_f32(&[rows, dim], &table).unwrap();
        let got = read(&gather_rows_chunked(gpu, &f32_table, &id_tensor, chunk_bytes).unwrap());
        assert_eq!(got, cpu_gather::gather_rows(&table, dim, &ids), "f32 table {rows}x{dim} in {chunk_bytes}-byte chunks");
        let rounded: Vec<f32> = table.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        let f16_table = gpu.upload_f32_as_f16(&[rows, dim], &table).unwrap();
        let got = read(&gather_rows_chunked(gpu, &f16_table, &id_tensor, chunk_bytes).unwrap());
        assert_eq!(got, cpu_gather::gather_rows(&rounded, dim, &ids), "f16 table {rows}x{dim} in {chunk_bytes}-byte chunks");
    }
}

#[test]
fn a_table_chunk_writes_only_its_own_rows() {
    let gpu = gpu();
    let chunk = gpu.upload_f32(&[3, 2], &[10.0, 11.0, 20.0, 21.0, 30.0, 31.0]).unwrap();
    let ids = gpu.upload_u32(&[5], &[4, 7, 5, 6, 0]).unwrap();
    let out = gpu.upload_f32(&[5, 2], &[-1.0; 10]).unwrap();
    // The chunk holds rows 5..8 of a larger table.
    gather_rows_in_range(gpu, &chunk, 5, &ids, &out).unwrap();
    assert_eq!(read(&out), [-1.0, -1.0, 30.0, 31.0, 10.0, 11.0, 20.0, 21.0, -1.0, -1.0]);
    let wrong = gpu.upload_f32(&[5, 3], &[0.0; 15]).unwrap();
    let err = gather_rows_in_range(gpu, &chunk, 5, &ids, &wrong).unwrap_err();
    assert!(matches!(&err, Error::Shape { detail, .. } if detail.contains("output")), "{err}");
    // A limit below the fewest rows that keep chunks aligned cannot be met.
    let table = gpu.upload_f32(&[64, 3], &[0.0; 192]).unwrap();
    let err = gather_rows_chunked(gpu, &table, &ids, 8).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
}
