//! `[data]`: where the data set is, how it is split and cached, and the size images enter the model at.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{InvalidSetting, ensure};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Data set location: a folder or archive in any supported form.
    pub path: PathBuf,
    /// Fetch the official archive into `path`'s folder when no local copy exists.
    pub download: bool,
    /// Where decoded images are cached (relative paths are relative to the working directory).
    pub cache_dir: PathBuf,
    /// Images held out of the train split for validation, stratified by class: a count or a
    /// fraction. Absent: the data set's own validation split (an image folder's `val/`), else
    /// [`DEFAULT_VAL_SIZE`] images.
    pub val_size: Option<SplitSize>,
    /// Images held out of the train split as the test split, for data sets that have none (a
    /// folder of class folders, or `train/` without `test/`): a count or a fraction.
    pub test_size: Option<SplitSize>,
    /// Which labels of CIFAR-100 to train on: its 100 fine classes (the default) or its 20 coarse
    /// superclasses. Refused for other data sets.
    pub labels: Option<LabelLevel>,
    /// Keep only this many training images per class (0 = all), for quick experiments.
    pub subset_per_class: usize,
    /// Keep only this many test images per class (0 = all).
    pub test_subset_per_class: usize,
    /// Batches prepared ahead of the training step by the loader thread.
    pub prefetch: usize,
    /// Resize every image to this square size on its way into the model (bilinear, antialiased),
    /// e.g. 32 -> 224 for ImageNet-pretrained weights. Absent = the data set's own size. An image
    /// folder whose images differ in size is resized to it on load.
    pub input_size: Option<usize>,
}

/// `data.cache_dir`'s default: decoded data sets, downloaded weights, cached features and (GPU
/// builds) kernel tuning results, under the working directory.
pub const DEFAULT_CACHE_DIR: &str = ".cache/ferrovision";

/// The validation split's size when `data.val_size` is absent and the data set has no
/// validation split of its own.
pub const DEFAULT_VAL_SIZE: SplitSize = SplitSize::Count(5000);

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("../shared/data/cifar10-jpeg.tar.gz"),
            download: false,
            cache_dir: PathBuf::from(DEFAULT_CACHE_DIR),
            val_size: None,
            test_size: None,
            labels: None,
            subset_per_class: 0,
            test_subset_per_class: 0,
            prefetch: 4,
            input_size: None,
        }
    }
}

impl DataConfig {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        ensure(self.input_size != Some(0), "data.input_size", || "expected a positive size in pixels".into())?;
        for (key, size) in [("data.val_size", self.val_size), ("data.test_size", self.test_size)] {
            size.map_or(Ok(()), |size| size.validate(key))?;
        }
        Ok(())
    }

    /// False only when `data.val_size = 0` turns validation off.
    pub fn has_validation(&self) -> bool {
        !self.val_size.is_some_and(SplitSize::is_zero)
    }
}

/// The size of a held-out split: a number of images, or a fraction of the set it comes from.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged, expecting = "a number of images (e.g. 5000) or a fraction between 0 and 1 (e.g. 0.1)")]
pub enum SplitSize {
    Count(usize),
    Fraction(f64),
}

impl SplitSize {
    pub fn is_zero(self) -> bool {
        self == SplitSize::Count(0)
    }

    /// The number of images out of `total`; a fraction rounds up, as scikit-learn's
    /// `train_test_split` does.
    pub fn count(self, total: usize) -> usize {
        match self {
            SplitSize::Count(n) => n,
            SplitSize::Fraction(f) => (total as f64 * f).ceil() as usize,
        }
    }

    fn validate(self, key: &str) -> Result<(), InvalidSetting> {
        ensure(!matches!(self, SplitSize::Fraction(f) if !(f > 0.0 && f < 1.0)), key, || {
            format!("expected a number of images or a fraction between 0 and 1 (exclusive), found {self}")
        })
    }
}

impl fmt::Display for SplitSize {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            SplitSize::Count(n) => write!(f, "{n}"),
            SplitSize::Fraction(x) => write!(f, "{x}"),
        }
    }
}

/// CIFAR-100's two label sets.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum LabelLevel {
    /// The 100 classes.
    #[default]
    Fine,
    /// The 20 superclasses.
    Coarse,
}

impl LabelLevel {
    pub fn name(self) -> &'static str {
        match self {
            LabelLevel::Fine => "fine",
            LabelLevel::Coarse => "coarse",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DataConfig, String> {
        let config: DataConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn split_sizes_are_counts_or_fractions() {
        let config = parse("val_size = 0.1\ntest_size = 250\n").unwrap();
        assert_eq!((config.val_size, config.test_size), (Some(SplitSize::Fraction(0.1)), Some(SplitSize::Count(250))));
        assert_eq!(toml::from_str::<DataConfig>(&toml::to_string(&config).unwrap()).unwrap(), config);
        assert_eq!(SplitSize::Fraction(0.1).count(95), 10);
        assert_eq!(SplitSize::Count(7).count(95), 7);
        assert!(parse("").unwrap().has_validation());
        assert!(!parse("val_size = 0").unwrap().has_validation());
        for (text, mentions) in [
            ("test_size = 1.0", "data.test_size"),
            ("val_size = 0.0", "data.val_size"),
            ("test_size = -3", "found -3"),
            ("val_size = \"10%\"", "a fraction between 0 and 1"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(mentions), "{text}: {err}");
        }
    }

    #[test]
    fn labels_are_fine_or_coarse() {
        assert_eq!(parse("labels = \"coarse\"").unwrap().labels, Some(LabelLevel::Coarse));
        assert_eq!(parse("").unwrap().labels, None);
        let err = parse("labels = \"medium\"").unwrap_err();
        assert!(err.contains("medium") && err.contains("fine") && err.contains("coarse"), "{err}");
    }
}
