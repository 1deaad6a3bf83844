//! The official CIFAR-10 and CIFAR-100 binary releases: records of label bytes followed by a
//! 32x32 image as three 1024-byte planes (R, G, B), each row-major. CIFAR-10
//! (`cifar-10-batches-bin/`) has one label byte and five train batches; CIFAR-100
//! (`cifar-100-binary/`) has two, coarse then fine, in `train.bin` and `test.bin`, and its class
//! names in `fine_label_names.txt` and `coarse_label_names.txt`.
//!
//! Also holds what the binary and the python releases share: how a release lays out its files,
//! loading one, and the conversion of a planar record into our HWC layout.

use std::path::{Path, PathBuf};

use super::archive::Source;
use super::config::LabelLevel;
use super::{CIFAR10_CLASSES, DataFormat, Dataset, FileError, ImageSet, Result};

/// Height and width of a CIFAR image.
pub const SIDE: usize = 32;
/// Bytes of one CIFAR image: three planes of `SIDE * SIDE`.
pub const IMAGE_BYTES: usize = 3 * SIDE * SIDE;

/// The contents of one file, with the path to name in messages.
pub struct NamedBytes {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

/// How one CIFAR release stores its files, and how to decode them.
pub struct ReleaseLayout {
    pub format: DataFormat,
    /// "CIFAR-10" or "CIFAR-100", for messages.
    pub name: &'static str,
    pub train_batches: &'static [&'static str],
    pub test_batches: &'static [&'static str],
    /// The class-name file of the fine and of the coarse labels (one file for CIFAR-10).
    pub meta_names: [&'static str; 2],
    /// The classes when the class-name file is absent or empty; `None` when it is required.
    pub default_classes: Option<&'static [&'static str]>,
    pub read_class_names: fn(&NamedBytes, LabelLevel) -> Result<Vec<String>>,
    /// Appends the images of one batch file to the set with the labels of the given level,
    /// checking them against the class count.
    pub decode_batch: fn(&NamedBytes, &mut ImageSet, usize, LabelLevel) -> Result<()>,
}

impl ReleaseLayout {
    /// The file names of the batches, train batches first.
    pub fn batch_names(&self) -> impl Iterator<Item = &'static str> {
        self.train_batches.iter().chain(self.test_batches).copied()
    }

    fn meta_name(&self, labels: LabelLevel) -> &'static str {
        self.meta_names[labels as usize]
    }
}

pub const CIFAR10_BINARY: ReleaseLayout = ReleaseLayout {
    format: DataFormat::CifarBinary,
    name: "CIFAR-10",
    train_batches: &["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"],
    test_batches: &["test_batch.bin"],
    meta_names: ["batches.meta.txt"; 2],
    default_classes: Some(&CIFAR10_CLASSES),
    read_class_names: read_text_class_names,
    decode_batch: decode_cifar10_batch,
};

pub const CIFAR100_BINARY: ReleaseLayout = ReleaseLayout {
    format: DataFormat::Cifar100Binary,
    name: "CIFAR-100",
    train_batches: &["train.bin"],
    test_batches: &["test.bin"],
    meta_names: ["fine_label_names.txt", "coarse_label_names.txt"],
    default_classes: None,
    read_class_names: read_text_class_names,
    decode_batch: decode_cifar100_batch,
};

/// Loads a CIFAR release laid out as `layout` from the top level of `source`, with the labels
/// of `labels`: every batch must be there and non-empty.
pub fn load_release(source: &Source, layout: &ReleaseLayout, labels: LabelLevel) -> Result<Dataset> {
    let meta_name = layout.meta_name(labels);
    let is_wanted = |path: &str| path == meta_name || layout.batch_names().any(|name| name == path);
    let mut found = source.read_files(is_wanted)?;
    let mut take = |name: &str| {
        let position = found.iter().position(|(path, _)| path == name)?;
        let (_, bytes) = found.swap_remove(position);
        Some(NamedBytes { path: source.display_path(name), bytes })
    };

    let classes = match take(meta_name) {
        Some(meta) => (layout.read_class_names)(&meta, labels)?,
        None => Vec::new(),
    };
    let classes = match (classes.is_empty(), layout.default_classes) {
        (false, _) => classes,
        (true, Some(defaults)) => defaults.iter().map(|name| name.to_string()).collect(),
        (true, None) => {
            return Err(FileError::invalid(
                source.display_path(meta_name),
                format!("missing or empty: {} keeps the names of its {} classes there, one a line", layout.name, labels.name()),
            ));
        }
    };

    let all_batches = layout.batch_names().collect::<Vec<_>>().join(", ");
    let mut decode_batches = |names: &[&str]| {
        let mut set = ImageSet::empty(SIDE, SIDE);
        for name in names {
            let batch = take(name).ok_or_else(|| {
                FileError::invalid(source.display_path(name), format!("missing batch file: a {} release has {all_batches}", layout.name))
            })?;
            if batch.bytes.is_empty() {
                return Err(FileError::invalid(batch.path, format!("empty file; expected a {} batch", layout.name)));
            }
            (layout.decode_batch)(&batch, &mut set, classes.len(), labels)?;
        }
        Ok(set)
    };
    let train = decode_batches(layout.train_batches)?;
    let test = decode_batches(layout.test_batches)?;
    Ok(Dataset { format: layout.format, classes, class_descriptions: Vec::new(), train, val: None, test })
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

/// Class names from a text file: one a line, blank lines ignored.
fn read_text_class_names(meta: &NamedBytes, _: LabelLevel) -> Result<Vec<String>> {
    let text = String::from_utf8_lossy(&meta.bytes);
    Ok(text.lines().map(str::trim).filter(|line| !line.is_empty()).map(String::from).collect())
}

fn decode_cifar10_batch(batch: &NamedBytes, set: &mut ImageSet, num_classes: usize, _: LabelLevel) -> Result<()> {
    decode_binary_batch(batch, set, num_classes, 1, 0)
}

/// Each CIFAR-100 record starts with its coarse label byte, then its fine one.
fn decode_cifar100_batch(batch: &NamedBytes, set: &mut ImageSet, num_classes: usize, labels: LabelLevel) -> Result<()> {
    let label_at = match labels {
        LabelLevel::Coarse => 0,
        LabelLevel::Fine => 1,
    };
    decode_binary_batch(batch, set, num_classes, 2, label_at)
}

/// Decodes records of `label_bytes` label bytes and an image, taking the label at `label_at`.
fn decode_binary_batch(batch: &NamedBytes, set: &mut ImageSet, num_classes: usize, label_bytes: usize, label_at: usize) -> Result<()> {
    let size = batch.bytes.len();
    let record_bytes = label_bytes + IMAGE_BYTES;
    if !size.is_multiple_of(record_bytes) {
        let plural = if label_bytes == 1 { "" } else { "s" };
        return Err(FileError::invalid(
            &batch.path,
            format!(
                "truncated or not a CIFAR binary batch: size {size} bytes is not a multiple of the \
                 {record_bytes}-byte record ({label_bytes} label byte{plural} + {IMAGE_BYTES} pixel bytes)"
            ),
        ));
    }
    set.pixels.reserve(size / record_bytes * IMAGE_BYTES);
    for (index, record) in batch.bytes.chunks_exact(record_bytes).enumerate() {
        push_planar_record(set, &batch.path, index, i64::from(record[label_at]), &record[label_bytes..], num_classes)?;
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

    /// The labels of the synthetic CIFAR-10 release: batch `b`, record `i`.
    pub(crate) fn synthetic_label(batch: usize, record: usize) -> u8 {
        ((batch * 3 + record) % 10) as u8
    }

    /// The fine label of the synthetic CIFAR-100 release; its coarse label is that / 5.
    pub(crate) fn synthetic_fine_label(batch: usize, record: usize) -> u8 {
        ((batch * 41 + record * 7) % 100) as u8
    }

    /// The images of the synthetic releases: `records` per batch.
    pub(crate) fn synthetic_image(batch: usize, record: usize) -> Vec<u8> {
        planar_image((batch * 16 + record) as u8)
    }

    /// The class names the synthetic CIFAR-100 release lists for `labels`.
    pub(crate) fn cifar100_names(labels: LabelLevel) -> Vec<String> {
        match labels {
            LabelLevel::Fine => (0..100).map(|i| format!("fine_{i:02}")).collect(),
            LabelLevel::Coarse => (0..20).map(|i| format!("coarse_{i:02}")).collect(),
        }
    }

    /// A small binary release of `layout`: `records` records per batch, plus its class-name files.
    fn release(layout: &ReleaseLayout, records: usize) -> Vec<(String, Vec<u8>)> {
        let cifar100 = layout.format == DataFormat::Cifar100Binary;
        let mut files: Vec<(String, Vec<u8>)> = layout
            .batch_names()
            .enumerate()
            .map(|(batch, name)| {
                let bytes = (0..records)
                    .flat_map(|record| {
                        let mut out = if cifar100 {
                            let fine = synthetic_fine_label(batch, record);
                            vec![fine / 5, fine]
                        } else {
                            vec![synthetic_label(batch, record)]
                        };
                        out.extend(synthetic_image(batch, record));
                        out
                    })
                    .collect();
                (name.to_string(), bytes)
            })
            .collect();
        if cifar100 {
            for labels in [LabelLevel::Fine, LabelLevel::Coarse] {
                files.push((layout.meta_name(labels).into(), format!("{}\n", cifar100_names(labels).join("\n")).into_bytes()));
            }
        } else {
            files.push((layout.meta_names[0].into(), format!("{}\n\n", CIFAR10_CLASSES.join("\n")).into_bytes()));
        }
        files
    }

    /// A small CIFAR-10 binary release: `records` records per batch, plus a class-name file.
    pub(crate) fn binary_release(records: usize) -> Vec<(String, Vec<u8>)> {
        release(&CIFAR10_BINARY, records)
    }

    /// A small CIFAR-100 binary release: `records` records in train.bin and in test.bin.
    pub(crate) fn binary_release100(records: usize) -> Vec<(String, Vec<u8>)> {
        release(&CIFAR100_BINARY, records)
    }

    /// Checks the images of a loaded synthetic release.
    fn assert_synthetic_images(dataset: &Dataset, train_batches: usize, records: usize) {
        assert_eq!((dataset.train.len(), dataset.test.len()), (train_batches * records, records));
        assert_eq!((dataset.train.height, dataset.train.width), (32, 32));
        for (set, first_batch) in [(&dataset.train, 0), (&dataset.test, train_batches)] {
            let expected: Vec<u8> = (0..set.len())
                .flat_map(|i| {
                    let planar = synthetic_image(first_batch + i / records, i % records);
                    (0..1024).flat_map(move |p| [planar[p], planar[1024 + p], planar[2048 + p]])
                })
                .collect();
            assert_eq!(set.pixels, expected);
        }
    }

    /// The labels of train and test as (batch, record) -> label gives them.
    fn expected_labels(train_batches: usize, records: usize, label: impl Fn(usize, usize) -> u8) -> (Vec<u16>, Vec<u16>) {
        let of = |batches: std::ops::Range<usize>| {
            batches.flat_map(|b| (0..records).map(move |r| (b, r))).map(|(b, r)| u16::from(label(b, r))).collect()
        };
        (of(0..train_batches), of(train_batches..train_batches + 1))
    }

    /// Checks a loaded synthetic CIFAR-10 release (from `binary_release` or its python twin).
    pub(crate) fn assert_synthetic_release(dataset: &Dataset, records: usize) {
        assert_eq!(dataset.classes, CIFAR10_CLASSES);
        assert_synthetic_images(dataset, 5, records);
        // Pixel (row 2, column 5): plane offset 2*32+5, HWC offset (2*32+5)*3 + channel.
        let planar = synthetic_image(5, 0);
        for channel in 0..3 {
            assert_eq!(dataset.test.image(0)[(2 * 32 + 5) * 3 + channel], planar[channel * 1024 + 2 * 32 + 5]);
        }
        assert_eq!((dataset.train.labels.clone(), dataset.test.labels.clone()), expected_labels(5, records, synthetic_label));
    }

    /// Checks a loaded synthetic CIFAR-100 release (binary or python) read with `labels`.
    pub(crate) fn assert_synthetic_release100(dataset: &Dataset, records: usize, labels: LabelLevel) {
        assert_eq!(dataset.classes, cifar100_names(labels));
        assert_synthetic_images(dataset, 1, records);
        let divisor = if labels == LabelLevel::Coarse { 5 } else { 1 };
        let expected = expected_labels(1, records, |b, r| synthetic_fine_label(b, r) / divisor);
        assert_eq!((dataset.train.labels.clone(), dataset.test.labels.clone()), expected);
    }

    fn write_release(dir: &Path, files: &[(String, Vec<u8>)]) -> Source {
        write_folder(dir, files);
        Source::new(dir)
    }

    fn load10(source: &Source) -> Result<Dataset> {
        load_release(source, &CIFAR10_BINARY, LabelLevel::Fine)
    }

    #[test]
    fn loads_folder_and_archive() {
        let dir = tempfile::tempdir().unwrap();
        let files = binary_release(3);
        let dataset = load10(&write_release(dir.path(), &files)).unwrap();
        assert_synthetic_release(&dataset, 3);

        let archive = dir.path().join("cifar-10-binary.tar.gz");
        let in_archive: Vec<_> = files.iter().map(|(n, b)| (format!("cifar-10-batches-bin/{n}"), b.clone())).collect();
        write_tar_gz(&archive, &["cifar-10-batches-bin"], &in_archive);
        assert_eq!(load10(&Source::new(&archive).subfolder("cifar-10-batches-bin")).unwrap(), dataset);
    }

    #[test]
    fn cifar100_reads_fine_or_coarse_labels_from_folder_and_archive() {
        let dir = tempfile::tempdir().unwrap();
        let files = binary_release100(4);
        let folder = write_release(&dir.path().join("folder"), &files);
        let archive = dir.path().join("cifar-100-binary.tar.gz");
        let in_archive: Vec<_> = files.iter().map(|(n, b)| (format!("cifar-100-binary/{n}"), b.clone())).collect();
        write_tar_gz(&archive, &["cifar-100-binary"], &in_archive);
        for labels in [LabelLevel::Fine, LabelLevel::Coarse] {
            let dataset = load_release(&folder, &CIFAR100_BINARY, labels).unwrap();
            assert_eq!(dataset.format, DataFormat::Cifar100Binary);
            assert_synthetic_release100(&dataset, 4, labels);
            let packed = Source::new(&archive).subfolder("cifar-100-binary");
            assert_eq!(load_release(&packed, &CIFAR100_BINARY, labels).unwrap(), dataset);
        }
    }

    #[test]
    fn cifar100_errors_name_the_file() {
        let load_with = |files: &[(String, Vec<u8>)], labels| {
            let dir = tempfile::tempdir().unwrap();
            load_release(&write_release(dir.path(), files), &CIFAR100_BINARY, labels)
        };
        let load_error = |files: &[(String, Vec<u8>)], labels| load_with(files, labels).unwrap_err().to_string();
        // A record of train.bin cut short by 10 bytes: 3 records of 3074 bytes, less 10.
        let mut files = binary_release100(3);
        files[0].1.truncate(3 * 3074 - 10);
        let err = load_error(&files, LabelLevel::Fine);
        assert!(err.contains("train.bin") && err.contains("size 9212 bytes") && err.contains("3074-byte record (2 label bytes"), "{err}");
        // A coarse label past the 20 superclasses is caught only when coarse labels are read.
        let mut files = binary_release100(2);
        files[1].1[3074] = 20;
        assert!(load_with(&files, LabelLevel::Fine).is_ok());
        let err = load_error(&files, LabelLevel::Coarse);
        assert!(err.contains("test.bin") && err.contains("label 20 of record 1") && err.contains("0..=19"), "{err}");
        // Class names are required; each label level reads its own file.
        let mut files = binary_release100(1);
        files.retain(|(name, _)| name != "coarse_label_names.txt");
        assert!(load_with(&files, LabelLevel::Fine).is_ok());
        let err = load_error(&files, LabelLevel::Coarse);
        assert!(err.contains("coarse_label_names.txt") && err.contains("missing") && err.contains("CIFAR-100"), "{err}");
        let mut files = binary_release100(1);
        files.retain(|(name, _)| name != "test.bin");
        let err = load_error(&files, LabelLevel::Fine);
        assert!(err.contains("test.bin") && err.contains("missing batch file") && err.contains("train.bin, test.bin"), "{err}");
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
        files.retain(|(name, _)| name != "batches.meta.txt");
        assert_eq!(load10(&write_release(dir.path(), &files)).unwrap().classes, CIFAR10_CLASSES);
    }

    fn load_error(files: &[(String, Vec<u8>)]) -> String {
        let dir = tempfile::tempdir().unwrap();
        load10(&write_release(dir.path(), files)).unwrap_err().to_string()
    }

    #[test]
    fn truncated_batch_is_named_with_its_size() {
        let mut files = binary_release(2);
        files[2].1.truncate(3073 + 100);
        let err = load_error(&files);
        assert!(err.contains("data_batch_3.bin") && err.contains("size 3173 bytes") && err.contains("3073"), "{err}");
    }

    #[test]
    fn label_out_of_range_names_file_and_record() {
        let mut files = binary_release(2);
        files[5].1[3073] = 10;
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
