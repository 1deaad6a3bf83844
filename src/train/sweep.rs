//! `ferrovision sweep`: one run per point of the cross product of `--grid key=v1,v2,...` lists,
//! sequentially, each tagged with the sweep's name so `runs compare --tag` finds them. A
//! `train.seed` axis repeats every other point over those seeds, and the results are also
//! reported merged over them (mean ± standard deviation). Started again, a sweep skips the runs
//! that finished and resumes the one that was interrupted.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};

use crate::config::ExperimentConfig;
use crate::files::write_atomic;
use crate::tracking::journal::{self, RunEntry, Table};
use crate::tracking::{RunDir, RunSummary, plot};

/// Trains the run of every point of the grid in turn, printing where the sweep stands: a finished
/// run is skipped, an interrupted one resumed. Then compares them: prints the Markdown table and
/// writes it as `<tag>.csv` and `<tag>.html` into the runs folder; with a `train.seed` axis also
/// the table merged over seeds (printed, in the HTML and as `<tag>-seeds.csv`); and `<tag>.svg`, a
/// chart of test accuracy (mean ± standard deviation over seeds), when one value other than the
/// seed was swept. `tag` defaults to `sweep-<config name>`. Returns the files written.
pub fn run(config: &Path, grids: &[String], overrides: &[String], tag: Option<&str>, interrupt: &AtomicBool) -> Result<Vec<PathBuf>> {
    let name = crate::tracking::run::config_name(config, "sweep");
    let tag = tag.map_or_else(|| format!("sweep-{name}"), str::to_string);
    let points = points(&name, grids)?;
    let configs = configs(config, overrides, &points, &tag)?;
    let runs = configs[0].run.dir.clone();
    for (i, (point, config)) in points.iter().zip(&configs).enumerate() {
        let position = format!("sweep {}/{}: {}", i + 1, points.len(), point.id);
        match prepare_folder(&runs, &point.id)? {
            PointStatus::Finished => outln!("{position} finished earlier, skipped"),
            PointStatus::Resumable => {
                outln!("{position} was interrupted, resuming");
                let (run, _) = RunDir::open(&runs.join(&point.id))?;
                super::resume(&run, config, interrupt)?;
            }
            PointStatus::Fresh => {
                outln!("{position} ({})", point.overrides.join(" "));
                super::fit(config, &point.id, interrupt)?;
            }
        }
    }
    let ids: Vec<String> = points.iter().map(|p| p.id.clone()).collect();
    let mut entries = journal::select(journal::scan(&runs)?, &ids, None, None)?;
    entries.sort_by_key(|e| ids.iter().position(|id| *id == e.run.id));
    let table = journal::compare(&entries);
    out!("{}", table.markdown());
    let groups = seed_groups(&points, &entries);
    let over_seeds = points[0].values.iter().any(|(key, _)| key == SEED_KEY).then(|| seed_table(&groups));
    let mut written = vec![runs.join(format!("{tag}.csv")), runs.join(format!("{tag}.html"))];
    write_atomic(&written[0], table.csv().as_bytes())?;
    write_atomic(&written[1], journal::html_report(&entries, &tag, over_seeds.as_ref())?.as_bytes())?;
    if let Some(over_seeds) = &over_seeds {
        outln!("\nmean ± standard deviation over {SEED_KEY}:");
        out!("{}", over_seeds.markdown());
        written.push(runs.join(format!("{tag}-seeds.csv")));
        write_atomic(&written[2], over_seeds.csv().as_bytes())?;
    }
    let chart = runs.join(format!("{tag}.svg"));
    if accuracy_chart(&chart, &tag, &groups)? {
        written.push(chart);
    }
    Ok(written)
}

/// The grid key whose values repeat a point with other seeds: its runs are also shown merged,
/// as the mean and standard deviation of their results.
pub const SEED_KEY: &str = "train.seed";

/// Mean, standard deviation and count of repeated measurements. The standard deviation is the
/// sample one (divided by n - 1, as pandas and numpy's `ddof=1`); one value has none (0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MeanStd {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

impl MeanStd {
    /// None for no values.
    pub fn of(values: &[f64]) -> Option<Self> {
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n as f64;
        let squares: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
        let std = if n > 1 { (squares / (n - 1) as f64).sqrt() } else { 0.0 };
        (n > 0).then_some(Self { mean, std, n })
    }

    /// `mean ± std` with `decimals`, scaled by `scale` (100 for percentages); the mean alone for
    /// one value.
    fn show(&self, scale: f64, decimals: usize, unit: &str) -> String {
        match self.n {
            1 => format!("{:.decimals$}{unit}", scale * self.mean),
            _ => format!("{:.decimals$} ± {:.decimals$}{unit}", scale * self.mean, scale * self.std),
        }
    }
}

/// The runs of points that differ only in their seed: the values they share (the seed left
/// out) and their entries, in grid order. Without a seed axis each run is its own group.
struct SeedGroup<'a> {
    values: Vec<(String, String)>,
    entries: Vec<&'a RunEntry>,
}

fn seed_groups<'a>(points: &[Point], entries: &'a [RunEntry]) -> Vec<SeedGroup<'a>> {
    let mut groups: Vec<SeedGroup> = Vec::new();
    for point in points {
        let values: Vec<(String, String)> = point.values.iter().filter(|(key, _)| key != SEED_KEY).cloned().collect();
        let entry = entries.iter().find(|e| e.run.id == point.id);
        match groups.iter_mut().find(|g| g.values == values) {
            Some(group) => group.entries.extend(entry),
            None => groups.push(SeedGroup { values, entries: entry.into_iter().collect() }),
        }
    }
    groups
}

impl SeedGroup<'_> {
    /// A result of every finished run of the group.
    fn results(&self, pick: fn(&RunSummary) -> Option<f64>) -> Option<MeanStd> {
        let values: Vec<f64> = self.entries.iter().filter_map(|e| e.summary.as_ref().and_then(pick)).collect();
        MeanStd::of(&values)
    }
}

/// One row per group: the swept values other than the seed, the number of seeds, and the mean ±
/// standard deviation of the best validation loss and accuracy and the test accuracy.
fn seed_table(groups: &[SeedGroup]) -> Table {
    let keys: Vec<String> = groups.first().map_or(Vec::new(), |g| g.values.iter().map(|(key, _)| key.clone()).collect());
    let mut header = keys;
    header.extend(["seeds", "best val loss", "best val acc", "test acc"].map(String::from));
    let shown = |m: Option<MeanStd>, scale, decimals, unit| m.map_or("-".into(), |m| m.show(scale, decimals, unit));
    let rows = groups
        .iter()
        .map(|g| {
            let mut row: Vec<String> = g.values.iter().map(|(_, v)| v.clone()).collect();
            row.extend([
                g.entries.len().to_string(),
                shown(g.results(|s| s.best_val_loss), 1.0, 4, ""),
                shown(g.results(|s| s.best_val_acc), 100.0, 2, "%"),
                shown(g.results(|s| Some(s.test_acc)), 100.0, 2, "%"),
            ]);
            row
        })
        .collect();
    Table { header, rows }
}

/// Mean test accuracy (error bars: the standard deviation over seeds) against the one swept
/// value other than the seed, along a number line when every value is a number, else one point
/// per value; not drawn (false) with another number of such values or when a run has no test
/// accuracy.
fn accuracy_chart(path: &Path, tag: &str, groups: &[SeedGroup]) -> Result<bool> {
    let Some([(key, _)]) = groups.first().map(|g| &g.values[..]) else { return Ok(false) };
    let accuracy: Option<Vec<MeanStd>> =
        groups.iter().map(|g| g.results(|s| Some(s.test_acc)).filter(|m| m.n == g.entries.len())).collect();
    let Some(accuracy) = accuracy else { return Ok(false) };
    let values: Vec<&str> = groups.iter().map(|g| g.values[0].1.as_str()).collect();
    let numbers: Option<Vec<f64>> = values.iter().map(|v| v.parse().ok()).collect();
    let names: Vec<String> = values.iter().map(|v| v.trim_matches('"').to_string()).collect();
    let (xs, categories) = match numbers {
        Some(numbers) => (numbers, None),
        None => ((0..values.len()).map(|i| i as f64).collect(), Some(&names[..])),
    };
    let points: Vec<(f64, f64, f64)> = xs.into_iter().zip(&accuracy).map(|(x, m)| (x, 100.0 * m.mean, 100.0 * m.std)).collect();
    plot::spread_chart_svg(path, &format!("test accuracy, {tag}"), (key, "test accuracy (%)"), &points, categories)?;
    Ok(true)
}

/// One point of the grid: its run id, its `--set` overrides and the swept values.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub id: String,
    pub overrides: Vec<String>,
    pub values: Vec<(String, String)>,
}

/// Parses `key=v1,v2,...` lists into their cross product (the first key varies slowest).
pub fn points(name: &str, grids: &[String]) -> Result<Vec<Point>> {
    let mut axes = Vec::new();
    for grid in grids {
        let (key, values) = grid.split_once('=').with_context(|| format!("--grid {grid}: expected KEY=V1,V2,..."))?;
        let values = split_values(values);
        if values.is_empty() {
            bail!("--grid {grid}: no values after `=`");
        }
        axes.push((key.trim().to_string(), values));
    }
    if axes.is_empty() {
        bail!("give at least one --grid KEY=V1,V2,...");
    }
    let mut out = vec![Point { id: name.to_string(), overrides: Vec::new(), values: Vec::new() }];
    for (key, values) in &axes {
        out = out
            .into_iter()
            .flat_map(|p| {
                values.iter().map(move |v| Point {
                    id: format!("{}-{}", p.id, slug(v)),
                    overrides: [p.overrides.clone(), vec![format!("{key}={v}")]].concat(),
                    values: [p.values.clone(), vec![(key.clone(), v.clone())]].concat(),
                })
            })
            .collect();
    }
    Ok(out)
}

/// A value as a folder-name fragment: letters, digits, `.` and `_`.
fn slug(value: &str) -> String {
    let s: String = value.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' }).collect();
    s.trim_matches('_').to_string()
}

/// The configs of every point, checked before anything runs (an unknown key fails here).
pub fn configs(path: &Path, base_overrides: &[String], points: &[Point], tag: &str) -> Result<Vec<ExperimentConfig>> {
    points
        .iter()
        .map(|p| {
            let overrides = [base_overrides, &p.overrides[..], &[format!("run.id={}", toml::Value::String(p.id.clone()))]].concat();
            let mut config = ExperimentConfig::load(path, &overrides).with_context(|| format!("sweep point {}", p.id))?;
            if !config.experiment.tags.iter().any(|t| t == tag) {
                config.experiment.tags.push(tag.to_string());
            }
            config.experiment.id.clear();
            Ok(config)
        })
        .collect()
}

/// Where a point's run stands.
#[derive(Debug, PartialEq, Eq)]
pub enum PointStatus {
    Finished,
    /// Started and interrupted: resume it (from its last epoch, or from scratch in place when it
    /// ended before its first epoch did).
    Resumable,
    /// Not started (a folder without a config, which cannot be resumed, was moved to
    /// `<id>.interrupted-N`, keeping its files).
    Fresh,
}

pub fn prepare_folder(runs: &Path, id: &str) -> Result<PointStatus> {
    let folder = runs.join(id);
    if folder.join(RunDir::SUMMARY).is_file() {
        return Ok(PointStatus::Finished);
    }
    if folder.join(RunDir::CONFIG).is_file() {
        return Ok(PointStatus::Resumable);
    }
    if folder.exists() {
        let aside = (1..).map(|n| runs.join(format!("{id}.interrupted-{n}"))).find(|p| !p.exists()).expect("a free name");
        std::fs::rename(&folder, &aside).with_context(|| format!("moving the unfinished {} aside", folder.display()))?;
        outln!("{} has no config to resume from: kept as {}, starting it again", folder.display(), aside.display());
    }
    Ok(PointStatus::Fresh)
}

/// Splits `v1,v2,[a,b],...` at the commas outside brackets (lists of values on the command line).
pub fn split_values(values: &str) -> Vec<String> {
    let (mut out, mut depth, mut current) = (Vec::new(), 0i32, String::new());
    for ch in values.chars() {
        match ch {
            '[' | '{' => depth += 1,
            ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut current).trim().to_string());
                continue;
            }
            _ => {}
        }
        current.push(ch);
    }
    out.push(current.trim().to_string());
    out.retain(|v| !v.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_expand_to_their_cross_product() {
        let p = points("study", &["train.optimizer=\"sgd\",\"adam\"".into(), "train.lr=0.1,[0.01]".into()]).unwrap();
        let ids: Vec<&str> = p.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["study-sgd-0.1", "study-sgd-0.01", "study-adam-0.1", "study-adam-0.01"]);
        assert_eq!(p[3].overrides, vec!["train.optimizer=\"adam\"".to_string(), "train.lr=[0.01]".to_string()]);
        assert!(points("s", &["train.lr".into()]).is_err());
        assert!(points("s", &[]).is_err());
    }

    #[test]
    fn mean_and_sample_standard_deviation() {
        let m = MeanStd::of(&[0.6, 0.7, 0.8, 0.7]).unwrap();
        assert!((m.mean - 0.7).abs() < 1e-12 && m.n == 4);
        // Squares sum to 0.02, over n - 1 = 3.
        assert!((m.std - (0.02f64 / 3.0).sqrt()).abs() < 1e-12, "{m:?}");
        assert_eq!(MeanStd::of(&[0.5]), Some(MeanStd { mean: 0.5, std: 0.0, n: 1 }));
        assert_eq!(MeanStd::of(&[]), None);
        assert_eq!(m.show(100.0, 2, "%"), "70.00 ± 8.16%");
        assert_eq!(MeanStd::of(&[0.5]).unwrap().show(100.0, 2, "%"), "50.00%");
    }

    /// A finished run of `id` with the given test accuracy (and a validation loss of 1 - it).
    fn finished(id: &str, test_acc: f64) -> RunEntry {
        let summary = RunSummary {
            run_id: id.into(),
            model: "fast_net".into(),
            trainable_params: 1,
            frozen_params: 0,
            classes: Vec::new(),
            class_names: Vec::new(),
            image_size: 32,
            epochs_completed: 1,
            best_epoch: 1,
            best_val_loss: Some(1.0 - test_acc),
            best_val_acc: Some(test_acc),
            best_val_acc5: None,
            test_loss: 1.0,
            test_acc,
            test_acc5: None,
            test_images: 10,
            train_seconds: 1.0,
            total_seconds: 1.0,
        };
        let run = RunDir { path: id.into(), id: id.into() };
        RunEntry { run, config: ExperimentConfig::default(), summary: Some(summary), metrics: Vec::new(), notes: String::new() }
    }

    #[test]
    fn runs_that_differ_only_in_their_seed_are_merged() {
        let p = points("s", &["train.lr=0.1,0.01".into(), "train.seed=0,1,2".into()]).unwrap();
        let accuracy = [0.60, 0.70, 0.80, 0.50, 0.50, 0.50];
        let entries: Vec<RunEntry> = p.iter().zip(accuracy).map(|(p, a)| finished(&p.id, a)).collect();
        let groups = seed_groups(&p, &entries);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[1].values, vec![("train.lr".to_string(), "0.01".to_string())]);
        let table = seed_table(&groups);
        assert_eq!(table.header, ["train.lr", "seeds", "best val loss", "best val acc", "test acc"]);
        assert_eq!(table.rows[0], ["0.1", "3", "0.3000 ± 0.1000", "70.00 ± 10.00%", "70.00 ± 10.00%"]);
        assert_eq!(table.rows[1][1..], ["3", "0.5000 ± 0.0000", "50.00 ± 0.00%", "50.00 ± 0.00%"]);
        // The chart: mean accuracy with its spread against the learning rate.
        let dir = tempfile::tempdir().unwrap();
        let chart = dir.path().join("s.svg");
        assert!(accuracy_chart(&chart, "s", &groups).unwrap());
        let svg = std::fs::read_to_string(&chart).unwrap();
        assert!(svg.contains("train.lr") && svg.contains("test accuracy"), "{svg}");
        // Seeds alone: one row, nothing to chart against.
        let only = points("s", &["train.seed=3,4".into()]).unwrap();
        let entries: Vec<RunEntry> = only.iter().map(|p| finished(&p.id, 0.5)).collect();
        let groups = seed_groups(&only, &entries);
        assert_eq!(seed_table(&groups).rows, vec![vec!["2", "0.5000 ± 0.0000", "50.00 ± 0.00%", "50.00 ± 0.00%"]]);
        assert!(!accuracy_chart(&chart, "s", &groups).unwrap());
    }

    #[test]
    fn configs_are_checked_and_tagged_before_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[train]\nepochs = 1\n").unwrap();
        let p = points("c", &["train.lr=0.1,0.2".into()]).unwrap();
        let checked = configs(&path, &[], &p, "sweep-c").unwrap();
        assert_eq!(checked[1].train.lr, 0.2);
        assert_eq!(checked[1].run.id, "c-0.2");
        assert_eq!(checked[1].experiment.tags, vec!["sweep-c".to_string()]);
        let bad = points("c", &["train.lrr=0.1".into()]).unwrap();
        let err = format!("{:#}", configs(&path, &[], &bad, "t").unwrap_err());
        assert!(err.contains("lrr"), "{err}");
    }

    #[test]
    fn a_sweep_with_an_unknown_key_fails_before_any_run_starts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let runs = dir.path().join("runs");
        std::fs::write(&path, format!("[run]\ndir = {:?}\n", runs.display().to_string())).unwrap();
        let never = AtomicBool::new(false);
        let err = format!("{:#}", run(&path, &["train.lrr=0.1,0.2".into()], &[], None, &never).unwrap_err());
        assert!(err.contains("sweep point c-0.1") && err.contains("lrr"), "{err}");
        assert!(!runs.exists());
    }

    #[test]
    fn finished_points_are_skipped_started_ones_resumed_and_ones_without_config_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(prepare_folder(dir.path(), "a").unwrap(), PointStatus::Fresh);
        std::fs::create_dir_all(dir.path().join("a/tensorboard")).unwrap();
        assert_eq!(prepare_folder(dir.path(), "a").unwrap(), PointStatus::Fresh);
        assert!(dir.path().join("a.interrupted-1/tensorboard").is_dir());
        // Started: resumed whether or not an epoch finished (`--resume` restarts it in place then).
        std::fs::create_dir_all(dir.path().join("b")).unwrap();
        std::fs::write(dir.path().join("b/config.toml"), "").unwrap();
        assert_eq!(prepare_folder(dir.path(), "b").unwrap(), PointStatus::Resumable);
        std::fs::create_dir_all(dir.path().join("b/resume")).unwrap();
        std::fs::write(dir.path().join("b/resume/state.json"), "{}").unwrap();
        assert_eq!(prepare_folder(dir.path(), "b").unwrap(), PointStatus::Resumable);
        std::fs::write(dir.path().join("b/summary.json"), "{}").unwrap();
        assert_eq!(prepare_folder(dir.path(), "b").unwrap(), PointStatus::Finished);
    }
}
