use std::path::PathBuf;

use anyhow::Result;
use ferrovision::data::classes::ClassNames;
use ferrovision::serve::predict::{self, Score};

use super::args::ModelArgs;
use ferrovision::outln;

#[derive(clap::Args)]
pub struct PredictArgs {
    /// Images, folders or .tar.gz/.zip archives of images.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// Class table: TSV with index/wnid/name columns, or one class name per line.
    #[arg(long)]
    classes: Option<PathBuf>,
    /// Score the predictions: the true class is the start of each file name (up to `_`).
    #[arg(long)]
    labels_from_file_names: bool,
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Fail (exit code 1, after labelling the rest) when an image cannot be read; without it,
    /// such images are skipped with a warning.
    #[arg(long)]
    strict: bool,
}

impl PredictArgs {
    pub fn run(self) -> Result<()> {
        let PredictArgs { inputs, model, classes, labels_from_file_names, top_k, batch, strict } = self;
        let device = model.device.parse()?;
        let source = model.source()?;
        let table = classes.as_deref().map(ClassNames::read).transpose()?;
        let (predictor, classes) = predict::load_predictor(&source, table, &device)?;
        let (readable, unreadable) = predict::read_inputs_skipping(&inputs)?;
        if readable.is_empty() {
            // Nothing to label: the (first) unreadable image is the error.
            let count = unreadable.len();
            let first = unreadable.into_iter().next().expect("every input is readable or not");
            return Err(if count == 1 { first } else { first.context(format!("none of the {count} images could be read; the first")) });
        }
        for error in &unreadable {
            eprintln!("warning: {error:#}; skipped");
        }
        let (names, images): (Vec<String>, Vec<_>) = readable.into_iter().map(|input| (input.name, input.image)).unzip();
        let predictions = predictor.predict(&images, top_k, batch);
        let label = |c: usize| classes.names.get(c).cloned().unwrap_or_else(|| c.to_string());
        let mut score = labels_from_file_names.then(|| Score::new(top_k));
        for (name, prediction) in names.iter().zip(&predictions) {
            let ranked: Vec<String> = prediction.top.iter().map(|&(c, p)| format!("{} {:.3}", label(c), p)).collect();
            outln!("{name}\t{}", ranked.join("\t"));
            if let Some(score) = &mut score {
                score.add(name, prediction, &classes)?;
            }
        }
        if let Some(score) = score {
            outln!("{score}");
        }
        if strict && !unreadable.is_empty() {
            anyhow::bail!("{} of {} images could not be read (--strict)", unreadable.len(), unreadable.len() + names.len());
        }
        Ok(())
    }
}
