//! What a one-object image shows, read by fixed rules (no learned model): the object's
//! colour from the hue and saturation of its core, its shape from its outline (`shape`), its position
//! cell from its centroid and its size from its reach.

use webdiffusion::image::RgbImage;

use super::mask::find_object;
use super::shape::{Shape, classify};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Analysis {
    /// Index into the palette.
    pub colour: usize,
    pub shape: Shape,
    /// 3x3 grid cell in reading order.
    pub cell: usize,
    pub large: bool,
}

/// Pixels whose coverage exceeds this are the object's core: its colour unmixed with the
/// background's along the antialiased edge.
const CORE_COVERAGE: f32 = 0.75;
/// The reach dividing small from large, as a fraction of the image width: at 64 pixels the
/// data's small objects (radius 6.5 px +- 8%) reach at most 8.2 px, its large ones 10.5 px.
const LARGE_REACH: f32 = 9.2 / 64.0;

/// Reads `image`, naming colours after the nearest of `palette` (RGB in [0, 1]); `None`
/// when nothing stands out from the background.
pub fn analyse(image: &RgbImage, palette: &[[f32; 3]]) -> Option<Analysis> {
    let mask = find_object(image)?;
    let width = mask.width;
    let filled: Vec<[f32; 2]> =
        (0..mask.object.len()).filter(|&i| mask.filled(i)).map(|i| [(i % width) as f32 + 0.5, (i / width) as f32 + 0.5]).collect();
    let count = filled.len() as f32;
    let centre = [filled.iter().map(|p| p[0]).sum::<f32>() / count, filled.iter().map(|p| p[1]).sum::<f32>() / count];
    let reach = filled.iter().map(|p| (p[0] - centre[0]).hypot(p[1] - centre[1])).fold(0.0, f32::max) + 0.5;

    let core: Vec<[f32; 3]> =
        (0..mask.object.len()).filter(|&i| mask.object[i] && mask.coverage[i] > CORE_COVERAGE).map(|i| mask.pixels[i]).collect();
    let mean = [0, 1, 2].map(|c| core.iter().map(|p| p[c]).sum::<f32>() / core.len().max(1) as f32);
    let colour = nearest_colour(mean, palette);

    let third = |v: f32, extent: usize| ((v * 3.0 / extent as f32) as usize).min(2);
    Some(Analysis {
        colour,
        shape: classify(&mask, centre, reach),
        cell: third(centre[1], mask.height) * 3 + third(centre[0], width),
        large: reach > LARGE_REACH * width as f32,
    })
}

/// Hue in degrees [0, 360); 0 for greys.
fn hue([r, g, b]: [f32; 3]) -> f32 {
    let (max, min) = (r.max(g).max(b), r.min(g).min(b));
    let chroma = max - min;
    if chroma <= f32::EPSILON {
        return 0.0;
    }
    let sector = if max == r {
        ((g - b) / chroma).rem_euclid(6.0)
    } else if max == g {
        (b - r) / chroma + 2.0
    } else {
        (r - g) / chroma + 4.0
    };
    60.0 * sector
}

/// A colour's point on the HSV hue-saturation disc: the angle is its hue, the radius its
/// saturation. Hue alone would name pink (a red-magenta with white in it) red.
fn hue_saturation(rgb: [f32; 3]) -> [f32; 2] {
    let max = rgb[0].max(rgb[1]).max(rgb[2]);
    let saturation = if max > 0.0 { 1.0 - rgb[0].min(rgb[1]).min(rgb[2]) / max } else { 0.0 };
    let angle = hue(rgb).to_radians();
    [saturation * angle.cos(), saturation * angle.sin()]
}

/// The palette colour nearest to `rgb` on the hue-saturation disc.
fn nearest_colour(rgb: [f32; 3], palette: &[[f32; 3]]) -> usize {
    let [x, y] = hue_saturation(rgb);
    let distance = |reference: &[f32; 3]| {
        let [px, py] = hue_saturation(*reference);
        (x - px).hypot(y - py)
    };
    (0..palette.len()).min_by(|&a, &b| distance(&palette[a]).total_cmp(&distance(&palette[b]))).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use webdiffusion::image::{RgbImage, decode_png};

    use super::{Shape, analyse, hue, nearest_colour};
    use crate::{prompt_list, sheet_outcomes};

    /// The analyser's own proof: it reads the training data generator's images of every
    /// evaluation prompt (two jittered draws each) right.
    #[test]
    fn reads_the_generators_images_right() {
        let list = prompt_list().unwrap();
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/eval/ground_truth.png");
        let outcomes = sheet_outcomes(&list, &decode_png(&std::fs::read(file).unwrap()).unwrap(), file).unwrap();
        assert_eq!(outcomes.len(), 128, "every prompt twice");
        let (mut colour, mut shape, mut cell, mut size) = (0, 0, 0, 0);
        for outcome in &outcomes {
            let prompt = &list.prompts[outcome.prompt];
            let Some(found) = &outcome.analysis else { continue };
            colour += usize::from(Some(found.colour) == list.colour_index(&prompt.colour));
            shape += usize::from(Some(found.shape) == Shape::from_name(&prompt.shape));
            cell += usize::from(found.cell == prompt.cell);
            size += usize::from(found.large == (prompt.size == "large"));
        }
        let share = |right: usize| right as f64 / outcomes.len() as f64;
        eprintln!("ground truth: colour {colour}, shape {shape}, cell {cell}, size {size} of {}", outcomes.len());
        for (what, right) in [("colour", colour), ("shape", shape), ("position", cell), ("size", size)] {
            assert!(share(right) >= 0.95, "{what}: {right} of {} right", outcomes.len());
        }
    }

    #[test]
    fn a_plain_image_has_no_object() {
        let plain = RgbImage { width: 64, height: 64, pixels: [30, 60, 200].repeat(64 * 64) };
        assert_eq!(analyse(&plain, &[[1.0, 0.0, 0.0]]), None);
    }

    #[test]
    fn pink_is_not_red() {
        let palette = [[0.9, 0.1, 0.1], [1.0, 0.45, 0.75], [1.0, 0.55, 0.0]];
        // Salmon pink has a red hue but white mixed in; a deep orange-red is red.
        assert_eq!(nearest_colour([1.0, 0.5, 0.55], &palette), 1);
        assert_eq!(nearest_colour([0.95, 0.2, 0.12], &palette), 0);
        assert_eq!(nearest_colour([1.0, 0.6, 0.1], &palette), 2);
    }

    #[test]
    fn hues_of_the_primaries() {
        assert_eq!(hue([1.0, 0.0, 0.0]), 0.0);
        assert_eq!(hue([0.0, 1.0, 0.0]), 120.0);
        assert_eq!(hue([0.0, 0.0, 1.0]), 240.0);
        assert_eq!(hue([1.0, 0.0, 1.0]), 300.0);
        assert_eq!(hue([0.5, 0.5, 0.5]), 0.0);
    }
}
