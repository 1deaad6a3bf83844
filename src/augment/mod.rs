//! Augmentation on u8 HWC images. As in torchvision, each random transform separates drawing its
//! parameters from applying them (a deterministic function of the image and the parameters), so
//! every step is reproducible from a seed and testable on its own.

pub mod config;
pub mod functional;
pub mod mix;
pub mod policies;
pub mod resize;
pub mod transforms;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// An RGB image, u8 HWC.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub pixels: Vec<u8>,
    pub height: usize,
    pub width: usize,
}

impl Image {
    pub const CHANNELS: usize = 3;

    pub fn new(pixels: Vec<u8>, height: usize, width: usize) -> Self {
        assert_eq!(pixels.len(), height * width * Self::CHANNELS, "pixel buffer does not match {height}x{width}x3");
        Self { pixels, height, width }
    }
}

/// How RandomCrop fills the padded border (torchvision's `padding_mode`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PaddingMode {
    /// Zeros (black).
    Constant,
    /// Repeat the edge pixel.
    Edge,
    /// Mirror without repeating the edge: `d c b | a b c d | c b a`.
    #[default]
    Reflect,
    /// Mirror repeating the edge: `c b a | a b c d | d c b`.
    Symmetric,
}

impl PaddingMode {
    /// Source index for padded coordinate `i` in `[-pad, len + pad)`, or `None` for constant fill.
    pub(crate) fn source(self, i: isize, len: usize) -> Option<usize> {
        let n = len as isize;
        if (0..n).contains(&i) {
            return Some(i as usize);
        }
        let mapped = match self {
            PaddingMode::Constant => return None,
            PaddingMode::Edge => i.clamp(0, n - 1),
            PaddingMode::Reflect => {
                let period = 2 * (n - 1).max(1);
                let m = i.rem_euclid(period);
                if m < n { m } else { period - m }
            }
            PaddingMode::Symmetric => {
                let period = 2 * n;
                let m = i.rem_euclid(period);
                if m < n { m } else { period - 1 - m }
            }
        };
        Some(mapped as usize)
    }
}

/// How the horizontal flip picks the images it mirrors.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FlipMode {
    /// Each image, every epoch, with probability `p` (torchvision).
    #[default]
    Random,
    /// airbench's alternating flip: each image with probability `p` in the first epoch (seeded
    /// per image), then mirrored on every other epoch relative to that, so over any two
    /// consecutive epochs an image is seen once each way.
    Alternate,
}

/// Which training image a transform sees, and in which epoch: what a transform that follows an
/// image across epochs (the alternating flip) decides from, instead of the per-draw stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Visit {
    /// Seeded from the run's seed and the image's index in its data set, the same every epoch.
    pub image_seed: u64,
    pub epoch: usize,
}

/// torchvision's `RandomCrop`: pad each side by `padding` pixels, then take a random window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RandomCrop {
    pub padding: usize,
    pub padding_mode: PaddingMode,
}

impl RandomCrop {
    /// Top-left corner of a `(height, width)` window in padded coordinates.
    pub fn sample_window(&self, image: &Image, (height, width): (usize, usize), rng: &mut impl Rng) -> (usize, usize) {
        let room = |side: usize, size: usize| side + 2 * self.padding - size;
        (rng.random_range(0..=room(image.height, height)), rng.random_range(0..=room(image.width, width)))
    }

    /// The `(height, width)` window at `(top, left)` of the padded image.
    pub fn apply_window(&self, image: &Image, (height, width): (usize, usize), (top, left): (usize, usize)) -> Image {
        let (h, w, c) = (image.height, image.width, Image::CHANNELS);
        let mut out = vec![0u8; height * width * c];
        let pad = self.padding as isize;
        for y in 0..height {
            let Some(sy) = self.padding_mode.source(y as isize + top as isize - pad, h) else { continue };
            for x in 0..width {
                let Some(sx) = self.padding_mode.source(x as isize + left as isize - pad, w) else { continue };
                let (src, dst) = ((sy * w + sx) * c, (y * width + x) * c);
                out[dst..dst + c].copy_from_slice(&image.pixels[src..src + c]);
            }
        }
        Image::new(out, height, width)
    }
}

/// Mirror left-right in place.
pub fn flip_horizontal(image: &mut Image) {
    let (w, c) = (image.width, Image::CHANNELS);
    for row in image.pixels.chunks_exact_mut(w * c) {
        for x in 0..w / 2 {
            let (a, b) = (x * c, (w - 1 - x) * c);
            for k in 0..c {
                row.swap(a + k, b + k);
            }
        }
    }
}

/// Mirror top-bottom.
pub fn flip_vertical(image: &Image) -> Image {
    let row = image.width * Image::CHANNELS;
    let pixels = image.pixels.chunks_exact(row).rev().flatten().copied().collect();
    Image::new(pixels, image.height, image.width)
}

/// Per-channel mean/std of `Normalize`: a preset's name in TOML (`normalize = "imagenet"`), or
/// the statistics themselves (`normalize = { mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5] }`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum NormalizePreset {
    /// Mean and std of the CIFAR-10 training set.
    #[default]
    Cifar10,
    /// The ImageNet statistics torchvision's pretrained weights expect.
    Imagenet,
    /// Only scale to [0, 1].
    None,
    /// Given statistics, in [0, 1] units.
    Custom { mean: [f32; 3], std: [f32; 3] },
}

impl NormalizePreset {
    const NAMES: [(&str, NormalizePreset); 3] =
        [("cifar10", NormalizePreset::Cifar10), ("imagenet", NormalizePreset::Imagenet), ("none", NormalizePreset::None)];
    const EXPECTED: &str = "a preset name (\"cifar10\", \"imagenet\", \"none\") or { mean = [r, g, b], std = [r, g, b] }";

    pub fn mean_std(self) -> ([f32; 3], [f32; 3]) {
        match self {
            NormalizePreset::Cifar10 => ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
            NormalizePreset::Imagenet => ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            NormalizePreset::None => ([0.0; 3], [1.0; 3]),
            NormalizePreset::Custom { mean, std } => (mean, std),
        }
    }
}

impl Serialize for NormalizePreset {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if let Some((name, _)) = Self::NAMES.iter().find(|(_, preset)| preset == self) {
            return serializer.serialize_str(name);
        }
        let (mean, std) = self.mean_std();
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("mean", &mean)?;
        map.serialize_entry("std", &std)?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for NormalizePreset {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = NormalizePreset;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(NormalizePreset::EXPECTED)
            }

            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Self::Value, E> {
                let found = NormalizePreset::NAMES.iter().find(|(n, _)| *n == name);
                found
                    .map(|(_, preset)| *preset)
                    .ok_or_else(|| E::custom(format!("unknown preset `{name}`; expected {}", NormalizePreset::EXPECTED)))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let (mut mean, mut std) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "mean" => mean = Some(map.next_value::<[f32; 3]>()?),
                        "std" => std = Some(map.next_value::<[f32; 3]>()?),
                        other => return Err(serde::de::Error::unknown_field(other, &["mean", "std"])),
                    }
                }
                match (mean, std) {
                    (Some(mean), Some(std)) => Ok(NormalizePreset::Custom { mean, std }),
                    _ => Err(serde::de::Error::custom(format!("expected both mean and std: {}", NormalizePreset::EXPECTED))),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `(x/255 - mean) / std` per channel, written as CHW planes into `out` (length 3*H*W).
pub fn normalize_to_chw(image: &[u8], height: usize, width: usize, preset: NormalizePreset, out: &mut [f32]) {
    let (mean, std) = preset.mean_std();
    let plane = height * width;
    for ch in 0..Image::CHANNELS {
        let scale = 1.0 / (255.0 * std[ch]);
        let shift = mean[ch] / std[ch];
        let dst = &mut out[ch * plane..(ch + 1) * plane];
        for (i, d) in dst.iter_mut().enumerate() {
            *d = image[i * Image::CHANNELS + ch] as f32 * scale - shift;
        }
    }
}

/// What every image goes through on its way into the model, in training and evaluation alike:
/// an optional resize to a square `size` (bilinear, antialiased; e.g. 32 -> 224 for ImageNet
/// weights), then normalization to CHW floats.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InputTransform {
    pub size: Option<usize>,
    pub normalize: NormalizePreset,
}

impl InputTransform {
    /// Side of the output for a `height` x `width` input (unchanged without `size`).
    pub fn output_shape(&self, height: usize, width: usize) -> (usize, usize) {
        self.size.map_or((height, width), |s| (s, s))
    }

    /// Writes `image` as normalized CHW planes into `out` (3 * output height * width values).
    pub fn apply(&self, image: &Image, out: &mut [f32]) {
        match self.size {
            Some(s) if (s, s) != (image.height, image.width) => {
                let resized = resize::resize(image, s, s, resize::Interpolation::Bilinear);
                normalize_to_chw(&resized.pixels, s, s, self.normalize, out)
            }
            _ => normalize_to_chw(&image.pixels, image.height, image.width, self.normalize, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4x4 image whose red channel holds the pixel index, the others zero.
    fn indexed() -> Image {
        let mut pixels = vec![0u8; 4 * 4 * 3];
        for i in 0..16 {
            pixels[i * 3] = i as u8;
        }
        Image::new(pixels, 4, 4)
    }

    fn red(image: &Image) -> Vec<u8> {
        image.pixels.chunks(3).map(|p| p[0]).collect()
    }

    #[test]
    fn padding_modes_follow_torchvision() {
        // Row 0 of a width-4 image padded by 2, read left to right.
        let row = |mode: PaddingMode| -> Vec<Option<usize>> { (-2..6).map(|i| mode.source(i, 4)).collect() };
        let s = |v: &[usize]| v.iter().map(|&x| Some(x)).collect::<Vec<_>>();
        assert_eq!(row(PaddingMode::Reflect), s(&[2, 1, 0, 1, 2, 3, 2, 1]));
        assert_eq!(row(PaddingMode::Symmetric), s(&[1, 0, 0, 1, 2, 3, 3, 2]));
        assert_eq!(row(PaddingMode::Edge), s(&[0, 0, 0, 1, 2, 3, 3, 3]));
        assert_eq!(row(PaddingMode::Constant)[0], None);
    }

    #[test]
    fn crop_window_at_the_centre_is_identity_and_shifts_otherwise() {
        let img = indexed();
        let crop = RandomCrop { padding: 1, padding_mode: PaddingMode::Constant };
        assert_eq!(crop.apply_window(&img, (4, 4), (1, 1)), img);
        // Window one pixel down and right: pixel (0,0) shows source (1,1) = index 5.
        let shifted = crop.apply_window(&img, (4, 4), (2, 2));
        assert_eq!(red(&shifted)[0], 5);
        // Window up-left: the first row and column are constant fill.
        let filled = crop.apply_window(&img, (4, 4), (0, 0));
        assert_eq!(&red(&filled)[..4], &[0, 0, 0, 0]);
        assert_eq!(red(&filled)[5], 0);
        assert_eq!(red(&filled)[6], 1);
    }

    #[test]
    fn flip_mirrors_rows() {
        let mut img = indexed();
        flip_horizontal(&mut img);
        assert_eq!(&red(&img)[..4], &[3, 2, 1, 0]);
        assert_eq!(&red(&flip_vertical(&indexed()))[..4], &[12, 13, 14, 15]);
    }

    #[test]
    fn normalize_uses_the_preset() {
        let mut out = vec![0.0; 3];
        normalize_to_chw(&[255, 0, 128], 1, 1, NormalizePreset::Imagenet, &mut out);
        assert!((out[0] - (1.0 - 0.485) / 0.229).abs() < 1e-5);
        assert!((out[1] - (-0.456 / 0.224)).abs() < 1e-5);
        normalize_to_chw(&[255, 0, 51], 1, 1, NormalizePreset::None, &mut out);
        assert!((out[0] - 1.0).abs() < 1e-6 && out[1] == 0.0 && (out[2] - 0.2).abs() < 1e-6, "{out:?}");
    }
}
