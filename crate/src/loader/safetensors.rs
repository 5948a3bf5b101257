//! A safetensors file read from its header, its tensors' bytes fetched one tensor at a
//! time on request: a multi-gigabyte UNet file is never held in memory whole.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use safetensors::tensor::{Dtype, TensorInfo};

use super::files::ByteRanges;
use crate::error::{Error, Result};

/// The length prefix before the JSON header.
const LENGTH_BYTES: u64 = 8;
/// The safetensors crate's own cap on a header (100 MB): a larger length is corruption.
const MAX_HEADER_BYTES: u64 = 100_000_000;

pub struct SafetensorsFile {
    file: String,
    source: Arc<dyn ByteRanges>,
    data_start: u64,
    tensors: BTreeMap<String, TensorInfo>,
}

impl SafetensorsFile {
    /// Reads and checks the header of the file `source` holds; `file` names it in errors.
    /// Every tensor's bytes must lie inside the file and match its shape and type.
    pub fn open(source: Arc<dyn ByteRanges>, file: String) -> Result<Self> {
        let format = |detail: String| Error::Format { file: file.clone(), detail };
        let file_bytes = source.byte_len();
        if file_bytes < LENGTH_BYTES {
            return Err(format(format!("{file_bytes} bytes: too short for a safetensors header")));
        }
        let length = source.read_range(0, LENGTH_BYTES as usize)?;
        let header_bytes = u64::from_le_bytes(<[u8; 8]>::try_from(&length[..]).map_err(|_| format("an unreadable header length".into()))?);
        if header_bytes > MAX_HEADER_BYTES || LENGTH_BYTES + header_bytes > file_bytes {
            return Err(format(format!("a header of {header_bytes} bytes in a file of {file_bytes}")));
        }
        let header = source.read_range(LENGTH_BYTES, header_bytes as usize)?;
        // Each entry is a tensor's header but `__metadata__`, a map of strings.
        let mut entries: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| format(format!("header: {e}")))?;
        entries.remove("__metadata__");
        let tensors = entries
            .into_iter()
            .map(|(name, entry)| match serde_json::from_value::<TensorInfo>(entry) {
                Ok(info) => Ok((name, info)),
                Err(e) => Err(format(format!("header of tensor {name}: {e}"))),
            })
            .collect::<Result<BTreeMap<_, _>>>()?;
        let data_start = LENGTH_BYTES + header_bytes;
        let data_bytes = file_bytes - data_start;
        let mut data_end = 0;
        for (name, info) in &tensors {
            let (start, end) = info.data_offsets;
            let bits = info.shape.iter().try_fold(info.dtype.bitsize(), |n, &d| n.checked_mul(d));
            if end < start || bits != Some((end - start).saturating_mul(8)) {
                return Err(format(format!(
                    "tensor {name}: {} bytes at {start}..{end} for a {:?} tensor of shape {:?}",
                    end.saturating_sub(start),
                    info.dtype,
                    info.shape
                )));
            }
            data_end = data_end.max(end as u64);
        }
        if data_end != data_bytes {
            return Err(format(format!("the header describes {data_end} bytes of tensor data, the file holds {data_bytes} (truncated?)")));
        }
        Ok(Self { file, source, data_start, tensors })
    }

    /// How the file is named in errors.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Every tensor's name and header entry, sorted by name.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &TensorInfo)> {
        self.tensors.iter().map(|(name, info)| (name.as_str(), info))
    }

    /// The tensors from the name `first` on, sorted by name.
    pub fn tensors_from<'s>(&'s self, first: &str) -> impl Iterator<Item = (&'s str, &'s TensorInfo)> {
        self.tensors.range::<str, _>((Bound::Included(first), Bound::Unbounded)).map(|(name, info)| (name.as_str(), info))
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// Where a tensor's bytes are: the file, and the byte range inside it.
    pub fn location(&self, name: &str) -> Result<(Arc<dyn ByteRanges>, u64, usize)> {
        let info = self.info(name).ok_or_else(|| Error::MissingTensor { file: self.file.clone(), name: name.to_string() })?;
        let (start, end) = info.data_offsets;
        Ok((self.source.clone(), self.data_start + start as u64, end - start))
    }

    /// A tensor's bytes as stored.
    pub fn bytes(&self, name: &str) -> Result<Vec<u8>> {
        let (source, offset, len) = self.location(name)?;
        source.read_range(offset, len)
    }

    /// A float tensor's values widened to f32 (f16 and bf16 widen exactly).
    pub fn values(&self, name: &str) -> Result<Vec<f32>> {
        let dtype = self.float_info(name)?.dtype;
        Ok(widen(dtype, &self.bytes(name)?))
    }

    /// The header entry of a float tensor (f32, f16 or bf16); anything else is unsupported.
    pub fn float_info(&self, name: &str) -> Result<&TensorInfo> {
        let info = self.info(name).ok_or_else(|| Error::MissingTensor { file: self.file.clone(), name: name.to_string() })?;
        match info.dtype {
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => Ok(info),
            other => Err(Error::Unsupported { file: self.file.clone(), detail: format!("tensor {name} of type {other:?}") }),
        }
    }
}

/// Little-endian f32, f16 or bf16 bytes as f32 (the caller checked the type).
pub fn widen(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(bytes).into_iter().map(half::f16::to_f32).collect(),
        Dtype::BF16 => bytemuck::pod_collect_to_vec::<u8, half::bf16>(bytes).into_iter().map(half::bf16::to_f32).collect(),
        _ => bytemuck::pod_collect_to_vec(bytes),
    }
}
