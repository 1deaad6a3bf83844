//! A pruning + fine-tune smoke run on real CIFAR-10 images (from ../shared): a short fast_net run
//! on 3,000 images, half of its FLOPs pruned, one epoch of fine-tuning, tested on 2,000 real images.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use ferrovision::config::ExperimentConfig;

mod common;

const DATA: &str = r#"
[data]
val_size = 1000
subset_per_class = 300
test_subset_per_class = 200
[train]
batch_size = 64
lr = 0.05
nesterov = true
schedule = "one_cycle"
label_smoothing = 0.1
seed = 0
[run]
progress = false
tensorboard = false
"#;

fn config(extra: &str, data: &std::path::Path, runs: &std::path::Path) -> ExperimentConfig {
    let mut config = ExperimentConfig::from_toml(&format!("{DATA}\n{extra}"), "test config", &[]).unwrap();
    config.data.path = data.to_path_buf();
    config.data.cache_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/ferrovision");
    config.run.dir = runs.to_path_buf();
    config
}

#[test]
fn pruning_half_the_flops_of_a_real_cifar10_model_keeps_it_well_above_chance() {
    let Some(data) = common::shared("data/cifar10-jpeg.tar.gz") else { return };
    let runs = tempfile::tempdir().unwrap();
    let source = config("[model]\nname = \"fast_net\"\n", &data, runs.path());
    let mut source = source;
    source.train.epochs = 3;
    let (run, trained) = ferrovision::train::fit(&source, "source", &AtomicBool::new(false)).unwrap();

    let section = format!(
        "[prune]\nsource = {:?}\nflops_reduction = 0.5\nkeep = [\"stem\"]\nround_to = 8\nmeasure_speed = false\n",
        run.path.display().to_string()
    );
    let mut prune = config(&section, &data, runs.path());
    prune.train.epochs = 1;
    prune.train.lr = 0.01;
    let (_, report) = ferrovision::prune::prune(&prune, "pruned", &AtomicBool::new(false)).unwrap();
    let step = &report.steps[0];
    eprintln!(
        "real CIFAR-10: source {:.2}%, pruned to {:.1}% of the FLOPs: {:.2}% before fine-tuning, {:.2}% after one epoch",
        100.0 * trained.test_acc,
        100.0 * report.after.flops as f64 / report.before.flops as f64,
        100.0 * step.accuracy_pruned,
        100.0 * step.accuracy_finetuned
    );
    assert_eq!(report.accuracy_before, trained.test_acc, "the source evaluates as it tested");
    assert!(report.after.flops as f64 <= 0.5 * report.before.flops as f64);
    assert!(step.accuracy_finetuned > 0.3, "fine-tuned accuracy {} is not well above chance", step.accuracy_finetuned);
    assert!(step.accuracy_finetuned > trained.test_acc - 0.15, "fine-tuning lost {} -> {}", trained.test_acc, step.accuracy_finetuned);
}
