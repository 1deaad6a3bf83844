//! Exporting a trained run's model to one self-describing safetensors file (weights, config,
//! classes) that `predict --export` and `eval` read without the run folder.

use std::path::Path;

use burn::prelude::*;

use crate::tracking::RunDir;
use crate::train::load_run_model;
use crate::weights::export::{ExportedModel, export_safetensors};

/// Exports checkpoint `checkpoint` of a run folder; returns the model's name.
pub fn export_run(dir: &Path, checkpoint: &str, out: &Path) -> anyhow::Result<String> {
    if out.extension().is_none_or(|e| e != "safetensors") {
        anyhow::bail!("--out {}: exports are safetensors files; name it *.safetensors", out.display());
    }
    let (run, config) = RunDir::open(dir)?;
    let summary = run.read_summary()?;
    let device = Device::flex();
    let model = load_run_model(&config, summary.classes.len(), &run.checkpoint(checkpoint), &device)?;
    let about = ExportedModel {
        model: config.model.clone(),
        transfer: config.transfer.clone(),
        classes: summary.class_names(),
        image_size: summary.image_size,
        normalize: config.augment.normalize,
    };
    export_safetensors(&model, &about, out)?;
    Ok(config.model.name)
}
