//! Image classifiers: a registry by name, the shared layers, and one file per family.

pub mod fast_net;
pub mod layers;
pub mod resnet_cifar;
pub mod tutorial_net;

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::Initializer;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
pub use fast_net::{FastNet, FastNetConfig};
pub use resnet_cifar::{BlockKind, ResNet, ResNetConfig};
pub use tutorial_net::TutorialNet;

/// How convolution and linear weights are initialized (PyTorch's `torch.nn.init` names).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WeightInit {
    /// Each layer's own default (PyTorch's: uniform in ±1/sqrt(fan_in)); BatchNorm weight 1, bias 0.
    #[default]
    Default,
    /// Every weight set to `model.init_constant`.
    Constant,
    XavierUniform,
    XavierNormal,
    /// He initialization for ReLU networks (gain sqrt(2), fan_in).
    KaimingUniform,
    KaimingNormal,
}

impl WeightInit {
    /// The burn initializer for conv/linear weights, or `None` for the layer's default.
    pub fn initializer(self, constant: f64) -> Option<Initializer> {
        let relu_gain = std::f64::consts::SQRT_2;
        match self {
            WeightInit::Default => None,
            WeightInit::Constant => Some(Initializer::Constant { value: constant }),
            WeightInit::XavierUniform => Some(Initializer::XavierUniform { gain: 1.0 }),
            WeightInit::XavierNormal => Some(Initializer::XavierNormal { gain: 1.0 }),
            WeightInit::KaimingUniform => Some(Initializer::KaimingUniform { gain: relu_gain, fan_out_only: false }),
            WeightInit::KaimingNormal => Some(Initializer::KaimingNormal { gain: relu_gain, fan_out_only: false }),
        }
    }
}

/// Every classifier ferrovision can train, behind one type so runs, checkpoints and the CLI stay
/// architecture-agnostic.
#[derive(Module, Debug)]
pub enum Classifier {
    TutorialNet(TutorialNet),
    ResNet(ResNet),
    FastNet(FastNet),
}

impl Classifier {
    /// Logits `[batch, classes]` for normalized images `[batch, 3, height, width]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            Classifier::TutorialNet(m) => m.forward(images),
            Classifier::ResNet(m) => m.forward(images),
            Classifier::FastNet(m) => m.forward(images),
        }
    }
}

/// A registered architecture.
pub struct ModelEntry {
    pub name: &'static str,
    pub description: &'static str,
    build: fn(&ModelConfig, usize, &Device) -> Classifier,
}

const REGISTRY: &[ModelEntry] = &[
    ModelEntry {
        name: "fast_net",
        description: "airbench-style 3-stage conv net (32-128-256), fast on CPU; the quick config",
        build: |c, k, d| Classifier::FastNet(FastNetConfig::default().with_overrides(c).init(c, k, d)),
    },
    ModelEntry {
        name: "tutorial_net",
        description: "the PyTorch CIFAR-10 tutorial CNN (LeNet-style)",
        build: |c, k, d| Classifier::TutorialNet(TutorialNet::new(c, k, d)),
    },
    ModelEntry {
        name: "resnet18_cifar",
        description: "ResNet-18 for 32x32 inputs (3x3 stem, no max-pool)",
        build: |c, k, d| Classifier::ResNet(ResNetConfig::resnet18_cifar().with_overrides(c).init(c, k, d)),
    },
    ModelEntry {
        name: "resnet34_cifar",
        description: "ResNet-34 for 32x32 inputs",
        build: |c, k, d| Classifier::ResNet(ResNetConfig::resnet34_cifar().with_overrides(c).init(c, k, d)),
    },
    ModelEntry {
        name: "budget_resnet",
        description: "ResNet under 5M parameters: stem 32, widths 64-128-128-256, blocks 5-4-3-2, 3x3 shortcuts",
        build: |c, k, d| Classifier::ResNet(ResNetConfig::budget_resnet().with_overrides(c).init(c, k, d)),
    },
];

/// Checks a model config before anything is built; the error names the offending key.
pub fn check(config: &ModelConfig) -> Result<(), (String, String)> {
    let key = |k: &str| format!("model.{k}");
    if !names().contains(&config.name.as_str()) {
        return Err((key("name"), format!("unknown model `{}`; expected one of: {}", config.name, names().join(", "))));
    }
    let stages = config.widths.as_ref().map(Vec::len);
    for (name, list) in [("blocks", &config.blocks), ("strides", &config.strides)] {
        if let (Some(list), Some(n)) = (list, stages) {
            if list.len() != n {
                return Err((key(name), format!("expected one entry per stage ({n}, as model.widths), found {}", list.len())));
            }
        }
    }
    let zero = |v: &Option<Vec<usize>>| v.as_ref().is_some_and(|v| v.is_empty() || v.contains(&0));
    for (name, list) in [("widths", &config.widths), ("blocks", &config.blocks), ("strides", &config.strides)] {
        if zero(list) {
            return Err((key(name), "expected a non-empty list of positive numbers".into()));
        }
    }
    if config.kernel_size.is_some_and(|k| k % 2 == 0) || config.shortcut_kernel.is_some_and(|k| k % 2 == 0) {
        return Err((key("kernel_size"), "expected an odd kernel size (1, 3, 5, ...)".into()));
    }
    Ok(())
}

pub fn registry() -> &'static [ModelEntry] {
    REGISTRY
}

pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|e| e.name).collect()
}

/// Builds the model a config names, for `num_classes` classes, on `device`.
pub fn build(config: &ModelConfig, num_classes: usize, device: &Device) -> anyhow::Result<Classifier> {
    let entry = REGISTRY
        .iter()
        .find(|e| e.name == config.name)
        .ok_or_else(|| anyhow::anyhow!("unknown model `{}`; expected one of: {}", config.name, names().join(", ")))?;
    Ok((entry.build)(config, num_classes, device))
}

/// Trainable parameters counted the way torchvision counts them: BatchNorm running statistics are
/// buffers, not parameters (burn visits them like parameters, so they are skipped by name).
pub fn trainable_params<M: Module>(model: &M) -> usize {
    struct Counter {
        path: Vec<String>,
        total: usize,
    }
    impl ModuleVisitor for Counter {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let is_buffer = self.path.last().is_some_and(|n| n.starts_with("running_"));
            if !is_buffer {
                self.total += param.lazy_shape().num_elements();
            }
        }
    }
    let mut counter = Counter { path: Vec::new(), total: 0 };
    model.visit(&mut counter);
    counter.total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(name: &str) -> usize {
        let config = ModelConfig { name: name.into(), ..Default::default() };
        trainable_params(&build(&config, 10, &Device::flex()).unwrap())
    }

    #[test]
    fn parameter_counts_match_the_references() {
        assert_eq!(count("tutorial_net"), 62_006);
        assert_eq!(count("resnet18_cifar"), 11_173_962);
        assert_eq!(count("resnet34_cifar"), 21_282_122);
        assert_eq!(count("budget_resnet"), 4_951_338);
    }

    #[test]
    fn every_model_gives_logits_for_a_batch() {
        let device = Device::flex();
        for entry in registry() {
            let config = ModelConfig { name: entry.name.into(), ..Default::default() };
            let model = build(&config, 7, &device).unwrap();
            let logits = model.forward(Tensor::zeros([2, 3, 32, 32], &device));
            assert_eq!(logits.dims(), [2, 7], "{}", entry.name);
        }
    }

    #[test]
    fn every_init_scheme_builds_and_is_finite() {
        let device = Device::flex();
        for init in [
            WeightInit::Default,
            WeightInit::Constant,
            WeightInit::XavierUniform,
            WeightInit::XavierNormal,
            WeightInit::KaimingUniform,
            WeightInit::KaimingNormal,
        ] {
            let config = ModelConfig { name: "tutorial_net".into(), init, ..Default::default() };
            let model = build(&config, 10, &device).unwrap();
            let out: Vec<f32> = model.forward(Tensor::ones([1, 3, 32, 32], &device)).into_data().try_to_vec::<f32>().unwrap();
            assert!(out.iter().all(|v| v.is_finite()), "{init:?}");
        }
    }
}
