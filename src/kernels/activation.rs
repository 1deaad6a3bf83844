//! Pointwise activations with a transcendental function, forward and backward in one pass each
//! over host f32 data: GELU, `x * Phi(x)` with the exact (erf) normal CDF, and SiLU ("swish"),
//! `x * sigmoid(x)`.
//!
//! burn-flex computes GELU element by element with a scalar `erf`; on `airbench` (GELU after every
//! conv) that was most of the step's time outside the convolutions. SiLU is `x * sigmoid(x)` there,
//! three passes forward and more backward over EfficientNet's largest activations. Here `erf` is
//! the Abramowitz-Stegun 7.1.26 rational approximation (absolute error below 1.5e-7, the size of
//! f32 rounding near 1) and the sigmoid `1 / (1 + e^-x)`, both around an `exp` of our own, all
//! branch-free so the loops vectorize (8 lanes with AVX2). Each backward pass recomputes what it
//! needs from the input: GELU's `Phi(x) + x * phi(x)` shares one `exp(-x^2 / 2)`, SiLU's
//! `s * (1 + x * (1 - s))` one sigmoid.

use std::mem::MaybeUninit;

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::prelude::*;
use burn::tensor::activation::{relu, relu6};
use burn::tensor::{DType, TensorData};

use super::{contiguous, f32s, fma_available, uninit_chunks};

/// Values per rayon task.
const TASK_VALUES: usize = 1 << 14;

/// The activation that follows a conv+BN (or none). `kernels::batch_norm` applies it in the
/// BatchNorm's own passes; [`Act::apply`] on its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Act {
    #[default]
    Identity,
    Relu,
    /// `min(max(x, 0), 6)`: MobileNet's and EfficientNet-Lite's choice (quantizes well).
    Relu6,
    /// `x * sigmoid(x)` ("swish"): EfficientNet's choice.
    Silu,
    /// `x * Phi(x)` (the exact, erf-based GELU): the airbench nets' choice.
    Gelu,
}

impl Act {
    pub fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Act::Identity => x,
            Act::Relu => relu(x),
            // Training differentiates ReLU6 as relu(x) - relu(x - 6) (the same function and, but
            // for the measure-zero points 0 and 6, the same gradient): burn-flex's ReLU backward
            // is one fused pass, while burn's clamp backward goes through mask_fill, a scalar
            // loop that took a quarter of a MobileNetV2 training step.
            Act::Relu6 if x.device().is_autodiff() => relu(x.clone()) - relu(x.sub_scalar(6.0)),
            Act::Relu6 => relu6(x),
            Act::Silu => silu(x),
            Act::Gelu => gelu(x),
        }
    }
}

/// `$run::<A>($args..)` with `A` the [`Pointwise`] type of the [`Act`] `$act` (after the types
/// given as `$run::<T..>($args..)`).
macro_rules! with_pointwise {
    ($act:expr, $run:ident::<$($given:ty),+>($($arg:expr),* $(,)?)) => {
        match $act {
            $crate::kernels::activation::Act::Identity => $run::<$($given,)+ $crate::kernels::activation::Identity>($($arg),*),
            $crate::kernels::activation::Act::Relu => $run::<$($given,)+ $crate::kernels::activation::Relu>($($arg),*),
            $crate::kernels::activation::Act::Relu6 => $run::<$($given,)+ $crate::kernels::activation::Relu6>($($arg),*),
            $crate::kernels::activation::Act::Silu => $run::<$($given,)+ $crate::kernels::activation::Silu>($($arg),*),
            $crate::kernels::activation::Act::Gelu => $run::<$($given,)+ $crate::kernels::activation::Gelu>($($arg),*),
        }
    };
    ($act:expr, $run:ident($($arg:expr),* $(,)?)) => {
        match $act {
            $crate::kernels::activation::Act::Identity => $run::<$crate::kernels::activation::Identity>($($arg),*),
            $crate::kernels::activation::Act::Relu => $run::<$crate::kernels::activation::Relu>($($arg),*),
            $crate::kernels::activation::Act::Relu6 => $run::<$crate::kernels::activation::Relu6>($($arg),*),
            $crate::kernels::activation::Act::Silu => $run::<$crate::kernels::activation::Silu>($($arg),*),
            $crate::kernels::activation::Act::Gelu => $run::<$crate::kernels::activation::Gelu>($($arg),*),
        }
    };
}
pub(super) use with_pointwise;

/// GELU of `x` (burn's `activation::gelu`), through our kernel for f32 tensors on flex.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if !ours(&x) {
        return burn::tensor::activation::gelu(x);
    }
    Tensor::from_dispatch(<Dispatch as ActivationBackend>::gelu(x.into_dispatch()))
}

/// SiLU of `x` (burn's `activation::silu`), through our kernel for f32 tensors on flex.
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if !ours(&x) {
        return burn::tensor::activation::silu(x);
    }
    Tensor::from_dispatch(<Dispatch as ActivationBackend>::silu(x.into_dispatch()))
}

fn ours<const D: usize>(x: &Tensor<D>) -> bool {
    super::enabled() && x.dtype() == DType::F32 && x.device().inner() == Device::flex()
}

#[backend_extension(Flex, Autodiff)]
trait ActivationBackend: Backend {
    fn gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;
    fn silu(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl ActivationBackend for Flex {
    fn gelu(x: FlexTensor) -> FlexTensor {
        map(&x, forward::<Gelu>)
    }

    fn silu(x: FlexTensor) -> FlexTensor {
        map(&x, forward::<Silu>)
    }
}

/// `op(x, out)` over contiguous copies of `x`, in parallel tasks, into a tensor shaped like `x`.
fn map(x: &FlexTensor, op: fn(bool, &[f32], &mut [MaybeUninit<f32>])) -> FlexTensor {
    let x = contiguous(x.clone());
    let values = f32s(&x);
    let fma = fma_available();
    // SAFETY: `op` writes each value of `out` from the one of `x` under it.
    let out = unsafe { uninit_chunks(values.len(), TASK_VALUES, |i, out| op(fma, &values[i * TASK_VALUES..][..out.len()], out)) };
    FlexTensor::from_data(TensorData::new(out, x.shape()))
}

impl<C: CheckpointStrategy> ActivationBackend for Autodiff<Flex, C> {
    fn gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        tracked::<C>(x, Flex::gelu, backward::<Gelu>)
    }

    fn silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        tracked::<C>(x, Flex::silu, backward::<Silu>)
    }
}

/// `forward(x)` recorded for the backward pass, which computes the input's gradient with
/// `backward(fma, x, output gradient, out)`.
fn tracked<C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<Flex, C>>,
    forward: fn(FlexTensor) -> FlexTensor,
    backward: BackwardFn,
) -> FloatTensor<Autodiff<Flex, C>> {
    let op = PointwiseBackward { backward };
    match op.prepare::<C>([x.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let x = x.into_primitive();
            let y = forward(x.clone());
            prep.finish(x, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.into_primitive())),
    }
}

type BackwardFn = fn(bool, &[f32], &[f32], &mut [MaybeUninit<f32>]);

/// Backward step of a pointwise activation; the state is the input.
#[derive(Debug)]
struct PointwiseBackward {
    backward: BackwardFn,
}

impl Backward<Flex, 1> for PointwiseBackward {
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let out_grad = contiguous(grads.consume::<Flex>(&ops.node));
        if let Some(node) = ops.parents[0].clone() {
            let x = contiguous(ops.state);
            let (x_values, g) = (f32s(&x), f32s(&out_grad));
            let fma = fma_available();
            // SAFETY: `backward` writes each value of `out` from the ones of `x` and `g` under it.
            let x_grad = unsafe {
                uninit_chunks(x_values.len(), TASK_VALUES, |i, out| {
                    let at = i * TASK_VALUES;
                    (self.backward)(fma, &x_values[at..][..out.len()], &g[at..][..out.len()], out)
                })
            };
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(x_grad, x.shape())));
        }
    }
}

use std::f32::consts::{FRAC_1_SQRT_2, LN_2, LOG2_E};

/// `1 / sqrt(2 pi)`.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// `exp(x)` for `x <= 0` (clamped at -87, where it underflows): `2^n * e^r` with `r` in
/// `[-ln2/2, ln2/2]` and a degree-5 polynomial fitted for the least relative error there (below
/// 2e-7 evaluated in f32, as the degree-6 Taylor polynomial it replaced, with one multiply-add
/// less: SiLU's sigmoid is much of an EfficientNet step).
#[inline(always)]
fn exp_non_positive(x: f32) -> f32 {
    // `max` maps NaN to -87 too: `n` below is always an integer in [-126, 0].
    let x = x.max(-87.0);
    let (n, two_to_n) = nearest_power_of_two(x * LOG2_E);
    // ln 2 split in two so that `n * LN2_HIGH` is exact.
    const LN2_HIGH: f32 = 0.693_145_75;
    const LN2_LOW: f32 = LN_2 - LN2_HIGH;
    let r = x - n * LN2_HIGH - n * LN2_LOW;
    let p = 1.0 + r * (0.999_999_7 + r * (0.499_991_5 + r * (0.166_676_36 + r * (0.041_897_93 + r * 0.008_290_315))));
    p * two_to_n
}

/// `(n, 2^n)` for `y` in [-126.5, 127.5), `n` the integer nearest `y`. Adding `2^23 + 127` rounds
/// `y` to an integer and leaves `n + 127` in the sum's low mantissa bits, which shifted into the
/// exponent give `2^n`: plain float and integer lane operations (`n as i32`, a saturating
/// conversion, would compile to a scalar loop; a `floor` and building the exponent from `n` took
/// four more operations).
#[inline(always)]
fn nearest_power_of_two(y: f32) -> (f32, f32) {
    const BIAS: f32 = 8_388_608.0 + 127.0;
    let biased = y + BIAS;
    (biased - BIAS, f32::from_bits(biased.to_bits() << 23))
}

/// `(Phi(x), phi(x))`: the standard normal CDF (through erf, Abramowitz-Stegun 7.1.26) and
/// density, sharing `exp(-x^2 / 2)`.
#[inline(always)]
fn cdf_and_density(x: f32) -> (f32, f32) {
    let z = x * FRAC_1_SQRT_2;
    let e = exp_non_positive(-z * z);
    let t = 1.0 / (1.0 + 0.327_591_1 * z.abs());
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    let erf = (1.0 - poly * e).copysign(z);
    (0.5 * (1.0 + erf), FRAC_1_SQRT_2PI * e)
}

/// `sigmoid(x)` from `e = exp(-|x|)`, which never overflows: `1 / (1 + e)` for `x >= 0`, else
/// `e / (1 + e)` (not `1 - 1 / (1 + e)`, which would round the far negative tail to 0).
#[inline(always)]
pub(super) fn sigmoid(x: f32) -> f32 {
    let e = exp_non_positive(-x.abs());
    let numerator = if x >= 0.0 { 1.0 } else { e };
    numerator / (1.0 + e)
}

/// A pointwise activation as its value and its gradient at one input.
pub(super) trait Pointwise {
    fn value(x: f32) -> f32;
    /// The activation's derivative at `x` times the output's gradient `g`.
    fn gradient(x: f32, g: f32) -> f32;

    /// The value and the derivative at `x`.
    #[inline(always)]
    fn value_and_derivative(x: f32) -> (f32, f32) {
        (Self::value(x), Self::gradient(x, 1.0))
    }
}

pub(super) struct Identity;

impl Pointwise for Identity {
    #[inline(always)]
    fn value(x: f32) -> f32 {
        x
    }

    #[inline(always)]
    fn gradient(_: f32, g: f32) -> f32 {
        g
    }
}

pub(super) struct Relu;

impl Pointwise for Relu {
    #[inline(always)]
    fn value(x: f32) -> f32 {
        if x > 0.0 { x } else { 0.0 }
    }

    /// `g` where `x > 0`, as burn's and PyTorch's ReLU.
    #[inline(always)]
    fn gradient(x: f32, g: f32) -> f32 {
        if x > 0.0 { g } else { 0.0 }
    }
}

pub(super) struct Relu6;

impl Pointwise for Relu6 {
    #[inline(always)]
    fn value(x: f32) -> f32 {
        Relu::value(x).min(6.0)
    }

    /// `g` where `0 < x < 6`, as PyTorch's `hardtanh_backward`.
    #[inline(always)]
    fn gradient(x: f32, g: f32) -> f32 {
        if x > 0.0 && x < 6.0 { g } else { 0.0 }
    }
}

pub(super) struct Gelu;

impl Pointwise for Gelu {
    /// `x * Phi(x)`.
    #[inline(always)]
    fn value(x: f32) -> f32 {
        x * cdf_and_density(x).0
    }

    /// `g * (Phi(x) + x * phi(x))`.
    #[inline(always)]
    fn gradient(x: f32, g: f32) -> f32 {
        let (cdf, density) = cdf_and_density(x);
        g * (cdf + x * density)
    }
}

pub(super) struct Silu;

impl Pointwise for Silu {
    /// `x * sigmoid(x)`.
    #[inline(always)]
    fn value(x: f32) -> f32 {
        x * sigmoid(x)
    }

    /// `g * s * (1 + x * (1 - s))` with `s = sigmoid(x)`.
    #[inline(always)]
    fn gradient(x: f32, g: f32) -> f32 {
        let s = sigmoid(x);
        g * s * (1.0 + x * (1.0 - s))
    }

    /// One sigmoid for both.
    #[inline(always)]
    fn value_and_derivative(x: f32) -> (f32, f32) {
        let s = sigmoid(x);
        (x * s, s * (1.0 + x * (1.0 - s)))
    }
}

with_avx2! {
    avx512 fn forward<A: Pointwise>(x: &[f32], out: &mut [MaybeUninit<f32>]) {
        for (out, &x) in out.iter_mut().zip(x) {
            out.write(A::value(x));
        }
    }
}

with_avx2! {
    avx512 fn backward<A: Pointwise>(x: &[f32], g: &[f32], out: &mut [MaybeUninit<f32>]) {
        for ((out, &x), &g) in out.iter_mut().zip(x).zip(g) {
            out.write(A::gradient(x, g));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Tolerance;

    #[test]
    fn powers_of_two_are_exact() {
        for n in -126..=127 {
            for offset in [-0.49, 0.0, 0.49] {
                assert_eq!(nearest_power_of_two(n as f32 + offset), (n as f32, 2f32.powi(n)), "2^{n}, offset {offset}");
            }
        }
    }

    #[test]
    fn our_exp_is_within_a_few_f32_ulps() {
        for i in 0..=8700 {
            let x = -(i as f32) * 0.01;
            let (ours, std) = (exp_non_positive(x) as f64, (x as f64).exp());
            assert!((ours - std).abs() <= 6e-7 * std + 1e-38, "exp({x}): {ours} vs {std}");
        }
    }

    /// Our activation against burn's on -10..10 in small steps (both tails, zero, the bend), an
    /// odd count for partial tasks; values and gradients.
    fn matches_burn(ours: fn(Tensor<1>) -> Tensor<1>, burns: fn(Tensor<1>) -> Tensor<1>) {
        let device = Device::flex().autodiff();
        let values: Vec<f32> = (0..40_001).map(|i| -10.0 + i as f32 * 5e-4).collect();
        let n = values.len();
        let input = || Tensor::<1>::from_data(TensorData::new(values.clone(), [n]), &device).require_grad();
        let weights = Tensor::<1>::from_data(TensorData::new((0..n).map(|i| (i % 7) as f32 - 3.0).collect::<Vec<f32>>(), [n]), &device);
        let run = |activation: fn(Tensor<1>) -> Tensor<1>| {
            let x = input();
            let y = activation(x.clone());
            let grads = (y.clone() * weights.clone()).sum().backward();
            (y.inner().into_data(), x.grad(&grads).unwrap().into_data())
        };
        let ((y, dx), (y_ref, dx_ref)) = (run(ours), run(burns));
        y.assert_approx_eq::<f32>(&y_ref, Tolerance::absolute(1e-6));
        dx.assert_approx_eq::<f32>(&dx_ref, Tolerance::absolute(1e-5));
    }

    #[test]
    fn values_and_gradients_equal_burns() {
        matches_burn(gelu, burn::tensor::activation::gelu);
        matches_burn(silu, burn::tensor::activation::silu);
        // A 4-d activation, as the models pass them, and NaN kept.
        let x = || Tensor::<4>::from_data(TensorData::new(vec![f32::NAN, -1.0, 0.0, 1.0], [1, 1, 2, 2]), &Device::flex());
        let y: Vec<f32> = gelu(x()).into_data().try_to_vec::<f32>().unwrap();
        assert!(y[0].is_nan() && (y[1] + 0.158_655_26).abs() < 1e-6 && y[2] == 0.0 && (y[3] - 0.841_344_7).abs() < 1e-6, "{y:?}");
        let y: Vec<f32> = silu(x()).into_data().try_to_vec::<f32>().unwrap();
        assert!(y[0].is_nan() && (y[1] + 0.268_941_42).abs() < 1e-6 && y[2] == 0.0 && (y[3] - 0.731_058_6).abs() < 1e-6, "{y:?}");
    }

    #[test]
    fn relu6_in_training_has_burns_values_and_gradients() {
        let device = Device::flex().autodiff();
        let x = Tensor::<2>::random([64, 33], burn::tensor::Distribution::Normal(3.0, 4.0), &device).require_grad();
        let weights = Tensor::<2>::random([64, 33], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let ours = Act::Relu6.apply(x.clone());
        let grads = (ours.clone() * weights.clone()).sum().backward();
        let ours_grad = x.grad(&grads).unwrap();
        let theirs = relu6(x.clone());
        let grads = (theirs.clone() * weights).sum().backward();
        ours.into_data().assert_approx_eq::<f32>(&theirs.into_data(), burn::tensor::Tolerance::default());
        ours_grad.into_data().assert_eq(&x.grad(&grads).unwrap().into_data(), true);
    }

    /// Large inputs neither overflow nor lose the sigmoid's tails.
    #[test]
    fn the_sigmoid_saturates_cleanly() {
        for (x, expected) in [(100.0f32, 1.0f32), (-100.0, 0.0), (20.0, 1.0), (-20.0, 2.061_153_6e-9), (0.0, 0.5)] {
            let got = sigmoid(x);
            assert!((got - expected).abs() <= 1e-6 * expected.max(1e-3), "sigmoid({x}) = {got}");
        }
    }
}
