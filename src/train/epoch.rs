//! What the loop keeps track of within one epoch, each piece on its own: gradient accumulation,
//! the running loss and accuracy, the progress bar and the divergence check.

use anyhow::{Result, bail};
use burn::optim::{GradientsAccumulator, GradientsParams};
use indicatif::{ProgressBar, ProgressStyle};

use super::count_correct;
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

/// The running loss and accuracy of an epoch's training batches.
#[derive(Default)]
pub struct EpochTotals {
    /// Sum over images of the batch loss (a batch's mean loss times its size).
    loss_sum: f64,
    correct: usize,
    seen: usize,
}

impl EpochTotals {
    /// Adds a batch: its mean loss, its logits (row-major, one row per label) and its labels.
    pub fn add(&mut self, loss: f32, logits: &[f32], labels: &[i64]) {
        self.correct += count_correct(logits, labels);
        self.loss_sum += loss as f64 * labels.len() as f64;
        self.seen += labels.len();
    }

    /// Mean loss per image (0 before the first batch).
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.seen.max(1) as f64
    }

    /// Fraction of images whose arg-max is the label (0 before the first batch).
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.seen.max(1) as f64
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

/// The running loss, accuracy and throughput, after at least one batch.
fn progress_message(totals: &EpochTotals, elapsed_seconds: f64) -> String {
    let seen = totals.seen as f64;
    format!("loss {:.3} acc {:.1}% {:.0} img/s", totals.loss_sum / seen, 100.0 * totals.correct as f64 / seen, seen / elapsed_seconds)
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
        let mut totals = EpochTotals::default();
        assert_eq!((totals.loss(), totals.accuracy()), (0.0, 0.0));
        // Two rows, both right; then one row, wrong.
        totals.add(1.0, &[0.0, 1.0, 1.0, 0.0], &[1, 0]);
        totals.add(4.0, &[0.0, 1.0], &[0]);
        assert_eq!(totals.loss(), 2.0);
        assert_eq!(totals.accuracy(), 2.0 / 3.0);
        assert_eq!(totals.images_per_second(0.5), 6.0);
        assert_eq!(progress_message(&totals, 0.5), "loss 2.000 acc 66.7% 6 img/s");
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
