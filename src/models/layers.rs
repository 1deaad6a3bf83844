//! Layers shared by the model families.

use std::cell::{Cell, RefCell};

use burn::module::{Flag, Module, Param, ParamId, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::MaxPool2d;
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::sigmoid;
use burn::tensor::ops::ConvOptions;
use serde::{Deserialize, Serialize};

use super::{params, trace};
pub use crate::kernels::activation::Act;
use crate::kernels::batch_norm;
use crate::kernels::dense::{conv2d_dense_act, conv2d_dense_moments};
use crate::kernels::depthwise::{depthwise_conv2d, depthwise_conv2d_moments};
use crate::kernels::max_pool;
use crate::kernels::norm_conv::{self, NormedConv};
use crate::kernels::squeeze_excite;
use crate::kernels::winograd::{self, conv3x3};

/// How convolution and linear weights are initialized (PyTorch's `torch.nn.init` names).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WeightInit {
    /// Each layer's own default (PyTorch's: uniform in ±1/sqrt(fan_in)); BatchNorm weight 1, bias 0.
    #[default]
    Default,
    /// Every weight set to `model.init_constant`.
    Constant,
    XavierUniform,
    XavierNormal,
    /// He initialization for ReLU networks (gain sqrt(2), fan_in).
    KaimingUniform,
    KaimingNormal,
    /// Each conv's first `min(in, out)` filters pass their input channel through unchanged
    /// (`torch.nn.init.dirac_` on those filters), the other filters and the linear layers keep
    /// the layer's default: the airbench nets' start, an identity that training departs from.
    Dirac,
}

/// How conv and linear weights start: the scheme, and the value `constant` sets.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Init {
    pub scheme: WeightInit,
    pub constant: f64,
}

impl Init {
    /// The burn initializer for conv/linear weights, or `None` for the layer's default.
    fn initializer(self) -> Option<Initializer> {
        let relu_gain = std::f64::consts::SQRT_2;
        match self.scheme {
            WeightInit::Default | WeightInit::Dirac => None,
            WeightInit::Constant => Some(Initializer::Constant { value: self.constant }),
            WeightInit::XavierUniform => Some(Initializer::XavierUniform { gain: 1.0 }),
            WeightInit::XavierNormal => Some(Initializer::XavierNormal { gain: 1.0 }),
            WeightInit::KaimingUniform => Some(Initializer::KaimingUniform { gain: relu_gain, fan_out_only: false }),
            WeightInit::KaimingNormal => Some(Initializer::KaimingNormal { gain: relu_gain, fan_out_only: false }),
        }
    }
}

/// How a convolution pads its input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Padding {
    /// `kernel / 2` on every side (PyTorch's usual `padding=(k-1)//2`).
    #[default]
    Symmetric,
    /// TensorFlow's "SAME": output size `ceil(input / stride)`, the total padding that needs split
    /// with the odd pixel at the bottom/right, computed from the input size at run time. For a
    /// stride-2 conv on an even size this is asymmetric (3x3: 0 top/left, 1 bottom/right), which
    /// is what weights trained in TensorFlow (EfficientNet-Lite) expect. burn's
    /// `PaddingConfig2d::Same` computes exactly this rule per forward call (see the test below).
    TfSame,
}

impl Padding {
    fn config(self, kernel: usize) -> PaddingConfig2d {
        match self {
            Padding::Symmetric => {
                let p = kernel / 2;
                PaddingConfig2d::Explicit(p, p, p, p)
            }
            Padding::TfSame => PaddingConfig2d::Same,
        }
    }
}

thread_local! {
    /// Running statistics numbered so far in the model being built (see [`numbered_states`]).
    static STATE_IDS: Cell<u64> = const { Cell::new(0) };
}

/// `build()`, the BatchNorm running statistics it creates numbered from 0 in creation order.
pub fn numbered_states<R>(build: impl FnOnce() -> R) -> R {
    STATE_IDS.set(0);
    build()
}

/// What the layer constructors below do besides constructing, while [`with_layer_plan`] runs.
enum LayerPlan {
    /// Note each new layer's weight id, in construction order.
    Record(Vec<ParamId>),
    /// Give the `i`-th new layer `[inputs, outputs]` channels where entry `i` says so.
    Apply { channels: Vec<Option<[usize; 2]>>, next: usize },
}

thread_local! {
    static LAYER_PLAN: RefCell<Option<LayerPlan>> = const { RefCell::new(None) };
}

/// `build()` recording the weight id of each conv, BatchNorm and linear layer it constructs, in
/// construction order.
pub fn recording_layers<R>(build: impl FnOnce() -> R) -> (R, Vec<ParamId>) {
    let (result, plan) = with_plan(LayerPlan::Record(Vec::new()), build);
    let LayerPlan::Record(ids) = plan else { unreachable!("the plan keeps its kind") };
    (result, ids)
}

/// `build()` with the channels of its `i`-th constructed layer set to `channels[i]` where that is
/// given (a pruned architecture; the indices are those of [`recording_layers`]). A depthwise
/// convolution keeps one group per channel.
pub fn with_layer_channels<R>(channels: Vec<Option<[usize; 2]>>, build: impl FnOnce() -> R) -> R {
    with_plan(LayerPlan::Apply { channels, next: 0 }, build).0
}

fn with_plan<R>(plan: LayerPlan, build: impl FnOnce() -> R) -> (R, LayerPlan) {
    LAYER_PLAN.set(Some(plan));
    // Taken back even if `build` panics.
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            LAYER_PLAN.set(None);
        }
    }
    let reset = Reset;
    let result = build();
    let plan = LAYER_PLAN.take().expect("the plan is set while building");
    drop(reset);
    (result, plan)
}

/// The channels the layer under construction gets: `planned` unless a plan changes them.
pub(super) fn planned_channels(planned: [usize; 2]) -> [usize; 2] {
    LAYER_PLAN.with_borrow_mut(|plan| match plan {
        Some(LayerPlan::Apply { channels, next }) => {
            let changed = channels.get(*next).copied().flatten();
            *next += 1;
            changed.unwrap_or(planned)
        }
        _ => planned,
    })
}

/// Notes a constructed layer's weight id when the plan records.
pub(super) fn constructed(weight: ParamId) {
    LAYER_PLAN.with_borrow_mut(|plan| {
        if let Some(LayerPlan::Record(ids)) = plan {
            ids.push(weight);
        }
    });
}

fn next_state_id() -> ParamId {
    let n = STATE_IDS.replace(STATE_IDS.get() + 1);
    params::stable_id(&n.to_string(), "running state")
}

/// BatchNorm settings, in PyTorch's convention (`running = (1 - momentum) * running + momentum * batch`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BnParams {
    pub epsilon: f64,
    pub momentum: f64,
}

impl BnParams {
    /// PyTorch's defaults.
    pub const TORCH: BnParams = BnParams { epsilon: 1e-5, momentum: 0.1 };
    /// TensorFlow's EfficientNet settings (decay 0.99, i.e. PyTorch momentum 0.01, eps 1e-3).
    pub const TF: BnParams = BnParams { epsilon: 1e-3, momentum: 0.01 };

    /// These settings with another momentum where one is given (`model.bn_momentum`).
    pub fn with_momentum(self, momentum: Option<f64>) -> Self {
        Self { momentum: momentum.unwrap_or(self.momentum), ..self }
    }

    pub fn init(self, channels: usize, device: &Device) -> BatchNorm {
        let [channels, _] = planned_channels([channels, channels]);
        let mut bn = BatchNormConfig::new(channels).with_epsilon(self.epsilon).with_momentum(self.momentum).init(device);
        // burn draws the running statistics' ids at random, and a mapper cannot change them (see
        // `params::with_stable_ids`): number them in build order so a seed's checkpoints repeat.
        bn.running_mean = RunningState::with_id(next_state_id(), bn.running_mean.value());
        bn.running_var = RunningState::with_id(next_state_id(), bn.running_var.value());
        constructed(bn.gamma.id);
        bn
    }
}

impl Default for BnParams {
    fn default() -> Self {
        Self::TORCH
    }
}

/// Everything about a conv (+BN +activation) unit except its channel counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvSpec {
    pub kernel: usize,
    pub stride: usize,
    /// 1 for a dense conv, the channel count for a depthwise one.
    pub groups: usize,
    pub padding: Padding,
    pub norm: BnParams,
    pub act: Act,
}

impl ConvSpec {
    /// A dense conv, symmetric padding, PyTorch BatchNorm defaults, no activation.
    pub fn new(kernel: usize, stride: usize) -> Self {
        Self { kernel, stride, groups: 1, padding: Padding::Symmetric, norm: BnParams::TORCH, act: Act::Identity }
    }

    pub fn act(self, act: Act) -> Self {
        Self { act, ..self }
    }

    pub fn groups(self, groups: usize) -> Self {
        Self { groups, ..self }
    }

    pub fn padding(self, padding: Padding) -> Self {
        Self { padding, ..self }
    }

    pub fn norm(self, norm: BnParams) -> Self {
        Self { norm, ..self }
    }
}

/// A conv layer with `init` applied (bias only where no BatchNorm follows).
pub fn conv(init: Init, channels: [usize; 2], kernel: usize, stride: usize, bias: bool, device: &Device) -> Conv2d {
    conv_with(init, channels, &ConvSpec::new(kernel, stride), bias, device)
}

/// A conv layer shaped by `spec` (its norm and activation are the caller's business).
pub fn conv_with(init: Init, channels: [usize; 2], spec: &ConvSpec, bias: bool, device: &Device) -> Conv2d {
    let depthwise = spec.groups > 1 && spec.groups == channels[0] && channels[0] == channels[1];
    let channels = planned_channels(channels);
    let groups = if depthwise { channels[0] } else { spec.groups };
    let mut c = Conv2dConfig::new(channels, [spec.kernel, spec.kernel])
        .with_stride([spec.stride, spec.stride])
        .with_groups(groups)
        .with_padding(spec.padding.config(spec.kernel))
        .with_bias(bias);
    if let Some(initializer) = init.initializer() {
        c = c.with_initializer(initializer);
    }
    let conv = c.init(device);
    constructed(conv.weight.id);
    match init.scheme {
        WeightInit::Dirac if spec.groups == 1 && spec.kernel % 2 == 1 => dirac(conv),
        _ => conv,
    }
}

/// `conv` with its first `min(in, out)` filters set to the identity on their own input channel.
fn dirac(mut conv: Conv2d) -> Conv2d {
    let [outputs, inputs, kh, kw] = conv.weight.dims();
    let device = conv.weight.device();
    let mut values: Vec<f32> = conv.weight.val().into_data().try_to_vec::<f32>().expect("f32 weights");
    for o in 0..outputs.min(inputs) {
        let filter = &mut values[o * inputs * kh * kw..(o + 1) * inputs * kh * kw];
        filter.fill(0.0);
        filter[o * kh * kw + kh / 2 * kw + kw / 2] = 1.0;
    }
    let weight = Tensor::<4>::from_data(burn::tensor::TensorData::new(values, [outputs, inputs, kh, kw]), &device);
    conv.weight = Param::initialized(conv.weight.id, weight).set_require_grad(true);
    conv
}

pub fn linear(init: Init, inputs: usize, outputs: usize, device: &Device) -> Linear {
    let [inputs, outputs] = planned_channels([inputs, outputs]);
    let mut c = LinearConfig::new(inputs, outputs);
    if let Some(initializer) = init.initializer() {
        c = c.with_initializer(initializer);
    }
    let linear = c.init(device);
    constructed(linear.weight.id);
    linear
}

/// Convolution (no bias), BatchNorm, then an activation: the unit nearly every network here is
/// built from (torchvision's `Conv2dNormActivation`).
#[derive(Module, Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm,
    #[module(skip)]
    pub act: Act,
}

impl ConvBn {
    /// Conv + BN without activation (the caller applies one where it wants).
    pub fn new(init: Init, channels: [usize; 2], kernel: usize, stride: usize, device: &Device) -> Self {
        Self::with(init, channels, ConvSpec::new(kernel, stride), device)
    }

    pub fn with(init: Init, channels: [usize; 2], spec: ConvSpec, device: &Device) -> Self {
        Self { conv: conv_with(init, channels, &spec, false, device), bn: spec.norm.init(channels[1], device), act: spec.act }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        trace::conv_bn(&self.conv, &self.bn, x, self.act)
    }
}

/// The kernel a convolution runs on (see [`conv_forward`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKernel {
    /// `kernels::depthwise`: groups = channels, square kernel and stride.
    Depthwise,
    /// `kernels::winograd`: dense 3x3 stride 1.
    Winograd,
    /// `kernels::dense`: the other dense convolutions.
    Dense,
    /// burn's `Conv2d::forward`: dilated convolutions, other groupings, or any while
    /// `kernels::enabled()` is false.
    Burn,
}

/// How [`conv_forward`] runs `conv` on `channels` planes of `height` x `width`: the kernel, and
/// the padding it is given, or `None` where the padding (e.g. TensorFlow's asymmetric "SAME") is
/// applied to the input first and the kernel pads nothing. The dense kernels take symmetric
/// padding `[vertical, horizontal]`, the depthwise one `[before, after]` the same on both axes.
pub fn conv_plan(conv: &Conv2d, [channels, height, width]: [usize; 3]) -> (ConvKernel, Option<[usize; 2]>) {
    let [kernel, kernel_width] = conv.kernel_size;
    let [stride, stride_width] = conv.stride;
    let depthwise = conv.groups > 1
        && conv.groups == channels
        && conv.weight.shape()[0] == channels
        && kernel == kernel_width
        && stride == stride_width;
    if !((depthwise || conv.groups == 1) && conv.dilation == [1, 1] && crate::kernels::enabled()) {
        return (ConvKernel::Burn, None);
    }
    let [(top, bottom), (left, right)] = padding_sides(&conv.padding, conv.kernel_size, conv.stride, height, width);
    if depthwise {
        return (ConvKernel::Depthwise, (top == left && bottom == right).then_some([top, bottom]));
    }
    let symmetric = (top == bottom && left == right).then_some([top, left]);
    let winograd = conv.kernel_size == [3, 3] && conv.stride == [1, 1];
    match symmetric {
        Some([v, h]) if winograd && (v != h || v > winograd::MAX_PADDING) => (ConvKernel::Dense, symmetric),
        _ if winograd && winograd::pays_off(channels) => (ConvKernel::Winograd, symmetric),
        _ => (ConvKernel::Dense, symmetric),
    }
}

/// `(before, after)` padding of a convolution or pooling (`padding`, `kernel`, `stride`) vertically
/// and horizontally for a `height` x `width` input.
fn padding_sides(padding: &PaddingConfig2d, kernel: [usize; 2], stride: [usize; 2], height: usize, width: usize) -> [(usize, usize); 2] {
    match *padding {
        PaddingConfig2d::Valid => [(0, 0); 2],
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
        PaddingConfig2d::Same => [tf_same_padding(kernel[0], stride[0], height), tf_same_padding(kernel[1], stride[1], width)],
    }
}

/// `pool.forward(x)`, through our max-pooling kernel (`crate::kernels::max_pool`) where it
/// applies: no dilation, no ceil mode, padding at most half the window.
pub fn max_pool_forward(pool: &MaxPool2d, x: Tensor<4>) -> Tensor<4> {
    let [_, _, height, width] = x.dims();
    let [(top, bottom), (left, right)] = padding_sides(&pool.padding, pool.kernel_size, pool.stride, height, width);
    let window = max_pool::Window { kernel: pool.kernel_size, stride: pool.stride, padding: [[top, bottom], [left, right]] };
    if !(crate::kernels::enabled() && window.fits([height, width]) && pool.dilation == [1, 1] && !pool.ceil_mode) {
        return pool.forward(x);
    }
    max_pool::max_pool2d(x, window)
}

/// `conv.forward(x)`, through our own kernels where they apply (`crate::kernels`, chosen by
/// [`conv_plan`]): depthwise convolutions (about 4x burn's grouped conv on flex at the EfficientNet
/// shapes), dense 3x3 stride-1 ones (Winograd) and the other dense ones (im2col products). The
/// kernels pad symmetrically; other padding is applied to the input first.
pub fn conv_forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    if x.dtype() != conv.weight.val().dtype() {
        return conv_in_input_type(conv, x);
    }
    let [_, channels, height, width] = x.dims();
    let (kernel, padding) = conv_plan(conv, [channels, height, width]);
    if kernel == ConvKernel::Burn {
        return conv.forward(x);
    }
    let bias = conv.bias.as_ref().map(|b| b.val());
    run_conv(conv, x, conv.weight.val(), bias, (kernel, padding), Act::Identity)
}

/// `act(bn(conv(x)))`. Where the conv runs on our dense kernel: in training, the conv also takes
/// its output planes' moments, which spare the BatchNorm its statistics pass; at inference (`bn`
/// in evaluation mode, `x` outside autodiff), the BatchNorm folded into the conv's weights and bias
/// (as PyTorch's `fuse_conv_bn_eval`), the activation applied as the output is written. Otherwise
/// the three in turn.
pub fn conv_bn_forward(conv: &Conv2d, bn: &BatchNorm, x: Tensor<4>, act: Act) -> Tensor<4> {
    if let Some(plan) = moments_plan(conv, bn, &x) {
        let (y, moments) = conv_with_moments(conv, x, plan);
        return batch_norm::forward_with_moments(bn, y, moments, act);
    }
    let [_, channels, height, width] = x.dims();
    let plan = conv_plan(conv, [channels, height, width]);
    let same_type = x.dtype() == conv.weight.val().dtype();
    if x.device().is_autodiff() || plan.0 != ConvKernel::Dense || !same_type {
        return batch_norm_forward(bn, conv_forward(conv, x), act);
    }
    let out_channels = conv.weight.dims()[0];
    let scale = bn.gamma.val() / bn.running_var.value().add_scalar(bn.epsilon).sqrt();
    let shift = bn.beta.val() - bn.running_mean.value() * scale.clone();
    let shift = match &conv.bias {
        Some(bias) => shift + bias.val() * scale.clone(),
        None => shift,
    };
    let weight = conv.weight.val() * scale.reshape([out_channels, 1, 1, 1]);
    run_conv(conv, x, weight, Some(shift), plan, act)
}

/// The plan of `conv` on `x` where it computes its output planes' moments for `bn` after it: a
/// dense or depthwise conv, `bn` training on our kernels.
fn moments_plan(conv: &Conv2d, bn: &BatchNorm, x: &Tensor<4>) -> Option<(ConvKernel, Option<[usize; 2]>)> {
    let [_, channels, height, width] = x.dims();
    let plan = conv_plan(conv, [channels, height, width]);
    let same_type = x.dtype() == conv.weight.val().dtype();
    (same_type && matches!(plan.0, ConvKernel::Dense | ConvKernel::Depthwise) && batch_norm::trains_on_kernel(bn, x)).then_some(plan)
}

/// `conv(x)` and its output planes' moments (none where the depthwise kernel left the conv to
/// burn), on the kernel [`moments_plan`] chose.
fn conv_with_moments(conv: &Conv2d, x: Tensor<4>, plan: (ConvKernel, Option<[usize; 2]>)) -> (Tensor<4>, Option<Tensor<1>>) {
    let bias = conv.bias.as_ref().map(|b| b.val());
    let (x, padding) = padded(conv, x, plan.1);
    if plan.0 == ConvKernel::Dense {
        let (y, moments) = conv2d_dense_moments(x, conv.weight.val(), bias, conv.stride, padding);
        (y, Some(moments))
    } else {
        depthwise_conv2d_moments(x, conv.weight.val(), bias, conv.stride[0], padding)
    }
}

/// A [`ConvBn`]'s output on the way through a chain of them: in training on our kernels, its
/// convolution's output and planes' moments with the BatchNorm and activation still to apply,
/// which the next convolution applies as it reads its input where it can (`kernels::norm_conv`):
/// the BatchNorm's output is then never stored.
struct ConvBnOutput<'a> {
    y: Tensor<4>,
    /// The layer whose BatchNorm and activation are still to apply to `y`, and `y`'s moments.
    pending: Option<(&'a ConvBn, Option<Tensor<1>>)>,
}

impl<'a> ConvBnOutput<'a> {
    /// `layer.forward(x)`, left pending where its BatchNorm trains on our kernels (not while tracing).
    fn of(layer: &'a ConvBn, x: Tensor<4>) -> Self {
        match moments_plan(&layer.conv, &layer.bn, &x) {
            Some(plan) if !trace::is_tracing() => {
                let (y, moments) = conv_with_moments(&layer.conv, x, plan);
                ConvBnOutput { y, pending: Some((layer, moments)) }
            }
            _ => ConvBnOutput { y: layer.forward(x), pending: None },
        }
    }

    /// `next.forward(self.finish())`, the pending BatchNorm applied by `next`'s convolution where
    /// it is a depthwise or pointwise one without bias.
    fn then(self, next: &'a ConvBn) -> Self {
        let Some((layer, moments)) = &self.pending else { return Self::of(next, self.y) };
        let [_, channels, height, width] = self.y.dims();
        let conv = &next.conv;
        let normed = match conv_plan(conv, [channels, height, width]) {
            _ if conv.bias.is_some() => None,
            (ConvKernel::Depthwise, Some(padding)) => Some(NormedConv::Depthwise { stride: conv.stride[0], padding }),
            (ConvKernel::Dense, Some([0, 0])) if conv.kernel_size == [1, 1] && conv.stride == [1, 1] => Some(NormedConv::Pointwise),
            _ => None,
        };
        let weight = conv.weight.val();
        match normed {
            Some(normed) if norm_conv::applies(&layer.bn, &self.y, normed, &weight) => {
                let (y, moments) = norm_conv::batch_norm_conv(&layer.bn, self.y, moments.clone(), layer.act, normed, weight);
                ConvBnOutput { y, pending: Some((next, Some(moments))) }
            }
            _ => Self::of(next, self.finish()),
        }
    }

    /// `se.forward(self.finish())`, the pending BatchNorm applied inside the squeeze-excite where
    /// its kernel takes one (`kernels::squeeze_excite::batch_norm_squeeze_excite`).
    fn squeeze_excite(self, se: &SqueezeExcite) -> Tensor<4> {
        match &self.pending {
            Some((layer, moments))
                if squeeze_excite::applies(&self.y, &se.reduce, &se.expand) && batch_norm::trains_on_kernel(&layer.bn, &self.y) =>
            {
                squeeze_excite::batch_norm_squeeze_excite(&layer.bn, self.y, moments.clone(), layer.act, &se.reduce, &se.expand, se.act)
            }
            _ => se.forward(self.finish()),
        }
    }

    fn finish(self) -> Tensor<4> {
        match self.pending {
            Some((layer, moments)) => batch_norm::forward_with_moments(&layer.bn, self.y, moments, layer.act),
            None => self.y,
        }
    }
}

/// `conv`'s geometry with `weight` and `bias`, on the kernel `plan` chose, then `act`.
fn run_conv(
    conv: &Conv2d,
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    (kernel, padding): (ConvKernel, Option<[usize; 2]>),
    act: Act,
) -> Tensor<4> {
    let (x, padding) = padded(conv, x, padding);
    match kernel {
        ConvKernel::Depthwise => act.apply(depthwise_conv2d(x, weight, bias, conv.stride[0], padding)),
        ConvKernel::Winograd => act.apply(conv3x3(x, weight, bias, padding[0])),
        ConvKernel::Dense => conv2d_dense_act(x, weight, bias, conv.stride, padding, act),
        ConvKernel::Burn => unreachable!("burn's convolutions are not planned here"),
    }
}

/// `x` and the symmetric padding the kernel is given: `padding` where planned, else (TensorFlow's
/// asymmetric "SAME") `x` padded here and none.
fn padded(conv: &Conv2d, x: Tensor<4>, padding: Option<[usize; 2]>) -> (Tensor<4>, [usize; 2]) {
    let [_, _, height, width] = x.dims();
    match padding {
        Some(padding) => (x, padding),
        None => {
            let [(top, bottom), (left, right)] = padding_sides(&conv.padding, conv.kernel_size, conv.stride, height, width);
            (x.pad((left, right, top, bottom), 0.0), [0, 0])
        }
    }
}

/// `conv` computing in the type of `x` (f16 or bf16 under mixed precision, `train::precision`),
/// its weights cast to it, on burn's convolution.
fn conv_in_input_type(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let dtype = x.dtype();
    let [_, _, height, width] = x.dims();
    let padding = padding_sides(&conv.padding, conv.kernel_size, conv.stride, height, width);
    let options = ConvOptions::new_with_padding(conv.stride, padding, conv.dilation, conv.groups);
    let bias = conv.bias.as_ref().map(|b| b.val().cast(dtype));
    burn::tensor::module::conv2d(x, conv.weight.val().cast(dtype), bias, options)
}

/// `fc.forward(x)` in the type of `x` (see [`conv_in_input_type`]).
pub fn linear_forward(fc: &Linear, x: Tensor<2>) -> Tensor<2> {
    let dtype = x.dtype();
    if dtype == fc.weight.val().dtype() {
        return fc.forward(x);
    }
    burn::tensor::module::linear(x, fc.weight.val().cast(dtype), fc.bias.as_ref().map(|b| b.val().cast(dtype)))
}

/// `act.apply(bn.forward(x))`, the BatchNorm in f32 whatever the type of `x`, cast back to it:
/// under mixed precision the batch statistics and the running ones stay f32, as with PyTorch's
/// autocast.
pub fn batch_norm_forward(bn: &BatchNorm, x: Tensor<4>, act: Act) -> Tensor<4> {
    let dtype = x.dtype();
    let computed = bn.gamma.val().dtype();
    if dtype == computed {
        return batch_norm::forward(bn, x, act);
    }
    act.apply(batch_norm::forward(bn, x.cast(computed), Act::Identity).cast(dtype))
}

/// TensorFlow's "SAME" padding of one side length: `(before, after)` for an output of
/// `ceil(size / stride)`, the odd pixel after.
fn tf_same_padding(kernel: usize, stride: usize, size: usize) -> (usize, usize) {
    let total = ((size.div_ceil(stride) - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
}

/// Channel count `value` rounded to the nearest multiple of `divisor`, but never more than 10%
/// below `value` nor below `divisor` (the TensorFlow MobileNet/EfficientNet rule, torchvision's
/// `_make_divisible`, EfficientNet-PyTorch's `round_filters`).
pub fn make_divisible(value: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let rounded = (((value + d / 2.0) as usize) / divisor * divisor).max(divisor);
    if (rounded as f64) < 0.9 * value { rounded + divisor } else { rounded }
}

/// Stochastic depth ("drop-connect"): in training, zeroes a residual branch for a random subset of
/// the samples of a batch (each with probability `prob`) and scales the others by `1 / (1 - prob)`;
/// the identity at evaluation. Trains on the same conditions as `Dropout` (autodiff device, flag set).
#[derive(Module, Debug)]
pub struct StochasticDepth {
    pub prob: f64,
    pub training: Param<Flag>,
}

impl StochasticDepth {
    pub fn new(prob: f64) -> Self {
        assert!((0.0..1.0).contains(&prob), "stochastic depth probability must be in [0, 1), got {prob}");
        Self { prob, training: Param::from_bool(true) }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        if !self.training.is_enabled() || !x.device().is_autodiff() || self.prob == 0.0 {
            return x;
        }
        let keep = 1.0 - self.prob;
        let batch = x.dims()[0];
        let mask = Tensor::<4>::random([batch, 1, 1, 1], Distribution::Bernoulli(keep), &x.device()).cast(x.dtype());
        x * mask.div_scalar(keep)
    }
}

/// Squeeze-and-excitation: per-channel gates `sigmoid(expand(act(reduce(mean over HxW))))`,
/// both 1x1 convs with bias (torchvision's `SqueezeExcitation`).
#[derive(Module, Debug)]
pub struct SqueezeExcite {
    pub reduce: Conv2d,
    pub expand: Conv2d,
    #[module(skip)]
    pub act: Act,
}

impl SqueezeExcite {
    pub fn new(init: Init, channels: usize, squeezed: usize, act: Act, device: &Device) -> Self {
        Self {
            reduce: conv(init, [channels, squeezed], 1, 1, true, device),
            expand: conv(init, [squeezed, channels], 1, 1, true, device),
            act,
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        // One fused operation where our kernel applies and no trace wants the layers one by one.
        if !trace::is_tracing() && squeeze_excite::applies(&x, &self.reduce, &self.expand) {
            return squeeze_excite::squeeze_excite(x, &self.reduce, &self.expand, self.act);
        }
        let scale = x.clone().mean_dim(2).mean_dim(3);
        let scale = sigmoid(trace::conv2d(&self.expand, self.act.apply(trace::conv2d(&self.reduce, scale))));
        trace::gate(x, scale)
    }
}

/// The shape of one inverted residual block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InvertedResidualSpec {
    pub inputs: usize,
    pub outputs: usize,
    /// Width of the depthwise stage = `inputs * expand_ratio` (1 = no expansion conv).
    pub expand_ratio: usize,
    pub kernel: usize,
    pub stride: usize,
    /// Channels of the squeeze-excite bottleneck; `None` = no squeeze-excite.
    pub se_channels: Option<usize>,
    pub act: Act,
    pub padding: Padding,
    pub norm: BnParams,
    pub drop_path: f64,
}

/// MobileNetV2's inverted residual, EfficientNet's MBConv: an optional 1x1 expansion, a depthwise
/// kxk conv, optional squeeze-excite, a linear 1x1 projection, and a skip connection (through
/// stochastic depth) where the shape allows one.
#[derive(Module, Debug)]
pub struct InvertedResidual {
    pub expand: Option<ConvBn>,
    pub depthwise: ConvBn,
    pub se: Option<SqueezeExcite>,
    pub project: ConvBn,
    pub drop_path: StochasticDepth,
    pub residual: bool,
}

impl InvertedResidual {
    pub fn new(init: Init, s: &InvertedResidualSpec, device: &Device) -> Self {
        let hidden = s.inputs * s.expand_ratio;
        let pointwise = ConvSpec::new(1, 1).padding(s.padding).norm(s.norm);
        Self {
            expand: (s.expand_ratio != 1).then(|| ConvBn::with(init, [s.inputs, hidden], pointwise.act(s.act), device)),
            depthwise: ConvBn::with(
                init,
                [hidden, hidden],
                ConvSpec::new(s.kernel, s.stride).groups(hidden).padding(s.padding).norm(s.norm).act(s.act),
                device,
            ),
            se: s.se_channels.map(|squeezed| SqueezeExcite::new(init, hidden, squeezed, s.act, device)),
            project: ConvBn::with(init, [hidden, s.outputs], pointwise, device),
            drop_path: StochasticDepth::new(s.drop_path),
            residual: s.stride == 1 && s.inputs == s.outputs,
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = match &self.expand {
            Some(expand) => ConvBnOutput::of(expand, x.clone()).then(&self.depthwise),
            None => ConvBnOutput::of(&self.depthwise, x.clone()),
        };
        let y = match &self.se {
            Some(se) => ConvBnOutput::of(&self.project, y.squeeze_excite(se)),
            None => y.then(&self.project),
        }
        .finish();
        if self.residual { trace::add(self.drop_path.forward(y), x) } else { y }
    }

    /// The sub-layers present, in the order of the reference `nn.Sequential`s (torchvision numbers
    /// them by position, so a missing expansion shifts the rest).
    pub fn sublayers(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.expand.is_some() {
            names.push("expand");
        }
        names.push("depthwise");
        if self.se.is_some() {
            names.push("se");
        }
        names.push("project");
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convs_through_our_kernels_equal_burns_conv2d_for_every_padding() {
        let device = Device::flex();
        let check = |conv: Conv2d, side: usize| {
            let x = Tensor::<4>::random([2, 4, side, side], Distribution::Normal(0.0, 1.0), &device);
            let ours = conv_forward(&conv, x.clone()).into_data();
            ours.assert_approx_eq::<f32>(&conv.forward(x).into_data(), burn::tensor::Tolerance::default());
        };
        for (padding, stride, side) in [
            (PaddingConfig2d::Same, 2, 8),
            (PaddingConfig2d::Same, 2, 7),
            (PaddingConfig2d::Same, 1, 6),
            (PaddingConfig2d::Explicit(1, 1, 1, 1), 2, 9),
            (PaddingConfig2d::Valid, 1, 6),
        ] {
            for kernel in [3, 5] {
                let config = Conv2dConfig::new([4, 4], [kernel, kernel]).with_stride([stride, stride]).with_padding(padding.clone());
                check(config.clone().with_groups(4).init(&device), side);
            }
        }
        // Dense 3x3 stride 1 (Winograd): symmetric paddings up to its limit, beyond it, asymmetric.
        for (padding, side) in [
            (PaddingConfig2d::Same, 7),
            (PaddingConfig2d::Valid, 6),
            (PaddingConfig2d::Explicit(1, 1, 1, 1), 9),
            (PaddingConfig2d::Explicit(2, 2, 2, 2), 5),
            (PaddingConfig2d::Explicit(3, 3, 3, 3), 5),
            (PaddingConfig2d::Explicit(0, 1, 2, 1), 8),
        ] {
            check(Conv2dConfig::new([4, 6], [3, 3]).with_padding(padding).init(&device), side);
        }
        // The other dense ones (our weight gradient): strided, 1x1, 5x5 with TensorFlow's "SAME".
        for (kernel, stride, padding) in
            [(1, 2, PaddingConfig2d::Valid), (3, 2, PaddingConfig2d::Explicit(1, 1, 1, 1)), (5, 2, PaddingConfig2d::Same)]
        {
            check(Conv2dConfig::new([4, 6], [kernel, kernel]).with_stride([stride, stride]).with_padding(padding).init(&device), 9);
        }
    }

    /// At inference a conv + BatchNorm + activation on the dense kernel runs folded into one conv;
    /// it equals the three in turn (running statistics away from 0 and 1, with and without a
    /// conv bias, 1x1 and strided 3x3 with TensorFlow's padding, activations).
    #[test]
    fn folded_conv_bn_equals_conv_then_batch_norm() {
        let device = Device::flex();
        device.seed(8);
        let random = |dims: [usize; 1], low: f64, high: f64| Tensor::<1>::random(dims, Distribution::Uniform(low, high), &device);
        for (kernel, stride, padding, bias) in
            [(1, 1, PaddingConfig2d::Valid, false), (3, 2, PaddingConfig2d::Same, true), (1, 2, PaddingConfig2d::Valid, true)]
        {
            let conv = Conv2dConfig::new([5, 6], [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(padding)
                .with_bias(bias)
                .init(&device);
            let mut bn = BatchNormConfig::new(6).init(&device);
            bn.gamma = Param::from_tensor(random([6], 0.5, 2.0));
            bn.beta = Param::from_tensor(random([6], -1.0, 1.0));
            bn.running_mean = RunningState::new(random([6], -1.0, 1.0));
            bn.running_var = RunningState::new(random([6], 0.3, 3.0));
            assert_eq!(conv_plan(&conv, [5, 9, 8]).0, ConvKernel::Dense);
            // One image per product, and several (the product scattered into the output).
            for (batch, act) in [(2, Act::Identity), (9, Act::Identity), (2, Act::Relu6), (9, Act::Silu)] {
                let x = Tensor::<4>::random([batch, 5, 9, 8], Distribution::Normal(0.0, 1.0), &device);
                let folded = conv_bn_forward(&conv, &bn, x.clone(), act).into_data();
                let in_turn = act.apply(bn.forward(conv.forward(x.clone()))).into_data();
                folded.assert_approx_eq::<f32>(&in_turn, burn::tensor::Tolerance::<f32>::rel_abs(1e-5, 1e-5));
            }
        }
    }

    /// In training, a conv on the dense or depthwise kernel hands its output planes' moments to
    /// the BatchNorm after it; output, every gradient and the running statistics equal burn's conv
    /// and BatchNorm in turn (1x1 with one image per product and several, strided 3x3 with
    /// TensorFlow's padding, depthwise at stride 1 and 2 with more channels than one task's).
    #[test]
    fn training_conv_bn_with_the_convs_moments_equals_burns_layers() {
        let device = Device::flex().autodiff();
        device.seed(9);
        let convs = [
            (Conv2dConfig::new([5, 6], [1, 1]), 2),
            (Conv2dConfig::new([5, 6], [1, 1]), 9),
            (Conv2dConfig::new([5, 6], [3, 3]).with_stride([2, 2]).with_padding(PaddingConfig2d::Same).with_bias(true), 3),
            (Conv2dConfig::new([10, 10], [3, 3]).with_groups(10).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)), 3),
            (Conv2dConfig::new([10, 10], [5, 5]).with_groups(10).with_stride([2, 2]).with_padding(PaddingConfig2d::Same), 2),
        ];
        for (config, batch) in convs {
            let conv = config.init(&device);
            let [outs, ins] = [conv.weight.dims()[0], conv.weight.dims()[1] * conv.groups];
            let x = Tensor::<4>::random([batch, ins, 9, 8], Distribution::Normal(1.0, 2.0), &device);
            let out_grad = Tensor::<4>::random(conv_forward(&conv, x.clone()).dims(), Distribution::Normal(0.0, 1.0), &device);
            assert!(matches!(conv_plan(&conv, [ins, 9, 8]).0, ConvKernel::Dense | ConvKernel::Depthwise));
            let run = |ours: bool| {
                let bn = BatchNormConfig::new(outs).with_momentum(0.3).init(&device);
                let bn = BatchNorm { gamma: bn.gamma.map(|g| g.add_scalar(0.5).detach().require_grad()), ..bn };
                let x = x.clone().require_grad();
                let y = if ours {
                    conv_bn_forward(&conv, &bn, x.clone(), Act::Relu6)
                } else {
                    Act::Relu6.apply(bn.forward(conv.forward(x.clone())))
                };
                let grads = (y.clone() * out_grad.clone()).sum().backward();
                [
                    y.into_data(),
                    x.grad(&grads).unwrap().into_data(),
                    conv.weight.grad(&grads).unwrap().into_data(),
                    bn.gamma.grad(&grads).unwrap().into_data(),
                    bn.beta.grad(&grads).unwrap().into_data(),
                    bn.running_mean.value_sync().into_data(),
                    bn.running_var.value_sync().into_data(),
                ]
            };
            for (ours, burns) in run(true).iter().zip(&run(false)) {
                ours.assert_approx_eq::<f32>(burns, burn::tensor::Tolerance::<f32>::rel_abs(1e-4, 1e-4));
            }
        }
    }

    /// In training, an inverted residual (its expansion's BatchNorm and activation applied by the
    /// depthwise kernel, `kernels::norm_depthwise`) equals burn's convs and BatchNorms in turn:
    /// output, the gradients of the input and of every parameter, the running statistics.
    #[test]
    fn training_inverted_residual_equals_burns_layers() {
        let device = Device::flex().autodiff();
        for (stride, kernel, act, padding) in
            [(1, 3, Act::Relu6, Padding::Symmetric), (2, 5, Act::Silu, Padding::Symmetric), (2, 3, Act::Relu6, Padding::TfSame)]
        {
            let spec = InvertedResidualSpec {
                inputs: 5,
                outputs: 5,
                expand_ratio: 4,
                kernel,
                stride,
                se_channels: None,
                act,
                padding,
                norm: BnParams::TORCH,
                drop_path: 0.0,
            };
            // One set of weights; fresh BatchNorms (running statistics) for each run.
            let weights = InvertedResidual::new(Init::default(), &spec, &device);
            let fresh = |c: &ConvBn| ConvBn { conv: c.conv.clone(), bn: BnParams::TORCH.init(c.bn.gamma.dims()[0], &device), act: c.act };
            let block = || InvertedResidual {
                expand: weights.expand.as_ref().map(fresh),
                depthwise: fresh(&weights.depthwise),
                se: None,
                project: fresh(&weights.project),
                drop_path: weights.drop_path.clone(),
                residual: weights.residual,
            };
            let x = Tensor::<4>::random([3, 5, 9, 8], Distribution::Normal(0.5, 2.0), &device);
            let out_grad = Tensor::<4>::random(block().forward(x.clone()).dims(), Distribution::Normal(0.0, 1.0), &device);
            let run = |ours: bool| {
                let block = block();
                let x = x.clone().require_grad();
                let y = if ours {
                    block.forward(x.clone())
                } else {
                    let layer = |c: &ConvBn, x| c.act.apply(c.bn.forward(c.conv.forward(x)));
                    let y = layer(&block.project, layer(&block.depthwise, layer(block.expand.as_ref().unwrap(), x.clone())));
                    if block.residual { y + x.clone() } else { y }
                };
                let grads = (y.clone() * out_grad.clone()).sum().backward();
                let mut values = vec![y.into_data(), x.grad(&grads).unwrap().into_data()];
                for c in [block.expand.as_ref().unwrap(), &block.depthwise, &block.project] {
                    values.push(c.conv.weight.grad(&grads).unwrap().into_data());
                    values.push(c.bn.gamma.grad(&grads).unwrap().into_data());
                    values.push(c.bn.beta.grad(&grads).unwrap().into_data());
                    values.push(c.bn.running_mean.value_sync().into_data());
                    values.push(c.bn.running_var.value_sync().into_data());
                }
                values
            };
            for (ours, burns) in run(true).iter().zip(&run(false)) {
                ours.assert_approx_eq::<f32>(burns, burn::tensor::Tolerance::<f32>::rel_abs(1e-3, 1e-3));
            }
        }
    }

    #[test]
    fn make_divisible_matches_torchvision() {
        // Values computed with torchvision.models._utils._make_divisible(v, 8).
        let cases =
            [(32.0 * 1.1, 32), (16.0 * 1.4, 24), (40.0 * 1.8, 72), (1280.0 * 2.0, 2560), (3.0, 8), (24.0 * 1.1, 24), (112.0 * 1.2, 136)];
        for (v, expected) in cases {
            assert_eq!(make_divisible(v, 8), expected, "{v}");
        }
    }

    #[test]
    fn stochastic_depth_drops_whole_samples_in_training_only() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let x = Tensor::<4>::ones([64, 2, 3, 3], &device);
        let layer = StochasticDepth::new(0.5);
        let out: Vec<f32> = layer.forward(x.clone()).into_data().try_to_vec().unwrap();
        // Each sample is all zeros or all 1 / (1 - 0.5).
        for sample in out.chunks(18) {
            assert!(sample.iter().all(|&v| v == sample[0]) && (sample[0] == 0.0 || sample[0] == 2.0), "{sample:?}");
        }
        let dropped = out.chunks(18).filter(|sample| sample[0] == 0.0).count();
        assert!((16..=48).contains(&dropped), "{dropped} of 64 dropped");
        let evaluation = layer.forward(Tensor::<4>::ones([4, 2, 3, 3], &Device::flex()));
        evaluation.into_data().assert_eq(&Tensor::<4>::ones([4, 2, 3, 3], &Device::flex()).into_data(), true);
    }

    /// TF "SAME" on a stride-2 3x3 conv over an even size pads 0 top/left and 1 bottom/right; on an
    /// odd size 1 on every side. Checked against the conv of an explicitly padded input.
    #[test]
    fn tf_same_padding_is_asymmetric_where_tensorflow_pads_asymmetrically() {
        let device = Device::flex();
        let spec = ConvSpec::new(3, 2).padding(Padding::TfSame);
        let same = conv_with(Init::default(), [2, 3], &spec, true, &device);
        let mut valid = same.clone();
        valid.padding = PaddingConfig2d::Valid;
        for (size, [top, bottom]) in [(8usize, [0, 1]), (7, [1, 1])] {
            let x = Tensor::<4>::random([1, 2, size, size], Distribution::Default, &device);
            let expected = valid.forward(x.clone().pad([(0, 0), (0, 0), (top, bottom), (top, bottom)], 0.0));
            let got = same.forward(x);
            assert_eq!(got.dims(), [1, 3, size.div_ceil(2), size.div_ceil(2)]);
            got.into_data().assert_approx_eq::<f32>(&expected.into_data(), Default::default());
        }
    }

    #[test]
    fn dirac_init_passes_the_first_channels_through_and_trains() {
        let device = Device::flex().autodiff();
        let init = Init { scheme: WeightInit::Dirac, constant: 0.0 };
        // 3 -> 5 channels: filters 0..3 copy their channel, filters 3 and 4 keep the default draw.
        let conv = conv(init, [3, 5], 3, 1, false, &device);
        assert!(conv.weight.val().is_require_grad());
        let x = Tensor::<4>::random([2, 3, 6, 6], Distribution::Normal(0.0, 1.0), &device);
        let y = conv.forward(x.clone());
        y.clone().slice([0..2, 0..3]).into_data().assert_approx_eq::<f32>(&x.into_data(), burn::tensor::Tolerance::default());
        let rest: Vec<f32> = conv.weight.val().narrow(0, 3, 2).into_data().try_to_vec::<f32>().unwrap();
        assert!(rest.iter().any(|&w| w != 0.0 && w.abs() <= 1.0 / 27f32.sqrt()), "default uniform draw");
        // 4 -> 2: both filters copy their channel; channels 2 and 3 are not read.
        let narrow = super::conv(init, [4, 2], 1, 1, false, &Device::flex());
        let w: Vec<f32> = narrow.weight.val().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(w, [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
    }
}
