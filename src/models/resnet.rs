//! The ImageNet ResNets as torchvision defines them (ResNet v1.5): a 7x7 stride-2 stem with
//! 3x3/2 max-pooling, four stages of BasicBlocks (18, 34) or Bottlenecks (50) with the stride on
//! the 3x3 conv and 1x1 conv+BN projection shortcuts, global average pooling, a linear head.
//! The residual block is the one of the CIFAR ResNets (`resnet_cifar.rs`).

use burn::module::Module;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, PaddingConfig2d};
use burn::prelude::*;

use super::config::BuildOptions;
use super::layers::{Act, ConvBn, ConvSpec, linear, max_pool_forward};
use super::resnet_cifar::{BlockKind, ResidualBlock};
use super::trace;
use super::{Architecture, Family, Net};

#[derive(Clone, Debug, PartialEq)]
pub struct ImageNetResNetConfig {
    pub block: BlockKind,
    /// Blocks in each of the four stages.
    pub blocks: [usize; 4],
}

impl ImageNetResNetConfig {
    pub fn resnet18() -> Self {
        Self { block: BlockKind::Basic, blocks: [2, 2, 2, 2] }
    }

    pub fn resnet34() -> Self {
        Self { block: BlockKind::Basic, blocks: [3, 4, 6, 3] }
    }

    pub fn resnet50() -> Self {
        Self { block: BlockKind::Bottleneck, blocks: [3, 4, 6, 3] }
    }

    pub fn init(&self, options: &BuildOptions, num_classes: usize, device: &Device) -> ImageNetResNet {
        let init = options.init;
        let mut channels = 64;
        let mut stage = |width: usize, count: usize, stride: usize| -> Vec<ResidualBlock> {
            (0..count)
                .map(|i| {
                    let stride = if i == 0 { stride } else { 1 };
                    let block = ResidualBlock::new(init, self.block, [channels, width], 3, stride, 1, device);
                    channels = width * self.block.expansion();
                    block
                })
                .collect()
        };
        let [n1, n2, n3, n4] = self.blocks;
        let (layer1, layer2, layer3, layer4) = (stage(64, n1, 1), stage(128, n2, 2), stage(256, n3, 2), stage(512, n4, 2));
        ImageNetResNet {
            stem: ConvBn::with(init, [3, 64], ConvSpec::new(7, 2).act(Act::Relu), device),
            maxpool: MaxPool2dConfig::new([3, 3]).with_strides([2, 2]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(),
            layer1,
            layer2,
            layer3,
            layer4,
            avgpool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            // Not in torchvision's ResNet; `model.dropout` (default 0) as for the CIFAR ResNets.
            dropout: DropoutConfig::new(options.dropout).init(),
            fc: linear(init, channels, num_classes, device),
        }
    }
}

/// Field names follow torchvision's (`layer1`..`layer4`, `fc`) so that its state dict maps onto
/// them by a few rules (see `import_module`).
#[derive(Module, Debug)]
pub struct ImageNetResNet {
    stem: ConvBn,
    maxpool: MaxPool2d,
    layer1: Vec<ResidualBlock>,
    layer2: Vec<ResidualBlock>,
    layer3: Vec<ResidualBlock>,
    layer4: Vec<ResidualBlock>,
    avgpool: AdaptiveAvgPool2d,
    dropout: Dropout,
    pub(crate) fc: Linear,
}

impl Family for ImageNetResNet {
    const FIRST_CONV: &'static str = "stem.conv";
    const CLASSIFIER: Option<&'static str> = Some("fc");

    fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = max_pool_forward(&self.maxpool, self.stem.forward(x));
        for block in self.layer1.iter().chain(&self.layer2).chain(&self.layer3).chain(&self.layer4) {
            x = block.forward(x);
        }
        self.avgpool.forward(x).flatten(1, 3)
    }

    fn classify(&self, features: Tensor<2>) -> Tensor<2> {
        trace::linear(&self.fc, self.dropout.forward(features))
    }

    /// Our module path for a torchvision module path: `conv1`/`bn1` are the stem's conv and BN;
    /// inside a block `convK`/`bnK` are `convs.{K-1}.conv`/`.bn` and `downsample.0`/`.1` the
    /// shortcut's conv and BN; `layerN.i` and `fc` keep their names.
    fn import_module(&self, parts: &[&str]) -> Option<String> {
        match parts {
            ["conv1"] => Some("stem.conv".into()),
            ["bn1"] => Some("stem.bn".into()),
            ["fc"] => Some("fc".into()),
            [layer @ ("layer1" | "layer2" | "layer3" | "layer4"), index, inner @ ..] => {
                let inner = match inner {
                    ["downsample", "0"] => "shortcut.conv".to_string(),
                    ["downsample", "1"] => "shortcut.bn".to_string(),
                    [name] => {
                        let (kind, k) = match name.strip_prefix("conv") {
                            Some(k) => ("conv", k),
                            None => ("bn", name.strip_prefix("bn")?),
                        };
                        let k: usize = k.parse().ok()?;
                        format!("convs.{}.{kind}", k.checked_sub(1)?)
                    }
                    _ => return None,
                };
                Some(format!("{layer}.{index}.{inner}"))
            }
            _ => None,
        }
    }

    /// torchvision's `named_children()` with the parts of our model each one owns.
    fn top_level_children(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        vec![
            ("conv1", vec!["stem.conv"]),
            ("bn1", vec!["stem.bn"]),
            ("relu", vec![]),
            ("maxpool", vec![]),
            ("layer1", vec!["layer1"]),
            ("layer2", vec!["layer2"]),
            ("layer3", vec!["layer3"]),
            ("layer4", vec!["layer4"]),
            ("avgpool", vec![]),
            ("fc", vec!["fc"]),
        ]
    }
}

pub fn architectures() -> Vec<Architecture> {
    vec![
        Architecture {
            name: "resnet18",
            description: "torchvision ResNet-18 (ImageNet stem: 7x7/2 conv + max-pool)",
            input_size: 224,
            build: |o, k, d| Net::ImageNetResNet(ImageNetResNetConfig::resnet18().init(o, k, d)),
        },
        Architecture {
            name: "resnet34",
            description: "torchvision ResNet-34",
            input_size: 224,
            build: |o, k, d| Net::ImageNetResNet(ImageNetResNetConfig::resnet34().init(o, k, d)),
        },
        Architecture {
            name: "resnet50",
            description: "torchvision ResNet-50 (v1.5: stride on the 3x3 conv)",
            input_size: 224,
            build: |o, k, d| Net::ImageNetResNet(ImageNetResNetConfig::resnet50().init(o, k, d)),
        },
    ]
}
