//! Throughput benchmarks: the training step of a model on random data, and the loader alone, so
//! the two can be compared (the loader must never be the bottleneck); and single layers whose
//! kernels we replace, against burn's own.

pub mod profile;
pub mod report;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use burn::prelude::*;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Distribution, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::augment::transforms::{Context, Pipeline, Transform};
use crate::augment::{FlipMode, Image, InputTransform, NormalizePreset, PaddingMode};
use crate::data::ImageSet;
use crate::data::loader::{EpochLoader, LoaderConfig};
use crate::kernels::dense::conv2d_dense;
use crate::kernels::depthwise::depthwise_conv2d;
use crate::kernels::winograd::conv3x3;
use crate::models::ModelConfig;
use crate::models::layers::ConvKernel;
use crate::models::{self, Classifier};
use crate::train::config::TrainConfig;
use crate::train::{MixedPrecision, Precision, loss, optim, step_once};
use burn::optim::ModuleOptimizer;

/// Classes of the models `ferrovision bench` builds (CIFAR-10's).
pub const CLASSES: usize = 10;

/// What a model benchmark runs: a `classes`-way `model` on batches of `batch` random `size` x
/// `size` RGB images, the network computing in `precision`.
#[derive(Clone, Copy, Debug)]
pub struct Workload<'a> {
    pub model: &'a ModelConfig,
    pub classes: usize,
    pub batch: usize,
    pub size: usize,
    pub precision: Precision,
}

/// What a benchmarked training step works on: the workload's model on the autodiff `device`, SGD
/// with momentum 0.9, and one batch of random images with labels.
struct StepBench {
    model: Classifier,
    optimizer: ModuleOptimizer,
    images: Tensor<4>,
    targets: Tensor<2>,
}

impl StepBench {
    fn new(w: &Workload, device: &Device) -> Result<StepBench> {
        let device = device.clone().autodiff();
        device.seed(0);
        let model = models::build(w.model, w.classes, &device)?;
        let optimizer = optim::build(&TrainConfig { momentum: 0.9, ..Default::default() }, &[]);
        let images = Tensor::<4>::random([w.batch, 3, w.size, w.size], Distribution::Normal(0.0, 1.0), &device);
        let labels: Vec<i64> = (0..w.batch as i64).map(|i| i % w.classes as i64).collect();
        let targets = loss::smoothed_targets(&labels, w.classes, 0.0, &device);
        Ok(StepBench { model, optimizer, images, targets })
    }
}

/// Images per second of full training steps (forward, backward, SGD update) of the workload, after
/// `warmup` untimed steps.
pub fn train_step(w: &Workload, steps: usize, warmup: usize, device: &Device) -> Result<f64> {
    let StepBench { mut model, mut optimizer, images, targets } = StepBench::new(w, device)?;
    let mut mixed = MixedPrecision::new(w.precision);
    let mut timed = 0.0;
    for i in 0..warmup + steps {
        let start = Instant::now();
        let (next, loss, _) = step_once(model, &mut optimizer, images.clone(), targets.clone(), 0.01, &mut mixed);
        // Reading the loss waits for the step on asynchronous (GPU) backends.
        loss.into_scalar::<f32>();
        model = next;
        if i >= warmup {
            timed += start.elapsed().as_secs_f64();
        }
    }
    Ok((w.batch * steps) as f64 / timed)
}

/// A matrix product `C[m, n] = A[m, k] B[k, n]`: the im2col form of a convolution's forward pass
/// (m = batch x output pixels, k = input channels x kernel area, n = output channels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmShape {
    pub m: usize,
    pub k: usize,
    pub n: usize,
}

impl GemmShape {
    pub fn flops(self) -> f64 {
        2.0 * (self.m * self.k * self.n) as f64
    }
}

/// The forward GEMM of each dense convolution of a model (depthwise ones are no GEMM) at `batch`
/// and a `size` x `size` input, named by layer, in the order they run.
pub fn conv_gemm_shapes(model_config: &ModelConfig, batch: usize, size: usize) -> Result<Vec<(String, GemmShape)>> {
    let device = Device::flex();
    let model = models::build(model_config, 10, &device)?;
    let (_, layers) = models::trace::summarize(&model, Tensor::zeros([1, 3, size, size], &device), true);
    Ok(layers
        .into_iter()
        .filter_map(|layer| {
            let [out_channels, in_per_group, kh, kw] = layer.kernel.as_ref()?.dims();
            let depthwise = in_per_group == 1 && kh * kw > 1;
            let pixels = layer.output[1] * layer.output[2];
            (!depthwise).then(|| (layer.name, GemmShape { m: batch * pixels, k: in_per_group * kh * kw, n: out_channels }))
        })
        .collect())
}

/// Seconds per `shape` product with the `gemm` crate (the kernel burn-flex's convolutions and
/// matmuls run on), row-major f32, on all of rayon's threads, after one untimed product.
pub fn sgemm_seconds(shape: GemmShape, steps: usize) -> f64 {
    let GemmShape { m, k, n } = shape;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut c = vec![0f32; m * n];
    let parallelism = gemm::Parallelism::Rayon(rayon::current_num_threads());
    let mut run = || {
        // SAFETY: a, b and c hold m*k, k*n and m*n elements, row-major (column stride 1, row
        // stride the row length), as the strides passed say.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
    };
    run();
    let start = Instant::now();
    for _ in 0..steps.max(1) {
        run();
    }
    start.elapsed().as_secs_f64() / steps.max(1) as f64
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
                Transform::RandomHorizontalFlip { p: 0.5, mode: FlipMode::Random },
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
    pipeline.output_shape(size, size)?;
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
        let image = pipeline.apply(sources[i % sources.len()].clone(), None, &mut rng);
        out.resize(3 * image.height * image.width, 0.0);
        input.apply(&image, &mut out);
    }
    Ok(images as f64 / start.elapsed().as_secs_f64())
}

/// Images per second of evaluation-mode forward passes of the workload.
pub fn inference(w: &Workload, steps: usize, device: &Device) -> Result<f64> {
    let model = models::build(w.model, w.classes, device)?;
    let images = Tensor::<4>::from_data(TensorData::new(vec![0.5f32; w.batch * 3 * w.size * w.size], [w.batch, 3, w.size, w.size]), device);
    let _ = w.precision.logits(&model, images.clone()).into_data();
    let start = Instant::now();
    for _ in 0..steps {
        let _ = w.precision.logits(&model, images.clone()).into_data();
    }
    Ok((w.batch * steps) as f64 / start.elapsed().as_secs_f64())
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

/// Which implementation of a layer a benchmark times, or whose kernels a model runs on
/// (`bench train|infer --kernels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kernel {
    /// Ours: `kernels::depthwise::depthwise_conv2d`, `kernels::winograd::conv3x3`.
    Ours,
    /// burn's `conv2d` (with `groups = channels` for depthwise layers).
    Burn,
}

/// Seconds per forward + backward (input and weight gradients) of a depthwise convolution (no
/// bias) on `batch` random inputs, averaged over `steps` after `warmup`. The backward starts
/// from `y.backward()`, i.e. an output gradient of ones, so that no extra operation is timed.
pub fn depthwise_step(shape: DepthwiseShape, kernel_impl: Kernel, batch: usize, steps: usize, warmup: usize, device: &Device) -> f64 {
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
            Kernel::Ours => depthwise_conv2d(x.clone(), weight.clone(), None, stride, [kernel / 2; 2]),
            Kernel::Burn => conv2d(x.clone(), weight.clone(), None, options.clone()),
        };
        let grads = y.backward();
        let _ = weight.grad(&grads).expect("weight gradient").into_data();
        if i >= warmup {
            timed += start.elapsed().as_secs_f64();
        }
    }
    timed / steps as f64
}

/// A dense 3x3 stride-1 convolution layer: `in_channels` planes of `size`x`size` in,
/// `out_channels` planes out, zero padding `padding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv3x3Shape {
    pub in_channels: usize,
    pub out_channels: usize,
    pub size: usize,
    pub padding: usize,
}

impl Conv3x3Shape {
    fn out_size(&self) -> usize {
        self.size + 2 * self.padding - 2
    }

    /// Floating-point operations of the forward pass as a direct convolution computes it (a
    /// multiply-add = 2), for `batch` images; backward for input and weights is twice this.
    pub fn flops(&self, batch: usize) -> f64 {
        2.0 * 9.0 * (batch * self.in_channels * self.out_channels * self.out_size() * self.out_size()) as f64
    }
}

impl std::fmt::Display for Conv3x3Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}->{}@{}x{} p{}", self.in_channels, self.out_channels, self.size, self.size, self.padding)
    }
}

/// The dense 3x3 stride-1 convolutions of a model at a `size` x `size` input, in the order they
/// run, runs of equal shapes merged: `(shape, layers)`.
pub fn conv3x3_shapes(model_config: &ModelConfig, size: usize) -> Result<Vec<(Conv3x3Shape, usize)>> {
    let device = Device::flex();
    let model = models::build(model_config, 10, &device)?;
    let (_, layers) = models::trace::summarize(&model, Tensor::zeros([1, 3, size, size], &device), true);
    let mut shapes: Vec<(Conv3x3Shape, usize)> = Vec::new();
    for layer in layers {
        let Some([out_channels, in_channels, 3, 3]) = layer.kernel.as_ref().map(|k| k.dims()) else { continue };
        let (&[channels, height, width], &[_, out_height, _]) = (&layer.input[..], &layer.output[..]) else { continue };
        if channels != in_channels || layer.stride != [1, 1] || height != width {
            continue;
        }
        let shape = Conv3x3Shape { in_channels, out_channels, size: height, padding: (out_height + 2 - height) / 2 };
        match shapes.last_mut() {
            Some((last, count)) if *last == shape => *count += 1,
            _ => shapes.push((shape, 1)),
        }
    }
    Ok(shapes)
}

/// Seconds per pass of a dense 3x3 stride-1 convolution (no bias) on `batch` random inputs,
/// averaged over `steps` after `warmup`, run by `kernel` (Winograd, our im2col products or burn's
/// conv2d): the forward alone (`training` false, no autodiff), or forward + backward for input and
/// weights (the output gradient is ones, from `y.backward()`).
pub fn conv3x3_seconds(
    shape: Conv3x3Shape,
    kernel: ConvKernel,
    training: bool,
    batch: usize,
    steps: usize,
    warmup: usize,
    device: &Device,
) -> f64 {
    let device = if training { device.clone().autodiff() } else { device.clone() };
    device.seed(0);
    let Conv3x3Shape { in_channels, out_channels, size, padding } = shape;
    let mut x = Tensor::<4>::random([batch, in_channels, size, size], Distribution::Normal(0.0, 1.0), &device);
    let mut weight = Tensor::<4>::random([out_channels, in_channels, 3, 3], Distribution::Normal(0.0, 0.1), &device);
    if training {
        (x, weight) = (x.require_grad(), weight.require_grad());
    }
    let mut timed = 0.0;
    for i in 0..warmup + steps {
        let start = Instant::now();
        let y = match kernel {
            ConvKernel::Winograd => conv3x3(x.clone(), weight.clone(), None, padding),
            ConvKernel::Dense => conv2d_dense(x.clone(), weight.clone(), None, [1, 1], [padding, padding]),
            ConvKernel::Burn => conv2d(x.clone(), weight.clone(), None, ConvOptions::new([1, 1], [padding, padding], [1, 1], 1)),
            ConvKernel::Depthwise => panic!("conv3x3_seconds: dense convolutions only"),
        };
        if training {
            let grads = y.backward();
            let _ = (x.grad(&grads).expect("input gradient").into_data(), weight.grad(&grads).expect("weight gradient").into_data());
        } else {
            let _ = y.into_data();
        }
        if i >= warmup {
            timed += start.elapsed().as_secs_f64();
        }
    }
    timed / steps as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(name: &str, batch: usize, size: usize) -> Vec<(String, GemmShape)> {
        conv_gemm_shapes(&ModelConfig { name: name.into(), ..Default::default() }, batch, size).unwrap()
    }

    #[test]
    fn conv_gemms_are_the_im2col_products_of_the_dense_convolutions() {
        let resnet = shapes("resnet18_cifar", 8, 32);
        assert_eq!(resnet.len(), 20, "17 3x3 convs + 3 projection shortcuts");
        assert_eq!(resnet[0], ("stem.conv".to_string(), GemmShape { m: 8 * 32 * 32, k: 27, n: 64 }));
        assert_eq!(resnet.last().unwrap().1, GemmShape { m: 8 * 4 * 4, k: 512 * 9, n: 512 });
        // MobileNetV2: the depthwise convs are left out, the 1x1 ones kept.
        let mobilenet = shapes("mobilenet_v2", 1, 224);
        assert!(mobilenet.iter().all(|(name, _)| !name.contains("depthwise")), "{mobilenet:?}");
        assert!(mobilenet.iter().any(|(name, s)| name.ends_with("project.conv") && s.k == 32));
        assert!(sgemm_seconds(GemmShape { m: 17, k: 5, n: 3 }, 1) > 0.0);
    }
}
