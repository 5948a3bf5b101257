//! CPU references for the layout kernels, on row-major data with explicit shapes.

/// Row-major element strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut out = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        out[d] = out[d + 1] * shape[d + 1];
    }
    out
}

/// Calls `f` with every multi-index of `shape` in row-major order.
fn for_each_coordinate(shape: &[usize], mut f: impl FnMut(&[usize])) {
    if shape.contains(&0) {
        return;
    }
    let mut coords = vec![0; shape.len()];
    loop {
        f(&coords);
        // Advance like an odometer; done when every digit wrapped.
        let mut d = shape.len();
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            coords[d] += 1;
            if coords[d] < shape[d] {
                break;
            }
            coords[d] = 0;
        }
    }
}

fn offset(coords: &[usize], strides: &[usize]) -> usize {
    coords.iter().zip(strides).map(|(c, s)| c * s).sum()
}

/// `torch.cat` of `(data, shape)` pieces along `axis`; returns the data and shape.
pub fn concat(inputs: &[(&[f32], &[usize])], axis: usize) -> (Vec<f32>, Vec<usize>) {
    let mut shape = inputs[0].1.to_vec();
    shape[axis] = inputs.iter().map(|(_, s)| s[axis]).sum();
    // For every output position along `axis`, which input and which index in it.
    let sources: Vec<(usize, usize)> = inputs.iter().enumerate().flat_map(|(k, (_, s))| (0..s[axis]).map(move |j| (k, j))).collect();
    let in_strides: Vec<Vec<usize>> = inputs.iter().map(|(_, s)| strides(s)).collect();
    let mut out = Vec::new();
    for_each_coordinate(&shape, |coords| {
        let (k, j) = sources[coords[axis]];
        let mut in_coords = coords.to_vec();
        in_coords[axis] = j;
        out.push(inputs[k].0[offset(&in_coords, &in_strides[k])]);
    });
    (out, shape)
}

/// `x.narrow(axis, start, len)`.
pub fn narrow(x: &[f32], shape: &[usize], axis: usize, start: usize, len: usize) -> (Vec<f32>, Vec<usize>) {
    let mut out_shape = shape.to_vec();
    out_shape[axis] = len;
    let in_strides = strides(shape);
    let mut out = Vec::new();
    for_each_coordinate(&out_shape, |coords| {
        let mut in_coords = coords.to_vec();
        in_coords[axis] += start;
        out.push(x[offset(&in_coords, &in_strides)]);
    });
    (out, out_shape)
}

/// `x.permute(perm)`: output dimension `k` is input dimension `perm[k]`.
pub fn permute(x: &[f32], shape: &[usize], perm: &[usize]) -> (Vec<f32>, Vec<usize>) {
    let out_shape: Vec<usize> = perm.iter().map(|&d| shape[d]).collect();
    let in_strides = strides(shape);
    // Output coordinate k walks input dimension perm[k].
    let walked_strides: Vec<usize> = perm.iter().map(|&d| in_strides[d]).collect();
    let mut out = Vec::new();
    for_each_coordinate(&out_shape, |coords| out.push(x[offset(coords, &walked_strides)]));
    (out, out_shape)
}

/// Nearest 2x upsampling of `[N, C, H, W]` data to `[N, C, 2H, 2W]`.
pub fn upsample_nearest_2x(x: &[f32], shape: [usize; 4]) -> Vec<f32> {
    let [n, c, h, w] = shape;
    let mut out = Vec::with_capacity(4 * x.len());
    for plane in 0..n * c {
        for y in 0..2 * h {
            for xx in 0..2 * w {
                out.push(x[(plane * h + y / 2) * w + xx / 2]);
            }
        }
    }
    out
}
