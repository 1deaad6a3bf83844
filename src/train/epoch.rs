//! What the loop keeps track of within one epoch, each piece on its own: gradient accumulation,
//! the running loss and accuracy, the progress bar and the divergence check.

use anyhow::{Result, bail};
use burn::optim::{GradientsAccumulator, GradientsParams};
use indicatif::{ProgressBar, ProgressStyle};

use super::{Hits, count_hits, reports_top5};
use crate::models::Classifier;
use crate::tracking::RunDir;

/// `train.accumulate_batches`: the gradients of that many batches, each loss scaled by 1/n, make
/// one optimizer step; the last, partial group of an epoch steps too, as in Lightning.
pub struct GradientAccumulation {
    batches_per_step: usize,
    batches_per_epoch: usize,
    pending: usize,
    grads: GradientsAccumulator<Classifier>,
}

impl GradientAccumulation {
    pub fn new(batches_per_step: usize, batches_per_epoch: usize) -> Self {
        Self { batches_per_step, batches_per_epoch, pending: 0, grads: GradientsAccumulator::new() }
    }

    /// Optimizer steps in an epoch of `batches_per_epoch` batches.
    pub fn steps_per_epoch(batches_per_step: usize, batches_per_epoch: usize) -> usize {
        batches_per_epoch.div_ceil(batches_per_step)
    }

    /// What each batch's loss is multiplied by before the backward pass.
    pub fn loss_scale(&self) -> f32 {
        1.0 / self.batches_per_step as f32
    }

    /// Adds the gradients of batch `index` (0-based) of the epoch; returns the accumulated
    /// gradients when they make a step.
    pub fn add(&mut self, model: &Classifier, grads: GradientsParams, index: usize) -> Option<GradientsParams> {
        self.grads.accumulate(model, grads);
        self.pending += 1;
        if self.pending == self.batches_per_step || index + 1 == self.batches_per_epoch {
            self.pending = 0;
            return Some(self.grads.grads());
        }
        None
    }
}

/// The running loss and accuracies of an epoch's training batches.
pub struct EpochTotals {
    /// Sum over images of the batch loss (a batch's mean loss times its size).
    loss_sum: f64,
    hits: Hits,
    seen: usize,
    /// Whether top-5 accuracy is reported ([`reports_top5`]).
    top5: bool,
    /// Seconds spent waiting for the loader and for the device (`EpochMetrics`).
    pub data_wait: f64,
    pub device_wait: f64,
}

impl EpochTotals {
    pub fn new(num_classes: usize) -> Self {
        Self { loss_sum: 0.0, hits: Hits::default(), seen: 0, top5: reports_top5(num_classes), data_wait: 0.0, device_wait: 0.0 }
    }

    /// Adds a batch: its mean loss, its logits (row-major, one row per label) and its labels.
    pub fn add(&mut self, loss: f32, logits: &[f32], labels: &[i64]) {
        self.hits += count_hits(logits, labels);
        self.loss_sum += loss as f64 * labels.len() as f64;
        self.seen += labels.len();
    }

    /// Mean loss per image (0 before the first batch).
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.seen.max(1) as f64
    }

    /// Fraction of images whose arg-max is the label (0 before the first batch).
    pub fn accuracy(&self) -> f64 {
        self.hits.top1 as f64 / self.seen.max(1) as f64
    }

    /// Fraction of images whose label is among the five highest logits, where reported.
    pub fn accuracy5(&self) -> Option<f64> {
        self.top5.then(|| self.hits.top5 as f64 / self.seen.max(1) as f64)
    }

    pub fn images_per_second(&self, seconds: f64) -> f64 {
        self.seen as f64 / seconds
    }
}

/// The progress bar of an epoch; hidden unless `run.progress`.
pub struct EpochProgress(ProgressBar);

impl EpochProgress {
    pub fn start(visible: bool, batches: usize, epoch: usize, epochs: usize) -> Self {
        if !visible {
            return Self(ProgressBar::hidden());
        }
        let bar = ProgressBar::new(batches as u64);
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
                .expect("valid progress template")
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("{epoch}/{epochs}"));
        Self(bar)
    }

    /// One more batch done, `elapsed_seconds` into the epoch.
    pub fn show(&self, totals: &EpochTotals, elapsed_seconds: f64) {
        self.0.set_message(progress_message(totals, elapsed_seconds));
        self.0.inc(1);
    }

    /// Leaves the bar where it stopped: training ends with an error.
    pub fn abandon(&self) {
        self.0.abandon();
    }

    /// Clears the bar: the epoch's console line takes its place.
    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// The running loss, accuracies and throughput, after at least one batch.
fn progress_message(totals: &EpochTotals, elapsed_seconds: f64) -> String {
    let top5 = totals.accuracy5().map(|a| format!(" top-5 {:.1}%", 100.0 * a)).unwrap_or_default();
    format!("loss {:.3} acc {:.1}%{top5} {:.0} img/s", totals.loss(), 100.0 * totals.accuracy(), totals.images_per_second(elapsed_seconds))
}

/// The divergence check, after every batch: a loss that is not finite ends training, saying
/// where (`step` as the message numbers it), what to change and which checkpoints are kept.
pub fn check_divergence(loss: f32, epoch: usize, step: usize, lr: f64, run: &RunDir) -> Result<()> {
    if loss.is_finite() {
        return Ok(());
    }
    let kept = if epoch > 1 {
        format!("the checkpoints of epochs before it are in {}", run.path.join("checkpoints").display())
    } else {
        "no checkpoint was written".to_string()
    };
    bail!(
        "training diverged: the loss is {loss} at epoch {epoch}, step {step} (lr {lr:e}); lower train.lr or set train.grad_clip_norm; {kept}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models;
    use crate::models::ModelConfig;
    use burn::prelude::*;

    #[test]
    fn accumulation_steps_every_n_batches_and_at_the_end_of_an_epoch() {
        let model = models::build(&ModelConfig::default(), 10, &Device::flex().autodiff()).unwrap();
        let mut accumulation = GradientAccumulation::new(2, 5);
        assert_eq!(accumulation.loss_scale(), 0.5);
        let steps: Vec<usize> = (0..5).filter(|&index| accumulation.add(&model, GradientsParams::new(), index).is_some()).collect();
        // Two groups of two, then the last batch alone.
        assert_eq!(steps, vec![1, 3, 4]);
        assert_eq!(GradientAccumulation::steps_per_epoch(2, 5), steps.len());
        let mut every = GradientAccumulation::new(1, 3);
        assert!((0..3).all(|index| every.add(&model, GradientsParams::new(), index).is_some()));
        assert_eq!(GradientAccumulation::steps_per_epoch(1, 3), 3);
    }

    #[test]
    fn totals_weigh_each_batch_by_its_images() {
        let mut totals = EpochTotals::new(2);
        assert_eq!((totals.loss(), totals.accuracy()), (0.0, 0.0));
        // Two rows, both right; then one row, wrong.
        totals.add(1.0, &[0.0, 1.0, 1.0, 0.0], &[1, 0]);
        totals.add(4.0, &[0.0, 1.0], &[0]);
        assert_eq!(totals.loss(), 2.0);
        assert_eq!(totals.accuracy(), 2.0 / 3.0);
        assert_eq!(totals.accuracy5(), None, "no top-5 for 2 classes");
        assert_eq!(totals.images_per_second(0.5), 6.0);
        assert_eq!(progress_message(&totals, 0.5), "loss 2.000 acc 66.7% 6 img/s");
    }

    #[test]
    fn totals_count_top5_in_the_same_pass_for_more_than_ten_classes() {
        let mut totals = EpochTotals::new(11);
        // Label 10 is highest in the first row; in the second, label 0 is sixth (top-5 miss),
        // in the third, label 0 is fifth (top-5 hit).
        let ramp: Vec<f32> = (0..11).map(|i| i as f32).collect();
        let mut sixth = vec![0.0; 11];
        (6..11).for_each(|i| sixth[i] = 1.0);
        let mut fifth = vec![0.0; 11];
        (7..11).for_each(|i| fifth[i] = 1.0);
        fifth[0] = 0.5;
        totals.add(1.0, &[ramp, sixth, fifth].concat(), &[10, 0, 0]);
        assert_eq!(totals.accuracy(), 1.0 / 3.0);
        assert_eq!(totals.accuracy5(), Some(2.0 / 3.0));
        assert_eq!(progress_message(&totals, 1.0), "loss 1.000 acc 33.3% top-5 66.7% 3 img/s");
    }

    #[test]
    fn divergence_names_the_step_and_the_kept_checkpoints() {
        let run = RunDir { id: "r".into(), path: std::path::PathBuf::from("runs/r") };
        check_divergence(1e30, 1, 1, 0.1, &run).unwrap();
        let first = check_divergence(f32::NAN, 1, 2, 1e30, &run).unwrap_err().to_string();
        assert_eq!(
            first,
            "training diverged: the loss is NaN at epoch 1, step 2 (lr 1e30); lower train.lr or set train.grad_clip_norm; \
             no checkpoint was written"
        );
        let later = check_divergence(f32::INFINITY, 3, 40, 0.5, &run).unwrap_err().to_string();
        assert!(later.contains("the loss is inf at epoch 3, step 40 (lr 5e-1)"), "{later}");
        assert!(
            later.ends_with(&format!("the checkpoints of epochs before it are in {}", run.path.join("checkpoints").display())),
            "{later}"
        );
    }
}
