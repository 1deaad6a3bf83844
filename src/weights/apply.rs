//! Putting a state dict into a burn module: map every source key to a parameter path, check every
//! shape, report every missing, unexpected and mis-shaped key at once, then load.

use std::collections::BTreeMap;
use std::fmt;

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::TensorData;

use super::read::{SourceTensor, StateDict};
use crate::models::params::{PathMapper, map_with_paths};

/// The dotted path and shape of every float parameter (BatchNorm running statistics included).
pub fn parameter_shapes<M: Module>(model: &M) -> BTreeMap<String, Vec<usize>> {
    crate::models::named_params(model).into_iter().filter_map(|p| Some((p.path, p.shape?))).collect()
}

/// How the keys of a weight file relate to the module's parameter paths.
pub struct KeyMap<'a> {
    /// Source key → parameter path; `None` for a key that is not a parameter of ours.
    pub map: &'a dyn Fn(&str) -> Option<String>,
    /// Source rank-2 tensors are PyTorch Linear weights `[out, in]`; burn stores `[in, out]`.
    pub transpose_linear: bool,
}

/// Options of one load.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Load what matches and report the rest instead of failing.
    pub allow_partial: bool,
    /// Parameter paths under these prefixes are left as initialized and not reported (a classifier
    /// that is being replaced by a new one).
    pub skip_prefixes: Vec<String>,
}

/// A source tensor whose shape differs from the parameter it maps to.
#[derive(Clone, Debug, PartialEq)]
pub struct ShapeMismatch {
    pub key: String,
    pub path: String,
    pub expected: Vec<usize>,
    pub found: Vec<usize>,
}

/// What a load matched and what it did not.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    /// The sub-dictionary the weights were found under (`""`, `state_dict.`, `model.`, ...).
    pub prefix: String,
    pub loaded: usize,
    /// Parameters the file has no tensor for, with the shape they expected.
    pub missing: Vec<(String, Vec<usize>)>,
    /// Tensors of the file that correspond to no parameter, with their shape.
    pub unexpected: Vec<(String, Vec<usize>)>,
    pub mismatched: Vec<ShapeMismatch>,
}

impl LoadReport {
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} tensors loaded", self.loaded)?;
        if !self.prefix.is_empty() {
            write!(f, " (from under `{}`)", self.prefix.trim_end_matches('.'))?;
        }
        for (path, shape) in &self.missing {
            write!(f, "\n  missing key: {path} (expected shape {shape:?})")?;
        }
        for (key, shape) in &self.unexpected {
            write!(f, "\n  unexpected key: {key} (found shape {shape:?})")?;
        }
        for m in &self.mismatched {
            write!(f, "\n  wrong shape: {} -> {}: expected {:?}, found {:?}", m.key, m.path, m.expected, m.found)?;
        }
        Ok(())
    }
}

/// Nested checkpoints keep the state dict under one of these keys (Lightning `state_dict`, many
/// training scripts `model` or `model_state_dict`, DataParallel a `module.` prefix).
const NESTING_PREFIXES: &[&str] =
    &["", "state_dict.", "model.", "model_state_dict.", "net.", "module.", "state_dict.module.", "model.module."];

/// Buffers PyTorch keeps that have no counterpart in burn.
fn is_ignored_buffer(key: &str) -> bool {
    key.ends_with("num_batches_tracked")
}

/// Matches a state dict against a module: the returned tensors by parameter path, and the report.
pub fn match_state_dict(
    dict: &StateDict,
    shapes: &BTreeMap<String, Vec<usize>>,
    keys: &KeyMap,
    options: &LoadOptions,
) -> (BTreeMap<String, SourceTensor>, LoadReport) {
    let skipped = |path: &str| options.skip_prefixes.iter().any(|p| path == p || path.starts_with(&format!("{p}.")));
    // The nesting whose keys land on the most parameters.
    let prefix = NESTING_PREFIXES
        .iter()
        .max_by_key(|prefix| {
            let hits = dict
                .tensors
                .keys()
                .filter_map(|k| k.strip_prefix(**prefix))
                .filter(|k| (keys.map)(k).is_some_and(|path| shapes.contains_key(&path)))
                .count();
            // Prefer the shortest prefix on ties (the order of the list).
            (hits, std::cmp::Reverse(prefix.len()))
        })
        .copied()
        .unwrap_or("");
    let dict = dict.strip_prefix(prefix);

    let mut report = LoadReport { prefix: prefix.to_string(), ..Default::default() };
    let mut matched = BTreeMap::new();
    for (key, tensor) in &dict.tensors {
        if is_ignored_buffer(key) {
            continue;
        }
        let Some(path) = (keys.map)(key).filter(|p| shapes.contains_key(p)) else {
            report.unexpected.push((key.clone(), tensor.shape.clone()));
            continue;
        };
        if skipped(&path) {
            continue;
        }
        let tensor = if keys.transpose_linear && tensor.shape.len() == 2 { transpose(tensor) } else { tensor.clone() };
        let expected = &shapes[&path];
        if &tensor.shape != expected {
            report.mismatched.push(ShapeMismatch {
                key: key.clone(),
                path: path.clone(),
                expected: expected.clone(),
                found: tensor.shape.clone(),
            });
            continue;
        }
        matched.insert(path, tensor);
    }
    report.missing = shapes
        .iter()
        .filter(|(path, _)| !matched.contains_key(*path) && !skipped(path))
        .filter(|(path, _)| !report.mismatched.iter().any(|m| &m.path == *path))
        .map(|(path, shape)| (path.clone(), shape.clone()))
        .collect();
    report.loaded = matched.len();
    (matched, report)
}

fn transpose(tensor: &SourceTensor) -> SourceTensor {
    let [rows, cols] = [tensor.shape[0], tensor.shape[1]];
    let mut values = vec![0.0; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            values[c * rows + r] = tensor.values[r * cols + c];
        }
    }
    SourceTensor { shape: vec![cols, rows], values }
}

/// Replaces the parameters named in `tensors` (by path), keeping each parameter's id, device and
/// gradient setting.
pub fn load_tensors<M: Module>(model: M, tensors: BTreeMap<String, SourceTensor>) -> M {
    struct Loader(BTreeMap<String, SourceTensor>);
    impl PathMapper for Loader {
        fn map_float<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            match self.0.remove(path) {
                Some(source) => {
                    let id = param.id;
                    let device = param.lazy_device();
                    let tensor = Tensor::from_data(TensorData::new(source.values, source.shape), &device);
                    param.transform_for_load(tensor, id)
                }
                None => param,
            }
        }
    }
    map_with_paths(model, Loader(tensors)).0
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use burn::nn::conv::{Conv2d, Conv2dConfig};
    use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};

    use super::*;
    use crate::weights::{WeightsError, load_module, read_state_dict};

    /// The module the fixtures in `testdata/` were saved from (see make_fixtures.py).
    #[derive(Module, Debug)]
    struct Tiny {
        conv: Conv2d,
        bn: BatchNorm,
        fc: Linear,
    }

    fn tiny(fc_outputs: usize) -> Tiny {
        let device = Device::flex();
        Tiny {
            conv: Conv2dConfig::new([3, 4], [3, 3]).init(&device),
            bn: BatchNormConfig::new(4).init(&device),
            fc: LinearConfig::new(4, fc_outputs).init(&device),
        }
    }

    fn tiny_key(key: &str) -> Option<String> {
        Some(key.replace("bn.weight", "bn.gamma").replace("bn.bias", "bn.beta"))
    }

    const KEYS: KeyMap = KeyMap { map: &tiny_key, transpose_linear: true };

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/weights/testdata").join(name)
    }

    fn expected_values() -> BTreeMap<String, SourceTensor> {
        let text = std::fs::read_to_string(fixture("tiny_values.json")).unwrap();
        let json: BTreeMap<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
        json.into_iter()
            .map(|(k, v)| {
                let shape = serde_json::from_value(v["shape"].clone()).unwrap();
                let values = serde_json::from_value(v["values"].clone()).unwrap();
                (k, SourceTensor { shape, values })
            })
            .collect()
    }

    fn load(name: &str, model: Tiny, options: &LoadOptions) -> Result<(Tiny, LoadReport), WeightsError> {
        let path = fixture(name);
        let dict = read_state_dict(&path)?;
        load_module(model, "tiny", &path, &dict, &KEYS, options)
    }

    fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
        tensor.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn zip_legacy_nested_and_half_checkpoints_load_the_same_values() {
        let expected = expected_values();
        for (file, tolerance, prefix) in
            [("tiny_zip.pth", 0.0, ""), ("tiny_legacy.pth", 0.0, ""), ("tiny_nested.pth", 0.0, "state_dict."), ("tiny_half.pth", 2e-3, "")]
        {
            let (model, report) = load(file, tiny(2), &LoadOptions::default()).unwrap();
            assert!(report.is_complete(), "{file}: {report}");
            assert_eq!((report.loaded, report.prefix.as_str()), (8, prefix), "{file}");
            let close = |ours: Vec<f32>, key: &str| {
                let reference = &expected[key].values;
                assert_eq!(ours.len(), reference.len(), "{file} {key}");
                let worst = ours.iter().zip(reference).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(worst <= tolerance, "{file} {key}: differs by {worst}");
            };
            close(values(model.conv.weight.val()), "conv.weight");
            close(values(model.bn.gamma.val()), "bn.weight");
            close(values(model.bn.running_var.value()), "bn.running_var");
            // PyTorch's Linear weight is [out, in]; burn's is [in, out].
            close(values(model.fc.weight.val().transpose()), "fc.weight");
        }
    }

    #[test]
    fn safetensors_files_load_like_checkpoints() {
        let expected = expected_values();
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
            expected.iter().map(|(k, t)| (k.clone(), t.shape.clone(), t.values.iter().flat_map(|v| v.to_le_bytes()).collect())).collect();
        let views = bytes
            .iter()
            .map(|(k, shape, data)| {
                (k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data).unwrap())
            })
            .collect::<Vec<_>>();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.safetensors");
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        let dict = read_state_dict(&path).unwrap();
        let (model, report) = load_module(tiny(2), "tiny", &path, &dict, &KEYS, &LoadOptions::default()).unwrap();
        assert!(report.is_complete(), "{report}");
        assert_eq!(values(model.bn.beta.val()), expected["bn.bias"].values);
    }

    #[test]
    fn every_missing_unexpected_and_misshapen_key_is_listed() {
        let path = fixture("tiny_zip.pth");
        let mut dict = read_state_dict(&path).unwrap();
        dict.tensors.remove("bn.running_var");
        let extra = SourceTensor { shape: vec![5], values: vec![0.0; 5] };
        dict.tensors.insert("head.extra.weight".into(), extra);
        // fc with 3 outputs: the file's [2, 4] weight and [2] bias no longer fit.
        let err = load_module(tiny(3), "tiny", &path, &dict, &KEYS, &LoadOptions::default()).unwrap_err().to_string();
        for needle in [
            "tiny_zip.pth",
            "do not match model `tiny`",
            "missing key: bn.running_var (expected shape [4])",
            "unexpected key: head.extra.weight (found shape [5])",
            "wrong shape: fc.weight -> fc.weight: expected [4, 3], found [4, 2]",
            "wrong shape: fc.bias -> fc.bias: expected [3], found [2]",
            "--allow-partial",
        ] {
            assert!(err.contains(needle), "`{needle}` not in:\n{err}");
        }
    }

    #[test]
    fn allow_partial_loads_what_matches_and_reports_the_rest() {
        let options = LoadOptions { allow_partial: true, ..Default::default() };
        let before = tiny(3);
        let fc_before = values(before.fc.weight.val());
        let (model, report) = load("tiny_zip.pth", before, &options).unwrap();
        assert_eq!(report.loaded, 6);
        assert_eq!(report.mismatched.len(), 2);
        assert_eq!(values(model.fc.weight.val()), fc_before, "a mismatched tensor is left as it was");
        assert_eq!(values(model.conv.bias.unwrap().val()), expected_values()["conv.bias"].values);
    }

    #[test]
    fn a_skipped_classifier_is_neither_loaded_nor_reported() {
        let options = LoadOptions { skip_prefixes: vec!["fc".into()], ..Default::default() };
        let (_, report) = load("tiny_zip.pth", tiny(3), &options).unwrap();
        assert!(report.is_complete(), "{report}");
        assert_eq!(report.loaded, 6);
    }

    #[test]
    fn a_file_for_another_model_loads_nothing_and_fails_even_when_partial() {
        let options = LoadOptions { allow_partial: true, ..Default::default() };
        let path = fixture("tiny_zip.pth");
        let dict = read_state_dict(&path).unwrap().strip_prefix("conv.");
        let err = load_module(tiny(2), "tiny", &path, &dict, &KEYS, &options).unwrap_err().to_string();
        assert!(err.contains("0 tensors loaded") && err.contains("unexpected key: weight"), "{err}");
        assert!(!err.contains("--allow-partial") && err.contains("another architecture"), "{err}");
    }
}
