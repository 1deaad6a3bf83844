//! Throughput benchmarks: the training step of a model on random data, and the loader alone, so
//! the two can be compared (the loader must never be the bottleneck); and single layers whose
//! kernels we replace, against burn's own.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use burn::prelude::*;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Distribution, TensorData};

use crate::augment::transforms::{Context, Pipeline, Transform};
use crate::augment::{Image, InputTransform, NormalizePreset, PaddingMode};
use crate::config::{ModelConfig, TrainConfig};
use crate::data::ImageSet;
use crate::data::loader::{EpochLoader, LoaderConfig};
use crate::kernels::depthwise::depthwise_conv2d;
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
        augment: Some(Pipeline {
            transforms: vec![
                Transform::RandomCrop { size: None, padding: 4, padding_mode: PaddingMode::Reflect },
                Transform::RandomHorizontalFlip { p: 0.5 },
            ],
            context: Context { normalize: NormalizePreset::Cifar10 },
        }),
        mix: None,
        input: InputTransform { size: None, normalize: NormalizePreset::Cifar10 },
        prefetch: 4,
        seed: 0,
    };
    let start = Instant::now();
    let delivered: usize = EpochLoader::start(set, config, 0, 0).map(|b| b.len()).sum();
    delivered as f64 / start.elapsed().as_secs_f64()
}

/// Images per second of `pipeline` plus normalization on the calling thread, on `size` x `size`
/// images (256 distinct synthetic ones: gradients with noise, so histogram ops see varied data).
pub fn augment(pipeline: &Pipeline, size: usize, images: usize) -> Result<f64> {
    pipeline.output_shape(size, size).map_err(|e| anyhow::anyhow!("config key {e}"))?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let sources: Vec<Image> = (0..256)
        .map(|k| {
            let pixels = (0..size * size * 3)
                .map(|i| ((i / 3 % size) * 255 / size + (i / 3 / size) * k % 97 + rng.random_range(0..24)) as u8)
                .collect();
            Image::new(pixels, size, size)
        })
        .collect();
    let input = InputTransform { size: None, normalize: pipeline.context.normalize };
    let mut out = Vec::new();
    let start = Instant::now();
    for i in 0..images {
        let image = pipeline.apply(sources[i % sources.len()].clone(), &mut rng);
        out.resize(3 * image.height * image.width, 0.0);
        input.apply(&image, &mut out);
    }
    Ok(images as f64 / start.elapsed().as_secs_f64())
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

/// One depthwise convolution layer: `channels` planes of `size`x`size`, a `kernel`x`kernel`
/// filter per plane, padding `kernel / 2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthwiseShape {
    pub channels: usize,
    pub size: usize,
    pub kernel: usize,
    pub stride: usize,
}

impl std::fmt::Display for DepthwiseShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}x{} k{} s{}", self.channels, self.size, self.size, self.kernel, self.stride)
    }
}

/// The depthwise layers of MobileNetV2 and EfficientNet-B0 at 224x224 input (one of each
/// distinct shape the two share, plus the EfficientNet-only 5x5 ones).
pub const DEPTHWISE_SHAPES: [DepthwiseShape; 10] = [
    DepthwiseShape { channels: 32, size: 112, kernel: 3, stride: 1 },
    DepthwiseShape { channels: 96, size: 112, kernel: 3, stride: 2 },
    DepthwiseShape { channels: 144, size: 56, kernel: 3, stride: 1 },
    DepthwiseShape { channels: 144, size: 56, kernel: 5, stride: 2 },
    DepthwiseShape { channels: 240, size: 28, kernel: 5, stride: 1 },
    DepthwiseShape { channels: 480, size: 14, kernel: 3, stride: 1 },
    DepthwiseShape { channels: 672, size: 14, kernel: 5, stride: 1 },
    DepthwiseShape { channels: 576, size: 14, kernel: 3, stride: 2 },
    DepthwiseShape { channels: 960, size: 7, kernel: 3, stride: 1 },
    DepthwiseShape { channels: 1152, size: 7, kernel: 5, stride: 1 },
];

/// Which depthwise convolution [`depthwise_step`] times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepthwiseKernel {
    /// `kernels::depthwise::depthwise_conv2d`.
    Ours,
    /// burn's `conv2d` with `groups = channels`.
    Burn,
}

/// Seconds per forward + backward (input and weight gradients) of a depthwise convolution (no
/// bias) on `batch` random inputs, averaged over `steps` after `warmup`. The backward starts
/// from `y.backward()`, i.e. an output gradient of ones, so that no extra operation is timed.
pub fn depthwise_step(shape: DepthwiseShape, kernel_impl: DepthwiseKernel, batch: usize, steps: usize, warmup: usize, device: &Device) -> f64 {
    let device = device.clone().autodiff();
    device.seed(0);
    let DepthwiseShape { channels, size, kernel, stride } = shape;
    let x = Tensor::<4>::random([batch, channels, size, size], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let weight = Tensor::<4>::random([channels, 1, kernel, kernel], Distribution::Normal(0.0, 0.1), &device).require_grad();
    let options = ConvOptions::new([stride, stride], [kernel / 2, kernel / 2], [1, 1], channels);
    let mut timed = 0.0;
    for i in 0..warmup + steps {
        let start = Instant::now();
        let y = match kernel_impl {
            DepthwiseKernel::Ours => depthwise_conv2d(x.clone(), weight.clone(), None, stride, kernel / 2),
            DepthwiseKernel::Burn => conv2d(x.clone(), weight.clone(), None, options.clone()),
        };
        let grads = y.backward();
        let _ = weight.grad(&grads).expect("weight gradient").into_data();
        if i >= warmup {
            timed += start.elapsed().as_secs_f64();
        }
    }
    timed / steps as f64
}
