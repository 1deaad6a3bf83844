use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::Result;

use super::args::Overrides;
use ferrovision::outln;

#[derive(clap::Args)]
pub struct SweepArgs {
    #[arg(long)]
    config: PathBuf,
    /// KEY=V1,V2,... (repeatable), e.g. --grid train.optimizer='"sgd","adam"'.
    #[arg(long = "grid", value_name = "KEY=V1,V2,...", required = true)]
    grids: Vec<String>,
    #[command(flatten)]
    overrides: Overrides,
    /// Tag of the sweep's runs (default: sweep-<config name>).
    #[arg(long)]
    tag: Option<String>,
}

impl SweepArgs {
    pub fn run(self, interrupt: &AtomicBool) -> Result<()> {
        let written = ferrovision::train::sweep::run(&self.config, &self.grids, &self.overrides.overrides, self.tag.as_deref(), interrupt)?;
        for path in written {
            outln!("wrote {}", path.display());
        }
        Ok(())
    }
}
