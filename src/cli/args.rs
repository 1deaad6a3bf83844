//! Argument groups several verbs share (flattened where used).

use std::path::PathBuf;

use anyhow::Result;
use burn::prelude::Device;
use ferrovision::config::ExperimentConfig;
use ferrovision::models::ModelConfig;
use ferrovision::serve::predict::ModelSource;
use ferrovision::serve::translate::Translations;

/// `--set KEY=VALUE` config overrides (repeatable). Verbs that document it say so with
/// `#[command(mut_arg("overrides", ...))]`: the keys they take differ.
#[derive(clap::Args)]
pub struct Overrides {
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

impl Overrides {
    /// The help of `--set` where it takes model keys.
    pub const MODEL_KEYS_HELP: &str = "Model config keys, e.g. --set model.widths=[32,128,128] (repeatable)";

    /// The config of the registered model `name` with these `model.KEY=VALUE` overrides.
    pub fn model_config(&self, name: &str) -> Result<ModelConfig> {
        let mut all = vec![format!("model.name={}", toml_string(name))];
        all.extend_from_slice(&self.overrides);
        Ok(ExperimentConfig::from_toml("", "bench", &all)?.model)
    }
}

/// `--device`, for the verbs that default to the CPU.
#[derive(clap::Args)]
pub struct DeviceName {
    #[arg(long, default_value = "flex")]
    pub device: String,
}

impl DeviceName {
    pub fn parse(&self) -> Result<Device> {
        ferrovision::device::parse(&self.device)
    }
}

/// Where a trained or pretrained model comes from (predict, viz).
#[derive(clap::Args)]
pub struct ModelArgs {
    /// A training run folder (uses its best checkpoint).
    #[arg(long, conflicts_with_all = ["export", "model"])]
    run: Option<PathBuf>,
    /// A model file written by `ferrovision export`.
    #[arg(long, conflicts_with = "model")]
    export: Option<PathBuf>,
    /// A registered architecture (`ferrovision models`), with --weights or --pretrained.
    #[arg(long)]
    model: Option<String>,
    /// PyTorch checkpoint (.pth/.pt, zip or legacy format) or safetensors file for --model.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Registered pretrained weights (`ferrovision weights list`); downloaded into the cache.
    #[arg(long)]
    pretrained: Option<String>,
    /// Load what matches when the weights do not fit the model exactly, and list the rest.
    #[arg(long)]
    allow_partial: bool,
    #[command(flatten)]
    pub device: DeviceName,
    #[arg(long, default_value = ferrovision::data::config::DEFAULT_CACHE_DIR)]
    cache_dir: PathBuf,
}

impl ModelArgs {
    pub fn source(self) -> Result<ModelSource> {
        let ModelArgs { run, export, model, weights, pretrained, allow_partial, cache_dir, .. } = self;
        Ok(match (run, export, model) {
            (Some(dir), _, _) => ModelSource::Run { dir, checkpoint: "best".into() },
            (_, Some(path), _) => ModelSource::Export(path),
            (_, _, Some(model)) => ModelSource::Weights { model, weights, pretrained, allow_partial, cache_dir },
            _ => anyhow::bail!("say which model: --run DIR, --export FILE, or --model NAME with --weights/--pretrained"),
        })
    }
}

/// `value` as a TOML string, for `--set`-style overrides built from other options.
pub fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_string()).to_string()
}

/// Class names in another language (predict, serve).
#[derive(clap::Args)]
pub struct LanguageArgs {
    /// Language of the class names (`en`, or a code of the shipped table: ca de es fr it ja nl
    /// pl pt ru zh); classes without a word there keep their English name.
    #[arg(long, default_value = "en")]
    pub lang: String,
    /// A table of your own for a language: `CODE=FILE`, the file a TSV of `class id or
    /// name<TAB>label` (repeatable; it comes before the shipped words of that language).
    #[arg(long = "labels", value_name = "CODE=FILE", value_parser = parse_labels)]
    pub labels: Vec<(String, PathBuf)>,
}

fn parse_labels(value: &str) -> Result<(String, PathBuf), String> {
    let (code, file) = value.split_once('=').ok_or_else(|| format!("expected CODE=FILE, found `{value}`"))?;
    Ok((code.to_string(), PathBuf::from(file)))
}

impl LanguageArgs {
    /// The shipped table with the user's tables added; `--lang` must name one of its languages.
    pub fn translations(&self) -> Result<Translations> {
        let mut translations = Translations::shipped();
        for (code, file) in &self.labels {
            translations.add_table(code, file)?;
        }
        translations.check(&self.lang)?;
        Ok(translations)
    }
}
