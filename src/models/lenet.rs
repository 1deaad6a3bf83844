//! The two LeNet-shaped networks for 32x32 RGB inputs: conv 6@5x5, 2x2 pooling, conv 16@5x5, 2x2
//! pooling, fully connected 120, 84, classes (62,006 parameters for 10 classes).
//! - `lenet5`: LeNet-5 (LeCun et al., 1998) with tanh and average pooling as in the paper. As in
//!   the usual modern rendering, C3 connects to all six input maps (not the paper's partial
//!   connection table), the subsampling layers have no trainable coefficients, and the output
//!   layer is linear (not RBF units). `model.dropout` (default 0) applies before each fully
//!   connected layer.
//! - `tutorial_net`: the CNN of PyTorch's "Training a classifier" tutorial: ReLU and max-pooling;
//!   `model.dropout` applies before the last layer.
//!
//! Both use the reference's module names (`conv1`, `conv2`, `fc1`..`fc3`). Inputs of other sizes
//! (Tiny ImageNet's 64 px) have their last feature maps average-pooled to the 5x5 `fc1` reads.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{AvgPool2dConfig, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::{relu, tanh};
use burn::tensor::module::adaptive_avg_pool2d;

use super::config::BuildOptions;
use super::layers::{conv, linear, max_pool_forward};
use super::{Architecture, Family, Net, trace};

/// Where the two renderings differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeNetStyle {
    /// tanh, average pooling, dropout before every fully connected layer.
    Paper,
    /// ReLU, max-pooling, dropout before the last layer only.
    Tutorial,
}

#[derive(Module, Debug)]
pub struct LeNet {
    conv1: Conv2d,
    conv2: Conv2d,
    dropout: Dropout,
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
    #[module(skip)]
    style: LeNetStyle,
}

impl LeNet {
    pub fn new(style: LeNetStyle, options: &BuildOptions, num_classes: usize, device: &Device) -> Self {
        let init = options.init;
        let valid = |mut c: Conv2d| {
            c.padding = PaddingConfig2d::Valid;
            c
        };
        Self {
            conv1: valid(conv(init, [3, 6], 5, 1, true, device)),
            conv2: valid(conv(init, [6, 16], 5, 1, true, device)),
            dropout: DropoutConfig::new(options.dropout).init(),
            fc1: linear(init, 16 * 5 * 5, 120, device),
            fc2: linear(init, 120, 84, device),
            fc3: linear(init, 84, num_classes, device),
            style,
        }
    }

    fn activate<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self.style {
            LeNetStyle::Paper => tanh(x),
            LeNetStyle::Tutorial => relu(x),
        }
    }

    fn pool(&self, x: Tensor<4>) -> Tensor<4> {
        match self.style {
            LeNetStyle::Paper => AvgPool2dConfig::new([2, 2]).init().forward(x),
            LeNetStyle::Tutorial => max_pool_forward(&MaxPool2dConfig::new([2, 2]).init(), x),
        }
    }

    /// Dropout before a hidden fully connected layer (the paper rendering only).
    fn hidden_dropout(&self, x: Tensor<2>) -> Tensor<2> {
        match self.style {
            LeNetStyle::Paper => self.dropout.forward(x),
            LeNetStyle::Tutorial => x,
        }
    }
}

/// The 5x5 maps `fc1` reads: a 32x32 input gives them as they are; other sizes are average-pooled
/// to 5x5 (as torchvision's VGG pools to the 7x7 its classifier reads).
fn fit_feature_map(x: Tensor<4>) -> Tensor<4> {
    let [_, _, height, width] = x.dims();
    if [height, width] == [5, 5] { x } else { adaptive_avg_pool2d(x, [5, 5]) }
}

impl Family for LeNet {
    const FIRST_CONV: &'static str = "conv1";
    const CLASSIFIER: Option<&'static str> = Some("fc3");

    fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.pool(self.activate(trace::conv2d(&self.conv1, x)));
        let x = self.pool(self.activate(trace::conv2d(&self.conv2, x)));
        let x: Tensor<2> = fit_feature_map(x).flatten(1, 3);
        let x = self.activate(trace::linear(&self.fc1, self.hidden_dropout(x)));
        self.activate(trace::linear(&self.fc2, self.hidden_dropout(x)))
    }

    fn classify(&self, features: Tensor<2>) -> Tensor<2> {
        trace::linear(&self.fc3, self.dropout.forward(features))
    }

    fn import_module(&self, parts: &[&str]) -> Option<String> {
        match parts {
            [name @ ("conv1" | "conv2" | "fc1" | "fc2" | "fc3")] => Some(name.to_string()),
            _ => None,
        }
    }

    fn top_level_children(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        ["conv1", "conv2", "fc1", "fc2", "fc3"].into_iter().map(|name| (name, vec![name])).collect()
    }
}

pub fn lenet5_architectures() -> Vec<Architecture> {
    vec![Architecture {
        name: "lenet5",
        description: "LeNet-5 for 32x32 RGB: tanh, average pooling; model.dropout before each FC layer",
        input_size: 32,
        build: |o, k, d| Net::LeNet5(LeNet::new(LeNetStyle::Paper, o, k, d)),
    }]
}

pub fn tutorial_net_architectures() -> Vec<Architecture> {
    vec![Architecture {
        name: "tutorial_net",
        description: "the PyTorch CIFAR-10 tutorial CNN (LeNet-style)",
        input_size: 32,
        build: |o, k, d| Net::TutorialNet(LeNet::new(LeNetStyle::Tutorial, o, k, d)),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{ModelConfig, build};

    #[test]
    fn other_input_sizes_are_pooled_to_the_maps_fc1_reads() {
        let device = Device::flex();
        for name in ["lenet5", "tutorial_net"] {
            let model = build(&ModelConfig::named(name), 10, &device).unwrap();
            for size in [16, 32, 64, 97] {
                let logits = model.forward(Tensor::ones([2, 3, size, size], &device));
                assert_eq!(logits.dims(), [2, 10], "{name} at {size} px");
            }
        }
    }
}
