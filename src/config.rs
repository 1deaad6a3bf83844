//! Experiment configuration: one TOML file per experiment, `--set key=value` overrides, and strict
//! checking (an unknown key or a value of the wrong type is an error that names the key).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::augment::config::AugmentConfig;
use crate::augment::transforms::Transform;
use crate::augment::{InputTransform, NormalizePreset};
use crate::data::LoadOptions;
use crate::data::config::DataConfig;
use crate::error::{InvalidSetting, ensure, ensure_finite};
use crate::models::config::ModelConfig;
use crate::models::transfer::{Finetune, TransferConfig};
use crate::prune::PruneConfig;
use crate::tracking::config::ExperimentInfo;
use crate::tracking::config::RunConfig;
use crate::train::callbacks::BestBy;
use crate::train::config::TrainConfig;
use crate::train::schedule::{Monitor, ScheduleKind};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("--set {0}: expected key=value (for example --set train.epochs=3)")]
    BadOverride(String),
    #[error(transparent)]
    Invalid(#[from] InvalidSetting),
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
    /// `ferrovision prune`'s section (the rest of the file describes the fine-tuning).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune: Option<PruneConfig>,
}

impl ExperimentConfig {
    /// Reads a config file and applies `key=value` overrides (values in TOML syntax; a bare word is
    /// taken as a string).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        if path.is_dir() {
            let message = "is a folder; expected a TOML config file (e.g. configs/cifar10/quick.toml)".into();
            return Err(ConfigError::Parse { origin: path.display().to_string(), message });
        }
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read { path: path.to_path_buf(), error })?;
        Self::from_toml(&text, &path.display().to_string(), overrides)
    }

    pub fn from_toml(text: &str, origin: &str, overrides: &[String]) -> Result<Self, ConfigError> {
        let mut table: toml::Table =
            text.parse().map_err(|e: toml::de::Error| ConfigError::Parse { origin: origin.into(), message: one_line(&e) })?;
        // Kept to tell whether a key or value that does not fit came from the file or from --set.
        let from_file = (!overrides.is_empty()).then(|| table.clone());
        for item in overrides {
            apply_override(&mut table, item)?;
        }
        let augment_key = |key: &str| table.get("augment").and_then(|a| a.get(key)).cloned();
        let normalize_given = augment_key("normalize").is_some();
        let shorthand_given: Vec<(&str, toml::Value)> =
            AugmentConfig::SHORTHAND.into_iter().filter_map(|k| augment_key(k).map(|v| (k, v))).collect();
        let mut config: ExperimentConfig = toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
            let file_fits = from_file.is_some_and(|t| toml::Value::Table(t).try_into::<ExperimentConfig>().is_ok());
            let origin = if file_fits { format!("--set {}", overrides.join(" --set ")) } else { origin.into() };
            ConfigError::Parse { origin, message: one_line(&e) }
        })?;
        if !config.augment.transforms.is_empty() {
            // The pipeline replaces the shorthand; a resolved config says so with crop 0 / flip 0.
            // Of the named settings only the alternating flip would do something.
            let disabled =
                |v: &toml::Value| v.as_integer() == Some(0) || v.as_float() == Some(0.0) || v.as_str().is_some_and(|s| s != "alternate");
            if let Some((key, _)) = shorthand_given.iter().find(|(_, v)| !disabled(v)) {
                return Err(InvalidSetting::new(
                    format!("augment.{key}"),
                    "augment.transforms replaces the crop/flip shorthand; put the crop and flip in the list",
                )
                .into());
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

    /// The settings that change how the data set is decoded: the size an image folder of mixed
    /// sizes is resized to (`data.input_size`, else the size of a `resize` transform, as
    /// torchvision's `ImageFolder` with `Resize` has it) and CIFAR-100's label set.
    pub fn load_options(&self) -> LoadOptions {
        let resize_transform = self.augment.transforms.iter().find_map(|t| match t {
            Transform::Resize { size, .. } => Some(*size),
            _ => None,
        });
        LoadOptions { image_size: self.data.input_size.or(resize_transform), labels: self.data.labels }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("every config field is representable in TOML")
    }

    /// Every number is finite; then each section checks its ranges; the rules that span sections
    /// are checked here.
    fn validate(&self) -> Result<(), InvalidSetting> {
        ensure_finite("", &toml::Value::try_from(self).expect("every config field is representable in TOML"))?;
        self.data.validate()?;
        self.augment.validate()?;
        self.model.validate()?;
        self.transfer.validate()?;
        self.train.validate()?;
        if let Some(prune) = &self.prune {
            prune.validate()?;
        }
        let transfer = &self.transfer;
        for (key, set) in [("transfer.layer_decay", transfer.layer_decay != 1.0), ("transfer.unfreeze_every", transfer.unfreeze_every > 0)]
        {
            ensure(!set || self.model.is_pretrained(), key, || "needs pretrained weights (model.weights or model.pretrained)".into())?;
            ensure(!set || transfer.finetune == Finetune::All, key, || {
                "needs transfer.finetune = \"all\" (with \"head\" the pretrained layers never train)".into()
            })?;
        }
        let t = &self.train;
        let without_val = |monitor: Monitor| monitor == Monitor::TrainLoss || self.data.has_validation();
        let needs_val = || "a validation metric needs data.val_size > 0 (or monitor = \"train_loss\")".to_string();
        ensure(t.schedule != ScheduleKind::Plateau || without_val(t.plateau.monitor), "train.plateau.monitor", needs_val)?;
        ensure(t.early_stopping.is_none_or(|e| without_val(e.monitor)), "train.early_stopping.monitor", needs_val)?;
        // Without a validation split `best` is the last epoch, which the default val_loss stands for.
        ensure(t.best_by == BestBy::ValLoss || self.data.has_validation(), "train.best_by", || {
            "\"val_acc\" needs a validation split (data.val_size > 0)".into()
        })
    }
}

/// toml's messages span several lines (with a source excerpt); errors here are one line.
fn one_line(error: &toml::de::Error) -> String {
    error.to_string().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
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
            .ok_or_else(|| InvalidSetting::new(key, format!("`{part}` is not a section")))?;
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
    fn a_bad_override_is_blamed_on_set_not_on_the_file() {
        let err = ExperimentConfig::from_toml("[train]\nepochs = 3\n", "x.toml", &["train.epochz=3".into()]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("--set train.epochz=3: unknown field `epochz`"), "{msg}");
        let err = ExperimentConfig::from_toml("[train]\nepochz = 3\n", "x.toml", &["train.epochs=3".into()]).unwrap_err();
        assert!(err.to_string().starts_with("x.toml: unknown field `epochz`"), "{err}");
    }

    #[test]
    fn normalization_takes_a_preset_or_explicit_statistics() {
        let c =
            ExperimentConfig::from_toml("[augment]\nnormalize = { mean = [0.5, 0.5, 0.5], std = [0.25, 0.5, 0.5] }\n", "x", &[]).unwrap();
        assert_eq!(c.augment.normalize, NormalizePreset::Custom { mean: [0.5; 3], std: [0.25, 0.5, 0.5] });
        assert_eq!(ExperimentConfig::from_toml(&c.to_toml(), "resolved", &[]).unwrap(), c);
        let preset = ExperimentConfig::from_toml("[augment]\nnormalize = \"imagenet\"\n", "x", &[]).unwrap();
        assert_eq!(preset.augment.normalize, NormalizePreset::Imagenet);
        for (text, mentions) in [
            ("normalize = [0.5, 0.5, 0.5]", "{ mean = [r, g, b], std = [r, g, b] }"),
            ("normalize = \"imagnet\"", "unknown preset `imagnet`"),
            ("normalize = { mean = [0.5, 0.5, 0.5], std = [0.5, 0.0, 0.5] }", "augment.normalize"),
        ] {
            let err = ExperimentConfig::from_toml(&format!("[augment]\n{text}\n"), "x", &[]).unwrap_err().to_string();
            assert!(err.contains(mentions), "{text}: {err}");
        }
    }

    #[test]
    fn load_options_take_input_size_else_a_resize_transform_and_the_labels() {
        let options = |text: &str| ExperimentConfig::from_toml(text, "x", &[]).unwrap().load_options();
        assert_eq!(options(""), LoadOptions::default());
        let resize = "[[augment.transforms]]\nname = \"resize\"\nsize = 48\n";
        assert_eq!(options(resize).image_size, Some(48));
        assert_eq!(
            options(&format!("[data]\ninput_size = 64\nlabels = \"coarse\"\n{resize}")),
            LoadOptions { image_size: Some(64), labels: Some(crate::data::LabelLevel::Coarse) }
        );
    }

    #[test]
    fn a_folder_is_not_a_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = ExperimentConfig::load(dir.path(), &[]).unwrap_err().to_string();
        assert!(err.contains("is a folder; expected a TOML config file"), "{err}");
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

    /// A config with every optional number set and transforms holding each kind of number.
    const EVERY_NUMBER: &str = r#"
[augment]
normalize = { mean = [0.5, 0.5, 0.5], std = [0.25, 0.25, 0.25] }
transforms = [
    { name = "random_resized_crop", size = 32 },
    { name = "random_affine", degrees = [-10.0, 10.0], translate = [0.1, 0.1], scale = [0.9, 1.1], shear = 5.0 },
    { name = "color_jitter", brightness = 0.2, hue = 0.1 },
    { name = "random_choice", transforms = [{ name = "random_grayscale" }, { name = "gaussian_blur", kernel_size = 3 }], weights = [1.0, 2.0] },
    { name = "random_erasing" },
]
[model]
bn_momentum = 0.1
[train]
ema_decay = 0.999
grad_clip_norm = 1.0
early_stopping = { patience = 2 }
"#;

    /// The path of every value in `value` (`a.b`, `a.list[2]`), absent options (JSON null) included.
    fn leaf_paths(value: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    leaf_paths(value, &if path.is_empty() { key.clone() } else { format!("{path}.{key}") }, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| leaf_paths(v, &format!("{path}[{i}]"), out)),
            _ => out.push(path.to_string()),
        }
    }

    /// Sets the value at a path of `leaf_paths` (creating the last key of an absent option).
    fn set_path(root: &mut toml::Value, path: &str, value: toml::Value) {
        let mut node = root;
        let parts: Vec<&str> = path.split('.').collect();
        for (n, part) in parts.iter().enumerate() {
            let (name, indices) = part.split_once('[').map_or((*part, ""), |(name, rest)| (name, rest));
            let indices: Vec<usize> =
                indices.split('[').filter(|i| !i.is_empty()).map(|i| i.trim_end_matches(']').parse().unwrap()).collect();
            let table = node.as_table_mut().unwrap();
            if n + 1 == parts.len() && indices.is_empty() {
                table.insert(name.to_string(), value);
                return;
            }
            node = table.get_mut(name).unwrap();
            for i in indices {
                node = &mut node.as_array_mut().unwrap()[i];
            }
        }
        *node = value;
    }

    /// Every setting that takes a number, set to `nan`, `inf` or `-inf` in turn, is refused with
    /// its key named; the settings are found by walking a config, so a new key is covered as soon
    /// as it exists.
    #[test]
    fn every_number_must_be_finite() {
        let base = ExperimentConfig::from_toml(EVERY_NUMBER, "every.toml", &[]).unwrap();
        let mut paths = Vec::new();
        leaf_paths(&serde_json::to_value(&base).unwrap(), "", &mut paths);
        let mut refused = std::collections::BTreeSet::new();
        for path in &paths {
            for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                let mut table = toml::Value::try_from(&base).unwrap();
                set_path(&mut table, path, toml::Value::Float(bad));
                let text = toml::to_string(&table).unwrap();
                match ExperimentConfig::from_toml(&text, "every.toml", &[]) {
                    Ok(_) => panic!("{path} = {bad} was accepted"),
                    Err(ConfigError::Invalid(e)) => {
                        assert_eq!(e.key, *path, "{path} = {bad}: {e}");
                        refused.insert(path.clone());
                    }
                    Err(_) => {} // not a number: a type error
                }
            }
        }
        for key in [
            "train.weight_decay",
            "train.warmup_epochs",
            "train.betas[1]",
            "train.ema_decay",
            "train.plateau.min_lr",
            "train.early_stopping.min_delta",
            "model.init_constant",
            "model.dropout",
            "transfer.backbone_lr_scale",
            "transfer.layer_decay",
            "augment.mix.prob",
            "augment.normalize.std[2]",
            "augment.transforms[1].degrees[0]",
            "augment.transforms[3].transforms[1].sigma[1]",
            "augment.transforms[4].p",
        ] {
            assert!(refused.contains(key), "{key} not among the refused: {refused:?}");
        }
    }

    #[test]
    fn every_committed_config_loads() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut loaded = 0;
        for folder in std::fs::read_dir(&root).unwrap() {
            for file in std::fs::read_dir(folder.unwrap().path()).unwrap() {
                let path = file.unwrap().path();
                if path.extension().is_some_and(|e| e == "toml") {
                    ExperimentConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    loaded += 1;
                }
            }
        }
        assert!(loaded >= 18, "{loaded} configs");
    }

    #[test]
    fn per_layer_fine_tuning_needs_pretrained_layers_that_train() {
        let parse = |text: &str| ExperimentConfig::from_toml(text, "x.toml", &[]).map_err(|e| e.to_string());
        let weights = "[model]\nname = \"lenet5\"\nweights = \"lenet.safetensors\"\n";
        assert!(parse(&format!("{weights}[transfer]\nlayer_decay = 0.7\nunfreeze_every = 1\n")).is_ok());
        let err = parse("[transfer]\nlayer_decay = 0.7\n").unwrap_err();
        assert!(err.contains("transfer.layer_decay") && err.contains("needs pretrained weights"), "{err}");
        let err = parse(&format!("{weights}[transfer]\nfinetune = \"head\"\nunfreeze_every = 2\n")).unwrap_err();
        assert!(err.contains("transfer.unfreeze_every") && err.contains("finetune = \"all\""), "{err}");
        let err = parse(&format!("{weights}[transfer]\nlayer_decay = 1.5\n")).unwrap_err();
        assert!(err.contains("transfer.layer_decay") && err.contains("(0, 1]"), "{err}");
    }

    #[test]
    fn the_alternating_flip_is_a_shorthand_setting_that_needs_a_flip() {
        let parse = |text: &str| ExperimentConfig::from_toml(text, "x.toml", &[]).map_err(|e| e.to_string());
        let config = parse("[augment]\nhflip_mode = \"alternate\"\n").unwrap();
        let pipeline = crate::augment::transforms::Pipeline::from_config(&config.augment);
        assert_eq!(pipeline.transforms[1], Transform::RandomHorizontalFlip { p: 0.5, mode: crate::augment::FlipMode::Alternate });
        let err = parse("[augment]\nhflip = 0.0\nhflip_mode = \"alternate\"\n").unwrap_err();
        assert!(err.contains("augment.hflip_mode") && err.contains("augment.hflip > 0"), "{err}");
        let err = parse("[augment]\nhflip_mode = \"alternating\"\n").unwrap_err();
        assert!(err.contains("alternating") && err.contains("alternate"), "{err}");
        // A pipeline replaces the shorthand: the flip's mode goes on its entry.
        let pipeline = "[augment]\ntransforms = [{ name = \"grayscale\" }]\n";
        let err = parse(&format!("{pipeline}hflip_mode = \"alternate\"\n")).unwrap_err();
        assert!(err.contains("augment.hflip_mode") && err.contains("augment.transforms"), "{err}");
        assert!(parse(&format!("{pipeline}hflip_mode = \"random\"\n")).is_ok());
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        let err = ExperimentConfig::from_toml("[augment]\nhflip = 1.5\n", "x.toml", &[]).unwrap_err();
        assert!(err.to_string().contains("augment.hflip"), "{err}");
        let err = ExperimentConfig::from_toml("[model]\nname = \"resnet999\"\n", "x.toml", &[]).unwrap_err();
        assert!(err.to_string().contains("resnet999"), "{err}");
    }
}
