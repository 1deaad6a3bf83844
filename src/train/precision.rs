//! `train.precision`: mixed-precision training, as PyTorch's autocast + GradScaler do it. The
//! weights stay f32 (the optimizer updates them, and their state, in f32); each training step
//! runs the network in f16 or bf16: the images enter in that type, convolutions and linear layers
//! compute with their weights cast to it, BatchNorm computes in f32 (its statistics stay f32),
//! and the logits return to f32 for the loss. The casts are part of the autodiff graph, so the
//! gradients reach the f32 weights in f32. f16 overflows where bf16 does not: its loss is scaled
//! up before the backward pass and the gradients scaled down again, with the scale adjusted as
//! PyTorch's `GradScaler` does.

use std::fmt;

use anyhow::{Result, bail};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::DType;
use serde::{Deserialize, Serialize};

use crate::models::Classifier;

/// The floating-point type of the training step's computations (`train.precision`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    F32,
    /// IEEE half precision, with loss scaling.
    F16,
    /// bfloat16: f32's range, 8 bits of mantissa; no loss scaling.
    Bf16,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!("unknown precision `{other}`: expected f32, f16 or bf16")),
        }
    }
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// An error naming the device (`device_name`, as `--device` names it) when it cannot
    /// compute in this precision.
    pub fn check(self, device: &Device, device_name: &str) -> Result<()> {
        if self != Precision::F32 && !device.supports_dtype(self.dtype()) {
            bail!("device `{device_name}` cannot compute in {self}: use precision f32");
        }
        Ok(())
    }

    /// The logits of `model` for `images` (f32), the network computing in this precision.
    pub fn logits(self, model: &Classifier, images: Tensor<4>) -> Tensor<2> {
        match self {
            Precision::F32 => model.forward(images),
            _ => model.forward(images.cast(self.dtype())).cast(DType::F32),
        }
    }

    /// The logits of `model` from the outputs of its part before `cut` (see `Classifier::forward_from`).
    pub fn logits_from(self, model: &Classifier, x: Tensor<2>, cut: crate::models::Cut) -> Tensor<2> {
        match self {
            Precision::F32 => model.forward_from(x, cut),
            _ => model.forward_from(x.cast(self.dtype()), cut).cast(DType::F32),
        }
    }
}

/// A precision with the loss scaler it needs: what every training step consults.
#[derive(Clone, Debug, PartialEq)]
pub struct MixedPrecision {
    pub precision: Precision,
    scaler: Option<LossScaler>,
}

impl MixedPrecision {
    pub fn new(precision: Precision) -> Self {
        Self { precision, scaler: LossScaler::for_precision(precision) }
    }

    /// What the loss is multiplied by before the backward pass.
    pub fn loss_scale(&self) -> f32 {
        self.scaler.as_ref().map_or(1.0, LossScaler::scale)
    }

    /// Undoes [`Self::loss_scale`] on `grads`; false when the step must be skipped (f16 overflow).
    pub fn unscale(&mut self, grads: &mut GradientsParams, model: &Classifier) -> bool {
        self.scaler.as_mut().is_none_or(|scaler| scaler.unscale(grads, model))
    }
}

/// Dynamic loss scaling for f16 (the defaults of PyTorch's `GradScaler`): the loss is multiplied
/// by `scale` before the backward pass; a step whose gradients hold an infinity or NaN is skipped
/// and the scale halved; after `GROWTH_INTERVAL` steps in a row without, it doubles.
#[derive(Clone, Debug, PartialEq)]
pub struct LossScaler {
    scale: f32,
    good_steps: usize,
}

impl LossScaler {
    const INITIAL: f32 = 65536.0;
    const GROWTH_INTERVAL: usize = 2000;

    /// The scaler a precision needs: only f16 has one.
    pub fn for_precision(precision: Precision) -> Option<Self> {
        (precision == Precision::F16).then_some(Self { scale: Self::INITIAL, good_steps: 0 })
    }

    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// Divides `grads` (of a loss multiplied by `scale`) by the scale. Returns false, and halves
    /// the scale, when they hold an infinity or NaN: the step must then be skipped.
    pub fn unscale(&mut self, grads: &mut GradientsParams, model: &Classifier) -> bool {
        struct Unscale<'a> {
            grads: &'a mut GradientsParams,
            factor: f32,
            /// Sum of every gradient's sum: infinite or NaN exactly when one element is.
            total: Option<Tensor<1>>,
        }
        impl ModuleVisitor for Unscale<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let Some(grad) = self.grads.remove::<D>(param.id) else { return };
                let grad = grad.mul_scalar(self.factor);
                let sum = grad.clone().sum().reshape([1]);
                self.total = Some(match self.total.take() {
                    Some(total) => total + sum,
                    None => sum,
                });
                self.grads.register(param.id, grad);
            }
        }
        let mut visitor = Unscale { grads, factor: 1.0 / self.scale, total: None };
        model.visit(&mut visitor);
        let finite = visitor.total.is_none_or(|total| total.into_scalar::<f32>().is_finite());
        if finite {
            self.good_steps += 1;
            if self.good_steps == Self::GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale /= 2.0;
            self.good_steps = 0;
        }
        finite
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{ModelConfig, build};
    use crate::train::config::TrainConfig;
    use crate::train::test_support::{batch, cosine, gradient_values, small_resnet};
    use crate::train::{backward, optim, step_once};

    /// The gradients of a step in `precision`, skipping overflowing f16 steps as training does.
    fn reduced_step(model: &Classifier, images: &Tensor<4>, targets: &Tensor<2>, precision: Precision) -> (Vec<f32>, GradientsParams) {
        let mut mixed = MixedPrecision::new(precision);
        loop {
            let logits = precision.logits(model, images.clone());
            assert_eq!(logits.dtype(), DType::F32, "{precision}");
            let values = logits.clone().into_data().try_to_vec::<f32>().unwrap();
            let (mut grads, loss, _) = backward(model, logits, targets.clone(), mixed.loss_scale());
            assert!(loss.into_scalar::<f32>().is_finite(), "{precision}");
            if mixed.unscale(&mut grads, model) {
                return (values, grads);
            }
            assert!(mixed.loss_scale() >= 1.0, "{precision}: overflows at every scale");
        }
    }

    /// A step in f16 or bf16 gives f32 logits and an f32 gradient for every parameter, both
    /// pointing where the f32 step's do (cosine similarity above 0.99).
    #[test]
    fn reduced_precision_steps_follow_the_f32_step() {
        let device = Device::flex().autodiff();
        let (model, (images, targets, _)) = (small_resnet(&device), batch(&device));
        let reference_logits = Precision::F32.logits(&model, images.clone());
        let reference_values = reference_logits.clone().into_data().try_to_vec::<f32>().unwrap();
        let (reference, count) = gradient_values(&backward(&model, reference_logits, targets.clone(), 1.0).0, &model);
        for precision in [Precision::F16, Precision::Bf16] {
            let (logits, grads) = reduced_step(&model, &images, &targets, precision);
            let logits_cosine = cosine(&logits, &reference_values);
            assert!(logits_cosine > 0.99, "{precision}: logits' cosine similarity {logits_cosine}");
            let (got, got_count) = gradient_values(&grads, &model);
            assert_eq!(got_count, count, "{precision}: every parameter has a gradient");
            let gradient_cosine = cosine(&got, &reference);
            assert!(gradient_cosine > 0.99, "{precision}: gradients' cosine similarity {gradient_cosine}");
        }
    }

    /// The casts reach every layer kind of the depthwise families (depthwise convs, ReLU6,
    /// dropout, squeeze-excite gates, SiLU, stochastic depth): every parameter gets a finite
    /// gradient.
    #[test]
    fn depthwise_families_step_in_reduced_precision() {
        let device = Device::flex().autodiff();
        let (images, targets, _) = batch(&device);
        for name in ["mobilenet_v2", "efficientnet_b0"] {
            let model = build(&ModelConfig::named(name), 10, &device).unwrap();
            let count = gradient_values(&backward(&model, model.forward(images.clone()), targets.clone(), 1.0).0, &model).1;
            for precision in [Precision::F16, Precision::Bf16] {
                let (got, got_count) = gradient_values(&reduced_step(&model, &images, &targets, precision).1, &model);
                assert_eq!(got_count, count, "{name} {precision}: every parameter has a gradient");
                assert!(got.iter().all(|g| g.is_finite()), "{name} {precision}");
            }
        }
    }

    /// Mixed-precision training learns: one batch of random labels is fitted in either type.
    #[test]
    fn reduced_precision_training_fits_a_batch() {
        for precision in [Precision::F16, Precision::Bf16] {
            let device = Device::flex().autodiff();
            let (mut model, (images, targets, labels)) = (small_resnet(&device), batch(&device));
            let config = TrainConfig { optimizer: optim::OptimizerKind::Adam, weight_decay: 0.0, ..Default::default() };
            let (mut optimizer, mut mixed) = (optim::build(&config, &[]), MixedPrecision::new(precision));
            let mut last = (f32::INFINITY, 0);
            for _ in 0..40 {
                let (next, loss, logits) = step_once(model, &mut optimizer, images.clone(), targets.clone(), 1e-2, &mut mixed);
                model = next;
                let logits = logits.into_data().try_to_vec::<f32>().unwrap();
                last = (loss.into_scalar::<f32>(), crate::train::count_hits(&logits, &labels).top1);
            }
            assert!(last.0 < 0.2 && last.1 == labels.len(), "{precision}: loss {} and {} of 8 right after 40 steps", last.0, last.1);
        }
    }

    /// An overflow skips the step and halves the scale; 2000 good steps in a row double it.
    #[test]
    fn the_loss_scale_backs_off_and_grows() {
        let device = Device::flex().autodiff();
        let (model, (images, targets, _)) = (small_resnet(&device), batch(&device));
        let mut scaler = LossScaler::for_precision(Precision::F16).unwrap();
        assert!(LossScaler::for_precision(Precision::Bf16).is_none());
        let logits = Precision::F16.logits(&model, images);
        let (mut grads, _, _) = backward(&model, logits, targets, f32::MAX);
        assert!(!scaler.unscale(&mut grads, &model), "the loss times f32::MAX overflows");
        assert_eq!(scaler.scale(), 32768.0);
        let mut scaler = LossScaler { scale: 4.0, good_steps: LossScaler::GROWTH_INTERVAL - 1 };
        assert!(scaler.unscale(&mut GradientsParams::new(), &model));
        assert_eq!(scaler.scale(), 8.0);
    }

    #[test]
    fn precisions_parse_and_the_cpu_computes_in_each() {
        for precision in [Precision::F32, Precision::F16, Precision::Bf16] {
            assert_eq!(precision.to_string().parse::<Precision>(), Ok(precision));
            assert!(precision.check(&Device::flex(), "flex").is_ok());
        }
        assert!("fp8".parse::<Precision>().unwrap_err().contains("expected f32, f16 or bf16"));
    }
}
