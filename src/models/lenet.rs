//! LeNet-5 (LeCun et al., 1998) for 32x32 RGB inputs: conv 6@5x5, 2x2 average pooling, conv
//! 16@5x5, 2x2 average pooling, fully connected 120, 84, classes, with tanh activations as in the
//! paper. As in the usual modern rendering, C3 connects to all six input maps (not the paper's
//! partial connection table), the subsampling layers have no trainable coefficients, and the
//! output layer is linear (not RBF units). `model.dropout` (default 0) applies before each fully
//! connected layer.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::tanh;

use super::layers::{conv, linear};
use super::trace;
use crate::config::ModelConfig;

#[derive(Module, Debug)]
pub struct LeNet5 {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: AvgPool2d,
    dropout: Dropout,
    fc1: Linear,
    fc2: Linear,
    pub(crate) fc3: Linear,
}

impl LeNet5 {
    pub fn new(config: &ModelConfig, num_classes: usize, device: &Device) -> Self {
        // Unpadded ("valid") convs: 32 -> 28 -> 14 -> 10 -> 5.
        let valid = |mut c: Conv2d| {
            c.padding = PaddingConfig2d::Valid;
            c
        };
        Self {
            conv1: valid(conv(config, [3, 6], 5, 1, true, device)),
            conv2: valid(conv(config, [6, 16], 5, 1, true, device)),
            pool: AvgPool2dConfig::new([2, 2]).init(),
            dropout: DropoutConfig::new(config.dropout).init(),
            fc1: linear(config, 16 * 5 * 5, 120, device),
            fc2: linear(config, 120, 84, device),
            fc3: linear(config, 84, num_classes, device),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.pool.forward(tanh(trace::conv2d(&self.conv1, x)));
        let x = self.pool.forward(tanh(trace::conv2d(&self.conv2, x)));
        let x: Tensor<2> = x.flatten(1, 3);
        let x = tanh(trace::linear(&self.fc1, self.dropout.forward(x)));
        let x = tanh(trace::linear(&self.fc2, self.dropout.forward(x)));
        trace::linear(&self.fc3, self.dropout.forward(x))
    }

    /// No reference state dict exists; a PyTorch LeNet-5 with the same layer names maps 1:1.
    pub fn import_module(parts: &[&str]) -> Option<String> {
        match parts {
            [name @ ("conv1" | "conv2" | "fc1" | "fc2" | "fc3")] => Some(name.to_string()),
            _ => None,
        }
    }

    pub fn top_level_children() -> Vec<(&'static str, Vec<&'static str>)> {
        ["conv1", "conv2", "fc1", "fc2", "fc3"].into_iter().map(|name| (name, vec![name])).collect()
    }
}
