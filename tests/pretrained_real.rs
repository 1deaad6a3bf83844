//! The shipped ImageNet-pretrained EfficientNet-Lite0 (legacy .pth, from ../shared) labels the 100
//! real ImageNet photos through the CLI, as a user would run it.

use std::path::PathBuf;
use std::process::Command;

fn shared(relative: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared").join(relative);
    if path.exists() {
        Some(path)
    } else {
        eprintln!("skipping: {} is absent (the real data lives in ../shared beside the checkout)", path.display());
        None
    }
}

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
