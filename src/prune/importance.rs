//! How important each channel of each group is, and which channels stay: local or global ranking,
//! groups kept whole, counts rounded to a multiple, a FLOP budget.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use burn::module::Param;
use burn::optim::GradientsParams;
use burn::prelude::*;

use super::config::{Importance, PruneConfig, Ranking};
use super::graph::{Graph, Group, Role};
use crate::models::Classifier;
use crate::models::params::{PathVisitor, visit_with_paths};
use crate::models::trace::LayerKind;
use crate::models::transfer::covers;

/// A parameter's values with its shape.
pub type Values = (Vec<usize>, Vec<f32>);

/// `weight x gradient` of every float parameter (by path) after one batch.
pub type TaylorTerms = BTreeMap<String, Values>;

/// Per channel of a parameter: the sum of `f` over the values of that channel along `dim`.
fn per_channel(values: &Values, dim: usize, channels: usize, f: impl Fn(f32) -> f32) -> Vec<f32> {
    let (shape, data) = values;
    let inner: usize = shape[dim + 1..].iter().product();
    let mut out = vec![0.0; channels];
    for (i, &v) in data.iter().enumerate() {
        out[(i / inner) % shape[dim]] += f(v);
    }
    out
}

/// The parameters of a group member that belong to one channel each: (leaf, dimension of the
/// channel). Inputs of a layer are not scored (the channel's filters are).
fn channel_params(kind: LayerKind, role: Role) -> &'static [(&'static str, usize)] {
    match (kind, role) {
        (_, Role::Inputs { .. }) => &[],
        (LayerKind::BatchNorm, _) => &[("gamma", 0), ("beta", 0)],
        (LayerKind::Conv2d, _) => &[("weight", 0), ("bias", 0)],
        (LayerKind::Linear, _) => &[("weight", 1), ("bias", 0)],
    }
}

/// Scores of every channel of every group of `graph` (higher = more important). `taylor` holds the
/// Taylor terms (weight x gradient by parameter path, one map per batch), needed by
/// `Importance::Taylor` only.
pub fn channel_scores(
    model: &Classifier,
    graph: &Graph,
    importance: Importance,
    taylor: &[TaylorTerms],
    seed: u64,
) -> Result<Vec<Vec<f32>>> {
    let params = crate::weights::export::collect_tensors(model);
    let prefix = format!("net.{}.", model.net.name());
    let get = |layer: &str, leaf: &str| params.get(&format!("{prefix}{layer}.{leaf}"));
    graph
        .groups
        .iter()
        .enumerate()
        .map(|(g, group)| {
            let c = group.channels;
            let mut sum = vec![0.0f32; c];
            let add = |sum: &mut Vec<f32>, values: Vec<f32>| sum.iter_mut().zip(values).for_each(|(s, v)| *s += v);
            match importance {
                Importance::L1 | Importance::L2 => {
                    let f = if importance == Importance::L1 { f32::abs } else { |v: f32| v * v };
                    for m in group.members.iter().filter(|m| m.kind != LayerKind::BatchNorm) {
                        if let Some(&(leaf, dim)) = channel_params(m.kind, m.role).first() {
                            add(&mut sum, per_channel(get(&m.layer, leaf).expect("a traced layer's weight"), dim, c, f));
                        }
                    }
                    if importance == Importance::L2 {
                        sum.iter_mut().for_each(|s| *s = s.sqrt());
                    }
                }
                Importance::BnScale => {
                    let norms: Vec<_> = group.members.iter().filter(|m| m.kind == LayerKind::BatchNorm).collect();
                    if norms.is_empty() {
                        bail!("prune.importance = \"bn_scale\": group `{}` has no BatchNorm (use l1, l2 or taylor)", group.name);
                    }
                    for m in norms {
                        add(&mut sum, per_channel(get(&m.layer, "gamma").expect("a BatchNorm's gamma"), 0, c, f32::abs));
                    }
                }
                Importance::Taylor => {
                    if taylor.is_empty() {
                        bail!("Taylor importance needs gradients of at least one batch");
                    }
                    for batch in taylor {
                        let mut term = vec![0.0f32; c];
                        for m in &group.members {
                            for &(leaf, dim) in channel_params(m.kind, m.role) {
                                if let Some(values) = batch.get(&format!("{prefix}{}.{leaf}", m.layer)) {
                                    add(&mut term, per_channel(values, dim, c, |v| v));
                                }
                            }
                        }
                        add(&mut sum, term.into_iter().map(|t| t * t).collect());
                    }
                }
                Importance::Random => {
                    sum = (0..c).map(|i| hash_unit(seed, g as u64, i as u64)).collect();
                }
            }
            Ok(sum)
        })
        .collect()
}

/// A value in [0, 1) from three numbers (splitmix64).
fn hash_unit(seed: u64, a: u64, b: u64) -> f32 {
    let mut z = seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
}

/// The Taylor terms `weight x gradient` of every float parameter after a backward pass.
pub fn taylor_terms(model: &Classifier, grads: &GradientsParams) -> TaylorTerms {
    struct Collect<'a>(&'a GradientsParams, BTreeMap<String, Values>);
    impl PathVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>) {
            let Some(grad) = self.0.get::<D>(param.id) else { return };
            let weight = param.val().inner();
            let product = weight * grad;
            let shape = product.dims().to_vec();
            let values = product.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 data");
            self.1.insert(path.to_string(), (shape, values));
        }
    }
    visit_with_paths(model, Collect(grads, BTreeMap::new())).1
}

/// The groups a layer name (or module prefix) picks: those with a layer it covers, in any role or,
/// with `outputs_only`, as the layer's output channels.
fn groups_named(graph: &Graph, name: &str, key: &str, outputs_only: bool) -> Result<Vec<usize>> {
    if !graph.layers.iter().any(|l| covers(name, &l.name)) {
        let some: Vec<&str> = graph.layers.iter().take(4).map(|l| l.name.as_str()).collect();
        bail!("{key}: the model has no layer `{name}` (its layers are named like {}, ...; see `ferrovision summary`)", some.join(", "));
    }
    let covered = |g: &Group| g.members.iter().any(|m| covers(name, &m.layer) && !(outputs_only && matches!(m.role, Role::Inputs { .. })));
    Ok(graph.groups.iter().enumerate().filter(|(_, g)| covered(g)).map(|(i, _)| i).collect())
}

/// The channels each group keeps (sorted indices) when `ratio` of them go, ranked by `scores`, as
/// `config` says (ranking, per-group ratios, groups kept whole, rounding).
pub fn select(graph: &Graph, scores: &[Vec<f32>], config: &PruneConfig, ratio: f64) -> Result<Vec<Vec<usize>>> {
    let mut whole = vec![false; graph.groups.len()];
    for name in &config.keep {
        for g in groups_named(graph, name, "prune.keep", false)? {
            whole[g] = true;
        }
    }
    let mut ratios = vec![ratio; graph.groups.len()];
    for (name, &r) in &config.layer_ratios {
        for g in groups_named(graph, name, &format!("prune.layer_ratios.\"{name}\""), true)? {
            ratios[g] = r;
        }
    }
    // How many channels each group gives up.
    let removed: Vec<usize> = match config.ranking {
        Ranking::Local => graph.groups.iter().zip(&ratios).map(|(g, r)| (g.channels as f64 * r).round() as usize).collect(),
        Ranking::Global => {
            let mut pooled: Vec<(f32, usize)> = Vec::new();
            for (g, s) in scores.iter().enumerate().filter(|(g, _)| !whole[*g]) {
                let mean = s.iter().sum::<f32>() / s.len() as f32;
                pooled.extend(s.iter().map(|v| (if mean > 0.0 { v / mean } else { 0.0 }, g)));
            }
            pooled.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut removed = vec![0; graph.groups.len()];
            for &(_, g) in pooled.iter().take((pooled.len() as f64 * ratio).round() as usize) {
                removed[g] += 1;
            }
            // A group keeps at least one channel (global ranking may take a whole group otherwise).
            removed.iter().zip(&graph.groups).map(|(&r, g)| r.min(g.channels - 1)).collect()
        }
    };
    graph
        .groups
        .iter()
        .enumerate()
        .map(|(g, group)| {
            let c = group.channels;
            if whole[g] || c <= config.round_to {
                return Ok((0..c).collect());
            }
            let mut keep = c - removed[g].min(c);
            if keep == 0 {
                bail!("prune ratio {} would remove every channel of group `{}` ({c} channels)", ratios[g], group.name);
            }
            keep = (keep.div_ceil(config.round_to) * config.round_to).min(c);
            let mut order: Vec<usize> = (0..c).collect();
            order.sort_by(|&a, &b| scores[g][b].total_cmp(&scores[g][a]).then(a.cmp(&b)));
            let mut kept = order[..keep].to_vec();
            kept.sort_unstable();
            Ok(kept)
        })
        .collect()
}

/// FLOPs per image of the model after keeping `kept` channels (from the traced layers: a layer's
/// FLOPs scale with its kept inputs and outputs).
pub fn flops_after(graph: &Graph, kept: &[Vec<usize>]) -> u64 {
    let mut scale: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for (group, kept) in graph.groups.iter().zip(kept) {
        let share = kept.len() as f64 / group.channels as f64;
        for m in &group.members {
            let entry = scale.entry(m.layer.as_str()).or_insert((1.0, 1.0));
            match m.role {
                Role::Outputs => entry.1 = share,
                Role::Inputs { .. } => entry.0 = share,
                // A depthwise conv's or BatchNorm's cost follows its channels once.
                Role::Channelwise => entry.1 = share,
            }
        }
    }
    graph
        .layers
        .iter()
        .map(|l| {
            let (i, o) = scale.get(l.name.as_str()).copied().unwrap_or((1.0, 1.0));
            (l.flops as f64 * i * o).round() as u64
        })
        .sum()
}

/// The kept channels for `config`'s target within one of `steps` steps: `ratio` of the channels,
/// or, with `flops_reduction`, the smallest channel ratio that removes that share of FLOPs
/// (bisection; the FLOPs fall as the ratio grows).
pub fn select_for_step(graph: &Graph, scores: &[Vec<f32>], config: &PruneConfig) -> Result<Vec<Vec<usize>>> {
    let share = |total: f64| 1.0 - (1.0 - total).powf(1.0 / config.steps as f64);
    let Some(target) = config.flops_reduction else {
        return select(graph, scores, config, share(config.ratio));
    };
    let before = flops_after(graph, &graph.groups.iter().map(|g| (0..g.channels).collect()).collect::<Vec<_>>()) as f64;
    let goal = before * (1.0 - share(target));
    // A ratio that empties a group is too high.
    let (mut low, mut high, mut best) = (0.0, 1.0, None);
    for _ in 0..24 {
        let middle = (low + high) / 2.0;
        match select(graph, scores, config, middle) {
            Ok(kept) if flops_after(graph, &kept) as f64 <= goal => (high, best) = (middle, Some(kept)),
            Ok(_) => low = middle,
            Err(_) => high = middle,
        }
    }
    best.ok_or_else(|| {
        anyhow::anyhow!(
            "prune.flops_reduction: no channel ratio leaves {:.0}% of the FLOPs (with prune.keep kept whole)",
            100.0 * goal / before
        )
    })
}

#[cfg(test)]
mod tests {
    use burn::module::Param;

    use super::*;
    use crate::models::params::{PathMapper, map_with_paths};
    use crate::models::{ModelConfig, build};
    use crate::prune::{dependency_groups, remove_channels};

    fn fast_net() -> (Classifier, Graph) {
        let device = Device::flex();
        device.seed(3);
        let model = build(&ModelConfig::named("fast_net"), 10, &device).unwrap();
        let graph = dependency_groups(&model).unwrap();
        (model, graph)
    }

    fn config() -> PruneConfig {
        PruneConfig { source: "runs/x".into(), ..Default::default() }
    }

    /// Sets one parameter (by path) to `values`.
    struct Set(String, Vec<f32>);
    impl PathMapper for Set {
        fn map_float<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if path != self.0 {
                return param;
            }
            param.map(|t| {
                let shape = t.dims();
                Tensor::from_data(TensorData::new(self.1.clone(), shape.to_vec()), &t.device())
            })
        }
    }

    #[test]
    fn magnitude_and_batch_norm_scores_keep_the_largest_channels() {
        let (model, graph) = fast_net();
        let stem = graph.group_of("stem.conv").unwrap();
        assert_eq!(graph.groups[stem].channels, 32);
        // |gamma| = channel index: bn_scale keeps the upper half.
        let gammas: Vec<f32> = (0..32).map(|c| if c % 2 == 0 { c as f32 } else { -(c as f32) }).collect();
        let (model, _) = map_with_paths(model, Set("net.FastNet.stem.bn.gamma".into(), gammas));
        let scores = channel_scores(&model, &graph, Importance::BnScale, &[], 0).unwrap();
        let kept = select(&graph, &scores, &config(), 0.5).unwrap();
        assert_eq!(kept[stem], (16..32).collect::<Vec<_>>());
        // Stem filters of L1 norm 27 * |c - 10|: L1 and L2 keep the channels furthest from 10.
        let filters: Vec<f32> = (0..32).flat_map(|c| [(c as f32 - 10.0); 27]).collect();
        let (model, _) = map_with_paths(model, Set("net.FastNet.stem.conv.weight".into(), filters));
        for importance in [Importance::L1, Importance::L2] {
            let scores = channel_scores(&model, &graph, importance, &[], 0).unwrap();
            assert_eq!(scores[stem][12], if importance == Importance::L1 { 54.0 } else { 108f32.sqrt() });
            let kept = select(&graph, &scores, &config(), 0.75).unwrap();
            assert_eq!(kept[stem], (24..32).collect::<Vec<_>>());
        }
        // Random scores depend on the seed only.
        let a = channel_scores(&model, &graph, Importance::Random, &[], 1).unwrap();
        assert_eq!(a, channel_scores(&model, &graph, Importance::Random, &[], 1).unwrap());
        assert_ne!(a, channel_scores(&model, &graph, Importance::Random, &[], 2).unwrap());
    }

    #[test]
    fn keep_rounding_ratios_and_global_ranking() {
        let (model, graph) = fast_net();
        let scores = channel_scores(&model, &graph, Importance::L1, &[], 0).unwrap();
        let sizes = |kept: &[Vec<usize>]| kept.iter().map(Vec::len).collect::<Vec<_>>();
        // Groups: stem (32), stages.0 second (32), stages.1 first/second (128), stages.2 (256);
        // the linear head's inputs are in the last group.
        assert_eq!(graph.groups.iter().map(|g| g.channels).collect::<Vec<_>>(), [32, 32, 32, 128, 128, 256, 256]);
        assert_eq!(sizes(&select(&graph, &scores, &config(), 0.3).unwrap()), [22, 22, 22, 90, 90, 179, 179]);
        let rounded = PruneConfig { round_to: 8, keep: vec!["stem".into()], ..config() };
        assert_eq!(sizes(&select(&graph, &scores, &rounded, 0.3).unwrap()), [32, 24, 24, 96, 96, 184, 184]);
        let per_group = PruneConfig { layer_ratios: [("stages.2.second.conv".into(), 0.75)].into(), ..config() };
        assert_eq!(sizes(&select(&graph, &scores, &per_group, 0.0).unwrap()), [32, 32, 32, 128, 128, 256, 64]);
        // Global: half of all 864 channels go, fewest from nowhere in particular but in total.
        let global = PruneConfig { ranking: Ranking::Global, ..config() };
        let kept = select(&graph, &scores, &global, 0.5).unwrap();
        assert_eq!(sizes(&kept).iter().sum::<usize>(), 864 - 432);
        assert_ne!(sizes(&kept), sizes(&select(&graph, &scores, &config(), 0.5).unwrap()));

        let err = |c: PruneConfig, ratio| select(&graph, &scores, &c, ratio).unwrap_err().to_string();
        let message = err(PruneConfig { keep: vec!["stem.nope".into()], ..config() }, 0.5);
        assert!(message.contains("prune.keep") && message.contains("`stem.nope`"), "{message}");
        let message = err(config(), 0.999);
        assert!(message.contains("every channel of group `stem.conv`"), "{message}");
    }

    #[test]
    fn a_flops_target_is_met_and_the_estimate_is_the_pruned_models_count() {
        let (model, graph) = fast_net();
        let scores = channel_scores(&model, &graph, Importance::L1, &[], 0).unwrap();
        let before = flops_after(&graph, &graph.groups.iter().map(|g| (0..g.channels).collect()).collect::<Vec<_>>());
        assert_eq!(before, graph.layers.iter().map(|l| l.flops).sum::<u64>());
        let target = PruneConfig { flops_reduction: Some(0.5), round_to: 8, ..config() };
        let kept = select_for_step(&graph, &scores, &target).unwrap();
        let estimate = flops_after(&graph, &kept);
        assert!(estimate as f64 <= 0.5 * before as f64 && estimate as f64 > 0.4 * before as f64, "{estimate} of {before}");
        let (pruned, _) =
            remove_channels(&model, &ModelConfig::named("fast_net"), &graph, &kept, |c| build(c, 10, &Device::flex())).unwrap();
        let (_, layers) = crate::models::trace::summarize(&pruned, Tensor::zeros([1, 3, 32, 32], &Device::flex()), false);
        // Exact but for the linear layer's bias, which does not scale with its inputs.
        let counted = layers.iter().map(|l| l.flops).sum::<u64>();
        assert!(counted.abs_diff(estimate) <= 10, "{counted} counted, {estimate} estimated");
        // Two steps each take the same share: together the target.
        let half = select_for_step(&graph, &scores, &PruneConfig { steps: 2, ..target }).unwrap();
        let after_one = flops_after(&graph, &half) as f64 / before as f64;
        assert!((0.55..=0.7072).contains(&after_one), "{after_one}");
    }

    #[test]
    fn taylor_scores_come_from_gradients() {
        let device = Device::flex().autodiff();
        device.seed(5);
        let model = build(&ModelConfig::named("fast_net"), 10, &device).unwrap();
        let graph = dependency_groups(&model.valid()).unwrap();
        let images = Tensor::<4>::random([4, 3, 32, 32], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let targets = crate::train::loss::smoothed_targets(&[0, 1, 2, 3], 10, 0.0, &device);
        let (grads, _, _) = crate::train::forward_backward(&model, images, targets, 1.0);
        let terms = taylor_terms(&model, &grads);
        assert!(terms.contains_key("net.FastNet.stem.bn.gamma"));
        let scores = channel_scores(&model.valid(), &graph, Importance::Taylor, &[terms], 0).unwrap();
        assert!(scores.iter().flatten().all(|s| s.is_finite() && *s >= 0.0));
        assert!(scores.iter().all(|g| g.iter().any(|&s| s > 0.0)));
        assert!(channel_scores(&model.valid(), &graph, Importance::Taylor, &[], 0).is_err());
    }
}
