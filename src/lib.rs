//! ferrovision: train, evaluate, compress and serve image classifiers, from one config file per
//! experiment, on burn's pure-Rust CPU backend by default and on GPUs when built for them.

pub mod augment;
pub mod bench;
pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod files;
pub mod kernels;
pub mod models;
pub mod serve;
pub mod tracking;
pub mod train;
pub mod viz;
pub mod weights;
