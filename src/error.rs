//! The errors modules share: a setting that cannot be used (named by its config key) and a file
//! that cannot be read (named by its path).

use std::path::PathBuf;

/// An invalid setting, named by its config key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {message}")]
pub struct InvalidSetting {
    pub key: String,
    pub message: String,
}

impl InvalidSetting {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }
}

/// `Ok` when `valid`, else the error for `key`.
pub fn ensure(valid: bool, key: &str, message: impl FnOnce() -> String) -> Result<(), InvalidSetting> {
    if valid { Ok(()) } else { Err(InvalidSetting::new(key, message())) }
}

/// `Ok` when every number in `settings` (a config section as TOML, named `key`) is finite: TOML
/// accepts `nan` and `inf`, which no setting means. Keys of nested values are dotted, list entries
/// indexed (`train.betas[1]`, `augment.transforms[0].p`), so a new setting is covered as it is added.
pub fn ensure_finite(key: &str, settings: &toml::Value) -> Result<(), InvalidSetting> {
    match settings {
        toml::Value::Float(x) => ensure(x.is_finite(), key, || format!("expected a finite number, found {x}")),
        toml::Value::Array(items) => items.iter().enumerate().try_for_each(|(i, item)| ensure_finite(&format!("{key}[{i}]"), item)),
        toml::Value::Table(table) => table.iter().try_for_each(|(name, value)| {
            let key = if key.is_empty() { name.clone() } else { format!("{key}.{name}") };
            ensure_finite(&key, value)
        }),
        _ => Ok(()),
    }
}

/// A file or folder that cannot be used: reading data sets, weights and checkpoints. Each
/// message names the path and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    // The io error is part of the message, not a `source`, so `{:#}` does not print it twice.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{0}")]
    Other(String),
}

impl FileError {
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        FileError::Io { path: path.into(), error }
    }

    pub fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        FileError::Invalid { path: path.into(), message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_full_key() {
        let error = InvalidSetting::new("augment.mix.prob", "expected a probability in [0, 1], found 2");
        assert_eq!(error.to_string(), "config key `augment.mix.prob`: expected a probability in [0, 1], found 2");
        assert!(ensure(true, "k", || unreachable!()).is_ok());
        assert_eq!(ensure(false, "k", || "m".into()).unwrap_err(), InvalidSetting::new("k", "m"));
    }

    #[test]
    fn a_number_that_is_not_finite_is_named_by_its_full_key() {
        let settings: toml::Value = toml::from_str("a = 1.5\n[s]\nlist = [0.5, inf]\n[[s.items]]\nx = 1\n[[s.items]]\np = -nan\n").unwrap();
        let error = ensure_finite("", &settings).unwrap_err();
        assert_eq!(error.key, "s.items[1].p");
        assert!(error.message.contains("finite"), "{error}");
        let fixed: toml::Value = toml::from_str("[s]\nlist = [0.5, 2.0]\n").unwrap();
        assert!(ensure_finite("", &fixed).is_ok());
        let list: toml::Value = toml::from_str("[s]\nlist = [0.5, inf]\n").unwrap();
        assert_eq!(ensure_finite("", &list).unwrap_err().key, "s.list[1]");
    }
}
