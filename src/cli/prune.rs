use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::Result;
use ferrovision::config::ExperimentConfig;
use ferrovision::outln;
use ferrovision::tracking::run::{config_name, new_run_id};

use super::args::{Overrides, toml_string};

#[derive(clap::Args)]
#[command(mut_arg("overrides", |arg| arg.help("Override a config key, e.g. --set prune.ratio=0.3 (repeatable)")))]
pub struct PruneArgs {
    /// A config with a [prune] section (the trained run to prune and how) and the fine-tuning
    /// settings ([data], [augment], [train], [run]).
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    overrides: Overrides,
    /// The trained run to prune (same as --set prune.source=PATH).
    #[arg(long)]
    source: Option<PathBuf>,
    /// Data set folder or archive (same as --set data.path=PATH).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Instead of pruning: the sensitivity analysis of the source run (each group pruned alone at
    /// 10..90%, evaluated on the test split without fine-tuning), written into this folder
    /// (`sensitivity.csv`, `.json`, `.svg`, `.png`).
    #[arg(long, conflicts_with = "id")]
    sensitivity: Option<PathBuf>,
    /// Run id of the fine-tuning run (default: <config name>-<UTC timestamp>; `-step<k>` is
    /// appended with several steps).
    #[arg(long)]
    id: Option<String>,
}

impl PruneArgs {
    pub fn run(self, interrupt: &AtomicBool) -> Result<()> {
        let PruneArgs { config, overrides: Overrides { mut overrides }, source, data, sensitivity, id } = self;
        let settings = [
            ("prune.source", source.map(|path| toml_string(&path.display().to_string()))),
            ("data.path", data.map(|path| toml_string(&path.display().to_string()))),
            ("run.id", id.map(|id| toml_string(&id))),
        ];
        overrides.extend(settings.into_iter().filter_map(|(key, value)| Some(format!("{key}={}", value?))));
        let path = config;
        let config = ExperimentConfig::load(&path, &overrides)?;
        if let Some(out) = sensitivity {
            let points = ferrovision::prune::sensitivity(&config, &out)?;
            outln!("{} points written to {}", points.len(), out.join("sensitivity.png").display());
            return Ok(());
        }
        let id = new_run_id(&config, &config_name(&path, "prune"))?;
        let pruned = ferrovision::prune::prune(&config, &id, interrupt);
        // The reserved folder stays empty when the steps' runs are named `<id>-step<k>` or
        // nothing was written.
        let _ = std::fs::remove_dir(config.run.dir.join(&id));
        let (run, report) = pruned?;
        let last = report.steps.last().expect("at least one step");
        outln!(
            "pruned {:.2}x fewer FLOPs, {:.2}x fewer parameters; test accuracy {:.2}% -> {:.2}% after pruning -> {:.2}% after fine-tuning\nreport in {}",
            report.before.flops as f64 / report.after.flops as f64,
            report.before.params as f64 / report.after.params as f64,
            100.0 * report.accuracy_before,
            100.0 * last.accuracy_pruned,
            100.0 * last.accuracy_finetuned,
            run.path.join("prune_report.md").display()
        );
        Ok(())
    }
}
