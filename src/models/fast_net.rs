//! A network designed for training speed on a CPU, after the airbench CIFAR-10 speed-run nets:
//! few, wide 3x3 convolutions on small feature maps (GEMM-friendly), max-pooling inside each stage,
//! and a scaled linear head.

use burn::module::Module;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::prelude::*;
use burn::tensor::activation::relu;

use super::config::{BuildOptions, ShapeOverrides};
use super::layers::{Act, BnParams, ConvBn, ConvSpec, Init, linear, max_pool_forward};
use super::trace;
use super::{Architecture, Family, Net};

#[derive(Clone, Debug, PartialEq)]
pub struct FastNetConfig {
    pub stem_channels: usize,
    /// Width of each stage; each stage is conv, max-pool 2x2, conv.
    pub widths: Vec<usize>,
    /// Logits are multiplied by this (a small value keeps early softmax outputs soft).
    pub logit_scale: f64,
}

impl Default for FastNetConfig {
    fn default() -> Self {
        Self { stem_channels: 32, widths: vec![32, 128, 256], logit_scale: 1.0 / 8.0 }
    }
}

impl FastNetConfig {
    pub fn with_overrides(mut self, shape: &ShapeOverrides) -> Self {
        self.stem_channels = shape.stem_channels.unwrap_or(self.stem_channels);
        self.widths = shape.widths.clone().unwrap_or(self.widths);
        self
    }

    pub fn init(&self, options: &BuildOptions, num_classes: usize, device: &Device) -> FastNet {
        let init = options.init;
        let mut channels = self.stem_channels;
        let mut stages = Vec::new();
        for &width in &self.widths {
            stages.push(Stage::new(init, [channels, width], BnParams::TORCH, device));
            channels = width;
        }
        FastNet {
            stem: ConvBn::new(init, [3, self.stem_channels], 3, 1, device),
            stages,
            pool: MaxPool2dConfig::new([2, 2]).init(),
            dropout: DropoutConfig::new(options.dropout).init(),
            head: linear(init, channels, num_classes, device),
            logit_scale: self.logit_scale,
        }
    }
}

/// Conv, max-pool 2x2, BatchNorm, activation, conv, BatchNorm, activation: a stage of the
/// airbench-style nets (`fast_net`, `airbench`).
#[derive(Module, Debug)]
pub struct Stage {
    pub first: ConvBn,
    pub second: ConvBn,
}

impl Stage {
    pub fn new(init: Init, [inputs, width]: [usize; 2], norm: BnParams, device: &Device) -> Self {
        let spec = ConvSpec::new(3, 1).norm(norm);
        Self { first: ConvBn::with(init, [inputs, width], spec, device), second: ConvBn::with(init, [width, width], spec, device) }
    }

    pub fn forward(&self, x: Tensor<4>, pool: &MaxPool2d, act: Act) -> Tensor<4> {
        // Pooling before BatchNorm and the activation computes them on a quarter of the pixels.
        let x = trace::conv2d(&self.first.conv, x);
        let x = trace::batch_norm(&self.first.bn, max_pool_forward(pool, x), act);
        trace::batch_norm(&self.second.bn, trace::conv2d(&self.second.conv, x), act)
    }
}

/// `[batch, channels, h, w]` -> `[batch, channels]`, the maximum over each map.
pub fn global_max_pool(x: Tensor<4>) -> Tensor<2> {
    let x: Tensor<3> = x.flatten(2, 3);
    x.max_dim(2).flatten(1, 2)
}

#[derive(Module, Debug)]
pub struct FastNet {
    stem: ConvBn,
    stages: Vec<Stage>,
    pool: MaxPool2d,
    dropout: Dropout,
    head: Linear,
    logit_scale: f64,
}

impl Family for FastNet {
    const FIRST_CONV: &'static str = "stem.conv";
    const CLASSIFIER: Option<&'static str> = None;

    fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = relu(self.stem.forward(x));
        for stage in &self.stages {
            x = stage.forward(x, &self.pool, Act::Relu);
        }
        // Global max-pooling over the remaining 4x4 map.
        global_max_pool(x)
    }

    fn classify(&self, features: Tensor<2>) -> Tensor<2> {
        trace::linear(&self.head, self.dropout.forward(features)).mul_scalar(self.logit_scale)
    }
}

pub fn architectures() -> Vec<Architecture> {
    vec![Architecture {
        name: "fast_net",
        description: "airbench-style 3-stage conv net (32-128-256), fast on CPU; the quick config",
        input_size: 32,
        build: |o, k, d| Net::FastNet(FastNetConfig::default().with_overrides(&o.shape).init(o, k, d)),
    }]
}
