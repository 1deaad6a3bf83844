//! Helpers shared by the tests that read the real data in ../shared.

use std::path::PathBuf;

/// `../shared/<relative>` beside the checkout, or `None` (with a message saying why the test is
/// skipped) where it is absent.
pub fn shared(relative: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared").join(relative);
    if path.exists() {
        Some(path)
    } else {
        eprintln!("skipping: {} is absent (the real data lives in ../shared beside the checkout)", path.display());
        None
    }
}
