//! Filter pruning: dependency groups derived from the model (`graph`), real removal of channels to
//! a dense smaller model (`remove`), channel importance and ranking (`importance`), and the
//! `ferrovision prune` experiment (config, iterative prune -> fine-tune, report).

pub mod config;
pub mod experiment;
pub mod graph;
pub mod importance;
pub mod remove;
pub mod sensitivity;

pub use config::{Importance, PruneConfig, Ranking};
pub use experiment::{PruneReport, prune};
pub use graph::{Graph, Group, Member, Role, dependency_groups};
pub use remove::remove_channels;
pub use sensitivity::sensitivity;

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use burn::module::Param;
    use burn::prelude::*;

    use super::*;
    use crate::models::params::{PathMapper, map_with_paths};
    use crate::models::trace::LayerKind;
    use crate::models::{Classifier, ModelConfig, build};
    use crate::train::callbacks::{load_checkpoint, save_checkpoint};

    /// One model of every family and block layout.
    fn families() -> Vec<ModelConfig> {
        let bottleneck = ModelConfig {
            name: "resnet18_cifar".into(),
            block: Some(crate::models::BlockKind::Bottleneck),
            widths: Some(vec![8, 16]),
            blocks: Some(vec![2, 1]),
            stem_channels: Some(16),
            ..Default::default()
        };
        let three_by_three = ModelConfig { widths: Some(vec![16, 32]), blocks: Some(vec![2, 2]), ..ModelConfig::named("budget_resnet") };
        let mut configs: Vec<ModelConfig> =
            ["fast_net", "airbench", "resnet18_cifar", "vgg16_bn", "vgg16", "mobilenet_v2", "efficientnet_b0"]
                .into_iter()
                .chain(["efficientnet_lite0", "resnet18", "resnet50", "tutorial_net", "lenet5"])
                .map(ModelConfig::named)
                .collect();
        configs.extend([bottleneck, three_by_three]);
        configs
    }

    fn model(config: &ModelConfig) -> Classifier {
        let device = Device::flex();
        device.seed(7);
        build(config, 10, &device).unwrap()
    }

    fn images() -> Tensor<4> {
        let device = Device::flex();
        device.seed(11);
        Tensor::random([2, 3, 32, 32], burn::tensor::Distribution::Normal(0.0, 1.0), &device)
    }

    fn rebuild(config: &ModelConfig) -> anyhow::Result<Classifier> {
        build(config, 10, &Device::flex())
    }

    fn group_names(graph: &Graph) -> Vec<String> {
        graph.groups.iter().map(|g| g.name.clone()).collect()
    }

    /// The coupling the families are known to have, found from the models alone.
    #[test]
    fn groups_couple_residual_additions_depthwise_convs_and_squeeze_excite() {
        let graph = dependency_groups(&model(&ModelConfig::named("resnet18_cifar"))).unwrap();
        let stem = &graph.groups[graph.group_of("stem.conv").unwrap()];
        // The stem's channels are the first stage's: its blocks add to them (identity shortcuts).
        for layer in ["stem.bn", "blocks.0.convs.0.conv", "blocks.0.convs.1.bn", "blocks.1.convs.1.conv", "blocks.2.shortcut.conv"] {
            assert!(stem.contains(layer), "{layer} not in {:?}", stem.members);
        }
        assert!(!stem.contains("blocks.2.convs.1.conv"));
        assert_eq!(stem.channels, 64);
        // A projection shortcut starts the next stage's group, with the stage's last convs.
        let stage = &graph.groups[graph.group_of("blocks.2.shortcut.conv").unwrap()];
        assert_eq!(stage.name, "blocks.2.shortcut.conv");
        assert!(stage.contains("blocks.2.convs.1.bn"));
        assert!(stage.contains("blocks.3.convs.1.bn") && stage.contains("blocks.4.convs.0.conv"));
        // The last stage's group reaches the linear layer's inputs; the logits are in no group.
        let last = graph.groups.iter().find(|g| g.contains("fc")).unwrap();
        assert_eq!(last.name, "blocks.6.shortcut.conv");
        assert!(last.members.iter().any(|m| m.layer == "fc" && m.role == Role::Inputs { per_channel: 1 }));
        assert_eq!(graph.group_of("fc"), None);
        assert_eq!(graph.groups.len(), 4 + 8, "4 stage groups and one inside each of the 8 blocks");

        let graph = dependency_groups(&model(&ModelConfig::named("efficientnet_b0"))).unwrap();
        let hidden = &graph.groups[graph.group_of("stages.1.0.expand.conv").unwrap()];
        let roles: Vec<(&str, Role)> = hidden.members.iter().map(|m| (m.layer.as_str(), m.role)).collect();
        assert_eq!(
            roles,
            [
                ("stages.1.0.expand.conv", Role::Outputs),
                ("stages.1.0.expand.bn", Role::Channelwise),
                ("stages.1.0.depthwise.conv", Role::Channelwise),
                ("stages.1.0.depthwise.bn", Role::Channelwise),
                ("stages.1.0.se.reduce", Role::Inputs { per_channel: 1 }),
                ("stages.1.0.se.expand", Role::Outputs),
                ("stages.1.0.project.conv", Role::Inputs { per_channel: 1 }),
            ]
        );
        // VGG's linear layer reads 7x7 features per channel of the last conv.
        let graph = dependency_groups(&model(&ModelConfig::named("vgg16"))).unwrap();
        let last = &graph.groups[graph.group_of("features.4.2.conv").unwrap()];
        assert!(last.members.iter().any(|m| m.layer == "classifier.0" && m.role == Role::Inputs { per_channel: 49 }));
        assert!(group_names(&graph).contains(&"classifier.1".to_string()), "the hidden linear layers are prunable");
        assert_eq!(graph.group_of("classifier.2"), None, "the logits are not");
    }

    /// Keeps a different number of channels in each group (so that two groups wrongly apart would
    /// no longer fit together), always some.
    fn varied_cut(graph: &Graph) -> Vec<Vec<usize>> {
        graph
            .groups
            .iter()
            .enumerate()
            .map(|(g, group)| {
                let keep = (group.channels * (g % 3 + 1) / 4).max(1);
                (0..group.channels).filter(|c| (c + g) % group.channels < keep).collect::<BTreeSet<_>>().into_iter().collect()
            })
            .collect()
    }

    #[test]
    fn every_family_runs_after_pruning_every_group() {
        for config in families() {
            let model = model(&config);
            let graph = dependency_groups(&model).unwrap();
            assert!(!graph.groups.is_empty(), "{}", config.name);
            let (pruned, pruned_config) = remove_channels(&model, &config, &graph, &varied_cut(&graph), rebuild).unwrap();
            let logits = pruned.forward(images());
            assert_eq!(logits.dims(), [2, 10], "{}", config.name);
            // The recorded channels rebuild the same shapes.
            let rebuilt = rebuild(&pruned_config).unwrap();
            let shapes = crate::weights::apply::parameter_shapes(&pruned);
            assert_eq!(crate::weights::apply::parameter_shapes(&rebuilt), shapes, "{}", config.name);
            assert!(crate::models::trainable_params(&pruned) < crate::models::trainable_params(&model));
        }
    }

    /// Sets to zero, for the channels not in `kept`, the scale and shift of every BatchNorm of each
    /// group (or, in a group without BatchNorm, the filters and biases of its producers).
    fn zero_removed(model: Classifier, graph: &Graph, kept: &[Vec<usize>]) -> Classifier {
        /// (parameter path prefix, layer kind, which channels stay).
        struct Zero(Vec<(String, LayerKind, Vec<bool>)>);
        impl PathMapper for Zero {
            fn map_float<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                let (module, leaf) = path.rsplit_once('.').unwrap();
                let Some((_, kind, keep)) = self.0.iter().find(|(m, _, _)| m == module) else { return param };
                if leaf == "running_mean" || leaf == "running_var" {
                    return param;
                }
                // burn's linear weight is `[in, out]`.
                let dim = if (*kind, leaf) == (LayerKind::Linear, "weight") { 1 } else { 0 };
                let mask: Vec<f32> = keep.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect();
                let mut shape = [1; D];
                shape[dim] = mask.len();
                param.map(|t| {
                    let mask = Tensor::<1>::from_data(TensorData::new(mask.clone(), [mask.len()]), &t.device()).reshape(shape);
                    t * mask
                })
            }
        }
        let prefix = format!("net.{}.", model.net.name());
        let mut zero = Vec::new();
        for (group, kept) in graph.groups.iter().zip(kept) {
            let keep: Vec<bool> = (0..group.channels).map(|c| kept.contains(&c)).collect();
            let norms: Vec<&Member> = group.members.iter().filter(|m| m.kind == LayerKind::BatchNorm).collect();
            let zeroed: Vec<&Member> = if norms.is_empty() { group.producers().collect() } else { norms };
            zero.extend(zeroed.into_iter().map(|m| (format!("{prefix}{}", m.layer), m.kind, keep.clone())));
        }
        map_with_paths(model, Zero(zero)).0
    }

    #[test]
    fn removing_channels_whose_batch_norm_is_zero_leaves_every_family_unchanged() {
        for config in families() {
            let model = model(&config);
            let graph = dependency_groups(&model).unwrap();
            let kept = varied_cut(&graph);
            let zeroed = zero_removed(model, &graph, &kept);
            let (pruned, _) = remove_channels(&zeroed, &config, &graph, &kept, rebuild).unwrap();
            let expected: Vec<f32> = zeroed.forward(images()).into_data().try_to_vec().unwrap();
            let got: Vec<f32> = pruned.forward(images()).into_data().try_to_vec().unwrap();
            let scale = expected.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            let worst = got.iter().zip(&expected).fold(0f32, |m, (g, e)| m.max((g - e).abs()));
            assert!(worst <= 1e-4 * scale, "{}: off by {worst} (scale {scale})", config.name);
        }
    }

    #[test]
    fn a_pruned_model_round_trips_through_a_checkpoint_and_an_export() {
        let config = ModelConfig::named("mobilenet_v2");
        let model = model(&config);
        let graph = dependency_groups(&model).unwrap();
        let (pruned, pruned_config) = remove_channels(&model, &config, &graph, &varied_cut(&graph), rebuild).unwrap();
        assert!(pruned_config.layer_channels.contains_key("blocks.1.depthwise.conv"));
        let expected = pruned.forward(images()).into_data();
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = dir.path().join("pruned.bpk");
        save_checkpoint(&pruned, &checkpoint).unwrap();
        let loaded = load_checkpoint(rebuild(&pruned_config).unwrap(), &checkpoint).unwrap();
        assert_eq!(loaded.forward(images()).into_data(), expected);
        // A checkpoint of the pruned model does not fit the unpruned one.
        assert!(load_checkpoint(rebuild(&config).unwrap(), &checkpoint).is_err());

        use crate::weights::export::{ExportedModel, export_safetensors, import_safetensors};
        let about = ExportedModel {
            model: pruned_config,
            transfer: Default::default(),
            classes: crate::data::classes::ClassNames::from_names(&(0..10).map(|i| i.to_string()).collect::<Vec<_>>()),
            image_size: 32,
            normalize: crate::augment::NormalizePreset::Cifar10,
        };
        let path = dir.path().join("pruned.safetensors");
        export_safetensors(&pruned, &about, &path).unwrap();
        let (imported, read) = import_safetensors(&path, &Device::flex()).unwrap();
        assert_eq!(read, about);
        assert_eq!(imported.forward(images()).into_data(), expected);
    }

    #[test]
    fn an_unknown_layer_in_layer_channels_is_an_error_naming_it() {
        let config = ModelConfig { layer_channels: [("stem.nope".to_string(), [3, 8])].into(), ..ModelConfig::named("fast_net") };
        let err = rebuild(&config).unwrap_err().to_string();
        assert!(err.contains("`stem.nope`") && err.contains("`fast_net`"), "{err}");
    }
}
