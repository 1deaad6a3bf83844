//! `ferrovision prune`: a trained run pruned in steps of prune -> fine-tune, each fine-tuning a new
//! run (through the trainer, like any other run, so the journal lists it with its parent), then a
//! report comparing the source and the result: size, FLOPs, speed, accuracy, channels kept.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use serde::Serialize;

use super::config::{Importance, PruneConfig};
use super::graph::dependency_groups;
use super::importance::{TaylorTerms, channel_scores, select_for_step, taylor_terms};
use super::remove::remove_channels;
use crate::bench::Workload;
use crate::config::ExperimentConfig;
use crate::data::loader::make_batch;
use crate::models::{Classifier, ModelConfig, trace, transfer};
use crate::tracking::RunDir;
use crate::tracking::plot::{Series, line_chart_files};
use crate::train::callbacks::save_checkpoint;
use crate::train::evaluate::{EvalSettings, evaluate};
use crate::train::{Precision, Start, Trainer, TrainingData, batch_tensors, forward_backward, load_run_model, loss, prepare_data};

/// Size, cost and speed of one model.
#[derive(Clone, Debug, Serialize)]
pub struct ModelFigures {
    pub params: usize,
    /// FLOPs per image at the run's image size (a multiply-add counted as two).
    pub flops: u64,
    /// Milliseconds per image at batch 1, images per second at batch 256, training images per
    /// second (batch `train.batch_size`); absent unless `prune.measure_speed`.
    pub latency_ms: Option<f64>,
    pub throughput: Option<f64>,
    pub train_throughput: Option<f64>,
}

/// One prune -> fine-tune step.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub run_id: String,
    pub flops: u64,
    pub params: usize,
    /// Test accuracy right after pruning, and after fine-tuning.
    pub accuracy_pruned: f64,
    pub accuracy_finetuned: f64,
}

/// What `prune_report.{md,json}` says.
#[derive(Clone, Debug, Serialize)]
pub struct PruneReport {
    pub source: PathBuf,
    pub importance: Importance,
    pub accuracy_before: f64,
    pub before: ModelFigures,
    pub after: ModelFigures,
    pub steps: Vec<StepReport>,
    /// (layer, output channels before, after) of every convolution and linear layer.
    pub channels: Vec<(String, usize, usize)>,
}

/// The fine-tuning config of a prune experiment: the file's data, augmentation, training and run
/// settings, with the source run's model (and its normalization and input size, which its weights
/// expect).
fn finetune_config(config: &ExperimentConfig, source: &ExperimentConfig) -> ExperimentConfig {
    let mut finetune = config.clone();
    finetune.model = ModelConfig { weights: None, pretrained: None, ..source.model.clone() };
    finetune.transfer = source.transfer.clone();
    finetune.augment.normalize = source.augment.normalize;
    finetune.data.input_size = source.data.input_size;
    finetune
}

/// The run a prune experiment starts from, loaded, with the data and settings of its fine-tuning.
pub(crate) struct Source<'a> {
    pub p: &'a PruneConfig,
    pub source_run: RunDir,
    pub checkpoint: PathBuf,
    pub finetune: ExperimentConfig,
    pub data: TrainingData,
    pub classes: usize,
    pub settings: EvalSettings,
    pub device: Device,
    pub model: Classifier,
    /// The side of the images the model was trained on.
    pub size: usize,
}

impl<'a> Source<'a> {
    pub fn load(config: &'a ExperimentConfig) -> Result<Self> {
        let p = config.prune.as_ref().context("the config has no [prune] section (prune.source names the run to prune)")?;
        let (source_run, source_config) = RunDir::open(&p.source).with_context(|| format!("prune.source = {}", p.source.display()))?;
        let summary = source_run.read_summary().with_context(|| format!("prune.source: {} has not finished", p.source.display()))?;
        let finetune = finetune_config(config, &source_config);
        let device = crate::device::parse(&finetune.run.device)?;
        device.seed(finetune.train.seed);
        let data = prepare_data(&finetune)?;
        let classes = data.classes.len();
        if classes != summary.classes.len() {
            bail!("the data set has {classes} classes, the model of {} {}", p.source.display(), summary.classes.len());
        }
        let settings = EvalSettings::from_config(&finetune);
        let checkpoint = source_run.checkpoint(&p.checkpoint);
        let model = load_run_model(&source_config, classes, &checkpoint, &device)?;
        Ok(Self { p, source_run, checkpoint, finetune, data, classes, settings, device, model, size: summary.image_size })
    }
}

/// Runs the experiment `config` describes (`[prune]` is required): writes one fine-tuning run per
/// step (`<run_id>` for one step, `<run_id>-step<k>` for several) and the report into the last.
pub fn prune(config: &ExperimentConfig, run_id: &str, interrupt: &AtomicBool) -> Result<(RunDir, PruneReport)> {
    let Source { p, source_run, checkpoint, mut finetune, data, classes, settings, device, mut model, size } = Source::load(config)?;
    let accuracy = |model: &Classifier| -> Result<f64> { Ok(evaluate(model, &data.test, classes, &settings, &device)?.accuracy) };
    let accuracy_before = accuracy(&model)?;
    let source_model = finetune.model.clone();
    let mut before = figures(&model, size);
    crate::outln!(
        "{}: test accuracy {:.2}%, {} parameters, {:.1} MFLOPs",
        p.source.display(),
        100.0 * accuracy_before,
        before.params,
        before.flops as f64 / 1e6
    );

    let first_graph = dependency_groups(&model)?;
    let mut steps = Vec::new();
    let mut parent = source_run.id.clone();
    let mut last_run = None;
    for step in 1..=p.steps {
        let graph = dependency_groups(&model)?;
        let taylor = match p.importance {
            Importance::Taylor => taylor_batches(&finetune, &data, &checkpoint_of(&last_run, &checkpoint), p.taylor_batches, &device)?,
            _ => Vec::new(),
        };
        let scores = channel_scores(&model, &graph, p.importance, &taylor, finetune.train.seed + step as u64)?;
        let kept = select_for_step(&graph, &scores, p)?;
        let rebuild = |c: &ModelConfig| transfer::build(c, &finetune.transfer, classes, &device, None).map(|(m, _)| m);
        let (pruned, pruned_config) = remove_channels(&model, &finetune.model, &graph, &kept, rebuild)?;
        let accuracy_pruned = accuracy(&pruned)?;
        let (params, flops) = (crate::models::trainable_params(&pruned), total_flops(&pruned, size));
        crate::outln!(
            "step {step}/{}: {params} parameters, {:.1} MFLOPs ({:.1}% of the source's), test accuracy {:.2}% before fine-tuning",
            p.steps,
            flops as f64 / 1e6,
            100.0 * flops as f64 / before.flops as f64,
            100.0 * accuracy_pruned
        );

        finetune.model = pruned_config;
        finetune.experiment.parent = parent.clone();
        if !finetune.experiment.tags.iter().any(|t| t == "pruned") {
            finetune.experiment.tags.push("pruned".into());
        }
        let id = if p.steps == 1 { run_id.to_string() } else { format!("{run_id}-step{step}") };
        finetune.run.id = id.clone();
        if !finetune.experiment.id.is_empty() {
            finetune.experiment.id = id.clone();
        }
        // Beside the run folder until the trainer has made it; then the run keeps it.
        std::fs::create_dir_all(&finetune.run.dir)?;
        let pruned_checkpoint = finetune.run.dir.join(format!(".{id}.pruned.bpk"));
        save_checkpoint(&pruned, &pruned_checkpoint)?;
        let trained = Trainer::new(&finetune, Start::FromCheckpoint(&id, &pruned_checkpoint)).and_then(|t| t.fit(interrupt));
        let (run, summary) = match trained {
            Ok(done) => done,
            Err(e) => {
                let _ = std::fs::remove_file(&pruned_checkpoint);
                return Err(e);
            }
        };
        std::fs::rename(&pruned_checkpoint, run.checkpoint("pruned")).context("keeping the pruned checkpoint")?;
        model = load_run_model(&finetune, classes, &run.checkpoint("best"), &device)?;
        steps.push(StepReport { run_id: id.clone(), flops, params, accuracy_pruned, accuracy_finetuned: summary.test_acc });
        parent = id;
        last_run = Some(run);
    }
    let run = last_run.expect("prune.steps >= 1");
    let mut after = figures(&model, size);
    if p.measure_speed {
        let mut models = [(&mut before, &source_model), (&mut after, &finetune.model)];
        measure_speeds(&mut models, classes, size, finetune.train.batch_size, &device)?;
    }
    let final_graph = trace::summarize(&model, Tensor::zeros([1, 3, size, size], &device), false).1;
    let channels = first_graph
        .layers
        .iter()
        .filter(|l| l.kind != trace::LayerKind::BatchNorm)
        .map(|l| {
            let now = final_graph.iter().find(|f| f.name == l.name).map_or(l.output[0], |f| f.output[0]);
            (l.name.clone(), l.output[0], now)
        })
        .collect();
    let report = PruneReport { source: p.source.clone(), importance: p.importance, accuracy_before, before, after, steps, channels };
    write_report(&run.path, &report)?;
    Ok((run, report))
}

/// The checkpoint the current model came from: the last step's best, or the source's.
fn checkpoint_of(last_run: &Option<RunDir>, source: &Path) -> PathBuf {
    last_run.as_ref().map_or_else(|| source.to_path_buf(), |run| run.checkpoint("best"))
}

/// Taylor terms (weight x gradient) of `batches` training batches (in stored order, without
/// augmentation) for the model of `config` loaded from `checkpoint`.
fn taylor_batches(
    config: &ExperimentConfig,
    data: &TrainingData,
    checkpoint: &Path,
    batches: usize,
    device: &Device,
) -> Result<Vec<TaylorTerms>> {
    let autodiff = device.clone().autodiff();
    let classes = data.classes.len();
    let model = load_run_model(config, classes, checkpoint, &autodiff)?;
    let loader = EvalSettings::from_config(config);
    let loader = crate::data::loader::LoaderConfig {
        batch_size: config.train.batch_size,
        shuffle: false,
        drop_last: false,
        augment: None,
        mix: None,
        input: loader.input,
        prefetch: 1,
        seed: 0,
    };
    let order: Vec<usize> = (0..data.train.len()).collect();
    let count = batches.min(data.train.len().div_ceil(config.train.batch_size));
    (0..count)
        .map(|index| {
            let (images, labels) = batch_tensors(make_batch(&data.train, &order, &loader, 0, index), &autodiff);
            let targets = loss::smoothed_targets(&labels, classes, 0.0, &autodiff);
            let (grads, _, _) = forward_backward(&model, images, targets, 1.0);
            Ok(taylor_terms(&model, &grads))
        })
        .collect()
}

fn total_flops(model: &Classifier, size: usize) -> u64 {
    let device = model.devices().first().cloned().unwrap_or_else(Device::flex);
    trace::summarize(model, Tensor::zeros([1, 3, size, size], &device), false).1.iter().map(|l| l.flops).sum()
}

/// Size and cost of `model`; its speed is measured by [`measure_speeds`].
fn figures(model: &Classifier, size: usize) -> ModelFigures {
    let params = crate::models::trainable_params(model);
    ModelFigures { params, flops: total_flops(model, size), latency_ms: None, throughput: None, train_throughput: None }
}

/// Rounds of speed measurement; each figure is the best of its rounds.
const SPEED_ROUNDS: usize = 3;

/// Speeds of the source and the pruned model, measured in alternation, round after round, so that
/// a busy moment of the machine does not favour either.
fn measure_speeds(
    models: &mut [(&mut ModelFigures, &ModelConfig)],
    classes: usize,
    size: usize,
    train_batch: usize,
    device: &Device,
) -> Result<()> {
    let best = |old: Option<f64>, new: f64, lower_is_better: bool| {
        Some(old.map_or(new, |old| if lower_is_better { old.min(new) } else { old.max(new) }))
    };
    for _ in 0..SPEED_ROUNDS {
        for (figure, config) in models.iter_mut() {
            let workload = |batch| Workload { model: config, classes, batch, size, precision: Precision::F32 };
            let latency = 1000.0 / crate::bench::inference(&workload(1), 50, device)?;
            let throughput = crate::bench::inference(&workload(256), 3, device)?;
            let train = crate::bench::train_step(&workload(train_batch), 5, 2, device)?;
            figure.latency_ms = best(figure.latency_ms, latency, true);
            figure.throughput = best(figure.throughput, throughput, false);
            figure.train_throughput = best(figure.train_throughput, train, false);
        }
    }
    Ok(())
}

/// `prune_report.md`, `prune_report.json` and `prune_channels.{svg,png}` in `folder`.
fn write_report(folder: &Path, r: &PruneReport) -> Result<()> {
    let json = serde_json::to_string_pretty(r)?;
    crate::files::write_atomic(&folder.join("prune_report.json"), json.as_bytes())?;
    let ratio = |a: f64, b: f64| if b > 0.0 { format!("{:.2}x", a / b) } else { "-".into() };
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
    let mut md = format!("# Pruning report\n\nSource: `{}`, importance `{:?}`.\n\n", r.source.display(), r.importance);
    md += "| | source | pruned | ratio |\n|---|---:|---:|---:|\n";
    md +=
        &format!("| parameters | {} | {} | {} |\n", r.before.params, r.after.params, ratio(r.before.params as f64, r.after.params as f64));
    md += &format!(
        "| MFLOPs per image | {:.1} | {:.1} | {} |\n",
        r.before.flops as f64 / 1e6,
        r.after.flops as f64 / 1e6,
        ratio(r.before.flops as f64, r.after.flops as f64)
    );
    let speed = |name: &str, a: Option<f64>, b: Option<f64>, digits: usize, inverse: bool| {
        let x = match (a, b) {
            (Some(a), Some(b)) if inverse => ratio(a, b),
            (Some(a), Some(b)) => ratio(b, a),
            _ => "-".into(),
        };
        format!("| {name} | {} | {} | {x} |\n", opt(a, digits), opt(b, digits))
    };
    md += &speed("latency, batch 1 (ms)", r.before.latency_ms, r.after.latency_ms, 2, true);
    md += &speed("inference, batch 256 (img/s)", r.before.throughput, r.after.throughput, 0, false);
    md += &speed("training step (img/s)", r.before.train_throughput, r.after.train_throughput, 0, false);
    md += &format!(
        "\nTest accuracy of the source: {:.2}%.\n\n| step | run | MFLOPs | parameters | after pruning | after fine-tuning |\n|---:|---|---:|---:|---:|---:|\n",
        100.0 * r.accuracy_before
    );
    for (i, s) in r.steps.iter().enumerate() {
        md += &format!(
            "| {} | {} | {:.1} | {} | {:.2}% | {:.2}% |\n",
            i + 1,
            s.run_id,
            s.flops as f64 / 1e6,
            s.params,
            100.0 * s.accuracy_pruned,
            100.0 * s.accuracy_finetuned
        );
    }
    md += "\n## Channels kept\n\n| layer | before | after |\n|---|---:|---:|\n";
    for (layer, before, after) in &r.channels {
        md += &format!("| {layer} | {before} | {after} |\n");
    }
    crate::files::write_atomic(&folder.join("prune_report.md"), md.as_bytes())?;
    let points =
        |pick: fn(&(String, usize, usize)) -> usize| r.channels.iter().enumerate().map(|(i, c)| (i as f64, pick(c) as f64)).collect();
    let series = [Series { name: "source", points: points(|c| c.1) }, Series { name: "pruned", points: points(|c| c.2) }];
    line_chart_files(&folder.join("prune_channels"), "Output channels per layer", "layer (forward order)", "channels", &series)?;
    Ok(())
}
