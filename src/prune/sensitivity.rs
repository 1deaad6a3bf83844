//! Sensitivity analysis (Li et al. 2017): each group pruned alone at 10%, 20%, ... 90% of its
//! channels and evaluated without fine-tuning, to see which layers tolerate pruning and pick
//! per-group ratios (`prune.layer_ratios`).

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::experiment::Source;
use super::graph::dependency_groups;
use super::importance::{channel_scores, flops_after, select};
use super::remove::remove_channels;
use crate::config::ExperimentConfig;
use crate::models::{ModelConfig, transfer};
use crate::tracking::plot::{Series, line_chart_files};
use crate::train::evaluate::evaluate;

/// The ratios each group is pruned at.
pub const RATIOS: [f64; 9] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];

/// Test accuracy with one group pruned.
#[derive(Clone, Debug, Serialize)]
pub struct SensitivityPoint {
    pub group: String,
    pub ratio: f64,
    pub channels_kept: usize,
    /// FLOPs per image of the model with that group pruned.
    pub flops: u64,
    pub accuracy: f64,
}

/// Runs the analysis of the source run of `config`'s `[prune]` (its importance and `keep`; groups
/// kept whole are skipped) on the test split, and writes `sensitivity.csv`, `sensitivity.json`
/// and `sensitivity.{svg,png}` (accuracy per ratio, one line per group) into `out`.
pub fn sensitivity(config: &ExperimentConfig, out: &Path) -> Result<Vec<SensitivityPoint>> {
    let Source { p, finetune, data, classes, settings, device, model, .. } = Source::load(config)?;
    let graph = dependency_groups(&model)?;
    let scores = channel_scores(&model, &graph, p.importance, &[], finetune.train.seed)?;
    let whole = select(&graph, &scores, p, 0.0)?;
    let kept_whole = |g: usize| p.keep.iter().any(|k| graph.groups[g].members.iter().any(|m| transfer::covers(k, &m.layer)));
    let baseline = evaluate(&model, &data.test, classes, &settings, &device)?.accuracy;
    crate::outln!("unpruned: test accuracy {:.2}% on {} images", 100.0 * baseline, data.test.len());
    let mut points = Vec::new();
    for (g, group) in graph.groups.iter().enumerate().filter(|(g, _)| !kept_whole(*g)) {
        for ratio in RATIOS {
            let mut kept = whole.clone();
            let alone = super::PruneConfig { layer_ratios: [(group.name.clone(), ratio)].into(), ..p.clone() };
            // A ratio that would empty a small group is skipped.
            let Ok(selected) = select(&graph, &scores, &alone, 0.0) else { continue };
            kept[g] = selected[g].clone();
            let rebuild = |c: &ModelConfig| transfer::build(c, &finetune.transfer, classes, &device, None).map(|(m, _)| m);
            let (pruned, _) = remove_channels(&model, &finetune.model, &graph, &kept, rebuild)?;
            let accuracy = evaluate(&pruned, &data.test, classes, &settings, &device)?.accuracy;
            crate::outln!(
                "{} at {:.0}%: {} channels kept, test accuracy {:.2}%",
                group.name,
                100.0 * ratio,
                kept[g].len(),
                100.0 * accuracy
            );
            let flops = flops_after(&graph, &kept);
            points.push(SensitivityPoint { group: group.name.clone(), ratio, channels_kept: kept[g].len(), flops, accuracy });
        }
    }
    std::fs::create_dir_all(out)?;
    let mut csv = "group,ratio,channels_kept,flops,accuracy\n".to_string();
    for q in &points {
        csv += &format!("{},{},{},{},{:.6}\n", q.group, q.ratio, q.channels_kept, q.flops, q.accuracy);
    }
    crate::files::write_atomic(&out.join("sensitivity.csv"), csv.as_bytes())?;
    crate::files::write_atomic(&out.join("sensitivity.json"), serde_json::to_string_pretty(&points)?.as_bytes())?;
    let mut groups: Vec<&str> = points.iter().map(|q| q.group.as_str()).collect();
    groups.dedup();
    let series: Vec<Series> = groups
        .iter()
        .map(|&name| Series {
            name,
            points: std::iter::once((0.0, 100.0 * baseline))
                .chain(points.iter().filter(|q| q.group == name).map(|q| (100.0 * q.ratio, 100.0 * q.accuracy)))
                .collect(),
        })
        .collect();
    let title = "Sensitivity: each group pruned alone, no fine-tuning";
    line_chart_files(&out.join("sensitivity"), title, "channels removed (%)", "test accuracy (%)", &series)?;
    Ok(points)
}
