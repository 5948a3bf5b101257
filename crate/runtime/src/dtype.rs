//! The element types tensors are stored in. Its own module so that `quant` (the q8/q4
//! layouts) and `gpu` (the tensors) both depend on it and not on each other.

/// Element storage. f16 is stored packed two per `u32` (element `i` in the low half
/// of word `i / 2` when `i` is even), read with `unpack2x16float`: no shader-f16 needed.
/// q8 and q4 are weight-only, stored in rows of blocks with f16 scales (`crate::quant`
/// describes the layout) and dequantized in registers by the kernels that accept them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    /// Indices (token ids).
    U32,
    Q8,
    Q4,
}

impl DType {
    /// The name packages and messages use: "f32", "f16", "u32", "q8", "q4".
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::U32 => "u32",
            DType::Q8 => "q8",
            DType::Q4 => "q4",
        }
    }

    /// The type named `name` (see [`DType::name`]).
    pub fn from_name(name: &str) -> Option<DType> {
        [DType::F32, DType::F16, DType::U32, DType::Q8, DType::Q4].into_iter().find(|dtype| dtype.name() == name)
    }

    /// Whether this is a row-blocked quantized type (q8 or q4).
    pub fn is_quantized(self) -> bool {
        matches!(self, DType::Q8 | DType::Q4)
    }
}
