//! Callbacks: what happens after a step, at the end of an epoch, on Ctrl-C and after the test.
//! Each does one thing and can be tested alone.

use anyhow::{Context, Result};
use burn::module::Module;
use burn::store::ModuleRecord;

use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use super::schedule::Monitor;
use crate::files::write_atomic;
use crate::models::Classifier;
use crate::tracking::config::RunConfig;
use crate::tracking::plot::{Series, line_chart_files};
use crate::tracking::tensorboard::EventWriter;
use crate::tracking::{EpochMetrics, RunDir};

pub struct EpochContext<'a> {
    pub run: &'a RunDir,
    pub model: &'a Classifier,
    pub metrics: &'a EpochMetrics,
    pub epochs: usize,
}

/// Ctrl-C ended training mid-epoch.
pub struct InterruptContext<'a> {
    pub run: &'a RunDir,
    /// The weights an epoch end would have validated and checkpointed.
    pub model: &'a Classifier,
}

/// The test of the best checkpoint after training.
pub struct TestContext<'a> {
    /// The last completed epoch (the step the results are logged at).
    pub epoch: usize,
    pub accuracy: f64,
    /// Top-5 accuracy, for more than 10 classes.
    pub accuracy5: Option<f64>,
    pub loss: f64,
    /// The row-normalized confusion matrix as PNG.
    pub confusion_png: &'a [u8],
}

pub trait Callback {
    fn on_epoch_end(&mut self, context: &EpochContext) -> Result<()>;

    /// After the best checkpoint was tested (Lightning's `on_test_end`).
    fn on_test_end(&mut self, _context: &TestContext) -> Result<()> {
        Ok(())
    }

    /// Resuming: the metrics of an epoch completed before the interruption, in order, so the
    /// callback's state is what it was then.
    fn replay(&mut self, _metrics: &EpochMetrics) -> Result<()> {
        Ok(())
    }

    /// After every optimizer step (`step` counts from 1).
    fn on_step(&mut self, _step: usize, _loss: f32, _lr: f64) -> Result<()> {
        Ok(())
    }

    /// Ctrl-C stopped training mid-epoch (Lightning's `on_exception`); no epoch end follows.
    fn on_interrupt(&mut self, _context: &InterruptContext) -> Result<()> {
        Ok(())
    }

    /// Asked after every epoch: true ends training there.
    fn should_stop(&self) -> bool {
        false
    }
}

/// The callbacks of a run, in order: the metrics line first (the curves read it), the curves
/// before TensorBoard (which logs them).
pub fn for_run(train: &TrainConfig, reporting: &RunConfig, run: &RunDir) -> Result<Vec<Box<dyn Callback>>> {
    let mut callbacks: Vec<Box<dyn Callback>> =
        vec![Box::new(MetricsLog), Box::new(Checkpointer::new(train.best_by)), Box::new(ConsoleLog), Box::new(CurvesPlot)];
    if let Some(early) = train.early_stopping {
        callbacks.push(Box::new(EarlyStopper::new(early)));
    }
    if reporting.tensorboard {
        callbacks.push(Box::new(TensorBoardLog::create(run)?));
    }
    Ok(callbacks)
}

/// Learning curves, redrawn after every epoch as `<run>/curves/{loss,accuracy,lr}.{svg,png}`.
pub struct CurvesPlot;

impl CurvesPlot {
    pub const FOLDER: &'static str = "curves";
    pub const CHARTS: [&'static str; 3] = ["loss", "accuracy", "lr"];
}

impl Callback for CurvesPlot {
    fn on_epoch_end(&mut self, c: &EpochContext) -> Result<()> {
        let metrics = c.run.read_metrics()?;
        let folder = c.run.path.join(Self::FOLDER);
        std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
        let series = |name, pick: fn(&EpochMetrics) -> Option<f64>| Series {
            name,
            points: metrics.iter().filter_map(|m| pick(m).map(|v| (m.epoch as f64, v))).collect(),
        };
        let charts = [
            ("loss", vec![series("train", |m| Some(m.train_loss)), series("val", |m| m.val_loss)]),
            (
                "accuracy",
                vec![
                    series("train", |m| Some(m.train_acc)),
                    series("val", |m| m.val_acc),
                    series("train top-5", |m| m.train_acc5),
                    series("val top-5", |m| m.val_acc5),
                ],
            ),
            ("lr", vec![series("lr", |m| Some(m.lr))]),
        ];
        for (name, lines) in charts {
            let lines: Vec<Series> = lines.into_iter().filter(|s| !s.points.is_empty()).collect();
            line_chart_files(&folder.join(name), &format!("{} - {name}", c.run.id), "epoch", name, &lines)?;
        }
        Ok(())
    }
}

/// TensorBoard scalars: the loss and learning rate of every step, and the epoch metrics
/// (losses, accuracies and top-5 accuracies, lr, img/s) at the epoch number; the learning-curve
/// images when drawn.
pub struct TensorBoardLog {
    writer: EventWriter,
}

impl TensorBoardLog {
    pub fn create(run: &RunDir) -> Result<Self> {
        Ok(Self { writer: EventWriter::create(&run.path.join("tensorboard"))? })
    }
}

impl Callback for TensorBoardLog {
    fn on_step(&mut self, step: usize, loss: f32, lr: f64) -> Result<()> {
        self.writer.scalar("step/train_loss", loss as f64, step)?;
        self.writer.scalar("step/lr", lr, step)
    }

    fn on_epoch_end(&mut self, c: &EpochContext) -> Result<()> {
        let m = c.metrics;
        let scalars = [
            ("loss/train", Some(m.train_loss)),
            ("loss/val", m.val_loss),
            ("accuracy/train", Some(m.train_acc)),
            ("accuracy/val", m.val_acc),
            ("accuracy_top5/train", m.train_acc5),
            ("accuracy_top5/val", m.val_acc5),
            ("epoch/lr", Some(m.lr)),
            ("epoch/img_per_s", Some(m.img_per_s)),
            ("epoch/data_wait_share", Some(m.wait_shares().0)),
            ("epoch/device_wait_share", Some(m.wait_shares().1)),
        ];
        for (tag, value) in scalars {
            if let Some(v) = value {
                self.writer.scalar(tag, v, m.epoch)?;
            }
        }
        for chart in CurvesPlot::CHARTS {
            let path = c.run.path.join(CurvesPlot::FOLDER).join(format!("{chart}.png"));
            if let Ok(png) = std::fs::read(&path) {
                self.png_image(&format!("curves/{chart}"), png, m.epoch)?;
            }
        }
        Ok(())
    }

    fn on_test_end(&mut self, c: &TestContext) -> Result<()> {
        self.writer.scalar("accuracy/test", c.accuracy, c.epoch)?;
        if let Some(top5) = c.accuracy5 {
            self.writer.scalar("accuracy_top5/test", top5, c.epoch)?;
        }
        self.writer.scalar("loss/test", c.loss, c.epoch)?;
        self.png_image("confusion/test", c.confusion_png.to_vec(), c.epoch)
    }
}

impl TensorBoardLog {
    fn png_image(&mut self, tag: &str, png: Vec<u8>, step: usize) -> Result<()> {
        // The size from the PNG header; no need to decode the picture.
        let reader = image::ImageReader::with_format(std::io::Cursor::new(&png), image::ImageFormat::Png);
        let (width, height) = reader.into_dimensions().unwrap_or((0, 0));
        self.writer.image(tag, png, height as usize, width as usize, step)
    }
}

/// Appends the epoch's metrics to `metrics.jsonl`.
pub struct MetricsLog;

impl Callback for MetricsLog {
    fn on_epoch_end(&mut self, context: &EpochContext) -> Result<()> {
        context.run.append_metrics(context.metrics)
    }
}

/// Prints one line per epoch.
pub struct ConsoleLog;

impl ConsoleLog {
    fn line(m: &EpochMetrics, epochs: usize) -> String {
        let top5 = |acc5: Option<f64>| acc5.map(|a| format!(" top-5 {:.2}%", 100.0 * a)).unwrap_or_default();
        let val = match (m.val_loss, m.val_acc) {
            (Some(l), Some(a)) => format!(" | val loss {l:.4} acc {:.2}%{}", 100.0 * a, top5(m.val_acc5)),
            _ => String::new(),
        };
        // Where the loop stood still, once it is worth a look: data (the loader cannot keep up)
        // or the device (a GPU computing, the loader keeping up).
        let (data, device) = m.wait_shares();
        let waits = match data.max(device) >= Self::WAIT_SHOWN {
            true => format!(" | waiting for data {:.0}%, device {:.0}%", 100.0 * data, 100.0 * device),
            false => String::new(),
        };
        format!(
            "epoch {}/{epochs} | train loss {:.4} acc {:.2}%{}{val} | lr {:.4} | {:.1}s, {:.0} img/s{waits}",
            m.epoch,
            m.train_loss,
            100.0 * m.train_acc,
            top5(m.train_acc5),
            m.lr,
            m.seconds,
            m.img_per_s
        )
    }

    /// The share of an epoch spent waiting from which the line shows it.
    const WAIT_SHOWN: f64 = 0.02;
}

impl Callback for ConsoleLog {
    fn on_epoch_end(&mut self, c: &EpochContext) -> Result<()> {
        outln!("{}", Self::line(c.metrics, c.epochs));
        Ok(())
    }
}

/// `train.best_by`: the validation metric that picks the `best` checkpoint.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BestBy {
    /// The lowest validation loss.
    #[default]
    ValLoss,
    /// The highest validation accuracy.
    ValAcc,
}

impl BestBy {
    fn monitor(self) -> Monitor {
        match self {
            BestBy::ValLoss => Monitor::ValLoss,
            BestBy::ValAcc => Monitor::ValAcc,
        }
    }

    /// The epoch whose checkpoint is `best`: the first with the best value of the metric, or the
    /// last one when the run has no validation split.
    pub fn best_epoch(self, metrics: &[EpochMetrics]) -> Option<&EpochMetrics> {
        let mut best = BestSoFar::new(self);
        metrics.iter().filter(|m| best.update(m)).last()
    }
}

/// The best value of the `best_by` metric so far: the one rule the checkpointer saves by and
/// the summary and the journal report by.
struct BestSoFar {
    by: BestBy,
    value: Option<f64>,
}

impl BestSoFar {
    fn new(by: BestBy) -> Self {
        Self { by, value: None }
    }

    /// Whether `metrics` is the new best epoch (and remember it). A tie keeps the earlier epoch;
    /// without a validation split every epoch is the best.
    fn update(&mut self, metrics: &EpochMetrics) -> bool {
        let monitor = self.by.monitor();
        let value = monitor.read(metrics);
        let improved = match (value, self.value) {
            (Some(value), Some(best)) if monitor.higher_is_better() => value > best,
            (Some(value), Some(best)) => value < best,
            _ => true,
        };
        if improved {
            self.value = value;
        }
        improved
    }
}

/// Saves `last` every epoch and `best` whenever the `train.best_by` metric improves (every epoch
/// when there is no validation split, so `best` is then the last epoch), and `last` again on
/// Ctrl-C. Every write goes through `save`, from the weights the context carries: the trainer
/// passes the evaluated ones (`Weights::evaluated`) at an epoch end and on Ctrl-C alike.
pub struct Checkpointer {
    best: BestSoFar,
}

impl Checkpointer {
    pub const BEST: &'static str = "best";
    pub const LAST: &'static str = "last";

    pub fn new(best_by: BestBy) -> Self {
        Self { best: BestSoFar::new(best_by) }
    }

    /// Metrics of the epoch whose checkpoint is `best`, read back from `metrics.jsonl`.
    pub fn best_metrics(run: &RunDir, best_by: BestBy) -> Result<EpochMetrics> {
        let metrics = run.read_metrics()?;
        best_by.best_epoch(&metrics).cloned().context("the run has no completed epoch")
    }

    /// The one writer of `best` and `last`: atomic (a temporary file, then a rename).
    fn save(run: &RunDir, name: &str, model: &Classifier) -> Result<()> {
        save_checkpoint(model, &run.checkpoint(name))
    }
}

impl Callback for Checkpointer {
    fn on_epoch_end(&mut self, c: &EpochContext) -> Result<()> {
        Self::save(c.run, Self::LAST, c.model)?;
        if self.best.update(c.metrics) {
            Self::save(c.run, Self::BEST, c.model)?;
        }
        Ok(())
    }

    fn on_interrupt(&mut self, c: &InterruptContext) -> Result<()> {
        Self::save(c.run, Self::LAST, c.model)
    }

    fn replay(&mut self, metrics: &EpochMetrics) -> Result<()> {
        self.best.update(metrics);
        Ok(())
    }
}

/// `[train.early_stopping]`, with Lightning's `EarlyStopping` semantics and defaults.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EarlyStopping {
    pub monitor: Monitor,
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// The least change that counts as an improvement.
    pub min_delta: f64,
}

impl Default for EarlyStopping {
    fn default() -> Self {
        Self { monitor: Monitor::ValLoss, patience: 3, min_delta: 0.0 }
    }
}

/// Counts the epochs since the monitored metric last improved by more than `min_delta`.
pub struct EarlyStopper {
    config: EarlyStopping,
    best: Option<f64>,
    waited: usize,
}

impl EarlyStopper {
    pub fn new(config: EarlyStopping) -> Self {
        Self { config, best: None, waited: 0 }
    }
}

impl Callback for EarlyStopper {
    fn on_epoch_end(&mut self, c: &EpochContext) -> Result<()> {
        self.replay(c.metrics)?;
        if self.should_stop() {
            outln!("early stopping: {:?} has not improved for {} epochs", self.config.monitor, self.waited);
        }
        Ok(())
    }

    fn replay(&mut self, metrics: &EpochMetrics) -> Result<()> {
        let monitor = self.config.monitor;
        let value = monitor.read(metrics).with_context(|| {
            format!("train.early_stopping.monitor = {monitor:?} needs a validation split (data.val_size > 0) or monitor = \"train_loss\"")
        })?;
        let sign = if monitor.higher_is_better() { 1.0 } else { -1.0 };
        let improved = self.best.is_none_or(|best| sign * (value - best) > self.config.min_delta);
        if improved {
            self.best = Some(value);
            self.waited = 0;
        } else {
            self.waited += 1;
        }
        Ok(())
    }

    fn should_stop(&self) -> bool {
        self.waited >= self.config.patience
    }
}

/// Writes a model's parameters (burnpack) through a temporary file and a rename.
pub fn save_checkpoint(model: &Classifier, path: &std::path::Path) -> Result<()> {
    let bytes = model.clone().into_record().into_bytes().map_err(|e| anyhow::anyhow!("{e}"))?;
    write_atomic(path, &bytes)
}

/// Loads parameters saved by `save_checkpoint` into a freshly built model of the same config.
pub fn load_checkpoint(model: Classifier, path: &std::path::Path) -> Result<Classifier> {
    let record = read_checkpoint(path)?;
    model
        .try_load_record(record)
        .map_err(|e| anyhow::anyhow!("{}: does not match the run's model ({})", path.display(), innermost(&e.to_string())))
}

/// Reads a checkpoint file (without applying it): whether it is there and whole.
pub fn read_checkpoint(path: &std::path::Path) -> Result<ModuleRecord> {
    if !path.is_file() {
        anyhow::bail!("checkpoint {} not found", path.display());
    }
    ModuleRecord::load(path).map_err(|e| anyhow::anyhow!("{}: not a readable checkpoint ({})", path.display(), innermost(&e.to_string())))
}

/// The innermost reason of burn's nested error text ("Record I/O error: Validation error: File
/// truncated: ..." -> "file truncated: ..."), so the message carries one `error:`.
fn innermost(message: &str) -> String {
    let reason = message.rsplit_once("error: ").map_or(message, |(_, reason)| reason);
    let mut chars = reason.chars();
    chars.next().map_or_else(String::new, |first| first.to_lowercase().chain(chars).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models;
    use crate::models::ModelConfig;
    use burn::prelude::*;
    use burn::tensor::Distribution;

    #[test]
    fn checkpoint_round_trip_gives_identical_predictions() {
        let device = Device::flex();
        let config = ModelConfig::default();
        device.seed(1);
        let trained = models::build(&config, 10, &device).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.bpk");
        save_checkpoint(&trained, &path).unwrap();
        device.seed(2);
        let fresh = models::build(&config, 10, &device).unwrap();
        let images = Tensor::<4>::random([4, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        let before: Vec<f32> = fresh.forward(images.clone()).into_data().try_to_vec().unwrap();
        let loaded = load_checkpoint(fresh, &path).unwrap();
        let expected: Vec<f32> = trained.forward(images.clone()).into_data().try_to_vec().unwrap();
        let got: Vec<f32> = loaded.forward(images).into_data().try_to_vec().unwrap();
        assert_ne!(before, expected, "differently seeded models should differ");
        assert_eq!(got, expected);
    }

    #[test]
    fn corrupt_or_mismatched_checkpoints_are_clear_errors() {
        let device = Device::flex();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.bpk");
        std::fs::write(&path, b"not a checkpoint").unwrap();
        let model = models::build(&ModelConfig::default(), 10, &device).unwrap();
        let err = load_checkpoint(model.clone(), &path).unwrap_err().to_string();
        assert!(err.contains("bad.bpk") && !err.contains("error:"), "{err}");
        assert_eq!(innermost("Record I/O error: Validation error: File truncated: 3 bytes"), "file truncated: 3 bytes");
        let other = models::build(&ModelConfig { name: "tutorial_net".into(), ..Default::default() }, 10, &device).unwrap();
        let saved = dir.path().join("tutorial.bpk");
        save_checkpoint(&other, &saved).unwrap();
        let err = load_checkpoint(model, &saved).unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");
        let err = load_checkpoint(other, &dir.path().join("missing.bpk")).unwrap_err().to_string();
        assert!(err.contains("missing.bpk"), "{err}");
    }

    #[test]
    fn the_console_line_shows_top5_where_it_is_measured() {
        let plain = EpochMetrics { val_acc: Some(0.5), ..EpochMetrics::example(Some(1.5)) };
        assert_eq!(
            ConsoleLog::line(&plain, 3),
            "epoch 1/3 | train loss 1.0000 acc 0.00% | val loss 1.5000 acc 50.00% | lr 0.1000 | 1.0s, 1 img/s"
        );
        let many = EpochMetrics { train_acc5: Some(0.25), val_acc5: Some(0.875), ..plain };
        assert_eq!(
            ConsoleLog::line(&many, 3),
            "epoch 1/3 | train loss 1.0000 acc 0.00% top-5 25.00% | val loss 1.5000 acc 50.00% top-5 87.50% | lr 0.1000 | 1.0s, 1 img/s"
        );
        // Waits are shown once one of them is 2% of the epoch.
        let idle = EpochMetrics { data_wait_seconds: 0.01, device_wait_seconds: 0.015, ..EpochMetrics::example(None) };
        assert!(!ConsoleLog::line(&idle, 3).contains("waiting"), "{}", ConsoleLog::line(&idle, 3));
        let busy = EpochMetrics { data_wait_seconds: 0.004, device_wait_seconds: 0.9, ..idle };
        assert!(ConsoleLog::line(&busy, 3).ends_with("1.0s, 1 img/s | waiting for data 0%, device 90%"), "{}", ConsoleLog::line(&busy, 3));
    }

    /// A run folder with its `checkpoints` folder, in a temporary directory.
    fn temporary_run() -> (tempfile::TempDir, RunDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("checkpoints")).unwrap();
        let run = RunDir { id: "t".into(), path: dir.path().to_path_buf() };
        (dir, run)
    }

    /// Two differently initialized models and the bytes `save_checkpoint` writes for each.
    fn two_models(dir: &std::path::Path) -> [(Classifier, Vec<u8>); 2] {
        let device = Device::flex();
        [1, 2].map(|seed| {
            device.seed(seed);
            let model = models::build(&ModelConfig::default(), 10, &device).unwrap();
            let path = dir.join(format!("reference-{seed}.bpk"));
            save_checkpoint(&model, &path).unwrap();
            (model, std::fs::read(path).unwrap())
        })
    }

    #[test]
    fn the_checkpointer_writes_best_and_last_from_the_same_weights() {
        let (dir, run) = temporary_run();
        let [(first, first_bytes), (second, second_bytes)] = two_models(dir.path());
        let read = |name| std::fs::read(run.checkpoint(name)).unwrap();
        let mut checkpointer = Checkpointer::new(BestBy::ValLoss);
        checkpointer
            .on_epoch_end(&EpochContext { run: &run, model: &first, metrics: &EpochMetrics::example(Some(1.0)), epochs: 3 })
            .unwrap();
        assert!(read(Checkpointer::BEST) == first_bytes && read(Checkpointer::LAST) == first_bytes);
        // A worse epoch moves `last` only.
        checkpointer
            .on_epoch_end(&EpochContext { run: &run, model: &second, metrics: &EpochMetrics::example(Some(2.0)), epochs: 3 })
            .unwrap();
        assert!(read(Checkpointer::BEST) == first_bytes && read(Checkpointer::LAST) == second_bytes);
        // Without a validation split every epoch is the best.
        let mut without_val = Checkpointer::new(BestBy::ValLoss);
        without_val.on_epoch_end(&EpochContext { run: &run, model: &first, metrics: &EpochMetrics::example(None), epochs: 3 }).unwrap();
        without_val.on_epoch_end(&EpochContext { run: &run, model: &second, metrics: &EpochMetrics::example(None), epochs: 3 }).unwrap();
        assert!(read(Checkpointer::BEST) == second_bytes && read(Checkpointer::LAST) == second_bytes);
    }

    fn scored(epoch: usize, val_loss: f64, val_acc: f64) -> EpochMetrics {
        EpochMetrics { epoch, val_loss: Some(val_loss), val_acc: Some(val_acc), ..EpochMetrics::example(None) }
    }

    #[test]
    fn best_by_val_acc_keeps_the_most_accurate_epoch_across_a_resume() {
        // Epoch 2 is the most accurate though not the lowest loss; epoch 4 only ties its accuracy.
        let epochs = [scored(1, 0.9, 0.5), scored(2, 1.0, 0.7), scored(3, 0.8, 0.6), scored(4, 0.7, 0.7)];
        assert_eq!(BestBy::ValAcc.best_epoch(&epochs).map(|m| m.epoch), Some(2));
        assert_eq!(BestBy::ValLoss.best_epoch(&epochs).map(|m| m.epoch), Some(4));
        let unvalidated = [EpochMetrics::example(None), EpochMetrics { epoch: 2, ..EpochMetrics::example(None) }];
        assert_eq!(BestBy::ValAcc.best_epoch(&unvalidated).map(|m| m.epoch), Some(2));
        assert_eq!(BestBy::ValAcc.best_epoch(&[]), None);

        let (dir, run) = temporary_run();
        let [(first, _), (second, second_bytes)] = two_models(dir.path());
        let end = |checkpointer: &mut Checkpointer, model: &Classifier, metrics: &EpochMetrics| {
            checkpointer.on_epoch_end(&EpochContext { run: &run, model, metrics, epochs: 4 }).unwrap();
        };
        let mut checkpointer = Checkpointer::new(BestBy::ValAcc);
        end(&mut checkpointer, &first, &epochs[0]);
        end(&mut checkpointer, &second, &epochs[1]);
        // Resumed after epoch 2: the replayed epochs set the best to beat, so epochs 3 and 4 move
        // `last` only.
        let mut resumed = Checkpointer::new(BestBy::ValAcc);
        resumed.replay(&epochs[0]).unwrap();
        resumed.replay(&epochs[1]).unwrap();
        end(&mut resumed, &first, &epochs[2]);
        end(&mut resumed, &first, &epochs[3]);
        assert_eq!(std::fs::read(run.checkpoint(Checkpointer::BEST)).unwrap(), second_bytes);
        // By validation loss, epoch 3 would have replaced it.
        let mut by_loss = Checkpointer::new(BestBy::ValLoss);
        by_loss.replay(&epochs[0]).unwrap();
        by_loss.replay(&epochs[1]).unwrap();
        end(&mut by_loss, &first, &epochs[2]);
        assert_ne!(std::fs::read(run.checkpoint(Checkpointer::BEST)).unwrap(), second_bytes);
    }

    #[test]
    fn an_interrupt_replaces_last_atomically_and_keeps_best() {
        let (dir, run) = temporary_run();
        let [(first, first_bytes), (second, second_bytes)] = two_models(dir.path());
        let mut checkpointer = Checkpointer::new(BestBy::ValLoss);
        checkpointer
            .on_epoch_end(&EpochContext { run: &run, model: &first, metrics: &EpochMetrics::example(Some(1.0)), epochs: 3 })
            .unwrap();
        #[cfg(unix)]
        let inode = |name| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(run.checkpoint(name)).unwrap());
        #[cfg(unix)]
        let last_before = inode(Checkpointer::LAST);
        checkpointer.on_interrupt(&InterruptContext { run: &run, model: &second }).unwrap();
        // The bytes an epoch end writes for the same weights; `best` stays.
        assert_eq!(std::fs::read(run.checkpoint(Checkpointer::LAST)).unwrap(), second_bytes);
        assert_eq!(std::fs::read(run.checkpoint(Checkpointer::BEST)).unwrap(), first_bytes);
        // Replaced by a rename (a new file), not rewritten in place; no temporary file is left.
        #[cfg(unix)]
        assert_ne!(inode(Checkpointer::LAST), last_before);
        let mut files: Vec<String> = std::fs::read_dir(run.path.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, vec!["best.bpk", "last.bpk"]);
    }

    #[test]
    fn early_stopping_waits_patience_epochs_without_improvement() {
        let config = EarlyStopping { monitor: Monitor::ValLoss, patience: 2, min_delta: 0.05 };
        let mut stopper = EarlyStopper::new(config);
        let run = RunDir { id: "t".into(), path: std::path::PathBuf::from("unused") };
        let model = models::build(&ModelConfig::default(), 10, &Device::flex()).unwrap();
        let mut stops = Vec::new();
        for loss in [1.0, 0.8, 0.78, 0.77, 0.5, 0.49, 0.48] {
            let metrics = EpochMetrics::example(Some(loss));
            stopper.on_epoch_end(&EpochContext { run: &run, model: &model, metrics: &metrics, epochs: 9 }).unwrap();
            stops.push(stopper.should_stop());
        }
        // 0.78 and 0.77 are within min_delta of 0.8: stop after the second of them.
        assert_eq!(stops, vec![false, false, false, true, false, false, true]);
        let missing = EpochMetrics::example(None);
        let err =
            EarlyStopper::new(config).on_epoch_end(&EpochContext { run: &run, model: &model, metrics: &missing, epochs: 9 }).unwrap_err();
        assert!(err.to_string().contains("train.early_stopping.monitor"), "{err}");
    }
}
