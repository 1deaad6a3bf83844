//! Learning-rate schedules, evaluated per optimizer step. A linear warmup multiplies any of them.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Constant,
    /// Cosine annealing from `lr` to `lr * final_lr_fraction` over the run (PyTorch CosineAnnealingLR).
    #[default]
    Cosine,
    /// One cycle (PyTorch OneCycleLR, linear): `lr/25` up to `lr` over the first 30% of steps, then
    /// down to `lr * final_lr_fraction`.
    OneCycle,
    /// Triangular cycles between `lr * final_lr_fraction` and `lr` (PyTorch CyclicLR "triangular").
    Triangular,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    pub total_steps: usize,
    pub warmup_steps: usize,
    pub final_fraction: f64,
    pub cycle_steps: usize,
}

impl LrSchedule {
    pub fn from_config(config: &crate::config::TrainConfig, steps_per_epoch: usize) -> Self {
        let steps = |epochs: f64| (epochs * steps_per_epoch as f64).round() as usize;
        Self {
            kind: config.schedule,
            base_lr: config.lr,
            total_steps: (config.epochs * steps_per_epoch).max(1),
            warmup_steps: steps(config.warmup_epochs),
            final_fraction: config.final_lr_fraction,
            cycle_steps: steps(config.cycle_epochs).max(2),
        }
    }

    /// Learning rate for optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        let t = step.min(self.total_steps) as f64;
        let total = self.total_steps as f64;
        let low = self.base_lr * self.final_fraction;
        let value = match self.kind {
            ScheduleKind::Constant => self.base_lr,
            ScheduleKind::Cosine => low + (self.base_lr - low) * 0.5 * (1.0 + (std::f64::consts::PI * t / total).cos()),
            ScheduleKind::OneCycle => {
                let peak = 0.3 * total;
                let start = self.base_lr / 25.0;
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
        };
        let warmup = if step < self.warmup_steps { (step + 1) as f64 / self.warmup_steps as f64 } else { 1.0 };
        value * warmup
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kind: ScheduleKind, warmup_steps: usize) -> LrSchedule {
        LrSchedule { kind, base_lr: 1.0, total_steps: 100, warmup_steps, final_fraction: 0.0, cycle_steps: 20 }
    }

    #[test]
    fn shapes() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        let c = schedule(ScheduleKind::Cosine, 0);
        assert!(close(c.lr(0), 1.0) && close(c.lr(50), 0.5) && close(c.lr(100), 0.0));
        let o = schedule(ScheduleKind::OneCycle, 0);
        assert!(close(o.lr(0), 0.04) && close(o.lr(30), 1.0) && close(o.lr(100), 0.0));
        assert!(o.lr(15) > o.lr(0) && o.lr(60) < o.lr(30));
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
}
