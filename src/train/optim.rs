//! Optimizers, built from the config with PyTorch's semantics (burn's defaults differ in places).

use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamConfig, AdamWConfig, ModuleOptimizer, SgdConfig};
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

pub fn build(config: &TrainConfig) -> ModuleOptimizer {
    let decay = (config.weight_decay > 0.0).then(|| WeightDecayConfig::new(config.weight_decay as f32));
    let clip = config.grad_clip_norm.map(|n| GradientClippingConfig::Norm(n as f32));
    let [beta_1, beta_2] = config.betas.map(|b| b as f32);
    match config.optimizer {
        OptimizerKind::Sgd => {
            // burn's momentum dampens by 0.1 by default; PyTorch does not dampen.
            let momentum = (config.momentum > 0.0).then(|| {
                MomentumConfig::new().with_momentum(config.momentum).with_dampening(0.0).with_nesterov(config.nesterov)
            });
            SgdConfig::new().with_momentum(momentum).with_weight_decay(decay).with_gradient_clipping(clip).init()
        }
        OptimizerKind::Adam => AdamConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_epsilon(ADAM_EPSILON)
            .with_weight_decay(decay)
            .with_grad_clipping(clip)
            .init(),
        OptimizerKind::AdamW => AdamWConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_epsilon(ADAM_EPSILON)
            .with_weight_decay(config.weight_decay as f32)
            .with_grad_clipping(clip)
            .init(),
    }
}
