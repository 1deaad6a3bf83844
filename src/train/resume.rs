//! Resumable runs. After every epoch the model and optimizer state go to `<run>/resume/` and
//! `state.json`, written last, names the epoch they belong to: a run killed at any moment resumes
//! from the last completed epoch. Everything else is rebuilt deterministically (data order and
//! augmentation from the seed and the epoch, the device RNG reseeded per epoch, callbacks and the
//! plateau schedule replayed from `metrics.jsonl`), so the resumed run ends as the uninterrupted
//! one would.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::optim::ModuleOptimizer;
use serde::{Deserialize, Serialize};

use super::ema::Weights;
use crate::config::ExperimentConfig;
use crate::files::write_atomic;
use crate::tracking::RunDir;
use crate::tracking::journal::flat_settings;

const FOLDER: &str = "resume";
const STATE: &str = "state.json";

/// Config keys a resumed run may change: how long it trains and where/how it reports.
const MAY_CHANGE: [&str; 4] = ["train.epochs", "run.device", "run.progress", "run.tensorboard"];

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ResumePoint {
    /// Epochs completed.
    pub epoch: usize,
    /// The resolved config the run trained with (TOML).
    pub config: String,
}

/// The model, optimizer and (with model EMA) averaged-model files of an epoch.
fn files(run: &RunDir, epoch: usize) -> [PathBuf; 3] {
    let folder = run.path.join(FOLDER);
    ["model", "optimizer", "ema"].map(|kind| folder.join(format!("{kind}-{epoch}.bpk")))
}

/// Saves the state after `epoch`, then drops the previous epoch's files.
pub fn save(run: &RunDir, epoch: usize, weights: &Weights, optimizer: &ModuleOptimizer, config: &ExperimentConfig) -> Result<()> {
    let folder = run.path.join(FOLDER);
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    let [model_path, optimizer_path, ema_path] = files(run, epoch);
    super::callbacks::save_checkpoint(&weights.live, &model_path)?;
    if let Some(ema) = &weights.ema {
        super::callbacks::save_checkpoint(&ema.model, &ema_path)?;
    }
    write_atomic(&optimizer_path, &optimizer_bytes(optimizer).context("saving the optimizer state")?)?;
    let point = ResumePoint { epoch, config: config.to_toml() };
    write_atomic(&folder.join(STATE), serde_json::to_string_pretty(&point)?.as_bytes())?;
    if epoch > 1 {
        for old in files(run, epoch - 1) {
            let _ = std::fs::remove_file(old);
        }
    }
    Ok(())
}

/// The optimizer state as burnpack bytes, its tensors in name order: burn lists them in hash-map
/// order, which changes from process to process, and two runs of one seed must write equal files.
fn optimizer_bytes(optimizer: &ModuleOptimizer) -> Result<burn_pack::Bytes> {
    let pack = burn_pack::Reader::from_bytes(optimizer.into_bytes()?)?;
    let (scalars, metadata) = (pack.scalars().clone(), pack.metadata().clone());
    let mut tensors = pack.into_tensors()?;
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let writer = scalars.iter().fold(burn_pack::Writer::new(tensors), |w, (key, value)| w.with_scalar(key, *value));
    Ok(metadata.iter().fold(writer, |w, (key, value)| w.with_metadata(key, value)).into_bytes()?)
}

/// The last resume point of a run, checked against the run's config as it is now; `None` for a
/// run that ended before its first epoch did (it starts again from scratch).
pub fn load_point(run: &RunDir, config: &ExperimentConfig) -> Result<Option<ResumePoint>> {
    let Some((point, saved)) = read_state(run)? else { return Ok(None) };
    let changed = changed_settings(&saved, config);
    if !changed.is_empty() {
        bail!(
            "{}: the config changed since the run started: {}; a resumed run may only change {}",
            run.path.join(RunDir::CONFIG).display(),
            changed.join(", "),
            MAY_CHANGE.join(", ")
        );
    }
    // A run whose final test failed has its epochs done but no summary of them: resuming it
    // tests the best checkpoint and writes the summary.
    let summarized = run.read_summary().is_ok_and(|summary| summary.epochs_completed >= point.epoch);
    if point.epoch >= config.train.epochs && summarized {
        bail!("{}: all {} epochs are done; raise train.epochs to train further", run.path.display(), config.train.epochs);
    }
    Ok(Some(point))
}

/// The settings the run trained with (its last resume state), when it has one.
pub fn trained_config(run: &RunDir) -> Result<Option<ExperimentConfig>> {
    Ok(read_state(run)?.map(|(_, config)| config))
}

/// The run's last resume point and the config it holds; `None` before the first epoch ended.
fn read_state(run: &RunDir) -> Result<Option<(ResumePoint, ExperimentConfig)>> {
    let path = run.path.join(FOLDER).join(STATE);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let point: ResumePoint = serde_json::from_str(&text).with_context(|| format!("{}: not a resume state", path.display()))?;
    let config = ExperimentConfig::from_toml(&point.config, &path.display().to_string(), &[])?;
    Ok(Some((point, config)))
}

/// The settings that differ between two configs, apart from those a resumed run may change,
/// as `key (before -> now)`.
pub fn changed_settings(before: &ExperimentConfig, now: &ExperimentConfig) -> Vec<String> {
    let (before, now) = (flat_settings(before), flat_settings(now));
    let keys: std::collections::BTreeSet<&String> =
        before.keys().chain(now.keys()).filter(|k| !MAY_CHANGE.contains(&k.as_str()) && before.get(*k) != now.get(*k)).collect();
    keys.into_iter().map(|k| format!("{k} ({} -> {})", show(before.get(k)), show(now.get(k)))).collect()
}

fn show(value: Option<&String>) -> &str {
    value.map_or("absent", String::as_str)
}

/// Weights (live and averaged) and optimizer as they were after `point.epoch`.
pub fn restore(run: &RunDir, point: &ResumePoint, weights: Weights, optimizer: ModuleOptimizer) -> Result<(Weights, ModuleOptimizer)> {
    let [model_path, optimizer_path, ema_path] = files(run, point.epoch);
    // The best checkpoint is tested at the end: a damaged one must stop the resume before
    // anything in the run folder changes.
    super::callbacks::read_checkpoint(&run.checkpoint(super::callbacks::Checkpointer::BEST))?;
    let mut weights = weights;
    weights.live = super::callbacks::load_checkpoint(weights.live, &model_path)?;
    if let Some(ema) = &mut weights.ema {
        ema.model = super::callbacks::load_checkpoint(ema.model.clone(), &ema_path)?;
    }
    let optimizer = optimizer
        .load(&optimizer_path)
        .map_err(|e| anyhow::anyhow!("{}: not a readable optimizer state ({e})", optimizer_path.display()))?;
    Ok((weights, optimizer))
}

/// Keeps the first `epochs` lines of `metrics.jsonl` (a line may have been written after the last
/// resume point).
pub fn truncate_metrics(run: &RunDir, epochs: usize) -> Result<Vec<crate::tracking::EpochMetrics>> {
    let mut metrics = run.read_metrics()?;
    if metrics.len() < epochs {
        bail!("{}: {} epochs logged, but the resume point is epoch {epochs}", run.path.display(), metrics.len());
    }
    metrics.truncate(epochs);
    let text: String = metrics.iter().map(|m| serde_json::to_string(m).map(|l| l + "\n")).collect::<Result<_, _>>()?;
    write_atomic(&run.path.join(RunDir::METRICS), text.as_bytes())?;
    Ok(metrics)
}
