//! The training loop. As in Lightning, the loop itself stays small: what happens at the end of an
//! epoch (metrics log, checkpoints, console line) lives in callbacks, each in one place.

pub mod callbacks;
pub mod config;
pub mod ema;
pub mod evaluate;
pub mod loss;
pub mod optim;
pub mod resume;
pub mod robustness;
pub mod schedule;
pub mod sweep;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::TensorData;
use indicatif::{ProgressBar, ProgressStyle};

use crate::augment::transforms::Pipeline;
use crate::config::ExperimentConfig;
use crate::data::loader::{Batch, EpochLoader, LoaderConfig, num_batches};
use crate::data::{self, ImageSet};
use crate::models::{self, Classifier};
use crate::tracking::{EpochMetrics, RunDir, RunSummary};
use callbacks::{Callback, Checkpointer, ConsoleLog, CurvesPlot, EarlyStopper, EpochContext, MetricsLog, TensorBoardLog, TestContext};
pub use evaluate::{EvalResult, EvalSettings, RunEvaluation, Tta, evaluate, evaluate_run};
use schedule::LrSchedule;

/// The splits a run trains, validates and tests on.
pub struct TrainingData {
    pub classes: Vec<String>,
    pub train: Arc<ImageSet>,
    pub val: Option<ImageSet>,
    pub test: ImageSet,
}

/// Loads the data set a config names (through the cache) and applies the split and subsets.
pub fn prepare_data(config: &ExperimentConfig) -> Result<TrainingData> {
    let d = &config.data;
    let seed = config.train.seed;
    let path = if !d.path.exists() && d.download {
        let folder = d.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        data::download::download_cifar10(folder)?
    } else {
        d.path.clone()
    };
    if !path.exists() {
        bail!("data set not found at {} (set data.path or --data to a CIFAR-10 folder or archive, or add --download)", path.display());
    }
    let dataset = data::load_dataset(&path, Some(&d.cache_dir))?;
    let num_classes = dataset.classes.len();
    let (train, val) = if d.val_size > 0 {
        let (train, val) = data::split::stratified_split(&dataset.train, num_classes, d.val_size, seed)?;
        (train, Some(val))
    } else {
        (dataset.train, None)
    };
    let train = match d.subset_per_class {
        0 => train,
        n => data::split::subset_per_class(&train, num_classes, n, seed)?,
    };
    let test = match d.test_subset_per_class {
        0 => dataset.test,
        n => data::split::subset_per_class(&dataset.test, num_classes, n, seed)?,
    };
    Ok(TrainingData { classes: dataset.classes, train: Arc::new(train), val, test })
}

/// The model of a run with the parameters of one of its checkpoints.
pub fn load_run_model(config: &ExperimentConfig, num_classes: usize, checkpoint: &std::path::Path, device: &Device) -> Result<Classifier> {
    let (model, _) = models::transfer::build(&config.model, &config.transfer, num_classes, device, None)?;
    callbacks::load_checkpoint(model, checkpoint)
}

/// Images and labels of a batch as tensors on `device`.
pub fn batch_tensors(batch: Batch, device: &Device) -> (Tensor<4>, Vec<i64>) {
    let shape = [batch.len(), 3, batch.height, batch.width];
    (Tensor::from_data(TensorData::new(batch.images, shape), device), batch.labels)
}

/// Number of rows of `logits` whose arg-max equals the label.
pub fn count_correct(logits: &[f32], labels: &[i64]) -> usize {
    let k = logits.len() / labels.len().max(1);
    logits.chunks_exact(k).zip(labels).filter(|(row, label)| argmax(row) == **label as usize).count()
}

pub fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |best, (i, v)| if *v > row[best] { i } else { best })
}

/// Forward, cross-entropy against `targets`, backward: the gradients of the loss times
/// `loss_scale`, the (unscaled) loss value and the logits (for accuracy).
pub fn forward_backward(model: &Classifier, images: Tensor<4>, targets: Tensor<2>, loss_scale: f32) -> (GradientsParams, f32, Tensor<2>) {
    let logits = model.forward(images);
    let loss = loss::cross_entropy(logits.clone(), targets);
    let loss_value: f32 = loss.clone().into_scalar();
    let scaled = if loss_scale == 1.0 { loss } else { loss * loss_scale };
    (GradientsParams::from_grads(scaled.backward(), model), loss_value, logits.detach())
}

/// One optimizer step on one batch. Returns the updated model, the loss value and the logits.
pub fn step_once(
    model: Classifier,
    optimizer: &mut ModuleOptimizer,
    images: Tensor<4>,
    targets: Tensor<2>,
    lr: f64,
) -> (Classifier, f32, Tensor<2>) {
    let (grads, loss_value, logits) = forward_backward(&model, images, targets, 1.0);
    (optimizer.step(lr, model, grads), loss_value, logits)
}

/// Where training starts: a new run folder, or an existing run's last completed epoch.
pub enum Start<'a> {
    New(&'a str),
    Resume(&'a RunDir),
}

/// Seed of the device RNG (dropout, stochastic depth) in `epoch`: a function of the epoch alone,
/// so a resumed run draws what the uninterrupted one drew.
fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Trains the model a config describes in a new run folder and evaluates its best checkpoint on
/// the test split. `interrupt` (set by Ctrl-C) stops after the current step with a saved checkpoint.
pub fn fit(config: &ExperimentConfig, run_id: &str, interrupt: &AtomicBool) -> Result<(RunDir, RunSummary)> {
    train(config, Start::New(run_id), interrupt)
}

/// Continues an interrupted run from its last completed epoch (`config` is the run's own, possibly
/// with more epochs).
pub fn resume(run: &RunDir, config: &ExperimentConfig, interrupt: &AtomicBool) -> Result<(RunDir, RunSummary)> {
    train(config, Start::Resume(run), interrupt)
}

fn train(config: &ExperimentConfig, start: Start, interrupt: &AtomicBool) -> Result<(RunDir, RunSummary)> {
    let started = Instant::now();
    let resume_point = match start {
        Start::Resume(run) => Some(resume::load_point(run, config)?),
        Start::New(_) => None,
    };
    let base_device = crate::device::parse(&config.run.device)?;
    base_device.seed(config.train.seed);
    let device = base_device.clone().autodiff();
    let data = prepare_data(config)?;
    let num_classes = data.classes.len();
    if data.train.len() < config.train.batch_size {
        bail!("train split has {} images, fewer than train.batch_size = {}", data.train.len(), config.train.batch_size);
    }

    let pipeline = Pipeline::from_config(&config.augment);
    let augmented = pipeline.output_shape(data.train.height, data.train.width)?;
    if augmented != (data.train.height, data.train.width) && config.data.input_size.is_none() {
        bail!(
            "config key augment.transforms: the pipeline turns {}x{} training images into {}x{}, but evaluation \
             sees them unchanged; set data.input_size so both get the same size",
            data.train.height,
            data.train.width,
            augmented.0,
            augmented.1
        );
    }
    // A resumed run loads its own parameters; the pretrained file is not needed again.
    let (mut model, new_parts) = models::transfer::build(
        &config.model,
        &config.transfer,
        num_classes,
        &device,
        resume_point.is_none().then_some(config.data.cache_dir.as_path()),
    )?;
    let params = models::trainable_params(&model);
    let run = match start {
        Start::New(run_id) => RunDir::create(&config.run.dir, run_id, config)?,
        // Its config is rewritten once its state has loaded: a failed resume changes nothing.
        Start::Resume(run) => run.clone(),
    };
    println!(
        "run {}: {} ({} trainable parameters) on {} train / {} val / {} test images, device {}",
        run.path.display(),
        config.model.name,
        params,
        data.train.len(),
        data.val.as_ref().map_or(0, ImageSet::len),
        data.test.len(),
        config.run.device
    );

    let loader_config = LoaderConfig {
        batch_size: config.train.batch_size,
        shuffle: true,
        drop_last: true,
        augment: Some(pipeline),
        mix: config.augment.mix.enabled().then_some(config.augment.mix),
        input: config.input_transform(),
        prefetch: config.data.prefetch,
        seed: config.train.seed,
    };
    let eval_settings = EvalSettings::from_config(config);
    let batches_per_epoch = num_batches(data.train.len(), &loader_config);
    let accumulate = config.train.accumulate_batches;
    // Optimizer steps: a last, partial group of accumulated batches also steps, as in Lightning.
    let steps_per_epoch = batches_per_epoch.div_ceil(accumulate);
    let mut schedule = LrSchedule::from_config(&config.train, steps_per_epoch);
    let backbone_lr = (config.model.weights.is_some() || config.model.pretrained.is_some())
        .then(|| (models::transfer::backbone_group(&model, &new_parts), config.transfer.backbone_lr_scale));
    let mut optimizer = optim::build(&config.train, backbone_lr);
    let mut ema = config.train.ema_decay.map(|decay| ema::ModelEma::new(&model, decay));
    if let Some(point) = &resume_point {
        (model, optimizer) = resume::restore(&run, point, model, optimizer, ema.as_mut())?;
        run.write_config(config)?;
    }
    // In order: the metrics line first (the curves read it), the curves before TensorBoard (which logs them).
    let mut callbacks: Vec<Box<dyn Callback>> =
        vec![Box::new(MetricsLog), Box::new(Checkpointer::default()), Box::new(ConsoleLog), Box::new(CurvesPlot)];
    if let Some(early) = config.train.early_stopping {
        callbacks.push(Box::new(EarlyStopper::new(early)));
    }
    if config.run.tensorboard {
        callbacks.push(Box::new(TensorBoardLog::create(&run)?));
    }

    let mut step = 0;
    let mut train_seconds = 0.0;
    let mut epochs_completed = 0;
    if let Some(point) = &resume_point {
        for metrics in resume::truncate_metrics(&run, point.epoch)? {
            for callback in &mut callbacks {
                callback.replay(&metrics)?;
            }
            schedule.epoch_end(&metrics)?;
            train_seconds += metrics.seconds;
        }
        step = point.epoch * steps_per_epoch;
        epochs_completed = point.epoch;
        println!("resuming {} after epoch {}", run.path.display(), point.epoch);
    }
    for epoch in epochs_completed + 1..=config.train.epochs {
        base_device.seed(epoch_seed(config.train.seed, epoch));
        let epoch_start = Instant::now();
        let loader = EpochLoader::start(data.train.clone(), loader_config.clone(), epoch, 0);
        let bar = progress_bar(config, batches_per_epoch, epoch);
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        let mut accumulated = GradientsAccumulator::<Classifier>::new();
        let mut pending = 0;
        for (index, batch) in loader.enumerate() {
            if interrupt.load(Ordering::SeqCst) {
                break;
            }
            let lr = schedule.lr(step);
            let mix_lambda = batch.mix_lambda;
            let (images, labels) = batch_tensors(batch, &device);
            let targets = loss::batch_targets(&labels, mix_lambda, num_classes, config.train.label_smoothing, &device);
            let (grads, loss_value, logits) = forward_backward(&model, images, targets, 1.0 / accumulate as f32);
            accumulated.accumulate(&model, grads);
            pending += 1;
            if pending == accumulate || index + 1 == batches_per_epoch {
                model = optimizer.step(lr, model, accumulated.grads());
                if let Some(ema) = &mut ema {
                    ema.update(&model);
                }
                pending = 0;
                step += 1;
                for callback in &mut callbacks {
                    callback.on_step(step, loss_value, lr)?;
                }
            }
            if !loss_value.is_finite() {
                bar.abandon();
                let kept = if epoch > 1 {
                    format!("the checkpoints of epochs before it are in {}", run.path.join("checkpoints").display())
                } else {
                    "no checkpoint was written".to_string()
                };
                bail!(
                    "training diverged: the loss is {loss_value} at epoch {epoch}, step {} (lr {lr:e}); \
                     lower train.lr or set train.grad_clip_norm; {kept}",
                    step + 1
                );
            }

            let logits: Vec<f32> = logits.into_data().try_to_vec::<f32>().context("reading logits")?;
            correct += count_correct(&logits, &labels);
            loss_sum += loss_value as f64 * labels.len() as f64;
            seen += labels.len();
            let elapsed = epoch_start.elapsed().as_secs_f64();
            bar.set_message(format!(
                "loss {:.3} acc {:.1}% {:.0} img/s",
                loss_sum / seen as f64,
                100.0 * correct as f64 / seen as f64,
                seen as f64 / elapsed
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let epoch_train_seconds = epoch_start.elapsed().as_secs_f64();
        train_seconds += epoch_train_seconds;

        if interrupt.load(Ordering::SeqCst) {
            model.clone().into_record().save(run.checkpoint("last")).context("saving the last checkpoint")?;
            bail!("interrupted in epoch {epoch}: saved {}", run.checkpoint("last").display());
        }
        // With model EMA the average is what is validated, checkpointed and tested.
        let eval_model = ema.as_ref().map_or_else(|| model.valid(), |e| e.model.clone());
        let val = data.val.as_ref().map(|v| evaluate(&eval_model, v, num_classes, &eval_settings, &base_device)).transpose()?;
        let metrics = EpochMetrics {
            epoch,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            val_loss: val.as_ref().map(|v| v.loss),
            val_acc: val.as_ref().map(|v| v.accuracy),
            lr: schedule.lr(step.saturating_sub(1)),
            seconds: epoch_start.elapsed().as_secs_f64(),
            img_per_s: seen as f64 / epoch_train_seconds,
        };
        let context = EpochContext { run: &run, model: &eval_model, metrics: &metrics, epochs: config.train.epochs };
        for callback in &mut callbacks {
            callback.on_epoch_end(&context)?;
        }
        epochs_completed = epoch;
        if let Some(lr) = schedule.epoch_end(&metrics)? {
            println!("plateau: {:?} stopped improving, lr reduced to {lr:e}", config.train.plateau.monitor);
        }
        resume::save(&run, epoch, &model, &optimizer, ema.as_ref(), config)?;
        if callbacks.iter().any(|c| c.should_stop()) {
            break;
        }
    }

    // Test the best checkpoint, as the journal reports it.
    let best = load_run_model(config, num_classes, &run.checkpoint(Checkpointer::BEST), &base_device)?;
    let test = evaluate(&best, &data.test, num_classes, &eval_settings, &base_device)?;
    let counts = evaluate::confusion(&data.test.labels, &test.predictions, num_classes);
    let confusion = evaluate::write_confusion(&run, &data.classes, &counts, "test", Checkpointer::BEST)?;
    let tested = TestContext { epoch: epochs_completed, accuracy: test.accuracy, loss: test.loss, confusion_png: &confusion[1].1 };
    for callback in &mut callbacks {
        callback.on_test_end(&tested)?;
    }
    let best_metrics = Checkpointer::best_metrics(&run)?;
    let summary = RunSummary {
        run_id: run.id.clone(),
        model: config.model.name.clone(),
        trainable_params: params,
        classes: data.classes.clone(),
        image_size: config.input_transform().output_shape(data.test.height, data.test.width).0,
        epochs_completed,
        best_epoch: best_metrics.epoch,
        best_val_loss: best_metrics.val_loss,
        best_val_acc: best_metrics.val_acc,
        test_loss: test.loss,
        test_acc: test.accuracy,
        test_images: data.test.len(),
        train_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
    };
    run.write_summary(&summary)?;
    Ok((run, summary))
}

fn progress_bar(config: &ExperimentConfig, steps: usize, epoch: usize) -> ProgressBar {
    if !config.run.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
            .expect("valid progress template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{epoch}/{}", config.train.epochs));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ModelConfig, TrainConfig};
    use burn::tensor::Distribution;

    /// A network that can learn must drive the loss of one fixed batch of random labels to ~0.
    #[test]
    fn overfits_one_batch() {
        let device = Device::flex().autodiff();
        device.seed(1);
        let mut model = models::build(&ModelConfig::default(), 10, &device).unwrap();
        let mut optimizer =
            optim::build(&TrainConfig { optimizer: optim::OptimizerKind::Adam, weight_decay: 0.0, ..Default::default() }, None);
        let images = Tensor::<4>::random([16, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        let labels: Vec<i64> = (0..16).map(|i| (i * 7 % 10) as i64).collect();
        let targets = loss::smoothed_targets(&labels, 10, 0.0, &device);
        let mut history = Vec::new();
        for _ in 0..60 {
            let (next, loss, logits) = step_once(model, &mut optimizer, images.clone(), targets.clone(), 3e-3);
            model = next;
            let logits: Vec<f32> = logits.into_data().try_to_vec().unwrap();
            history.push((loss, count_correct(&logits, &labels)));
        }
        let (first, last) = (history[0], history[history.len() - 1]);
        assert!(first.0 > 2.0, "initial loss {}", first.0);
        assert!(last.0 < 0.1 && last.1 == 16, "after 60 steps: loss {} and {}/16 correct", last.0, last.1);
    }

    #[test]
    fn accuracy_counts_argmax_hits() {
        let logits = [0.1, 0.9, 0.0, 2.0, 1.0, 0.5];
        assert_eq!(count_correct(&logits, &[1, 0]), 2);
        assert_eq!(count_correct(&logits, &[0, 0]), 1);
    }
}
