use std::path::PathBuf;

use anyhow::Result;
use ferrovision::serve::predict;
use ferrovision::viz::{activations, canvas};

use super::args::ModelArgs;
use ferrovision::outln;

#[derive(clap::Subcommand)]
pub enum VizCommand {
    /// A PNG of the feature maps the chosen layers produce for one image, after the image and the
    /// first convolution's filters. Layer names as `ferrovision summary` lists them; a module
    /// name (`stages.1`) shows its last layer.
    Activations {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        image: PathBuf,
        /// Comma-separated layer or module names.
        #[arg(long, value_delimiter = ',', required = true)]
        layers: Vec<String>,
        /// At most this many channels per layer.
        #[arg(long, default_value_t = 32)]
        channels: usize,
        #[arg(long, default_value = "activations.png")]
        out: PathBuf,
    },
}

impl VizCommand {
    pub fn run(self) -> Result<()> {
        let VizCommand::Activations { model, image, layers, channels, out } = self;
        let device = model.device.parse()?;
        let (predictor, _) = predict::load_predictor(&model.source()?, None, &device)?;
        let input = predict::read_inputs(std::slice::from_ref(&image))?.remove(0);
        let options = activations::SheetOptions { max_channels: channels, first_layer_filters: true };
        let sections = activations::sheet(&predictor, &input.image, &layers, &options)?;
        canvas::write_png(&canvas::render(&sections), &out)?;
        outln!("wrote {} ({} layers)", out.display(), layers.len());
        Ok(())
    }
}
