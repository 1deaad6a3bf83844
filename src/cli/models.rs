use anyhow::Result;
use burn::prelude::Device;
use ferrovision::models;
use ferrovision::models::ModelConfig;
use ferrovision::outln;

/// The registry: each architecture's trainable parameters, input size and pretrained weights.
pub fn run() -> Result<()> {
    outln!("{:<20} {:>12} {:>5}  {:<18}  description", "name", "parameters", "input", "pretrained");
    let device = Device::flex();
    for architecture in models::registry() {
        let params = models::trainable_params(&models::build(&ModelConfig::named(architecture.name), 10, &device)?);
        let pretrained: Vec<&str> = architecture.pretrained().map(|w| w.name).collect();
        let pretrained = if pretrained.is_empty() { "-".to_string() } else { pretrained.join(",") };
        outln!(
            "{:<20} {:>12} {:>5}  {pretrained:<18}  {}",
            architecture.name,
            models::group_digits(params),
            architecture.input_size,
            architecture.description
        );
    }
    outln!("(parameters for 10 classes, counted as torchvision does: BatchNorm running statistics excluded)");
    Ok(())
}
