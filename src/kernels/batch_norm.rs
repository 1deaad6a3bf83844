//! BatchNorm in training mode (statistics of the batch), fused into few passes over the data.
//!
//! burn-flex computes `batch_norm_train` and its backward from generic tensor ops: transposes to
//! `[channels, ...]`, separate reductions and broadcasts, each a pass over the activation and a
//! new buffer (`bench train --profile` shows BatchNorm at 15% of a ResNet-18-CIFAR step). Here
//! the forward pass is two reads (statistics) and one read + write (normalize), the backward one
//! read of `x` and `dy` for the two sums per channel and one pass for the input gradient, with no
//! layout copies. [`forward`] behaves as `BatchNorm::forward`, running statistics included.
//! Evaluation (a device without autodiff) is one pass with the running statistics; frozen layers
//! on an autodiff device and other devices are left to burn.
//!
//! The activation that follows (ReLU, ReLU6, SiLU, GELU) runs inside the same passes: the forward
//! pass writes `act(x̂ gamma + beta)`, the backward recomputes `x̂ gamma + beta` from `x` and
//! applies the activation's derivative to `dy` as it reads it. An activation of its own costs a
//! read and a write of the tensor forward, two reads and a write backward, and keeps the
//! BatchNorm's output alive for the backward pass.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::BatchNorm;
use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

use super::activation::Act;
use super::{OptionalTensor, SharedSlice, contiguous, f32s, plane_moments};

/// `act.apply(bn.forward(x))` for `x` `[batch, channels, height, width]`, through our kernels when
/// `bn` trains on the flex device (and `kernels::enabled()`).
pub fn forward(bn: &BatchNorm, x: Tensor<4>, act: Act) -> Tensor<4> {
    forward_with_moments(bn, x, None, act)
}

/// [`forward`] where the convolution that computed `x` also gave its planes' `moments` (see
/// `kernels::plane_moments`), used in training.
pub fn forward_with_moments(bn: &BatchNorm, x: Tensor<4>, moments: Option<Tensor<1>>, act: Act) -> Tensor<4> {
    let device = x.device();
    let evaluation = !device.is_autodiff();
    if !(trains_on_kernel(bn, &x) || evaluation && on_kernel(bn, &x)) {
        return act.apply(bn.forward(x));
    }
    let channels = x.dims()[1];
    assert_eq!(bn.gamma.dims(), [channels], "BatchNorm: input {:?} does not have {} channels", x.dims(), bn.gamma.dims()[0]);
    let (gamma, beta) = (bn.gamma.val().into_dispatch(), bn.beta.val().into_dispatch());
    if evaluation {
        let stats = Tensor::cat(vec![bn.running_mean.value(), bn.running_var.value()], 0).into_dispatch();
        return Tensor::from_dispatch(<Dispatch as BatchNormEvalBackend>::batch_norm_eval(
            x.into_dispatch(),
            gamma,
            beta,
            stats,
            bn.epsilon,
            act,
        ));
    }
    // Training normalizes with the batch's mean and biased variance, computed in the same passes
    // and outside the graph (the backward accounts for them).
    let moments = OptionalTensor::from_option(moments.map(Tensor::into_dispatch));
    let (output, stats) = <Dispatch as BatchNormBackend>::batch_norm_train(x.into_dispatch(), gamma, beta, moments, bn.epsilon, act);
    update_running_statistics(bn, Tensor::from_dispatch(stats));
    Tensor::from_dispatch(output)
}

/// Plane moments (`kernels::plane_moments`, a contiguous f64 tensor) as `[mean, Σ (x - mean)²]`
/// pairs, one per plane.
pub(super) fn moment_pairs(moments: &FlexTensor) -> &[[f64; 2]] {
    moments.as_slice::<f64>().expect("plane moments are contiguous f64").as_chunks().0
}

/// Moves `bn`'s running statistics towards the batch's `stats` (`[mean.., variance..]`), as burn's
/// BatchNorm does in training.
pub(super) fn update_running_statistics(bn: &BatchNorm, stats: Tensor<1>) {
    let channels = bn.gamma.dims()[0];
    let device = stats.device();
    let (mean, variance) = (stats.clone().slice(0..channels), stats.slice(channels..2 * channels));
    let momentum = bn.momentum;
    let running_mean = bn.running_mean.value_sync().to_device(&device).mul_scalar(1.0 - momentum).add(mean.mul_scalar(momentum));
    let running_var = bn.running_var.value_sync().to_device(&device).mul_scalar(1.0 - momentum).add(variance.mul_scalar(momentum));
    bn.running_mean.update(running_mean.detach());
    bn.running_var.update(running_var.detach());
    // `update` parks the value until the next `value_sync`; module visitors and mappers (model
    // EMA, lookahead) read the stored value, so store it now.
    bn.running_mean.value_sync();
    bn.running_var.value_sync();
}

/// Whether [`forward`] trains `bn` on `x` (a training layer on the flex autodiff device) on our
/// kernel.
pub fn trains_on_kernel(bn: &BatchNorm, x: &Tensor<4>) -> bool {
    x.device().is_autodiff() && bn.training.is_enabled() && on_kernel(bn, x)
}

fn on_kernel(bn: &BatchNorm, x: &Tensor<4>) -> bool {
    super::enabled() && x.dtype() == DType::F32 && bn.gamma.val().dtype() == DType::F32 && x.device().inner() == Device::flex()
}

/// Evaluation: the normalization with the running statistics `stats` (`[mean.., variance..]`),
/// then `act` (flex only, outside any graph).
#[backend_extension(Flex)]
trait BatchNormEvalBackend: Backend {
    fn batch_norm_eval(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        epsilon: f64,
        act: Act,
    ) -> FloatTensor<Self>;
}

impl BatchNormEvalBackend for Flex {
    fn batch_norm_eval(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, stats: FlexTensor, epsilon: f64, act: Act) -> FlexTensor {
        let shape = x.shape();
        let [batch, _, height, width] = shape.dims();
        let (x, gamma, beta, stats) = (contiguous(x), contiguous(gamma), contiguous(beta), contiguous(stats));
        let layer = host::Layer { gamma: f32s(&gamma), beta: f32s(&beta), stats: f32s(&stats), epsilon, act, batch, plane: height * width };
        FlexTensor::from_data(TensorData::new(host::normalize(f32s(&x), &layer), shape))
    }
}

/// Training: `(act(BatchNorm(x)), [mean.., variance..])` with the batch's statistics, differentiated
/// as BatchNorm with batch statistics followed by `act` (the statistics output is outside the graph);
/// the statistics from the planes' `moments` where given.
#[backend_extension(Flex, Autodiff)]
trait BatchNormBackend: Backend {
    fn batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        #[extension_type] moments: OptionalTensor<Self>,
        epsilon: f64,
        act: Act,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

impl BatchNormBackend for Flex {
    fn batch_norm_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        moments: OptionalTensor<Self>,
        epsilon: f64,
        act: Act,
    ) -> (FlexTensor, FlexTensor) {
        let shape = x.shape();
        let [batch, channels, height, width] = shape.dims();
        let (x, gamma, beta, moments) = (contiguous(x), contiguous(gamma), contiguous(beta), moments.into_option());
        let layer = host::Layer { gamma: f32s(&gamma), beta: f32s(&beta), stats: &[], epsilon, act, batch, plane: height * width };
        let moments = moments.as_ref().map(moment_pairs);
        let (y, stats) = host::train_forward(f32s(&x), &layer, moments);
        (FlexTensor::from_data(TensorData::new(y, shape)), FlexTensor::from_data(TensorData::new(stats, [2 * channels])))
    }
}

impl<C: CheckpointStrategy> BatchNormBackend for Autodiff<Flex, C> {
    fn batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        moments: OptionalTensor<Self>,
        epsilon: f64,
        act: Act,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let moments = OptionalTensor::from_option(moments.into_option().map(|moments| moments.into_primitive()));
        let values = [&x, &gamma, &beta].map(|tensor| tensor.clone().into_primitive());
        let [x_values, gamma_values, beta_values] = values;
        let (y, stats) = Flex::batch_norm_train(x_values, gamma_values, beta_values, moments, epsilon, act);
        let output = match BatchNormBackward.prepare::<C>([x.node(), gamma.node(), beta.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&gamma), prep.checkpoint(&beta), stats.clone(), epsilon, act);
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        (output, <Self as AutodiffBackend>::from_inner(stats))
    }
}

/// Backward step of [`BatchNormBackend::batch_norm_train`]; parents are `[x, gamma, beta]`.
#[derive(Debug)]
struct BatchNormBackward;

impl Backward<Flex, 3> for BatchNormBackward {
    /// The checkpointed `x`, `gamma` and `beta`, the batch statistics, epsilon and the activation.
    type State = (NodeId, NodeId, NodeId, FlexTensor, f64, Act);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let out_grad = contiguous(grads.consume::<Flex>(&ops.node));
        let (x_id, gamma_id, beta_id, stats, epsilon, act) = ops.state;
        let x = contiguous(checkpointer.retrieve_node_output::<FlexTensor>(x_id));
        let gamma = contiguous(checkpointer.retrieve_node_output::<FlexTensor>(gamma_id));
        let beta = contiguous(checkpointer.retrieve_node_output::<FlexTensor>(beta_id));
        let stats = contiguous(stats);
        let shape = x.shape();
        let [batch, channels, height, width] = shape.dims();
        let [x_node, gamma_node, beta_node] = [0, 1, 2].map(|i| ops.parents.get(i).cloned().flatten());
        let layer = host::Layer { gamma: f32s(&gamma), beta: f32s(&beta), stats: f32s(&stats), epsilon, act, batch, plane: height * width };
        let (x_grad, sum_dy, sum_dy_xhat) = host::backward(f32s(&x), f32s(&out_grad), &layer, None, None, x_node.is_some());
        let to_tensor = |values: Vec<f32>, shape: Vec<usize>| FlexTensor::from_data(TensorData::new(values, shape));
        let x_grad = x_grad.map(|values| to_tensor(values, vec![batch, channels, height, width]));
        for (node, gradient) in [
            (x_node, x_grad),
            (gamma_node, Some(to_tensor(sum_dy_xhat, vec![channels]))),
            (beta_node, Some(to_tensor(sum_dy, vec![channels]))),
        ] {
            if let (Some(node), Some(gradient)) = (node, gradient) {
                grads.register::<Flex>(node.id, gradient);
            }
        }
    }
}

/// The kernels on host f32 NCHW data (`plane` = height x width); `stats` is `[mean.., variance..]`.
///
/// Training reads each tensor twice, sums then values: the statistics, then the normalization
/// forward; the gradient sums, then the input gradient backward. Both passes run on one block of
/// channels at a time, every image's planes of it, small enough to stay in this core's L2 cache
/// between them, so the second pass does not read the tensor from memory again. Evaluation's one
/// pass walks the data in memory order, a run of whole planes per task. Sums are kept per plane,
/// then added image by image in order, so results do not depend on scheduling.
pub(super) mod host {
    use std::mem::MaybeUninit;
    use std::ops::Range;

    use super::*;
    use crate::kernels::activation::{Pointwise, with_pointwise};
    use crate::kernels::{fma_available, lane_sums, uninit_chunks};

    /// The bytes of the inputs a block of channels reads twice: about half of the 2 MB L2 cache of
    /// a core of current x86 server CPUs (a single channel is a block even where it is larger).
    const BLOCK_BYTES: usize = 1 << 20;

    /// One BatchNorm and the activation after it, with the batch statistics (empty while
    /// [`train_forward`] computes them).
    pub struct Layer<'a> {
        pub gamma: &'a [f32],
        pub beta: &'a [f32],
        pub stats: &'a [f32],
        pub epsilon: f64,
        pub act: Act,
        pub batch: usize,
        pub plane: usize,
    }

    /// One channel of a [`Layer`]: its BatchNorm is `x * scale + shift`.
    #[derive(Clone, Copy)]
    pub struct Channel {
        pub scale: f32,
        pub shift: f32,
        pub mean: f32,
        inv_std: f32,
    }

    impl Layer<'_> {
        fn channel(&self, c: usize, mean: f32, variance: f32) -> Channel {
            let inv_std = (1.0 / (variance as f64 + self.epsilon).sqrt()) as f32;
            let scale = self.gamma[c] * inv_std;
            Channel { scale, shift: self.beta[c] - mean * scale, mean, inv_std }
        }

        pub fn channels(&self) -> Vec<Channel> {
            let channels = self.gamma.len();
            (0..channels).map(|c| self.channel(c, self.stats[c], self.stats[channels + c])).collect()
        }

        /// Values per parallel task of a pass in memory order: whole images where the batch gives
        /// every thread a few, down to single planes for small batches.
        fn task_len(&self) -> usize {
            let channels = self.gamma.len();
            (self.batch * channels).div_ceil(4 * rayon::current_num_threads()).clamp(1, channels) * self.plane
        }

        /// Channels per block of the two-pass kernels, which read `tensors` inputs: as many as
        /// [`BLOCK_BYTES`] holds, and at least four blocks per thread where there are channels
        /// enough.
        fn block_channels(&self, tensors: usize) -> usize {
            let channel_bytes = tensors * self.batch * self.plane * size_of::<f32>();
            let balanced = self.gamma.len().div_ceil(4 * rayon::current_num_threads());
            (BLOCK_BYTES / channel_bytes).min(balanced).max(1)
        }
    }

    /// `f(channels)` for the layer's blocks of `block` channels, in parallel; the results of all
    /// blocks in channel order.
    fn blocks<T: Send>(layer: &Layer, block: usize, f: impl Fn(Range<usize>) -> Vec<T> + Sync) -> Vec<T> {
        let channels = layer.gamma.len();
        let results: Vec<Vec<T>> =
            (0..channels.div_ceil(block)).into_par_iter().map(|b| f(b * block..((b + 1) * block).min(channels))).collect();
        results.into_iter().flatten().collect()
    }

    /// `act(BatchNorm(x))` with the batch's statistics, and those statistics (`[mean..,
    /// variance..]`, the variance biased). Each plane's mean and sum of squared deviations (taken
    /// here while the plane is in cache, or given in `moments`) are combined over images exactly
    /// (Chan, Golub and LeVeque), in f64.
    pub fn train_forward(x: &[f32], layer: &Layer, moments: Option<&[[f64; 2]]>) -> (Vec<f32>, Vec<f32>) {
        let (channels, plane, batch, fma) = (layer.gamma.len(), layer.plane, layer.batch, fma_available());
        debug_assert_eq!(x.len(), batch * channels * plane);
        let mut y = Vec::with_capacity(x.len());
        let output = SharedSlice::new(y.spare_capacity_mut());
        let stats = blocks(layer, layer.block_channels(1), |block| {
            let run = |n: usize| (n * channels + block.start) * plane..(n * channels + block.end) * plane;
            let stats = block_statistics(x, layer, moments, block.clone());
            let block_channels: Vec<Channel> =
                block.clone().zip(&stats).map(|(c, &[mean, variance])| layer.channel(c, mean, variance)).collect();
            for n in 0..batch {
                // SAFETY: image n's planes of this block are this task's alone.
                let y = unsafe { output.run(run(n).start, run(n).len()) };
                with_pointwise!(layer.act, normalize_planes(fma, &x[run(n)], y, plane, &block_channels, 0));
            }
            stats
        });
        // SAFETY: the blocks cover every channel of every image, and each wrote all its values.
        unsafe { y.set_len(x.len()) };
        (y, mean_then_variance(stats))
    }

    /// The batch's statistics as [`train_forward`] takes them, without the normalization.
    pub fn statistics(x: &[f32], layer: &Layer, moments: Option<&[[f64; 2]]>) -> Vec<f32> {
        mean_then_variance(blocks(layer, layer.block_channels(1), |block| block_statistics(x, layer, moments, block)))
    }

    fn mean_then_variance(stats: Vec<[f32; 2]>) -> Vec<f32> {
        let (mean, variance): (Vec<f32>, Vec<f32>) = stats.into_iter().map(|[mean, variance]| (mean, variance)).unzip();
        [mean, variance].concat()
    }

    /// `[mean, variance]` of each channel of `block`.
    fn block_statistics(x: &[f32], layer: &Layer, moments: Option<&[[f64; 2]]>, block: Range<usize>) -> Vec<[f32; 2]> {
        let (channels, plane, batch) = (layer.gamma.len(), layer.plane, layer.batch);
        let run = |n: usize| (n * channels + block.start) * plane..(n * channels + block.end) * plane;
        // This block's planes' moments, image by image.
        let mut block_moments = vec![[0f64; 2]; batch * block.len()];
        for (n, block_moments) in block_moments.chunks_exact_mut(block.len()).enumerate() {
            match moments {
                Some(given) => block_moments.copy_from_slice(&given[run(n).start / plane..run(n).end / plane]),
                None => plane_moments(fma_available(), &x[run(n)], block_moments),
            }
        }
        block
            .clone()
            .map(|c| {
                let at = |n: usize| block_moments[n * block.len() + c - block.start];
                let mean = (0..batch).map(|n| at(n)[0]).sum::<f64>() / batch as f64;
                let squares = (0..batch).map(|n| at(n)[1] + plane as f64 * (at(n)[0] - mean).powi(2)).sum::<f64>();
                [mean as f32, (squares / (batch * plane) as f64) as f32]
            })
            .collect()
    }

    /// `act((x - mean) / sqrt(variance + epsilon) * gamma + beta)` with the layer's statistics.
    pub fn normalize(x: &[f32], layer: &Layer) -> Vec<f32> {
        let (channels, plane, fma) = (layer.channels(), layer.plane, fma_available());
        debug_assert_eq!(x.len(), layer.batch * channels.len() * plane);
        let task = layer.task_len();
        // SAFETY: each task writes its planes of y from the planes of x under them, value by value.
        unsafe {
            uninit_chunks(x.len(), task, |i, y| {
                let x = &x[i * task..][..y.len()];
                with_pointwise!(layer.act, normalize_planes(fma, x, y, plane, &channels, i * task / plane));
            })
        }
    }

    with_avx2! {
        /// [`normalize`] of a run of planes, the first plane `first` of `channels` (repeating).
        pub avx512 fn normalize_planes<A: Pointwise>(x: &[f32], y: &mut [MaybeUninit<f32>], plane: usize, channels: &[Channel], first: usize) {
            for (i, (y, x)) in y.chunks_exact_mut(plane).zip(x.chunks_exact(plane)).enumerate() {
                let ch = channels[(first + i) % channels.len()];
                let mut chunks = y.chunks_exact_mut(16);
                for (y, x) in (&mut chunks).zip(x.chunks_exact(16)) {
                    for i in 0..16 {
                        y[i].write(A::value(x[i] * ch.scale + ch.shift));
                    }
                }
                let done = plane - plane % 16;
                for (y, &x) in chunks.into_remainder().iter_mut().zip(&x[done..]) {
                    y.write(A::value(x * ch.scale + ch.shift));
                }
            }
        }
    }

    /// The input gradient `gamma / σ (dz - Σdz / M - x̂ Σ(dz x̂) / M)` (where `input_gradient`),
    /// and per channel `Σ dz` (beta's gradient) and `Σ dz x̂` (gamma's); `x̂` is the normalized
    /// input, `dz` the gradient before the activation and M the values per channel. `sums`, where
    /// given, are each plane's [`gradient_sums`], taken by the producer of `dy`. With `dy_affine`,
    /// the activation's output gradient is `dy a + b`, `[a, b]` one per plane (`dy` then being
    /// squeeze-excite's output gradient, `a` its gate); `sums` must then be given, of `dy a + b`.
    pub fn backward(
        x: &[f32],
        dy: &[f32],
        layer: &Layer,
        sums: Option<&[[f64; 2]]>,
        dy_affine: Option<&[[f32; 2]]>,
        input_gradient: bool,
    ) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
        assert!(dy_affine.is_none() || sums.is_some(), "batch_norm::host::backward: an affine dy needs its sums given");
        let (channels, plane, batch, fma) = (layer.channels(), layer.plane, layer.batch, fma_available());
        let count = (batch * plane) as f32;
        let mut dx = Vec::with_capacity(if input_gradient { x.len() } else { 0 });
        let output = SharedSlice::new(dx.spare_capacity_mut());
        let sums = blocks(layer, layer.block_channels(2), |block| {
            let run = |n: usize| (n * channels.len() + block.start) * plane..(n * channels.len() + block.end) * plane;
            let block_channels = &channels[block.clone()];
            let mut per_plane = vec![[0f64; 2]; batch * block.len()];
            for (n, block_sums) in per_plane.chunks_exact_mut(block.len()).enumerate() {
                match sums {
                    Some(given) => block_sums.copy_from_slice(&given[run(n).start / plane..run(n).end / plane]),
                    None => with_pointwise!(layer.act, plane_sums(fma, &x[run(n)], &dy[run(n)], block_sums, block_channels)),
                }
            }
            let sums: Vec<[f32; 2]> = (0..block.len())
                .map(|c| {
                    let per_image = per_plane[c..].iter().step_by(block.len());
                    let [sum, dot] = per_image.fold([0f64; 2], |total, sums| [total[0] + sums[0], total[1] + sums[1]]);
                    [sum as f32, (dot * block_channels[c].inv_std as f64) as f32]
                })
                .collect();
            if input_gradient {
                let means: Vec<[f32; 2]> = sums.iter().map(|&[sum, dot]| [sum / count, dot / count]).collect();
                for n in 0..batch {
                    // SAFETY: image n's planes of this block are this task's alone.
                    let dx = unsafe { output.run(run(n).start, run(n).len()) };
                    let affine = dy_affine.map(|affine| &affine[run(n).start / plane..run(n).end / plane]);
                    with_pointwise!(
                        layer.act,
                        input_gradient_planes(fma, &x[run(n)], &dy[run(n)], affine, dx, plane, block_channels, &means)
                    );
                }
            }
            sums
        });
        if input_gradient {
            // SAFETY: the blocks cover every channel of every image, and each wrote all its values.
            unsafe { dx.set_len(x.len()) };
        }
        let (sum_dy, sum_dy_xhat) = sums.into_iter().map(|[sum, dot]| (sum, dot)).unzip();
        (input_gradient.then_some(dx), sum_dy, sum_dy_xhat)
    }

    /// [`backward`]'s sums of the planes `first..` of the batch whose `dy` is given, one per plane
    /// (of the layer's `channels`, repeating from image to image) into `sums`.
    pub fn gradient_sums(x: &[f32], dy: &[f32], first: usize, layer: &Layer, channels: &[Channel], sums: &mut [[f64; 2]]) {
        let (plane, fma) = (layer.plane, fma_available());
        let mut done = 0;
        // A run of one image's planes at a time.
        while done < sums.len() {
            let channel = (first + done) % channels.len();
            let run = (channels.len() - channel).min(sums.len() - done);
            let (x, dy) = (&x[(first + done) * plane..][..run * plane], &dy[done * plane..][..run * plane]);
            let channels = &channels[channel..][..run];
            with_pointwise!(layer.act, plane_sums(fma, x, dy, &mut sums[done..][..run], channels));
            done += run;
        }
    }

    with_avx2! {
        /// `[Σ dz, Σ dz (x - mean)]` of each plane of a run of planes, one per channel of
        /// `channels`; `dz = act'(x scale + shift) dy`.
        avx512 fn plane_sums<A: Pointwise>(x: &[f32], dy: &[f32], sums: &mut [[f64; 2]], channels: &[Channel]) {
            let plane = x.len() / sums.len();
            for ((sums, &ch), (x, dy)) in sums.iter_mut().zip(channels).zip(x.chunks_exact(plane).zip(dy.chunks_exact(plane))) {
                *sums = lane_sums(x, dy, |x, dy| {
                    let dz = A::gradient(x * ch.scale + ch.shift, dy);
                    [dz, dz * (x - ch.mean)]
                });
            }
        }
    }

    /// One value of the input gradient, the output gradient `dy a + b`; inline, so that it
    /// compiles for the caller's target features (a closure was compiled on its own, for the
    /// baseline CPU).
    #[inline(always)]
    fn input_gradient_value<A: Pointwise>(x: f32, dy: f32, [a, b]: [f32; 2], ch: Channel, [mean_dz, mean_dz_xhat]: [f32; 2]) -> f32 {
        let dz = A::gradient(x * ch.scale + ch.shift, dy * a + b);
        ch.scale * (dz - mean_dz - (x - ch.mean) * ch.inv_std * mean_dz_xhat)
    }

    with_avx2! {
        /// The input gradient of a run of planes, one per channel of `channels`; `means` holds
        /// `[Σdz / M, Σ(dz x̂) / M]` per channel, `affine` (see [`backward`]) one `[a, b]` per plane.
        avx512 fn input_gradient_planes<A: Pointwise>(
            x: &[f32],
            dy: &[f32],
            affine: Option<&[[f32; 2]]>,
            dx: &mut [MaybeUninit<f32>],
            plane: usize,
            channels: &[Channel],
            means: &[[f32; 2]],
        ) {
            let planes = dx.chunks_exact_mut(plane).zip(x.chunks_exact(plane).zip(dy.chunks_exact(plane)));
            for (i, ((dx, (x, dy)), (&ch, &means))) in planes.zip(channels.iter().zip(means)).enumerate() {
                let affine = affine.map_or([1.0, 0.0], |affine| affine[i]);
                let mut chunks = dx.chunks_exact_mut(16);
                for ((dx, x), dy) in (&mut chunks).zip(x.chunks_exact(16)).zip(dy.chunks_exact(16)) {
                    for i in 0..16 {
                        dx[i].write(input_gradient_value::<A>(x[i], dy[i], affine, ch, means));
                    }
                }
                let done = plane - plane % 16;
                for ((dx, &x), &dy) in chunks.into_remainder().iter_mut().zip(&x[done..]).zip(&dy[done..]) {
                    dx.write(input_gradient_value::<A>(x, dy, affine, ch, means));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::BatchNormConfig;
    use burn::tensor::{Distribution, Tolerance};

    use super::*;

    /// Ours, the activation fused in, against burn's BatchNorm followed by the activation on its
    /// own; planes shorter and longer than the summing lanes (32, then 8), a one-pixel plane,
    /// blocks of one channel and of several, the last one shorter (20 channels in blocks of 3).
    #[test]
    fn output_gradients_and_running_statistics_equal_burns_batch_norm() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let shapes = [[4, 3, 5, 7], [2, 16, 8, 8], [1, 5, 1, 1], [3, 2, 9, 11], [5, 3, 4, 4], [2, 4, 5, 9], [2, 20, 3, 5]];
        let acts = [Act::Identity, Act::Relu, Act::Relu6, Act::Silu, Act::Gelu];
        for ([batch, channels, height, width], act) in shapes.into_iter().flat_map(|shape| acts.map(|act| (shape, act))) {
            let x = Tensor::<4>::random([batch, channels, height, width], Distribution::Normal(2.0, 3.0), &device);
            let out_grad = Tensor::<4>::random([batch, channels, height, width], Distribution::Normal(0.0, 1.0), &device);
            let run = |ours: bool| {
                // A layer of its own for each run: clones share their running statistics.
                let bn = BatchNormConfig::new(channels).with_momentum(0.3).init(&device);
                let gamma = bn.gamma.map(|g| g.add_scalar(3.0).detach().require_grad());
                let bn = BatchNorm { gamma, beta: bn.beta.map(|b| b.add_scalar(-1.0).detach().require_grad()), ..bn };
                let x = x.clone().require_grad();
                let y = if ours { forward(&bn, x.clone(), act) } else { act.apply(bn.forward(x.clone())) };
                let grads = (y.clone() * out_grad.clone()).sum().backward();
                [
                    y.into_data(),
                    x.grad(&grads).unwrap().into_data(),
                    bn.gamma.grad(&grads).unwrap().into_data(),
                    bn.beta.grad(&grads).unwrap().into_data(),
                    bn.running_mean.value_sync().into_data(),
                    bn.running_var.value_sync().into_data(),
                ]
            };
            let (ours, burn) = (run(true), run(false));
            for (ours, burn) in ours.iter().zip(&burn) {
                ours.assert_approx_eq::<f32>(burn, Tolerance::<f32>::rel_abs(1e-4, 1e-4));
            }
        }
    }

    /// The batch statistics of values far from 0 with a small spread (where one-pass sums of
    /// squares lose the variance) equal a two-pass f64 reference, per channel.
    #[test]
    fn statistics_keep_a_small_variance_far_from_zero() {
        let [batch, channels, plane] = [3, 4, 37];
        let noise = crate::kernels::test_values(batch * channels * plane, 5);
        let x: Vec<f32> = noise.iter().enumerate().map(|(i, v)| 1.0e4 * (1 + (i / plane) % channels) as f32 + v).collect();
        let (gamma, beta) = (vec![1.0; channels], vec![0.0; channels]);
        let layer = host::Layer { gamma: &gamma, beta: &beta, stats: &[], epsilon: 1e-5, act: Act::Identity, batch, plane };
        let (_, stats) = host::train_forward(&x, &layer, None);
        for c in 0..channels {
            let values: Vec<f64> = (0..batch).flat_map(|n| &x[(n * channels + c) * plane..][..plane]).map(|&v| v as f64).collect();
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
            assert!((stats[c] as f64 - mean).abs() <= 1e-6 * mean, "channel {c}: mean {} against {mean}", stats[c]);
            let got = stats[channels + c] as f64;
            assert!((got - variance).abs() <= 1e-4 * variance, "channel {c}: variance {got} against {variance}");
        }
    }

    /// Evaluation (running statistics moved away from 0 and 1 by a few training steps) equals
    /// burn's to rounding; a frozen layer in training is burn's own.
    #[test]
    fn evaluation_mode_and_frozen_layers_equal_burns() {
        let device = Device::flex().autodiff();
        device.seed(4);
        let bn = BatchNormConfig::new(3).with_momentum(0.5).init(&device);
        let bn = BatchNorm { gamma: bn.gamma.map(|g| g.add_scalar(0.7)), beta: bn.beta.map(|b| b.add_scalar(-0.4)), ..bn };
        for _ in 0..3 {
            let _ = forward(&bn, Tensor::<4>::random([4, 3, 5, 5], Distribution::Normal(1.5, 2.0), &device), Act::Identity);
        }
        let x = Tensor::<4>::random([2, 3, 9, 7], Distribution::Normal(1.0, 2.0), &Device::flex());
        let evaluated = bn.valid();
        for act in [Act::Identity, Act::Relu6, Act::Silu] {
            let ours = forward(&evaluated, x.clone(), act).into_data();
            ours.assert_approx_eq::<f32>(&act.apply(evaluated.forward(x.clone())).into_data(), Tolerance::<f32>::rel_abs(1e-5, 1e-5));
        }
        let frozen = bn.clone().freeze();
        assert!(!frozen.training.is_enabled());
        let x = Tensor::<4>::random([2, 3, 9, 7], Distribution::Normal(1.0, 2.0), &device);
        forward(&frozen, x.clone(), Act::Silu).into_data().assert_eq(&Act::Silu.apply(frozen.forward(x)).into_data(), true);
    }
}
