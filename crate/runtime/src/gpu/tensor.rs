//! A tensor on the GPU: a shape, an element type, and a pooled storage buffer, or a
//! byte range of one (a view).

use std::sync::Arc;

use super::context::{Gpu, lock};
use super::pool::BufferPool;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::quant;

pub(super) struct Storage {
    pub buffer: wgpu::Buffer,
    class: u64,
    /// The pool's number for the buffer.
    number: u64,
    gpu: Gpu,
}

impl Drop for Storage {
    fn drop(&mut self) {
        lock(&self.gpu.inner.pool).give(self.class, self.number, self.buffer.clone());
    }
}

/// Cloning shares the storage; so does a view, which keeps it alive (and out of the
/// pool) for as long as the view lives.
#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    /// Where element 0 lies in the storage buffer, in bytes (0 unless this is a view).
    offset: u64,
    shape: Vec<usize>,
    dtype: DType,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {:?})", self.shape, self.dtype)
    }
}

impl Tensor {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Whether `other` is this tensor: the same storage, offset, shape and type (not merely
    /// equal values).
    pub fn same_tensor(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage) && self.offset == other.offset && self.shape == other.shape && self.dtype == other.dtype
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn gpu(&self) -> &Gpu {
        &self.storage.gpu
    }

    /// Bytes the elements occupy (the buffer itself may be larger).
    pub fn byte_len(&self) -> u64 {
        quant::storage_bytes(self.dtype, &self.shape)
    }

    /// For kernels that read f32 or packed f16: whether this is f16. Index tensors
    /// (u32) are refused, since their bits would be read as floats, and so are quantized
    /// weights, which only the kernels that dequantize them accept.
    pub fn is_f16_float(&self, op: &'static str) -> Result<bool> {
        match self.dtype {
            DType::F32 => Ok(false),
            DType::F16 => Ok(true),
            DType::U32 => Err(Error::shape(op, format!("expects f32 or f16 values, got u32 indices of shape {:?}", self.shape))),
            DType::Q8 | DType::Q4 => {
                Err(Error::shape(op, format!("expects f32 or f16 values, got {} weights of shape {:?}", self.dtype.name(), self.shape)))
            }
        }
    }

    pub(super) fn buffer(&self) -> &wgpu::Buffer {
        &self.storage.buffer
    }

    /// Where this tensor's elements start in its storage buffer, in bytes (non-zero for views).
    pub fn byte_offset(&self) -> u64 {
        self.offset
    }

    /// Whether `self` and `other` live in the same buffer (one may be a view of the other).
    pub(super) fn shares_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    /// The same storage seen with another shape of the same element count. A quantized
    /// tensor keeps its rows (the first dimension): its layout depends on them.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if shape.iter().product::<usize>() != self.numel() {
            return Err(Error::shape("reshape", format!("{:?} cannot become {:?}", self.shape, shape)));
        }
        if self.dtype.is_quantized() && (shape.len() < 2 || shape[0] != self.shape[0]) {
            return Err(Error::shape(
                "reshape",
                format!("{} weights {:?} must keep their {} rows, cannot become {shape:?}", self.dtype.name(), self.shape, self.shape[0]),
            ));
        }
        Ok(Tensor { shape: shape.to_vec(), ..self.clone() })
    }

    /// `x.narrow(axis, start, len)` without a copy: a view of the same storage. It exists
    /// only where the slice is one contiguous byte range whose start the device can bind:
    /// every dimension before `axis` is 1 (or the slice is the whole tensor), and the start
    /// is a multiple of the device's `storage_offset_alignment`. Otherwise this is an error
    /// and `kernels::layout::narrow` makes a copy. A launch must not write a view while
    /// binding another view of the same storage (WebGPU tracks usage per buffer).
    /// A quantized tensor is sliced by rows only (axis 0), each a whole number of words.
    pub fn view_narrow(&self, axis: usize, start: usize, len: usize) -> Result<Tensor> {
        const OP: &str = "view_narrow";
        let shape = &self.shape;
        if axis >= shape.len() {
            return Err(Error::shape(OP, format!("axis {axis} is out of range for shape {shape:?}")));
        }
        let size = shape[axis];
        if start.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::shape(OP, format!("{start}..{start}+{len} is out of range for axis {axis} of {shape:?}")));
        }
        if start == 0 && len == size {
            return Ok(self.clone());
        }
        if self.dtype.is_quantized() && axis != 0 {
            return Err(Error::shape(
                OP,
                format!("{} weights {shape:?} can only be sliced by rows (axis 0), not axis {axis}", self.dtype.name()),
            ));
        }
        if shape[..axis].iter().any(|&d| d != 1) {
            return Err(Error::shape(
                OP,
                format!("a slice of axis {axis} of {shape:?} is not contiguous (the dimensions before it are not 1)"),
            ));
        }
        let mut view_shape = shape.clone();
        view_shape[axis] = len;
        let inner: usize = shape[axis + 1..].iter().product();
        if len * inner == 0 {
            // Nothing to read: where it starts does not matter.
            return Ok(Tensor { shape: view_shape, ..self.clone() });
        }
        let offset = self.offset + self.bytes_before(axis, start);
        // Packed f16 starts on a word; every storage alignment is a multiple of 4.
        let alignment = u64::from(self.gpu().info().storage_offset_alignment).max(4);
        if !offset.is_multiple_of(alignment) {
            return Err(Error::shape(
                OP,
                format!(
                    "elements {start}.. of axis {axis} of {shape:?} start at byte {offset}, not a multiple of the device's storage offset alignment {alignment}"
                ),
            ));
        }
        Ok(Tensor { offset, shape: view_shape, ..self.clone() })
    }

    /// Bytes from element 0 to index `start` of `axis` in the storage, where the dimensions
    /// before `axis` are 1 or `axis` is 0 (for a quantized tensor it must be 0, the rows).
    pub(crate) fn bytes_before(&self, axis: usize, start: usize) -> u64 {
        let inner: usize = self.shape[axis + 1..].iter().product();
        match self.dtype {
            DType::F32 | DType::U32 => 4 * (start * inner) as u64,
            DType::F16 => 2 * (start * inner) as u64,
            DType::Q8 | DType::Q4 => 4 * (start * quant::row_words(self.dtype, inner)) as u64,
        }
    }
}

impl Gpu {
    /// A tensor with undefined contents, from the pool when a buffer of its size class is free.
    pub fn empty(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        self.check()?;
        if dtype.is_quantized() && !quant::is_quantizable(shape) {
            return Err(Error::shape(
                "empty",
                format!("{} weights need rows of a multiple of {} elements, got shape {shape:?}", dtype.name(), quant::BLOCK),
            ));
        }
        let bytes = quant::storage_bytes(dtype, shape);
        let info = &self.inner.info;
        if bytes > info.max_buffer_size {
            return Err(Error::TooLarge { what: format!("a tensor of shape {shape:?}"), needed: bytes, limit: info.max_buffer_size });
        }
        let class = BufferPool::size_class(bytes).min(info.max_buffer_size);
        let pooled = lock(&self.inner.pool).take(class);
        let (number, buffer) = match pooled {
            Some(pooled) => pooled,
            None => {
                lock(&self.inner.counters).buffers += 1;
                let number = lock(&self.inner.pool).number_new();
                let buffer = self.inner.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("tensor"),
                    size: class,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                (number, buffer)
            }
        };
        self.check()?;
        Ok(Tensor { storage: Arc::new(Storage { buffer, class, number, gpu: self.clone() }), offset: 0, shape: shape.to_vec(), dtype })
    }

    pub fn upload_f32(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        check_len(shape, data.len())?;
        self.upload_bytes(shape, DType::F32, bytemuck::cast_slice(data))
    }

    pub fn upload_f16(&self, shape: &[usize], data: &[half::f16]) -> Result<Tensor> {
        check_len(shape, data.len())?;
        let mut words: Vec<half::f16> = data.to_vec();
        if words.len() % 2 == 1 {
            words.push(half::f16::ZERO);
        }
        self.upload_bytes(shape, DType::F16, bytemuck::cast_slice(&words))
    }

    /// Indices, such as token ids for an embedding lookup.
    pub fn upload_u32(&self, shape: &[usize], data: &[u32]) -> Result<Tensor> {
        check_len(shape, data.len())?;
        self.upload_bytes(shape, DType::U32, bytemuck::cast_slice(data))
    }

    /// Rounds f32 values to f16 and stores them packed.
    pub fn upload_f32_as_f16(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        let halves: Vec<half::f16> = data.iter().map(|&v| half::f16::from_f32(v)).collect();
        self.upload_f16(shape, &halves)
    }

    /// A tensor from its storage bytes as they lie in GPU memory (and in a package):
    /// `bytes` must be exactly `quant::storage_bytes(dtype, shape)` long.
    pub fn upload_bytes(&self, shape: &[usize], dtype: DType, bytes: &[u8]) -> Result<Tensor> {
        let expected = quant::storage_bytes(dtype, shape);
        if bytes.len() as u64 != expected {
            return Err(Error::shape(
                "upload",
                format!("{} storage of shape {shape:?} takes {expected} bytes, got {}", dtype.name(), bytes.len()),
            ));
        }
        let tensor = self.empty(shape, dtype)?;
        // Pending dispatches may still read the recycled buffer; a queue write would
        // land before them, so they go first.
        if !bytes.is_empty() {
            self.write_after_pending(|queue| queue.write_buffer(tensor.buffer(), tensor.byte_offset(), bytes));
        }
        self.check()?;
        Ok(tensor)
    }
}

impl Gpu {
    /// `torch.cat(parts, dim=0)` for weights of any element type: the parts' storage bytes
    /// copied one after another (quantized rows and f32 elements are self-contained; packed
    /// f16 parts other than the last must hold an even count, or a half word would split).
    /// For stacking layers at load; it submits the copies with the pending work.
    pub fn concat_rows(&self, parts: &[&Tensor]) -> Result<Tensor> {
        const OP: &str = "concat_rows";
        let first = parts.first().ok_or_else(|| Error::shape(OP, "needs at least one part"))?;
        let row_shape = &first.shape()[1.min(first.shape().len())..];
        if let Some(bad) = parts.iter().find(|t| t.dtype() != first.dtype() || t.shape().is_empty() || &t.shape()[1..] != row_shape) {
            return Err(Error::shape(
                OP,
                format!(
                    "parts must share their type and row shape: {:?} {:?} and {:?} {:?}",
                    first.dtype(),
                    first.shape(),
                    bad.dtype(),
                    bad.shape()
                ),
            ));
        }
        if first.dtype() == DType::F16
            && let Some(odd) = parts[..parts.len() - 1].iter().find(|t| t.numel() % 2 == 1)
        {
            return Err(Error::shape(OP, format!("an f16 part of {:?} holds an odd count, which would split a word", odd.shape())));
        }
        let rows = parts.iter().map(|t| t.shape()[0]).sum();
        let shape: Vec<usize> = std::iter::once(rows).chain(row_shape.iter().copied()).collect();
        let out = self.empty(&shape, first.dtype())?;
        self.submit_with(|encoder| {
            let mut at = 0;
            for part in parts {
                encoder.copy_buffer_to_buffer(part.buffer(), part.byte_offset(), out.buffer(), at, part.byte_len());
                at += part.byte_len();
            }
        });
        self.check()?;
        Ok(out)
    }
}

fn check_len(shape: &[usize], len: usize) -> Result<()> {
    let numel: usize = shape.iter().product();
    if numel != len {
        return Err(Error::shape("upload", format!("shape {shape:?} holds {numel} values, got {len}")));
    }
    Ok(())
}
