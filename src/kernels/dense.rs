//! Dense 2D convolution (one group, no dilation) on our kernels: the convolutions that
//! `kernels::winograd` does not take (strided ones, 1x1 projections, stems, larger kernels).
//!
//! [`conv2d_dense`] computes what burn's `conv2d` computes. On the flex device (f32) the forward
//! pass and the input and weight gradients run `host` (im2col products over chunks of images;
//! burn-flex's weight gradient ran at about a fifth of the sgemm peak on the strided and 1x1
//! convolutions of ResNet-18, see `bench train --profile`), the bias gradient is a sum. Elsewhere
//! it calls burn's `conv2d`.
//! The route into burn is the backend extension of `kernels::depthwise` (see there).

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

use host::Geometry;

use super::activation::Act;
use super::{OptionalTensor, bias_gradient, contiguous, conv_step, f32s};

/// Convolution of `x` `[batch, in, height, width]` with `weight` `[out, in, kh, kw]` and optional
/// `bias` `[out]`, `stride` and symmetric zero `padding` (`[vertical, horizontal]` each), one
/// group, no dilation. The same as `burn::tensor::module::conv2d` with these options.
///
/// # Panics
///
/// If the shapes do not fit together as above, a stride is 0, or the kernel exceeds the padded input.
pub fn conv2d_dense(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>, stride: [usize; 2], padding: [usize; 2]) -> Tensor<4> {
    conv2d_dense_act(x, weight, bias, stride, padding, Act::Identity)
}

/// `act.apply(conv2d_dense(..))`; at inference on flex (no autodiff) the bias and the activation
/// run on each chunk of the output while it is in cache, not as passes of their own.
pub fn conv2d_dense_act(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    stride: [usize; 2],
    padding: [usize; 2],
    act: Act,
) -> Tensor<4> {
    let [_, channels, height, width] = x.dims();
    let [out_channels, in_channels, kh, kw] = weight.dims();
    assert_eq!(in_channels, channels, "conv2d_dense: weight {:?} must be [out, in = {channels}, kh, kw]", weight.dims());
    if let Some(bias) = &bias {
        assert_eq!(bias.dims(), [out_channels], "conv2d_dense: bias must be [out]");
    }
    assert!(stride[0] > 0 && stride[1] > 0, "conv2d_dense: stride must be positive");
    assert!(height + 2 * padding[0] >= kh && width + 2 * padding[1] >= kw, "conv2d_dense: kernel larger than the padded input");
    let ours = x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && bias.as_ref().is_none_or(|bias| bias.dtype() == DType::F32)
        && x.device().inner() == Device::flex();
    if !ours {
        return act.apply(conv2d(x, weight, bias, options(stride, padding)));
    }
    // Training differentiates the activation on its own.
    let (act, after) = if x.device().is_autodiff() { (Act::Identity, act) } else { (act, Act::Identity) };
    after.apply(run(x, weight, bias, stride, padding, act, false).0)
}

/// [`conv2d_dense`] on flex (f32 tensors, shapes checked), and with `moments` each output plane's
/// moments for the BatchNorm after it (`kernels::plane_moments`).
pub(crate) fn conv2d_dense_moments(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    stride: [usize; 2],
    padding: [usize; 2],
) -> (Tensor<4>, Tensor<1>) {
    run(x, weight, bias, stride, padding, Act::Identity, true)
}

fn run(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    [sy, sx]: [usize; 2],
    [py, px]: [usize; 2],
    act: Act,
    moments: bool,
) -> (Tensor<4>, Tensor<1>) {
    let bias = OptionalTensor::from_option(bias.map(Tensor::into_dispatch));
    let (output, moments) =
        <Dispatch as DenseConvBackend>::conv2d_dense(x.into_dispatch(), weight.into_dispatch(), bias, sy, sx, py, px, act, moments);
    (Tensor::from_dispatch(output), Tensor::from_dispatch(moments))
}

fn options(stride: [usize; 2], padding: [usize; 2]) -> ConvOptions<2> {
    ConvOptions::new(stride, padding, [1, 1], 1)
}

/// Our dense convolution as a burn backend operation, and with `moments` the output planes'
/// moments (outside the graph; empty without). Callers guarantee what [`conv2d_dense`] checks.
/// (Arrays are not among the argument types the extension macro takes, hence the four sizes.)
#[backend_extension(Flex, Autodiff)]
trait DenseConvBackend: Backend {
    #[allow(clippy::too_many_arguments)]
    fn conv2d_dense(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        #[extension_type] bias: OptionalTensor<Self>,
        stride_y: usize,
        stride_x: usize,
        padding_y: usize,
        padding_x: usize,
        act: Act,
        moments: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

impl DenseConvBackend for Flex {
    #[allow(clippy::too_many_arguments)]
    fn conv2d_dense(
        x: FlexTensor,
        weight: FlexTensor,
        bias: OptionalTensor<Self>,
        sy: usize,
        sx: usize,
        py: usize,
        px: usize,
        act: Act,
        moments: bool,
    ) -> (FlexTensor, FlexTensor) {
        let g = geometry(&x, &weight, [sy, sx, py, px]);
        let (x, weight, bias) = (contiguous(x), contiguous(weight), bias.into_option().map(contiguous));
        let (y, moments) = host::forward(f32s(&x), None, f32s(&weight), bias.as_ref().map(f32s), act, &g, moments);
        let moments = moments.unwrap_or_default();
        let len = moments.len();
        (
            FlexTensor::from_data(TensorData::new(y, [g.batch, g.out_channels, g.out_height(), g.out_width()])),
            FlexTensor::from_data(TensorData::new(moments, [len])),
        )
    }
}

impl<C: CheckpointStrategy> DenseConvBackend for Autodiff<Flex, C> {
    #[allow(clippy::too_many_arguments)]
    fn conv2d_dense(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: OptionalTensor<Self>,
        sy: usize,
        sx: usize,
        py: usize,
        px: usize,
        act: Act,
        moments: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        assert_eq!(act, Act::Identity, "conv2d_dense: training applies the activation on its own");
        let (output, moments) = conv_step(DenseConvBackward, x, weight, bias, [sy, sx, py, px], |x, weight, bias| {
            Flex::conv2d_dense(x, weight, bias, sy, sx, py, px, act, moments)
        });
        (output, <Self as AutodiffBackend>::from_inner(moments))
    }
}

/// Backward step of [`DenseConvBackend::conv2d_dense`] on flex; parents are `[x, weight]` or
/// `[x, weight, bias]`.
#[derive(Debug)]
struct DenseConvBackward;

impl<const N: usize> Backward<Flex, N> for DenseConvBackward {
    /// The checkpointed `x` and `weight`, and stride and padding (vertical, horizontal each).
    type State = (NodeId, NodeId, [usize; 4]);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let out_grad = contiguous(grads.consume::<Flex>(&ops.node));
        let (x_id, weight_id, [sy, sx, py, px]) = ops.state;
        let x = contiguous(checkpointer.retrieve_node_output::<FlexTensor>(x_id));
        let weight = contiguous(checkpointer.retrieve_node_output::<FlexTensor>(weight_id));
        let g = geometry(&x, &weight, [sy, sx, py, px]);
        let Geometry { batch, in_channels, out_channels, height, width, kernel: [kh, kw], .. } = g;
        let [x_node, weight_node, bias_node] = [0, 1, 2].map(|i| ops.parents.get(i).cloned().flatten());
        let to_tensor = |values: Vec<f32>, shape: Vec<usize>| FlexTensor::from_data(TensorData::new(values, shape));
        let weight_grad = weight_node
            .is_some()
            .then(|| to_tensor(host::weight_gradient(f32s(&x), None, f32s(&out_grad), &g), vec![out_channels, in_channels, kh, kw]));
        let bias_grad = bias_node
            .is_some()
            .then(|| to_tensor(bias_gradient(f32s(&out_grad), batch, out_channels, g.out_height() * g.out_width()), vec![out_channels]));
        let x_grad = x_node
            .is_some()
            .then(|| to_tensor(host::input_gradient(f32s(&out_grad), f32s(&weight), &g, None), vec![batch, in_channels, height, width]));
        for (node, gradient) in [(x_node, x_grad), (weight_node, weight_grad), (bias_node, bias_grad)] {
            if let (Some(node), Some(gradient)) = (node, gradient) {
                grads.register::<Flex>(node.id, gradient);
            }
        }
    }
}

pub(super) fn geometry(x: &FlexTensor, weight: &FlexTensor, [sy, sx, py, px]: [usize; 4]) -> Geometry {
    let [batch, in_channels, height, width] = x.shape().dims();
    let [out_channels, _, kh, kw] = weight.shape().dims();
    Geometry { batch, in_channels, out_channels, height, width, kernel: [kh, kw], stride: [sy, sx], padding: [py, px] }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::assert_conv_matches_burn;

    /// Ours and burn's conv2d on the same inputs: output and all gradients agree.
    fn check(
        [batch, ins, outs, height, width]: [usize; 5],
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        bias: bool,
        device: &Device,
    ) {
        let weight = [outs, ins, kernel[0], kernel[1]];
        assert_conv_matches_burn([batch, ins, height, width], weight, bias, options(stride, padding), device, |x, w, b| {
            conv2d_dense(x, w, b, stride, padding)
        });
    }

    #[test]
    fn output_and_gradients_equal_burns_conv2d() {
        let device = Device::flex().autodiff();
        device.seed(5);
        // Strided 3x3, 1x1 projections (strided or not; one image per chunk or several), a 7x7
        // stem, a non-square kernel, odd sizes, many images (several chunks).
        check([2, 3, 5, 9, 9], [3, 3], [2, 2], [1, 1], true, &device);
        check([2, 6, 5, 7, 9], [1, 1], [1, 1], [0, 0], true, &device);
        check([3, 8, 6, 8, 7], [1, 1], [2, 2], [0, 0], false, &device);
        check([40, 4, 6, 5, 5], [1, 1], [1, 1], [0, 0], true, &device);
        check([2, 3, 4, 15, 13], [7, 7], [2, 2], [3, 3], false, &device);
        check([2, 5, 3, 9, 8], [3, 5], [1, 2], [1, 2], true, &device);
        // Padding wider than the kernel reach on some columns, stride 1 and 3.
        check([3, 2, 3, 6, 7], [3, 3], [1, 1], [2, 2], false, &device);
        check([2, 2, 3, 7, 8], [1, 3], [1, 3], [0, 2], true, &device);
        // Images whose im2col matrix is cut into blocks of output rows (the last one shorter).
        check([1, 16, 4, 64, 64], [3, 3], [1, 1], [1, 1], true, &device);
        check([2, 8, 3, 80, 72], [5, 5], [2, 2], [2, 2], false, &device);
    }
}
