//! The verbs of the command line and what each one does; one file per verb declares its
//! arguments and calls the library.

mod args;
mod augment;
mod bench;
mod data;
mod eval;
mod export;
mod models;
mod predict;
mod prune;
mod runs;
mod serve;
mod summary;
mod sweep;
mod train;
mod viz;
mod weights;

use std::sync::atomic::AtomicBool;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ferrovision", version, about = "Train, evaluate and benchmark image classifiers")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model from a config file; writes runs/<id>/ and tests the best checkpoint.
    Train(train::TrainArgs),
    /// Train one run per point of a grid (the cross product of the --grid lists), sequentially,
    /// tagged; then compare them (Markdown, CSV, HTML and a plot in the runs folder). Started
    /// again, it skips the points that finished.
    Sweep(sweep::SweepArgs),
    /// Evaluate a run's best checkpoint on its test or validation split.
    Eval(eval::EvalArgs),
    /// Label images (files, folders or .tar.gz/.zip archives) with a run, an export or pretrained weights.
    Predict(predict::PredictArgs),
    /// An HTTP API and a web page that label images with a run, an export or pretrained weights.
    Serve(serve::ServeArgs),
    /// Pictures of what a model computes.
    Viz {
        #[command(subcommand)]
        command: viz::VizCommand,
    },
    /// A model's layers in order: name, type, output shape, parameters and FLOPs for one image.
    Summary(summary::SummaryArgs),
    /// Prune a trained run's convolution filters and fine-tune, in steps (the config's [prune]
    /// section); writes the fine-tuning run(s) and a report (size, FLOPs, speed, accuracy).
    Prune(prune::PruneArgs),
    /// Export a run's best model to safetensors, with its config and classes.
    Export(export::ExportArgs),
    /// The experiment journal: list runs, add conclusions, compare runs.
    Runs {
        #[command(subcommand)]
        command: runs::RunsCommand,
    },
    /// Look at and apply augmentation pipelines.
    Augment {
        #[command(subcommand)]
        command: augment::AugmentCommand,
    },
    /// Pretrained weights.
    Weights {
        #[command(subcommand)]
        command: weights::WeightsCommand,
    },
    /// Inspect data sets.
    Data {
        #[command(subcommand)]
        command: data::DataCommand,
    },
    /// List the model registry with trainable parameter counts.
    Models,
    /// Throughput benchmarks; each ends with a line `<number> img/s`.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

impl Cli {
    /// Runs the verb; `interrupt` (set on Ctrl-C) stops training after its current step.
    pub fn run(self, interrupt: &AtomicBool) -> Result<()> {
        match self.command {
            Command::Train(args) => args.run(interrupt),
            Command::Sweep(args) => args.run(interrupt),
            Command::Eval(args) => args.run(),
            Command::Predict(args) => args.run(),
            Command::Serve(args) => args.run(),
            Command::Viz { command } => command.run(),
            Command::Summary(args) => args.run(),
            Command::Prune(args) => args.run(interrupt),
            Command::Export(args) => args.run(),
            Command::Runs { command } => command.run(),
            Command::Augment { command } => command.run(),
            Command::Weights { command } => command.run(),
            Command::Data { command } => command.run(),
            Command::Models => models::run(),
            Command::Bench { command } => command.run(),
        }
    }
}
