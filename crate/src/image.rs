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
