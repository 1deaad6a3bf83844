//! Run folders: the resolved config, per-epoch metrics, checkpoints and the final summary.

pub mod config;
pub mod journal;
pub mod plot;
pub mod run;
pub mod tensorboard;

pub use run::{EpochMetrics, RunDir, RunSummary, utc_now};
