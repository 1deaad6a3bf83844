//! `--device` names to burn devices. GPU backends exist only in builds with their cargo feature.

use anyhow::{Result, bail};
use burn::prelude::Device;

/// The names `--device` accepts in this build.
pub fn available() -> Vec<&'static str> {
    let mut names = vec!["flex"];
    if cfg!(feature = "vulkan") {
        names.push("vulkan");
    }
    if cfg!(feature = "cuda") {
        names.push("cuda");
    }
    names
}

/// The device a name selects (without autodiff; training adds it).
pub fn parse(name: &str) -> Result<Device> {
    match name {
        "flex" | "cpu" => Ok(Device::flex()),
        #[cfg(feature = "vulkan")]
        "vulkan" => Ok(Device::vulkan(burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(0)),
        "vulkan" | "cuda" => {
            bail!("device `{name}` needs a build with its GPU backend: cargo build --release --features {name}")
        }
        other => bail!("unknown device `{other}`; this build supports: {}", available().join(", ")),
    }
}
