//! Data sets: readers for each storage format behind one in-memory type, the decoded-image cache,
//! the train/validation split and the batch loader.

pub mod archive;
pub mod cache;
pub mod cifar_binary;
pub mod cifar_python;
pub mod classes;
pub mod config;
pub mod detect;
pub mod download;
pub mod expand;
pub mod image_folder;
pub mod loader;
pub mod split;
pub mod tiny_imagenet;

pub use config::LabelLevel;
pub use detect::{DataFormat, describe, detect_format, load_dataset};

/// The ten CIFAR-10 class names in label order.
pub const CIFAR10_CLASSES: [&str; 10] = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// Decoded images of one split, all of the same size, stored as compact u8 HWC (RGB) arrays.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSet {
    /// `len * height * width * 3` bytes, image after image, each in HWC order.
    pub pixels: Vec<u8>,
    pub labels: Vec<u16>,
    pub height: usize,
    pub width: usize,
}

impl ImageSet {
    pub const CHANNELS: usize = 3;

    pub fn empty(height: usize, width: usize) -> Self {
        Self { pixels: Vec::new(), labels: Vec::new(), height, width }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image_bytes(&self) -> usize {
        self.height * self.width * Self::CHANNELS
    }

    /// The HWC bytes of image `index`.
    pub fn image(&self, index: usize) -> &[u8] {
        let n = self.image_bytes();
        &self.pixels[index * n..(index + 1) * n]
    }

    /// A new set made of the images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> ImageSet {
        let mut pixels = Vec::with_capacity(indices.len() * self.image_bytes());
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        ImageSet { pixels, labels: indices.iter().map(|&i| self.labels[i]).collect(), height: self.height, width: self.width }
    }

    /// Number of images of each class, for `num_classes` classes.
    pub fn class_counts(&self, num_classes: usize) -> Vec<usize> {
        let mut counts = vec![0; num_classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }
}

/// A labelled data set as read from disk: a train split, a test split (empty where the data set
/// has none, e.g. a folder of class folders), its own validation split where it has one, and the
/// class names.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub format: DataFormat,
    /// Class names in label order, as the data set spells them (Tiny ImageNet: its WordNet ids).
    pub classes: Vec<String>,
    /// Human-readable names parallel to `classes` where the format has them apart from the names
    /// (Tiny ImageNet's `words.txt`, e.g. "goldfish, Carassius auratus"); empty otherwise.
    pub class_descriptions: Vec<String>,
    pub train: ImageSet,
    /// An image folder's `val/` (or `valid/`); `None` for the formats that hold no validation split.
    pub val: Option<ImageSet>,
    pub test: ImageSet,
}

/// What a data set is read with, beyond its path: the config settings that change the decoded
/// images or labels (and so also key the cache).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// The square size images of an image folder are resized to when they differ in size
    /// (`data.input_size`, else the size of a `resize` transform).
    pub image_size: Option<usize>,
    /// CIFAR-100's fine or coarse labels (`data.labels`); refused for other data sets.
    pub labels: Option<LabelLevel>,
}

impl LoadOptions {
    /// A short text naming the options that are set ("" for none): part of the cache's key.
    pub fn tag(&self) -> String {
        let size = self.image_size.map(|s| format!("{s}px"));
        let labels = self.labels.map(|l| l.name().to_string());
        size.into_iter().chain(labels).collect::<Vec<_>>().join("-")
    }
}

pub use crate::error::FileError;

pub type Result<T> = std::result::Result<T, FileError>;
