//! Fine-tuning from pretrained weights: build the model an experiment describes, load its weights,
//! replace the classifier or append a head on its outputs, and freeze what should not train.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use burn::module::{Module, ParamGroup, ParamId};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use serde::{Deserialize, Serialize};

use super::Classifier;
use super::config::ModelConfig;
use super::trace;
use crate::error::{InvalidSetting, ensure};
use crate::weights::{self, LoadOptions, registry};

/// Which parameters train when starting from pretrained weights.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Freeze {
    /// The first N top-level children of the reference model (as `named_children()` lists them).
    Children(usize),
    /// Parameters whose path (or reference child name) starts with one of these.
    Patterns(Vec<String>),
}

/// What happens to the pretrained classifier.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HeadMode {
    /// A new classifier for the data set's classes in place of the pretrained one.
    #[default]
    Replace,
    /// Keep the pretrained classifier (e.g. 1000 ImageNet logits) and add a head on its outputs.
    Append,
}

/// What trains when fine-tuning.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Finetune {
    /// Every parameter not frozen by `freeze`.
    #[default]
    All,
    /// Only the new head (the whole pretrained network frozen).
    Head,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TransferConfig {
    pub finetune: Finetune,
    pub freeze: Freeze,
    pub head: HeadMode,
    /// Hidden units of a two-layer head (0 = a single linear layer).
    pub head_hidden: usize,
    /// Dropout before the head's layers.
    pub head_dropout: f64,
    /// The pretrained part trains at `train.lr` times this (the head at `train.lr`).
    pub backbone_lr_scale: f64,
    /// Layer-wise learning-rate decay: the pretrained layer nearest the head trains at
    /// `backbone_lr_scale * layer_decay`, the next one down at `layer_decay^2` times that, and so
    /// on down to the stem (1 = off). Layers as [`backbone_layers`] lists them.
    pub layer_decay: f64,
    /// Gradual unfreezing (ULMFiT): the new parts train alone for the first `unfreeze_every`
    /// epochs, then every `unfreeze_every` epochs the next pretrained layer down joins (0 = off).
    pub unfreeze_every: usize,
    /// When everything before the classifier (or the appended head) is frozen and the training
    /// images pass no random transform, compute the frozen part once per image and train the
    /// rest on its outputs (`train::feature_cache`), kept on disk for later runs or in memory.
    pub feature_cache: FeatureCacheMode,
}

/// Where the outputs of a frozen part are kept (`transfer.feature_cache`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FeatureCacheMode {
    /// In `data.cache_dir/features`, read back by later runs of the same frozen weights, images
    /// and input transforms.
    #[default]
    Disk,
    /// For this run only.
    Memory,
    /// Not cached: the frozen part runs on every batch.
    Off,
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self {
            finetune: Finetune::All,
            freeze: Freeze::Children(0),
            head: HeadMode::Replace,
            head_hidden: 0,
            head_dropout: 0.0,
            backbone_lr_scale: 1.0,
            layer_decay: 1.0,
            unfreeze_every: 0,
            feature_cache: FeatureCacheMode::Disk,
        }
    }
}

impl TransferConfig {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let dropout = self.head_dropout;
        ensure((0.0..1.0).contains(&dropout), "transfer.head_dropout", || format!("expected a probability in [0, 1), found {dropout}"))?;
        let scale = self.backbone_lr_scale;
        ensure(scale.is_finite() && scale >= 0.0, "transfer.backbone_lr_scale", || format!("expected a number >= 0, found {scale}"))?;
        let decay = self.layer_decay;
        ensure(decay > 0.0 && decay <= 1.0, "transfer.layer_decay", || format!("expected a factor in (0, 1], found {decay}"))
    }

    /// Whether the pretrained layers train at rates or from epochs of their own.
    pub fn per_layer(&self) -> bool {
        self.layer_decay != 1.0 || self.unfreeze_every > 0
    }
}

/// Layers on top of a network's outputs: `dropout -> [linear -> relu -> dropout] -> linear`.
/// With `head = "append"` it reads the pretrained classifier's logits; with `head = "replace"`
/// and a hidden layer, the network's new final layer is the first linear and this the rest.
#[derive(Module, Debug)]
pub struct Head {
    hidden: Option<Linear>,
    /// Applies ReLU to its input first (the input is a fresh hidden layer of the network).
    activate_input: bool,
    dropout: Dropout,
    fc: Linear,
}

impl Head {
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let mut x = if self.activate_input { relu(x) } else { x };
        if let Some(hidden) = &self.hidden {
            x = relu(trace::linear(hidden, self.dropout.forward(x)));
        }
        trace::linear(&self.fc, self.dropout.forward(x))
    }
}

/// The model of an experiment, on `device`: the architecture, its pretrained weights, its head,
/// and its frozen parts. The weights load when `weights_cache` is given (registered weights are
/// fetched into that folder); a model about to receive a checkpoint skips them. Returns the
/// parameter paths of the new parts (head and replaced classifier), which train at the full
/// learning rate.
pub fn build(
    model_config: &ModelConfig,
    t: &TransferConfig,
    num_classes: usize,
    device: &Device,
    weights_cache: Option<&Path>,
) -> Result<(Classifier, Vec<String>)> {
    let pretrained = model_config.is_pretrained();
    let weights = weights_cache.map(|cache| weight_file(model_config, cache)).transpose()?.flatten();
    let hidden = (t.head_hidden > 0).then_some(t.head_hidden);
    let dropout = DropoutConfig::new(t.head_dropout).init();
    let pretrained_classes = model_config.pretrained.as_deref().and_then(|n| registry::find(n).ok()).map_or(1000, |w| w.num_classes);
    let (net_outputs, head) = match (t.head, pretrained, hidden) {
        (HeadMode::Append, true, _) => {
            let inputs = hidden.unwrap_or(pretrained_classes);
            let hidden = hidden.map(|h| LinearConfig::new(pretrained_classes, h).init(device));
            let fc = LinearConfig::new(inputs, num_classes).init(device);
            (pretrained_classes, Some(Head { hidden, activate_input: false, dropout, fc }))
        }
        (HeadMode::Append, false, _) => bail!("transfer.head = \"append\" needs pretrained weights (model.weights or model.pretrained)"),
        (HeadMode::Replace, _, Some(h)) => {
            (h, Some(Head { hidden: None, activate_input: true, dropout, fc: LinearConfig::new(h, num_classes).init(device) }))
        }
        (HeadMode::Replace, _, None) => (num_classes, None),
    };
    let net = super::build_net(model_config, net_outputs, device)?;
    let mut model = Classifier { net, head };

    let mut new_parts = vec!["head".to_string()];
    if pretrained && t.head == HeadMode::Replace {
        let replaced = model.classifier_prefix();
        if replaced.is_none() {
            bail!("model `{}` has no classifier layer to replace (model.name)", model_config.name);
        }
        new_parts.extend(replaced);
    }
    if let Some(path) = &weights {
        let options = LoadOptions { allow_partial: model_config.allow_partial, skip_prefixes: new_parts.clone() };
        let (loaded, report) = weights::load_into(model, &model_config.name, path, &options)?;
        if !report.is_complete() {
            eprintln!("{}: partial load: {report}", path.display());
        }
        model = loaded;
    }
    let frozen = frozen_prefixes(&model, t, &new_parts)?;
    Ok((super::params::with_stable_ids(freeze(model, &frozen)), new_parts))
}

/// The weight file a model config names, fetched into `cache` for registered pretrained weights.
fn weight_file(config: &ModelConfig, cache: &Path) -> Result<Option<PathBuf>> {
    Ok(match (&config.weights, &config.pretrained) {
        (Some(path), _) => Some(path.clone()),
        (None, Some(name)) => Some(registry::fetch(registry::find(name)?, cache)?),
        (None, None) => None,
    })
}

/// Parameter path prefixes to freeze: `finetune = "head"` freezes everything but the new parts;
/// `freeze = N` the first N reference children; `freeze = [..]` the named children or paths.
fn frozen_prefixes(model: &Classifier, t: &TransferConfig, new_parts: &[String]) -> Result<Vec<String>> {
    let children = model.top_level_children();
    let paths = weights::apply::parameter_shapes(model);
    let mut prefixes: Vec<String> = match &t.freeze {
        Freeze::Children(0) => Vec::new(),
        Freeze::Children(n) => {
            if *n > children.len() {
                bail!(
                    "transfer.freeze = {n}, but `{}` has {} top-level children: {}",
                    model.net.name(),
                    children.len(),
                    children.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>().join(", ")
                );
            }
            children[..*n].iter().flat_map(|(_, p)| p.clone()).collect()
        }
        Freeze::Patterns(patterns) => {
            let mut out = Vec::new();
            for pattern in patterns {
                if let Some((_, owned)) = children.iter().find(|(name, _)| name == pattern) {
                    out.extend(owned.clone());
                } else if paths.keys().any(|p| covers(pattern, p)) {
                    out.push(pattern.clone());
                } else {
                    bail!(
                        "transfer.freeze: `{pattern}` is neither a top-level child ({}) nor a parameter path prefix (e.g. {})",
                        children.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>().join(", "),
                        paths.keys().next().map(String::as_str).unwrap_or("-")
                    );
                }
            }
            out
        }
    };
    if t.finetune == Finetune::Head {
        prefixes.push("net".to_string());
    }
    // New parts always train.
    let frozen: Vec<String> =
        paths.keys().filter(|p| prefixes.iter().any(|f| covers(f, p)) && !new_parts.iter().any(|n| covers(n, p))).cloned().collect();
    Ok(frozen)
}

/// Whether `prefix` names `path` or a module containing it.
pub(crate) fn covers(prefix: &str, path: &str) -> bool {
    path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('.'))
}

/// Ids of the float parameters whose paths are listed, and of the training flags (BatchNorm's) of
/// the modules that hold them, so frozen BatchNorm layers also stop updating their statistics.
fn frozen_ids<M: Module>(model: &M, frozen_paths: &[String]) -> Vec<ParamId> {
    let frozen: BTreeSet<&str> = frozen_paths.iter().map(String::as_str).collect();
    let parent = |path: &str| path.rsplit_once('.').map_or(String::new(), |(module, _)| module.to_string());
    let params = super::named_params(model);
    let modules: BTreeSet<String> = params.iter().filter(|p| frozen.contains(p.path.as_str())).map(|p| parent(&p.path)).collect();
    params
        .into_iter()
        .filter(|p| match p.shape {
            Some(_) => frozen.contains(p.path.as_str()),
            None => modules.contains(&parent(&p.path)),
        })
        .map(|p| p.id)
        .collect()
}

/// `model` with the listed parameters frozen: no gradient, no optimizer state, BatchNorm in
/// evaluation mode.
pub fn freeze(model: Classifier, frozen_paths: &[String]) -> Classifier {
    if frozen_paths.is_empty() {
        return model;
    }
    let ids = frozen_ids(&model, frozen_paths);
    model.freeze_group(ParamGroup::from_ids(ids))
}

/// The pretrained network's layers from the input up, each with the ids of its float parameters
/// (new parts excluded): parameters are grouped by their `summary` name up to the first block index
/// (`stem`, `layer1.0`, `stages.3`, `features.2`, `fc`).
pub fn backbone_layers(model: &Classifier, new_parts: &[String]) -> Vec<(String, Vec<ParamId>)> {
    let mut layers: Vec<(String, Vec<ParamId>)> = Vec::new();
    let params = super::named_params(model).into_iter().filter(|p| p.shape.is_some() && !new_parts.iter().any(|n| covers(n, &p.path)));
    for param in params {
        let name = layer_name(super::params::summary_path(&param.path));
        match layers.iter_mut().find(|(layer, _)| *layer == name) {
            Some((_, ids)) => ids.push(param.id),
            None => layers.push((name, vec![param.id])),
        }
    }
    layers
}

/// `stages.3.1.expand.conv.weight` -> `stages.3`; `stem.conv.weight` -> `stem`.
fn layer_name(path: &str) -> String {
    let parts: Vec<&str> = path.split('.').collect();
    let end = parts.iter().position(|p| p.chars().all(|c| c.is_ascii_digit())).unwrap_or(0);
    parts[..=end].join(".")
}

/// Ids of every parameter outside the new parts (the pretrained backbone), for its own learning
/// rate.
pub fn backbone_ids(model: &Classifier, new_parts: &[String]) -> Vec<ParamId> {
    let paths: Vec<String> =
        weights::apply::parameter_shapes(model).into_keys().filter(|p| !new_parts.iter().any(|n| covers(n, p))).collect();
    frozen_ids(model, &paths)
}

#[cfg(test)]
mod tests {
    use burn::optim::GradientsParams;
    use burn::tensor::Distribution;

    use super::*;
    use crate::augment::NormalizePreset;
    use crate::data::classes::ClassNames;
    use crate::train::config::TrainConfig;
    use crate::train::param_groups;
    use crate::train::{loss, optim};
    use crate::weights::apply::parameter_shapes;
    use crate::weights::export::{ExportedModel, export_safetensors};

    /// Values of every float parameter by path.
    fn values(model: &Classifier) -> std::collections::BTreeMap<String, Vec<f32>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let about = ExportedModel {
            model: ModelConfig::default(),
            transfer: TransferConfig::default(),
            classes: ClassNames::from_names(&[]),
            image_size: 32,
            normalize: NormalizePreset::None,
        };
        export_safetensors(model, &about, &path).unwrap();
        let dict = crate::weights::read_state_dict(&path).unwrap();
        dict.tensors.into_iter().map(|(k, v)| (k, v.values)).collect()
    }

    /// The two sections `build` reads.
    struct Experiment {
        model: ModelConfig,
        transfer: TransferConfig,
    }

    fn experiment(model: &str, transfer: TransferConfig) -> Experiment {
        Experiment { model: ModelConfig::named(model), transfer }
    }

    fn build_experiment(config: &Experiment, num_classes: usize, device: &Device) -> Result<(Classifier, Vec<String>)> {
        build(&config.model, &config.transfer, num_classes, device, Some(Path::new(crate::data::config::DEFAULT_CACHE_DIR)))
    }

    /// One SGD-momentum step on random data; returns the new model and the optimizer's record.
    fn train_step(
        model: Classifier,
        optimizer: &mut burn::optim::ModuleOptimizer,
        classes: usize,
        side: usize,
    ) -> (Classifier, GradientsParams) {
        let device = Device::flex().autodiff();
        let images = Tensor::<4>::random([4, 3, side, side], Distribution::Normal(0.0, 1.0), &device);
        let labels: Vec<i64> = (0..4).map(|i| i % classes as i64).collect();
        let targets = loss::smoothed_targets(&labels, classes, 0.0, &device);
        let loss = loss::cross_entropy(model.forward(images), targets);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let kept = GradientsParams::from_grads(
            loss::cross_entropy(
                model.forward(Tensor::random([4, 3, side, side], Distribution::Default, &device)),
                loss::smoothed_targets(&labels, classes, 0.0, &device),
            )
            .backward(),
            &model,
        );
        (optimizer.step(0.1, model, grads), kept)
    }

    #[test]
    fn frozen_children_get_no_gradient_no_state_and_do_not_change() {
        let device = Device::flex().autodiff();
        let config = experiment("lenet5", TransferConfig { freeze: Freeze::Children(2), ..Default::default() });
        let (model, _) = build_experiment(&config, 3, &device).unwrap();
        let before = values(&model);
        let mut optimizer = optim::build(&TrainConfig { momentum: 0.9, ..Default::default() }, &[]);
        let (model, grads) = train_step(model, &mut optimizer, 3, 32);
        let after = values(&model);
        for (path, old) in &before {
            let frozen = path.starts_with("net.LeNet5.conv1.") || path.starts_with("net.LeNet5.conv2.");
            assert_eq!(&after[path] == old, frozen, "{path}: frozen = {frozen}");
        }
        // No gradient for the 4 frozen tensors, and optimizer state for the other 6 only.
        assert_eq!(grads.len(), 6);
        let record = format!("{:?}", optimizer.to_record());
        assert!(record.contains("num_tensors: 6"), "{record}");
    }

    #[test]
    fn frozen_batch_norm_keeps_its_running_statistics() {
        let device = Device::flex().autodiff();
        let config =
            experiment("resnet18", TransferConfig { freeze: Freeze::Patterns(vec!["conv1".into(), "bn1".into()]), ..Default::default() });
        let (model, _) = build_experiment(&config, 3, &device).unwrap();
        let before = values(&model);
        let mut optimizer = optim::build(&TrainConfig::default(), &[]);
        let (model, _) = train_step(model, &mut optimizer, 3, 32);
        let after = values(&model);
        // torchvision's conv1/bn1 are our stem.
        for key in ["stem.bn.running_mean", "stem.bn.running_var", "stem.bn.gamma", "stem.conv.weight"] {
            let key = format!("net.ImageNetResNet.{key}");
            assert_eq!(after[&key], before[&key], "{key}");
        }
        let trained = "net.ImageNetResNet.layer1.0.convs.0.bn.running_mean";
        assert_ne!(after[trained], before[trained]);
    }

    /// A pretrained LeNet-5 (1000 classes) saved as a ferrovision export.
    fn pretrained_lenet(dir: &std::path::Path) -> (std::path::PathBuf, std::collections::BTreeMap<String, Vec<f32>>) {
        let config = ModelConfig { name: "lenet5".into(), ..Default::default() };
        let model = crate::models::build(&config, 1000, &Device::flex()).unwrap();
        let about = ExportedModel {
            model: config,
            transfer: TransferConfig::default(),
            classes: ClassNames::from_names(&(0..1000).map(|i| i.to_string()).collect::<Vec<_>>()),
            image_size: 32,
            normalize: NormalizePreset::Imagenet,
        };
        let path = dir.join("lenet-1000.safetensors");
        export_safetensors(&model, &about, &path).unwrap();
        (path, values(&model))
    }

    #[test]
    fn replace_and_append_heads_keep_the_pretrained_weights() {
        let dir = tempfile::tempdir().unwrap();
        let (weights, pretrained) = pretrained_lenet(dir.path());
        let device = Device::flex();
        let mut config = experiment("lenet5", TransferConfig::default());
        config.model.weights = Some(weights);

        let (replaced, new_parts) = build_experiment(&config, 3, &device).unwrap();
        assert_eq!(new_parts, ["head", "net.LeNet5.fc3"]);
        let shapes = parameter_shapes(&replaced);
        assert_eq!(shapes["net.LeNet5.fc3.weight"], [84, 3]);
        assert_eq!(values(&replaced)["net.LeNet5.fc2.weight"], pretrained["net.LeNet5.fc2.weight"]);
        assert!(replaced.head.is_none());

        config.transfer = TransferConfig { head: HeadMode::Append, head_hidden: 16, finetune: Finetune::Head, ..Default::default() };
        let (appended, new_parts) = build_experiment(&config, 3, &device).unwrap();
        assert_eq!(new_parts, ["head"]);
        let shapes = parameter_shapes(&appended);
        assert_eq!(shapes["head.hidden.weight"], [1000, 16]);
        assert_eq!(shapes["head.fc.weight"], [16, 3]);
        assert_eq!(values(&appended)["net.LeNet5.fc3.weight"], pretrained["net.LeNet5.fc3.weight"]);
        let logits = appended.forward(Tensor::zeros([2, 3, 32, 32], &device));
        assert_eq!(logits.dims(), [2, 3]);

        // finetune = "head": only the head trains.
        let (model, _) = build_experiment(&config, 3, &Device::flex().autodiff()).unwrap();
        let mut optimizer = optim::build(&TrainConfig::default(), &[]);
        let (_, grads) = train_step(model, &mut optimizer, 3, 32);
        assert_eq!(grads.len(), 4, "head.hidden and head.fc weights and biases");
    }

    #[test]
    fn backbone_learning_rate_scale_applies_to_the_pretrained_part_only() {
        let dir = tempfile::tempdir().unwrap();
        let (weights, _) = pretrained_lenet(dir.path());
        let device = Device::flex().autodiff();
        let mut config = experiment("lenet5", TransferConfig { backbone_lr_scale: 0.0, ..Default::default() });
        config.model.weights = Some(weights);
        let (model, new_parts) = build_experiment(&config, 3, &device).unwrap();
        let before = values(&model);
        let train = TrainConfig { momentum: 0.0, weight_decay: 0.0, ..Default::default() };
        let backbone = param_groups::backbone_groups(&model, &new_parts, &config.transfer, 0.0);
        assert_eq!(backbone.len(), 1);
        let mut optimizer = optim::build(&train, &backbone);
        let (model, _) = train_step(model, &mut optimizer, 3, 32);
        let after = values(&model);
        assert_eq!(after["net.LeNet5.conv1.weight"], before["net.LeNet5.conv1.weight"]);
        assert_ne!(after["net.LeNet5.fc3.weight"], before["net.LeNet5.fc3.weight"]);
    }

    #[test]
    fn backbone_layers_run_from_the_stem_to_the_head() {
        let device = Device::flex();
        let names = |model: &str, new_parts: &[&str]| {
            let net = crate::models::build(&ModelConfig::named(model), 10, &device).unwrap();
            let new_parts: Vec<String> = new_parts.iter().map(|p| p.to_string()).collect();
            backbone_layers(&net, &new_parts).into_iter().map(|(name, _)| name).collect::<Vec<_>>()
        };
        let resnet = names("resnet18", &["head", "net.ImageNetResNet.fc"]);
        assert_eq!(resnet, ["stem", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1", "layer4.0", "layer4.1"]);
        let lite = names("efficientnet_lite0", &["head"]);
        let stages = (0..7).map(|i| format!("stages.{i}"));
        assert_eq!(lite, ["stem".to_string()].into_iter().chain(stages).chain(["head".into(), "fc".into()]).collect::<Vec<_>>());
    }

    /// Layer-wise decay halves the rate per layer down from the head; with gradual unfreezing the
    /// layers join one at a time from the top, and a frozen layer's weights stay as they were.
    #[test]
    fn layer_decay_and_gradual_unfreezing_follow_the_layers_down() {
        let dir = tempfile::tempdir().unwrap();
        let (weights, _) = pretrained_lenet(dir.path());
        let device = Device::flex().autodiff();
        let mut config = experiment("lenet5", TransferConfig { layer_decay: 0.5, unfreeze_every: 2, ..Default::default() });
        config.model.weights = Some(weights);
        let (model, new_parts) = build_experiment(&config, 3, &device).unwrap();
        let groups = param_groups::backbone_groups(&model, &new_parts, &config.transfer, 1e-4);
        let plan: Vec<(&str, f64, usize)> = groups.iter().map(|g| (g.label.as_str(), g.lr_scale, g.first_epoch)).collect();
        assert_eq!(plan, [("conv1", 0.0625, 9), ("conv2", 0.125, 7), ("fc1", 0.25, 5), ("fc2", 0.5, 3)]);
        assert!(groups.iter().all(|g| g.weight_decay == 1e-4));

        // Epoch 3: the new classifier (fc3) and fc2 train; the rest stays.
        let before = values(&model);
        let mut optimizer = optim::build(&TrainConfig { momentum: 0.0, weight_decay: 0.0, ..Default::default() }, &groups);
        let images = Tensor::<4>::random([4, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        let targets = loss::smoothed_targets(&[0, 1, 2, 0], 3, 0.0, &device);
        let mut grads = GradientsParams::from_grads(loss::cross_entropy(model.forward(images), targets).backward(), &model);
        param_groups::drop_gradients(&mut grads, &model, &param_groups::frozen_in(&groups, 3));
        let after = values(&optimizer.step(0.1, model, grads));
        for layer in ["conv1", "conv2", "fc1", "fc2", "fc3"] {
            let key = format!("net.LeNet5.{layer}.weight");
            assert_eq!(after[&key] != before[&key], layer == "fc2" || layer == "fc3", "{key}");
        }
    }

    #[test]
    fn bad_transfer_settings_are_clear_errors() {
        let device = Device::flex();
        let err = build_experiment(&experiment("lenet5", TransferConfig { freeze: Freeze::Children(9), ..Default::default() }), 3, &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("transfer.freeze = 9") && err.contains("conv1, conv2, fc1, fc2, fc3"), "{err}");
        let err = build_experiment(
            &experiment("lenet5", TransferConfig { freeze: Freeze::Patterns(vec!["layer9".into()]), ..Default::default() }),
            3,
            &device,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`layer9`"), "{err}");
        let err = build_experiment(&experiment("lenet5", TransferConfig { head: HeadMode::Append, ..Default::default() }), 3, &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs pretrained weights"), "{err}");
    }

    #[test]
    fn frozen_parameters_are_counted_apart_from_trainable_ones() {
        let config = experiment("lenet5", TransferConfig { freeze: Freeze::Children(2), ..Default::default() });
        let (model, _) = build_experiment(&config, 3, &Device::flex().autodiff()).unwrap();
        let counts = crate::models::param_counts(&model);
        // conv1 (6 x 3 x 5 x 5 + 6) and conv2 (16 x 6 x 5 x 5 + 16).
        assert_eq!(counts.frozen, 456 + 2416);
        assert_eq!(counts.trainable + counts.frozen, crate::models::trainable_params(&model));
    }
}
