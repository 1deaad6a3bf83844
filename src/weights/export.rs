//! Export of a trained model to safetensors, with the model config and class names in the file's
//! metadata so that the file alone rebuilds the model.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::{Module, Param};
use burn::prelude::*;
use safetensors::tensor::{Dtype, TensorView};

use super::{LoadOptions, StateDict, WeightsError, read_state_dict};
use crate::augment::NormalizePreset;
use crate::data::classes::ClassNames;
use crate::error::FileError;
use crate::files::write_atomic;
use crate::models::params::{PathVisitor, visit_with_paths};
use crate::models::transfer::TransferConfig;
use crate::models::{self, Classifier, ModelConfig};

/// Metadata key marking a file written by `export_safetensors`.
const FORMAT_KEY: &str = "format";
const FORMAT_VALUE: &str = "ferrovision";

pub fn is_ferrovision_export(dict: &StateDict) -> bool {
    dict.metadata.get(FORMAT_KEY).is_some_and(|v| v == FORMAT_VALUE)
}

/// What an exported file says about the model in it.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportedModel {
    pub model: ModelConfig,
    /// The head and classifier layout (`transfer.head`, `head_hidden`) the parameters fit.
    pub transfer: TransferConfig,
    /// Class ids and readable names (metadata `classes` and `class_names`).
    pub classes: ClassNames,
    /// Side of the square images the model was trained on.
    pub image_size: usize,
    pub normalize: NormalizePreset,
}

/// The float parameters of a module (running statistics included) by path, in burn's layout.
pub(crate) fn collect_tensors<M: Module>(model: &M) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    struct Collect(BTreeMap<String, (Vec<usize>, Vec<f32>)>);
    impl PathVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>) {
            let tensor = param.val();
            let shape = tensor.dims().to_vec();
            let values = tensor.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 data");
            self.0.insert(path.to_string(), (shape, values));
        }
    }
    visit_with_paths(model, Collect(BTreeMap::new())).0
}

/// Writes `model` to `path` (temp file, then rename) with its config and class names.
pub fn export_safetensors(model: &Classifier, about: &ExportedModel, path: &Path) -> anyhow::Result<()> {
    let tensors = collect_tensors(model);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
        tensors.into_iter().map(|(name, (shape, values))| (name, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect())).collect();
    let views = bytes
        .iter()
        .map(|(name, shape, data)| Ok((name.clone(), TensorView::new(Dtype::F32, shape.clone(), data)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let metadata = HashMap::from([
        (FORMAT_KEY.to_string(), FORMAT_VALUE.to_string()),
        ("model".to_string(), serde_json::to_string(&about.model)?),
        ("transfer".to_string(), serde_json::to_string(&about.transfer)?),
        ("classes".to_string(), serde_json::to_string(&about.classes.ids)?),
        ("class_names".to_string(), serde_json::to_string(&about.classes.names)?),
        ("image_size".to_string(), about.image_size.to_string()),
        ("normalize".to_string(), serde_json::to_string(&about.normalize)?),
    ]);
    let serialized = safetensors::serialize(views, Some(metadata))?;
    write_atomic(path, &serialized)
}

/// Rebuilds the model stored by `export_safetensors`.
pub fn import_safetensors(path: &Path, device: &Device) -> Result<(Classifier, ExportedModel), WeightsError> {
    let dict = read_state_dict(path)?;
    if !is_ferrovision_export(&dict) {
        return Err(FileError::invalid(
            path.to_path_buf(),
            "not a ferrovision export (no model config in its metadata); load it with --weights and a model name",
        )
        .into());
    }
    fn field<T: serde::de::DeserializeOwned>(dict: &StateDict, key: &str, path: &Path) -> Result<T, WeightsError> {
        serde_json::from_str(dict.metadata.get(key).map(String::as_str).unwrap_or(""))
            .map_err(|e| FileError::invalid(path.to_path_buf(), format!("metadata `{key}` is missing or malformed: {e}")).into())
    }
    let ids: Vec<String> = field(&dict, "classes", path)?;
    // Exports written before readable names were kept have none: their names are the ids.
    let names = match dict.metadata.contains_key("class_names") {
        true => field(&dict, "class_names", path)?,
        false => ids.clone(),
    };
    let about = ExportedModel {
        model: field(&dict, "model", path)?,
        transfer: field(&dict, "transfer", path)?,
        classes: ClassNames { ids, names },
        image_size: field(&dict, "image_size", path)?,
        normalize: field(&dict, "normalize", path)?,
    };
    let (built, _) = models::transfer::build(&about.model, &about.transfer, about.classes.len(), device, None)
        .map_err(|e| FileError::invalid(path.to_path_buf(), e.to_string()))?;
    let (loaded, _) = super::load_into(built, &about.model.name, path, &LoadOptions::default())?;
    Ok((loaded, about))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_round_trip_gives_identical_logits() {
        let device = Device::flex();
        let about = ExportedModel {
            model: ModelConfig { name: "tutorial_net".into(), ..Default::default() },
            transfer: TransferConfig::default(),
            classes: ClassNames { ids: (0..4).map(|i| format!("n0{i}")).collect(), names: (0..4).map(|i| format!("class {i}")).collect() },
            image_size: 32,
            normalize: NormalizePreset::Cifar10,
        };
        let model = models::build(&about.model, about.classes.len(), &device).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        export_safetensors(&model, &about, &path).unwrap();

        let (loaded, exported) = import_safetensors(&path, &device).unwrap();
        assert_eq!(exported, about);
        let input = Tensor::<4>::random([2, 3, 32, 32], burn::tensor::Distribution::Default, &device);
        let a = model.forward(input.clone()).into_data();
        let b = loaded.forward(input).into_data();
        assert_eq!(a, b);
    }

    #[test]
    fn a_plain_safetensors_file_is_not_taken_for_an_export() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain.safetensors");
        let data = 1.0f32.to_le_bytes().to_vec();
        let view = TensorView::new(Dtype::F32, vec![1], &data).unwrap();
        std::fs::write(&path, safetensors::serialize(vec![("w".to_string(), view)], None).unwrap()).unwrap();
        let err = import_safetensors(&path, &Device::flex()).unwrap_err().to_string();
        assert!(err.contains("plain.safetensors") && err.contains("not a ferrovision export"), "{err}");
    }
}
