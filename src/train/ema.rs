//! Model EMA (timm's `ModelEmaV2`): after every optimizer step, every float tensor of the averaged
//! copy (weights and BatchNorm statistics) moves toward the trained model's:
//! `ema = decay * ema + (1 - decay) * live`. Validation, checkpoints and the test then use the
//! average, which is usually smoother and better at the end of training.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;

use crate::models::Classifier;

pub struct ModelEma {
    /// The averaged model, outside autodiff.
    pub model: Classifier,
    decay: f64,
}

/// Every float tensor of a model by parameter id, flattened.
struct Collect(HashMap<ParamId, Tensor<1>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val();
        let n = tensor.shape().num_elements();
        self.0.insert(param.id, tensor.reshape([n]));
    }
}

/// Moves each float tensor toward the collected one with the same id.
struct Blend {
    live: HashMap<ParamId, Tensor<1>>,
    decay: f32,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(live) = self.live.remove(&param.id) else { return param };
        let decay = self.decay;
        param.map(|ema| {
            let live = live.reshape(ema.dims());
            ema * decay + live * (1.0 - decay)
        })
    }
}

impl ModelEma {
    pub fn new(model: &Classifier, decay: f64) -> Self {
        Self { model: model.valid(), decay }
    }

    /// One averaging step toward `live` (the model being trained).
    pub fn update(&mut self, live: &Classifier) {
        let mut collect = Collect(HashMap::new());
        live.valid().visit(&mut collect);
        let mut blend = Blend { live: collect.0, decay: self.decay as f32 };
        self.model = self.model.clone().map(&mut blend);
    }
}

/// The weights being trained and, with model EMA, their average. Which of them is validated,
/// checkpointed and tested is decided here alone.
pub struct Weights {
    /// The model the optimizer steps (on the autodiff device).
    pub live: Classifier,
    pub ema: Option<ModelEma>,
}

impl Weights {
    pub fn new(live: Classifier, ema_decay: Option<f64>) -> Self {
        let ema = ema_decay.map(|decay| ModelEma::new(&live, decay));
        Self { live, ema }
    }

    /// One optimizer step of the live weights, which the average then follows.
    pub fn step(self, optimizer: &mut ModuleOptimizer, lr: f64, grads: GradientsParams) -> Self {
        let live = optimizer.step(lr, self.live, grads);
        let mut ema = self.ema;
        if let Some(ema) = &mut ema {
            ema.update(&live);
        }
        Self { live, ema }
    }

    /// What is validated, checkpointed and tested: the average with model EMA, else the live weights.
    pub fn evaluated(&self) -> Classifier {
        self.ema.as_ref().map_or_else(|| self.live.valid(), |ema| ema.model.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models;
    use crate::models::ModelConfig;
    use crate::train::config::TrainConfig;
    use crate::train::{forward_backward, loss, optim, step_once};
    use burn::tensor::Distribution;

    fn outputs(model: &Classifier, images: &Tensor<4>) -> Vec<f32> {
        model.forward(images.clone()).into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn the_average_follows_its_decay() {
        let device = Device::flex().autodiff();
        device.seed(3);
        // A model with BatchNorm, so the running statistics are averaged too.
        let mut model = models::build(&ModelConfig { name: "fast_net".into(), ..Default::default() }, 10, &device).unwrap();
        let mut optimizer = optim::build(&TrainConfig::default(), &[]);
        let (mut frozen, mut follower) = (ModelEma::new(&model, 1.0), ModelEma::new(&model, 0.0));
        let mut half = ModelEma::new(&model, 0.5);
        let start = model.valid();
        let images = Tensor::<4>::random([8, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        let targets = loss::smoothed_targets(&[0, 1, 2, 3, 4, 5, 6, 7], 10, 0.0, &device);
        (model, _, _) = step_once(model, &mut optimizer, images.clone(), targets, 0.1);
        for ema in [&mut frozen, &mut follower, &mut half] {
            ema.update(&model);
        }
        let probe = Tensor::<4>::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &Device::flex());
        let live = model.valid();
        // decay 1 keeps the start, decay 0 copies the live model (weights and BatchNorm statistics).
        assert_eq!(outputs(&frozen.model, &probe), outputs(&start, &probe));
        assert_eq!(outputs(&follower.model, &probe), outputs(&live, &probe));
        let (a, b, c) = (outputs(&start, &probe), outputs(&live, &probe), outputs(&half.model, &probe));
        assert!(c != a && c != b, "halfway is neither end");
    }

    #[test]
    fn the_evaluated_weights_are_the_average_when_there_is_one() {
        let device = Device::flex().autodiff();
        device.seed(4);
        let model = models::build(&ModelConfig::default(), 10, &device).unwrap();
        let start = model.valid();
        let images = Tensor::<4>::random([4, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        let targets = loss::smoothed_targets(&[0, 1, 2, 3], 10, 0.0, &device);
        let step = |weights: Weights| {
            let (grads, _, _) = forward_backward(&weights.live, images.clone(), targets.clone(), 1.0);
            weights.step(&mut optim::build(&TrainConfig::default(), &[]), 0.1, grads)
        };
        // Both made before either steps: a step's forward pass moves the BatchNorm statistics the clones share.
        let (plain, averaged) = (Weights::new(model.clone(), None), Weights::new(model, Some(1.0)));
        let (plain, averaged) = (step(plain), step(averaged));
        let probe = Tensor::<4>::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &Device::flex());
        // Without EMA the live weights; with it (decay 1) the average, still at the start.
        assert_eq!(outputs(&plain.evaluated(), &probe), outputs(&plain.live.valid(), &probe));
        assert_eq!(outputs(&averaged.evaluated(), &probe), outputs(&start, &probe));
        assert_ne!(outputs(&averaged.evaluated(), &probe), outputs(&averaged.live.valid(), &probe));
    }
}
