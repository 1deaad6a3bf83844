//! BatchNorm in training mode (statistics of the batch), fused into few passes over the data.
//!
//! burn-flex computes `batch_norm_train` and its backward from generic tensor ops: transposes to
//! `[channels, ...]`, separate reductions and broadcasts, each a pass over the activation and a
//! new buffer (`bench train --profile` shows BatchNorm at 15% of a ResNet-18-CIFAR step). Here
//! the forward pass is two reads (statistics) and one read + write (normalize), the backward one
//! read of `x` and `dy` for the two sums per channel and one pass for the input gradient, with no
//! layout copies. [`forward`] behaves as `BatchNorm::forward`, running statistics included, and
//! leaves evaluation mode, frozen layers and other devices to burn.

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

use super::{contiguous, f32s};

/// `bn.forward(x)` for `x` `[batch, channels, height, width]`, through our kernels when `bn`
/// trains on the flex device (and `kernels::enabled()`).
pub fn forward(bn: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    let device = x.device();
    let training = device.is_autodiff() && bn.training.is_enabled();
    let ours = super::enabled()
        && training
        && x.dtype() == DType::F32
        && bn.gamma.val().dtype() == DType::F32
        && device.clone().inner() == Device::flex();
    if !ours {
        return bn.forward(x);
    }
    let channels = x.dims()[1];
    assert_eq!(bn.gamma.dims(), [channels], "BatchNorm: input {:?} does not have {} channels", x.dims(), bn.gamma.dims()[0]);
    // The batch's mean and biased variance, outside the graph: the backward accounts for them.
    let stats = Tensor::<1>::from_dispatch(<Dispatch as BatchStatsBackend>::batch_stats(x.clone().inner().into_dispatch()));
    let stats = Tensor::from_inner(stats);
    let output = <Dispatch as BatchNormBackend>::batch_norm_train(
        x.into_dispatch(),
        bn.gamma.val().into_dispatch(),
        bn.beta.val().into_dispatch(),
        stats.clone().into_dispatch(),
        bn.epsilon,
    );
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
    Tensor::from_dispatch(output)
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

/// The normalization with given batch statistics, differentiated as BatchNorm with batch statistics.
#[backend_extension(Flex, Autodiff)]
trait BatchNormBackend: Backend {
    fn batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;
}

impl BatchNormBackend for Flex {
    fn batch_norm_train(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, stats: FlexTensor, epsilon: f64) -> FlexTensor {
        let shape = x.shape();
        let [batch, channels, height, width] = shape.dims();
        let (x, gamma, beta, stats) = (contiguous(x), contiguous(gamma), contiguous(beta), contiguous(stats));
        let y = host::normalize(f32s(&x), f32s(&gamma), f32s(&beta), f32s(&stats), epsilon, batch, height * width);
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
    ) -> FloatTensor<Self> {
        let stats = stats.into_primitive();
        let forward = |x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, stats: FlexTensor| {
            Flex::batch_norm_train(x.into_primitive(), gamma.into_primitive(), beta.into_primitive(), stats, epsilon)
        };
        match BatchNormBackward.prepare::<C>([x.node(), gamma.node(), beta.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&gamma), stats.clone(), epsilon);
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
    /// The checkpointed `x` and `gamma`, the batch statistics and epsilon.
    type State = (NodeId, NodeId, FlexTensor, f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let out_grad = contiguous(grads.consume::<Flex>(&ops.node));
        let (x_id, gamma_id, stats, epsilon) = ops.state;
        let x = contiguous(checkpointer.retrieve_node_output::<FlexTensor>(x_id));
        let gamma = contiguous(checkpointer.retrieve_node_output::<FlexTensor>(gamma_id));
        let stats = contiguous(stats);
        let shape = x.shape();
        let [batch, channels, height, width] = shape.dims();
        let [x_node, gamma_node, beta_node] = [0, 1, 2].map(|i| ops.parents.get(i).cloned().flatten());
        let (sum_dy, sum_dy_xhat) = host::gradient_sums(f32s(&x), f32s(&out_grad), f32s(&stats), epsilon, batch, height * width);
        let to_tensor = |values: Vec<f32>, shape: Vec<usize>| FlexTensor::from_data(TensorData::new(values, shape));
        let x_grad = x_node.is_some().then(|| {
            let values = host::input_gradient(
                f32s(&x),
                f32s(&out_grad),
                f32s(&gamma),
                f32s(&stats),
                epsilon,
                &sum_dy,
                &sum_dy_xhat,
                batch,
                height * width,
            );
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
mod host {
    use std::mem::MaybeUninit;

    use super::*;
    use crate::kernels::lane_sum;

    /// A new `len`-long buffer whose planes `fill(i, plane i)` writes, in parallel; left
    /// uninitialized before (zero-filling it first was one more pass over the activation).
    ///
    /// # Safety
    ///
    /// `fill` writes every value of the plane it is given.
    unsafe fn uninit_planes(len: usize, plane: usize, fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync) -> Vec<f32> {
        let mut values = Vec::with_capacity(len);
        values.spare_capacity_mut()[..len].par_chunks_mut(plane).enumerate().for_each(|(i, plane)| fill(i, plane));
        // SAFETY: every plane, and so all `len` values, was written above (the caller's guarantee).
        unsafe { values.set_len(len) };
        values
    }

    fn inv_std(stats: &[f32], channels: usize, c: usize, epsilon: f64) -> f32 {
        (1.0 / (stats[channels + c] as f64 + epsilon).sqrt()) as f32
    }

    /// Per channel: the mean, then the biased variance (two passes, sums in f64).
    pub fn stats(x: &[f32], batch: usize, channels: usize, plane: usize) -> Vec<f32> {
        let count = (batch * plane) as f64;
        let per_channel: Vec<(f32, f32)> = (0..channels)
            .into_par_iter()
            .map(|c| {
                let planes = || (0..batch).map(move |n| &x[(n * channels + c) * plane..][..plane]);
                let mean = planes().map(|p| lane_sum(p, p, |v, _| v)).sum::<f64>() / count;
                let m = mean as f32;
                let variance = planes().map(|p| lane_sum(p, p, |v, _| (v - m) * (v - m))).sum::<f64>() / count;
                (mean as f32, variance as f32)
            })
            .collect();
        per_channel.iter().map(|s| s.0).chain(per_channel.iter().map(|s| s.1)).collect()
    }

    /// `(x - mean) / sqrt(variance + epsilon) * gamma + beta`.
    pub fn normalize(x: &[f32], gamma: &[f32], beta: &[f32], stats: &[f32], epsilon: f64, batch: usize, plane: usize) -> Vec<f32> {
        let channels = gamma.len();
        debug_assert_eq!(x.len(), batch * channels * plane);
        // SAFETY: each plane of y is written from the plane of x under it, value by value.
        unsafe {
            uninit_planes(x.len(), plane, |i, y| {
                let c = i % channels;
                let scale = gamma[c] * inv_std(stats, channels, c, epsilon);
                let shift = beta[c] - stats[c] * scale;
                y.iter_mut().zip(&x[i * plane..][..plane]).for_each(|(y, &x)| {
                    y.write(x * scale + shift);
                });
            })
        }
    }

    /// Per channel `Σ dy` (beta's gradient) and `Σ dy x̂` (gamma's), `x̂` the normalized input.
    pub fn gradient_sums(x: &[f32], dy: &[f32], stats: &[f32], epsilon: f64, batch: usize, plane: usize) -> (Vec<f32>, Vec<f32>) {
        let channels = stats.len() / 2;
        let sums: Vec<(f32, f32)> = (0..channels)
            .into_par_iter()
            .map(|c| {
                let (mean, inv_std) = (stats[c], inv_std(stats, channels, c, epsilon));
                let (mut sum, mut dot) = (0f64, 0f64);
                for n in 0..batch {
                    let at = (n * channels + c) * plane;
                    let (x, dy) = (&x[at..][..plane], &dy[at..][..plane]);
                    sum += lane_sum(dy, dy, |g, _| g);
                    dot += lane_sum(dy, x, |g, v| g * (v - mean));
                }
                (sum as f32, (dot * inv_std as f64) as f32)
            })
            .collect();
        sums.into_iter().unzip()
    }

    /// `gamma / σ (dy - Σdy / M - x̂ Σ(dy x̂) / M)`, M the values per channel.
    #[allow(clippy::too_many_arguments)]
    pub fn input_gradient(
        x: &[f32],
        dy: &[f32],
        gamma: &[f32],
        stats: &[f32],
        epsilon: f64,
        sum_dy: &[f32],
        sum_dy_xhat: &[f32],
        batch: usize,
        plane: usize,
    ) -> Vec<f32> {
        let channels = gamma.len();
        let count = (batch * plane) as f32;
        // SAFETY: each plane of dx is written value by value from the planes of dy and x under it.
        unsafe {
            uninit_planes(x.len(), plane, |i, dx| {
                let c = i % channels;
                let (mean, inv_std) = (stats[c], inv_std(stats, channels, c, epsilon));
                let scale = gamma[c] * inv_std;
                let (mean_dy, mean_dy_xhat) = (sum_dy[c] / count, sum_dy_xhat[c] / count);
                let at = i * plane;
                for ((dx, &g), &v) in dx.iter_mut().zip(&dy[at..][..plane]).zip(&x[at..][..plane]) {
                    dx.write(scale * (g - mean_dy - (v - mean) * inv_std * mean_dy_xhat));
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::BatchNormConfig;
    use burn::tensor::{Distribution, Tolerance};

    use super::*;

    #[test]
    fn output_gradients_and_running_statistics_equal_burns_batch_norm() {
        let device = Device::flex().autodiff();
        device.seed(3);
        for [batch, channels, height, width] in [[4, 3, 5, 7], [2, 16, 8, 8], [1, 5, 1, 1]] {
            let x = Tensor::<4>::random([batch, channels, height, width], Distribution::Normal(2.0, 3.0), &device);
            let out_grad = Tensor::<4>::random([batch, channels, height, width], Distribution::Normal(0.0, 1.0), &device);
            let run = |ours: bool| {
                // A layer of its own for each run: clones share their running statistics.
                let bn = BatchNormConfig::new(channels).with_momentum(0.3).init(&device);
                let gamma = bn.gamma.map(|g| g.add_scalar(0.5).detach().require_grad());
                let bn = BatchNorm { gamma, beta: bn.beta.map(|b| b.add_scalar(-1.0).detach().require_grad()), ..bn };
                let x = x.clone().require_grad();
                let y = if ours { forward(&bn, x.clone()) } else { bn.forward(x.clone()) };
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

    #[test]
    fn evaluation_mode_and_frozen_layers_are_burns() {
        let device = Device::flex();
        let bn = BatchNormConfig::new(3).init(&device);
        let x = Tensor::<4>::random([2, 3, 4, 4], Distribution::Normal(0.0, 1.0), &device);
        forward(&bn, x.clone()).into_data().assert_eq(&bn.forward(x).into_data(), true);
    }
}
