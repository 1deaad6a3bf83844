//! Augmentation policies: AutoAugment, RandAugment, TrivialAugmentWide (torchvision semantics).
//!
//! The sub-policy tables, magnitude bins and op semantics are torchvision's (`_get_policies`,
//! `_augmentation_space`, `_apply_op` on PIL images), so published recipes carry over. Each policy
//! separates drawing its ops (`sample`, from the caller's RNG) from applying them (`PolicyOp`), so
//! a seed reproduces the augmentation; the random stream itself is ours, not torch's.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::Image;
use super::functional as f;
use super::resize::Interpolation;

/// One op at a concrete magnitude, with the meaning torchvision's `_apply_op` gives it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PolicyOp {
    Identity,
    /// Shear factor (tan of the shear angle), about the top-left corner.
    ShearX(f32),
    ShearY(f32),
    /// Pixels, truncated toward zero.
    TranslateX(f32),
    TranslateY(f32),
    /// Degrees, counter-clockwise.
    Rotate(f32),
    /// The enhancers take `1 + magnitude` as their factor.
    Brightness(f32),
    Color(f32),
    Contrast(f32),
    Sharpness(f32),
    /// Bits kept.
    Posterize(u8),
    /// Values `>=` the threshold are inverted (a float threshold, compared as Pillow does).
    Solarize(f32),
    AutoContrast,
    Equalize,
    Invert,
}

impl PolicyOp {
    pub fn apply(&self, image: &Image, interpolation: Interpolation, fill: [u8; 3]) -> Image {
        let centre = (image.width as f64 * 0.5, image.height as f64 * 0.5);
        // Shears go through atan and degrees in f64, as in torchvision, so the matrix is the same.
        let shear_degrees = |m: f32| (m as f64).atan().to_degrees();
        let warp = |center, translate, shear| {
            let matrix = f::inverse_affine_matrix(center, 0.0, translate, 1.0, shear);
            f::warp_affine(image, &matrix, interpolation, fill)
        };
        match *self {
            PolicyOp::Identity => image.clone(),
            PolicyOp::ShearX(m) => warp((0.0, 0.0), (0.0, 0.0), (shear_degrees(m), 0.0)),
            PolicyOp::ShearY(m) => warp((0.0, 0.0), (0.0, 0.0), (0.0, shear_degrees(m))),
            PolicyOp::TranslateX(m) => warp(centre, ((m as f64).trunc(), 0.0), (0.0, 0.0)),
            PolicyOp::TranslateY(m) => warp(centre, (0.0, (m as f64).trunc()), (0.0, 0.0)),
            PolicyOp::Rotate(degrees) => f::rotate(image, degrees, interpolation, fill),
            PolicyOp::Brightness(m) => f::adjust_brightness(image, 1.0 + m),
            PolicyOp::Color(m) => f::adjust_saturation(image, 1.0 + m),
            PolicyOp::Contrast(m) => f::adjust_contrast(image, 1.0 + m),
            PolicyOp::Sharpness(m) => f::adjust_sharpness(image, 1.0 + m),
            PolicyOp::Posterize(bits) => f::posterize(image, bits),
            // Pillow tests `v < threshold` for each integer v, i.e. `v < ceil(threshold)`.
            PolicyOp::Solarize(t) if t > 255.0 => image.clone(),
            PolicyOp::Solarize(t) => f::solarize(image, t.max(0.0).ceil() as u8),
            PolicyOp::AutoContrast => f::autocontrast(image),
            PolicyOp::Equalize => f::equalize(image),
            PolicyOp::Invert => f::invert(image),
        }
    }
}

/// The op kinds of the policies; the names (and `Debug`) are torchvision's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Identity,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Rotate,
    Brightness,
    Color,
    Contrast,
    Sharpness,
    Posterize,
    Solarize,
    AutoContrast,
    Equalize,
    Invert,
}

/// The ops RandAugment and TrivialAugmentWide draw from, in torchvision's order (no Invert).
const RANDOM_OPS: [Op; 14] = [
    Op::Identity,
    Op::ShearX,
    Op::ShearY,
    Op::TranslateX,
    Op::TranslateY,
    Op::Rotate,
    Op::Brightness,
    Op::Color,
    Op::Contrast,
    Op::Sharpness,
    Op::Posterize,
    Op::Solarize,
    Op::AutoContrast,
    Op::Equalize,
];

/// The magnitude ranges: AutoAugment's and RandAugment's, or TrivialAugmentWide's wider ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Space {
    Standard,
    Wide,
}

/// Element `i` of `torch.linspace(start, end, steps)` in f32. torch computes `start + step * i`
/// for the first half and `end - step * (steps - 1 - i)` for the rest, and its CPU build fuses
/// each into one multiply-add, which decides values such as 15.999999 vs 16 (a 1-pixel shift).
fn linspace(start: f32, end: f32, steps: usize, i: usize) -> f32 {
    if steps == 1 {
        return start;
    }
    let step = (end - start) / (steps - 1) as f32;
    if i < steps / 2 { step.mul_add(i as f32, start) } else { (-step).mul_add((steps - 1 - i) as f32, end) }
}

impl Op {
    /// Whether torchvision's space has magnitude bins for the op (the others always get 0).
    fn has_magnitude(self) -> bool {
        !matches!(self, Op::Identity | Op::AutoContrast | Op::Equalize | Op::Invert)
    }

    /// Whether the magnitude gets a random sign.
    fn signed(self) -> bool {
        matches!(
            self,
            Op::ShearX
                | Op::ShearY
                | Op::TranslateX
                | Op::TranslateY
                | Op::Rotate
                | Op::Brightness
                | Op::Color
                | Op::Contrast
                | Op::Sharpness
        )
    }

    /// Bin `bin` of `num_bins` of torchvision's `_augmentation_space` for an image of
    /// `(height, width)`, unsigned.
    fn magnitude(self, space: Space, bin: usize, num_bins: usize, (height, width): (usize, usize)) -> f32 {
        let wide = space == Space::Wide;
        let up_to = |end: f32| linspace(0.0, end, num_bins, bin);
        let translate = |side: usize| if wide { 32.0 } else { (150.0 / 331.0 * side as f64) as f32 };
        match self {
            Op::ShearX | Op::ShearY => up_to(if wide { 0.99 } else { 0.3 }),
            Op::TranslateX => up_to(translate(width)),
            Op::TranslateY => up_to(translate(height)),
            Op::Rotate => up_to(if wide { 135.0 } else { 30.0 }),
            Op::Brightness | Op::Color | Op::Contrast | Op::Sharpness => up_to(if wide { 0.99 } else { 0.9 }),
            Op::Posterize => {
                let per_bit = (num_bins - 1) as f32 / if wide { 6.0 } else { 4.0 };
                8.0 - (bin as f32 / per_bit).round_ties_even()
            }
            Op::Solarize => linspace(255.0, 0.0, num_bins, bin),
            Op::Identity | Op::AutoContrast | Op::Equalize | Op::Invert => 0.0,
        }
    }

    fn at(self, magnitude: f32) -> PolicyOp {
        match self {
            Op::Identity => PolicyOp::Identity,
            Op::ShearX => PolicyOp::ShearX(magnitude),
            Op::ShearY => PolicyOp::ShearY(magnitude),
            Op::TranslateX => PolicyOp::TranslateX(magnitude),
            Op::TranslateY => PolicyOp::TranslateY(magnitude),
            Op::Rotate => PolicyOp::Rotate(magnitude),
            Op::Brightness => PolicyOp::Brightness(magnitude),
            Op::Color => PolicyOp::Color(magnitude),
            Op::Contrast => PolicyOp::Contrast(magnitude),
            Op::Sharpness => PolicyOp::Sharpness(magnitude),
            Op::Posterize => PolicyOp::Posterize(magnitude as u8),
            Op::Solarize => PolicyOp::Solarize(magnitude),
            Op::AutoContrast => PolicyOp::AutoContrast,
            Op::Equalize => PolicyOp::Equalize,
            Op::Invert => PolicyOp::Invert,
        }
    }

    /// The op at bin `bin`, negated when `negative` and the op is signed.
    fn binned(self, space: Space, bin: usize, num_bins: usize, size: (usize, usize), negative: bool) -> PolicyOp {
        let magnitude = self.magnitude(space, bin, num_bins, size);
        self.at(if negative && self.signed() { -magnitude } else { magnitude })
    }
}

fn apply_all(ops: &[PolicyOp], image: Image, interpolation: Interpolation, fill: [u8; 3]) -> Image {
    ops.iter().fold(image, |image, op| op.apply(&image, interpolation, fill))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoAugmentPolicy {
    Cifar10,
    Imagenet,
    Svhn,
}

/// Two (op, probability, magnitude bin) steps; ops without magnitude have no bin.
type SubPolicy = [(Op, f64, Option<usize>); 2];

impl AutoAugmentPolicy {
    /// torchvision's `AutoAugment._get_policies`.
    fn sub_policies(self) -> &'static [SubPolicy; 25] {
        use Op::*;
        const IMAGENET: [SubPolicy; 25] = [
            [(Posterize, 0.4, Some(8)), (Rotate, 0.6, Some(9))],
            [(Solarize, 0.6, Some(5)), (AutoContrast, 0.6, None)],
            [(Equalize, 0.8, None), (Equalize, 0.6, None)],
            [(Posterize, 0.6, Some(7)), (Posterize, 0.6, Some(6))],
            [(Equalize, 0.4, None), (Solarize, 0.2, Some(4))],
            [(Equalize, 0.4, None), (Rotate, 0.8, Some(8))],
            [(Solarize, 0.6, Some(3)), (Equalize, 0.6, None)],
            [(Posterize, 0.8, Some(5)), (Equalize, 1.0, None)],
            [(Rotate, 0.2, Some(3)), (Solarize, 0.6, Some(8))],
            [(Equalize, 0.6, None), (Posterize, 0.4, Some(6))],
            [(Rotate, 0.8, Some(8)), (Color, 0.4, Some(0))],
            [(Rotate, 0.4, Some(9)), (Equalize, 0.6, None)],
            [(Equalize, 0.0, None), (Equalize, 0.8, None)],
            [(Invert, 0.6, None), (Equalize, 1.0, None)],
            [(Color, 0.6, Some(4)), (Contrast, 1.0, Some(8))],
            [(Rotate, 0.8, Some(8)), (Color, 1.0, Some(2))],
            [(Color, 0.8, Some(8)), (Solarize, 0.8, Some(7))],
            [(Sharpness, 0.4, Some(7)), (Invert, 0.6, None)],
            [(ShearX, 0.6, Some(5)), (Equalize, 1.0, None)],
            [(Color, 0.4, Some(0)), (Equalize, 0.6, None)],
            [(Equalize, 0.4, None), (Solarize, 0.2, Some(4))],
            [(Solarize, 0.6, Some(5)), (AutoContrast, 0.6, None)],
            [(Invert, 0.6, None), (Equalize, 1.0, None)],
            [(Color, 0.6, Some(4)), (Contrast, 1.0, Some(8))],
            [(Equalize, 0.8, None), (Equalize, 0.6, None)],
        ];
        const CIFAR10: [SubPolicy; 25] = [
            [(Invert, 0.1, None), (Contrast, 0.2, Some(6))],
            [(Rotate, 0.7, Some(2)), (TranslateX, 0.3, Some(9))],
            [(Sharpness, 0.8, Some(1)), (Sharpness, 0.9, Some(3))],
            [(ShearY, 0.5, Some(8)), (TranslateY, 0.7, Some(9))],
            [(AutoContrast, 0.5, None), (Equalize, 0.9, None)],
            [(ShearY, 0.2, Some(7)), (Posterize, 0.3, Some(7))],
            [(Color, 0.4, Some(3)), (Brightness, 0.6, Some(7))],
            [(Sharpness, 0.3, Some(9)), (Brightness, 0.7, Some(9))],
            [(Equalize, 0.6, None), (Equalize, 0.5, None)],
            [(Contrast, 0.6, Some(7)), (Sharpness, 0.6, Some(5))],
            [(Color, 0.7, Some(7)), (TranslateX, 0.5, Some(8))],
            [(Equalize, 0.3, None), (AutoContrast, 0.4, None)],
            [(TranslateY, 0.4, Some(3)), (Sharpness, 0.2, Some(6))],
            [(Brightness, 0.9, Some(6)), (Color, 0.2, Some(8))],
            [(Solarize, 0.5, Some(2)), (Invert, 0.0, None)],
            [(Equalize, 0.2, None), (AutoContrast, 0.6, None)],
            [(Equalize, 0.2, None), (Equalize, 0.6, None)],
            [(Color, 0.9, Some(9)), (Equalize, 0.6, None)],
            [(AutoContrast, 0.8, None), (Solarize, 0.2, Some(8))],
            [(Brightness, 0.1, Some(3)), (Color, 0.7, Some(0))],
            [(Solarize, 0.4, Some(5)), (AutoContrast, 0.9, None)],
            [(TranslateY, 0.9, Some(9)), (TranslateY, 0.7, Some(9))],
            [(AutoContrast, 0.9, None), (Solarize, 0.8, Some(3))],
            [(Equalize, 0.8, None), (Invert, 0.1, None)],
            [(TranslateY, 0.7, Some(9)), (AutoContrast, 0.9, None)],
        ];
        const SVHN: [SubPolicy; 25] = [
            [(ShearX, 0.9, Some(4)), (Invert, 0.2, None)],
            [(ShearY, 0.9, Some(8)), (Invert, 0.7, None)],
            [(Equalize, 0.6, None), (Solarize, 0.6, Some(6))],
            [(Invert, 0.9, None), (Equalize, 0.6, None)],
            [(Equalize, 0.6, None), (Rotate, 0.9, Some(3))],
            [(ShearX, 0.9, Some(4)), (AutoContrast, 0.8, None)],
            [(ShearY, 0.9, Some(8)), (Invert, 0.4, None)],
            [(ShearY, 0.9, Some(5)), (Solarize, 0.2, Some(6))],
            [(Invert, 0.9, None), (AutoContrast, 0.8, None)],
            [(Equalize, 0.6, None), (Rotate, 0.9, Some(3))],
            [(ShearX, 0.9, Some(4)), (Solarize, 0.3, Some(3))],
            [(ShearY, 0.8, Some(8)), (Invert, 0.7, None)],
            [(Equalize, 0.9, None), (TranslateY, 0.6, Some(6))],
            [(Invert, 0.9, None), (Equalize, 0.6, None)],
            [(Contrast, 0.3, Some(3)), (Rotate, 0.8, Some(4))],
            [(Invert, 0.8, None), (TranslateY, 0.0, Some(2))],
            [(ShearY, 0.7, Some(6)), (Solarize, 0.4, Some(8))],
            [(Invert, 0.6, None), (Rotate, 0.8, Some(4))],
            [(ShearY, 0.3, Some(7)), (TranslateX, 0.9, Some(3))],
            [(ShearX, 0.1, Some(6)), (Invert, 0.6, None)],
            [(Solarize, 0.7, Some(2)), (TranslateY, 0.6, Some(7))],
            [(ShearY, 0.8, Some(4)), (Invert, 0.8, None)],
            [(ShearX, 0.7, Some(9)), (TranslateY, 0.8, Some(3))],
            [(ShearY, 0.8, Some(5)), (AutoContrast, 0.7, None)],
            [(ShearX, 0.7, Some(2)), (Invert, 0.1, None)],
        ];
        match self {
            AutoAugmentPolicy::Cifar10 => &CIFAR10,
            AutoAugmentPolicy::Imagenet => &IMAGENET,
            AutoAugmentPolicy::Svhn => &SVHN,
        }
    }
}

/// torchvision `AutoAugment`: one of the policy's 25 sub-policies, each of its two steps applied
/// with its probability at its magnitude bin (of 10) with a random sign.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AutoAugment {
    pub policy: AutoAugmentPolicy,
    pub interpolation: Interpolation,
    pub fill: [u8; 3],
}

impl AutoAugment {
    const NUM_BINS: usize = 10;

    /// The ops to apply to a `height` x `width` image, in order (none, one or two). Draws the
    /// sub-policy, two probabilities and two signs, as torchvision does.
    pub fn sample(&self, height: usize, width: usize, rng: &mut impl Rng) -> Vec<PolicyOp> {
        let table = self.policy.sub_policies();
        let sub_policy = &table[rng.random_range(0..table.len())];
        let probs: [f64; 2] = [rng.random(), rng.random()];
        let negative: [bool; 2] = [rng.random(), rng.random()];
        (0..2)
            .filter(|&i| probs[i] <= sub_policy[i].1)
            .map(|i| {
                let (op, _, bin) = sub_policy[i];
                let bin = bin.unwrap_or(0);
                op.binned(Space::Standard, bin, Self::NUM_BINS, (height, width), negative[i])
            })
            .collect()
    }

    pub fn apply(&self, image: Image, rng: &mut impl Rng) -> Image {
        let ops = self.sample(image.height, image.width, rng);
        apply_all(&ops, image, self.interpolation, self.fill)
    }
}

/// torchvision `RandAugment`: `num_ops` ops drawn uniformly (with replacement), all at bin
/// `magnitude` of `num_magnitude_bins`, each with a random sign.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RandAugment {
    pub num_ops: usize,
    pub magnitude: usize,
    pub num_magnitude_bins: usize,
    pub interpolation: Interpolation,
    pub fill: [u8; 3],
}

impl RandAugment {
    /// torchvision's defaults are `num_ops` 2, `magnitude` 9, `num_magnitude_bins` 31.
    pub fn new(
        num_ops: usize,
        magnitude: usize,
        num_magnitude_bins: usize,
        interpolation: Interpolation,
        fill: [u8; 3],
    ) -> Result<Self, String> {
        let rand_augment = Self { num_ops, magnitude, num_magnitude_bins, interpolation, fill };
        rand_augment.validate()?;
        Ok(rand_augment)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.num_ops == 0 {
            return Err("RandAugment num_ops must be at least 1".into());
        }
        validate_bins("RandAugment", self.num_magnitude_bins)?;
        if self.magnitude >= self.num_magnitude_bins {
            return Err(format!(
                "RandAugment magnitude {} is out of range: it indexes the magnitude bins, so it must be below num_magnitude_bins ({})",
                self.magnitude, self.num_magnitude_bins
            ));
        }
        Ok(())
    }

    /// The ops to apply to a `height` x `width` image, in order. Panics if the parameters are
    /// invalid (see `validate`).
    pub fn sample(&self, height: usize, width: usize, rng: &mut impl Rng) -> Vec<PolicyOp> {
        self.validate().unwrap_or_else(|e| panic!("{e}"));
        (0..self.num_ops)
            .map(|_| {
                let op = RANDOM_OPS[rng.random_range(0..RANDOM_OPS.len())];
                let negative = op.signed() && rng.random();
                op.binned(Space::Standard, self.magnitude, self.num_magnitude_bins, (height, width), negative)
            })
            .collect()
    }

    pub fn apply(&self, image: Image, rng: &mut impl Rng) -> Image {
        let ops = self.sample(image.height, image.width, rng);
        apply_all(&ops, image, self.interpolation, self.fill)
    }
}

fn validate_bins(name: &str, num_magnitude_bins: usize) -> Result<(), String> {
    if num_magnitude_bins < 2 {
        return Err(format!("{name} num_magnitude_bins must be at least 2, got {num_magnitude_bins}"));
    }
    Ok(())
}

/// torchvision `TrivialAugmentWide`: one op drawn uniformly at a uniformly drawn bin of
/// `num_magnitude_bins` (wider ranges than RandAugment), with a random sign.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrivialAugmentWide {
    pub num_magnitude_bins: usize,
    pub interpolation: Interpolation,
    pub fill: [u8; 3],
}

impl TrivialAugmentWide {
    /// torchvision's default is 31 bins.
    pub fn new(num_magnitude_bins: usize, interpolation: Interpolation, fill: [u8; 3]) -> Result<Self, String> {
        validate_bins("TrivialAugmentWide", num_magnitude_bins)?;
        Ok(Self { num_magnitude_bins, interpolation, fill })
    }

    pub fn validate(&self) -> Result<(), String> {
        validate_bins("TrivialAugmentWide", self.num_magnitude_bins)
    }

    /// The op to apply to a `height` x `width` image (always one). Panics if the parameters are
    /// invalid (see `validate`).
    pub fn sample(&self, height: usize, width: usize, rng: &mut impl Rng) -> Vec<PolicyOp> {
        self.validate().unwrap_or_else(|e| panic!("{e}"));
        let op = RANDOM_OPS[rng.random_range(0..RANDOM_OPS.len())];
        let bin = if op.has_magnitude() { rng.random_range(0..self.num_magnitude_bins) } else { 0 };
        let negative = op.signed() && rng.random();
        vec![op.binned(Space::Wide, bin, self.num_magnitude_bins, (height, width), negative)]
    }

    pub fn apply(&self, image: Image, rng: &mut impl Rng) -> Image {
        let ops = self.sample(image.height, image.width, rng);
        apply_all(&ops, image, self.interpolation, self.fill)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::functional::tests::{cases, check_against_pillow, f32_arg, interpolation_arg, manifest, rgb_arg};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use std::collections::HashSet;
    use std::mem::discriminant;

    /// Every op: RandAugment's list plus Invert, which only AutoAugment uses.
    fn all_ops() -> impl Iterator<Item = Op> {
        RANDOM_OPS.into_iter().chain([Op::Invert])
    }

    fn op_named(name: &str) -> Op {
        all_ops().find(|op| format!("{op:?}") == name).unwrap_or_else(|| panic!("unknown op {name}"))
    }

    #[test]
    fn policy_ops_match_torchvision_apply_op() {
        let cases = cases(|op| op == "policy_op");
        assert!(cases.len() > 40, "only {} cases", cases.len());
        // Everything but the float blurs of torchvision's own kernels is bit-exact.
        let exact: Vec<String> = all_ops().map(|op| format!("{op:?}")).collect();
        let exact: Vec<&str> = exact.iter().map(String::as_str).collect();
        check_against_pillow(&cases, &exact, |case| {
            let a = &case.args;
            let name = a["name"].as_str().expect("name");
            let op = op_named(name).at(f32_arg(a, "magnitude"));
            (name.to_string(), op.apply(&case.input, interpolation_arg(a), rgb_arg(a, "fill")))
        });
    }

    #[test]
    fn sub_policy_tables_are_torchvisions() {
        let manifest = manifest();
        for (policy, key) in
            [(AutoAugmentPolicy::Cifar10, "cifar10"), (AutoAugmentPolicy::Imagenet, "imagenet"), (AutoAugmentPolicy::Svhn, "svhn")]
        {
            let expected = manifest["policies"][key].as_array().expect("policy table");
            let table = policy.sub_policies();
            assert_eq!(table.len(), 25, "{key}");
            assert_eq!(expected.len(), 25, "{key}");
            for (i, (sub, want)) in table.iter().zip(expected).enumerate() {
                for (step, want) in sub.iter().zip(want.as_array().expect("sub-policy")) {
                    let want = (op_named(want[0].as_str().unwrap()), want[1].as_f64().unwrap(), want[2].as_u64().map(|b| b as usize));
                    assert_eq!(*step, want, "{key} sub-policy {i}");
                }
            }
        }
    }

    #[test]
    fn magnitude_bins_are_torchvisions() {
        let manifest = manifest();
        for (size_key, size) in [("32x32", (32, 32)), ("28x40", (28, 40))] {
            for (transform, space, num_bins) in
                [("auto_augment", Space::Standard, 10), ("rand_augment", Space::Standard, 31), ("trivial_augment_wide", Space::Wide, 31)]
            {
                let table = manifest["spaces"][size_key][transform].as_object().expect("space");
                for (name, meta) in table {
                    let op = op_named(name);
                    assert_eq!(op.signed(), meta["signed"].as_bool().unwrap(), "{transform} {name}");
                    let want: Vec<f32> = meta["magnitudes"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
                    assert_eq!(op.has_magnitude(), want.len() > 1, "{transform} {name}");
                    let got: Vec<f32> = (0..want.len()).map(|bin| op.magnitude(space, bin, num_bins, size)).collect();
                    assert_eq!(got, if op.has_magnitude() { want } else { vec![0.0] }, "{transform} {name} {size_key}");
                }
                if transform != "auto_augment" {
                    let mut names: Vec<String> = RANDOM_OPS.iter().map(|op| format!("{op:?}")).collect();
                    names.sort();
                    assert_eq!(table.keys().cloned().collect::<Vec<_>>(), names, "{transform} ops");
                }
            }
        }
    }

    fn test_image() -> Image {
        let pixels = (0..24 * 20).flat_map(|i| [(i * 7 % 256) as u8, (i * 3 % 200 + 30) as u8, (i % 24 * 10) as u8]).collect();
        Image::new(pixels, 20, 24)
    }

    fn policies() -> (AutoAugment, RandAugment, TrivialAugmentWide) {
        let (nearest, fill) = (Interpolation::Nearest, [0; 3]);
        (
            AutoAugment { policy: AutoAugmentPolicy::Cifar10, interpolation: nearest, fill },
            RandAugment::new(2, 9, 31, Interpolation::Bilinear, [128; 3]).unwrap(),
            TrivialAugmentWide::new(31, nearest, fill).unwrap(),
        )
    }

    #[test]
    fn each_policy_is_reproducible_for_a_seed() {
        let (auto, rand_augment, trivial) = policies();
        let run = |seed: u64| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut outputs = Vec::new();
            for _ in 0..30 {
                outputs.push(auto.apply(test_image(), &mut rng));
                outputs.push(rand_augment.apply(test_image(), &mut rng));
                outputs.push(trivial.apply(test_image(), &mut rng));
            }
            outputs
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    /// Draws `n` samples and returns the distinct ops seen (by kind and sign of the magnitude).
    fn reached(n: usize, mut sample: impl FnMut(&mut ChaCha8Rng) -> Vec<PolicyOp>) -> HashSet<String> {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let label = |op: &PolicyOp| {
            let negative = matches!(*op, PolicyOp::ShearX(m) | PolicyOp::ShearY(m) | PolicyOp::TranslateX(m)
                | PolicyOp::TranslateY(m) | PolicyOp::Rotate(m) | PolicyOp::Brightness(m) | PolicyOp::Color(m)
                | PolicyOp::Contrast(m) | PolicyOp::Sharpness(m) if m < 0.0);
            format!("{:?}{}", discriminant(op), if negative { "-" } else { "" })
        };
        (0..n).flat_map(|_| sample(&mut rng)).map(|op| label(&op)).collect()
    }

    #[test]
    fn every_op_and_sign_is_reachable() {
        let (auto, rand_augment, trivial) = policies();
        // 14 kinds, 9 of them signed: 23 labels for RandAugment and TrivialAugmentWide.
        assert_eq!(reached(3000, |rng| rand_augment.sample(32, 32, rng)).len(), 23);
        assert_eq!(reached(3000, |rng| trivial.sample(32, 32, rng)).len(), 23);
        // The AutoAugment tables together use every op but Identity.
        let all: HashSet<String> = [AutoAugmentPolicy::Cifar10, AutoAugmentPolicy::Imagenet, AutoAugmentPolicy::Svhn]
            .into_iter()
            .flat_map(|policy| reached(5000, |rng| AutoAugment { policy, ..auto }.sample(32, 32, rng)))
            .collect();
        assert_eq!(all.len(), 14 + 9, "{all:?}");
        // Depending on the probabilities drawn, a sub-policy applies none, one or both steps.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let counts: Vec<usize> = (0..1000).map(|_| auto.sample(32, 32, &mut rng).len()).collect();
        assert!(counts.iter().all(|&n| n <= 2) && counts.contains(&0) && counts.contains(&2));
    }

    #[test]
    fn bad_parameters_are_rejected_with_a_clear_message() {
        let (nearest, fill) = (Interpolation::Nearest, [0; 3]);
        let err = RandAugment::new(2, 31, 31, nearest, fill).unwrap_err();
        assert!(err.contains("magnitude 31") && err.contains("num_magnitude_bins (31)"), "{err}");
        let err = RandAugment::new(0, 9, 31, nearest, fill).unwrap_err();
        assert!(err.contains("num_ops"), "{err}");
        let err = RandAugment::new(1, 0, 1, nearest, fill).unwrap_err();
        assert!(err.contains("num_magnitude_bins must be at least 2"), "{err}");
        let err = TrivialAugmentWide::new(0, nearest, fill).unwrap_err();
        assert!(err.contains("TrivialAugmentWide num_magnitude_bins"), "{err}");
        assert!(RandAugment::new(2, 30, 31, nearest, fill).is_ok());
    }

    #[test]
    #[should_panic(expected = "must be below num_magnitude_bins")]
    fn sampling_an_invalid_rand_augment_panics_with_the_message() {
        let invalid =
            RandAugment { num_ops: 2, magnitude: 40, num_magnitude_bins: 31, interpolation: Interpolation::Nearest, fill: [0; 3] };
        invalid.sample(32, 32, &mut ChaCha8Rng::seed_from_u64(0));
    }

    #[test]
    fn solarize_threshold_is_compared_as_a_float() {
        let img = Image::new(vec![170, 171, 255, 0, 169, 200], 1, 2);
        // Integers below 170.5 stay, 171 and above are inverted.
        assert_eq!(PolicyOp::Solarize(170.5).apply(&img, Interpolation::Nearest, [0; 3]).pixels, vec![170, 84, 0, 0, 169, 55]);
        assert_eq!(PolicyOp::Solarize(256.0).apply(&img, Interpolation::Nearest, [0; 3]), img);
        assert_eq!(PolicyOp::Solarize(0.0).apply(&img, Interpolation::Nearest, [0; 3]), f::invert(&img));
    }
}
