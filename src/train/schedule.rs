//! Learning-rate schedules, evaluated per optimizer step. A linear warmup multiplies any of them.
//! The epoch-based ones (step, multi-step, exponential) change the rate at epoch boundaries as
//! PyTorch's schedulers stepped once per epoch do; `plateau` follows ReduceLROnPlateau, fed the
//! monitored metric at the end of each epoch.

use crate::error::InvalidSetting;
use serde::{Deserialize, Serialize};

use crate::tracking::EpochMetrics;

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Constant,
    /// Cosine annealing from `lr` to `lr * final_lr_fraction` over the run (PyTorch CosineAnnealingLR).
    #[default]
    Cosine,
    /// One cycle (PyTorch OneCycleLR, linear): `lr / div_factor` up to `lr` over the first
    /// `pct_start` of the steps (defaults 25 and 30%), then down to `lr * final_lr_fraction`.
    OneCycle,
    /// Triangular cycles between `lr * final_lr_fraction` and `lr` (PyTorch CyclicLR "triangular").
    Triangular,
    /// `lr * gamma^(epoch / step_size)` (PyTorch StepLR).
    Step,
    /// `lr * gamma^(milestones passed)` (PyTorch MultiStepLR).
    MultiStep,
    /// `lr * gamma^epoch` (PyTorch ExponentialLR).
    Exponential,
    /// Multiply by `plateau.factor` when the monitored metric stops improving (ReduceLROnPlateau).
    Plateau,
}

/// A metric read at the end of each epoch.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Monitor {
    #[default]
    ValLoss,
    ValAcc,
    TrainLoss,
}

impl Monitor {
    /// The value in `metrics`, or None when the run has no validation split.
    pub fn read(self, metrics: &EpochMetrics) -> Option<f64> {
        match self {
            Monitor::ValLoss => metrics.val_loss,
            Monitor::ValAcc => metrics.val_acc,
            Monitor::TrainLoss => Some(metrics.train_loss),
        }
    }

    /// Losses improve downwards, accuracies upwards.
    pub fn higher_is_better(self) -> bool {
        self == Monitor::ValAcc
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdMode {
    /// Improvement means beating the best by a fraction `threshold` of it.
    #[default]
    Rel,
    /// Improvement means beating the best by `threshold`.
    Abs,
}

/// `[train.plateau]`: PyTorch ReduceLROnPlateau's settings and defaults (the mode follows the metric).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PlateauConfig {
    pub monitor: Monitor,
    pub factor: f64,
    /// Epochs without improvement tolerated before reducing.
    pub patience: usize,
    pub threshold: f64,
    pub threshold_mode: ThresholdMode,
    /// Epochs after a reduction during which bad epochs are not counted.
    pub cooldown: usize,
    pub min_lr: f64,
}

impl Default for PlateauConfig {
    fn default() -> Self {
        Self {
            monitor: Monitor::ValLoss,
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
            threshold_mode: ThresholdMode::Rel,
            cooldown: 0,
            min_lr: 0.0,
        }
    }
}

/// Whether `value` beats `best` by the required margin (ReduceLROnPlateau's `is_better`).
fn improves(value: f64, best: f64, higher_is_better: bool, mode: ThresholdMode, threshold: f64) -> bool {
    match (higher_is_better, mode) {
        (false, ThresholdMode::Rel) => value < best * (1.0 - threshold),
        (false, ThresholdMode::Abs) => value < best - threshold,
        (true, ThresholdMode::Rel) => value > best * (1.0 + threshold),
        (true, ThresholdMode::Abs) => value > best + threshold,
    }
}

/// ReduceLROnPlateau's state machine.
#[derive(Clone, Debug, PartialEq)]
pub struct Plateau {
    config: PlateauConfig,
    best: f64,
    bad_epochs: usize,
    cooldown_left: usize,
    pub lr: f64,
}

impl Plateau {
    pub fn new(config: PlateauConfig, lr: f64) -> Self {
        let best = if config.monitor.higher_is_better() { f64::NEG_INFINITY } else { f64::INFINITY };
        Self { config, best, bad_epochs: 0, cooldown_left: 0, lr }
    }

    /// Feeds one epoch's metric; returns true when the learning rate was reduced.
    pub fn observe(&mut self, value: f64) -> bool {
        let c = &self.config;
        if improves(value, self.best, c.monitor.higher_is_better(), c.threshold_mode, c.threshold) {
            self.best = value;
            self.bad_epochs = 0;
        } else {
            self.bad_epochs += 1;
        }
        if self.cooldown_left > 0 {
            self.cooldown_left -= 1;
            self.bad_epochs = 0;
        }
        if self.bad_epochs > c.patience {
            let reduced = (self.lr * c.factor).max(c.min_lr);
            self.bad_epochs = 0;
            self.cooldown_left = c.cooldown;
            // PyTorch ignores reductions smaller than its eps (1e-8).
            if self.lr - reduced > 1e-8 {
                self.lr = reduced;
                return true;
            }
        }
        false
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    pub total_steps: usize,
    pub steps_per_epoch: usize,
    pub warmup_steps: usize,
    pub final_fraction: f64,
    pub cycle_steps: usize,
    pub step_size: usize,
    pub milestones: Vec<usize>,
    pub gamma: f64,
    /// One cycle: the share of the steps spent rising, and the start's divisor of `lr`.
    pub pct_start: f64,
    pub div_factor: f64,
    /// The plateau state machine (schedule = "plateau").
    pub plateau: Option<Plateau>,
}

impl LrSchedule {
    pub fn from_config(config: &super::config::TrainConfig, steps_per_epoch: usize) -> Self {
        let steps = |epochs: f64| (epochs * steps_per_epoch as f64).round() as usize;
        Self {
            kind: config.schedule,
            base_lr: config.lr,
            total_steps: (config.epochs * steps_per_epoch).max(1),
            steps_per_epoch: steps_per_epoch.max(1),
            warmup_steps: steps(config.warmup_epochs),
            final_fraction: config.final_lr_fraction,
            cycle_steps: steps(config.cycle_epochs).max(2),
            step_size: config.step_size.max(1),
            milestones: config.milestones.clone(),
            gamma: config.gamma,
            pct_start: config.pct_start,
            div_factor: config.div_factor,
            plateau: (config.schedule == ScheduleKind::Plateau).then(|| Plateau::new(config.plateau, config.lr)),
        }
    }

    /// Learning rate for optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        let t = step.min(self.total_steps) as f64;
        let total = self.total_steps as f64;
        let low = self.base_lr * self.final_fraction;
        let epoch = step / self.steps_per_epoch;
        let value = match self.kind {
            ScheduleKind::Constant => self.base_lr,
            ScheduleKind::Cosine => low + (self.base_lr - low) * 0.5 * (1.0 + (std::f64::consts::PI * t / total).cos()),
            ScheduleKind::OneCycle => {
                let peak = self.pct_start * total;
                let start = self.base_lr / self.div_factor;
                if t < peak {
                    start + (self.base_lr - start) * t / peak
                } else {
                    self.base_lr + (low - self.base_lr) * (t - peak) / (total - peak).max(1.0)
                }
            }
            ScheduleKind::Triangular => {
                let half = self.cycle_steps as f64 / 2.0;
                let phase = (t % self.cycle_steps as f64) / half;
                let up = if phase <= 1.0 { phase } else { 2.0 - phase };
                low + (self.base_lr - low) * up
            }
            ScheduleKind::Step => self.base_lr * self.gamma.powi((epoch / self.step_size) as i32),
            ScheduleKind::MultiStep => self.base_lr * self.gamma.powi(self.milestones.iter().filter(|&&m| m <= epoch).count() as i32),
            ScheduleKind::Exponential => self.base_lr * self.gamma.powi(epoch as i32),
            ScheduleKind::Plateau => self.plateau.as_ref().map_or(self.base_lr, |p| p.lr),
        };
        let warmup = if step < self.warmup_steps { (step + 1) as f64 / self.warmup_steps as f64 } else { 1.0 };
        value * warmup
    }

    /// Feeds the end-of-epoch metrics to the plateau schedule. Returns the reduced rate when it
    /// was reduced; an error when its monitored metric is missing.
    pub fn epoch_end(&mut self, metrics: &EpochMetrics) -> Result<Option<f64>, InvalidSetting> {
        let Some(plateau) = &mut self.plateau else { return Ok(None) };
        let monitor = plateau.config.monitor;
        let value = monitor.read(metrics).ok_or_else(|| {
            let message = format!("{monitor:?} needs a validation split (data.val_size > 0) or monitor = \"train_loss\"");
            InvalidSetting::new("train.plateau.monitor", message)
        })?;
        Ok(plateau.observe(value).then_some(plateau.lr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kind: ScheduleKind, warmup_steps: usize) -> LrSchedule {
        LrSchedule {
            kind,
            base_lr: 1.0,
            total_steps: 100,
            steps_per_epoch: 10,
            warmup_steps,
            final_fraction: 0.0,
            cycle_steps: 20,
            step_size: 3,
            milestones: vec![2, 5],
            gamma: 0.5,
            pct_start: 0.3,
            div_factor: 25.0,
            plateau: None,
        }
    }

    #[test]
    fn shapes() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        let c = schedule(ScheduleKind::Cosine, 0);
        assert!(close(c.lr(0), 1.0) && close(c.lr(50), 0.5) && close(c.lr(100), 0.0));
        let o = schedule(ScheduleKind::OneCycle, 0);
        assert!(close(o.lr(0), 0.04) && close(o.lr(30), 1.0) && close(o.lr(100), 0.0));
        assert!(o.lr(15) > o.lr(0) && o.lr(60) < o.lr(30));
        // airbench94's: 0.2 lr rising to lr at 23% of the run, then falling to 0.07 lr.
        let a = LrSchedule { pct_start: 0.23, div_factor: 5.0, final_fraction: 0.07, ..schedule(ScheduleKind::OneCycle, 0) };
        assert!(close(a.lr(0), 0.2) && close(a.lr(23), 1.0) && close(a.lr(100), 0.07));
        assert!(close(a.lr(10), 0.2 + 0.8 * 10.0 / 23.0) && close(a.lr(50), 1.0 - 0.93 * 27.0 / 77.0));
        let t = schedule(ScheduleKind::Triangular, 0);
        assert!(close(t.lr(0), 0.0) && close(t.lr(10), 1.0) && close(t.lr(20), 0.0) && close(t.lr(30), 1.0));
        assert!(close(schedule(ScheduleKind::Constant, 0).lr(77), 1.0));
    }

    #[test]
    fn warmup_ramps_linearly_then_hands_over() {
        let w = schedule(ScheduleKind::Constant, 10);
        assert!((w.lr(0) - 0.1).abs() < 1e-9);
        assert!((w.lr(4) - 0.5).abs() < 1e-9);
        assert!((w.lr(10) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn epoch_schedules_change_at_epoch_boundaries() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        let step = schedule(ScheduleKind::Step, 0);
        assert!(close(step.lr(29), 1.0) && close(step.lr(30), 0.5) && close(step.lr(60), 0.25));
        let multi = schedule(ScheduleKind::MultiStep, 0);
        assert!(close(multi.lr(19), 1.0) && close(multi.lr(20), 0.5) && close(multi.lr(49), 0.5) && close(multi.lr(50), 0.25));
        let exp = schedule(ScheduleKind::Exponential, 0);
        assert!(close(exp.lr(9), 1.0) && close(exp.lr(10), 0.5) && close(exp.lr(35), 0.125));
    }

    /// The sequence of PyTorch's ReduceLROnPlateau(mode="min", factor=0.5, patience=1, cooldown=1,
    /// min_lr=0.1) for these losses, worked out from its source.
    #[test]
    fn plateau_matches_reduce_lr_on_plateau() {
        let config = PlateauConfig { factor: 0.5, patience: 1, cooldown: 1, min_lr: 0.1, ..PlateauConfig::default() };
        let mut p = Plateau::new(config, 1.0);
        let losses = [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95];
        let lrs: Vec<f64> = losses
            .iter()
            .map(|&l| {
                p.observe(l);
                p.lr
            })
            .collect();
        // Bad epochs at 3 and 4 -> reduce after epoch 4; cooldown eats epoch 5; reduce again after 7; ...
        assert_eq!(lrs, vec![1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]);
        // The floor holds.
        let mut floor = Plateau::new(PlateauConfig { factor: 0.01, patience: 0, ..PlateauConfig::default() }, 1.0);
        floor.config.min_lr = 0.2;
        floor.observe(1.0);
        assert!(floor.observe(2.0) && floor.lr == 0.2);
        assert!(!floor.observe(3.0));
        // Accuracy improves upwards.
        let mut acc = Plateau::new(PlateauConfig { monitor: Monitor::ValAcc, patience: 0, ..PlateauConfig::default() }, 1.0);
        assert!(!acc.observe(0.5) && !acc.observe(0.6) && acc.observe(0.59));
    }
}
