//! `[prune]`: which trained run to prune, how channels are ranked and how many go, in how many
//! prune -> fine-tune steps. The rest of the config file (`[data]`, `[augment]`, `[train]`,
//! `[run]`) describes the fine-tuning, as for `ferrovision train`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{InvalidSetting, ensure};

/// How a channel's importance is measured.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Importance {
    /// L1 norm of the channel's filters (Li et al. 2017), summed over the group's layers.
    #[default]
    L1,
    /// L2 norm of the channel's filters over the group's layers.
    L2,
    /// |gamma| of the group's BatchNorms (Network Slimming).
    BnScale,
    /// First-order Taylor estimate of the loss change, (sum of weight x gradient)^2 per channel,
    /// from `taylor_batches` training batches (Molchanov et al. 2019).
    Taylor,
    /// Random (seeded by `train.seed`): the baseline every paper reports.
    Random,
}

/// Where channels compete.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Ranking {
    /// Within each group: every group loses its ratio (`ratio`, or its entry in `layer_ratios`).
    #[default]
    Local,
    /// Across groups: the least important channels of the whole model go (scores normalized by
    /// each group's mean).
    Global,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PruneConfig {
    /// The trained run to prune (its folder); it is read, never changed.
    pub source: PathBuf,
    /// Its checkpoint: `best` or `last`.
    pub checkpoint: String,
    pub importance: Importance,
    pub ranking: Ranking,
    /// Fraction of the channels removed in all (of each group with local ranking, of all
    /// prunable channels with global ranking), in [0, 1).
    pub ratio: f64,
    /// Instead of `ratio`: the fraction of FLOPs to remove, in [0, 1); the channel ratio is
    /// searched for.
    pub flops_reduction: Option<f64>,
    /// Local ranking: ratios of single groups, each named by one of its layers
    /// (`"blocks.3.convs.0.conv" = 0.3`, e.g. from a sensitivity analysis).
    pub layer_ratios: BTreeMap<String, f64>,
    /// Layers (or module prefixes, `stages.0`) whose channels are kept whole: the groups they are
    /// in are not pruned (the stem, the last stage before the head...).
    pub keep: Vec<String>,
    /// Kept channel counts are rounded to a multiple of this (8 suits the kernels); a group
    /// smaller than it is kept whole.
    pub round_to: usize,
    /// Prune -> fine-tune steps; each removes the same share of what is left, so that all steps
    /// together remove `ratio` (or `flops_reduction`).
    pub steps: usize,
    /// Batches of training data the Taylor importance is estimated from.
    pub taylor_batches: usize,
    /// Measure CPU latency (batch 1), throughput (batch 256) and training-step throughput of the
    /// source and the pruned model for the report (a few seconds to minutes).
    pub measure_speed: bool,
}

impl Default for PruneConfig {
    fn default() -> Self {
        Self {
            source: PathBuf::new(),
            checkpoint: "best".into(),
            importance: Importance::L1,
            ranking: Ranking::Local,
            ratio: 0.5,
            flops_reduction: None,
            layer_ratios: BTreeMap::new(),
            keep: Vec::new(),
            round_to: 1,
            steps: 1,
            taylor_batches: 4,
            measure_speed: true,
        }
    }
}

fn fraction(key: &str, value: f64) -> Result<(), InvalidSetting> {
    ensure((0.0..1.0).contains(&value), key, || format!("expected a fraction in [0, 1), found {value}"))
}

impl PruneConfig {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        ensure(!self.source.as_os_str().is_empty(), "prune.source", || "expected the folder of a trained run (runs/<id>)".into())?;
        ensure(["best", "last"].contains(&self.checkpoint.as_str()), "prune.checkpoint", || {
            format!("expected \"best\" or \"last\", found \"{}\"", self.checkpoint)
        })?;
        fraction("prune.ratio", self.ratio)?;
        if let Some(f) = self.flops_reduction {
            fraction("prune.flops_reduction", f)?;
        }
        for (layer, &ratio) in &self.layer_ratios {
            fraction(&format!("prune.layer_ratios.\"{layer}\""), ratio)?;
        }
        ensure(self.layer_ratios.is_empty() || self.ranking == Ranking::Local, "prune.layer_ratios", || {
            "per-group ratios need ranking = \"local\"".into()
        })?;
        ensure(self.layer_ratios.is_empty() || self.flops_reduction.is_none(), "prune.layer_ratios", || {
            "give either per-group ratios or prune.flops_reduction, not both".into()
        })?;
        ensure(self.round_to >= 1, "prune.round_to", || "expected a positive number".into())?;
        ensure(self.steps >= 1, "prune.steps", || "expected at least one step".into())?;
        ensure(self.importance != Importance::Taylor || self.taylor_batches >= 1, "prune.taylor_batches", || {
            "Taylor importance needs at least one batch".into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_pruning_configs_load() {
        for name in ["prune_fast_net", "prune_budget_resnet", "prune_speedrun", "prune_resnet18"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("configs/cifar10/{name}.toml"));
            let config = crate::config::ExperimentConfig::load(&path, &[]).unwrap();
            assert_eq!(config.prune.unwrap().flops_reduction, Some(0.5), "{name}");
        }
    }

    #[test]
    fn bad_settings_name_their_key() {
        let base = PruneConfig { source: "runs/a".into(), ..Default::default() };
        assert!(base.validate().is_ok());
        let cases = [
            (PruneConfig { ratio: 1.0, ..base.clone() }, "prune.ratio"),
            (PruneConfig { ratio: -0.1, ..base.clone() }, "prune.ratio"),
            (PruneConfig { flops_reduction: Some(1.5), ..base.clone() }, "prune.flops_reduction"),
            (PruneConfig { layer_ratios: [("stem.conv".into(), 1.0)].into(), ..base.clone() }, "prune.layer_ratios.\"stem.conv\""),
            (PruneConfig { layer_ratios: [("a".into(), 0.1)].into(), ranking: Ranking::Global, ..base.clone() }, "prune.layer_ratios"),
            (PruneConfig { steps: 0, ..base.clone() }, "prune.steps"),
            (PruneConfig { source: PathBuf::new(), ..base.clone() }, "prune.source"),
            (PruneConfig { checkpoint: "first".into(), ..base.clone() }, "prune.checkpoint"),
        ];
        for (config, key) in cases {
            assert_eq!(config.validate().unwrap_err().key, key);
        }
    }
}
