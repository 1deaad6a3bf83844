//! The configurable training pipeline: torchvision's random transforms (each draws its parameters
//! from the pipeline's seeded stream, then applies a deterministic operation from `functional`),
//! the combinators, and the augmentation policies. A `Transform` is both the config entry
//! (`[[augment.transforms]]`, tagged by `name`) and the runtime object.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::InvalidSetting;

use super::functional::{self as f, AffineParams};
use super::policies::{AutoAugment, AutoAugmentPolicy, RandAugment, TrivialAugmentWide};
use super::resize::{self, Interpolation};
use super::{FlipMode, Image, NormalizePreset, PaddingMode, RandomCrop, Visit, flip_horizontal, flip_vertical};

/// A number `v` standing for a range around a centre (`[c - v, c + v]`, as torchvision reads
/// `degrees=10` or `brightness=0.4`) or an explicit `[low, high]`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Span {
    Around(f64),
    Range([f64; 2]),
}

impl Span {
    fn bounds(self, centre: f64) -> [f64; 2] {
        match self {
            Span::Around(v) => [centre - v, centre + v],
            Span::Range(r) => r,
        }
    }

    /// Valid when the range lies within `[min, max]`; a bare number must be non-negative. With
    /// `clamp_low` a range from a number may start below `min` and is cut there (torchvision's
    /// `brightness=1.5` means `[0, 2.5]`).
    fn check(self, key: &str, centre: f64, [min, max]: [f64; 2], clamp_low: bool) -> Result<(), InvalidSetting> {
        if let Span::Around(v) = self
            && (v.is_nan() || v < 0.0)
        {
            return Err(InvalidSetting::new(key, format!("expected a non-negative number, found {v}")));
        }
        let [mut lo, hi] = self.bounds(centre);
        if clamp_low && matches!(self, Span::Around(_)) {
            lo = lo.max(min);
        }
        if lo.is_finite() && hi.is_finite() && min <= lo && lo <= hi && hi <= max {
            Ok(())
        } else {
            Err(InvalidSetting::new(key, format!("expected a range within [{min}, {max}], found [{lo}, {hi}]")))
        }
    }
}

/// What erased pixels become.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum EraseValue {
    /// `"mean"`: the normalization mean, i.e. 0 after `Normalize` (torchvision's default
    /// `value=0` applied after normalization); `"random"`: per-pixel normal noise in normalized
    /// space (torchvision's `value="random"`).
    Named(EraseNamed),
    Rgb([u8; 3]),
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EraseNamed {
    Mean,
    Random,
}

impl Default for EraseValue {
    fn default() -> Self {
        EraseValue::Named(EraseNamed::Mean)
    }
}

fn half() -> f64 {
    0.5
}
fn one() -> f64 {
    1.0
}
fn grayscale_p() -> f64 {
    0.1
}
fn resized_crop_scale() -> [f64; 2] {
    [0.08, 1.0]
}
fn resized_crop_ratio() -> [f64; 2] {
    [3.0 / 4.0, 4.0 / 3.0]
}
fn erasing_scale() -> [f64; 2] {
    [0.02, 0.33]
}
fn erasing_ratio() -> [f64; 2] {
    [0.3, 3.3]
}
fn blur_sigma() -> [f64; 2] {
    [0.1, 2.0]
}
fn nearest() -> Interpolation {
    Interpolation::Nearest
}
fn one_hole() -> usize {
    1
}
fn two_ops() -> usize {
    2
}
fn nine() -> usize {
    9
}
fn bins() -> usize {
    31
}
fn imagenet_policy() -> AutoAugmentPolicy {
    AutoAugmentPolicy::Imagenet
}

/// One step of the pipeline, with torchvision's name (snake_case) and defaults.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum Transform {
    /// With `mode = "alternate"`, `p` is the share of images mirrored in the first epoch.
    RandomHorizontalFlip {
        #[serde(default = "half")]
        p: f64,
        #[serde(default)]
        mode: FlipMode,
    },
    RandomVerticalFlip {
        #[serde(default = "half")]
        p: f64,
    },
    /// Pad by `padding` (with `padding_mode`), then a random `size` window (default: the input size).
    RandomCrop {
        #[serde(default)]
        size: Option<usize>,
        #[serde(default)]
        padding: usize,
        #[serde(default = "constant_padding")]
        padding_mode: PaddingMode,
    },
    CenterCrop {
        size: usize,
    },
    RandomResizedCrop {
        size: usize,
        #[serde(default = "resized_crop_scale")]
        scale: [f64; 2],
        #[serde(default = "resized_crop_ratio")]
        ratio: [f64; 2],
        #[serde(default)]
        interpolation: Interpolation,
    },
    /// Square resize to `size` (training images all share one size, so "shorter side" is the side).
    Resize {
        size: usize,
        #[serde(default)]
        interpolation: Interpolation,
    },
    RandomRotation {
        degrees: Span,
        #[serde(default = "nearest")]
        interpolation: Interpolation,
        #[serde(default)]
        fill: [u8; 3],
    },
    RandomAffine {
        degrees: Span,
        /// Maximal shift as a fraction of width and height.
        #[serde(default)]
        translate: Option<[f64; 2]>,
        #[serde(default)]
        scale: Option<[f64; 2]>,
        /// Degrees of x-shear (number or range); `shear_y` for the y axis.
        #[serde(default)]
        shear: Option<Span>,
        #[serde(default)]
        shear_y: Option<Span>,
        #[serde(default = "nearest")]
        interpolation: Interpolation,
        #[serde(default)]
        fill: [u8; 3],
    },
    /// Brightness, contrast, saturation and hue in a random order per image, as torchvision does.
    ColorJitter {
        #[serde(default)]
        brightness: Option<Span>,
        #[serde(default)]
        contrast: Option<Span>,
        #[serde(default)]
        saturation: Option<Span>,
        #[serde(default)]
        hue: Option<Span>,
    },
    RandomGrayscale {
        #[serde(default = "grayscale_p")]
        p: f64,
    },
    Grayscale {},
    GaussianBlur {
        kernel_size: usize,
        #[serde(default = "blur_sigma")]
        sigma: [f64; 2],
    },
    RandomErasing {
        #[serde(default = "half")]
        p: f64,
        #[serde(default = "erasing_scale")]
        scale: [f64; 2],
        #[serde(default = "erasing_ratio")]
        ratio: [f64; 2],
        #[serde(default)]
        value: EraseValue,
    },
    /// DeVries & Taylor's Cutout: `holes` squares of side `size` centred anywhere (clipped at the
    /// border), filled like RandomErasing.
    Cutout {
        size: usize,
        #[serde(default = "one_hole")]
        holes: usize,
        #[serde(default = "one")]
        p: f64,
        #[serde(default)]
        value: EraseValue,
    },
    RandomApply {
        p: f64,
        transforms: Vec<Transform>,
    },
    /// One of `transforms`, uniformly or with `weights`.
    RandomChoice {
        transforms: Vec<Transform>,
        #[serde(default)]
        weights: Option<Vec<f64>>,
    },
    RandomOrder {
        transforms: Vec<Transform>,
    },
    AutoAugment {
        #[serde(default = "imagenet_policy")]
        policy: AutoAugmentPolicy,
        #[serde(default = "nearest")]
        interpolation: Interpolation,
        #[serde(default)]
        fill: [u8; 3],
    },
    RandAugment {
        #[serde(default = "two_ops")]
        num_ops: usize,
        #[serde(default = "nine")]
        magnitude: usize,
        #[serde(default = "bins")]
        num_magnitude_bins: usize,
        #[serde(default = "nearest")]
        interpolation: Interpolation,
        #[serde(default)]
        fill: [u8; 3],
    },
    TrivialAugmentWide {
        #[serde(default = "bins")]
        num_magnitude_bins: usize,
        #[serde(default = "nearest")]
        interpolation: Interpolation,
        #[serde(default)]
        fill: [u8; 3],
    },
}

fn constant_padding() -> PaddingMode {
    PaddingMode::Constant
}

/// Settings the transforms share: the normalization that follows them (erasing fills in its terms).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Context {
    pub normalize: NormalizePreset,
}

fn check_probability(key: &str, p: f64) -> Result<(), InvalidSetting> {
    if (0.0..=1.0).contains(&p) { Ok(()) } else { Err(InvalidSetting::new(key, format!("expected a probability in [0, 1], found {p}"))) }
}

fn check_range(key: &str, [lo, hi]: [f64; 2], min: f64, max: f64) -> Result<(), InvalidSetting> {
    if lo.is_finite() && hi.is_finite() && min <= lo && lo <= hi && hi <= max {
        Ok(())
    } else {
        Err(InvalidSetting::new(key, format!("expected [low, high] with {min} <= low <= high <= {max}, found [{lo}, {hi}]")))
    }
}

impl Transform {
    pub fn name(&self) -> &'static str {
        match self {
            Transform::RandomHorizontalFlip { .. } => "random_horizontal_flip",
            Transform::RandomVerticalFlip { .. } => "random_vertical_flip",
            Transform::RandomCrop { .. } => "random_crop",
            Transform::CenterCrop { .. } => "center_crop",
            Transform::RandomResizedCrop { .. } => "random_resized_crop",
            Transform::Resize { .. } => "resize",
            Transform::RandomRotation { .. } => "random_rotation",
            Transform::RandomAffine { .. } => "random_affine",
            Transform::ColorJitter { .. } => "color_jitter",
            Transform::RandomGrayscale { .. } => "random_grayscale",
            Transform::Grayscale {} => "grayscale",
            Transform::GaussianBlur { .. } => "gaussian_blur",
            Transform::RandomErasing { .. } => "random_erasing",
            Transform::Cutout { .. } => "cutout",
            Transform::RandomApply { .. } => "random_apply",
            Transform::RandomChoice { .. } => "random_choice",
            Transform::RandomOrder { .. } => "random_order",
            Transform::AutoAugment { .. } => "auto_augment",
            Transform::RandAugment { .. } => "rand_augment",
            Transform::TrivialAugmentWide { .. } => "trivial_augment_wide",
        }
    }

    /// Whether the transform draws random numbers (the same image can come out differently).
    pub fn is_random(&self) -> bool {
        match self {
            Transform::Resize { .. } | Transform::CenterCrop { .. } | Transform::Grayscale {} => false,
            Transform::GaussianBlur { sigma: [low, high], .. } => low != high,
            _ => true,
        }
    }

    /// Checks the parameters and returns the output size for a `height` x `width` input; `key`
    /// names this entry in error messages (e.g. `augment.transforms[2]`).
    pub fn output_shape(&self, key: &str, height: usize, width: usize) -> Result<(usize, usize), InvalidSetting> {
        let key = format!("{key} ({})", self.name());
        let same = Ok((height, width));
        match self {
            Transform::RandomHorizontalFlip { p, .. } | Transform::RandomVerticalFlip { p } | Transform::RandomGrayscale { p } => {
                check_probability(&format!("{key}.p"), *p).and(same)
            }
            Transform::RandomCrop { size, padding, .. } => {
                let (h, w) = size.map_or((height, width), |s| (s, s));
                if h == 0 || h > height + 2 * padding || w > width + 2 * padding {
                    return Err(InvalidSetting::new(
                        format!("{key}.size"),
                        format!("a {h}x{w} crop does not fit a {height}x{width} image padded by {padding}; lower size or raise padding"),
                    ));
                }
                // Reflection needs a source pixel for every padded one.
                if *padding >= height.min(width) {
                    return Err(InvalidSetting::new(
                        format!("{key}.padding"),
                        format!("{padding} must be smaller than the image side {}", height.min(width)),
                    ));
                }
                Ok((h, w))
            }
            Transform::CenterCrop { size } | Transform::Resize { size, .. } if *size == 0 => {
                Err(InvalidSetting::new(format!("{key}.size"), "expected a positive size"))
            }
            Transform::CenterCrop { size } | Transform::Resize { size, .. } => Ok((*size, *size)),
            Transform::RandomResizedCrop { size, scale, ratio, .. } => {
                check_range(&format!("{key}.scale"), *scale, f64::MIN_POSITIVE, 1.0)?;
                check_range(&format!("{key}.ratio"), *ratio, f64::MIN_POSITIVE, f64::MAX)?;
                if *size == 0 {
                    return Err(InvalidSetting::new(format!("{key}.size"), "expected a positive size"));
                }
                Ok((*size, *size))
            }
            Transform::RandomRotation { degrees, .. } => degrees.check(&format!("{key}.degrees"), 0.0, [-360.0, 360.0], false).and(same),
            Transform::RandomAffine { degrees, translate, scale, shear, shear_y, .. } => {
                degrees.check(&format!("{key}.degrees"), 0.0, [-360.0, 360.0], false)?;
                if let Some(t) = translate {
                    check_range(&format!("{key}.translate"), [t[0].min(t[1]), t[0].max(t[1])], 0.0, 1.0)?;
                }
                if let Some(s) = scale {
                    check_range(&format!("{key}.scale"), *s, f64::MIN_POSITIVE, f64::MAX)?;
                }
                for (name, s) in [("shear", shear), ("shear_y", shear_y)] {
                    if let Some(s) = s {
                        s.check(&format!("{key}.{name}"), 0.0, [-89.0, 89.0], false)?;
                    }
                }
                same
            }
            Transform::ColorJitter { brightness, contrast, saturation, hue } => {
                for (name, span) in [("brightness", brightness), ("contrast", contrast), ("saturation", saturation)] {
                    if let Some(s) = span {
                        s.check(&format!("{key}.{name}"), 1.0, [0.0, f64::MAX], true)?;
                    }
                }
                if let Some(h) = hue {
                    h.check(&format!("{key}.hue"), 0.0, [-0.5, 0.5], false)?;
                }
                same
            }
            Transform::Grayscale {} => same,
            Transform::GaussianBlur { kernel_size, sigma } => {
                if kernel_size % 2 == 0 {
                    return Err(InvalidSetting::new(
                        format!("{key}.kernel_size"),
                        format!("expected an odd positive size, found {kernel_size}"),
                    ));
                }
                check_range(&format!("{key}.sigma"), *sigma, f64::MIN_POSITIVE, f64::MAX).and(same)
            }
            Transform::RandomErasing { p, scale, ratio, .. } => {
                check_probability(&format!("{key}.p"), *p)?;
                check_range(&format!("{key}.scale"), *scale, 0.0, 1.0)?;
                check_range(&format!("{key}.ratio"), *ratio, f64::MIN_POSITIVE, f64::MAX).and(same)
            }
            Transform::Cutout { size, holes, p, .. } => {
                check_probability(&format!("{key}.p"), *p)?;
                if *size == 0 || *holes == 0 {
                    return Err(InvalidSetting::new(key, "size and holes must be positive"));
                }
                same
            }
            Transform::RandomApply { transforms, .. } | Transform::RandomChoice { transforms, .. }
                if transforms.iter().any(Transform::alternates) =>
            {
                Err(InvalidSetting::new(
                    format!("{key}.transforms"),
                    "an alternating flip must see every image every epoch; put it outside random_apply and random_choice",
                ))
            }
            Transform::RandomApply { p, transforms } => {
                check_probability(&format!("{key}.p"), *p)?;
                let out = chain_shape(&format!("{key}.transforms"), transforms, height, width)?;
                if out != (height, width) {
                    return Err(InvalidSetting::new(key, "the applied transforms change the image size, so skipping them would not"));
                }
                same
            }
            Transform::RandomChoice { transforms, weights } => {
                if transforms.is_empty() {
                    return Err(InvalidSetting::new(format!("{key}.transforms"), "expected at least one transform"));
                }
                if let Some(w) = weights
                    && (w.len() != transforms.len() || w.iter().any(|&v| v.is_nan() || v < 0.0) || w.iter().sum::<f64>() <= 0.0)
                {
                    return Err(InvalidSetting::new(
                        format!("{key}.weights"),
                        format!("expected {} non-negative weights with a positive sum, found {w:?}", transforms.len()),
                    ));
                }
                let mut shapes =
                    transforms.iter().enumerate().map(|(i, t)| t.output_shape(&format!("{key}.transforms[{i}]"), height, width));
                let first = shapes.next().expect("non-empty")?;
                for shape in shapes {
                    if shape? != first {
                        return Err(InvalidSetting::new(key, "the choices must all produce the same image size"));
                    }
                }
                Ok(first)
            }
            Transform::RandomOrder { transforms } => {
                for (i, t) in transforms.iter().enumerate() {
                    if t.output_shape(&format!("{key}.transforms[{i}]"), height, width)? != (height, width) {
                        return Err(InvalidSetting::new(
                            format!("{key}.transforms[{i}]"),
                            "transforms in a random order must keep the size",
                        ));
                    }
                }
                same
            }
            Transform::AutoAugment { .. } => same,
            Transform::RandAugment { num_ops, magnitude, num_magnitude_bins, interpolation, fill } => {
                RandAugment::new(*num_ops, *magnitude, *num_magnitude_bins, *interpolation, *fill)
                    .map_err(|e| InvalidSetting::new(&key, e))
                    .and(same)
            }
            Transform::TrivialAugmentWide { num_magnitude_bins, .. } => {
                if *num_magnitude_bins < 2 {
                    return Err(InvalidSetting::new(format!("{key}.num_magnitude_bins"), "expected at least 2"));
                }
                same
            }
        }
    }

    /// Whether an alternating flip is among this entry and the entries it contains.
    fn alternates(&self) -> bool {
        match self {
            Transform::RandomHorizontalFlip { mode, .. } => *mode == FlipMode::Alternate,
            Transform::RandomApply { transforms, .. }
            | Transform::RandomChoice { transforms, .. }
            | Transform::RandomOrder { transforms } => transforms.iter().any(Transform::alternates),
            _ => false,
        }
    }

    /// Draws this transform's parameters from `rng` and applies it. `visit` names the training
    /// image and epoch where the loader knows them; without it an alternating flip is random.
    pub fn apply(&self, image: Image, rng: &mut impl Rng, context: &Context, visit: Option<Visit>) -> Image {
        match self {
            Transform::RandomHorizontalFlip { p, mode } => {
                let flip = match (mode, visit) {
                    (FlipMode::Alternate, Some(Visit { image_seed, epoch })) => {
                        // The first epoch's coin is the image's own, so it does not depend on
                        // the batch the image falls in; odd epochs mirror the opposite way.
                        (ChaCha8Rng::seed_from_u64(image_seed).random::<f64>() < *p) != (epoch % 2 == 1)
                    }
                    _ => rng.random::<f64>() < *p,
                };
                let mut image = image;
                if flip {
                    flip_horizontal(&mut image);
                }
                image
            }
            Transform::RandomVerticalFlip { p } => {
                if rng.random::<f64>() < *p {
                    flip_vertical(&image)
                } else {
                    image
                }
            }
            Transform::RandomCrop { size, padding, padding_mode } => {
                let crop = RandomCrop { padding: *padding, padding_mode: *padding_mode };
                let window = size.map_or((image.height, image.width), |s| (s, s));
                let corner = crop.sample_window(&image, window, rng);
                crop.apply_window(&image, window, corner)
            }
            Transform::CenterCrop { size } => resize::center_crop(&image, *size),
            Transform::RandomResizedCrop { size, scale, ratio, interpolation } => {
                let (top, left, h, w) = resized_crop_window(image.height, image.width, *scale, *ratio, rng);
                resize::resize(&crop(&image, top, left, h, w), *size, *size, *interpolation)
            }
            Transform::Resize { size, interpolation } => resize::resize(&image, *size, *size, *interpolation),
            Transform::RandomRotation { degrees, interpolation, fill } => {
                let [lo, hi] = degrees.bounds(0.0);
                f::rotate(&image, uniform(rng, lo, hi) as f32, *interpolation, *fill)
            }
            Transform::RandomAffine { degrees, translate, scale, shear, shear_y, interpolation, fill } => {
                let params = affine_params(&image, *degrees, *translate, *scale, *shear, *shear_y, rng);
                f::affine(&image, &params, *interpolation, *fill)
            }
            Transform::ColorJitter { brightness, contrast, saturation, hue } => {
                let mut order = [0usize, 1, 2, 3];
                order.shuffle(rng);
                // torchvision draws every factor before applying any, in a fixed order.
                let factor = |span: &Option<Span>, centre: f64, rng: &mut dyn rand::RngCore| {
                    span.map(|s| {
                        let [lo, hi] = s.bounds(centre);
                        let lo = if centre == 1.0 { lo.max(0.0) } else { lo };
                        lo + (hi - lo) * rng.random::<f64>()
                    })
                };
                let factors =
                    [factor(brightness, 1.0, rng), factor(contrast, 1.0, rng), factor(saturation, 1.0, rng), factor(hue, 0.0, rng)];
                let mut image = image;
                for op in order {
                    let Some(v) = factors[op] else { continue };
                    let v = v as f32;
                    image = match op {
                        0 => f::adjust_brightness(&image, v),
                        1 => f::adjust_contrast(&image, v),
                        2 => f::adjust_saturation(&image, v),
                        _ => f::adjust_hue(&image, v),
                    };
                }
                image
            }
            Transform::RandomGrayscale { p } => {
                if rng.random::<f64>() < *p {
                    f::to_grayscale(&image)
                } else {
                    image
                }
            }
            Transform::Grayscale {} => f::to_grayscale(&image),
            Transform::GaussianBlur { kernel_size, sigma } => {
                let s = uniform(rng, sigma[0], sigma[1]) as f32;
                f::gaussian_blur(&image, (*kernel_size, *kernel_size), (s, s))
            }
            Transform::RandomErasing { p, scale, ratio, value } => {
                if rng.random::<f64>() >= *p {
                    return image;
                }
                match erasing_window(image.height, image.width, *scale, *ratio, rng) {
                    Some((top, left, h, w)) => erase(image, (top, left, h, w), *value, context, rng),
                    None => image,
                }
            }
            Transform::Cutout { size, holes, p, value } => {
                if rng.random::<f64>() >= *p {
                    return image;
                }
                let mut image = image;
                for _ in 0..*holes {
                    let (cy, cx) = (rng.random_range(0..image.height), rng.random_range(0..image.width));
                    let (top, left) = (cy.saturating_sub(size / 2), cx.saturating_sub(size / 2));
                    let bottom = (cy + size.div_ceil(2)).min(image.height);
                    let right = (cx + size.div_ceil(2)).min(image.width);
                    image = erase(image, (top, left, bottom - top, right - left), *value, context, rng);
                }
                image
            }
            Transform::RandomApply { p, transforms } => {
                if rng.random::<f64>() < *p {
                    apply_chain(transforms, image, rng, context, visit)
                } else {
                    image
                }
            }
            Transform::RandomChoice { transforms, weights } => {
                let index = match weights {
                    Some(w) => {
                        let mut u = rng.random::<f64>() * w.iter().sum::<f64>();
                        w.iter()
                            .position(|&v| {
                                u -= v;
                                u < 0.0
                            })
                            .unwrap_or(w.len() - 1)
                    }
                    None => rng.random_range(0..transforms.len()),
                };
                transforms[index].apply(image, rng, context, visit)
            }
            Transform::RandomOrder { transforms } => {
                let mut order: Vec<usize> = (0..transforms.len()).collect();
                order.shuffle(rng);
                order.into_iter().fold(image, |image, i| transforms[i].apply(image, rng, context, visit))
            }
            Transform::AutoAugment { policy, interpolation, fill } => {
                AutoAugment { policy: *policy, interpolation: *interpolation, fill: *fill }.apply(image, rng)
            }
            Transform::RandAugment { num_ops, magnitude, num_magnitude_bins, interpolation, fill } => {
                RandAugment::new(*num_ops, *magnitude, *num_magnitude_bins, *interpolation, *fill)
                    .expect("validated by output_shape")
                    .apply(image, rng)
            }
            Transform::TrivialAugmentWide { num_magnitude_bins, interpolation, fill } => {
                TrivialAugmentWide { num_magnitude_bins: *num_magnitude_bins, interpolation: *interpolation, fill: *fill }.apply(image, rng)
            }
        }
    }
}

fn uniform(rng: &mut impl Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

fn chain_shape(key: &str, transforms: &[Transform], height: usize, width: usize) -> Result<(usize, usize), InvalidSetting> {
    transforms.iter().enumerate().try_fold((height, width), |(h, w), (i, t)| t.output_shape(&format!("{key}[{i}]"), h, w))
}

fn apply_chain(transforms: &[Transform], image: Image, rng: &mut impl Rng, context: &Context, visit: Option<Visit>) -> Image {
    transforms.iter().fold(image, |image, t| t.apply(image, rng, context, visit))
}

/// torchvision's `F.crop`: the window `(top, left, height, width)`, zeros where it leaves the image.
pub fn crop(image: &Image, top: isize, left: isize, height: usize, width: usize) -> Image {
    let c = Image::CHANNELS;
    let mut pixels = vec![0u8; height * width * c];
    for y in 0..height {
        let sy = y as isize + top;
        if !(0..image.height as isize).contains(&sy) {
            continue;
        }
        // The run of columns inside the source.
        let x0 = (-left).clamp(0, width as isize) as usize;
        let x1 = (image.width as isize - left).clamp(0, width as isize) as usize;
        if x0 < x1 {
            let src = (sy as usize * image.width + (x0 as isize + left) as usize) * c;
            pixels[(y * width + x0) * c..(y * width + x1) * c].copy_from_slice(&image.pixels[src..src + (x1 - x0) * c]);
        }
    }
    Image::new(pixels, height, width)
}

/// torchvision's `RandomResizedCrop.get_params`: ten tries at a window of random area fraction and
/// log-uniform aspect ratio, then a centre crop with the ratio clamped into range.
fn resized_crop_window(height: usize, width: usize, scale: [f64; 2], ratio: [f64; 2], rng: &mut impl Rng) -> (isize, isize, usize, usize) {
    let area = (height * width) as f64;
    let log_ratio = [ratio[0].ln(), ratio[1].ln()];
    for _ in 0..10 {
        let target = area * uniform(rng, scale[0], scale[1]);
        let aspect = uniform(rng, log_ratio[0], log_ratio[1]).exp();
        let w = (target * aspect).sqrt().round() as usize;
        let h = (target / aspect).sqrt().round() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return (top as isize, left as isize, h, w);
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (h, w) = if in_ratio < ratio[0] {
        ((width as f64 / ratio[0]).round() as usize, width)
    } else if in_ratio > ratio[1] {
        (height, (height as f64 * ratio[1]).round() as usize)
    } else {
        (height, width)
    };
    (((height - h) / 2) as isize, ((width - w) / 2) as isize, h, w)
}

/// torchvision's `RandomErasing.get_params` (None when ten tries find no window that fits).
fn erasing_window(
    height: usize,
    width: usize,
    scale: [f64; 2],
    ratio: [f64; 2],
    rng: &mut impl Rng,
) -> Option<(usize, usize, usize, usize)> {
    let area = (height * width) as f64;
    let log_ratio = [ratio[0].ln(), ratio[1].ln()];
    for _ in 0..10 {
        let target = area * uniform(rng, scale[0], scale[1]);
        let aspect = uniform(rng, log_ratio[0], log_ratio[1]).exp();
        let h = (target * aspect).sqrt().round() as usize;
        let w = (target / aspect).sqrt().round() as usize;
        if h < height && w < width && h > 0 && w > 0 {
            return Some((rng.random_range(0..=height - h), rng.random_range(0..=width - w), h, w));
        }
    }
    None
}

fn erase(image: Image, window: (usize, usize, usize, usize), value: EraseValue, context: &Context, rng: &mut impl Rng) -> Image {
    let (mean, std) = context.normalize.mean_std();
    let to_u8 = |v: f32| (v * 255.0).round().clamp(0.0, 255.0) as u8;
    match value {
        EraseValue::Rgb(rgb) => f::erase(&image, window.0, window.1, window.2, window.3, rgb),
        EraseValue::Named(EraseNamed::Mean) => f::erase(&image, window.0, window.1, window.2, window.3, mean.map(to_u8)),
        EraseValue::Named(EraseNamed::Random) => {
            // Standard normal noise in normalized space, mapped back to pixels.
            let mut image = image;
            let (top, left, h, w) = window;
            for y in top..top + h {
                for x in left..left + w {
                    for ch in 0..Image::CHANNELS {
                        let z: f32 = rand_distr::Distribution::sample(&rand_distr::StandardNormal, rng);
                        image.pixels[(y * image.width + x) * Image::CHANNELS + ch] = to_u8(mean[ch] + std[ch] * z);
                    }
                }
            }
            image
        }
    }
}

/// torchvision's `RandomAffine.get_params`: translations rounded to whole pixels.
fn affine_params(
    image: &Image,
    degrees: Span,
    translate: Option<[f64; 2]>,
    scale: Option<[f64; 2]>,
    shear: Option<Span>,
    shear_y: Option<Span>,
    rng: &mut impl Rng,
) -> AffineParams {
    let [lo, hi] = degrees.bounds(0.0);
    let angle = uniform(rng, lo, hi);
    let translate = match translate {
        Some([fx, fy]) => {
            let (max_dx, max_dy) = (fx * image.width as f64, fy * image.height as f64);
            (uniform(rng, -max_dx, max_dx).round(), uniform(rng, -max_dy, max_dy).round())
        }
        None => (0.0, 0.0),
    };
    let scale = scale.map_or(1.0, |[a, b]| uniform(rng, a, b));
    let mut draw_shear = |span: Option<Span>| {
        span.map_or(0.0, |s| {
            let [a, b] = s.bounds(0.0);
            uniform(rng, a, b)
        })
    };
    let shear = (draw_shear(shear), draw_shear(shear_y));
    AffineParams {
        angle: angle as f32,
        translate: (translate.0 as f32, translate.1 as f32),
        scale: scale as f32,
        shear: (shear.0 as f32, shear.1 as f32),
        center: None,
    }
}

/// The training-time pipeline: the transforms in order, then the batch-level mix (elsewhere).
#[derive(Clone, Debug, PartialEq)]
pub struct Pipeline {
    pub transforms: Vec<Transform>,
    pub context: Context,
}

impl Pipeline {
    /// Checks every entry against the data set's image size and returns the output size.
    pub fn output_shape(&self, height: usize, width: usize) -> Result<(usize, usize), InvalidSetting> {
        chain_shape("augment.transforms", &self.transforms, height, width)
    }

    /// The name of the first transform that draws random numbers.
    pub fn first_random(&self) -> Option<&'static str> {
        self.transforms.iter().find(|t| t.is_random()).map(Transform::name)
    }

    /// Applies the transforms in order; `visit` as in `Transform::apply`.
    pub fn apply(&self, image: Image, visit: Option<Visit>, rng: &mut impl Rng) -> Image {
        apply_chain(&self.transforms, image, rng, &self.context, visit)
    }
}

impl Pipeline {
    /// `augment.transforms` when given, else the shorthand keys (`crop_padding`, `padding_mode`,
    /// `hflip`, `hflip_mode`).
    pub fn from_config(config: &super::config::AugmentConfig) -> Self {
        let transforms = if config.transforms.is_empty() {
            let crop = (config.crop_padding > 0).then_some(Transform::RandomCrop {
                size: None,
                padding: config.crop_padding,
                padding_mode: config.padding_mode,
            });
            let flip = (config.hflip > 0.0).then_some(Transform::RandomHorizontalFlip { p: config.hflip, mode: config.hflip_mode });
            crop.into_iter().chain(flip).collect()
        } else {
            config.transforms.clone()
        };
        Pipeline { transforms, context: Context { normalize: config.normalize } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// A `height` x `width` image with a different colour at every pixel.
    fn pattern(height: usize, width: usize) -> Image {
        let pixels = (0..height * width * 3).map(|i| ((i * 37 + i / 3 * 11) % 256) as u8).collect();
        Image::new(pixels, height, width)
    }

    fn parse(toml_text: &str) -> Result<Vec<Transform>, String> {
        #[derive(Deserialize)]
        struct List {
            transforms: Vec<Transform>,
        }
        toml::from_str::<List>(toml_text).map(|l| l.transforms).map_err(|e| e.to_string())
    }

    const CONTEXT: Context = Context { normalize: NormalizePreset::Cifar10 };

    fn run(transform: &Transform, image: &Image, seed: u64) -> Image {
        transform.apply(image.clone(), &mut ChaCha8Rng::seed_from_u64(seed), &CONTEXT, None)
    }

    #[test]
    fn pipelines_name_their_first_random_transform() {
        let pipeline = |toml_text: &str| Pipeline { transforms: parse(toml_text).unwrap(), context: CONTEXT };
        let fixed =
            pipeline(r#"transforms = [{ name = "resize", size = 64 }, { name = "center_crop", size = 56 }, { name = "grayscale" }]"#);
        assert_eq!(fixed.first_random(), None);
        let blur = |sigma: &str| pipeline(&format!(r#"transforms = [{{ name = "gaussian_blur", kernel_size = 3, sigma = {sigma} }}]"#));
        assert_eq!(blur("[1.0, 1.0]").first_random(), None);
        assert_eq!(blur("[0.1, 2.0]").first_random(), Some("gaussian_blur"));
        let shorthand = Pipeline::from_config(&crate::augment::config::AugmentConfig { crop_padding: 4, ..Default::default() });
        assert_eq!(shorthand.first_random(), Some("random_crop"));
    }

    #[test]
    fn every_transform_parses_from_toml_with_torchvision_defaults() {
        let all = parse(
            r#"transforms = [
                { name = "random_horizontal_flip" },
                { name = "random_vertical_flip", p = 0.2 },
                { name = "random_crop", padding = 4 },
                { name = "center_crop", size = 28 },
                { name = "random_resized_crop", size = 32 },
                { name = "resize", size = 32, interpolation = "bicubic" },
                { name = "random_rotation", degrees = 15 },
                { name = "random_affine", degrees = [-5, 5], translate = [0.1, 0.1], scale = [0.9, 1.1], shear = 10 },
                { name = "color_jitter", brightness = 0.4, contrast = 0.4, saturation = 0.4, hue = 0.1 },
                { name = "random_grayscale" },
                { name = "grayscale" },
                { name = "gaussian_blur", kernel_size = 3 },
                { name = "random_erasing", value = "random" },
                { name = "cutout", size = 8 },
                { name = "random_apply", p = 0.8, transforms = [{ name = "color_jitter", brightness = 0.2 }] },
                { name = "random_choice", transforms = [{ name = "grayscale" }, { name = "random_rotation", degrees = 5 }] },
                { name = "random_order", transforms = [{ name = "random_horizontal_flip" }] },
                { name = "auto_augment", policy = "cifar10" },
                { name = "rand_augment", num_ops = 2, magnitude = 9 },
                { name = "trivial_augment_wide" },
            ]"#,
        )
        .unwrap();
        assert_eq!(all.len(), 20);
        assert_eq!(all[0], Transform::RandomHorizontalFlip { p: 0.5, mode: FlipMode::Random });
        assert_eq!(all[2], Transform::RandomCrop { size: None, padding: 4, padding_mode: PaddingMode::Constant });
        assert_eq!(all[9], Transform::RandomGrayscale { p: 0.1 });
        match &all[4] {
            Transform::RandomResizedCrop { scale, ratio, interpolation, .. } => {
                assert_eq!((*scale, *interpolation), ([0.08, 1.0], Interpolation::Bilinear));
                assert!((ratio[0] - 0.75).abs() < 1e-12 && (ratio[1] - 4.0 / 3.0).abs() < 1e-12);
            }
            other => panic!("{other:?}"),
        }
        // The pipeline of them all runs on a CIFAR-sized image and keeps the declared shape.
        let pipeline = Pipeline { transforms: all, context: CONTEXT };
        assert_eq!(pipeline.output_shape(32, 32), Ok((32, 32)));
        for seed in 0..5 {
            let out = pipeline.apply(pattern(32, 32), None, &mut ChaCha8Rng::seed_from_u64(seed));
            assert_eq!((out.height, out.width), (32, 32));
        }
    }

    #[test]
    fn unknown_names_and_parameters_are_rejected() {
        let err = parse(r#"transforms = [{ name = "random_flip" }]"#).unwrap_err();
        assert!(err.contains("random_flip"), "{err}");
        let err = parse(r#"transforms = [{ name = "random_rotation", degrees = 5, fil = [0, 0, 0] }]"#).unwrap_err();
        assert!(err.contains("fil"), "{err}");
        let err = parse(r#"transforms = [{ name = "center_crop" }]"#).unwrap_err();
        assert!(err.contains("size"), "{err}");
    }

    #[test]
    fn out_of_range_settings_name_the_entry_and_key() {
        let check = |t: Transform| {
            let err = t.output_shape("augment.transforms[3]", 32, 32).unwrap_err();
            format!("{}: {}", err.key, err.message)
        };
        let err = check(Transform::RandomHorizontalFlip { p: 1.5, mode: FlipMode::Random });
        assert!(err.starts_with("augment.transforms[3] (random_horizontal_flip).p"), "{err}");
        let err = check(Transform::RandomCrop { size: Some(40), padding: 0, padding_mode: PaddingMode::Constant });
        assert!(err.contains(".size") && err.contains("40x40"), "{err}");
        let err = check(Transform::ColorJitter { brightness: None, contrast: None, saturation: None, hue: Some(Span::Around(0.7)) });
        assert!(err.contains(".hue"), "{err}");
        let err = check(Transform::ColorJitter { brightness: Some(Span::Around(-0.1)), contrast: None, saturation: None, hue: None });
        assert!(err.contains(".brightness"), "{err}");
        let err = check(Transform::RandomErasing { p: 0.5, scale: [0.5, 0.2], ratio: erasing_ratio(), value: EraseValue::default() });
        assert!(err.contains(".scale"), "{err}");
        let err = check(Transform::GaussianBlur { kernel_size: 4, sigma: blur_sigma() });
        assert!(err.contains(".kernel_size"), "{err}");
        let err = check(Transform::RandAugment {
            num_ops: 2,
            magnitude: 40,
            num_magnitude_bins: 31,
            interpolation: Interpolation::Nearest,
            fill: [0; 3],
        });
        assert!(err.contains("rand_augment"), "{err}");
        let err = check(Transform::RandomApply { p: 0.5, transforms: vec![Transform::CenterCrop { size: 24 }] });
        assert!(err.contains("size"), "{err}");
        // A brightness of 1.5 is the range [0, 2.5], as in torchvision.
        assert!(
            Transform::ColorJitter { brightness: Some(Span::Around(1.5)), contrast: None, saturation: None, hue: None }
                .output_shape("k", 32, 32)
                .is_ok()
        );
    }

    #[test]
    fn transforms_are_reproducible_for_a_seed_and_vary_across_seeds() {
        let image = pattern(32, 32);
        let random = parse(
            r#"transforms = [
                { name = "random_crop", padding = 4, padding_mode = "reflect" },
                { name = "random_resized_crop", size = 32 },
                { name = "random_rotation", degrees = 30 },
                { name = "random_affine", degrees = 0, translate = [0.2, 0.2] },
                { name = "color_jitter", brightness = 0.5, contrast = 0.5, saturation = 0.5, hue = 0.2 },
                { name = "gaussian_blur", kernel_size = 5 },
                { name = "random_erasing", p = 1.0 },
                { name = "cutout", size = 12 },
                { name = "auto_augment", policy = "cifar10" },
                { name = "rand_augment" },
                { name = "trivial_augment_wide" },
            ]"#,
        )
        .unwrap();
        for t in &random {
            assert_eq!(run(t, &image, 5), run(t, &image, 5), "{}", t.name());
            let distinct: std::collections::HashSet<Vec<u8>> = (0..8).map(|s| run(t, &image, s).pixels).collect();
            assert!(distinct.len() > 2, "{} gave {} distinct results over 8 seeds", t.name(), distinct.len());
        }
    }

    #[test]
    fn flips_and_crops_do_what_they_say() {
        let image = pattern(6, 8);
        let flipped = run(&Transform::RandomVerticalFlip { p: 1.0 }, &image, 0);
        assert_eq!(flipped.pixels[..24], image.pixels[5 * 24..]);
        assert_eq!(run(&Transform::RandomVerticalFlip { p: 0.0 }, &image, 0), image);
        let centre = run(&Transform::CenterCrop { size: 4 }, &image, 0);
        assert_eq!(centre, crop(&image, 1, 2, 4, 4));
        // A crop window partly outside the image is zero-filled there.
        let outside = crop(&image, -1, -1, 2, 2);
        assert_eq!(&outside.pixels[..9], &[0; 9]);
        assert_eq!(&outside.pixels[9..], &image.pixels[..3]);
        // Without padding a full-size random crop is the identity.
        let same = Transform::RandomCrop { size: None, padding: 0, padding_mode: PaddingMode::Constant };
        assert_eq!(run(&same, &image, 3), image);
    }

    #[test]
    fn an_alternating_flip_follows_the_image_and_epoch_not_the_stream() {
        let image = pattern(4, 6);
        let alternate = parse(r#"transforms = [{ name = "random_horizontal_flip", mode = "alternate" }]"#).unwrap().remove(0);
        assert_eq!(alternate, Transform::RandomHorizontalFlip { p: 0.5, mode: FlipMode::Alternate });
        let mirrored = |image_seed, epoch, stream| {
            let visit = Visit { image_seed, epoch };
            alternate.apply(image.clone(), &mut ChaCha8Rng::seed_from_u64(stream), &CONTEXT, Some(visit)) != image
        };
        let firsts: Vec<bool> = (0..40).map(|image_seed| mirrored(image_seed, 0, 0)).collect();
        assert!((10..=30).contains(&firsts.iter().filter(|&&m| m).count()), "{firsts:?}");
        for (image_seed, &first) in firsts.iter().enumerate() {
            for stream in 0..4 {
                let seed = image_seed as u64;
                assert_eq!([0, 1, 2, 7].map(|epoch| mirrored(seed, epoch, stream)), [first, !first, first, !first]);
            }
        }
        // Where no image is named (preview, expand), it draws like the random flip.
        let random = Transform::RandomHorizontalFlip { p: 0.5, mode: FlipMode::Random };
        assert!((0..8).all(|seed| run(&alternate, &image, seed) == run(&random, &image, seed)));
    }

    #[test]
    fn an_alternating_flip_cannot_be_skipped_by_a_combinator() {
        let alternate = || Transform::RandomHorizontalFlip { p: 0.5, mode: FlipMode::Alternate };
        let grayscale = Transform::Grayscale {};
        let sometimes = Transform::RandomApply { p: 0.5, transforms: vec![alternate()] };
        let err = sometimes.output_shape("augment.transforms[1]", 8, 8).unwrap_err();
        assert_eq!(err.key, "augment.transforms[1] (random_apply).transforms");
        assert!(err.message.contains("alternating flip"), "{}", err.message);
        let nested = Transform::RandomChoice {
            transforms: vec![grayscale.clone(), Transform::RandomOrder { transforms: vec![alternate()] }],
            weights: None,
        };
        assert!(nested.output_shape("k", 8, 8).is_err());
        // In a random order it still sees every image.
        assert_eq!(Transform::RandomOrder { transforms: vec![grayscale, alternate()] }.output_shape("k", 8, 8), Ok((8, 8)));
    }

    #[test]
    fn resized_crop_windows_follow_scale_and_ratio() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for _ in 0..200 {
            let (top, left, h, w) = resized_crop_window(64, 48, [0.25, 0.5], [0.75, 4.0 / 3.0], &mut rng);
            assert!(top >= 0 && left >= 0 && top as usize + h <= 64 && left as usize + w <= 48);
            let area = (h * w) as f64 / (64.0 * 48.0);
            assert!((0.2..=0.56).contains(&area), "area fraction {area}");
            let ratio = w as f64 / h as f64;
            assert!((0.7..=1.4).contains(&ratio), "ratio {ratio}");
        }
        // Impossible ratio: the fallback centre crop clamps it into range.
        let (_, _, h, w) = resized_crop_window(10, 100, [1.0, 1.0], [1.0, 2.0], &mut rng);
        assert_eq!((h, w), (10, 20));
    }

    #[test]
    fn erasing_fills_with_the_normalization_mean_by_default() {
        let image = Image::new(vec![7; 16 * 16 * 3], 16, 16);
        let erased =
            run(&Transform::RandomErasing { p: 1.0, scale: [0.1, 0.1], ratio: [1.0, 1.0], value: EraseValue::default() }, &image, 1);
        let (mean, _) = NormalizePreset::Cifar10.mean_std();
        let mean_rgb = mean.map(|m| (m * 255.0).round() as u8);
        let filled = erased.pixels.chunks(3).filter(|p| *p == mean_rgb).count();
        // round(sqrt(25.6)) = 5 on each side.
        assert_eq!(filled, 25);
        let cut = run(&Transform::Cutout { size: 4, holes: 1, p: 1.0, value: EraseValue::Rgb([255, 0, 0]) }, &image, 2);
        let red = cut.pixels.chunks(3).filter(|p| *p == [255, 0, 0]).count();
        assert!((1..=16).contains(&red), "{red}");
    }

    #[test]
    fn combinators_apply_sometimes_one_or_in_random_order() {
        let image = pattern(8, 8);
        let gray = Transform::Grayscale {};
        let flip = Transform::RandomHorizontalFlip { p: 1.0, mode: FlipMode::Random };
        let apply = Transform::RandomApply { p: 0.5, transforms: vec![gray.clone()] };
        let results: Vec<bool> = (0..40).map(|s| run(&apply, &image, s) != image).collect();
        let applied = results.iter().filter(|&&a| a).count();
        assert!((8..=32).contains(&applied), "{applied} of 40");
        let choice = Transform::RandomChoice { transforms: vec![gray.clone(), flip.clone()], weights: Some(vec![0.0, 1.0]) };
        assert!((0..10).all(|s| run(&choice, &image, s) == run(&flip, &image, 0)));
        let order = Transform::RandomOrder {
            transforms: vec![Transform::Cutout { size: 2, holes: 1, p: 1.0, value: EraseValue::Rgb([1, 2, 3]) }, flip],
        };
        assert_eq!(run(&order, &image, 4), run(&order, &image, 4));
    }

    #[test]
    fn shorthand_keys_build_crop_and_flip() {
        let config = crate::augment::config::AugmentConfig::default();
        let pipeline = Pipeline::from_config(&config);
        assert_eq!(
            pipeline.transforms,
            vec![
                Transform::RandomCrop { size: None, padding: 4, padding_mode: PaddingMode::Reflect },
                Transform::RandomHorizontalFlip { p: 0.5, mode: FlipMode::Random },
            ]
        );
    }
}
