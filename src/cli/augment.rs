use std::path::PathBuf;

use anyhow::Result;
use ferrovision::augment::transforms::Pipeline;
use ferrovision::config::ExperimentConfig;
use ferrovision::data::expand;
use ferrovision::data::{self, cache};
use ferrovision::viz::augment_preview as preview;

use super::args::Overrides;
use ferrovision::outln;

#[derive(clap::Subcommand)]
pub enum AugmentCommand {
    /// A PNG grid: training images (one per class in turn) next to augmented copies.
    Preview {
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        overrides: Overrides,
        /// Augmented copies per image.
        #[arg(long, default_value_t = 8)]
        n: usize,
        /// Images (rows).
        #[arg(long, default_value_t = 6)]
        rows: usize,
        /// Scale factor of every cell (nearest neighbour).
        #[arg(long, default_value_t = 3)]
        zoom: usize,
        #[arg(long, default_value = "augment-preview.png")]
        out: PathBuf,
    },
    /// Write an offline-augmented copy of the config's data set: N augmented images per training
    /// image, the test split unchanged; an image folder of PNGs (resumable) or one packed file.
    Expand {
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        overrides: Overrides,
        #[arg(long)]
        copies: usize,
        /// Also keep each original training image.
        #[arg(long)]
        include_original: bool,
        /// folder: train/<class>/*.png + test/ (streams, resumable); packed: one .fvpack file of
        /// decoded images (built in memory, fastest to load).
        #[arg(long, default_value = "folder", value_parser = ["folder", "packed"])]
        format: String,
        #[arg(long)]
        out: PathBuf,
    },
}

impl AugmentCommand {
    pub fn run(self) -> Result<()> {
        match self {
            AugmentCommand::Preview { config, overrides, n, rows, zoom, out } => {
                let config = ExperimentConfig::load(&config, &overrides.overrides)?;
                let data = ferrovision::train::prepare_data(&config)?;
                let pipeline = Pipeline::from_config(&config.augment);
                pipeline.output_shape(data.train.height, data.train.width)?;
                let picks = preview::pick_images(&data.train, rows);
                let grid = preview::grid(&data.train, &data.classes.names, &pipeline, &picks, n, zoom.max(1), config.train.seed);
                ferrovision::viz::canvas::write_png(&grid, &out)?;
                outln!("wrote {} ({} images x {} augmented copies)", out.display(), picks.len(), n);
            }
            AugmentCommand::Expand { config, overrides, copies, include_original, format, out } => {
                let config = ExperimentConfig::load(&config, &overrides.overrides)?;
                let d = &config.data;
                let dataset = data::load_dataset(&d.path, Some(&d.cache_dir), &config.load_options())?;
                let pipeline = Pipeline::from_config(&config.augment);
                let options = expand::ExpandOptions { copies, include_original, seed: config.train.seed };
                let bar = indicatif::ProgressBar::new(expand::total_files(&dataset, &options) as u64);
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} images, {per_sec}, eta {eta}")
                        .expect("valid progress template"),
                );
                if format == "packed" {
                    if !cache::is_packed(&out) {
                        anyhow::bail!("--out {}: a packed data set is one file named *.{}", out.display(), cache::PACKED_EXTENSION);
                    }
                    let images = expand::expand_packed(&dataset, &pipeline, &out, &options, &bar)?;
                    bar.finish_and_clear();
                    outln!(
                        "{}: {images} images packed ({} train x {copies} copies, {} test)",
                        out.display(),
                        dataset.train.len(),
                        dataset.test.len()
                    );
                    return Ok(());
                }
                let report = expand::expand(&dataset, &pipeline, &out, &options, &bar)?;
                bar.finish_and_clear();
                outln!(
                    "{}: {} images written, {} already there from an earlier run ({} train x {} copies{}, {} test)",
                    out.display(),
                    report.written,
                    report.skipped,
                    dataset.train.len(),
                    copies,
                    if include_original { " + originals" } else { "" },
                    dataset.test.len()
                );
            }
        }
        Ok(())
    }
}
