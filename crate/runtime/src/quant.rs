//! Weight storage bytes for every element type, and the two quantized ones.
//!
//! q8 and q4 are weight-only types with a row-blocked layout, so that a range of rows
//! (output channels) is one contiguous byte range a kernel can bind as a view. A tensor
//! `[rows, ...]` has rows of K = product of the other dimensions (PyTorch's order), and
//! K must be a multiple of [`BLOCK`]. Each row takes [`row_words`] u32 words:
//! - the quants: q8 keeps element k as an i8 in byte k % 4 of word k / 4 (little endian);
//!   q4 keeps q + 8 (q in -8..=7) in nibble k % 8 of word k / 8, low nibble first;
//! - then the row's K / 32 block scales as f16, two per word (even block in the low half);
//!   block b covers elements 32b..32b+31 of the row; a last odd scale pads its word.
//!
//! A block's scale is d = f16(absmax / 127) (q8) or f16(absmax / 7) (q4), the quants are
//! q = clamp(round_half_away(w / d), -127..=127 | -8..=7) (0 where d is 0), and q * d is
//! the value a kernel reads back. Every function here is plain CPU code, shared by the
//! converter (which writes these bytes into packages), the upload check and the tests.

use half::f16;

use crate::dtype::DType;
use crate::error::{Error, Result};

/// Elements that share one scale.
pub const BLOCK: usize = 32;

/// The row length K of a `[rows, ...]` weight: the product of the dimensions after the first.
pub fn row_len(shape: &[usize]) -> usize {
    shape.iter().skip(1).product()
}

/// Whether a weight of this shape can be stored as q8 or q4: it has rows, and their
/// length is a non-zero multiple of [`BLOCK`].
pub fn is_quantizable(shape: &[usize]) -> bool {
    let k = row_len(shape);
    shape.len() >= 2 && k > 0 && k.is_multiple_of(BLOCK)
}

/// The u32 words one row of K elements takes in a quantized layout (quants, then scales).
pub fn row_words(dtype: DType, k: usize) -> usize {
    let quant_words = match dtype {
        DType::Q8 => k.div_ceil(4),
        DType::Q4 => k.div_ceil(8),
        DType::F32 | DType::F16 | DType::U32 => return 0,
    };
    quant_words + k.div_ceil(BLOCK).div_ceil(2)
}

/// Bytes of storage for a tensor of `shape`, always a whole number of u32 words: f32 and
/// u32 take 4 per element, f16 2 (rounded up to a word), q8 and q4 [`row_words`] per row.
pub fn storage_bytes(dtype: DType, shape: &[usize]) -> u64 {
    let numel: u64 = shape.iter().map(|&d| d as u64).product();
    match dtype {
        DType::F32 | DType::U32 => 4 * numel,
        DType::F16 => 4 * numel.div_ceil(2),
        DType::Q8 | DType::Q4 => {
            let rows = shape.first().map_or(1, |&r| r as u64);
            4 * rows * row_words(dtype, row_len(shape)) as u64
        }
    }
}

/// The quants a block's scale maps its largest magnitude to, and the range quants keep to.
fn quant_range(dtype: DType) -> (f32, i32, i32) {
    if dtype == DType::Q8 { (127.0, -127, 127) } else { (7.0, -8, 7) }
}

fn check_quantizable(op: &'static str, dtype: DType, shape: &[usize]) -> Result<()> {
    if is_quantizable(shape) {
        return Ok(());
    }
    Err(Error::shape(
        op,
        format!(
            "a {} weight needs rows whose length (the product of the dimensions after the first) is a non-zero multiple of {BLOCK}; shape {shape:?} has rows of {}",
            dtype.name(),
            row_len(shape)
        ),
    ))
}

/// The storage bytes of `values` (row-major, `shape`) as `dtype`: f32 as is, f16 rounded
/// and packed, q8 and q4 quantized per block as described in the module documentation.
/// Refuses u32, a length that is not the shape's, a quantized shape whose rows are not
/// whole blocks, and non-finite values or a block whose scale overflows f16.
pub fn quantize(dtype: DType, shape: &[usize], values: &[f32]) -> Result<Vec<u8>> {
    const OP: &str = "quantize";
    let numel: usize = shape.iter().product();
    if values.len() != numel {
        return Err(Error::shape(OP, format!("shape {shape:?} holds {numel} values, got {}", values.len())));
    }
    match dtype {
        DType::U32 => Err(Error::shape(OP, "u32 holds indices, not weights")),
        DType::F32 => Ok(bytemuck::cast_slice(values).to_vec()),
        DType::F16 => {
            let mut halves: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
            if halves.len() % 2 == 1 {
                halves.push(f16::ZERO);
            }
            Ok(bytemuck::cast_slice(&halves).to_vec())
        }
        DType::Q8 | DType::Q4 => {
            check_quantizable(OP, dtype, shape)?;
            let k = row_len(shape);
            let mut bytes = Vec::with_capacity(storage_bytes(dtype, shape) as usize);
            for (index, row) in values.chunks_exact(k).enumerate() {
                quantize_row(dtype, row, &mut bytes).map_err(|detail| Error::shape(OP, format!("row {index} of {shape:?}: {detail}")))?;
            }
            Ok(bytes)
        }
    }
}

/// Appends one row's words (quants, then scales) to `out`.
fn quantize_row(dtype: DType, row: &[f32], out: &mut Vec<u8>) -> Result<(), String> {
    let mut quants = Vec::with_capacity(row.len());
    let mut scales = Vec::with_capacity(row.len() / BLOCK + 1);
    for (block_index, block) in row.chunks_exact(BLOCK).enumerate() {
        let absmax = block.iter().try_fold(0f32, |m, &v| if v.is_finite() { Ok(m.max(v.abs())) } else { Err(v) });
        let absmax = absmax.map_err(|v| format!("block {block_index} holds {v}, which cannot be quantized"))?;
        let (top, low, high) = quant_range(dtype);
        let scale = f16::from_f32(absmax / top);
        if scale.is_infinite() {
            return Err(format!("block {block_index} has |w| up to {absmax}, beyond what an f16 scale can hold"));
        }
        let d = scale.to_f32();
        // `round` rounds half away from zero; d == 0 means every value is (nearly) 0.
        quants.extend(block.iter().map(|&w| if d == 0.0 { 0 } else { ((w / d).round() as i32).clamp(low, high) }));
        scales.push(scale);
    }
    match dtype {
        DType::Q8 => out.extend(quants.iter().map(|&q| q as i8 as u8)),
        _ => out.extend(quants.chunks_exact(2).map(|pair| ((pair[0] + 8) as u8) | (((pair[1] + 8) as u8) << 4))),
    }
    if scales.len() % 2 == 1 {
        scales.push(f16::ZERO);
    }
    out.extend_from_slice(bytemuck::cast_slice(&scales));
    Ok(())
}

/// The values `bytes` (storage of `dtype`, `shape`) stand for, as f32: what a kernel reads.
/// Refuses u32 and a byte length that is not [`storage_bytes`].
pub fn dequantize(dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<Vec<f32>> {
    const OP: &str = "dequantize";
    let expected = storage_bytes(dtype, shape);
    if bytes.len() as u64 != expected {
        return Err(Error::shape(OP, format!("{} storage of shape {shape:?} takes {expected} bytes, got {}", dtype.name(), bytes.len())));
    }
    let numel: usize = shape.iter().product();
    match dtype {
        DType::U32 => Err(Error::shape(OP, "u32 holds indices, not weights")),
        DType::F32 => Ok(bytemuck::pod_collect_to_vec(bytes)),
        DType::F16 => {
            let halves: Vec<f16> = bytemuck::pod_collect_to_vec(bytes);
            Ok(halves[..numel].iter().map(|h| h.to_f32()).collect())
        }
        DType::Q8 | DType::Q4 => {
            check_quantizable(OP, dtype, shape)?;
            let k = row_len(shape);
            let row_bytes = 4 * row_words(dtype, k);
            let quant_bytes = if dtype == DType::Q8 { k } else { k / 2 };
            let mut values = Vec::with_capacity(numel);
            for row in bytes.chunks_exact(row_bytes) {
                let (quants, scales) = row.split_at(quant_bytes);
                let scale = |i: usize| f16::from_le_bytes([scales[2 * (i / BLOCK)], scales[2 * (i / BLOCK) + 1]]).to_f32();
                values.extend((0..k).map(|i| {
                    let q = match dtype {
                        DType::Q8 => f32::from(quants[i] as i8),
                        _ => f32::from(((quants[i / 2] >> (4 * (i % 2))) & 0xf) as i8 - 8),
                    };
                    q * scale(i)
                }));
            }
            Ok(values)
        }
    }
}
