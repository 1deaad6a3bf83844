//! The `ferrovision` command line: parses arguments and calls the library.

mod cli;

use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;

/// Set by the first Ctrl-C: training finishes its current step, saves the last checkpoint and stops.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn main() {
    ferrovision::device::restart_with_huge_pages();
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    ferrovision::device::keep_freed_memory();
    ferrovision::device::make_this_thread_a_worker();
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: finishing the current step and saving the last checkpoint (Ctrl-C again to abort)");
    });
    if let Err(error) = cli::Cli::parse().run(&INTERRUPTED) {
        eprintln!("error: {error:#}");
        std::process::exit(if INTERRUPTED.load(Ordering::SeqCst) { 130 } else { 1 });
    }
}
