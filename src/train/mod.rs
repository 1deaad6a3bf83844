//! Training: the loop itself is `trainer::Trainer::fit`; the steps it is made of (forward and
//! backward, one optimizer step, accuracy counting) are here, for the benchmarks and tests too.

pub mod callbacks;
pub mod config;
pub mod ema;
mod epoch;
pub mod evaluate;
pub mod feature_cache;
pub mod loss;
pub mod optim;
pub mod param_groups;
pub mod precision;
pub mod resume;
pub mod robustness;
pub mod schedule;
pub mod sweep;
#[cfg(test)]
pub(crate) mod test_support;
pub mod trainer;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Result, bail};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::TensorData;

use crate::config::ExperimentConfig;
use crate::data::classes::ClassNames;
use crate::data::loader::{Batch, LoaderConfig, make_batch};
use crate::data::{self, ImageSet};
use crate::models::{self, Classifier};
use crate::tracking::{RunDir, RunSummary};
pub use evaluate::{EvalResult, EvalSettings, RunEvaluation, Tta, evaluate, evaluate_run};
pub use precision::{MixedPrecision, Precision};
pub use trainer::{Start, Trainer};

/// The splits a run trains, validates and tests on.
pub struct TrainingData {
    pub classes: ClassNames,
    pub train: Arc<ImageSet>,
    pub val: Option<ImageSet>,
    pub test: ImageSet,
}

/// Loads the data set a config names (through the cache) and applies the split and subsets.
pub fn prepare_data(config: &ExperimentConfig) -> Result<TrainingData> {
    let d = &config.data;
    let seed = config.train.seed;
    let path = if !d.path.exists() && d.download {
        let folder = d.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        data::download::download_cifar10(folder)?
    } else {
        d.path.clone()
    };
    if !path.exists() {
        bail!("data set not found at {} (set data.path or --data to a CIFAR-10 folder or archive, or add --download)", path.display());
    }
    let dataset = data::load_dataset(&path, Some(&d.cache_dir), &config.load_options())?;
    let classes = ClassNames::of(&dataset);
    let num_classes = classes.len();
    let data::split::Splits { train, val, test } = data::split::training_splits(dataset, d, seed)?;
    let train = match d.subset_per_class {
        0 => train,
        n => data::split::subset_per_class(&train, num_classes, n, seed)?,
    };
    let test = match d.test_subset_per_class {
        0 => test,
        n => data::split::subset_per_class(&test, num_classes, n, seed)?,
    };
    Ok(TrainingData { classes, train: Arc::new(train), val, test })
}

/// The model of a run with the parameters of one of its checkpoints.
pub fn load_run_model(config: &ExperimentConfig, num_classes: usize, checkpoint: &std::path::Path, device: &Device) -> Result<Classifier> {
    let (model, _) = models::transfer::build(&config.model, &config.transfer, num_classes, device, None)?;
    callbacks::load_checkpoint(model, checkpoint)
}

/// `model` with its data-derived layers (patch whitening) fitted to `config.model.fit_images`
/// training images spread evenly over the split, unaugmented and normalized as training sees
/// them. Models without such layers, and models whose weights were loaded, come back unchanged.
pub fn fit_to_data(mut model: Classifier, config: &ExperimentConfig, train: &ImageSet, device: &Device) -> Result<Classifier> {
    if config.model.is_pretrained() || !model.net.fits_to_data() {
        return Ok(model);
    }
    let count = config.model.fit_images.min(train.len());
    let picks: Vec<usize> = (0..count).map(|i| i * train.len() / count).collect();
    let loader = LoaderConfig {
        batch_size: count,
        shuffle: false,
        drop_last: false,
        augment: None,
        mix: None,
        input: config.input_transform(),
        prefetch: 0,
        seed: config.train.seed,
    };
    let (sample, _) = batch_tensors(make_batch(train, &picks, &loader, 0, 0), device);
    model.net = model.net.fit_to_data(&sample)?;
    Ok(model)
}

/// Images and labels of a batch as tensors on `device`.
pub fn batch_tensors(batch: Batch, device: &Device) -> (Tensor<4>, Vec<i64>) {
    let shape = [batch.len(), 3, batch.height, batch.width];
    (Tensor::from_data(TensorData::new(batch.images, shape), device), batch.labels)
}

/// Whether top-5 accuracy is reported besides accuracy: for more than 10 classes, as
/// torchvision's reference scripts report acc5 on ImageNet (with 5 classes or fewer it is always
/// 100%, and says little up to 10).
pub fn reports_top5(num_classes: usize) -> bool {
    num_classes > 10
}

/// Rows of logits whose label is the arg-max (`top1`) and among the five highest (`top5`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hits {
    pub top1: usize,
    pub top5: usize,
}

impl std::ops::AddAssign for Hits {
    fn add_assign(&mut self, other: Self) {
        self.top1 += other.top1;
        self.top5 += other.top5;
    }
}

/// Top-1 and top-5 hits of `logits` (row-major, one row per label).
pub fn count_hits(logits: &[f32], labels: &[i64]) -> Hits {
    let k = logits.len() / labels.len().max(1);
    let ranks = logits.chunks_exact(k).zip(labels).map(|(row, &label)| label_rank(row, label as usize));
    ranks.fold(Hits::default(), |hits, rank| Hits { top1: hits.top1 + (rank == 0) as usize, top5: hits.top5 + (rank < 5) as usize })
}

/// How many classes of `row` rank before `label`: those with a higher logit, and those with an
/// equal one at a lower index (so rank 0 is exactly [`argmax`]).
fn label_rank(row: &[f32], label: usize) -> usize {
    let value = row[label];
    row.iter().enumerate().filter(|&(i, &v)| v > value || (v == value && i < label)).count()
}

pub fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |best, (i, v)| if *v > row[best] { i } else { best })
}

/// Forward, cross-entropy against `targets`, backward: the gradients of the loss times
/// `loss_scale`, the (unscaled) loss and the logits (for accuracy), both detached.
pub fn forward_backward(
    model: &Classifier,
    images: Tensor<4>,
    targets: Tensor<2>,
    loss_scale: f32,
) -> (GradientsParams, Tensor<1>, Tensor<2>) {
    backward(model, model.forward(images), targets, loss_scale)
}

/// The gradients of the loss of `logits` (computed by `model`) against `targets`, scaled as in
/// [`forward_backward`]; the loss and the logits detached. Nothing is read back to the host: on a
/// GPU the step runs on while the caller prepares the next one.
pub fn backward(model: &Classifier, logits: Tensor<2>, targets: Tensor<2>, loss_scale: f32) -> (GradientsParams, Tensor<1>, Tensor<2>) {
    let loss = loss::cross_entropy(logits.clone(), targets);
    let detached = loss.clone().detach();
    let scaled = if loss_scale == 1.0 { loss } else { loss * loss_scale };
    (GradientsParams::from_grads(scaled.backward(), model), detached, logits.detach())
}

/// One optimizer step on one batch, the network computing in `mixed`'s precision (a step whose
/// f16 gradients overflowed is skipped). Returns the updated model, the loss and the logits.
pub fn step_once(
    model: Classifier,
    optimizer: &mut ModuleOptimizer,
    images: Tensor<4>,
    targets: Tensor<2>,
    lr: f64,
    mixed: &mut MixedPrecision,
) -> (Classifier, Tensor<1>, Tensor<2>) {
    let logits = mixed.precision.logits(&model, images);
    let (mut grads, loss, logits) = backward(&model, logits, targets, mixed.loss_scale());
    let model = if mixed.unscale(&mut grads, &model) { optimizer.step(lr, model, grads) } else { model };
    (model, loss, logits)
}

/// Trains the model a config describes in a new run folder and evaluates its best checkpoint on
/// the test split. `interrupt` (set by Ctrl-C) stops after the current step with a saved checkpoint.
pub fn fit(config: &ExperimentConfig, run_id: &str, interrupt: &AtomicBool) -> Result<(RunDir, RunSummary)> {
    Trainer::new(config, Start::New(run_id))?.fit(interrupt)
}

/// Continues an interrupted run from its last completed epoch (`config` is the run's own, possibly
/// with more epochs).
pub fn resume(run: &RunDir, config: &ExperimentConfig, interrupt: &AtomicBool) -> Result<(RunDir, RunSummary)> {
    Trainer::new(config, Start::Resume(run))?.fit(interrupt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ModelConfig;
    use crate::train::config::TrainConfig;
    use burn::tensor::Distribution;

    /// A network that can learn must drive the loss of one fixed batch of random labels to ~0.
    #[test]
    fn overfits_one_batch() {
        let device = Device::flex().autodiff();
        device.seed(1);
        let mut model = models::build(&ModelConfig::default(), 10, &device).unwrap();
        let mut optimizer =
            optim::build(&TrainConfig { optimizer: optim::OptimizerKind::Adam, weight_decay: 0.0, ..Default::default() }, &[]);
        let images = Tensor::<4>::random([16, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        let labels: Vec<i64> = (0..16).map(|i| (i * 7 % 10) as i64).collect();
        let targets = loss::smoothed_targets(&labels, 10, 0.0, &device);
        let (mut history, mut f32_steps) = (Vec::new(), MixedPrecision::new(Precision::F32));
        for _ in 0..60 {
            let (next, loss, logits) = step_once(model, &mut optimizer, images.clone(), targets.clone(), 3e-3, &mut f32_steps);
            model = next;
            let logits: Vec<f32> = logits.into_data().try_to_vec().unwrap();
            history.push((loss.into_scalar::<f32>(), count_hits(&logits, &labels).top1));
        }
        let (first, last) = (history[0], history[history.len() - 1]);
        assert!(first.0 > 2.0, "initial loss {}", first.0);
        assert!(last.0 < 0.1 && last.1 == 16, "after 60 steps: loss {} and {}/16 correct", last.0, last.1);
    }

    #[test]
    fn accuracy_counts_argmax_hits() {
        let logits = [0.1, 0.9, 0.0, 2.0, 1.0, 0.5];
        assert_eq!(count_hits(&logits, &[1, 0]).top1, 2);
        assert_eq!(count_hits(&logits, &[0, 0]).top1, 1);
    }

    #[test]
    fn top5_counts_labels_among_the_five_highest_with_ties_ranked_as_argmax() {
        // One row of 7 classes: class 6 is highest, then 0, 1, 2, 3 tie with 4 at 0.5, 5 lowest.
        let row = [0.9, 0.8, 0.7, 0.5, 0.5, 0.1, 1.0];
        let ranks: Vec<usize> = (0..7).map(|label| label_rank(&row, label)).collect();
        assert_eq!(ranks, [1, 2, 3, 4, 5, 6, 0]);
        assert_eq!(argmax(&row), 6);
        let hits = |label: i64| count_hits(&row, &[label]);
        assert_eq!(hits(6), Hits { top1: 1, top5: 1 });
        assert_eq!(hits(3), Hits { top1: 0, top5: 1 });
        // Class 4 ties with 3 but comes after it: sixth.
        assert_eq!(hits(4), Hits { top1: 0, top5: 0 });
        // Two rows at once, summed.
        let two = [row, row].concat();
        assert_eq!(count_hits(&two, &[6, 2]), Hits { top1: 1, top5: 2 });
        assert!(!reports_top5(10) && reports_top5(11));
    }
}
