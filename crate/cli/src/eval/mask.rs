//! Finding the object: the background colour from the image border, every pixel's colour
//! distance to it, and the largest connected region clearly off the background, with the
//! holes it encloses.

use std::collections::VecDeque;

use webdiffusion::image::RgbImage;

/// Pixels this close to the edge estimate the background (objects sit well inside).
const BORDER: usize = 2;
/// The object's contrast is the mean distance of this many most distant pixels: fewer
/// than the smallest object covers, more than a few stray pixels.
const CONTRAST_PIXELS: usize = 20;
/// Below this RGB distance (colours in [0, 1]) nothing stands out: no object.
const MIN_CONTRAST: f32 = 0.15;

pub struct ObjectMask {
    pub width: usize,
    pub height: usize,
    /// Each pixel's RGB distance to the background over the object's contrast: about 1
    /// inside the object, 0 on the background, the antialiased coverage on its edge.
    pub coverage: Vec<f32>,
    /// The largest 8-connected region with coverage above one half.
    pub object: Vec<bool>,
    /// Pixels outside `object` that no 4-connected path of such pixels joins to the border.
    pub holes: Vec<bool>,
    pub pixels: Vec<[f32; 3]>,
}

impl ObjectMask {
    /// The object and its holes: the region its outline encloses.
    pub fn filled(&self, index: usize) -> bool {
        self.object[index] || self.holes[index]
    }

    /// `coverage` clamped to [0, 1] within one pixel of the object and 0 elsewhere, so
    /// that other specks and blobs do not blur into its outline.
    pub fn object_coverage(&self) -> Vec<f32> {
        (0..self.object.len())
            .map(|i| {
                let near = self.object[i] || neighbours(self.width, self.height, i, true).any(|n| self.object[n]);
                if near { self.coverage[i].clamp(0.0, 1.0) } else { 0.0 }
            })
            .collect()
    }
}

/// The object in `image`, or `None` where nothing differs from the background.
pub fn find_object(image: &RgbImage) -> Option<ObjectMask> {
    let (width, height) = (image.width, image.height);
    if width <= 2 * BORDER || height <= 2 * BORDER || image.pixels.len() != width * height * 3 {
        return None;
    }
    let pixels: Vec<[f32; 3]> = image.pixels.chunks(3).map(|p| [0, 1, 2].map(|c| f32::from(p[c]) / 255.0)).collect();
    let border: Vec<[f32; 3]> = (0..width * height)
        .filter(|i| {
            let (x, y) = (i % width, i / width);
            x < BORDER || y < BORDER || x >= width - BORDER || y >= height - BORDER
        })
        .map(|i| pixels[i])
        .collect();
    let background = [0, 1, 2].map(|c| median(border.iter().map(|p| p[c]).collect()));
    let distance: Vec<f32> = pixels.iter().map(|p| (0..3).map(|c| (p[c] - background[c]).powi(2)).sum::<f32>().sqrt()).collect();
    let mut sorted = distance.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let contrast = sorted[..CONTRAST_PIXELS.min(sorted.len())].iter().sum::<f32>() / CONTRAST_PIXELS.min(sorted.len()) as f32;
    if contrast < MIN_CONTRAST {
        return None;
    }
    let coverage: Vec<f32> = distance.iter().map(|d| d / contrast).collect();
    let object = largest_region(width, height, &coverage.iter().map(|&c| c > 0.5).collect::<Vec<_>>());
    let holes = enclosed(width, height, &object);
    Some(ObjectMask { width, height, coverage, object, holes, pixels })
}

fn median(mut values: Vec<f32>) -> f32 {
    values.sort_by(f32::total_cmp);
    values[values.len() / 2]
}

/// The neighbours of pixel `index`: 4-connected, or 8-connected with `diagonal`.
fn neighbours(width: usize, height: usize, index: usize, diagonal: bool) -> impl Iterator<Item = usize> {
    let (x, y) = ((index % width) as isize, (index / width) as isize);
    [(-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, -1), (-1, 1), (1, 1)]
        .into_iter()
        .take(if diagonal { 8 } else { 4 })
        .map(move |(dx, dy)| (x + dx, y + dy))
        .filter(move |&(nx, ny)| nx >= 0 && ny >= 0 && nx < width as isize && ny < height as isize)
        .map(move |(nx, ny)| ny as usize * width + nx as usize)
}

/// Connected regions of `inside` pixels: each pixel's region number (0 outside, regions
/// numbered from 1 in scan order) and every region's size (index 0 unused).
fn regions(width: usize, height: usize, inside: &[bool], diagonal: bool) -> (Vec<usize>, Vec<usize>) {
    let mut label = vec![0; inside.len()];
    let mut sizes = vec![0];
    let mut queue = VecDeque::new();
    for start in 0..inside.len() {
        if !inside[start] || label[start] != 0 {
            continue;
        }
        let id = sizes.len();
        let mut size = 0;
        label[start] = id;
        queue.push_back(start);
        while let Some(i) = queue.pop_front() {
            size += 1;
            for n in neighbours(width, height, i, diagonal) {
                if inside[n] && label[n] == 0 {
                    label[n] = id;
                    queue.push_back(n);
                }
            }
        }
        sizes.push(size);
    }
    (label, sizes)
}

/// The largest 8-connected region of `mask` (the first in scan order among equals).
fn largest_region(width: usize, height: usize, mask: &[bool]) -> Vec<bool> {
    let (label, sizes) = regions(width, height, mask, true);
    let largest = (1..sizes.len()).fold(0, |best, id| if sizes[id] > sizes[best] { id } else { best });
    label.iter().map(|&l| l != 0 && l == largest).collect()
}

/// Pixels outside `object` that cannot reach the border without crossing it.
fn enclosed(width: usize, height: usize, object: &[bool]) -> Vec<bool> {
    let free: Vec<bool> = object.iter().map(|&o| !o).collect();
    let (label, sizes) = regions(width, height, &free, false);
    let mut touches_border = vec![false; sizes.len()];
    for (i, &l) in label.iter().enumerate() {
        let (x, y) = (i % width, i / width);
        if x == 0 || y == 0 || x == width - 1 || y == height - 1 {
            touches_border[l] = true;
        }
    }
    label.iter().map(|&l| l != 0 && !touches_border[l]).collect()
}
