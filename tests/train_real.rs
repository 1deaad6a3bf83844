//! A real short training run on real CIFAR-10 images (from ../shared), tested on real test images.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use ferrovision::config::ExperimentConfig;

mod common;

#[test]
fn short_run_on_real_cifar10_beats_chance_by_far() {
    let Some(data) = common::shared("data/cifar10-jpeg.tar.gz") else { return };
    let runs = tempfile::tempdir().unwrap();
    // 3,000 training images (300 per class), 1,000 for validation, 2,000 real test images.
    let mut config = ExperimentConfig::from_toml(
        r#"
        [data]
        val_size = 1000
        subset_per_class = 300
        test_subset_per_class = 200
        [model]
        name = "fast_net"
        [train]
        epochs = 4
        batch_size = 64
        lr = 0.05
        nesterov = true
        schedule = "one_cycle"
        label_smoothing = 0.1
        [run]
        progress = false
        "#,
        "test config",
        &[],
    )
    .unwrap();
    config.data.path = data;
    config.data.cache_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/ferrovision");
    config.run.dir = runs.path().to_path_buf();
    let (run, summary) = ferrovision::train::fit(&config, "real", &AtomicBool::new(false)).unwrap();
    eprintln!(
        "real CIFAR-10, 3,000 train images, 4 epochs: test accuracy {:.2}% on {} images",
        100.0 * summary.test_acc,
        summary.test_images
    );
    assert_eq!(summary.test_images, 2000);
    assert_eq!(summary.classes.len(), 10);
    assert_eq!(summary.classes[3], "cat");
    assert!(summary.test_acc > 0.35, "test accuracy {} is not well above chance (0.10)", summary.test_acc);
    assert!(run.checkpoint("best").is_file() && run.checkpoint("last").is_file());
}

/// The speed-run recipe as committed (network, whitening fitted to the data, parameter groups,
/// lookahead, alternating flips, TTA), shortened to a few thousand real images.
#[test]
fn the_speedrun_recipe_learns_on_real_cifar10() {
    let Some(data) = common::shared("data/cifar10-jpeg.tar.gz") else { return };
    let runs = tempfile::tempdir().unwrap();
    let recipe = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/cifar10/speedrun94.toml");
    let overrides =
        ["data.subset_per_class=400", "data.test_subset_per_class=100", "train.epochs=2", "train.batch_size=256", "run.progress=false"];
    let mut config = ExperimentConfig::load(&recipe, &overrides.map(String::from)).unwrap();
    config.data.path = data;
    config.data.cache_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/ferrovision");
    config.run.dir = runs.path().to_path_buf();
    let (_, summary) = ferrovision::train::fit(&config, "speedrun", &AtomicBool::new(false)).unwrap();
    eprintln!(
        "speed-run recipe, 4,000 real train images, 2 epochs: test accuracy {:.2}% on {} images",
        100.0 * summary.test_acc,
        summary.test_images
    );
    assert_eq!(summary.test_images, 1000);
    assert!(summary.test_acc > 0.35, "test accuracy {} is not well above chance (0.10)", summary.test_acc);
}
