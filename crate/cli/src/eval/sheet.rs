//! A contact sheet: images side by side in a grid, as `--score-sheet` reads them; and one
//! tile of such a sheet back.

use webdiffusion::image::RgbImage;

/// `images` (all of one size) in rows of `columns`; empty cells stay black.
pub fn contact_sheet(images: &[RgbImage], columns: usize) -> RgbImage {
    let (tile_w, tile_h) = images.first().map_or((0, 0), |i| (i.width, i.height));
    let columns = columns.clamp(1, images.len().max(1));
    let rows = images.len().div_ceil(columns);
    let (width, height) = (columns * tile_w, rows * tile_h);
    let mut pixels = vec![0u8; width * height * 3];
    for (index, image) in images.iter().enumerate() {
        let (x0, y0) = ((index % columns) * tile_w, (index / columns) * tile_h);
        for (y, row) in image.pixels.chunks_exact(tile_w * 3).enumerate() {
            let to = ((y0 + y) * width + x0) * 3;
            pixels[to..to + row.len()].copy_from_slice(row);
        }
    }
    RgbImage { width, height, pixels }
}

/// Tile `index` of a sheet of `size`-pixel tiles laid out `columns` to a row.
pub fn tile(sheet: &RgbImage, index: usize, size: usize, columns: usize) -> RgbImage {
    let (x0, y0) = ((index % columns) * size, (index / columns) * size);
    let pixels = (0..size)
        .flat_map(|y| (0..size * 3).map(move |i| (y, i)))
        .map(|(y, i)| sheet.pixels[((y0 + y) * sheet.width + x0) * 3 + i])
        .collect();
    RgbImage { width: size, height: size, pixels }
}

#[cfg(test)]
mod tests {
    use super::{RgbImage, contact_sheet, tile};

    #[test]
    fn tiles_in_rows() {
        let one = |v: u8| RgbImage { width: 1, height: 1, pixels: vec![v, v, v] };
        let sheet = contact_sheet(&[one(1), one(2), one(3)], 2);
        assert_eq!((sheet.width, sheet.height), (2, 2));
        let row = |y: usize| (0..2).map(|x| sheet.pixels[(y * 2 + x) * 3]).collect::<Vec<_>>();
        assert_eq!([row(0), row(1)], [vec![1, 2], vec![3, 0]]);
    }

    #[test]
    fn a_tile_comes_back_whole() {
        let image = |v: u8| RgbImage { width: 2, height: 2, pixels: (0..12).map(|i| v + i).collect() };
        let images: Vec<RgbImage> = (0..5).map(|k| image(20 * k)).collect();
        let sheet = contact_sheet(&images, 3);
        for (index, want) in images.iter().enumerate() {
            assert_eq!(tile(&sheet, index, 2, 3), *want, "tile {index}");
        }
    }
}
