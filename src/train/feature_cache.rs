//! Frozen parts computed once (`transfer.feature_cache`). When everything before the network's
//! classifier (or before the appended head) is frozen and the training images pass no random
//! transform on their way in, the frozen part gives every image the same outputs in every epoch:
//! they are computed once, kept in memory, and the part that trains runs on them. Epochs after
//! the first then cost only that part. Validation runs on cached outputs too (one set per
//! test-time view); the final test runs on the images.

use std::sync::Arc;

use anyhow::{Context, Result};
use burn::prelude::*;
use burn::tensor::TensorData;

use super::evaluate::{EvalResult, EvalSettings, score, tta_views, weighted_average};
use crate::augment::transforms::Pipeline;
use crate::config::ExperimentConfig;
use crate::data::ImageSet;
use crate::data::loader::{EpochLoader, LoaderConfig, epoch_order, make_batch, num_batches};
use crate::models::transfer::covers;
use crate::models::{Classifier, Cut, params};

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
pub fn plan(config: &ExperimentConfig, model: &Classifier, pipeline: &Pipeline) -> Result<Option<Cut>, String> {
    let Some(cut) = frozen_part(model).filter(|_| config.transfer.feature_cache) else { return Ok(None) };
    if let Some(random) = pipeline.first_random() {
        return Err(format!("the training images pass a random transform ({random}) before the frozen part"));
    }
    if config.augment.mix.enabled() {
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

/// The cached outputs of a run's frozen part on its training and validation images.
pub struct FeatureCache {
    pub cut: Cut,
    train: CachedSet,
    val: Option<CachedSet>,
}

impl FeatureCache {
    /// Runs the frozen part of `model` (on a plain device, as at inference) once over the training
    /// images as `loader` prepares them (no random transform) and over the validation images as
    /// `settings` evaluates them (each test-time view).
    pub fn compute(
        model: &Classifier,
        cut: Cut,
        train: &Arc<ImageSet>,
        loader: &LoaderConfig,
        val: Option<&ImageSet>,
        settings: &EvalSettings,
        device: &Device,
    ) -> Result<Self> {
        let in_order = LoaderConfig { batch_size: settings.batch_size, shuffle: false, drop_last: false, mix: None, ..loader.clone() };
        let (mut values, mut width) = (Vec::new(), 0);
        for batch in EpochLoader::start(train.clone(), in_order, 0, 0) {
            let shape = [batch.len(), 3, batch.height, batch.width];
            let images = Tensor::from_data(TensorData::new(batch.images, shape), device);
            width = append(&mut values, model.forward_until(images, cut))?;
        }
        let labels = train.labels.iter().map(|&l| l as i64).collect();
        let train = CachedSet { views: vec![(values, 1.0)], width, labels };
        let val = val.map(|set| cache_views(model, cut, set, settings, device)).transpose()?;
        Ok(Self { cut, train, val })
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
    use crate::models::ModelConfig;
    use crate::models::transfer::freeze;

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
