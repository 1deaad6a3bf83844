//! One folder per run: `config.toml` (fully resolved), `metrics.jsonl` (one line per epoch),
//! `checkpoints/{best,last}.bpk`, `summary.json`. Every file is written to a temporary name and
//! renamed, so a crash never leaves a half-written file in place of a good one.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::config::ExperimentConfig;
use crate::data::classes::ClassNames;
use crate::error::InvalidSetting;
use crate::files::write_atomic;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: Option<f64>,
    pub val_acc: Option<f64>,
    /// Top-5 accuracies, for data sets of more than 10 classes (see `train::reports_top5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_acc5: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_acc5: Option<f64>,
    pub lr: f64,
    pub seconds: f64,
    pub img_per_s: f64,
    /// Seconds of the epoch's training the loop waited for the loader's next batch (decoding,
    /// augmenting, copying to the device), and for the device to finish a step (reading its loss
    /// back). A GPU kept busy shows little of the first and most of the second.
    #[serde(default)]
    pub data_wait_seconds: f64,
    #[serde(default)]
    pub device_wait_seconds: f64,
}

impl EpochMetrics {
    /// The shares of the epoch spent waiting for data and for the device.
    pub fn wait_shares(&self) -> (f64, f64) {
        (self.data_wait_seconds / self.seconds, self.device_wait_seconds / self.seconds)
    }
}

#[cfg(test)]
impl EpochMetrics {
    /// Epoch 1 with `val_loss` and round values elsewhere, for tests to adjust.
    pub fn example(val_loss: Option<f64>) -> Self {
        Self {
            epoch: 1,
            train_loss: 1.0,
            train_acc: 0.0,
            val_loss,
            val_acc: None,
            train_acc5: None,
            val_acc5: None,
            lr: 0.1,
            seconds: 1.0,
            img_per_s: 1.0,
            data_wait_seconds: 0.0,
            device_wait_seconds: 0.0,
        }
    }
}

/// The current UTC date (`YYYY-MM-DD`) and time (`HHMMSS`).
pub fn utc_now() -> (String, String) {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    (format!("{year:04}-{month:02}-{day:02}"), format!("{:02}{:02}{:02}", rem / 3600, rem / 60 % 60, rem % 60))
}

/// What the runs of the config file at `path` are named after: its file name without the
/// extension, `fallback` when it has none.
pub fn config_name(path: &Path, fallback: &str) -> String {
    path.file_stem().map_or_else(|| fallback.to_string(), |s| s.to_string_lossy().into_owned())
}

/// `<name>-YYYYMMDD-HHMMSS` in UTC.
pub fn default_run_id(name: &str) -> String {
    let (date, time) = utc_now();
    format!("{name}-{}-{time}", date.replace('-', ""))
}

/// The id of a new run of `config`: `experiment.id` or `run.id` (both may be given if they are
/// equal), else a [`default_run_id`] of the config's name that no run in `run.dir` has.
pub fn new_run_id(config: &ExperimentConfig, config_name: &str) -> Result<String> {
    Ok(match (config.experiment.id.as_str(), config.run.id.as_str()) {
        ("", "") => reserve_default_id(&config.run.dir, config_name)?,
        (id, "") | ("", id) => id.to_string(),
        (a, b) if a == b => a.to_string(),
        (a, b) => return Err(InvalidSetting::new("experiment.id", format!("`{a}` differs from run.id `{b}`; give one of them")).into()),
    })
}

/// `<name>-<timestamp>`, or with `-2`, `-3`, ... where that is taken. The folder is created here,
/// empty, so two runs started in the same second cannot both take one id.
fn reserve_default_id(root: &Path, name: &str) -> Result<String> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let base = default_run_id(name);
    for n in 1.. {
        let id = if n == 1 { base.clone() } else { format!("{base}-{n}") };
        match std::fs::create_dir(root.join(&id)) {
            Ok(()) => return Ok(id),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", root.join(&id).display())),
        }
    }
    unreachable!("some numbered id is free")
}

/// `<run>/lock`, holding the id of the process that trains in the folder, so that a second
/// `train --resume` of the same run stops instead of interleaving its epochs. Removed when dropped;
/// one left by a process that no longer runs (killed) is taken over.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

impl RunLock {
    pub const FILE: &'static str = "lock";

    pub fn acquire(run: &Path) -> Result<Self> {
        let path = run.join(Self::FILE);
        // Twice: a stale lock is removed on the first pass.
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    write!(file, "{}", std::process::id()).with_context(|| format!("writing {}", path.display()))?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path).ok().and_then(|text| text.trim().parse::<u32>().ok());
                    if let Some(pid) = holder.filter(|&pid| process_exists(pid)) {
                        bail!(
                            "{}: process {pid} is training in this run folder (lock file {}); wait for it to end or stop it",
                            run.display(),
                            path.display()
                        );
                    }
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        bail!("{}: could not take the lock file {}", run.display(), path.display())
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a process with this id runs (signal 0 checks without sending anything).
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: kill with signal 0 sends nothing; it only reports whether `pid` can be signalled.
    let result = unsafe { libc::kill(pid, 0) };
    result == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunSummary {
    pub run_id: String,
    pub model: String,
    pub trainable_params: usize,
    /// Parameters of the model that did not train (a frozen backbone); absent in older summaries.
    #[serde(default)]
    pub frozen_params: usize,
    /// Class ids in label order, as the data set spells them (Tiny ImageNet: WordNet ids).
    pub classes: Vec<String>,
    /// Readable names parallel to `classes` ("goldfish" for n01443537); absent in older summaries.
    #[serde(default)]
    pub class_names: Vec<String>,
    /// Side of the (square) images the model was trained on, after any resizing.
    pub image_size: usize,
    pub epochs_completed: usize,
    /// Epoch (1-based) whose checkpoint is `best.bpk`: the best by `train.best_by` (lowest
    /// validation loss by default), or the last epoch when there is no validation split.
    pub best_epoch: usize,
    pub best_val_loss: Option<f64>,
    pub best_val_acc: Option<f64>,
    /// Top-5 accuracies, for more than 10 classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_val_acc5: Option<f64>,
    pub test_loss: f64,
    pub test_acc: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_acc5: Option<f64>,
    pub test_images: usize,
    pub train_seconds: f64,
    pub total_seconds: f64,
}

impl RunSummary {
    /// The run's classes with their readable names (an older summary's names are its ids).
    pub fn class_names(&self) -> ClassNames {
        match self.class_names.len() == self.classes.len() {
            true => ClassNames { ids: self.classes.clone(), names: self.class_names.clone() },
            false => ClassNames::from_names(&self.classes),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RunDir {
    pub path: PathBuf,
    pub id: String,
}

impl RunDir {
    pub const CONFIG: &'static str = "config.toml";
    pub const METRICS: &'static str = "metrics.jsonl";
    pub const SUMMARY: &'static str = "summary.json";

    /// Creates `root/<id>/`; refuses to reuse a folder that holds anything (an empty one is an id
    /// reserved by [`new_run_id`]).
    pub fn create(root: &Path, id: &str, config: &ExperimentConfig) -> Result<Self> {
        let path = root.join(id);
        let empty = std::fs::read_dir(&path).is_ok_and(|mut entries| entries.next().is_none());
        if path.exists() && !empty {
            bail!("run folder {} already exists; choose another run.id", path.display());
        }
        std::fs::create_dir_all(path.join("checkpoints")).with_context(|| format!("creating {}", path.display()))?;
        let run = Self { path, id: id.to_string() };
        run.write_config(config)?;
        Ok(run)
    }

    /// Writes the fully resolved `config.toml` (at creation, and when a resumed run extends it).
    pub fn write_config(&self, config: &ExperimentConfig) -> Result<()> {
        let text = format!("# Fully resolved configuration of this run (defaults and --set overrides applied).\n{}", config.to_toml());
        write_atomic(&self.path.join(Self::CONFIG), text.as_bytes())
    }

    /// Empties a run that ended before its first epoch did, for a fresh start in place: what
    /// that attempt wrote goes (a partial TensorBoard log, an interrupt's `last` checkpoint); its
    /// config, notes and lock stay.
    pub fn restart(&self) -> Result<()> {
        let keep = [Self::CONFIG, super::journal::NOTES, RunLock::FILE];
        let entries = std::fs::read_dir(&self.path).with_context(|| format!("reading {}", self.path.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", self.path.display()))?;
            if keep.iter().any(|name| entry.file_name() == *name) {
                continue;
            }
            let path = entry.path();
            let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            removed.with_context(|| format!("removing {} to restart the run", path.display()))?;
        }
        std::fs::create_dir_all(self.path.join("checkpoints")).with_context(|| format!("creating {}", self.path.display()))
    }

    /// Opens an existing run folder (for `eval`).
    pub fn open(path: &Path) -> Result<(Self, ExperimentConfig)> {
        let config_path = path.join(Self::CONFIG);
        if !config_path.is_file() {
            bail!("{} is not a run folder: {} is missing", path.display(), config_path.display());
        }
        let config = ExperimentConfig::load(&config_path, &[])?;
        let id = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok((Self { path: path.to_path_buf(), id }, config))
    }

    pub fn checkpoint(&self, name: &str) -> PathBuf {
        self.path.join("checkpoints").join(format!("{name}.bpk"))
    }

    pub fn append_metrics(&self, metrics: &EpochMetrics) -> Result<()> {
        let path = self.path.join(Self::METRICS);
        let mut file =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
        writeln!(file, "{}", serde_json::to_string(metrics)?).with_context(|| format!("writing {}", path.display()))
    }

    pub fn read_metrics(&self) -> Result<Vec<EpochMetrics>> {
        let path = self.path.join(Self::METRICS);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        text.lines()
            .enumerate()
            .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{} line {}", path.display(), i + 1)))
            .collect()
    }

    pub fn write_summary(&self, summary: &RunSummary) -> Result<()> {
        write_atomic(&self.path.join(Self::SUMMARY), serde_json::to_string_pretty(summary)?.as_bytes())
    }

    pub fn read_summary(&self) -> Result<RunSummary> {
        let path = self.path.join(Self::SUMMARY);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_files_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_existing_run_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let config = ExperimentConfig::default();
        let run = RunDir::create(dir.path(), "r1", &config).unwrap();
        std::fs::write(run.path.join("keep"), b"x").unwrap();
        let err = RunDir::create(dir.path(), "r1", &config).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        assert!(run.path.join("keep").exists());
        let (opened, read_back) = RunDir::open(&run.path).unwrap();
        assert_eq!(read_back, config);
        assert_eq!(opened.id, "r1");
    }

    #[test]
    fn runs_are_named_after_the_config_file_and_a_utc_timestamp() {
        assert_eq!(config_name(Path::new("configs/cifar10.toml"), "run"), "cifar10");
        assert_eq!(config_name(Path::new(""), "run"), "run");
        let id = default_run_id("cifar10");
        let (date, time) = id.strip_prefix("cifar10-").unwrap().split_once('-').unwrap();
        assert!(date.len() == 8 && time.len() == 6, "{id}");
        assert!(date.chars().chain(time.chars()).all(|c| c.is_ascii_digit()), "{id}");
    }

    #[test]
    fn a_new_run_takes_the_experiment_id_or_the_run_id_and_refuses_two_different_ones() {
        let runs = tempfile::tempdir().unwrap();
        let with_ids = |experiment: &str, run: &str| {
            let mut config = ExperimentConfig::default();
            config.run.dir = runs.path().to_path_buf();
            config.experiment.id = experiment.into();
            config.run.id = run.into();
            new_run_id(&config, "c")
        };
        assert_eq!(with_ids("EXP007", "").unwrap(), "EXP007");
        assert_eq!(with_ids("", "r1").unwrap(), "r1");
        assert_eq!(with_ids("r1", "r1").unwrap(), "r1");
        // Two default ids taken in the same second differ.
        let (first, second) = (with_ids("", "").unwrap(), with_ids("", "").unwrap());
        assert!(first.starts_with("c-") && second.starts_with("c-") && first != second, "{first} {second}");
        let err = with_ids("EXP007", "r1").unwrap_err().to_string();
        assert_eq!(err, "config key `experiment.id`: `EXP007` differs from run.id `r1`; give one of them");
    }

    #[test]
    fn metrics_lines_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path(), "r", &ExperimentConfig::default()).unwrap();
        let m = EpochMetrics {
            epoch: 1,
            train_loss: 1.5,
            train_acc: 0.4,
            val_loss: Some(1.2),
            val_acc: None,
            train_acc5: Some(0.9),
            val_acc5: None,
            lr: 0.1,
            seconds: 2.0,
            img_per_s: 100.0,
            data_wait_seconds: 0.25,
            device_wait_seconds: 1.5,
        };
        run.append_metrics(&m).unwrap();
        run.append_metrics(&EpochMetrics { epoch: 2, ..m.clone() }).unwrap();
        let back = run.read_metrics().unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0], m);
        // Top-5 is written only where it is measured; older lines without it read back as None.
        let line = std::fs::read_to_string(run.path.join(RunDir::METRICS)).unwrap();
        assert!(line.contains("\"train_acc5\":0.9") && !line.contains("val_acc5"), "{line}");
        let older: EpochMetrics = serde_json::from_str(
            r#"{"epoch":1,"train_loss":1.0,"train_acc":0.5,"val_loss":null,"val_acc":null,"lr":0.1,"seconds":1.0,"img_per_s":9.0}"#,
        )
        .unwrap();
        assert_eq!((older.train_acc5, older.val_acc5), (None, None));
        assert_eq!((older.data_wait_seconds, older.device_wait_seconds), (0.0, 0.0));
    }

    #[test]
    fn summaries_carry_readable_class_names_and_older_ones_fall_back_to_the_ids() {
        let text = r#"{"run_id":"r","model":"m","trainable_params":1,"classes":["n01443537","n02123045"],"image_size":64,
            "epochs_completed":1,"best_epoch":1,"best_val_loss":null,"best_val_acc":null,"test_loss":1.0,"test_acc":0.5,
            "test_images":2,"train_seconds":1.0,"total_seconds":1.0}"#;
        let mut summary: RunSummary = serde_json::from_str(text).unwrap();
        assert_eq!(summary.class_names(), ClassNames::from_names(&summary.classes));
        assert_eq!(summary.test_acc5, None);
        summary.class_names = vec!["goldfish".into(), "tabby".into()];
        summary.test_acc5 = Some(0.75);
        let classes = summary.class_names();
        assert_eq!((classes.ids[0].as_str(), classes.names[0].as_str()), ("n01443537", "goldfish"));
        let written = serde_json::to_string(&summary).unwrap();
        assert!(written.contains(r#""class_names":["goldfish","tabby"]"#) && written.contains(r#""test_acc5":0.75"#), "{written}");
        assert!(!written.contains("best_val_acc5"), "{written}");
    }

    #[test]
    fn a_run_folder_is_locked_while_it_trains_and_a_stale_lock_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let lock = RunLock::acquire(dir.path()).unwrap();
        let err = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&format!("process {} is training", std::process::id())), "{err}");
        drop(lock);
        assert!(!dir.path().join(RunLock::FILE).exists());
        // A lock left by a process that is gone (pid beyond any real one).
        std::fs::write(dir.path().join(RunLock::FILE), "2147483646").unwrap();
        let taken = RunLock::acquire(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join(RunLock::FILE)).unwrap(), std::process::id().to_string());
        drop(taken);
    }
}
