//! The CNN of PyTorch's "Training a classifier" tutorial: two 5x5 convs with max-pooling and three
//! fully connected layers (62,006 parameters for 10 classes).

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

use super::layers::{conv, linear, max_pool_forward};
use super::trace;
use crate::config::ModelConfig;

#[derive(Module, Debug)]
pub struct TutorialNet {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: MaxPool2d,
    fc1: Linear,
    fc2: Linear,
    dropout: Dropout,
    fc3: Linear,
}

impl TutorialNet {
    pub fn new(config: &ModelConfig, num_classes: usize, device: &Device) -> Self {
        // The tutorial's convs are unpadded ("valid"): 32 -> 28 -> 14 -> 10 -> 5.
        let valid = |mut c: Conv2d| {
            c.padding = PaddingConfig2d::Valid;
            c
        };
        Self {
            conv1: valid(conv(config, [3, 6], 5, 1, true, device)),
            conv2: valid(conv(config, [6, 16], 5, 1, true, device)),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            fc1: linear(config, 16 * 5 * 5, 120, device),
            fc2: linear(config, 120, 84, device),
            dropout: DropoutConfig::new(config.dropout).init(),
            fc3: linear(config, 84, num_classes, device),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = max_pool_forward(&self.pool, relu(trace::conv2d(&self.conv1, x)));
        let x = max_pool_forward(&self.pool, relu(trace::conv2d(&self.conv2, x)));
        let x: Tensor<2> = x.flatten(1, 3);
        let x = relu(trace::linear(&self.fc1, x));
        let x = relu(trace::linear(&self.fc2, x));
        trace::linear(&self.fc3, self.dropout.forward(x))
    }
}
