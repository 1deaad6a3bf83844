//! The official CIFAR-10 binary release (`cifar-10-batches-bin/`): records of one label byte
//! followed by a 32x32 image as three 1024-byte planes (R, G, B), each row-major.
//!
//! Also holds what the binary and the python release share: the batch file names and the
//! conversion of a planar record into our HWC layout.

use std::path::{Path, PathBuf};

use super::archive::Source;
use super::{CIFAR10_CLASSES, DataFormat, Dataset, FileError, ImageSet, Result};

/// Height and width of a CIFAR image.
pub const SIDE: usize = 32;
/// Bytes of one CIFAR image: three planes of `SIDE * SIDE`.
pub const IMAGE_BYTES: usize = 3 * SIDE * SIDE;
/// One record of a binary batch: the label byte, then the image.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;

const TRAIN_BATCHES: [&str; 5] = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"];
const TEST_BATCH: &str = "test_batch";
/// The class-name file of the binary release: one name a line, in label order.
pub const BINARY_META: &str = "batches.meta.txt";
pub const BINARY_SUFFIX: &str = ".bin";

/// The file names of a release's batches (`suffix` is `.bin` for the binary release, empty for
/// the python one), train batches first.
pub fn batch_names(suffix: &str) -> Vec<String> {
    TRAIN_BATCHES.iter().chain([&TEST_BATCH]).map(|name| format!("{name}{suffix}")).collect()
}

/// The contents of one file, with the path to name in messages.
pub struct NamedBytes {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

/// How one CIFAR release stores its files, and how to decode them.
pub struct ReleaseLayout {
    pub format: DataFormat,
    /// Ending of the batch file names (`data_batch_1.bin` or `data_batch_1`).
    pub batch_suffix: &'static str,
    /// The optional class-name file.
    pub meta_name: &'static str,
    pub read_class_names: fn(&NamedBytes) -> Result<Vec<String>>,
    /// Appends the images of one batch file to the set, checking labels against the class count.
    pub decode_batch: fn(&NamedBytes, &mut ImageSet, usize) -> Result<()>,
}

const BINARY_LAYOUT: ReleaseLayout = ReleaseLayout {
    format: DataFormat::CifarBinary,
    batch_suffix: BINARY_SUFFIX,
    meta_name: BINARY_META,
    read_class_names: read_text_class_names,
    decode_batch: decode_binary_batch,
};

/// Loads the binary release from the folder `source` (which holds `data_batch_1.bin` ...).
pub fn load(source: &Source) -> Result<Dataset> {
    load_release(source, &BINARY_LAYOUT)
}

/// Loads a CIFAR release laid out as `layout` from the top level of `source`: every batch must
/// be there and non-empty; without a class-name file the classes are the CIFAR-10 names.
pub fn load_release(source: &Source, layout: &ReleaseLayout) -> Result<Dataset> {
    let suffix = layout.batch_suffix;
    let batch_names = batch_names(suffix);
    let is_wanted = |path: &str| path == layout.meta_name || batch_names.iter().any(|name| name == path);
    let mut found = source.read_files(is_wanted)?;
    let mut take = |name: &str| {
        let position = found.iter().position(|(path, _)| path == name)?;
        let (_, bytes) = found.swap_remove(position);
        Some(NamedBytes { path: source.display_path(name), bytes })
    };

    let classes = match take(layout.meta_name) {
        Some(meta) => (layout.read_class_names)(&meta)?,
        None => Vec::new(),
    };
    let classes = if classes.is_empty() { CIFAR10_CLASSES.iter().map(|name| name.to_string()).collect() } else { classes };

    let mut decode_batches = |names: &[String]| {
        let mut set = ImageSet::empty(SIDE, SIDE);
        for name in names {
            let batch = take(name).ok_or_else(|| {
                FileError::invalid(
                    source.display_path(name),
                    format!("missing batch file: a CIFAR-10 release has data_batch_1..5{suffix} and test_batch{suffix}"),
                )
            })?;
            if batch.bytes.is_empty() {
                return Err(FileError::invalid(batch.path, "empty file; expected a CIFAR-10 batch"));
            }
            (layout.decode_batch)(&batch, &mut set, classes.len())?;
        }
        Ok(set)
    };
    let (train_names, test_names) = batch_names.split_at(TRAIN_BATCHES.len());
    let train = decode_batches(train_names)?;
    let test = decode_batches(test_names)?;
    Ok(Dataset { format: layout.format, classes, class_descriptions: Vec::new(), train, test })
}

/// Appends one CIFAR image (`planar`: R, G, B planes) to `set` in HWC order, after checking
/// that `label` (of record `index` in `path`) names one of `num_classes` classes.
pub fn push_planar_record(set: &mut ImageSet, path: &Path, index: usize, label: i64, planar: &[u8], num_classes: usize) -> Result<()> {
    let label = u16::try_from(label)
        .ok()
        .filter(|&l| usize::from(l) < num_classes)
        .ok_or_else(|| FileError::invalid(path, format!("label {label} of record {index} is outside 0..={}", num_classes - 1)))?;
    let (red, rest) = planar.split_at(SIDE * SIDE);
    let (green, blue) = rest.split_at(SIDE * SIDE);
    set.pixels.extend(red.iter().zip(green).zip(blue).flat_map(|((&r, &g), &b)| [r, g, b]));
    set.labels.push(label);
    Ok(())
}

/// Class names from `batches.meta.txt`: one a line, blank lines ignored.
fn read_text_class_names(meta: &NamedBytes) -> Result<Vec<String>> {
    let text = String::from_utf8_lossy(&meta.bytes);
    Ok(text.lines().map(str::trim).filter(|line| !line.is_empty()).map(String::from).collect())
}

fn decode_binary_batch(batch: &NamedBytes, set: &mut ImageSet, num_classes: usize) -> Result<()> {
    let size = batch.bytes.len();
    if !size.is_multiple_of(RECORD_BYTES) {
        return Err(FileError::invalid(
            &batch.path,
            format!(
                "truncated or not a CIFAR-10 binary batch: size {size} bytes is not a multiple of the \
                 {RECORD_BYTES}-byte record (1 label byte + {IMAGE_BYTES} pixel bytes)"
            ),
        ));
    }
    set.pixels.reserve(size / RECORD_BYTES * IMAGE_BYTES);
    for (index, record) in batch.bytes.chunks_exact(RECORD_BYTES).enumerate() {
        push_planar_record(set, &batch.path, index, i64::from(record[0]), &record[1..], num_classes)?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::archive::tests::{write_folder, write_tar_gz};

    /// A planar CIFAR image whose every byte is a function of (image seed, plane, position).
    pub(crate) fn planar_image(seed: u8) -> Vec<u8> {
        (0..IMAGE_BYTES).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed).wrapping_add((i / 1024) as u8 * 85)).collect()
    }

    /// The labels of the synthetic release: batch `b`, record `i`.
    pub(crate) fn synthetic_label(batch: usize, record: usize) -> u8 {
        ((batch * 3 + record) % 10) as u8
    }

    /// The images of the synthetic release: `records` per batch.
    pub(crate) fn synthetic_image(batch: usize, record: usize) -> Vec<u8> {
        planar_image((batch * 16 + record) as u8)
    }

    /// A small binary release: `records` records per batch, plus a class-name file.
    pub(crate) fn binary_release(records: usize) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<(String, Vec<u8>)> = batch_names(BINARY_SUFFIX)
            .into_iter()
            .enumerate()
            .map(|(batch, name)| {
                let bytes = (0..records)
                    .flat_map(|record| {
                        let mut out = vec![synthetic_label(batch, record)];
                        out.extend(synthetic_image(batch, record));
                        out
                    })
                    .collect();
                (name, bytes)
            })
            .collect();
        files.push((BINARY_META.into(), format!("{}\n\n", CIFAR10_CLASSES.join("\n")).into_bytes()));
        files
    }

    /// Checks a loaded synthetic release (from `binary_release` or its python twin).
    pub(crate) fn assert_synthetic_release(dataset: &Dataset, records: usize) {
        assert_eq!(dataset.classes, CIFAR10_CLASSES);
        assert_eq!((dataset.train.len(), dataset.test.len()), (5 * records, records));
        assert_eq!((dataset.train.height, dataset.train.width), (32, 32));
        for (set, first_batch) in [(&dataset.train, 0), (&dataset.test, 5)] {
            for index in 0..set.len() {
                let (batch, record) = (first_batch + index / records, index % records);
                assert_eq!(set.labels[index], u16::from(synthetic_label(batch, record)));
                let planar = synthetic_image(batch, record);
                let hwc = set.image(index);
                // Pixel (row 2, column 5): plane offset 2*32+5, HWC offset (2*32+5)*3 + channel.
                for channel in 0..3 {
                    assert_eq!(hwc[(2 * 32 + 5) * 3 + channel], planar[channel * 1024 + 2 * 32 + 5]);
                }
            }
            let expected: Vec<u8> = (0..set.len())
                .flat_map(|i| {
                    let planar = synthetic_image(first_batch + i / records, i % records);
                    (0..1024).flat_map(move |p| [planar[p], planar[1024 + p], planar[2048 + p]])
                })
                .collect();
            assert_eq!(set.pixels, expected);
        }
    }

    fn write_release(dir: &Path, files: &[(String, Vec<u8>)]) -> Source {
        write_folder(dir, files);
        Source::new(dir)
    }

    #[test]
    fn loads_folder_and_archive() {
        let dir = tempfile::tempdir().unwrap();
        let files = binary_release(3);
        let dataset = load(&write_release(dir.path(), &files)).unwrap();
        assert_synthetic_release(&dataset, 3);

        let archive = dir.path().join("cifar-10-binary.tar.gz");
        let in_archive: Vec<_> = files.iter().map(|(n, b)| (format!("cifar-10-batches-bin/{n}"), b.clone())).collect();
        write_tar_gz(&archive, &["cifar-10-batches-bin"], &in_archive);
        assert_eq!(load(&Source::new(&archive).subfolder("cifar-10-batches-bin")).unwrap(), dataset);
    }

    #[test]
    fn known_pixel_lands_in_hwc_position() {
        let mut set = ImageSet::empty(SIDE, SIDE);
        let mut planar = vec![0u8; IMAGE_BYTES];
        // Green value of pixel (row 1, column 2).
        planar[1024 + 32 + 2] = 200;
        push_planar_record(&mut set, Path::new("x"), 0, 4, &planar, 10).unwrap();
        let position = set.pixels.iter().position(|&v| v != 0).unwrap();
        assert_eq!(position, (32 + 2) * 3 + 1);
        assert_eq!(set.labels, [4]);
    }

    #[test]
    fn class_names_fall_back_to_cifar10() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = binary_release(1);
        files.retain(|(name, _)| name != BINARY_META);
        assert_eq!(load(&write_release(dir.path(), &files)).unwrap().classes, CIFAR10_CLASSES);
    }

    fn load_error(files: &[(String, Vec<u8>)]) -> String {
        let dir = tempfile::tempdir().unwrap();
        load(&write_release(dir.path(), files)).unwrap_err().to_string()
    }

    #[test]
    fn truncated_batch_is_named_with_its_size() {
        let mut files = binary_release(2);
        files[2].1.truncate(RECORD_BYTES + 100);
        let err = load_error(&files);
        assert!(err.contains("data_batch_3.bin") && err.contains("size 3173 bytes") && err.contains("3073"), "{err}");
    }

    #[test]
    fn label_out_of_range_names_file_and_record() {
        let mut files = binary_release(2);
        files[5].1[RECORD_BYTES] = 10;
        let err = load_error(&files);
        assert!(err.contains("test_batch.bin") && err.contains("label 10 of record 1") && err.contains("0..=9"), "{err}");
    }

    #[test]
    fn missing_and_empty_batches_are_named() {
        let mut files = binary_release(1);
        files.remove(3);
        let err = load_error(&files);
        assert!(err.contains("data_batch_4.bin") && err.contains("missing"), "{err}");

        let mut files = binary_release(1);
        files[0].1.clear();
        let err = load_error(&files);
        assert!(err.contains("data_batch_1.bin") && err.contains("empty"), "{err}");
    }
}
