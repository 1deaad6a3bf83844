//! `[run]`: where a run's folder goes, its id, the device, and what it reports while training;
//! `[experiment]`: how the journal files the run.

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

/// `[experiment]`: the journal entry of a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExperimentInfo {
    /// The run id (e.g. "EXP007"); empty = `run.id` or `<config name>-<timestamp>`.
    pub id: String,
    pub name: String,
    /// Id of the experiment this one varies.
    pub parent: String,
    pub tags: Vec<String>,
    /// Why the experiment is run.
    pub motivation: String,
}
