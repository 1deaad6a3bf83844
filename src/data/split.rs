//! Seeded, class-balanced selections of a set: the test and validation splits held out of the
//! training images, and fixed-size per-class subsets. The same seed always picks the same images.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::config::{DEFAULT_VAL_SIZE, DataConfig, SplitSize};
use super::{Dataset, FileError, ImageSet, Result};

/// The seed of the test split held out of a data set without one: fixed, so that runs with any
/// `train.seed` are tested on the same images.
pub const TEST_SPLIT_SEED: u64 = 0;

/// The splits a run trains, validates and tests on.
#[derive(Debug, PartialEq)]
pub struct Splits {
    pub train: ImageSet,
    pub val: Option<ImageSet>,
    pub test: ImageSet,
}

/// The train, validation and test splits of `dataset` under the `[data]` settings:
/// - test: the data set's own, or (for one without, e.g. a folder of class folders)
///   `data.test_size` images held out of train, stratified, with [`TEST_SPLIT_SEED`];
/// - validation: the data set's own (an image folder's `val/`) unless `data.val_size` = 0, or
///   `data.val_size` (default [`DEFAULT_VAL_SIZE`]) images held out of the rest, stratified,
///   with `seed`. Giving both is refused rather than silently preferring one.
pub fn training_splits(dataset: Dataset, config: &DataConfig, seed: u64) -> Result<Splits> {
    let path = &config.path;
    let num_classes = dataset.classes.len();
    let hold_out = |set: &ImageSet, size: SplitSize, key: &str, split_seed: u64| {
        let count = size.count(set.len());
        if count > set.len() {
            return Err(FileError::invalid(
                path,
                format!(
                    "{key} = {size} is more than the {} images there are to hold it out of; set {key} to a smaller count or a \
                     fraction such as 0.1",
                    set.len()
                ),
            ));
        }
        stratified_split(set, num_classes, count, split_seed)
    };
    let (train, test) = match (dataset.test.is_empty(), config.test_size) {
        (true, Some(size)) if !size.is_zero() => hold_out(&dataset.train, size, "data.test_size", TEST_SPLIT_SEED)?,
        (true, _) => {
            return Err(FileError::invalid(
                path,
                "the data set has no test split (no test/ folder); set data.test_size (a number of images, or a fraction \
                 such as 0.2) to hold a seeded, stratified test split out of its images",
            ));
        }
        (false, Some(size)) if !size.is_zero() => {
            return Err(FileError::invalid(
                path,
                format!(
                    "data.test_size = {size}, but the data set has its own test split ({} images); remove data.test_size",
                    dataset.test.len()
                ),
            ));
        }
        (false, _) => (dataset.train, dataset.test),
    };
    let (train, val) = match (dataset.val, config.val_size) {
        (_, Some(size)) if size.is_zero() => (train, None),
        (Some(val), None) => (train, Some(val)),
        (Some(val), Some(size)) => {
            return Err(FileError::invalid(
                path,
                format!(
                    "data.val_size = {size}, but the data set has its own validation split (val/, {} images), which is used \
                     instead of holding images out of train; remove data.val_size to validate on val/, or set it to 0 for no \
                     validation",
                    val.len()
                ),
            ));
        }
        (None, size) => {
            let (train, val) = hold_out(&train, size.unwrap_or(DEFAULT_VAL_SIZE), "data.val_size", seed)?;
            (train, Some(val))
        }
    };
    Ok(Splits { train, val, test })
}

/// Splits `set` into (train, validation) with `val_size` validation images, each class giving
/// its share in proportion to its size (largest remainders get the leftover images). Both
/// parts keep the set's order.
pub fn stratified_split(set: &ImageSet, num_classes: usize, val_size: usize, seed: u64) -> Result<(ImageSet, ImageSet)> {
    if val_size > set.len() {
        return Err(FileError::Other(format!("validation size {val_size} is larger than the set, which has {} images", set.len())));
    }
    let by_class = shuffled_indices_by_class(set, num_classes, seed)?;
    let quotas = proportional_quotas(&by_class.iter().map(Vec::len).collect::<Vec<_>>(), val_size);
    let mut val = Vec::with_capacity(val_size);
    let mut train = Vec::with_capacity(set.len() - val_size);
    for (indices, quota) in by_class.iter().zip(quotas) {
        val.extend_from_slice(&indices[..quota]);
        train.extend_from_slice(&indices[quota..]);
    }
    val.sort_unstable();
    train.sort_unstable();
    Ok((set.select(&train), set.select(&val)))
}

/// `n` images of each class, picked with `seed`, in the set's order.
pub fn subset_per_class(set: &ImageSet, num_classes: usize, n: usize, seed: u64) -> Result<ImageSet> {
    let by_class = shuffled_indices_by_class(set, num_classes, seed)?;
    if let Some((class, indices)) = by_class.iter().enumerate().find(|(_, indices)| indices.len() < n) {
        return Err(FileError::Other(format!("class {class} has {} images, fewer than the {n} per class asked for", indices.len())));
    }
    let mut picked: Vec<usize> = by_class.iter().flat_map(|indices| indices[..n].iter().copied()).collect();
    picked.sort_unstable();
    Ok(set.select(&picked))
}

/// The indices of each class's images, each list shuffled by one generator seeded with `seed`.
fn shuffled_indices_by_class(set: &ImageSet, num_classes: usize, seed: u64) -> Result<Vec<Vec<usize>>> {
    let mut by_class = vec![Vec::new(); num_classes];
    for (index, &label) in set.labels.iter().enumerate() {
        let class_indices = by_class
            .get_mut(usize::from(label))
            .ok_or_else(|| FileError::Other(format!("image {index} has label {label}, but there are only {num_classes} classes")))?;
        class_indices.push(index);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for indices in &mut by_class {
        indices.shuffle(&mut rng);
    }
    Ok(by_class)
}

/// Splits `total` (at most the sum of `sizes`) over groups in proportion to `sizes`: each gets
/// the floor of its exact share, and the leftover goes one by one to the largest remainders
/// (the lower group first on ties).
fn proportional_quotas(sizes: &[usize], total: usize) -> Vec<usize> {
    let population: usize = sizes.iter().sum();
    if population == 0 {
        return vec![0; sizes.len()];
    }
    let mut quotas: Vec<usize> = sizes.iter().map(|&size| total * size / population).collect();
    let leftover = total - quotas.iter().sum::<usize>();
    let mut by_remainder: Vec<usize> = (0..sizes.len()).collect();
    by_remainder.sort_by_key(|&group| std::cmp::Reverse(total * sizes[group] % population));
    for &group in &by_remainder[..leftover] {
        quotas[group] += 1;
    }
    quotas
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A set of 1x1 images whose pixel holds the image index (mod 256) and whose labels follow
    /// `class_sizes`, classes interleaved.
    fn set_with_class_sizes(class_sizes: &[usize]) -> ImageSet {
        let mut remaining = class_sizes.to_vec();
        let mut labels = Vec::new();
        while remaining.iter().any(|&n| n > 0) {
            for (class, left) in remaining.iter_mut().enumerate() {
                if *left > 0 {
                    labels.push(class as u16);
                    *left -= 1;
                }
            }
        }
        let pixels = (0..labels.len()).flat_map(|i| [i as u8, (i >> 8) as u8, 0]).collect();
        ImageSet { pixels, labels, height: 1, width: 1 }
    }

    /// The original index of each image, read back from its pixel.
    fn origins(set: &ImageSet) -> Vec<usize> {
        (0..set.len()).map(|i| usize::from(set.image(i)[0]) | usize::from(set.image(i)[1]) << 8).collect()
    }

    #[test]
    fn split_is_stratified_complete_and_ordered() {
        let set = set_with_class_sizes(&[500, 300, 200]);
        let (train, val) = stratified_split(&set, 3, 100, 7).unwrap();
        assert_eq!(val.class_counts(3), [50, 30, 20]);
        assert_eq!(train.class_counts(3), [450, 270, 180]);
        let (train_origins, val_origins) = (origins(&train), origins(&val));
        assert!(train_origins.is_sorted() && val_origins.is_sorted());
        let mut all = [train_origins, val_origins].concat();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        for (index, &origin) in origins(&val).iter().enumerate() {
            assert_eq!(val.labels[index], set.labels[origin]);
        }
    }

    #[test]
    fn leftover_goes_to_largest_remainders() {
        assert_eq!(proportional_quotas(&[5, 5, 5], 4), [2, 1, 1]);
        // Shares 2.5, 0.75, 1.75: floors 2, 0, 1, then the two largest remainders.
        assert_eq!(proportional_quotas(&[10, 3, 7], 5), [2, 1, 2]);
        assert_eq!(proportional_quotas(&[10, 3, 7], 20), [10, 3, 7]);
        assert_eq!(proportional_quotas(&[0, 0], 0), [0, 0]);
        let set = set_with_class_sizes(&[5, 5, 5]);
        assert_eq!(stratified_split(&set, 3, 4, 1).unwrap().1.class_counts(3), [2, 1, 1]);
    }

    #[test]
    fn same_seed_same_split() {
        let set = set_with_class_sizes(&[60, 40]);
        let first = stratified_split(&set, 2, 25, 42).unwrap();
        assert_eq!(stratified_split(&set, 2, 25, 42).unwrap(), first);
        assert_ne!(stratified_split(&set, 2, 25, 43).unwrap().1, first.1);
        assert_eq!(subset_per_class(&set, 2, 10, 9).unwrap(), subset_per_class(&set, 2, 10, 9).unwrap());
        assert_ne!(subset_per_class(&set, 2, 10, 9).unwrap(), subset_per_class(&set, 2, 10, 10).unwrap());
    }

    #[test]
    fn split_edges_and_errors() {
        let set = set_with_class_sizes(&[3, 2]);
        let (train, val) = stratified_split(&set, 2, 5, 0).unwrap();
        assert_eq!((train.len(), val.len()), (0, 5));
        let (train, val) = stratified_split(&set, 2, 0, 0).unwrap();
        assert_eq!((train, val.len()), (set.clone(), 0));
        let err = stratified_split(&set, 2, 6, 0).unwrap_err().to_string();
        assert!(err.contains("validation size 6") && err.contains("5 images"), "{err}");
        let err = stratified_split(&set, 1, 1, 0).unwrap_err().to_string();
        assert!(err.contains("label 1") && err.contains("only 1 classes"), "{err}");
    }

    #[test]
    fn subset_picks_n_per_class() {
        let set = set_with_class_sizes(&[8, 5, 6]);
        let subset = subset_per_class(&set, 3, 4, 3).unwrap();
        assert_eq!(subset.class_counts(3), [4, 4, 4]);
        let subset_origins = origins(&subset);
        assert!(subset_origins.is_sorted());
        assert!(subset_origins.iter().zip(&subset.labels).all(|(&o, &l)| set.labels[o] == l));
        let err = subset_per_class(&set, 3, 6, 3).unwrap_err().to_string();
        assert!(err.contains("class 1 has 5 images") && err.contains("6 per class"), "{err}");
    }

    fn dataset(train: ImageSet, val: Option<ImageSet>, test: ImageSet) -> Dataset {
        let classes = vec!["a".into(), "b".into(), "c".into()];
        Dataset { format: crate::data::DataFormat::ImageFolder, classes, class_descriptions: Vec::new(), train, val, test }
    }

    fn data_config(val_size: Option<SplitSize>, test_size: Option<SplitSize>) -> DataConfig {
        DataConfig { path: "photos".into(), val_size, test_size, ..DataConfig::default() }
    }

    #[test]
    fn a_data_set_without_a_test_split_holds_one_out_with_a_fixed_seed() {
        let all = set_with_class_sizes(&[50, 30, 20]);
        let without_test = || dataset(all.clone(), None, ImageSet::empty(1, 1));
        let config = data_config(Some(SplitSize::Fraction(0.1)), Some(SplitSize::Fraction(0.2)));
        let splits = training_splits(without_test(), &config, 7).unwrap();
        assert_eq!(splits.test.class_counts(3), [10, 6, 4]);
        // 10% of the 80 images left, rounded up: 8 (shares 4, 2.4, 1.6; the leftover to the largest remainder).
        assert_eq!(splits.val.as_ref().unwrap().class_counts(3), [4, 2, 2]);
        assert_eq!(splits.train.len(), 72);
        let mut seen = [origins(&splits.train), origins(splits.val.as_ref().unwrap()), origins(&splits.test)].concat();
        seen.sort_unstable();
        assert_eq!(seen, (0..100).collect::<Vec<_>>(), "every image in exactly one split");
        // Another training seed draws another validation split, never another test split.
        let reseeded = training_splits(without_test(), &config, 8).unwrap();
        assert_eq!(reseeded.test, splits.test);
        assert_ne!(reseeded.val, splits.val);
        let counted = training_splits(without_test(), &data_config(Some(SplitSize::Count(0)), Some(SplitSize::Count(25))), 7).unwrap();
        assert_eq!((counted.train.len(), counted.val, counted.test.len()), (75, None, 25));

        for test_size in [None, Some(SplitSize::Count(0))] {
            let err = training_splits(without_test(), &data_config(None, test_size), 7).unwrap_err().to_string();
            assert!(err.starts_with("photos: the data set has no test split") && err.contains("set data.test_size"), "{err}");
        }
        let err = training_splits(without_test(), &data_config(None, Some(SplitSize::Count(101))), 7).unwrap_err().to_string();
        assert!(err.contains("data.test_size = 101 is more than the 100 images"), "{err}");
        // The default validation size (5000) cannot come out of 80 images: the message says what to set.
        let err = training_splits(without_test(), &data_config(None, Some(SplitSize::Count(20))), 7).unwrap_err().to_string();
        assert!(err.contains("data.val_size = 5000 is more than the 80 images") && err.contains("fraction"), "{err}");
    }

    #[test]
    fn an_own_validation_split_is_used_and_giving_both_is_refused() {
        let (train, val, test) = (set_with_class_sizes(&[6, 6, 6]), set_with_class_sizes(&[2, 2, 2]), set_with_class_sizes(&[1, 1, 1]));
        let with_val = || dataset(train.clone(), Some(val.clone()), test.clone());
        let splits = training_splits(with_val(), &data_config(None, None), 3).unwrap();
        assert_eq!(splits, Splits { train: train.clone(), val: Some(val.clone()), test: test.clone() });
        let off = training_splits(with_val(), &data_config(Some(SplitSize::Count(0)), None), 3).unwrap();
        assert_eq!((off.train.len(), off.val), (18, None));
        let err = training_splits(with_val(), &data_config(Some(SplitSize::Count(4)), None), 3).unwrap_err().to_string();
        assert!(err.contains("data.val_size = 4") && err.contains("its own validation split (val/, 6 images)"), "{err}");
        assert!(err.contains("remove data.val_size"), "{err}");
        let err = training_splits(with_val(), &data_config(None, Some(SplitSize::Fraction(0.2))), 3).unwrap_err().to_string();
        assert!(err.contains("data.test_size = 0.2") && err.contains("its own test split (3 images)"), "{err}");
        // Without a val/ split, val_size images come out of train as before.
        let carved = training_splits(dataset(train.clone(), None, test.clone()), &data_config(Some(SplitSize::Count(3)), None), 3).unwrap();
        assert_eq!((carved.train.len(), carved.val.map(|v| v.class_counts(3))), (15, Some(vec![1, 1, 1])));
    }
}
