//! Our own compute kernels for layers where burn's are slow, each behind a function and a module
//! that behave exactly like burn's equivalent (and fall back to it where ours do not apply).
//!
//! Each kernel enters burn as a backend extension (`#[backend_extension(Flex, Autodiff)]`) whose
//! flex implementation runs on the tensors' host memory; the helpers below are what they share.

/// Defines `fn name(fma: bool, args..)` that runs `body` compiled for AVX2 + FMA when `fma` is
/// true (it must come from `fma_available`), and compiled for the baseline CPU otherwise: for
/// plain loops the compiler vectorizes, 8 lanes wide with AVX2 instead of 4. A safe function may
/// take one type parameter (`fn name<T: Bound>(..)`), e.g. the element function of a loop.
///
/// `with_avx2! { avx512 fn .. }` also compiles the body for AVX-512, run where the CPU has it:
/// for the element-wise activation loops (SiLU's `exp`), 16 lanes instead of 8. Not for every
/// kernel: the Winograd transforms, in 8-lane registers by design, ran slower so.
macro_rules! with_avx2 {
    ($(#[$meta:meta])* $vis:vis avx512 fn $($rest:tt)*) => {
        with_avx2! { @levels true, $(#[$meta])* $vis fn $($rest)* }
    };
    ($(#[$meta:meta])* $vis:vis fn $($rest:tt)*) => {
        with_avx2! { @levels false, $(#[$meta])* $vis fn $($rest)* }
    };
    (@levels $avx512:expr, $(#[$meta:meta])* $vis:vis fn $name:ident$(<$t:ident: $bound:path>)?($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name$(<$t: $bound>)?(fma: bool, $($arg: $ty),*) {
            #[inline(always)]
            fn body$(<$t: $bound>)?($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512bw,avx512dq")]
            fn body_avx512$(<$t: $bound>)?($($arg: $ty),*) {
                body$(::<$t>)?($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if $avx512 && fma && $crate::kernels::avx512_available() {
                // SAFETY: the CPU has AVX-512 F/VL/BW/DQ (and AVX2 and FMA: `fma`).
                return unsafe { body_avx512$(::<$t>)?($($arg),*) };
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn body_avx2$(<$t: $bound>)?($($arg: $ty),*) {
                body$(::<$t>)?($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if fma {
                // SAFETY: `fma` comes from `fma_available`: the CPU has AVX2 and FMA.
                return unsafe { body_avx2$(::<$t>)?($($arg),*) };
            }
            let _ = fma;
            body$(::<$t>)?($($arg),*)
        }
    };
    ($(#[$meta:meta])* unsafe fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name(fma: bool, $($arg: $ty),*) {
            #[inline(always)]
            unsafe fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn body_avx2($($arg: $ty),*) {
                // SAFETY: the caller's guarantee.
                unsafe { body($($arg),*) }
            }
            #[cfg(target_arch = "x86_64")]
            if fma {
                // SAFETY: `fma` comes from `fma_available`: the CPU has AVX2 and FMA; the caller
                // guarantees the rest.
                return unsafe { body_avx2($($arg),*) };
            }
            let _ = fma;
            // SAFETY: the caller's guarantee.
            unsafe { body($($arg),*) }
        }
    };
}

pub mod activation;
pub mod batch_norm;
pub mod dense;
pub mod depthwise;
pub mod max_pool;
pub mod norm_conv;
pub mod sgd;
pub mod squeeze_excite;
pub mod winograd;

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::ops::{Backward, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, ExtensionType, Flex, TensorMetadata};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Whether the models run their layers through our kernels (the default) or through burn's own
/// ops everywhere: `bench train --kernels burn` measures the difference, and a suspected kernel
/// bug can be ruled out without a rebuild.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

thread_local! {
    /// This thread's scratch buffers between uses (see [`with_buffers`]).
    static SPARE_BUFFERS: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// `f` with `N` scratch buffers of this thread's, kept from call to call: once grown, a kernel's
/// tasks reuse them instead of allocating and zero-filling their own (memset and page faults were
/// about 4% of a fast_net step, more with the CPU shared). Buffers come back in the order they
/// left, so each role finds its own again; nested uses (a task inside another's wait) take others.
fn with_buffers<const N: usize, R>(f: impl FnOnce(&mut [Vec<f32>; N]) -> R) -> R {
    let mut buffers: [Vec<f32>; N] = SPARE_BUFFERS.with_borrow_mut(|spare| std::array::from_fn(|_| spare.pop().unwrap_or_default()));
    let result = f(&mut buffers);
    SPARE_BUFFERS.with_borrow_mut(|spare| spare.extend(buffers.into_iter().rev()));
    result
}

/// A new `len`-long vector whose chunks of `chunk` values `fill(i, chunk i)` writes, in parallel;
/// left uninitialized before (zero-filling it first was one more pass over an activation).
///
/// # Safety
///
/// `fill` writes every value of the chunk it is given.
unsafe fn uninit_chunks(len: usize, chunk: usize, fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync) -> Vec<f32> {
    let mut values = Vec::with_capacity(len);
    values.spare_capacity_mut()[..len].par_chunks_mut(chunk).enumerate().for_each(|(i, chunk)| fill(i, chunk));
    // SAFETY: every chunk, and so all `len` values, was written above (the caller's guarantee).
    unsafe { values.set_len(len) };
    values
}

/// `values` as the floats they hold.
///
/// # Safety
///
/// Every value has been written.
unsafe fn assume_written(values: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: MaybeUninit<f32> has f32's layout; the caller guarantees the values are initialized.
    unsafe { &mut *(values as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// The first `len` values of `buffer`, grown to hold them where it is shorter. Whatever an earlier
/// use left there stays: every user writes its part before reading it.
fn sized(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

/// `Σ add(item)` over `items` as a `len`-long vector. The items are cut into one run per thread,
/// each run adds its items in order into a partial sum of its own, and the partial sums are added
/// in run order: the result depends on the thread count only, never on how rayon schedules the
/// runs (a work-stealing fold groups the items differently from call to call, and float addition
/// is not associative, so the same seed gave different weights).
fn sum_in_parallel<T: Send>(items: Vec<T>, len: usize, add: impl Fn(T, &mut [f32]) + Sync + Send) -> Vec<f32> {
    let per_run = items.len().div_ceil(rayon::current_num_threads()).max(1);
    let partials: Vec<Vec<f32>> = items
        .into_par_iter()
        .chunks(per_run)
        .map(|run| {
            let mut partial = vec![0f32; len];
            run.into_iter().for_each(|item| add(item, &mut partial));
            partial
        })
        .collect();
    partials
        .into_iter()
        .reduce(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
            a
        })
        .unwrap_or_else(|| vec![0f32; len])
}

/// `dst = lhs · rhs` (`m x k` times `k x n`), or `dst += lhs · rhs` where `accumulate`, on the
/// `gemm` crate and this thread alone (the kernels split their work between threads themselves).
/// Each matrix is given as (first value, column stride, row stride).
///
/// # Safety
///
/// The pointers and strides address matrices of those sizes, and `dst` overlaps neither operand.
unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    (dst, dst_cs, dst_rs): (*mut f32, isize, isize),
    accumulate: bool,
    (lhs, lhs_cs, lhs_rs): (*const f32, isize, isize),
    (rhs, rhs_cs, rhs_rs): (*const f32, isize, isize),
) {
    let alpha = if accumulate { 1.0 } else { 0.0 };
    // SAFETY: the caller's guarantee.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs,
            dst_rs,
            accumulate,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            alpha,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// An optional tensor argument of an extension (the extension macro maps tensors inside derived
/// types, but not inside an `Option`): a convolution's bias, the plane moments a BatchNorm is given.
#[derive(ExtensionType)]
enum OptionalTensor<B: Backend> {
    Given(FloatTensor<B>),
    Absent,
}

impl<B: Backend> OptionalTensor<B> {
    fn into_option(self) -> Option<FloatTensor<B>> {
        match self {
            OptionalTensor::Given(tensor) => Some(tensor),
            OptionalTensor::Absent => None,
        }
    }

    fn from_option(tensor: Option<FloatTensor<B>>) -> Self {
        tensor.map_or(OptionalTensor::Absent, OptionalTensor::Given)
    }
}

with_avx2! {
    /// `[mean, Σ (x - mean)²]` of each plane of a run of planes (`x.len() / moments.len()` values
    /// each), the mean taken first (exact for values far from 0 with a small spread). The dense
    /// and depthwise convolutions take them of their output planes while these are in cache, for
    /// the BatchNorm after them (`2 * batch * channels` f64 values), which then skips its own read
    /// of the tensor for them.
    avx512 fn plane_moments(x: &[f32], moments: &mut [[f64; 2]]) {
        let plane = x.len() / moments.len();
        for (x, moments) in x.chunks_exact(plane).zip(moments) {
            let mean = lane_sums(x, x, |v, _| [v, 0.0])[0] / plane as f64;
            let m = mean as f32;
            *moments = [mean, lane_sums(x, x, |v, _| [(v - m) * (v - m), 0.0])[0]];
        }
    }
}

/// A BatchNorm and activation in front of a convolution, applied as the kernels read its input:
/// they convolve `act(x * scale + shift)` (per input channel; zero padding around that), so that
/// only the BatchNorm's input is ever stored (`norm_conv`).
#[derive(Debug, Clone, Copy)]
pub struct InputNorm<'a> {
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    pub act: activation::Act,
}

/// Called by a backward kernel's tasks with their first plane (image * channels + channel) and
/// their planes of the input gradient, as soon as they have written them (while in cache).
pub type XGradDone<'a> = &'a (dyn Fn(usize, &[f32]) + Sync);

/// A buffer whose parallel tasks each write their own values, not one contiguous chunk.
struct SharedSlice<T>(*mut T);

// SAFETY: the tasks write disjoint values (each `run` is one task's alone).
unsafe impl<T: Send> Sync for SharedSlice<T> {}

impl<T> SharedSlice<T> {
    fn new(values: &mut [T]) -> Self {
        Self(values.as_mut_ptr())
    }

    /// `len` values from `start`.
    ///
    /// # Safety
    ///
    /// No other task uses these values; they lie inside the buffer.
    #[allow(clippy::mut_from_ref)]
    unsafe fn run(&self, start: usize, len: usize) -> &mut [T] {
        // SAFETY: the caller's guarantee.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

/// A convolution extension's autodiff step: `forward` on the flex tensors (the output, and
/// whatever else it gives outside the graph), recorded with the backward step `step` whose parents
/// are `[x, weight]` or `[x, weight, bias]` (two arities of one `Backward` implementation) and whose
/// state is the checkpointed `x` and `weight` plus `sizes` (stride, padding, ...).
fn conv_step<C, S, P, T>(
    step: S,
    x: FloatTensor<Autodiff<Flex, C>>,
    weight: FloatTensor<Autodiff<Flex, C>>,
    bias: OptionalTensor<Autodiff<Flex, C>>,
    sizes: P,
    forward: impl FnOnce(FlexTensor, FlexTensor, OptionalTensor<Flex>) -> (FlexTensor, T),
) -> (FloatTensor<Autodiff<Flex, C>>, T)
where
    C: CheckpointStrategy,
    S: Backward<Flex, 2, State = (NodeId, NodeId, P)> + Backward<Flex, 3, State = (NodeId, NodeId, P)>,
    P: Clone + Send + std::fmt::Debug + 'static,
{
    let bias = bias.into_option();
    let bias_values = OptionalTensor::from_option(bias.clone().map(|bias| bias.into_primitive()));
    let (y, extra) = forward(x.clone().into_primitive(), weight.clone().into_primitive(), bias_values);
    let output = match bias {
        Some(bias) => match <S as Backward<Flex, 3>>::prepare::<C>(step, [x.node(), weight.node(), bias.node()]).compute_bound().stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&weight), sizes);
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        },
        None => match <S as Backward<Flex, 2>>::prepare::<C>(step, [x.node(), weight.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&weight), sizes);
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        },
    };
    (output, extra)
}

fn contiguous(tensor: FlexTensor) -> FlexTensor {
    if tensor.as_slice::<f32>().is_some() { tensor } else { tensor.to_contiguous() }
}

/// The values of a contiguous f32 tensor that owns its storage alone and uses all of it (not a
/// permuted or sliced view: those values are not in the tensor's order).
fn exclusive_f32s(tensor: &mut FlexTensor) -> Option<&mut [f32]> {
    let len = tensor.shape().num_elements();
    if tensor.as_slice::<f32>().is_none_or(|values| values.len() != len) {
        return None;
    }
    tensor.try_storage_mut::<f32>().filter(|values| values.len() == len)
}

fn f32s(tensor: &FlexTensor) -> &[f32] {
    tensor.as_slice::<f32>().expect("our kernels take contiguous f32 tensors")
}

/// Rows to columns of eight 8-lane AVX registers: lane `j` of result `i` is lane `i` of `rows[j]`.
/// The usual three rounds: pairs of rows interleaved, pairs of pairs, then 128-bit halves swapped.
///
/// # Safety
///
/// The CPU has AVX (it is inlined into the AVX2 code that calls it).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn transpose_8x8(rows: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::{
        _mm256_permute2f128_ps as halves, _mm256_shuffle_ps as shuffle, _mm256_unpackhi_ps as high, _mm256_unpacklo_ps as low,
    };
    let [r0, r1, r2, r3, r4, r5, r6, r7] = rows;
    // SAFETY: the caller's guarantee.
    unsafe {
        let (a0, a1, a2, a3) = (low(r0, r1), high(r0, r1), low(r2, r3), high(r2, r3));
        let (a4, a5, a6, a7) = (low(r4, r5), high(r4, r5), low(r6, r7), high(r6, r7));
        let (b0, b1, b2, b3) = (shuffle::<0x44>(a0, a2), shuffle::<0xEE>(a0, a2), shuffle::<0x44>(a1, a3), shuffle::<0xEE>(a1, a3));
        let (b4, b5, b6, b7) = (shuffle::<0x44>(a4, a6), shuffle::<0xEE>(a4, a6), shuffle::<0x44>(a5, a7), shuffle::<0xEE>(a5, a7));
        [
            halves::<0x20>(b0, b4),
            halves::<0x20>(b1, b5),
            halves::<0x20>(b2, b6),
            halves::<0x20>(b3, b7),
            halves::<0x31>(b0, b4),
            halves::<0x31>(b1, b5),
            halves::<0x31>(b2, b6),
            halves::<0x31>(b3, b7),
        ]
    }
}

/// Whether this CPU has AVX2 and FMA (checked at run time; the kernels have a portable path).
fn fma_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether this CPU has the AVX-512 subsets `with_avx2! { avx512 fn .. }` compiles for (checked at
/// run time; std caches the answer).
fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512dq");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A convolution's bias gradient: `out_grad` `[batch, channels, plane]` summed over images and
/// pixels, `[channels]`.
fn bias_gradient(out_grad: &[f32], batch: usize, channels: usize, plane: usize) -> Vec<f32> {
    (0..channels)
        .into_par_iter()
        .map(|c| {
            (0..batch).map(|n| &out_grad[(n * channels + c) * plane..][..plane]).map(|p| lane_sums(p, p, |g, _| [g, 0.0])[0]).sum::<f64>()
                as f32
        })
        .collect()
}

/// `Σ f(a[i], b[i])` (`N` sums at once) over two equally long runs, summed in 32 independent f32
/// lanes that the compiler vectorizes, then 8 for the rest (short planes: the 4x4 maps of late
/// stages), then one by one, and added in f64 (one running sum is a chain of dependent additions,
/// a few cycles per value; BatchNorm's statistics and gradient sums spent most of their time so).
#[inline(always)]
fn lane_sums<const N: usize>(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> [f32; N]) -> [f64; N] {
    assert_eq!(a.len(), b.len(), "lane_sums: runs of different lengths");
    let mut total = [0f64; N];
    // 32 lanes for one or two sums; more sums at 16 keep their lanes in registers.
    let done = if N <= 2 { lanes_sums::<32, N>(a, b, &f, &mut total) } else { lanes_sums::<16, N>(a, b, &f, &mut total) };
    let done = done + lanes_sums::<8, N>(&a[done..], &b[done..], &f, &mut total);
    for (&a, &b) in a[done..].iter().zip(&b[done..]) {
        let values = f(a, b);
        for i in 0..N {
            total[i] += values[i] as f64;
        }
    }
    total
}

/// The `LANES`-wide stage of [`lane_sums`]: adds the sums of the first whole `LANES`-long chunks
/// to `total` and says how many values that took.
#[inline(always)]
fn lanes_sums<const LANES: usize, const N: usize>(a: &[f32], b: &[f32], f: &impl Fn(f32, f32) -> [f32; N], total: &mut [f64; N]) -> usize {
    // Short runs (the 4x4 planes of late stages) skip the stage and its final additions.
    if a.len() < LANES {
        return 0;
    }
    let mut sums = [[0f32; LANES]; N];
    for (a, b) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for i in 0..LANES {
            let values = f(a[i], b[i]);
            for k in 0..N {
                sums[k][i] += values[k];
            }
        }
    }
    for k in 0..N {
        total[k] += fold_lanes(sums[k]);
    }
    a.len() - a.len() % LANES
}

/// The sum of `lanes` in f64, halves added lane by lane (vector additions; a running sum is a
/// chain of dependent additions, which cost more than the small planes' own sums).
#[inline(always)]
fn fold_lanes<const LANES: usize>(lanes: [f32; LANES]) -> f64 {
    const { assert!(LANES.is_power_of_two()) };
    // A loop, not `array::map`: that was a call of its own, compiled for the baseline CPU.
    let mut wide = [0f64; LANES];
    for (wide, &lane) in wide.iter_mut().zip(&lanes) {
        *wide = lane as f64;
    }
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            wide[i] += wide[i + width];
        }
    }
    wide[0]
}

/// A training BatchNorm on `channels` whose gamma and beta (tracked) are away from 1 and 0 and
/// whose running statistics move fast, so that a dropped term shows, for the kernels' tests.
#[cfg(test)]
fn training_batch_norm(channels: usize, device: &burn::prelude::Device) -> burn::nn::BatchNorm {
    let bn = burn::nn::BatchNormConfig::new(channels).with_momentum(0.3).init(device);
    burn::nn::BatchNorm {
        gamma: bn.gamma.map(|g| g.add_scalar(1.5).detach().require_grad()),
        beta: bn.beta.map(|b| b.add_scalar(0.5).detach().require_grad()),
        ..bn
    }
}

/// Deterministic values in [-1, 1), for the kernels' tests.
#[cfg(test)]
fn test_values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Asserts that the convolution `ours` gives burn's `conv2d` result (`options`) and gradients for
/// input, weight and bias, within fp32 tolerance, on random `x` `[batch, in, h, w]`, `weight`
/// (of shape `weight`), an optional bias and a random output gradient.
#[cfg(test)]
fn assert_conv_matches_burn(
    x: [usize; 4],
    weight: [usize; 4],
    bias: bool,
    options: burn::tensor::ops::ConvOptions<2>,
    device: &burn::prelude::Device,
    ours: impl Fn(burn::prelude::Tensor<4>, burn::prelude::Tensor<4>, Option<burn::prelude::Tensor<1>>) -> burn::prelude::Tensor<4>,
) {
    use burn::prelude::Tensor;
    use burn::tensor::{Distribution, Tolerance};
    let x = Tensor::<4>::random(x, Distribution::Normal(0.0, 1.0), device);
    let weight = Tensor::<4>::random(weight, Distribution::Normal(0.0, 0.3), device);
    let bias = bias.then(|| Tensor::<1>::random([weight.dims()[0]], Distribution::Normal(0.0, 1.0), device));
    // A random output gradient, so that every tap's contribution counts differently.
    let out_dims = burn::tensor::module::conv2d(x.clone(), weight.clone(), None, options.clone()).dims();
    let out_grad = Tensor::<4>::random(out_dims, Distribution::Normal(0.0, 1.0), device);
    let run = |conv: &dyn Fn(Tensor<4>, Tensor<4>, Option<Tensor<1>>) -> Tensor<4>| {
        let (x, weight) = (x.clone().require_grad(), weight.clone().require_grad());
        let bias = bias.clone().map(Tensor::require_grad);
        let y = conv(x.clone(), weight.clone(), bias.clone());
        let grads = (y.clone() * out_grad.clone()).sum().backward();
        let bias_grad = bias.map(|bias| bias.grad(&grads).unwrap().into_data());
        (y.into_data(), x.grad(&grads).unwrap().into_data(), weight.grad(&grads).unwrap().into_data(), bias_grad)
    };
    let ours = run(&ours);
    let burn = run(&|x, w, b| burn::tensor::module::conv2d(x, w, b, options.clone()));
    // fp32 rounding grows with the magnitude of what a sum accumulates: the absolute tolerance is
    // relative to the largest value of each result (weight gradients sum batch x pixels products).
    let assert_close = |ours: &burn::tensor::TensorData, burn: &burn::tensor::TensorData| {
        let largest = burn.iter::<f32>().fold(1f32, |largest, v| largest.max(v.abs()));
        ours.assert_approx_eq::<f32>(burn, Tolerance::rel_abs(1e-4, 1e-4 * largest));
    };
    assert_close(&ours.0, &burn.0);
    assert_close(&ours.1, &burn.1);
    assert_close(&ours.2, &burn.2);
    if let (Some(ours), Some(burn)) = (ours.3, burn.3) {
        assert_close(&ours, &burn);
    }
}
