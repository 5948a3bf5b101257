//! Launcher for `gather.wgsl`: rows of a table picked by index (the token embedding
//! lookup), so an embedding table can stay on the GPU.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{Access, DType, Gpu, KernelKey, Launch, Tensor};

const SHADER: &str = "gather.wgsl";
const ENTRY: &str = "gather_rows";
const WG: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    dim: u32,
    table_rows: u32,
    _pad: u32,
}

fn key(table_f16: bool) -> KernelKey {
    KernelKey {
        shader: SHADER,
        entry: ENTRY,
        defines: if table_f16 { vec![("TABLE_F16", String::new())] } else { Vec::new() },
        bindings: vec![Access::Read, Access::Read, Access::ReadWrite],
    }
}

/// `table[ids]`: `table` is `[V, D]` (f32 or packed f16), `ids` u32 of any shape; the
/// result is f32 `[..ids.shape, D]`. The ids are not read back: callers check them
/// (`< V`) before uploading. The kernel clamps any that are not, to stay in bounds.
pub fn gather_rows(gpu: &Gpu, table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    const OP: &str = "gather_rows";
    let &[rows, dim] = table.shape() else {
        return Err(Error::shape(OP, format!("table must be [rows, dim], got {:?}", table.shape())));
    };
    let table_f16 = table.is_f16_float(OP)?;
    if ids.dtype() != DType::U32 {
        return Err(Error::shape(OP, format!("ids must be u32 indices, got {:?} of shape {:?}", ids.dtype(), ids.shape())));
    }
    if rows == 0 {
        return Err(Error::shape(OP, "the table has no rows to pick from"));
    }
    let out_shape = [ids.shape(), &[dim]].concat();
    let out = gpu.empty(&out_shape, DType::F32)?;
    // The shader indexes the table and the output with u32.
    let n = u32::try_from(out.numel()).map_err(|_| Error::shape(OP, format!("output {out_shape:?} overflows 32-bit indices")))?;
    if u32::try_from(table.numel()).is_err() {
        return Err(Error::shape(OP, format!("table {:?} overflows 32-bit indices", table.shape())));
    }
    if n == 0 {
        return Ok(out);
    }
    let params = Params { n, dim: dim as u32, table_rows: rows as u32, _pad: 0 };
    let KernelKey { shader, entry, defines, .. } = key(table_f16);
    gpu.launch(Launch {
        shader,
        entry,
        defines,
        params: bytemuck::bytes_of(&params),
        bindings: &[(table, Access::Read), (ids, Access::Read), (&out, Access::ReadWrite)],
        workgroups: gpu.grid(out.numel().div_ceil(WG) as u32),
    })?;
    Ok(out)
}

/// Every variant this module can launch, for shader validation.
pub fn variants() -> Vec<KernelKey> {
    vec![key(false), key(true)]
}
