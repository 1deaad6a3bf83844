//! `[train]`: how long and how the model trains (optimizer, schedule, regularization) and how it
//! is evaluated.

use serde::{Deserialize, Serialize};

use super::Tta;
use super::callbacks::{BestBy, EarlyStopping};
use super::optim::OptimizerKind;
use super::param_groups::ParamGroupConfig;
use super::precision::Precision;
use super::schedule::{PlateauConfig, ScheduleKind};
use crate::error::{InvalidSetting, ensure};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    pub optimizer: OptimizerKind,
    pub lr: f64,
    /// SGD momentum (PyTorch semantics: no dampening).
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    /// Adam/AdamW betas.
    pub betas: [f64; 2],
    pub schedule: ScheduleKind,
    /// Linear warmup from 0 over this many epochs (fractions allowed), before the schedule.
    pub warmup_epochs: f64,
    /// Lowest learning rate of the cosine / one-cycle schedules, as a fraction of `lr`.
    pub final_lr_fraction: f64,
    /// One-cycle schedule: the share of the run spent rising to `lr` (PyTorch OneCycleLR's).
    pub pct_start: f64,
    /// One-cycle schedule: it starts at `lr / div_factor`.
    pub div_factor: f64,
    /// Period of the triangular schedule in epochs.
    pub cycle_epochs: f64,
    /// Epochs between decays of the `step` schedule.
    pub step_size: usize,
    /// Epochs at which the `multi_step` schedule decays.
    pub milestones: Vec<usize>,
    /// Decay factor of the step, multi_step and exponential schedules.
    pub gamma: f64,
    /// ReduceLROnPlateau settings, for schedule = "plateau".
    pub plateau: PlateauConfig,
    /// The validation metric that picks the `best` checkpoint (tested, and reported as the best
    /// epoch): `val_loss` (lowest) or `val_acc` (highest).
    pub best_by: BestBy,
    /// Stop when the monitored metric has not improved for `patience` epochs (absent = never).
    pub early_stopping: Option<EarlyStopping>,
    /// Gradients of this many batches are summed (each loss divided by the count) before every
    /// optimizer step: the effective batch is batch_size x accumulate_batches.
    pub accumulate_batches: usize,
    /// RMSprop's smoothing constant (PyTorch's `alpha`).
    pub rmsprop_alpha: f64,
    /// Keep an exponential moving average of the weights with this decay (e.g. 0.999) and
    /// validate, checkpoint and test it (absent = off).
    pub ema_decay: Option<f64>,
    /// Lookahead (absent = off; not with `ema_decay`).
    pub lookahead: Option<LookaheadConfig>,
    pub label_smoothing: f64,
    /// Clip each parameter's gradient to this L2 norm (absent = no clipping).
    pub grad_clip_norm: Option<f64>,
    /// Test-time augmentation of validation and test evaluation.
    pub tta: Tta,
    /// Parameters with their own learning-rate scale, weight decay or epochs (`[[train.param_groups]]`).
    pub param_groups: Vec<ParamGroupConfig>,
    /// What the training step computes in: `f32`, or `f16` / `bf16` (mixed precision: f32
    /// weights, the network in the smaller type; f16 with loss scaling). Evaluation stays f32.
    pub precision: Precision,
    /// Seeds weight initialization, the split, shuffling and augmentation.
    pub seed: u64,
}

/// `[train.lookahead]`: every `steps` optimizer steps, `average = d * average + (1 - d) * live`,
/// then `live = average`, with `d = decay * (step / total_steps)^ramp_power`. `ramp_power = 0` is
/// the Lookahead paper's constant rate (`alpha = 1 - decay`); airbench94 uses 5 steps, decay
/// 0.95^5 and power 3 (the average barely lags early on, and holds more history late).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LookaheadConfig {
    pub steps: usize,
    pub decay: f64,
    #[serde(default)]
    pub ramp_power: f64,
}

impl LookaheadConfig {
    /// The decay at optimizer step `step` of `total_steps`.
    pub fn decay_at(&self, step: usize, total_steps: usize) -> f64 {
        self.decay * (step as f64 / total_steps.max(1) as f64).powf(self.ramp_power)
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 128,
            eval_batch_size: 500,
            optimizer: OptimizerKind::Sgd,
            lr: 0.1,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 5e-4,
            betas: [0.9, 0.999],
            schedule: ScheduleKind::Cosine,
            warmup_epochs: 0.0,
            final_lr_fraction: 0.0,
            pct_start: 0.3,
            div_factor: 25.0,
            cycle_epochs: 2.0,
            step_size: 30,
            milestones: Vec::new(),
            gamma: 0.1,
            plateau: PlateauConfig::default(),
            best_by: BestBy::ValLoss,
            early_stopping: None,
            accumulate_batches: 1,
            rmsprop_alpha: 0.99,
            ema_decay: None,
            lookahead: None,
            label_smoothing: 0.0,
            grad_clip_norm: None,
            tta: Tta::None,
            param_groups: Vec::new(),
            precision: Precision::F32,
            seed: 0,
        }
    }
}

impl TrainConfig {
    /// Checks the ranges (every number is already known to be finite, see `ExperimentConfig`).
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let unit =
            |key: &str, value: f64| ensure((0.0..1.0).contains(&value), key, || format!("expected a value in [0, 1), found {value}"));
        let non_negative = |key: &str, value: f64| ensure(value >= 0.0, key, || format!("expected a number >= 0, found {value}"));
        let positive = |key: &str, value: f64| ensure(value > 0.0, key, || format!("expected a positive number, found {value}"));
        ensure(self.epochs > 0, "train.epochs", || "expected at least 1".into())?;
        ensure(self.batch_size > 0, "train.batch_size", || "expected at least 1".into())?;
        ensure(self.eval_batch_size > 0, "train.eval_batch_size", || "expected at least 1".into())?;
        positive("train.lr", self.lr)?;
        non_negative("train.weight_decay", self.weight_decay)?;
        unit("train.betas[0]", self.betas[0])?;
        unit("train.betas[1]", self.betas[1])?;
        unit("train.label_smoothing", self.label_smoothing)?;
        ensure(self.ema_decay.is_none_or(|d| (0.0..1.0).contains(&d)), "train.ema_decay", || {
            "expected a decay in [0, 1), e.g. 0.999".into()
        })?;
        if let Some(lookahead) = self.lookahead {
            ensure(self.ema_decay.is_none(), "train.lookahead", || "give either train.lookahead or train.ema_decay, not both".into())?;
            ensure(lookahead.steps > 0, "train.lookahead.steps", || "expected at least 1 step".into())?;
            unit("train.lookahead.decay", lookahead.decay)?;
            non_negative("train.lookahead.ramp_power", lookahead.ramp_power)?;
        }
        if let Some(norm) = self.grad_clip_norm {
            positive("train.grad_clip_norm", norm)?;
        }
        ensure(self.accumulate_batches > 0, "train.accumulate_batches", || "expected at least 1".into())?;
        positive("train.gamma", self.gamma)?;
        ensure(self.step_size > 0, "train.step_size", || "expected at least 1 epoch".into())?;
        let milestones = &self.milestones;
        ensure(milestones.windows(2).all(|w| w[0] < w[1]), "train.milestones", || {
            format!("expected increasing epochs, found {milestones:?}")
        })?;
        let fraction = self.final_lr_fraction;
        ensure((0.0..=1.0).contains(&fraction), "train.final_lr_fraction", || format!("expected a fraction in [0, 1], found {fraction}"))?;
        positive("train.cycle_epochs", self.cycle_epochs)?;
        let pct_start = self.pct_start;
        ensure(pct_start > 0.0 && pct_start < 1.0, "train.pct_start", || format!("expected a fraction in (0, 1), found {pct_start}"))?;
        ensure(self.div_factor >= 1.0, "train.div_factor", || format!("expected a divisor >= 1, found {}", self.div_factor))?;
        let factor = self.plateau.factor;
        ensure(factor > 0.0 && factor < 1.0, "train.plateau.factor", || format!("expected a factor in (0, 1), found {factor}"))?;
        non_negative("train.plateau.threshold", self.plateau.threshold)?;
        non_negative("train.plateau.min_lr", self.plateau.min_lr)?;
        if let Some(early) = self.early_stopping {
            non_negative("train.early_stopping.min_delta", early.min_delta)?;
        }
        unit("train.rmsprop_alpha", self.rmsprop_alpha)?;
        unit("train.momentum", self.momentum)?;
        for (i, group) in self.param_groups.iter().enumerate() {
            group.validate(&format!("train.param_groups[{i}]"))?;
        }
        let (warmup, epochs) = (self.warmup_epochs, self.epochs);
        ensure((0.0..=epochs as f64).contains(&warmup), "train.warmup_epochs", || format!("expected 0..={epochs} epochs, found {warmup}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_out_of_their_range_are_named() {
        type Change = fn(&mut TrainConfig);
        let cases: [(&str, Change); 9] = [
            ("train.weight_decay", |t| t.weight_decay = -1e-4),
            ("train.betas[1]", |t| t.betas = [0.9, 1.0]),
            ("train.grad_clip_norm", |t| t.grad_clip_norm = Some(0.0)),
            ("train.final_lr_fraction", |t| t.final_lr_fraction = 1.5),
            ("train.cycle_epochs", |t| t.cycle_epochs = 0.0),
            ("train.plateau.threshold", |t| t.plateau.threshold = -0.1),
            ("train.plateau.min_lr", |t| t.plateau.min_lr = -1.0),
            ("train.early_stopping.min_delta", |t| t.early_stopping = Some(EarlyStopping { min_delta: -0.5, ..Default::default() })),
            ("train.lr", |t| t.lr = 0.0),
        ];
        assert_eq!(TrainConfig::default().validate(), Ok(()));
        for (key, change) in cases {
            let mut config = TrainConfig::default();
            change(&mut config);
            assert_eq!(config.validate().map_err(|e| e.key), Err(key.to_string()));
        }
    }
}
