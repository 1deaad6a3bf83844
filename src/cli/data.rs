use std::path::PathBuf;

use anyhow::Result;
use ferrovision::data::{self, LabelLevel, LoadOptions};
use ferrovision::out;

#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Detected format, image size, images per class and split, and how the validation and test
    /// splits are formed. Reads CIFAR-10/100 (binary or python), image folders (train/, val/ or
    /// valid/, test/), folders of class folders, Tiny ImageNet and packed files.
    Info {
        path: PathBuf,
        /// CIFAR-100 only: read its 20 coarse labels instead of its 100 fine ones (data.labels).
        #[arg(long, value_parser = ["fine", "coarse"])]
        labels: Option<String>,
        /// Resize the images of an image folder of mixed sizes to this square size (data.input_size).
        #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        input_size: Option<usize>,
    },
}

impl DataCommand {
    pub fn run(self) -> Result<()> {
        let DataCommand::Info { path, labels, input_size } = self;
        let labels = labels.map(|l| if l == "coarse" { LabelLevel::Coarse } else { LabelLevel::Fine });
        let options = LoadOptions { image_size: input_size, labels };
        out!("{}", data::describe(&data::load_dataset(&path, None, &options)?));
        Ok(())
    }
}
