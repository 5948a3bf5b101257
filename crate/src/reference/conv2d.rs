//! CPU reference for 2-d convolution (NCHW, f64 accumulation), straight from the definition.

/// `x` `[N, C, H, W]` convolved with `weight` `[OC, C, KH, KW]` plus `bias` `[OC]`, with
/// zero padding `[top, bottom, left, right]`: the `[N, OC, OH, OW]` result and its shape.
///
/// Panics if the shapes disagree or the kernel does not fit; this is test code.
pub fn conv2d(
    x: &[f32],
    x_shape: [usize; 4],
    weight: &[f32],
    weight_shape: [usize; 4],
    bias: Option<&[f32]>,
    stride: usize,
    padding: [usize; 4],
) -> (Vec<f32>, [usize; 4]) {
    let [batch, channels, height, width] = x_shape;
    let [out_channels, weight_channels, kernel_h, kernel_w] = weight_shape;
    let [top, bottom, left, right] = padding;
    assert_eq!(channels, weight_channels, "input and weight channels");
    assert_eq!(x.len(), x_shape.iter().product::<usize>(), "input length");
    assert_eq!(weight.len(), weight_shape.iter().product::<usize>(), "weight length");
    let out_h = (height + top + bottom - kernel_h) / stride + 1;
    let out_w = (width + left + right - kernel_w) / stride + 1;

    // The input value at padded coordinates (py, px), zero in the padding.
    let input = |n: usize, c: usize, py: usize, px: usize| -> f64 {
        if py < top || px < left || py - top >= height || px - left >= width {
            return 0.0;
        }
        x[((n * channels + c) * height + py - top) * width + px - left] as f64
    };
    let mut out = Vec::with_capacity(batch * out_channels * out_h * out_w);
    for n in 0..batch {
        for oc in 0..out_channels {
            for oy in 0..out_h {
                for ox in 0..out_w {
                    let mut sum = bias.map_or(0.0, |b| b[oc] as f64);
                    for c in 0..channels {
                        for ky in 0..kernel_h {
                            for kx in 0..kernel_w {
                                let w = weight[((oc * channels + c) * kernel_h + ky) * kernel_w + kx] as f64;
                                sum += w * input(n, c, oy * stride + ky, ox * stride + kx);
                            }
                        }
                    }
                    out.push(sum as f32);
                }
            }
        }
    }
    (out, [batch, out_channels, out_h, out_w])
}
