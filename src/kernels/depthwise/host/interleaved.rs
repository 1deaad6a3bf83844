//! The arithmetic of one task: `LANES` channels of one image, interleaved so that a vector holds
//! one pixel of `LANES` channels and a kernel tap is one vector of `LANES` weights.
//!
//! A task first copies its planes into zero-padded scratch, transposing `LANES` x `LANES` blocks
//! (pixels x channels) into pixel vectors; after that every tap reads an in-bounds vector with
//! no edge logic in the inner loops. Outputs are accumulated `PIXELS` at a time along a row
//! (enough independent accumulators to hide the FMA latency) and transposed back to planes.
//!
//! The input gradient of a strided convolution is split by input phase: input rows `≡ a (mod s)`
//! only receive kernel rows `kh ≡ a + p (mod s)`, so each of the `s * s` phases is a small
//! stride-1 convolution of the output gradient with a flipped sub-kernel, written back with
//! stride `s` ([`Phase`]); no tap is spent on inserted zeros.

use super::{
    BackwardSlices, Geometry, GradSlices, Gradients, InputNorm, LANES, MAX_KERNEL, OutGrad, Task, Vector, Wanted, XGradDone,
    backward_groups, forward_groups, run,
};
use std::marker::PhantomData;
use std::mem::MaybeUninit;

use crate::kernels::activation::{Pointwise, with_pointwise};
use crate::kernels::assume_written;

/// Output pixels per register block: `PIXELS` vectors of accumulators, transposed back to
/// planes as one `LANES` x `LANES` block.
const PIXELS: usize = LANES;

pub(super) fn forward(
    fma: bool,
    x: &[f32],
    norm: Option<InputNorm>,
    weight: &[f32],
    bias: Option<&[f32]>,
    g: &Geometry,
    moments: Option<&mut [[f64; 2]]>,
) -> Vec<f32> {
    let (plane_in, taps) = (g.height * g.width, g.taps());
    let shape = input_scratch(g);
    forward_groups(fma, g, moments, |scratch: &mut Scratch, group, out| {
        let task = ForwardGroup {
            x: group.planes(x, plane_in),
            norm: norm.map(|norm| norm.group(&group, g)),
            weight: group.rows(weight, g, taps),
            bias: bias.map(|bias| group.rows(bias, g, 1)),
            geometry: g,
            shape,
            out,
        };
        run(fma, task, scratch);
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    fma: bool,
    x: &[f32],
    norm: Option<InputNorm>,
    weight: &[f32],
    out_grad: OutGrad,
    g: &Geometry,
    wanted: Wanted,
    x_grad_done: Option<XGradDone>,
) -> Gradients {
    let (plane_in, taps) = (g.height * g.width, g.taps());
    let plan = BackwardPlan::new(g);
    let input_shape = input_scratch(g);
    backward_groups(g, out_grad, wanted, |scratch: &mut Scratch, slices: BackwardSlices| {
        let task = BackwardGroup {
            x: slices.group.planes(x, plane_in),
            norm: norm.map(|norm| norm.group(&slices.group, g)),
            weight: slices.group.rows(weight, g, taps),
            geometry: g,
            plan: &plan,
            input_shape,
            grads: slices.grads,
            partial: slices.partial,
            first_plane: slices.group.first_plane,
            x_grad_done,
        };
        run(fma, task, scratch);
    })
}

/// The padded input: what the forward pass and the weight gradient read.
fn input_scratch(g: &Geometry) -> ScratchShape {
    let (k, s) = (g.kernel, g.stride);
    ScratchShape {
        top: g.padding,
        left: g.padding,
        rows: (g.out_height() - 1) * s + k,
        cols: (g.out_width().next_multiple_of(PIXELS) - 1) * s + k,
    }
}

/// How a plane (or a group of interleaved planes) is laid out in zero-padded scratch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ScratchShape {
    /// Zero rows above and zero columns left of the source.
    top: usize,
    left: usize,
    rows: usize,
    cols: usize,
}

/// One residue class `a` (mod `s`) of input rows (or columns) in the input gradient: rows
/// `first_input + s * n`, `n < count`, receive kernel rows `first_tap + s * m`, `m < taps`, from
/// output-gradient rows `first_q + n - m`.
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
        // Input row i = s * q + a - p receives kernel rows kh ≡ i + p ≡ a (mod s), from
        // output-gradient row q - (kh - a) / s.
        let taps = if a < k { (k - a).div_ceil(s) } else { 0 };
        let first_q = if p > a { (p - a).div_ceil(s) } else { 0 };
        let last_q = (size - 1 + p).checked_sub(a).map(|n| n / s);
        let count = last_q.map_or(0, |last| (last + 1).saturating_sub(first_q));
        let first_input = (s * first_q + a).saturating_sub(p);
        Phase { first_tap: a, taps, first_input, count, top: taps as isize - 1 - first_q as isize }
    }

    fn is_used(&self) -> bool {
        self.taps > 0 && self.count > 0
    }

    /// Where this phase's stride-1 convolution starts reading, `origin` being the scratch row of
    /// output-gradient row 0.
    fn first_read(&self, origin: usize) -> usize {
        (origin as isize - self.top) as usize
    }

    /// Scratch rows (or columns) this phase reads, its outputs computed `block` at a time.
    fn scratch_extent(&self, origin: usize, block: usize) -> usize {
        self.first_read(origin) + self.count.next_multiple_of(block) - 1 + self.taps
    }

    /// Its taps as a stride-1 filter: tap (i, j) is kernel element
    /// `(rows.first_tap + s * (rows.taps - 1 - i), cols.first_tap + s * (cols.taps - 1 - j))`.
    fn flipped_taps(rows: &Phase, cols: &Phase, k: usize, s: usize) -> impl Iterator<Item = usize> {
        let (rows, cols) = (*rows, *cols);
        (0..rows.taps).rev().flat_map(move |i| (0..cols.taps).rev().map(move |j| (rows.first_tap + s * i) * k + cols.first_tap + s * j))
    }
}

/// What the backward pass of every task shares: the input-gradient phases and where the output
/// gradient sits in its scratch, computed once per call.
struct BackwardPlan {
    phases_h: Vec<Phase>,
    phases_w: Vec<Phase>,
    out_grad_scratch: ScratchShape,
    /// Whether some input pixels receive no tap (stride > kernel): their gradient is 0.
    gaps: bool,
}

impl BackwardPlan {
    fn new(g: &Geometry) -> Self {
        let (k, s, p) = (g.kernel, g.stride, g.padding);
        let all_h: Vec<Phase> = (0..s).map(|a| Phase::new(a, g.height, k, s, p)).collect();
        let all_w: Vec<Phase> = (0..s).map(|b| Phase::new(b, g.width, k, s, p)).collect();
        let gaps = all_h.iter().chain(&all_w).any(|phase| phase.taps == 0 && phase.count > 0);
        let phases_h: Vec<Phase> = all_h.into_iter().filter(Phase::is_used).collect();
        let phases_w: Vec<Phase> = all_w.into_iter().filter(Phase::is_used).collect();
        // One padded copy of the output gradient serves every phase: `top` rows of zeros above
        // it make room for the phase that starts furthest up. The weight gradient reads it too.
        let top = phases_h.iter().map(|phase| phase.top).max().unwrap_or(0).max(0) as usize;
        let left = phases_w.iter().map(|phase| phase.top).max().unwrap_or(0).max(0) as usize;
        // Correlations compute whole rows of PIXELS blocks; the weight gradient reads pixel pairs.
        let rows = phases_h.iter().map(|phase| phase.scratch_extent(top, 1)).max().unwrap_or(0);
        let cols = phases_w.iter().map(|phase| phase.scratch_extent(left, PIXELS)).max().unwrap_or(0);
        let out_grad_scratch =
            ScratchShape { top, left, rows: rows.max(top + g.out_height()), cols: cols.max(left + g.out_width().next_multiple_of(2)) };
        BackwardPlan { phases_h, phases_w, out_grad_scratch, gaps }
    }
}

/// Where a correlation's outputs go, a block of `PIXELS` pixel vectors at a time.
trait Sink {
    /// Pixels `(r, c0 + q)`, `q < valid`, are `block[q]`.
    fn put<V: Vector>(&mut self, r: usize, c0: usize, block: [V; PIXELS], valid: usize);
}

/// `channels` planes of `rows` x `cols`, one after another in `dst` (written, never read).
struct Planes<'a> {
    dst: &'a mut [MaybeUninit<f32>],
    rows: usize,
    cols: usize,
    channels: usize,
}

impl Sink for Planes<'_> {
    #[inline(always)]
    fn put<V: Vector>(&mut self, r: usize, c0: usize, block: [V; PIXELS], valid: usize) {
        let (plane, at) = (self.rows * self.cols, r * self.cols + c0);
        // Lane l of pixel q is channel l's output (r, c0 + q): transposed, each channel's
        // pixels are one vector. A full store may spill past the row's end into outputs that
        // are written later (not past the plane's end).
        if valid == PIXELS || at + LANES <= plane {
            for (l, outputs) in V::transpose(block).into_iter().take(self.channels).enumerate() {
                outputs.store_uninit((&mut self.dst[l * plane + at..][..LANES]).try_into().unwrap());
            }
        } else {
            let mut values = [0.0; LANES];
            for (q, pixel) in block.iter().take(valid).enumerate() {
                pixel.store(&mut values);
                for (l, value) in values[..self.channels].iter().enumerate() {
                    self.dst[l * plane + at + q].write(*value);
                }
            }
        }
    }
}

/// Pixel vectors, `cols` per row: output (r, c) goes to pixel `(first_row + r * step,
/// first_col + c * step)`.
struct Pixels<'a> {
    data: &'a mut [f32],
    cols: usize,
    first_row: usize,
    first_col: usize,
    step: usize,
}

impl Sink for Pixels<'_> {
    #[inline(always)]
    fn put<V: Vector>(&mut self, r: usize, c0: usize, block: [V; PIXELS], valid: usize) {
        let row = (self.first_row + r * self.step) * self.cols;
        for (q, pixel) in block.iter().take(valid).enumerate() {
            let at = (row + self.first_col + (c0 + q) * self.step) * LANES;
            pixel.store((&mut self.data[at..][..LANES]).try_into().unwrap());
        }
    }
}

/// Per-task scratch, reused across the groups a task runs.
#[derive(Default)]
struct Scratch {
    input: Interleaved,
    out_grad: Interleaved,
    /// A vector of `LANES` channel weights per tap.
    taps: Vec<f32>,
    /// Pixel vectors of a strided convolution's input gradient.
    x_grad: Vec<f32>,
}

struct ForwardGroup<'a> {
    /// `channels` consecutive planes, as the weight, bias and output.
    x: &'a [f32],
    norm: Option<InputNorm<'a>>,
    weight: &'a [f32],
    bias: Option<&'a [f32]>,
    geometry: &'a Geometry,
    shape: ScratchShape,
    out: &'a mut [MaybeUninit<f32>],
}

impl Task for ForwardGroup<'_> {
    type Scratch = Scratch;

    #[inline(always)]
    fn run<V: Vector>(self, scratch: &mut Scratch) {
        let g = self.geometry;
        let (out_height, out_width) = (g.out_height(), g.out_width());
        let channels = self.weight.len() / g.taps();
        fill_input::<V>(&mut scratch.input, self.x, self.norm, channels, g, self.shape);
        interleave_taps(&mut scratch.taps, self.weight, channels, 0..g.taps());
        let mut bias = [0.0; LANES];
        if let Some(values) = self.bias {
            bias[..channels].copy_from_slice(values);
        }
        let mut planes = Planes { dst: self.out, rows: out_height, cols: out_width, channels };
        correlate::<V>(&scratch.input, 0, 0, g.stride, &scratch.taps, g.kernel, V::load(&bias), out_height, out_width, &mut planes);
    }
}

struct BackwardGroup<'a> {
    x: &'a [f32],
    norm: Option<InputNorm<'a>>,
    weight: &'a [f32],
    geometry: &'a Geometry,
    plan: &'a BackwardPlan,
    input_shape: ScratchShape,
    grads: GradSlices<'a>,
    partial: Option<&'a mut [f32]>,
    /// The group's first plane, for `x_grad_done`.
    first_plane: usize,
    x_grad_done: Option<XGradDone<'a>>,
}

impl Task for BackwardGroup<'_> {
    type Scratch = Scratch;

    #[inline(always)]
    fn run<V: Vector>(self, scratch: &mut Scratch) {
        let (g, plan) = (self.geometry, self.plan);
        let (k, s) = (g.kernel, g.stride);
        let (out_height, out_width) = (g.out_height(), g.out_width());
        let channels = self.weight.len() / g.taps();
        let ScratchShape { top, left, .. } = plan.out_grad_scratch;
        scratch.out_grad.fill::<V>(self.grads.out_grad(), channels, out_height, out_width, plan.out_grad_scratch, Unchanged);

        if let Some(partial) = self.partial {
            fill_input::<V>(&mut scratch.input, self.x, self.norm, channels, g, self.input_shape);
            let out_grad = DyView { plane: &scratch.out_grad, top, left, rows: out_height, cols: out_width };
            // A vector of LANES channels per tap, then the bias.
            let mut sums = [0.0; (MAX_KERNEL * MAX_KERNEL + 1) * LANES];
            let (weight_grad, bias_grad) = sums[..(k * k + 1) * LANES].split_at_mut(k * k * LANES);
            match k {
                1 => weight_grad_group::<V, 1>(&scratch.input, s, &out_grad, weight_grad),
                2 => weight_grad_group::<V, 2>(&scratch.input, s, &out_grad, weight_grad),
                3 => weight_grad_group::<V, 3>(&scratch.input, s, &out_grad, weight_grad),
                4 => weight_grad_group::<V, 4>(&scratch.input, s, &out_grad, weight_grad),
                5 => weight_grad_group::<V, 5>(&scratch.input, s, &out_grad, weight_grad),
                6 => weight_grad_group::<V, 6>(&scratch.input, s, &out_grad, weight_grad),
                7 => weight_grad_group::<V, 7>(&scratch.input, s, &out_grad, weight_grad),
                _ => unreachable!("kernel sizes are checked against MAX_KERNEL"),
            }
            bias_sum::<V>(&out_grad).store(bias_grad.try_into().unwrap());
            for (l, channel) in partial.chunks_exact_mut(k * k + 1).enumerate() {
                for (t, value) in channel.iter_mut().enumerate() {
                    *value = sums[t * LANES + l];
                }
            }
        }

        // Last: the input gradient may overwrite the output gradient (now in scratch).
        let Some(x_grad) = self.grads.into_x_grad() else { return };
        {
            let mut planes = Planes { dst: &mut *x_grad, rows: g.height, cols: g.width, channels };
            let out_grad = &scratch.out_grad;
            let phase_taps =
                |taps: &mut Vec<f32>, a: &Phase, b: &Phase| interleave_taps(taps, self.weight, channels, Phase::flipped_taps(a, b, k, s));
            if s == 1 {
                // One phase, covering every input pixel in order: straight into the planes.
                for (a, b) in plan.phases_h.iter().zip(&plan.phases_w) {
                    phase_taps(&mut scratch.taps, a, b);
                    correlate::<V>(
                        out_grad,
                        a.first_read(top),
                        b.first_read(left),
                        1,
                        &scratch.taps,
                        b.taps,
                        V::splat(0.0),
                        a.count,
                        b.count,
                        &mut planes,
                    );
                }
            } else {
                // Phases interleave: gather them as pixel vectors, then transpose whole rows
                // into the planes. A block of slack lets the last row load whole blocks. The
                // phases write every pixel, unless there are gaps.
                scratch.x_grad.resize((g.height * g.width + PIXELS) * LANES, 0.0);
                if plan.gaps {
                    scratch.x_grad.fill(0.0);
                }
                for a in &plan.phases_h {
                    for b in &plan.phases_w {
                        phase_taps(&mut scratch.taps, a, b);
                        let mut pixels = Pixels {
                            data: &mut scratch.x_grad,
                            cols: g.width,
                            first_row: a.first_input,
                            first_col: b.first_input,
                            step: s,
                        };
                        correlate::<V>(
                            out_grad,
                            a.first_read(top),
                            b.first_read(left),
                            1,
                            &scratch.taps,
                            b.taps,
                            V::splat(0.0),
                            a.count,
                            b.count,
                            &mut pixels,
                        );
                    }
                }
                for r in 0..g.height {
                    for c0 in (0..g.width).step_by(PIXELS) {
                        let first = (r * g.width + c0) * LANES;
                        let block = std::array::from_fn(|q| V::load(scratch.x_grad[first + q * LANES..][..LANES].try_into().unwrap()));
                        planes.put(r, c0, block, PIXELS.min(g.width - c0));
                    }
                }
            }
        }
        if let Some(done) = self.x_grad_done {
            // SAFETY: the input gradient's planes were all written above.
            done(self.first_plane, unsafe { assume_written(x_grad) });
        }
    }
}

/// Copies a group's input planes into `input`, through `norm` where given.
#[inline(always)]
fn fill_input<V: Vector>(input: &mut Interleaved, x: &[f32], norm: Option<InputNorm>, channels: usize, g: &Geometry, shape: ScratchShape) {
    match norm {
        None => input.fill::<V>(x, channels, g.height, g.width, shape, Unchanged),
        Some(norm) => with_pointwise!(norm.act, fill_normalized::<V>(input, x, norm, channels, g, shape)),
    }
}

#[inline(always)]
fn fill_normalized<V: Vector, A: Pointwise>(
    input: &mut Interleaved,
    x: &[f32],
    norm: InputNorm,
    channels: usize,
    g: &Geometry,
    shape: ScratchShape,
) {
    input.fill::<V>(x, channels, g.height, g.width, shape, Normalized::<A> { norm, act: PhantomData });
}

/// What [`Interleaved::fill`] does to the values it copies: a trait, not a closure, so that it
/// compiles inline for the caller's target features.
trait SegmentMap {
    /// The values to store for `segment`, values of plane `l`.
    fn map<V: Vector>(&self, l: usize, segment: V) -> V;
}

struct Unchanged;

impl SegmentMap for Unchanged {
    #[inline(always)]
    fn map<V: Vector>(&self, _: usize, segment: V) -> V {
        segment
    }
}

/// `A(x * scale + shift)` with plane `l`'s scale and shift.
struct Normalized<'a, A> {
    norm: InputNorm<'a>,
    act: PhantomData<A>,
}

impl<A: Pointwise> SegmentMap for Normalized<'_, A> {
    #[inline(always)]
    fn map<V: Vector>(&self, l: usize, segment: V) -> V {
        segment.mul_add(V::splat(self.norm.scale[l]), V::splat(self.norm.shift[l])).map(A::value)
    }
}

/// `taps[t * LANES + l]` = channel `l`'s weight at kernel index `order[t]` (0 for channels past
/// `channels`).
fn interleave_taps(taps: &mut Vec<f32>, weight: &[f32], channels: usize, order: impl Iterator<Item = usize>) {
    let kernel_taps = weight.len() / channels;
    taps.clear();
    for index in order {
        taps.extend((0..LANES).map(|l| if l < channels { weight[l * kernel_taps + index] } else { 0.0 }));
    }
}

/// Zero-padded scratch holding `LANES` planes interleaved: channel `l` of pixel `(r, c)` at
/// `(r * cols + c) * LANES + l` holds source element `(r - top, c - left)` of plane `l`, or 0.
#[derive(Default)]
struct Interleaved {
    data: Vec<f32>,
    cols: usize,
    /// Layout, channels and source size of the last fill. While they stay the same, the zeros
    /// stay in place and a fill only copies the source.
    layout: Option<(ScratchShape, usize, usize, usize)>,
}

impl Interleaved {
    /// `map` of each row segment of plane `l` is stored.
    #[inline(always)]
    fn fill<V: Vector>(
        &mut self,
        planes: &[f32],
        channels: usize,
        src_rows: usize,
        src_cols: usize,
        shape: ScratchShape,
        map: impl SegmentMap,
    ) {
        let ScratchShape { top, left, rows, cols } = shape;
        if self.layout != Some((shape, channels, src_rows, src_cols)) {
            self.layout = Some((shape, channels, src_rows, src_cols));
            self.cols = cols;
            self.data.clear();
            self.data.resize(rows * cols * LANES, 0.0);
        }
        let plane = src_rows * src_cols;
        let (copied_rows, copied_cols) = (src_rows.min(rows - top), src_cols.min(cols - left));
        // LANES pixels of LANES planes at a time: a row segment of each plane, transposed into
        // one vector per pixel.
        for r in 0..copied_rows {
            for c0 in (0..copied_cols).step_by(LANES) {
                let n = LANES.min(copied_cols - c0);
                // A full vector wherever the plane data goes on (the lanes past the row end are
                // the next row's, and are not stored); only at the very end a partial one.
                // A loop, not `array::from_fn`: its closure would be compiled apart from the
                // caller's target features, each vector operation a call.
                let mut segments = [V::splat(0.0); LANES];
                for (l, segment) in segments.iter_mut().enumerate().take(channels) {
                    *segment = match planes.get(l * plane + r * src_cols + c0..) {
                        Some(src) if src.len() >= LANES => map.map(l, V::load(src[..LANES].try_into().unwrap())),
                        Some(src) => {
                            let mut lanes = [0.0; LANES];
                            lanes[..n].copy_from_slice(&src[..n]);
                            map.map(l, V::load(&lanes))
                        }
                        None => V::splat(0.0),
                    };
                }
                let at = self.offset(top + r, left + c0);
                for (q, pixel) in V::transpose(segments).into_iter().take(n).enumerate() {
                    pixel.store((&mut self.data[at + q * LANES..][..LANES]).try_into().unwrap());
                }
            }
        }
    }

    fn offset(&self, row: usize, col: usize) -> usize {
        (row * self.cols + col) * LANES
    }
}

/// Output `(r, c)`, `r < rows`, `c < cols`, is `bias + Σ_{i, j} taps(i, j) * plane(row0 + r * step
/// + i, col0 + c * step + j)` for interleaved channels, `taps` holding a weight vector per tap.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn correlate<V: Vector>(
    plane: &Interleaved,
    row0: usize,
    col0: usize,
    step: usize,
    taps: &[f32],
    taps_cols: usize,
    bias: V,
    rows: usize,
    cols: usize,
    sink: &mut impl Sink,
) {
    let data = plane.data.as_slice();
    let pixel_step = step * LANES;
    // Where tap (i, j) reads, relative to the block's first output.
    let mut tap_offsets = [0; MAX_KERNEL * MAX_KERNEL];
    let tap_count = taps.len() / LANES;
    for (i, row_offsets) in tap_offsets[..tap_count].chunks_exact_mut(taps_cols).enumerate() {
        for (j, tap_offset) in row_offsets.iter_mut().enumerate() {
            *tap_offset = plane.offset(i, j);
        }
    }
    let tap_offsets = &tap_offsets[..tap_count];
    for r in 0..rows {
        for c0 in (0..cols).step_by(PIXELS) {
            let base = plane.offset(row0 + r * step, col0 + c0 * step);
            let mut acc = [bias; PIXELS];
            for (tap, &tap_offset) in taps.chunks_exact(LANES).zip(tap_offsets) {
                let w = V::load(tap.try_into().unwrap());
                let block = &data[base + tap_offset..][..(PIXELS - 1) * pixel_step + LANES];
                for (q, acc) in acc.iter_mut().enumerate() {
                    *acc = w.mul_add(V::load(block[q * pixel_step..][..LANES].try_into().unwrap()), *acc);
                }
            }
            sink.put(r, c0, acc, PIXELS.min(cols - c0));
        }
    }
}

/// The output gradient inside its [`Interleaved`] scratch: pixel (r, c) at row `top + r`,
/// column `left + c`; zeros right of it up to an even column.
struct DyView<'a> {
    plane: &'a Interleaved,
    top: usize,
    left: usize,
    rows: usize,
    cols: usize,
}

/// `weight_grad(kh, kw) = Σ_{r, c} dy(r, c) * input(r * s + kh, c * s + kw)`, a vector of
/// `LANES` channels per tap, two pixels at a time with `K` accumulators each.
#[inline(always)]
fn weight_grad_group<V: Vector, const K: usize>(input: &Interleaved, s: usize, dy: &DyView, weight_grad: &mut [f32]) {
    let (data, dy_data) = (input.data.as_slice(), dy.plane.data.as_slice());
    let pixel_step = s * LANES;
    for kh in 0..K {
        let mut acc = [[V::splat(0.0); K]; 2];
        for r in 0..dy.rows {
            let dy_row = dy.plane.offset(dy.top + r, dy.left);
            let input_row = input.offset(r * s + kh, 0);
            for c in (0..dy.cols).step_by(2) {
                let d0 = V::load(dy_data[dy_row + c * LANES..][..LANES].try_into().unwrap());
                let d1 = V::load(dy_data[dy_row + (c + 1) * LANES..][..LANES].try_into().unwrap());
                let base = input_row + c * pixel_step;
                for kw in 0..K {
                    let x0 = V::load(data[base + kw * LANES..][..LANES].try_into().unwrap());
                    let x1 = V::load(data[base + pixel_step + kw * LANES..][..LANES].try_into().unwrap());
                    acc[0][kw] = d0.mul_add(x0, acc[0][kw]);
                    acc[1][kw] = d1.mul_add(x1, acc[1][kw]);
                }
            }
        }
        for kw in 0..K {
            acc[0][kw].add(acc[1][kw]).store((&mut weight_grad[(kh * K + kw) * LANES..][..LANES]).try_into().unwrap());
        }
    }
}

/// Σ over the output gradient's pixels: the bias gradient of `LANES` channels.
#[inline(always)]
fn bias_sum<V: Vector>(dy: &DyView) -> V {
    let data = dy.plane.data.as_slice();
    let mut sum = V::splat(0.0);
    for r in 0..dy.rows {
        let row = dy.plane.offset(dy.top + r, dy.left);
        for pixel in data[row..][..dy.cols * LANES].chunks_exact(LANES) {
            sum = sum.add(V::load(pixel.try_into().unwrap()));
        }
    }
    sum
}
