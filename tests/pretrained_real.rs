//! The shipped ImageNet-pretrained EfficientNet-Lite0 (legacy .pth, from ../shared) labels the 100
//! real ImageNet photos through the CLI, as a user would run it.

use std::path::PathBuf;
use std::process::Command;

mod common;

use common::shared;

#[test]
fn pretrained_lite0_labels_imagenet_photos_at_published_accuracy() {
    let (Some(weights), Some(photos), Some(classes)) = (
        shared("weights/efficientnet-lite0-57934424.pth"),
        shared("data/imagenet-samples-100.tar.gz"),
        shared("data/imagenet-1k-classes.tsv"),
    ) else {
        return;
    };
    let output = Command::new(env!("CARGO_BIN_EXE_ferrovision"))
        .args(["predict", "--model", "efficientnet_lite0", "--weights"])
        .arg(&weights)
        .arg("--classes")
        .arg(&classes)
        .args(["--labels-from-file-names", "--top-k", "5"])
        .arg(&photos)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}\n{}", stdout, String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("imagenet-samples/n01440764_tench.JPEG\ttench "), "{stdout}");
    let summary = stdout.lines().last().unwrap();
    eprintln!("EfficientNet-Lite0 on 100 ImageNet photos: {summary}");
    // "top-1 80.00% (80/100), top-5 ..."
    let correct: usize = summary.split(['(', '/']).nth(1).unwrap().parse().unwrap();
    assert!(summary.ends_with("/100)") && correct >= 70, "top-1 below 70%: {summary}");
}

#[test]
fn finetuning_the_head_of_pretrained_lite0_on_real_cifar10_beats_chance_by_far() {
    let (Some(weights), Some(cifar)) = (shared("weights/efficientnet-lite0-57934424.pth"), shared("data/cifar10-jpeg.tar.gz")) else {
        return;
    };
    let runs = tempfile::tempdir().unwrap();
    // 500 real training images upsampled to 64x64; only the new 10-way classifier trains, on the
    // frozen part's outputs computed once (no random augmentation).
    let mut config = ferrovision::config::ExperimentConfig::from_toml(
        r#"
        [data]
        val_size = 500
        subset_per_class = 50
        test_subset_per_class = 50
        input_size = 64
        [augment]
        crop_padding = 0
        hflip = 0.0
        [model]
        name = "efficientnet_lite0"
        weights = "set below"
        [transfer]
        finetune = "head"
        [train]
        epochs = 3
        batch_size = 25
        lr = 0.02
        schedule = "one_cycle"
        [run]
        progress = false
        "#,
        "test config",
        &[],
    )
    .unwrap();
    assert_eq!(config.augment.normalize, ferrovision::augment::NormalizePreset::Imagenet, "the weights' normalization");
    config.model.weights = Some(weights);
    config.data.path = cifar;
    config.data.cache_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/ferrovision");
    config.run.dir = runs.path().to_path_buf();
    let (_, summary) = ferrovision::train::fit(&config, "lite0-head", &std::sync::atomic::AtomicBool::new(false)).unwrap();
    eprintln!("Lite0 head-only on 500 real CIFAR-10 images at 64x64: test accuracy {:.2}%", 100.0 * summary.test_acc);
    assert_eq!(summary.test_images, 500);
    // Only the new classifier trains: 1280 x 10 + 10; the 3,371,008 others are frozen.
    assert_eq!((summary.trainable_params, summary.frozen_params), (12_810, 3_371_008));
    assert!(summary.test_acc > 0.3, "test accuracy {} is not well above chance (0.10)", summary.test_acc);
}

/// `predict --lang fr` on the 100 ImageNet photos: French names from the shipped table (ImageNet
/// weights need no class table), English where French has none, and the coverage said.
#[test]
fn pretrained_lite0_names_imagenet_photos_in_french() {
    let (Some(weights), Some(photos)) = (shared("weights/efficientnet-lite0-57934424.pth"), shared("data/imagenet-samples-100.tar.gz"))
    else {
        return;
    };
    let output = Command::new(env!("CARGO_BIN_EXE_ferrovision"))
        .args(["predict", "--model", "efficientnet_lite0", "--weights"])
        .arg(&weights)
        .args(["--lang", "fr", "--top-k", "1"])
        .arg(&photos)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("fr: 735/1000 (73.5%) of the classes have a French name"), "{stderr}");
    assert_eq!(stdout.lines().count(), 100, "{stdout}");
    assert!(stdout.contains("imagenet-samples/n01440764_tench.JPEG\ttanche "), "{stdout}");
    assert!(stdout.contains("imagenet-samples/n01641577_bullfrog.JPEG\tgrenouille-taureau "), "{stdout}");
}
