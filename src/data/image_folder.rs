//! Image-folder trees: `train/<class>/*.{png,jpg,jpeg}` and `test/<class>/*`, the classes being
//! the sorted folder names under `train/`. Images are decoded in parallel and must share one size.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use image::RgbImage;
use rayon::prelude::*;

use super::archive::Source;
use super::{DataFormat, Dataset, FileError, ImageSet, Result};

/// The split folders, in the order of `Dataset`'s fields.
pub const SPLIT_FOLDERS: [&str; 2] = ["train", "test"];

/// True for a file name with an image extension this reader decodes.
pub fn is_image_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".png", ".jpg", ".jpeg"].iter().any(|ext| lower.ends_with(ext))
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
    class_folders: BTreeSet<String>,
    /// (class folder, relative path, contents)
    images: Vec<(String, String, Vec<u8>)>,
}

/// Loads an image-folder tree whose `train/` and `test/` are at the top of `source`.
pub fn load(source: &Source) -> Result<Dataset> {
    let [train_files, test_files] = read_splits(source)?;
    let classes: Vec<String> = train_files.class_folders.iter().cloned().collect();
    if classes.is_empty() {
        return Err(FileError::invalid(
            source.display_path("train"),
            "no class folders; expected train/<class>/*.png|jpg|jpeg and test/<class>/*",
        ));
    }
    check_class_count(source, "train", classes.len())?;
    if let Some(missing) = classes.iter().find(|c| !test_files.class_folders.contains(*c)) {
        return Err(FileError::invalid(
            source.display_path(&format!("test/{missing}")),
            format!("missing class folder: train/{missing} exists and test/ must have the same class folders"),
        ));
    }
    if let Some(extra) = test_files.class_folders.iter().find(|c| !train_files.class_folders.contains(*c)) {
        return Err(FileError::invalid(
            source.display_path(&format!("test/{extra}")),
            format!("class folder has no train/{extra}; test/ must have the same class folders as train/"),
        ));
    }
    let train_images = label_and_sort(&classes, train_files.images);
    let test_images = label_and_sort(&classes, test_files.images);
    for (split, images) in [("train", &train_images), ("test", &test_images)] {
        let mut counts = vec![0usize; classes.len()];
        images.iter().for_each(|image| counts[image.class] += 1);
        if let Some(empty) = counts.iter().position(|&n| n == 0) {
            return Err(FileError::invalid(
                source.display_path(&format!("{split}/{}", classes[empty])),
                "empty class folder: no .png, .jpg or .jpeg images",
            ));
        }
    }
    // Every image must have the size of the first train image.
    let first = &train_images[0];
    let (width, height) = decode(source, first)?.dimensions();
    let expected = format!("{} is {width}x{height}; all images must have one size", first.path);
    let train = decode_all(source, &train_images, (width, height), &expected)?;
    let test = decode_all(source, &test_images, (width, height), &expected)?;
    Ok(Dataset { format: DataFormat::ImageFolder, classes, class_descriptions: Vec::new(), train, test })
}

/// Labels are u16, so a data set has at most 65535 classes; `listed_in` is where they come from.
pub(super) fn check_class_count(source: &Source, listed_in: &str, count: usize) -> Result<()> {
    if count > usize::from(u16::MAX) {
        return Err(FileError::invalid(source.display_path(listed_in), format!("{count} classes; at most 65535 are supported")));
    }
    Ok(())
}

/// Walks `source` once, gathering the class folders and image files of `train/` and `test/`.
fn read_splits(source: &Source) -> Result<[SplitFiles; 2]> {
    let mut splits: [SplitFiles; 2] = Default::default();
    source.walk(3, |mut entry| {
        let parts: Vec<&str> = entry.path.split('/').collect();
        let split = SPLIT_FOLDERS.iter().position(|s| *s == parts[0]);
        let hidden = is_hidden(entry.path);
        match (split, parts.as_slice(), entry.is_dir) {
            (Some(split), [_, class], true) if !hidden => {
                splits[split].class_folders.insert(class.to_string());
            }
            (Some(split), [_, class, name], false) if !hidden && is_image_name(name) => {
                // An archive may hold no entry for the folder itself.
                splits[split].class_folders.insert(class.to_string());
                let bytes = entry.read_bytes()?;
                splits[split].images.push((class.to_string(), entry.path.to_string(), bytes));
            }
            _ => {}
        }
        Ok(ControlFlow::Continue(()))
    })?;
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

/// Decodes `files` in parallel into one set; each must be `width x height`, which `expected`
/// explains in the error for one that is not (e.g. "a.png is 4x3; all images must have one size").
pub(super) fn decode_all(source: &Source, files: &[ImageFile], (width, height): (u32, u32), expected: &str) -> Result<ImageSet> {
    let mut set = ImageSet::empty(height as usize, width as usize);
    let image_bytes = set.image_bytes();
    set.pixels = vec![0; files.len() * image_bytes];
    set.pixels.par_chunks_mut(image_bytes).zip(files).try_for_each(|(pixels, file)| {
        let image = decode(source, file)?;
        if image.dimensions() != (width, height) {
            return Err(FileError::invalid(
                source.display_path(&file.path),
                format!("image is {}x{} but {expected}", image.width(), image.height()),
            ));
        }
        pixels.copy_from_slice(image.as_raw());
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
        load(&Source::new(dir.path()))
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
        assert_eq!(load(&Source::new(&archive)).unwrap(), dataset);
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
    fn mixed_sizes_name_both_files_and_sizes() {
        let mut files = image_tree(2);
        files[3].1 = encode(rgb_image(5, 3, 9).into(), ImageFormat::Png);
        let name = files[3].0.clone();
        assert_error(&files, &name, "is 5x3 but train/cat/0000.png is 4x3");
    }

    #[test]
    fn empty_class_folder_and_empty_tree_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        write_folder(dir.path(), &image_tree(1));
        std::fs::create_dir_all(dir.path().join("train/emu")).unwrap();
        std::fs::create_dir_all(dir.path().join("test/emu")).unwrap();
        let err = load(&Source::new(dir.path())).unwrap_err().to_string();
        assert!(err.contains("train/emu") && err.contains("empty class folder"), "{err}");

        let empty = tempfile::tempdir().unwrap();
        let err = load(&Source::new(empty.path())).unwrap_err().to_string();
        assert!(err.contains("no class folders"), "{err}");
    }
}
