//! EfficientNet B0–B7 as torchvision defines them, and EfficientNet-Lite0–4 as the
//! `efficientnet-lite-pytorch` package (after the TensorFlow reference) defines them: one
//! network of MBConv blocks scaled in width and depth by compound coefficients.
//!
//! Lite differs from B by design choices for mobile accelerators: no squeeze-excite, ReLU6
//! instead of SiLU, stem (32) and head (1280) channels and the repeats of the first and last
//! stage not scaled, TensorFlow "SAME" padding, and TensorFlow's BatchNorm settings.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::prelude::*;

use super::config::BuildOptions;
use super::layers::{Act, BnParams, ConvBn, ConvSpec, InvertedResidual, InvertedResidualSpec, Padding, linear, make_divisible};
use super::trace;
use super::{Architecture, Family, Net};

/// The B0 baseline (the paper's table 1): expansion, kernel, first stride, input channels, output
/// channels, repeats, per stage.
const B0_STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
];

#[derive(Clone, Debug, PartialEq)]
pub struct EfficientNetConfig {
    /// Channel multiplier.
    pub width: f64,
    /// Repeat multiplier.
    pub depth: f64,
    /// The input size the network was designed (and its weights trained) for.
    pub resolution: usize,
    /// Dropout before the classifier.
    pub dropout: f64,
    /// Stochastic depth probability of the last block; block `i` of `n` uses `i / n` of it.
    pub drop_path: f64,
    /// The Lite design (see the module documentation).
    pub lite: bool,
    pub norm: BnParams,
}

impl EfficientNetConfig {
    /// EfficientNet-B`n` (0..=7), torchvision's coefficients.
    pub fn b(n: usize) -> Self {
        let (width, depth, resolution, dropout) = [
            (1.0, 1.0, 224, 0.2),
            (1.0, 1.1, 240, 0.2),
            (1.1, 1.2, 260, 0.3),
            (1.2, 1.4, 300, 0.3),
            (1.4, 1.8, 380, 0.4),
            (1.6, 2.2, 456, 0.4),
            (1.8, 2.6, 528, 0.5),
            (2.0, 3.1, 600, 0.5),
        ][n];
        // torchvision builds B0–B4 with PyTorch's BatchNorm defaults and B5–B7 (ported from
        // TensorFlow weights) with TensorFlow's.
        let norm = if n >= 5 { BnParams::TF } else { BnParams::TORCH };
        Self { width, depth, resolution, dropout, drop_path: 0.2, lite: false, norm }
    }

    /// EfficientNet-Lite`n` (0..=4), the package's coefficients.
    pub fn lite(n: usize) -> Self {
        let (width, depth, resolution, dropout) =
            [(1.0, 1.0, 224, 0.2), (1.0, 1.1, 240, 0.2), (1.1, 1.2, 260, 0.3), (1.2, 1.4, 280, 0.3), (1.4, 1.8, 300, 0.3)][n];
        Self { width, depth, resolution, dropout, drop_path: 0.2, lite: true, norm: BnParams::TF }
    }

    fn channels(&self, base: usize) -> usize {
        make_divisible(base as f64 * self.width, 8)
    }

    fn repeats(&self, stage: usize, base: usize) -> usize {
        let fixed = self.lite && (stage == 0 || stage == B0_STAGES.len() - 1);
        if fixed { base } else { (base as f64 * self.depth).ceil() as usize }
    }

    pub fn init(&self, options: &BuildOptions, num_classes: usize, device: &Device) -> EfficientNet {
        let init = options.init;
        let act = if self.lite { Act::Relu6 } else { Act::Silu };
        let padding = if self.lite { Padding::TfSame } else { Padding::Symmetric };
        let norm = self.norm.with_momentum(options.bn_momentum);
        let conv = |kernel, stride| ConvSpec::new(kernel, stride).padding(padding).norm(norm).act(act);
        // Lite keeps B0's stem (32) and head (1280) widths at every scale.
        let stem = if self.lite { 32 } else { self.channels(B0_STAGES[0].3) };

        let repeats: Vec<usize> = B0_STAGES.iter().enumerate().map(|(s, stage)| self.repeats(s, stage.5)).collect();
        let total: usize = repeats.iter().sum();
        let mut index = 0;
        let mut channels = stem;
        let mut stages = Vec::new();
        for (&(expand_ratio, kernel, stride, _, outputs, _), &count) in B0_STAGES.iter().zip(&repeats) {
            let outputs = self.channels(outputs);
            let mut blocks = Vec::new();
            for i in 0..count {
                let spec = InvertedResidualSpec {
                    inputs: channels,
                    outputs,
                    expand_ratio,
                    kernel,
                    stride: if i == 0 { stride } else { 1 },
                    // torchvision squeezes to a quarter of the block's input channels.
                    se_channels: (!self.lite).then(|| (channels / 4).max(1)),
                    act,
                    padding,
                    norm,
                    drop_path: self.drop_path * index as f64 / total as f64,
                };
                blocks.push(InvertedResidual::new(init, &spec, device));
                channels = outputs;
                index += 1;
            }
            stages.push(blocks);
        }
        let head = if self.lite { 1280 } else { 4 * channels };
        let dropout = if options.dropout > 0.0 { options.dropout } else { self.dropout };
        EfficientNet {
            stem: ConvBn::with(init, [3, stem], conv(3, 2), device),
            stages,
            head: ConvBn::with(init, [channels, head], conv(1, 1), device),
            dropout: DropoutConfig::new(dropout).init(),
            fc: linear(init, head, num_classes, device),
            lite: self.lite,
        }
    }
}

#[derive(Module, Debug)]
pub struct EfficientNet {
    stem: ConvBn,
    stages: Vec<Vec<InvertedResidual>>,
    head: ConvBn,
    dropout: Dropout,
    pub(crate) fc: Linear,
    /// Which reference's names `import_module` and `top_level_children` speak.
    lite: bool,
}

impl EfficientNet {
    /// torchvision: `features.0` is the stem, `features.{s}.{i}` (s = 1..=7) block `i` of stage
    /// `s`, the last `features` entry the head, `classifier.1` the linear layer. Inside a block,
    /// `block` numbers the sub-layers by position; squeeze-excite's `fc1`/`fc2` are our
    /// `reduce`/`expand`.
    fn import_torchvision_module(&self, parts: &[&str]) -> Option<String> {
        match parts {
            ["features", index, rest @ ..] => {
                let index: usize = index.parse().ok()?;
                if index == 0 {
                    return Some(format!("stem.{}", super::conv_bn_child(rest)?));
                }
                if index == self.stages.len() + 1 {
                    return Some(format!("head.{}", super::conv_bn_child(rest)?));
                }
                let [i, "block", position, inner @ ..] = rest else { return None };
                let block = self.stages.get(index - 1)?.get(i.parse::<usize>().ok()?)?;
                let sublayer = *block.sublayers().get(position.parse::<usize>().ok()?)?;
                let inner = match (sublayer, inner) {
                    ("se", ["fc1"]) => "reduce",
                    ("se", ["fc2"]) => "expand",
                    ("se", _) => return None,
                    (_, inner) => super::conv_bn_child(inner)?,
                };
                Some(format!("stages.{}.{i}.{sublayer}.{inner}", index - 1))
            }
            ["classifier", "1"] => Some("fc".into()),
            _ => None,
        }
    }

    /// The package (EfficientNet-PyTorch's names): `_conv_stem`/`_bn0` the stem, `_blocks.{n}`
    /// the blocks numbered across stages, `_conv_head`/`_bn1` the head, `_fc` the linear layer.
    /// Inside a block `_expand_conv`/`_bn0`, `_depthwise_conv`/`_bn1`, `_project_conv`/`_bn2`
    /// are our `expand`, `depthwise`, `project`, and `_se_reduce`/`_se_expand` squeeze-excite's.
    fn import_package_module(&self, parts: &[&str]) -> Option<String> {
        let path = match parts {
            ["_conv_stem"] => "stem.conv",
            ["_bn0"] => "stem.bn",
            ["_conv_head"] => "head.conv",
            ["_bn1"] => "head.bn",
            ["_fc"] => "fc",
            ["_blocks", n, name] => {
                let (s, i) = self.stage_position(n.parse().ok()?)?;
                let inner = match *name {
                    "_expand_conv" => "expand.conv",
                    "_bn0" => "expand.bn",
                    "_depthwise_conv" => "depthwise.conv",
                    "_bn1" => "depthwise.bn",
                    "_se_reduce" => "se.reduce",
                    "_se_expand" => "se.expand",
                    "_project_conv" => "project.conv",
                    "_bn2" => "project.bn",
                    _ => return None,
                };
                return Some(format!("stages.{s}.{i}.{inner}"));
            }
            _ => return None,
        };
        Some(path.into())
    }

    /// (stage, index in the stage) of the `n`-th block counted across stages.
    fn stage_position(&self, mut n: usize) -> Option<(usize, usize)> {
        for (s, stage) in self.stages.iter().enumerate() {
            if n < stage.len() {
                return Some((s, n));
            }
            n -= stage.len();
        }
        None
    }
}

impl Family for EfficientNet {
    const FIRST_CONV: &'static str = "stem.conv";
    const CLASSIFIER: Option<&'static str> = Some("fc");

    fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = self.stem.forward(x);
        for block in self.stages.iter().flatten() {
            x = block.forward(x);
        }
        self.head.forward(x).mean_dim(2).mean_dim(3).flatten(1, 3)
    }

    fn classify(&self, features: Tensor<2>) -> Tensor<2> {
        trace::linear(&self.fc, self.dropout.forward(features))
    }

    /// Our module path for a module path of the reference: torchvision's for B, the package's for
    /// Lite.
    fn import_module(&self, parts: &[&str]) -> Option<String> {
        if self.lite { self.import_package_module(parts) } else { self.import_torchvision_module(parts) }
    }

    fn top_level_children(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        if self.lite {
            vec![
                ("_conv_stem", vec!["stem.conv"]),
                ("_bn0", vec!["stem.bn"]),
                ("_blocks", vec!["stages"]),
                ("_conv_head", vec!["head.conv"]),
                ("_bn1", vec!["head.bn"]),
                ("_avg_pooling", vec![]),
                ("_dropout", vec![]),
                ("_fc", vec!["fc"]),
                ("_swish", vec![]),
            ]
        } else {
            vec![("features", vec!["stem", "stages", "head"]), ("avgpool", vec![]), ("classifier", vec!["fc"])]
        }
    }
}

/// EfficientNet-B0..B7, then Lite0..4; each scale's constructor is its own function (`b::<N>`).
pub fn architectures() -> Vec<Architecture> {
    fn b<const N: usize>(o: &BuildOptions, k: usize, d: &Device) -> Net {
        Net::EfficientNet(EfficientNetConfig::b(N).init(o, k, d))
    }
    fn lite<const N: usize>(o: &BuildOptions, k: usize, d: &Device) -> Net {
        Net::EfficientNet(EfficientNetConfig::lite(N).init(o, k, d))
    }
    type Build = fn(&BuildOptions, usize, &Device) -> Net;
    let entry = |name, description, config: EfficientNetConfig, build: Build| Architecture {
        name,
        description,
        input_size: config.resolution,
        build,
    };
    use EfficientNetConfig as C;
    vec![
        entry("efficientnet_b0", "torchvision EfficientNet-B0 (224 px; dropout 0.2, or model.dropout when set)", C::b(0), b::<0>),
        entry("efficientnet_b1", "torchvision EfficientNet-B1 (240 px)", C::b(1), b::<1>),
        entry("efficientnet_b2", "torchvision EfficientNet-B2 (260 px)", C::b(2), b::<2>),
        entry("efficientnet_b3", "torchvision EfficientNet-B3 (300 px)", C::b(3), b::<3>),
        entry("efficientnet_b4", "torchvision EfficientNet-B4 (380 px)", C::b(4), b::<4>),
        entry("efficientnet_b5", "torchvision EfficientNet-B5 (456 px)", C::b(5), b::<5>),
        entry("efficientnet_b6", "torchvision EfficientNet-B6 (528 px)", C::b(6), b::<6>),
        entry("efficientnet_b7", "torchvision EfficientNet-B7 (600 px)", C::b(7), b::<7>),
        entry(
            "efficientnet_lite0",
            "EfficientNet-Lite0 (efficientnet-lite-pytorch, 224 px): ReLU6, no SE, TF padding",
            C::lite(0),
            lite::<0>,
        ),
        entry("efficientnet_lite1", "EfficientNet-Lite1 (240 px)", C::lite(1), lite::<1>),
        entry("efficientnet_lite2", "EfficientNet-Lite2 (260 px)", C::lite(2), lite::<2>),
        entry("efficientnet_lite3", "EfficientNet-Lite3 (280 px)", C::lite(3), lite::<3>),
        entry("efficientnet_lite4", "EfficientNet-Lite4 (300 px)", C::lite(4), lite::<4>),
    ]
}
