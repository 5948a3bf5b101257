//! How far one 8-bit image is from another: mean squared error (for PSNR) and SSIM.

use webdiffusion::image::RgbImage;

/// Mean squared error over all channels of two images of one size, in 8-bit levels, and
/// the largest difference.
pub fn squared_error(a: &RgbImage, b: &RgbImage) -> (f64, u8) {
    let mut sum = 0.0;
    let mut max = 0u8;
    for (x, y) in a.pixels.iter().zip(&b.pixels) {
        let d = x.abs_diff(*y);
        sum += f64::from(d) * f64::from(d);
        max = max.max(d);
    }
    (sum / a.pixels.len().max(1) as f64, max)
}

pub fn psnr(mse: f64) -> String {
    if mse == 0.0 { "identical".into() } else { format!("{:.2} dB", 10.0 * (255.0f64 * 255.0 / mse).log10()) }
}

/// Rec. 601 luma of each pixel, 0 to 255.
fn luma(image: &RgbImage) -> Vec<f64> {
    image.pixels.chunks_exact(3).map(|p| 0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2])).collect()
}

/// `values` (`width` to a row) blurred by a normalised 11-tap Gaussian of sigma 1.5 in both
/// directions, edges clamped.
fn gaussian_blur(values: &[f64], width: usize) -> Vec<f64> {
    const RADIUS: isize = 5;
    let weights: Vec<f64> = (-RADIUS..=RADIUS).map(|i| (-((i * i) as f64) / (2.0 * 1.5 * 1.5)).exp()).collect();
    let total: f64 = weights.iter().sum();
    let height = values.len() / width;
    let pass = |src: &[f64], dx: isize, dy: isize| -> Vec<f64> {
        let mut out = vec![0.0; src.len()];
        for y in 0..height as isize {
            for x in 0..width as isize {
                let mut sum = 0.0;
                for (k, w) in weights.iter().enumerate() {
                    let o = k as isize - RADIUS;
                    let sx = (x + o * dx).clamp(0, width as isize - 1);
                    let sy = (y + o * dy).clamp(0, height as isize - 1);
                    sum += w * src[(sy * width as isize + sx) as usize];
                }
                out[(y * width as isize + x) as usize] = sum / total;
            }
        }
        out
    };
    pass(&pass(values, 1, 0), 0, 1)
}

/// The mean structural similarity of the two images' luma (Wang, Bovik, Sheikh and
/// Simoncelli 2004: Gaussian windows of sigma 1.5, K1 0.01, K2 0.03): 1 for identical images.
pub fn ssim(a: &RgbImage, b: &RgbImage) -> f64 {
    let (x, y) = (luma(a), luma(b));
    let product = |p: &[f64], q: &[f64]| p.iter().zip(q).map(|(u, v)| u * v).collect::<Vec<_>>();
    let blur = |v: &[f64]| gaussian_blur(v, a.width);
    let (mx, my) = (blur(&x), blur(&y));
    let (xx, yy, xy) = (blur(&product(&x, &x)), blur(&product(&y, &y)), blur(&product(&x, &y)));
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let sum: f64 = (0..x.len())
        .map(|i| {
            let (vx, vy, cov) = (xx[i] - mx[i] * mx[i], yy[i] - my[i] * my[i], xy[i] - mx[i] * my[i]);
            ((2.0 * mx[i] * my[i] + c1) * (2.0 * cov + c2)) / ((mx[i] * mx[i] + my[i] * my[i] + c1) * (vx + vy + c2))
        })
        .sum();
    sum / x.len().max(1) as f64
}
