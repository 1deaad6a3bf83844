use std::path::PathBuf;

use anyhow::Result;
use ferrovision::data::classes::ClassNames;
use ferrovision::serve::predict::{self, Score, Scores};
use ferrovision::serve::translate::LANGUAGES;

use super::args::{LanguageArgs, ModelArgs};
use ferrovision::outln;

/// How `predict` prints its answers (timm's inference script offers the same choices).
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// One line per image: file, then `label score` for each of the top classes, tab-separated.
    Table,
    /// One row per image and rank: file,rank,index,label,label_en,probability|logit.
    Csv,
    /// An array of `{file, predictions: [{index, label, label_en, probability|logit}]}`.
    Json,
}

/// What names a class in the table and CSV formats.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LabelType {
    Name,
    Index,
}

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
    #[command(flatten)]
    language: LanguageArgs,
    /// Score the predictions: the true class is the start of each file name (up to `_`).
    #[arg(long)]
    labels_from_file_names: bool,
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Probabilities (softmax) or the raw logits.
    #[arg(long, value_enum, default_value = "prob")]
    scores: Scores,
    /// Name the classes by (translated) name or by index (table and CSV; JSON has both).
    #[arg(long, value_enum, default_value = "name")]
    label_type: LabelType,
    /// Fail (exit code 1, after labelling the rest) when an image cannot be read; without it,
    /// such images are skipped with a warning.
    #[arg(long)]
    strict: bool,
}

/// A CSV field, quoted where it holds a comma, a quote or a line break.
fn csv_field(text: &str) -> String {
    match text.contains([',', '"', '\n', '\r']) {
        true => format!("\"{}\"", text.replace('"', "\"\"")),
        false => text.to_string(),
    }
}

impl PredictArgs {
    pub fn run(self) -> Result<()> {
        let PredictArgs { inputs, model, classes, language, labels_from_file_names, top_k, batch, format, scores, label_type, strict } =
            self;
        let translations = language.translations()?;
        let lang = language.lang.as_str();
        let device = model.device.parse()?;
        let source = model.source()?;
        let table = classes.as_deref().map(ClassNames::read).transpose()?;
        let (predictor, classes) = predict::load_predictor(&source, table, &device)?;
        if lang != "en" {
            let coverage = translations.coverage(lang, &classes);
            let name = LANGUAGES.iter().find(|l| l.code == lang).map_or(lang, |l| l.name);
            eprintln!("{lang}: {coverage} of the classes have a {name} name; the others keep their English name");
        }
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
        let predictions = predictor.predict(&images, top_k, batch, scores);
        let label = |c: usize| match label_type {
            LabelType::Name => translations.label(lang, &classes, c).text,
            LabelType::Index => c.to_string(),
        };
        let mut score = labels_from_file_names.then(|| Score::new(top_k));
        if format == Format::Csv {
            outln!("file,rank,index,label,label_en,{}", scores.key());
        }
        let mut json = Vec::new();
        for (name, prediction) in names.iter().zip(&predictions) {
            match format {
                Format::Table => {
                    let ranked: Vec<String> = prediction.top.iter().map(|&(c, p)| format!("{} {:.3}", label(c), p)).collect();
                    outln!("{name}\t{}", ranked.join("\t"));
                }
                Format::Csv => {
                    for (rank, &(c, p)) in prediction.top.iter().enumerate() {
                        let english = translations.label(lang, &classes, c).english;
                        outln!("{},{},{c},{},{},{p}", csv_field(name), rank + 1, csv_field(&label(c)), csv_field(&english));
                    }
                }
                Format::Json => json.push(serde_json::json!({
                    "file": name,
                    "predictions": prediction.to_json(&classes, &translations, lang, scores),
                })),
            }
            if let Some(score) = &mut score {
                score.add(name, prediction, &classes)?;
            }
        }
        if format == Format::Json {
            outln!("{}", serde_json::to_string_pretty(&json)?);
        }
        if let Some(score) = score {
            // Machine-readable formats keep stdout to their own syntax.
            match format {
                Format::Table => outln!("{score}"),
                _ => eprintln!("{score}"),
            }
        }
        if strict && !unreadable.is_empty() {
            anyhow::bail!("{} of {} images could not be read (--strict)", unreadable.len(), unreadable.len() + names.len());
        }
        Ok(())
    }
}
