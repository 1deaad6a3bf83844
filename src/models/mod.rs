//! Image classifiers: a registry by name, the shared layers, and one file per family.

pub mod efficientnet;
pub mod fast_net;
pub mod layers;
pub mod lenet;
pub mod mobilenet_v2;
pub mod resnet;
pub mod resnet_cifar;
pub mod trace;
pub mod transfer;
pub mod tutorial_net;
pub mod vgg;

use burn::module::{Flag, Module, ModuleVisitor, Param, ParamId};
use burn::nn::{Initializer, Linear};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
pub use efficientnet::{EfficientNet, EfficientNetConfig};
pub use fast_net::{FastNet, FastNetConfig};
pub use lenet::LeNet5;
pub use mobilenet_v2::MobileNetV2;
pub use resnet::{ImageNetResNet, ImageNetResNetConfig};
pub use resnet_cifar::{BlockKind, ResNet, ResNetConfig};
pub use tutorial_net::TutorialNet;
pub use vgg::{Vgg, VggConfig};

/// How convolution and linear weights are initialized (PyTorch's `torch.nn.init` names).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WeightInit {
    /// Each layer's own default (PyTorch's: uniform in ±1/sqrt(fan_in)); BatchNorm weight 1, bias 0.
    #[default]
    Default,
    /// Every weight set to `model.init_constant`.
    Constant,
    XavierUniform,
    XavierNormal,
    /// He initialization for ReLU networks (gain sqrt(2), fan_in).
    KaimingUniform,
    KaimingNormal,
}

impl WeightInit {
    /// The burn initializer for conv/linear weights, or `None` for the layer's default.
    pub fn initializer(self, constant: f64) -> Option<Initializer> {
        let relu_gain = std::f64::consts::SQRT_2;
        match self {
            WeightInit::Default => None,
            WeightInit::Constant => Some(Initializer::Constant { value: constant }),
            WeightInit::XavierUniform => Some(Initializer::XavierUniform { gain: 1.0 }),
            WeightInit::XavierNormal => Some(Initializer::XavierNormal { gain: 1.0 }),
            WeightInit::KaimingUniform => Some(Initializer::KaimingUniform { gain: relu_gain, fan_out_only: false }),
            WeightInit::KaimingNormal => Some(Initializer::KaimingNormal { gain: relu_gain, fan_out_only: false }),
        }
    }
}

/// Every architecture ferrovision can train, behind one type. The variant's name is the first
/// segment of its parameter paths below `net.` (`net.ImageNetResNet.fc.weight`).
#[derive(Module, Debug)]
pub enum Net {
    TutorialNet(TutorialNet),
    ResNet(ResNet),
    FastNet(FastNet),
    ImageNetResNet(ImageNetResNet),
    Vgg(Vgg),
    MobileNetV2(MobileNetV2),
    EfficientNet(EfficientNet),
    LeNet5(LeNet5),
}

impl Net {
    /// Logits `[batch, classes]` for normalized images `[batch, 3, height, width]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            Net::TutorialNet(m) => m.forward(images),
            Net::ResNet(m) => m.forward(images),
            Net::FastNet(m) => m.forward(images),
            Net::ImageNetResNet(m) => m.forward(images),
            Net::Vgg(m) => m.forward(images),
            Net::MobileNetV2(m) => m.forward(images),
            Net::EfficientNet(m) => m.forward(images),
            Net::LeNet5(m) => m.forward(images),
        }
    }

    /// The variant's name: the first segment of its parameter paths, as burn's derived
    /// `Module::visit` enters it.
    pub fn name(&self) -> &'static str {
        match self {
            Net::TutorialNet(_) => "TutorialNet",
            Net::ResNet(_) => "ResNet",
            Net::FastNet(_) => "FastNet",
            Net::ImageNetResNet(_) => "ImageNetResNet",
            Net::Vgg(_) => "Vgg",
            Net::MobileNetV2(_) => "MobileNetV2",
            Net::EfficientNet(_) => "EfficientNet",
            Net::LeNet5(_) => "LeNet5",
        }
    }

    /// The path of our parameter (as a `ModuleVisitor` sees it, variant first) that takes the
    /// tensor stored under `torch_key` in the reference PyTorch state dict (torchvision's for the
    /// ResNets, VGG, MobileNetV2 and EfficientNet-B; the `efficientnet-lite-pytorch` package's for
    /// EfficientNet-Lite). `None` for keys without a parameter here (`num_batches_tracked`) and for
    /// the CIFAR families, which have no reference. Linear weights are stored transposed here
    /// (`[in, out]`); BatchNorm's `weight`/`bias` are `gamma`/`beta`.
    pub fn import_key(&self, torch_key: &str) -> Option<String> {
        let (module, leaf) = torch_key.rsplit_once('.')?;
        let parts: Vec<&str> = module.split('.').collect();
        let ours = match self {
            Net::TutorialNet(_) | Net::ResNet(_) | Net::FastNet(_) => None,
            Net::ImageNetResNet(m) => m.import_module(&parts),
            Net::Vgg(m) => m.import_module(&parts),
            Net::MobileNetV2(m) => m.import_module(&parts),
            Net::EfficientNet(m) => m.import_module(&parts),
            Net::LeNet5(_) => LeNet5::import_module(&parts),
        }?;
        let leaf = param_name(&ours, leaf)?;
        Some(format!("{}.{ours}.{leaf}", self.name()))
    }

    /// The reference model's `named_children()` in order, each with the prefixes of our parameter
    /// paths it owns (empty for parameterless children). A prefix owns the paths equal to it or
    /// continuing it after a `.`. Empty for the CIFAR families.
    pub fn top_level_children(&self) -> Vec<(String, Vec<String>)> {
        let children = match self {
            Net::TutorialNet(_) | Net::ResNet(_) | Net::FastNet(_) => vec![],
            Net::ImageNetResNet(_) => ImageNetResNet::top_level_children(),
            Net::Vgg(_) => Vgg::top_level_children(),
            Net::MobileNetV2(_) => MobileNetV2::top_level_children(),
            Net::EfficientNet(m) => m.top_level_children(),
            Net::LeNet5(_) => LeNet5::top_level_children(),
        };
        let variant = self.name();
        children
            .into_iter()
            .map(|(name, prefixes)| (name.to_string(), prefixes.into_iter().map(|p| format!("{variant}.{p}")).collect()))
            .collect()
    }

    /// The final linear layer: our path prefix (`ImageNetResNet.fc`) and the layer. `None` for
    /// the CIFAR families.
    fn final_linear(&self) -> Option<(&'static str, &Linear)> {
        match self {
            Net::TutorialNet(_) | Net::ResNet(_) | Net::FastNet(_) => None,
            Net::ImageNetResNet(m) => Some(("fc", &m.fc)),
            Net::Vgg(m) => m.classifier.last().map(|fc| ("classifier.2", fc)),
            Net::MobileNetV2(m) => Some(("fc", &m.fc)),
            Net::EfficientNet(m) => Some(("fc", &m.fc)),
            Net::LeNet5(m) => Some(("fc3", &m.fc3)),
        }
    }

    /// Our path prefix of the final linear layer (`ImageNetResNet.fc`, `Vgg.classifier.2`).
    pub fn classifier_prefix(&self) -> Option<String> {
        self.final_linear().map(|(path, _)| format!("{}.{path}", self.name()))
    }

    /// The input features of the final linear layer.
    pub fn classifier_in_features(&self) -> Option<usize> {
        // burn's Linear weight is `[in, out]`; `lazy_shape` does not initialize it.
        self.final_linear().map(|(_, fc)| fc.weight.lazy_shape()[0])
    }
}

/// A network with an optional head on its outputs (`transfer.head`): the one model type that
/// runs, checkpoints and the CLI handle. Parameter paths start with `net.` or `head.`.
#[derive(Module, Debug)]
pub struct Classifier {
    pub net: Net,
    pub head: Option<transfer::Head>,
}

impl Classifier {
    /// Logits `[batch, classes]` for normalized images `[batch, 3, height, width]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let x = self.net.forward(images);
        match &self.head {
            Some(head) => head.forward(x),
            None => x,
        }
    }

    /// Our parameter path for a key of the network's reference PyTorch state dict (see
    /// `Net::import_key`).
    pub fn import_key(&self, torch_key: &str) -> Option<String> {
        self.net.import_key(torch_key).map(|p| format!("net.{p}"))
    }

    /// The reference `named_children()` with the parameter path prefixes each owns.
    pub fn top_level_children(&self) -> Vec<(String, Vec<String>)> {
        let children = self.net.top_level_children();
        children.into_iter().map(|(name, prefixes)| (name, prefixes.into_iter().map(|p| format!("net.{p}")).collect())).collect()
    }

    /// Path prefix of the network's final linear layer.
    pub fn classifier_prefix(&self) -> Option<String> {
        self.net.classifier_prefix().map(|p| format!("net.{p}"))
    }

    /// Input features of the network's final linear layer.
    pub fn classifier_in_features(&self) -> Option<usize> {
        self.net.classifier_in_features()
    }
}

/// Our name for the parameter `leaf` (a PyTorch parameter or buffer name) of the module we call
/// `module`. Every BatchNorm field in these models is named `bn`, and burn calls BatchNorm's
/// `weight`/`bias` `gamma`/`beta`; `num_batches_tracked` has no counterpart.
fn param_name(module: &str, leaf: &str) -> Option<&'static str> {
    let batch_norm = module.rsplit('.').next() == Some("bn");
    match (batch_norm, leaf) {
        (true, "weight") => Some("gamma"),
        (true, "bias") => Some("beta"),
        (true, "running_mean") => Some("running_mean"),
        (true, "running_var") => Some("running_var"),
        (false, "weight") => Some("weight"),
        (false, "bias") => Some("bias"),
        _ => None,
    }
}

/// Our child of a `ConvBn` for the rest of a torchvision `Conv2dNormActivation` path: that
/// `nn.Sequential` holds the conv at 0, the BatchNorm at 1 (the activation at 2 has no parameters).
pub(crate) fn conv_bn_child(rest: &[&str]) -> Option<&'static str> {
    match rest {
        ["0"] => Some("conv"),
        ["1"] => Some("bn"),
        _ => None,
    }
}

/// A registered architecture.
pub struct ModelEntry {
    pub name: &'static str,
    pub description: &'static str,
    build: fn(&ModelConfig, usize, &Device) -> Net,
}

macro_rules! efficientnet_b {
    ($n:literal, $name:literal, $description:literal) => {
        ModelEntry { name: $name, description: $description, build: |c, k, d| Net::EfficientNet(EfficientNetConfig::b($n).init(c, k, d)) }
    };
}

macro_rules! efficientnet_lite {
    ($n:literal, $name:literal, $description:literal) => {
        ModelEntry {
            name: $name,
            description: $description,
            build: |c, k, d| Net::EfficientNet(EfficientNetConfig::lite($n).init(c, k, d)),
        }
    };
}

const REGISTRY: &[ModelEntry] = &[
    ModelEntry {
        name: "fast_net",
        description: "airbench-style 3-stage conv net (32-128-256), fast on CPU; the quick config",
        build: |c, k, d| Net::FastNet(FastNetConfig::default().with_overrides(c).init(c, k, d)),
    },
    ModelEntry {
        name: "tutorial_net",
        description: "the PyTorch CIFAR-10 tutorial CNN (LeNet-style)",
        build: |c, k, d| Net::TutorialNet(TutorialNet::new(c, k, d)),
    },
    ModelEntry {
        name: "resnet18_cifar",
        description: "ResNet-18 for 32x32 inputs (3x3 stem, no max-pool)",
        build: |c, k, d| Net::ResNet(ResNetConfig::resnet18_cifar().with_overrides(c).init(c, k, d)),
    },
    ModelEntry {
        name: "resnet34_cifar",
        description: "ResNet-34 for 32x32 inputs",
        build: |c, k, d| Net::ResNet(ResNetConfig::resnet34_cifar().with_overrides(c).init(c, k, d)),
    },
    ModelEntry {
        name: "budget_resnet",
        description: "ResNet under 5M parameters: stem 32, widths 64-128-128-256, blocks 5-4-3-2, 3x3 shortcuts",
        build: |c, k, d| Net::ResNet(ResNetConfig::budget_resnet().with_overrides(c).init(c, k, d)),
    },
    ModelEntry {
        name: "lenet5",
        description: "LeNet-5 for 32x32 RGB: tanh, average pooling; model.dropout before each FC layer",
        build: |c, k, d| Net::LeNet5(LeNet5::new(c, k, d)),
    },
    ModelEntry {
        name: "resnet18",
        description: "torchvision ResNet-18 (ImageNet stem: 7x7/2 conv + max-pool)",
        build: |c, k, d| Net::ImageNetResNet(ImageNetResNetConfig::resnet18().init(c, k, d)),
    },
    ModelEntry {
        name: "resnet34",
        description: "torchvision ResNet-34",
        build: |c, k, d| Net::ImageNetResNet(ImageNetResNetConfig::resnet34().init(c, k, d)),
    },
    ModelEntry {
        name: "resnet50",
        description: "torchvision ResNet-50 (v1.5: stride on the 3x3 conv)",
        build: |c, k, d| Net::ImageNetResNet(ImageNetResNetConfig::resnet50().init(c, k, d)),
    },
    ModelEntry {
        name: "vgg16",
        description: "torchvision VGG-16 (classifier dropout 0.5, or model.dropout when set)",
        build: |c, k, d| Net::Vgg(VggConfig::vgg16(false).init(c, k, d)),
    },
    ModelEntry {
        name: "vgg16_bn",
        description: "torchvision VGG-16 with BatchNorm",
        build: |c, k, d| Net::Vgg(VggConfig::vgg16(true).init(c, k, d)),
    },
    ModelEntry {
        name: "mobilenet_v2",
        description: "torchvision MobileNetV2, width 1.0 (classifier dropout 0.2, or model.dropout when set)",
        build: |c, k, d| Net::MobileNetV2(mobilenet_v2::mobilenet_v2(c, k, d)),
    },
    efficientnet_b!(0, "efficientnet_b0", "torchvision EfficientNet-B0 (224 px; dropout 0.2, or model.dropout when set)"),
    efficientnet_b!(1, "efficientnet_b1", "torchvision EfficientNet-B1 (240 px)"),
    efficientnet_b!(2, "efficientnet_b2", "torchvision EfficientNet-B2 (260 px)"),
    efficientnet_b!(3, "efficientnet_b3", "torchvision EfficientNet-B3 (300 px)"),
    efficientnet_b!(4, "efficientnet_b4", "torchvision EfficientNet-B4 (380 px)"),
    efficientnet_b!(5, "efficientnet_b5", "torchvision EfficientNet-B5 (456 px)"),
    efficientnet_b!(6, "efficientnet_b6", "torchvision EfficientNet-B6 (528 px)"),
    efficientnet_b!(7, "efficientnet_b7", "torchvision EfficientNet-B7 (600 px)"),
    efficientnet_lite!(0, "efficientnet_lite0", "EfficientNet-Lite0 (efficientnet-lite-pytorch, 224 px): ReLU6, no SE, TF padding"),
    efficientnet_lite!(1, "efficientnet_lite1", "EfficientNet-Lite1 (240 px)"),
    efficientnet_lite!(2, "efficientnet_lite2", "EfficientNet-Lite2 (260 px)"),
    efficientnet_lite!(3, "efficientnet_lite3", "EfficientNet-Lite3 (280 px)"),
    efficientnet_lite!(4, "efficientnet_lite4", "EfficientNet-Lite4 (300 px)"),
];

/// The input size a registered model is designed for (and its reference weights trained at):
/// 32 for the CIFAR networks and LeNet-5, 224 for the ImageNet ones, an EfficientNet's own
/// resolution.
pub fn default_input_size(name: &str) -> Option<usize> {
    let efficientnet = |prefix: &str, config: fn(usize) -> EfficientNetConfig, count: usize| {
        let n: usize = name.strip_prefix(prefix)?.parse().ok()?;
        (n < count).then(|| config(n).resolution)
    };
    match name {
        "fast_net" | "tutorial_net" | "resnet18_cifar" | "resnet34_cifar" | "budget_resnet" | "lenet5" => Some(32),
        "resnet18" | "resnet34" | "resnet50" | "vgg16" | "vgg16_bn" | "mobilenet_v2" => Some(224),
        _ => efficientnet("efficientnet_b", EfficientNetConfig::b, 8)
            .or_else(|| efficientnet("efficientnet_lite", EfficientNetConfig::lite, 5)),
    }
}

/// Checks a model config before anything is built; the error names the offending key.
pub fn check(config: &ModelConfig) -> Result<(), (String, String)> {
    let key = |k: &str| format!("model.{k}");
    if !names().contains(&config.name.as_str()) {
        return Err((key("name"), format!("unknown model `{}`; expected one of: {}", config.name, names().join(", "))));
    }
    let stages = config.widths.as_ref().map(Vec::len);
    for (name, list) in [("blocks", &config.blocks), ("strides", &config.strides)] {
        if let (Some(list), Some(n)) = (list, stages) {
            if list.len() != n {
                return Err((key(name), format!("expected one entry per stage ({n}, as model.widths), found {}", list.len())));
            }
        }
    }
    let zero = |v: &Option<Vec<usize>>| v.as_ref().is_some_and(|v| v.is_empty() || v.contains(&0));
    for (name, list) in [("widths", &config.widths), ("blocks", &config.blocks), ("strides", &config.strides)] {
        if zero(list) {
            return Err((key(name), "expected a non-empty list of positive numbers".into()));
        }
    }
    if config.kernel_size.is_some_and(|k| k % 2 == 0) || config.shortcut_kernel.is_some_and(|k| k % 2 == 0) {
        return Err((key("kernel_size"), "expected an odd kernel size (1, 3, 5, ...)".into()));
    }
    Ok(())
}

pub fn registry() -> &'static [ModelEntry] {
    REGISTRY
}

pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|e| e.name).collect()
}

/// Builds the model a config names, for `num_classes` classes, on `device` (no appended head;
/// `transfer::build` adds one where an experiment asks for it).
pub fn build(config: &ModelConfig, num_classes: usize, device: &Device) -> anyhow::Result<Classifier> {
    Ok(Classifier { net: build_net(config, num_classes, device)?, head: None })
}

/// The bare network a config names.
pub fn build_net(config: &ModelConfig, num_classes: usize, device: &Device) -> anyhow::Result<Net> {
    let entry = REGISTRY
        .iter()
        .find(|e| e.name == config.name)
        .ok_or_else(|| anyhow::anyhow!("unknown model `{}`; expected one of: {}", config.name, names().join(", ")))?;
    Ok((entry.build)(config, num_classes, device))
}

/// A parameter (or a module's training flag) with its path as burn's visitor names it: struct
/// fields and Vec indices joined by `.`, e.g. `net.ImageNetResNet.stem.bn.running_mean`.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedParam {
    pub path: String,
    pub id: ParamId,
    /// The tensor shape; `None` for a training flag (BatchNorm's `training`).
    pub shape: Option<Vec<usize>>,
}

/// Every float parameter (BatchNorm running statistics included) and training flag of a module,
/// in visiting order, without initializing lazy parameters.
pub fn named_params<M: Module>(model: &M) -> Vec<NamedParam> {
    struct Collect {
        path: Vec<String>,
        params: Vec<NamedParam>,
    }
    impl ModuleVisitor for Collect {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let shape = Some(param.lazy_shape().to_vec());
            self.params.push(NamedParam { path: self.path.join("."), id: param.id, shape });
        }
        fn visit_flag(&mut self, flag: &Param<Flag>) {
            self.params.push(NamedParam { path: self.path.join("."), id: flag.id, shape: None });
        }
    }
    let mut collect = Collect { path: Vec::new(), params: Vec::new() };
    model.visit(&mut collect);
    collect.params
}

/// Trainable parameters counted the way torchvision counts them: BatchNorm running statistics are
/// buffers, not parameters (burn visits them like parameters, so they are skipped by name).
pub fn trainable_params<M: Module>(model: &M) -> usize {
    named_params(model)
        .into_iter()
        .filter(|p| !p.path.rsplit('.').next().is_some_and(|leaf| leaf.starts_with("running_")))
        .filter_map(|p| p.shape.map(|s| s.iter().product::<usize>()))
        .sum()
}

/// `1234567` as `1,234,567`.
pub fn group_digits(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::io::Read;

    use super::*;
    use crate::models::transfer::covers as owns;
    use crate::weights::apply::parameter_shapes as param_shapes;

    fn build_named(name: &str, classes: usize) -> Classifier {
        let config = ModelConfig { name: name.into(), ..Default::default() };
        build(&config, classes, &Device::flex()).unwrap()
    }

    fn count(name: &str) -> usize {
        trainable_params(&build_named(name, 10))
    }

    /// Parameters are initialized lazily, so building even VGG-16 here allocates nothing.
    fn count_imagenet(name: &str) -> usize {
        trainable_params(&build_named(name, 1000))
    }

    const IMAGENET_MODELS: [&str; 19] = [
        "resnet18",
        "resnet34",
        "resnet50",
        "vgg16",
        "vgg16_bn",
        "mobilenet_v2",
        "efficientnet_b0",
        "efficientnet_b1",
        "efficientnet_b2",
        "efficientnet_b3",
        "efficientnet_b4",
        "efficientnet_b5",
        "efficientnet_b6",
        "efficientnet_b7",
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
        "efficientnet_lite3",
        "efficientnet_lite4",
    ];

    #[test]
    fn parameter_counts_match_the_references() {
        assert_eq!(count("tutorial_net"), 62_006);
        assert_eq!(count("lenet5"), 62_006);
        assert_eq!(count("resnet18_cifar"), 11_173_962);
        assert_eq!(count("resnet34_cifar"), 21_282_122);
        assert_eq!(count("budget_resnet"), 4_951_338);
        // torchvision's and efficientnet-lite-pytorch's counts for 1000 classes.
        let expected = [
            11_689_512,
            21_797_672,
            25_557_032,
            138_357_544,
            138_365_992,
            3_504_872,
            5_288_548,
            7_794_184,
            9_109_994,
            12_233_232,
            19_341_616,
            30_389_784,
            43_040_704,
            66_347_960,
            4_652_008,
            5_416_680,
            6_092_072,
            8_197_096,
            13_006_568,
        ];
        for (name, expected) in IMAGENET_MODELS.into_iter().zip(expected) {
            assert_eq!(count_imagenet(name), expected, "{name}");
        }
    }

    #[test]
    fn every_model_gives_logits_for_a_batch() {
        let device = Device::flex();
        for entry in registry() {
            let config = ModelConfig { name: entry.name.into(), ..Default::default() };
            let model = build(&config, 7, &device).unwrap();
            let logits = model.forward(Tensor::zeros([2, 3, 32, 32], &device));
            assert_eq!(logits.dims(), [2, 7], "{}", entry.name);
        }
    }

    /// The reference state dicts' keys and shapes (generated by `testdata/reference_state_dicts.py`).
    fn reference_state_dicts() -> BTreeMap<String, Vec<(String, Vec<usize>)>> {
        let packed = include_bytes!("testdata/reference_state_dicts.txt.gz");
        let mut text = String::new();
        flate2::read::GzDecoder::new(&packed[..]).read_to_string(&mut text).unwrap();
        let mut models: BTreeMap<String, Vec<(String, Vec<usize>)>> = BTreeMap::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(name) = line.strip_prefix("# ") {
                current = name.to_string();
                continue;
            }
            let mut fields = line.split(' ');
            let key = fields.next().unwrap().to_string();
            let dims = fields.map(|d| d.parse().unwrap()).collect();
            models.entry(current.clone()).or_default().push((key, dims));
        }
        models
    }

    #[test]
    fn every_reference_key_lands_on_a_parameter_of_its_shape_and_every_parameter_is_covered() {
        let references = reference_state_dicts();
        assert_eq!(references.keys().map(String::as_str).collect::<BTreeSet<_>>(), IMAGENET_MODELS.into_iter().collect());
        for (name, keys) in &references {
            let model = build_named(name, 1000);
            let ours = param_shapes(&model);
            let mut covered = BTreeSet::new();
            for (key, dims) in keys {
                let Some(path) = model.import_key(key) else {
                    assert!(key.ends_with(".num_batches_tracked"), "{name}: {key} has no parameter");
                    continue;
                };
                // burn stores a linear weight transposed.
                let expected: Vec<usize> = if dims.len() == 2 { dims.iter().rev().copied().collect() } else { dims.clone() };
                assert_eq!(ours.get(&path), Some(&expected), "{name}: {key} -> {path}");
                assert!(covered.insert(path.clone()), "{name}: two keys land on {path}");
            }
            let missed: Vec<_> = ours.keys().filter(|p| !covered.contains(*p)).collect();
            assert!(missed.is_empty(), "{name}: no reference key for {missed:?}");
        }
    }

    /// The hash of `testdata/reference_logits.py`: `count` values in [0, 1) from `name` and the index.
    fn uniform(name: &str, count: usize) -> Vec<f32> {
        let seed = name.bytes().fold(0x811C_9DC5_u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193));
        (0..count as u64)
            .map(|i| {
                let mut h = (seed as u64 + i * 2_654_435_761) as u32;
                h ^= h >> 16;
                h = h.wrapping_mul(0x85EB_CA6B);
                h ^= h >> 13;
                h = h.wrapping_mul(0xC2B2_AE35);
                h ^= h >> 16;
                (h as f64 / 4_294_967_296.0) as f32
            })
            .collect()
    }

    /// The value formula of `testdata/reference_logits.py` for a reference key of `shape`.
    fn reference_value(key: &str, shape: &[usize]) -> Vec<f32> {
        let u = uniform(key, shape.iter().product());
        let leaf = key.rsplit('.').next().unwrap();
        if shape.len() >= 2 {
            let bound = (3.0 / shape[1..].iter().product::<usize>() as f64).sqrt() as f32;
            u.into_iter().map(|u| (u - 0.5) * 2.0 * bound).collect()
        } else if leaf == "running_var" || leaf == "weight" {
            u.into_iter().map(|u| 0.5 + u).collect()
        } else {
            u.into_iter().map(|u| (u - 0.5) * 0.2).collect()
        }
    }

    /// Sets every parameter whose path is a key of `values`.
    struct SetParams(Vec<String>, BTreeMap<String, TensorData>);

    impl burn::module::ModuleMapper for SetParams {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.0.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.0.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            match self.1.remove(&self.0.join(".")) {
                Some(data) => param.map(|t| Tensor::from_data(data, &t.device())),
                None => param,
            }
        }
    }

    /// Our models compute the reference models' logits when every parameter holds the same values
    /// (the reference logits come from `testdata/reference_logits.py`, which sets them by a
    /// formula of the state-dict key): same layers, order, padding, activations, BatchNorm epsilon.
    #[test]
    fn models_compute_the_reference_logits() {
        let device = Device::flex();
        let references = reference_state_dicts();
        for line in include_str!("testdata/reference_logits.txt").lines() {
            let mut fields = line.split(' ');
            let (name, size) = (fields.next().unwrap(), fields.next().unwrap().parse::<usize>().unwrap());
            let expected: Vec<f32> = fields.map(|v| v.parse().unwrap()).collect();
            let model = build_named(name, expected.len());
            let shapes = param_shapes(&model);
            let mut values = BTreeMap::new();
            for (key, _) in &references[name] {
                let Some(path) = model.import_key(key) else { continue };
                // Shapes at 10 classes; the reference layout of a linear weight is `[out, in]`.
                let ours = &shapes[&path];
                let torch_shape: Vec<usize> = if ours.len() == 2 { vec![ours[1], ours[0]] } else { ours.clone() };
                let data = TensorData::new(reference_value(key, &torch_shape), torch_shape.clone());
                let data = if ours.len() == 2 { Tensor::<2>::from_data(data, &device).transpose().into_data() } else { data };
                values.insert(path, data);
            }
            let mut setter = SetParams(Vec::new(), values);
            let model = model.map(&mut setter);
            assert!(setter.1.is_empty(), "{name}: not set: {:?}", setter.1.keys());
            let input = uniform("input", 3 * size * size).into_iter().map(|u| (u - 0.5) * 2.0).collect::<Vec<_>>();
            let input = Tensor::<4>::from_data(TensorData::new(input, [1, 3, size, size]), &device);
            let got: Vec<f32> = model.forward(input).into_data().try_to_vec().unwrap();
            let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = got.iter().zip(&expected).fold(0f32, |m, (g, e)| m.max((g - e).abs()));
            let message = format!("{name} at {size}px: off by {worst} (scale {scale})\n got {got:?}\n expected {expected:?}");
            assert!(worst <= 1e-4 * scale, "{message}");
        }
    }

    #[test]
    fn top_level_children_own_every_parameter_once() {
        for entry in registry() {
            let model = build_named(entry.name, 10);
            let children = model.top_level_children();
            if children.is_empty() {
                continue;
            }
            let prefixes: Vec<&String> = children.iter().flat_map(|(_, prefixes)| prefixes).collect();
            let paths = param_shapes(&model);
            for path in paths.keys() {
                let owners = prefixes.iter().filter(|p| owns(p, path)).count();
                assert_eq!(owners, 1, "{}: {path} is owned by {owners} children", entry.name);
            }
            for prefix in prefixes {
                assert!(paths.keys().any(|p| owns(prefix, p)), "{}: {prefix} owns nothing", entry.name);
            }
        }
    }

    #[test]
    fn reference_children_are_named_as_in_the_references() {
        let names = |model: &str| -> Vec<String> { build_named(model, 10).top_level_children().into_iter().map(|(n, _)| n).collect() };
        assert_eq!(names("resnet50"), ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]);
        assert_eq!(names("vgg16_bn"), ["features", "avgpool", "classifier"]);
        assert_eq!(names("mobilenet_v2"), ["features", "classifier"]);
        assert_eq!(names("efficientnet_b3"), ["features", "avgpool", "classifier"]);
        let lite = ["_conv_stem", "_bn0", "_blocks", "_conv_head", "_bn1", "_avg_pooling", "_dropout", "_fc", "_swish"];
        assert_eq!(names("efficientnet_lite2"), lite);
        assert!(names("resnet18_cifar").is_empty());
    }

    #[test]
    fn classifier_prefix_names_the_final_linear_layer() {
        for name in IMAGENET_MODELS.into_iter().chain(["lenet5"]) {
            let model = build_named(name, 13);
            let prefix = model.classifier_prefix().unwrap();
            let inputs = model.classifier_in_features().unwrap();
            assert_eq!(param_shapes(&model).get(&format!("{prefix}.weight")), Some(&vec![inputs, 13]), "{name}");
        }
        assert_eq!(build_named("resnet18", 10).classifier_prefix().as_deref(), Some("net.ImageNetResNet.fc"));
        assert_eq!(build_named("vgg16", 10).classifier_in_features(), Some(4096));
        assert_eq!(build_named("efficientnet_b7", 10).classifier_in_features(), Some(2560));
        assert_eq!(build_named("fast_net", 10).classifier_prefix(), None);
    }

    #[test]
    fn every_model_has_a_default_input_size() {
        for entry in registry() {
            assert!(default_input_size(entry.name).is_some(), "{}", entry.name);
        }
        assert_eq!(default_input_size("resnet50"), Some(224));
        assert_eq!(default_input_size("efficientnet_b7"), Some(600));
        assert_eq!(default_input_size("efficientnet_lite3"), Some(280));
        assert_eq!(default_input_size("efficientnet_lite5"), None);
    }

    #[test]
    fn every_init_scheme_builds_and_is_finite() {
        let device = Device::flex();
        for init in [
            WeightInit::Default,
            WeightInit::Constant,
            WeightInit::XavierUniform,
            WeightInit::XavierNormal,
            WeightInit::KaimingUniform,
            WeightInit::KaimingNormal,
        ] {
            let config = ModelConfig { name: "tutorial_net".into(), init, ..Default::default() };
            let model = build(&config, 10, &device).unwrap();
            let out: Vec<f32> = model.forward(Tensor::ones([1, 3, 32, 32], &device)).into_data().try_to_vec::<f32>().unwrap();
            assert!(out.iter().all(|v| v.is_finite()), "{init:?}");
        }
    }
}
