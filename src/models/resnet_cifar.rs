//! Configurable residual networks for 32x32 inputs: a 3x3 stem without max-pooling, any number of
//! stages of BasicBlocks or Bottlenecks, global average pooling, optional dropout, a linear head.

use burn::module::Module;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::prelude::*;
use burn::tensor::activation::relu;
use serde::{Deserialize, Serialize};

use super::config::{BuildOptions, ShapeOverrides};
use super::layers::{Act, ConvBn, ConvSpec, Init, linear};
use super::trace;
use super::{Architecture, Family, Net};

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// Two kxk convolutions (ResNet-18/34).
    Basic,
    /// 1x1 reduce, kxk, 1x1 expand to 4x the width (ResNet-50 and deeper).
    Bottleneck,
}

impl BlockKind {
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ResNetConfig {
    pub stem_channels: usize,
    pub widths: Vec<usize>,
    pub blocks: Vec<usize>,
    pub strides: Vec<usize>,
    pub kernel_size: usize,
    /// Kernel of the projection shortcut used where the shape changes (1 or 3).
    pub shortcut_kernel: usize,
    pub block: BlockKind,
}

impl ResNetConfig {
    pub fn resnet18_cifar() -> Self {
        Self::basic(64, vec![64, 128, 256, 512], vec![2, 2, 2, 2], 1)
    }

    pub fn resnet34_cifar() -> Self {
        Self::basic(64, vec![64, 128, 256, 512], vec![3, 4, 6, 3], 1)
    }

    /// The 4.95M-parameter design of the "best ResNet under 5M parameters" study.
    pub fn budget_resnet() -> Self {
        Self::basic(32, vec![64, 128, 128, 256], vec![5, 4, 3, 2], 3)
    }

    fn basic(stem_channels: usize, widths: Vec<usize>, blocks: Vec<usize>, shortcut_kernel: usize) -> Self {
        let strides = (0..widths.len()).map(|i| if i == 0 { 1 } else { 2 }).collect();
        Self { stem_channels, widths, blocks, strides, kernel_size: 3, shortcut_kernel, block: BlockKind::Basic }
    }

    /// The preset with the architecture keys a config sets. Stages added by a longer `widths`
    /// get one block and stride 2 unless `blocks`/`strides` say otherwise.
    pub fn with_overrides(mut self, shape: &ShapeOverrides) -> Self {
        if let Some(widths) = &shape.widths {
            let n = widths.len();
            self.widths = widths.clone();
            self.blocks.resize(n, 1);
            let strides = (0..n).map(|i| self.strides.get(i).copied().unwrap_or(2));
            self.strides = strides.collect();
        }
        self.stem_channels = shape.stem_channels.unwrap_or(self.stem_channels);
        self.blocks = shape.blocks.clone().unwrap_or(self.blocks);
        self.strides = shape.strides.clone().unwrap_or(self.strides);
        self.kernel_size = shape.kernel_size.unwrap_or(self.kernel_size);
        self.shortcut_kernel = shape.shortcut_kernel.unwrap_or(self.shortcut_kernel);
        self.block = shape.block.unwrap_or(self.block);
        self
    }

    pub fn init(&self, options: &BuildOptions, num_classes: usize, device: &Device) -> ResNet {
        let init = options.init;
        let k = self.kernel_size;
        let mut channels = self.stem_channels;
        let mut blocks = Vec::new();
        for ((&width, &count), &stride) in self.widths.iter().zip(&self.blocks).zip(&self.strides) {
            for i in 0..count {
                let stride = if i == 0 { stride } else { 1 };
                let block = ResidualBlock::new(init, self.block, [channels, width], k, stride, self.shortcut_kernel, device);
                blocks.push(block);
                channels = width * self.block.expansion();
            }
        }
        ResNet {
            stem: ConvBn::with(init, [3, self.stem_channels], ConvSpec::new(k, 1).act(Act::Relu), device),
            blocks,
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            dropout: DropoutConfig::new(options.dropout).init(),
            fc: linear(init, channels, num_classes, device),
        }
    }
}

/// `relu(convs(x) + shortcut(x))`, with ReLU between the convs (also the block of the ImageNet
/// ResNets in `resnet.rs`).
#[derive(Module, Debug)]
pub struct ResidualBlock {
    convs: Vec<ConvBn>,
    shortcut: Option<ConvBn>,
}

impl ResidualBlock {
    /// A block from `channels[0]` inputs to `channels[1] * kind.expansion()` outputs, the stride on
    /// the kxk conv (ResNet v1.5), a projection shortcut (kernel `shortcut_kernel`) where the shape changes.
    pub fn new(
        init: Init,
        kind: BlockKind,
        [inputs, width]: [usize; 2],
        k: usize,
        stride: usize,
        shortcut_kernel: usize,
        device: &Device,
    ) -> Self {
        let out = width * kind.expansion();
        let inner = |channels, kernel, stride| ConvBn::with(init, channels, ConvSpec::new(kernel, stride).act(Act::Relu), device);
        let convs = match kind {
            BlockKind::Basic => vec![inner([inputs, width], k, stride), ConvBn::new(init, [width, width], k, 1, device)],
            BlockKind::Bottleneck => {
                vec![inner([inputs, width], 1, 1), inner([width, width], k, stride), ConvBn::new(init, [width, out], 1, 1, device)]
            }
        };
        let shortcut = (stride != 1 || inputs != out).then(|| ConvBn::new(init, [inputs, out], shortcut_kernel, stride, device));
        Self { convs, shortcut }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let identity = match &self.shortcut {
            Some(projection) => projection.forward(x.clone()),
            None => x.clone(),
        };
        // The convs before the last apply their ReLU themselves (`Act::Relu`).
        let y = self.convs.iter().fold(x, |y, conv| conv.forward(y));
        relu(trace::add(y, identity))
    }
}

#[derive(Module, Debug)]
pub struct ResNet {
    stem: ConvBn,
    blocks: Vec<ResidualBlock>,
    pool: AdaptiveAvgPool2d,
    dropout: Dropout,
    fc: Linear,
}

impl Family for ResNet {
    const FIRST_CONV: &'static str = "stem.conv";
    const CLASSIFIER: Option<&'static str> = None;

    fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = self.stem.forward(x);
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.pool.forward(x).flatten(1, 3)
    }

    fn classify(&self, features: Tensor<2>) -> Tensor<2> {
        trace::linear(&self.fc, self.dropout.forward(features))
    }
}

pub fn architectures() -> Vec<Architecture> {
    fn build(preset: ResNetConfig, o: &BuildOptions, k: usize, d: &Device) -> Net {
        Net::ResNet(preset.with_overrides(&o.shape).init(o, k, d))
    }
    vec![
        Architecture {
            name: "resnet18_cifar",
            description: "ResNet-18 for 32x32 inputs (3x3 stem, no max-pool)",
            input_size: 32,
            build: |o, k, d| build(ResNetConfig::resnet18_cifar(), o, k, d),
        },
        Architecture {
            name: "resnet34_cifar",
            description: "ResNet-34 for 32x32 inputs",
            input_size: 32,
            build: |o, k, d| build(ResNetConfig::resnet34_cifar(), o, k, d),
        },
        Architecture {
            name: "budget_resnet",
            description: "ResNet under 5M parameters: stem 32, widths 64-128-128-256, blocks 5-4-3-2, 3x3 shortcuts",
            input_size: 32,
            build: |o, k, d| build(ResNetConfig::budget_resnet(), o, k, d),
        },
    ]
}
