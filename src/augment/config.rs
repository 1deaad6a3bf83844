//! `[augment]`: the training pipeline (the crop/flip shorthand or a list of transforms), the
//! normalization every image gets, and batch-level mixing.

use serde::{Deserialize, Serialize};

use super::mix::MixConfig;
use super::transforms::Transform;
use super::{FlipMode, NormalizePreset, PaddingMode};
use crate::error::{InvalidSetting, ensure};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Pixels of padding around each training image before a random crop back to its size (0 = no crop).
    pub crop_padding: usize,
    pub padding_mode: PaddingMode,
    /// Probability of a horizontal flip (with `hflip_mode = "alternate"`: in the first epoch).
    pub hflip: f64,
    /// `random` (each epoch anew) or `alternate` (airbench: mirrored on every other epoch).
    pub hflip_mode: FlipMode,
    pub normalize: NormalizePreset,
    /// The full training pipeline (`[[augment.transforms]]` entries tagged by `name`); when given,
    /// it replaces `crop_padding`, `padding_mode`, `hflip` and `hflip_mode`.
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
            hflip_mode: FlipMode::Random,
            normalize: NormalizePreset::Cifar10,
            transforms: Vec::new(),
            mix: MixConfig::default(),
        }
    }
}

impl AugmentConfig {
    /// The shorthand keys that `transforms` replaces.
    pub const SHORTHAND: [&str; 4] = ["crop_padding", "padding_mode", "hflip", "hflip_mode"];

    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let hflip = self.hflip;
        ensure((0.0..=1.0).contains(&hflip), "augment.hflip", || format!("expected a probability in [0, 1], found {hflip}"))?;
        ensure(self.hflip_mode == FlipMode::Random || hflip > 0.0, "augment.hflip_mode", || {
            "an alternating flip needs augment.hflip > 0, the share of images mirrored in the first epoch (airbench: 0.5)".into()
        })?;
        let (mean, std) = self.normalize.mean_std();
        ensure(mean.iter().all(|m| m.is_finite()) && std.iter().all(|s| s.is_finite() && *s > 0.0), "augment.normalize", || {
            format!("expected finite means and positive standard deviations, found mean {mean:?}, std {std:?}")
        })?;
        self.mix.validate()
    }
}
