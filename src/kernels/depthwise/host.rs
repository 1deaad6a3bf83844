//! Depthwise 2D convolution on host f32 NCHW data: one `k`x`k` filter per channel, stride `s`,
//! zero padding `p` above and left of the input and `p_after` below and right of it (TensorFlow's
//! "SAME" pads one more after than before), no dilation. Forward, and backward for input, weight and bias.
//!
//! The work is split into tasks of `LANES` channels of one image ([`Group`]), run in parallel
//! with rayon; each task's arithmetic (in [`interleaved`]) holds one pixel of its `LANES`
//! channels per vector, so that every vector is full whatever the plane's width, and the 7x7
//! and 14x14 planes of late MobileNet / EfficientNet stages cost no more per pixel than wide
//! ones. Vectors are AVX2+FMA registers where the CPU has them (chosen at run time) and plain
//! arrays elsewhere ([`Vector`]).

mod interleaved;

use std::mem::MaybeUninit;

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use crate::kernels::transpose_8x8;
pub use crate::kernels::{InputNorm, XGradDone};
use crate::kernels::{SharedSlice, assume_written, fma_available, plane_moments};

/// f32 lanes of a vector (one AVX register).
const LANES: usize = 8;
/// Largest kernel these kernels take: the weight-gradient loop keeps one accumulator per kernel
/// column in registers, so it is compiled once per kernel size.
pub const MAX_KERNEL: usize = 7;

/// Sizes of one depthwise convolution; `height + padding + padding_after >= kernel` (and so for
/// the width).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub stride: usize,
    /// Zero rows above and columns left of the input.
    pub padding: usize,
    /// Zero rows below and columns right of it.
    pub padding_after: usize,
}

impl Geometry {
    pub fn out_height(&self) -> usize {
        (self.height + self.padding + self.padding_after - self.kernel) / self.stride + 1
    }

    pub fn out_width(&self) -> usize {
        (self.width + self.padding + self.padding_after - self.kernel) / self.stride + 1
    }

    fn planes(&self) -> usize {
        self.batch * self.channels
    }

    fn taps(&self) -> usize {
        self.kernel * self.kernel
    }
}

/// Gradients asked of [`backward`]; the others are not computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub x: bool,
    pub weight: bool,
    pub bias: bool,
}

/// What [`backward`] returns: `x` as `[batch, channels, height, width]`, `weight` as
/// `[channels, kernel, kernel]`, `bias` as `[channels]`, each where [`Wanted`].
#[derive(Debug, Default)]
pub struct Gradients {
    pub x: Option<Vec<f32>>,
    pub weight: Option<Vec<f32>>,
    pub bias: Option<Vec<f32>>,
}

/// The gradient of the loss with respect to the output, as [`backward`] takes it.
pub enum OutGrad<'a> {
    /// Only read.
    Read(&'a [f32]),
    /// Read, then overwritten with the input gradient, which must have its size (as at stride 1
    /// with padding `kernel / 2`): no new buffer for it.
    Overwrite(&'a mut [f32]),
}

impl OutGrad<'_> {
    fn len(&self) -> usize {
        match self {
            OutGrad::Read(values) => values.len(),
            OutGrad::Overwrite(values) => values.len(),
        }
    }
}

impl<'a> InputNorm<'a> {
    /// The channels of one task's group.
    fn group(&self, group: &Group, g: &Geometry) -> InputNorm<'a> {
        InputNorm { scale: group.rows(self.scale, g, 1), shift: group.rows(self.shift, g, 1), act: self.act }
    }
}

/// `[batch, channels, out_height, out_width]` from `x` `[batch, channels, height, width]` (through
/// `norm` where given), `weight` `[channels, kernel, kernel]` and `bias` `[channels]`; with
/// `moments`, also each output plane's `[mean, Σ (y - mean)²]` (`kernels::plane_moments`), taken as
/// each task's planes are written.
pub fn forward(
    x: &[f32],
    norm: Option<InputNorm>,
    weight: &[f32],
    bias: Option<&[f32]>,
    g: &Geometry,
    moments: bool,
) -> (Vec<f32>, Option<Vec<f64>>) {
    let fma = fma_available();
    let mut moments_values = moments.then(|| vec![[0f64; 2]; g.planes()]);
    check_sizes(g, x, norm, weight);
    if let Some(bias) = bias {
        assert_eq!(bias.len(), g.channels, "bias size");
    }
    let y = interleaved::forward(fma, x, norm, weight, bias, g, moments_values.as_deref_mut());
    (y, moments_values.map(|moments| moments.into_flattened()))
}

/// The gradients of the loss with respect to `x` (of the convolution's input: after `norm`),
/// `weight` and `bias` of [`forward`], given `out_grad`, its gradient with respect to the output.
/// With [`OutGrad::Overwrite`], the input gradient is left in `out_grad`'s buffer and
/// `Gradients::x` is `None`. `x_grad_done` sees each task's share of the input gradient.
pub fn backward(
    x: &[f32],
    norm: Option<InputNorm>,
    weight: &[f32],
    out_grad: OutGrad,
    g: &Geometry,
    wanted: Wanted,
    x_grad_done: Option<XGradDone>,
) -> Gradients {
    check_sizes(g, x, norm, weight);
    assert_eq!(out_grad.len(), g.planes() * g.out_height() * g.out_width(), "output gradient size");
    if let OutGrad::Overwrite(_) = out_grad {
        assert_eq!(out_grad.len(), x.len(), "an overwritten output gradient must have the input's size");
    }
    interleaved::backward(fma_available(), x, norm, weight, out_grad, g, wanted, x_grad_done)
}

fn check_sizes(g: &Geometry, x: &[f32], norm: Option<InputNorm>, weight: &[f32]) {
    assert!(g.stride > 0 && (1..=MAX_KERNEL).contains(&g.kernel), "depthwise: unsupported geometry {g:?}");
    assert!(
        g.height + g.padding + g.padding_after >= g.kernel && g.width + g.padding + g.padding_after >= g.kernel,
        "depthwise: kernel larger than the padded input {g:?}"
    );
    assert_eq!(x.len(), g.planes() * g.height * g.width, "input size");
    assert_eq!(weight.len(), g.channels * g.taps(), "weight size");
    if let Some(norm) = norm {
        assert!(norm.scale.len() == g.channels && norm.shift.len() == g.channels, "input norm size");
    }
}

/// A task's share of a convolution: `channels` (up to `LANES`) consecutive channels of one image,
/// from plane `first_plane` (image * channels + channel) on.
#[derive(Debug, Clone, Copy)]
struct Group {
    first_plane: usize,
    channels: usize,
}

impl Group {
    /// All tasks: up to `LANES` channels of one image each.
    fn all(g: &Geometry) -> Vec<Group> {
        (0..g.batch)
            .flat_map(|image| {
                (0..g.channels)
                    .step_by(LANES)
                    .map(move |c| Group { first_plane: image * g.channels + c, channels: LANES.min(g.channels - c) })
            })
            .collect()
    }

    fn first_channel(&self, g: &Geometry) -> usize {
        self.first_plane % g.channels
    }

    /// Its planes of a `[batch, channels, plane]` tensor.
    fn planes<'a>(&self, values: &'a [f32], plane: usize) -> &'a [f32] {
        &values[self.first_plane * plane..][..self.channels * plane]
    }

    /// Its channels' rows of a `[channels, row]` tensor.
    fn rows<'a>(&self, values: &'a [f32], g: &Geometry, row: usize) -> &'a [f32] {
        &values[self.first_channel(g) * row..][..self.channels * row]
    }
}

/// `values` (`plane` elements per channel), split into the slices of consecutive `groups`.
fn split_groups<'a, T>(mut values: &'a mut [T], groups: &[Group], plane: usize) -> Vec<&'a mut [T]> {
    let mut slices = Vec::with_capacity(groups.len());
    for group in groups {
        let (slice, rest) = std::mem::take(&mut values).split_at_mut(group.channels * plane);
        slices.push(slice);
        values = rest;
    }
    slices
}

/// A new `[batch, channels, out_height, out_width]` output, `task` computing each group's
/// planes of it in parallel (writing every value: the output is not zero-filled first); then,
/// where given room for them, the planes' moments.
fn forward_groups<S: Default>(
    fma: bool,
    g: &Geometry,
    moments: Option<&mut [[f64; 2]]>,
    task: impl Fn(&mut S, Group, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let len = g.planes() * g.out_height() * g.out_width();
    let mut out = Vec::with_capacity(len);
    let groups = Group::all(g);
    let slices = split_groups(&mut out.spare_capacity_mut()[..len], &groups, len / g.planes());
    let moments = moments.map(SharedSlice::new);
    groups.into_par_iter().zip(slices).for_each_init(S::default, |scratch, (group, out)| {
        task(scratch, group, out);
        if let Some(moments) = &moments {
            // SAFETY: the task wrote its planes; their moments are this task's alone.
            plane_moments(fma, unsafe { assume_written(out) }, unsafe { moments.run(group.first_plane, group.channels) });
        }
    });
    // SAFETY: the tasks wrote every group's planes, which cover the output.
    unsafe { out.set_len(len) };
    out
}

/// A group's output gradient and, where wanted, its input gradient (see [`OutGrad`]).
enum GradSlices<'a> {
    Separate { out_grad: &'a [f32], x_grad: Option<&'a mut [MaybeUninit<f32>]> },
    Shared(&'a mut [f32]),
}

impl<'a> GradSlices<'a> {
    fn out_grad(&self) -> &[f32] {
        match self {
            GradSlices::Separate { out_grad, .. } => out_grad,
            GradSlices::Shared(values) => values,
        }
    }

    /// Where the input gradient goes; after this, the output gradient may be gone.
    fn into_x_grad(self) -> Option<&'a mut [MaybeUninit<f32>]> {
        match self {
            GradSlices::Separate { x_grad, .. } => x_grad,
            // SAFETY: MaybeUninit<f32> has f32's layout, and only initialized values are written.
            GradSlices::Shared(values) => Some(unsafe { &mut *(values as *mut [f32] as *mut [MaybeUninit<f32>]) }),
        }
    }
}

/// What a backward task gets: its group, gradients, and where wanted `[channels][taps + 1]` to
/// fill with its weight gradient (taps) and bias gradient per channel.
struct BackwardSlices<'a> {
    group: Group,
    grads: GradSlices<'a>,
    partial: Option<&'a mut [f32]>,
}

/// The gradients, `task` computing each group's share in parallel; the weight and bias
/// gradients are then summed over the batch.
fn backward_groups<S: Default>(g: &Geometry, out_grad: OutGrad, wanted: Wanted, task: impl Fn(&mut S, BackwardSlices) + Sync) -> Gradients {
    let (plane_in, plane_out, taps) = (g.height * g.width, g.out_height() * g.out_width(), g.taps());
    let groups = Group::all(g);
    // Not zero-filled: the tasks write every value.
    let mut x_grad = (wanted.x && matches!(out_grad, OutGrad::Read(_))).then(|| Vec::with_capacity(g.planes() * plane_in));
    let grads: Vec<GradSlices> = match out_grad {
        OutGrad::Overwrite(values) => split_groups(values, &groups, plane_out).into_iter().map(GradSlices::Shared).collect(),
        OutGrad::Read(out_grad) => {
            let mut x_grads =
                x_grad.as_mut().map(|x_grad: &mut Vec<f32>| split_groups(x_grad.spare_capacity_mut(), &groups, plane_in).into_iter());
            groups
                .iter()
                .map(|group| GradSlices::Separate {
                    out_grad: group.planes(out_grad, plane_out),
                    x_grad: x_grads.as_mut().and_then(Iterator::next),
                })
                .collect()
        }
    };
    let mut partials = (wanted.weight || wanted.bias).then(|| vec![0.0; g.planes() * (taps + 1)]);
    let mut partial_slices = partials.as_deref_mut().map(|partials| split_groups(partials, &groups, taps + 1).into_iter());
    let tasks: Vec<BackwardSlices> = groups
        .iter()
        .zip(grads)
        .map(|(&group, grads)| BackwardSlices { group, grads, partial: partial_slices.as_mut().and_then(Iterator::next) })
        .collect();
    tasks.into_par_iter().for_each_init(S::default, |scratch, slices| task(scratch, slices));
    if let Some(x_grad) = &mut x_grad {
        // SAFETY: the tasks wrote every group's planes, which cover the input gradient.
        unsafe { x_grad.set_len(g.planes() * plane_in) };
    }
    let mut gradients = Gradients { x: x_grad, ..Default::default() };
    if let Some(partials) = partials {
        let mut sums = vec![0.0; g.channels * (taps + 1)];
        for image in partials.chunks(g.channels * (taps + 1)) {
            sums.iter_mut().zip(image).for_each(|(sum, value)| *sum += value);
        }
        let per_channel = || sums.chunks(taps + 1);
        gradients.weight = wanted.weight.then(|| per_channel().flat_map(|c| &c[..taps]).copied().collect());
        gradients.bias = wanted.bias.then(|| per_channel().map(|c| c[taps]).collect());
    }
    gradients
}

/// `LANES` f32 lanes: AVX registers on x86 CPUs with AVX2 and FMA, plain arrays elsewhere.
trait Vector: Copy {
    fn splat(value: f32) -> Self;
    fn load(src: &[f32; LANES]) -> Self;
    /// `self * b + c`.
    fn mul_add(self, b: Self, c: Self) -> Self;
    fn add(self, other: Self) -> Self;
    fn store(self, dst: &mut [f32; LANES]);
    fn store_uninit(self, dst: &mut [MaybeUninit<f32>; LANES]);
    /// Rows to columns: lane `j` of vector `i` of the result is lane `i` of `rows[j]`.
    fn transpose(rows: [Self; LANES]) -> [Self; LANES];

    /// `f` of each lane (a loop, not `array::map`, whose closure would be compiled apart from the
    /// caller's target features).
    #[inline(always)]
    fn map(self, f: impl Fn(f32) -> f32) -> Self {
        let mut lanes = [0.0; LANES];
        self.store(&mut lanes);
        for lane in &mut lanes {
            *lane = f(*lane);
        }
        Self::load(&lanes)
    }
}

#[derive(Clone, Copy)]
struct Portable([f32; LANES]);

impl Vector for Portable {
    #[inline(always)]
    fn splat(value: f32) -> Self {
        Portable([value; LANES])
    }

    #[inline(always)]
    fn load(src: &[f32; LANES]) -> Self {
        Portable(*src)
    }

    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        // Not f32::mul_add: without FMA hardware it is a slow library call.
        Portable(std::array::from_fn(|lane| self.0[lane] * b.0[lane] + c.0[lane]))
    }

    #[inline(always)]
    fn add(self, other: Self) -> Self {
        Portable(std::array::from_fn(|lane| self.0[lane] + other.0[lane]))
    }

    #[inline(always)]
    fn store(self, dst: &mut [f32; LANES]) {
        *dst = self.0;
    }

    #[inline(always)]
    fn store_uninit(self, dst: &mut [MaybeUninit<f32>; LANES]) {
        for (dst, value) in dst.iter_mut().zip(self.0) {
            dst.write(value);
        }
    }

    #[inline(always)]
    fn transpose(rows: [Self; LANES]) -> [Self; LANES] {
        std::array::from_fn(|i| Portable(std::array::from_fn(|j| rows[j].0[i])))
    }
}

/// Only used inside [`run_fma`], which runs only where `fma_available()`.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Avx(std::arch::x86_64::__m256);

#[cfg(target_arch = "x86_64")]
impl Vector for Avx {
    #[inline(always)]
    fn splat(value: f32) -> Self {
        // SAFETY: AVX is available (see the type's comment).
        Avx(unsafe { std::arch::x86_64::_mm256_set1_ps(value) })
    }

    #[inline(always)]
    fn load(src: &[f32; LANES]) -> Self {
        // SAFETY: `src` is 8 readable f32; AVX is available.
        Avx(unsafe { std::arch::x86_64::_mm256_loadu_ps(src.as_ptr()) })
    }

    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        // SAFETY: FMA is available.
        Avx(unsafe { std::arch::x86_64::_mm256_fmadd_ps(self.0, b.0, c.0) })
    }

    #[inline(always)]
    fn add(self, other: Self) -> Self {
        // SAFETY: AVX is available.
        Avx(unsafe { std::arch::x86_64::_mm256_add_ps(self.0, other.0) })
    }

    #[inline(always)]
    fn store(self, dst: &mut [f32; LANES]) {
        // SAFETY: `dst` is 8 writable f32; AVX is available.
        unsafe { std::arch::x86_64::_mm256_storeu_ps(dst.as_mut_ptr(), self.0) }
    }

    #[inline(always)]
    fn store_uninit(self, dst: &mut [MaybeUninit<f32>; LANES]) {
        // SAFETY: `dst` is 8 writable f32; AVX is available.
        unsafe { std::arch::x86_64::_mm256_storeu_ps(dst.as_mut_ptr().cast(), self.0) }
    }

    #[inline(always)]
    fn transpose(rows: [Self; LANES]) -> [Self; LANES] {
        let [r0, r1, r2, r3, r4, r5, r6, r7] = rows;
        // SAFETY: AVX is available.
        unsafe { transpose_8x8([r0.0, r1.0, r2.0, r3.0, r4.0, r5.0, r6.0, r7.0]) }.map(Avx)
    }
}

/// One task of a parallel loop, compiled for both kinds of [`Vector`].
trait Task {
    type Scratch;
    /// Must be `#[inline(always)]`, so that [`run_fma`]'s copy is compiled for AVX2+FMA.
    fn run<V: Vector>(self, scratch: &mut Self::Scratch);
}

fn run<T: Task>(fma: bool, task: T, scratch: &mut T::Scratch) {
    #[cfg(target_arch = "x86_64")]
    if fma {
        // SAFETY: the CPU has AVX2 and FMA (`fma` comes from `fma_available`).
        return unsafe { run_fma(task, scratch) };
    }
    let _ = fma;
    task.run::<Portable>(scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_fma<T: Task>(task: T, scratch: &mut T::Scratch) {
    task.run::<Avx>(scratch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_values as values;

    /// Direct definition: y[n,c,oh,ow] = b[c] + Σ w[c,kh,kw] x[n,c,oh*s+kh-p,ow*s+kw-p], and its
    /// gradients accumulated term by term in f64.
    fn reference(x: &[f32], w: &[f32], b: &[f32], dy: &[f32], g: &Geometry) -> [Vec<f32>; 4] {
        let (oh, ow, k) = (g.out_height(), g.out_width(), g.kernel);
        let mut y = vec![0.0f64; g.planes() * oh * ow];
        let mut dx = vec![0.0f64; x.len()];
        let mut dw = vec![0.0f64; w.len()];
        let mut db = vec![0.0f64; g.channels];
        for plane in 0..g.planes() {
            let c = plane % g.channels;
            for r in 0..oh {
                for col in 0..ow {
                    let o = (plane * oh + r) * ow + col;
                    y[o] += b[c] as f64;
                    db[c] += dy[o] as f64;
                    for kh in 0..k {
                        for kw in 0..k {
                            let (i, j) =
                                ((r * g.stride + kh) as isize - g.padding as isize, (col * g.stride + kw) as isize - g.padding as isize);
                            if i < 0 || j < 0 || i >= g.height as isize || j >= g.width as isize {
                                continue;
                            }
                            let xi = (plane * g.height + i as usize) * g.width + j as usize;
                            let wi = (c * k + kh) * k + kw;
                            y[o] += w[wi] as f64 * x[xi] as f64;
                            dx[xi] += w[wi] as f64 * dy[o] as f64;
                            dw[wi] += x[xi] as f64 * dy[o] as f64;
                        }
                    }
                }
            }
        }
        [y, dx, dw, db].map(|v| v.into_iter().map(|v| v as f32).collect())
    }

    fn assert_close(name: &str, actual: &[f32], expected: &[f32], context: &str) {
        assert_eq!(actual.len(), expected.len(), "{name} length, {context}");
        for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
            assert!((a - e).abs() <= 1e-4 * (1.0 + e.abs()), "{name}[{i}]: {a} vs {e}, {context}");
        }
    }

    /// With and (where the CPU has it) without FMA, against the definition.
    fn check(g: Geometry) {
        let x = values(g.planes() * g.height * g.width, 1);
        let w = values(g.channels * g.taps(), 2);
        let b = values(g.channels, 3);
        let dy = values(g.planes() * g.out_height() * g.out_width(), 4);
        let [y, dx, dw, db] = reference(&x, &w, &b, &dy, &g);
        for fma in [false, true].into_iter().filter(|&fma| !fma || fma_available()) {
            let context = format!("{g:?}, fma {fma}");
            assert_close("y", &interleaved::forward(fma, &x, None, &w, Some(&b), &g, None), &y, &context);
            let all = Wanted { x: true, weight: true, bias: true };
            let read = interleaved::backward(fma, &x, None, &w, OutGrad::Read(&dy), &g, all, None);
            assert_close("dx", &read.x.unwrap(), &dx, &context);
            assert_close("dw", &read.weight.unwrap(), &dw, &context);
            assert_close("db", &read.bias.unwrap(), &db, &context);
            if dy.len() == x.len() {
                let mut buffer = dy.clone();
                let overwritten = interleaved::backward(fma, &x, None, &w, OutGrad::Overwrite(&mut buffer), &g, all, None);
                assert!(overwritten.x.is_none());
                assert_close("dx in place", &buffer, &dx, &context);
                assert_close("dw in place", &overwritten.weight.unwrap(), &dw, &context);
                assert_close("db in place", &overwritten.bias.unwrap(), &db, &context);
            }
        }
    }

    #[test]
    fn matches_the_definition_for_every_kernel_stride_and_padding() {
        let mut case = 0;
        for kernel in 1..=MAX_KERNEL {
            for stride in 1..=3 {
                // Symmetric padding, and one more after than before (TensorFlow's "SAME").
                for (padding, padding_after) in (0..kernel).flat_map(|p| [(p, p), (p, p + 1)]) {
                    for (height, width) in [(7, 9), (kernel, 13), (17, 8)] {
                        if height + padding + padding_after < kernel {
                            continue;
                        }
                        case += 1;
                        // Channel counts around a multiple of LANES: full and partial groups.
                        let channels = [3, 8, 11][case % 3];
                        check(Geometry { batch: 1 + case % 2, channels, height, width, kernel, stride, padding, padding_after });
                    }
                }
            }
        }
    }

    #[test]
    fn computes_only_the_wanted_gradients() {
        let g = Geometry { batch: 1, channels: 2, height: 5, width: 5, kernel: 3, stride: 1, padding: 1, padding_after: 1 };
        let (x, w, dy) = (values(50, 8), values(18, 9), values(50, 10));
        let only_weight = backward(&x, None, &w, OutGrad::Read(&dy), &g, Wanted { x: false, weight: true, bias: false }, None);
        assert!(only_weight.x.is_none() && only_weight.bias.is_none());
        assert_eq!(only_weight.weight.map(|w| w.len()), Some(18));
    }
}
