//! One way to walk the files of a data set whether it sits in a folder or in a `.tar.gz`/`.tgz` or
//! `.zip` archive. Archives are read entry by entry, never extracted to disk.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::ops::ControlFlow;
use std::path::{Component, Path, PathBuf};

use flate2::read::MultiGzDecoder;

use super::{FileError, Result};

/// The archive formats a [`Source`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveKind {
    TarGz,
    Zip,
}

impl ArchiveKind {
    /// The kind a file name says (`.tar.gz`, `.tgz`, `.zip`, any case), if any.
    pub fn of(path: &Path) -> Option<Self> {
        if is_tar_gz(path) {
            Some(ArchiveKind::TarGz)
        } else if lowercase_name(path).ends_with(".zip") {
            Some(ArchiveKind::Zip)
        } else {
            None
        }
    }
}

/// True for a path whose name ends in `.tar.gz` or `.tgz` (any case).
pub fn is_tar_gz(path: &Path) -> bool {
    let name = lowercase_name(path);
    name.ends_with(".tar.gz") || name.ends_with(".tgz")
}

fn lowercase_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default()
}

/// Where a data set's files are: a folder, or a folder inside an archive (`prefix`, empty for
/// the archive's top level).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    path: PathBuf,
    prefix: String,
    /// `None` for a folder on disk.
    archive: Option<ArchiveKind>,
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
                fs::read(path).map_err(|e| FileError::io(path, e))
            }
            Contents::Archive { archive, reader } => {
                let mut bytes = Vec::new();
                reader.read_to_end(&mut bytes).map_err(|e| FileError::io(*archive, e))?;
                Ok(bytes)
            }
        }
    }
}

impl Source {
    /// The whole folder or archive at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let archive = ArchiveKind::of(&path).filter(|_| path.is_file());
        Self { path, prefix: String::new(), archive }
    }

    /// The folder `relative` (a `/`-separated path) inside this source.
    pub fn subfolder(&self, relative: &str) -> Self {
        if relative.is_empty() {
            return self.clone();
        }
        if self.archive.is_some() {
            let prefix = if self.prefix.is_empty() { relative.to_string() } else { format!("{}/{relative}", self.prefix) };
            Self { path: self.path.clone(), prefix, archive: self.archive }
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
        match self.archive {
            Some(ArchiveKind::TarGz) => self.walk_tar_gz(max_depth, &mut visit),
            Some(ArchiveKind::Zip) => self.walk_zip(max_depth, &mut visit),
            None => {
                let mut visit_disk = |relative: &str, disk_path: &Path, is_dir: bool| {
                    visit(Entry { path: relative, is_dir, contents: Contents::Disk(disk_path) })
                };
                walk_folder(&self.path, max_depth, &mut visit_disk)
            }
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

    fn walk_tar_gz(&self, max_depth: usize, visit: &mut Visitor) -> Result<()> {
        let io_error = |e| FileError::io(&self.path, e);
        let file = File::open(&self.path).map_err(io_error)?;
        let mut archive = tar::Archive::new(MultiGzDecoder::new(BufReader::with_capacity(1 << 20, file)));
        for entry in archive.entries().map_err(io_error)? {
            let mut entry = entry.map_err(io_error)?;
            let kind = entry.header().entry_type();
            if !(kind.is_file() || kind.is_dir()) {
                continue;
            }
            let member = entry.path().map_err(io_error)?.into_owned();
            if self.visit_member(&member, kind.is_dir(), &mut entry, max_depth, visit)?.is_break() {
                break;
            }
        }
        Ok(())
    }

    fn walk_zip(&self, max_depth: usize, visit: &mut Visitor) -> Result<()> {
        let zip_error = |e: zip::result::ZipError| FileError::io(&self.path, io::Error::from(e));
        let file = File::open(&self.path).map_err(|e| FileError::io(&self.path, e))?;
        let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(zip_error)?;
        for index in 0..archive.len() {
            let mut entry = archive.by_index(index).map_err(zip_error)?;
            // `enclosed_name` is None for names that would leave the archive (`../x`, `/x`).
            let (Some(member), false) = (entry.enclosed_name(), entry.is_symlink()) else { continue };
            let is_dir = entry.is_dir();
            if self.visit_member(&member, is_dir, &mut entry, max_depth, visit)?.is_break() {
                break;
            }
        }
        Ok(())
    }

    /// Hands the archive member `member` to `visit` when it lies inside `prefix` within `max_depth`.
    fn visit_member(
        &self,
        member: &Path,
        is_dir: bool,
        reader: &mut dyn Read,
        max_depth: usize,
        visit: &mut Visitor,
    ) -> Result<ControlFlow<()>> {
        let full_path = normalized_archive_path(member);
        let Some(relative) = strip_folder_prefix(&full_path, &self.prefix) else {
            return Ok(ControlFlow::Continue(()));
        };
        if relative.is_empty() || relative.split('/').count() > max_depth {
            return Ok(ControlFlow::Continue(()));
        }
        visit(Entry { path: relative, is_dir, contents: Contents::Archive { archive: &self.path, reader } })
    }
}

/// What [`Source::walk`] calls for each entry.
type Visitor<'a> = dyn FnMut(Entry) -> Result<ControlFlow<()>> + 'a;

/// Called with (relative path, path on disk, is_dir) for each folder entry.
pub type FolderVisitor<'a> = dyn FnMut(&str, &Path, bool) -> Result<ControlFlow<()>> + 'a;

/// Calls `visit(relative path, path on disk, is_dir)` for everything under `root` up to
/// `max_depth` components deep, depth first in sorted order, following symbolic links.
pub fn walk_folder(root: &Path, max_depth: usize, visit: &mut FolderVisitor) -> Result<()> {
    walk_folder_from(root, "", max_depth, visit).map(|_| ())
}

fn walk_folder_from(folder: &Path, relative: &str, depth_left: usize, visit: &mut FolderVisitor) -> Result<ControlFlow<()>> {
    if depth_left == 0 {
        return Ok(ControlFlow::Continue(()));
    }
    let mut children: Vec<(String, PathBuf)> = fs::read_dir(folder)
        .map_err(|e| FileError::io(folder, e))?
        .map(|child| {
            let child = child.map_err(|e| FileError::io(folder, e))?;
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

    /// Writes `files` (relative path, contents) as a deflated zip at `path`, with folder entries
    /// for `folders`.
    pub(crate) fn write_zip(path: &Path, folders: &[&str], files: &[(String, Vec<u8>)]) {
        let mut writer = zip::ZipWriter::new(File::create(path).unwrap());
        let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for folder in folders {
            writer.add_directory(*folder, options).unwrap();
        }
        for (name, bytes) in files {
            writer.start_file(name, options).unwrap();
            std::io::Write::write_all(&mut writer, bytes).unwrap();
        }
        writer.finish().unwrap();
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
        let folders = ["top", "top/sub", "top/sub/deeper"];
        let tar_gz = dir.path().join("tree.tgz");
        write_tar_gz(&tar_gz, &folders, &sample_files());
        let zip = dir.path().join("tree.ZIP");
        write_zip(&zip, &folders, &sample_files());

        let folder = Source::new(dir.path().join("tree"));
        assert_eq!(folder.archive, None);
        assert_eq!(listing(&folder, 2), vec![("top".into(), true), ("top/a.txt".into(), false), ("top/sub".into(), true)]);
        let expected = vec![("b.txt".to_string(), b"beta".to_vec())];
        let wanted = |p: &str| p.ends_with("b.txt");
        assert_eq!(folder.subfolder("top/sub").read_files(wanted).unwrap(), expected);
        for (archive, kind) in [(&tar_gz, ArchiveKind::TarGz), (&zip, ArchiveKind::Zip)] {
            let packed = Source::new(archive);
            assert_eq!(packed.archive, Some(kind));
            assert_eq!(listing(&folder, usize::MAX), listing(&packed, usize::MAX));
            assert_eq!(listing(&folder.subfolder("top"), 1), listing(&packed.subfolder("top"), 1));
            assert_eq!(packed.subfolder("top").subfolder("sub").read_files(wanted).unwrap(), expected);
            assert_eq!(packed.subfolder("top/sub").display_path("b.txt"), archive.join("top/sub/b.txt"));
        }
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
        let files = [("big.bin".to_string(), (0..200_000u32).map(|i| (i * 7919 % 251) as u8).collect())];
        for name in ["tree.tar.gz", "tree.zip"] {
            let archive = dir.path().join(name);
            if name.ends_with(".zip") {
                write_zip(&archive, &[], &files);
            } else {
                write_tar_gz(&archive, &[], &files);
            }
            let bytes = fs::read(&archive).unwrap();
            fs::write(&archive, &bytes[..bytes.len() / 2]).unwrap();
            let err = Source::new(&archive).read_files(|_| true).unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn archive_kind_follows_the_name() {
        let kind = |name: &str| ArchiveKind::of(Path::new(name));
        assert_eq!(kind("a/b.TAR.GZ"), Some(ArchiveKind::TarGz));
        assert_eq!(kind("b.tgz"), Some(ArchiveKind::TarGz));
        assert_eq!(kind("b.Zip"), Some(ArchiveKind::Zip));
        assert_eq!(kind("b.tar"), None);
        assert_eq!(kind("zip"), None);
    }
}
