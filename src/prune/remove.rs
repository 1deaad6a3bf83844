//! Real removal: the kept channels of each group become a dense, smaller model (its weights
//! sliced), whose per-layer channels are recorded in `model.layer_channels` so that everything
//! that builds a model from a config (eval, predict, export, summary, resume) rebuilds it.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use burn::module::Param;
use burn::prelude::*;

use super::graph::{Graph, Role};
use crate::models::params::{PathMapper, PathVisitor, map_with_paths, visit_with_paths};
use crate::models::trace::LayerKind;
use crate::models::{Classifier, ModelConfig};

/// Which channels one layer keeps: of its outputs and of its inputs (`None` = all).
#[derive(Clone, Debug, Default)]
struct LayerCut {
    outputs: Option<Vec<usize>>,
    inputs: Option<Vec<usize>>,
    /// BatchNorm or a depthwise conv: one list for both.
    channelwise: bool,
}

/// `model` with only the channels `kept[g]` (sorted indices) of each group `g` of `graph`, and its
/// config with the new channels in `model.layer_channels`. `rebuild` builds an (untrained) model of
/// a config, as the run builds it (with its transfer head). `model` itself is not changed.
pub fn remove_channels(
    model: &Classifier,
    config: &ModelConfig,
    graph: &Graph,
    kept: &[Vec<usize>],
    rebuild: impl FnOnce(&ModelConfig) -> Result<Classifier>,
) -> Result<(Classifier, ModelConfig)> {
    let mut cuts: BTreeMap<String, LayerCut> = BTreeMap::new();
    for (group, kept) in graph.groups.iter().zip(kept) {
        if kept.is_empty() {
            bail!("group `{}`: removing all {} channels would leave nothing to compute", group.name, group.channels);
        }
        if kept.len() == group.channels {
            continue;
        }
        for member in &group.members {
            let cut = cuts.entry(member.layer.clone()).or_default();
            match member.role {
                Role::Outputs => cut.outputs = Some(kept.clone()),
                Role::Channelwise => (cut.outputs, cut.inputs, cut.channelwise) = (Some(kept.clone()), Some(kept.clone()), true),
                Role::Inputs { per_channel } => {
                    cut.inputs = Some(kept.iter().flat_map(|&c| c * per_channel..(c + 1) * per_channel).collect());
                }
            }
        }
    }
    let mut config = config.clone();
    for layer in &graph.layers {
        let Some(cut) = cuts.get(&layer.name) else { continue };
        let inputs = cut.inputs.as_ref().map_or(layer.input[0], Vec::len);
        let outputs = cut.outputs.as_ref().map_or(layer.output[0], Vec::len);
        config.layer_channels.insert(layer.name.clone(), [inputs, outputs]);
    }
    let pruned = rebuild(&config)?;

    // The source tensors, 4-D, by parameter path.
    struct Collect(BTreeMap<String, Tensor<4>>);
    impl PathVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>) {
            let value = param.val();
            let dims = value.dims();
            let mut shape = [1; 4];
            shape[..D].copy_from_slice(&dims);
            self.0.insert(path.to_string(), value.reshape(shape));
        }
    }
    let sources = visit_with_paths(model, Collect(BTreeMap::new())).0;
    let kinds: BTreeMap<&str, LayerKind> = graph.layers.iter().map(|l| (l.name.as_str(), l.kind)).collect();
    let prefix = format!("net.{}.", model.net.name());

    struct Slice<'a> {
        sources: BTreeMap<String, Tensor<4>>,
        cuts: &'a BTreeMap<String, LayerCut>,
        kinds: &'a BTreeMap<&'a str, LayerKind>,
        prefix: &'a str,
        missing: Vec<String>,
    }
    impl PathMapper for Slice<'_> {
        fn map_float<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let Some(mut source) = self.sources.remove(path) else {
                self.missing.push(path.to_string());
                return param;
            };
            let (module, leaf) = path.rsplit_once('.').unwrap_or(("", path));
            let layer = module.strip_prefix(self.prefix).unwrap_or(module);
            if let (Some(cut), Some(kind)) = (self.cuts.get(layer), self.kinds.get(layer)) {
                // Which index list applies to which dimension of each parameter.
                // (A depthwise conv's weight is `[channels, 1, k, k]`: only its outputs are cut.)
                let (dim0, dim1) = match (kind, leaf) {
                    (LayerKind::Conv2d, "weight") if !cut.channelwise => (&cut.outputs, &cut.inputs),
                    (LayerKind::Linear, "weight") => (&cut.inputs, &cut.outputs),
                    _ => (&cut.outputs, &None),
                };
                for (dim, indices) in [(0, dim0), (1, dim1)] {
                    if let Some(indices) = indices {
                        let indices: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
                        let indices = Tensor::<1, Int>::from_data(TensorData::new(indices.clone(), [indices.len()]), &source.device());
                        source = source.select(dim, indices);
                    }
                }
            }
            let shape = param.lazy_shape();
            param.map(|t| source.reshape(shape).to_device(&t.device()))
        }
    }
    let slice = Slice { sources, cuts: &cuts, kinds: &kinds, prefix: &prefix, missing: Vec::new() };
    let (pruned, slice) = map_with_paths(pruned, slice);
    if !slice.missing.is_empty() {
        bail!("the rebuilt model has parameters the source has not: {}", slice.missing.join(", "));
    }
    Ok((pruned, config))
}
