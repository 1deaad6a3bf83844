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
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::BatchNorm;
use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

use super::activation::Act;
use super::{contiguous, f32s};

/// `act.apply(bn.forward(x))` for `x` `[batch, channels, height, width]`, through our kernels when
/// `bn` trains on the flex device (and `kernels::enabled()`).
pub fn forward(bn: &BatchNorm, x: Tensor<4>, act: Act) -> Tensor<4> {
    let device = x.device();
    let training = device.is_autodiff() && bn.training.is_enabled();
    let ours =
        super::enabled() && x.dtype() == DType::F32 && bn.gamma.val().dtype() == DType::F32 && device.clone().inner() == Device::flex();
    let evaluation = !device.is_autodiff();
    if !(ours && (training || evaluation)) {
        return act.apply(bn.forward(x));
    }
    let channels = x.dims()[1];
    assert_eq!(bn.gamma.dims(), [channels], "BatchNorm: input {:?} does not have {} channels", x.dims(), bn.gamma.dims()[0]);
    // Evaluation normalizes with the running statistics; training with the batch's mean and biased
    // variance, computed outside the graph (the backward accounts for them).
    let stats = if evaluation {
        Tensor::cat(vec![bn.running_mean.value(), bn.running_var.value()], 0)
    } else {
        let stats = Tensor::<1>::from_dispatch(<Dispatch as BatchStatsBackend>::batch_stats(x.clone().inner().into_dispatch()));
        Tensor::from_inner(stats)
    };
    let output = Tensor::from_dispatch(<Dispatch as BatchNormBackend>::batch_norm_train(
        x.into_dispatch(),
        bn.gamma.val().into_dispatch(),
        bn.beta.val().into_dispatch(),
        stats.clone().into_dispatch(),
        bn.epsilon,
        act,
    ));
    if evaluation {
        return output;
    }
    // Running statistics as burn's BatchNorm keeps them.
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
    output
}

/// The statistics of a batch as a backend operation (flex only, on tensors outside the graph).
#[backend_extension(Flex)]
trait BatchStatsBackend: Backend {
    /// `[2 * channels]`: the mean of each channel, then its biased variance.
    fn batch_stats(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl BatchStatsBackend for Flex {
    fn batch_stats(x: FlexTensor) -> FlexTensor {
        let [batch, channels, height, width] = x.shape().dims();
        let x = contiguous(x);
        FlexTensor::from_data(TensorData::new(host::stats(f32s(&x), batch, channels, height * width), [2 * channels]))
    }
}

/// The normalization with given batch statistics, then `act`, differentiated as BatchNorm with
/// batch statistics followed by `act`.
#[backend_extension(Flex, Autodiff)]
trait BatchNormBackend: Backend {
    fn batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        epsilon: f64,
        act: Act,
    ) -> FloatTensor<Self>;
}

impl BatchNormBackend for Flex {
    fn batch_norm_train(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, stats: FlexTensor, epsilon: f64, act: Act) -> FlexTensor {
        let shape = x.shape();
        let [batch, channels, height, width] = shape.dims();
        let (x, gamma, beta, stats) = (contiguous(x), contiguous(gamma), contiguous(beta), contiguous(stats));
        let layer = host::Layer { gamma: f32s(&gamma), beta: f32s(&beta), stats: f32s(&stats), epsilon, act, batch, plane: height * width };
        let y = host::normalize(f32s(&x), &layer);
        debug_assert_eq!(y.len(), batch * channels * height * width);
        FlexTensor::from_data(TensorData::new(y, shape))
    }
}

impl<C: CheckpointStrategy> BatchNormBackend for Autodiff<Flex, C> {
    fn batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        epsilon: f64,
        act: Act,
    ) -> FloatTensor<Self> {
        let stats = stats.into_primitive();
        let forward = |x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, stats: FlexTensor| {
            Flex::batch_norm_train(x.into_primitive(), gamma.into_primitive(), beta.into_primitive(), stats, epsilon, act)
        };
        match BatchNormBackward.prepare::<C>([x.node(), gamma.node(), beta.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&gamma), prep.checkpoint(&beta), stats.clone(), epsilon, act);
                prep.finish(state, forward(x, gamma, beta, stats))
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(x, gamma, beta, stats)),
        }
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
        let (sum_dy, sum_dy_xhat) = host::gradient_sums(f32s(&x), f32s(&out_grad), &layer);
        let to_tensor = |values: Vec<f32>, shape: Vec<usize>| FlexTensor::from_data(TensorData::new(values, shape));
        let x_grad = x_node.is_some().then(|| {
            let values = host::input_gradient(f32s(&x), f32s(&out_grad), &layer, &sum_dy, &sum_dy_xhat);
            to_tensor(values, vec![batch, channels, height, width])
        });
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
/// Every pass walks the data in memory order, a run of whole planes per task (a loop per channel
/// jumps a whole image between its planes, which at the 4x4 to 8x8 maps of late stages is a cache
/// line or two per jump), and sums are kept per plane, then added image by image in order, so
/// results do not depend on scheduling.
mod host {
    use std::mem::MaybeUninit;

    use super::*;
    use crate::kernels::activation::{Pointwise, with_pointwise};
    use crate::kernels::{fma_available, lane_sums, uninit_chunks};

    /// One BatchNorm and the activation after it, with the batch statistics.
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
    struct Channel {
        scale: f32,
        shift: f32,
        mean: f32,
        inv_std: f32,
    }

    impl Layer<'_> {
        fn channels(&self) -> Vec<Channel> {
            let channels = self.gamma.len();
            (0..channels)
                .map(|c| {
                    let (mean, variance) = (self.stats[c], self.stats[channels + c]);
                    let inv_std = (1.0 / (variance as f64 + self.epsilon).sqrt()) as f32;
                    let scale = self.gamma[c] * inv_std;
                    Channel { scale, shift: self.beta[c] - mean * scale, mean, inv_std }
                })
                .collect()
        }

        /// Values per parallel task: whole images where the batch gives every thread a few, down
        /// to single planes for small batches.
        fn task_len(&self) -> usize {
            let channels = self.gamma.len();
            (self.batch * channels).div_ceil(4 * rayon::current_num_threads()).clamp(1, channels) * self.plane
        }
    }

    /// Per channel: the mean, then the biased variance. Each plane's mean and sum of squared
    /// deviations are taken while it is in cache (one read of `x` from memory), and combined over
    /// images exactly (Chan, Golub and LeVeque), in f64.
    pub fn stats(x: &[f32], batch: usize, channels: usize, plane: usize) -> Vec<f32> {
        let fma = fma_available();
        let mut moments = vec![[0f64; 2]; batch * channels];
        moments.par_chunks_mut(channels).zip(x.par_chunks(channels * plane)).for_each(|(moments, x)| plane_moments(fma, x, moments));
        let at = |n: usize, c: usize| moments[n * channels + c];
        let mean: Vec<f64> = (0..channels).map(|c| (0..batch).map(|n| at(n, c)[0]).sum::<f64>() / batch as f64).collect();
        let variance = mean.iter().enumerate().map(|(c, &mean)| {
            let squares = (0..batch).map(|n| at(n, c)[1] + plane as f64 * (at(n, c)[0] - mean).powi(2)).sum::<f64>();
            (squares / (batch * plane) as f64) as f32
        });
        mean.iter().map(|&m| m as f32).chain(variance).collect::<Vec<_>>()
    }

    with_avx2! {
        /// `[mean, Σ (x - mean)²]` of each plane of one image.
        avx512 fn plane_moments(x: &[f32], moments: &mut [[f64; 2]]) {
            let plane = x.len() / moments.len();
            for (x, moments) in x.chunks_exact(plane).zip(moments) {
                let mean = lane_sums(x, x, |v, _| [v, 0.0])[0] / plane as f64;
                let m = mean as f32;
                *moments = [mean, lane_sums(x, x, |v, _| [(v - m) * (v - m), 0.0])[0]];
            }
        }
    }

    /// `act((x - mean) / sqrt(variance + epsilon) * gamma + beta)`.
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
        /// [`normalize`] of a run of planes, the first plane `first` of the batch.
        avx512 fn normalize_planes<A: Pointwise>(x: &[f32], y: &mut [MaybeUninit<f32>], plane: usize, channels: &[Channel], first: usize) {
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

    /// Per channel `Σ dz` (beta's gradient) and `Σ dz x̂` (gamma's), `x̂` the normalized input and
    /// `dz` the gradient before the activation.
    pub fn gradient_sums(x: &[f32], dy: &[f32], layer: &Layer) -> (Vec<f32>, Vec<f32>) {
        let (channels, plane, fma) = (layer.channels(), layer.plane, fma_available());
        let mut sums = vec![[0f64; 2]; x.len() / plane];
        let task = layer.task_len();
        sums.par_chunks_mut(task / plane).enumerate().for_each(|(i, sums)| {
            let (x, dy) = (&x[i * task..][..sums.len() * plane], &dy[i * task..][..sums.len() * plane]);
            with_pointwise!(layer.act, plane_sums(fma, x, dy, sums, &channels, i * task / plane));
        });
        (0..channels.len())
            .map(|c| {
                let per_image = sums[c..].iter().step_by(channels.len());
                let [sum, dot] = per_image.fold([0f64; 2], |total, sums| [total[0] + sums[0], total[1] + sums[1]]);
                (sum as f32, (dot * channels[c].inv_std as f64) as f32)
            })
            .unzip()
    }

    with_avx2! {
        /// `[Σ dz, Σ dz (x - mean)]` of each plane of a run of planes, the first plane `first` of
        /// the batch; `dz = act'(x scale + shift) dy`.
        avx512 fn plane_sums<A: Pointwise>(x: &[f32], dy: &[f32], sums: &mut [[f64; 2]], channels: &[Channel], first: usize) {
            let plane = x.len() / sums.len();
            for ((i, sums), (x, dy)) in sums.iter_mut().enumerate().zip(x.chunks_exact(plane).zip(dy.chunks_exact(plane))) {
                let ch = channels[(first + i) % channels.len()];
                *sums = lane_sums(x, dy, |x, dy| {
                    let dz = A::gradient(x * ch.scale + ch.shift, dy);
                    [dz, dz * (x - ch.mean)]
                });
            }
        }
    }

    /// `gamma / σ (dz - Σdz / M - x̂ Σ(dz x̂) / M)`, M the values per channel.
    pub fn input_gradient(x: &[f32], dy: &[f32], layer: &Layer, sum_dy: &[f32], sum_dy_xhat: &[f32]) -> Vec<f32> {
        let (channels, plane, fma) = (layer.channels(), layer.plane, fma_available());
        let count = (layer.batch * plane) as f32;
        let means: Vec<[f32; 2]> = sum_dy.iter().zip(sum_dy_xhat).map(|(&sum, &dot)| [sum / count, dot / count]).collect();
        let task = layer.task_len();
        // SAFETY: each task writes its planes of dx value by value from the planes of dy and x
        // under them.
        unsafe {
            uninit_chunks(x.len(), task, |i, dx| {
                let (x, dy) = (&x[i * task..][..dx.len()], &dy[i * task..][..dx.len()]);
                with_pointwise!(layer.act, input_gradient_planes(fma, x, dy, dx, plane, &channels, &means, i * task / plane));
            })
        }
    }

    /// One value of [`input_gradient`]; inline, so that it compiles for the caller's target
    /// features (a closure was compiled on its own, for the baseline CPU).
    #[inline(always)]
    fn input_gradient_value<A: Pointwise>(x: f32, dy: f32, ch: Channel, [mean_dz, mean_dz_xhat]: [f32; 2]) -> f32 {
        let dz = A::gradient(x * ch.scale + ch.shift, dy);
        ch.scale * (dz - mean_dz - (x - ch.mean) * ch.inv_std * mean_dz_xhat)
    }

    with_avx2! {
        /// [`input_gradient`] of a run of planes, the first plane `first` of the batch; `means`
        /// holds `[Σdz / M, Σ(dz x̂) / M]` per channel.
        avx512 fn input_gradient_planes<A: Pointwise>(
            x: &[f32],
            dy: &[f32],
            dx: &mut [MaybeUninit<f32>],
            plane: usize,
            channels: &[Channel],
            means: &[[f32; 2]],
            first: usize,
        ) {
            let planes = dx.chunks_exact_mut(plane).zip(x.chunks_exact(plane).zip(dy.chunks_exact(plane)));
            for (i, (dx, (x, dy))) in planes.enumerate() {
                let c = (first + i) % channels.len();
                let (ch, means) = (channels[c], means[c]);
                let mut chunks = dx.chunks_exact_mut(16);
                for ((dx, x), dy) in (&mut chunks).zip(x.chunks_exact(16)).zip(dy.chunks_exact(16)) {
                    for i in 0..16 {
                        dx[i].write(input_gradient_value::<A>(x[i], dy[i], ch, means));
                    }
                }
                let done = plane - plane % 16;
                for ((dx, &x), &dy) in chunks.into_remainder().iter_mut().zip(&x[done..]).zip(&dy[done..]) {
                    dx.write(input_gradient_value::<A>(x, dy, ch, means));
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
    /// parallel tasks of whole images and of single planes.
    #[test]
    fn output_gradients_and_running_statistics_equal_burns_batch_norm() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let shapes = [[4, 3, 5, 7], [2, 16, 8, 8], [1, 5, 1, 1], [3, 2, 9, 11], [5, 3, 4, 4], [2, 4, 5, 9]];
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
        let stats = host::stats(&x, batch, channels, plane);
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
