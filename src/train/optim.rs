//! Optimizers, built from the config with PyTorch's semantics (burn's defaults differ in places).

use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::grad_clipping::GradientClippingConfig;
use burn::grad_clipping::GradientClipping;
use burn::module::ParamGroup;
use burn::optim::{
    AdamConfig, AdamWConfig, AdaptiveMomentumState, LearningRate, ModuleOptimizer, Optimizer, RmsPropConfig, SgdConfig,
};
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
    /// RMSprop (PyTorch's: `rmsprop_alpha` smoothing, optional `momentum`, L2 weight decay).
    #[serde(rename = "rmsprop")]
    RmsProp,
    /// Adamax, Adam with the infinity norm (PyTorch's, L2 weight decay).
    Adamax,
}

/// PyTorch's epsilon for Adam, RMSprop and Adamax (burn's defaults are 1e-5).
const EPSILON: f32 = 1e-8;

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

/// PyTorch's Adamax (burn has none): `m = b1 m + (1 - b1) g`, `u = max(b2 u, |g| + eps)`,
/// `p -= lr / (1 - b1^t) * m / u`, with L2 weight decay added to the gradient.
#[derive(Clone)]
pub struct Adamax {
    beta_1: f32,
    beta_2: f32,
    weight_decay: f32,
}

impl Optimizer for Adamax {
    /// Step count, first moment, infinity norm.
    type State<const D: usize> = AdaptiveMomentumState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let grad = if self.weight_decay > 0.0 { grad + tensor.clone() * self.weight_decay } else { grad };
        let magnitude = grad.clone().abs() + EPSILON;
        let (time, moment, norm) = match state {
            Some(s) => (s.time + 1, s.moment_1 * self.beta_1 + grad * (1.0 - self.beta_1), (s.moment_2 * self.beta_2).max_pair(magnitude)),
            None => (1, grad * (1.0 - self.beta_1), magnitude),
        };
        let step_size = lr / (1.0 - (self.beta_1 as f64).powi(time as i32));
        let update = moment.clone() / norm.clone() * step_size;
        (tensor - update, Some(AdaptiveMomentumState::new(time, moment, norm)))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.to_device(device)
    }
}

/// The optimizer a config describes. Parameters in `backbone` (when given with a scale other than
/// 1) step at the learning rate times that scale.
pub fn build(config: &TrainConfig, backbone: Option<(ParamGroup, f64)>) -> ModuleOptimizer {
    let [beta_1, beta_2] = config.betas.map(|b| b as f32);
    let decay = (config.weight_decay > 0.0).then(|| WeightDecayConfig::new(config.weight_decay as f32));
    let optimizer = match config.optimizer {
        OptimizerKind::Sgd => {
            // burn's momentum dampens by 0.1 by default; PyTorch does not dampen.
            let momentum = (config.momentum > 0.0).then(|| {
                MomentumConfig::new().with_momentum(config.momentum).with_dampening(0.0).with_nesterov(config.nesterov)
            });
            assemble(SgdConfig::new().with_momentum(momentum).with_weight_decay(decay).build(), config, backbone)
        }
        OptimizerKind::Adam => assemble(
            AdamConfig::new().with_beta_1(beta_1).with_beta_2(beta_2).with_epsilon(EPSILON).with_weight_decay(decay).build(),
            config,
            backbone,
        ),
        OptimizerKind::AdamW => assemble(
            AdamWConfig::new()
                .with_beta_1(beta_1)
                .with_beta_2(beta_2)
                .with_epsilon(EPSILON)
                .with_weight_decay(config.weight_decay as f32)
                .build(),
            config,
            backbone,
        ),
        OptimizerKind::RmsProp => assemble(
            RmsPropConfig::new()
                .with_alpha(config.rmsprop_alpha as f32)
                .with_momentum(config.momentum as f32)
                .with_epsilon(EPSILON)
                .with_weight_decay(decay)
                .build(),
            config,
            backbone,
        ),
        OptimizerKind::Adamax => {
            assemble(Adamax { beta_1, beta_2, weight_decay: config.weight_decay as f32 }, config, backbone)
        }
    };
    match config.grad_clip_norm {
        Some(norm) => optimizer.with_grad_clipping(GradientClippingConfig::Norm(norm as f32).init()),
        None => optimizer,
    }
}

/// The whole-module optimizer, plus the backbone group at a scaled learning rate.
fn assemble<O: Optimizer>(optimizer: O, config: &TrainConfig, backbone: Option<(ParamGroup, f64)>) -> ModuleOptimizer {
    let all = ModuleOptimizer::from(optimizer.clone());
    match backbone {
        Some((group, scale)) if scale != 1.0 => {
            let clip = config.grad_clip_norm.map(|n| GradientClipping::Norm(n as f32));
            all.with_group(group, ScaledLr { inner: optimizer, scale }, clip)
        }
        _ => all,
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::GradientsParams;
    use burn::tensor::TensorData;

    /// One parameter `w = [1, -2]` (a 2x1 bias-free Linear) and the gradient of `sum(w * g)`.
    fn steps(config: &TrainConfig, g: [f32; 2], n: usize) -> Vec<f32> {
        let device = Device::flex().autodiff();
        let mut layer: Linear = LinearConfig::new(2, 1).with_bias(false).init(&device);
        layer.weight = Param::from_tensor(Tensor::from_data(TensorData::new(vec![1.0f32, -2.0], [2, 1]), &device));
        let mut optimizer = build(config, None);
        for _ in 0..n {
            let loss = (layer.weight.val() * Tensor::<2>::from_data(TensorData::new(g.to_vec(), [2, 1]), &device)).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &layer);
            layer = optimizer.step(config.lr, layer, grads);
        }
        layer.weight.val().into_data().try_to_vec::<f32>().unwrap()
    }

    fn close(a: &[f32], b: &[f64]) -> bool {
        a.iter().zip(b).all(|(x, y)| (*x as f64 - y).abs() < 1e-5)
    }

    #[test]
    fn adamax_follows_pytorch() {
        let config = TrainConfig { optimizer: OptimizerKind::Adamax, lr: 0.1, weight_decay: 0.0, ..Default::default() };
        // Two steps with a constant gradient g: m1 = 0.1 g, u1 = |g|; m2 = 0.19 g, u2 = max(0.999|g|, |g|) = |g|.
        // Step sizes lr/(1-0.9) and lr/(1-0.81): each step moves by lr * sign(g).
        let w = steps(&config, [0.5, -3.0], 2);
        assert!(close(&w, &[1.0 - 0.2, -2.0 + 0.2]), "{w:?}");
    }

    #[test]
    fn rmsprop_follows_pytorch_without_momentum() {
        let config = TrainConfig {
            optimizer: OptimizerKind::RmsProp,
            lr: 0.01,
            momentum: 0.0,
            weight_decay: 0.0,
            ..Default::default()
        };
        // v = 0.01 g^2, so the step is lr * g / (0.1 |g| + eps) = 0.1 * sign(g).
        let w = steps(&config, [2.0, -0.5], 1);
        assert!(close(&w, &[1.0 - 0.1, -2.0 + 0.1]), "{w:?}");
    }

    #[test]
    fn sgd_momentum_does_not_dampen() {
        let config = TrainConfig { optimizer: OptimizerKind::Sgd, lr: 0.1, momentum: 0.9, weight_decay: 0.0, ..Default::default() };
        // PyTorch: buf1 = g, buf2 = 0.9 g + g = 1.9 g; total move = 0.1 * 2.9 g.
        let w = steps(&config, [1.0, 1.0], 2);
        assert!(close(&w, &[1.0 - 0.29, -2.0 - 0.29]), "{w:?}");
    }
}
