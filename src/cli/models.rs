use anyhow::Result;
use burn::prelude::Device;
use ferrovision::models;
use ferrovision::models::ModelConfig;

/// The registry with each model's trainable parameters.
pub fn run() -> Result<()> {
    println!("{:<20} {:>12}  description", "name", "parameters");
    let device = Device::flex();
    for entry in models::registry() {
        let config = ModelConfig { name: entry.name.into(), ..Default::default() };
        let params = models::trainable_params(&models::build(&config, 10, &device)?);
        println!("{:<20} {:>12}  {}", entry.name, models::group_digits(params), entry.description);
    }
    println!("(parameters for 10 classes, counted as torchvision does: BatchNorm running statistics excluded)");
    Ok(())
}
