//! The experiment journal: every run folder under a root, what it was for (`[experiment]`), its
//! notes, and comparisons of runs as Markdown, CSV or a self-contained HTML report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::plot::{Series, line_chart_svg_text};
use super::{EpochMetrics, RunDir, RunSummary};
use crate::config::ExperimentConfig;
use crate::files::write_atomic;

/// One run as the journal sees it.
pub struct RunEntry {
    pub run: RunDir,
    pub config: ExperimentConfig,
    /// Absent while the run trains or when it stopped early.
    pub summary: Option<RunSummary>,
    pub metrics: Vec<EpochMetrics>,
    pub notes: String,
}

pub const NOTES: &str = "notes.md";

impl RunEntry {
    pub fn open(path: &Path) -> Result<Self> {
        let (run, config) = RunDir::open(path)?;
        let summary = run.path.join(RunDir::SUMMARY).is_file().then(|| run.read_summary()).transpose()?;
        let metrics = if run.path.join(RunDir::METRICS).is_file() { run.read_metrics()? } else { Vec::new() };
        let notes = std::fs::read_to_string(run.path.join(NOTES)).unwrap_or_default();
        Ok(Self { run, config, summary, metrics, notes })
    }

    /// The epoch of the run's `best` checkpoint (chosen by its `train.best_by`).
    fn best_epoch(&self) -> Option<&EpochMetrics> {
        self.config.train.best_by.best_epoch(&self.metrics)
    }
}

/// Every run folder under `root` (those with a `config.toml`), sorted by id.
pub fn scan(root: &Path) -> Result<Vec<RunEntry>> {
    let entries = std::fs::read_dir(root).with_context(|| format!("reading runs folder {}", root.display()))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.join(RunDir::CONFIG).is_file()).collect();
    paths.sort();
    paths.iter().map(|p| RunEntry::open(p)).collect()
}

/// The runs named by id, or tagged `tag`, or children of `parent` (with the parent itself).
pub fn select(all: Vec<RunEntry>, ids: &[String], tag: Option<&str>, parent: Option<&str>) -> Result<Vec<RunEntry>> {
    for id in ids {
        if !all.iter().any(|e| &e.run.id == id) {
            bail!("no run `{id}` in the runs folder");
        }
    }
    let chosen: Vec<RunEntry> = all
        .into_iter()
        .filter(|e| {
            let x = &e.config.experiment;
            ids.contains(&e.run.id)
                || tag.is_some_and(|t| x.tags.iter().any(|have| have == t))
                || parent.is_some_and(|p| x.parent == p || e.run.id == p)
        })
        .collect();
    if chosen.is_empty() {
        bail!("no run matches; name run ids, --tag or --parent");
    }
    Ok(chosen)
}

/// Appends a dated paragraph to the run's `notes.md`.
pub fn add_note(run: &Path, text: &str, date: &str) -> Result<()> {
    RunDir::open(run)?;
    let path = run.join(NOTES);
    let mut notes = std::fs::read_to_string(&path).unwrap_or_default();
    notes.push_str(&format!("## {date}\n\n{}\n\n", text.trim()));
    write_atomic(&path, notes.as_bytes())
}

/// A table of strings with a header row.
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn markdown(&self) -> String {
        let line = |cells: &[String]| format!("| {} |\n", cells.iter().map(|c| c.replace('|', "\\|")).collect::<Vec<_>>().join(" | "));
        let mut out = line(&self.header);
        out.push_str(&format!("|{}\n", "---|".repeat(self.header.len())));
        self.rows.iter().for_each(|r| out.push_str(&line(r)));
        out
    }

    pub fn csv(&self) -> String {
        let field = |c: &String| if c.contains([',', '"', '\n']) { format!("\"{}\"", c.replace('"', "\"\"")) } else { c.clone() };
        std::iter::once(&self.header).chain(&self.rows).map(|r| r.iter().map(field).collect::<Vec<_>>().join(",") + "\n").collect()
    }

    fn html(&self) -> String {
        let cells = |r: &[String], tag: &str| r.iter().map(|c| format!("<{tag}>{}</{tag}>", escape(c))).collect::<String>();
        let mut out = format!("<table>\n<tr>{}</tr>\n", cells(&self.header, "th"));
        for row in &self.rows {
            out.push_str(&format!("<tr>{}</tr>\n", cells(row, "td")));
        }
        out + "</table>\n"
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn percent(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}%", 100.0 * v))
}

/// `runs list`: one line per run.
pub fn list(entries: &[RunEntry]) -> Table {
    let header = ["id", "name", "parent", "tags", "model", "epochs", "best val acc", "test acc", "train time"];
    let rows = entries
        .iter()
        .map(|e| {
            let x = &e.config.experiment;
            vec![
                e.run.id.clone(),
                x.name.clone(),
                x.parent.clone(),
                x.tags.join(" "),
                e.config.model.name.clone(),
                e.metrics.len().to_string(),
                percent(e.best_epoch().and_then(|b| b.val_acc)),
                percent(e.summary.as_ref().map(|s| s.test_acc)),
                e.summary.as_ref().map_or("-".into(), |s| format!("{:.0} s", s.train_seconds)),
            ]
        })
        .collect();
    Table { header: header.map(String::from).to_vec(), rows }
}

/// Every config key as `section.key = value` (values in TOML syntax).
pub(crate) fn flat_settings(config: &ExperimentConfig) -> BTreeMap<String, String> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, String>) {
        for (key, value) in table {
            let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
            match value {
                toml::Value::Table(t) => walk(&path, t, out),
                other => {
                    out.insert(path, other.to_string());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(toml::Value::Table(t)) = toml::Value::try_from(config) {
        walk("", &t, &mut out);
    }
    out
}

/// Keys that name or describe a run rather than set it up.
fn is_bookkeeping(key: &str) -> bool {
    key.starts_with("experiment.") || matches!(key, "run.id" | "run.dir" | "run.progress" | "run.tensorboard")
}

/// `runs compare`: the settings that differ between the runs, then their results.
pub fn compare(entries: &[RunEntry]) -> Table {
    let settings: Vec<BTreeMap<String, String>> = entries.iter().map(|e| flat_settings(&e.config)).collect();
    let keys: Vec<&String> = settings
        .iter()
        .flat_map(|s| s.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| !is_bookkeeping(k) && settings.iter().any(|s| s.get(*k) != settings[0].get(*k)))
        .collect();
    let mut header = vec!["id".to_string()];
    header.extend(keys.iter().map(|k| k.to_string()));
    header.extend(["best val loss", "best val acc", "test acc", "parameters", "epochs", "train time"].map(String::from));
    let rows = entries
        .iter()
        .zip(&settings)
        .map(|(e, s)| {
            let best = e.best_epoch();
            let mut row = vec![e.run.id.clone()];
            row.extend(keys.iter().map(|k| s.get(*k).cloned().unwrap_or_else(|| "-".into())));
            row.extend([
                best.and_then(|b| b.val_loss).map_or("-".into(), |loss| format!("{loss:.4}")),
                percent(best.and_then(|b| b.val_acc)),
                percent(e.summary.as_ref().map(|s| s.test_acc)),
                e.summary.as_ref().map_or("-".into(), |s| s.trainable_params.to_string()),
                e.metrics.len().to_string(),
                e.summary.as_ref().map_or("-".into(), |s| format!("{:.0} s", s.train_seconds)),
            ]);
            row
        })
        .collect();
    Table { header, rows }
}

/// One chart per metric, the runs overlaid.
fn curves(entries: &[RunEntry]) -> Result<Vec<String>> {
    type Pick = fn(&EpochMetrics) -> Option<f64>;
    let charts: [(&str, &str, Pick); 4] = [
        ("validation accuracy", "accuracy", |m| m.val_acc),
        ("validation loss", "loss", |m| m.val_loss),
        ("training loss", "loss", |m| Some(m.train_loss)),
        ("learning rate", "lr", |m| Some(m.lr)),
    ];
    let mut out = Vec::new();
    for (title, y, pick) in charts {
        let series: Vec<Series> = entries
            .iter()
            .map(|e| Series { name: &e.run.id, points: e.metrics.iter().filter_map(|m| pick(m).map(|v| (m.epoch as f64, v))).collect() })
            .filter(|s| !s.points.is_empty())
            .collect();
        if !series.is_empty() {
            out.push(line_chart_svg_text(title, "epoch", y, &series)?);
        }
    }
    Ok(out)
}

/// A self-contained HTML page: the comparison table (after `merged`, a sweep's results merged
/// over seeds, when given), each run's motivation and notes, and the learning curves of all runs
/// (inline SVG).
pub fn html_report(entries: &[RunEntry], title: &str, merged: Option<&Table>) -> Result<String> {
    let mut body = format!("<h1>{}</h1>\n", escape(title));
    if let Some(merged) = merged {
        body.push_str(&format!("<h2>Mean ± standard deviation over seeds</h2>\n{}<h2>Runs</h2>\n", merged.html()));
    }
    body.push_str(&compare(entries).html());
    for chart in curves(entries)? {
        body.push_str(&format!("<div class=\"chart\">{chart}</div>\n"));
    }
    for e in entries {
        let x = &e.config.experiment;
        if x.motivation.is_empty() && e.notes.is_empty() {
            continue;
        }
        body.push_str(&format!(
            "<h2>{}{}</h2>\n",
            escape(&e.run.id),
            if x.name.is_empty() { String::new() } else { format!(": {}", escape(&x.name)) }
        ));
        if !x.motivation.is_empty() {
            body.push_str(&format!("<p><b>Motivation.</b> {}</p>\n", escape(&x.motivation)));
        }
        if !e.notes.is_empty() {
            body.push_str(&format!("<pre>{}</pre>\n", escape(&e.notes)));
        }
    }
    Ok(format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{}</title>\n<style>body{{font-family:sans-serif;margin:2em}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:3px 8px;text-align:right}}\
         .chart{{display:inline-block}}</style></head><body>\n{body}</body></html>\n",
        escape(title)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A finished run folder with the given settings and per-epoch validation accuracies.
    fn fake_run(root: &Path, id: &str, config: &ExperimentConfig, val_accs: &[f64]) {
        let run = RunDir::create(root, id, config).unwrap();
        for (i, &acc) in val_accs.iter().enumerate() {
            run.append_metrics(&EpochMetrics {
                epoch: i + 1,
                train_loss: 1.0 / (i + 1) as f64,
                train_acc: acc,
                val_loss: Some(1.0 - acc),
                val_acc: Some(acc),
                ..EpochMetrics::example(None)
            })
            .unwrap();
        }
    }

    fn config(optimizer: &str, tags: &[&str], parent: &str) -> ExperimentConfig {
        let mut c = ExperimentConfig::from_toml(&format!("[train]\noptimizer = \"{optimizer}\"\n"), "t", &[]).unwrap();
        c.experiment.tags = tags.iter().map(|t| t.to_string()).collect();
        c.experiment.parent = parent.into();
        c
    }

    #[test]
    fn compare_shows_only_the_settings_that_differ() {
        let dir = tempfile::tempdir().unwrap();
        fake_run(dir.path(), "EXP001", &config("sgd", &["opt"], ""), &[0.5, 0.6]);
        fake_run(dir.path(), "EXP002", &config("adam", &["opt"], "EXP001"), &[0.55, 0.7, 0.65]);
        fake_run(dir.path(), "EXP003", &config("rmsprop", &[], "EXP001"), &[0.4]);
        let all = scan(dir.path()).unwrap();
        assert_eq!(all.len(), 3);
        let tagged = select(scan(dir.path()).unwrap(), &[], Some("opt"), None).unwrap();
        let table = compare(&tagged);
        assert_eq!(table.header[..2], ["id".to_string(), "train.optimizer".to_string()]);
        assert_eq!(table.rows[1][..2], ["EXP002".to_string(), "\"adam\"".to_string()]);
        // Best validation loss is the epoch with accuracy 0.7.
        let md = table.markdown();
        assert!(md.contains("| EXP002 | \"adam\" | 0.3000 | 70.00% |"), "{md}");
        let children = select(scan(dir.path()).unwrap(), &[], None, Some("EXP001")).unwrap();
        assert_eq!(children.len(), 3);
        assert!(select(scan(dir.path()).unwrap(), &["EXP999".into()], None, None).is_err());
        assert!(table.csv().starts_with("id,train.optimizer,best val loss"));
        let html = html_report(&tagged, "optimizers", None).unwrap();
        assert!(html.contains("<svg") && html.contains("EXP002") && html.contains("</html>"));
        assert_eq!(list(&all).rows.len(), 3);
    }

    #[test]
    fn notes_accumulate_in_the_run_folder() {
        let dir = tempfile::tempdir().unwrap();
        fake_run(dir.path(), "r", &ExperimentConfig::default(), &[0.5]);
        let run = dir.path().join("r");
        add_note(&run, "Adam overfits.", "2026-11-22").unwrap();
        add_note(&run, "Second thought.", "2026-11-23").unwrap();
        let notes = std::fs::read_to_string(run.join(NOTES)).unwrap();
        assert_eq!(notes, "## 2026-11-22\n\nAdam overfits.\n\n## 2026-11-23\n\nSecond thought.\n\n");
        assert!(add_note(&dir.path().join("missing"), "x", "d").is_err());
    }
}
