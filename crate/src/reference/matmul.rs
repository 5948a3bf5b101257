//! CPU reference for the matmul kernels: straightforward triple loops with f64 sums.

use super::elementwise::unary;
use crate::kernels::elementwise::Unary;

/// A matrix operand as stored: row-major values and a `[rows, cols]` or
/// `[batch, rows, cols]` shape.
#[derive(Debug, Clone, Copy)]
pub struct Operand<'a> {
    pub values: &'a [f32],
    pub shape: &'a [usize],
    /// The stored rows and columns are swapped relative to the product's.
    pub transposed: bool,
}

impl Operand<'_> {
    fn batch(&self) -> Option<usize> {
        (self.shape.len() == 3).then(|| self.shape[0])
    }

    /// (rows, cols) of the logical matrix.
    fn dims(&self) -> (usize, usize) {
        let [rows, cols] = self.shape[self.shape.len() - 2..] else { panic!("operand shape {:?} must have rank 2 or 3", self.shape) };
        if self.transposed { (cols, rows) } else { (rows, cols) }
    }

    /// Element (row, col) of the logical matrix in `batch` (a 2-D operand is shared).
    fn at(&self, batch: usize, row: usize, col: usize) -> f64 {
        let (rows, cols) = self.dims();
        let offset = if self.batch().is_some() { batch * rows * cols } else { 0 };
        let index = if self.transposed { col * rows + row } else { row * cols + col };
        self.values[offset + index] as f64
    }
}

/// `act(a @ b + bias)` with the same shape rules as `kernels::matmul::matmul`;
/// returns the values and the output shape. Panics on inconsistent shapes.
pub fn matmul(a: Operand, b: Operand, bias: Option<&[f32]>, activation: Option<Unary>) -> (Vec<f32>, Vec<usize>) {
    let ((m, k), (b_k, n)) = (a.dims(), b.dims());
    assert_eq!(k, b_k, "inner dimensions of {:?} and {:?}", a.shape, b.shape);
    if let (Some(x), Some(y)) = (a.batch(), b.batch()) {
        assert_eq!(x, y, "batch sizes of {:?} and {:?}", a.shape, b.shape);
    }
    let batch = a.batch().or(b.batch());
    let mut out = Vec::with_capacity(batch.unwrap_or(1) * m * n);
    for t in 0..batch.unwrap_or(1) {
        for i in 0..m {
            for j in 0..n {
                let mut sum = bias.map_or(0.0, |bias| bias[j] as f64);
                for l in 0..k {
                    sum += a.at(t, i, l) * b.at(t, l, j);
                }
                out.push(activation.map_or(sum as f32, |op| unary(op, sum as f32)));
            }
        }
    }
    let shape = match batch {
        Some(count) => vec![count, m, n],
        None => vec![m, n],
    };
    (out, shape)
}

/// PyTorch's `Linear` on `rows` rows of `x`: `x @ weight^T + bias`, weight `[out, in]`.
pub fn linear(x: &[f32], weight: &[f32], out_features: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let in_features = weight.len() / out_features;
    let rows = x.len() / in_features;
    let a = Operand { values: x, shape: &[rows, in_features], transposed: false };
    let b = Operand { values: weight, shape: &[out_features, in_features], transposed: true };
    matmul(a, b, bias, None).0
}
