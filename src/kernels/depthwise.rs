//! Depthwise 2D convolution (groups = input channels = output channels, one `k`x`k` filter per
//! channel), the spatial convolution of MobileNet and EfficientNet blocks.
//!
//! [`depthwise_conv2d`] computes exactly what burn's `conv2d` with `groups = channels` computes;
//! the models call it for their depthwise `Conv2d` layers (`models::layers::conv_forward`), so
//! parameters and weight files are unchanged. On the flex device (f32, kernels up to 7x7) it runs
//! our own CPU kernels (`host`), forward and backward; elsewhere it calls burn's grouped `conv2d`.
//!
//! The route into burn is a backend extension (`#[backend_extension(Flex, Autodiff)]`): the
//! trait is implemented for `Flex` (the forward kernel on the tensor's host memory) and for
//! `Autodiff<Flex, C>` (the forward, registered with a backward step that runs our backward
//! kernels), and the generated `Dispatch` implementation picks one from the tensor's device at
//! run time. Other backends are not listed, so the public function sends them to burn's conv2d
//! before reaching the extension.

pub(super) mod host;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::prelude::*;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, TensorData};

use host::{Geometry, InputNorm, OutGrad, Wanted, XGradDone};

use super::{OptionalTensor, contiguous, conv_step, exclusive_f32s, f32s};

/// Depthwise convolution of `x` `[batch, channels, height, width]` with `weight`
/// `[channels, 1, k, k]` and optional `bias` `[channels]`, zero padding `[before, after]` on both
/// axes (`before` rows above and columns left, `after` below and right; they differ in TensorFlow's
/// "SAME" padding): `[batch, channels, (height + before + after - k) / stride + 1, (width + ...) /
/// stride + 1]`.
///
/// The same as `burn::tensor::module::conv2d` with `groups = channels`, faster on flex.
///
/// # Panics
///
/// If the shapes do not fit together as above, `stride` is 0, or `k` exceeds the padded input.
pub fn depthwise_conv2d(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>, stride: usize, padding: [usize; 2]) -> Tensor<4> {
    run(x, weight, bias, stride, padding, false).0
}

/// [`depthwise_conv2d`] and its output planes' moments for the BatchNorm after it
/// (`kernels::plane_moments`), where it runs on our kernels; else burn's output and no moments.
pub(crate) fn depthwise_conv2d_moments(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    stride: usize,
    padding: [usize; 2],
) -> (Tensor<4>, Option<Tensor<1>>) {
    run(x, weight, bias, stride, padding, true)
}

/// Our kernels' output and, where they ran, the moments (empty without `moments`); else burn's
/// output.
fn run(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    stride: usize,
    padding: [usize; 2],
    moments: bool,
) -> (Tensor<4>, Option<Tensor<1>>) {
    let [_, channels, height, width] = x.dims();
    let [weight_channels, per_group, kernel, kernel_width] = weight.dims();
    assert!(
        weight_channels == channels && per_group == 1 && kernel == kernel_width,
        "depthwise_conv2d: weight {:?} must be [channels = {channels}, 1, k, k]",
        weight.dims()
    );
    if let Some(bias) = &bias {
        assert_eq!(bias.dims(), [channels], "depthwise_conv2d: bias must be [channels]");
    }
    assert!(stride > 0, "depthwise_conv2d: stride must be positive");
    let [before, after] = padding;
    assert!(
        height + before + after >= kernel && width + before + after >= kernel,
        "depthwise_conv2d: kernel {kernel} larger than the padded input {height}x{width} (padding {padding:?})"
    );
    let ours = kernel <= host::MAX_KERNEL
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && bias.as_ref().is_none_or(|bias| bias.dtype() == DType::F32)
        && x.device().inner() == Device::flex();
    if !ours {
        let x = if before == after { x } else { x.pad((before, after, before, after), 0.0) };
        let same = if before == after { before } else { 0 };
        return (conv2d(x, weight, bias, ConvOptions::new([stride, stride], [same, same], [1, 1], channels)), None);
    }
    let bias = OptionalTensor::from_option(bias.map(Tensor::into_dispatch));
    let (output, moments) =
        <Dispatch as DepthwiseConvBackend>::depthwise_conv2d(x.into_dispatch(), weight.into_dispatch(), bias, stride, padding, moments);
    (Tensor::from_dispatch(output), Some(Tensor::from_dispatch(moments)))
}

/// Our kernels as a burn backend operation, and with `moments` the output planes' moments
/// (outside the graph; empty without). Callers guarantee what [`depthwise_conv2d`] checks: f32
/// tensors of matching shapes and a kernel of at most `host::MAX_KERNEL`.
#[backend_extension(Flex, Autodiff)]
trait DepthwiseConvBackend: Backend {
    fn depthwise_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        #[extension_type] bias: OptionalTensor<Self>,
        stride: usize,
        padding: [usize; 2],
        moments: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

impl DepthwiseConvBackend for Flex {
    fn depthwise_conv2d(
        x: FlexTensor,
        weight: FlexTensor,
        bias: OptionalTensor<Self>,
        stride: usize,
        padding: [usize; 2],
        moments: bool,
    ) -> (FlexTensor, FlexTensor) {
        let geometry = geometry(&x, &weight, stride, padding);
        let (x, weight, bias) = (contiguous(x), contiguous(weight), bias.into_option().map(contiguous));
        let (output, moments) = host::forward(f32s(&x), None, f32s(&weight), bias.as_ref().map(f32s), &geometry, moments);
        let shape = [geometry.batch, geometry.channels, geometry.out_height(), geometry.out_width()];
        let moments = moments.unwrap_or_default();
        let len = moments.len();
        (FlexTensor::from_data(TensorData::new(output, shape)), FlexTensor::from_data(TensorData::new(moments, [len])))
    }
}

impl<C: CheckpointStrategy> DepthwiseConvBackend for Autodiff<Flex, C> {
    fn depthwise_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: OptionalTensor<Self>,
        stride: usize,
        padding: [usize; 2],
        moments: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (output, moments) = conv_step(DepthwiseBackward, x, weight, bias, (stride, padding), |x, weight, bias| {
            Flex::depthwise_conv2d(x, weight, bias, stride, padding, moments)
        });
        (output, <Self as AutodiffBackend>::from_inner(moments))
    }
}

/// Backward step of [`DepthwiseConvBackend::depthwise_conv2d`] on flex; parents are
/// `[x, weight]` or `[x, weight, bias]`.
#[derive(Debug)]
struct DepthwiseBackward;

impl<const N: usize> Backward<Flex, N> for DepthwiseBackward {
    /// The checkpointed `x` and `weight`, and (stride, padding).
    type State = (NodeId, NodeId, (usize, [usize; 2]));

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let out_grad = contiguous(grads.consume::<Flex>(&ops.node));
        let (x_id, weight_id, (stride, padding)) = ops.state;
        let x = contiguous(checkpointer.retrieve_node_output::<FlexTensor>(x_id));
        let weight = contiguous(checkpointer.retrieve_node_output::<FlexTensor>(weight_id));
        let geometry = geometry(&x, &weight, stride, padding);
        let [x_node, weight_node, bias_node] = [0, 1, 2].map(|i| ops.parents.get(i).cloned().flatten());
        let wanted = Wanted { x: x_node.is_some(), weight: weight_node.is_some(), bias: bias_node.is_some() };
        let [x_grad, weight_grad, bias_grad] = backward_tensors(f32s(&x), None, f32s(&weight), out_grad, &geometry, wanted, None);
        for (node, gradient) in [(x_node, x_grad), (weight_node, weight_grad), (bias_node, bias_grad)] {
            if let (Some(node), Some(gradient)) = (node, gradient) {
                grads.register::<Flex>(node.id, gradient);
            }
        }
    }
}

/// `host::backward` on tensors: the gradients of the convolution's input, weight and bias, where
/// wanted.
pub(super) fn backward_tensors(
    x: &[f32],
    norm: Option<InputNorm>,
    weight: &[f32],
    mut out_grad: FlexTensor,
    geometry: &Geometry,
    wanted: Wanted,
    x_grad_done: Option<XGradDone>,
) -> [Option<FlexTensor>; 3] {
    let Geometry { batch, channels, height, width, kernel, .. } = *geometry;
    let to_tensor = |values: Vec<f32>, shape: Vec<usize>| FlexTensor::from_data(TensorData::new(values, shape));
    // An output gradient that nothing else holds and that has the input's shape becomes the
    // input gradient in place: no new buffer, no fresh pages to fault in.
    let (computed, x_grad) = if wanted.x
        && out_grad.shape().dims::<4>() == [batch, channels, height, width]
        && let Some(values) = exclusive_f32s(&mut out_grad)
    {
        (host::backward(x, norm, weight, OutGrad::Overwrite(values), geometry, wanted, x_grad_done), Some(out_grad))
    } else {
        let mut computed = host::backward(x, norm, weight, OutGrad::Read(f32s(&out_grad)), geometry, wanted, x_grad_done);
        let x_grad = computed.x.take().map(|values| to_tensor(values, vec![batch, channels, height, width]));
        (computed, x_grad)
    };
    [
        x_grad,
        computed.weight.map(|values| to_tensor(values, vec![channels, 1, kernel, kernel])),
        computed.bias.map(|values| to_tensor(values, vec![channels])),
    ]
}

pub(super) fn geometry(x: &FlexTensor, weight: &FlexTensor, stride: usize, [padding, padding_after]: [usize; 2]) -> Geometry {
    let [batch, channels, height, width] = x.shape().dims();
    let kernel = weight.shape().dims::<4>()[2];
    Geometry { batch, channels, height, width, kernel, stride, padding, padding_after }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;
    use crate::kernels::assert_conv_matches_burn;

    struct Case {
        batch: usize,
        channels: usize,
        height: usize,
        width: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    }

    /// Ours and burn's grouped conv2d on the same inputs: output and all gradients agree.
    fn check(case: &Case, device: &Device) {
        let Case { batch, channels, height, width, kernel, stride, padding, bias } = *case;
        let options = ConvOptions::new([stride, stride], [padding, padding], [1, 1], channels);
        assert_conv_matches_burn([batch, channels, height, width], [channels, 1, kernel, kernel], bias, options, device, |x, w, b| {
            depthwise_conv2d(x, w, b, stride, [padding, padding])
        });
    }

    #[test]
    fn output_and_gradients_equal_burns_grouped_conv2d() {
        let device = Device::flex().autodiff();
        device.seed(7);
        for kernel in [3, 5] {
            for stride in [1, 2] {
                for padding in 0..=kernel / 2 {
                    for (batch, height, width) in [(1, 7, 9), (3, 12, 12), (3, 9, 16)] {
                        let bias = (kernel + stride + padding + batch) % 2 == 0;
                        check(&Case { batch, channels: 4, height, width, kernel, stride, padding, bias }, &device);
                    }
                }
            }
        }
    }

    #[test]
    fn untracked_inputs_get_no_gradient() {
        // A frozen weight and bias (not require_grad): only the input gradient is computed.
        let device = Device::flex().autodiff();
        let x = Tensor::<4>::random([2, 3, 6, 6], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let weight = Tensor::<4>::random([3, 1, 3, 3], Distribution::Normal(0.0, 1.0), &device);
        let bias = Tensor::<1>::random([3], Distribution::Normal(0.0, 1.0), &device);
        let grads = depthwise_conv2d(x.clone(), weight.clone(), Some(bias.clone()), 1, [1, 1]).sum().backward();
        assert_eq!(x.grad(&grads).map(|g| g.dims()), Some([2, 3, 6, 6]));
        assert!(weight.grad(&grads).is_none() && bias.grad(&grads).is_none());
    }

    #[test]
    fn runs_burns_conv2d_where_our_kernels_do_not_apply() {
        // A 9x9 kernel is beyond host::MAX_KERNEL; the result is still the grouped convolution.
        check(
            &Case { batch: 2, channels: 3, height: 11, width: 10, kernel: 9, stride: 1, padding: 4, bias: true },
            &Device::flex().autodiff(),
        );
    }
}
