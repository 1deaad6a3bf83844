//! Depthwise 2D convolution on host f32 NCHW data: one `k`x`k` filter per channel, stride `s`,
//! symmetric zero padding `p`, no dilation. Forward, and backward for input, weight and bias.
//!
//! Every (image, channel) plane is independent, so rayon runs one plane per task. A task first
//! copies its plane into zero-padded scratch; after that every tap reads a contiguous, in-bounds
//! run of memory and the inner loops carry no bounds logic, so LLVM vectorizes them (on x86 a
//! copy compiled for AVX2+FMA is chosen at run time). Outputs are computed in register blocks of
//! `ROWS` x `LANES`, enough independent accumulators to hide the FMA latency.
//!
//! Stride `s` is handled without strided loads: the padded input's columns are split into `s`
//! phases (column `j` of phase `f` holds padded column `j * s + f`). The input gradient of a
//! strided convolution is split the other way round, by output phase: input rows `≡ a (mod s)`
//! only receive taps `kh ≡ (a + p) (mod s)`, so each of the `s * s` phases is a small stride-1
//! convolution of the output gradient, written back with stride `s`, and no tap is wasted on
//! inserted zeros.

use rayon::prelude::*;

/// Output columns per register block (one AVX vector of f32).
const LANES: usize = 8;
/// Output rows per register block: `ROWS` vectors of accumulators.
const ROWS: usize = 8;
/// Largest kernel these kernels take: the weight-gradient loop keeps one accumulator per kernel
/// column in registers, so it is compiled once per kernel size.
pub const MAX_KERNEL: usize = 7;

/// Sizes of one depthwise convolution; `height + 2 * padding >= kernel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Geometry {
    pub fn out_height(&self) -> usize {
        (self.height + 2 * self.padding - self.kernel) / self.stride + 1
    }

    pub fn out_width(&self) -> usize {
        (self.width + 2 * self.padding - self.kernel) / self.stride + 1
    }

    fn planes(&self) -> usize {
        self.batch * self.channels
    }

    /// Padded input, column phases split: what the forward pass and the weight gradient read.
    fn input_scratch(&self) -> ScratchShape {
        let (k, s) = (self.kernel, self.stride);
        ScratchShape {
            top: self.padding,
            left: self.padding,
            phases: s,
            rows: (self.out_height().next_multiple_of(ROWS) - 1) * s + k,
            len: self.out_width().next_multiple_of(LANES) + (k - 1) / s,
        }
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

/// `[batch, channels, out_height, out_width]` from `x` `[batch, channels, height, width]`,
/// `weight` `[channels, kernel, kernel]` and `bias` `[channels]`.
pub fn forward(x: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &Geometry) -> Vec<f32> {
    check_sizes(g, x, weight);
    let (plane_in, plane_out, taps) = (g.height * g.width, g.out_height() * g.out_width(), g.kernel * g.kernel);
    let fma = fma_available();
    let mut out = vec![0.0; g.planes() * plane_out];
    out.par_chunks_mut(plane_out).enumerate().for_each_init(Scratch::default, |scratch, (plane, out)| {
        let channel = plane % g.channels;
        let job = ForwardPlane {
            x: &x[plane * plane_in..][..plane_in],
            weight: &weight[channel * taps..][..taps],
            bias: bias.map_or(0.0, |bias| bias[channel]),
            geometry: g,
            out,
        };
        run_forward(fma, job, scratch);
    });
    out
}

/// The gradients of the loss with respect to `x`, `weight` and `bias` of [`forward`], given
/// `out_grad`, its gradient with respect to the output.
pub fn backward(x: &[f32], weight: &[f32], out_grad: &[f32], g: &Geometry, wanted: Wanted) -> Gradients {
    check_sizes(g, x, weight);
    let (plane_in, plane_out, taps) = (g.height * g.width, g.out_height() * g.out_width(), g.kernel * g.kernel);
    assert_eq!(out_grad.len(), g.planes() * plane_out, "output gradient size");
    let fma = fma_available();
    let mut x_grad = wanted.x.then(|| vec![0.0; g.planes() * plane_in]);
    // Per plane: the weight gradient's taps, then the bias gradient; summed over the batch below.
    let partial_len = taps + 1;
    let mut partials = (wanted.weight || wanted.bias).then(|| vec![0.0; g.planes() * partial_len]);
    let x_grad_planes: Vec<Option<&mut [f32]>> = match &mut x_grad {
        Some(x_grad) => x_grad.chunks_mut(plane_in).map(Some).collect(),
        None => (0..g.planes()).map(|_| None).collect(),
    };
    let partial_planes: Vec<Option<&mut [f32]>> = match &mut partials {
        Some(partials) => partials.chunks_mut(partial_len).map(Some).collect(),
        None => (0..g.planes()).map(|_| None).collect(),
    };
    x_grad_planes.into_par_iter().zip(partial_planes).enumerate().for_each_init(
        Scratch::default,
        |scratch, (plane, (x_grad, partial))| {
            let channel = plane % g.channels;
            let job = BackwardPlane {
                x: &x[plane * plane_in..][..plane_in],
                weight: &weight[channel * taps..][..taps],
                out_grad: &out_grad[plane * plane_out..][..plane_out],
                geometry: g,
                x_grad,
                partial,
            };
            run_backward(fma, job, scratch);
        },
    );
    let mut gradients = Gradients { x: x_grad, ..Default::default() };
    if let Some(partials) = partials {
        let mut sums = vec![0.0; g.channels * partial_len];
        for image in partials.chunks(g.channels * partial_len) {
            sums.iter_mut().zip(image).for_each(|(sum, value)| *sum += value);
        }
        let per_channel = || sums.chunks(partial_len);
        gradients.weight = wanted.weight.then(|| per_channel().flat_map(|c| &c[..taps]).copied().collect());
        gradients.bias = wanted.bias.then(|| per_channel().map(|c| c[taps]).collect());
    }
    gradients
}

fn check_sizes(g: &Geometry, x: &[f32], weight: &[f32]) {
    assert!(g.stride > 0 && (1..=MAX_KERNEL).contains(&g.kernel), "depthwise: unsupported geometry {g:?}");
    assert!(g.height + 2 * g.padding >= g.kernel && g.width + 2 * g.padding >= g.kernel, "depthwise: kernel larger than the padded input {g:?}");
    assert_eq!(x.len(), g.planes() * g.height * g.width, "input size");
    assert_eq!(weight.len(), g.channels * g.kernel * g.kernel, "weight size");
}

/// `LANES` f32 lanes: AVX registers on x86 CPUs with AVX2 and FMA, plain arrays elsewhere.
trait Vector: Copy {
    fn splat(value: f32) -> Self;
    fn load(src: &[f32; LANES]) -> Self;
    /// `self * b + c`.
    fn mul_add(self, b: Self, c: Self) -> Self;
    fn store(self, dst: &mut [f32; LANES]);
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
    fn store(self, dst: &mut [f32; LANES]) {
        *dst = self.0;
    }
}

/// Only created inside `#[target_feature(enable = "avx2,fma")]` functions, which run only
/// where `fma_available()`.
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
    fn store(self, dst: &mut [f32; LANES]) {
        // SAFETY: `dst` is 8 writable f32; AVX is available.
        unsafe { std::arch::x86_64::_mm256_storeu_ps(dst.as_mut_ptr(), self.0) }
    }
}

fn fma_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Per-task scratch, reused across the planes a task runs.
#[derive(Default)]
struct Scratch {
    input: Padded,
    out_grad: Padded,
    taps: Vec<f32>,
}

struct ForwardPlane<'a> {
    x: &'a [f32],
    weight: &'a [f32],
    bias: f32,
    geometry: &'a Geometry,
    out: &'a mut [f32],
}

struct BackwardPlane<'a> {
    x: &'a [f32],
    weight: &'a [f32],
    out_grad: &'a [f32],
    geometry: &'a Geometry,
    x_grad: Option<&'a mut [f32]>,
    partial: Option<&'a mut [f32]>,
}

fn run_forward(fma: bool, job: ForwardPlane, scratch: &mut Scratch) {
    #[cfg(target_arch = "x86_64")]
    if fma {
        // SAFETY: the CPU has AVX2 and FMA (checked by `fma_available`).
        return unsafe { forward_plane_fma(job, scratch) };
    }
    let _ = fma;
    forward_plane::<Portable>(job, scratch)
}

fn run_backward(fma: bool, job: BackwardPlane, scratch: &mut Scratch) {
    #[cfg(target_arch = "x86_64")]
    if fma {
        // SAFETY: the CPU has AVX2 and FMA (checked by `fma_available`).
        return unsafe { backward_plane_fma(job, scratch) };
    }
    let _ = fma;
    backward_plane::<Portable>(job, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn forward_plane_fma(job: ForwardPlane, scratch: &mut Scratch) {
    forward_plane::<Avx>(job, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn backward_plane_fma(job: BackwardPlane, scratch: &mut Scratch) {
    backward_plane::<Avx>(job, scratch)
}

#[inline(always)]
fn forward_plane<V: Vector>(job: ForwardPlane, scratch: &mut Scratch) {
    let g = job.geometry;
    let (out_height, out_width) = (g.out_height(), g.out_width());
    scratch.input.fill::<V>(job.x, g.height, g.width, g.input_scratch());
    let target = Target { dst: job.out, offset: 0, row_stride: out_width, col_stride: 1, rows: out_height, cols: out_width };
    let taps = Taps { values: job.weight, cols: g.kernel };
    correlate::<V>(&scratch.input, 0, 0, g.stride, taps, job.bias, target);
}

#[inline(always)]
fn backward_plane<V: Vector>(job: BackwardPlane, scratch: &mut Scratch) {
    let g = job.geometry;
    let (k, s, p) = (g.kernel, g.stride, g.padding);
    let (out_height, out_width) = (g.out_height(), g.out_width());
    let phases_h: Vec<Phase> = (0..s).map(|a| Phase::new(a, g.height, k, s, p)).filter(Phase::is_used).collect();
    let phases_w: Vec<Phase> = (0..s).map(|b| Phase::new(b, g.width, k, s, p)).filter(Phase::is_used).collect();
    // One padded copy of the output gradient serves every phase: `top` rows of zeros above it
    // make room for the phase that starts furthest up, and each phase starts `top - phase.top`
    // rows down. It also serves the weight gradient, which reads it from (top, left) in row
    // pairs and column blocks.
    let top = phases_h.iter().map(|phase| phase.top).max().unwrap_or(0).max(0) as usize;
    let left = phases_w.iter().map(|phase| phase.top).max().unwrap_or(0).max(0) as usize;
    let rows = phases_h.iter().map(|phase| phase.scratch_extent(top, ROWS)).max().unwrap_or(0).max(top + out_height.next_multiple_of(2));
    let len = phases_w.iter().map(|phase| phase.scratch_extent(left, LANES)).max().unwrap_or(0).max(left + out_width.next_multiple_of(LANES));
    scratch.out_grad.fill::<V>(job.out_grad, out_height, out_width, ScratchShape { top, left, phases: 1, rows, len });

    if let Some(x_grad) = job.x_grad {
        for a in &phases_h {
            for b in &phases_w {
                // Tap (i, j) of this phase's stride-1 convolution is kernel element
                // (a.first_tap + s * (a.taps - 1 - i), ...): the phase's taps, flipped.
                scratch.taps.clear();
                for i in (0..a.taps).rev() {
                    for j in (0..b.taps).rev() {
                        scratch.taps.push(job.weight[(a.first_tap + s * i) * k + b.first_tap + s * j]);
                    }
                }
                let target = Target {
                    dst: &mut *x_grad,
                    offset: a.first_input * g.width + b.first_input,
                    row_stride: s * g.width,
                    col_stride: s,
                    rows: a.count,
                    cols: b.count,
                };
                let taps = Taps { values: &scratch.taps, cols: b.taps };
                let first_row = (top as isize - a.top) as usize;
                let first_col = (left as isize - b.top) as usize;
                correlate::<V>(&scratch.out_grad, first_row, first_col, 1, taps, 0.0, target);
            }
        }
    }

    if let Some(partial) = job.partial {
        scratch.input.fill::<V>(job.x, g.height, g.width, g.input_scratch());
        let (weight_grad, bias_grad) = partial.split_at_mut(k * k);
        let out_grad = DyView { plane: &scratch.out_grad, top, left, rows: out_height, cols: out_width };
        match k {
            1 => weight_grad_plane::<V, 1>(&scratch.input, s, &out_grad, weight_grad),
            2 => weight_grad_plane::<V, 2>(&scratch.input, s, &out_grad, weight_grad),
            3 => weight_grad_plane::<V, 3>(&scratch.input, s, &out_grad, weight_grad),
            4 => weight_grad_plane::<V, 4>(&scratch.input, s, &out_grad, weight_grad),
            5 => weight_grad_plane::<V, 5>(&scratch.input, s, &out_grad, weight_grad),
            6 => weight_grad_plane::<V, 6>(&scratch.input, s, &out_grad, weight_grad),
            7 => weight_grad_plane::<V, 7>(&scratch.input, s, &out_grad, weight_grad),
            _ => unreachable!("kernel sizes are checked against MAX_KERNEL"),
        }
        bias_grad[0] = sum(job.out_grad);
    }
}

/// One residue class `a` (mod `s`) of input rows (or columns) in the input gradient: rows
/// `first_input + s * n`, `n < count`, are output-gradient row `first_output + n - m`
/// convolved with kernel rows `first_tap + s * m`, `m < taps`.
#[derive(Debug, Clone, Copy)]
struct Phase {
    first_tap: usize,
    taps: usize,
    first_input: usize,
    count: usize,
    /// Rows of zeros its stride-1 convolution needs above the output gradient (may be < 0).
    top: isize,
}

impl Phase {
    fn new(a: usize, size: usize, k: usize, s: usize, p: usize) -> Self {
        // Input row i = s * q + a - p receives kernel rows kh with kh ≡ i + p ≡ a (mod s),
        // from output-gradient row q - (kh - a) / s.
        let first_tap = a;
        let taps = if a < k { (k - a).div_ceil(s) } else { 0 };
        let first_q = if p > a { (p - a).div_ceil(s) } else { 0 };
        let last_q = (size - 1 + p).checked_sub(a).map(|n| n / s);
        let count = last_q.map_or(0, |last| (last + 1).saturating_sub(first_q));
        let first_input = (s * first_q + a).saturating_sub(p);
        Phase { first_tap, taps, first_input, count, top: taps as isize - 1 - first_q as isize }
    }

    fn is_used(&self) -> bool {
        self.taps > 0 && self.count > 0
    }

    /// Scratch rows (or columns) this phase reads when the output gradient starts `origin` rows
    /// down.
    fn scratch_extent(&self, origin: usize, block: usize) -> usize {
        (origin as isize - self.top) as usize + self.count.next_multiple_of(block) - 1 + self.taps
    }
}

/// How a plane is laid out in [`Padded`] scratch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ScratchShape {
    /// Zero rows above and zero columns left of the source.
    top: usize,
    left: usize,
    /// Column phases (the stride the scratch is read with).
    phases: usize,
    /// Rows and columns per phase.
    rows: usize,
    len: usize,
}

/// A zero-padded copy of one plane with its columns split into phases: row `r`, column `j` of
/// phase `f` holds source element `(r - top, j * phases + f - left)`, or 0 outside the source.
#[derive(Default)]
struct Padded {
    data: Vec<f32>,
    rows: usize,
    len: usize,
    /// One padded source row, staged before it is split into phases.
    staged: Vec<f32>,
    /// Layout and source size of the last fill. While they stay the same (every plane of one
    /// convolution), the zeros stay in place and a fill only copies the source rows.
    layout: Option<(ScratchShape, usize, usize)>,
}

impl Padded {
    #[inline(always)]
    fn fill<V: Vector>(&mut self, src: &[f32], src_rows: usize, src_cols: usize, shape: ScratchShape) {
        let ScratchShape { top, left, phases, rows, len } = shape;
        if self.layout != Some((shape, src_rows, src_cols)) {
            self.layout = Some((shape, src_rows, src_cols));
            self.rows = rows;
            self.len = len;
            self.data.clear();
            self.data.resize(phases * rows * len, 0.0);
            self.staged.clear();
            self.staged.resize(phases * len, 0.0);
        }
        // Source columns that land inside a scratch row, and where.
        let start = left.min(phases * len);
        let copied = src_cols.min(phases * len - start);
        let phase_stride = rows * len;
        for (r, src_row) in (top..rows).zip(src.chunks_exact(src_cols)) {
            let src_row = &src_row[..copied];
            if phases == 1 {
                copy::<V>(src_row, &mut self.data[r * len + start..][..copied]);
                continue;
            }
            copy::<V>(src_row, &mut self.staged[start..start + copied]);
            let dst = &mut self.data[r * len..];
            if phases == 2 {
                let (even, odd) = dst.split_at_mut(phase_stride);
                for ((even, odd), pair) in even[..len].iter_mut().zip(&mut odd[..len]).zip(self.staged.chunks_exact(2)) {
                    (*even, *odd) = (pair[0], pair[1]);
                }
            } else {
                for (j, chunk) in self.staged.chunks_exact(phases).enumerate() {
                    for (phase, value) in chunk.iter().enumerate() {
                        dst[phase * phase_stride + j] = *value;
                    }
                }
            }
        }
    }

    fn offset(&self, phase: usize, row: usize) -> usize {
        (phase * self.rows + row) * self.len
    }
}

/// Where a correlation writes element (r, c): `dst[offset + r * row_stride + c * col_stride]`.
struct Target<'a> {
    dst: &'a mut [f32],
    offset: usize,
    row_stride: usize,
    col_stride: usize,
    rows: usize,
    cols: usize,
}

/// A filter of `values.len() / cols` rows and `cols` columns, row-major.
#[derive(Clone, Copy)]
struct Taps<'a> {
    values: &'a [f32],
    cols: usize,
}

/// `target(r, c) = bias + Σ_{i, j} taps(i, j) * plane(row0 + r * step + i, col0 + c + j)`, where a
/// plane column `c + j` means column `c + j / step` of phase `j % step`.
#[inline(always)]
fn correlate<V: Vector>(plane: &Padded, row0: usize, col0: usize, step: usize, taps: Taps, bias: f32, target: Target) {
    let Target { dst, offset, row_stride, col_stride, rows, cols } = target;
    let data = plane.data.as_slice();
    let row_step = step * plane.len;
    // Where tap (i, j) reads, relative to the block's first output, computed once: the inner
    // loop then has no division by `step`.
    let mut tap_offsets = [0; MAX_KERNEL * MAX_KERNEL];
    for (t, tap_offset) in tap_offsets.iter_mut().enumerate().take(taps.values.len()) {
        let (i, j) = (t / taps.cols, t % taps.cols);
        *tap_offset = plane.offset(j % step, row0 + i) + col0 + j / step;
    }
    let tap_offsets = &tap_offsets[..taps.values.len()];
    for r0 in (0..rows).step_by(ROWS) {
        for c0 in (0..cols).step_by(LANES) {
            let block_offset = r0 * row_step + c0;
            let mut acc = [V::splat(bias); ROWS];
            for (&tap, &tap_offset) in taps.values.iter().zip(tap_offsets) {
                let w = V::splat(tap);
                let base = tap_offset + block_offset;
                let block = &data[base..base + (ROWS - 1) * row_step + LANES];
                for (r, acc_row) in acc.iter_mut().enumerate() {
                    *acc_row = w.mul_add(V::load(block[r * row_step..][..LANES].try_into().unwrap()), *acc_row);
                }
            }
            let valid_cols = LANES.min(cols - c0);
            let mut values = [0.0; LANES];
            for (r, acc_row) in acc.iter().enumerate().take(rows - r0) {
                let at = offset + (r0 + r) * row_stride + c0 * col_stride;
                if col_stride == 1 && valid_cols == LANES {
                    acc_row.store((&mut dst[at..at + LANES]).try_into().unwrap());
                    continue;
                }
                acc_row.store(&mut values);
                for (c, value) in values[..valid_cols].iter().enumerate() {
                    dst[at + c * col_stride] = *value;
                }
            }
        }
    }
}

/// The output gradient inside its [`Padded`] scratch: element (r, c) at row `top + r`, column
/// `left + c`; zeros below and right of it up to the next even row and `LANES` column.
struct DyView<'a> {
    plane: &'a Padded,
    top: usize,
    left: usize,
    rows: usize,
    cols: usize,
}

/// `weight_grad(kh, kw) = Σ_{r, c} dy(r, c) * input(r * s + kh, c + kw)`, with `input` the padded
/// input, columns by phase as in [`correlate`]. Two output rows at a time, `K` accumulators each.
#[inline(always)]
fn weight_grad_plane<V: Vector, const K: usize>(input: &Padded, s: usize, dy: &DyView, weight_grad: &mut [f32]) {
    let data = input.data.as_slice();
    let dy_data = dy.plane.data.as_slice();
    let row_step = s * input.len;
    // Where kernel column kw reads in a row, computed once (no division in the inner loop).
    let kw_offsets: [usize; K] = std::array::from_fn(|kw| input.offset(kw % s, 0) + kw / s);
    for kh in 0..K {
        let mut acc = [[V::splat(0.0); K]; 2];
        for r in (0..dy.rows).step_by(2) {
            let dy_base = dy.plane.offset(0, dy.top + r) + dy.left;
            let row_base = (r * s + kh) * input.len;
            for c0 in (0..dy.cols).step_by(LANES) {
                let d0 = V::load(dy_data[dy_base + c0..][..LANES].try_into().unwrap());
                let d1 = V::load(dy_data[dy_base + dy.plane.len + c0..][..LANES].try_into().unwrap());
                for kw in 0..K {
                    let base = row_base + kw_offsets[kw] + c0;
                    let x0 = V::load(data[base..][..LANES].try_into().unwrap());
                    let x1 = V::load(data[base + row_step..][..LANES].try_into().unwrap());
                    acc[0][kw] = d0.mul_add(x0, acc[0][kw]);
                    acc[1][kw] = d1.mul_add(x1, acc[1][kw]);
                }
            }
        }
        for kw in 0..K {
            let (mut first, mut second) = ([0.0; LANES], [0.0; LANES]);
            acc[0][kw].store(&mut first);
            acc[1][kw].store(&mut second);
            weight_grad[kh * K + kw] = first.iter().chain(&second).sum();
        }
    }
}

/// `dst.copy_from_slice(src)` inlined: rows are short, a call to memcpy costs more than the copy.
#[inline(always)]
fn copy<V: Vector>(src: &[f32], dst: &mut [f32]) {
    let (mut src_chunks, mut dst_chunks) = (src.chunks_exact(LANES), dst.chunks_exact_mut(LANES));
    for (s, d) in (&mut src_chunks).zip(&mut dst_chunks) {
        V::load(s.try_into().unwrap()).store(d.try_into().unwrap());
    }
    for (s, d) in src_chunks.remainder().iter().zip(dst_chunks.into_remainder()) {
        *d = *s;
    }
}

/// Sum with `LANES` independent partial sums (vectorizable, unlike a sequential fold).
fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        lanes.iter_mut().zip(chunk).for_each(|(lane, value)| *lane += value);
    }
    lanes.iter().sum::<f32>() + rest
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
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

    /// Direct definition: y[n,c,oh,ow] = b[c] + Σ w[c,kh,kw] x[n,c,oh*s+kh-p,ow*s+kw-p], and its
    /// gradients accumulated term by term in f64.
    fn reference(x: &[f32], w: &[f32], b: &[f32], dy: &[f32], g: &Geometry) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
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
                            let (i, j) = ((r * g.stride + kh) as isize - g.padding as isize, (col * g.stride + kw) as isize - g.padding as isize);
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
        let to_f32 = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
        (to_f32(y), to_f32(dx), to_f32(dw), to_f32(db))
    }

    fn assert_close(name: &str, actual: &[f32], expected: &[f32], g: &Geometry) {
        assert_eq!(actual.len(), expected.len(), "{name} length, {g:?}");
        for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
            assert!((a - e).abs() <= 1e-4 * (1.0 + e.abs()), "{name}[{i}]: {a} vs {e}, {g:?}");
        }
    }

    fn check(g: Geometry) {
        let x = values(g.planes() * g.height * g.width, 1);
        let w = values(g.channels * g.kernel * g.kernel, 2);
        let b = values(g.channels, 3);
        let dy = values(g.planes() * g.out_height() * g.out_width(), 4);
        let (y, dx, dw, db) = reference(&x, &w, &b, &dy, &g);
        assert_close("y", &forward(&x, &w, Some(&b), &g), &y, &g);
        let all = backward(&x, &w, &dy, &g, Wanted { x: true, weight: true, bias: true });
        assert_close("dx", &all.x.unwrap(), &dx, &g);
        assert_close("dw", &all.weight.unwrap(), &dw, &g);
        assert_close("db", &all.bias.unwrap(), &db, &g);
    }

    #[test]
    fn matches_the_definition_for_every_kernel_stride_and_padding() {
        let mut case = 0;
        for kernel in 1..=MAX_KERNEL {
            for stride in 1..=3 {
                for padding in 0..kernel {
                    for (height, width) in [(7, 9), (kernel, 13), (17, 8)] {
                        if height + 2 * padding < kernel {
                            continue;
                        }
                        case += 1;
                        let batch = 1 + case % 3;
                        check(Geometry { batch, channels: 3, height, width, kernel, stride, padding });
                    }
                }
            }
        }
    }

    #[test]
    fn unfused_arithmetic_matches_too() {
        // The portable path is what CPUs without AVX2/FMA run; check it here on any CPU.
        let g = Geometry { batch: 1, channels: 1, height: 11, width: 10, kernel: 5, stride: 2, padding: 2 };
        let x = values(g.height * g.width, 5);
        let w = values(25, 6);
        let dy = values(g.out_height() * g.out_width(), 7);
        let (y, dx, dw, db) = reference(&x, &w, &[0.5], &dy, &g);
        let mut scratch = Scratch::default();
        let mut out = vec![0.0; y.len()];
        forward_plane::<Portable>(ForwardPlane { x: &x, weight: &w, bias: 0.5, geometry: &g, out: &mut out }, &mut scratch);
        assert_close("y", &out, &y, &g);
        let mut x_grad = vec![0.0; x.len()];
        let mut partial = vec![0.0; 26];
        let job = BackwardPlane { x: &x, weight: &w, out_grad: &dy, geometry: &g, x_grad: Some(&mut x_grad), partial: Some(&mut partial) };
        backward_plane::<Portable>(job, &mut scratch);
        assert_close("dx", &x_grad, &dx, &g);
        assert_close("dw", &partial[..25], &dw, &g);
        assert_close("db", &partial[25..], &db, &g);
    }

    #[test]
    fn computes_only_the_wanted_gradients() {
        let g = Geometry { batch: 1, channels: 2, height: 5, width: 5, kernel: 3, stride: 1, padding: 1 };
        let x = values(50, 8);
        let w = values(18, 9);
        let dy = values(50, 10);
        let only_weight = backward(&x, &w, &dy, &g, Wanted { x: false, weight: true, bias: false });
        assert!(only_weight.x.is_none() && only_weight.bias.is_none());
        assert_eq!(only_weight.weight.map(|w| w.len()), Some(18));
    }
}
