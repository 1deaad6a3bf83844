//! End-to-end tests of the `ferrovision` binary: each test works in its own temporary folder on a
//! tiny synthetic image-folder data set (three classes told apart by colour), runs the real
//! executable and checks its exit code, its output and the files it leaves behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use image::{Rgb, RgbImage};
use serde_json::Value;
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// Class folders of the synthetic data set, in the (sorted) label order the readers use, each with
/// the colour that marks it.
const CLASSES: [(&str, [u8; 3]); 3] = [("blue", [40, 40, 210]), ("green", [40, 210, 40]), ("red", [210, 40, 40])];
const TRAIN_PER_CLASS: usize = 24;
const TEST_PER_CLASS: usize = 9;
const VAL_SIZE: usize = 6;
const SIDE: u32 = 32;

/// A small deterministic generator for per-pixel noise (xorshift64*).
struct Noise(u64);

impl Noise {
    /// A value in -amplitude..=amplitude.
    fn next(&mut self, amplitude: i32) -> i32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33;
        (r % (2 * amplitude as u64 + 1)) as i32 - amplitude
    }
}

/// A `side` x `side` image of `colour` with per-pixel noise drawn from `seed`.
fn noisy_image(colour: [u8; 3], seed: u64, side: u32) -> RgbImage {
    let mut noise = Noise(0x9E37_79B9_7F4A_7C15 ^ (seed + 1));
    RgbImage::from_fn(side, side, |_, _| Rgb(colour.map(|c| (i32::from(c) + noise.next(30)).clamp(0, 255) as u8)))
}

/// Writes `root/{train,test}/<class>/NNNN.png`: `side` x `side` images whose colour is their
/// class, with per-pixel noise, `TRAIN_PER_CLASS` and `TEST_PER_CLASS` images per class. Returns
/// the relative paths written.
fn write_image_tree(root: &Path, side: u32) -> Vec<String> {
    let mut written = Vec::new();
    for (class_index, (class, colour)) in CLASSES.iter().enumerate() {
        for (split_index, (split, count)) in [("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)].into_iter().enumerate() {
            let folder = root.join(split).join(class);
            std::fs::create_dir_all(&folder).unwrap();
            for i in 0..count {
                let image = noisy_image(*colour, (class_index * 1000 + split_index * 100 + i) as u64, side);
                let relative = format!("{split}/{class}/{i:04}.png");
                image.save(root.join(&relative)).unwrap();
                written.push(relative);
            }
        }
    }
    written
}

/// The Tiny ImageNet-like classes of [`write_tiny_imagenet`]: more than 10, so top-5 is reported.
/// (wnid, `words.txt` names, colour); the wnids are in sorted (label) order.
fn tiny_classes() -> Vec<(String, String, [u8; 3])> {
    let names = [
        "goldfish",
        "tabby",
        "bullfrog",
        "lemon",
        "reel",
        "volleyball",
        "cliff",
        "espresso",
        "plunger",
        "rocking chair",
        "pretzel",
        "basketball",
    ];
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            // Twelve hues around the colour wheel, 30 degrees apart.
            let hue = |offset: usize| {
                let d = ((i * 30 + offset) % 360) as i32;
                let level = match d {
                    0..60 => 255,
                    60..120 => 255 - (d - 60) * 255 / 60,
                    120..240 => 0,
                    240..300 => (d - 240) * 255 / 60,
                    _ => 255,
                };
                (40 + level * 170 / 255) as u8
            };
            (format!("n0100{i:04}"), format!("{name}, synonym of {name}"), [hue(0), hue(240), hue(120)])
        })
        .collect()
}

/// Writes Tiny ImageNet's layout at `root` for [`tiny_classes`]: `wnids.txt`, `words.txt` (with
/// a synset of no class too), `train/<wnid>/images/<wnid>_<n>.JPEG` and `val/images/val_<n>.JPEG`
/// with `val/val_annotations.txt`; 64x64 JPEGs of the class colour, `train` and `val` per class.
fn write_tiny_imagenet(root: &Path, train: usize, val: usize) {
    let classes = tiny_classes();
    std::fs::create_dir_all(root.join("val/images")).unwrap();
    let wnids: String = classes.iter().rev().map(|(wnid, ..)| format!("{wnid}\n")).collect();
    std::fs::write(root.join("wnids.txt"), wnids).unwrap();
    let mut words = "n00001740\tentity\n".to_string();
    words.extend(classes.iter().map(|(wnid, names, _)| format!("{wnid}\t{names}\n")));
    std::fs::write(root.join("words.txt"), words).unwrap();
    let mut annotations = String::new();
    for (index, (wnid, _, colour)) in classes.iter().enumerate() {
        let folder = root.join("train").join(wnid).join("images");
        std::fs::create_dir_all(&folder).unwrap();
        for i in 0..train {
            noisy_image(*colour, (index * 1000 + i) as u64, 64).save(folder.join(format!("{wnid}_{i}.JPEG"))).unwrap();
        }
        for i in 0..val {
            let file = format!("val_{}.JPEG", index * val + i);
            noisy_image(*colour, (index * 1000 + 500 + i) as u64, 64).save(root.join("val/images").join(&file)).unwrap();
            annotations.push_str(&format!("{file}\t{wnid}\t0\t0\t63\t63\n"));
        }
    }
    std::fs::write(root.join("val/val_annotations.txt"), annotations).unwrap();
}

/// Writes the images of an image tree (`root/{train,test}/<class>/*.png`, classes in `classes`
/// order) as a CIFAR-10 binary release in `folder`: the train images spread over
/// `data_batch_1..5.bin`, the test images in `test_batch.bin`, each split interleaved (one image
/// of each class in turn, not the tree's order), and `batches.meta.txt` listing `meta` when given.
fn write_cifar_binary(root: &Path, classes: &[&str], folder: &Path, meta: Option<&[&str]>) {
    std::fs::create_dir_all(folder).unwrap();
    let records = |split: &str| {
        let mut per_class: Vec<Vec<Vec<u8>>> = classes
            .iter()
            .enumerate()
            .map(|(label, class)| {
                let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(split).join(class)).unwrap().map(|e| e.unwrap().path()).collect();
                files.sort();
                let record = |path: &PathBuf| {
                    let image = image::open(path).unwrap().to_rgb8();
                    assert_eq!(image.dimensions(), (32, 32), "CIFAR images are 32x32");
                    let planes = (0..3).flat_map(|channel| image.pixels().map(move |p| p[channel]));
                    std::iter::once(label as u8).chain(planes).collect::<Vec<u8>>()
                };
                files.iter().rev().map(record).collect()
            })
            .collect();
        let mut interleaved = Vec::new();
        while per_class.iter().any(|c| !c.is_empty()) {
            interleaved.extend(per_class.iter_mut().filter_map(Vec::pop));
        }
        interleaved
    };
    let train = records("train");
    for (batch, chunk) in train.chunks(train.len().div_ceil(5)).enumerate() {
        std::fs::write(folder.join(format!("data_batch_{}.bin", batch + 1)), chunk.concat()).unwrap();
    }
    std::fs::write(folder.join("test_batch.bin"), records("test").concat()).unwrap();
    if let Some(names) = meta {
        std::fs::write(folder.join("batches.meta.txt"), names.join("\n") + "\n").unwrap();
    }
}

/// Packs the tree at `root` as a gzipped tar at `archive` (files only, paths relative to `root`).
fn write_tar_gz(root: &Path, files: &[String], archive: &Path) {
    let encoder = flate2::write::GzEncoder::new(std::fs::File::create(archive).unwrap(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    for relative in files {
        builder.append_path_with_name(root.join(relative), relative).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap();
}

/// A temporary workspace: `data/` (the synthetic tree), `tiny.toml` (a config that trains on it),
/// and the `runs/` and `cache/` folders that config names.
struct Workspace {
    dir: TempDir,
}

impl Workspace {
    /// A workspace with the synthetic tree and a config training `tutorial_net` for 2 epochs.
    fn new() -> Self {
        Self::with_data(|data| {
            write_image_tree(data, SIDE);
        })
    }

    /// A workspace whose `data/` folder `write` fills, with the same config.
    fn with_data(write: impl FnOnce(&Path)) -> Self {
        let ws = Self { dir: tempfile::tempdir().unwrap() };
        write(&ws.data());
        ws.write_config();
        ws
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn data(&self) -> PathBuf {
        self.root().join("data")
    }

    fn runs(&self) -> PathBuf {
        self.root().join("runs")
    }

    fn config(&self) -> PathBuf {
        self.root().join("tiny.toml")
    }

    /// Writes `tiny.toml`: `tutorial_net`, 2 epochs of batch 8 with Adam, everything it writes
    /// inside the workspace and no progress bar.
    fn write_config(&self) {
        let text = format!(
            r#"# A tiny, fast experiment on the synthetic colour data set.
[data]
path = {data:?}
cache_dir = {cache:?}
val_size = {VAL_SIZE}

[augment]
crop_padding = 0
hflip = 0.0

[model]
name = "tutorial_net"

[train]
epochs = 2
batch_size = 8
optimizer = "adam"
lr = 0.001
weight_decay = 0.0
schedule = "constant"
seed = 0

[run]
dir = {runs:?}
progress = false
"#,
            data = self.data().display().to_string(),
            cache = self.root().join("cache").display().to_string(),
            runs = self.runs().display().to_string(),
        );
        std::fs::write(self.config(), text).unwrap();
    }

    /// Runs `ferrovision train` on the workspace config with run id `id` and extra arguments.
    fn train(&self, id: &str, extra: &[&str]) -> Outcome {
        let config = self.config();
        let mut args = vec!["train", "--config", s(&config), "--id", id];
        args.extend_from_slice(extra);
        ferrovision(self.root(), &args)
    }

    /// The folders under `runs/`.
    fn run_folders(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.runs()) else { return Vec::new() };
        let mut names: Vec<String> = entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }
}

/// What a finished command left: exit code and output.
#[derive(Debug)]
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn from_output(output: std::process::Output) -> Self {
        Self {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Asserts exit code 0 and returns stdout.
    fn success(&self) -> &str {
        assert_eq!(self.code, Some(0), "expected success, got {self:#?}");
        &self.stdout
    }

    /// Asserts a failure whose stderr is one `error: ...` message (no panic, no second error)
    /// that contains every one of `mentions`; returns that message.
    fn failure(&self, mentions: &[&str]) -> &str {
        assert!(self.code.is_some_and(|c| c != 0), "expected a non-zero exit code, got {self:#?}");
        let message = self.stderr.trim();
        assert!(message.starts_with("error: "), "stderr should be one `error: ` message: {self:#?}");
        assert_eq!(message.matches("error:").count(), 1, "more than one error: {self:#?}");
        assert!(!message.contains("panicked"), "the binary panicked: {self:#?}");
        for mention in mentions {
            assert!(message.contains(mention), "stderr should mention {mention:?}: {message}");
        }
        message
    }
}

/// The `ferrovision` binary as a command run in `cwd`, with a quiet, single-threaded environment
/// (the tests run in parallel on few cores).
fn command(cwd: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferrovision"));
    command.args(args).current_dir(cwd).env_remove("RUST_LOG").env("RAYON_NUM_THREADS", "1").stdin(Stdio::null());
    command
}

/// Runs the binary to completion.
fn ferrovision(cwd: &Path, args: &[&str]) -> Outcome {
    Outcome::from_output(command(cwd, args).output().expect("running ferrovision"))
}

fn s(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()))
}

/// Every file under `dir` (relative path -> contents), to compare a folder before and after.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(path.strip_prefix(root).unwrap().to_path_buf(), std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The percentage `N.NN` printed after `label` (e.g. `accuracy 97.00%`).
fn percent_after<'a>(text: &'a str, label: &str) -> &'a str {
    let start = text.find(label).unwrap_or_else(|| panic!("no {label:?} in:\n{text}")) + label.len();
    let rest = &text[start..];
    let end = rest.find('%').unwrap_or_else(|| panic!("no % after {label:?} in:\n{text}"));
    rest[..end].trim()
}

/// The number printed after `label` (e.g. `loss 0.1234`).
fn number_after<'a>(text: &'a str, label: &str) -> &'a str {
    let start = text.find(label).unwrap_or_else(|| panic!("no {label:?} in:\n{text}")) + label.len();
    let rest = text[start..].trim_start();
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    &rest[..end]
}

/// `100 * fraction` as the binary prints an accuracy.
fn as_printed(fraction: f64) -> String {
    format!("{:.2}", 100.0 * fraction)
}

/// A loss as the binary prints it.
fn loss_printed(loss: f64) -> String {
    format!("{loss:.4}")
}

// ---------------------------------------------------------------------------------------------
// train and eval
// ---------------------------------------------------------------------------------------------

#[test]
fn train_writes_a_complete_run_and_eval_reproduces_its_accuracy() {
    let ws = Workspace::new();
    let out = ws.train("tiny", &[]);
    let stdout = out.success();
    let run = ws.runs().join("tiny");

    // The run folder.
    assert!(run.join("config.toml").is_file());
    let resolved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(resolved.contains("tutorial_net") && resolved.contains("epochs = 2"), "{resolved}");
    for checkpoint in ["best", "last"] {
        let path = run.join("checkpoints").join(format!("{checkpoint}.bpk"));
        assert!(std::fs::metadata(&path).is_ok_and(|m| m.len() > 0), "{} missing or empty", path.display());
    }
    // Learning curves (SVG and PNG) and TensorBoard events.
    for chart in ["loss", "accuracy", "lr"] {
        for ext in ["svg", "png"] {
            let path = run.join("curves").join(format!("{chart}.{ext}"));
            assert!(std::fs::metadata(&path).is_ok_and(|m| m.len() > 1000), "{} missing or tiny", path.display());
        }
    }
    let events: Vec<_> = std::fs::read_dir(run.join("tensorboard")).unwrap().collect();
    assert_eq!(events.len(), 1, "one event file");
    // The test of the best checkpoint at the end of training drew its confusion matrices.
    let confusion = run.join("eval/test-best-confusion-normalized.png");
    assert!(std::fs::metadata(&confusion).is_ok_and(|m| m.len() > 1000), "{} missing or tiny", confusion.display());
    let metrics_text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let metrics: Vec<Value> = metrics_text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(metrics.len(), 2, "one line per epoch:\n{metrics_text}");
    for (index, line) in metrics.iter().enumerate() {
        assert_eq!(line["epoch"], index + 1, "{line}");
        for key in ["train_loss", "val_loss", "lr", "img_per_s"] {
            let value = line[key].as_f64().unwrap_or_else(|| panic!("{key} is not a number in {line}"));
            // A loss can round to exactly 0 in f32 once the colours are learned.
            let positive = key == "lr" || key == "img_per_s";
            assert!(value.is_finite() && (value > 0.0 || !positive && value == 0.0), "{key} = {value} in {line}");
        }
        let waits = line["data_wait_seconds"].as_f64().unwrap() + line["device_wait_seconds"].as_f64().unwrap();
        assert!(waits >= 0.0 && waits <= line["seconds"].as_f64().unwrap(), "waits within the epoch: {line}");
    }
    // Top-5 is for more than 10 classes: not in the metrics of 3.
    assert!(metrics.iter().all(|line| line.get("train_acc5").is_none() && line.get("val_acc5").is_none()), "{metrics_text}");
    let summary = read_json(&run.join("summary.json"));
    assert_eq!(summary["classes"], serde_json::json!(["blue", "green", "red"]), "{summary}");
    assert_eq!(summary["class_names"], summary["classes"], "folder names are their own readable names: {summary}");
    assert!(summary.get("test_acc5").is_none(), "{summary}");
    assert_eq!(summary["test_images"], 3 * TEST_PER_CLASS, "{summary}");
    assert_eq!(summary["epochs_completed"], 2, "{summary}");
    let number = |key: &str| summary[key].as_f64().unwrap_or_else(|| panic!("no number {key} in {summary}"));
    let (test_acc, test_loss) = (number("test_acc"), number("test_loss"));
    let (best_val_acc, best_val_loss) = (number("best_val_acc"), number("best_val_loss"));
    eprintln!("train: test_acc {test_acc:.4} (loss {test_loss:.4}), best_val_acc {best_val_acc:.4} (loss {best_val_loss:.4})");
    // Colour alone tells the classes apart: far above chance (1/3).
    assert!(test_acc > 0.8, "test accuracy {test_acc} on trivially separable colours\n{stdout}");

    // stdout reports the test accuracy of summary.json and the run folder.
    assert_eq!(percent_after(stdout, "test accuracy"), as_printed(test_acc), "{stdout}");
    assert_eq!(number_after(stdout, "(loss"), loss_printed(test_loss), "{stdout}");
    assert!(stdout.contains(s(&run)), "{stdout}");

    // eval: the best checkpoint on the test split gives the same accuracy.
    let eval = ferrovision(ws.root(), &["eval", "--run", s(&run)]);
    let report = eval.success();
    assert!(report.contains("checkpoint best, test split (27 images)"), "{report}");
    assert_eq!(percent_after(report, "accuracy"), as_printed(test_acc), "{report}");
    assert_eq!(number_after(report, "loss"), loss_printed(test_loss), "{report}");
    for (class, _) in CLASSES {
        assert!(report.contains(class), "per-class line for {class}:\n{report}");
    }
    assert!(!report.contains("top-5"), "{report}");
    for kind in ["counts", "normalized"] {
        for ext in ["svg", "png"] {
            let path = run.join("eval").join(format!("test-best-confusion-{kind}.{ext}"));
            assert!(path.is_file(), "{} missing:\n{report}", path.display());
        }
    }

    // --split val: the same validation images as in training, so best_val_acc.
    let eval = ferrovision(ws.root(), &["eval", "--run", s(&run), "--split", "val"]);
    let report = eval.success();
    assert!(report.contains(&format!("val split ({VAL_SIZE} images)")), "{report}");
    assert_eq!(percent_after(report, "accuracy"), as_printed(best_val_acc), "{report}");
    assert_eq!(number_after(report, "loss"), loss_printed(best_val_loss), "{report}");

    // --checkpoint last: the last epoch's weights, whose val accuracy and loss are the last
    // metrics line's (the two epochs' val losses differ at the printed precision).
    let eval = ferrovision(ws.root(), &["eval", "--run", s(&run), "--checkpoint", "last", "--split", "val"]);
    let report = eval.success();
    assert!(report.contains("checkpoint last, val split"), "{report}");
    let val = |epoch: usize, key: &str| metrics[epoch][key].as_f64().unwrap();
    assert_ne!(loss_printed(val(0, "val_loss")), loss_printed(val(1, "val_loss")), "{metrics_text}");
    assert_eq!(percent_after(report, "accuracy"), as_printed(val(1, "val_acc")), "{report}");
    assert_eq!(number_after(report, "loss"), loss_printed(val(1, "val_loss")), "{report}");
    let eval = ferrovision(ws.root(), &["eval", "--run", s(&run), "--checkpoint", "last"]);
    assert!(eval.success().contains("checkpoint last, test split (27 images)"), "{eval:#?}");
    // Every test-time augmentation is offered.
    for tta in ["flip", "flip_translate", "flip_translate_airbench"] {
        let eval = ferrovision(ws.root(), &["eval", "--run", s(&run), "--tta", tta]);
        let report = eval.success();
        assert!(report.contains("checkpoint best, test split (27 images)"), "{report}");
    }
}

/// The GPU path end to end (a build with `--features vulkan` and any Vulkan driver; without a GPU,
/// Mesa's lavapipe): a run trained on `--device vulkan` learns the colours, and `eval` and
/// `predict` on `vulkan` and on `flex` agree about it.
#[cfg(feature = "vulkan")]
#[test]
fn vulkan_trains_and_agrees_with_flex_on_eval_and_predict() {
    let ws = Workspace::new();
    let run = ws.runs().join("gpu");
    ws.train("gpu", &["--device", "vulkan"]).success();
    let summary = read_json(&run.join("summary.json"));
    let test_acc = summary["test_acc"].as_f64().unwrap();
    assert!(test_acc > 0.8, "test accuracy {test_acc} on trivially separable colours: {summary}");

    let report = |device: &str| ferrovision(ws.root(), &["eval", "--run", s(&run), "--device", device]).success().to_string();
    let (on_gpu, on_cpu) = (report("vulkan"), report("flex"));
    assert_eq!(percent_after(&on_gpu, "accuracy"), as_printed(test_acc), "{on_gpu}");
    assert_eq!(percent_after(&on_cpu, "accuracy"), as_printed(test_acc), "{on_cpu}");

    let photos = ws.data().join("test").join("red");
    let top1 = |device: &str| -> Vec<String> {
        let out = ferrovision(ws.root(), &["predict", "--run", s(&run), "--device", device, s(&photos)]);
        out.success()
            .lines()
            .filter(|l| l.contains(".png"))
            .map(|l| l.split('\t').nth(1).unwrap().rsplit_once(' ').unwrap().0.to_string())
            .collect()
    };
    let (gpu, cpu) = (top1("vulkan"), top1("flex"));
    assert_eq!(gpu.len(), TEST_PER_CLASS, "{gpu:?}");
    assert_eq!(gpu, cpu);
}

/// Tiny ImageNet (here 12 classes in its layout): the readable `words.txt` names, with the wnids
/// kept, in summary.json, eval, the confusion matrices and predict; top-5 accuracy (more than 10
/// classes) in metrics.jsonl, the console, summary.json, eval and TensorBoard.
#[test]
fn tiny_imagenet_runs_show_readable_class_names_and_top5() {
    let ws = Workspace::with_data(|data| write_tiny_imagenet(data, 10, 3));
    let classes = tiny_classes();
    let wnids: Vec<&str> = classes.iter().map(|(wnid, ..)| wnid.as_str()).collect();
    let names: Vec<&str> = classes.iter().map(|(_, words, _)| words.split(',').next().unwrap()).collect();
    let out = ws.train("tiny", &["--set", "data.input_size=32", "--set", "data.val_size=24"]);
    let stdout = out.success();
    assert!(stdout.contains("top-5"), "{stdout}");
    let run = ws.runs().join("tiny");

    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    for line in text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()) {
        for split in ["train", "val"] {
            let (acc, acc5) = (line[format!("{split}_acc")].as_f64().unwrap(), line[format!("{split}_acc5")].as_f64());
            let acc5 = acc5.unwrap_or_else(|| panic!("no {split}_acc5 in {line}"));
            assert!((acc..=1.0).contains(&acc5), "{split}: top-5 {acc5} below top-1 {acc}: {line}");
        }
    }
    let summary = read_json(&run.join("summary.json"));
    assert_eq!(summary["classes"], serde_json::json!(wnids), "{summary}");
    assert_eq!(summary["class_names"], serde_json::json!(names), "{summary}");
    let (test_acc, test_acc5) = (summary["test_acc"].as_f64().unwrap(), summary["test_acc5"].as_f64().unwrap());
    assert!(test_acc5 >= test_acc && summary["best_val_acc5"].as_f64().is_some(), "{summary}");
    let test_line = stdout.lines().find(|l| l.starts_with("test accuracy")).unwrap_or_else(|| panic!("no test line:\n{stdout}"));
    assert_eq!(percent_after(test_line, "top-5"), as_printed(test_acc5), "{stdout}");

    // eval: the same top-5, each class by name and wnid, the confusion matrices labelled by name.
    let eval = ferrovision(ws.root(), &["eval", "--run", s(&run)]);
    let report = eval.success();
    assert_eq!(percent_after(report, "accuracy"), as_printed(test_acc), "{report}");
    assert_eq!(percent_after(report, "top-5"), as_printed(test_acc5), "{report}");
    for (wnid, name) in wnids.iter().zip(&names) {
        let line = report.lines().find(|l| l.contains(&format!("{name} ({wnid})")));
        assert!(line.is_some_and(|l| l.trim_end().ends_with('%')), "no per-class line for {name} ({wnid}):\n{report}");
    }
    let svg = std::fs::read_to_string(run.join("eval/test-best-confusion-counts.svg")).unwrap();
    assert!(names.iter().all(|name| svg.contains(name)) && !svg.contains(wnids[0]), "labels by name:\n{svg}");

    // TensorBoard has the top-5 scalars (tags are plain strings in the event records).
    let folder = run.join("tensorboard");
    let events = std::fs::read(std::fs::read_dir(&folder).unwrap().next().unwrap().unwrap().path()).unwrap();
    for tag in ["accuracy_top5/train", "accuracy_top5/val", "accuracy_top5/test"] {
        assert!(events.windows(tag.len()).any(|w| w == tag.as_bytes()), "no {tag} in {}", folder.display());
    }

    // predict prints the readable names; file names with wnids still score.
    let photos = ws.root().join("photos");
    std::fs::create_dir(&photos).unwrap();
    for wnid in &wnids[..3] {
        let name = format!("{wnid}_0.JPEG");
        std::fs::copy(ws.data().join("train").join(wnid).join("images").join(&name), photos.join(&name)).unwrap();
    }
    let predicted = ferrovision(ws.root(), &["predict", "--run", s(&run), "--labels-from-file-names", s(&photos)]);
    let lines = predicted.success();
    let score = lines.lines().last().unwrap_or_default();
    assert!(score.starts_with("top-1 ") && score.contains("/3), top-5 "), "scored by the wnids of the file names:\n{lines}");
    for line in lines.lines().filter(|l| l.contains(".JPEG")) {
        let labels: Vec<&str> = line.split('\t').skip(1).map(|p| p.rsplit_once(' ').unwrap().0).collect();
        assert_eq!(labels.len(), 5, "{line}");
        assert!(labels.iter().all(|label| names.contains(label)), "labels by name: {line}");
    }
}

/// `eval --data` evaluates a finished run on another copy of its data set: the image folders it
/// trained on written as a CIFAR-10 binary release (lossless, stored in another order) give the
/// same accuracy; a copy with other classes or another image size is refused, naming why.
#[test]
fn eval_data_evaluates_a_run_on_another_copy_of_its_data_set() {
    let ws = Workspace::new();
    ws.train("tiny", &["--set", "train.epochs=1"]).success();
    let run = ws.runs().join("tiny");
    let class_names: Vec<&str> = CLASSES.iter().map(|(class, _)| *class).collect();
    let copies = ws.root().join("copies");
    let binary = copies.join("cifar-10-batches-bin");
    write_cifar_binary(&ws.data(), &class_names, &binary, Some(&class_names));

    let own = ferrovision(ws.root(), &["eval", "--run", s(&run)]);
    let own = own.success();
    let copy = ferrovision(ws.root(), &["eval", "--run", s(&run), "--data", s(&binary)]);
    let copy = copy.success();
    assert!(copy.contains(&format!("checkpoint best, test split of {} (27 images)", binary.display())), "{copy}");
    assert_eq!(percent_after(copy, "accuracy"), percent_after(own, "accuracy"), "{own}\n{copy}");
    let loss = |report: &str| number_after(report, "loss").parse::<f64>().unwrap();
    assert!((loss(own) - loss(copy)).abs() < 1e-3, "{own}\n{copy}");
    let per_class = |report: &str| report.lines().filter(|l| l.starts_with("  ")).map(String::from).collect::<Vec<_>>();
    assert_eq!(per_class(own), per_class(copy));
    // Its confusion matrices are filed apart from those of the run's own data.
    for stem in ["test-best", "test-best-cifar-10-batches-bin"] {
        assert!(run.join("eval").join(format!("{stem}-confusion-counts.png")).is_file(), "{stem}:\n{copy}");
    }

    // Other classes: the first difference is named, with both lists' lengths.
    let reordered = copies.join("reordered");
    write_cifar_binary(&ws.data(), &class_names, &reordered, Some(&["green", "blue", "red"]));
    ferrovision(ws.root(), &["eval", "--run", s(&run), "--data", s(&reordered)]).failure(&[
        s(&reordered),
        "class 0 is `green` there and `blue` in the run",
        "3 classes there, 3 in the run",
    ]);
    let cifar10 = copies.join("no-meta");
    write_cifar_binary(&ws.data(), &class_names, &cifar10, None);
    ferrovision(ws.root(), &["eval", "--run", s(&run), "--data", s(&cifar10)])
        .failure(&["class 0 is `airplane` there and `blue` in the run", "10 classes there, 3 in the run"]);
    // Another image size.
    let small = copies.join("small");
    write_image_tree(&small, 16);
    ferrovision(ws.root(), &["eval", "--run", s(&run), "--data", s(&small)]).failure(&[s(&small), "16x16", "32x32"]);
    ferrovision(ws.root(), &["eval", "--run", s(&run), "--data", s(&copies.join("nowhere"))]).failure(&["nowhere"]);
    // A run that did not finish has no summary.json to check a copy against.
    std::fs::rename(run.join("summary.json"), ws.root().join("summary.json")).unwrap();
    ferrovision(ws.root(), &["eval", "--run", s(&run), "--data", s(&binary)]).failure(&["summary.json"]);
}

// ---------------------------------------------------------------------------------------------
// data info, models, bench
// ---------------------------------------------------------------------------------------------

#[test]
fn data_info_describes_a_folder_and_its_archive() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("colours");
    let files = write_image_tree(&tree, SIDE);
    let archive = dir.path().join("colours.tar.gz");
    write_tar_gz(&tree, &files, &archive);

    let mut reports = Vec::new();
    for path in [&tree, &archive] {
        let out = ferrovision(dir.path(), &["data", "info", s(path)]);
        let stdout = out.success().to_string();
        assert!(stdout.contains("format: image-folder"), "{stdout}");
        assert!(stdout.contains("image size: 32x32"), "{stdout}");
        assert!(stdout.contains("classes: 3"), "{stdout}");
        for (class, _) in CLASSES {
            let line = stdout.lines().find(|l| l.split_whitespace().next() == Some(class));
            let counts: Vec<&str> = line.unwrap_or_else(|| panic!("no line for {class}:\n{stdout}")).split_whitespace().collect();
            assert_eq!(counts, [class, &TRAIN_PER_CLASS.to_string(), &TEST_PER_CLASS.to_string()], "{stdout}");
        }
        let total: Vec<&str> = stdout.lines().find(|l| l.starts_with("total")).unwrap().split_whitespace().collect();
        assert_eq!(total, ["total", &(3 * TRAIN_PER_CLASS).to_string(), &(3 * TEST_PER_CLASS).to_string()]);
        reports.push(stdout);
    }
    assert_eq!(reports[0], reports[1], "folder and archive describe the same data set");
}

/// Writes a CIFAR-100 binary release under `root`: `records` records in train.bin and test.bin
/// (record `i` of batch `b` has fine label (b * 41 + i * 7) % 100 and coarse label fine / 5) and
/// the two class-name files.
fn write_cifar100_binary(root: &Path, records: usize) {
    std::fs::create_dir_all(root).unwrap();
    for (batch, name) in ["train.bin", "test.bin"].into_iter().enumerate() {
        let mut bytes = Vec::new();
        for record in 0..records {
            let fine = ((batch * 41 + record * 7) % 100) as u8;
            bytes.extend([fine / 5, fine]);
            bytes.extend((0..3072).map(|p| (p + record) as u8));
        }
        std::fs::write(root.join(name), bytes).unwrap();
    }
    let names = |prefix: &str, n: usize| (0..n).map(|i| format!("{prefix}{i}\n")).collect::<String>();
    std::fs::write(root.join("fine_label_names.txt"), names("fine", 100)).unwrap();
    std::fs::write(root.join("coarse_label_names.txt"), names("coarse", 20)).unwrap();
}

#[test]
fn data_info_reads_cifar100_with_fine_or_coarse_labels() {
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("cifar-100-binary");
    write_cifar100_binary(&release, 20);
    let archive = dir.path().join("cifar-100-binary.tar.gz");
    let files: Vec<String> = ["train.bin", "test.bin", "fine_label_names.txt", "coarse_label_names.txt"]
        .iter()
        .map(|name| format!("cifar-100-binary/{name}"))
        .collect();
    write_tar_gz(dir.path(), &files, &archive);
    let mut reports = Vec::new();
    for path in [&release, &archive] {
        let fine = ferrovision(dir.path(), &["data", "info", s(path)]).success().to_string();
        assert!(fine.contains("format: cifar100-binary\nimage size: 32x32 RGB") && fine.contains("classes: 100"), "{fine}");
        // Train record 3 has fine label 21; test record 0 has fine label 41.
        let counts = |text: &str, class: &str| text.lines().find(|l| l.split_whitespace().next() == Some(class)).map(str::to_string);
        assert_eq!(counts(&fine, "fine21").as_deref().map(|l| l.split_whitespace().collect::<Vec<_>>()), Some(vec!["fine21", "1", "0"]));
        let coarse = ferrovision(dir.path(), &["data", "info", s(path), "--labels", "coarse"]).success().to_string();
        assert!(coarse.contains("classes: 20"), "{coarse}");
        // Train records 0 and 1 have fine labels 0 and 7: coarse 0 and 1.
        assert_eq!(counts(&coarse, "coarse0").as_deref().map(|l| l.split_whitespace().nth(1).unwrap().to_string()), Some("1".into()));
        let total: u32 =
            coarse.lines().filter(|l| l.starts_with("coarse")).map(|l| l.split_whitespace().nth(1).unwrap().parse::<u32>().unwrap()).sum();
        assert_eq!(total, 20, "{coarse}");
        reports.push((fine, coarse));
    }
    assert_eq!(reports[0], reports[1], "folder and archive describe the same data set");

    // A cut batch is named; data.labels is refused for a data set with one label set.
    let train_bin = release.join("train.bin");
    let bytes = std::fs::read(&train_bin).unwrap();
    std::fs::write(&train_bin, &bytes[..bytes.len() - 100]).unwrap();
    ferrovision(dir.path(), &["data", "info", s(&release)]).failure(&["train.bin", "truncated", "3074-byte record"]);
    let colours = dir.path().join("colours");
    write_image_tree(&colours, SIDE);
    ferrovision(dir.path(), &["data", "info", s(&colours), "--labels", "coarse"]).failure(&["data.labels", "image-folder"]);
}

/// Moves the synthetic tree at `root` to `<class>/*` folders alone (train and test images
/// together), the first image of each class saved at 40x24 instead of 32x32.
fn flatten_to_mixed_size_class_folders(root: &Path) {
    for (class, _) in CLASSES {
        let folder = root.join(class);
        std::fs::create_dir_all(&folder).unwrap();
        for split in ["train", "test"] {
            for entry in std::fs::read_dir(root.join(split).join(class)).unwrap() {
                let path = entry.unwrap().path();
                let name = format!("{split}-{}", path.file_name().unwrap().to_string_lossy());
                std::fs::rename(&path, folder.join(name)).unwrap();
            }
        }
        let first = folder.join("test-0000.png");
        image::open(&first).unwrap().resize_exact(40, 24, image::imageops::FilterType::Triangle).save(&first).unwrap();
    }
    std::fs::remove_dir_all(root.join("train")).unwrap();
    std::fs::remove_dir_all(root.join("test")).unwrap();
}

#[test]
fn class_folders_of_mixed_sizes_train_with_held_out_splits() {
    let ws = Workspace::new();
    flatten_to_mixed_size_class_folders(&ws.data());
    let data = ws.data();
    let info = ferrovision(ws.root(), &["data", "info", s(&data), "--input-size", "32"]).success().to_string();
    assert!(info.contains("format: class-folders\nimage size: 32x32") && info.contains("no test split"), "{info}");
    let total: Vec<&str> = info.lines().find(|l| l.starts_with("total")).unwrap().split_whitespace().collect();
    assert_eq!(total, ["total", &(3 * (TRAIN_PER_CLASS + TEST_PER_CLASS)).to_string(), "0"], "{info}");
    // Without a size, mixed sizes are refused with the key to set.
    ferrovision(ws.root(), &["data", "info", s(&data)]).failure(&["test-0000.png is 40x24", "data.input_size"]);
    ws.train("no-size", &["--set", "data.test_size=0.2"]).failure(&["data.input_size"]);
    // Without data.test_size there is no test split to report on.
    ws.train("no-test", &["--set", "data.input_size=32"]).failure(&["no test split", "data.test_size"]);

    ws.train("split", &["--set", "data.input_size=32", "--set", "data.test_size=0.2"]).success();
    let summary = read_json(&ws.runs().join("split/summary.json"));
    // 20% of 99 images, rounded up: 20, stratified as 7, 7, 6.
    assert_eq!(summary["test_images"], 20, "{summary}");
    let eval = ferrovision(ws.root(), &["eval", "--run", s(&ws.runs().join("split")), "--split", "val"]);
    assert!(eval.success().contains(&format!("val split ({VAL_SIZE} images)")), "{eval:#?}");
}

#[test]
fn a_val_folder_is_the_validation_split() {
    let ws = Workspace::new();
    // val/ holds a copy of test/ (9 images per class).
    for (class, _) in CLASSES {
        let (from, to) = (ws.data().join("test").join(class), ws.data().join("val").join(class));
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(&from).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
    // The workspace config sets data.val_size too: both is refused, naming the two.
    ws.train("both", &[]).failure(&["data.val_size = 6", "own validation split (val/, 27 images)"]);
    let config = std::fs::read_to_string(ws.config()).unwrap().replace(&format!("val_size = {VAL_SIZE}\n"), "");
    std::fs::write(ws.config(), config).unwrap();
    ws.train("val-folder", &[]).success();
    let run = ws.runs().join("val-folder");
    let eval = ferrovision(ws.root(), &["eval", "--run", s(&run), "--split", "val"]);
    assert!(eval.success().contains("val split (27 images)"), "{eval:#?}");
    let summary = read_json(&run.join("summary.json"));
    assert_eq!(summary["test_images"], 3 * TEST_PER_CLASS, "{summary}");
    let info = ferrovision(ws.root(), &["data", "info", s(&ws.data())]).success().to_string();
    let total: Vec<&str> = info.lines().find(|l| l.starts_with("total")).unwrap().split_whitespace().collect();
    assert_eq!(total, ["total", "72", "27", "27"], "{info}");
    assert!(info.contains("validation: the data set's own val split"), "{info}");
}

#[test]
fn models_lists_parameter_counts() {
    let dir = tempfile::tempdir().unwrap();
    let out = ferrovision(dir.path(), &["models"]);
    let stdout = out.success();
    for (name, params) in [("tutorial_net", "62,006"), ("resnet18_cifar", "11,173,962")] {
        let line = stdout.lines().find(|l| l.split_whitespace().next() == Some(name));
        let line = line.unwrap_or_else(|| panic!("{name} is not listed:\n{stdout}"));
        assert_eq!(line.split_whitespace().nth(1), Some(params), "{line}");
    }
}

/// Asserts that the last stdout line is `<number> img/s` with a positive number.
fn assert_throughput_line(out: &Outcome) {
    let stdout = out.success();
    let last = stdout.lines().last().unwrap_or_default();
    let number = last.strip_suffix(" img/s").unwrap_or_else(|| panic!("last line does not end with ` img/s`: {stdout}"));
    let value: f64 = number.parse().unwrap_or_else(|_| panic!("last line does not start with a number: {last}"));
    assert!(value.is_finite() && value > 0.0, "{last}");
}

#[test]
fn bench_train_and_loader_end_with_a_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let train = ferrovision(dir.path(), &["bench", "train", "--model", "tutorial_net", "--batch", "4", "--steps", "1", "--warmup", "0"]);
    assert_throughput_line(&train);
    let loader = ferrovision(dir.path(), &["bench", "loader", "--batch", "64", "--images", "256"]);
    assert_throughput_line(&loader);
    let gemm = ferrovision(dir.path(), &["bench", "gemm", "--model", "tutorial_net", "--batch", "2", "--steps", "1", "--square", "64"]);
    let out = gemm.success();
    assert!(out.contains("conv1") && out.contains("shapes (for bench/pytorch_gemm_bench.py --shapes): 1568,75,6 200,150,16"), "{out}");
    assert!(out.trim_end().ends_with("GFLOP/s"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// Bad input: a non-zero exit and one `error: ...` message naming the culprit
// ---------------------------------------------------------------------------------------------

#[test]
fn config_errors_name_the_key_or_value() {
    let ws = Workspace::new();

    let typo = ws.root().join("typo.toml");
    std::fs::write(&typo, "[train]\nepochz = 3\n").unwrap();
    ferrovision(ws.root(), &["train", "--config", s(&typo)]).failure(&["epochz", "typo.toml"]);

    ws.train("lr", &["--set", "train.lr=fast"]).failure(&["`train.lr`", "\"fast\""]);
    ws.train("precision", &["--set", "train.precision='fp8'"]).failure(&["train.precision", "fp8"]);
    ferrovision(ws.root(), &["bench", "train", "--model", "fast_net", "--precision", "fp8"]).failure(&["fp8", "expected f32, f16 or bf16"]);
    ws.train("model", &["--set", "model.name=resnet999"]).failure(&["resnet999"]);
    ferrovision(ws.root(), &["bench", "train", "--model", "resnet999", "--steps", "1"]).failure(&["resnet999"]);

    // A config error is found before any run folder is made.
    assert_eq!(ws.run_folders(), Vec::<String>::new());
}

#[test]
fn data_errors_name_the_path() {
    let ws = Workspace::new();

    let missing = ws.root().join("no-such-data");
    ws.train("missing", &["--data", s(&missing)]).failure(&["no-such-data", "not found"]);
    ferrovision(ws.root(), &["data", "info", s(&missing)]).failure(&["no-such-data"]);

    // A PNG cut in half inside the tree.
    let bad = ws.data().join("train/green/0003.png");
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    ws.train("bad-png", &[]).failure(&["train/green/0003.png"]);
    ferrovision(ws.root(), &["data", "info", s(&ws.data())]).failure(&["train/green/0003.png"]);

    assert_eq!(ws.run_folders(), Vec::<String>::new());
}

/// Asserts that no `: `-separated clause of `message` is immediately repeated (`a: b: b`).
fn assert_no_repeated_clause(message: &str) {
    let clauses: Vec<&str> = message.split(": ").collect();
    let repeated = clauses.windows(2).find(|pair| pair[0] == pair[1]);
    assert!(repeated.is_none(), "the message repeats {:?}: {message}", repeated.unwrap()[0]);
}

/// KNOWN BUG (src/data/mod.rs `DataError::Io`, src/config.rs `ConfigError::Read`): the variants
/// print their `source` field and also expose it as the error's source, so `error: {:#}` in
/// main.rs prints the OS message twice (`x.toml: No such file ... (os error 2): No such file ...`).
/// This test passes once the message is printed once.
#[test]
fn io_errors_are_reported_once() {
    let ws = Workspace::new();
    let missing_config = ws.root().join("no-such-config.toml");
    let out = ferrovision(ws.root(), &["train", "--config", s(&missing_config)]);
    assert_no_repeated_clause(out.failure(&["no-such-config.toml"]));

    let missing_data = ws.root().join("no-such-data");
    let out = ferrovision(ws.root(), &["data", "info", s(&missing_data)]);
    assert_no_repeated_clause(out.failure(&["no-such-data"]));

    let truncated = ws.root().join("cut.tar.gz");
    std::fs::write(&truncated, b"\x1f\x8b").unwrap();
    let out = ferrovision(ws.root(), &["data", "info", s(&truncated)]);
    assert_no_repeated_clause(out.failure(&["cut.tar.gz"]));
}

#[test]
fn eval_refuses_a_folder_that_is_not_a_run() {
    let ws = Workspace::new();
    ferrovision(ws.root(), &["eval", "--run", s(&ws.data())]).failure(&["not a run folder", "config.toml"]);
}

#[test]
fn failed_trainings_leave_an_earlier_run_untouched() {
    let ws = Workspace::new();
    ws.train("good", &["--set", "train.epochs=1"]).success();
    let good = ws.runs().join("good");
    let before = snapshot(&good);
    assert!(before.contains_key(Path::new("summary.json")), "{:?}", before.keys());

    // lr = 1e30 with SGD sends the weights, then the loss, to infinity/NaN.
    // (It is NaN at step 2 of epoch 1.)
    let diverged = ws.train("diverged", &["--set", "train.lr=1e30", "--set", "train.optimizer=\"sgd\""]);
    diverged.failure(&["diverged", "NaN"]);
    assert_eq!(snapshot(&good), before, "a diverged run in the same runs dir changed the earlier run");

    // Reusing the id of an existing run.
    let reused = ws.train("good", &[]);
    reused.failure(&["already exists", s(&good)]);
    assert_eq!(snapshot(&good), before, "reusing the run id changed the earlier run");
}

// ---------------------------------------------------------------------------------------------
// Ctrl-C
// ---------------------------------------------------------------------------------------------

#[test]
fn ctrl_c_stops_with_a_loadable_last_checkpoint() {
    let ws = Workspace::new();
    let config = ws.config();
    let mut child = command(ws.root(), &["train", "--config", s(&config), "--id", "long", "--set", "train.epochs=500"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run = ws.runs().join("long");

    // Wait for the first epoch's metrics (the model is then training).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run.join("metrics.jsonl").exists() {
        let exited = child.try_wait().unwrap().is_some();
        if exited || Instant::now() > deadline {
            let _ = child.kill();
            let out = Outcome::from_output(child.wait_with_output().unwrap());
            panic!("no metrics.jsonl (exited by itself: {exited}): {out:#?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = Outcome::from_output(child.wait_with_output().unwrap());

    assert_eq!(out.code, Some(130), "{out:#?}");
    let last = run.join("checkpoints/last.bpk");
    assert!(out.stderr.contains("interrupted") && out.stderr.contains(&format!("saved {}", s(&last))), "{out:#?}");
    let epochs = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().count();
    assert!(epochs < 500, "training was not stopped");
    // The saved checkpoint is whole: eval loads it.
    ferrovision(ws.root(), &["eval", "--run", s(&run), "--checkpoint", "last"]).success();
}

#[test]
fn the_same_seed_repeats_a_run_exactly() {
    let ws = Workspace::new();
    // Augmentation on, so the seed drives the weights, the split, the order and the crops/flips.
    let augment = ["--set", "augment.crop_padding=2", "--set", "augment.hflip=0.5"];
    ws.train("a", &augment).success();
    ws.train("b", &augment).success();
    let seed1 = ["--set", "augment.crop_padding=2", "--set", "augment.hflip=0.5", "--set", "train.seed=1"];
    ws.train("c", &seed1).success();
    let metrics = |id: &str| std::fs::read_to_string(ws.runs().join(id).join("metrics.jsonl")).unwrap();
    let losses = |id: &str| -> Vec<f64> {
        metrics(id).lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["train_loss"].as_f64().unwrap()).collect()
    };
    assert_eq!(losses("a"), losses("b"));
    assert_ne!(losses("a"), losses("c"));
    let summary = |id: &str| read_json(&ws.runs().join(id).join("summary.json"))["test_loss"].as_f64().unwrap();
    assert_eq!(summary("a"), summary("b"));
}

#[test]
fn device_errors_say_what_to_build_or_choose() {
    let ws = Workspace::new();
    let gpu = ws.train("gpu", &["--device", "cuda"]);
    if cfg!(feature = "cuda") {
        return;
    }
    gpu.failure(&["cuda", "--features cuda"]);
    ws.train("tpu", &["--device", "tpu"]).failure(&["unknown device `tpu`", "flex"]);
    assert!(ws.run_folders().is_empty(), "no run folder for a device error");
}

/// A head-only fine-tune computes the frozen part once and trains the new classifier on its
/// outputs, to the same results as running the frozen part on every batch; a random transform
/// before the frozen part turns the cache off, and the log says why.
#[test]
fn a_frozen_backbone_is_computed_once_with_the_same_results() {
    let ws = Workspace::new();
    ws.train("source", &[]).success();
    let weights = ws.root().join("source.safetensors");
    ferrovision(ws.root(), &["export", "--run", s(&ws.runs().join("source")), "--out", s(&weights)]).success();
    let weights_key = format!("model.weights={weights:?}");
    let finetune = |id: &str, extra: &[&str]| {
        let mut args = vec!["--set", &weights_key, "--set", "transfer.finetune=\"head\"", "--set", "train.tta=\"flip\""];
        args.extend_from_slice(extra);
        let out = ws.train(id, &args);
        let stdout = out.success().to_string();
        (stdout, read_json(&ws.runs().join(id).join("summary.json")))
    };
    let (cached_log, cached) = finetune("cached", &[]);
    let (plain_log, plain) = finetune("plain", &["--set", "transfer.feature_cache=\"off\""]);
    assert!(cached_log.contains("frozen part computed once (66 training and 6 validation images"), "{cached_log}");
    assert!(!plain_log.contains("frozen part"), "{plain_log}");
    let same = |a: &Value, b: &Value| {
        for key in ["best_val_loss", "test_loss"] {
            let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
            assert!((x - y).abs() < 1e-4, "{key}: {x} and {y}");
        }
        assert_eq!(a["test_acc"], b["test_acc"]);
    };
    same(&cached, &plain);

    // The outputs were kept on disk: the next run reads them; a damaged file is computed again.
    let stored: Vec<PathBuf> = std::fs::read_dir(ws.root().join("cache/features")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    let (read_log, read) = finetune("read", &[]);
    assert!(read_log.contains(&format!("frozen part's outputs read from {}", stored[0].display())), "{read_log}");
    same(&read, &cached);
    let bytes = std::fs::read(&stored[0]).unwrap();
    std::fs::write(&stored[0], &bytes[..bytes.len() / 2]).unwrap();
    let (again_log, again) = finetune("again", &[]);
    assert!(again_log.contains("frozen part computed once"), "{again_log}");
    same(&again, &cached);
    assert_eq!(std::fs::read(&stored[0]).unwrap(), bytes, "rewritten whole");
    let (memory_log, _) = finetune("memory", &["--set", "transfer.feature_cache=\"memory\""]);
    assert!(memory_log.contains("frozen part computed once (66 training and 6 validation images") && !memory_log.contains("kept in"));
    assert_eq!((cached["trainable_params"].as_u64(), cached["frozen_params"].as_u64()), (Some(84 * 3 + 3), Some(62_006 - 84 * 10 - 10)));

    let (random_log, _) = finetune("flipped", &["--set", "augment.hflip=0.5"]);
    assert!(
        random_log.contains("the frozen part runs on every batch: the training images pass a random transform (random_horizontal_flip)"),
        "{random_log}"
    );
}

#[test]
fn export_and_predict_label_new_images_like_the_run() {
    let ws = Workspace::new();
    ws.train("tiny", &[]).success();
    let run = ws.runs().join("tiny");
    let exported = ws.root().join("tiny.safetensors");
    let out = ferrovision(ws.root(), &["export", "--run", s(&run), "--out", s(&exported)]);
    assert!(out.success().contains("tutorial_net exported"), "{out:#?}");
    let onnx = ws.root().join("tiny.onnx");
    ferrovision(ws.root(), &["export", "--run", s(&run), "--out", s(&onnx)]).failure(&["tiny.onnx", "*.safetensors"]);
    assert!(!onnx.exists(), "nothing is written under another format's name");

    // Red test images, copied under names that start with their class, for scoring.
    let photos = ws.root().join("photos");
    std::fs::create_dir(&photos).unwrap();
    for i in 0..TEST_PER_CLASS {
        let from = ws.data().join(format!("test/red/{i:04}.png"));
        std::fs::copy(from, photos.join(format!("red_{i}.png"))).unwrap();
    }
    let by_run = ferrovision(ws.root(), &["predict", "--run", s(&run), "--labels-from-file-names", "--top-k", "2", s(&photos)]);
    let by_export = ferrovision(ws.root(), &["predict", "--export", s(&exported), "--labels-from-file-names", "--top-k", "2", s(&photos)]);
    let by_run = by_run.success();
    assert_eq!(by_run, by_export.success(), "the export predicts exactly as the run");
    assert_eq!(by_run.lines().count(), TEST_PER_CLASS + 1, "{by_run}");
    assert!(by_run.lines().next().unwrap().starts_with("red_0.png\tred "), "{by_run}");
    assert!(by_run.lines().last().unwrap().starts_with(&format!("top-1 100.00% ({TEST_PER_CLASS}/{TEST_PER_CLASS})")), "{by_run}");

    // Bad inputs: one clear error each.
    let broken = ws.root().join("broken.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\n truncated").unwrap();
    ferrovision(ws.root(), &["predict", "--export", s(&exported), s(&broken)]).failure(&["broken.png", "not a decodable image"]);
    let not_weights = ws.root().join("notes.pth");
    std::fs::write(&not_weights, vec![b'x'; 100]).unwrap();
    ferrovision(ws.root(), &["predict", "--model", "resnet18", "--weights", s(&not_weights), s(&photos)])
        .failure(&["notes.pth", "not a readable PyTorch checkpoint"]);
    ferrovision(ws.root(), &["predict", "--export", s(&not_weights), s(&photos)]).failure(&["notes.pth"]);
    let offline = ferrovision(ws.root(), &["predict", "--model", "resnet18", "--pretrained", "resnet_unknown", s(&photos)]);
    offline.failure(&["unknown pretrained weights `resnet_unknown`", "efficientnet_lite0"]);
}

#[test]
fn summary_lists_layers_and_viz_draws_their_activations() {
    let ws = Workspace::new();
    let out = ferrovision(ws.root(), &["summary", "--model", "tutorial_net"]);
    let table = out.success();
    for row in ["conv1  ", "Conv2d", "6x28x28", "456", "fc3 ", "62,006 trainable parameters"] {
        assert!(table.contains(row), "{row:?} missing from:\n{table}");
    }
    let resnet = ferrovision(ws.root(), &["summary", "--model", "resnet18", "--classes", "1000"]);
    assert!(resnet.success().contains("11,689,512 trainable parameters"), "{resnet:#?}");

    ws.train("tiny", &[]).success();
    let run = ws.runs().join("tiny");
    let image = ws.data().join("test/red/0000.png");
    let png = ws.root().join("maps.png");
    let out = ferrovision(
        ws.root(),
        &["viz", "activations", "--run", s(&run), "--image", s(&image), "--layers", "conv1,conv2", "--out", s(&png)],
    );
    assert!(out.success().contains("maps.png"), "{out:#?}");
    let sheet = image::open(&png).unwrap().to_rgb8();
    // Input, filters (6 of 3x5x5), conv1 (6 maps of 28x28) and conv2 (16 of 10x10): wider and
    // taller than any one of them, and not blank.
    assert!(sheet.width() > 6 * 28 && sheet.height() > 3 * 28, "{}x{}", sheet.width(), sheet.height());
    assert!(sheet.pixels().filter(|p| p.0 != [255, 255, 255]).count() > 10_000);

    // An unknown layer lists the names there are; an unreadable image is named; no file is left.
    let missing = ws.root().join("none.png");
    ferrovision(ws.root(), &["viz", "activations", "--run", s(&run), "--image", s(&image), "--layers", "conv9", "--out", s(&missing)])
        .failure(&["conv9", "conv1, conv2, fc1, fc2, fc3"]);
    let text = ws.root().join("notes.txt");
    std::fs::write(&text, "not an image").unwrap();
    ferrovision(ws.root(), &["viz", "activations", "--run", s(&run), "--image", s(&text), "--layers", "conv1", "--out", s(&missing)])
        .failure(&["notes.txt", "not a decodable image"]);
    assert!(!missing.exists());
    ferrovision(ws.root(), &["summary", "--model", "resnet_unknown"]).failure(&["resnet_unknown"]);
}

#[test]
fn weights_list_shows_the_registry() {
    let ws = Workspace::new();
    let out = ferrovision(ws.root(), &["weights", "list"]);
    let listing = out.success();
    for needle in
        ["efficientnet_lite0", "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", "resnet18", "f37072fd", "69.8%"]
    {
        assert!(listing.contains(needle), "{needle} missing from:\n{listing}");
    }
}

// ---------------------------------------------------------------------------------------------
// Augmentation: preview, offline expansion, training with a pipeline, robustness evaluation
// ---------------------------------------------------------------------------------------------

/// Appends an `[augment]` pipeline (replacing the workspace's crop/flip shorthand) to the config.
fn with_pipeline(ws: &Workspace, transforms: &str, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(ws.config()).unwrap().replace("crop_padding = 0\nhflip = 0.0\n", "");
    let path = ws.root().join("augmented.toml");
    std::fs::write(&path, text.replace("[augment]\n", &format!("[augment]\ntransforms = {transforms}\n{extra}"))).unwrap();
    path
}

#[test]
fn augment_preview_and_expand_write_what_they_say() {
    let ws = Workspace::new();
    let config = with_pipeline(&ws, r#"[{ name = "random_rotation", degrees = 20 }, { name = "color_jitter", brightness = 0.4 }]"#, "");

    let grid = ws.root().join("grid.png");
    let out = ferrovision(
        ws.root(),
        &["augment", "preview", "--config", s(&config), "--n", "4", "--rows", "3", "--zoom", "2", "--out", s(&grid)],
    );
    assert!(out.success().contains("3 images x 4 augmented copies"), "{out:#?}");
    let png = image::open(&grid).unwrap();
    // 5 cells of 64 px with 4 px gaps across; 3 rows of 64 px + a 12 px label line.
    assert_eq!((png.width(), png.height()), (4 + 5 * 68, 4 + 3 * (64 + 12 + 4)));

    let expanded = ws.root().join("expanded");
    let out = ferrovision(ws.root(), &["augment", "expand", "--config", s(&config), "--copies", "2", "--out", s(&expanded)]);
    let train_images = CLASSES.len() * TRAIN_PER_CLASS;
    let test_images = CLASSES.len() * TEST_PER_CLASS;
    assert!(out.success().contains(&format!("{} images written, 0 already there", 2 * train_images + test_images)), "{out:#?}");
    let info = ferrovision(ws.root(), &["data", "info", s(&expanded)]);
    let info = info.success();
    assert!(info.contains(&(2 * train_images).to_string()) && info.contains("blue"), "{info}");
    // A second run into the finished folder refuses to touch it.
    let before = snapshot(&expanded);
    ferrovision(ws.root(), &["augment", "expand", "--config", s(&config), "--copies", "2", "--out", s(&expanded)])
        .failure(&["expanded", "not an unfinished expansion"]);
    assert_eq!(snapshot(&expanded), before);
}

#[test]
fn training_with_a_pipeline_and_mixing_then_robustness_evaluation() {
    let ws = Workspace::new();
    let config = with_pipeline(
        &ws,
        r#"[{ name = "random_crop", padding = 2, padding_mode = "reflect" }, { name = "random_horizontal_flip" }, { name = "trivial_augment_wide" }]"#,
        "[augment.mix]\nmixup_alpha = 0.2\ncutmix_alpha = 1.0\n",
    );
    let out = ferrovision(ws.root(), &["train", "--config", s(&config), "--id", "aug"]);
    out.success();
    let run = ws.runs().join("aug");
    let summary = read_json(&run.join("summary.json"));
    let test_acc = summary["test_acc"].as_f64().unwrap();
    assert!(test_acc > 0.6, "colour classes under light augmentation: {summary}");
    let resolved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(resolved.contains("trivial_augment_wide") && resolved.contains("cutmix_alpha = 1.0"), "{resolved}");

    // Hue shifts change the colour that names the class: accuracy falls with the hue range; a
    // zero range is the identity and reproduces the clean accuracy.
    let out = ferrovision(
        ws.root(),
        &["eval", "--run", s(&run), "--transform", r#"{ name = "color_jitter", hue = 0.0 }"#, "--sweep", "hue=0,0.5"],
    );
    let table = out.success();
    let row =
        |label: &str| table.lines().find(|l| l.starts_with(&format!("| {label} |"))).unwrap_or_else(|| panic!("no {label} row:\n{table}"));
    let accuracy = |label: &str| row(label).split('|').nth(2).unwrap().trim().trim_end_matches('%').parse::<f64>().unwrap();
    assert_eq!(accuracy("clean"), accuracy("hue=0"), "{table}");
    assert!(accuracy("hue=0.5") < accuracy("clean"), "{table}");
    for file in ["color_jitter-hue.csv", "color_jitter-hue.svg"] {
        assert!(run.join("robustness").join(file).is_file(), "{file} missing:\n{table}");
    }
}

#[test]
fn augmentation_errors_name_the_key() {
    let ws = Workspace::new();
    let unknown = with_pipeline(&ws, r#"[{ name = "random_flip" }]"#, "");
    ws.train("x", &[]).success();
    ferrovision(ws.root(), &["train", "--config", s(&unknown)]).failure(&["augmented.toml", "random_flip"]);
    let too_big = with_pipeline(&ws, r#"[{ name = "random_crop", size = 40 }]"#, "");
    ferrovision(ws.root(), &["train", "--config", s(&too_big)]).failure(&["augment.transforms[0] (random_crop).size", "40x40"]);
    let both = with_pipeline(&ws, r#"[{ name = "grayscale" }]"#, "hflip = 0.5\n");
    ferrovision(ws.root(), &["train", "--config", s(&both)]).failure(&["augment.hflip", "augment.transforms"]);
    let bad_mix = with_pipeline(&ws, r#"[{ name = "grayscale" }]"#, "[augment.mix]\nprob = 2.0\n");
    ferrovision(ws.root(), &["train", "--config", s(&bad_mix)]).failure(&["augment.mix.prob"]);
    let run = ws.runs().join("x");
    ferrovision(ws.root(), &["eval", "--run", s(&run), "--transform", "random_flip"]).failure(&["random_flip"]);
    ferrovision(ws.root(), &["eval", "--run", s(&run), "--transform", "grayscale", "--sweep", "p"]).failure(&["KEY=V1"]);
    // Only the run trained on purpose exists.
    assert_eq!(ws.run_folders(), vec!["x".to_string()]);
}

#[test]
fn plateau_early_stopping_and_accumulation_shape_the_run() {
    let ws = Workspace::new();
    // Nothing counts as an improvement (thresholds of 10): the plateau schedule halves the rate
    // after every epoch past the first, and early stopping ends the run after two bad epochs.
    let out = ws.train(
        "options",
        &[
            "--set",
            "train.epochs=6",
            "--set",
            "train.optimizer=\"adamax\"",
            "--set",
            "train.accumulate_batches=2",
            "--set",
            "train.schedule=\"plateau\"",
            "--set",
            "train.plateau.patience=0",
            "--set",
            "train.plateau.factor=0.5",
            "--set",
            "train.plateau.threshold_mode=\"abs\"",
            "--set",
            "train.plateau.threshold=10.0",
            "--set",
            "train.early_stopping.patience=2",
            "--set",
            "train.early_stopping.min_delta=10.0",
        ],
    );
    let stdout = out.success();
    assert!(stdout.contains("early stopping") && stdout.contains("lr reduced to 5e-4"), "{stdout}");
    let run = ws.runs().join("options");
    let metrics: Vec<Value> =
        std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let lrs: Vec<f64> = metrics.iter().map(|m| m["lr"].as_f64().unwrap()).collect();
    assert_eq!(lrs, vec![0.001, 0.001, 0.0005], "{metrics:?}");
    assert_eq!(read_json(&run.join("summary.json"))["epochs_completed"], 3);

    ws.train("bad", &["--set", "train.schedule=\"plateau\"", "--set", "data.val_size=0"])
        .failure(&["train.plateau.monitor", "data.val_size"]);
    ws.train("bad", &["--set", "train.accumulate_batches=0"]).failure(&["train.accumulate_batches"]);
    ws.train("bad", &["--set", "train.milestones=[5, 2]"]).failure(&["train.milestones"]);
}

// ---------------------------------------------------------------------------------------------
// Sweeps and the journal
// ---------------------------------------------------------------------------------------------

#[test]
fn sweep_runs_a_grid_then_the_journal_lists_notes_and_compares() {
    let ws = Workspace::new();
    let config = ws.config();
    let sweep = [
        "sweep",
        "--config",
        s(&config),
        "--grid",
        "train.lr=0.001,0.003",
        "--set",
        "train.epochs=1",
        "--set",
        "experiment.motivation=\"which learning rate\"",
    ];
    let out = ferrovision(ws.root(), &sweep);
    let report = out.success();
    assert!(report.contains("| tiny-0.003 | 0.003 |"), "{report}");
    for file in ["tiny-0.001", "tiny-0.003", "sweep-tiny.csv", "sweep-tiny.html", "sweep-tiny.svg"] {
        assert!(ws.run_folders().contains(&file.to_string()), "{file} missing: {:?}", ws.run_folders());
    }
    // Started again, the finished points are skipped.
    let again = ferrovision(ws.root(), &sweep);
    assert_eq!(again.success().matches("finished earlier, skipped").count(), 2, "{again:#?}");

    let runs = ws.runs();
    let note = ferrovision(ws.root(), &["runs", "note", "tiny-0.003", "Faster start, same end.", "--dir", s(&runs)]);
    note.success();
    assert!(std::fs::read_to_string(runs.join("tiny-0.003/notes.md")).unwrap().contains("Faster start, same end."));
    let list = ferrovision(ws.root(), &["runs", "list", "--dir", s(&runs)]);
    let list = list.success();
    assert!(list.contains("| tiny-0.001 |") && list.contains("sweep-tiny"), "{list}");
    let html = ws.root().join("compare.html");
    let compare = ferrovision(ws.root(), &["runs", "compare", "--tag", "sweep-tiny", "--dir", s(&runs), "--html", s(&html)]);
    assert!(compare.success().contains("train.lr"), "{compare:#?}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && page.contains("which learning rate") && page.contains("Faster start"), "report lacks curves or notes");

    ferrovision(ws.root(), &["sweep", "--config", s(&config), "--grid", "train.lrr=0.1"]).failure(&["lrr"]);
    ferrovision(ws.root(), &["runs", "compare", "nope", "--dir", s(&runs)]).failure(&["nope"]);
}

// ---------------------------------------------------------------------------------------------
// Resume
// ---------------------------------------------------------------------------------------------

/// `command`, on 2 threads: the thread count of a 2-core laptop, where rayon splits every kernel.
fn on_two_threads(cwd: &Path, args: &[&str]) -> Command {
    let mut command = command(cwd, args);
    command.env("RAYON_NUM_THREADS", "2");
    command
}

/// The epochs of `metrics.jsonl` without their timings.
fn logged_metrics(run: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let without_timings = |mut v: Value| {
        let epoch = v.as_object_mut().unwrap();
        for timing in ["seconds", "img_per_s", "data_wait_seconds", "device_wait_seconds"] {
            epoch.remove(timing);
        }
        v
    };
    text.lines().map(|l| without_timings(serde_json::from_str(l).unwrap())).collect()
}

/// Asserts that two runs wrote the same bytes to each of `files`.
fn assert_same_files(a: &Path, b: &Path, files: &[&str]) {
    for file in files {
        let (x, y) = (std::fs::read(a.join(file)).unwrap(), std::fs::read(b.join(file)).unwrap());
        assert!(x == y, "{file} differs between {} and {}", a.display(), b.display());
    }
}

#[test]
fn two_runs_of_one_seed_on_two_threads_are_identical() {
    let ws = Workspace::new();
    // BatchNorm, Winograd and im2col convolutions, SGD: every kernel that sums across threads.
    let settings =
        ["--set", "model.name=\"fast_net\"", "--set", "train.optimizer=\"sgd\"", "--set", "train.lr=0.05", "--set", "model.dropout=0.2"];
    let config = ws.config();
    for id in ["first", "second"] {
        let mut args = vec!["train", "--config", s(&config), "--id", id];
        args.extend_from_slice(&settings);
        Outcome::from_output(on_two_threads(ws.root(), &args).output().unwrap()).success();
    }
    let (first, second) = (ws.runs().join("first"), ws.runs().join("second"));
    assert_eq!(logged_metrics(&first), logged_metrics(&second));
    let files = ["checkpoints/best.bpk", "checkpoints/last.bpk", "resume/model-2.bpk", "resume/optimizer-2.bpk"];
    assert_same_files(&first, &second, &files);
    let (a, b) = (read_json(&first.join("summary.json")), read_json(&second.join("summary.json")));
    assert_eq!((&a["test_acc"], &a["test_loss"]), (&b["test_acc"], &b["test_loss"]));
}

/// The average only observes: with `ema_decay = 0` it is the live model after every step, so the
/// run must be the run without model EMA, bit for bit.
#[test]
fn model_ema_with_decay_zero_reproduces_the_run_without_it() {
    let ws = Workspace::new();
    let config = ws.config();
    let settings = ["--set", "model.name=\"fast_net\"", "--set", "train.epochs=2"];
    for (id, ema) in [("plain", None), ("ema0", Some("train.ema_decay=0.0"))] {
        let mut args = vec!["train", "--config", s(&config), "--id", id];
        args.extend_from_slice(&settings);
        args.extend(ema.iter().flat_map(|set| ["--set", *set]));
        Outcome::from_output(on_two_threads(ws.root(), &args).output().unwrap()).success();
    }
    let (plain, ema) = (ws.runs().join("plain"), ws.runs().join("ema0"));
    assert!(ema.join("resume/ema-2.bpk").is_file(), "the EMA run kept no average");
    assert_eq!(logged_metrics(&plain), logged_metrics(&ema));
    let (a, b) = (read_json(&plain.join("summary.json")), read_json(&ema.join("summary.json")));
    assert_eq!((&a["test_acc"], &a["test_loss"]), (&b["test_acc"], &b["test_loss"]));
}

#[test]
fn a_run_killed_mid_training_resumes_to_the_same_result() {
    let ws = Workspace::new();
    let config = ws.config();
    // Dropout draws from the device RNG, the loader from the seed: both must line up after a resume.
    let settings = ["--set", "train.epochs=8", "--set", "model.dropout=0.3", "--set", "train.schedule=\"cosine\""];
    let mut args = vec!["train", "--config", s(&config), "--id", "whole"];
    args.extend_from_slice(&settings);
    Outcome::from_output(on_two_threads(ws.root(), &args).output().unwrap()).success();

    args[4] = "killed";
    let mut child = on_two_threads(ws.root(), &args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let run = ws.runs().join("killed");
    let logged = || std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |t| t.lines().count());
    let deadline = Instant::now() + Duration::from_secs(120);
    while logged() < 3 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: no chance to save anything.
    child.wait().unwrap();
    let killed_at = logged();
    assert!(killed_at < 8 && !run.join("summary.json").exists(), "killed after {killed_at} epochs");

    let out = Outcome::from_output(on_two_threads(ws.root(), &["train", "--resume", s(&run)]).output().unwrap());
    assert!(out.success().contains("resuming"), "{out:#?}");
    // Bit for bit: every logged value, the checkpoints and the test result.
    let whole = ws.runs().join("whole");
    assert_eq!(logged_metrics(&whole).len(), 8);
    assert_eq!(logged_metrics(&whole), logged_metrics(&run));
    assert_same_files(&whole, &run, &["checkpoints/best.bpk", "checkpoints/last.bpk", "resume/optimizer-8.bpk"]);
    let (a, b) = (read_json(&whole.join("summary.json")), read_json(&run.join("summary.json")));
    assert_eq!((&a["test_acc"], &a["test_loss"]), (&b["test_acc"], &b["test_loss"]));
    let metrics = |id: &str| logged_metrics(&ws.runs().join(id));

    // A finished run resumes only to train longer; an edited config is refused; a missing one too.
    ferrovision(ws.root(), &["train", "--resume", s(&run)]).failure(&["all 8 epochs are done", "train.epochs"]);
    let out = ferrovision(ws.root(), &["train", "--resume", s(&run), "--set", "train.epochs=9"]);
    assert!(out.success().contains("resuming"), "{out:#?}");
    assert_eq!(metrics("killed").len(), 9);
    let edited = std::fs::read_to_string(run.join("config.toml")).unwrap().replace("lr = 0.001", "lr = 0.5");
    std::fs::write(run.join("config.toml"), edited).unwrap();
    ferrovision(ws.root(), &["train", "--resume", s(&run), "--set", "train.epochs=10"]).failure(&["train.lr", "0.001 -> 0.5"]);
    ferrovision(ws.root(), &["train", "--resume", s(&ws.root().join("nothing"))]).failure(&["nothing"]);
}

#[test]
fn a_run_whose_final_test_failed_is_finished_by_resume() {
    let ws = Workspace::new();
    ws.train("tiny", &[]).success();
    let run = ws.runs().join("tiny");
    // The extension trains its epoch, then cannot write the test's confusion matrix.
    std::fs::remove_dir_all(run.join("eval")).unwrap();
    std::fs::write(run.join("eval"), "in the way").unwrap();
    ferrovision(ws.root(), &["train", "--resume", s(&run), "--set", "train.epochs=3"]).failure(&["eval"]);
    assert_eq!(read_json(&run.join("summary.json"))["epochs_completed"], 2, "the failed test rewrote the summary");

    std::fs::remove_file(run.join("eval")).unwrap();
    let out = ferrovision(ws.root(), &["train", "--resume", s(&run)]);
    assert!(out.success().contains("all 3 epochs are done, testing the best checkpoint"), "{out:#?}");
    let summary = read_json(&run.join("summary.json"));
    assert_eq!(summary["epochs_completed"], 3);
    assert_eq!(logged_metrics(&run).len(), 3);
    let eval = ferrovision(ws.root(), &["eval", "--run", s(&run)]);
    let accuracy = format!("{:.2}%", 100.0 * summary["test_acc"].as_f64().unwrap());
    assert!(eval.success().contains(&accuracy), "{eval:#?}");
    // Finished now: a further resume needs more epochs.
    ferrovision(ws.root(), &["train", "--resume", s(&run)]).failure(&["all 3 epochs are done", "train.epochs"]);
}

#[test]
fn a_run_that_ended_in_its_first_epoch_restarts_in_place() {
    let ws = Workspace::new();
    // Adam with a huge rate diverges in the first epoch: the run has a folder and no finished epoch.
    ws.train("early", &["--set", "train.lr=1e30"]).failure(&["train.lr"]);
    let run = ws.runs().join("early");
    assert!(run.join("config.toml").is_file() && !run.join("metrics.jsonl").exists());
    std::fs::write(run.join("notes.md"), "first try diverged\n").unwrap();

    let out = ferrovision(ws.root(), &["train", "--resume", s(&run), "--set", "train.lr=0.001"]);
    assert!(out.success().contains("restarting"), "{out:#?}");
    assert_eq!(logged_metrics(&run).len(), 2);
    assert!(read_json(&run.join("summary.json"))["test_acc"].as_f64().unwrap() > 0.5);
    assert!(std::fs::read_to_string(run.join("config.toml")).unwrap().contains("lr = 0.001"));
    assert_eq!(std::fs::read_to_string(run.join("notes.md")).unwrap(), "first try diverged\n");
    let logs = std::fs::read_dir(run.join("tensorboard")).unwrap().count();
    assert_eq!(logs, 1, "the first attempt's TensorBoard log is still there");
}

#[test]
fn corrupt_checkpoints_are_named_and_the_run_is_left_as_it_was() {
    let ws = Workspace::new();
    ws.train("tiny", &[]).success();
    let run = ws.runs().join("tiny");
    let model = run.join("resume/model-2.bpk");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let before = snapshot(&run);
    ferrovision(ws.root(), &["train", "--resume", s(&run), "--set", "train.epochs=3"]).failure(&["model-2.bpk"]);
    let after = snapshot(&run);
    let changed: std::collections::BTreeSet<_> = before.keys().chain(after.keys()).filter(|k| before.get(*k) != after.get(*k)).collect();
    assert!(changed.is_empty(), "a failed resume changed {changed:?}");

    std::fs::write(&model, &bytes).unwrap();
    let best = run.join("checkpoints/best.bpk");
    let best_bytes = std::fs::read(&best).unwrap();
    std::fs::write(&best, &best_bytes[..best_bytes.len() / 2]).unwrap();
    let before = snapshot(&run);
    ferrovision(ws.root(), &["train", "--resume", s(&run), "--set", "train.epochs=3"]).failure(&["best.bpk"]);
    assert!(before == snapshot(&run), "a resume with a truncated best checkpoint changed the run");

    std::fs::write(&best, b"not a checkpoint").unwrap();
    ferrovision(ws.root(), &["eval", "--run", s(&run)]).failure(&["best.bpk"]);
}

#[test]
fn model_ema_trains_evaluates_and_resumes() {
    let ws = Workspace::new();
    let out = ws.train("ema", &["--set", "train.ema_decay=0.9", "--set", "train.epochs=3"]);
    out.success();
    let run = ws.runs().join("ema");
    let summary = read_json(&run.join("summary.json"));
    assert!(summary["test_acc"].as_f64().unwrap() > 0.6, "{summary}");
    assert!(run.join("resume/ema-3.bpk").is_file());
    // eval of the best checkpoint (the average) reproduces the test accuracy.
    let report = ferrovision(ws.root(), &["eval", "--run", s(&run)]);
    assert_eq!(percent_after(report.success(), "accuracy"), as_printed(summary["test_acc"].as_f64().unwrap()));
    let more = ferrovision(ws.root(), &["train", "--resume", s(&run), "--set", "train.epochs=4"]);
    assert!(more.success().contains("resuming"), "{more:#?}");
    ws.train("bad", &["--set", "train.ema_decay=1.5"]).failure(&["train.ema_decay"]);
}

/// Output into a pipe its reader closed early (`ferrovision models | head -1`) is dropped rather
/// than a panic, and a training run carries on to its test.
#[test]
fn a_closed_stdout_neither_panics_nor_stops_a_run() {
    let ws = Workspace::new();
    let config = ws.config();
    for args in [vec!["models"], vec!["train", "--config", s(&config), "--id", "piped"]] {
        let mut child = command(ws.root(), &args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success() && !stderr.contains("panicked"), "{args:?}: {:?}\n{stderr}", output.status);
    }
    assert!(ws.runs().join("piped").join("summary.json").is_file(), "the piped run finished with its test");
}

/// A folder with one corrupt image: the rest are labelled, the corrupt one is named by its full
/// path in a warning; `--strict` makes that an error after labelling.
#[test]
fn predict_skips_an_unreadable_image_with_a_warning_unless_strict() {
    let ws = Workspace::new();
    ws.train("tiny", &[]).success();
    let run = ws.runs().join("tiny");
    let photos = ws.root().join("photos");
    std::fs::create_dir(&photos).unwrap();
    for i in 0..3 {
        std::fs::copy(ws.data().join(format!("test/red/{i:04}.png")), photos.join(format!("red_{i}.png"))).unwrap();
    }
    std::fs::write(photos.join("broken.png"), b"\x89PNG not really").unwrap();
    let out = ferrovision(ws.root(), &["predict", "--run", s(&run), s(&photos)]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(out.stdout.lines().count(), 3, "{out:#?}");
    let broken = photos.join("broken.png");
    assert!(out.stderr.contains(&format!("warning: {}: not a decodable image", broken.display())), "{out:#?}");
    let strict = ferrovision(ws.root(), &["predict", "--run", s(&run), "--strict", s(&photos)]);
    assert_eq!(strict.stdout.lines().count(), 3, "{strict:#?}");
    assert!(strict.code.is_some_and(|c| c != 0) && strict.stderr.contains("1 of 4 images could not be read"), "{strict:#?}");
}

/// `eval` of a run whose config.toml was edited after training says so and evaluates with the
/// settings the run trained with (its resume state keeps them).
#[test]
fn eval_of_an_edited_run_config_warns_and_uses_the_trained_settings() {
    let ws = Workspace::new();
    ws.train("tiny", &[]).success();
    let run = ws.runs().join("tiny");
    let before = ferrovision(ws.root(), &["eval", "--run", s(&run)]);
    let config = run.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let line = text.lines().find(|l| l.starts_with("normalize = ")).unwrap().to_string();
    let other = if line.contains("\"none\"") { "normalize = \"imagenet\"" } else { "normalize = \"none\"" };
    std::fs::write(&config, text.replace(&line, other)).unwrap();
    let after = ferrovision(ws.root(), &["eval", "--run", s(&run)]);
    assert!(after.stderr.contains("warning:") && after.stderr.contains("augment.normalize"), "{after:#?}");
    assert_eq!(before.success(), after.success(), "evaluated with the trained normalization");
}

/// `train.best_by = "val_acc"`: `best` is the first epoch with the highest validation accuracy,
/// also when the run was resumed half-way; the setting needs a validation split.
#[test]
fn the_best_checkpoint_can_be_chosen_by_validation_accuracy() {
    let ws = Workspace::new();
    let by_accuracy = ["--set", "train.best_by=\"val_acc\"", "--set", "train.lr=0.0003"];
    ws.train("whole", &[&by_accuracy[..], &["--set", "train.epochs=4"]].concat()).success();
    ws.train("resumed", &by_accuracy).success();
    let resumed = ws.runs().join("resumed");
    ferrovision(ws.root(), &["train", "--resume", s(&resumed), "--set", "train.epochs=4"]).success();
    for id in ["whole", "resumed"] {
        let run = ws.runs().join(id);
        let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        let metrics: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let column = |key: &str| -> Vec<f64> { metrics.iter().map(|m| m[key].as_f64().unwrap()).collect() };
        let (accuracy, loss) = (column("val_acc"), column("val_loss"));
        let highest = accuracy.iter().copied().fold(f64::MIN, f64::max);
        let best = accuracy.iter().position(|&a| a == highest).unwrap();
        let lowest_loss = loss.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        // At this learning rate the accuracy peaks early while the loss still falls.
        assert_ne!(best, lowest_loss, "{id}: the choices by accuracy and by loss should differ: {text}");
        let summary = read_json(&run.join("summary.json"));
        assert_eq!(summary["best_epoch"], best + 1, "{id}: {text}");
        assert_eq!(summary["best_val_acc"].as_f64(), Some(highest));
        // `best` holds that epoch's weights: they score its loss on the validation split.
        let val = ferrovision(ws.root(), &["eval", "--run", s(&run), "--split", "val"]);
        assert_eq!(number_after(val.success(), "loss"), loss_printed(loss[best]), "{id}");
    }
    assert_eq!(read_json(&ws.runs().join("whole/summary.json"))["best_epoch"], read_json(&resumed.join("summary.json"))["best_epoch"]);
    ws.train("bad", &["--set", "train.best_by=\"val_acc\"", "--set", "data.val_size=0"]).failure(&["train.best_by", "data.val_size"]);
    ws.train("bad", &["--set", "train.best_by=\"test_acc\""]).failure(&["test_acc", "val_acc"]);
}

/// A sweep with a `train.seed` axis also reports each other point merged over its seeds: the
/// number of seeds and the mean ± standard deviation of the results, in the printed table, a CSV
/// and the HTML report, and as error bars in the chart.
#[test]
fn a_sweep_over_seeds_reports_the_mean_and_spread_of_each_point() {
    let ws = Workspace::new();
    let config = ws.config();
    let grid = ["--grid", "train.lr=0.001,0.003", "--grid", "train.seed=0,1", "--set", "train.epochs=1"];
    let out = ferrovision(ws.root(), &[&["sweep", "--config", s(&config)][..], &grid].concat());
    let report = out.success();
    let runs = ws.runs();
    let test_acc = |id: &str| read_json(&runs.join(id).join("summary.json"))["test_acc"].as_f64().unwrap();
    let (a, b) = (test_acc("tiny-0.001-0"), test_acc("tiny-0.001-1"));
    let (mean, std) = ((a + b) / 2.0, (a - b).abs() / 2f64.sqrt());
    let cell = format!("{:.2} ± {:.2}%", 100.0 * mean, 100.0 * std);
    assert!(report.contains("mean ± standard deviation over train.seed"), "{report}");
    let row = report.lines().find(|l| l.starts_with("| 0.001 | 2 |")).unwrap_or_else(|| panic!("no merged row in:\n{report}"));
    assert!(row.ends_with(&format!("| {cell} |")), "{row} should end with the test accuracy {cell}");
    let csv = std::fs::read_to_string(runs.join("sweep-tiny-seeds.csv")).unwrap();
    assert!(csv.starts_with("train.lr,seeds,best val loss,best val acc,test acc\n") && csv.contains(&cell), "{csv}");
    let html = std::fs::read_to_string(runs.join("sweep-tiny.html")).unwrap();
    assert!(html.contains("Mean ± standard deviation over seeds") && html.contains(&cell), "the HTML report lacks the merged table");
    assert!(std::fs::read_to_string(runs.join("sweep-tiny.svg")).unwrap().contains("train.lr"));
}

/// `eval` of a run folder it may not write to prints the metrics first, then names what it could
/// not write and exits non-zero.
#[test]
fn eval_of_a_read_only_run_shows_its_metrics_then_names_what_it_could_not_write() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        eprintln!("skipped: running as root, which ignores file permissions");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let ws = Workspace::new();
    ws.train("tiny", &[]).success();
    let run = ws.runs().join("tiny");
    let test_acc = read_json(&run.join("summary.json"))["test_acc"].as_f64().unwrap();
    let folders = [run.join("eval"), run.clone()];
    let set_mode = |mode| folders.iter().for_each(|f| std::fs::set_permissions(f, std::fs::Permissions::from_mode(mode)).unwrap());
    set_mode(0o555);
    let out = ferrovision(ws.root(), &["eval", "--run", s(&run)]);
    set_mode(0o755);
    out.failure(&["could not write the confusion matrix", &run.join("eval").display().to_string()]);
    assert_eq!(percent_after(&out.stdout, "accuracy"), as_printed(test_acc), "{out:#?}");
}

/// `predict`'s output options (timm's): CSV and JSON, logits, indices; class names from a table
/// of the user's own for a language, with the English name where it has no word; bad tables and
/// unknown languages are clear errors.
#[test]
fn predict_prints_csv_json_logits_indices_and_translated_names() {
    let ws = Workspace::new();
    ws.train("tiny", &[]).success();
    let run = ws.runs().join("tiny");
    let photos = ws.root().join("photos");
    std::fs::create_dir(&photos).unwrap();
    for i in 0..2 {
        std::fs::copy(ws.data().join(format!("test/red/{i:04}.png")), photos.join(format!("red_{i}.png"))).unwrap();
    }
    let labels = ws.root().join("labels.tsv");
    std::fs::write(&labels, "# my words\nred\trouge, vif\nblue\tbleu\n").unwrap();
    let labels_arg = format!("xx={}", labels.display());
    let base = ["predict", "--run", s(&run), "--top-k", "3", "--labels", &labels_arg, "--lang", "xx"];

    let csv = ferrovision(ws.root(), &[&base[..], &["--format", "csv", s(&photos)]].concat());
    assert!(csv.stderr.contains("xx: 2/3 (66.7%) of the classes"), "{csv:#?}");
    let lines: Vec<&str> = csv.success().lines().collect();
    assert_eq!(lines[0], "file,rank,index,label,label_en,probability");
    assert_eq!(lines.len(), 1 + 2 * 3, "{lines:?}");
    assert!(lines[1].starts_with("red_0.png,1,2,\"rouge, vif\",red,"), "quoted where it holds a comma: {lines:?}");
    assert!(lines.iter().any(|l| l.contains(",1,green,green,")), "no word: the English name: {lines:?}");

    let json =
        ferrovision(ws.root(), &[&base[..], &["--format", "json", "--scores", "logit", "--labels-from-file-names", s(&photos)]].concat());
    let answers: Value = serde_json::from_str(json.success()).unwrap();
    assert!(json.stderr.contains("top-1 100.00% (2/2)"), "the score goes to stderr: {json:#?}");
    let first = &answers[0]["predictions"][0];
    assert_eq!(
        (answers[0]["file"].as_str(), first["label"].as_str(), first["label_en"].as_str()),
        (Some("red_0.png"), Some("rouge, vif"), Some("red"))
    );
    let logits: Vec<f64> = answers[0]["predictions"].as_array().unwrap().iter().map(|p| p["logit"].as_f64().unwrap()).collect();
    assert!(logits.windows(2).all(|w| w[0] >= w[1]) && logits.iter().sum::<f64>() != 1.0, "logits, ranked: {logits:?}");

    let table = ferrovision(ws.root(), &["predict", "--run", s(&run), "--label-type", "index", "--top-k", "1", s(&photos)]);
    assert!(table.success().starts_with("red_0.png\t2 "), "{table:#?}");

    ferrovision(ws.root(), &["predict", "--run", s(&run), "--lang", "qq", s(&photos)]).failure(&["unknown language `qq`", "en, ca, de"]);
    std::fs::write(&labels, "red rouge\n").unwrap();
    ferrovision(ws.root(), &base.iter().copied().chain([s(&photos)]).collect::<Vec<_>>()).failure(&["labels.tsv", "line 1"]);
}

/// `serve` started from the command line on a free port: the page, the model card with the run's
/// accuracy, and a prediction; the process keeps running until stopped.
#[test]
fn serve_answers_over_http_with_the_run_model_card() {
    use std::io::BufRead;
    let ws = Workspace::new();
    ws.train("tiny", &[]).success();
    let run = ws.runs().join("tiny");
    /// Stops the server however the test ends.
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut server =
        Stop(command(ws.root(), &["serve", "--run", s(&run), "--port", "0"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap());
    let mut line = String::new();
    std::io::BufReader::new(server.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).to_string();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let card: Value =
        serde_json::from_str(&agent.get(format!("{base}/v1/model")).call().unwrap().body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(
        (card["architecture"].as_str(), card["num_classes"].as_u64(), card["input_size"].as_u64()),
        (Some("tutorial_net"), Some(3), Some(32))
    );
    assert!(card["accuracy"].as_str().unwrap().contains(&format!("top-1 on {} test images", 3 * TEST_PER_CLASS)), "{card}");
    let red = std::fs::read(ws.data().join("test/red/0000.png")).unwrap();
    let mut response = agent.post(format!("{base}/v1/predict?top_k=1")).send(&red[..]).unwrap();
    let answer: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(answer["predictions"][0]["label"], "red", "{answer}");
    assert!(agent.get(format!("{base}/")).call().unwrap().body_mut().read_to_string().unwrap().contains("id=\"drop\""));
    assert!(server.0.try_wait().unwrap().is_none(), "the server keeps running");
}

/// A trained `fast_net` (narrowed to train in seconds) pruned and fine-tuned in two steps: a new,
/// smaller run that eval, export, predict, viz and resume accept, a report, and the source run
/// untouched.
#[test]
fn prune_fine_tunes_a_smaller_run_that_every_verb_accepts() {
    let ws = Workspace::new();
    let narrow = ["--set", "model.name=\"fast_net\"", "--set", "model.stem_channels=16", "--set", "model.widths=[16, 32, 32]"];
    ws.train("source", &narrow).success();
    let source = ws.runs().join("source");
    let untouched = snapshot(&source);
    let config = std::fs::read_to_string(ws.config()).unwrap().replace("epochs = 2", "epochs = 1");
    let prune = ws.root().join("prune.toml");
    let section =
        format!("\n[prune]\nsource = {:?}\nimportance = \"l1\"\nratio = 0.5\nround_to = 4\nsteps = 2\nkeep = [\"stem\"]\n", s(&source));
    std::fs::write(&prune, config + &section).unwrap();
    let out = ferrovision(ws.root(), &["prune", "--config", s(&prune), "--id", "pruned"]);
    let stdout = out.success();
    assert!(stdout.contains("fewer FLOPs") && stdout.contains("step 2/2"), "{stdout}");
    assert_eq!(snapshot(&source), untouched, "the source run is never modified");
    assert!(ws.run_folders().contains(&"pruned-step1".to_string()) && !ws.run_folders().contains(&"pruned".to_string()));
    let run = ws.runs().join("pruned-step2");
    for file in ["prune_report.md", "prune_report.json", "prune_channels.png", "prune_channels.svg", "checkpoints/pruned.bpk"] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    let report = read_json(&run.join("prune_report.json"));
    let (before, after) = (report["before"]["flops"].as_f64().unwrap(), report["after"]["flops"].as_f64().unwrap());
    assert!(after < 0.5 * before, "{report}");
    for model in ["before", "after"] {
        for figure in ["latency_ms", "throughput", "train_throughput"] {
            assert!(report[model][figure].as_f64().is_some_and(|v| v > 0.0), "{model}.{figure} measured: {report}");
        }
    }
    let stem = report["channels"].as_array().unwrap().iter().find(|c| c[0] == "stem.conv").unwrap();
    assert_eq!(stem[1], stem[2], "kept whole: {stem}");
    let resolved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(resolved.contains("[model.layer_channels]") && resolved.contains("parent = \"pruned-step1\""), "{resolved}");
    assert!(
        read_json(&ws.runs().join("pruned-step1/summary.json"))["trainable_params"].as_u64()
            > read_json(&run.join("summary.json"))["trainable_params"].as_u64()
    );

    // The sensitivity analysis: every group but the stem's at nine ratios, without a run.
    let folders = ws.run_folders();
    let analysis = ws.root().join("sensitivity");
    ferrovision(ws.root(), &["prune", "--config", s(&prune), "--sensitivity", s(&analysis)]).success();
    assert_eq!(ws.run_folders(), folders);
    let csv = std::fs::read_to_string(analysis.join("sensitivity.csv")).unwrap();
    let groups: std::collections::BTreeSet<&str> = csv.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert!(!groups.contains("stem.conv") && groups.contains("stages.0.first.conv"), "{csv}");
    assert_eq!(csv.lines().count(), 1 + 9 * groups.len(), "{csv}");
    assert!(analysis.join("sensitivity.png").is_file() && analysis.join("sensitivity.svg").is_file());

    // The pruned run as any other.
    ferrovision(ws.root(), &["eval", "--run", s(&run)]).success();
    let exported = ws.root().join("pruned.safetensors");
    ferrovision(ws.root(), &["export", "--run", s(&run), "--out", s(&exported)]).success();
    let image = ws.data().join("test/red/0000.png");
    let by_run = ferrovision(ws.root(), &["predict", "--run", s(&run), s(&image)]);
    assert_eq!(by_run.success(), ferrovision(ws.root(), &["predict", "--export", s(&exported), s(&image)]).success());
    let png = ws.root().join("activations.png");
    let layers = "stages.0.first.conv";
    ferrovision(ws.root(), &["viz", "activations", "--run", s(&run), "--image", s(&image), "--layers", layers, "--out", s(&png)]).success();
    ferrovision(ws.root(), &["train", "--resume", s(&run), "--set", "train.epochs=2"]).success();
    let table = ferrovision(ws.root(), &["summary", "--run", s(&run)]);
    let pruned_width = report["channels"].as_array().unwrap().iter().find(|c| c[0] == "stages.0.first.conv").unwrap()[2].as_u64().unwrap();
    let row = table.success().lines().find(|l| l.starts_with("stages.0.first.conv ")).unwrap().to_string();
    assert!(row.contains(&format!(" {pruned_width}x32x32 ")) && pruned_width < 16, "{row}");

    // Taylor importance (gradients of training batches) with global ranking, in one step.
    let taylor = ["--set", "prune.importance=\"taylor\"", "--set", "prune.ranking=\"global\"", "--set", "prune.steps=1"];
    let mut args = vec!["prune", "--config", s(&prune), "--id", "taylor"];
    args.extend(taylor);
    ferrovision(ws.root(), &args).success();
    assert_eq!(read_json(&ws.runs().join("taylor/prune_report.json"))["importance"], "taylor");

    // Bad input: one error naming it, and no run.
    let bad = |sets: &[&str], mentions: &[&str]| {
        let mut args = vec!["prune", "--config", s(&prune), "--id", "bad"];
        args.extend(sets.iter().flat_map(|set| ["--set", set]));
        ferrovision(ws.root(), &args).failure(mentions);
        assert!(!ws.run_folders().iter().any(|f| f.starts_with("bad")), "{sets:?}");
    };
    bad(&["prune.ratio=1.0"], &["prune.ratio", "[0, 1)"]);
    bad(&["prune.keep=[\"stem.nope\"]"], &["prune.keep", "`stem.nope`"]);
    bad(&["prune.ratio=0.99", "prune.steps=1"], &["every channel of group"]);
    bad(&[&format!("prune.source={:?}", s(&ws.data()))], &["prune.source"]);
    assert_eq!(snapshot(&source), untouched);
}
