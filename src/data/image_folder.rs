//! Image-folder trees, the classes being the sorted folder names of the training split:
//!
//! - split folders: `train/<class>/*.{png,jpg,jpeg}`, optionally `val/<class>/*` (or `valid/`),
//!   the validation split, and `test/<class>/*`;
//! - class folders alone: `<class>/*` at the top, every image a training image; the validation and
//!   test splits are then split off (`data.val_size`, `data.test_size`).
//!
//! Images are decoded in parallel. They must share one size, unless a load size is given: then an
//! image folder of mixed sizes has every image resized to it, as torchvision's `ImageFolder` with
//! a `Resize` transform does.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::ops::ControlFlow;

use image::{ImageReader, RgbImage};
use rayon::prelude::*;

use super::archive::Source;
use super::{DataFormat, Dataset, FileError, ImageSet, Result};
use crate::augment::Image;
use crate::augment::resize::{Interpolation, resize};

/// The names a split folder may have, by split: train, validation, test.
const SPLIT_FOLDERS: [&[&str]; 3] = [&["train"], &["val", "valid"], &["test"]];

/// How an image folder keeps its splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `train/<class>/*`, with `val/` (or `valid/`) and `test/` optional.
    Splits,
    /// `<class>/*` at the top and nothing else.
    ClassFolders,
}

/// True for a file name with an image extension this reader decodes.
pub fn is_image_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".png", ".jpg", ".jpeg"].iter().any(|ext| lower.ends_with(ext))
}

/// True for a folder name that marks a split (train, val, valid, test), never a class of a
/// folder of class folders.
pub fn is_split_folder(name: &str) -> bool {
    SPLIT_FOLDERS.iter().any(|names| names.contains(&name))
}

/// True for a path with a hidden component (".DS_Store", ".ipynb_checkpoints", macOS "._x.jpg").
pub(super) fn is_hidden(relative: &str) -> bool {
    relative.split('/').any(|part| part.starts_with('.'))
}

/// One image file of a split, before decoding.
pub(super) struct ImageFile {
    class: usize,
    /// Path relative to the source.
    path: String,
    bytes: Vec<u8>,
}

/// What the walk found for one split.
#[derive(Default)]
struct SplitFiles {
    /// The folder the split was found in ("" for class folders alone), for messages.
    folder: String,
    class_folders: BTreeSet<String>,
    /// (class folder, relative path, contents)
    images: Vec<(String, String, Vec<u8>)>,
}

impl SplitFiles {
    fn is_present(&self) -> bool {
        !self.class_folders.is_empty()
    }

    /// `relative` inside this split's folder.
    fn path(&self, relative: &str) -> String {
        if self.folder.is_empty() { relative.to_string() } else { format!("{}/{relative}", self.folder) }
    }
}

/// Loads an image folder laid out as `layout` at the top of `source`. With `image_size`, images of
/// mixed sizes are each resized to that square size; images all of one size keep it.
pub fn load(source: &Source, layout: Layout, image_size: Option<usize>) -> Result<Dataset> {
    let [train_files, val_files, test_files] = read_splits(source, layout)?;
    let classes: Vec<String> = train_files.class_folders.iter().cloned().collect();
    if classes.is_empty() {
        return Err(FileError::invalid(
            source.display_path(&train_files.folder),
            "no class folders; expected train/<class>/*.png|jpg|jpeg (with test/<class>/* and val/<class>/* when there are \
             such splits) or only <class>/* folders",
        ));
    }
    check_class_count(source, &train_files.folder, classes.len())?;
    let present: Vec<&SplitFiles> = [&val_files, &test_files].into_iter().filter(|split| split.is_present()).collect();
    for split in &present {
        check_same_classes(source, &train_files, split)?;
    }
    for split in [&train_files].into_iter().chain(present.iter().copied()) {
        let mut counts = vec![0usize; classes.len()];
        for (class, ..) in &split.images {
            counts[classes.binary_search(class).expect("classes checked above")] += 1;
        }
        if let Some(empty) = counts.iter().position(|&n| n == 0) {
            return Err(FileError::invalid(
                source.display_path(&split.path(&classes[empty])),
                "empty class folder: no .png, .jpg or .jpeg images",
            ));
        }
    }
    let [train_images, val_images, test_images] = [train_files, val_files, test_files].map(|split| label_and_sort(&classes, split.images));
    let all = || train_images.iter().chain(&val_images).chain(&test_images);
    let first = &train_images[0];
    let (width, height) = decode(source, first)?.dimensions();
    let size = match image_size {
        Some(side) if !all().all(|file| header_dimensions(file).is_some_and(|d| d == (width, height))) => {
            DecodeSize::ResizeTo(side as u32, side as u32)
        }
        _ => DecodeSize::Exactly(width, height),
    };
    let expected = format!(
        "{} is {width}x{height}; all images must have one size (set data.input_size to resize every image to one size on load)",
        first.path
    );
    let decode_split = |images: &[ImageFile]| decode_all(source, images, size, &expected);
    let train = decode_split(&train_images)?;
    let val = if val_images.is_empty() { None } else { Some(decode_split(&val_images)?) };
    let test = decode_split(&test_images)?;
    let format = match layout {
        Layout::Splits => DataFormat::ImageFolder,
        Layout::ClassFolders => DataFormat::ClassFolders,
    };
    Ok(Dataset { format, classes, class_descriptions: Vec::new(), train, val, test })
}

/// Errors unless `split` has the class folders of `train`.
fn check_same_classes(source: &Source, train: &SplitFiles, split: &SplitFiles) -> Result<()> {
    let folder = &split.folder;
    if let Some(missing) = train.class_folders.iter().find(|c| !split.class_folders.contains(*c)) {
        return Err(FileError::invalid(
            source.display_path(&split.path(missing)),
            format!("missing class folder: train/{missing} exists and {folder}/ must have the same class folders"),
        ));
    }
    if let Some(extra) = split.class_folders.iter().find(|c| !train.class_folders.contains(*c)) {
        return Err(FileError::invalid(
            source.display_path(&split.path(extra)),
            format!("class folder has no train/{extra}; {folder}/ must have the same class folders as train/"),
        ));
    }
    Ok(())
}

/// Labels are u16, so a data set has at most 65535 classes; `listed_in` is where they come from.
pub(super) fn check_class_count(source: &Source, listed_in: &str, count: usize) -> Result<()> {
    if count > usize::from(u16::MAX) {
        return Err(FileError::invalid(source.display_path(listed_in), format!("{count} classes; at most 65535 are supported")));
    }
    Ok(())
}

/// Walks `source` once, gathering the class folders and image files of the train, validation
/// and test splits (for class folders alone, all of them train).
fn read_splits(source: &Source, layout: Layout) -> Result<[SplitFiles; 3]> {
    let mut splits: [SplitFiles; 3] = Default::default();
    if layout == Layout::Splits {
        splits.iter_mut().zip(SPLIT_FOLDERS).for_each(|(split, names)| split.folder = names[0].to_string());
    }
    // The second of val/ and valid/ met, if both are there.
    let mut second_val_folder = None;
    let depth = if layout == Layout::Splits { 3 } else { 2 };
    source.walk(depth, |mut entry| {
        if is_hidden(entry.path) {
            return Ok(ControlFlow::Continue(()));
        }
        let parts: Vec<&str> = entry.path.split('/').collect();
        let (split, rest) = match layout {
            // A split folder beside class folders is no class (detection does not count it either).
            Layout::ClassFolders if is_split_folder(parts[0]) => return Ok(ControlFlow::Continue(())),
            Layout::ClassFolders => (0, parts.as_slice()),
            Layout::Splits => match SPLIT_FOLDERS.iter().position(|names| names.contains(&parts[0])) {
                Some(split) => (split, &parts[1..]),
                None => return Ok(ControlFlow::Continue(())),
            },
        };
        let class = match (rest, entry.is_dir) {
            ([class], true) => *class,
            ([class, name], false) if is_image_name(name) => *class,
            _ => return Ok(ControlFlow::Continue(())),
        };
        let files = &mut splits[split];
        if layout == Layout::Splits && files.folder != parts[0] {
            if files.is_present() {
                second_val_folder = Some(parts[0].to_string());
                return Ok(ControlFlow::Break(()));
            }
            files.folder = parts[0].to_string();
        }
        // An archive may hold no entry for the folder itself.
        files.class_folders.insert(class.to_string());
        if !entry.is_dir {
            let bytes = entry.read_bytes()?;
            files.images.push((class.to_string(), entry.path.to_string(), bytes));
        }
        Ok(ControlFlow::Continue(()))
    })?;
    if let Some(second) = second_val_folder {
        return Err(FileError::invalid(
            source.display_path(&second),
            format!(
                "both val/ and valid/ hold class folders; keep one of them as the validation split ({} was read first)",
                splits[1].folder
            ),
        ));
    }
    Ok(splits)
}

/// Turns (class name, relative path, contents) into labelled files sorted by class, then path;
/// files of classes not in `classes` (sorted) are dropped.
pub(super) fn label_and_sort(classes: &[String], images: Vec<(String, String, Vec<u8>)>) -> Vec<ImageFile> {
    let mut labelled: Vec<ImageFile> = images
        .into_iter()
        .filter_map(|(class, path, bytes)| {
            let class = classes.binary_search(&class).ok()?;
            Some(ImageFile { class, path, bytes })
        })
        .collect();
    labelled.sort_by(|a, b| (a.class, &a.path).cmp(&(b.class, &b.path)));
    labelled
}

fn decode(source: &Source, file: &ImageFile) -> Result<RgbImage> {
    let invalid = |message: String| FileError::invalid(source.display_path(&file.path), message);
    if is_truncated_jpeg(&file.bytes) {
        return Err(invalid("cannot decode image: truncated JPEG (no end-of-image marker after the last scan)".into()));
    }
    let image = image::load_from_memory(&file.bytes).map_err(|e| invalid(format!("cannot decode image: {e}")))?;
    // Grayscale, gray+alpha and RGBA all become plain RGB.
    Ok(image.into_rgb8())
}

/// The JPEG decoder behind `image` fills a cut-off JPEG with grey instead of failing, so a cut is
/// found here: the end-of-image marker (FF D9) must follow the last start-of-scan (FF DA). Scan
/// data escapes every FF, so there these bytes can only be markers; bytes after the end are allowed.
fn is_truncated_jpeg(bytes: &[u8]) -> bool {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let last_scan = bytes.windows(2).rposition(|pair| pair == [0xFF, 0xDA]).unwrap_or(0);
    !bytes[last_scan..].windows(2).any(|pair| pair == [0xFF, 0xD9])
}

/// The dimensions an image's header states, without decoding it (`None` when unreadable; the
/// decoder reports why).
fn header_dimensions(file: &ImageFile) -> Option<(u32, u32)> {
    ImageReader::new(Cursor::new(&file.bytes)).with_guessed_format().ok()?.into_dimensions().ok()
}

/// The size a set's images are decoded at, as (width, height).
#[derive(Clone, Copy, Debug)]
pub(super) enum DecodeSize {
    /// Each image must have this size.
    Exactly(u32, u32),
    /// Each image of another size is resized to this one (bilinear, antialiased).
    ResizeTo(u32, u32),
}

/// Decodes `files` in parallel into one set of `size`; `expected` explains the error for an image
/// that does not have the size it must have (e.g. "a.png is 4x3; all images must have one size").
pub(super) fn decode_all(source: &Source, files: &[ImageFile], size: DecodeSize, expected: &str) -> Result<ImageSet> {
    let (DecodeSize::Exactly(width, height) | DecodeSize::ResizeTo(width, height)) = size;
    let mut set = ImageSet::empty(height as usize, width as usize);
    let image_bytes = set.image_bytes();
    set.pixels = vec![0; files.len() * image_bytes];
    set.pixels.par_chunks_mut(image_bytes).zip(files).try_for_each(|(pixels, file)| {
        let image = decode(source, file)?;
        if image.dimensions() == (width, height) {
            pixels.copy_from_slice(image.as_raw());
            return Ok(());
        }
        if let DecodeSize::Exactly(..) = size {
            return Err(FileError::invalid(
                source.display_path(&file.path),
                format!("image is {}x{} but {expected}", image.width(), image.height()),
            ));
        }
        let (w, h) = (image.width() as usize, image.height() as usize);
        let resized = resize(&Image::new(image.into_raw(), h, w), height as usize, width as usize, Interpolation::Bilinear);
        pixels.copy_from_slice(&resized.pixels);
        Ok(())
    })?;
    set.labels = files.iter().map(|file| file.class as u16).collect();
    Ok(set)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::archive::tests::{write_folder, write_tar_gz};
    use image::{DynamicImage, GrayImage, ImageFormat, Luma, Rgb, RgbaImage};
    use std::io::Cursor;

    /// An RGB image whose pixel (x, y) is (seed, x*10, y*10) — flat colours survive JPEG well.
    pub(crate) fn rgb_image(width: u32, height: u32, seed: u8) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| Rgb([seed, (x * 10) as u8, (y * 10) as u8]))
    }

    pub(crate) fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    /// A tree with classes `cat` and `dog`: `train_per_class` and 1 test images each, 4x3 PNGs.
    pub(crate) fn image_tree(train_per_class: usize) -> Vec<(String, Vec<u8>)> {
        let mut files = Vec::new();
        for (class_index, class) in ["cat", "dog"].iter().enumerate() {
            for (split, count) in [("train", train_per_class), ("test", 1)] {
                for i in 0..count {
                    let seed = (class_index * 100 + i) as u8;
                    files.push((format!("{split}/{class}/{i:04}.png"), encode(rgb_image(4, 3, seed).into(), ImageFormat::Png)));
                }
            }
        }
        files
    }

    fn load_tree(files: &[(String, Vec<u8>)]) -> Result<Dataset> {
        let dir = tempfile::tempdir().unwrap();
        write_folder(dir.path(), files);
        load(&Source::new(dir.path()), Layout::Splits, None)
    }

    #[test]
    fn loads_tree_from_folder_and_archive() {
        let mut files = image_tree(3);
        files.push(("train/readme.txt".into(), b"not an image".to_vec()));
        files.push(("train/cat/notes.txt".into(), b"not an image".to_vec()));
        let dataset = load_tree(&files).unwrap();
        assert_eq!(dataset.classes, ["cat", "dog"]);
        assert_eq!(dataset.train.labels, [0, 0, 0, 1, 1, 1]);
        assert_eq!(dataset.test.labels, [0, 1]);
        assert_eq!((dataset.train.height, dataset.train.width), (3, 4));
        // train/dog/0001.png has seed 101: pixel (x=2, y=1) = (101, 20, 10) at HWC offset (1*4+2)*3.
        assert_eq!(&dataset.train.image(4)[(4 + 2) * 3..(4 + 2) * 3 + 3], &[101, 20, 10]);

        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("tree.tar.gz");
        // Archive order differs from sorted order and there are no folder entries.
        let mut shuffled = files.clone();
        shuffled.reverse();
        write_tar_gz(&archive, &[], &shuffled);
        assert_eq!(load(&Source::new(&archive), Layout::Splits, None).unwrap(), dataset);
    }

    #[test]
    fn grayscale_rgba_and_jpeg_become_rgb() {
        let mut files = image_tree(1);
        let gray = GrayImage::from_pixel(4, 3, Luma([77]));
        files[0].1 = encode(gray.into(), ImageFormat::Png);
        let rgba = RgbaImage::from_pixel(4, 3, image::Rgba([1, 2, 3, 128]));
        files[1].1 = encode(rgba.into(), ImageFormat::Png);
        files.push(("train/dog/0001.jpg".into(), encode(RgbImage::from_pixel(4, 3, Rgb([200, 100, 50])).into(), ImageFormat::Jpeg)));
        let dataset = load_tree(&files).unwrap();
        assert_eq!(dataset.train.image(0), [77; 36]);
        assert_eq!(dataset.test.image(0), [1, 2, 3].repeat(12));
        let jpeg_pixel = &dataset.train.image(2)[..3];
        assert!(jpeg_pixel.iter().zip([200, 100, 50]).all(|(&a, b)| a.abs_diff(b) <= 3), "{jpeg_pixel:?}");
    }

    fn assert_error(files: &[(String, Vec<u8>)], names: &str, says: &str) {
        let err = load_tree(files).unwrap_err().to_string();
        assert!(err.contains(names) && err.contains(says), "{err}");
    }

    #[test]
    fn bad_image_is_named() {
        let mut files = image_tree(2);
        let half = files[1].1.len() / 2;
        files[1].1.truncate(half);
        assert_error(&files, "train/cat/0001.png", "cannot decode image");
        files.push(("test/dog/0001.jpg".into(), b"\xff\xd8\xff\xe0 not really a jpeg".to_vec()));
        files.remove(1);
        assert_error(&files, "test/dog/0001.jpg", "cannot decode image");

        // Cut anywhere in its scan, a JPEG still decodes (grey-filled) unless the cut is caught.
        let jpeg = encode(rgb_image(4, 3, 9).into(), ImageFormat::Jpeg);
        assert!(image::load_from_memory(&jpeg[..jpeg.len() - 2]).is_ok());
        let last = files.len() - 1;
        files[last].1 = jpeg[..jpeg.len() - 2].to_vec();
        assert_error(&files, "test/dog/0001.jpg", "truncated JPEG");
        let mut padded = jpeg.clone();
        padded.extend_from_slice(b"\0\0trailing bytes");
        files[last].1 = padded;
        assert!(load_tree(&files).is_ok(), "bytes after the end-of-image marker are allowed");
    }

    #[test]
    fn missing_and_extra_class_folders_are_named() {
        let mut files = image_tree(1);
        files.retain(|(name, _)| !name.starts_with("test/dog"));
        assert_error(&files, "test/dog", "missing class folder");

        let mut files = image_tree(1);
        files.push(("test/emu/0000.png".into(), files[0].1.clone()));
        assert_error(&files, "test/emu", "no train/emu");
    }

    #[test]
    fn mixed_sizes_name_both_files_and_sizes_and_suggest_input_size() {
        let mut files = image_tree(2);
        files[3].1 = encode(rgb_image(5, 3, 9).into(), ImageFormat::Png);
        let name = files[3].0.clone();
        assert_error(&files, &name, "is 5x3 but train/cat/0000.png is 4x3");
        assert_error(&files, &name, "set data.input_size to resize every image to one size on load");
    }

    fn load_sized(files: &[(String, Vec<u8>)], layout: Layout, image_size: Option<usize>) -> Result<Dataset> {
        let dir = tempfile::tempdir().unwrap();
        write_folder(dir.path(), files);
        load(&Source::new(dir.path()), layout, image_size)
    }

    #[test]
    fn mixed_sizes_are_resized_to_the_load_size() {
        // Photos of three sizes, one grey level each: resizing keeps a flat colour flat.
        let flat = |width, height, level| encode(RgbImage::from_pixel(width, height, Rgb([level; 3])).into(), ImageFormat::Png);
        let files = vec![
            ("train/cat/a.png".to_string(), flat(40, 30, 10)),
            ("train/cat/b.jpg".to_string(), encode(RgbImage::from_pixel(8, 8, Rgb([100; 3])).into(), ImageFormat::Jpeg)),
            ("train/dog/c.png".to_string(), flat(7, 19, 200)),
            ("test/cat/d.png".to_string(), flat(16, 16, 50)),
            ("test/dog/e.png".to_string(), flat(3, 5, 250)),
        ];
        let dataset = load_sized(&files, Layout::Splits, Some(16)).unwrap();
        for set in [&dataset.train, &dataset.test] {
            assert_eq!((set.height, set.width), (16, 16));
        }
        let level = |set: &ImageSet, index: usize| {
            let image = set.image(index);
            assert!(image.iter().all(|&v| v.abs_diff(image[0]) <= 2), "image {index} is not flat");
            image[0]
        };
        assert_eq!([level(&dataset.train, 0), level(&dataset.train, 2)], [10, 200]);
        assert!(level(&dataset.train, 1).abs_diff(100) <= 3);
        assert_eq!([level(&dataset.test, 0), level(&dataset.test, 1)], [50, 250]);

        // Images of one size keep it whatever the load size: input_size then resizes per batch.
        let uniform = load_sized(&image_tree(2), Layout::Splits, Some(16)).unwrap();
        assert_eq!(uniform, load_sized(&image_tree(2), Layout::Splits, None).unwrap());
        assert_eq!((uniform.train.height, uniform.train.width), (3, 4));
        // A broken image among mixed sizes is still named.
        let mut broken = files.clone();
        broken[3].1.truncate(20);
        let err = load_sized(&broken, Layout::Splits, Some(16)).unwrap_err().to_string();
        assert!(err.contains("test/cat/d.png") && err.contains("cannot decode image"), "{err}");
    }

    #[test]
    fn val_or_valid_is_the_validation_split_and_test_is_optional() {
        for val_folder in ["val", "valid"] {
            let mut files = image_tree(3);
            files.extend(
                image_tree(2)
                    .into_iter()
                    .filter(|(name, _)| name.starts_with("train/"))
                    .map(|(name, bytes)| (name.replacen("train/", &format!("{val_folder}/"), 1), bytes)),
            );
            let dataset = load_tree(&files).unwrap();
            assert_eq!(dataset.train.labels, [0, 0, 0, 1, 1, 1]);
            assert_eq!(dataset.val.as_ref().map(|v| v.labels.clone()), Some(vec![0, 0, 1, 1]), "{val_folder}");
            assert_eq!(dataset.test.labels, [0, 1]);
            // val/cat/0001.png is train/cat/0001.png's twin.
            assert_eq!(dataset.val.as_ref().unwrap().image(1), dataset.train.image(1));

            // Without test/, the data set has no test split.
            files.retain(|(name, _)| !name.starts_with("test/"));
            let dataset = load_tree(&files).unwrap();
            assert_eq!((dataset.test.len(), dataset.val.map(|v| v.len())), (0, Some(4)));

            let mut missing = files.clone();
            missing.retain(|(name, _)| !name.starts_with(&format!("{val_folder}/dog")));
            assert_error(&missing, &format!("{val_folder}/dog"), &format!("missing class folder: train/dog exists and {val_folder}/"));
        }
        let mut both = image_tree(1);
        for folder in ["val", "valid"] {
            both.push((format!("{folder}/cat/0000.png"), both[0].1.clone()));
            both.push((format!("{folder}/dog/0000.png"), both[0].1.clone()));
        }
        assert_error(&both, "valid", "both val/ and valid/");
    }

    #[test]
    fn class_folders_alone_are_all_training_images() {
        let mut files: Vec<(String, Vec<u8>)> = image_tree(3)
            .into_iter()
            .filter(|(name, _)| name.starts_with("train/"))
            .map(|(name, bytes)| (name[6..].to_string(), bytes))
            .collect();
        files.push(("notes.txt".into(), b"not an image".to_vec()));
        files.push((".ipynb_checkpoints/x.png".into(), files[0].1.clone()));
        files.push(("test/x.png".into(), files[0].1.clone()));
        let dataset = load_sized(&files, Layout::ClassFolders, None).unwrap();
        assert_eq!(dataset.classes, ["cat", "dog"]);
        assert_eq!(dataset.train.labels, [0, 0, 0, 1, 1, 1]);
        assert_eq!((dataset.val, dataset.test.len()), (None, 0));
        let dir = tempfile::tempdir().unwrap();
        write_folder(dir.path(), &files);
        std::fs::create_dir(dir.path().join("emu")).unwrap();
        let err = load(&Source::new(dir.path()), Layout::ClassFolders, None).unwrap_err().to_string();
        assert!(err.contains("emu") && err.contains("empty class folder"), "{err}");
    }

    #[test]
    fn empty_class_folder_and_empty_tree_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        write_folder(dir.path(), &image_tree(1));
        std::fs::create_dir_all(dir.path().join("train/emu")).unwrap();
        std::fs::create_dir_all(dir.path().join("test/emu")).unwrap();
        let err = load(&Source::new(dir.path()), Layout::Splits, None).unwrap_err().to_string();
        assert!(err.contains("train/emu") && err.contains("empty class folder"), "{err}");

        let empty = tempfile::tempdir().unwrap();
        let err = load(&Source::new(empty.path()), Layout::Splits, None).unwrap_err().to_string();
        assert!(err.contains("no class folders"), "{err}");
    }
}
