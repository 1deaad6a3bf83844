//! VGG as torchvision defines it: stages of 3x3 convs (with bias; BatchNorm after each in the
//! `_bn` variants) and ReLU, each stage closed by 2x2 max-pooling; adaptive average pooling to
//! 7x7; a classifier Linear 25088→4096, ReLU, Dropout, Linear 4096→4096, ReLU, Dropout, Linear.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, Dropout, DropoutConfig, Linear};
use burn::prelude::*;
use burn::tensor::activation::relu;

use super::config::BuildOptions;
use super::layers::{Act, BnParams, conv, linear, max_pool_forward};
use super::trace;
use super::{Architecture, Family, Net};

#[derive(Clone, Debug, PartialEq)]
pub struct VggConfig {
    /// Output channels of the convs of each stage.
    pub stages: Vec<Vec<usize>>,
    pub batch_norm: bool,
    /// Dropout of the classifier (torchvision: 0.5).
    pub dropout: f64,
}

impl VggConfig {
    /// Configuration "D" of the VGG paper: 13 convs in stages of 2, 2, 3, 3, 3.
    pub fn vgg16(batch_norm: bool) -> Self {
        let stage = |width: usize, n: usize| vec![width; n];
        Self { stages: vec![stage(64, 2), stage(128, 2), stage(256, 3), stage(512, 3), stage(512, 3)], batch_norm, dropout: 0.5 }
    }

    pub fn init(&self, options: &BuildOptions, num_classes: usize, device: &Device) -> Vgg {
        let init = options.init;
        let mut channels = 3;
        let features = self
            .stages
            .iter()
            .map(|widths| {
                widths
                    .iter()
                    .map(|&width| {
                        let layer = VggConv {
                            conv: conv(init, [channels, width], 3, 1, true, device),
                            bn: self.batch_norm.then(|| BnParams::TORCH.init(width, device)),
                        };
                        channels = width;
                        layer
                    })
                    .collect()
            })
            .collect();
        let flat = channels * 7 * 7;
        let dropout = if options.dropout > 0.0 { options.dropout } else { self.dropout };
        Vgg {
            features,
            pool: MaxPool2dConfig::new([2, 2]).init(),
            avgpool: AdaptiveAvgPool2dConfig::new([7, 7]).init(),
            classifier: vec![linear(init, flat, 4096, device), linear(init, 4096, 4096, device), linear(init, 4096, num_classes, device)],
            dropout: DropoutConfig::new(dropout).init(),
        }
    }
}

/// A 3x3 conv with bias, optionally BatchNorm; ReLU follows.
#[derive(Module, Debug)]
pub struct VggConv {
    conv: Conv2d,
    bn: Option<BatchNorm>,
}

#[derive(Module, Debug)]
pub struct Vgg {
    /// Convs grouped by stage (a max-pool closes each stage).
    features: Vec<Vec<VggConv>>,
    pool: MaxPool2d,
    avgpool: AdaptiveAvgPool2d,
    /// The three linear layers (torchvision's `classifier.0`, `.3`, `.6`).
    pub(crate) classifier: Vec<Linear>,
    dropout: Dropout,
}

impl Family for Vgg {
    const FIRST_CONV: &'static str = "features.0.0.conv";
    const CLASSIFIER: Option<&'static str> = Some("classifier.2");

    fn features(&self, mut x: Tensor<4>) -> Tensor<2> {
        for stage in &self.features {
            for layer in stage {
                x = trace::conv2d(&layer.conv, x);
                x = match &layer.bn {
                    Some(bn) => trace::batch_norm(bn, x, Act::Relu),
                    None => relu(x),
                };
            }
            x = max_pool_forward(&self.pool, x);
        }
        // Replicates a smaller map (1x1 for 32x32 inputs) up to 7x7, as PyTorch does.
        let mut x: Tensor<2> = self.avgpool.forward(x).flatten(1, 3);
        // The dropout after the last hidden layer belongs to `classify`.
        let (_, hidden) = self.classifier.split_last().expect("a final layer");
        for (i, fc) in hidden.iter().enumerate() {
            if i > 0 {
                x = self.dropout.forward(x);
            }
            x = relu(trace::linear(fc, x));
        }
        x
    }

    fn classify(&self, features: Tensor<2>) -> Tensor<2> {
        let (last, _) = self.classifier.split_last().expect("a final layer");
        trace::linear(last, self.dropout.forward(features))
    }

    /// Our module path for a torchvision module path. `features` is one flat `nn.Sequential`
    /// (conv, [bn,] relu per conv, a max-pool per stage), so its index is walked through our
    /// stages; `classifier.{0,3,6}` are our `classifier.{0,1,2}`.
    fn import_module(&self, parts: &[&str]) -> Option<String> {
        match parts {
            ["features", index] => {
                let mut target: usize = index.parse().ok()?;
                for (s, stage) in self.features.iter().enumerate() {
                    for (j, layer) in stage.iter().enumerate() {
                        let slots = if layer.bn.is_some() { 3 } else { 2 };
                        match target {
                            0 => return Some(format!("features.{s}.{j}.conv")),
                            1 if layer.bn.is_some() => return Some(format!("features.{s}.{j}.bn")),
                            t if t < slots => return None, // the ReLU
                            _ => target -= slots,
                        }
                    }
                    // The stage's max-pool.
                    target = target.checked_sub(1)?;
                }
                None
            }
            ["classifier", index] => {
                let index: usize = index.parse().ok()?;
                (index.is_multiple_of(3) && index / 3 < self.classifier.len()).then(|| format!("classifier.{}", index / 3))
            }
            _ => None,
        }
    }

    fn top_level_children(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        vec![("features", vec!["features"]), ("avgpool", vec![]), ("classifier", vec!["classifier"])]
    }
}

pub fn architectures() -> Vec<Architecture> {
    vec![
        Architecture {
            name: "vgg16",
            description: "torchvision VGG-16 (classifier dropout 0.5, or model.dropout when set)",
            input_size: 224,
            build: |o, k, d| Net::Vgg(VggConfig::vgg16(false).init(o, k, d)),
        },
        Architecture {
            name: "vgg16_bn",
            description: "torchvision VGG-16 with BatchNorm",
            input_size: 224,
            build: |o, k, d| Net::Vgg(VggConfig::vgg16(true).init(o, k, d)),
        },
    ]
}
