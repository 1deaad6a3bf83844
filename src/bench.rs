//! Throughput benchmarks: the training step of a model on random data, and the loader alone, so
//! the two can be compared (the loader must never be the bottleneck).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use burn::prelude::*;
use burn::tensor::{Distribution, TensorData};

use crate::augment::{InputTransform, NormalizePreset, PaddingMode, RandomCrop, RandomHorizontalFlip, TrainAugment};
use crate::config::{ModelConfig, TrainConfig};
use crate::data::ImageSet;
use crate::data::loader::{EpochLoader, LoaderConfig};
use crate::models;
use crate::train::{loss, optim, step_once};

/// Images per second of full training steps (forward, backward, SGD update) at `batch` on random
/// `size` x `size` RGB inputs, after `warmup` untimed steps.
pub fn train_step(model_config: &ModelConfig, batch: usize, size: usize, steps: usize, warmup: usize, device: &Device) -> Result<f64> {
    let device = device.clone().autodiff();
    device.seed(0);
    let num_classes = 10;
    let mut model = models::build(model_config, num_classes, &device)?;
    let mut optimizer = optim::build(&TrainConfig { momentum: 0.9, ..Default::default() }, None);
    let images = Tensor::<4>::random([batch, 3, size, size], Distribution::Normal(0.0, 1.0), &device);
    let labels: Vec<i64> = (0..batch as i64).map(|i| i % num_classes as i64).collect();
    let targets = loss::smoothed_targets(&labels, num_classes, 0.0, &device);
    let mut timed = 0.0;
    for i in 0..warmup + steps {
        let start = Instant::now();
        // step_once reads the loss value, which waits for the step on asynchronous backends.
        model = step_once(model, &mut optimizer, images.clone(), targets.clone(), 0.01).0;
        if i >= warmup {
            timed += start.elapsed().as_secs_f64();
        }
    }
    Ok((batch * steps) as f64 / timed)
}

/// Images per second the loader delivers (crop + flip + normalize on its thread) for 32x32 images.
pub fn loader(batch: usize, images: usize) -> f64 {
    let pixels = (0..images * 32 * 32 * 3).map(|i| (i * 31 % 256) as u8).collect();
    let set = Arc::new(ImageSet { pixels, labels: (0..images).map(|i| (i % 10) as u16).collect(), height: 32, width: 32 });
    let config = LoaderConfig {
        batch_size: batch,
        shuffle: true,
        drop_last: true,
        augment: Some(TrainAugment {
            crop: Some(RandomCrop { padding: 4, padding_mode: PaddingMode::Reflect }),
            flip: Some(RandomHorizontalFlip { p: 0.5 }),
        }),
        input: InputTransform { size: None, normalize: NormalizePreset::Cifar10 },
        prefetch: 4,
        seed: 0,
    };
    let start = Instant::now();
    let delivered: usize = EpochLoader::start(set, config, 0, 0).map(|b| b.len()).sum();
    delivered as f64 / start.elapsed().as_secs_f64()
}

/// Images per second of evaluation-mode forward passes.
pub fn inference(model_config: &ModelConfig, batch: usize, size: usize, steps: usize, device: &Device) -> Result<f64> {
    let model = models::build(model_config, 10, device)?;
    let images = Tensor::<4>::from_data(TensorData::new(vec![0.5f32; batch * 3 * size * size], [batch, 3, size, size]), device);
    let _ = model.forward(images.clone()).into_data();
    let start = Instant::now();
    for _ in 0..steps {
        let _ = model.forward(images.clone()).into_data();
    }
    Ok((batch * steps) as f64 / start.elapsed().as_secs_f64())
}
