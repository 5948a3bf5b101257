//! Weights from safetensors: conversions, name and shape checks, bad files.

use crate::common;

use common::{gpu, read};
use safetensors::tensor::{Dtype, TensorView};
use webdiffusion::Error;
use webdiffusion::gpu::DType;
use webdiffusion::loader::WeightPrecision;
use webdiffusion::models::weights::Weights;

/// A safetensors file holding `tensors` (name, dtype, shape, little-endian bytes).
fn file(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(&str, TensorView)> =
        tensors.iter().map(|(name, dtype, shape, bytes)| (*name, TensorView::new(*dtype, shape.clone(), bytes).unwrap())).collect();
    safetensors::serialize(views, None).unwrap()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

fn sample() -> Vec<u8> {
    let halves: Vec<half::f16> = [0.5f32, -1.25, 3.0].iter().map(|&v| half::f16::from_f32(v)).collect();
    let bf16s: Vec<half::bf16> = [1.5f32, -2.0].iter().map(|&v| half::bf16::from_f32(v)).collect();
    file(&[
        ("layer.weight", Dtype::F32, vec![2, 2], f32_bytes(&[1.0, 2.0, 3.0, 4.0])),
        ("layer.bias", Dtype::F16, vec![3], bytemuck::cast_slice(&halves).to_vec()),
        ("norm.weight", Dtype::BF16, vec![2], bytemuck::cast_slice(&bf16s).to_vec()),
        ("steps", Dtype::I64, vec![1], 7i64.to_le_bytes().to_vec()),
    ])
}

fn weights(precision: WeightPrecision) -> Weights {
    Weights::from_bytes(gpu(), "sample.safetensors".into(), sample(), precision).unwrap()
}

#[test]
fn tensors_keep_or_change_their_storage_as_asked() {
    let w = weights(WeightPrecision::AsStored);
    let weight = w.get("layer.weight", &[2, 2]).unwrap();
    assert_eq!((weight.dtype(), read(&weight)), (DType::F32, vec![1.0, 2.0, 3.0, 4.0]));
    let bias = w.get("layer.bias", &[3]).unwrap();
    assert_eq!((bias.dtype(), read(&bias)), (DType::F16, vec![0.5, -1.25, 3.0]));
    let norm = w.get("norm.weight", &[2]).unwrap();
    assert_eq!((norm.dtype(), read(&norm)), (DType::F32, vec![1.5, -2.0]), "bf16 widens to f32");
    assert_eq!(read(&w.get_f32("layer.bias", &[3]).unwrap()), vec![0.5, -1.25, 3.0]);

    let halved = weights(WeightPrecision::F16).get("layer.weight", &[2, 2]).unwrap();
    assert_eq!((halved.dtype(), read(&halved)), (DType::F16, vec![1.0, 2.0, 3.0, 4.0]));
}

#[test]
fn names_shapes_and_types_are_checked() {
    let w = weights(WeightPrecision::AsStored);
    let err = w.get("layer.wieght", &[2, 2]).unwrap_err();
    assert_eq!(err, Error::MissingTensor { file: "sample.safetensors".into(), name: "layer.wieght".into() });
    let err = w.get("layer.weight", &[4]).unwrap_err();
    assert!(matches!(&err, Error::WeightShape { expected, found, .. } if expected == &[4] && found == &[2, 2]), "{err}");
    assert!(err.to_string().contains("layer.weight"), "{err}");
    let err = w.get("steps", &[1]).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
}

#[test]
fn unused_tensors_are_reported() {
    let w = weights(WeightPrecision::AsStored);
    w.get("layer.weight", &[2, 2]).unwrap();
    assert_eq!(w.unused(), vec!["layer.bias", "norm.weight", "steps"]);
    let err = w.ensure_all_used().unwrap_err();
    assert!(err.to_string().contains("3 tensors do not belong"), "{err}");
    for (name, shape) in [("layer.bias", [3]), ("norm.weight", [2])] {
        w.values(name, &shape).unwrap();
    }
    assert_eq!(w.unused(), vec!["steps"]);
}

#[test]
fn corrupt_and_truncated_files_are_format_errors() {
    let good = sample();
    for (what, bytes) in [
        ("empty", Vec::new()),
        ("truncated data", good[..good.len() - 3].to_vec()),
        ("garbage header", b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!".to_vec()),
        ("huge header length", u64::MAX.to_le_bytes().to_vec()),
    ] {
        let result = Weights::from_bytes(gpu(), "bad.safetensors".into(), bytes, WeightPrecision::AsStored);
        match result {
            Err(Error::Format { file, .. }) => assert_eq!(file, "bad.safetensors", "{what}"),
            Err(other) => panic!("{what}: {other}"),
            Ok(_) => panic!("{what}: accepted"),
        }
    }
}

#[test]
fn model_folders_name_missing_files() {
    use webdiffusion::loader::{DirFiles, ModelFiles};
    let dir = std::env::temp_dir().join(format!("webdiffusion-loader-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("unet")).unwrap();
    std::fs::write(dir.join("unet/config.json"), b"{\"in_channels\": 4").unwrap();
    let files = DirFiles::new(&dir).unwrap();
    let err = Weights::load(gpu(), &files, "unet", WeightPrecision::AsStored).err().unwrap();
    assert!(matches!(&err, Error::Io { path, .. } if path.ends_with("unet")), "{err}");
    let err = webdiffusion::loader::read_config::<serde_json::Value>(&files, "unet/config.json").unwrap_err();
    assert!(matches!(&err, Error::Format { file, .. } if file.ends_with("unet/config.json")), "{err}");
    assert!(matches!(files.read("vae/config.json"), Err(Error::Io { .. })));
    assert!(DirFiles::new(dir.join("nope")).is_err());
    std::fs::remove_dir_all(dir).unwrap();
}

/// Safetensors bytes whose header is `header` (JSON) followed by `data`.
fn with_header(header: &str, data: &[u8]) -> Vec<u8> {
    [&(header.len() as u64).to_le_bytes()[..], header.as_bytes(), data].concat()
}

#[test]
fn headers_that_do_not_fit_their_data_are_refused_naming_the_tensor() {
    use std::sync::Arc;
    use webdiffusion::loader::SafetensorsFile;
    let open = |bytes: Vec<u8>| SafetensorsFile::open(Arc::new(bytes), "bad.safetensors".into()).err().expect("refused");
    // 3 f32 values need 12 bytes, not 8.
    let error = open(with_header(r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, &[0; 8]));
    assert!(matches!(&error, Error::Format { file, detail } if file == "bad.safetensors" && detail.contains("tensor w")), "{error}");
    // The data ends 4 bytes short of what the header describes.
    let error = open(with_header(r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}"#, &[0; 8]));
    assert!(matches!(&error, Error::Format { detail, .. } if detail.contains("12 bytes of tensor data, the file holds 8")), "{error}");
    // A header longer than the file.
    let error = open([&100u64.to_le_bytes()[..], b"{}"].concat());
    assert!(matches!(&error, Error::Format { detail, .. } if detail.contains("a header of 100 bytes")), "{error}");
}

/// A weights file on disk is read a tensor at a time, as in memory; a file cut short
/// after opening fails on the next read, naming it.
#[test]
fn weights_files_on_disk_are_read_by_tensor() {
    use std::sync::Arc;
    use webdiffusion::convert::HostTensor;
    use webdiffusion::loader::{OpenFile, SafetensorsFile};
    let dir = std::env::temp_dir().join(format!("webdiffusion-by-tensor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    std::fs::write(&path, sample()).unwrap();
    let on_disk = SafetensorsFile::open(Arc::new(OpenFile::open(path.clone()).unwrap()), path.display().to_string()).unwrap();
    let in_memory = SafetensorsFile::open(Arc::new(sample()), "sample".into()).unwrap();
    for name in ["layer.weight", "layer.bias", "norm.weight"] {
        assert_eq!(on_disk.values(name).unwrap(), in_memory.values(name).unwrap(), "{name}");
    }
    assert_eq!(in_memory.values("layer.bias").unwrap(), [0.5, -1.25, 3.0]);
    assert_eq!(in_memory.values("norm.weight").unwrap(), [1.5, -2.0]);
    assert!(matches!(on_disk.values("steps"), Err(Error::Unsupported { .. })));
    // Two row blocks of the 2x2 weight, each read from the file on its own.
    let blocks = HostTensor::in_file(&on_disk, "layer.weight").unwrap().row_blocks(2);
    let blocks: Vec<Vec<f32>> = blocks.into_iter().map(|b| b.into_values().unwrap()).collect();
    assert_eq!(blocks, [[1.0, 2.0], [3.0, 4.0]]);
    let in_memory_blocks = HostTensor::new(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).row_blocks(2);
    assert_eq!(in_memory_blocks.iter().map(|b| b.values().unwrap().into_owned()).collect::<Vec<_>>(), blocks);
    assert!(in_memory_blocks.iter().all(|b| b.shape == [1, 2]));

    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(40).unwrap();
    let error = on_disk.values("norm.weight").unwrap_err();
    assert!(matches!(&error, Error::Io { path: p, .. } if p.ends_with("model.safetensors")), "{error}");
    std::fs::remove_dir_all(dir).unwrap();
}
