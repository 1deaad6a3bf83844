//! The training loop. As with Lightning's `Trainer` and burn-train's learner, `Trainer::fit` is
//! the loop and little else; each concern around it has one home, testable alone: the per-epoch
//! bookkeeping (gradient accumulation, running totals, progress bar, divergence check) in `epoch`,
//! the trained weights and their average in `ema`, what happens after a step, at the end of an
//! epoch, on Ctrl-C and after the test (metrics log, checkpoints, console line, curves, early
//! stopping, TensorBoard) in `callbacks`, the plateau announcement in `Schedule` below.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::optim::ModuleOptimizer;
use burn::prelude::*;

use super::callbacks::{self, Callback, Checkpointer, EpochContext, InterruptContext, TestContext};
use super::ema::Weights;
use super::epoch::{EpochProgress, EpochTotals, GradientAccumulation, check_divergence};
use super::evaluate::{self, EvalResult, EvalSettings, EvalTarget, evaluate};
use super::feature_cache::{self, FeatureCache, Origin, Splits};
use super::param_groups::{self, ResolvedGroup};
use super::precision::{MixedPrecision, Precision};
use super::resume::{self, ResumePoint};
use super::schedule::{LrSchedule, Monitor};
use super::{TrainingData, backward, batch_tensors, load_run_model, loss, optim, prepare_data};
use crate::augment::transforms::Pipeline;
use crate::config::ExperimentConfig;
use crate::data::ImageSet;
use crate::data::loader::{EpochLoader, LoaderConfig, num_batches};
use crate::models;
use crate::models::transfer::FeatureCacheMode;
use crate::tracking::run::RunLock;
use crate::tracking::{EpochMetrics, RunDir, RunSummary};

/// What a training batch leaves on the device to read afterwards, and where it was: `step`
/// optimizer steps done (counting this one's, where `stepped`), at learning rate `lr`.
struct StepOutput {
    loss: Tensor<1>,
    logits: Tensor<2>,
    labels: Vec<i64>,
    step: usize,
    stepped: bool,
    lr: f64,
}

/// One training batch: what the model reads, and the labels (mixed with `mix_lambda`).
struct TrainBatch {
    input: Input,
    labels: Vec<i64>,
    mix_lambda: Option<f32>,
}

/// Images, or the cached outputs of the model's frozen part.
enum Input {
    Images(Tensor<4>),
    Cached(Tensor<2>, models::Cut),
}

impl Input {
    fn logits(self, model: &models::Classifier, precision: Precision) -> Tensor<2> {
        match self {
            Input::Images(images) => precision.logits(model, images),
            Input::Cached(x, cut) => precision.logits_from(model, x, cut),
        }
    }
}

/// How training gets the outputs of the model's frozen part.
enum FrozenPart {
    /// It runs on every batch (nothing frozen, or random transforms before it).
    EveryBatch,
    /// It ends at this cut and runs once, when training starts.
    ToCache(models::Cut),
    /// Its outputs, computed or read.
    Cached(Arc<FeatureCache>),
}

/// Where training starts: a new run folder, an existing run's last completed epoch, or a new run
/// folder whose model starts from a checkpoint of the same architecture (a pruned model to
/// fine-tune) instead of its initialization or pretrained weights.
pub enum Start<'a> {
    New(&'a str),
    Resume(&'a RunDir),
    FromCheckpoint(&'a str, &'a std::path::Path),
}

/// A run set up for training: its data, weights, optimizer, schedule and callbacks, and how far
/// it got.
pub struct Trainer<'a> {
    config: &'a ExperimentConfig,
    /// When setup began: the summary's total time counts from here.
    started: Instant,
    run: RunDir,
    /// Held while training; released when the trainer is dropped, finished or not.
    _lock: RunLock,
    data: TrainingData,
    params: models::ParamCounts,
    /// Validation and the test run here; training on its autodiff wrapper `device`.
    base_device: Device,
    device: Device,
    loader_config: LoaderConfig,
    eval_settings: EvalSettings,
    batches_per_epoch: usize,
    schedule: Schedule,
    optimizer: ModuleOptimizer,
    /// Parameter groups, some of which train in some epochs only.
    groups: Vec<ResolvedGroup>,
    frozen_part: FrozenPart,
    /// The training step's precision and f16 loss scale (which starts over on resume).
    mixed: MixedPrecision,
    weights: Weights,
    callbacks: Vec<Box<dyn Callback>>,
    /// Optimizer steps taken.
    step: usize,
    epochs_completed: usize,
    train_seconds: f64,
}

impl<'a> Trainer<'a> {
    /// Sets a run up. A resumed run also gets its weights and optimizer state back and replays
    /// its completed epochs into the callbacks and the schedule.
    pub fn new(config: &'a ExperimentConfig, start: Start) -> Result<Self> {
        let started = Instant::now();
        // A resumed run is locked before its state is read; a new one once its folder exists.
        let mut lock = match start {
            Start::Resume(run) => Some(RunLock::acquire(&run.path)?),
            Start::New(_) | Start::FromCheckpoint(..) => None,
        };
        let resume_point = match start {
            Start::Resume(run) => resume::load_point(run, config)?,
            Start::New(_) | Start::FromCheckpoint(..) => None,
        };
        let base_device = crate::device::parse(&config.run.device)?;
        config.train.precision.check(&base_device, &config.run.device).context("train.precision")?;
        base_device.seed(config.train.seed);
        let device = base_device.clone().autodiff();
        let data = prepare_data(config)?;
        let pipeline = checked_pipeline(config, &data)?;
        // A resumed run loads its own parameters; the pretrained file is not needed again.
        let (model, new_parts) = models::transfer::build(
            &config.model,
            &config.transfer,
            data.classes.len(),
            &device,
            resume_point.is_none().then_some(config.data.cache_dir.as_path()),
        )?;
        let model = match (&start, &resume_point) {
            (Start::FromCheckpoint(_, checkpoint), _) => callbacks::load_checkpoint(model, checkpoint)?,
            (_, None) => super::fit_to_data(model, config, &data.train, &device)?,
            (_, Some(_)) => model,
        };
        let params = models::param_counts(&model);
        let run = match start {
            Start::New(run_id) | Start::FromCheckpoint(run_id, _) => {
                let run = RunDir::create(&config.run.dir, run_id, config)?;
                lock = Some(RunLock::acquire(&run.path)?);
                run
            }
            // Its config is rewritten once its state has loaded: a failed resume changes nothing.
            Start::Resume(run) if resume_point.is_some() => run.clone(),
            Start::Resume(run) => {
                outln!("restarting {}: it ended before its first epoch did", run.path.display());
                run.restart()?;
                run.write_config(config)?;
                run.clone()
            }
        };
        outln!(
            "run {}: {} ({} trainable parameters{}) on {} train / {} val / {} test images, device {}",
            run.path.display(),
            config.model.name,
            params.trainable,
            if params.frozen > 0 { format!(", {} frozen", params.frozen) } else { String::new() },
            data.train.len(),
            data.val.as_ref().map_or(0, ImageSet::len),
            data.test.len(),
            config.run.device
        );

        let loader_config = LoaderConfig {
            batch_size: config.train.batch_size,
            shuffle: true,
            drop_last: true,
            augment: Some(pipeline.clone()),
            mix: config.augment.mix.enabled().then_some(config.augment.mix),
            input: config.input_transform(),
            prefetch: config.data.prefetch,
            seed: config.train.seed,
        };
        let batches_per_epoch = num_batches(data.train.len(), &loader_config);
        let steps_per_epoch = GradientAccumulation::steps_per_epoch(config.train.accumulate_batches, batches_per_epoch);
        let schedule = Schedule { rates: LrSchedule::from_config(&config.train, steps_per_epoch), monitor: config.train.plateau.monitor };
        let mut groups = Vec::new();
        if config.model.is_pretrained() {
            groups = param_groups::backbone_groups(&model, &new_parts, &config.transfer, config.train.weight_decay);
            if config.transfer.per_layer() {
                outln!("pretrained layers: {}", param_groups::describe(&groups));
            }
        }
        groups.extend(param_groups::resolve(&model, &config.train.param_groups, config.train.weight_decay)?);
        let mut optimizer = optim::build(&config.train, &groups);
        let mut weights = match config.train.lookahead {
            Some(lookahead) => Weights::with_lookahead(model, lookahead, steps_per_epoch * config.train.epochs),
            None => Weights::new(model, config.train.ema_decay),
        };
        if let Some(point) = &resume_point {
            (weights, optimizer) = resume::restore(&run, point, weights, optimizer)?;
            run.write_config(config)?;
        }
        let frozen_part = match feature_cache::plan(config.transfer.feature_cache, &config.augment.mix, &weights.live, &pipeline) {
            Ok(Some(cut)) => FrozenPart::ToCache(cut),
            Ok(None) => FrozenPart::EveryBatch,
            Err(reason) => {
                outln!("the frozen part runs on every batch: {reason}");
                FrozenPart::EveryBatch
            }
        };
        let callbacks = callbacks::for_run(&config.train, &config.run, &run)?;
        let mut trainer = Self {
            config,
            started,
            _lock: lock.expect("taken for both starts"),
            run,
            data,
            params,
            base_device,
            device,
            loader_config,
            eval_settings: EvalSettings::from_config(config),
            batches_per_epoch,
            schedule,
            optimizer,
            groups,
            frozen_part,
            mixed: MixedPrecision::new(config.train.precision),
            weights,
            callbacks,
            step: 0,
            epochs_completed: 0,
            train_seconds: 0.0,
        };
        if let Some(point) = &resume_point {
            trainer.replay(point, steps_per_epoch)?;
        }
        Ok(trainer)
    }

    /// Resuming: the completed epochs' metrics go through the callbacks and the schedule again, so
    /// they stand where they stood then, and the counters continue from there.
    fn replay(&mut self, point: &ResumePoint, steps_per_epoch: usize) -> Result<()> {
        for metrics in resume::truncate_metrics(&self.run, point.epoch)? {
            for callback in &mut self.callbacks {
                callback.replay(&metrics)?;
            }
            self.schedule.replay(&metrics)?;
            self.train_seconds += metrics.seconds;
        }
        self.step = point.epoch * steps_per_epoch;
        self.epochs_completed = point.epoch;
        match point.epoch >= self.config.train.epochs {
            true => outln!("resuming {}: all {} epochs are done, testing the best checkpoint", self.run.path.display(), point.epoch),
            false => outln!("resuming {} after epoch {}", self.run.path.display(), point.epoch),
        }
        Ok(())
    }

    /// Trains the epochs left, then tests the best checkpoint. `interrupt` (set by Ctrl-C) ends
    /// training after the current step, with `last` saved.
    pub fn fit(mut self, interrupt: &AtomicBool) -> Result<(RunDir, RunSummary)> {
        let (config, num_classes) = (self.config, self.data.classes.len());
        if self.epochs_completed < config.train.epochs {
            self.cache_features()?;
        }
        for epoch in self.epochs_completed + 1..=config.train.epochs {
            self.base_device.seed(epoch_seed(config.train.seed, epoch));
            let epoch_start = Instant::now();
            let device = self.device.clone();
            let cache = match &self.frozen_part {
                FrozenPart::Cached(cache) => Some(cache.clone()),
                _ => None,
            };
            let batches: Box<dyn Iterator<Item = TrainBatch>> = match &cache {
                Some(cache) => {
                    let cut = cache.cut;
                    Box::new(cache.epoch(&self.loader_config, epoch, &device).map(move |(x, labels)| TrainBatch {
                        input: Input::Cached(x, cut),
                        labels,
                        mix_lambda: None,
                    }))
                }
                None => Box::new(EpochLoader::start(self.data.train.clone(), self.loader_config.clone(), epoch, 0).map(|batch| {
                    let mix_lambda = batch.mix_lambda;
                    let (images, labels) = batch_tensors(batch, &device);
                    TrainBatch { input: Input::Images(images), labels, mix_lambda }
                })),
            };
            let progress = EpochProgress::start(config.run.progress, self.batches_per_epoch, epoch, config.train.epochs);
            let mut accumulation = GradientAccumulation::new(config.train.accumulate_batches, self.batches_per_epoch);
            let mut totals = EpochTotals::new(num_classes);
            let frozen = param_groups::frozen_in(&self.groups, epoch);
            let mut pending: Option<StepOutput> = None;
            let mut batches = batches.enumerate();
            loop {
                let waiting = Instant::now();
                let Some((index, TrainBatch { input, labels, mix_lambda })) = batches.next() else { break };
                totals.data_wait += waiting.elapsed().as_secs_f64();
                if interrupt.load(Ordering::SeqCst) {
                    break;
                }
                let lr = self.schedule.rates.lr(self.step);
                let targets = loss::batch_targets(&labels, mix_lambda, num_classes, config.train.label_smoothing, &self.device);
                let logits = input.logits(&self.weights.live, self.mixed.precision);
                let loss_scale = accumulation.loss_scale() * self.mixed.loss_scale();
                let (grads, loss, logits) = backward(&self.weights.live, logits, targets, loss_scale);
                let gradients = accumulation.add(&self.weights.live, grads, index);
                let stepped = gradients.is_some();
                if let Some(mut grads) = gradients {
                    param_groups::drop_gradients(&mut grads, &self.weights.live, &frozen);
                    self.step += 1;
                    // An f16 step whose gradients overflowed is skipped (the schedule moves on).
                    if self.mixed.unscale(&mut grads, &self.weights.live) {
                        self.weights = self.weights.step(&mut self.optimizer, lr, grads, self.step);
                    }
                }
                let output = StepOutput { loss, logits, labels, step: self.step, stepped, lr };
                // The previous batch's results are read while this one computes (on a GPU).
                if let Some(previous) = pending.replace(output) {
                    self.record(previous, epoch, &mut totals).inspect_err(|_| progress.abandon())?;
                    progress.show(&totals, epoch_start.elapsed().as_secs_f64());
                }
            }
            if let Some(last) = pending {
                self.record(last, epoch, &mut totals).inspect_err(|_| progress.abandon())?;
            }
            progress.finish();
            let epoch_train_seconds = epoch_start.elapsed().as_secs_f64();
            self.train_seconds += epoch_train_seconds;
            if interrupt.load(Ordering::SeqCst) {
                return self.interrupted(epoch);
            }

            let model = self.weights.evaluated();
            let val = match &self.frozen_part {
                FrozenPart::Cached(cache) => cache.evaluate_val(&model, num_classes, self.eval_settings.batch_size, &self.base_device),
                _ => self.data.val.as_ref().map(|v| evaluate(&model, v, num_classes, &self.eval_settings, &self.base_device)),
            }
            .transpose()?;
            let metrics = EpochMetrics {
                epoch,
                train_loss: totals.loss(),
                train_acc: totals.accuracy(),
                val_loss: val.as_ref().map(|v| v.loss),
                val_acc: val.as_ref().map(|v| v.accuracy),
                train_acc5: totals.accuracy5(),
                val_acc5: val.as_ref().and_then(|v| v.accuracy5),
                lr: self.schedule.rates.lr(self.step.saturating_sub(1)),
                seconds: epoch_start.elapsed().as_secs_f64(),
                img_per_s: totals.images_per_second(epoch_train_seconds),
                data_wait_seconds: totals.data_wait,
                device_wait_seconds: totals.device_wait,
            };
            let context = EpochContext { run: &self.run, model: &model, metrics: &metrics, epochs: config.train.epochs };
            for callback in &mut self.callbacks {
                callback.on_epoch_end(&context)?;
            }
            self.epochs_completed = epoch;
            self.schedule.epoch_end(&metrics)?;
            resume::save(&self.run, epoch, &self.weights, &self.optimizer, config)?;
            if self.callbacks.iter().any(|c| c.should_stop()) {
                break;
            }
        }
        let test = self.test_best()?;
        self.summarize(&test)
    }

    /// Reads a batch's loss and logits back to the host (waiting for the device): the step
    /// callbacks, the divergence check and the epoch's totals.
    fn record(&mut self, output: StepOutput, epoch: usize, totals: &mut EpochTotals) -> Result<()> {
        let StepOutput { loss, logits, labels, step, stepped, lr } = output;
        let waiting = Instant::now();
        let loss: f32 = loss.into_scalar();
        totals.device_wait += waiting.elapsed().as_secs_f64();
        if stepped {
            for callback in &mut self.callbacks {
                callback.on_step(step, loss, lr)?;
            }
        }
        check_divergence(loss, epoch, step + 1, lr, &self.run)?;
        let logits: Vec<f32> = logits.into_data().try_to_vec::<f32>().context("reading logits")?;
        totals.add(loss, &logits, &labels);
        Ok(())
    }

    /// Computes the frozen part's outputs on the training and validation images once, when
    /// training runs on them.
    fn cache_features(&mut self) -> Result<()> {
        let FrozenPart::ToCache(cut) = self.frozen_part else { return Ok(()) };
        let started = Instant::now();
        let model = self.weights.evaluated();
        let (train, val) = (&self.data.train, self.data.val.as_ref());
        let store = (self.config.transfer.feature_cache == FeatureCacheMode::Disk).then(|| self.config.data.cache_dir.join("features"));
        let splits = Splits { train, loader: &self.loader_config, val, settings: &self.eval_settings };
        let (cache, origin) = FeatureCache::load_or_compute(&model, cut, &splits, &self.base_device, store.as_deref())?;
        let images = format!("{} training{} images", train.len(), val.map_or(String::new(), |v| format!(" and {} validation", v.len())));
        let seconds = started.elapsed().as_secs_f64();
        match origin {
            Origin::Computed => outln!("frozen part computed once ({images}, {seconds:.0} s): the rest trains on its outputs"),
            Origin::Written(path) => {
                outln!("frozen part computed once ({images}, {seconds:.0} s; kept in {}): the rest trains on its outputs", path.display())
            }
            Origin::Read(path) => outln!("frozen part's outputs read from {} ({images}): the rest trains on them", path.display()),
        }
        self.frozen_part = FrozenPart::Cached(Arc::new(cache));
        Ok(())
    }

    /// Ctrl-C mid-epoch: the callbacks keep what an interrupted epoch leaves (the checkpointer
    /// writes `last` from the weights an epoch end would), then training ends with an error.
    fn interrupted<T>(&mut self, epoch: usize) -> Result<T> {
        let model = self.weights.evaluated();
        let context = InterruptContext { run: &self.run, model: &model };
        for callback in &mut self.callbacks {
            callback.on_interrupt(&context)?;
        }
        bail!("interrupted in epoch {epoch}: saved {}", self.run.checkpoint(Checkpointer::LAST).display())
    }

    /// Tests the best checkpoint, as the journal reports it.
    fn test_best(&mut self) -> Result<EvalResult> {
        let num_classes = self.data.classes.len();
        let best = load_run_model(self.config, num_classes, &self.run.checkpoint(Checkpointer::BEST), &self.base_device)?;
        let test = evaluate(&best, &self.data.test, num_classes, &self.eval_settings, &self.base_device)?;
        let counts = evaluate::confusion(&self.data.test.labels, &test.predictions, num_classes);
        let target = EvalTarget { split: "test", checkpoint: Checkpointer::BEST, data: None };
        let confusion = evaluate::write_confusion(&self.run, &target, &self.data.classes.names, &counts)?;
        let tested = TestContext {
            epoch: self.epochs_completed,
            accuracy: test.accuracy,
            accuracy5: test.accuracy5,
            loss: test.loss,
            confusion_png: &confusion[1].1,
        };
        for callback in &mut self.callbacks {
            callback.on_test_end(&tested)?;
        }
        Ok(test)
    }

    /// Writes `summary.json`: the best epoch's validation metrics and the test of its checkpoint.
    fn summarize(self, test: &EvalResult) -> Result<(RunDir, RunSummary)> {
        let best = Checkpointer::best_metrics(&self.run, self.config.train.best_by)?;
        let summary = RunSummary {
            run_id: self.run.id.clone(),
            model: self.config.model.name.clone(),
            trainable_params: self.params.trainable,
            frozen_params: self.params.frozen,
            classes: self.data.classes.ids.clone(),
            class_names: self.data.classes.names.clone(),
            image_size: self.config.input_transform().output_shape(self.data.test.height, self.data.test.width).0,
            epochs_completed: self.epochs_completed,
            best_epoch: best.epoch,
            best_val_loss: best.val_loss,
            best_val_acc: best.val_acc,
            best_val_acc5: best.val_acc5,
            test_loss: test.loss,
            test_acc: test.accuracy,
            test_acc5: test.accuracy5,
            test_images: self.data.test.len(),
            train_seconds: self.train_seconds,
            total_seconds: self.started.elapsed().as_secs_f64(),
        };
        self.run.write_summary(&summary)?;
        Ok((self.run, summary))
    }
}

/// The augmentation pipeline of the config, once the training split is known to fill a batch and
/// to come out of the pipeline at the size evaluation sees.
fn checked_pipeline(config: &ExperimentConfig, data: &TrainingData) -> Result<Pipeline> {
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
    Ok(pipeline)
}

/// Seed of the device RNG (dropout, stochastic depth) in `epoch`: a function of the epoch alone,
/// so a resumed run draws what the uninterrupted one drew.
fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The learning-rate schedule, fed each epoch's metrics (the plateau schedule reduces the rate on
/// them). A reduction is announced when it happens; a resumed run replays earlier ones silently.
struct Schedule {
    rates: LrSchedule,
    /// The plateau schedule's metric, named in the announcement.
    monitor: Monitor,
}

impl Schedule {
    /// Feeds a completed epoch; returns the reduced rate when the plateau schedule reduced it.
    fn replay(&mut self, metrics: &EpochMetrics) -> Result<Option<f64>> {
        Ok(self.rates.epoch_end(metrics)?)
    }

    fn epoch_end(&mut self, metrics: &EpochMetrics) -> Result<()> {
        if let Some(lr) = self.replay(metrics)? {
            outln!("{}", plateau_message(self.monitor, lr));
        }
        Ok(())
    }
}

fn plateau_message(monitor: Monitor, lr: f64) -> String {
    format!("plateau: {monitor:?} stopped improving, lr reduced to {lr:e}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::config::TrainConfig;
    use crate::train::schedule::{PlateauConfig, ScheduleKind, ThresholdMode};

    #[test]
    fn the_schedule_reduces_on_a_plateau_and_names_a_missing_metric() {
        // Nothing counts as an improvement: every epoch after the first halves the rate.
        let plateau = PlateauConfig { factor: 0.5, patience: 0, threshold_mode: ThresholdMode::Abs, threshold: 10.0, ..Default::default() };
        let train = TrainConfig { lr: 1e-3, schedule: ScheduleKind::Plateau, plateau, warmup_epochs: 0.0, ..Default::default() };
        let mut schedule = Schedule { rates: LrSchedule::from_config(&train, 10), monitor: plateau.monitor };
        assert_eq!(schedule.replay(&EpochMetrics::example(Some(1.0))).unwrap(), None);
        assert_eq!(schedule.replay(&EpochMetrics::example(Some(0.5))).unwrap(), Some(5e-4));
        assert_eq!(schedule.rates.lr(0), 5e-4);
        assert_eq!(plateau_message(plateau.monitor, 5e-4), "plateau: ValLoss stopped improving, lr reduced to 5e-4");
        let err = schedule.epoch_end(&EpochMetrics::example(None)).unwrap_err().to_string();
        assert!(err.starts_with("config key `train.plateau.monitor`: ValLoss needs a validation split"), "{err}");
    }
}
