//! `[model]`: which architecture, how its layers start, and where its weights come from. An
//! architecture's constructor gets [`BuildOptions`], the part that shapes the network.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::layers::{Init, WeightInit};
use super::resnet_cifar::BlockKind;
use crate::error::{InvalidSetting, ensure};

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
    /// Training images (spread evenly over the split) that layers starting from the data, such as
    /// `airbench`'s patch whitening, are fitted to before training.
    pub fit_images: usize,
    /// Channels `[inputs, outputs]` of single layers instead of the architecture's, by layer name
    /// as `ferrovision summary` lists them (`"stages.0.first.conv" = [32, 24]`; a BatchNorm's two
    /// numbers are equal): the architecture of a pruned model, written by `ferrovision prune`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub layer_channels: BTreeMap<String, [usize; 2]>,
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
            fit_images: 5000,
            layer_channels: BTreeMap::new(),
        }
    }
}

/// What an architecture's constructor reads of `[model]`: everything but its name and where its
/// weights come from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BuildOptions {
    pub init: Init,
    /// Dropout before the classifier; 0 = the architecture's own (none for most).
    pub dropout: f64,
    /// BatchNorm momentum instead of the architecture's (read by the EfficientNets).
    pub bn_momentum: Option<f64>,
    pub shape: ShapeOverrides,
}

/// Changes to an architecture's preset shape (absent = the preset's value).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShapeOverrides {
    pub stem_channels: Option<usize>,
    pub widths: Option<Vec<usize>>,
    pub blocks: Option<Vec<usize>>,
    pub strides: Option<Vec<usize>>,
    pub kernel_size: Option<usize>,
    pub shortcut_kernel: Option<usize>,
    pub block: Option<BlockKind>,
}

impl ModelConfig {
    /// A config of the named architecture with every other key at its default.
    pub fn named(name: &str) -> Self {
        Self { name: name.into(), ..Default::default() }
    }

    /// Whether the model starts from pretrained weights (`weights` or `pretrained`).
    pub fn is_pretrained(&self) -> bool {
        self.weights.is_some() || self.pretrained.is_some()
    }

    pub fn build_options(&self) -> BuildOptions {
        BuildOptions {
            init: Init { scheme: self.init, constant: self.init_constant },
            dropout: self.dropout,
            bn_momentum: self.bn_momentum,
            shape: ShapeOverrides {
                stem_channels: self.stem_channels,
                widths: self.widths.clone(),
                blocks: self.blocks.clone(),
                strides: self.strides.clone(),
                kernel_size: self.kernel_size,
                shortcut_kernel: self.shortcut_kernel,
                block: self.block,
            },
        }
    }

    /// Checks the section before anything is built.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let names = super::names();
        ensure(names.contains(&self.name.as_str()), "model.name", || {
            format!("unknown model `{}`; expected one of: {}", self.name, names.join(", "))
        })?;
        let dropout = self.dropout;
        ensure((0.0..1.0).contains(&dropout), "model.dropout", || format!("expected a probability in [0, 1), found {dropout}"))?;
        ensure(self.bn_momentum.is_none_or(|m| (0.0..=1.0).contains(&m)), "model.bn_momentum", || "expected a value in [0, 1]".into())?;
        ensure(self.weights.is_none() || self.pretrained.is_none(), "model.weights", || {
            "give either model.weights or model.pretrained, not both".into()
        })?;
        ensure(self.fit_images > 0, "model.fit_images", || "expected at least 1 image".into())?;
        let stages = self.widths.as_ref().map(Vec::len);
        for (key, list) in [("model.blocks", &self.blocks), ("model.strides", &self.strides)] {
            if let (Some(list), Some(n)) = (list, stages) {
                ensure(list.len() == n, key, || format!("expected one entry per stage ({n}, as model.widths), found {}", list.len()))?;
            }
        }
        for (key, list) in [("model.widths", &self.widths), ("model.blocks", &self.blocks), ("model.strides", &self.strides)] {
            let empty_or_zero = list.as_ref().is_some_and(|v| v.is_empty() || v.contains(&0));
            ensure(!empty_or_zero, key, || "expected a non-empty list of positive numbers".into())?;
        }
        if let Some((layer, _)) = self.layer_channels.iter().find(|(_, c)| c.contains(&0)) {
            return Err(InvalidSetting::new(format!("model.layer_channels.\"{layer}\""), "expected two positive channel counts"));
        }
        let even = |k: Option<usize>| k.is_some_and(|k| k % 2 == 0);
        ensure(!even(self.kernel_size) && !even(self.shortcut_kernel), "model.kernel_size", || {
            "expected an odd kernel size (1, 3, 5, ...)".into()
        })
    }
}
