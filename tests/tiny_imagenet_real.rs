//! Tiny ImageNet-200 read end to end from the real copy in ../shared (the full val set and the
//! first 100 training images of each class, as a .tar.gz under `tiny-imagenet-200/`), through the
//! decoded-image cache. Skipped with a message when ../shared is absent.

mod common;

use std::time::Instant;

use ferrovision::data::archive::Source;
use ferrovision::data::classes::ClassNames;
use ferrovision::data::{DataFormat, LoadOptions, describe, load_dataset};

#[test]
fn reads_real_tiny_imagenet_and_caches_it() {
    let Some(path) = common::shared("data/tiny-imagenet-200-sub100.tar.gz") else { return };
    let cache_dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let dataset = load_dataset(&path, Some(cache_dir.path()), &LoadOptions::default()).unwrap();
    let first_load = started.elapsed();
    let started = Instant::now();
    let cached = load_dataset(&path, Some(cache_dir.path()), &LoadOptions::default()).unwrap();
    let second_load = started.elapsed();
    eprintln!(
        "real Tiny ImageNet (30,000 images): first load {first_load:.2?} (decode + cache write), \
         second load {second_load:.2?} (cache)"
    );

    assert_eq!(dataset.format, DataFormat::TinyImagenet);
    assert_eq!(dataset.classes.len(), 200);
    assert!(dataset.classes.windows(2).all(|pair| pair[0] < pair[1]), "classes are the sorted wnids");
    assert_eq!((dataset.train.len(), dataset.test.len()), (20_000, 10_000));
    assert_eq!(dataset.train.class_counts(200), [100; 200]);
    assert_eq!(dataset.test.class_counts(200), [50; 200]);
    for set in [&dataset.train, &dataset.test] {
        assert_eq!((set.height, set.width), (64, 64));
    }

    let goldfish = dataset.classes.iter().position(|wnid| wnid == "n01443537").unwrap();
    assert_eq!(dataset.class_descriptions.len(), 200);
    assert_eq!(dataset.class_descriptions[goldfish], "goldfish, Carassius auratus");
    // What reports print: the first synonym, the wnid beside it.
    let classes = ClassNames::of(&dataset);
    assert_eq!((classes.names[goldfish].as_str(), classes.label(goldfish).as_str()), ("goldfish", "goldfish (n01443537)"));

    // val_0.JPEG is n03444034, and the first of that class's test images (they are sorted by file name).
    let class = dataset.classes.iter().position(|wnid| wnid == "n03444034").unwrap();
    let first = dataset.test.labels.iter().position(|&label| usize::from(label) == class).unwrap();
    let files = Source::new(&path).read_files(|p| p == "tiny-imagenet-200/val/images/val_0.JPEG").unwrap();
    let val_0 = image::load_from_memory(&files[0].1).unwrap().into_rgb8();
    assert_eq!(dataset.test.image(first), val_0.as_raw().as_slice());

    // The grayscale JPEGs arrive as RGB with three equal channels.
    let gray =
        (0..dataset.train.len()).filter(|&i| dataset.train.image(i).chunks(3).all(|rgb| rgb[0] == rgb[1] && rgb[1] == rgb[2])).count();
    eprintln!("{gray} of the 20,000 train images are grayscale");
    assert!(gray > 0);

    let text = describe(&dataset);
    assert!(text.starts_with("format: tiny-imagenet\nimage size: 64x64 RGB"), "{text}");
    assert!(text.contains("n01443537       100        50  goldfish, Carassius auratus\n"), "{text}");
    assert!(cached == dataset, "the cached copy differs from the decoded one");
}
