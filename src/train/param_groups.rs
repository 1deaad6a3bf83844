//! `[[train.param_groups]]`: parameters that train with their own learning-rate scale, weight
//! decay or number of epochs, as PyTorch's optimizer parameter groups (and timm's
//! no-weight-decay-for-norms groups). The speed-run nets train BatchNorm shifts at 64x the rate
//! with the same absolute decay, and their whitening bias for the first 3 epochs only.

use std::collections::HashSet;

use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::error::{InvalidSetting, ensure};
use crate::models::Classifier;
use crate::models::params::{PathVisitor, summary_path, visit_with_paths};
use crate::models::transfer::{self, TransferConfig};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ParamGroupConfig {
    /// Which parameters: `"norm"` (BatchNorm scales and shifts), `"bias"` (biases and BatchNorm
    /// shifts), or a regular expression searched in each parameter's path as `ferrovision
    /// summary` names its layer, leaf included (`stages\.0\.`, `whitening\.conv\.bias`).
    pub params: String,
    /// The group's learning rate is the schedule's times this.
    #[serde(default = "one")]
    pub lr_scale: f64,
    /// The group's weight decay (absent = `train.weight_decay`). The step applies
    /// `lr * lr_scale * weight_decay`, so a group with a 64x rate and the same absolute decay per
    /// step sets `weight_decay = train.weight_decay / 64`.
    pub weight_decay: Option<f64>,
    /// Train the group during the first `epochs` epochs only, frozen afterwards (absent = all).
    pub epochs: Option<usize>,
}

fn one() -> f64 {
    1.0
}

impl ParamGroupConfig {
    pub fn validate(&self, key: &str) -> Result<(), InvalidSetting> {
        let key = |leaf: &str| format!("{key}.{leaf}");
        ensure(self.lr_scale >= 0.0 && self.lr_scale.is_finite(), &key("lr_scale"), || {
            format!("expected a number >= 0, found {}", self.lr_scale)
        })?;
        ensure(self.weight_decay.is_none_or(|w| w >= 0.0), &key("weight_decay"), || "expected a number >= 0".into())?;
        ensure(self.epochs.is_none_or(|e| e > 0), &key("epochs"), || "expected at least 1 epoch".into())?;
        self.selector().map(|_| ()).map_err(|e| InvalidSetting { key: key("params"), message: e })
    }

    fn selector(&self) -> Result<Selector, String> {
        Ok(match self.params.as_str() {
            "norm" => Selector::Norm,
            "bias" => Selector::Bias,
            pattern => {
                Selector::Path(Regex::new(pattern).map_err(|e| format!("expected \"norm\", \"bias\" or a regular expression: {e}"))?)
            }
        })
    }
}

enum Selector {
    Norm,
    Bias,
    Path(Regex),
}

impl Selector {
    fn matches(&self, path: &str) -> bool {
        let leaf = path.rsplit('.').next().unwrap_or(path);
        match self {
            Selector::Norm => leaf == "gamma" || leaf == "beta",
            Selector::Bias => leaf == "bias" || leaf == "beta",
            Selector::Path(regex) => regex.is_match(path),
        }
    }
}

/// A group resolved against a model: its parameters and settings.
#[derive(Clone, Debug)]
pub struct ResolvedGroup {
    /// What it is, for the log: its selector, or a pretrained layer's name.
    pub label: String,
    pub ids: Vec<ParamId>,
    pub lr_scale: f64,
    pub weight_decay: f64,
    /// The first epoch (1-based) it trains in; frozen before.
    pub first_epoch: usize,
    /// The last epoch it trains in (absent = the last); frozen after.
    pub epochs: Option<usize>,
}

impl ResolvedGroup {
    pub fn param_group(&self) -> ParamGroup {
        ParamGroup::from_ids(self.ids.clone())
    }
}

/// The configured groups with the parameters of `model` each selects (running statistics
/// excluded); a group that selects nothing is an error naming it.
pub fn resolve(model: &Classifier, groups: &[ParamGroupConfig], default_decay: f64) -> Result<Vec<ResolvedGroup>, InvalidSetting> {
    struct Paths(Vec<(String, ParamId)>);
    impl PathVisitor for Paths {
        fn visit_float<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>) {
            let leaf = path.rsplit('.').next().unwrap_or(path);
            if !leaf.starts_with("running_") {
                self.0.push((path.to_string(), param.id));
            }
        }
    }
    let params = visit_with_paths(model, Paths(Vec::new())).0;
    groups
        .iter()
        .enumerate()
        .map(|(i, group)| {
            let key = format!("train.param_groups[{i}].params");
            let selector = group.selector().map_err(|message| InvalidSetting { key: key.clone(), message })?;
            let ids: Vec<ParamId> = params.iter().filter(|(path, _)| selector.matches(summary_path(path))).map(|(_, id)| *id).collect();
            ensure(!ids.is_empty(), &key, || format!("`{}` selects no parameter of the model (see `ferrovision summary`)", group.params))?;
            Ok(ResolvedGroup {
                label: group.params.clone(),
                ids,
                lr_scale: group.lr_scale,
                weight_decay: group.weight_decay.unwrap_or(default_decay),
                first_epoch: 1,
                epochs: group.epochs,
            })
        })
        .collect()
}

/// The groups of a pretrained backbone (`transfer.backbone_lr_scale`, `layer_decay`,
/// `unfreeze_every`): none when it trains like the new parts, one at `backbone_lr_scale`, or one
/// per layer of [`transfer::backbone_layers`], the layer `k` below the head at
/// `backbone_lr_scale * layer_decay^k`, joining in epoch `1 + k * unfreeze_every`.
pub fn backbone_groups(model: &Classifier, new_parts: &[String], t: &TransferConfig, weight_decay: f64) -> Vec<ResolvedGroup> {
    let group = |label: String, ids, lr_scale, first_epoch| ResolvedGroup { label, ids, lr_scale, weight_decay, first_epoch, epochs: None };
    if t.per_layer() {
        let layers = transfer::backbone_layers(model, new_parts);
        let count = layers.len();
        layers
            .into_iter()
            .enumerate()
            .map(|(i, (name, ids))| {
                let below_head = count - i;
                group(name, ids, t.backbone_lr_scale * t.layer_decay.powi(below_head as i32), 1 + below_head * t.unfreeze_every)
            })
            .collect()
    } else if t.backbone_lr_scale != 1.0 {
        vec![group("backbone".into(), transfer::backbone_ids(model, new_parts), t.backbone_lr_scale, 1)]
    } else {
        Vec::new()
    }
}

/// One line on how the groups train: `stem lr x0.105 from epoch 9, ...`.
pub fn describe(groups: &[ResolvedGroup]) -> String {
    let group = |g: &ResolvedGroup| {
        let from = if g.first_epoch > 1 { format!(" from epoch {}", g.first_epoch) } else { String::new() };
        let until = g.epochs.map_or(String::new(), |e| format!(" until epoch {e}"));
        format!("{} lr x{:.3}{from}{until}", g.label, g.lr_scale)
    };
    groups.iter().map(group).collect::<Vec<_>>().join(", ")
}

/// Parameters of the groups that do not train in `epoch` (1-based): not begun, or ended.
pub fn frozen_in(groups: &[ResolvedGroup], epoch: usize) -> HashSet<ParamId> {
    let idle = |g: &&ResolvedGroup| epoch < g.first_epoch || g.epochs.is_some_and(|e| epoch > e);
    groups.iter().filter(idle).flat_map(|g| g.ids.iter().copied()).collect()
}

/// Drops the gradients of `frozen` from `grads`: the optimizer then leaves those parameters (and
/// their state) as they are, as PyTorch does for `requires_grad = False`.
pub fn drop_gradients<M: Module>(grads: &mut GradientsParams, model: &M, frozen: &HashSet<ParamId>) {
    struct Drop<'a> {
        grads: &'a mut GradientsParams,
        frozen: &'a HashSet<ParamId>,
    }
    impl ModuleVisitor for Drop<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.frozen.contains(&param.id) {
                self.grads.remove::<D>(param.id);
            }
        }
    }
    if !frozen.is_empty() {
        model.visit(&mut Drop { grads, frozen });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{ModelConfig, build};

    fn group(params: &str) -> ParamGroupConfig {
        ParamGroupConfig { params: params.into(), lr_scale: 1.0, weight_decay: None, epochs: None }
    }

    #[test]
    fn selectors_pick_norms_biases_and_paths() {
        let model = build(&ModelConfig::named("airbench"), 10, &Device::flex()).unwrap();
        let groups = [group("norm"), group("bias"), group(r"^whitening\.conv\.bias$"), group(r"stages\.0\.")];
        let resolved = resolve(&model, &groups, 5e-4).unwrap();
        // 6 BatchNorms (gamma + beta each); 6 shifts + the whitening bias; 1; stage 0's 2 convs + 4 BN tensors.
        let sizes: Vec<usize> = resolved.iter().map(|g| g.ids.len()).collect();
        assert_eq!(sizes, [12, 7, 1, 6]);
        assert!(resolved.iter().all(|g| g.weight_decay == 5e-4));
    }

    #[test]
    fn bad_groups_are_named() {
        let model = build(&ModelConfig::named("fast_net"), 10, &Device::flex()).unwrap();
        let err = resolve(&model, &[group("norm"), group("whitening")], 0.0).unwrap_err();
        assert_eq!(err.key, "train.param_groups[1].params");
        assert!(err.message.contains("selects no parameter"), "{}", err.message);
        let err = group("stages[").validate("train.param_groups[0]").unwrap_err();
        assert_eq!(err.key, "train.param_groups[0].params");
        let negative = ParamGroupConfig { lr_scale: -1.0, ..group("norm") };
        assert_eq!(negative.validate("train.param_groups[2]").unwrap_err().key, "train.param_groups[2].lr_scale");
    }

    #[test]
    fn groups_freeze_after_their_epochs() {
        let group = |id: u64, first_epoch, epochs| ResolvedGroup {
            label: String::new(),
            ids: vec![ParamId::from(id)],
            lr_scale: 1.0,
            weight_decay: 0.0,
            first_epoch,
            epochs,
        };
        let groups = [group(1, 1, Some(3)), group(2, 1, None), group(3, 3, None)];
        assert_eq!(frozen_in(&groups, 2), HashSet::from([ParamId::from(3)]));
        assert!(frozen_in(&groups, 3).is_empty());
        assert_eq!(frozen_in(&groups, 4), HashSet::from([ParamId::from(1)]));
    }
}
