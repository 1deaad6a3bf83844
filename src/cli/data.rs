use std::path::PathBuf;

use anyhow::Result;
use ferrovision::data;

#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Detected format, image size and per-class counts.
    Info { path: PathBuf },
}

impl DataCommand {
    pub fn run(self) -> Result<()> {
        let DataCommand::Info { path } = self;
        print!("{}", data::describe(&data::load_dataset(&path, None)?));
        Ok(())
    }
}
