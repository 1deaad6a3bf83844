//! Optimizers, built from the config with PyTorch's semantics (burn's defaults differ in places).

use burn::grad_clipping::GradientClipping;
use burn::grad_clipping::GradientClippingConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{
    AdamConfig, AdamWConfig, AdaptiveMomentumState, LearningRate, ModuleOptimizer, Optimizer, RecordState, RmsPropConfig, StateSink,
    StateSource, join_path,
};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use super::param_groups::ResolvedGroup;
use crate::kernels::sgd::{SgdStep, momentum_step};

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

/// An optimizer that steps with its learning rate scaled by a constant: a parameter group's
/// `lr_scale`, or a fine-tuned backbone's `backbone_lr_scale`.
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

/// PyTorch's SGD (no dampening; burn's `Sgd` dampens by 0.1 unless told otherwise) with L2
/// weight decay and optional Nesterov momentum, each step one pass over the parameter on flex
/// (`kernels::sgd`).
#[derive(Clone)]
pub struct Sgd {
    momentum: f32,
    nesterov: bool,
    weight_decay: f32,
}

/// The velocity of a parameter under momentum, recorded under the names burn's `SgdState` uses
/// (`momentum.velocity`), so resume states written with burn's optimizer load here.
#[derive(Clone)]
pub struct SgdState<const D: usize> {
    velocity: Option<Tensor<D>>,
}

impl<const D: usize> RecordState for SgdState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        if let Some(velocity) = &self.velocity {
            out.push_tensor(&join_path(prefix, "momentum"), "velocity", velocity.clone().into_data());
        }
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let velocity = src.take_tensor(&join_path(prefix, "momentum"), "velocity").map(|data| Tensor::from_data(data, device));
        Some(SgdState { velocity })
    }
}

impl Optimizer for Sgd {
    type State<const D: usize> = SgdState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        if self.momentum == 0.0 {
            let step = (tensor.clone() * self.weight_decay + grad) * lr;
            return (tensor - step, Some(SgdState { velocity: None }));
        }
        // A first step starts from a zero velocity: `0 * momentum + d` is PyTorch's `v = d`.
        let velocity = state.and_then(|s| s.velocity).unwrap_or_else(|| tensor.zeros_like());
        let step = SgdStep { lr: lr as f32, momentum: self.momentum, weight_decay: self.weight_decay, nesterov: self.nesterov };
        let (tensor, velocity) = momentum_step(tensor, grad, velocity, step);
        (tensor, Some(SgdState { velocity: Some(velocity) }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        SgdState { velocity: state.velocity.map(|v| v.to_device(device)) }
    }
}

/// The optimizer a config describes; each of `groups` (later ones win where they overlap) steps
/// at its own learning-rate scale and weight decay.
pub fn build(config: &TrainConfig, groups: &[ResolvedGroup]) -> ModuleOptimizer {
    let [beta_1, beta_2] = config.betas.map(|b| b as f32);
    let decay = |wd: f32| (wd > 0.0).then(|| WeightDecayConfig::new(wd));
    let optimizer = match config.optimizer {
        OptimizerKind::Sgd => {
            assemble(|weight_decay| Sgd { momentum: config.momentum as f32, nesterov: config.nesterov, weight_decay }, config, groups)
        }
        OptimizerKind::Adam => assemble(
            |wd| AdamConfig::new().with_beta_1(beta_1).with_beta_2(beta_2).with_epsilon(EPSILON).with_weight_decay(decay(wd)).build(),
            config,
            groups,
        ),
        OptimizerKind::AdamW => assemble(
            |wd| AdamWConfig::new().with_beta_1(beta_1).with_beta_2(beta_2).with_epsilon(EPSILON).with_weight_decay(wd).build(),
            config,
            groups,
        ),
        OptimizerKind::RmsProp => assemble(
            |wd| {
                RmsPropConfig::new()
                    .with_alpha(config.rmsprop_alpha as f32)
                    .with_momentum(config.momentum as f32)
                    .with_epsilon(EPSILON)
                    .with_weight_decay(decay(wd))
                    .build()
            },
            config,
            groups,
        ),
        OptimizerKind::Adamax => assemble(|weight_decay| Adamax { beta_1, beta_2, weight_decay }, config, groups),
    };
    match config.grad_clip_norm {
        Some(norm) => optimizer.with_grad_clipping(GradientClippingConfig::Norm(norm as f32).init()),
        None => optimizer,
    }
}

/// The whole-module optimizer (`make` given the config's weight decay), plus one per group at
/// its own rate and decay.
fn assemble<O: Optimizer>(make: impl Fn(f32) -> O, config: &TrainConfig, groups: &[ResolvedGroup]) -> ModuleOptimizer {
    let clip = config.grad_clip_norm.map(|n| GradientClipping::Norm(n as f32));
    groups.iter().fold(ModuleOptimizer::from(make(config.weight_decay as f32)), |all, group| {
        let inner = make(group.weight_decay as f32);
        all.with_group(group.param_group(), ScaledLr { inner, scale: group.lr_scale }, clip.clone())
    })
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
        let mut optimizer = build(config, &[]);
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
        let config = TrainConfig { optimizer: OptimizerKind::RmsProp, lr: 0.01, momentum: 0.0, weight_decay: 0.0, ..Default::default() };
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

    /// One step of `optimizer` on the Linear of `steps` (gradient of `sum(w * g)`).
    fn step_layer(optimizer: &mut ModuleOptimizer, layer: Linear, g: [f32; 2]) -> Linear {
        let device = layer.weight.device();
        let loss = (layer.weight.val() * Tensor::<2>::from_data(TensorData::new(g.to_vec(), [2, 1]), &device)).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &layer);
        optimizer.step(0.1, layer, grads)
    }

    #[test]
    fn sgd_nesterov_with_weight_decay_follows_pytorch() {
        let config = TrainConfig { lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 0.1, ..Default::default() };
        // torch.optim.SGD([w], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1), w = [1, -2],
        // two steps with grad [0.5, -3]: d1 = g + 0.1 w, v1 = d1, w1 = w - 0.1 (d1 + 0.9 v1), ...
        let mut w = [1.0f64, -2.0];
        let mut v = [0.0f64; 2];
        for _ in 0..2 {
            for (i, g) in [0.5, -3.0].into_iter().enumerate() {
                let d = g + 0.1 * w[i];
                v[i] = 0.9 * v[i] + d;
                w[i] -= 0.1 * (d + 0.9 * v[i]);
            }
        }
        assert!(close(&steps(&config, [0.5, -3.0], 2), &w), "{w:?}");
    }

    #[test]
    fn sgd_resumes_from_a_state_burns_sgd_wrote() {
        use burn::optim::SgdConfig;
        use burn::optim::decay::WeightDecayConfig;
        use burn::optim::momentum::MomentumConfig;
        let device = Device::flex().autodiff();
        let layer: Linear = LinearConfig::new(2, 1).with_bias(false).init(&device);
        let momentum = MomentumConfig::new().with_momentum(0.9).with_dampening(0.0).with_nesterov(true);
        let mut burns = SgdConfig::new().with_momentum(Some(momentum)).with_weight_decay(Some(WeightDecayConfig::new(0.01))).init();
        let layer = step_layer(&mut burns, layer, [0.5, -3.0]);
        let config = TrainConfig { momentum: 0.9, nesterov: true, weight_decay: 0.01, ..Default::default() };
        let mut ours = build(&config, &[]).from_bytes(burns.into_bytes().unwrap()).unwrap();
        let expected = step_layer(&mut burns, layer.clone(), [2.0, 1.0]).weight.val().into_data();
        let resumed = step_layer(&mut ours, layer, [2.0, 1.0]).weight.val().into_data();
        resumed.assert_approx_eq::<f32>(&expected, burn::tensor::Tolerance::absolute(1e-6));
    }
}
