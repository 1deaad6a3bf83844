//! Recognizes which storage format a path holds and loads it, through the cache when asked.

use std::fmt::Write as _;
use std::io;
use std::ops::ControlFlow;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::archive::{ArchiveKind, Source};
use super::cifar_binary::{CIFAR10_BINARY, CIFAR100_BINARY, ReleaseLayout, load_release};
use super::cifar_python::{CIFAR10_PYTHON, CIFAR100_PYTHON};
use super::image_folder::{Layout, is_hidden, is_image_name, is_split_folder};
use super::tiny_imagenet::WNIDS;
use super::{Dataset, FileError, LoadOptions, Result, cache, image_folder, tiny_imagenet};

/// The storage formats a data set can be read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataFormat {
    /// The official CIFAR-10 binary release (`cifar-10-batches-bin/`).
    CifarBinary,
    /// The official CIFAR-10 python release (`cifar-10-batches-py/`, pickles).
    CifarPython,
    /// The official CIFAR-100 binary release (`cifar-100-binary/`).
    Cifar100Binary,
    /// The official CIFAR-100 python release (`cifar-100-python/`, pickles).
    Cifar100Python,
    /// `train/<class>/*` image files, with `val/<class>/*` (or `valid/`) and `test/<class>/*`
    /// when the data set has those splits.
    ImageFolder,
    /// Only `<class>/*` image folders at the top, no split folders.
    ClassFolders,
    /// Tiny ImageNet-200 in its official layout (`wnids.txt`, `train/<wnid>/images/`, `val/`).
    TinyImagenet,
    /// One `.fvpack` file of decoded images (written by `augment expand --format packed`).
    Packed,
}

impl DataFormat {
    /// A short name for messages and listings.
    pub fn name(self) -> &'static str {
        match self {
            DataFormat::CifarBinary => "cifar-binary",
            DataFormat::CifarPython => "cifar-python",
            DataFormat::Cifar100Binary => "cifar100-binary",
            DataFormat::Cifar100Python => "cifar100-python",
            DataFormat::ImageFolder => "image-folder",
            DataFormat::ClassFolders => "class-folders",
            DataFormat::TinyImagenet => "tiny-imagenet",
            DataFormat::Packed => "packed",
        }
    }

    /// The CIFAR release read in this format, if it is one.
    fn release(self) -> Option<&'static ReleaseLayout> {
        RELEASES.into_iter().find(|release| release.format == self)
    }
}

/// The CIFAR releases, each known by its batch file names.
const RELEASES: [&ReleaseLayout; 4] = [&CIFAR10_BINARY, &CIFAR10_PYTHON, &CIFAR100_BINARY, &CIFAR100_PYTHON];

const EXPECTED_LAYOUTS: &str = "expected one of: the CIFAR-10 binary release (a folder that is or contains \
    cifar-10-batches-bin/ with data_batch_1..5.bin and test_batch.bin, or cifar-10-binary.tar.gz); the CIFAR-10 \
    python release (a folder that is or contains cifar-10-batches-py/ with data_batch_1..5 and test_batch, or \
    cifar-10-python.tar.gz); the CIFAR-100 binary release (cifar-100-binary/ with train.bin, test.bin and \
    fine_label_names.txt, or cifar-100-binary.tar.gz); the CIFAR-100 python release (cifar-100-python/ with train, \
    test and meta, or cifar-100-python.tar.gz); an image folder train/<class>/*.png|jpg|jpeg with test/<class>/* \
    and val/<class>/* (or valid/) where there are such splits, possibly under one top folder; a folder of only \
    <class>/*.png|jpg|jpeg folders, possibly under one top folder; Tiny ImageNet-200 (wnids.txt, words.txt, \
    train/<wnid>/images/, val/images/ and val/val_annotations.txt, possibly under one top folder); each as a \
    folder or a .tar.gz/.tgz/.zip; or a .fvpack file written by `ferrovision augment expand --format packed`";

/// Which format `path` (a folder or a `.tar.gz`/`.tgz`/`.zip`) holds.
pub fn detect_format(path: &Path) -> Result<DataFormat> {
    if cache::is_packed(path) {
        return Ok(DataFormat::Packed);
    }
    locate(path).map(|(format, _)| format)
}

/// Reads the data set at `path` with `options`. With `cache_dir`, a decoded copy is kept there
/// and reused while the source and the options are unchanged.
pub fn load_dataset(path: &Path, cache_dir: Option<&Path>, options: &LoadOptions) -> Result<Dataset> {
    let marker = path.join(crate::data::expand::INCOMPLETE_MARKER);
    if marker.exists() {
        return Err(FileError::invalid(
            &marker,
            "this folder is an unfinished `ferrovision augment expand`; run the same command again to complete it",
        ));
    }
    if cache::is_packed(path) {
        check_labels(path, DataFormat::Packed, options)?;
        // Already decoded: no cache needed.
        return cache::read_packed(path);
    }
    match cache_dir {
        Some(cache_dir) => {
            cache::load_or_build(path, cache_dir, &options.tag(), || load_uncached(path, options)).map(|(dataset, _)| dataset)
        }
        None => load_uncached(path, options),
    }
}

fn load_uncached(path: &Path, options: &LoadOptions) -> Result<Dataset> {
    let (format, source) = locate(path)?;
    check_labels(path, format, options)?;
    match format {
        DataFormat::ImageFolder => image_folder::load(&source, Layout::Splits, options.image_size),
        DataFormat::ClassFolders => image_folder::load(&source, Layout::ClassFolders, options.image_size),
        DataFormat::TinyImagenet => tiny_imagenet::load(&source),
        DataFormat::Packed => cache::read_packed(path),
        cifar => {
            let release = cifar.release().expect("the other formats are CIFAR releases");
            load_release(&source, release, options.labels.unwrap_or_default())
        }
    }
}

/// `data.labels` chooses between CIFAR-100's two label sets; other data sets have one.
fn check_labels(path: &Path, format: DataFormat, options: &LoadOptions) -> Result<()> {
    match options.labels {
        Some(labels) if !matches!(format, DataFormat::Cifar100Binary | DataFormat::Cifar100Python) => Err(FileError::invalid(
            path,
            format!(
                "data.labels = \"{}\" picks CIFAR-100's fine or coarse labels, but this data set is {}, which has one set of \
                 labels; remove data.labels",
                labels.name(),
                format.name()
            ),
        )),
        _ => Ok(()),
    }
}

/// The format at `path` and the folder (possibly inside the archive) where its files start.
fn locate(path: &Path) -> Result<(DataFormat, Source)> {
    if !path.exists() {
        return Err(FileError::io(path, io::Error::new(io::ErrorKind::NotFound, "no such file or folder")));
    }
    if path.is_file() && ArchiveKind::of(path).is_none() {
        return Err(FileError::invalid(path, format!("not a folder nor a .tar.gz/.tgz/.zip archive; {EXPECTED_LAYOUTS}")));
    }
    let source = Source::new(path);
    let mut found = None;
    let mut tiny_root = None;
    let mut class_folders_root: Option<String> = None;
    // The deepest marker is an image in top/train/<wnid>/images/.
    source.walk(5, |entry| {
        if entry.is_dir {
            return Ok(ControlFlow::Continue(()));
        }
        Ok(match classify(entry.path) {
            Some(Marker::Found(format, root)) => {
                found = Some((format, root));
                ControlFlow::Break(())
            }
            Some(Marker::TinyWithoutWnids(root)) => {
                tiny_root.get_or_insert(root);
                ControlFlow::Continue(())
            }
            Some(Marker::ClassFolder(root)) => {
                // Class folders at the top win over class folders inside one top folder.
                if class_folders_root.as_ref().is_none_or(|r| root.is_empty() && !r.is_empty()) {
                    class_folders_root = Some(root);
                }
                ControlFlow::Continue(())
            }
            None => ControlFlow::Continue(()),
        })
    })?;
    if let Some((format, root)) = found {
        return Ok((format, source.subfolder(&root)));
    }
    if let Some(root) = tiny_root {
        return Err(FileError::invalid(
            source.subfolder(&root).display_path(WNIDS),
            "missing: train/<wnid>/images/ looks like Tiny ImageNet, which lists its class ids in wnids.txt",
        ));
    }
    if let Some(root) = class_folders_root {
        return Ok((DataFormat::ClassFolders, source.subfolder(&root)));
    }
    Err(FileError::invalid(path, format!("no data set found; {EXPECTED_LAYOUTS}")))
}

/// What one file says about the data set around it.
enum Marker {
    /// The format, and the folder where that data set starts.
    Found(DataFormat, String),
    /// An image in `<root>/train/<wnid>/images/`: Tiny ImageNet if its `wnids.txt` turns up later
    /// in the walk (an archive may store it last), otherwise an error naming the missing file.
    TinyWithoutWnids(String),
    /// An image in `<root>/<class>/`: a folder of class folders at `<root>`, if nothing else is
    /// found (`test/<class>/` of an image folder looks the same and may be walked first).
    ClassFolder(String),
}

/// What the file at `relative` marks.
fn classify(relative: &str) -> Option<Marker> {
    let parts: Vec<&str> = relative.split('/').collect();
    let (name, folders) = parts.split_last()?;
    let found = |format, root: &[&str]| Some(Marker::Found(format, root.join("/")));
    // CIFAR batches and Tiny ImageNet's wnids.txt sit at the top or in one folder
    // (cifar-10-batches-bin/, cifar-100-python/, tiny-imagenet-200/).
    if folders.len() <= 1 {
        if let Some(release) = RELEASES.iter().find(|release| release.batch_names().any(|batch| batch == *name)) {
            return found(release.format, folders);
        }
        if *name == WNIDS {
            return found(DataFormat::TinyImagenet, folders);
        }
    }
    if !is_image_name(name) {
        return None;
    }
    // Image folders are known by [top/]train/<class>/<image>; test/<class>/ is no mark, as Tiny
    // ImageNet's unlabelled test/images/ looks just like a class folder.
    match folders {
        [top @ .., "train", _] if top.len() <= 1 => found(DataFormat::ImageFolder, top),
        [top @ .., "train", _, "images"] if top.len() <= 1 => Some(Marker::TinyWithoutWnids(top.join("/"))),
        [top @ .., class] if top.len() <= 1 && !is_hidden(relative) && !top.iter().chain([class]).any(|f| is_split_folder(f)) => {
            Some(Marker::ClassFolder(top.join("/")))
        }
        _ => None,
    }
}

/// A summary for `ferrovision data info`: format, image size, and images per class and split,
/// with each class's description where the data set has them.
pub fn describe(dataset: &Dataset) -> String {
    let num_classes = dataset.classes.len();
    let mut splits = vec![("train", &dataset.train)];
    splits.extend(dataset.val.as_ref().map(|val| ("val", val)));
    splits.push(("test", &dataset.test));
    let counts: Vec<Vec<usize>> = splits.iter().map(|(_, set)| set.class_counts(num_classes)).collect();
    let width = dataset.classes.iter().map(String::len).chain(["class".len(), "total".len()]).max().unwrap_or(5);
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "format: {}", dataset.format.name());
    let _ = writeln!(out, "image size: {}x{} RGB (height x width)", dataset.train.height, dataset.train.width);
    let _ = writeln!(out, "classes: {num_classes}");
    let description_title = if dataset.class_descriptions.is_empty() { "" } else { "  description" };
    let row = |first: &str, cells: Vec<String>, last: &str| {
        let cells: String = cells.iter().map(|cell| format!("  {cell:>8}")).collect();
        format!("{first:<width$}{cells}{last}\n")
    };
    out += &row("class", splits.iter().map(|(name, _)| name.to_string()).collect(), description_title);
    for (index, class) in dataset.classes.iter().enumerate() {
        let description = dataset.class_descriptions.get(index).map(|d| format!("  {d}")).unwrap_or_default();
        out += &row(class, counts.iter().map(|c| c[index].to_string()).collect(), &description);
    }
    out += &row("total", splits.iter().map(|(_, set)| set.len().to_string()).collect(), "");
    if dataset.val.is_some() {
        let _ = writeln!(out, "validation: the data set's own val split (used instead of data.val_size images out of train)");
    }
    if dataset.test.is_empty() {
        let _ = writeln!(out, "no test split: training holds data.test_size images out of train as the test split");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Instant;

    use super::*;
    use crate::data::archive::tests::{write_folder, write_tar_gz, write_zip};
    use crate::data::cifar_binary::tests::{binary_release, binary_release100, cifar100_names};
    use crate::data::cifar_python::tests::{python_release, python_release100};
    use crate::data::image_folder::tests::{encode, image_tree, rgb_image};
    use crate::data::{CIFAR10_CLASSES, ImageSet, LabelLevel};

    fn under(folder: &str, files: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
        files.into_iter().map(|(name, bytes)| (format!("{folder}/{name}"), bytes)).collect()
    }

    /// `image_tree`'s train split alone, as `<class>/*` folders.
    fn class_folders(per_class: usize) -> Vec<(String, Vec<u8>)> {
        image_tree(per_class).into_iter().filter_map(|(name, bytes)| Some((name.strip_prefix("train/")?.to_string(), bytes))).collect()
    }

    /// `image_tree` with a `valid/` copy of its test split.
    fn tree_with_valid(per_class: usize) -> Vec<(String, Vec<u8>)> {
        let mut files = image_tree(per_class);
        let valid: Vec<_> =
            files.iter().filter_map(|(name, bytes)| Some((format!("valid/{}", name.strip_prefix("test/")?), bytes.clone()))).collect();
        files.extend(valid);
        files
    }

    #[test]
    fn detects_and_loads_every_layout_as_folder_and_archive() {
        // A folder whose child is cifar-10-batches-bin/ while also holding other files.
        let mut with_notes = under("cifar-10-batches-bin", binary_release(2));
        with_notes.push(("notes.txt".into(), b"hello".to_vec()));
        let layouts = [
            (DataFormat::CifarBinary, binary_release(2)),
            (DataFormat::CifarBinary, with_notes),
            (DataFormat::CifarPython, python_release(2)),
            (DataFormat::CifarPython, under("cifar-10-batches-py", python_release(2))),
            (DataFormat::ImageFolder, image_tree(5)),
            (DataFormat::ImageFolder, under("pets", image_tree(5))),
            (DataFormat::ImageFolder, tree_with_valid(5)),
            (DataFormat::Cifar100Binary, binary_release100(10)),
            (DataFormat::Cifar100Binary, under("cifar-100-binary", binary_release100(10))),
            (DataFormat::Cifar100Python, python_release100(10)),
            (DataFormat::Cifar100Python, under("cifar-100-python", python_release100(10))),
            (DataFormat::ClassFolders, class_folders(5)),
            (DataFormat::ClassFolders, under("flowers", class_folders(5))),
        ];
        for (index, (format, files)) in layouts.into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let folder = dir.path().join("set");
            write_folder(&folder, &files);
            let tar_gz = dir.path().join(if index % 2 == 0 { "set.tar.gz" } else { "set.tgz" });
            write_tar_gz(&tar_gz, &[], &files);
            let zip = dir.path().join("set.zip");
            write_zip(&zip, &[], &files);
            for path in [&folder, &tar_gz, &zip] {
                assert_eq!(detect_format(path).unwrap(), format, "{}", path.display());
                let dataset = load_dataset(path, None, &LoadOptions::default()).unwrap();
                // Every layout above holds 10 train images.
                assert_eq!((dataset.format, dataset.train.len()), (format, 10), "{}", path.display());
            }
        }
    }

    #[test]
    fn unknown_layouts_say_what_was_expected() {
        let dir = tempfile::tempdir().unwrap();
        let err = detect_format(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no data set found") && err.contains("cifar-10-batches-bin") && err.contains("train/<class>"), "{err}");

        let plain = dir.path().join("batch.rar");
        std::fs::write(&plain, b"rar").unwrap();
        let err = detect_format(&plain).unwrap_err().to_string();
        assert!(err.contains("batch.rar") && err.contains("not a folder nor a .tar.gz/.tgz/.zip"), "{err}");

        let not_zip = dir.path().join("batch.zip");
        std::fs::write(&not_zip, b"zip").unwrap();
        let err = detect_format(&not_zip).unwrap_err().to_string();
        assert!(err.contains("batch.zip"), "{err}");

        let missing = dir.path().join("nowhere");
        let err = load_dataset(&missing, None, &LoadOptions::default()).unwrap_err().to_string();
        assert!(err.contains("nowhere") && err.contains("no such file"), "{err}");

        // Images too deep to be train/<class>/<image>.
        write_folder(&dir.path().join("deep"), &under("a/b", image_tree(1)));
        let err = detect_format(&dir.path().join("deep")).unwrap_err().to_string();
        assert!(err.contains("no data set found"), "{err}");
    }

    #[test]
    fn load_dataset_goes_through_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("set");
        write_folder(&source, &image_tree(2));
        let cache_dir = dir.path().join("cache");
        let fresh = load_dataset(&source, Some(&cache_dir), &LoadOptions::default()).unwrap();
        assert_eq!(std::fs::read_dir(&cache_dir).unwrap().count(), 1);
        assert_eq!(load_dataset(&source, Some(&cache_dir), &LoadOptions::default()).unwrap(), fresh);
    }

    #[test]
    fn describe_lists_counts_per_class() {
        let set = |labels: Vec<u16>| ImageSet { pixels: vec![0; labels.len() * 12], labels, height: 2, width: 2 };
        let mut dataset = Dataset {
            format: DataFormat::ImageFolder,
            classes: vec!["cat".into(), "hippopotamus".into()],
            class_descriptions: Vec::new(),
            train: set(vec![0, 1, 1]),
            val: None,
            test: set(vec![1]),
        };
        assert_eq!(
            describe(&dataset),
            "format: image-folder\nimage size: 2x2 RGB (height x width)\nclasses: 2\n\
             class            train      test\n\
             cat                  1         0\n\
             hippopotamus         2         1\n\
             total                3         1\n"
        );
        dataset.format = DataFormat::TinyImagenet;
        dataset.class_descriptions = vec!["house cat".into(), "river horse".into()];
        assert_eq!(
            describe(&dataset),
            "format: tiny-imagenet\nimage size: 2x2 RGB (height x width)\nclasses: 2\n\
             class            train      test  description\n\
             cat                  1         0  house cat\n\
             hippopotamus         2         1  river horse\n\
             total                3         1\n"
        );
    }

    #[test]
    fn format_names_and_serde_agree() {
        let formats = [
            DataFormat::CifarBinary,
            DataFormat::CifarPython,
            DataFormat::Cifar100Binary,
            DataFormat::Cifar100Python,
            DataFormat::ImageFolder,
            DataFormat::ClassFolders,
            DataFormat::TinyImagenet,
            DataFormat::Packed,
        ];
        for format in formats {
            assert_eq!(serde_json::to_string(&format).unwrap(), format!("\"{}\"", format.name()));
        }
    }

    #[test]
    fn split_folder_names_are_no_class_folders() {
        // Images straight in train/ or test/ (no class folders) are not a folder of classes "train" and "test".
        let dir = tempfile::tempdir().unwrap();
        let png = encode(rgb_image(4, 3, 1).into(), image::ImageFormat::Png);
        write_folder(dir.path(), &[("test/a/1.png".into(), png.clone()), ("val/1.png".into(), png)]);
        let err = detect_format(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no data set found") && err.contains("<class>/*"), "{err}");
    }

    #[test]
    fn labels_pick_cifar100_label_sets_and_are_refused_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let cifar100 = dir.path().join("cifar-100-python.tar.gz");
        write_tar_gz(&cifar100, &[], &under("cifar-100-python", python_release100(3)));
        let cache_dir = dir.path().join("cache");
        let coarse = LoadOptions { labels: Some(LabelLevel::Coarse), ..Default::default() };
        let fine = load_dataset(&cifar100, Some(&cache_dir), &LoadOptions::default()).unwrap();
        let coarse_set = load_dataset(&cifar100, Some(&cache_dir), &coarse).unwrap();
        assert_eq!((fine.classes.len(), &coarse_set.classes), (100, &cifar100_names(LabelLevel::Coarse)));
        assert_eq!(coarse_set.train.labels, fine.train.labels.iter().map(|l| l / 5).collect::<Vec<_>>());
        // Each label set has its own cache file, and each reads back as written.
        assert_eq!(std::fs::read_dir(&cache_dir).unwrap().count(), 2);
        assert_eq!(load_dataset(&cifar100, Some(&cache_dir), &coarse).unwrap(), coarse_set);
        assert_eq!(
            load_dataset(&cifar100, Some(&cache_dir), &LoadOptions { labels: Some(LabelLevel::Fine), ..Default::default() }).unwrap(),
            fine
        );

        let cifar10 = dir.path().join("cifar10");
        write_folder(&cifar10, &binary_release(1));
        let packed = dir.path().join("set.fvpack");
        cache::write_packed(&packed, &fine).unwrap();
        for (path, format) in [(&cifar10, "cifar-binary"), (&packed, "packed")] {
            for cache in [None, Some(cache_dir.as_path())] {
                let err = load_dataset(path, cache, &coarse).unwrap_err().to_string();
                assert!(err.contains("data.labels = \"coarse\"") && err.contains(format) && err.contains("remove data.labels"), "{err}");
            }
        }
    }

    #[test]
    fn the_load_size_keys_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("photos");
        let mut files = class_folders(2);
        files[0].1 = encode(rgb_image(9, 5, 3).into(), image::ImageFormat::Png);
        write_folder(&source, &files);
        let cache_dir = dir.path().join("cache");
        let sized = |size| LoadOptions { image_size: size, ..Default::default() };
        let at_8 = load_dataset(&source, Some(&cache_dir), &sized(Some(8))).unwrap();
        let at_6 = load_dataset(&source, Some(&cache_dir), &sized(Some(6))).unwrap();
        assert_eq!((at_8.format, at_8.train.height, at_6.train.width), (DataFormat::ClassFolders, 8, 6));
        assert_eq!(load_dataset(&source, Some(&cache_dir), &sized(Some(8))).unwrap(), at_8);
        // Without a size the mixed sizes are refused, however much is cached.
        let err = load_dataset(&source, Some(&cache_dir), &sized(None)).unwrap_err().to_string();
        assert!(err.contains("cat/0000.png is 9x5") && err.contains("data.input_size"), "{err}");
    }

    #[test]
    fn describe_shows_a_validation_split_and_a_missing_test_split() {
        let set = |labels: Vec<u16>| ImageSet { pixels: vec![0; labels.len() * 3], labels, height: 1, width: 1 };
        let dataset = Dataset {
            format: DataFormat::ImageFolder,
            classes: vec!["cat".into(), "dog".into()],
            class_descriptions: Vec::new(),
            train: set(vec![0, 1, 1]),
            val: Some(set(vec![0])),
            test: set(Vec::new()),
        };
        assert_eq!(
            describe(&dataset),
            "format: image-folder\nimage size: 1x1 RGB (height x width)\nclasses: 2\n\
             class     train       val      test\n\
             cat           1         1         0\n\
             dog           2         0         0\n\
             total         3         1         0\n\
             validation: the data set's own val split (used instead of data.val_size images out of train)\n\
             no test split: training holds data.test_size images out of train as the test split\n"
        );
    }

    fn real_cifar10_jpeg() -> Option<PathBuf> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cifar10-jpeg.tar.gz");
        if path.is_file() {
            Some(path)
        } else {
            eprintln!("skipping: {} is absent (real CIFAR-10 JPEG data lives in ../shared/data)", path.display());
            None
        }
    }

    #[test]
    fn reads_real_cifar10_jpeg_and_caches_it() {
        let Some(path) = real_cifar10_jpeg() else { return };
        let cache_dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let dataset = load_dataset(&path, Some(cache_dir.path()), &LoadOptions::default()).unwrap();
        let first_load = started.elapsed();
        let started = Instant::now();
        let cached = load_dataset(&path, Some(cache_dir.path()), &LoadOptions::default()).unwrap();
        let second_load = started.elapsed();
        eprintln!("real CIFAR-10 JPEG: first load {first_load:.2?} (decode + cache write), second load {second_load:.2?} (cache)");

        assert_eq!(dataset.format, DataFormat::ImageFolder);
        assert_eq!(dataset.classes, CIFAR10_CLASSES);
        assert_eq!((dataset.train.len(), dataset.test.len()), (50_000, 10_000));
        assert_eq!(dataset.train.class_counts(10), [5_000; 10]);
        assert_eq!(dataset.test.class_counts(10), [1_000; 10]);
        assert_eq!((dataset.train.height, dataset.train.width), (32, 32));
        // Images are ordered by class, then file number: test/cat/0000.jpg is test image 3000.
        assert_eq!(dataset.test.labels[3 * 1_000], 3);
        assert_eq!(dataset.test.labels[3 * 1_000 - 1], 2);
        assert!(cached == dataset, "the cached copy differs from the decoded one");
    }
}
