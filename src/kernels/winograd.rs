//! Dense 3x3 convolution with stride 1 (ResNet, VGG and the CIFAR nets spend most of their time
//! in it) by Winograd's F(2x2, 3x3): 2.25x fewer multiplications than the direct or im2col form.
//!
//! [`conv3x3`] computes what burn's `conv2d` computes for a `[out, in, 3, 3]` weight, stride 1,
//! no dilation, one group and symmetric zero padding of at most 2. On the flex device (f32) the
//! forward pass and the input and weight gradients run our kernels (`host`), the bias gradient is
//! a sum. Elsewhere it calls burn's `conv2d`. The route into burn is
//! the backend extension of `kernels::depthwise` (see there).

mod host;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::prelude::*;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, TensorData};

use host::{Filters, Geometry};

use super::{OptionalTensor, bias_gradient, contiguous, conv_step, f32s};

/// Largest padding [`conv3x3`] takes (the input gradient's convolution pads by `2 - padding`).
pub const MAX_PADDING: usize = 2;

/// Whether a 3x3 stride-1 convolution with `in_channels` input channels runs faster here than as
/// im2col products (`kernels::dense`): with few input channels the per-pixel transforms outweigh
/// the products (3-channel stems: im2col 2x faster forward and backward in `ferrovision bench
/// conv`). Smaller batches on small maps were measured too: there `bench conv` favours im2col per
/// layer (512 channels at 4x4, batch 32: 1.6x), yet routing those layers to it made the whole
/// `resnet18_cifar` step at batch 32 slower (35 against 45 img/s, back to back), so they stay here.
pub fn pays_off(in_channels: usize) -> bool {
    in_channels >= 16
}

/// Convolution of `x` `[batch, in, height, width]` with `weight` `[out, in, 3, 3]` and optional
/// `bias` `[out]`, stride 1, zero padding `padding` on every side:
/// `[batch, out, height + 2 * padding - 2, width + 2 * padding - 2]`.
///
/// The same as `burn::tensor::module::conv2d` with these options, faster on flex.
///
/// # Panics
///
/// If the shapes do not fit together as above, `padding` exceeds [`MAX_PADDING`], or the padded
/// input is smaller than the kernel.
pub fn conv3x3(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>, padding: usize) -> Tensor<4> {
    let [_, channels, height, width] = x.dims();
    let [out_channels, in_channels, kernel, kernel_width] = weight.dims();
    assert!(
        in_channels == channels && kernel == 3 && kernel_width == 3,
        "conv3x3: weight {:?} must be [out, in = {channels}, 3, 3]",
        weight.dims()
    );
    if let Some(bias) = &bias {
        assert_eq!(bias.dims(), [out_channels], "conv3x3: bias must be [out]");
    }
    assert!(padding <= MAX_PADDING, "conv3x3: padding {padding} above {MAX_PADDING}");
    assert!(height + 2 * padding >= 3 && width + 2 * padding >= 3, "conv3x3: input {height}x{width} smaller than the kernel");
    let ours = x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && bias.as_ref().is_none_or(|bias| bias.dtype() == DType::F32)
        && x.device().inner() == Device::flex();
    if !ours {
        return conv2d(x, weight, bias, options(padding));
    }
    let bias = OptionalTensor::from_option(bias.map(Tensor::into_dispatch));
    let output = <Dispatch as Conv3x3Backend>::conv3x3(x.into_dispatch(), weight.into_dispatch(), bias, padding);
    Tensor::from_dispatch(output)
}

fn options(padding: usize) -> ConvOptions<2> {
    ConvOptions::new([1, 1], [padding, padding], [1, 1], 1)
}

/// Our kernel as a burn backend operation. Callers guarantee what [`conv3x3`] checks.
#[backend_extension(Flex, Autodiff)]
trait Conv3x3Backend: Backend {
    fn conv3x3(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        #[extension_type] bias: OptionalTensor<Self>,
        padding: usize,
    ) -> FloatTensor<Self>;
}

impl Conv3x3Backend for Flex {
    fn conv3x3(x: FlexTensor, weight: FlexTensor, bias: OptionalTensor<Self>, padding: usize) -> FlexTensor {
        let g = geometry(&x, &weight, padding);
        let (x, weight, bias) = (contiguous(x), contiguous(weight), bias.into_option().map(contiguous));
        let output = host::forward(f32s(&x), f32s(&weight), bias.as_ref().map(f32s), &g, Filters::AsGiven);
        FlexTensor::from_data(TensorData::new(output, [g.batch, g.out_channels, g.out_height(), g.out_width()]))
    }
}

impl<C: CheckpointStrategy> Conv3x3Backend for Autodiff<Flex, C> {
    fn conv3x3(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: OptionalTensor<Self>, padding: usize) -> FloatTensor<Self> {
        conv_step(Conv3x3Backward, x, weight, bias, padding, |x, weight, bias| (Flex::conv3x3(x, weight, bias, padding), ())).0
    }
}

/// Backward step of [`Conv3x3Backend::conv3x3`] on flex; parents are `[x, weight]` or
/// `[x, weight, bias]`.
#[derive(Debug)]
struct Conv3x3Backward;

impl<const N: usize> Backward<Flex, N> for Conv3x3Backward {
    /// The checkpointed `x` and `weight`, and the padding.
    type State = (NodeId, NodeId, usize);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let out_grad = contiguous(grads.consume::<Flex>(&ops.node));
        let (x_id, weight_id, padding) = ops.state;
        let x = contiguous(checkpointer.retrieve_node_output::<FlexTensor>(x_id));
        let weight = contiguous(checkpointer.retrieve_node_output::<FlexTensor>(weight_id));
        let g = geometry(&x, &weight, padding);
        let [x_node, weight_node, bias_node] = [0, 1, 2].map(|i| ops.parents.get(i).cloned().flatten());
        let to_tensor = |values: Vec<f32>, shape: Vec<usize>| FlexTensor::from_data(TensorData::new(values, shape));
        let x_grad = x_node
            .is_some()
            .then(|| to_tensor(host::input_gradient(f32s(&out_grad), f32s(&weight), &g), vec![g.batch, g.in_channels, g.height, g.width]));
        let bias_grad = bias_node.is_some().then(|| {
            to_tensor(bias_gradient(f32s(&out_grad), g.batch, g.out_channels, g.out_height() * g.out_width()), vec![g.out_channels])
        });
        let weight_grad = weight_node
            .is_some()
            .then(|| to_tensor(host::weight_gradient(f32s(&x), f32s(&out_grad), &g), vec![g.out_channels, g.in_channels, 3, 3]));
        for (node, gradient) in [(x_node, x_grad), (weight_node, weight_grad), (bias_node, bias_grad)] {
            if let (Some(node), Some(gradient)) = (node, gradient) {
                grads.register::<Flex>(node.id, gradient);
            }
        }
    }
}

fn geometry(x: &FlexTensor, weight: &FlexTensor, padding: usize) -> Geometry {
    let [batch, in_channels, height, width] = x.shape().dims();
    let out_channels = weight.shape().dims::<4>()[0];
    Geometry { batch, in_channels, out_channels, height, width, padding }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;
    use crate::kernels::assert_conv_matches_burn;

    /// Ours and burn's conv2d on the same inputs: output and all gradients agree.
    fn check([batch, ins, outs, height, width]: [usize; 5], padding: usize, bias: bool, device: &Device) {
        assert_conv_matches_burn([batch, ins, height, width], [outs, ins, 3, 3], bias, options(padding), device, |x, w, b| {
            conv3x3(x, w, b, padding)
        });
    }

    #[test]
    fn output_and_gradients_equal_burns_conv2d() {
        let device = Device::flex().autodiff();
        device.seed(11);
        for padding in 0..=MAX_PADDING {
            for (i, dims) in [[1, 3, 4, 7, 9], [2, 5, 3, 8, 8], [3, 16, 24, 6, 11], [2, 33, 17, 12, 5]].into_iter().enumerate() {
                check(dims, padding, (i + padding) % 2 == 0, &device);
            }
        }
    }

    #[test]
    fn untracked_inputs_get_no_gradient() {
        // A frozen weight and bias (not require_grad): only the input gradient is computed.
        let device = Device::flex().autodiff();
        let x = Tensor::<4>::random([2, 3, 6, 6], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let weight = Tensor::<4>::random([4, 3, 3, 3], Distribution::Normal(0.0, 1.0), &device);
        let bias = Tensor::<1>::random([4], Distribution::Normal(0.0, 1.0), &device);
        let grads = conv3x3(x.clone(), weight.clone(), Some(bias.clone()), 1).sum().backward();
        assert_eq!(x.grad(&grads).map(|g| g.dims()), Some([2, 3, 6, 6]));
        assert!(weight.grad(&grads).is_none() && bias.grad(&grads).is_none());
    }
}
