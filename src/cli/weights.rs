use anyhow::Result;
use ferrovision::outln;
use ferrovision::weights::registry;

#[derive(clap::Subcommand)]
pub enum WeightsCommand {
    /// The registry of known pretrained weights.
    List,
}

impl WeightsCommand {
    pub fn run(self) -> Result<()> {
        let WeightsCommand::List = self;
        outln!("{:<20} {:>5} {:>6} {:>6}  {:<9} {:<64}  source", "name", "input", "resize", "top-1", "normalize", "sha256");
        for w in registry::all() {
            outln!(
                "{:<20} {:>5} {:>6} {:>5.1}%  {:<9} {:<64}  {}",
                w.name,
                w.input_size,
                w.resize_size,
                w.top1,
                format!("{:?}", w.normalize).to_lowercase(),
                w.sha256,
                w.url
            );
        }
        outln!("(torchvision publishes the first 8 hex digits of SHA-256; those are checked)");
        Ok(())
    }
}
