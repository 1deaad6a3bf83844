//! `ferrovision augment preview`: a labelled PNG grid of training images next to augmented copies,
//! so a policy can be checked by eye before hours of training.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::canvas::{self, Section};
use crate::augment::Image;
use crate::augment::transforms::Pipeline;
use crate::data::ImageSet;

/// A grid with one row per picked image: the original, then `copies` augmented versions (each
/// from its own seeded stream), every cell scaled up `zoom` times (nearest neighbour, so pixels
/// stay visible) and labelled above: the class name over the original, `#k` over the copies.
pub fn grid(set: &ImageSet, classes: &[String], pipeline: &Pipeline, picks: &[usize], copies: usize, zoom: usize, seed: u64) -> Image {
    let sections: Vec<Section> = picks
        .iter()
        .map(|&i| {
            let original = Image::new(set.image(i).to_vec(), set.height, set.width);
            let class = classes.get(set.labels[i] as usize).cloned().unwrap_or_default();
            let mut cells = vec![(class, original.clone())];
            cells.extend((1..=copies).map(|k| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ ((i as u64) << 20) ^ (k - 1) as u64);
                (format!("#{k}"), pipeline.apply(original.clone(), None, &mut rng))
            }));
            Section { title: None, cells, columns: copies + 1, zoom }
        })
        .collect();
    canvas::render(&sections)
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
            if let Some(i) = queue.pop_front()
                && picks.len() < count
            {
                picks.push(i);
            }
        }
    }
    picks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::transforms::{Context, Transform};
    use crate::augment::{FlipMode, NormalizePreset};
    use crate::viz::canvas::{GAP, LABEL_HEIGHT, TEXT};

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
            transforms: vec![Transform::RandomHorizontalFlip { p: 1.0, mode: FlipMode::Random }],
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
