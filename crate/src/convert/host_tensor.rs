//! A tensor on the host: its shape, and its values as f32, either in memory or still in
//! its source file, read (and widened) only when asked for.

use std::borrow::Cow;
use std::sync::Arc;

use safetensors::tensor::Dtype;

use crate::error::Result;
use crate::loader::{ByteRanges, SafetensorsFile, widen};

#[derive(Clone)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    data: Data,
}

#[derive(Clone)]
enum Data {
    Values(Vec<f32>),
    /// `len` bytes of f32, f16 or bf16 values at `offset` in `source`.
    InFile {
        source: Arc<dyn ByteRanges>,
        offset: u64,
        len: usize,
        dtype: Dtype,
    },
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, values: Vec<f32>) -> Self {
        Self { shape, data: Data::Values(values) }
    }

    /// The float tensor `name` of `file`, left in the file until its values are needed.
    pub fn in_file(file: &SafetensorsFile, name: &str) -> Result<Self> {
        let info = file.float_info(name)?;
        let (source, offset, len) = file.location(name)?;
        Ok(Self { shape: info.shape.clone(), data: Data::InFile { source, offset, len, dtype: info.dtype } })
    }

    pub fn element_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values, read from the file if they are still there.
    pub fn values(&self) -> Result<Cow<'_, [f32]>> {
        Ok(match &self.data {
            Data::Values(values) => Cow::Borrowed(values),
            Data::InFile { source, offset, len, dtype } => Cow::Owned(read(source.as_ref(), *offset, *len, *dtype)?),
        })
    }

    pub fn into_values(self) -> Result<Vec<f32>> {
        match self.data {
            Data::Values(values) => Ok(values),
            Data::InFile { source, offset, len, dtype } => read(source.as_ref(), offset, len, dtype),
        }
    }

    /// The values for changing in place: from now on the tensor is held in memory.
    pub fn values_mut(&mut self) -> Result<&mut Vec<f32>> {
        if let Data::InFile { .. } = self.data {
            self.data = Data::Values(self.values()?.into_owned());
        }
        match &mut self.data {
            Data::Values(values) => Ok(values),
            Data::InFile { .. } => unreachable!("read into memory above"),
        }
    }

    /// `parts` equal blocks of the outermost dimension (which `parts` divides), each
    /// still in the file where the whole is.
    pub fn row_blocks(&self, parts: usize) -> Vec<HostTensor> {
        let mut shape = self.shape.clone();
        shape[0] /= parts;
        let block = |data: Data| HostTensor { shape: shape.clone(), data };
        match &self.data {
            Data::Values(values) => {
                let size = values.len() / parts;
                (0..parts).map(|i| block(Data::Values(values[i * size..][..size].to_vec()))).collect()
            }
            Data::InFile { source, offset, len, dtype } => (0..parts)
                .map(|i| {
                    let (offset, len) = (offset + (i * len / parts) as u64, len / parts);
                    block(Data::InFile { source: source.clone(), offset, len, dtype: *dtype })
                })
                .collect(),
        }
    }
}

fn read(source: &dyn ByteRanges, offset: u64, len: usize, dtype: Dtype) -> Result<Vec<f32>> {
    Ok(widen(dtype, &source.read_range(offset, len)?))
}

/// Equal shapes and values, wherever they are held; a file that cannot be read compares unequal.
impl PartialEq for HostTensor {
    fn eq(&self, other: &Self) -> bool {
        self.shape == other.shape && matches!((self.values(), other.values()), (Ok(a), Ok(b)) if a == b)
    }
}

impl std::fmt::Debug for HostTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.data {
            Data::Values(_) => write!(f, "HostTensor {:?} (in memory)", self.shape),
            Data::InFile { offset, dtype, .. } => write!(f, "HostTensor {:?} ({dtype:?} at byte {offset} of its file)", self.shape),
        }
    }
}
