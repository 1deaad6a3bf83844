//! End-of-epoch callbacks: each does one thing and can be tested alone.

use anyhow::{Context, Result};
use burn::module::Module;
use burn::store::ModuleRecord;

use crate::models::Classifier;
use crate::tracking::{EpochMetrics, RunDir, write_atomic};

pub struct EpochContext<'a> {
    pub run: &'a RunDir,
    pub model: &'a Classifier,
    pub metrics: &'a EpochMetrics,
    pub epochs: usize,
}

pub trait Callback {
    fn on_epoch_end(&mut self, context: &EpochContext) -> Result<()>;
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

impl Callback for ConsoleLog {
    fn on_epoch_end(&mut self, c: &EpochContext) -> Result<()> {
        let m = c.metrics;
        let val = match (m.val_loss, m.val_acc) {
            (Some(l), Some(a)) => format!(" | val loss {l:.4} acc {:.2}%", 100.0 * a),
            _ => String::new(),
        };
        println!(
            "epoch {}/{} | train loss {:.4} acc {:.2}%{val} | lr {:.4} | {:.1}s, {:.0} img/s",
            m.epoch,
            c.epochs,
            m.train_loss,
            100.0 * m.train_acc,
            m.lr,
            m.seconds,
            m.img_per_s
        );
        Ok(())
    }
}

/// Saves `last` every epoch and `best` whenever the validation loss improves (every epoch when
/// there is no validation split, so `best` is then the last epoch).
#[derive(Default)]
pub struct Checkpointer {
    best_val_loss: Option<f64>,
}

impl Checkpointer {
    pub const BEST: &'static str = "best";
    pub const LAST: &'static str = "last";

    /// Metrics of the epoch whose checkpoint is `best`, read back from `metrics.jsonl`.
    pub fn best_metrics(run: &RunDir) -> Result<EpochMetrics> {
        let metrics = run.read_metrics()?;
        // The first epoch with the lowest validation loss, as the checkpointer chose it.
        let best = metrics
            .iter()
            .filter_map(|m| m.val_loss.map(|loss| (loss, m)))
            .min_by(|(a, _), (b, _)| a.total_cmp(b))
            .map(|(_, m)| m);
        best.or(metrics.last()).cloned().context("the run has no completed epoch")
    }
}

impl Callback for Checkpointer {
    fn on_epoch_end(&mut self, c: &EpochContext) -> Result<()> {
        save_checkpoint(c.model, &c.run.checkpoint(Self::LAST))?;
        let improved = match (c.metrics.val_loss, self.best_val_loss) {
            (Some(loss), Some(best)) => loss < best,
            _ => true,
        };
        if improved {
            self.best_val_loss = c.metrics.val_loss;
            save_checkpoint(c.model, &c.run.checkpoint(Self::BEST))?;
        }
        Ok(())
    }
}

/// Writes a model's parameters (burnpack) through a temporary file and a rename.
pub fn save_checkpoint(model: &Classifier, path: &std::path::Path) -> Result<()> {
    let bytes = model.clone().into_record().into_bytes().map_err(|e| anyhow::anyhow!("{e}"))?;
    write_atomic(path, &bytes)
}

/// Loads parameters saved by `save_checkpoint` into a freshly built model of the same config.
pub fn load_checkpoint(model: Classifier, path: &std::path::Path) -> Result<Classifier> {
    if !path.is_file() {
        anyhow::bail!("checkpoint {} not found", path.display());
    }
    let record = ModuleRecord::load(path)
        .map_err(|e| anyhow::anyhow!("{}: not a readable checkpoint ({e})", path.display()))?;
    model
        .try_load_record(record)
        .map_err(|e| anyhow::anyhow!("{}: does not match the run's model ({e})", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::models;
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
        assert!(err.contains("bad.bpk"), "{err}");
        let other = models::build(&ModelConfig { name: "tutorial_net".into(), ..Default::default() }, 10, &device).unwrap();
        let saved = dir.path().join("tutorial.bpk");
        save_checkpoint(&other, &saved).unwrap();
        let err = load_checkpoint(model, &saved).unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");
        let err = load_checkpoint(other, &dir.path().join("missing.bpk")).unwrap_err().to_string();
        assert!(err.contains("missing.bpk"), "{err}");
    }
}
