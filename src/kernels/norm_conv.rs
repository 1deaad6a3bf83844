//! A training BatchNorm and its activation, then a convolution that reads nothing else, as one
//! operation: in MobileNetV2's and EfficientNet's blocks, the expansion's BatchNorm feeding the
//! depthwise conv, and the depthwise conv's BatchNorm feeding the 1x1 projection.
//!
//! The convolution applies the normalization and the activation as it copies its input into
//! scratch (the depthwise kernels' interleaved planes, the pointwise products' matrix), through
//! `kernels::InputNorm`, so the BatchNorm's output is never stored: the forward pass skips writing
//! it and reading it back (and its memory), the weight gradient reads the BatchNorm's input in its
//! place, and each task of the convolution's input gradient takes the BatchNorm's gradient sums of
//! its planes while they are in cache, sparing the BatchNorm's backward its first pass over them.

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

use super::activation::Act;
use super::batch_norm::{self, host::Layer};
use super::depthwise::host::{MAX_KERNEL, Wanted};
use super::{InputNorm, OptionalTensor, SharedSlice, contiguous, dense, depthwise, f32s};

/// The convolution after the BatchNorm (no bias).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NormedConv {
    /// Depthwise, weight `[channels, 1, k, k]`, padding `[before, after]` on both axes.
    Depthwise { stride: usize, padding: [usize; 2] },
    /// 1x1, stride 1, no padding, weight `[out, channels, 1, 1]`.
    Pointwise,
}

/// Whether [`batch_norm_conv`] takes `bn` training on `x`, then `conv` with `weight`.
pub(crate) fn applies(bn: &BatchNorm, x: &Tensor<4>, conv: NormedConv, weight: &Tensor<4>) -> bool {
    let [outs, per_group, kernel, kernel_width] = weight.dims();
    let channels = x.dims()[1];
    let fits = match conv {
        NormedConv::Depthwise { .. } => outs == channels && per_group == 1 && kernel == kernel_width && kernel <= MAX_KERNEL,
        NormedConv::Pointwise => per_group == channels && [kernel, kernel_width] == [1, 1],
    };
    fits && batch_norm::trains_on_kernel(bn, x) && weight.dtype() == DType::F32
}

/// `conv(act(bn(x)), weight)` and its output planes' moments (`kernels::plane_moments`) for the
/// BatchNorm after it; `bn` trains as in `batch_norm::forward_with_moments`, its statistics from
/// `moments` (of `x`'s planes) where given. Only where [`applies`].
pub(crate) fn batch_norm_conv(
    bn: &BatchNorm,
    x: Tensor<4>,
    moments: Option<Tensor<1>>,
    act: Act,
    conv: NormedConv,
    weight: Tensor<4>,
) -> (Tensor<4>, Tensor<1>) {
    debug_assert!(applies(bn, &x, conv, &weight));
    if let NormedConv::Depthwise { stride, padding: [before, after] } = conv {
        let [_, _, height, width] = x.dims();
        let kernel = weight.dims()[2];
        assert!(
            stride > 0 && height + before + after >= kernel && width + before + after >= kernel,
            "batch_norm_conv: kernel {kernel} (stride {stride}) does not fit the padded input {height}x{width} (padding {before}, {after})"
        );
    }
    let moments = OptionalTensor::from_option(moments.map(Tensor::into_dispatch));
    let (gamma, beta) = (bn.gamma.val().into_dispatch(), bn.beta.val().into_dispatch());
    let (y, stats, y_moments) = <Dispatch as NormConvBackend>::batch_norm_conv(
        x.into_dispatch(),
        gamma,
        beta,
        moments,
        weight.into_dispatch(),
        bn.epsilon,
        act,
        conv,
    );
    batch_norm::update_running_statistics(bn, Tensor::from_dispatch(stats));
    (Tensor::from_dispatch(y), Tensor::from_dispatch(y_moments))
}

/// `(output, [mean.., variance..] of x, output planes' moments)`; the statistics and moments are
/// outside the graph.
#[backend_extension(Flex, Autodiff)]
trait NormConvBackend: Backend {
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_conv(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        #[extension_type] moments: OptionalTensor<Self>,
        weight: FloatTensor<Self>,
        epsilon: f64,
        act: Act,
        conv: NormedConv,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

impl NormConvBackend for Flex {
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_conv(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        moments: OptionalTensor<Self>,
        weight: FlexTensor,
        epsilon: f64,
        act: Act,
        conv: NormedConv,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let [batch, channels, height, width] = x.shape().dims();
        let [x, gamma, beta, weight] = [x, gamma, beta, weight].map(contiguous);
        let moments = moments.into_option().map(contiguous);
        let moments = moments.as_ref().map(batch_norm::moment_pairs);
        let layer = |stats| Layer { gamma: f32s(&gamma), beta: f32s(&beta), stats, epsilon, act, batch, plane: height * width };
        let stats = batch_norm::host::statistics(f32s(&x), &layer(&[]), moments);
        let (scale, shift) = scale_and_shift(&layer(&stats));
        let norm = Some(InputNorm { scale: &scale, shift: &shift, act });
        let (y, y_moments, shape) = match conv {
            NormedConv::Depthwise { stride, padding } => {
                let g = depthwise::geometry(&x, &weight, stride, padding);
                let (y, y_moments) = depthwise::host::forward(f32s(&x), norm, f32s(&weight), None, &g, true);
                (y, y_moments, [batch, channels, g.out_height(), g.out_width()])
            }
            NormedConv::Pointwise => {
                let g = dense::geometry(&x, &weight, [1, 1, 0, 0]);
                let (y, y_moments) = dense::host::forward(f32s(&x), norm, f32s(&weight), None, Act::Identity, &g, true);
                (y, y_moments, [batch, g.out_channels, height, width])
            }
        };
        let y_moments = y_moments.expect("moments were asked for");
        let len = y_moments.len();
        (
            FlexTensor::from_data(TensorData::new(y, shape)),
            FlexTensor::from_data(TensorData::new(stats, [2 * channels])),
            FlexTensor::from_data(TensorData::new(y_moments, [len])),
        )
    }
}

/// Each channel's BatchNorm as `x * scale + shift`.
fn scale_and_shift(layer: &Layer) -> (Vec<f32>, Vec<f32>) {
    layer.channels().iter().map(|channel| (channel.scale, channel.shift)).unzip()
}

impl<C: CheckpointStrategy> NormConvBackend for Autodiff<Flex, C> {
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_conv(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        moments: OptionalTensor<Self>,
        weight: FloatTensor<Self>,
        epsilon: f64,
        act: Act,
        conv: NormedConv,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let moments = OptionalTensor::from_option(moments.into_option().map(|moments| moments.into_primitive()));
        let [x_values, gamma_values, beta_values, weight_values] =
            [&x, &gamma, &beta, &weight].map(|tensor| tensor.clone().into_primitive());
        let (y, stats, y_moments) = Flex::batch_norm_conv(x_values, gamma_values, beta_values, moments, weight_values, epsilon, act, conv);
        let parents = [x.node(), gamma.node(), beta.node(), weight.node()];
        let output = match NormConvBackward.prepare::<C>(parents).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let checkpoints = [&x, &gamma, &beta, &weight].map(|tensor| prep.checkpoint(tensor));
                prep.finish((checkpoints, stats.clone(), epsilon, act, conv), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        (output, <Self as AutodiffBackend>::from_inner(stats), <Self as AutodiffBackend>::from_inner(y_moments))
    }
}

/// Backward step of [`NormConvBackend::batch_norm_conv`]; parents are `[x, gamma, beta, weight]`.
#[derive(Debug)]
struct NormConvBackward;

impl Backward<Flex, 4> for NormConvBackward {
    /// The checkpointed `[x, gamma, beta, weight]`, the batch statistics, epsilon, the activation
    /// and the convolution.
    type State = ([NodeId; 4], FlexTensor, f64, Act, NormedConv);

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let out_grad = contiguous(grads.consume::<Flex>(&ops.node));
        let (ids, stats, epsilon, act, conv) = ops.state;
        let [x, gamma, beta, weight] = ids.map(|id| contiguous(checkpointer.retrieve_node_output::<FlexTensor>(id)));
        let stats = contiguous(stats);
        let [batch, channels, height, width] = x.shape().dims();
        let [x_node, gamma_node, beta_node, weight_node] = [0, 1, 2, 3].map(|i| ops.parents.get(i).cloned().flatten());
        let layer = Layer { gamma: f32s(&gamma), beta: f32s(&beta), stats: f32s(&stats), epsilon, act, batch, plane: height * width };
        let channel_norms = layer.channels();
        let (scale, shift) = scale_and_shift(&layer);
        let norm = Some(InputNorm { scale: &scale, shift: &shift, act });
        let x_values = f32s(&x);
        // The convolution's input gradient is the BatchNorm output's: wanted for any of its gradients.
        let normalized = x_node.is_some() || gamma_node.is_some() || beta_node.is_some();
        let mut sums = vec![[0f64; 2]; batch * channels];
        let shared = SharedSlice::new(&mut sums);
        let take_sums = |first: usize, dy: &[f32]| {
            // SAFETY: each task's planes are its own, and inside the batch.
            let sums = unsafe { shared.run(first, dy.len() / layer.plane) };
            batch_norm::host::gradient_sums(x_values, dy, first, &layer, &channel_norms, sums);
        };
        let to_tensor = |values: Vec<f32>, shape: Vec<usize>| FlexTensor::from_data(TensorData::new(values, shape));
        let (dy, weight_grad) = match conv {
            NormedConv::Depthwise { stride, padding } => {
                let g = depthwise::geometry(&x, &weight, stride, padding);
                let wanted = Wanted { x: normalized, weight: weight_node.is_some(), bias: false };
                let [dy, weight_grad, _] =
                    depthwise::backward_tensors(x_values, norm, f32s(&weight), out_grad, &g, wanted, Some(&take_sums));
                (dy, weight_grad)
            }
            NormedConv::Pointwise => {
                let g = dense::geometry(&x, &weight, [1, 1, 0, 0]);
                let weight_grad = weight_node.is_some().then(|| {
                    to_tensor(dense::host::weight_gradient(x_values, norm, f32s(&out_grad), &g), vec![g.out_channels, channels, 1, 1])
                });
                let dy = normalized.then(|| {
                    to_tensor(
                        dense::host::input_gradient(f32s(&out_grad), f32s(&weight), &g, Some(&take_sums)),
                        vec![batch, channels, height, width],
                    )
                });
                (dy, weight_grad)
            }
        };
        let mut gradients = vec![(weight_node, weight_grad)];
        if let Some(dy) = dy {
            let (x_grad, sum_dy, sum_dy_xhat) =
                batch_norm::host::backward(x_values, f32s(&dy), &layer, Some(&sums), None, x_node.is_some());
            gradients.push((x_node, x_grad.map(|values| to_tensor(values, vec![batch, channels, height, width]))));
            gradients.push((gamma_node, Some(to_tensor(sum_dy_xhat, vec![channels]))));
            gradients.push((beta_node, Some(to_tensor(sum_dy, vec![channels]))));
        }
        for (node, gradient) in gradients {
            if let (Some(node), Some(gradient)) = (node, gradient) {
                grads.register::<Flex>(node.id, gradient);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::BatchNormConfig;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{Distribution, Tolerance};

    use super::*;
    use crate::kernels::dense::conv2d_dense_moments;
    use crate::kernels::training_batch_norm;

    /// Ours against burn's BatchNorm, the activation and burn's conv2d in turn: output, the
    /// gradients of x, gamma, beta and the weight, and the running statistics. Depthwise: strides
    /// 1 and 2, kernels 3 and 5, symmetric and asymmetric padding, channel counts around the
    /// kernels' 8-channel groups; pointwise: one image per product and several (small maps); with
    /// and without the input's plane moments.
    #[test]
    fn output_gradients_and_running_statistics_equal_burns_layers() {
        let device = Device::flex().autodiff();
        device.seed(11);
        let depthwise = |stride, padding| NormedConv::Depthwise { stride, padding };
        let cases = [
            // batch, channels, height, width, act, conv, weight
            (2, 3, 7, 9, Act::Relu6, depthwise(1, [1, 1]), [3, 1, 3, 3]),
            (3, 11, 12, 12, Act::Silu, depthwise(2, [1, 1]), [11, 1, 3, 3]),
            // TensorFlow's "SAME" at stride 2: one more after than before.
            (2, 16, 9, 16, Act::Relu6, depthwise(2, [1, 2]), [16, 1, 5, 5]),
            (1, 9, 8, 5, Act::Identity, depthwise(1, [2, 2]), [9, 1, 5, 5]),
            (4, 8, 6, 6, Act::Relu, depthwise(2, [0, 1]), [8, 1, 3, 3]),
            (2, 6, 40, 36, Act::Relu6, NormedConv::Pointwise, [5, 6, 1, 1]),
            (7, 10, 5, 7, Act::Silu, NormedConv::Pointwise, [12, 10, 1, 1]),
            (3, 4, 9, 8, Act::Identity, NormedConv::Pointwise, [4, 4, 1, 1]),
        ];
        for (case, (batch, channels, height, width, act, conv, weight_dims)) in cases.into_iter().enumerate() {
            // x as the expansion conv computes it, with its planes' moments.
            let input = Tensor::<4>::random([batch, 4, height, width], Distribution::Normal(1.0, 3.0), &device);
            let expand = Tensor::<4>::random([channels, 4, 1, 1], Distribution::Normal(0.0, 1.0), &device);
            let (x, x_moments) = conv2d_dense_moments(input, expand, None, [1, 1], [0, 0]);
            let weight = Tensor::<4>::random(weight_dims, Distribution::Normal(0.0, 0.5), &device);
            let (stride, [before, after], groups) = match conv {
                NormedConv::Depthwise { stride, padding } => (stride, padding, channels),
                NormedConv::Pointwise => (1, [0, 0], 1),
            };
            let options = ConvOptions::new([stride, stride], [0, 0], [1, 1], groups);
            let reference = |x: Tensor<4>, bn: &BatchNorm, weight| {
                let padded = act.apply(bn.forward(x)).pad((before, after, before, after), 0.0);
                conv2d(padded, weight, None, options.clone())
            };
            let out_grad = Tensor::<4>::random(
                reference(x.clone(), &BatchNormConfig::new(channels).init(&device), weight.clone()).dims(),
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let with_moments = case % 2 == 0;
            let run = |ours: bool| {
                let bn = training_batch_norm(channels, &device);
                let (x, weight) = (x.clone().require_grad(), weight.clone().require_grad());
                let y = if ours {
                    assert!(applies(&bn, &x, conv, &weight));
                    let moments = with_moments.then(|| x_moments.clone());
                    batch_norm_conv(&bn, x.clone(), moments, act, conv, weight.clone()).0
                } else {
                    reference(x.clone(), &bn, weight.clone())
                };
                let grads = (y.clone() * out_grad.clone()).sum().backward();
                [
                    y.into_data(),
                    x.grad(&grads).unwrap().into_data(),
                    bn.gamma.grad(&grads).unwrap().into_data(),
                    bn.beta.grad(&grads).unwrap().into_data(),
                    weight.grad(&grads).unwrap().into_data(),
                    bn.running_mean.value_sync().into_data(),
                    bn.running_var.value_sync().into_data(),
                ]
            };
            let (ours, burn) = (run(true), run(false));
            for (name, (ours, burn)) in ["y", "x grad", "gamma grad", "beta grad", "weight grad", "running mean", "running var"]
                .into_iter()
                .zip(ours.iter().zip(&burn))
            {
                println!("case {case}: {name}");
                ours.assert_approx_eq::<f32>(burn, Tolerance::<f32>::rel_abs(1e-3, 1e-3));
            }
        }
    }
}
