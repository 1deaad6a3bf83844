use std::path::PathBuf;

use anyhow::Result;
use ferrovision::outln;

#[derive(clap::Args)]
pub struct ExportArgs {
    #[arg(long)]
    run: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "best")]
    checkpoint: String,
}

impl ExportArgs {
    pub fn run(self) -> Result<()> {
        let written = ferrovision::serve::export::export_run(&self.run, &self.checkpoint, &self.out)?;
        outln!("{} exported to {}", written, self.out.display());
        Ok(())
    }
}
