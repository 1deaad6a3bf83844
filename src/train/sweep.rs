//! `ferrovision sweep`: one run per point of the cross product of `--grid key=v1,v2,...` lists,
//! sequentially, each tagged with the sweep's name so `runs compare --tag` finds them. Started
//! again, a sweep skips the runs that finished and resumes the one that was interrupted.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};

use crate::config::ExperimentConfig;
use crate::files::write_atomic;
use crate::tracking::journal::{self, RunEntry};
use crate::tracking::{RunDir, plot};

/// Trains the run of every point of the grid in turn, printing where the sweep stands: a finished
/// run is skipped, an interrupted one resumed. Then compares them: prints the Markdown table and
/// writes it as `<tag>.csv` and `<tag>.html` into the runs folder, with `<tag>.svg`, a chart of
/// test accuracy, when one value was swept. `tag` defaults to `sweep-<config name>`. Returns the
/// files written.
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
    let mut written = vec![runs.join(format!("{tag}.csv")), runs.join(format!("{tag}.html"))];
    write_atomic(&written[0], table.csv().as_bytes())?;
    write_atomic(&written[1], journal::html_report(&entries, &tag)?.as_bytes())?;
    if let [grid] = grids {
        let chart = runs.join(format!("{tag}.svg"));
        if accuracy_chart(&chart, &tag, grid, &points, &entries)? {
            written.push(chart);
        }
    }
    Ok(written)
}

/// Test accuracy against the one swept value, along a number line when every value is a number,
/// else one point per value; not drawn (false) when a run has no test accuracy.
fn accuracy_chart(path: &Path, tag: &str, grid: &str, points: &[Point], entries: &[RunEntry]) -> Result<bool> {
    let key = grid.split('=').next().unwrap_or_default();
    let accuracy: Option<Vec<f64>> = entries.iter().map(|e| e.summary.as_ref().map(|s| 100.0 * s.test_acc)).collect();
    let Some(accuracy) = accuracy else { return Ok(false) };
    let values: Vec<&str> = points.iter().map(|p| p.values[0].1.as_str()).collect();
    let numbers: Option<Vec<f64>> = values.iter().map(|v| v.parse().ok()).collect();
    let title = format!("test accuracy, {tag}");
    match numbers {
        Some(numbers) => {
            let series = plot::Series { name: key, points: numbers.into_iter().zip(accuracy).collect() };
            plot::line_chart_svg(path, &title, key, "test accuracy (%)", &[series])?;
        }
        None => {
            let names: Vec<String> = values.iter().map(|v| v.trim_matches('"').to_string()).collect();
            plot::category_chart_svg(path, &title, key, "test accuracy (%)", &names, &accuracy)?;
        }
    }
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
    /// Interrupted after a completed epoch: resume it.
    Resumable,
    /// Not started (an unfinished folder with nothing to resume from was moved to
    /// `<id>.interrupted-N`, keeping its files).
    Fresh,
}

pub fn prepare_folder(runs: &Path, id: &str) -> Result<PointStatus> {
    let folder = runs.join(id);
    if folder.join(RunDir::SUMMARY).is_file() {
        return Ok(PointStatus::Finished);
    }
    if super::resume::has_point(&folder) {
        return Ok(PointStatus::Resumable);
    }
    if folder.exists() {
        let aside = (1..).map(|n| runs.join(format!("{id}.interrupted-{n}"))).find(|p| !p.exists()).expect("a free name");
        std::fs::rename(&folder, &aside).with_context(|| format!("moving the unfinished {} aside", folder.display()))?;
        outln!("{} ended before its first epoch: kept as {}, starting it again", folder.display(), aside.display());
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
    fn finished_points_are_skipped_interrupted_ones_resumed_and_empty_ones_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(prepare_folder(dir.path(), "a").unwrap(), PointStatus::Fresh);
        std::fs::create_dir_all(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/config.toml"), "").unwrap();
        assert_eq!(prepare_folder(dir.path(), "a").unwrap(), PointStatus::Fresh);
        assert!(dir.path().join("a.interrupted-1/config.toml").is_file());
        std::fs::create_dir_all(dir.path().join("b/resume")).unwrap();
        std::fs::write(dir.path().join("b/resume/state.json"), "{}").unwrap();
        assert_eq!(prepare_folder(dir.path(), "b").unwrap(), PointStatus::Resumable);
        std::fs::write(dir.path().join("b/summary.json"), "{}").unwrap();
        assert_eq!(prepare_folder(dir.path(), "b").unwrap(), PointStatus::Finished);
    }
}
