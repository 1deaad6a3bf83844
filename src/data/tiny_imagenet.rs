//! Tiny ImageNet-200 in its official layout:
//!
//! ```text
//! wnids.txt                      the class ids (WordNet ids), one per line
//! words.txt                      "<wnid>\t<names>" for every WordNet synset, not only these 200
//! train/<wnid>/images/*.JPEG     500 images per class (train/<wnid>/<wnid>_boxes.txt is ignored)
//! val/images/*.JPEG              50 images per class
//! val/val_annotations.txt        "<file>\t<wnid>\t<x0>\t<y0>\t<x1>\t<y1>" for each val image
//! test/images/*.JPEG             unlabelled, not read
//! ```
//!
//! [`Dataset`] holds a train and a test split, so Tiny ImageNet's labelled `val/` becomes the
//! `test` split (the split papers report Tiny ImageNet accuracy on); a validation set is split
//! off train as for every format. Classes are the sorted wnids, the label order torchvision's
//! `ImageFolder` gives on `train/`, and `Dataset::class_descriptions` holds their `words.txt`
//! names. All images must be 64x64; the grayscale ones become RGB.

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;

use super::archive::Source;
use super::image_folder::{DecodeSize, check_class_count, decode_all, is_hidden, is_image_name, label_and_sort};
use super::{DataFormat, Dataset, FileError, Result};

/// The list of class ids; a data set is recognized as Tiny ImageNet by it.
pub const WNIDS: &str = "wnids.txt";
const WORDS: &str = "words.txt";
const ANNOTATIONS: &str = "val/val_annotations.txt";
/// Width and height of every image.
const SIDE: u32 = 64;

/// (wnid, path relative to the source, contents) of one image, as `label_and_sort` takes it.
type ClassFile = (String, String, Vec<u8>);

/// What one walk over the source keeps.
#[derive(Default)]
struct TinyFiles {
    wnids: Option<Vec<u8>>,
    words: Option<Vec<u8>>,
    annotations: Option<Vec<u8>>,
    /// `train/<wnid>/images/*`.
    train: Vec<ClassFile>,
    /// File name -> contents of `val/images/*`.
    val: BTreeMap<String, Vec<u8>>,
}

/// Loads Tiny ImageNet whose `wnids.txt` is at the top of `source`.
pub fn load(source: &Source) -> Result<Dataset> {
    let files = read_files(source)?;
    let text = |bytes: Option<Vec<u8>>, name: &str, holds: &str| {
        bytes
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .ok_or_else(|| FileError::invalid(source.display_path(name), format!("missing: Tiny ImageNet keeps {holds} there")))
    };
    let classes = parse_wnids(source, &text(files.wnids, WNIDS, "its class ids (one wnid per line)")?)?;
    check_train_folders(source, &classes, &files.train)?;
    let annotations = text(files.annotations, ANNOTATIONS, "the classes of val/images/ (file<tab>wnid<tab>box lines)")?;
    let val = label_val(source, &annotations, files.val, &classes)?;
    let words = text(files.words, WORDS, "the class names (wnid<tab>names lines)")?;
    let class_descriptions = parse_words(source, &words, &classes)?;

    let expected = "Tiny ImageNet images are 64x64";
    let train = decode_all(source, &label_and_sort(&classes, files.train), DecodeSize::Exactly(SIDE, SIDE), expected)?;
    let test = decode_all(source, &label_and_sort(&classes, val), DecodeSize::Exactly(SIDE, SIDE), expected)?;
    Ok(Dataset { format: DataFormat::TinyImagenet, classes, class_descriptions, train, val: None, test })
}

/// Walks `source` once, keeping the text files and the train and val images.
fn read_files(source: &Source) -> Result<TinyFiles> {
    let mut files = TinyFiles::default();
    source.walk(4, |mut entry| {
        if entry.is_dir || is_hidden(entry.path) {
            return Ok(ControlFlow::Continue(()));
        }
        let path = entry.path;
        let parts: Vec<&str> = path.split('/').collect();
        match (path, parts.as_slice()) {
            (WNIDS, _) => files.wnids = Some(entry.read_bytes()?),
            (WORDS, _) => files.words = Some(entry.read_bytes()?),
            (ANNOTATIONS, _) => files.annotations = Some(entry.read_bytes()?),
            (_, ["train", wnid, "images", name]) if is_image_name(name) => {
                files.train.push((wnid.to_string(), path.to_string(), entry.read_bytes()?));
            }
            (_, ["val", "images", name]) if is_image_name(name) => {
                files.val.insert(name.to_string(), entry.read_bytes()?);
            }
            _ => {}
        }
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(files)
}

/// The class ids of `wnids.txt`, sorted.
fn parse_wnids(source: &Source, text: &str) -> Result<Vec<String>> {
    let invalid = |message: String| FileError::invalid(source.display_path(WNIDS), message);
    let mut classes: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    classes.sort();
    if classes.is_empty() {
        return Err(invalid("no class ids; expected one wnid per line".into()));
    }
    if let Some(pair) = classes.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(invalid(format!("{} is listed twice", pair[0])));
    }
    check_class_count(source, WNIDS, classes.len())?;
    Ok(classes)
}

/// Every class needs training images, and every training folder must be a listed class.
fn check_train_folders(source: &Source, classes: &[String], train: &[ClassFile]) -> Result<()> {
    let mut counts = vec![0usize; classes.len()];
    for (wnid, ..) in train {
        let index = classes
            .binary_search(wnid)
            .map_err(|_| FileError::invalid(source.display_path(&format!("train/{wnid}")), "class folder not listed in wnids.txt"))?;
        counts[index] += 1;
    }
    match counts.iter().position(|&count| count == 0) {
        Some(empty) => Err(FileError::invalid(
            source.display_path(&format!("train/{}/images", classes[empty])),
            format!("missing or empty: wnids.txt lists {}, whose training images belong here", classes[empty]),
        )),
        None => Ok(()),
    }
}

/// Pairs each line of `val_annotations.txt` with its image in `val/images/`; every image there
/// must be listed exactly once.
fn label_val(source: &Source, annotations: &str, mut images: BTreeMap<String, Vec<u8>>, classes: &[String]) -> Result<Vec<ClassFile>> {
    let at_line =
        |number: usize, message: String| FileError::invalid(source.display_path(ANNOTATIONS), format!("line {number}: {message}"));
    let mut first_listed: HashMap<&str, usize> = HashMap::new();
    let mut val = Vec::with_capacity(images.len());
    for (number, line) in (1..).zip(annotations.lines()) {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
        let &[file, wnid, ..] = fields.as_slice() else {
            return Err(at_line(number, "expected a file name, a wnid and a box, tab-separated; found 1 field".into()));
        };
        if classes.binary_search_by(|class| class.as_str().cmp(wnid)).is_err() {
            return Err(at_line(number, format!("class {wnid} of {file} is not in wnids.txt")));
        }
        if let Some(first) = first_listed.insert(file, number) {
            return Err(at_line(number, format!("{file} is listed again (first on line {first})")));
        }
        let path = format!("val/images/{file}");
        let bytes = images
            .remove(file)
            .ok_or_else(|| FileError::invalid(source.display_path(&path), format!("missing: {ANNOTATIONS} lists it on line {number}")))?;
        val.push((wnid.to_string(), path, bytes));
    }
    match images.keys().next() {
        Some(unlisted) => Err(FileError::invalid(
            source.display_path(&format!("val/images/{unlisted}")),
            format!("not listed in {ANNOTATIONS}, so its class is unknown"),
        )),
        None => Ok(val),
    }
}

/// The `words.txt` names of `classes`, in their order.
fn parse_words(source: &Source, words: &str, classes: &[String]) -> Result<Vec<String>> {
    let mut descriptions = vec![None; classes.len()];
    for line in words.lines() {
        if let Some((wnid, names)) = line.split_once('\t')
            && let Ok(index) = classes.binary_search_by(|class| class.as_str().cmp(wnid.trim()))
        {
            descriptions[index] = Some(names.trim().to_string());
        }
    }
    descriptions
        .into_iter()
        .zip(classes)
        .map(|(description, wnid)| {
            description.ok_or_else(|| {
                FileError::invalid(
                    source.display_path(WORDS),
                    format!("no line for {wnid}, which wnids.txt lists; expected {wnid}<tab><names>"),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::archive::tests::{write_folder, write_tar_gz, write_zip};
    use crate::data::image_folder::tests::encode;
    use crate::data::{LoadOptions, detect_format, load_dataset};
    use image::{GrayImage, ImageFormat, Luma, Rgb, RgbImage};

    /// The classes of [`tiny_tree`] in label (sorted) order.
    const CLASSES: [&str; 3] = ["n01443537", "n02123045", "n09999999"];

    /// A flat-coloured JPEG whose red channel tells the images apart.
    fn jpeg(side: u32, red: u8) -> Vec<u8> {
        encode(RgbImage::from_pixel(side, side, Rgb([red, 100, 50])).into(), ImageFormat::Jpeg)
    }

    /// The official layout in miniature: 3 classes (listed unsorted) of 2 train images each, red
    /// 100 * class + 40 * image; 3 val images: val_0 (red 200, last class), val_1 (grayscale 77)
    /// and val_2 (red 220, both first class); box files, a test image and an unused synset.
    fn tiny_tree() -> Vec<(String, Vec<u8>)> {
        let text = |name: &str, text: &str| (name.to_string(), text.as_bytes().to_vec());
        let gray = encode(GrayImage::from_pixel(SIDE, SIDE, Luma([77])).into(), ImageFormat::Jpeg);
        let mut files = vec![
            text("wnids.txt", "n02123045\nn09999999\nn01443537\n"),
            text(
                "words.txt",
                "n00001740\tentity\nn01443537\tgoldfish, Carassius auratus\n\
                 n02123045\ttabby, tabby cat\nn09999999\tmade-up thing\n",
            ),
            ("test/images/test_0.JPEG".into(), jpeg(SIDE, 250)),
            text(
                "val/val_annotations.txt",
                "val_0.JPEG\tn09999999\t0\t0\t63\t63\nval_1.JPEG\tn01443537\t1\t2\t3\t4\nval_2.JPEG\tn01443537\t0\t0\t9\t9\n",
            ),
            ("val/images/val_0.JPEG".into(), jpeg(SIDE, 200)),
            ("val/images/val_1.JPEG".into(), gray),
            ("val/images/val_2.JPEG".into(), jpeg(SIDE, 220)),
        ];
        for (class, wnid) in CLASSES.iter().enumerate() {
            files.push(text(&format!("train/{wnid}/{wnid}_boxes.txt"), &format!("{wnid}_0.JPEG\t0\t0\t9\t9\n")));
            for image in 0..2 {
                let red = (100 * class + 40 * image) as u8;
                files.push((format!("train/{wnid}/images/{wnid}_{image}.JPEG"), jpeg(SIDE, red)));
            }
        }
        files
    }

    fn under(top: &str, files: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
        files.iter().map(|(name, bytes)| (format!("{top}{name}"), bytes.clone())).collect()
    }

    fn assert_close(pixel: &[u8], expected: [u8; 3]) {
        assert!(pixel.iter().zip(expected).all(|(&a, b)| a.abs_diff(b) <= 3), "{pixel:?} vs {expected:?}");
    }

    #[test]
    fn loads_the_official_layout() {
        let dir = tempfile::tempdir().unwrap();
        write_folder(dir.path(), &tiny_tree());
        let dataset = load(&Source::new(dir.path())).unwrap();
        assert_eq!(dataset.format, DataFormat::TinyImagenet);
        assert_eq!(dataset.classes, CLASSES);
        assert_eq!(dataset.class_descriptions, ["goldfish, Carassius auratus", "tabby, tabby cat", "made-up thing"]);
        assert_eq!(dataset.train.labels, [0, 0, 1, 1, 2, 2]);
        assert_eq!((dataset.train.height, dataset.train.width), (64, 64));
        assert_close(&dataset.train.image(3)[..3], [140, 100, 50]);
        // val/ is the test split, sorted by class then file: val_1, val_2, val_0.
        assert_eq!(dataset.test.labels, [0, 0, 2]);
        assert_eq!((dataset.test.height, dataset.test.width), (64, 64));
        let gray = dataset.test.image(0);
        assert!(gray.chunks(3).all(|rgb| rgb[0] == rgb[1] && rgb[1] == rgb[2]), "grayscale becomes equal RGB");
        assert_close(&gray[..3], [77, 77, 77]);
        assert_close(&dataset.test.image(1)[..3], [220, 100, 50]);
        assert_close(&dataset.test.image(2)[..3], [200, 100, 50]);
    }

    #[test]
    fn folder_tar_gz_and_zip_load_alike_with_or_without_a_top_folder() {
        let dir = tempfile::tempdir().unwrap();
        let reference_folder = dir.path().join("reference");
        write_folder(&reference_folder, &tiny_tree());
        let reference = load(&Source::new(&reference_folder)).unwrap();
        // Stored like the official zip: test/ first, the text files last.
        let mut stored = tiny_tree();
        stored.rotate_left(2);
        for top in ["", "tiny-imagenet-200/"] {
            let files = under(top, &stored);
            let folder = dir.path().join(format!("folder{}", top.len()));
            write_folder(&folder, &files);
            let tar_gz = dir.path().join(format!("set{}.tar.gz", top.len()));
            write_tar_gz(&tar_gz, &[], &files);
            let zip = dir.path().join(format!("set{}.zip", top.len()));
            let folders = if top.is_empty() { vec![] } else { vec!["tiny-imagenet-200"] };
            write_zip(&zip, &folders, &files);
            for path in [&folder, &tar_gz, &zip] {
                assert_eq!(detect_format(path).unwrap(), DataFormat::TinyImagenet, "{}", path.display());
                assert!(load_dataset(path, None, &LoadOptions::default()).unwrap() == reference, "{}", path.display());
            }
        }
    }

    #[test]
    fn second_load_comes_from_the_cache_with_the_descriptions() {
        let dir = tempfile::tempdir().unwrap();
        let zip = dir.path().join("tiny.zip");
        write_zip(&zip, &[], &under("tiny-imagenet-200/", &tiny_tree()));
        let cache_dir = dir.path().join("cache");
        let fresh = load_dataset(&zip, Some(&cache_dir), &LoadOptions::default()).unwrap();
        let cache_file = crate::data::cache::cache_file_path(&zip, &cache_dir, "").unwrap();
        assert!(cache_file.is_file());
        assert!(load_dataset(&zip, Some(&cache_dir), &LoadOptions::default()).unwrap() == fresh);
        assert_eq!(fresh.class_descriptions.len(), 3);
    }

    /// Loads `files` (after `change`) from a folder and checks that the error names `names` and
    /// says `says`.
    fn assert_error(change: impl FnOnce(&mut Vec<(String, Vec<u8>)>), names: &str, says: &str) {
        let mut files = tiny_tree();
        change(&mut files);
        let dir = tempfile::tempdir().unwrap();
        write_folder(dir.path(), &files);
        let err = load_dataset(dir.path(), None, &LoadOptions::default()).unwrap_err().to_string();
        assert!(err.contains(names) && err.contains(says), "expected {names:?} and {says:?} in: {err}");
    }

    fn set(files: &mut [(String, Vec<u8>)], name: &str, bytes: impl Into<Vec<u8>>) {
        files.iter_mut().find(|(n, _)| n == name).unwrap().1 = bytes.into();
    }

    fn remove(files: &mut Vec<(String, Vec<u8>)>, name: &str) {
        files.retain(|(n, _)| n != name);
    }

    #[test]
    fn missing_wnids_is_named_even_under_a_top_folder() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = under("tiny-imagenet-200/", &tiny_tree());
        remove(&mut files, "tiny-imagenet-200/wnids.txt");
        let archive = dir.path().join("tiny.tar.gz");
        write_tar_gz(&archive, &[], &files);
        let err = detect_format(&archive).unwrap_err().to_string();
        assert!(err.contains("tiny.tar.gz/tiny-imagenet-200/wnids.txt") && err.contains("missing"), "{err}");

        let folder = dir.path().join("folder");
        write_folder(&folder, &files);
        let err = load(&Source::new(folder.join("tiny-imagenet-200"))).unwrap_err().to_string();
        assert!(err.contains("tiny-imagenet-200/wnids.txt") && err.contains("missing"), "{err}");
    }

    #[test]
    fn bad_class_lists_are_named() {
        assert_error(|f| set(f, "wnids.txt", "\n"), "wnids.txt", "no class ids");
        assert_error(|f| set(f, "wnids.txt", "n01443537\nn02123045\nn09999999\nn01443537\n"), "wnids.txt", "listed twice");
        assert_error(
            |f| set(f, "wnids.txt", "n01443537\nn02123045\nn09999999\nn05555555\n"),
            "train/n05555555/images",
            "missing or empty: wnids.txt lists n05555555",
        );
        assert_error(|f| set(f, "wnids.txt", "n01443537\nn02123045\n"), "train/n09999999", "not listed in wnids.txt");
        assert_error(|f| set(f, "words.txt", "n01443537\tgoldfish\nn02123045\ttabby\n"), "words.txt", "no line for n09999999");
        assert_error(|f| remove(f, "words.txt"), "words.txt", "missing");
    }

    #[test]
    fn bad_val_annotations_are_named() {
        let annotations = "val/val_annotations.txt";
        let lines = |second: &str| format!("val_0.JPEG\tn09999999\t0\t0\t63\t63\n{second}\nval_2.JPEG\tn01443537\t0\t0\t9\t9\n");
        assert_error(
            |f| set(f, annotations, lines("val_1.JPEG\tn07777777\t1\t2\t3\t4")),
            annotations,
            "line 2: class n07777777 of val_1.JPEG is not in wnids.txt",
        );
        assert_error(|f| set(f, annotations, lines("val_1.JPEG n01443537 1 2 3 4")), annotations, "line 2: expected");
        assert_error(
            |f| set(f, annotations, lines("val_0.JPEG\tn09999999\t0\t0\t63\t63")),
            annotations,
            "line 2: val_0.JPEG is listed again (first on line 1)",
        );
        assert_error(
            |f| remove(f, "val/images/val_2.JPEG"),
            "val/images/val_2.JPEG",
            "missing: val/val_annotations.txt lists it on line 3",
        );
        assert_error(
            |f| f.push(("val/images/val_3.JPEG".into(), jpeg(SIDE, 1))),
            "val/images/val_3.JPEG",
            "not listed in val/val_annotations.txt",
        );
        assert_error(|f| remove(f, annotations), annotations, "missing");
    }

    #[test]
    fn bad_images_are_named() {
        let train_image = "train/n02123045/images/n02123045_1.JPEG";
        let cut = |f: &mut Vec<(String, Vec<u8>)>| {
            let bytes = jpeg(SIDE, 9);
            set(f, train_image, &bytes[..bytes.len() * 2 / 3]);
        };
        assert_error(cut, train_image, "cannot decode image");
        assert_error(|f| set(f, train_image, b"\xff\xd8 not a jpeg".as_slice()), train_image, "cannot decode image");
        assert_error(
            |f| set(f, "val/images/val_0.JPEG", jpeg(32, 9)),
            "val/images/val_0.JPEG",
            "image is 32x32 but Tiny ImageNet images are 64x64",
        );
    }
}
