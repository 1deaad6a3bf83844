use anyhow::Result;
use burn::prelude::{Device, Tensor};
use ferrovision::models;

use super::args::Overrides;
use ferrovision::out;

#[derive(clap::Args)]
#[command(mut_arg("overrides", |arg| arg.help(Overrides::MODEL_KEYS_HELP)))]
pub struct SummaryArgs {
    /// A registered architecture (`ferrovision models`).
    #[arg(long, required_unless_present = "run")]
    model: Option<String>,
    /// A training run folder instead: its model as it trains (a pruned run's channels, its head),
    /// at its image size and classes.
    #[arg(long, conflicts_with_all = ["model", "size", "classes"])]
    run: Option<std::path::PathBuf>,
    /// Side of the square input (default: the size the model was designed for).
    #[arg(long)]
    size: Option<usize>,
    #[arg(long, default_value_t = 10)]
    classes: usize,
    #[command(flatten)]
    overrides: Overrides,
}

impl SummaryArgs {
    pub fn run(self) -> Result<()> {
        let SummaryArgs { model, run, size, classes, overrides } = self;
        let device = Device::flex();
        let (classifier, model, size, classes) = match (run, model) {
            (Some(run), _) => {
                let (run, config) = ferrovision::tracking::RunDir::open(&run)?;
                let summary = run.read_summary()?;
                let classes = summary.classes.len();
                let (classifier, _) = models::transfer::build(&config.model, &config.transfer, classes, &device, None)?;
                (classifier, config.model.name, summary.image_size, classes)
            }
            (None, Some(model)) => {
                let config = overrides.model_config(&model)?;
                let size = size.or_else(|| models::default_input_size(&model)).unwrap_or(32);
                (models::build(&config, classes, &device)?, model, size, classes)
            }
            (None, None) => unreachable!("clap requires --model without --run"),
        };
        let images = Tensor::<4>::zeros([1, 3, size, size], &device);
        let (_, layers) = models::trace::summarize(&classifier, images, false);
        out!("{}", models::trace::table(&layers, &format!("{model}, input 3x{size}x{size}, {classes} classes")));
        Ok(())
    }
}
