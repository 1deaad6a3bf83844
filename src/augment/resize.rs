//! Resizing and centre cropping with torchvision's size rules, and the evaluation pipeline built
//! from them (resize the shorter side, crop the centre), as pretrained ImageNet weights expect.

use image::RgbImage;
use image::imageops::{self, FilterType};
use serde::{Deserialize, Serialize};

use super::Image;

/// Resampling filter. Bilinear and bicubic antialias when shrinking (the filter support grows with
/// the scale), as Pillow and torchvision's `antialias=True` do. In the geometric ops of
/// `functional` (affine, rotate) they follow Pillow's `Image.transform` instead, which samples
/// without antialiasing.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    /// The closest source pixel; torchvision's default for AutoAugment and its relatives.
    Nearest,
    #[default]
    Bilinear,
    /// Keys' cubic with a = -0.5, Pillow's bicubic.
    Bicubic,
}

impl Interpolation {
    fn filter(self) -> FilterType {
        match self {
            Interpolation::Nearest => FilterType::Nearest,
            Interpolation::Bilinear => FilterType::Triangle,
            Interpolation::Bicubic => FilterType::CatmullRom,
        }
    }
}

/// `image` resampled to `height` x `width`.
pub fn resize(image: &Image, height: usize, width: usize, interpolation: Interpolation) -> Image {
    if (image.height, image.width) == (height, width) {
        return image.clone();
    }
    let source =
        RgbImage::from_raw(image.width as u32, image.height as u32, image.pixels.clone()).expect("Image holds height*width*3 bytes");
    let resized = imageops::resize(&source, width as u32, height as u32, interpolation.filter());
    Image::new(resized.into_raw(), height, width)
}

/// torchvision's `Resize(size)` with an int: the shorter side becomes `size`, the longer one
/// `int(size * long / short)` (truncated, as torchvision does).
pub fn resize_shorter_side(image: &Image, size: usize, interpolation: Interpolation) -> Image {
    let (h, w) = (image.height, image.width);
    let (height, width) = if h <= w { (size, size * w / h) } else { (size * h / w, size) };
    resize(image, height, width, interpolation)
}

/// torchvision's `CenterCrop(size)`: the window's offset is `round((side - size) / 2)`; an image
/// smaller than the window is zero-padded first (centred the same way).
pub fn center_crop(image: &Image, size: usize) -> Image {
    // Python 3 rounds halves to even.
    let offset = |side: usize| ((side as f64 - size as f64) / 2.0).round_ties_even() as isize;
    let (top, left) = (offset(image.height), offset(image.width));
    let mut pixels = vec![0u8; size * size * 3];
    for y in 0..size {
        let sy = y as isize + top;
        if !(0..image.height as isize).contains(&sy) {
            continue;
        }
        for x in 0..size {
            let sx = x as isize + left;
            if (0..image.width as isize).contains(&sx) {
                let from = (sy as usize * image.width + sx as usize) * 3;
                pixels[(y * size + x) * 3..][..3].copy_from_slice(&image.pixels[from..from + 3]);
            }
        }
    }
    Image::new(pixels, size, size)
}

/// The deterministic evaluation transform of pretrained weights: resize the shorter side to
/// `resize_size`, then take the centre `crop_size` square.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvalResize {
    pub resize_size: usize,
    pub crop_size: usize,
    pub interpolation: Interpolation,
}

impl EvalResize {
    pub fn apply(&self, image: &Image) -> Image {
        center_crop(&resize_shorter_side(image, self.resize_size, self.interpolation), self.crop_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(height: usize, width: usize) -> Image {
        let mut pixels = Vec::with_capacity(height * width * 3);
        for y in 0..height {
            for x in 0..width {
                pixels.extend([(x * 255 / width.max(2).saturating_sub(1).max(1)) as u8, (y % 256) as u8, 128]);
            }
        }
        Image::new(pixels, height, width)
    }

    #[test]
    fn shorter_side_rule_matches_torchvision() {
        let resized = resize_shorter_side(&gradient(375, 500), 256, Interpolation::Bilinear);
        // torchvision: int(256 * 500 / 375) = 341.
        assert_eq!((resized.height, resized.width), (256, 341));
        let tall = resize_shorter_side(&gradient(500, 333), 224, Interpolation::Bicubic);
        assert_eq!((tall.height, tall.width), (336, 224));
    }

    #[test]
    fn constant_images_stay_constant_and_gradients_stay_ordered() {
        let flat = Image::new(vec![77; 40 * 60 * 3], 40, 60);
        for interpolation in [Interpolation::Bilinear, Interpolation::Bicubic] {
            let small = resize(&flat, 10, 15, interpolation);
            assert!(small.pixels.iter().all(|&v| v == 77), "{interpolation:?}");
        }
        let row: Vec<u8> = resize(&gradient(8, 64), 8, 16, Interpolation::Bilinear).pixels.chunks(3).take(16).map(|p| p[0]).collect();
        assert!(row.windows(2).all(|w| w[0] <= w[1]), "{row:?}");
    }

    #[test]
    fn centre_crop_offsets_round_like_torchvision() {
        // 5 wide, crop 2: offset round(1.5) = 2 (Python rounds half to even; 1.5 -> 2).
        let mut pixels = vec![0u8; 5 * 5 * 3];
        for i in 0..25 {
            pixels[i * 3] = i as u8;
        }
        let crop = center_crop(&Image::new(pixels, 5, 5), 2);
        let red: Vec<u8> = crop.pixels.chunks(3).map(|p| p[0]).collect();
        assert_eq!(red, vec![12, 13, 17, 18]);
        // Larger than the image: zero border around the centred image.
        let padded = center_crop(&Image::new(vec![9; 2 * 2 * 3], 2, 2), 4);
        let red: Vec<u8> = padded.pixels.chunks(3).map(|p| p[0]).collect();
        assert_eq!(red, vec![0, 0, 0, 0, 0, 9, 9, 0, 0, 9, 9, 0, 0, 0, 0, 0]);
    }
}
