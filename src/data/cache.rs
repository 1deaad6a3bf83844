//! Decoded data sets kept on disk as compact u8 arrays, one file per source, so that a second
//! load skips decoding.
//!
//! File layout: the magic bytes, a little-endian u32 header length, a JSON header (version,
//! source fingerprint, format, classes and their descriptions, shapes, payload checksum), then
//! the payload: for train, test and (where the data set has one) validation, the labels as
//! little-endian u16 followed by the HWC pixels. The validation split comes last, so files
//! written before data sets had one still read.
//!
//! The cache is keyed by the source and by the load options that change what is decoded (the
//! resize size, CIFAR-100's label set): each combination has its own file.
//! A file that is unreadable, corrupt or made from an older state of the source is ignored and
//! rewritten.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::archive::walk_folder;
use super::{DataFormat, Dataset, FileError, ImageSet, Result};

const MAGIC: &[u8; 8] = b"FVDATA\x00\x01";
/// Bumped whenever the layout or the meaning of a cached data set changes.
const VERSION: u32 = 2;
/// Headers hold little more than class names; anything larger is corrupt.
const MAX_HEADER_BYTES: usize = 16 << 20;

/// Whether a load was served from the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    /// Decoded from the source and (re)written to the cache.
    Miss,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Header {
    version: u32,
    /// Hex SHA-256 of the source's path, sizes and modification times.
    source_fingerprint: String,
    format: DataFormat,
    classes: Vec<String>,
    class_descriptions: Vec<String>,
    train: SetShape,
    test: SetShape,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    val: Option<SetShape>,
    /// Hex SHA-256 of the payload.
    payload_sha256: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct SetShape {
    len: usize,
    height: usize,
    width: usize,
}

impl SetShape {
    fn of(set: &ImageSet) -> Self {
        Self { len: set.len(), height: set.height, width: set.width }
    }

    fn pixel_bytes(&self) -> Option<usize> {
        self.len.checked_mul(self.height)?.checked_mul(self.width)?.checked_mul(ImageSet::CHANNELS)
    }

    fn payload_bytes(&self) -> Option<usize> {
        self.pixel_bytes()?.checked_add(self.len.checked_mul(2)?)
    }
}

/// The data set of `source` read with the options `options_tag` names ("" for none) from the
/// cache in `cache_dir` when it is there and current, otherwise `build()`'s, which is then
/// written to the cache.
pub fn load_or_build(
    source: &Path,
    cache_dir: &Path,
    options_tag: &str,
    build: impl FnOnce() -> Result<Dataset>,
) -> Result<(Dataset, CacheStatus)> {
    let cache_file = cache_file_path(source, cache_dir, options_tag)?;
    let canonical = fs::canonicalize(source).map_err(|e| FileError::io(source, e))?;
    // Taken before building, so that a source changed meanwhile is rebuilt next time.
    let fingerprint = source_fingerprint(&canonical, options_tag)?;
    if let Some(dataset) = read_cache(&cache_file, &fingerprint) {
        return Ok((dataset, CacheStatus::Hit));
    }
    let dataset = build()?;
    fs::create_dir_all(cache_dir).map_err(|e| FileError::io(cache_dir, e))?;
    write_cache(&cache_file, &fingerprint, &dataset)?;
    Ok((dataset, CacheStatus::Miss))
}

/// The cache file that `load_or_build` uses for `source` and `options_tag` in `cache_dir`.
pub fn cache_file_path(source: &Path, cache_dir: &Path, options_tag: &str) -> Result<PathBuf> {
    let canonical = fs::canonicalize(source).map_err(|e| FileError::io(source, e))?;
    Ok(cache_dir.join(cache_file_name(&canonical, options_tag)))
}

/// `<source name>-<hash of its canonical path and options>[-<options>].fvdata`: one file per
/// source and options.
fn cache_file_name(canonical_source: &Path, options_tag: &str) -> String {
    let name: String = canonical_source
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' })
        .collect();
    let mut hasher = Sha256::new();
    hasher.update(canonical_source.as_os_str().as_encoded_bytes());
    hasher.update([0]);
    hasher.update(options_tag.as_bytes());
    let hash = hex(&hasher.finalize());
    let options: String = options_tag.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    let options = if options.is_empty() { options } else { format!("-{options}") };
    format!("{name}-{}{options}.fvdata", &hash[..16])
}

/// A hash of the load options and the source's path, size and modification time; for a folder,
/// of every file in it (metadata only, contents are not read).
fn source_fingerprint(canonical_source: &Path, options_tag: &str) -> Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(VERSION.to_le_bytes());
    hasher.update((options_tag.len() as u64).to_le_bytes());
    hasher.update(options_tag.as_bytes());
    hasher.update(canonical_source.as_os_str().as_encoded_bytes());
    let mut add_file = |relative: &str, path: &Path| -> Result<()> {
        let metadata = fs::metadata(path).map_err(|e| FileError::io(path, e))?;
        let modified = metadata.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).unwrap_or_default();
        hasher.update((relative.len() as u64).to_le_bytes());
        hasher.update(relative.as_bytes());
        hasher.update(metadata.len().to_le_bytes());
        hasher.update(modified.as_nanos().to_le_bytes());
        Ok(())
    };
    if canonical_source.is_dir() {
        walk_folder(canonical_source, usize::MAX, &mut |relative, path, is_dir| {
            if !is_dir {
                add_file(relative, path)?;
            }
            Ok(ControlFlow::Continue(()))
        })?;
    } else {
        add_file("", canonical_source)?;
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The fingerprint of a standalone packed data set (`augment expand --format packed`): the cache's
/// layout, read as a data set in its own right.
const PACKED: &str = "packed";

/// The file extension of packed data sets.
pub const PACKED_EXTENSION: &str = "fvpack";

pub fn is_packed(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == PACKED_EXTENSION)
}

/// Writes `dataset` as one packed file (temp file, then rename).
pub fn write_packed(path: &Path, dataset: &Dataset) -> Result<()> {
    write_cache(path, PACKED, dataset)
}

pub fn read_packed(path: &Path) -> Result<Dataset> {
    if !path.is_file() {
        return Err(FileError::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")));
    }
    read_cache(path, PACKED).ok_or_else(|| {
        FileError::invalid(path, "not a complete packed data set (expected a file written by `ferrovision augment expand --format packed`)")
    })
}

fn label_bytes(labels: &[u16]) -> Vec<u8> {
    labels.iter().flat_map(|l| l.to_le_bytes()).collect()
}

fn write_cache(cache_file: &Path, fingerprint: &str, dataset: &Dataset) -> Result<()> {
    let sets = [Some(&dataset.train), Some(&dataset.test), dataset.val.as_ref()];
    let sections: Vec<(Vec<u8>, &[u8])> = sets.iter().flatten().map(|set| (label_bytes(&set.labels), set.pixels.as_slice())).collect();
    let payload: Vec<&[u8]> = sections.iter().flat_map(|(labels, pixels)| [labels.as_slice(), pixels]).collect();
    let mut payload_hash = Sha256::new();
    payload.iter().for_each(|part| payload_hash.update(part));
    let header = Header {
        version: VERSION,
        source_fingerprint: fingerprint.to_string(),
        format: dataset.format,
        classes: dataset.classes.clone(),
        class_descriptions: dataset.class_descriptions.clone(),
        train: SetShape::of(&dataset.train),
        test: SetShape::of(&dataset.test),
        val: dataset.val.as_ref().map(SetShape::of),
        payload_sha256: hex(&payload_hash.finalize()),
    };
    let header_json = serde_json::to_vec(&header).map_err(|e| FileError::Other(format!("cache header: {e}")))?;

    // Written beside the final file, then renamed: readers never see a half-written cache.
    let temporary = cache_file.with_extension(format!("tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&temporary)?);
        out.write_all(MAGIC)?;
        out.write_all(&(header_json.len() as u32).to_le_bytes())?;
        out.write_all(&header_json)?;
        for part in &payload {
            out.write_all(part)?;
        }
        // No fsync: a file cut short by a crash fails its checksum and is rebuilt.
        out.flush()
    };
    write().and_then(|()| fs::rename(&temporary, cache_file)).map_err(|e| {
        let _ = fs::remove_file(&temporary);
        FileError::io(cache_file, e)
    })
}

/// The cached data set, or `None` when the file is missing, corrupt or stale.
fn read_cache(cache_file: &Path, fingerprint: &str) -> Option<Dataset> {
    let mut file = File::open(cache_file).ok()?;
    let file_len = usize::try_from(file.metadata().ok()?.len()).ok()?;
    let mut prefix = [0u8; 12];
    file.read_exact(&mut prefix).ok()?;
    if &prefix[..8] != MAGIC {
        return None;
    }
    let header_len = u32::from_le_bytes(prefix[8..].try_into().ok()?) as usize;
    if header_len > MAX_HEADER_BYTES.min(file_len) {
        return None;
    }
    let mut header_json = vec![0; header_len];
    file.read_exact(&mut header_json).ok()?;
    let header: Header = serde_json::from_slice(&header_json).ok()?;
    if header.version != VERSION || header.source_fingerprint != fingerprint {
        return None;
    }
    let val_len = header.val.as_ref().map_or(Some(0), SetShape::payload_bytes)?;
    let payload_len = header.train.payload_bytes()?.checked_add(header.test.payload_bytes()?)?.checked_add(val_len)?;
    if prefix.len() + header_len + payload_len != file_len {
        return None;
    }
    let mut payload_hash = Sha256::new();
    let mut read_set = |shape: &SetShape| -> Option<ImageSet> {
        let mut labels = vec![0; shape.len * 2];
        file.read_exact(&mut labels).ok()?;
        let mut pixels = vec![0; shape.pixel_bytes()?];
        file.read_exact(&mut pixels).ok()?;
        payload_hash.update(&labels);
        payload_hash.update(&pixels);
        let labels = labels.chunks_exact(2).map(|pair| u16::from_le_bytes([pair[0], pair[1]])).collect();
        Some(ImageSet { pixels, labels, height: shape.height, width: shape.width })
    };
    let train = read_set(&header.train)?;
    let test = read_set(&header.test)?;
    let val = match &header.val {
        Some(shape) => Some(read_set(shape)?),
        None => None,
    };
    if hex(&payload_hash.finalize()) != header.payload_sha256 {
        return None;
    }
    Some(Dataset { format: header.format, classes: header.classes, class_descriptions: header.class_descriptions, train, val, test })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::time::{Duration, SystemTime};

    fn sample_dataset(seed: u8) -> Dataset {
        let set = |len: usize, offset: u8| ImageSet {
            pixels: (0..len * 2 * 3 * 3).map(|i| (i as u8).wrapping_mul(seed).wrapping_add(offset)).collect(),
            labels: (0..len).map(|i| (i % 3) as u16 + 300).collect(),
            height: 2,
            width: 3,
        };
        Dataset {
            format: DataFormat::CifarBinary,
            classes: (0..303).map(|i| format!("class {i}")).collect(),
            class_descriptions: (0..303).map(|i| format!("the class number {i}")).collect(),
            train: set(7, 1),
            val: Some(set(3, 9)),
            test: set(2, 5),
        }
    }

    /// Loads through the cache, counting how often the source is decoded.
    fn load(source: &Path, cache_dir: &Path, seed: u8, builds: &Cell<usize>) -> (Dataset, CacheStatus) {
        load_or_build(source, cache_dir, "", || {
            builds.set(builds.get() + 1);
            Ok(sample_dataset(seed))
        })
        .unwrap()
    }

    #[test]
    fn miss_then_hit_then_stale_source_rebuilds() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("data.tar.gz");
        fs::write(&source, b"pretend archive").unwrap();
        let cache_dir = dir.path().join("cache");
        let builds = Cell::new(0);

        assert_eq!(load(&source, &cache_dir, 3, &builds), (sample_dataset(3), CacheStatus::Miss));
        assert_eq!(load(&source, &cache_dir, 4, &builds), (sample_dataset(3), CacheStatus::Hit));
        assert_eq!(builds.get(), 1);
        let files: Vec<_> = fs::read_dir(&cache_dir).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files, [cache_file_path(&source, &cache_dir, "").unwrap()], "no temporary file is left behind");

        // A touched source is decoded again and the cache file replaced in place.
        File::options().write(true).open(&source).unwrap().set_modified(SystemTime::now() + Duration::from_secs(5)).unwrap();
        assert_eq!(load(&source, &cache_dir, 4, &builds), (sample_dataset(4), CacheStatus::Miss));
        assert_eq!(load(&source, &cache_dir, 5, &builds), (sample_dataset(4), CacheStatus::Hit));
        assert_eq!(fs::read_dir(&cache_dir).unwrap().count(), 1);
    }

    #[test]
    fn corrupt_cache_files_are_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("data.tgz");
        fs::write(&source, b"pretend archive").unwrap();
        let cache_dir = dir.path().join("cache");
        let builds = Cell::new(0);
        load(&source, &cache_dir, 3, &builds);
        let cache_file = cache_file_path(&source, &cache_dir, "").unwrap();
        let good = fs::read(&cache_file).unwrap();

        let mut flipped_pixel = good.clone();
        *flipped_pixel.last_mut().unwrap() ^= 1;
        let corruptions = [flipped_pixel, good[..good.len() - 1].to_vec(), good[..20].to_vec(), b"garbage".to_vec(), Vec::new()];
        for (index, corrupt) in corruptions.into_iter().enumerate() {
            fs::write(&cache_file, corrupt).unwrap();
            assert_eq!(load(&source, &cache_dir, 3, &builds).1, CacheStatus::Miss, "corruption {index}");
            assert_eq!(fs::read(&cache_file).unwrap(), good, "corruption {index} was rewritten");
        }
    }

    #[test]
    fn folder_fingerprint_follows_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("tree");
        fs::create_dir_all(source.join("train/cat")).unwrap();
        fs::write(source.join("train/cat/1.png"), b"one").unwrap();
        let fingerprint = || source_fingerprint(&fs::canonicalize(&source).unwrap(), "").unwrap();
        let before = fingerprint();
        assert_eq!(fingerprint(), before);
        fs::write(source.join("train/cat/1.png"), b"one!").unwrap();
        let resized = fingerprint();
        assert_ne!(resized, before);
        fs::write(source.join("train/cat/2.png"), b"two").unwrap();
        assert_ne!(fingerprint(), resized);
    }

    #[test]
    fn sources_get_separate_files() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a b.tar.gz", "c.tar.gz"] {
            fs::write(dir.path().join(name), name).unwrap();
        }
        let a = cache_file_path(&dir.path().join("a b.tar.gz"), dir.path(), "").unwrap();
        let c = cache_file_path(&dir.path().join("c.tar.gz"), dir.path(), "").unwrap();
        assert_ne!(a, c);
        assert!(a.file_name().unwrap().to_string_lossy().starts_with("a_b.tar.gz-"), "{}", a.display());
    }

    #[test]
    fn load_options_key_their_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("photos.zip");
        fs::write(&source, b"pretend archive").unwrap();
        let cache_dir = dir.path().join("cache");
        let builds = Cell::new(0);
        let load_tagged = |tag: &str, seed: u8| {
            load_or_build(&source, &cache_dir, tag, || {
                builds.set(builds.get() + 1);
                Ok(sample_dataset(seed))
            })
            .unwrap()
        };
        assert_eq!(load_tagged("", 1), (sample_dataset(1), CacheStatus::Miss));
        // Another size is decoded anew into its own file; each is then served from the cache.
        assert_eq!(load_tagged("224px", 2), (sample_dataset(2), CacheStatus::Miss));
        assert_eq!(load_tagged("", 3), (sample_dataset(1), CacheStatus::Hit));
        assert_eq!(load_tagged("224px", 3), (sample_dataset(2), CacheStatus::Hit));
        assert_eq!(load_tagged("160px-coarse", 4).1, CacheStatus::Miss);
        assert_eq!(builds.get(), 3);
        let sized = cache_file_path(&source, &cache_dir, "224px").unwrap();
        assert!(sized.file_name().unwrap().to_string_lossy().ends_with("-224px.fvdata"), "{}", sized.display());
        assert_eq!(fs::read_dir(&cache_dir).unwrap().count(), 3);
        // The same bytes under another tag's name are not taken for it.
        fs::copy(&sized, cache_file_path(&source, &cache_dir, "160px-coarse").unwrap()).unwrap();
        assert_eq!(load_tagged("160px-coarse", 5), (sample_dataset(5), CacheStatus::Miss));
    }

    #[test]
    fn files_without_a_validation_split_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.fvpack");
        let without_val = Dataset { val: None, ..sample_dataset(6) };
        write_packed(&path, &without_val).unwrap();
        let bytes = fs::read(&path).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("\"val\""), "no val field is written for a set without one");
        assert_eq!(read_packed(&path).unwrap(), without_val);
        write_packed(&path, &sample_dataset(6)).unwrap();
        assert_eq!(read_packed(&path).unwrap(), sample_dataset(6));
    }
}
