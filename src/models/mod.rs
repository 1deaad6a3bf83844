//! Image classifiers. Each family is one file: its network type, the [`Family`] behaviour runs
//! need of it, and its [`Architecture`] records; `families!` below registers each family with one
//! line. `layers` holds what the families share, `params` the walk over a model's parameters.

pub mod airbench;
pub mod config;
pub mod efficientnet;
pub mod fast_net;
pub mod layers;
pub mod lenet;
pub mod mobilenet_v2;
pub mod params;
pub mod resnet;
pub mod resnet_cifar;
pub mod trace;
pub mod transfer;
pub mod vgg;
pub mod whitening;

use std::sync::LazyLock;

use burn::module::Module;
use burn::prelude::*;

pub use config::{BuildOptions, ModelConfig, ShapeOverrides};
pub use efficientnet::{EfficientNet, EfficientNetConfig};
pub use fast_net::{FastNet, FastNetConfig};
pub use layers::{Init, WeightInit};
pub use lenet::LeNet;
pub use mobilenet_v2::MobileNetV2;
pub use params::{NamedParam, ParamCounts, group_digits, named_params, param_counts, trainable_params};
pub use resnet::{ImageNetResNet, ImageNetResNetConfig};
pub use resnet_cifar::{BlockKind, ResNet, ResNetConfig};
pub use vgg::{Vgg, VggConfig};

use crate::weights::registry::PretrainedWeights;

/// What runs, transfer learning and weight import need of a network family.
pub trait Family: Module {
    /// Our path (below the family) of the first convolution, the one that reads the image.
    const FIRST_CONV: &'static str;
    /// Our path of the final linear layer, the one a new classifier replaces; `None` for the
    /// families without a reference model.
    const CLASSIFIER: Option<&'static str>;

    /// The input of the final linear layer (and of the dropout before it) `[batch, features]` for
    /// normalized images `[batch, 3, height, width]`.
    fn features(&self, images: Tensor<4>) -> Tensor<2>;

    /// Logits `[batch, classes]` from [`Family::features`]: the dropout before the final linear
    /// layer, and that layer.
    fn classify(&self, features: Tensor<2>) -> Tensor<2>;

    /// Logits `[batch, classes]` for normalized images `[batch, 3, height, width]`.
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.classify(self.features(images))
    }

    /// Our module path for a module path (split at `.`) of the reference PyTorch model; `None`
    /// where it has no counterpart or the family no reference.
    fn import_module(&self, _parts: &[&str]) -> Option<String> {
        None
    }

    /// The reference model's `named_children()` in order, each with the prefixes of our
    /// parameter paths it owns (empty for parameterless children; no children without a reference).
    fn top_level_children(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        Vec::new()
    }

    /// Whether layers of the family start from values computed from training images
    /// ([`Family::fit_to_data`]).
    const FITS_TO_DATA: bool = false;

    /// Sets the layers that start from the data (patch whitening) from `sample`, training images
    /// `[n, 3, height, width]` normalized as the network sees them.
    fn fit_to_data(self, _sample: &Tensor<4>) -> anyhow::Result<Self>
    where
        Self: Sized,
    {
        Ok(self)
    }
}

/// One registered architecture (as timm's registered models with their pretrained configs).
pub struct Architecture {
    /// The `model.name` that selects it.
    pub name: &'static str,
    pub description: &'static str,
    /// The input size it is designed for (and its reference weights were trained at).
    pub input_size: usize,
    pub build: fn(&BuildOptions, usize, &Device) -> Net,
}

impl Architecture {
    /// The registered pretrained weights of this architecture, with their meta (source, input
    /// size, normalization, published accuracy).
    pub fn pretrained(&self) -> impl Iterator<Item = &'static PretrainedWeights> {
        crate::weights::registry::all().iter().filter(|w| w.model == self.name)
    }
}

/// Declares `Net`, one variant per family, and the registry of every family's architectures.
/// The variant's name is the first segment of its parameter paths below `net.`
/// (`net.ImageNetResNet.fc.weight`), so checkpoints depend on it.
macro_rules! families {
    ($($variant:ident($family:ty) => $architectures:path,)+) => {
        /// Every architecture ferrovision can train, behind one type.
        #[derive(Module, Debug)]
        pub enum Net {
            $($variant($family),)+
        }

        impl Net {
            /// The variant's name: the first segment of its parameter paths.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Net::$variant(_) => stringify!($variant),)+
                }
            }

            pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
                match self {
                    $(Net::$variant(m) => m.forward(images),)+
                }
            }

            /// See [`Family::features`].
            pub fn features(&self, images: Tensor<4>) -> Tensor<2> {
                match self {
                    $(Net::$variant(m) => m.features(images),)+
                }
            }

            /// See [`Family::classify`].
            pub fn classify(&self, features: Tensor<2>) -> Tensor<2> {
                match self {
                    $(Net::$variant(m) => m.classify(features),)+
                }
            }

            fn import_module(&self, parts: &[&str]) -> Option<String> {
                match self {
                    $(Net::$variant(m) => m.import_module(parts),)+
                }
            }

            fn family_children(&self) -> Vec<(&'static str, Vec<&'static str>)> {
                match self {
                    $(Net::$variant(m) => m.top_level_children(),)+
                }
            }

            fn family_classifier(&self) -> Option<&'static str> {
                match self {
                    $(Net::$variant(_) => <$family as Family>::CLASSIFIER,)+
                }
            }

            /// Whether [`Net::fit_to_data`] has anything to set.
            pub fn fits_to_data(&self) -> bool {
                match self {
                    $(Net::$variant(_) => <$family as Family>::FITS_TO_DATA,)+
                }
            }

            /// The network with its data-derived layers set from `sample` (see [`Family::fit_to_data`]).
            pub fn fit_to_data(self, sample: &Tensor<4>) -> anyhow::Result<Self> {
                Ok(match self {
                    $(Net::$variant(m) => Net::$variant(m.fit_to_data(sample)?),)+
                })
            }

            /// Our path of the first convolution (`FastNet.stem.conv`).
            pub fn first_conv(&self) -> String {
                let path = match self {
                    $(Net::$variant(_) => <$family as Family>::FIRST_CONV,)+
                };
                format!("{}.{path}", self.name())
            }
        }

        static REGISTRY: LazyLock<Vec<Architecture>> = LazyLock::new(|| [$($architectures(),)+].into_iter().flatten().collect());
    };
}

families! {
    FastNet(FastNet) => fast_net::architectures,
    Airbench(airbench::Airbench) => airbench::architectures,
    TutorialNet(LeNet) => lenet::tutorial_net_architectures,
    ResNet(ResNet) => resnet_cifar::architectures,
    ImageNetResNet(ImageNetResNet) => resnet::architectures,
    Vgg(Vgg) => vgg::architectures,
    MobileNetV2(MobileNetV2) => mobilenet_v2::architectures,
    EfficientNet(EfficientNet) => efficientnet::architectures,
    LeNet5(LeNet) => lenet::lenet5_architectures,
}

impl Net {
    /// The path of our parameter (as a `ModuleVisitor` sees it, variant first) that takes the
    /// tensor stored under `torch_key` in the reference PyTorch state dict (torchvision's for the
    /// ResNets, VGG, MobileNetV2 and EfficientNet-B; the `efficientnet-lite-pytorch` package's for
    /// EfficientNet-Lite). `None` for keys without a parameter here (`num_batches_tracked`) and for
    /// the families without a reference. Linear weights are stored transposed here (`[in, out]`);
    /// BatchNorm's `weight`/`bias` are `gamma`/`beta`.
    pub fn import_key(&self, torch_key: &str) -> Option<String> {
        let (module, leaf) = torch_key.rsplit_once('.')?;
        let parts: Vec<&str> = module.split('.').collect();
        let ours = self.import_module(&parts)?;
        let leaf = param_name(&ours, leaf)?;
        Some(format!("{}.{ours}.{leaf}", self.name()))
    }

    /// The reference model's `named_children()` in order, each with the prefixes of our parameter
    /// paths it owns (empty for parameterless children). A prefix owns the paths equal to it or
    /// continuing it after a `.`. Empty for the families without a reference.
    pub fn top_level_children(&self) -> Vec<(String, Vec<String>)> {
        let variant = self.name();
        self.family_children()
            .into_iter()
            .map(|(name, prefixes)| (name.to_string(), prefixes.into_iter().map(|p| format!("{variant}.{p}")).collect()))
            .collect()
    }

    /// Our path prefix of the final linear layer (`ImageNetResNet.fc`, `Vgg.classifier.2`).
    pub fn classifier_prefix(&self) -> Option<String> {
        self.family_classifier().map(|path| format!("{}.{path}", self.name()))
    }

    /// The input features of the final linear layer.
    pub fn classifier_in_features(&self) -> Option<usize> {
        let weight = format!("{}.weight", self.classifier_prefix()?);
        // burn's Linear weight is `[in, out]`; its lazy shape does not initialize it.
        named_params(self).into_iter().find(|p| p.path == weight)?.shape.map(|s| s[0])
    }
}

/// A network with an optional head on its outputs (`transfer.head`): the one model type that
/// runs, checkpoints and the CLI handle. Parameter paths start with `net.` or `head.`.
#[derive(Module, Debug)]
pub struct Classifier {
    pub net: Net,
    pub head: Option<transfer::Head>,
}

/// Where a model is cut in two: a frozen front part, whose outputs can be computed once per image,
/// and the rest, which trains on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Before the network's final dropout and linear layer ([`Family::features`]).
    Features,
    /// After the whole network, before the head (`transfer.head = "append"`).
    NetOutputs,
}

impl Classifier {
    /// Logits `[batch, classes]` for normalized images `[batch, 3, height, width]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward_from(self.net.forward(images), Cut::NetOutputs)
    }

    /// The outputs of the part before `cut`.
    pub fn forward_until(&self, images: Tensor<4>, cut: Cut) -> Tensor<2> {
        match cut {
            Cut::Features => self.net.features(images),
            Cut::NetOutputs => self.net.forward(images),
        }
    }

    /// Logits from the outputs of the part before `cut`.
    pub fn forward_from(&self, x: Tensor<2>, cut: Cut) -> Tensor<2> {
        let x = match cut {
            Cut::Features => self.net.classify(x),
            Cut::NetOutputs => x,
        };
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

/// Every registered architecture, in `ferrovision models` order.
pub fn registry() -> &'static [Architecture] {
    &REGISTRY
}

pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|a| a.name).collect()
}

/// The registered architecture called `name`.
pub fn find(name: &str) -> anyhow::Result<&'static Architecture> {
    REGISTRY
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| anyhow::anyhow!("unknown model `{name}`; expected one of: {}", names().join(", ")))
}

/// The input size a registered model is designed for (and its reference weights trained at).
pub fn default_input_size(name: &str) -> Option<usize> {
    find(name).ok().map(|a| a.input_size)
}

/// Builds the model a config names, for `num_classes` classes, on `device` (no appended head;
/// `transfer::build` adds one where an experiment asks for it).
pub fn build(config: &ModelConfig, num_classes: usize, device: &Device) -> anyhow::Result<Classifier> {
    Ok(Classifier { net: build_net(config, num_classes, device)?, head: None })
}

/// The bare network a config names, with the channels of `model.layer_channels` (a pruned model).
pub fn build_net(config: &ModelConfig, num_classes: usize, device: &Device) -> anyhow::Result<Net> {
    let build = find(&config.name)?.build;
    let options = config.build_options();
    let build = || layers::numbered_states(|| build(&options, num_classes, device));
    if config.layer_channels.is_empty() {
        return Ok(build());
    }
    // The first build (its parameters lazy, so nothing is allocated) tells which constructed
    // layer has which name; the second builds those layers with their channels.
    let (net, ids) = layers::recording_layers(build);
    let names = layer_names(&net);
    let mut channels = vec![None; ids.len()];
    for (layer, c) in &config.layer_channels {
        let index = ids.iter().position(|id| names.get(id) == Some(layer));
        let Some(index) = index else {
            let known: Vec<&str> = ids.iter().filter_map(|id| names.get(id).map(String::as_str)).take(5).collect();
            anyhow::bail!(
                "model.layer_channels: `{}` has no layer `{layer}` (layers are named like {}, ...)",
                config.name,
                known.join(", ")
            );
        };
        channels[index] = Some(*c);
    }
    Ok(layers::with_layer_channels(channels, build))
}

/// The layer name (`stages.0.first.conv`, as `trace::summarize` names layers) of each weight id:
/// its parameter path without the variant and the leaf.
fn layer_names(net: &Net) -> std::collections::HashMap<burn::module::ParamId, String> {
    let variant = format!("{}.", net.name());
    let module = |path: &str| path.rsplit_once('.').map_or(path, |(module, _)| module).to_string();
    named_params(net).into_iter().map(|p| (p.id, module(p.path.strip_prefix(&variant).unwrap_or(&p.path)))).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::io::Read;

    use burn::module::Param;

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
            let images = Tensor::<4>::random([2, 3, 32, 32], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
            let logits = model.forward(images.clone());
            assert_eq!(logits.dims(), [2, 7], "{}", entry.name);
            // Cut before the classifier, the two parts give the same logits.
            let features = model.forward_until(images, Cut::Features);
            if let Some(inputs) = model.classifier_in_features() {
                assert_eq!(features.dims()[1], inputs, "{}", entry.name);
            }
            let parts = model.forward_from(features, Cut::Features);
            let gap: f32 = (parts - logits).abs().max().into_scalar();
            assert!(gap < 1e-5, "{}: {gap}", entry.name);
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
    struct SetParams(BTreeMap<String, TensorData>);

    impl params::PathMapper for SetParams {
        fn map_float<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            match self.0.remove(path) {
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
            let (model, setter) = params::map_with_paths(model, SetParams(values));
            assert!(setter.0.is_empty(), "{name}: not set: {:?}", setter.0.keys());
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
    fn every_architecture_record_names_its_first_conv() {
        for architecture in registry() {
            let model = build_named(architecture.name, 10);
            let weight = format!("net.{}.weight", model.net.first_conv());
            let shape = param_shapes(&model).get(&weight).cloned();
            assert!(shape.as_ref().is_some_and(|s| s.len() == 4 && s[1] == 3), "{}: {weight} is {shape:?}", architecture.name);
        }
        assert_eq!(build_named("vgg16_bn", 10).net.first_conv(), "Vgg.features.0.0.conv");
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
            WeightInit::Dirac,
        ] {
            let config = ModelConfig { name: "tutorial_net".into(), init, ..Default::default() };
            let model = build(&config, 10, &device).unwrap();
            let out: Vec<f32> = model.forward(Tensor::ones([1, 3, 32, 32], &device)).into_data().try_to_vec::<f32>().unwrap();
            assert!(out.iter().all(|v| v.is_finite()), "{init:?}");
        }
    }
}
