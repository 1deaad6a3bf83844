//! 2D max-pooling, forward and backward, on host f32 NCHW data.
//!
//! burn-flex's `max_pool2d` took ~30 ms for a 2x2 pooling of a `[128, 32, 32, 32]` activation
//! (16 MiB) here, this kernel 2 ms (both measured while another job shared the CPU): on
//! `fast_net` burn's three poolings were most of the forward time outside the convolutions, and
//! the whole step trains 7-11% faster with this kernel. Each output is the maximum of its window,
//! its position in the input plane kept (4 bytes, burn keeps 8) for the backward pass, which adds
//! each output gradient to that position.
//!
//! The models call it for their `MaxPool2d` layers (`models::layers::max_pool_forward`).

use std::sync::Arc;

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::prelude::*;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

use super::{contiguous, f32s, fma_available};

/// Max-pooling of `x` `[batch, channels, height, width]` over `window` (padding never wins, NaN
/// propagates): `[batch, channels, (height + top + bottom - kernel) / stride + 1, ...]`, the same
/// as burn's `max_pool2d` without dilation or ceil mode, through our kernel on flex.
///
/// # Panics
///
/// If a stride is 0, a padding exceeds half its kernel (some windows would hold padding only) or
/// the kernel exceeds the padded input.
pub fn max_pool2d(x: Tensor<4>, window: Window) -> Tensor<4> {
    let [_, _, height, width] = x.dims();
    assert!(window.fits([height, width]), "max_pool2d: bad window {window:?} for input {:?}", x.dims());
    if x.dtype() != DType::F32 || x.device().inner() != Device::flex() {
        let [[top, bottom], [left, right]] = window.padding;
        let options = MaxPoolOptions::new(window.kernel).with_stride(window.stride).with_padding_pairs([(top, bottom), (left, right)]);
        return burn::tensor::module::max_pool2d(x, options);
    }
    Tensor::from_dispatch(<Dispatch as MaxPoolBackend>::max_pool2d(x.into_dispatch(), window))
}

/// A pooling window: its size, its step and the padding `[[top, bottom], [left, right]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [[usize; 2]; 2],
}

impl Window {
    /// Whether the strides are positive, every window of a `[height, width]` input holds an
    /// input pixel (padding at most half the kernel, as PyTorch requires) and the kernel fits.
    pub fn fits(&self, [height, width]: [usize; 2]) -> bool {
        [height, width].into_iter().enumerate().all(|(axis, len)| {
            let [before, after] = self.padding[axis];
            self.stride[axis] > 0 && before.max(after) <= self.kernel[axis] / 2 && len + before + after >= self.kernel[axis]
        })
    }

    /// `[out_height, out_width]` for an input plane of `[height, width]`.
    fn output(&self, [height, width]: [usize; 2]) -> [usize; 2] {
        let size =
            |axis: usize, len: usize| (len + self.padding[axis][0] + self.padding[axis][1] - self.kernel[axis]) / self.stride[axis] + 1;
        [size(0, height), size(1, width)]
    }
}

/// Our kernel as a burn backend operation; callers guarantee what [`max_pool2d`] checks.
#[backend_extension(Flex, Autodiff)]
trait MaxPoolBackend: Backend {
    fn max_pool2d(x: FloatTensor<Self>, window: Window) -> FloatTensor<Self>;
}

impl MaxPoolBackend for Flex {
    fn max_pool2d(x: FlexTensor, window: Window) -> FlexTensor {
        pooled(x, window, false).0
    }
}

/// The pooled tensor of `x`, and the input position of each output when `positions` is asked for.
fn pooled(x: FlexTensor, window: Window, positions: bool) -> (FlexTensor, Option<Vec<u32>>) {
    let [batch, channels, height, width] = x.shape().dims();
    let x = contiguous(x);
    let (y, positions) = host::forward(f32s(&x), [height, width], window, positions);
    let [out_height, out_width] = window.output([height, width]);
    (FlexTensor::from_data(TensorData::new(y, [batch, channels, out_height, out_width])), positions)
}

impl<C: CheckpointStrategy> MaxPoolBackend for Autodiff<Flex, C> {
    fn max_pool2d(x: FloatTensor<Self>, window: Window) -> FloatTensor<Self> {
        match MaxPoolBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let input_shape = x.shape().dims();
                let (y, positions) = pooled(x.into_primitive(), window, true);
                let positions = positions.expect("positions were asked for");
                prep.finish((Arc::new(positions), input_shape), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::max_pool2d(x.into_primitive(), window)),
        }
    }
}

/// Backward step of [`MaxPoolBackend::max_pool2d`]; the parent is `x`.
#[derive(Debug)]
struct MaxPoolBackward;

impl Backward<Flex, 1> for MaxPoolBackward {
    /// Each output's position in its input plane, and the input's shape.
    type State = (Arc<Vec<u32>>, [usize; 4]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let out_grad = contiguous(grads.consume::<Flex>(&ops.node));
        let (positions, [batch, channels, height, width]) = ops.state;
        if let Some(node) = ops.parents[0].clone() {
            let x_grad = host::backward(f32s(&out_grad), &positions, batch * channels, height * width);
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(x_grad, [batch, channels, height, width])));
        }
    }
}

mod host {
    use super::*;

    /// The maxima of the windows of every `[height, width]` plane of `x`, and where requested the
    /// position in its plane of each one (the first of equal values; a NaN wins).
    pub fn forward(x: &[f32], [height, width]: [usize; 2], window: Window, positions: bool) -> (Vec<f32>, Option<Vec<u32>>) {
        let [out_height, out_width] = window.output([height, width]);
        let (plane, out_plane) = (height * width, out_height * out_width);
        let planes = x.len() / plane;
        let mut y = vec![0f32; planes * out_plane];
        let mut at = if positions { vec![0u32; planes * out_plane] } else { Vec::new() };
        // The common 2x2, stride-2, unpadded pooling: both input rows read together, pairs of
        // columns combined in a loop the compiler vectorizes.
        let fma = fma_available();
        let halving = window == Window { kernel: [2, 2], stride: [2, 2], padding: [[0, 0], [0, 0]] };
        let stem = window == Window { kernel: [3, 3], stride: [2, 2], padding: [[1, 1], [1, 1]] };
        let pool_one = |x: &[f32], y: &mut [f32], at: &mut [u32]| match (halving, stem) {
            (true, _) => halve_plane(fma, x, width, y, at, out_width),
            (_, true) => stem_pool_plane(fma, x, [height, width], y, at, [out_height, out_width]),
            _ => pool_plane(x, [height, width], window, y, at, [out_height, out_width]),
        };
        // Several small planes per task, so that scheduling stays cheap next to the work.
        let per_task = (4096 / out_plane.max(1)).max(1);
        let tasks = x.par_chunks(plane * per_task).zip(y.par_chunks_mut(out_plane * per_task));
        let each_plane = |(x, y): (&[f32], &mut [f32]), at: &mut [u32]| {
            x.chunks(plane).zip(y.chunks_mut(out_plane)).zip(at.chunks_mut(out_plane)).for_each(|((x, y), at)| pool_one(x, y, at))
        };
        match positions {
            true => tasks.zip(at.par_chunks_mut(out_plane * per_task)).for_each(|(task, at)| each_plane(task, at)),
            // Positions only for the task's use.
            false => tasks.for_each_init(Vec::new, |at, task| {
                at.resize(task.1.len(), 0);
                each_plane(task, at)
            }),
        }
        (y, positions.then_some(at))
    }

    /// Whether `value` replaces `best` as a window's maximum: PyTorch's rule, a larger value or
    /// the first NaN.
    #[inline(always)]
    fn wins(value: f32, best: f32) -> bool {
        value > best || (value.is_nan() && !best.is_nan())
    }

    /// Any window over one plane `x` (`[height, width]`) into `y` (`[out_height, out_width]`): each
    /// output's window scanned row by row, its maximum kept in registers and written once (not
    /// read and written again at every window position).
    pub(super) fn pool_plane(
        x: &[f32],
        [height, width]: [usize; 2],
        window: Window,
        y: &mut [f32],
        at: &mut [u32],
        [out_height, out_width]: [usize; 2],
    ) {
        let [[top, _], [left, _]] = window.padding;
        // The input range of window `o` along an axis, clipped to the plane (never empty: the
        // padding is at most half the kernel).
        let span = |o: usize, stride: usize, padding: usize, kernel: usize, len: usize| {
            let start = (o * stride).saturating_sub(padding);
            start..(o * stride + kernel - padding).min(len)
        };
        for oy in 0..out_height {
            let rows = span(oy, window.stride[0], top, window.kernel[0], height);
            let (y, at) = (&mut y[oy * out_width..][..out_width], &mut at[oy * out_width..][..out_width]);
            for (ox, (y, at)) in y.iter_mut().zip(at.iter_mut()).enumerate() {
                let columns = span(ox, window.stride[1], left, window.kernel[1], width);
                // The window's first input pixel, kept where every value is -inf.
                let (mut best, mut best_at) = (f32::NEG_INFINITY, rows.start * width + columns.start);
                for row in rows.clone() {
                    let x = &x[row * width..][..width];
                    for column in columns.clone() {
                        // As selects: no branch to mispredict on random data.
                        let wins = wins(x[column], best);
                        best = if wins { x[column] } else { best };
                        best_at = if wins { row * width + column } else { best_at };
                    }
                }
                (*y, *at) = (best, best_at as u32);
            }
        }
    }

    with_avx2! {
        /// 2x2, stride-2 max-pooling of one plane `x` (`width` wide) into `y` (`out_width` wide).
        fn halve_plane(x: &[f32], width: usize, y: &mut [f32], at: &mut [u32], out_width: usize) {
            for (oy, (y, at)) in y.chunks_exact_mut(out_width).zip(at.chunks_exact_mut(out_width)).enumerate() {
                let (upper, lower) = (&x[2 * oy * width..][..2 * out_width], &x[(2 * oy + 1) * width..][..2 * out_width]);
                let base = (2 * oy * width) as u32;
                for (ox, (((y, at), upper), lower)) in y.iter_mut().zip(at.iter_mut()).zip(upper.chunks_exact(2)).zip(lower.chunks_exact(2)).enumerate() {
                    let column = base + 2 * ox as u32;
                    let (mut best, mut best_at) = (upper[0], column);
                    for (value, position) in [(upper[1], column + 1), (lower[0], column + width as u32), (lower[1], column + width as u32 + 1)] {
                        let wins = wins(value, best);
                        best = if wins { value } else { best };
                        best_at = if wins { position } else { best_at };
                    }
                    (*y, *at) = (best, best_at);
                }
            }
        }
    }

    with_avx2! {
        /// ResNet's stem pooling (3x3 windows, stride 2, one pixel of padding) of one plane, in two
        /// steps that vectorize: each input row's maxima over its column triples, from the row's
        /// odd and even columns split apart (so the triples are contiguous), then each output's
        /// maximum over three of those rows. Rows in order, and columns in order within a row,
        /// keep the first of equal values (and the first NaN), as the row-major scan does.
        fn stem_pool_plane(x: &[f32], hw: [usize; 2], y: &mut [f32], at: &mut [u32], out_hw: [usize; 2]) {
            let ([height, width], [out_height, out_width]) = (hw, out_hw);
            // Row r's triple ox is (left[ox], center[ox], left[ox + 1]) at columns 2 ox - 1, 2 ox,
            // 2 ox + 1; left[0] and a left[out_width] past the row's end are padding.
            let mut left = vec![f32::NEG_INFINITY; out_width + 1];
            let mut center = vec![0f32; out_width];
            let (mut row_max, mut row_at) = (vec![0f32; height * out_width], vec![0u32; height * out_width]);
            for r in 0..height {
                let row = &x[r * width..][..width];
                for (ox, center) in center.iter_mut().enumerate() {
                    *center = row[2 * ox];
                }
                for (ox, left) in left[1..=width / 2].iter_mut().enumerate() {
                    *left = row[2 * ox + 1];
                }
                let best = row_max[r * out_width..][..out_width].iter_mut().zip(&mut row_at[r * out_width..][..out_width]);
                let triples = center.iter().zip(&left[..out_width]).zip(&left[1..]);
                for (ox, ((best, best_at), ((&center, &left), &right))) in best.zip(triples).enumerate() {
                    let column = 2 * ox as u32;
                    let (mut max, mut max_at) = (left, column.wrapping_sub(1));
                    for (value, position) in [(center, column), (right, column + 1)] {
                        let wins = wins(value, max);
                        max = if wins { value } else { max };
                        max_at = if wins { position } else { max_at };
                    }
                    (*best, *best_at) = (max, max_at);
                }
                // The first triple's left column is padding: where nothing beat it (all -inf), the
                // maximum is the first pixel.
                if row_at[r * out_width] == u32::MAX {
                    row_at[r * out_width] = 0;
                }
            }
            for oy in 0..out_height {
                let rows = (2 * oy).saturating_sub(1)..(2 * oy + 2).min(height);
                let (y, at) = (&mut y[oy * out_width..][..out_width], &mut at[oy * out_width..][..out_width]);
                let first = rows.start;
                for ((y, at), (&value, &column)) in y.iter_mut().zip(at.iter_mut()).zip(row_max[first * out_width..][..out_width].iter().zip(&row_at[first * out_width..])) {
                    (*y, *at) = (value, (first * width) as u32 + column);
                }
                for r in rows.skip(1) {
                    let (values, columns) = (&row_max[r * out_width..][..out_width], &row_at[r * out_width..][..out_width]);
                    for ((y, at), (&value, &column)) in y.iter_mut().zip(at.iter_mut()).zip(values.iter().zip(columns)) {
                        let wins = wins(value, *y);
                        *y = if wins { value } else { *y };
                        *at = if wins { (r * width) as u32 + column } else { *at };
                    }
                }
            }
        }
    }

    /// The input gradient: each output's gradient added at its input position.
    pub fn backward(out_grad: &[f32], positions: &[u32], planes: usize, plane: usize) -> Vec<f32> {
        let out_plane = out_grad.len() / planes;
        let mut x_grad = vec![0f32; planes * plane];
        x_grad.par_chunks_mut(plane).enumerate().for_each(|(p, x_grad)| {
            let range = p * out_plane..(p + 1) * out_plane;
            for (&dy, &at) in out_grad[range.clone()].iter().zip(&positions[range]) {
                x_grad[at as usize] += dy;
            }
        });
        x_grad
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::PaddingConfig2d;
    use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
    use burn::tensor::{Distribution, Tolerance};

    use super::*;
    use crate::models::layers::max_pool_forward as forward;

    /// Ours and burn's pooling on the same input: equal outputs and input gradients.
    fn check(pool: &MaxPool2d, dims: [usize; 4], device: &Device) {
        let x = Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), device);
        let out_grad = Tensor::<4>::random(pool.forward(x.clone()).dims(), Distribution::Normal(0.0, 1.0), device);
        let run = |ours: bool| {
            let x = x.clone().require_grad();
            let y = if ours { forward(pool, x.clone()) } else { pool.forward(x.clone()) };
            let grads = (y.clone() * out_grad.clone()).sum().backward();
            (y.into_data(), x.grad(&grads).unwrap().into_data())
        };
        let (ours, burn) = (run(true), run(false));
        ours.0.assert_approx_eq::<f32>(&burn.0, Tolerance::rel_abs(0.0, 0.0));
        ours.1.assert_approx_eq::<f32>(&burn.1, Tolerance::rel_abs(1e-6, 1e-6));
    }

    #[test]
    fn output_and_gradient_equal_burns_max_pool2d() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let pools = [
            MaxPool2dConfig::new([2, 2]).init(),
            // ResNet's stem pooling: overlapping windows, so gradients add up.
            MaxPool2dConfig::new([3, 3]).with_strides([2, 2]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(),
            MaxPool2dConfig::new([3, 2]).with_strides([1, 2]).init(),
            // Asymmetric ("same") padding.
            MaxPool2dConfig::new([2, 2]).with_strides([1, 1]).with_padding(PaddingConfig2d::Same).init(),
        ];
        for pool in &pools {
            for dims in [[2, 3, 8, 8], [1, 2, 7, 9], [3, 1, 5, 4]] {
                check(pool, dims, &device);
            }
        }
    }

    #[test]
    fn runs_without_autodiff_and_leaves_other_options_to_burn() {
        let device = Device::flex();
        let x = Tensor::<4>::random([2, 3, 9, 9], Distribution::Normal(0.0, 1.0), &device);
        for pool in [MaxPool2dConfig::new([2, 2]).init(), MaxPool2dConfig::new([2, 2]).with_ceil_mode(true).init()] {
            forward(&pool, x.clone())
                .into_data()
                .assert_approx_eq::<f32>(&pool.forward(x.clone()).into_data(), Tolerance::rel_abs(0.0, 0.0));
        }
    }

    #[test]
    fn nan_propagates_and_ties_go_to_the_first() {
        let x = [1.0, f32::NAN, 0.5, 2.0, 3.0, 3.0, 3.0, 3.0];
        let window = Window { kernel: [2, 2], stride: [2, 2], padding: [[0, 0], [0, 0]] };
        let (y, at) = host::forward(&x, [2, 4], window, true);
        assert!(y[0].is_nan() && y[1] == 3.0, "{y:?}");
        assert_eq!(at.unwrap(), [1, 6]);
        // The same rule on the general path (1x2 windows).
        let window = Window { kernel: [1, 2], stride: [1, 2], padding: [[0, 0], [0, 0]] };
        let (y, at) = host::forward(&x, [2, 4], window, true);
        assert!(y[0].is_nan() && y[1..] == [2.0, 3.0, 3.0], "{y:?}");
        assert_eq!(at.unwrap(), [1, 3, 4, 6]);
    }

    /// The stem pooling's two separable steps give the row-major scan's maxima and positions on
    /// values full of ties, NaNs and -inf (also in whole windows), odd and even sides.
    #[test]
    fn stem_pooling_equals_the_window_by_window_scan() {
        let window = Window { kernel: [3, 3], stride: [2, 2], padding: [[1, 1], [1, 1]] };
        let levels = [f32::NEG_INFINITY, f32::NEG_INFINITY, -1.0, 0.0, 0.0, 2.0, f32::NAN];
        for (seed, [height, width]) in [[1, 1], [1, 2], [2, 1], [3, 3], [4, 6], [7, 5], [9, 10], [12, 13]].into_iter().enumerate() {
            let x: Vec<f32> =
                crate::kernels::test_values(height * width, seed as u64).iter().map(|v| levels[((v + 1.0) * 3.5) as usize % 7]).collect();
            let (y, at) = host::forward(&x, [height, width], window, true);
            let [out_height, out_width] = window.output([height, width]);
            let (mut expected, mut expected_at) = (vec![0f32; out_height * out_width], vec![0u32; out_height * out_width]);
            host::pool_plane(&x, [height, width], window, &mut expected, &mut expected_at, [out_height, out_width]);
            let same = |a: f32, b: f32| a == b || (a.is_nan() && b.is_nan());
            assert!(y.iter().zip(&expected).all(|(&a, &b)| same(a, b)), "{height}x{width}: {y:?} against {expected:?}");
            assert_eq!(at.unwrap(), expected_at, "{height}x{width}: positions");
        }
    }
}
