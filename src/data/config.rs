//! `[data]`: where the data set is, how it is split and cached, and the size images enter the model at.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{InvalidSetting, ensure};

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

impl DataConfig {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        ensure(self.input_size != Some(0), "data.input_size", || "expected a positive size in pixels".into())
    }
}
