//! The error every module gives for a setting it cannot use: the key that names the setting
//! (`train.lr`, `augment.transforms[2] (random_crop).size`) and what was expected.

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
}
