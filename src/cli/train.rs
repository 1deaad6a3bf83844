use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::Result;
use ferrovision::config::ExperimentConfig;
use ferrovision::tracking::run::{config_name, new_run_id};
use ferrovision::tracking::{RunDir, RunSummary};

use super::args::{Overrides, toml_string};
use ferrovision::outln;

#[derive(clap::Args)]
#[command(mut_arg("overrides", |arg| arg.help("Override a config key, e.g. --set train.epochs=3 (repeatable)")))]
pub struct TrainArgs {
    #[arg(long, required_unless_present = "resume")]
    config: Option<PathBuf>,
    /// Continue an interrupted run (runs/<id>) from its last completed epoch; `--set
    /// train.epochs=N` extends a finished one.
    #[arg(long, conflicts_with_all = ["config", "data", "download", "id"])]
    resume: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
    /// Data set folder or archive (same as --set data.path=PATH).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Download the official CIFAR-10 archive next to data.path if it is missing.
    #[arg(long)]
    download: bool,
    /// flex (CPU, default), vulkan or cuda (builds with those features).
    #[arg(long)]
    device: Option<String>,
    /// Run id (default: <config name>-<UTC timestamp>).
    #[arg(long)]
    id: Option<String>,
}

impl TrainArgs {
    pub fn run(self, interrupt: &AtomicBool) -> Result<()> {
        let TrainArgs { config, resume, overrides: Overrides { mut overrides }, data, download, device, id } = self;
        // The options that stand for config keys, as the overrides they are.
        let settings = [
            ("data.path", data.map(|path| toml_string(&path.display().to_string()))),
            ("data.download", download.then(|| "true".to_string())),
            ("run.device", device.map(|device| toml_string(&device))),
            ("run.id", id.map(|id| toml_string(&id))),
        ];
        overrides.extend(settings.into_iter().filter_map(|(key, value)| Some(format!("{key}={}", value?))));
        let (run, summary) = match (config, resume) {
            (_, Some(dir)) => {
                let (run, _) = RunDir::open(&dir)?;
                let config = ExperimentConfig::load(&dir.join(RunDir::CONFIG), &overrides)?;
                ferrovision::train::resume(&run, &config, interrupt)?
            }
            (config, None) => {
                let path = config.expect("clap requires --config without --resume");
                let config = ExperimentConfig::load(&path, &overrides)?;
                let id = new_run_id(&config, &config_name(&path, "run"))?;
                let trained = ferrovision::train::fit(&config, &id, interrupt);
                if trained.is_err() {
                    // A run that failed before writing anything leaves no folder behind (only an
                    // empty one is removed: a reserved id).
                    let _ = std::fs::remove_dir(config.run.dir.join(&id));
                }
                trained?
            }
        };
        print_summary(&run, &summary);
        Ok(())
    }
}

fn print_summary(run: &RunDir, summary: &RunSummary) {
    outln!(
        "test accuracy {:.2}%{} (loss {:.4}) on {} images, best epoch {}, trained {:.0}s, total {:.0}s\nrun saved in {}",
        100.0 * summary.test_acc,
        summary.test_acc5.map(|a| format!(" top-5 {:.2}%", 100.0 * a)).unwrap_or_default(),
        summary.test_loss,
        summary.test_images,
        summary.best_epoch,
        summary.train_seconds,
        summary.total_seconds,
        run.path.display()
    );
}
