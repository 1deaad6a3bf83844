//! ferrovision: train, evaluate, compress and serve image classifiers, from one config file per
//! experiment, on burn's pure-Rust CPU backend by default and on GPUs when built for them.

/// `println!` for what commands print: when stdout is gone (`ferrovision models | head`), the
/// rest of the output is dropped instead of panicking, so a training run piped into `head` still
/// finishes and tests its model.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` with [`outln!`]'s handling of a closed stdout.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

pub mod augment;
pub mod bench;
pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod files;
pub mod kernels;
pub mod models;
pub mod prune;
pub mod serve;
pub mod tracking;
pub mod train;
pub mod viz;
pub mod weights;
