//! GELU, `x * Phi(x)` with the exact (erf) normal CDF, forward and backward in one pass each over
//! host f32 data.
//!
//! burn-flex computes it element by element with a scalar `erf`; on `airbench` (GELU after every
//! conv) that was most of the step's time outside the convolutions. Here `erf` is the
//! Abramowitz-Stegun 7.1.26 rational approximation (absolute error below 1.5e-7, the size of f32
//! rounding near 1) around an `exp` of our own, both branch-free so the loops vectorize (8 lanes
//! with AVX2). The backward pass, `Phi(x) + x * phi(x)`, shares the same `exp(-x^2 / 2)`.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

use super::{contiguous, f32s, fma_available};

/// Values per rayon task.
const TASK_VALUES: usize = 1 << 14;

/// GELU of `x` (burn's `activation::gelu`), through our kernel for f32 tensors on flex.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if !super::enabled() || x.dtype() != DType::F32 || x.device().inner() != Device::flex() {
        return burn::tensor::activation::gelu(x);
    }
    Tensor::from_dispatch(<Dispatch as GeluBackend>::gelu(x.into_dispatch()))
}

#[backend_extension(Flex, Autodiff)]
trait GeluBackend: Backend {
    fn gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl GeluBackend for Flex {
    fn gelu(x: FlexTensor) -> FlexTensor {
        map(&x, forward)
    }
}

/// `op(x, out)` over contiguous copies of `x`, in parallel tasks, into a tensor shaped like `x`.
fn map(x: &FlexTensor, op: fn(bool, &[f32], &mut [f32])) -> FlexTensor {
    let x = contiguous(x.clone());
    let values = f32s(&x);
    let mut out = vec![0f32; values.len()];
    let fma = fma_available();
    out.par_chunks_mut(TASK_VALUES).zip(values.par_chunks(TASK_VALUES)).for_each(|(out, x)| op(fma, x, out));
    FlexTensor::from_data(TensorData::new(out, x.shape()))
}

impl<C: CheckpointStrategy> GeluBackend for Autodiff<Flex, C> {
    fn gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match GeluBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let x = x.into_primitive();
                let y = Flex::gelu(x.clone());
                prep.finish(x, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::gelu(x.into_primitive())),
        }
    }
}

/// Backward step of [`GeluBackend::gelu`]; the state is the input.
#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let out_grad = contiguous(grads.consume::<Flex>(&ops.node));
        if let Some(node) = ops.parents[0].clone() {
            let x = contiguous(ops.state);
            let (x_values, g) = (f32s(&x), f32s(&out_grad));
            let mut x_grad = vec![0f32; x_values.len()];
            let fma = fma_available();
            x_grad
                .par_chunks_mut(TASK_VALUES)
                .zip(x_values.par_chunks(TASK_VALUES).zip(g.par_chunks(TASK_VALUES)))
                .for_each(|(out, (x, g))| backward(fma, x, g, out));
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(x_grad, x.shape())));
        }
    }
}

use std::f32::consts::{FRAC_1_SQRT_2, LN_2, LOG2_E};

/// `1 / sqrt(2 pi)`.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// `exp(x)` for `x <= 0` (clamped at -87, where it underflows): `2^n * e^r` with `r` in
/// `[-ln2/2, ln2/2]` and a degree-6 Taylor polynomial (relative error below 6e-7, a few f32 ulps).
#[inline(always)]
fn exp_non_positive(x: f32) -> f32 {
    let x = x.max(-87.0);
    let n = (x * LOG2_E + 0.5).floor();
    // ln 2 split in two so that `n * LN2_HIGH` is exact.
    const LN2_HIGH: f32 = 0.693_145_75;
    const LN2_LOW: f32 = LN_2 - LN2_HIGH;
    let r = x - n * LN2_HIGH - n * LN2_LOW;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    f32::from_bits(((n as i32 + 127) << 23) as u32) * p
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

with_avx2! {
    /// `out = x * Phi(x)`.
    fn forward(x: &[f32], out: &mut [f32]) {
        for (out, &x) in out.iter_mut().zip(x) {
            *out = x * cdf_and_density(x).0;
        }
    }
}

with_avx2! {
    /// `out = g * (Phi(x) + x * phi(x))`, the gradient of GELU at `x` times the output's.
    fn backward(x: &[f32], g: &[f32], out: &mut [f32]) {
        for ((out, &x), &g) in out.iter_mut().zip(x).zip(g) {
            let (cdf, density) = cdf_and_density(x);
            *out = g * (cdf + x * density);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Tolerance;

    #[test]
    fn our_exp_is_within_a_few_f32_ulps() {
        for i in 0..=8700 {
            let x = -(i as f32) * 0.01;
            let (ours, std) = (exp_non_positive(x) as f64, (x as f64).exp());
            assert!((ours - std).abs() <= 6e-7 * std + 1e-38, "exp({x}): {ours} vs {std}");
        }
    }

    #[test]
    fn values_and_gradients_equal_burns_gelu() {
        let device = Device::flex().autodiff();
        // -10..10 in small steps (both tails, zero, the bend) plus odd sizes for partial tasks.
        let values: Vec<f32> = (0..40_001).map(|i| -10.0 + i as f32 * 5e-4).collect();
        let n = values.len();
        let input = || Tensor::<1>::from_data(TensorData::new(values.clone(), [n]), &device).require_grad();
        let weights = Tensor::<1>::from_data(TensorData::new((0..n).map(|i| (i % 7) as f32 - 3.0).collect::<Vec<f32>>(), [n]), &device);
        let run = |ours: bool| {
            let x = input();
            let y = if ours { gelu(x.clone()) } else { burn::tensor::activation::gelu(x.clone()) };
            let grads = (y.clone() * weights.clone()).sum().backward();
            (y.inner().into_data(), x.grad(&grads).unwrap().into_data())
        };
        let ((y, dx), (y_ref, dx_ref)) = (run(true), run(false));
        y.assert_approx_eq::<f32>(&y_ref, Tolerance::absolute(1e-6));
        dx.assert_approx_eq::<f32>(&dx_ref, Tolerance::absolute(1e-5));
        // A 4-d activation, as the models pass them, and NaN kept.
        let x = Tensor::<4>::from_data(TensorData::new(vec![f32::NAN, -1.0, 0.0, 1.0], [1, 1, 2, 2]), &Device::flex());
        let y: Vec<f32> = gelu(x).into_data().try_to_vec::<f32>().unwrap();
        assert!(y[0].is_nan() && (y[1] + 0.158_655_26).abs() < 1e-6 && y[2] == 0.0 && (y[3] - 0.841_344_7).abs() < 1e-6, "{y:?}");
    }
}
