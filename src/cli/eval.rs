use std::path::{Path, PathBuf};

use anyhow::Result;
use ferrovision::tracking::RunDir;
use ferrovision::train::evaluate::EvalTarget;
use ferrovision::train::{self, RunEvaluation, robustness};
use ferrovision::{out, outln};

#[derive(clap::Args)]
pub struct EvalArgs {
    #[arg(long)]
    run: PathBuf,
    #[arg(long, default_value = "test", value_parser = ["test", "val"])]
    split: String,
    #[arg(long)]
    device: Option<String>,
    /// Evaluate this checkpoint name instead of `best` (e.g. `last`).
    #[arg(long, default_value = "best")]
    checkpoint: String,
    /// Evaluate on another copy of the run's data set (e.g. CIFAR-10's binary release for a run
    /// trained on the JPEG folders): a folder or archive with the same classes in the same order
    /// and images of the size the model trained on; the run's data.* split settings apply to it.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Robustness: also evaluate the images passed through this augmentation (seeded): a
    /// transform name, an inline entry `{ name = "random_rotation", degrees = 30 }`, or a TOML
    /// file with `transforms = [...]`.
    #[arg(long)]
    transform: Option<String>,
    /// With --transform: one evaluation per value of a parameter of its last entry, e.g.
    /// `degrees=0,10,20,30`; writes a CSV and an SVG plot into <run>/robustness/.
    #[arg(long, requires = "transform", value_name = "KEY=V1,V2,...")]
    sweep: Option<String>,
    /// Test-time augmentation (default: the run's train.tta).
    #[arg(long, value_parser = ["none", "flip", "flip_translate", "flip_translate_airbench"])]
    tta: Option<String>,
}

impl EvalArgs {
    pub fn run(self) -> Result<()> {
        let EvalArgs { run, split, device, checkpoint, data, transform, sweep, tta } = self;
        let (run, mut config) = RunDir::open(&run)?;
        if let Some(trained) = train::resume::trained_config(&run)? {
            let changed = train::resume::changed_settings(&trained, &config);
            if !changed.is_empty() {
                eprintln!(
                    "warning: {} was edited after training ({}); evaluating with the settings the run trained with",
                    run.path.join(RunDir::CONFIG).display(),
                    changed.join(", ")
                );
                config = trained;
            }
        }
        if let Some(device) = device {
            config.run.device = device;
        }
        if let Some(tta) = tta {
            config.train.tta = serde_json::from_value(serde_json::Value::String(tta))?;
        }
        let target = EvalTarget { split: &split, checkpoint: &checkpoint, data: data.as_deref() };
        let Some(spec) = transform else {
            for stem in train::evaluate_run(&run, &config, &target, |report| out!("{report}"))? {
                outln!("wrote {}.{{svg,png}}", stem.display());
            }
            return Ok(());
        };
        let settings = robustness::settings(&spec, sweep.as_deref(), config.augment.normalize)?;
        let evaluation = RunEvaluation::load(&run, &config, &target)?;
        outln!("run {} checkpoint {checkpoint}, {} ({} images)", run.id, target.describe(), evaluation.set.len());
        let outcomes = robustness::evaluate_settings(&evaluation, &settings)?;
        out!("{}", robustness::markdown(&outcomes));
        let key = sweep.as_deref().map(|s| s.split_once('=').map_or(s, |(k, _)| k));
        // Named after the spec's file, or after the (last) transform it names.
        let spec_path = Path::new(&spec);
        let base = match spec_path.is_file().then(|| spec_path.file_stem()).flatten() {
            Some(stem) => stem.to_string_lossy().into_owned(),
            None => settings[1].pipeline.as_ref().and_then(|p| p.transforms.last()).map_or("transform", |t| t.name()).to_string(),
        };
        let name = key.map_or(base.clone(), |k| format!("{base}-{k}"));
        let name = match target.copy_name() {
            Some(copy) => format!("{name}-{copy}"),
            None => name,
        };
        for path in robustness::write_report(&outcomes, &run.path.join("robustness"), &name, key)? {
            outln!("wrote {}", path.display());
        }
        Ok(())
    }
}
