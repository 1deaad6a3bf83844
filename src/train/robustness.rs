//! Robustness evaluation: a trained model on its test images passed through a seeded
//! augmentation, optionally at several severities of one parameter, against the clean images.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::evaluate::RunEvaluation;
use super::sweep::split_values;
use crate::augment::NormalizePreset;
use crate::augment::transforms::{Context as TransformContext, Pipeline, Transform};
use crate::files::write_atomic;
use crate::tracking::plot::{Series, line_chart_svg};

/// One evaluated setting: a label (`clean`, `degrees=30`, ...) and the pipeline (None = clean).
#[derive(Debug)]
pub struct Setting {
    pub label: String,
    /// The swept value, for the plot's x axis.
    pub value: Option<f64>,
    pub pipeline: Option<Pipeline>,
}

/// The transforms `--transform` names: a TOML file holding `transforms = [...]` (or a config whose
/// `[augment]` has them), one inline entry
/// (`{ name = "random_rotation", degrees = 30 }`), or a bare transform name with its defaults.
pub fn parse_spec(spec: &str) -> Result<Vec<toml::Table>> {
    let (text, origin) = if Path::new(spec).is_file() {
        (std::fs::read_to_string(spec).with_context(|| format!("reading {spec}"))?, spec.to_string())
    } else if spec.trim_start().starts_with('{') {
        (format!("transforms = [{spec}]"), "--transform".to_string())
    } else {
        (format!("transforms = [{{ name = {} }}]", toml::Value::String(spec.into())), "--transform".to_string())
    };
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| anyhow::anyhow!("{origin}: {}", e.message()))?;
    // A bare list, or the [augment] section of an experiment config.
    let list = table.get("transforms").or_else(|| table.get("augment").and_then(|a| a.get("transforms")));
    let entries = list
        .and_then(|t| t.as_array())
        .with_context(|| format!("{origin}: expected `transforms = [...]` (at the top or in [augment]), a list of transform entries"))?;
    entries.iter().map(|e| e.as_table().cloned().with_context(|| format!("{origin}: every transforms entry must be a table"))).collect()
}

fn transforms_of(entries: &[toml::Table], origin: &str) -> Result<Vec<Transform>> {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            toml::Value::Table(e.clone()).try_into().map_err(|err: toml::de::Error| anyhow::anyhow!("{origin}[{i}]: {}", err.message()))
        })
        .collect()
}

/// The clean setting, then the transforms as given, or, with `sweep = "KEY=V1,V2,..."`, one
/// setting per value of KEY in the last transform entry.
pub fn settings(spec: &str, sweep: Option<&str>, normalize: NormalizePreset) -> Result<Vec<Setting>> {
    let entries = parse_spec(spec)?;
    let context = TransformContext { normalize };
    let pipeline = |transforms| Some(Pipeline { transforms, context });
    let mut all = vec![Setting { label: "clean".into(), value: None, pipeline: None }];
    match sweep {
        None => {
            let transforms = transforms_of(&entries, "--transform")?;
            let label = transforms.iter().map(Transform::name).collect::<Vec<_>>().join("+");
            all.push(Setting { label, value: None, pipeline: pipeline(transforms) });
        }
        Some(sweep) => {
            let (key, values) = sweep.split_once('=').context("--sweep: expected KEY=V1,V2,... (e.g. degrees=0,10,20)")?;
            let last = entries.len().checked_sub(1).context("--transform names no transform")?;
            for value in split_values(values) {
                let parsed: toml::Value = format!("v = {value}")
                    .parse::<toml::Table>()
                    .ok()
                    .and_then(|mut t| t.remove("v"))
                    .with_context(|| format!("--sweep: `{value}` is not a TOML value"))?;
                let mut entries = entries.clone();
                entries[last].insert(key.to_string(), parsed.clone());
                let transforms = transforms_of(&entries, "--transform").with_context(|| format!("--sweep {key}={value}"))?;
                let numeric = parsed.as_float().or(parsed.as_integer().map(|v| v as f64));
                all.push(Setting { label: format!("{key}={value}"), value: numeric, pipeline: pipeline(transforms) });
            }
        }
    }
    Ok(all)
}

/// Accuracy and loss of one setting.
pub struct Outcome {
    pub label: String,
    pub value: Option<f64>,
    pub accuracy: f64,
    pub loss: f64,
}

/// Evaluates every setting (each perturbation seeded, so a re-run gives the same figures).
pub fn evaluate_settings(evaluation: &RunEvaluation, settings: &[Setting]) -> Result<Vec<Outcome>> {
    let (h, w) = (evaluation.set.height, evaluation.set.width);
    settings
        .iter()
        .map(|s| {
            if let Some(p) = &s.pipeline {
                p.output_shape(h, w).map_err(|e| anyhow::anyhow!("--transform: {e}"))?;
            }
            let result = evaluation.evaluate(s.pipeline.as_ref())?;
            Ok(Outcome { label: s.label.clone(), value: s.value, accuracy: result.accuracy, loss: result.loss })
        })
        .collect()
}

/// A Markdown table: setting, accuracy, loss, and the drop from the clean accuracy.
pub fn markdown(outcomes: &[Outcome]) -> String {
    let clean = outcomes.first().map_or(0.0, |o| o.accuracy);
    let mut out = String::from("| setting | accuracy | loss | drop |\n|---|---:|---:|---:|\n");
    for o in outcomes {
        out.push_str(&format!("| {} | {:.2}% | {:.4} | {:+.2} |\n", o.label, 100.0 * o.accuracy, o.loss, 100.0 * (o.accuracy - clean)));
    }
    out
}

/// Writes `<dir>/<name>.csv` and, for a numeric sweep, `<dir>/<name>.svg` (accuracy against the
/// swept value, with the clean accuracy as a reference line). Returns the written paths.
pub fn write_report(outcomes: &[Outcome], dir: &Path, name: &str, sweep_key: Option<&str>) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut csv = String::from("setting,value,accuracy,loss\n");
    for o in outcomes {
        let value = o.value.map(|v| v.to_string()).unwrap_or_default();
        csv.push_str(&format!("\"{}\",{value},{:.6},{:.6}\n", o.label.replace('"', "\"\""), o.accuracy, o.loss));
    }
    let csv_path = dir.join(format!("{name}.csv"));
    write_atomic(&csv_path, csv.as_bytes())?;
    let mut written = vec![csv_path];
    let swept: Vec<(f64, f64)> = outcomes.iter().filter_map(|o| o.value.map(|v| (v, 100.0 * o.accuracy))).collect();
    if let (Some(key), true) = (sweep_key, swept.len() >= 2) {
        let clean = 100.0 * outcomes[0].accuracy;
        let (lo, hi) = swept.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &(x, _)| (lo.min(x), hi.max(x)));
        let svg_path = dir.join(format!("{name}.svg"));
        line_chart_svg(
            &svg_path,
            &format!("test accuracy under {name}"),
            key,
            "accuracy (%)",
            &[Series { name: "perturbed", points: swept }, Series { name: "clean", points: vec![(lo, clean), (hi, clean)] }],
        )?;
        written.push(svg_path);
    }
    if written.is_empty() {
        bail!("nothing written");
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_come_from_names_inline_entries_and_files() {
        let bare = settings("auto_augment", None, NormalizePreset::Cifar10).unwrap();
        assert_eq!(bare.len(), 2);
        assert_eq!(bare[1].label, "auto_augment");
        let inline =
            settings(r#"{ name = "random_rotation", degrees = 10 }"#, Some("degrees=0,15,[20, 30]"), NormalizePreset::Cifar10).unwrap();
        let labels: Vec<&str> = inline.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["clean", "degrees=0", "degrees=15", "degrees=[20, 30]"]);
        assert_eq!(inline[2].value, Some(15.0));
        assert_eq!(inline[3].value, None);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("heavy.toml");
        std::fs::write(&file, "transforms = [{ name = \"grayscale\" }, { name = \"random_horizontal_flip\", p = 1.0 }]\n").unwrap();
        let from_file = settings(file.to_str().unwrap(), None, NormalizePreset::Cifar10).unwrap();
        assert_eq!(from_file[1].label, "grayscale+random_horizontal_flip");
        let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/augment/heavy.toml");
        let from_config = settings(config.to_str().unwrap(), None, NormalizePreset::Cifar10).unwrap();
        assert!(from_config[1].label.starts_with("color_jitter+random_grayscale"), "{}", from_config[1].label);
    }

    #[test]
    fn bad_specs_and_sweeps_say_what_is_wrong() {
        let err = settings("random_flip", None, NormalizePreset::Cifar10).unwrap_err();
        assert!(format!("{err:#}").contains("random_flip"), "{err:#}");
        let err = settings(r#"{ name = "random_rotation", degrees = 10 }"#, Some("degree=1,2"), NormalizePreset::Cifar10).unwrap_err();
        assert!(format!("{err:#}").contains("degree"), "{err:#}");
        let err = settings("grayscale", Some("nonsense"), NormalizePreset::Cifar10).unwrap_err();
        assert!(format!("{err:#}").contains("KEY=V1"), "{err:#}");
    }

    #[test]
    fn report_has_a_table_csv_and_plot() {
        let outcomes = vec![
            Outcome { label: "clean".into(), value: None, accuracy: 0.9, loss: 0.3 },
            Outcome { label: "degrees=10".into(), value: Some(10.0), accuracy: 0.8, loss: 0.5 },
            Outcome { label: "degrees=20".into(), value: Some(20.0), accuracy: 0.6, loss: 0.9 },
        ];
        let table = markdown(&outcomes);
        assert!(table.contains("| degrees=20 | 60.00% | 0.9000 | -30.00 |"), "{table}");
        let dir = tempfile::tempdir().unwrap();
        let written = write_report(&outcomes, dir.path(), "random_rotation-degrees", Some("degrees")).unwrap();
        assert_eq!(written.len(), 2);
        let csv = std::fs::read_to_string(&written[0]).unwrap();
        assert!(csv.lines().nth(2).unwrap().starts_with("\"degrees=10\",10,0.8"), "{csv}");
    }
}
