//! One way to walk the files of a data set whether it sits in a folder or in a `.tar.gz`/`.tgz`
//! archive. Archives are streamed entry by entry, never extracted to disk.

use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::ops::ControlFlow;
use std::path::{Component, Path, PathBuf};

use flate2::read::MultiGzDecoder;

use super::{DataError, Result};

/// True for a path whose name ends in `.tar.gz` or `.tgz` (any case).
pub fn is_tar_gz(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    name.ends_with(".tar.gz") || name.ends_with(".tgz")
}

/// Where a data set's files are: a folder, or a folder inside a `.tar.gz` archive (`prefix`,
/// empty for the archive's top level).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    path: PathBuf,
    prefix: String,
    archive: bool,
}

/// One file or folder met while walking a [`Source`].
pub struct Entry<'a> {
    /// Path relative to the source, components joined with `/`.
    pub path: &'a str,
    pub is_dir: bool,
    contents: Contents<'a>,
}

enum Contents<'a> {
    Disk(&'a Path),
    Archive { archive: &'a Path, reader: &'a mut dyn Read },
}

impl Entry<'_> {
    /// The whole contents of this file.
    pub fn read_bytes(&mut self) -> Result<Vec<u8>> {
        match &mut self.contents {
            Contents::Disk(path) => {
                let path: &Path = path;
                fs::read(path).map_err(|e| DataError::io(path, e))
            }
            Contents::Archive { archive, reader } => {
                let mut bytes = Vec::new();
                reader.read_to_end(&mut bytes).map_err(|e| DataError::io(*archive, e))?;
                Ok(bytes)
            }
        }
    }
}

impl Source {
    /// The whole folder or archive at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let archive = is_tar_gz(&path) && path.is_file();
        Self { path, prefix: String::new(), archive }
    }

    /// The folder `relative` (a `/`-separated path) inside this source.
    pub fn subfolder(&self, relative: &str) -> Self {
        if relative.is_empty() {
            return self.clone();
        }
        if self.archive {
            let prefix =
                if self.prefix.is_empty() { relative.to_string() } else { format!("{}/{relative}", self.prefix) };
            Self { path: self.path.clone(), prefix, archive: true }
        } else {
            Self::new(self.path.join(relative))
        }
    }

    /// The path to show in messages for `relative` inside this source; inside an archive this is
    /// `archive.tar.gz/prefix/relative`.
    pub fn display_path(&self, relative: &str) -> PathBuf {
        let mut path = self.path.clone();
        for part in self.prefix.split('/').chain(relative.split('/')).filter(|p| !p.is_empty()) {
            path.push(part);
        }
        path
    }

    /// Calls `visit` for each file and folder up to `max_depth` components deep (1 = the top
    /// level), until it returns `Break`. Folders are walked in sorted order; archives in their
    /// stored order.
    pub fn walk(&self, max_depth: usize, mut visit: impl FnMut(Entry) -> Result<ControlFlow<()>>) -> Result<()> {
        if self.archive {
            self.walk_archive(max_depth, &mut visit)
        } else {
            let mut visit_disk = |relative: &str, disk_path: &Path, is_dir: bool| {
                visit(Entry { path: relative, is_dir, contents: Contents::Disk(disk_path) })
            };
            walk_folder(&self.path, max_depth, &mut visit_disk)
        }
    }

    /// The contents of every file for which `wanted(relative path)` holds, in walk order.
    pub fn read_files(&self, wanted: impl Fn(&str) -> bool) -> Result<Vec<(String, Vec<u8>)>> {
        let mut files = Vec::new();
        self.walk(usize::MAX, |mut entry| {
            if !entry.is_dir && wanted(entry.path) {
                files.push((entry.path.to_string(), entry.read_bytes()?));
            }
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(files)
    }

    fn walk_archive(&self, max_depth: usize, visit: &mut dyn FnMut(Entry) -> Result<ControlFlow<()>>) -> Result<()> {
        let archive_path = self.path.as_path();
        let io_error = |e| DataError::io(archive_path, e);
        let file = File::open(archive_path).map_err(io_error)?;
        let mut archive = tar::Archive::new(MultiGzDecoder::new(BufReader::with_capacity(1 << 20, file)));
        for entry in archive.entries().map_err(io_error)? {
            let mut entry = entry.map_err(io_error)?;
            let kind = entry.header().entry_type();
            if !(kind.is_file() || kind.is_dir()) {
                continue;
            }
            let full_path = normalized_archive_path(&entry.path().map_err(io_error)?);
            let Some(relative) = strip_folder_prefix(&full_path, &self.prefix) else { continue };
            if relative.is_empty() || relative.split('/').count() > max_depth {
                continue;
            }
            let relative = relative.to_string();
            let contents = Contents::Archive { archive: archive_path, reader: &mut entry };
            if visit(Entry { path: &relative, is_dir: kind.is_dir(), contents })?.is_break() {
                break;
            }
        }
        Ok(())
    }
}

/// Called with (relative path, path on disk, is_dir) for each folder entry.
pub type FolderVisitor<'a> = dyn FnMut(&str, &Path, bool) -> Result<ControlFlow<()>> + 'a;

/// Calls `visit(relative path, path on disk, is_dir)` for everything under `root` up to
/// `max_depth` components deep, depth first in sorted order, following symbolic links.
pub fn walk_folder(root: &Path, max_depth: usize, visit: &mut FolderVisitor) -> Result<()> {
    walk_folder_from(root, "", max_depth, visit).map(|_| ())
}

fn walk_folder_from(
    folder: &Path,
    relative: &str,
    depth_left: usize,
    visit: &mut FolderVisitor,
) -> Result<ControlFlow<()>> {
    if depth_left == 0 {
        return Ok(ControlFlow::Continue(()));
    }
    let mut children: Vec<(String, PathBuf)> = fs::read_dir(folder)
        .map_err(|e| DataError::io(folder, e))?
        .map(|child| {
            let child = child.map_err(|e| DataError::io(folder, e))?;
            Ok((child.file_name().to_string_lossy().into_owned(), child.path()))
        })
        .collect::<Result<_>>()?;
    children.sort();
    for (name, disk_path) in children {
        let child_relative = if relative.is_empty() { name } else { format!("{relative}/{name}") };
        let is_dir = disk_path.is_dir();
        if visit(&child_relative, &disk_path, is_dir)?.is_break() {
            return Ok(ControlFlow::Break(()));
        }
        if is_dir && walk_folder_from(&disk_path, &child_relative, depth_left - 1, visit)?.is_break() {
            return Ok(ControlFlow::Break(()));
        }
    }
    Ok(ControlFlow::Continue(()))
}

/// An archive member's path as `a/b/c`, without `./` or a leading `/`.
fn normalized_archive_path(path: &Path) -> String {
    let parts: Vec<_> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(part) => Some(part.to_string_lossy()),
            _ => None,
        })
        .collect();
    parts.join("/")
}

/// `path` relative to the folder `prefix` (both `/`-separated), if it lies inside it.
fn strip_folder_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    if prefix.is_empty() {
        return Some(path);
    }
    match path.strip_prefix(prefix)? {
        "" => Some(""),
        rest => rest.strip_prefix('/'),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flate2::{Compression, write::GzEncoder};

    /// Writes `files` (relative path, contents) as a gzipped tar at `path`, with folder entries
    /// for `folders`.
    pub(crate) fn write_tar_gz(path: &Path, folders: &[&str], files: &[(String, Vec<u8>)]) {
        let encoder = GzEncoder::new(File::create(path).unwrap(), Compression::fast());
        let mut builder = tar::Builder::new(encoder);
        for folder in folders {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            header.set_mode(0o755);
            builder.append_data(&mut header, format!("{folder}/"), std::io::empty()).unwrap();
        }
        for (name, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            builder.append_data(&mut header, name, bytes.as_slice()).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap();
    }

    /// Writes `files` (relative path, contents) under the folder `root`.
    pub(crate) fn write_folder(root: &Path, files: &[(String, Vec<u8>)]) {
        for (name, bytes) in files {
            let path = root.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, bytes).unwrap();
        }
    }

    fn sample_files() -> Vec<(String, Vec<u8>)> {
        vec![
            ("top/a.txt".to_string(), b"alpha".to_vec()),
            ("top/sub/b.txt".to_string(), b"beta".to_vec()),
            ("top/sub/deeper/c.txt".to_string(), b"gamma".to_vec()),
        ]
    }

    fn listing(source: &Source, max_depth: usize) -> Vec<(String, bool)> {
        let mut seen = Vec::new();
        source
            .walk(max_depth, |entry| {
                seen.push((entry.path.to_string(), entry.is_dir));
                Ok(ControlFlow::Continue(()))
            })
            .unwrap();
        seen.sort();
        seen
    }

    #[test]
    fn folder_and_archive_walk_alike() {
        let dir = tempfile::tempdir().unwrap();
        write_folder(&dir.path().join("tree"), &sample_files());
        let archive = dir.path().join("tree.tgz");
        write_tar_gz(&archive, &["top", "top/sub", "top/sub/deeper"], &sample_files());

        let folder = Source::new(dir.path().join("tree"));
        let packed = Source::new(&archive);
        assert!(!folder.archive && packed.archive);
        assert_eq!(listing(&folder, usize::MAX), listing(&packed, usize::MAX));
        assert_eq!(
            listing(&folder, 2),
            vec![("top".into(), true), ("top/a.txt".into(), false), ("top/sub".into(), true)]
        );
        assert_eq!(listing(&folder.subfolder("top"), 1), listing(&packed.subfolder("top"), 1));

        let expected = vec![("b.txt".to_string(), b"beta".to_vec())];
        let wanted = |p: &str| p.ends_with("b.txt");
        assert_eq!(folder.subfolder("top/sub").read_files(wanted).unwrap(), expected);
        assert_eq!(packed.subfolder("top").subfolder("sub").read_files(wanted).unwrap(), expected);
        assert_eq!(packed.subfolder("top/sub").display_path("b.txt"), archive.join("top/sub/b.txt"));
    }

    #[test]
    fn walk_stops_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("tree.tar.gz");
        write_tar_gz(&archive, &[], &sample_files());
        let mut visits = 0;
        Source::new(&archive)
            .walk(usize::MAX, |_| {
                visits += 1;
                Ok(ControlFlow::Break(()))
            })
            .unwrap();
        assert_eq!(visits, 1);
    }

    #[test]
    fn truncated_archive_names_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("tree.tar.gz");
        write_tar_gz(
            &archive,
            &[],
            &[("big.bin".to_string(), (0..200_000u32).map(|i| (i * 7919 % 251) as u8).collect())],
        );
        let bytes = fs::read(&archive).unwrap();
        fs::write(&archive, &bytes[..bytes.len() / 2]).unwrap();
        let err = Source::new(&archive).read_files(|_| true).unwrap_err().to_string();
        assert!(err.contains("tree.tar.gz"), "{err}");
    }
}
