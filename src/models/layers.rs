//! Layers shared by the model families.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;

use crate::config::ModelConfig;

/// A conv layer with `config.init` applied (bias only where no BatchNorm follows).
pub fn conv(config: &ModelConfig, channels: [usize; 2], kernel: usize, stride: usize, bias: bool, device: &Device) -> Conv2d {
    let pad = kernel / 2;
    let mut c = Conv2dConfig::new(channels, [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(bias);
    if let Some(init) = config.init.initializer(config.init_constant) {
        c = c.with_initializer(init);
    }
    c.init(device)
}

pub fn linear(config: &ModelConfig, inputs: usize, outputs: usize, device: &Device) -> Linear {
    let mut c = LinearConfig::new(inputs, outputs);
    if let Some(init) = config.init.initializer(config.init_constant) {
        c = c.with_initializer(init);
    }
    c.init(device)
}

/// Convolution (no bias) followed by BatchNorm, the unit every CIFAR network is built from.
#[derive(Module, Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

impl ConvBn {
    pub fn new(config: &ModelConfig, channels: [usize; 2], kernel: usize, stride: usize, device: &Device) -> Self {
        Self {
            conv: conv(config, channels, kernel, stride, false, device),
            bn: BatchNormConfig::new(channels[1]).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.bn.forward(self.conv.forward(x))
    }
}
