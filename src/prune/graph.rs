//! Dependency groups, derived from the model itself (the idea of Torch-Pruning's DepGraph): the
//! channels that must be removed together. No model describes its own coupling; instead a channel
//! probe (`trace::probe`) runs one small forward pass per traced call, each adding a pattern to one
//! output channel of that call, and sees which input channels of the later calls change:
//! - a later input whose changed channels are exactly that channel (or, after flattening a map,
//!   that channel's block of features) reads it through channel-wise operations only (activations,
//!   pooling, dropout), so its channels are the same channels;
//! - BatchNorm, depthwise convolutions, residual additions and channel gates (squeeze-excite) keep
//!   their inputs' channels, so their inputs and output are the same channels;
//! - a dense convolution or linear layer starts new channels.
//!
//! Joining these (union-find) gives the groups: a conv's filters with its BatchNorm, the next
//! layers' inputs, every branch of a residual addition, a depthwise conv and squeeze-excite's gates.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use burn::module::Module;
use burn::prelude::*;

use crate::models::Classifier;
use crate::models::trace::{self, Layer, LayerKind, NodeKind};

/// What a layer of a group does with the group's channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Produces them: a dense convolution's filters, a linear layer's outputs.
    Outputs,
    /// Reads them: a dense convolution's or linear layer's inputs, `per_channel` inputs per channel
    /// (a linear layer after a flattened HxW map reads H*W per channel).
    Inputs { per_channel: usize },
    /// Maps each of them to itself: BatchNorm, a depthwise convolution.
    Channelwise,
}

/// One layer's part in a group.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// The layer's name (as `ferrovision summary` names it).
    pub layer: String,
    pub kind: LayerKind,
    pub role: Role,
}

/// Channels that can only be removed together.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// The name of its first producing layer.
    pub name: String,
    pub channels: usize,
    pub members: Vec<Member>,
}

impl Group {
    /// The layers producing the channels (dense convs, linear layers), in forward order.
    pub fn producers(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.role == Role::Outputs)
    }

    pub fn contains(&self, layer: &str) -> bool {
        self.members.iter().any(|m| m.layer == layer)
    }
}

/// A model's layers (named, in forward order, as `trace::summarize` gives them) and its prunable
/// groups. Channels that cannot be removed are in no group: the image's, the logits', and those
/// touching a layer outside the network (a transfer head).
#[derive(Clone, Debug)]
pub struct Graph {
    pub layers: Vec<Layer>,
    pub groups: Vec<Group>,
}

impl Graph {
    /// The group of a layer's output channels.
    pub fn group_of(&self, layer: &str) -> Option<usize> {
        self.groups.iter().position(|g| g.members.iter().any(|m| m.layer == layer && !matches!(m.role, Role::Inputs { .. })))
    }
}

/// The side of the probe images (every registered model takes 32x32; the coupling does not depend
/// on the size).
const PROBE_SIZE: usize = 32;

/// The dependency groups of `model` (on a device without autodiff, so BatchNorm normalizes with its
/// running statistics and dropout is off).
pub fn dependency_groups(model: &Classifier) -> Result<Graph> {
    let device = model.devices().first().cloned().unwrap_or_else(Device::flex);
    let values: Vec<f32> = (0..3 * PROBE_SIZE * PROBE_SIZE).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
    let image = Tensor::<4>::from_data(TensorData::new(values, [1, 3, PROBE_SIZE, PROBE_SIZE]), &device);
    let (_, mut layers, nodes) = trace::probe(None, || model.forward(image.clone()));
    trace::name_layers(model, &mut layers);
    let reference: Vec<Vec<Vec<f32>>> = nodes.iter().map(|n| n.inputs.iter().map(values_of).collect()).collect();
    let image_values = values_of(&image);

    // Space ids: a node's output is 3n, its inputs 3n + 1 + k.
    let out = |n: usize| 3 * n;
    let input = |n: usize, k: usize| 3 * n + 1 + k;
    let mut sets = UnionFind::new(3 * nodes.len());
    let mut per_channel: BTreeMap<usize, usize> = BTreeMap::new();
    let mut consumed = vec![false; nodes.len()];
    for (p, node) in nodes.iter().enumerate() {
        let channel = node.output_channels / 2;
        let (_, _, probed) = trace::probe(Some((p, channel)), || model.forward(image.clone()));
        for (n, later) in probed.iter().enumerate().skip(p + 1) {
            for (k, tensor) in later.inputs.iter().enumerate() {
                let channels = tensor.dims()[1];
                if channels % node.output_channels != 0 {
                    continue;
                }
                let block = channels / node.output_channels;
                if changed_channels(&reference[n][k], &values_of(tensor), channels)
                    == (channel * block..(channel + 1) * block).collect::<Vec<_>>()
                {
                    sets.union(out(p), input(n, k));
                    per_channel.insert(input(n, k), block);
                    consumed[p] = true;
                }
            }
        }
    }
    // Channel-wise calls join their inputs and output; every input must come from somewhere.
    for (n, node) in nodes.iter().enumerate() {
        let layer = node.layer.map(|l| &layers[l]);
        let name = layer.map_or_else(|| format!("{:?} after {}", node.kind, last_layer_name(&layers, &nodes, n)), |l| l.name.clone());
        let channelwise = match (node.kind, layer) {
            (NodeKind::Add | NodeKind::Gate, _) => true,
            (NodeKind::Layer, Some(l)) if l.kind == LayerKind::Conv2d => match conv_groups(l) {
                1 => false,
                g if g == l.input[0] && g == l.output[0] => true,
                g => bail!("layer `{name}`: grouped convolution ({g} groups) is not supported by pruning"),
            },
            (NodeKind::Layer, Some(l)) => l.kind == LayerKind::BatchNorm,
            (NodeKind::Layer, None) => unreachable!("a layer node names its layer"),
        };
        for (k, tensor) in node.inputs.iter().enumerate() {
            if !per_channel.contains_key(&input(n, k)) && values_of(tensor) != image_values {
                bail!("cannot tell which channels feed `{name}`: the model uses an operation pruning does not know");
            }
            if channelwise {
                sets.union(out(n), input(n, k));
            }
        }
    }

    // Groups: the sets with a producer, without the image, the logits, or a layer outside `net`.
    let in_net: Vec<bool> = {
        let paths = crate::models::named_params(model);
        layers.iter().map(|l| paths.iter().any(|p| p.id == l.weight && p.path.starts_with("net."))).collect()
    };
    let mut members: BTreeMap<usize, Vec<(usize, Role)>> = BTreeMap::new();
    let mut fixed = vec![false; 3 * nodes.len()];
    for (n, node) in nodes.iter().enumerate() {
        let root_out = sets.find(out(n));
        if !node.inputs.is_empty() && !per_channel.contains_key(&input(n, 0)) {
            fixed[sets.find(input(n, 0))] = true;
        }
        let Some(l) = node.layer else {
            fixed[root_out] |= !consumed[n];
            continue;
        };
        let dense = match layers[l].kind {
            LayerKind::Conv2d => conv_groups(&layers[l]) == 1,
            LayerKind::Linear => true,
            LayerKind::BatchNorm => false,
        };
        fixed[root_out] |= !consumed[n] || !in_net[l];
        if dense {
            let root_in = sets.find(input(n, 0));
            fixed[root_in] |= !in_net[l];
            let block = per_channel.get(&input(n, 0)).copied().unwrap_or(1);
            members.entry(root_in).or_default().push((l, Role::Inputs { per_channel: block }));
            members.entry(root_out).or_default().push((l, Role::Outputs));
        } else {
            members.entry(root_out).or_default().push((l, Role::Channelwise));
        }
    }
    let mut groups: Vec<(usize, Group)> = members
        .into_iter()
        .filter(|(root, m)| !fixed[*root] && m.iter().any(|(_, role)| *role == Role::Outputs))
        .map(|(_, mut m)| {
            m.sort_by_key(|(l, _)| *l);
            let first = m.iter().find(|(_, role)| *role == Role::Outputs).map(|(l, _)| *l).expect("filtered on a producer");
            let group = Group {
                name: layers[first].name.clone(),
                channels: layers[first].output[0],
                members: m.into_iter().map(|(l, role)| Member { layer: layers[l].name.clone(), kind: layers[l].kind, role }).collect(),
            };
            (first, group)
        })
        .collect();
    groups.sort_by_key(|(first, _)| *first);
    Ok(Graph { layers, groups: groups.into_iter().map(|(_, g)| g).collect() })
}

/// A traced convolution's groups: its input channels over its weight's inputs per group.
pub fn conv_groups(layer: &Layer) -> usize {
    let per_group = layer.kernel.as_ref().map_or(layer.input[0], |k| k.dims()[1]);
    layer.input[0] / per_group.max(1)
}

/// The name of the last layer recorded up to node `n` (to name an addition or gate in errors).
fn last_layer_name(layers: &[Layer], nodes: &[trace::Node], n: usize) -> String {
    nodes[..n].iter().rev().find_map(|node| node.layer).map_or_else(|| "the input".into(), |l| layers[l].name.clone())
}

fn values_of(tensor: &Tensor<4>) -> Vec<f32> {
    tensor.clone().into_data().convert::<f32>().try_to_vec::<f32>().expect("float tensor")
}

/// The channels (of `channels`, batch 1) whose values differ.
fn changed_channels(before: &[f32], after: &[f32], channels: usize) -> Vec<usize> {
    let per_channel = before.len() / channels.max(1);
    (0..channels)
        .filter(|c| {
            let range = c * per_channel..(c + 1) * per_channel;
            before[range.clone()].iter().zip(&after[range]).any(|(a, b)| a.to_bits() != b.to_bits())
        })
        .collect()
}

struct UnionFind(Vec<usize>);

impl UnionFind {
    fn new(n: usize) -> Self {
        Self((0..n).collect())
    }

    fn find(&mut self, x: usize) -> usize {
        let mut root = x;
        while self.0[root] != root {
            root = self.0[root];
        }
        let mut x = x;
        while self.0[x] != root {
            x = std::mem::replace(&mut self.0[x], root);
        }
        root
    }

    fn union(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        self.0[a.max(b)] = a.min(b);
    }
}
