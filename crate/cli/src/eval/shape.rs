//! The object's shape from simple geometry. A hole it encloses makes a ring. Otherwise the
//! outline's radial profile r(θ) around the centroid decides: its 3rd, 4th and 5th Fourier
//! harmonics single out a triangle, a four-cornered shape and a five-pointed star from a
//! round blob, and where the 4th one peaks (on the axes or the diagonals) tells a diamond or
//! a cross (whose arms make a much larger harmonic) from a square.

use super::mask::ObjectMask;

/// The training data's shapes, in its order (`models/train/shapes.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
    Ring,
    Cross,
    Diamond,
}

impl Shape {
    pub const ALL: [Shape; 7] = [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Star, Shape::Ring, Shape::Cross, Shape::Diamond];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Ring => "ring",
            Shape::Cross => "cross",
            Shape::Diamond => "diamond",
        }
    }

    pub fn from_name(name: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|shape| shape.name() == name)
    }
}

/// Rays of the radial profile: 16 samples per period of the 4th harmonic.
const RAYS: usize = 64;
/// Each ray walks inward from beyond the object in steps of this many pixels.
const RAY_STEP: f32 = 0.125;
/// Holes over this share of the enclosed area make a ring: the data's rings have about
/// 19%, stray enclosed pixels far less.
const RING_HOLE_SHARE: f32 = 0.04;
/// Harmonics under this (relative to the mean radius) are a round outline: the data's
/// circles measure under 0.01, its cornered shapes 0.13 or more.
const ROUND_LIMIT: f32 = 0.07;
/// A 4th harmonic over this is a cross's arms (0.35 or more), not a diamond's corners (0.14).
const CROSS_LIMIT: f32 = 0.25;

/// The shape of `mask`'s object, whose centroid is `centre` (x, y in pixels) and whose
/// farthest pixel lies `reach` pixels from it.
pub fn classify(mask: &ObjectMask, centre: [f32; 2], reach: f32) -> Shape {
    let enclosed = (0..mask.object.len()).filter(|&i| mask.filled(i)).count();
    let holes = mask.holes.iter().filter(|&&h| h).count();
    if holes as f32 > RING_HOLE_SHARE * enclosed as f32 {
        return Shape::Ring;
    }
    let profile = radial_profile(mask, centre, reach);
    let total: f32 = profile.iter().sum();
    if total <= 0.0 {
        return Shape::Circle;
    }
    let harmonic = |k: usize| {
        let (mut re, mut im) = (0.0f32, 0.0f32);
        for (j, r) in profile.iter().enumerate() {
            let angle = k as f32 * angle_of_ray(j);
            re += r * angle.cos();
            im -= r * angle.sin();
        }
        (2.0 * re.hypot(im) / total, re)
    };
    let [(three, _), (four, four_on_axes), (five, _)] = [3, 4, 5].map(harmonic);
    if three.max(four).max(five) < ROUND_LIMIT {
        Shape::Circle
    } else if five >= three && five >= four {
        Shape::Star
    } else if three >= four {
        Shape::Triangle
    } else if four_on_axes > 0.0 {
        // Corners at 0, 90, 180 and 270 degrees.
        if four > CROSS_LIMIT { Shape::Cross } else { Shape::Diamond }
    } else {
        Shape::Square
    }
}

fn angle_of_ray(j: usize) -> f32 {
    std::f32::consts::TAU * j as f32 / RAYS as f32
}

/// The outline's distance from `centre` along each ray: where the object's coverage,
/// interpolated bilinearly, first reaches one half walking inward from beyond `reach`
/// (so a star's arms and a ring's outer edge count, not the gaps between them).
fn radial_profile(mask: &ObjectMask, centre: [f32; 2], reach: f32) -> Vec<f32> {
    let coverage = mask.object_coverage();
    let at = |x: isize, y: isize| {
        if x < 0 || y < 0 || x >= mask.width as isize || y >= mask.height as isize {
            0.0
        } else {
            coverage[y as usize * mask.width + x as usize]
        }
    };
    // Pixel (i, j) has its centre at (i + 0.5, j + 0.5).
    let sample = |x: f32, y: f32| {
        let (u, v) = (x - 0.5, y - 0.5);
        let (x0, y0) = (u.floor(), v.floor());
        let (fx, fy) = (u - x0, v - y0);
        let (x0, y0) = (x0 as isize, y0 as isize);
        (1.0 - fy) * ((1.0 - fx) * at(x0, y0) + fx * at(x0 + 1, y0)) + fy * ((1.0 - fx) * at(x0, y0 + 1) + fx * at(x0 + 1, y0 + 1))
    };
    (0..RAYS)
        .map(|j| {
            let (dx, dy) = (angle_of_ray(j).cos(), -angle_of_ray(j).sin());
            let steps = ((reach + 2.0) / RAY_STEP) as usize;
            (0..=steps)
                .map(|s| (steps - s) as f32 * RAY_STEP)
                .find(|&r| sample(centre[0] + dx * r, centre[1] + dy * r) >= 0.5)
                .unwrap_or(0.0)
        })
        .collect()
}
