//! MobileNetV2 as torchvision defines it (width 1.0): a 3x3 stride-2 stem of 32 channels, 17
//! inverted residual blocks with ReLU6, a 1x1 conv to 1280 channels, global average pooling,
//! Dropout 0.2 and a linear head.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::prelude::*;

use super::config::BuildOptions;
use super::layers::{Act, BnParams, ConvBn, ConvSpec, InvertedResidual, InvertedResidualSpec, Padding, linear};
use super::trace;
use super::{Architecture, Family, Net};

/// The paper's table 2: (expansion t, output channels c, repeats n, first stride s) per stage.
const STAGES: [(usize, usize, usize, usize); 7] =
    [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];
const STEM: usize = 32;
const LAST: usize = 1280;

pub fn mobilenet_v2(options: &BuildOptions, num_classes: usize, device: &Device) -> MobileNetV2 {
    let init = options.init;
    let mut channels = STEM;
    let mut blocks = Vec::new();
    for (expand_ratio, outputs, repeats, stride) in STAGES {
        for i in 0..repeats {
            let spec = InvertedResidualSpec {
                inputs: channels,
                outputs,
                expand_ratio,
                kernel: 3,
                stride: if i == 0 { stride } else { 1 },
                se_channels: None,
                act: Act::Relu6,
                padding: Padding::Symmetric,
                norm: BnParams::TORCH,
                drop_path: 0.0,
            };
            blocks.push(InvertedResidual::new(init, &spec, device));
            channels = outputs;
        }
    }
    let dropout = if options.dropout > 0.0 { options.dropout } else { 0.2 };
    MobileNetV2 {
        stem: ConvBn::with(init, [3, STEM], ConvSpec::new(3, 2).act(Act::Relu6), device),
        blocks,
        head: ConvBn::with(init, [channels, LAST], ConvSpec::new(1, 1).act(Act::Relu6), device),
        dropout: DropoutConfig::new(dropout).init(),
        fc: linear(init, LAST, num_classes, device),
    }
}

#[derive(Module, Debug)]
pub struct MobileNetV2 {
    stem: ConvBn,
    blocks: Vec<InvertedResidual>,
    head: ConvBn,
    dropout: Dropout,
    pub(crate) fc: Linear,
}

impl Family for MobileNetV2 {
    const FIRST_CONV: &'static str = "stem.conv";
    const CLASSIFIER: Option<&'static str> = Some("fc");

    fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = self.stem.forward(x);
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.head.forward(x).mean_dim(2).mean_dim(3).flatten(1, 3)
    }

    fn classify(&self, features: Tensor<2>) -> Tensor<2> {
        trace::linear(&self.fc, self.dropout.forward(features))
    }

    /// Our module path for a torchvision module path: `features.0` is the stem, `features.1..=17`
    /// the blocks, `features.18` the head, `classifier.1` the head's linear layer. Inside a block,
    /// `conv` numbers the sub-layers by position, with the projection's conv and BN as two entries.
    fn import_module(&self, parts: &[&str]) -> Option<String> {
        match parts {
            ["features", index, rest @ ..] => {
                let index: usize = index.parse().ok()?;
                if index == 0 {
                    return Some(format!("stem.{}", super::conv_bn_child(rest)?));
                }
                if index == self.blocks.len() + 1 {
                    return Some(format!("head.{}", super::conv_bn_child(rest)?));
                }
                let block = self.blocks.get(index - 1)?;
                let ["conv", position, inner @ ..] = rest else { return None };
                let mut sequence: Vec<&str> = block.sublayers().into_iter().filter(|&s| s != "project").collect();
                sequence.extend(["project.conv", "project.bn"]);
                let sublayer = sequence.get(position.parse::<usize>().ok()?)?;
                let path = match *sublayer {
                    "expand" | "depthwise" => format!("{sublayer}.{}", super::conv_bn_child(inner)?),
                    _ if inner.is_empty() => sublayer.to_string(),
                    _ => return None,
                };
                Some(format!("blocks.{}.{path}", index - 1))
            }
            ["classifier", "1"] => Some("fc".into()),
            _ => None,
        }
    }

    fn top_level_children(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        vec![("features", vec!["stem", "blocks", "head"]), ("classifier", vec!["fc"])]
    }
}

pub fn architectures() -> Vec<Architecture> {
    vec![Architecture {
        name: "mobilenet_v2",
        description: "torchvision MobileNetV2, width 1.0 (classifier dropout 0.2, or model.dropout when set)",
        input_size: 224,
        build: |o, k, d| Net::MobileNetV2(mobilenet_v2(o, k, d)),
    }]
}
