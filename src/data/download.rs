// placeholder until the readers land
use std::path::{Path, PathBuf};
use super::{Result, DataError};
pub fn download_cifar10(_d: &Path) -> Result<PathBuf> { Err(DataError::Other("pending".into())) }
