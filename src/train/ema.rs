//! Averaged weights. Model EMA (timm's `ModelEmaV2`): after every optimizer step, every float
//! tensor of the averaged copy (weights and BatchNorm statistics) moves toward the trained
//! model's, `ema = decay * ema + (1 - decay) * live`; validation, checkpoints and the test then use
//! the average. Lookahead (Zhang et al. 2019, in airbench's form): every `steps` optimizer steps
//! the average moves toward the live weights and the live weights are reset to it, with a decay
//! that can ramp up over the run; after the last step the live weights are the average.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;

use super::config::LookaheadConfig;
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
        self.update_with(live, self.decay);
    }

    fn update_with(&mut self, live: &Classifier, decay: f64) {
        let mut collect = Collect(HashMap::new());
        live.valid().visit(&mut collect);
        let mut blend = Blend { live: collect.0, decay: decay as f32 };
        self.model = self.model.clone().map(&mut blend);
    }
}

/// Sets each float tensor of a model on the autodiff device to the collected one with the same
/// id, keeping whether it is trained.
struct Assign(HashMap<ParamId, Tensor<1>>);

impl ModuleMapper for Assign {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(value) = self.0.remove(&param.id) else { return param };
        param.map(|old| {
            let new = value.reshape(old.dims());
            let new = if old.is_autodiff() { new.autodiff() } else { new };
            if old.is_require_grad() { new.require_grad() } else { new }
        })
    }
}

/// `live` with every float tensor replaced by `average`'s.
fn assign(live: Classifier, average: &Classifier) -> Classifier {
    let mut collect = Collect(HashMap::new());
    average.visit(&mut collect);
    live.map(&mut Assign(collect.0))
}

/// How the averaged copy is used: model EMA observes, lookahead pulls the live weights back.
enum Averaging {
    Ema,
    Lookahead { config: LookaheadConfig, total_steps: usize },
}

/// The weights being trained and, with model EMA or lookahead, their average. Which of them is
/// validated, checkpointed and tested is decided here alone.
pub struct Weights {
    /// The model the optimizer steps (on the autodiff device).
    pub live: Classifier,
    pub ema: Option<ModelEma>,
    averaging: Averaging,
}

impl Weights {
    pub fn new(live: Classifier, ema_decay: Option<f64>) -> Self {
        let ema = ema_decay.map(|decay| ModelEma::new(&live, decay));
        Self { live, ema, averaging: Averaging::Ema }
    }

    /// Weights trained with lookahead over a run of `total_steps` optimizer steps.
    pub fn with_lookahead(live: Classifier, config: LookaheadConfig, total_steps: usize) -> Self {
        let ema = Some(ModelEma::new(&live, config.decay));
        Self { live, ema, averaging: Averaging::Lookahead { config, total_steps } }
    }

    /// Optimizer step `step` (1-based) of the live weights, which the average then follows.
    pub fn step(self, optimizer: &mut ModuleOptimizer, lr: f64, grads: GradientsParams, step: usize) -> Self {
        let mut live = optimizer.step(lr, self.live, grads);
        let mut ema = self.ema;
        match (&mut ema, &self.averaging) {
            (Some(ema), Averaging::Ema) => ema.update(&live),
            (Some(average), Averaging::Lookahead { config, total_steps }) => {
                if step >= *total_steps {
                    live = assign(live, &average.model);
                } else if step.is_multiple_of(config.steps) {
                    average.update_with(&live, config.decay_at(step, *total_steps));
                    live = assign(live, &average.model);
                }
            }
            (None, _) => {}
        }
        Self { live, ema, averaging: self.averaging }
    }

    /// What is validated, checkpointed and tested: the average with model EMA, else the live
    /// weights (with lookahead: the latest pull toward the average, the average itself at the end).
    pub fn evaluated(&self) -> Classifier {
        match (&self.ema, &self.averaging) {
            (Some(ema), Averaging::Ema) => ema.model.clone(),
            _ => self.live.valid(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models;
    use crate::models::ModelConfig;
    use crate::train::config::{LookaheadConfig, TrainConfig};
    use crate::train::{MixedPrecision, Precision, forward_backward, loss, optim, step_once};
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
        (model, _, _) = step_once(model, &mut optimizer, images.clone(), targets, 0.1, &mut MixedPrecision::new(Precision::F32));
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
            weights.step(&mut optim::build(&TrainConfig::default(), &[]), 0.1, grads, 1)
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

    /// Every float tensor of a model, flattened, by path.
    fn tensors(model: &Classifier) -> std::collections::BTreeMap<String, Vec<f32>> {
        struct Values(std::collections::BTreeMap<String, Vec<f32>>);
        impl crate::models::params::PathVisitor for Values {
            fn visit_float<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>) {
                self.0.insert(path.to_string(), param.val().into_data().try_to_vec::<f32>().unwrap());
            }
        }
        crate::models::params::visit_with_paths(&model.valid(), Values(Default::default())).0
    }

    #[test]
    fn lookahead_pulls_the_weights_back_to_the_average() {
        let device = Device::flex().autodiff();
        // A new copy for each run (clones would share their BatchNorm running statistics), loaded
        // from one checkpoint (tests running alongside draw from the same device RNG).
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = dir.path().join("start.bpk");
        let build = || models::build(&ModelConfig::default(), 10, &device).unwrap();
        crate::train::callbacks::save_checkpoint(&build(), &checkpoint).unwrap();
        let model = || crate::train::callbacks::load_checkpoint(build(), &checkpoint).unwrap();
        let images = Tensor::<4>::random([4, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        let targets = loss::smoothed_targets(&[0, 1, 2, 3], 10, 0.0, &device);
        // Plain SGD (no momentum, no decay): a step depends on the weights alone.
        let train = TrainConfig { momentum: 0.0, weight_decay: 0.0, ..Default::default() };
        let run = |mut weights: Weights, steps: usize| {
            let mut optimizer = optim::build(&train, &[]);
            for step in 1..=steps {
                let (grads, _, _) = forward_backward(&weights.live, images.clone(), targets.clone(), 1.0);
                weights = weights.step(&mut optimizer, 0.1, grads, step);
            }
            weights
        };
        let start = tensors(&model());
        let plain = tensors(&run(Weights::new(model(), None), 2).live);
        // Every 2 steps with decay 0.5: after step 2 the weights are halfway between the start and
        // where two plain steps lead, BatchNorm statistics included.
        let lookahead = LookaheadConfig { steps: 2, decay: 0.5, ramp_power: 0.0 };
        let pulled = tensors(&run(Weights::with_lookahead(model(), lookahead, 10), 2).live);
        for (path, values) in &pulled {
            for ((v, a), b) in values.iter().zip(&start[path]).zip(&plain[path]) {
                assert!((v - (0.5 * a + 0.5 * b)).abs() < 1e-6, "{path}: {v} vs the mean of {a} and {b}");
            }
        }
        // The run's last step ends at the average: a third step (of 3) is dropped for it.
        let ended = tensors(&run(Weights::with_lookahead(model(), lookahead, 3), 3).live);
        for (path, values) in &ended {
            assert_eq!(values, &pulled[path], "{path}");
        }
        // Decay 0 with no ramp is plain training.
        let off = LookaheadConfig { steps: 1, decay: 0.0, ramp_power: 0.0 };
        assert_eq!(tensors(&run(Weights::with_lookahead(model(), off, 10), 2).live), plain);
        // airbench94's ramp: 0.95^5 * (step / total)^3.
        let ramp = LookaheadConfig { steps: 5, decay: 0.95f64.powi(5), ramp_power: 3.0 };
        assert!((ramp.decay_at(240, 480) - 0.95f64.powi(5) / 8.0).abs() < 1e-12);
    }
}
