//! Evaluation of a model on an image set: loss, accuracy, per-class accuracy and predictions.

use anyhow::{Context, Result};
use burn::prelude::*;
use serde::Serialize;

use super::loss::{cross_entropy, smoothed_targets};
use super::{argmax, batch_tensors};
use crate::augment::InputTransform;
use crate::augment::transforms::Pipeline;
use crate::config::ExperimentConfig;
use crate::tracking::RunDir;
use crate::data::ImageSet;
use crate::data::loader::{LoaderConfig, make_batch};
use crate::models::Classifier;

#[derive(Clone, Debug, Serialize)]
pub struct EvalResult {
    pub loss: f64,
    pub accuracy: f64,
    /// Fraction correct for each class (NaN-free: a class without images gets 0).
    pub per_class_accuracy: Vec<f64>,
    pub predictions: Vec<usize>,
}

/// Evaluates `model` (in validation mode, on a plain device) in stored order. `perturb` passes every
/// image through a seeded pipeline first (robustness evaluation); None evaluates the clean images.
pub fn evaluate(
    model: &Classifier,
    set: &ImageSet,
    num_classes: usize,
    batch_size: usize,
    input: InputTransform,
    perturb: Option<&Pipeline>,
    device: &Device,
) -> Result<EvalResult> {
    let config = LoaderConfig {
        batch_size,
        shuffle: false,
        drop_last: false,
        augment: perturb.cloned(),
        mix: None,
        input,
        prefetch: 1,
        seed: 0,
    };
    let order: Vec<usize> = (0..set.len()).collect();
    let mut predictions = Vec::with_capacity(set.len());
    let mut loss_sum = 0.0;
    for index in 0..set.len().div_ceil(batch_size) {
        let (images, labels) = batch_tensors(make_batch(set, &order, &config, 0, index), device);
        let logits = model.forward(images);
        let targets = smoothed_targets(&labels, num_classes, 0.0, device);
        let loss: f32 = cross_entropy(logits.clone(), targets).into_scalar();
        loss_sum += loss as f64 * labels.len() as f64;
        let values: Vec<f32> = logits.into_data().try_to_vec::<f32>().context("reading logits")?;
        predictions.extend(values.chunks_exact(num_classes).map(argmax));
    }
    let mut hits = vec![0usize; num_classes];
    let mut totals = vec![0usize; num_classes];
    for (&p, &l) in predictions.iter().zip(&set.labels) {
        totals[l as usize] += 1;
        hits[l as usize] += (p == l as usize) as usize;
    }
    let correct: usize = hits.iter().sum();
    Ok(EvalResult {
        loss: loss_sum / set.len().max(1) as f64,
        accuracy: correct as f64 / set.len().max(1) as f64,
        per_class_accuracy: hits.iter().zip(&totals).map(|(&h, &t)| if t == 0 { 0.0 } else { h as f64 / t as f64 }).collect(),
        predictions,
    })
}

/// A run's model with one of its checkpoints, and the split it is evaluated on.
pub struct RunEvaluation {
    pub model: Classifier,
    pub set: ImageSet,
    pub classes: Vec<String>,
    pub device: Device,
    pub batch_size: usize,
    pub input: InputTransform,
}

impl RunEvaluation {
    /// Loads `checkpoint` of a run and its `test` or `val` split (as split at training time).
    pub fn load(run: &RunDir, config: &ExperimentConfig, split: &str, checkpoint: &str) -> Result<Self> {
        let device = crate::device::parse(&config.run.device)?;
        let data = super::prepare_data(config)?;
        let set = match split {
            "test" => data.test,
            "val" => data.val.context("this run has no validation split (data.val_size = 0)")?,
            other => anyhow::bail!("unknown split `{other}`; expected test or val"),
        };
        let model = super::load_run_model(config, data.classes.len(), &run.checkpoint(checkpoint), &device)?;
        Ok(Self {
            model,
            set,
            classes: data.classes,
            device,
            batch_size: config.train.eval_batch_size,
            input: config.input_transform(),
        })
    }

    pub fn evaluate(&self, perturb: Option<&Pipeline>) -> Result<EvalResult> {
        evaluate(&self.model, &self.set, self.classes.len(), self.batch_size, self.input, perturb, &self.device)
    }
}

/// Evaluates a run's checkpoint on its `test` or `val` split and formats accuracy, loss and
/// per-class accuracy.
pub fn evaluate_run(run: &RunDir, config: &ExperimentConfig, split: &str, checkpoint: &str) -> Result<String> {
    let evaluation = RunEvaluation::load(run, config, split, checkpoint)?;
    let result = evaluation.evaluate(None)?;
    let mut report = format!(
        "run {} checkpoint {checkpoint}, {split} split ({} images)\naccuracy {:.2}%  loss {:.4}\n",
        run.id,
        evaluation.set.len(),
        100.0 * result.accuracy,
        result.loss
    );
    for (name, acc) in evaluation.classes.iter().zip(&result.per_class_accuracy) {
        report.push_str(&format!("  {name:<12} {:>6.2}%\n", 100.0 * acc));
    }
    Ok(report)
}
