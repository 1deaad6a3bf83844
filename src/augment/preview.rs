//! `ferrovision augment preview`: a labelled PNG grid of training images next to augmented copies,
//! so a policy can be checked by eye before hours of training.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::Image;
use super::transforms::Pipeline;
use crate::data::ImageSet;

/// Height of the text line above each cell (8x8 font scaled by 1, plus a margin).
const LABEL_HEIGHT: usize = 12;
const GAP: usize = 4;
const BACKGROUND: [u8; 3] = [255, 255, 255];
const TEXT: [u8; 3] = [20, 20, 20];

/// A grid with one row per picked image: the original, then `copies` augmented versions (each
/// from its own seeded stream), every cell scaled up `zoom` times (nearest neighbour, so pixels
/// stay visible) and labelled above: the class name over the original, `#k` over the copies.
pub fn grid(set: &ImageSet, classes: &[String], pipeline: &Pipeline, picks: &[usize], copies: usize, zoom: usize, seed: u64) -> Image {
    let rows: Vec<Vec<Image>> = picks
        .iter()
        .map(|&i| {
            let original = Image::new(set.image(i).to_vec(), set.height, set.width);
            let mut row = vec![original.clone()];
            row.extend((0..copies).map(|k| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ ((i as u64) << 20) ^ k as u64);
                pipeline.apply(original.clone(), &mut rng)
            }));
            row
        })
        .collect();
    let cell_h = rows.iter().flatten().map(|c| c.height).max().unwrap_or(0) * zoom;
    let cell_w = rows.iter().flatten().map(|c| c.width).max().unwrap_or(0) * zoom;
    let (height, width) = (rows.len() * (cell_h + LABEL_HEIGHT + GAP) + GAP, (copies + 1) * (cell_w + GAP) + GAP);
    let mut canvas = Image::new(BACKGROUND.repeat(height * width), height, width);
    for (r, (row, &pick)) in rows.iter().zip(picks).enumerate() {
        let top = GAP + r * (cell_h + LABEL_HEIGHT + GAP);
        for (c, cell) in row.iter().enumerate() {
            let left = GAP + c * (cell_w + GAP);
            let label = if c == 0 { classes.get(set.labels[pick] as usize).cloned().unwrap_or_default() } else { format!("#{c}") };
            draw_text(&mut canvas, top + 2, left, &label, cell_w);
            blit_zoomed(&mut canvas, cell, top + LABEL_HEIGHT, left, zoom);
        }
    }
    canvas
}

/// `count` images spread over the classes: the first image of each class in turn.
pub fn pick_images(set: &ImageSet, count: usize) -> Vec<usize> {
    let classes = set.labels.iter().map(|&l| l as usize + 1).max().unwrap_or(0);
    let mut by_class: Vec<std::collections::VecDeque<usize>> = vec![Default::default(); classes];
    for (i, &l) in set.labels.iter().enumerate() {
        by_class[l as usize].push_back(i);
    }
    let mut picks = Vec::with_capacity(count);
    while picks.len() < count.min(set.len()) {
        for queue in &mut by_class {
            if let Some(i) = queue.pop_front() {
                if picks.len() < count {
                    picks.push(i);
                }
            }
        }
    }
    picks
}

fn blit_zoomed(canvas: &mut Image, cell: &Image, top: usize, left: usize, zoom: usize) {
    for y in 0..cell.height * zoom {
        for x in 0..cell.width * zoom {
            let src = ((y / zoom) * cell.width + x / zoom) * 3;
            let dst = ((top + y) * canvas.width + left + x) * 3;
            canvas.pixels[dst..dst + 3].copy_from_slice(&cell.pixels[src..src + 3]);
        }
    }
}

/// ASCII text in the 8x8 font, cut at `max_width` pixels.
fn draw_text(canvas: &mut Image, top: usize, left: usize, text: &str, max_width: usize) {
    for (n, ch) in text.chars().take(max_width / 8).enumerate() {
        let glyph = font8x8::legacy::BASIC_LEGACY[if ch.is_ascii() { ch as usize } else { '?' as usize }];
        for (dy, bits) in glyph.iter().enumerate() {
            for dx in 0..8 {
                if bits >> dx & 1 == 1 {
                    let dst = ((top + dy) * canvas.width + left + n * 8 + dx) * 3;
                    canvas.pixels[dst..dst + 3].copy_from_slice(&TEXT);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::NormalizePreset;
    use crate::augment::transforms::{Context, Transform};

    fn set() -> ImageSet {
        let pixels = (0..6 * 4 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
        ImageSet { pixels, labels: vec![0, 0, 1, 1, 2, 2], height: 4, width: 4 }
    }

    #[test]
    fn picks_cycle_through_the_classes() {
        assert_eq!(pick_images(&set(), 4), vec![0, 2, 4, 1]);
        assert_eq!(pick_images(&set(), 10).len(), 6);
    }

    #[test]
    fn grid_holds_the_original_and_the_copies_at_the_zoom() {
        let pipeline = Pipeline {
            transforms: vec![Transform::RandomHorizontalFlip { p: 1.0 }],
            context: Context { normalize: NormalizePreset::Cifar10 },
        };
        let classes = vec!["cat".to_string(), "dog".into(), "emu".into()];
        let grid = grid(&set(), &classes, &pipeline, &[2], 2, 3, 0);
        let cell = 4 * 3;
        assert_eq!((grid.height, grid.width), (GAP + cell + LABEL_HEIGHT + GAP, GAP + 3 * (cell + GAP)));
        let pixel = |y: usize, x: usize| grid.pixels[(y * grid.width + x) * 3..][..3].to_vec();
        let original = Image::new(set().image(2).to_vec(), 4, 4);
        // Top-left pixel of the original cell, and of the first (flipped) copy.
        let top = GAP + LABEL_HEIGHT;
        assert_eq!(pixel(top, GAP), original.pixels[..3].to_vec());
        assert_eq!(pixel(top, 2 * GAP + cell), original.pixels[9..12].to_vec());
        // The label row has dark text pixels.
        assert!((GAP..GAP + LABEL_HEIGHT).any(|y| (GAP..GAP + cell).any(|x| pixel(y, x) == TEXT.to_vec())));
    }
}
