//! Weights in and out: PyTorch checkpoints (zip and legacy formats) and safetensors in, with key
//! mappings for the reference model definitions; safetensors with the model config out; and the
//! registry of known pretrained weights.

pub mod apply;
pub mod export;
pub mod read;
pub mod registry;

use std::path::{Path, PathBuf};

pub use apply::{LoadOptions, LoadReport};
pub use read::{SourceTensor, StateDict, read_state_dict};

use crate::error::FileError;
use crate::models::Classifier;

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{}: weights do not match model `{model}`: {report}\n({})", path.display(), mismatch_hint(*allow_partial))]
    Mismatch { path: PathBuf, model: String, report: Box<LoadReport>, allow_partial: bool },
}

/// What to try after a mismatch: loading what matches, unless that was asked for already (then
/// nothing matched at all).
fn mismatch_hint(allow_partial: bool) -> &'static str {
    if allow_partial {
        "no tensor of the file fits the model: is it a file for another architecture?"
    } else {
        "use --allow-partial to load what matches"
    }
}

/// Loads a weight file into `model`. Files exported by ferrovision use our own parameter paths;
/// any other file is read with the model's reference (PyTorch) names.
pub fn load_into(
    model: Classifier,
    model_name: &str,
    path: &Path,
    options: &LoadOptions,
) -> Result<(Classifier, LoadReport), WeightsError> {
    let dict = read_state_dict(path)?;
    if export::is_ferrovision_export(&dict) {
        let identity = |key: &str| Some(key.to_string());
        load_module(model, model_name, path, &dict, &apply::KeyMap { map: &identity, transpose_linear: false }, options)
    } else {
        let probe = model.clone();
        let reference = move |key: &str| probe.import_key(key);
        load_module(model, model_name, path, &dict, &apply::KeyMap { map: &reference, transpose_linear: true }, options)
    }
}

/// Loads the tensors of `dict` (read from `path`) into any module, through a key map. Fails with
/// every offending key listed, unless `options.allow_partial` (then the report lists them).
pub fn load_module<M: burn::module::Module>(
    model: M,
    model_name: &str,
    path: &Path,
    dict: &StateDict,
    keys: &apply::KeyMap,
    options: &LoadOptions,
) -> Result<(M, LoadReport), WeightsError> {
    let shapes = apply::parameter_shapes(&model);
    let (tensors, report) = apply::match_state_dict(dict, &shapes, keys, options);
    if report.loaded == 0 || (!report.is_complete() && !options.allow_partial) {
        let (path, model, report) = (path.to_path_buf(), model_name.to_string(), Box::new(report));
        return Err(WeightsError::Mismatch { path, model, report, allow_partial: options.allow_partial });
    }
    Ok((apply::load_tensors(model, tensors), report))
}
