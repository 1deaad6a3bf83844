//! Frozen parts computed once (`transfer.feature_cache`). When everything before the network's
//! classifier (or before the appended head) is frozen and the training images pass no random
//! transform on their way in, the frozen part gives every image the same outputs in every epoch:
//! they are computed once and the part that trains runs on them. Epochs after the first then
//! cost only that part. Validation runs on cached outputs too (one set per test-time view); the
//! final test runs on the images.
//!
//! On disk (`data.cache_dir/features/<model>-<key>.safetensors`) the outputs are keyed by a
//! SHA-256 of the frozen part's parameters, the images and labels, and the transforms they pass:
//! a later run with the same frozen weights and data reads them back. A file that does not read
//! as expected is computed again and replaced.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use burn::module::Param;
use burn::prelude::*;
use burn::tensor::TensorData;
use safetensors::tensor::{Dtype, TensorView};
use sha2::{Digest, Sha256};

use super::evaluate::{EvalResult, EvalSettings, score, tta_views, weighted_average};
use crate::augment::mix::MixConfig;
use crate::augment::transforms::Pipeline;
use crate::data::ImageSet;
use crate::data::loader::{EpochLoader, LoaderConfig, epoch_order, make_batch, num_batches};
use crate::files::write_atomic;
use crate::models::transfer::{FeatureCacheMode, covers};
use crate::models::{Classifier, Cut, params};

/// Bumped whenever the stored layout or the meaning of the outputs changes.
const FORMAT_VERSION: &str = "ferrovision-features-1";

/// Where the frozen part of `model` (on an autodiff device, where freezing is recorded) ends:
/// after the whole network when only the head trains, before the classifier when only the
/// classifier (and head) train; `None` when more trains.
pub fn frozen_part(model: &Classifier) -> Option<Cut> {
    struct Trains(Vec<(String, bool)>);
    impl params::PathVisitor for Trains {
        fn visit_float<const D: usize>(&mut self, path: &str, param: &burn::module::Param<Tensor<D>>) {
            self.0.push((path.to_string(), param.val().is_require_grad()));
        }
    }
    let trains = params::visit_with_paths(model, Trains(Vec::new())).0;
    let net_trains = |except: Option<&str>| {
        trains.iter().any(|(path, trains)| *trains && path.starts_with("net.") && !except.is_some_and(|e| covers(e, path)))
    };
    if !net_trains(None) {
        return model.head.is_some().then_some(Cut::NetOutputs);
    }
    let classifier = model.classifier_prefix()?;
    (!net_trains(Some(&classifier))).then_some(Cut::Features)
}

/// Whether a run trains on cached outputs of its frozen part: `Ok(Some(cut))` if so, `Ok(None)`
/// when nothing before the classifier is frozen (or the cache is off), and why not otherwise.
pub fn plan(mode: FeatureCacheMode, mix: &MixConfig, model: &Classifier, pipeline: &Pipeline) -> Result<Option<Cut>, String> {
    let cached = mode != FeatureCacheMode::Off;
    let Some(cut) = frozen_part(model).filter(|_| cached) else { return Ok(None) };
    if let Some(random) = pipeline.first_random() {
        return Err(format!("the training images pass a random transform ({random}) before the frozen part"));
    }
    if mix.enabled() {
        return Err("augment.mix blends the training images before the frozen part".into());
    }
    Ok(Some(cut))
}

/// The frozen part's outputs for every image of a set in stored order, row-major
/// `[images, width]`: one array per test-time view, with its weight (one view for training).
struct CachedSet {
    views: Vec<(Vec<f32>, f32)>,
    width: usize,
    labels: Vec<i64>,
}

impl CachedSet {
    /// Rows `rows` of view `view` as a tensor on `device`.
    fn rows(&self, view: usize, rows: &[usize], device: &Device) -> Tensor<2> {
        let values = &self.views[view].0;
        let data: Vec<f32> = rows.iter().flat_map(|&r| &values[r * self.width..(r + 1) * self.width]).copied().collect();
        Tensor::from_data(TensorData::new(data, [rows.len(), self.width]), device)
    }
}

/// Appends a batch of outputs to a view's array; returns the width.
fn append(out: &mut Vec<f32>, outputs: Tensor<2>) -> Result<usize> {
    let width = outputs.dims()[1];
    out.extend(outputs.into_data().try_to_vec::<f32>().context("reading the frozen part's outputs")?);
    Ok(width)
}

/// The images a frozen part runs on: the training split as `loader` prepares it, the validation
/// split as `settings` evaluates it.
#[derive(Clone, Copy)]
pub struct Splits<'a> {
    pub train: &'a Arc<ImageSet>,
    pub loader: &'a LoaderConfig,
    pub val: Option<&'a ImageSet>,
    pub settings: &'a EvalSettings,
}

/// Where a run's cached outputs came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Computed by this run, kept in memory only.
    Computed,
    /// Computed by this run and written to this file.
    Written(PathBuf),
    /// Read from this file, written by an earlier run.
    Read(PathBuf),
}

/// The cached outputs of a run's frozen part on its training and validation images.
pub struct FeatureCache {
    pub cut: Cut,
    train: CachedSet,
    val: Option<CachedSet>,
}

impl FeatureCache {
    /// The frozen part's outputs: read from `store` (a folder) when an earlier run left them
    /// there for the same frozen weights, images and transforms, otherwise computed by running
    /// the frozen part of `model` (on a plain device, as at inference) once over the training
    /// images as `loader` prepares them (no random transform) and over the validation images as
    /// `settings` evaluates them (each test-time view), then written to `store`. Returns where
    /// they came from.
    pub fn load_or_compute(model: &Classifier, cut: Cut, splits: &Splits, device: &Device, store: Option<&Path>) -> Result<(Self, Origin)> {
        let Splits { train, loader, val, settings } = *splits;
        let file = store.map(|dir| -> Result<PathBuf> {
            let key = fingerprint(model, cut, splits)?;
            Ok(dir.join(format!("{}-{}.safetensors", model.net.name().to_lowercase(), &key[..16])))
        });
        let file = file.transpose()?;
        let labels = |set: &ImageSet| set.labels.iter().map(|&l| l as i64).collect::<Vec<_>>();
        if let Some(path) = &file
            && let Some((train_set, val_set)) = read(path, &labels(train), val.map(labels).as_deref())
        {
            return Ok((Self { cut, train: train_set, val: val_set }, Origin::Read(path.clone())));
        }
        let in_order = LoaderConfig { batch_size: settings.batch_size, shuffle: false, drop_last: false, mix: None, ..loader.clone() };
        let (mut values, mut width) = (Vec::new(), 0);
        for batch in EpochLoader::start(train.clone(), in_order, 0, 0) {
            let shape = [batch.len(), 3, batch.height, batch.width];
            let images = Tensor::from_data(TensorData::new(batch.images, shape), device);
            width = append(&mut values, model.forward_until(images, cut))?;
        }
        let train = CachedSet { views: vec![(values, 1.0)], width, labels: labels(train) };
        let val = val.map(|set| cache_views(model, cut, set, settings, device)).transpose()?;
        let cache = Self { cut, train, val };
        let origin = match file {
            Some(path) => {
                cache.write(&path)?;
                Origin::Written(path)
            }
            None => Origin::Computed,
        };
        Ok((cache, origin))
    }

    /// Stores the outputs as safetensors: `train`, and `val.<view>` with the views' weights in the
    /// metadata.
    fn write(&self, path: &Path) -> Result<()> {
        let sets = std::iter::once(("train".to_string(), &self.train, 0))
            .chain(self.val.iter().flat_map(|val| (0..val.views.len()).map(move |v| (format!("val.{v}"), val, v))));
        let arrays: Vec<(String, Vec<u8>, Vec<usize>)> = sets
            .map(|(name, set, v)| (name, set.views[v].0.iter().flat_map(|x| x.to_le_bytes()).collect(), vec![set.labels.len(), set.width]))
            .collect();
        let views = arrays
            .iter()
            .map(|(name, bytes, shape)| TensorView::new(Dtype::F32, shape.clone(), bytes).map(|view| (name.clone(), view)))
            .collect::<Result<Vec<_>, _>>()?;
        let weights: Vec<f32> = self.val.iter().flat_map(|val| val.views.iter().map(|(_, w)| *w)).collect();
        let metadata = HashMap::from([("val_weights".to_string(), serde_json::to_string(&weights)?)]);
        let bytes = safetensors::serialize(views, Some(metadata))?;
        std::fs::create_dir_all(path.parent().expect("a file in the store")).with_context(|| format!("creating {}", path.display()))?;
        write_atomic(path, &bytes)
    }

    /// The batches of training epoch `epoch` (1-based) in the order the image loader would give
    /// them (`loader`'s shuffle, seed and batch size): the cached outputs on `device`, and labels.
    pub fn epoch<'a>(
        &'a self,
        loader: &LoaderConfig,
        epoch: usize,
        device: &'a Device,
    ) -> impl Iterator<Item = (Tensor<2>, Vec<i64>)> + 'a {
        let count = self.train.labels.len();
        let order = epoch_order(count, loader, epoch);
        let size = loader.batch_size;
        (0..num_batches(count, loader)).map(move |index| {
            let rows = &order[index * size..((index + 1) * size).min(count)];
            (self.train.rows(0, rows, device), rows.iter().map(|&r| self.train.labels[r]).collect())
        })
    }

    /// Evaluates the trained part of `model` on the cached validation outputs, as
    /// [`super::evaluate`] would on the images. `None` without a validation split.
    pub fn evaluate_val(&self, model: &Classifier, num_classes: usize, batch_size: usize, device: &Device) -> Option<Result<EvalResult>> {
        let val = self.val.as_ref()?;
        let count = val.labels.len();
        let batches = (0..count.div_ceil(batch_size)).map(|index| {
            let rows: Vec<usize> = (index * batch_size..((index + 1) * batch_size).min(count)).collect();
            let views = (0..val.views.len()).map(|v| (model.forward_from(val.rows(v, &rows, device), self.cut), val.views[v].1));
            (weighted_average(views), rows.iter().map(|&r| val.labels[r]).collect())
        });
        let labels: Vec<u16> = val.labels.iter().map(|&l| l as u16).collect();
        Some(score(batches, &labels, num_classes, device))
    }
}

/// A SHA-256 (hex) of everything the frozen part's outputs depend on: the cut, the frozen
/// parameters (BatchNorm statistics included), the images and labels of both sets, and the
/// transforms and test-time views they pass through.
fn fingerprint(model: &Classifier, cut: Cut, splits: &Splits) -> Result<String> {
    let Splits { train, loader, val, settings } = *splits;
    struct Frozen<'a> {
        hasher: &'a mut Sha256,
        classifier: Option<String>,
        cut: Cut,
    }
    impl params::PathVisitor for Frozen<'_> {
        fn visit_float<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>) {
            let trained =
                !path.starts_with("net.") || (self.cut == Cut::Features && self.classifier.as_deref().is_some_and(|c| covers(c, path)));
            if !trained {
                let data = param.val().into_data();
                self.hasher.update(path.as_bytes());
                self.hasher.update(format!("{:?}", data.shape()).as_bytes());
                self.hasher.update(data.as_bytes());
            }
        }
    }
    let mut hasher = Sha256::new();
    hasher.update(FORMAT_VERSION.as_bytes());
    let transforms =
        format!("{}|{cut:?}|{:?}|{:?}|{:?}|{:?}", model.net.name(), loader.augment, loader.input, settings.input, settings.tta);
    hasher.update(transforms.as_bytes());
    params::visit_with_paths(model, Frozen { hasher: &mut hasher, classifier: model.classifier_prefix(), cut });
    for set in std::iter::once(train.as_ref()).chain(val) {
        hasher.update(format!("{}x{}x{}", set.len(), set.height, set.width).as_bytes());
        hasher.update(&set.pixels);
        hasher.update(set.labels.iter().flat_map(|l| l.to_le_bytes()).collect::<Vec<u8>>());
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The outputs stored at `path`, if the file reads as `write` left it, for sets of these labels.
fn read(path: &Path, train_labels: &[i64], val_labels: Option<&[i64]>) -> Option<(CachedSet, Option<CachedSet>)> {
    let bytes = std::fs::read(path).ok()?;
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
    let weights: Vec<f32> = serde_json::from_str(metadata.metadata().as_ref()?.get("val_weights")?).ok()?;
    let file = safetensors::SafeTensors::deserialize(&bytes).ok()?;
    let set = |names: Vec<String>, view_weights: Vec<f32>, labels: &[i64]| -> Option<CachedSet> {
        let mut views = Vec::new();
        let mut width = 0;
        for (name, weight) in names.iter().zip(view_weights) {
            let tensor = file.tensor(name).ok()?;
            let [rows, columns] = tensor.shape() else { return None };
            if tensor.dtype() != Dtype::F32 || *rows != labels.len() || (width != 0 && *columns != width) {
                return None;
            }
            width = *columns;
            let values: Vec<f32> = tensor.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            views.push((values, weight));
        }
        Some(CachedSet { views, width, labels: labels.to_vec() })
    };
    let train = set(vec!["train".into()], vec![1.0], train_labels)?;
    let val = match val_labels {
        Some(labels) if !weights.is_empty() => Some(set((0..weights.len()).map(|v| format!("val.{v}")).collect(), weights, labels)?),
        None if weights.is_empty() => None,
        _ => return None,
    };
    Some((train, val))
}

/// The frozen part's outputs for each test-time view of every image of `set`.
fn cache_views(model: &Classifier, cut: Cut, set: &ImageSet, settings: &EvalSettings, device: &Device) -> Result<CachedSet> {
    let config = settings.loader_config();
    let order: Vec<usize> = (0..set.len()).collect();
    let mut views: Vec<(Vec<f32>, f32)> = Vec::new();
    let mut width = 0;
    for index in 0..set.len().div_ceil(settings.batch_size) {
        let batch = make_batch(set, &order, &config, 0, index);
        let shape = [batch.len(), 3, batch.height, batch.width];
        for (v, (view, weight)) in tta_views(&batch.images, shape, settings.tta, device).enumerate() {
            if views.len() == v {
                views.push((Vec::new(), weight));
            }
            width = append(&mut views[v].0, model.forward_until(view, cut))?;
        }
    }
    Ok(CachedSet { views, width, labels: set.labels.iter().map(|&l| l as i64).collect() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ExperimentConfig;
    use crate::models::ModelConfig;
    use crate::models::transfer::freeze;
    use crate::train::Tta;

    /// The key changes with the frozen weights, the images and the transforms, not with the
    /// classifier that trains on the outputs.
    #[test]
    fn the_store_key_follows_what_the_outputs_depend_on() {
        let device = Device::flex();
        let build = |seed: u64| {
            device.seed(seed);
            crate::models::build(&ModelConfig::named("lenet5"), 3, &device).unwrap()
        };
        let set = |shade: u8| Arc::new(ImageSet { pixels: vec![shade; 2 * 32 * 32 * 3], labels: vec![0, 1], height: 32, width: 32 });
        let settings = EvalSettings::from_config(&ExperimentConfig::default());
        let loader = settings.loader_config();
        let key = |model: &Classifier, cut: Cut, train: Arc<ImageSet>, tta: Tta| {
            let settings = EvalSettings { tta, ..settings.clone() };
            fingerprint(model, cut, &Splits { train: &train, loader: &loader, val: None, settings: &settings }).unwrap()
        };
        let (a, b) = (build(1), build(2));
        let base = key(&a, Cut::Features, set(0), Tta::None);
        assert_eq!(base, key(&a, Cut::Features, set(0), Tta::None));
        assert_ne!(base, key(&b, Cut::Features, set(0), Tta::None), "other weights");
        assert_ne!(base, key(&a, Cut::Features, set(1), Tta::None), "other images");
        assert_ne!(base, key(&a, Cut::Features, set(0), Tta::Flip), "other views");
        assert_ne!(base, key(&a, Cut::NetOutputs, set(0), Tta::None), "another cut");
        // a's frozen part with b's classifier: the same outputs, the same key.
        struct Classifier3(HashMap<String, TensorData>);
        impl params::PathVisitor for Classifier3 {
            fn visit_float<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>) {
                if path.contains(".fc3.") {
                    self.0.insert(path.to_string(), param.val().into_data());
                }
            }
        }
        impl params::PathMapper for Classifier3 {
            fn map_float<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                match self.0.get(path) {
                    Some(data) => param.map(|t| Tensor::from_data(data.clone(), &t.device())),
                    None => param,
                }
            }
        }
        let (mixed, _) = params::map_with_paths(a.clone(), params::visit_with_paths(&b, Classifier3(HashMap::new())));
        assert_eq!(base, key(&mixed, Cut::Features, set(0), Tta::None));
        assert_ne!(key(&a, Cut::NetOutputs, set(0), Tta::None), key(&mixed, Cut::NetOutputs, set(0), Tta::None));
    }

    #[test]
    fn the_frozen_part_ends_where_training_begins() {
        let device = Device::flex().autodiff();
        let model = crate::models::build(&ModelConfig::named("resnet18"), 10, &device).unwrap();
        assert_eq!(frozen_part(&model), None, "everything trains");
        let paths: Vec<String> = params::named_params(&model).into_iter().filter(|p| p.shape.is_some()).map(|p| p.path).collect();
        let backbone: Vec<String> = paths.iter().filter(|p| !p.starts_with("net.ImageNetResNet.fc.")).cloned().collect();
        let model = freeze(model, &backbone);
        assert_eq!(frozen_part(&model), Some(Cut::Features));
        let all_but_one: Vec<String> = paths.iter().filter(|p| !p.ends_with("fc.bias")).cloned().collect();
        assert_eq!(frozen_part(&freeze(model, &all_but_one)), Some(Cut::Features), "only the classifier's bias trains");
    }
}
