//! Launcher for `gather.wgsl`: rows of a table picked by index (the token embedding
//! lookup), so an embedding table can stay on the GPU, as f32, packed f16, q8 or q4
//! (dequantized as it is read). A table larger than one storage
//! binding (CLIP-L's f32 table is 152 MB, WebGPU binds 128 MiB) is read through views
//! of row chunks, one launch per chunk.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{Access, DType, Gpu, KernelKey, Launch, Tensor};
use crate::quant;

const SHADER: &str = "gather.wgsl";
const ENTRY: &str = "gather_rows";
const WG: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    dim: u32,
    table_rows: u32,
    row_start: u32,
    row_words: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

fn key(table: DType, row_range: bool) -> KernelKey {
    let mut defines = Vec::new();
    match table {
        DType::F16 => defines.push(("TABLE_F16", String::new())),
        DType::Q8 => defines.push(("WEIGHT_QUANT", String::new())),
        DType::Q4 => defines.extend([("WEIGHT_QUANT", String::new()), ("WEIGHT_Q4", String::new())]),
        DType::F32 | DType::U32 => {}
    }
    if row_range {
        defines.push(("ROW_RANGE", String::new()));
    }
    KernelKey { shader: SHADER, entry: ENTRY, defines, bindings: vec![Access::Read, Access::Read, Access::ReadWrite] }
}

/// `table[ids]`: `table` is `[V, D]` (f32, packed f16, q8 or q4), `ids` u32 of any shape; the
/// result is f32 `[..ids.shape, D]`. The ids are not read back: callers check them
/// (`< V`) before uploading. The kernel clamps any that are not, to stay in bounds (a
/// table read in chunks leaves their rows unwritten instead). A table larger than the
/// device's storage binding limit is read in row chunks (`gather_rows_chunked`).
pub fn gather_rows(gpu: &Gpu, table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    gather_rows_chunked(gpu, table, ids, gpu.info().max_storage_binding)
}

/// `gather_rows`, binding the table in chunks of whole rows of at most `max_chunk_bytes`
/// (and at most the device's binding limit) when it is larger than that: one launch per
/// chunk, each writing the output rows whose ids fall in its rows. A table that fits is
/// one launch, as in `gather_rows`. Either way the values are copied exactly (q8 and q4
/// as `quant::dequantize` gives them).
pub fn gather_rows_chunked(gpu: &Gpu, table: &Tensor, ids: &Tensor, max_chunk_bytes: u64) -> Result<Tensor> {
    const OP: &str = "gather_rows";
    let (rows, dim) = check_operands(OP, table, ids)?;
    let out_shape = [ids.shape(), &[dim]].concat();
    let out = gpu.empty(&out_shape, DType::F32)?;
    let limit = max_chunk_bytes.min(gpu.info().max_storage_binding);
    if table.byte_len() <= limit {
        launch(gpu, table, 0, ids, &out, false)?;
        return Ok(out);
    }
    let chunk_rows = rows_per_chunk(table, limit)?;
    for start in (0..rows).step_by(chunk_rows) {
        let chunk = table.view_narrow(0, start, chunk_rows.min(rows - start))?;
        launch(gpu, &chunk, start, ids, &out, true)?;
    }
    Ok(out)
}

/// One chunk of a chunked gather: `chunk` `[R, D]` holds rows `row_start..row_start + R`
/// of a larger table; every row `r` of `out` (`[..ids.shape, D]` f32) whose id is in that
/// range becomes `chunk[ids[r] - row_start]`, and the other rows are not written.
pub fn gather_rows_in_range(gpu: &Gpu, chunk: &Tensor, row_start: usize, ids: &Tensor, out: &Tensor) -> Result<()> {
    const OP: &str = "gather_rows_in_range";
    let (rows, dim) = check_operands(OP, chunk, ids)?;
    let out_shape = [ids.shape(), &[dim]].concat();
    if out.dtype() != DType::F32 || out.shape() != out_shape {
        return Err(Error::shape(OP, format!("output must be f32 {out_shape:?}, got {:?} {:?}", out.dtype(), out.shape())));
    }
    if u32::try_from(row_start + rows).is_err() {
        return Err(Error::shape(OP, format!("rows {row_start}..{} overflow 32-bit ids", row_start + rows)));
    }
    launch(gpu, chunk, row_start, ids, out, true)
}

/// Checks a table and ids a launch binds; returns the table's rows and width.
fn check_operands(op: &'static str, table: &Tensor, ids: &Tensor) -> Result<(usize, usize)> {
    let &[rows, dim] = table.shape() else {
        return Err(Error::shape(op, format!("table must be [rows, dim], got {:?}", table.shape())));
    };
    if !table.dtype().is_quantized() {
        table.is_f16_float(op)?;
    }
    if ids.dtype() != DType::U32 {
        return Err(Error::shape(op, format!("ids must be u32 indices, got {:?} of shape {:?}", ids.dtype(), ids.shape())));
    }
    if rows == 0 {
        return Err(Error::shape(op, "the table has no rows to pick from"));
    }
    // The shader indexes the table and the output with u32.
    if u32::try_from(table.numel()).is_err() {
        return Err(Error::shape(op, format!("table {:?} overflows 32-bit indices", table.shape())));
    }
    if ids.numel().checked_mul(dim).is_none_or(|n| u32::try_from(n).is_err()) {
        return Err(Error::shape(op, format!("{} ids of {dim} values overflow 32-bit indices", ids.numel())));
    }
    Ok((rows, dim))
}

/// The most rows a chunk may have: at most `limit` bytes, and a multiple of the fewest
/// rows whose bytes are a multiple of the storage offset alignment, so that every
/// chunk's view starts where the device can bind it.
fn rows_per_chunk(table: &Tensor, limit: u64) -> Result<usize> {
    let row_bytes = table.bytes_before(0, 1);
    let alignment = u64::from(table.gpu().info().storage_offset_alignment).max(4);
    let step = alignment / gcd(row_bytes, alignment);
    let rows = limit / row_bytes / step * step;
    if rows == 0 {
        return Err(Error::TooLarge {
            what: format!(
                "a chunk of {step} rows of a {:?} {:?} table (fewer cannot start at aligned offsets)",
                table.shape(),
                table.dtype()
            ),
            needed: step * row_bytes,
            limit,
        });
    }
    Ok(rows as usize)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn launch(gpu: &Gpu, table: &Tensor, row_start: usize, ids: &Tensor, out: &Tensor, row_range: bool) -> Result<()> {
    let n = out.numel();
    if n == 0 {
        return Ok(());
    }
    // check_operands bounded every value by u32.
    let dim = table.shape()[1];
    let params = Params {
        n: n as u32,
        dim: dim as u32,
        table_rows: table.shape()[0] as u32,
        row_start: row_start as u32,
        row_words: quant::row_words(table.dtype(), dim) as u32,
        _pad0: 0,
        _pad1: 0,
        _pad2: 0,
    };
    let KernelKey { shader, entry, defines, .. } = key(table.dtype(), row_range);
    gpu.launch(Launch {
        shader,
        entry,
        defines,
        params: bytemuck::bytes_of(&params),
        bindings: &[(table, Access::Read), (ids, Access::Read), (out, Access::ReadWrite)],
        workgroups: gpu.grid(n.div_ceil(WG) as u32),
    })
}

/// Every variant this module can launch, for shader validation.
pub fn variants() -> Vec<KernelKey> {
    let tables = [DType::F32, DType::F16, DType::Q8, DType::Q4];
    tables.into_iter().flat_map(|table| [false, true].map(|range| key(table, range))).collect()
}
