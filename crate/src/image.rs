//! Decoded images to pixels and PNG files, post-processed as diffusers does:
//! `(x / 2 + 0.5).clamp(0, 1)`, times 255, rounded half to even (numpy's round).

use crate::error::{Error, Result};

/// 8-bit RGB pixels, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

/// `values` of shape `[B, 3, H, W]` in [-1, 1] (a VAE's output) to `B` images.
pub fn from_decoded(values: &[f32], shape: &[usize]) -> Result<Vec<RgbImage>> {
    let &[batch, 3, height, width] = shape else {
        return Err(Error::shape("image", format!("a decoded image is [B, 3, H, W], got {shape:?}")));
    };
    if values.len() != batch * 3 * height * width {
        return Err(Error::shape("image", format!("{} values for shape {shape:?}", values.len())));
    }
    let plane = height * width;
    let to_byte = |v: f32| ((v / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round_ties_even() as u8;
    Ok(values
        .chunks(3 * plane)
        .map(|image| RgbImage {
            width,
            height,
            pixels: (0..plane).flat_map(|p| (0..3).map(move |c| to_byte(image[c * plane + p]))).collect(),
        })
        .collect())
}

/// A PNG file; `parameters` becomes the text chunk AUTOMATIC1111 writes (and reads
/// back) with how the image was made: tEXt when it is Latin-1, else iTXt (UTF-8).
pub fn encode_png(image: &RgbImage, parameters: Option<&str>) -> Result<Vec<u8>> {
    let err = |e: png::EncodingError| Error::Format { file: "PNG".into(), detail: e.to_string() };
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, image.width as u32, image.height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    if let Some(text) = parameters {
        if text.chars().all(|c| (c as u32) < 256) {
            encoder.add_text_chunk("parameters".into(), text.into()).map_err(err)?;
        } else {
            encoder.add_itxt_chunk("parameters".into(), text.into()).map_err(err)?;
        }
    }
    let mut writer = encoder.write_header().map_err(err)?;
    writer.write_image_data(&image.pixels).map_err(err)?;
    writer.finish().map_err(err)?;
    Ok(bytes)
}

/// Reads a PNG as 8-bit RGB (grey, palette, alpha and 16-bit inputs are converted).
pub fn decode_png(bytes: &[u8]) -> Result<RgbImage> {
    let err = |e: png::DecodingError| Error::Format { file: "PNG".into(), detail: e.to_string() };
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(err)?;
    let size = reader.output_buffer_size().ok_or_else(|| Error::Format { file: "PNG".into(), detail: "image too large".into() })?;
    let mut buffer = vec![0; size];
    let info = reader.next_frame(&mut buffer).map_err(err)?;
    buffer.truncate(info.buffer_size());
    let pixels = match info.color_type {
        png::ColorType::Rgb => buffer,
        png::ColorType::Rgba => buffer.chunks(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        png::ColorType::Grayscale => buffer.iter().flat_map(|&g| [g, g, g]).collect(),
        png::ColorType::GrayscaleAlpha => buffer.chunks(2).flat_map(|p| [p[0], p[0], p[0]]).collect(),
        other => return Err(Error::Format { file: "PNG".into(), detail: format!("colour type {other:?} after expansion") }),
    };
    Ok(RgbImage { width: info.width as usize, height: info.height as usize, pixels })
}

impl RgbImage {
    /// `[1, 3, H, W]` values in [-1, 1], as diffusers' image processor prepares an image.
    pub fn to_model_input(&self) -> Vec<f32> {
        let plane = self.width * self.height;
        (0..3).flat_map(|c| (0..plane).map(move |p| (c, p))).map(|(c, p)| self.pixels[p * 3 + c] as f32 / 255.0 * 2.0 - 1.0).collect()
    }

    /// `[1, 1, H, W]` of 0 and 1: a mask as diffusers' mask processor makes it (grey
    /// by PIL's `convert("L")`, then `>= 0.5`; white means repaint).
    pub fn to_binary_mask(&self) -> Vec<f32> {
        self.pixels
            .chunks(3)
            .map(|p| {
                // PIL's ITU-R 601-2 luma, in integers as PIL rounds it.
                let luma = (p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16;
                if luma as f32 / 255.0 >= 0.5 { 1.0 } else { 0.0 }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postprocessing_rounds_like_numpy_and_clamps() {
        // x = 2 * (k / 255) - 1 gives exactly k; 0.5/255 steps sit on the rounding edge.
        let values = [-1.0, 1.0, 3.0, -7.0, 0.0, 2.0 * (127.5 / 255.0) - 1.0];
        let images = from_decoded(&values, &[1, 3, 1, 2]).unwrap();
        // Pixel 0 takes values 0, 2, 4 of the planes; pixel 1 takes 1, 3, 5.
        assert_eq!(images[0].pixels, vec![0, 255, 128, 255, 0, 128]);
        assert!(from_decoded(&values, &[1, 3, 2, 2]).is_err());
        assert!(from_decoded(&values, &[6]).is_err());
    }

    #[test]
    fn png_round_trips_with_its_parameters() {
        let image = RgbImage { width: 2, height: 1, pixels: vec![1, 2, 3, 250, 251, 252] };
        for text in ["a cat\nSteps: 20, Sampler: ddim", "café 日本 🤖\nSeed: 1"] {
            let bytes = encode_png(&image, Some(text)).unwrap();
            let decoder = png::Decoder::new(std::io::Cursor::new(&bytes));
            let mut reader = decoder.read_info().unwrap();
            let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
            reader.next_frame(&mut pixels).unwrap();
            assert_eq!(pixels, image.pixels);
            let info = reader.info();
            let found: Vec<String> = info
                .uncompressed_latin1_text
                .iter()
                .map(|c| c.text.clone())
                .chain(info.utf8_text.iter().map(|c| c.get_text().unwrap()))
                .collect();
            assert_eq!(found, vec![text.to_string()]);
        }
    }
}
