//! Experiment configuration: one TOML file per experiment, `--set key=value` overrides, and strict
//! checking (an unknown key or a value of the wrong type is an error that names the key).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::augment::mix::MixConfig;
use crate::augment::transforms::Transform;
use crate::augment::{InputTransform, NormalizePreset, PaddingMode};
use crate::models::{BlockKind, WeightInit};
use crate::tracking::journal::ExperimentInfo;
use crate::train::Tta;
use crate::train::callbacks::EarlyStopping;
use crate::train::optim::OptimizerKind;
use crate::train::schedule::{Monitor, PlateauConfig, ScheduleKind};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("--set {0}: expected key=value (for example --set train.epochs=3)")]
    BadOverride(String),
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExperimentConfig {
    pub experiment: ExperimentInfo,
    pub data: DataConfig,
    pub augment: AugmentConfig,
    pub model: ModelConfig,
    pub transfer: TransferConfig,
    pub train: TrainConfig,
    pub run: RunConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Data set location: a folder or archive in any supported CIFAR-10 form.
    pub path: PathBuf,
    /// Fetch the official archive into `path`'s folder when no local copy exists.
    pub download: bool,
    /// Where decoded images are cached (relative paths are relative to the working directory).
    pub cache_dir: PathBuf,
    /// Images held out of the train split for validation, stratified by class.
    pub val_size: usize,
    /// Keep only this many training images per class (0 = all), for quick experiments.
    pub subset_per_class: usize,
    /// Keep only this many test images per class (0 = all).
    pub test_subset_per_class: usize,
    /// Batches prepared ahead of the training step by the loader thread.
    pub prefetch: usize,
    /// Resize every image to this square size on its way into the model (bilinear, antialiased),
    /// e.g. 32 -> 224 for ImageNet-pretrained weights. Absent = the data set's own size.
    pub input_size: Option<usize>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("../shared/data/cifar10-jpeg.tar.gz"),
            download: false,
            cache_dir: PathBuf::from(".cache/ferrovision"),
            val_size: 5000,
            subset_per_class: 0,
            test_subset_per_class: 0,
            prefetch: 4,
            input_size: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Pixels of padding around each training image before a random crop back to its size (0 = no crop).
    pub crop_padding: usize,
    pub padding_mode: PaddingMode,
    /// Probability of a horizontal flip.
    pub hflip: f64,
    pub normalize: NormalizePreset,
    /// The full training pipeline (`[[augment.transforms]]` entries tagged by `name`); when given,
    /// it replaces `crop_padding`, `padding_mode` and `hflip`.
    pub transforms: Vec<Transform>,
    /// Batch-level MixUp / CutMix.
    pub mix: MixConfig,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            crop_padding: 4,
            padding_mode: PaddingMode::Reflect,
            hflip: 0.5,
            normalize: NormalizePreset::Cifar10,
            transforms: Vec::new(),
            mix: MixConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// A name from `ferrovision models`.
    pub name: String,
    /// Dropout probability before the classifier (0 = none).
    pub dropout: f64,
    pub init: WeightInit,
    /// The value used by `init = "constant"`.
    pub init_constant: f64,
    /// Architecture overrides of the named preset (absent = the preset's value). `fast_net` reads
    /// `stem_channels` and `widths`; the ResNets read all of them.
    pub stem_channels: Option<usize>,
    /// Width of each stage.
    pub widths: Option<Vec<usize>>,
    /// Residual blocks per stage.
    pub blocks: Option<Vec<usize>>,
    /// Stride of the first block of each stage.
    pub strides: Option<Vec<usize>>,
    pub kernel_size: Option<usize>,
    /// Kernel of the projection shortcuts (1 or 3).
    pub shortcut_kernel: Option<usize>,
    pub block: Option<BlockKind>,
    /// BatchNorm momentum (PyTorch convention) of the EfficientNet family instead of
    /// the reference's (EfficientNet-B5+/Lite: 0.01); e.g. 0.1 when fine-tuning for a few epochs.
    pub bn_momentum: Option<f64>,
    /// Initial weights: a PyTorch checkpoint (zip or legacy .pth), a safetensors file, or a
    /// ferrovision export.
    pub weights: Option<PathBuf>,
    /// Registered pretrained weights (`ferrovision weights list`), fetched into `data.cache_dir`.
    pub pretrained: Option<String>,
    /// Load what matches when the weights do not fit exactly (and print what did not).
    pub allow_partial: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            name: "fast_net".into(),
            dropout: 0.0,
            init: WeightInit::Default,
            init_constant: 0.01,
            stem_channels: None,
            widths: None,
            blocks: None,
            strides: None,
            kernel_size: None,
            shortcut_kernel: None,
            block: None,
            bn_momentum: None,
            weights: None,
            pretrained: None,
            allow_partial: false,
        }
    }
}

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
    pub label_smoothing: f64,
    /// Clip each parameter's gradient to this L2 norm (absent = no clipping).
    pub grad_clip_norm: Option<f64>,
    /// Test-time augmentation of validation and test evaluation.
    pub tta: Tta,
    /// Seeds weight initialization, the split, shuffling and augmentation.
    pub seed: u64,
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
            cycle_epochs: 2.0,
            step_size: 30,
            milestones: Vec::new(),
            gamma: 0.1,
            plateau: PlateauConfig::default(),
            early_stopping: None,
            accumulate_batches: 1,
            rmsprop_alpha: 0.99,
            ema_decay: None,
            label_smoothing: 0.0,
            grad_clip_norm: None,
            tta: Tta::None,
            seed: 0,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Folder under which each run gets its own `<id>/` folder.
    pub dir: PathBuf,
    /// Run id; empty = `<config name>-<timestamp>`.
    pub id: String,
    /// `flex` (pure-Rust CPU, default), `vulkan` or `cuda` (with the matching cargo feature).
    pub device: String,
    /// Show a progress bar on a terminal.
    pub progress: bool,
    /// Write TensorBoard event files into `<run>/tensorboard/`.
    pub tensorboard: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self { dir: PathBuf::from("runs"), id: String::new(), device: "flex".into(), progress: true, tensorboard: true }
    }
}

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
        }
    }
}

impl ExperimentConfig {
    /// Reads a config file and applies `key=value` overrides (values in TOML syntax; a bare word is
    /// taken as a string).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read { path: path.to_path_buf(), error })?;
        Self::from_toml(&text, &path.display().to_string(), overrides)
    }

    pub fn from_toml(text: &str, origin: &str, overrides: &[String]) -> Result<Self, ConfigError> {
        let mut table: toml::Table =
            text.parse().map_err(|e: toml::de::Error| ConfigError::Parse { origin: origin.into(), message: one_line(&e) })?;
        for item in overrides {
            apply_override(&mut table, item)?;
        }
        let augment_key = |key: &str| table.get("augment").and_then(|a| a.get(key)).cloned();
        let normalize_given = augment_key("normalize").is_some();
        let shorthand_given: Vec<(&str, toml::Value)> =
            ["crop_padding", "padding_mode", "hflip"].into_iter().filter_map(|k| augment_key(k).map(|v| (k, v))).collect();
        let mut config: ExperimentConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse { origin: origin.into(), message: one_line(&e) })?;
        if !config.augment.transforms.is_empty() {
            // The pipeline replaces the shorthand; a resolved config says so with crop 0 / flip 0.
            let disabled = |v: &toml::Value| v.as_integer() == Some(0) || v.as_float() == Some(0.0) || v.is_str();
            if let Some((key, _)) = shorthand_given.iter().find(|(_, v)| !disabled(v)) {
                return Err(ConfigError::Invalid {
                    key: format!("augment.{key}"),
                    message: "augment.transforms replaces the crop/flip shorthand; put the crop and flip in the list".into(),
                });
            }
            config.augment.crop_padding = 0;
            config.augment.hflip = 0.0;
        }
        config.validate()?;
        if !normalize_given {
            config.augment.normalize = config.default_normalize();
        }
        Ok(config)
    }

    /// Pretrained weights expect their own normalization: the registry's, ImageNet's for other
    /// weight files; CIFAR-10 statistics otherwise.
    fn default_normalize(&self) -> NormalizePreset {
        let m = &self.model;
        let registered = |name: &str| crate::weights::registry::find(name).ok().map(|w| w.normalize);
        match (&m.pretrained, &m.weights) {
            (Some(name), _) => registered(name).unwrap_or(NormalizePreset::Imagenet),
            (None, Some(_)) => NormalizePreset::Imagenet,
            (None, None) => NormalizePreset::Cifar10,
        }
    }

    /// The resize and normalization every image goes through, in training and evaluation.
    pub fn input_transform(&self) -> InputTransform {
        InputTransform { size: self.data.input_size, normalize: self.augment.normalize }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("every config field is representable in TOML")
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| Err(ConfigError::Invalid { key: key.into(), message });
        let t = &self.train;
        if t.epochs == 0 {
            return invalid("train.epochs", "expected at least 1".into());
        }
        if t.batch_size == 0 || t.eval_batch_size == 0 {
            return invalid("train.batch_size", "expected at least 1".into());
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            return invalid("train.lr", format!("expected a positive number, found {}", t.lr));
        }
        if !(0.0..1.0).contains(&t.label_smoothing) {
            return invalid("train.label_smoothing", format!("expected a value in [0, 1), found {}", t.label_smoothing));
        }
        let needs_val = |monitor: Monitor| monitor != Monitor::TrainLoss && self.data.val_size == 0;
        if t.schedule == ScheduleKind::Plateau && needs_val(t.plateau.monitor) {
            return invalid("train.plateau.monitor", "a validation metric needs data.val_size > 0 (or monitor = \"train_loss\")".into());
        }
        if t.early_stopping.is_some_and(|e| needs_val(e.monitor)) {
            return invalid(
                "train.early_stopping.monitor",
                "a validation metric needs data.val_size > 0 (or monitor = \"train_loss\")".into(),
            );
        }
        if t.ema_decay.is_some_and(|d| !(0.0..1.0).contains(&d)) {
            return invalid("train.ema_decay", "expected a decay in [0, 1), e.g. 0.999".into());
        }
        if t.accumulate_batches == 0 {
            return invalid("train.accumulate_batches", "expected at least 1".into());
        }
        if !(t.gamma.is_finite() && t.gamma > 0.0) {
            return invalid("train.gamma", format!("expected a positive factor, found {}", t.gamma));
        }
        if t.step_size == 0 {
            return invalid("train.step_size", "expected at least 1 epoch".into());
        }
        if !t.milestones.windows(2).all(|w| w[0] < w[1]) {
            return invalid("train.milestones", format!("expected increasing epochs, found {:?}", t.milestones));
        }
        if !(t.plateau.factor > 0.0 && t.plateau.factor < 1.0) {
            return invalid("train.plateau.factor", format!("expected a factor in (0, 1), found {}", t.plateau.factor));
        }
        if !(0.0..1.0).contains(&t.rmsprop_alpha) {
            return invalid("train.rmsprop_alpha", format!("expected a value in [0, 1), found {}", t.rmsprop_alpha));
        }
        if !(0.0..1.0).contains(&t.momentum) {
            return invalid("train.momentum", format!("expected a value in [0, 1), found {}", t.momentum));
        }
        if !(0.0..=1.0).contains(&self.augment.hflip) {
            return invalid("augment.hflip", format!("expected a probability in [0, 1], found {}", self.augment.hflip));
        }
        if let Err((key, message)) = self.augment.mix.validate() {
            return invalid(key, message);
        }
        if !(0.0..1.0).contains(&self.model.dropout) {
            return invalid("model.dropout", format!("expected a probability in [0, 1), found {}", self.model.dropout));
        }
        if t.warmup_epochs < 0.0 || t.warmup_epochs > t.epochs as f64 {
            return invalid("train.warmup_epochs", format!("expected 0..={} epochs, found {}", t.epochs, t.warmup_epochs));
        }
        let tr = &self.transfer;
        if !(0.0..1.0).contains(&tr.head_dropout) {
            return invalid("transfer.head_dropout", format!("expected a probability in [0, 1), found {}", tr.head_dropout));
        }
        if !(tr.backbone_lr_scale.is_finite() && tr.backbone_lr_scale >= 0.0) {
            return invalid("transfer.backbone_lr_scale", format!("expected a number >= 0, found {}", tr.backbone_lr_scale));
        }
        if self.model.bn_momentum.is_some_and(|m| !(0.0..=1.0).contains(&m)) {
            return invalid("model.bn_momentum", "expected a value in [0, 1]".into());
        }
        if self.data.input_size == Some(0) {
            return invalid("data.input_size", "expected a positive size in pixels".into());
        }
        if self.model.weights.is_some() && self.model.pretrained.is_some() {
            return invalid("model.weights", "give either model.weights or model.pretrained, not both".into());
        }
        crate::models::check(&self.model).map_err(|(key, message)| ConfigError::Invalid { key, message })?;
        Ok(())
    }
}

/// toml's messages span several lines (with a source excerpt); errors here are one line.
fn one_line(error: &toml::de::Error) -> String {
    error.to_string().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// Splits `v1,v2,[a,b],...` at the commas outside brackets (lists of values on the command line).
pub fn split_values(values: &str) -> Vec<String> {
    let (mut out, mut depth, mut current) = (Vec::new(), 0i32, String::new());
    for ch in values.chars() {
        match ch {
            '[' | '{' => depth += 1,
            ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut current).trim().to_string());
                continue;
            }
            _ => {}
        }
        current.push(ch);
    }
    out.push(current.trim().to_string());
    out.retain(|v| !v.is_empty());
    out
}

/// Sets `a.b.c = value` in a TOML table; the value is parsed as TOML, or taken as a string.
fn apply_override(table: &mut toml::Table, item: &str) -> Result<(), ConfigError> {
    let (key, raw) = item.split_once('=').ok_or_else(|| ConfigError::BadOverride(item.into()))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(ConfigError::BadOverride(item.into()));
    }
    let raw = raw.trim();
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("split yields at least one part");
    let mut node = table;
    for part in parts {
        node = node
            .entry(part)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| ConfigError::Invalid { key: key.into(), message: format!("`{part}` is not a section") })?;
    }
    node.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let err = ExperimentConfig::from_toml("[train]\nepochz = 3\n", "x.toml", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("epochz") && msg.contains("x.toml"), "{msg}");
    }

    #[test]
    fn unknown_section_is_named() {
        let err = ExperimentConfig::from_toml("[trian]\nepochs = 3\n", "x.toml", &[]).unwrap_err();
        assert!(err.to_string().contains("trian"), "{err}");
    }

    #[test]
    fn non_numeric_value_is_named() {
        let err = ExperimentConfig::from_toml("[train]\nlr = \"fast\"\n", "x.toml", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("lr") && msg.contains("fast"), "{msg}");
        let err = ExperimentConfig::from_toml("", "x.toml", &["train.epochs=ten".into()]).unwrap_err();
        assert!(err.to_string().contains("epochs"), "{err}");
    }

    #[test]
    fn overrides_apply_and_round_trip() {
        let c = ExperimentConfig::from_toml(
            "[train]\nepochs = 3\n",
            "x.toml",
            &["train.epochs=5".into(), "model.name=resnet18_cifar".into(), "train.lr=0.05".into()],
        )
        .unwrap();
        assert_eq!(c.train.epochs, 5);
        assert_eq!(c.model.name, "resnet18_cifar");
        assert_eq!(c.train.lr, 0.05);
        let again = ExperimentConfig::from_toml(&c.to_toml(), "resolved", &[]).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        let err = ExperimentConfig::from_toml("[augment]\nhflip = 1.5\n", "x.toml", &[]).unwrap_err();
        assert!(err.to_string().contains("augment.hflip"), "{err}");
        let err = ExperimentConfig::from_toml("[model]\nname = \"resnet999\"\n", "x.toml", &[]).unwrap_err();
        assert!(err.to_string().contains("resnet999"), "{err}");
    }
}
