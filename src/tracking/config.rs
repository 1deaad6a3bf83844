//! `[run]`: where a run's folder goes, its id, the device, and what it reports while training.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Folder under which each run gets its own `<id>/` folder.
    pub dir: PathBuf,
    /// Run id; empty = `<config name>-<timestamp>`.
    pub id: String,
    /// `flex` (pure-Rust CPU, default), `vulkan` or `cuda` (with the matching cargo feature).
    pub device: String,
    /// Show a progress bar on a terminal.
    pub progress: bool,
    /// Write TensorBoard event files into `<run>/tensorboard/`.
    pub tensorboard: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self { dir: PathBuf::from("runs"), id: String::new(), device: "flex".into(), progress: true, tensorboard: true }
    }
}
