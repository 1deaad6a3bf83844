//! Batch-level MixUp and CutMix with timm's `Mixup` semantics (batch mode): one `lambda` per batch
//! drawn from Beta(alpha, alpha), each image mixed with the image at the mirrored position of the
//! batch, and targets mixed with the same weight (`train::loss::mixed_targets`).

use rand::Rng;
use rand_distr::{Beta, Distribution};
use serde::{Deserialize, Serialize};

use crate::error::{InvalidSetting, ensure};

/// `[augment.mix]`: an alpha of 0 disables that kind of mixing.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MixConfig {
    pub mixup_alpha: f64,
    pub cutmix_alpha: f64,
    /// Probability that a batch is mixed at all.
    pub prob: f64,
    /// With both enabled, probability of CutMix rather than MixUp for a batch.
    pub switch_prob: f64,
}

impl Default for MixConfig {
    fn default() -> Self {
        Self { mixup_alpha: 0.0, cutmix_alpha: 0.0, prob: 1.0, switch_prob: 0.5 }
    }
}

impl MixConfig {
    pub fn enabled(&self) -> bool {
        self.mixup_alpha > 0.0 || self.cutmix_alpha > 0.0
    }

    pub fn validate(&self) -> Result<(), InvalidSetting> {
        for (key, alpha) in [("augment.mix.mixup_alpha", self.mixup_alpha), ("augment.mix.cutmix_alpha", self.cutmix_alpha)] {
            ensure(alpha.is_finite() && alpha >= 0.0, key, || format!("expected a number >= 0 (0 = off), found {alpha}"))?;
        }
        for (key, p) in [("augment.mix.prob", self.prob), ("augment.mix.switch_prob", self.switch_prob)] {
            ensure((0.0..=1.0).contains(&p), key, || format!("expected a probability in [0, 1], found {p}"))?;
        }
        Ok(())
    }

    /// Mixes a batch of `n` CHW images (`images`, `n * 3 * height * width` floats) in place and
    /// returns the weight of each image's own label (the rest goes to its partner's), or None
    /// when the batch stays unmixed.
    pub fn apply(&self, images: &mut [f32], n: usize, height: usize, width: usize, rng: &mut impl Rng) -> Option<f32> {
        if !self.enabled() || n < 2 || rng.random::<f64>() >= self.prob {
            return None;
        }
        let use_cutmix = match (self.mixup_alpha > 0.0, self.cutmix_alpha > 0.0) {
            (true, true) => rng.random::<f64>() < self.switch_prob,
            (false, true) => true,
            _ => false,
        };
        let alpha = if use_cutmix { self.cutmix_alpha } else { self.mixup_alpha };
        let lambda = Beta::new(alpha, alpha).expect("alpha validated positive").sample(rng);
        let source = images.to_vec();
        let per_image = images.len() / n;
        let plane = height * width;
        if use_cutmix {
            let (top, left, bottom, right) = cutmix_box(height, width, lambda, rng);
            for i in 0..n {
                let partner = &source[(n - 1 - i) * per_image..][..per_image];
                let own = &mut images[i * per_image..][..per_image];
                for channel in 0..per_image / plane {
                    for y in top..bottom {
                        let row = channel * plane + y * width;
                        own[row + left..row + right].copy_from_slice(&partner[row + left..row + right]);
                    }
                }
            }
            // The weight follows the pasted area after clipping at the border, as timm corrects it.
            Some(1.0 - ((bottom - top) * (right - left)) as f32 / plane as f32)
        } else {
            let lambda = lambda as f32;
            for i in 0..n {
                let partner = &source[(n - 1 - i) * per_image..][..per_image];
                for (v, p) in images[i * per_image..][..per_image].iter_mut().zip(partner) {
                    *v = lambda * *v + (1.0 - lambda) * p;
                }
            }
            Some(lambda)
        }
    }
}

/// timm's `rand_bbox`: a box covering `1 - lambda` of the image, centred uniformly, clipped.
fn cutmix_box(height: usize, width: usize, lambda: f64, rng: &mut impl Rng) -> (usize, usize, usize, usize) {
    let ratio = (1.0 - lambda).sqrt();
    let (cut_h, cut_w) = ((height as f64 * ratio) as usize, (width as f64 * ratio) as usize);
    let (cy, cx) = (rng.random_range(0..height), rng.random_range(0..width));
    let clip = |c: usize, half: usize, side: usize| (c.saturating_sub(half), (c + half).min(side));
    let (top, bottom) = clip(cy, cut_h / 2, height);
    let (left, right) = clip(cx, cut_w / 2, width);
    (top, left, bottom, right)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Two 1-channel 4x4 "images" of constant 0 and 1.
    fn pair() -> Vec<f32> {
        let mut v = vec![0.0; 16];
        v.extend(vec![1.0; 16]);
        v
    }

    #[test]
    fn mixup_blends_with_the_mirrored_image_and_reports_its_weight() {
        let mix = MixConfig { mixup_alpha: 0.4, ..MixConfig::default() };
        let mut images = pair();
        let lambda = mix.apply(&mut images, 2, 4, 4, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
        assert!((0.0..=1.0).contains(&lambda));
        // Image 0 was all 0 and its partner all 1: every value is 1 - lambda.
        assert!(images[..16].iter().all(|&v| (v - (1.0 - lambda)).abs() < 1e-6));
        assert!(images[16..].iter().all(|&v| (v - lambda).abs() < 1e-6));
    }

    #[test]
    fn cutmix_pastes_a_box_whose_area_gives_the_weight() {
        let mix = MixConfig { cutmix_alpha: 1.0, ..MixConfig::default() };
        for seed in 0..20 {
            let mut images = pair();
            let lambda = mix.apply(&mut images, 2, 4, 4, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
            let pasted = images[..16].iter().filter(|&&v| v == 1.0).count();
            assert!(images[..16].iter().all(|&v| v == 0.0 || v == 1.0));
            assert!((lambda - (1.0 - pasted as f32 / 16.0)).abs() < 1e-6, "seed {seed}: {lambda} vs {pasted}");
        }
    }

    #[test]
    fn disabled_or_unlucky_batches_stay_untouched() {
        let mut images = pair();
        assert_eq!(MixConfig::default().apply(&mut images, 2, 4, 4, &mut ChaCha8Rng::seed_from_u64(0)), None);
        let never = MixConfig { mixup_alpha: 1.0, prob: 0.0, ..MixConfig::default() };
        assert_eq!(never.apply(&mut images, 2, 4, 4, &mut ChaCha8Rng::seed_from_u64(0)), None);
        assert_eq!(images, pair());
    }

    #[test]
    fn bad_settings_name_their_key() {
        let bad = MixConfig { cutmix_alpha: -1.0, ..MixConfig::default() };
        assert_eq!(bad.validate().unwrap_err().key, "augment.mix.cutmix_alpha");
        let bad = MixConfig { switch_prob: 2.0, ..MixConfig::default() };
        assert_eq!(bad.validate().unwrap_err().key, "augment.mix.switch_prob");
    }
}
