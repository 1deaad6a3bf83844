use anyhow::Result;
use burn::prelude::{Device, Tensor};
use ferrovision::models;

use super::args::Overrides;
use ferrovision::out;

#[derive(clap::Args)]
#[command(mut_arg("overrides", |arg| arg.help(Overrides::MODEL_KEYS_HELP)))]
pub struct SummaryArgs {
    /// A registered architecture (`ferrovision models`).
    #[arg(long)]
    model: String,
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
        let SummaryArgs { model, size, classes, overrides } = self;
        let config = overrides.model_config(&model)?;
        let size = size.or_else(|| models::default_input_size(&model)).unwrap_or(32);
        let device = Device::flex();
        let classifier = models::build(&config, classes, &device)?;
        let images = Tensor::<4>::zeros([1, 3, size, size], &device);
        let (_, layers) = models::trace::summarize(&classifier, images, false);
        out!("{}", models::trace::table(&layers, &format!("{model}, input 3x{size}x{size}, {classes} classes")));
        Ok(())
    }
}
