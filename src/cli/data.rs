use std::path::PathBuf;

use anyhow::Result;
use ferrovision::data;
use ferrovision::out;

#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Detected format, image size and per-class counts.
    Info { path: PathBuf },
}

impl DataCommand {
    pub fn run(self) -> Result<()> {
        let DataCommand::Info { path } = self;
        out!("{}", data::describe(&data::load_dataset(&path, None)?));
        Ok(())
    }
}
