//! Optimizers, built from the config with PyTorch's semantics (burn's defaults differ in places).

use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::grad_clipping::GradientClippingConfig;
use burn::grad_clipping::GradientClipping;
use burn::module::ParamGroup;
use burn::optim::{AdamConfig, AdamWConfig, LearningRate, ModuleOptimizer, Optimizer, SgdConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// SGD with momentum (optionally Nesterov) and L2 weight decay.
    #[default]
    Sgd,
    /// Adam with L2 weight decay added to the gradient.
    Adam,
    /// Adam with decoupled weight decay.
    AdamW,
}

/// PyTorch's Adam epsilon (burn's default is 1e-5).
const ADAM_EPSILON: f32 = 1e-8;

/// An optimizer that steps with its learning rate scaled by a constant: the backbone of a
/// fine-tuned model trains at `backbone_lr_scale` times the head's rate.
#[derive(Clone)]
pub struct ScaledLr<O> {
    inner: O,
    scale: f64,
}

impl<O: Optimizer> Optimizer for ScaledLr<O> {
    type State<const D: usize> = O::State<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        self.inner.step(lr * self.scale, tensor, grad, state)
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        O::to_device(state, device)
    }
}

/// The optimizer a config describes. Parameters in `backbone` (when given with a scale other than
/// 1) step at the learning rate times that scale.
pub fn build(config: &TrainConfig, backbone: Option<(ParamGroup, f64)>) -> ModuleOptimizer {
    let optimizer = build_one(config);
    match backbone {
        Some((group, scale)) if scale != 1.0 => {
            let clip = config.grad_clip_norm.map(|n| GradientClipping::Norm(n as f32));
            match config.optimizer {
                OptimizerKind::Sgd => optimizer.with_group(group, ScaledLr { inner: sgd(config).build(), scale }, clip),
                OptimizerKind::Adam => optimizer.with_group(group, ScaledLr { inner: adam(config).build(), scale }, clip),
                OptimizerKind::AdamW => optimizer.with_group(group, ScaledLr { inner: adam_w(config).build(), scale }, clip),
            }
        }
        _ => optimizer,
    }
}

fn build_one(config: &TrainConfig) -> ModuleOptimizer {
    match config.optimizer {
        OptimizerKind::Sgd => sgd(config).init(),
        OptimizerKind::Adam => adam(config).init(),
        OptimizerKind::AdamW => adam_w(config).init(),
    }
}

fn sgd(config: &TrainConfig) -> SgdConfig {
    // burn's momentum dampens by 0.1 by default; PyTorch does not dampen.
    let momentum = (config.momentum > 0.0)
        .then(|| MomentumConfig::new().with_momentum(config.momentum).with_dampening(0.0).with_nesterov(config.nesterov));
    SgdConfig::new().with_momentum(momentum).with_weight_decay(decay(config)).with_gradient_clipping(clip(config))
}

fn adam(config: &TrainConfig) -> AdamConfig {
    let [beta_1, beta_2] = config.betas.map(|b| b as f32);
    AdamConfig::new()
        .with_beta_1(beta_1)
        .with_beta_2(beta_2)
        .with_epsilon(ADAM_EPSILON)
        .with_weight_decay(decay(config))
        .with_grad_clipping(clip(config))
}

fn adam_w(config: &TrainConfig) -> AdamWConfig {
    let [beta_1, beta_2] = config.betas.map(|b| b as f32);
    AdamWConfig::new()
        .with_beta_1(beta_1)
        .with_beta_2(beta_2)
        .with_epsilon(ADAM_EPSILON)
        .with_weight_decay(config.weight_decay as f32)
        .with_grad_clipping(clip(config))
}

fn decay(config: &TrainConfig) -> Option<WeightDecayConfig> {
    (config.weight_decay > 0.0).then(|| WeightDecayConfig::new(config.weight_decay as f32))
}

fn clip(config: &TrainConfig) -> Option<GradientClippingConfig> {
    config.grad_clip_norm.map(|n| GradientClippingConfig::Norm(n as f32))
}
