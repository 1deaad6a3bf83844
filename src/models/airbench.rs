//! The airbench94 network (Keller Jordan's CIFAR-10 speed run, arXiv:2404.00498): a frozen 2x2
//! patch-whitening layer (fitted to the training images), then three stages of conv, max-pool,
//! BatchNorm, GELU, conv, BatchNorm, GELU (64-256-256 channels), global max-pooling and a
//! bias-free linear head whose logits are scaled by 1/9. Its BatchNorms learn only their shift
//! (the scale stays 1) and keep 60% of the old running statistics each step (PyTorch momentum 0.4,
//! eps 1e-12). Written from the paper's description; see `configs/cifar10/speedrun94.toml`.

use burn::module::Module;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::prelude::*;

use super::config::{BuildOptions, ShapeOverrides};
use super::fast_net::{Stage, global_max_pool};
use super::layers::{Act, BnParams, linear};
use super::whitening::PatchWhitening;
use super::{Architecture, Family, Net, trace};

#[derive(Clone, Debug, PartialEq)]
pub struct AirbenchConfig {
    /// Side of the whitening layer's patches; it has `2 * 3 * patch^2` filters.
    pub patch: usize,
    /// Width of each stage.
    pub widths: Vec<usize>,
    pub logit_scale: f64,
    pub norm: BnParams,
}

impl Default for AirbenchConfig {
    fn default() -> Self {
        Self { patch: 2, widths: vec![64, 256, 256], logit_scale: 1.0 / 9.0, norm: BnParams { epsilon: 1e-12, momentum: 0.4 } }
    }
}

impl AirbenchConfig {
    pub fn with_overrides(mut self, shape: &ShapeOverrides, bn_momentum: Option<f64>) -> Self {
        self.widths = shape.widths.clone().unwrap_or(self.widths);
        self.norm = self.norm.with_momentum(bn_momentum);
        self
    }

    pub fn init(&self, options: &BuildOptions, num_classes: usize, device: &Device) -> Airbench {
        let whitening = PatchWhitening::new(3, self.patch, device);
        let mut channels = whitening.conv.weight.dims()[0];
        let mut stages = Vec::new();
        for &width in &self.widths {
            let mut stage = Stage::new(options.init, [channels, width], self.norm, device);
            for unit in [&mut stage.first, &mut stage.second] {
                unit.bn.gamma = unit.bn.gamma.clone().set_require_grad(false);
            }
            stages.push(stage);
            channels = width;
        }
        let mut head = linear(options.init, channels, num_classes, device);
        head.bias = None;
        Airbench {
            whitening,
            stages,
            pool: MaxPool2dConfig::new([2, 2]).init(),
            dropout: DropoutConfig::new(options.dropout).init(),
            head,
            logit_scale: self.logit_scale,
        }
    }
}

#[derive(Module, Debug)]
pub struct Airbench {
    whitening: PatchWhitening,
    stages: Vec<Stage>,
    pool: MaxPool2d,
    dropout: Dropout,
    head: Linear,
    logit_scale: f64,
}

impl Family for Airbench {
    const FIRST_CONV: &'static str = "whitening.conv";
    const CLASSIFIER: Option<&'static str> = None;
    const FITS_TO_DATA: bool = true;

    fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = Act::Gelu.apply(self.whitening.forward(x));
        for stage in &self.stages {
            x = stage.forward(x, &self.pool, Act::Gelu);
        }
        global_max_pool(x)
    }

    fn classify(&self, features: Tensor<2>) -> Tensor<2> {
        trace::linear(&self.head, self.dropout.forward(features)).mul_scalar(self.logit_scale)
    }

    fn fit_to_data(mut self, sample: &Tensor<4>) -> anyhow::Result<Self> {
        self.whitening = self.whitening.fit(sample)?;
        Ok(self)
    }
}

pub fn architectures() -> Vec<Architecture> {
    vec![Architecture {
        name: "airbench",
        description: "airbench94's net: 2x2 patch whitening fitted to the data, 3 stages (64-256-256), GELU; the speed-run config",
        input_size: 32,
        build: |o, k, d| Net::Airbench(AirbenchConfig::default().with_overrides(&o.shape, o.bn_momentum).init(o, k, d)),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{ModelConfig, build, param_counts};
    use burn::tensor::Distribution;

    #[test]
    fn the_net_has_airbench94s_shape_and_freezes_what_it_should() {
        let device = Device::flex().autodiff();
        let model = build(&ModelConfig::named("airbench"), 10, &device).unwrap();
        let counts = param_counts(&model);
        // Frozen: the whitening filters (24 x 3 x 2 x 2) and every BatchNorm scale (2 x (64 + 256 + 256)).
        assert_eq!(counts.frozen, 24 * 12 + 2 * (64 + 256 + 256));
        // Trainable: whitening bias, conv weights, BatchNorm shifts, the bias-free head.
        let convs = 24 * 64 * 9 + 64 * 64 * 9 + 64 * 256 * 9 + 256 * 256 * 9 * 3;
        assert_eq!(counts.trainable, 24 + convs + 2 * (64 + 256 + 256) + 256 * 10);
        let x = Tensor::<4>::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        assert_eq!(model.forward(x).dims(), [2, 10]);
    }
}
