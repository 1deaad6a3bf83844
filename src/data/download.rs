//! Fetches the official CIFAR-10 binary archive and checks it against its published MD5.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};

use super::{FileError, Result};

pub const CIFAR10_BINARY_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// The MD5 published on the CIFAR-10 page for the binary archive.
pub const CIFAR10_BINARY_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
pub const CIFAR10_BINARY_FILE: &str = "cifar-10-binary.tar.gz";

/// `dest_dir/cifar-10-binary.tar.gz`, downloaded unless a verified copy is already there.
pub fn download_cifar10(dest_dir: &Path) -> Result<PathBuf> {
    let target = dest_dir.join(CIFAR10_BINARY_FILE);
    if target.is_file() && verify_md5(&target, CIFAR10_BINARY_MD5).is_ok() {
        return Ok(target);
    }
    fs::create_dir_all(dest_dir).map_err(|e| FileError::io(dest_dir, e))?;
    let partial = dest_dir.join(format!("{CIFAR10_BINARY_FILE}.part"));
    let fetched = fetch(CIFAR10_BINARY_URL, &partial).and_then(|()| verify_md5(&partial, CIFAR10_BINARY_MD5));
    if let Err(error) = fetched {
        let _ = fs::remove_file(&partial);
        return Err(FileError::Other(format!(
            "could not download {CIFAR10_BINARY_URL}: {error}. Without network access, download it elsewhere \
             and place it at {} (MD5 {CIFAR10_BINARY_MD5}).",
            target.display()
        )));
    }
    fs::rename(&partial, &target).map_err(|e| FileError::io(&target, e))?;
    Ok(target)
}

/// Streams `url` into the file `into`.
pub(crate) fn fetch(url: &str, into: &Path) -> Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_connect(Some(Duration::from_secs(30))).build().into();
    let mut response = agent.get(url).call().map_err(|e| FileError::Other(e.to_string()))?;
    let mut file = File::create(into).map_err(|e| FileError::io(into, e))?;
    io::copy(&mut response.body_mut().as_reader(), &mut file).map_err(|e| FileError::io(into, e))?;
    Ok(())
}

/// Checks that the file at `path` has the MD5 `expected` (hex, any case).
pub fn verify_md5(path: &Path, expected: &str) -> Result<()> {
    let mut file = File::open(path).map_err(|e| FileError::io(path, e))?;
    let mut hasher = Md5::new();
    io::copy(&mut file, &mut hasher).map_err(|e| FileError::io(path, e))?;
    let found: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if found.eq_ignore_ascii_case(expected.trim()) {
        Ok(())
    } else {
        Err(FileError::invalid(path, format!("MD5 mismatch: expected {expected}, found {found}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_of_a_local_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hello.txt");
        fs::write(&path, b"hello world").unwrap();
        verify_md5(&path, "5eb63bbbe01eeed093cb22bb8f5acdc3").unwrap();
        verify_md5(&path, "5EB63BBBE01EEED093CB22BB8F5ACDC3").unwrap();

        let err = verify_md5(&path, CIFAR10_BINARY_MD5).unwrap_err().to_string();
        assert!(err.contains("hello.txt") && err.contains(CIFAR10_BINARY_MD5) && err.contains("5eb63bbbe01eeed093cb22bb8f5acdc3"), "{err}");

        let err = verify_md5(&dir.path().join("absent"), CIFAR10_BINARY_MD5).unwrap_err().to_string();
        assert!(err.contains("absent"), "{err}");
    }
}
