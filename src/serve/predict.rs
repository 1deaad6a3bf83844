//! Labelling new images with a trained or pretrained model: read image files, folders or archives,
//! apply the weights' evaluation transform, and return the top classes with their probabilities.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::softmax;
use rayon::prelude::*;

use crate::augment::resize::EvalResize;
use crate::augment::{Image, NormalizePreset, normalize_to_chw};
use crate::data::archive::{ArchiveKind, Source};
use crate::data::classes::ClassNames;
use crate::data::image_folder::is_image_name;
use crate::models::Classifier;
use crate::serve::translate::Translations;

/// A decoded input image and where it came from.
#[derive(Debug)]
pub struct InputImage {
    pub name: String,
    pub image: Image,
}

/// Reads images from files, folders and `.tar.gz`/`.zip` archives (every .png/.jpg/.jpeg inside, sorted by
/// path), decoded to RGB (grayscale and alpha converted). One that cannot be decoded is an error.
pub fn read_inputs(paths: &[PathBuf]) -> Result<Vec<InputImage>> {
    let (images, mut unreadable) = read_inputs_skipping(paths)?;
    if unreadable.is_empty() { Ok(images) } else { Err(unreadable.remove(0)) }
}

/// [`read_inputs`], with the images that cannot be decoded returned apart (each error names the
/// file by its full path, `folder/name` or `archive:member`) instead of failing the rest.
pub fn read_inputs_skipping(paths: &[PathBuf]) -> Result<(Vec<InputImage>, Vec<anyhow::Error>)> {
    // (name as printed, full path for messages, bytes)
    let mut encoded: Vec<(String, String, Vec<u8>)> = Vec::new();
    for path in paths {
        if path.is_dir() || ArchiveKind::of(path).is_some() {
            let mut files = Source::new(path).read_files(is_image_name)?;
            files.sort_by(|a, b| a.0.cmp(&b.0));
            if files.is_empty() {
                bail!("{}: no .png/.jpg/.jpeg images inside", path.display());
            }
            let full = |name: &str| match path.is_dir() {
                true => path.join(name).display().to_string(),
                false => format!("{}:{name}", path.display()),
            };
            encoded.extend(files.into_iter().map(|(name, bytes)| (name.clone(), full(&name), bytes)));
        } else {
            let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read image", path.display()))?;
            encoded.push((path.display().to_string(), path.display().to_string(), bytes));
        }
    }
    let decoded: Vec<Result<InputImage>> = encoded
        .into_par_iter()
        .map(|(name, full, bytes)| {
            let image = decode_image(&bytes, u64::MAX).with_context(|| format!("{full}: not a decodable image (expected PNG or JPEG)"))?;
            Ok(InputImage { name, image })
        })
        .collect();
    let (images, unreadable): (Vec<_>, Vec<_>) = decoded.into_iter().partition(Result::is_ok);
    Ok((images.into_iter().map(Result::unwrap).collect(), unreadable.into_iter().map(|e| e.unwrap_err()).collect()))
}

/// Why bytes are not an image to label.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a PNG or JPEG image")]
    NotAnImage,
    /// Said by the header, before any pixel is decoded (a decompression bomb stops here).
    #[error("the image is {width}x{height} pixels, more than the {limit} pixels allowed")]
    TooManyPixels { width: u32, height: u32, limit: u64 },
    #[error("corrupt {format} image: {message}")]
    Corrupt { format: &'static str, message: String },
}

/// Decodes a PNG or JPEG to RGB (grayscale and alpha converted), refusing from its header an
/// image of more than `max_pixels` pixels.
pub fn decode_image(bytes: &[u8], max_pixels: u64) -> Result<Image, DecodeError> {
    let format = match image::guess_format(bytes) {
        Ok(format @ (image::ImageFormat::Png | image::ImageFormat::Jpeg)) => format,
        _ => return Err(DecodeError::NotAnImage),
    };
    let name = if format == image::ImageFormat::Png { "PNG" } else { "JPEG" };
    let corrupt = |e: image::ImageError| DecodeError::Corrupt { format: name, message: e.to_string() };
    let reader = || image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let (width, height) = reader().into_dimensions().map_err(corrupt)?;
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(DecodeError::TooManyPixels { width, height, limit: max_pixels });
    }
    let decoded = reader().decode().map_err(corrupt)?.to_rgb8();
    Ok(Image::new(decoded.into_raw(), height as usize, width as usize))
}

/// The top classes of one image, most probable first, with their probabilities or logits.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    pub top: Vec<(usize, f32)>,
}

/// What a prediction's scores are (timm's `--output-type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scores {
    /// Softmax probabilities.
    Prob,
    /// The raw outputs of the classifier.
    Logit,
}

impl Scores {
    /// The key of the score in JSON answers.
    pub fn key(self) -> &'static str {
        match self {
            Scores::Prob => "probability",
            Scores::Logit => "logit",
        }
    }
}

impl Prediction {
    /// The top classes as JSON objects `{index, label, label_en, probability|logit}`, labels in
    /// `lang` (English where it has no word).
    pub fn to_json(&self, classes: &ClassNames, translations: &Translations, lang: &str, scores: Scores) -> Vec<serde_json::Value> {
        let ranked = self.top.iter().map(|&(index, score)| {
            let label = translations.label(lang, classes, index);
            let mut object = serde_json::json!({"index": index, "label": label.text, "label_en": label.english});
            object[scores.key()] = serde_json::json!(score);
            object
        });
        ranked.collect()
    }
}

/// Top-1 and top-`k` accuracy of predictions against the true classes of the images, which
/// their file names say ([`ClassNames::from_file_name`]). Displays as
/// `top-1 P% (hits/scored), top-k P% (hits/scored)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Score {
    pub k: usize,
    pub scored: usize,
    pub top1: usize,
    pub topk: usize,
}

impl Score {
    pub fn new(k: usize) -> Self {
        Self { k, scored: 0, top1: 0, topk: 0 }
    }

    /// Counts the prediction for the image named `file`; an error when the name names no class.
    pub fn add(&mut self, file: &str, prediction: &Prediction, classes: &ClassNames) -> Result<()> {
        let truth = classes.from_file_name(file).with_context(|| format!("{file}: the file name names no class of the class table"))?;
        self.scored += 1;
        self.top1 += usize::from(prediction.top.first().is_some_and(|&(c, _)| c == truth));
        self.topk += usize::from(prediction.top.iter().any(|&(c, _)| c == truth));
        Ok(())
    }
}

impl std::fmt::Display for Score {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self { k, scored, top1, topk } = *self;
        let pct = |n: usize| 100.0 * n as f64 / scored.max(1) as f64;
        write!(f, "top-1 {:.2}% ({top1}/{scored}), top-{k} {:.2}% ({topk}/{scored})", pct(top1), pct(topk))
    }
}

/// A model with the transform its inputs need.
pub struct Predictor {
    pub model: Classifier,
    pub resize: EvalResize,
    pub normalize: NormalizePreset,
    pub device: Device,
    pub card: ModelCard,
}

/// What a model is, for people: the page's model card and `GET /v1/model`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelCard {
    pub architecture: String,
    /// Where the weights came from: the run folder, export file or weight file.
    pub weights: String,
    /// Accuracy as its source states it: the run's test accuracy, or the published ImageNet top-1.
    pub accuracy: Option<String>,
}

impl Predictor {
    /// Images resized and normalized as the model expects: `[n, 3, size, size]`.
    pub fn input(&self, images: &[Image]) -> Tensor<4> {
        let size = self.resize.crop_size;
        let plane = 3 * size * size;
        let mut input = vec![0f32; images.len() * plane];
        input.par_chunks_mut(plane).zip(images).for_each(|(out, image)| {
            let resized = self.resize.apply(image);
            normalize_to_chw(&resized.pixels, size, size, self.normalize, out);
        });
        Tensor::from_data(TensorData::new(input, [images.len(), 3, size, size]), &self.device)
    }

    /// Top-`k` classes for each image, in batches of `batch_size`.
    pub fn predict(&self, images: &[Image], k: usize, batch_size: usize, scores: Scores) -> Vec<Prediction> {
        let mut predictions = Vec::with_capacity(images.len());
        for chunk in images.chunks(batch_size.max(1)) {
            let logits = self.model.forward(self.input(chunk));
            let probs = match scores {
                Scores::Prob => softmax(logits, 1),
                Scores::Logit => logits,
            };
            let classes = probs.dims()[1];
            let values = probs.into_data().try_to_vec::<f32>().expect("f32 scores");
            for row in values.chunks(classes) {
                let mut ranked: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
                ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
                ranked.truncate(k);
                predictions.push(Prediction { top: ranked });
            }
        }
        predictions
    }
}

/// Where the model to predict with comes from.
pub enum ModelSource {
    /// A training run folder and the checkpoint name in it (`best`, `last`).
    Run { dir: PathBuf, checkpoint: String },
    /// A file written by `ferrovision export`.
    Export(PathBuf),
    /// A registered architecture with a weight file (`--weights`) or registered pretrained
    /// weights (`--pretrained`, fetched into `cache_dir`).
    Weights { model: String, weights: Option<PathBuf>, pretrained: Option<String>, allow_partial: bool, cache_dir: PathBuf },
}

/// The predictor and class names for a model source. For a run or an export, the inputs are
/// resized to the training image size and normalized as in training; for pretrained weights, as
/// the weights were published (the registry entry of the file or the model).
pub fn load_predictor(source: &ModelSource, classes: Option<ClassNames>, device: &Device) -> Result<(Predictor, ClassNames)> {
    use crate::augment::resize::Interpolation;
    use crate::weights::{self, LoadOptions, registry};
    let square = |size: usize| EvalResize { resize_size: size, crop_size: size, interpolation: Interpolation::Bilinear };
    let (model, resize, normalize, own_classes, card) = match source {
        ModelSource::Run { dir, checkpoint } => {
            let (run, config) = crate::tracking::RunDir::open(dir)?;
            let summary = run.read_summary()?;
            let model = crate::train::load_run_model(&config, summary.classes.len(), &run.checkpoint(checkpoint), device)?;
            let accuracy =
                format!("{:.2}% top-1 on {} test images (run {})", 100.0 * summary.test_acc, summary.test_images, summary.run_id);
            let weights = run.checkpoint(checkpoint).display().to_string();
            let card = ModelCard { architecture: config.model.name.clone(), weights, accuracy: Some(accuracy) };
            (model, square(summary.image_size), config.augment.normalize, summary.class_names(), card)
        }
        ModelSource::Export(path) => {
            let (model, exported) = weights::export::import_safetensors(path, device)?;
            let card = ModelCard { architecture: exported.model.name.clone(), weights: path.display().to_string(), accuracy: None };
            (model, square(exported.image_size), exported.normalize, exported.classes, card)
        }
        ModelSource::Weights { model: name, weights: file, pretrained, allow_partial, cache_dir } => {
            let entry = match pretrained {
                Some(p) => Some(registry::find(p)?),
                None => crate::models::find(name).ok().and_then(|a| a.pretrained().next()),
            };
            let path = match (file, pretrained) {
                (Some(path), _) => path.clone(),
                (None, Some(_)) => registry::fetch(entry.expect("found above"), cache_dir)?,
                (None, None) => bail!("give the weights of `{name}`: --weights PATH or --pretrained NAME"),
            };
            let num_classes = entry.map_or(1000, |e| e.num_classes);
            let config = crate::models::ModelConfig::named(name);
            let model = crate::models::build(&config, num_classes, device)?;
            let options = LoadOptions { allow_partial: *allow_partial, ..Default::default() };
            let (model, report) = weights::load_into(model, name, &path, &options)?;
            if !report.is_complete() {
                eprintln!("{}: partial load: {report}", path.display());
            }
            let resize =
                entry.map_or(EvalResize { resize_size: 256, crop_size: 224, interpolation: Interpolation::Bilinear }, |e| e.eval_resize());
            // ImageNet weights name their classes with the shipped ImageNet-1k table; others by index.
            let indices: Vec<String> = (0..num_classes).map(|i| i.to_string()).collect();
            let names = match num_classes {
                1000 => Translations::shipped().class_set('i'),
                _ => ClassNames::from_names(&indices),
            };
            let card = ModelCard {
                architecture: name.clone(),
                weights: match (file, pretrained) {
                    (Some(path), _) => path.display().to_string(),
                    _ => format!("{} (pretrained `{}`)", path.display(), pretrained.as_deref().unwrap_or_default()),
                },
                // Only for the registered file itself, not for other weights of the architecture.
                accuracy: entry
                    .filter(|e| pretrained.is_some() || path.file_name().is_some_and(|n| n == e.file_name()))
                    .map(|e| format!("{}% ImageNet-1k top-1 (published for `{}`)", e.top1, e.name)),
            };
            (model, resize, entry.map_or(NormalizePreset::Imagenet, |e| e.normalize), names, card)
        }
    };
    let classes = classes.unwrap_or(own_classes);
    Ok((Predictor { model, resize, normalize, device: device.clone(), card }, classes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_count_top1_and_topk_hits_by_file_name() {
        let classes = ClassNames::from_names(&["cat".into(), "dog".into(), "fox".into()]);
        let ranked = |top: &[usize]| Prediction { top: top.iter().map(|&c| (c, 0.5)).collect() };
        let mut score = Score::new(2);
        assert_eq!(score.to_string(), "top-1 0.00% (0/0), top-2 0.00% (0/0)");
        score.add("photos/cat_1.png", &ranked(&[0, 1]), &classes).unwrap();
        score.add("dog_7.jpg", &ranked(&[0, 1]), &classes).unwrap();
        score.add("fox.png", &ranked(&[0, 1]), &classes).unwrap();
        assert_eq!(score, Score { k: 2, scored: 3, top1: 1, topk: 2 });
        assert_eq!(score.to_string(), "top-1 33.33% (1/3), top-2 66.67% (2/3)");
        let err = score.add("wolf_1.png", &ranked(&[0]), &classes).unwrap_err().to_string();
        assert_eq!(err, "wolf_1.png: the file name names no class of the class table");
        assert_eq!(score.scored, 3);
    }

    #[test]
    fn inputs_from_folders_and_files_with_a_broken_image_named() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("photos");
        std::fs::create_dir(&folder).unwrap();
        image::GrayImage::from_pixel(5, 4, image::Luma([200])).save(folder.join("b.png")).unwrap();
        image::RgbImage::from_pixel(3, 2, image::Rgb([1, 2, 3])).save(folder.join("a.png")).unwrap();
        let inputs = read_inputs(std::slice::from_ref(&folder)).unwrap();
        let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["a.png", "b.png"]);
        assert_eq!((inputs[1].image.height, inputs[1].image.width), (4, 5));
        assert_eq!(&inputs[1].image.pixels[..3], &[200, 200, 200], "grayscale becomes RGB");

        let broken = dir.path().join("broken.jpg");
        std::fs::write(&broken, b"\xff\xd8\xff\xe0 truncated").unwrap();
        let err = read_inputs(&[broken]).unwrap_err().to_string();
        assert!(err.contains("broken.jpg") && err.contains("not a decodable image"), "{err}");
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(read_inputs(&[empty]).unwrap_err().to_string().contains("no .png/.jpg/.jpeg"));
    }
}
