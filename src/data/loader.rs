//! Batch loader: shuffles per epoch, augments and normalizes on a background thread (the images of
//! a batch in parallel on rayon's pool), and keeps `prefetch` batches ready so the training step
//! never waits on it.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::ImageSet;
use crate::augment::mix::MixConfig;
use crate::augment::transforms::Pipeline;
use crate::augment::{Image, InputTransform, Visit};

/// Normalized images as NCHW f32 plus their labels.
#[derive(Clone, Debug)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    pub height: usize,
    pub width: usize,
    /// Set when MixUp/CutMix mixed the batch: the weight of each image's own label; the rest
    /// belongs to the label at the mirrored position (`labels[len - 1 - i]`).
    pub mix_lambda: Option<f32>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

#[derive(Clone, Debug)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Reshuffle the order each epoch (training) or keep the stored order (evaluation).
    pub shuffle: bool,
    /// Skip the last incomplete batch (training: a 1-image batch breaks BatchNorm statistics).
    pub drop_last: bool,
    pub augment: Option<Pipeline>,
    pub mix: Option<MixConfig>,
    pub input: InputTransform,
    pub prefetch: usize,
    pub seed: u64,
}

/// Seed of the random stream for one (epoch, batch): independent of thread timing, so a run is
/// reproducible and can resume mid-way.
fn stream_seed(seed: u64, epoch: usize, batch: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (epoch as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
        ^ (batch as u64).wrapping_mul(0x94D0_49BB_1331_11EB)
}

/// The image order of an epoch.
pub fn epoch_order(len: usize, config: &LoaderConfig, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if config.shuffle {
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(stream_seed(config.seed, epoch, usize::MAX)));
    }
    order
}

pub fn num_batches(len: usize, config: &LoaderConfig) -> usize {
    if config.drop_last { len / config.batch_size } else { len.div_ceil(config.batch_size) }
}

/// Builds batch `index` of an epoch from `order`. Each image draws from its own seeded stream, so
/// the result does not depend on how rayon schedules the images; transforms that follow an image
/// across epochs get its index in the set and the epoch (`Visit`), not its place in the batch.
pub fn make_batch(set: &ImageSet, order: &[usize], config: &LoaderConfig, epoch: usize, index: usize) -> Batch {
    let start = index * config.batch_size;
    let picks = &order[start..(start + config.batch_size).min(order.len())];
    let (h, w) = (set.height, set.width);
    let augmented = match &config.augment {
        Some(pipeline) => pipeline.output_shape(h, w).expect("the pipeline was checked against the data set's image size"),
        None => (h, w),
    };
    let (out_h, out_w) = config.input.output_shape(augmented.0, augmented.1);
    let plane = 3 * out_h * out_w;
    let batch_seed = stream_seed(config.seed, epoch, index);
    let mut images = vec![0f32; picks.len() * plane];
    images.par_chunks_mut(plane).zip(picks.par_iter()).enumerate().for_each(|(slot, (out, &i))| {
        let mut image = Image::new(set.image(i).to_vec(), h, w);
        if let Some(pipeline) = &config.augment {
            let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(batch_seed, slot, 0));
            // `usize::MAX` stands for "every epoch", as no real epoch reaches it.
            let visit = Visit { image_seed: stream_seed(config.seed, usize::MAX, i), epoch };
            image = pipeline.apply(image, Some(visit), &mut rng);
        }
        config.input.apply(&image, out);
    });
    let mix_lambda =
        config.mix.as_ref().and_then(|mix| mix.apply(&mut images, picks.len(), out_h, out_w, &mut ChaCha8Rng::seed_from_u64(batch_seed)));
    Batch { images, labels: picks.iter().map(|&i| set.labels[i] as i64).collect(), height: out_h, width: out_w, mix_lambda }
}

/// Iterator over one epoch's batches, produced on a background thread.
pub struct EpochLoader {
    receiver: Option<Receiver<Batch>>,
    worker: Option<JoinHandle<()>>,
    remaining: usize,
}

impl EpochLoader {
    /// Starts producing the batches of `epoch`, skipping the first `skip` (for resuming).
    pub fn start(set: Arc<ImageSet>, config: LoaderConfig, epoch: usize, skip: usize) -> Self {
        let total = num_batches(set.len(), &config);
        let (sender, receiver) = sync_channel(config.prefetch.max(1));
        let worker = std::thread::Builder::new()
            .name("ferrovision-loader".into())
            .spawn(move || {
                let order = epoch_order(set.len(), &config, epoch);
                for index in skip..total {
                    // The receiver is gone when training stopped early: stop quietly.
                    if sender.send(make_batch(&set, &order, &config, epoch, index)).is_err() {
                        break;
                    }
                }
            })
            .expect("spawning the loader thread");
        Self { receiver: Some(receiver), worker: Some(worker), remaining: total.saturating_sub(skip) }
    }

    pub fn len(&self) -> usize {
        self.remaining
    }

    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }
}

impl Iterator for EpochLoader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let batch = self.receiver.as_ref()?.recv().ok();
        if batch.is_some() {
            self.remaining -= 1;
        }
        batch
    }
}

impl Drop for EpochLoader {
    fn drop(&mut self) {
        drop(self.receiver.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::transforms::{Context, Transform};
    use crate::augment::{FlipMode, NormalizePreset, PaddingMode};

    fn set(n: usize) -> Arc<ImageSet> {
        let pixels = (0..n * 2 * 2 * 3).map(|i| (i % 251) as u8).collect();
        Arc::new(ImageSet { pixels, labels: (0..n).map(|i| (i % 3) as u16).collect(), height: 2, width: 2 })
    }

    fn config(shuffle: bool, drop_last: bool) -> LoaderConfig {
        LoaderConfig {
            batch_size: 4,
            shuffle,
            drop_last,
            augment: Some(Pipeline {
                transforms: vec![
                    Transform::RandomCrop { size: None, padding: 1, padding_mode: PaddingMode::Reflect },
                    Transform::RandomHorizontalFlip { p: 0.5, mode: FlipMode::Random },
                ],
                context: Context { normalize: NormalizePreset::Cifar10 },
            }),
            mix: None,
            input: InputTransform { size: None, normalize: NormalizePreset::Cifar10 },
            prefetch: 2,
            seed: 3,
        }
    }

    #[test]
    fn covers_every_image_once_per_epoch() {
        let data = set(10);
        let batches: Vec<Batch> = EpochLoader::start(data.clone(), config(true, false), 0, 0).collect();
        assert_eq!(batches.iter().map(Batch::len).collect::<Vec<_>>(), vec![4, 4, 2]);
        let mut labels: Vec<i64> = batches.iter().flat_map(|b| b.labels.clone()).collect();
        labels.sort();
        let mut expected: Vec<i64> = data.labels.iter().map(|&l| l as i64).collect();
        expected.sort();
        assert_eq!(labels, expected);
        assert_eq!(EpochLoader::start(data, config(true, true), 0, 0).count(), 2);
    }

    #[test]
    fn same_seed_same_batches_and_epochs_differ() {
        let data = set(12);
        let run = |epoch| EpochLoader::start(data.clone(), config(true, false), epoch, 0).map(|b| b.images).collect::<Vec<_>>();
        assert_eq!(run(0), run(0));
        assert_ne!(run(0), run(1));
    }

    #[test]
    fn skipping_resumes_with_the_same_batches() {
        let data = set(12);
        let all: Vec<_> = EpochLoader::start(data.clone(), config(true, false), 2, 0).map(|b| b.labels).collect();
        let rest: Vec<_> = EpochLoader::start(data, config(true, false), 2, 1).map(|b| b.labels).collect();
        assert_eq!(&all[1..], &rest[..]);
    }

    /// Which images (by index in the set) an epoch shows mirrored, under a flip of `mode` alone.
    fn mirrored(mode: FlipMode, seed: u64, batch_size: usize, epoch: usize, skip: usize) -> Vec<Option<bool>> {
        // 1x2 images, dark then bright, labelled by their index: a mirrored one starts bright.
        let n = 400;
        let pixels = (0..n).flat_map(|_| [10, 10, 10, 200, 200, 200]).collect();
        let data = Arc::new(ImageSet { pixels, labels: (0..n as u16).collect(), height: 1, width: 2 });
        let config = LoaderConfig {
            batch_size,
            augment: Some(Pipeline {
                transforms: vec![Transform::RandomHorizontalFlip { p: 0.5, mode }],
                context: Context { normalize: NormalizePreset::None },
            }),
            input: InputTransform { size: None, normalize: NormalizePreset::None },
            seed,
            ..config(true, false)
        };
        let mut seen = vec![None; n];
        for batch in EpochLoader::start(data, config, epoch, skip) {
            for (image, &label) in batch.images.chunks(6).zip(&batch.labels) {
                seen[label as usize] = Some(image[0] > image[1]);
            }
        }
        seen
    }

    #[test]
    fn alternating_flip_mirrors_each_image_once_in_any_two_epochs() {
        let epochs: Vec<Vec<Option<bool>>> = (0..4).map(|e| mirrored(FlipMode::Alternate, 3, 32, e, 0)).collect();
        for pair in epochs.windows(2) {
            assert!(pair[0].iter().zip(&pair[1]).all(|(a, b)| a.is_some() && b.is_some() && a != b), "an image kept its side");
        }
        let first = epochs[0].iter().filter(|m| **m == Some(true)).count();
        assert!((160..=240).contains(&first), "{first} of 400 mirrored in the first epoch");
        // A function of seed, epoch and image: not of the batch an image lands in, nor of where
        // a resumed epoch starts; another seed picks other images.
        assert_eq!(mirrored(FlipMode::Alternate, 3, 7, 2, 0), epochs[0]);
        let resumed = mirrored(FlipMode::Alternate, 3, 32, 3, 5);
        assert!(resumed.iter().zip(&epochs[3]).all(|(r, full)| r.is_none() || r == full));
        assert_eq!(resumed.iter().flatten().count(), 400 - 5 * 32);
        assert_ne!(mirrored(FlipMode::Alternate, 4, 32, 0, 0), epochs[0]);
        // A random flip shows many images the same way in two epochs running.
        let (a, b) = (mirrored(FlipMode::Random, 3, 32, 0, 0), mirrored(FlipMode::Random, 3, 32, 1, 0));
        assert!(a.iter().zip(&b).filter(|(a, b)| a == b).count() > 100);
    }

    #[test]
    fn dropping_early_stops_the_worker() {
        let mut loader = EpochLoader::start(set(100), config(true, false), 0, 0);
        assert!(loader.next().is_some());
        drop(loader);
    }
}
