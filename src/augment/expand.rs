//! `ferrovision augment expand`: an offline-augmented copy of a data set in the image-folder layout
//! (`train/<class>/*.png`, `test/<class>/*.png`), N augmented images per training image.
//!
//! Streaming and resumable: each image is encoded and written on its own (temp file, then
//! rename), and a run that finds a file already there skips it. A marker file sits at the top of
//! the output while it is incomplete; the data loaders refuse such a folder, so an interrupted
//! expansion is never read as a finished data set.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use indicatif::ProgressBar;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::Image;
use super::transforms::Pipeline;
use crate::data::{DataError, ImageSet, Result};

/// Present at the top of an output folder until the expansion finished.
pub const INCOMPLETE_MARKER: &str = "EXPANSION_INCOMPLETE";

#[derive(Clone, Copy, Debug)]
pub struct ExpandOptions {
    /// Augmented copies per training image.
    pub copies: usize,
    /// Also keep each original training image (as copy `orig`).
    pub include_original: bool,
    pub seed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpandReport {
    pub written: usize,
    /// Files already there from an interrupted run.
    pub skipped: usize,
}

/// Files one training image expands to, in order (`None` = the original).
fn copies_of(options: &ExpandOptions) -> Vec<Option<usize>> {
    let original = options.include_original.then_some(None);
    original.into_iter().chain((0..options.copies).map(Some)).collect()
}

/// Number of files `expand` writes for these splits.
pub fn total_files(train: &ImageSet, test: &ImageSet, options: &ExpandOptions) -> usize {
    train.len() * copies_of(options).len() + test.len()
}

/// Writes the expansion of `train` (augmented) and `test` (unchanged) under `out`.
pub fn expand(
    train: &ImageSet,
    test: &ImageSet,
    classes: &[String],
    pipeline: &Pipeline,
    out: &Path,
    options: &ExpandOptions,
    progress: &ProgressBar,
) -> Result<ExpandReport> {
    let shape = pipeline
        .output_shape(train.height, train.width)
        .map_err(|message| DataError::Other(format!("config key {message}")))?;
    if shape != (train.height, train.width) && shape != (test.height, test.width) {
        return Err(DataError::Other(format!(
            "config key augment.transforms: the pipeline turns {}x{} images into {}x{}; the expanded train and \
             test images must share one size, so add a resize or crop back to {}x{}",
            train.height, train.width, shape.0, shape.1, test.height, test.width
        )));
    }
    if out.exists() && !out.join(INCOMPLETE_MARKER).exists() && std::fs::read_dir(out).map_err(|e| DataError::io(out, e))?.next().is_some() {
        return Err(DataError::invalid(out, "exists and is not an unfinished expansion; choose an empty or new folder"));
    }
    for split in ["train", "test"] {
        for class in classes {
            let folder = out.join(split).join(class);
            std::fs::create_dir_all(&folder).map_err(|e| DataError::io(&folder, e))?;
        }
    }
    let marker = out.join(INCOMPLETE_MARKER);
    std::fs::write(&marker, "written by ferrovision augment expand; removed when it completes\n").map_err(|e| DataError::io(&marker, e))?;

    let (written, skipped) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let write = |path: PathBuf, image: &dyn Fn() -> Image| -> Result<()> {
        if path.exists() {
            skipped.fetch_add(1, Ordering::Relaxed);
        } else {
            write_png(&path, &image())?;
            written.fetch_add(1, Ordering::Relaxed);
        }
        progress.inc(1);
        Ok(())
    };
    let copies = copies_of(options);
    (0..train.len()).into_par_iter().try_for_each(|i| {
        let folder = out.join("train").join(&classes[train.labels[i] as usize]);
        let original = Image::new(train.image(i).to_vec(), train.height, train.width);
        copies.iter().try_for_each(|copy| match copy {
            None => write(folder.join(format!("{i:06}_orig.png")), &|| original.clone()),
            Some(k) => write(folder.join(format!("{i:06}_{k:03}.png")), &|| {
                let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ ((i as u64) << 16) ^ *k as u64);
                pipeline.apply(original.clone(), &mut rng)
            }),
        })
    })?;
    (0..test.len()).into_par_iter().try_for_each(|i| {
        let path = out.join("test").join(&classes[test.labels[i] as usize]).join(format!("{i:06}.png"));
        write(path, &|| Image::new(test.image(i).to_vec(), test.height, test.width))
    })?;
    std::fs::remove_file(&marker).map_err(|e| DataError::io(&marker, e))?;
    Ok(ExpandReport { written: written.into_inner(), skipped: skipped.into_inner() })
}

/// PNG through a temp file and a rename, so a file that exists is complete.
fn write_png(path: &Path, image: &Image) -> Result<()> {
    let tmp = path.with_extension("png.tmp");
    let buffer = image::RgbImage::from_raw(image.width as u32, image.height as u32, image.pixels.clone())
        .expect("Image holds height*width*3 bytes");
    buffer.save_with_format(&tmp, image::ImageFormat::Png).map_err(|e| DataError::invalid(&tmp, format!("writing PNG: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::NormalizePreset;
    use crate::augment::transforms::{Context, Transform};

    fn set(n: usize) -> ImageSet {
        let pixels = (0..n * 4 * 4 * 3).map(|i| (i * 13 % 256) as u8).collect();
        ImageSet { pixels, labels: (0..n).map(|i| (i % 2) as u16).collect(), height: 4, width: 4 }
    }

    fn pipeline() -> Pipeline {
        Pipeline {
            transforms: vec![Transform::RandomCrop { size: None, padding: 1, padding_mode: crate::augment::PaddingMode::Reflect }],
            context: Context { normalize: NormalizePreset::Cifar10 },
        }
    }

    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in walk(dir) {
            files.push(entry.strip_prefix(dir).unwrap().to_path_buf());
        }
        files.sort();
        files
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .flat_map(|e| {
                let path = e.unwrap().path();
                if path.is_dir() { walk(&path) } else { vec![path] }
            })
            .collect()
    }

    #[test]
    fn writes_copies_and_the_test_split_then_loads_as_an_image_folder() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("expanded");
        let classes = vec!["a".to_string(), "b".to_string()];
        let options = ExpandOptions { copies: 3, include_original: true, seed: 1 };
        let report = expand(&set(4), &set(2), &classes, &pipeline(), &out, &options, &ProgressBar::hidden()).unwrap();
        assert_eq!(report, ExpandReport { written: 4 * 4 + 2, skipped: 0 });
        assert_eq!(total_files(&set(4), &set(2), &options), 18);
        assert!(!out.join(INCOMPLETE_MARKER).exists());
        let loaded = crate::data::load_dataset(&out, None).unwrap();
        assert_eq!((loaded.train.len(), loaded.test.len()), (16, 2));
        assert_eq!(loaded.classes, classes);
    }

    #[test]
    fn an_interrupted_expansion_resumes_and_is_refused_until_complete() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("expanded");
        let classes = vec!["a".to_string(), "b".to_string()];
        let options = ExpandOptions { copies: 2, include_original: false, seed: 1 };
        expand(&set(4), &set(2), &classes, &pipeline(), &out, &options, &ProgressBar::hidden()).unwrap();
        let complete = files_under(&out);
        let first = std::fs::read(out.join("train/a/000000_001.png")).unwrap();
        // Simulate an interruption: marker back, some files missing, a stray temp file.
        std::fs::write(out.join(INCOMPLETE_MARKER), "").unwrap();
        std::fs::remove_file(out.join("train/a/000000_001.png")).unwrap();
        std::fs::remove_file(out.join("test/b/000001.png")).unwrap();
        std::fs::write(out.join("train/b/000001_000.png.tmp"), b"partial").unwrap();
        let err = crate::data::load_dataset(&out, None).unwrap_err().to_string();
        assert!(err.contains(INCOMPLETE_MARKER), "{err}");
        let report = expand(&set(4), &set(2), &classes, &pipeline(), &out, &options, &ProgressBar::hidden()).unwrap();
        assert_eq!(report, ExpandReport { written: 2, skipped: 8 + 2 - 2 });
        // Same seed, same pixels.
        assert_eq!(std::fs::read(out.join("train/a/000000_001.png")).unwrap(), first);
        let mut after: Vec<PathBuf> = files_under(&out).into_iter().filter(|p| p.extension().is_some_and(|e| e == "png")).collect();
        after.sort();
        assert_eq!(after, complete);
        // A folder that is not an unfinished expansion is never written into.
        let err = expand(&set(4), &set(2), &classes, &pipeline(), &out, &options, &ProgressBar::hidden()).unwrap_err();
        assert!(err.to_string().contains("not an unfinished expansion"), "{err}");
    }
}
