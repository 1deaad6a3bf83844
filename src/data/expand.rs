//! `ferrovision augment expand`: an offline-augmented copy of a data set in the image-folder layout
//! (`train/<class>/*.png`, `test/<class>/*.png`, and `val/<class>/*.png` for a data set with its
//! own validation split) or as one packed file of decoded images, N augmented images per training
//! image. The validation and test images are copied unchanged.
//!
//! The folder layout streams and resumes: each image is encoded and written on its own (temp file, then
//! rename), and a run that finds a file already there skips it. A marker file sits at the top of
//! the output while it is incomplete; the data loaders refuse such a folder, so an interrupted
//! expansion is never read as a finished data set.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use indicatif::ProgressBar;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::{DataFormat, Dataset, FileError, ImageSet, Result};
use crate::augment::Image;
use crate::augment::transforms::Pipeline;

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

/// Number of files `expand` writes for `dataset`.
pub fn total_files(dataset: &Dataset, options: &ExpandOptions) -> usize {
    dataset.train.len() * copies_of(options).len() + unchanged_splits(dataset).map(|(_, set)| set.len()).sum::<usize>()
}

/// The splits copied unchanged, with their folder names: validation and test where the data set
/// has them.
fn unchanged_splits(dataset: &Dataset) -> impl Iterator<Item = (&'static str, &ImageSet)> {
    [("val", dataset.val.as_ref()), ("test", Some(&dataset.test))]
        .into_iter()
        .filter_map(|(name, set)| Some((name, set?)))
        .filter(|(_, set)| !set.is_empty())
}

/// Writes the expansion of `dataset` under `out`: its train split augmented, the others unchanged.
pub fn expand(dataset: &Dataset, pipeline: &Pipeline, out: &Path, options: &ExpandOptions, progress: &ProgressBar) -> Result<ExpandReport> {
    let (train, classes) = (&dataset.train, &dataset.classes);
    check_shape(pipeline, train, &dataset.test)?;
    if out.exists() && !out.join(INCOMPLETE_MARKER).exists() && std::fs::read_dir(out).map_err(|e| FileError::io(out, e))?.next().is_some()
    {
        return Err(FileError::invalid(out, "exists and is not an unfinished expansion; choose an empty or new folder"));
    }
    for split in ["train"].into_iter().chain(unchanged_splits(dataset).map(|(name, _)| name)) {
        for class in classes {
            let folder = out.join(split).join(class);
            std::fs::create_dir_all(&folder).map_err(|e| FileError::io(&folder, e))?;
        }
    }
    let marker = out.join(INCOMPLETE_MARKER);
    std::fs::write(&marker, "written by ferrovision augment expand; removed when it completes\n").map_err(|e| FileError::io(&marker, e))?;

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
        copies.iter().try_for_each(|&copy| {
            let name = copy.map_or(format!("{i:06}_orig.png"), |k| format!("{i:06}_{k:03}.png"));
            write(folder.join(name), &|| make_copy(train, i, copy, pipeline, options.seed))
        })
    })?;
    for (split, set) in unchanged_splits(dataset) {
        (0..set.len()).into_par_iter().try_for_each(|i| {
            let path = out.join(split).join(&classes[set.labels[i] as usize]).join(format!("{i:06}.png"));
            write(path, &|| Image::new(set.image(i).to_vec(), set.height, set.width))
        })?;
    }
    std::fs::remove_file(&marker).map_err(|e| FileError::io(&marker, e))?;
    Ok(ExpandReport { written: written.into_inner(), skipped: skipped.into_inner() })
}

/// Copy `copy` of training image `i` (None = the original), from its own seeded stream: the same
/// pixels in either output format and after a resume.
fn make_copy(train: &ImageSet, i: usize, copy: Option<usize>, pipeline: &Pipeline, seed: u64) -> Image {
    let original = Image::new(train.image(i).to_vec(), train.height, train.width);
    match copy {
        None => original,
        Some(k) => pipeline.apply(original, None, &mut ChaCha8Rng::seed_from_u64(seed ^ ((i as u64) << 16) ^ k as u64)),
    }
}

/// The expansion as one packed file (`.fvpack`): every image decoded, loaded in one read. Written
/// to a temp file and renamed, so an interrupted run leaves nothing that reads as complete.
pub fn expand_packed(dataset: &Dataset, pipeline: &Pipeline, out: &Path, options: &ExpandOptions, progress: &ProgressBar) -> Result<usize> {
    let train = &dataset.train;
    check_shape(pipeline, train, &dataset.test)?;
    let copies = copies_of(options);
    let images: Vec<Vec<(Image, u16)>> = (0..train.len())
        .into_par_iter()
        .map(|i| {
            let made = copies.iter().map(|&copy| (make_copy(train, i, copy, pipeline, options.seed), train.labels[i])).collect();
            progress.inc(copies.len() as u64);
            made
        })
        .collect();
    let mut expanded = ImageSet::empty(dataset.test.height, dataset.test.width);
    for (image, label) in images.into_iter().flatten() {
        expanded.pixels.extend_from_slice(&image.pixels);
        expanded.labels.push(label);
    }
    let unchanged: usize = unchanged_splits(dataset).map(|(_, set)| set.len()).sum();
    progress.inc(unchanged as u64);
    let packed = Dataset { format: DataFormat::Packed, train: expanded, ..dataset.clone() };
    crate::data::cache::write_packed(out, &packed)?;
    Ok(packed.train.len() + unchanged)
}

/// The expanded training images must keep one size, the test images'.
fn check_shape(pipeline: &Pipeline, train: &ImageSet, test: &ImageSet) -> Result<()> {
    let shape = pipeline.output_shape(train.height, train.width).map_err(|e| FileError::Other(e.to_string()))?;
    if shape != (test.height, test.width) {
        return Err(FileError::Other(format!(
            "config key augment.transforms: the pipeline turns {}x{} images into {}x{}; the expanded train and \
             test images must share one size, so add a resize or crop back to {}x{}",
            train.height, train.width, shape.0, shape.1, test.height, test.width
        )));
    }
    Ok(())
}

/// PNG through a temp file and a rename, so a file that exists is complete.
fn write_png(path: &Path, image: &Image) -> Result<()> {
    let tmp = path.with_extension("png.tmp");
    let buffer =
        image::RgbImage::from_raw(image.width as u32, image.height as u32, image.pixels.clone()).expect("Image holds height*width*3 bytes");
    buffer.save_with_format(&tmp, image::ImageFormat::Png).map_err(|e| FileError::invalid(&tmp, format!("writing PNG: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| FileError::io(path, e))
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

    fn dataset(train: usize, val: Option<usize>, test: usize) -> Dataset {
        let classes = vec!["a".to_string(), "b".to_string()];
        Dataset {
            format: DataFormat::ImageFolder,
            classes,
            class_descriptions: Vec::new(),
            train: set(train),
            val: val.map(set),
            test: set(test),
        }
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
        let report = expand(&dataset(4, None, 2), &pipeline(), &out, &options, &ProgressBar::hidden()).unwrap();
        assert_eq!(report, ExpandReport { written: 4 * 4 + 2, skipped: 0 });
        assert_eq!(total_files(&dataset(4, None, 2), &options), 18);
        assert!(!out.join(INCOMPLETE_MARKER).exists());
        let loaded = crate::data::load_dataset(&out, None, &Default::default()).unwrap();
        assert_eq!((loaded.train.len(), loaded.test.len()), (16, 2));
        assert_eq!(loaded.classes, classes);
    }

    #[test]
    fn an_interrupted_expansion_resumes_and_is_refused_until_complete() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("expanded");
        let options = ExpandOptions { copies: 2, include_original: false, seed: 1 };
        expand(&dataset(4, None, 2), &pipeline(), &out, &options, &ProgressBar::hidden()).unwrap();
        let complete = files_under(&out);
        let first = std::fs::read(out.join("train/a/000000_001.png")).unwrap();
        // Simulate an interruption: marker back, some files missing, a stray temp file.
        std::fs::write(out.join(INCOMPLETE_MARKER), "").unwrap();
        std::fs::remove_file(out.join("train/a/000000_001.png")).unwrap();
        std::fs::remove_file(out.join("test/b/000001.png")).unwrap();
        std::fs::write(out.join("train/b/000001_000.png.tmp"), b"partial").unwrap();
        let err = crate::data::load_dataset(&out, None, &Default::default()).unwrap_err().to_string();
        assert!(err.contains(INCOMPLETE_MARKER), "{err}");
        let report = expand(&dataset(4, None, 2), &pipeline(), &out, &options, &ProgressBar::hidden()).unwrap();
        assert_eq!(report, ExpandReport { written: 2, skipped: 8 + 2 - 2 });
        // Same seed, same pixels.
        assert_eq!(std::fs::read(out.join("train/a/000000_001.png")).unwrap(), first);
        let mut after: Vec<PathBuf> = files_under(&out).into_iter().filter(|p| p.extension().is_some_and(|e| e == "png")).collect();
        after.sort();
        assert_eq!(after, complete);
        // A folder that is not an unfinished expansion is never written into.
        let err = expand(&dataset(4, None, 2), &pipeline(), &out, &options, &ProgressBar::hidden()).unwrap_err();
        assert!(err.to_string().contains("not an unfinished expansion"), "{err}");
    }

    #[test]
    fn the_packed_form_holds_the_same_images_as_the_folder_form() {
        let dir = tempfile::tempdir().unwrap();
        let options = ExpandOptions { copies: 2, include_original: true, seed: 4 };
        let dataset = dataset(3, None, 2);
        let packed_path = dir.path().join("x.fvpack");
        assert_eq!(expand_packed(&dataset, &pipeline(), &packed_path, &options, &ProgressBar::hidden()).unwrap(), 9 + 2);
        let packed = crate::data::load_dataset(&packed_path, None, &Default::default()).unwrap();
        assert_eq!((packed.format, packed.train.len(), packed.test), (DataFormat::Packed, 9, set(2)));
        // Copy 1 of image 2 is the folder form's train/a/000002_001.png.
        let folder = dir.path().join("folder");
        expand(&dataset, &pipeline(), &folder, &options, &ProgressBar::hidden()).unwrap();
        let png = image::open(folder.join("train/a/000002_001.png")).unwrap().to_rgb8().into_raw();
        assert_eq!(packed.train.image(2 * 3 + 2), &png[..]);
        std::fs::write(&packed_path, b"FVDATA truncated").unwrap();
        let err = crate::data::load_dataset(&packed_path, None, &Default::default()).unwrap_err().to_string();
        assert!(err.contains("x.fvpack") && err.contains("packed"), "{err}");
    }

    #[test]
    fn a_validation_split_is_copied_and_a_missing_test_split_is_not_invented() {
        let dir = tempfile::tempdir().unwrap();
        let options = ExpandOptions { copies: 1, include_original: false, seed: 2 };
        let out = dir.path().join("with_val");
        let with_val = dataset(4, Some(2), 2);
        assert_eq!(total_files(&with_val, &options), 8);
        assert_eq!(expand(&with_val, &pipeline(), &out, &options, &ProgressBar::hidden()).unwrap().written, 8);
        let loaded = crate::data::load_dataset(&out, None, &Default::default()).unwrap();
        assert_eq!(loaded.val, Some(set(2)));
        assert_eq!(loaded.test, set(2));

        // Class folders alone have no test split: none is written, and the copy reads back without one.
        let out = dir.path().join("without_test");
        let mut without_test = dataset(4, None, 0);
        without_test.format = DataFormat::ClassFolders;
        expand(&without_test, &pipeline(), &out, &options, &ProgressBar::hidden()).unwrap();
        assert!(!out.join("test").exists() && !out.join("val").exists());
        let loaded = crate::data::load_dataset(&out, None, &Default::default()).unwrap();
        assert_eq!((loaded.train.len(), loaded.val, loaded.test.len()), (4, None, 0));
    }
}
