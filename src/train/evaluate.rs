//! Evaluation of a model on an image set: loss, accuracy, per-class accuracy and predictions.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::prelude::*;
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};

use super::argmax;
use super::loss::{cross_entropy, smoothed_targets};
use crate::augment::InputTransform;
use crate::augment::transforms::Pipeline;
use crate::config::ExperimentConfig;
use crate::data::ImageSet;
use crate::data::loader::{LoaderConfig, make_batch};
use crate::files::write_atomic;
use crate::models::Classifier;
use crate::tracking::RunDir;
use crate::tracking::plot::{confusion_matrix_svg, svg_to_png};

#[derive(Clone, Debug, Serialize)]
pub struct EvalResult {
    pub loss: f64,
    pub accuracy: f64,
    /// Fraction correct for each class (NaN-free: a class without images gets 0).
    pub per_class_accuracy: Vec<f64>,
    pub predictions: Vec<usize>,
}

/// Test-time augmentation: the logits of several views of each image, averaged.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Tta {
    #[default]
    None,
    /// The image and its mirror image.
    Flip,
    /// Those two, each also shifted one pixel up-left and one down-right (airbench's views).
    FlipTranslate,
}

impl Tta {
    /// The views as (mirrored, shift in pixels along both axes).
    fn views(self) -> &'static [(bool, isize)] {
        match self {
            Tta::None => &[(false, 0)],
            Tta::Flip => &[(false, 0), (true, 0)],
            Tta::FlipTranslate => &[(false, 0), (true, 0), (false, -1), (true, -1), (false, 1), (true, 1)],
        }
    }
}

/// `images` (NCHW planes of `height` x `width`) seen through one view: mirrored left-right and/or
/// shifted by `shift` pixels down and right, the border pixels repeated into the gap.
fn view(images: &[f32], height: usize, width: usize, (mirrored, shift): (bool, isize)) -> Vec<f32> {
    let source = |i: usize, len: usize| (i as isize - shift).clamp(0, len as isize - 1) as usize;
    let mut out = vec![0.0; images.len()];
    for (plane_out, plane) in out.chunks_exact_mut(height * width).zip(images.chunks_exact(height * width)) {
        for y in 0..height {
            let row = &plane[source(y, height) * width..][..width];
            for x in 0..width {
                let sx = source(x, width);
                plane_out[y * width + x] = row[if mirrored { width - 1 - sx } else { sx }];
            }
        }
    }
    out
}

/// How a set is evaluated.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalSettings {
    pub batch_size: usize,
    pub input: InputTransform,
    pub tta: Tta,
    /// A seeded pipeline every image passes through first (robustness evaluation); None = clean.
    pub perturb: Option<Pipeline>,
}

impl EvalSettings {
    pub fn from_config(config: &ExperimentConfig) -> Self {
        Self { batch_size: config.train.eval_batch_size, input: config.input_transform(), tta: config.train.tta, perturb: None }
    }
}

/// Evaluates `model` (in validation mode, on a plain device) in stored order.
pub fn evaluate(model: &Classifier, set: &ImageSet, num_classes: usize, settings: &EvalSettings, device: &Device) -> Result<EvalResult> {
    let config = LoaderConfig {
        batch_size: settings.batch_size,
        shuffle: false,
        drop_last: false,
        augment: settings.perturb.clone(),
        mix: None,
        input: settings.input,
        prefetch: 1,
        seed: 0,
    };
    let order: Vec<usize> = (0..set.len()).collect();
    let mut predictions = Vec::with_capacity(set.len());
    let mut loss_sum = 0.0;
    for index in 0..set.len().div_ceil(settings.batch_size) {
        let batch = make_batch(set, &order, &config, 0, index);
        let shape = [batch.len(), 3, batch.height, batch.width];
        let views = settings.tta.views();
        let logits = views
            .iter()
            .map(|&v| {
                let pixels = if v == (false, 0) { batch.images.clone() } else { view(&batch.images, batch.height, batch.width, v) };
                model.forward(Tensor::from_data(TensorData::new(pixels, shape), device))
            })
            .reduce(|a, b| a + b)
            .expect("at least one view")
            / views.len() as f32;
        let targets = smoothed_targets(&batch.labels, num_classes, 0.0, device);
        let loss: f32 = cross_entropy(logits.clone(), targets).into_scalar();
        loss_sum += loss as f64 * batch.len() as f64;
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
    pub settings: EvalSettings,
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
        Ok(Self { model, set, classes: data.classes, device, settings: EvalSettings::from_config(config) })
    }

    /// The accuracy on the split, its images passed through `perturb` first when given.
    pub fn evaluate(&self, perturb: Option<&Pipeline>) -> Result<EvalResult> {
        let settings = EvalSettings { perturb: perturb.cloned(), ..self.settings.clone() };
        evaluate(&self.model, &self.set, self.classes.len(), &settings, &self.device)
    }
}

/// Counts of (true class, predicted class).
pub fn confusion(labels: &[u16], predictions: &[usize], num_classes: usize) -> Vec<Vec<usize>> {
    let mut counts = vec![vec![0; num_classes]; num_classes];
    for (&l, &p) in labels.iter().zip(predictions) {
        counts[l as usize][p] += 1;
    }
    counts
}

/// Evaluates a run's checkpoint on its `test` or `val` split, hands accuracy, loss and per-class
/// accuracy to `show`, then writes the confusion matrix (counts and row-normalized, SVG and PNG)
/// into `<run>/eval/`; returns the stems written.
pub fn evaluate_run(
    run: &RunDir,
    config: &ExperimentConfig,
    split: &str,
    checkpoint: &str,
    show: impl FnOnce(&str),
) -> Result<Vec<PathBuf>> {
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
    // Shown before anything is written: a run folder that cannot be written still gets its metrics.
    show(&report);
    let counts = confusion(&evaluation.set.labels, &result.predictions, evaluation.classes.len());
    let written = write_confusion(run, &evaluation.classes, &counts, split, checkpoint).context("could not write the confusion matrix")?;
    Ok(written.into_iter().map(|(stem, _)| stem).collect())
}

/// Writes `<run>/eval/<split>-<checkpoint>-confusion-{counts,normalized}.{svg,png}`; returns each
/// file stem with its PNG (counts first).
pub fn write_confusion(
    run: &RunDir,
    classes: &[String],
    counts: &[Vec<usize>],
    split: &str,
    checkpoint: &str,
) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let folder = run.path.join("eval");
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    let mut written = Vec::new();
    for (normalized, kind) in [(false, "counts"), (true, "normalized")] {
        let title = format!("{} {checkpoint}, {split}: confusion ({kind})", run.id);
        let svg = confusion_matrix_svg(classes, counts, normalized, &title)?;
        let stem = folder.join(format!("{split}-{checkpoint}-confusion-{kind}"));
        let png = svg_to_png(&svg)?;
        write_atomic(&stem.with_extension("svg"), svg.as_bytes())?;
        write_atomic(&stem.with_extension("png"), &png)?;
        written.push((stem, png));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_mirror_and_shift_with_repeated_borders() {
        // One 2x3 plane: rows [1 2 3] and [4 5 6].
        let plane = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(view(&plane, 2, 3, (true, 0)), vec![3.0, 2.0, 1.0, 6.0, 5.0, 4.0]);
        assert_eq!(view(&plane, 2, 3, (false, 1)), vec![1.0, 1.0, 2.0, 1.0, 1.0, 2.0]);
        assert_eq!(view(&plane, 2, 3, (false, -1)), vec![5.0, 6.0, 6.0, 5.0, 6.0, 6.0]);
        assert_eq!(Tta::FlipTranslate.views().len(), 6);
    }

    #[test]
    fn confusion_counts_true_rows_and_predicted_columns() {
        assert_eq!(confusion(&[0, 0, 1, 2], &[0, 1, 1, 0], 3), vec![vec![1, 1, 0], vec![0, 1, 0], vec![1, 0, 0]]);
    }
}
