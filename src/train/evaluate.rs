//! Evaluation of a model on an image set: loss, accuracy (top-5 too for more than 10 classes),
//! per-class accuracy and predictions; and `eval` of a run, on its own data set or another copy.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};

use super::loss::{cross_entropy, smoothed_targets};
use super::{Hits, argmax, count_hits, reports_top5};
use crate::augment::transforms::Pipeline;
use crate::augment::{InputTransform, PaddingMode};
use crate::config::ExperimentConfig;
use crate::data::ImageSet;
use crate::data::classes::ClassNames;
use crate::data::loader::{LoaderConfig, make_batch};
use crate::files::write_atomic;
use crate::models::Classifier;
use crate::tracking::RunDir;
use crate::tracking::plot::{confusion_matrix_svg, svg_to_png};

#[derive(Clone, Debug, Serialize)]
pub struct EvalResult {
    pub loss: f64,
    pub accuracy: f64,
    /// Fraction whose label is among the five highest logits, for more than 10 classes.
    pub accuracy5: Option<f64>,
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
    /// Those two, each also shifted one pixel up-left and one down-right after mirroring, the
    /// border pixels repeated into the gap; all six weighted alike.
    FlipTranslate,
    /// airbench's test-time augmentation: the image and its mirror, and both of those made from
    /// the image shifted one pixel up-left and one down-right with the border reflected into the
    /// gap; the unshifted pair weighs as much as the four shifted views together.
    FlipTranslateAirbench,
}

/// One view of the images: mirrored left-right or not, then shifted `shift` (rows, columns)
/// pixels down and right (negative: up and left) with `padding` filling the gap; and its weight in
/// the average.
#[derive(Clone, Copy, Debug, PartialEq)]
struct View {
    mirrored: bool,
    shift: (isize, isize),
    padding: PaddingMode,
    weight: f32,
}

impl View {
    const fn new(mirrored: bool, shift: (isize, isize), padding: PaddingMode, weight: f32) -> Self {
        Self { mirrored, shift, padding, weight }
    }

    fn is_identity(&self) -> bool {
        !self.mirrored && self.shift == (0, 0)
    }
}

impl Tta {
    fn views(self) -> &'static [View] {
        const EDGE: PaddingMode = PaddingMode::Edge;
        const NONE: [View; 1] = [View::new(false, (0, 0), EDGE, 1.0)];
        const FLIP: [View; 2] = [View::new(false, (0, 0), EDGE, 1.0), View::new(true, (0, 0), EDGE, 1.0)];
        const FLIP_TRANSLATE: [View; 6] = [
            View::new(false, (0, 0), EDGE, 1.0),
            View::new(true, (0, 0), EDGE, 1.0),
            View::new(false, (-1, -1), EDGE, 1.0),
            View::new(true, (-1, -1), EDGE, 1.0),
            View::new(false, (1, 1), EDGE, 1.0),
            View::new(true, (1, 1), EDGE, 1.0),
        ];
        // Mirroring an image shifted down-right gives its mirror shifted down-left.
        const REFLECT: PaddingMode = PaddingMode::Reflect;
        const AIRBENCH: [View; 6] = [
            View::new(false, (0, 0), REFLECT, 2.0),
            View::new(true, (0, 0), REFLECT, 2.0),
            View::new(false, (-1, -1), REFLECT, 1.0),
            View::new(true, (-1, 1), REFLECT, 1.0),
            View::new(false, (1, 1), REFLECT, 1.0),
            View::new(true, (1, -1), REFLECT, 1.0),
        ];
        match self {
            Tta::None => &NONE,
            Tta::Flip => &FLIP,
            Tta::FlipTranslate => &FLIP_TRANSLATE,
            Tta::FlipTranslateAirbench => &AIRBENCH,
        }
    }
}

/// `images` (NCHW planes of `height` x `width`) seen through `view`.
fn view(images: &[f32], height: usize, width: usize, view: View) -> Vec<f32> {
    let View { mirrored, shift: (down, right), padding, .. } = view;
    let source = |i: usize, shift: isize, len: usize| padding.source(i as isize - shift, len).expect("views repeat or reflect the border");
    let mut out = vec![0.0; images.len()];
    for (plane_out, plane) in out.chunks_exact_mut(height * width).zip(images.chunks_exact(height * width)) {
        for y in 0..height {
            let row = &plane[source(y, down, height) * width..][..width];
            for x in 0..width {
                let sx = source(x, right, width);
                plane_out[y * width + x] = row[if mirrored { width - 1 - sx } else { sx }];
            }
        }
    }
    out
}

/// The views of `images` (NCHW of `shape`) that `tta` averages, one at a time, each with its
/// weight.
pub(crate) fn tta_views<'a>(
    images: &'a [f32],
    shape: [usize; 4],
    tta: Tta,
    device: &'a Device,
) -> impl Iterator<Item = (Tensor<4>, f32)> + 'a {
    let [_, _, height, width] = shape;
    tta.views().iter().map(move |v| {
        let pixels = if v.is_identity() { images.to_vec() } else { view(images, height, width, *v) };
        (Tensor::from_data(TensorData::new(pixels, shape), device), v.weight)
    })
}

/// The weighted average of the logits of several views.
pub(crate) fn weighted_average(logits: impl Iterator<Item = (Tensor<2>, f32)>) -> Tensor<2> {
    let mut total_weight = 0.0;
    let sum = logits
        .map(|(logits, weight)| {
            total_weight += weight;
            // Whole weights and one division keep the equal averages' results as they were.
            if weight == 1.0 { logits } else { logits * weight }
        })
        .reduce(|a, b| a + b)
        .expect("at least one view");
    sum / total_weight
}

/// The weighted average of the logits `model` gives the views of `images` (NCHW of `shape`).
fn tta_logits(model: &Classifier, images: &[f32], shape: [usize; 4], tta: Tta, device: &Device) -> Tensor<2> {
    weighted_average(tta_views(images, shape, tta, device).map(|(view, weight)| (model.forward(view), weight)))
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

    /// Batches in stored order, every image once.
    pub(crate) fn loader_config(&self) -> LoaderConfig {
        LoaderConfig {
            batch_size: self.batch_size,
            shuffle: false,
            drop_last: false,
            augment: self.perturb.clone(),
            mix: None,
            input: self.input,
            prefetch: 1,
            seed: 0,
        }
    }
}

/// Evaluates `model` (in validation mode, on a plain device) in stored order.
pub fn evaluate(model: &Classifier, set: &ImageSet, num_classes: usize, settings: &EvalSettings, device: &Device) -> Result<EvalResult> {
    let config = settings.loader_config();
    let order: Vec<usize> = (0..set.len()).collect();
    let batches = (0..set.len().div_ceil(settings.batch_size)).map(|index| {
        let batch = make_batch(set, &order, &config, 0, index);
        let logits = tta_logits(model, &batch.images, [batch.len(), 3, batch.height, batch.width], settings.tta, device);
        (logits, batch.labels)
    });
    score(batches, &set.labels, num_classes, device)
}

/// Loss, accuracy and predictions from the logits and labels of every batch of a set, in stored
/// order (`labels` are the set's).
pub(crate) fn score(
    batches: impl Iterator<Item = (Tensor<2>, Vec<i64>)>,
    labels: &[u16],
    num_classes: usize,
    device: &Device,
) -> Result<EvalResult> {
    let mut predictions = Vec::with_capacity(labels.len());
    let mut hits = Hits::default();
    let mut loss_sum = 0.0;
    for (logits, batch_labels) in batches {
        let targets = smoothed_targets(&batch_labels, num_classes, 0.0, device);
        let loss: f32 = cross_entropy(logits.clone(), targets).into_scalar();
        loss_sum += loss as f64 * batch_labels.len() as f64;
        let values: Vec<f32> = logits.into_data().try_to_vec::<f32>().context("reading logits")?;
        predictions.extend(values.chunks_exact(num_classes).map(argmax));
        hits += count_hits(&values, &batch_labels);
    }
    let mut class_hits = vec![0usize; num_classes];
    let mut totals = vec![0usize; num_classes];
    for (&p, &l) in predictions.iter().zip(labels) {
        totals[l as usize] += 1;
        class_hits[l as usize] += (p == l as usize) as usize;
    }
    let images = labels.len().max(1) as f64;
    Ok(EvalResult {
        loss: loss_sum / images,
        accuracy: hits.top1 as f64 / images,
        accuracy5: reports_top5(num_classes).then(|| hits.top5 as f64 / images),
        per_class_accuracy: class_hits.iter().zip(&totals).map(|(&h, &t)| if t == 0 { 0.0 } else { h as f64 / t as f64 }).collect(),
        predictions,
    })
}

/// What `eval` evaluates: a checkpoint of a run on one split of its data set, or of another copy
/// of that data set (`--data`, e.g. CIFAR-10's binary release for a run trained on JPEG folders).
#[derive(Clone, Copy, Debug)]
pub struct EvalTarget<'a> {
    /// `test` or `val`.
    pub split: &'a str,
    pub checkpoint: &'a str,
    pub data: Option<&'a Path>,
}

impl EvalTarget<'_> {
    /// "test split", or "test split of PATH" for another copy.
    pub fn describe(&self) -> String {
        match self.data {
            None => format!("{} split", self.split),
            Some(path) => format!("{} split of {}", self.split, path.display()),
        }
    }

    /// The copy's file name up to its first dot (`cifar-10-batches-bin`, `cifar-10-binary` for
    /// `cifar-10-binary.tar.gz`): what files written about it add to their names, so they do not
    /// replace those of the run's own data set.
    pub fn copy_name(&self) -> Option<String> {
        let name = self.data?.file_name()?.to_string_lossy().split('.').next()?.to_string();
        (!name.is_empty()).then_some(name)
    }

    /// How files written about this evaluation begin: `test-best`, `test-best-<copy name>`.
    pub fn file_stem(&self) -> String {
        match self.copy_name() {
            None => format!("{}-{}", self.split, self.checkpoint),
            Some(copy) => format!("{}-{}-{copy}", self.split, self.checkpoint),
        }
    }
}

/// A run's model with one of its checkpoints, and the split it is evaluated on.
pub struct RunEvaluation {
    pub model: Classifier,
    pub set: ImageSet,
    pub classes: ClassNames,
    pub device: Device,
    pub settings: EvalSettings,
}

impl RunEvaluation {
    /// Loads a run's checkpoint and the split `target` names, as split at training time (the
    /// run's `data.*` settings apply to another copy too). Another copy must have the run's
    /// classes in the same order and images of the size its model trained on.
    pub fn load(run: &RunDir, config: &ExperimentConfig, target: &EvalTarget) -> Result<Self> {
        let device = crate::device::parse(&config.run.device)?;
        let data = match target.data {
            None => super::prepare_data(config)?,
            Some(path) => {
                let mut copy = config.clone();
                copy.data.path = path.to_path_buf();
                copy.data.download = false;
                super::prepare_data(&copy)?
            }
        };
        let set = match target.split {
            "test" => data.test,
            "val" => data.val.context("this run has no validation split (data.val_size = 0)")?,
            other => bail!("unknown split `{other}`; expected test or val"),
        };
        let classes = match target.data {
            None => data.classes,
            Some(path) => check_copy(run, config, path, &data.classes, &set)?,
        };
        let model = super::load_run_model(config, classes.len(), &run.checkpoint(target.checkpoint), &device)?;
        Ok(Self { model, set, classes, device, settings: EvalSettings::from_config(config) })
    }

    /// The accuracy on the split, its images passed through `perturb` first when given.
    pub fn evaluate(&self, perturb: Option<&Pipeline>) -> Result<EvalResult> {
        let settings = EvalSettings { perturb: perturb.cloned(), ..self.settings.clone() };
        evaluate(&self.model, &self.set, self.classes.len(), &settings, &self.device)
    }
}

/// Checks a copy of a run's data set (its `classes` and the split `set`) against the run's
/// `summary.json`; returns the run's classes, named as it names them (a copy may lack the
/// descriptions its names come from).
fn check_copy(run: &RunDir, config: &ExperimentConfig, copy: &Path, classes: &ClassNames, set: &ImageSet) -> Result<ClassNames> {
    let summary = run.read_summary().with_context(|| {
        format!("--data checks the copy against the classes and image size in run {}'s summary.json, written when training ends", run.id)
    })?;
    check_same_classes(copy, &classes.ids, &run.id, &summary.classes)?;
    let (height, width) = config.input_transform().output_shape(set.height, set.width);
    let side = summary.image_size;
    if (height, width) != (side, side) {
        bail!(
            "{}: its images come to the model as {height}x{width}, but run {} trained it on {side}x{side} images \
             (image_size in its summary.json)",
            copy.display(),
            run.id
        );
    }
    Ok(summary.class_names())
}

/// A copy of a run's data set must list the run's classes in the same order; otherwise the error
/// names the first place where the two lists differ.
fn check_same_classes(data: &Path, data_classes: &[String], run_id: &str, run_classes: &[String]) -> Result<()> {
    let count = data_classes.len().max(run_classes.len());
    let Some(index) = (0..count).find(|&i| data_classes.get(i) != run_classes.get(i)) else { return Ok(()) };
    let class = |list: &[String]| list.get(index).map_or_else(|| "missing".to_string(), |c| format!("`{c}`"));
    bail!(
        "{}: its classes differ from those run {run_id} trained on: class {index} is {} there and {} in the run \
         ({} classes there, {} in the run; both must list the same names in the same order)",
        data.display(),
        class(data_classes),
        class(run_classes),
        data_classes.len(),
        run_classes.len()
    )
}

/// Counts of (true class, predicted class).
pub fn confusion(labels: &[u16], predictions: &[usize], num_classes: usize) -> Vec<Vec<usize>> {
    let mut counts = vec![vec![0; num_classes]; num_classes];
    for (&l, &p) in labels.iter().zip(predictions) {
        counts[l as usize][p] += 1;
    }
    counts
}

/// Evaluates a run's checkpoint as `target` says, hands accuracy (and top-5), loss and per-class
/// accuracy (classes by readable name and id) to `show`, then writes the confusion matrix (counts
/// and row-normalized, SVG and PNG) into `<run>/eval/`; returns the stems written.
pub fn evaluate_run(run: &RunDir, config: &ExperimentConfig, target: &EvalTarget, show: impl FnOnce(&str)) -> Result<Vec<PathBuf>> {
    let evaluation = RunEvaluation::load(run, config, target)?;
    let result = evaluation.evaluate(None)?;
    let top5 = result.accuracy5.map(|a| format!("  top-5 {:.2}%", 100.0 * a)).unwrap_or_default();
    let mut report = format!(
        "run {} checkpoint {}, {} ({} images)\naccuracy {:.2}%{top5}  loss {:.4}\n",
        run.id,
        target.checkpoint,
        target.describe(),
        evaluation.set.len(),
        100.0 * result.accuracy,
        result.loss
    );
    let classes = &evaluation.classes;
    let labels: Vec<String> = (0..classes.len()).map(|index| classes.label(index)).collect();
    let width = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0).max(12);
    for (label, acc) in labels.iter().zip(&result.per_class_accuracy) {
        report.push_str(&format!("  {label:<width$} {:>6.2}%\n", 100.0 * acc));
    }
    // Shown before anything is written: a run folder that cannot be written still gets its metrics.
    show(&report);
    let counts = confusion(&evaluation.set.labels, &result.predictions, classes.len());
    let written = write_confusion(run, target, &classes.names, &counts).context("could not write the confusion matrix")?;
    Ok(written.into_iter().map(|(stem, _)| stem).collect())
}

/// Writes `<run>/eval/<target's file stem>-confusion-{counts,normalized}.{svg,png}`, the classes
/// labelled by `names`; returns each file stem with its PNG (counts first).
pub fn write_confusion(run: &RunDir, target: &EvalTarget, names: &[String], counts: &[Vec<usize>]) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let folder = run.path.join("eval");
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    let mut written = Vec::new();
    for (normalized, kind) in [(false, "counts"), (true, "normalized")] {
        let title = format!("{} {}, {}: confusion ({kind})", run.id, target.checkpoint, target.describe());
        let svg = confusion_matrix_svg(names, counts, normalized, &title)?;
        let path = folder.join(format!("{}-confusion-{kind}", target.file_stem()));
        let png = svg_to_png(&svg)?;
        write_atomic(&path.with_extension("svg"), svg.as_bytes())?;
        write_atomic(&path.with_extension("png"), &png)?;
        written.push((path, png));
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
        let edge = |mirrored, shift| View::new(mirrored, (shift, shift), PaddingMode::Edge, 1.0);
        assert_eq!(view(&plane, 2, 3, edge(true, 0)), vec![3.0, 2.0, 1.0, 6.0, 5.0, 4.0]);
        assert_eq!(view(&plane, 2, 3, edge(false, 1)), vec![1.0, 1.0, 2.0, 1.0, 1.0, 2.0]);
        assert_eq!(view(&plane, 2, 3, edge(false, -1)), vec![5.0, 6.0, 6.0, 5.0, 6.0, 6.0]);
        let reflect = |mirrored, shift| View::new(mirrored, shift, PaddingMode::Reflect, 1.0);
        assert_eq!(view(&plane, 2, 3, reflect(false, (1, 1))), vec![5.0, 4.0, 5.0, 2.0, 1.0, 2.0]);
        assert_eq!(view(&plane, 2, 3, reflect(true, (-1, 0))), vec![6.0, 5.0, 4.0, 3.0, 2.0, 1.0]);
        assert_eq!(Tta::FlipTranslate.views().len(), 6);
    }

    fn tutorial_net(device: &Device) -> Classifier {
        device.seed(3);
        let config = crate::models::ModelConfig { name: "tutorial_net".into(), ..Default::default() };
        crate::models::build(&config, 10, device).unwrap()
    }

    #[test]
    fn tta_averages_the_logits_of_views_made_by_hand() {
        use crate::augment::{Image, RandomCrop, flip_horizontal};
        let device = Device::flex();
        let model = tutorial_net(&device);
        let input = InputTransform { size: None, normalize: Default::default() };
        let images: Vec<Image> =
            (0..3).map(|k| Image::new((0..32 * 32 * 3).map(|i| ((i * 7919 + k * 131) % 251) as u8).collect(), 32, 32)).collect();
        let batch = |images: &[Image]| -> Vec<f32> {
            let mut out = vec![0.0; images.len() * 3 * 32 * 32];
            for (image, out) in images.iter().zip(out.chunks_exact_mut(3 * 32 * 32)) {
                input.apply(image, out);
            }
            out
        };
        let logits = |pixels: Vec<f32>| -> Vec<f32> {
            model.forward(Tensor::from_data(TensorData::new(pixels, [3, 3, 32, 32]), &device)).into_data().try_to_vec().unwrap()
        };
        // Each view: the 32x32 window at `corner` of the image padded by one pixel ((1, 1) is the
        // image itself), mirrored before or after (airbench) the crop or not at all; with its weight.
        for (tta, padding_mode, mirror_first, unshifted, shifted) in [
            (Tta::FlipTranslate, PaddingMode::Edge, true, 1.0 / 6.0, 1.0 / 6.0),
            (Tta::FlipTranslateAirbench, PaddingMode::Reflect, false, 0.25, 0.125),
        ] {
            let crop = RandomCrop { padding: 1, padding_mode };
            let mut expected = vec![0.0f32; 30];
            for mirrored in [false, true] {
                for (corner, weight) in [((1, 1), unshifted), ((0, 0), shifted), ((2, 2), shifted)] {
                    let seen: Vec<Image> = images
                        .iter()
                        .map(|image| {
                            let mut image = image.clone();
                            if mirrored && mirror_first {
                                flip_horizontal(&mut image);
                            }
                            let mut image = crop.apply_window(&image, (32, 32), corner);
                            if mirrored && !mirror_first {
                                flip_horizontal(&mut image);
                            }
                            image
                        })
                        .collect();
                    for (e, l) in expected.iter_mut().zip(logits(batch(&seen))) {
                        *e += weight * l;
                    }
                }
            }
            let got: Vec<f32> = tta_logits(&model, &batch(&images), [3, 3, 32, 32], tta, &device).into_data().try_to_vec().unwrap();
            for (g, e) in got.iter().zip(&expected) {
                assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "{tta:?}: {got:?} against {expected:?}");
            }
            assert!(got.iter().zip(logits(batch(&images))).any(|(g, l)| (g - l).abs() > 1e-3), "{tta:?} changed nothing");
        }
    }

    #[test]
    fn tta_leaves_a_constant_image_as_it_is() {
        let device = Device::flex();
        let model = tutorial_net(&device);
        let mut set = ImageSet::empty(32, 32);
        set.pixels = (0..4).flat_map(|k| vec![(40 + 50 * k) as u8; set.image_bytes()]).collect();
        set.labels = vec![0, 1, 2, 3];
        let settings =
            |tta| EvalSettings { batch_size: 4, input: InputTransform { size: None, normalize: Default::default() }, tta, perturb: None };
        let plain = evaluate(&model, &set, 10, &settings(Tta::None), &device).unwrap();
        for tta in [Tta::Flip, Tta::FlipTranslate, Tta::FlipTranslateAirbench] {
            let result = evaluate(&model, &set, 10, &settings(tta), &device).unwrap();
            assert_eq!(result.predictions, plain.predictions, "{tta:?}");
            assert!((result.loss - plain.loss).abs() < 1e-5, "{tta:?}: loss {} against {}", result.loss, plain.loss);
        }
    }

    /// `count` 32x32 images of one model, with the logits it gives each (all labels 0).
    fn images_and_logits(model: &Classifier, count: usize, settings: &EvalSettings) -> (ImageSet, Vec<Vec<f32>>) {
        let mut set = ImageSet::empty(32, 32);
        set.pixels = (0..count * set.image_bytes()).map(|i| (i * 7919 % 251) as u8).collect();
        set.labels = vec![0; count];
        let order: Vec<usize> = (0..count).collect();
        let batch = make_batch(&set, &order, &LoaderConfig { batch_size: count, ..settings.loader_config() }, 0, 0);
        let input = Tensor::from_data(TensorData::new(batch.images, [count, 3, 32, 32]), &Device::flex());
        let logits: Vec<f32> = model.forward(input).into_data().try_to_vec().unwrap();
        let classes = logits.len() / count;
        (set, logits.chunks(classes).map(<[f32]>::to_vec).collect())
    }

    #[test]
    fn evaluation_counts_top5_in_the_same_pass_for_more_than_ten_classes() {
        let device = Device::flex();
        device.seed(3);
        let config = crate::models::ModelConfig { name: "tutorial_net".into(), ..Default::default() };
        let model = crate::models::build(&config, 12, &device).unwrap();
        let settings = EvalSettings {
            batch_size: 4,
            input: InputTransform { size: None, normalize: Default::default() },
            tta: Tta::None,
            perturb: None,
        };
        let (mut set, logits) = images_and_logits(&model, 6, &settings);
        // Image i is labelled with the class its logits rank i-th: one top-1 hit, five top-5 hits.
        set.labels = logits
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let mut order: Vec<usize> = (0..row.len()).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                order[i] as u16
            })
            .collect();
        let result = evaluate(&model, &set, 12, &settings, &device).unwrap();
        assert_eq!(result.accuracy, 1.0 / 6.0);
        assert_eq!(result.accuracy5, Some(5.0 / 6.0));
        assert_eq!(result.predictions[0], set.labels[0] as usize);

        let ten = crate::models::build(&config, 10, &device).unwrap();
        let (set, _) = images_and_logits(&ten, 3, &settings);
        assert_eq!(evaluate(&ten, &set, 10, &settings, &device).unwrap().accuracy5, None, "no top-5 for 10 classes");
    }

    #[test]
    fn a_copy_must_list_the_run_classes_in_order_and_the_error_names_the_first_difference() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let run = names(&["airplane", "automobile", "bird"]);
        let copy = Path::new("copies/cifar-10-batches-bin");
        check_same_classes(copy, &run, "r1", &run).unwrap();
        let swapped = check_same_classes(copy, &names(&["airplane", "bird", "automobile"]), "r1", &run).unwrap_err().to_string();
        assert_eq!(
            swapped,
            "copies/cifar-10-batches-bin: its classes differ from those run r1 trained on: class 1 is `bird` there and \
             `automobile` in the run (3 classes there, 3 in the run; both must list the same names in the same order)"
        );
        let longer = check_same_classes(copy, &names(&["airplane", "automobile", "bird", "cat"]), "r1", &run).unwrap_err().to_string();
        assert!(longer.contains("class 3 is `cat` there and missing in the run (4 classes there, 3 in the run"), "{longer}");
    }

    #[test]
    fn evaluations_of_a_copy_are_described_and_filed_apart() {
        let own = EvalTarget { split: "test", checkpoint: "best", data: None };
        assert_eq!((own.describe(), own.file_stem(), own.copy_name()), ("test split".into(), "test-best".into(), None));
        let archive = Path::new("data/cifar-10-binary.tar.gz");
        let copy = EvalTarget { split: "val", checkpoint: "last", data: Some(archive) };
        assert_eq!(copy.describe(), format!("val split of {}", archive.display()));
        assert_eq!(copy.file_stem(), "val-last-cifar-10-binary");
        let folder = EvalTarget { data: Some(Path::new("copies/cifar-10-batches-bin/")), ..own };
        assert_eq!(folder.file_stem(), "test-best-cifar-10-batches-bin");
    }

    #[test]
    fn confusion_counts_true_rows_and_predicted_columns() {
        assert_eq!(confusion(&[0, 0, 1, 2], &[0, 1, 1, 0], 3), vec![vec![1, 1, 0], vec![0, 1, 0], vec![1, 0, 0]]);
    }
}
