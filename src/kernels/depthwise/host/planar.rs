//! The planar layout (see `host`): one (image, channel) plane per task, vectorized along rows.
//!
//! A plane is copied into zero-padded scratch with its columns split into `s` phases (column `j`
//! of phase `f` holds padded column `j * s + f`), so that even strided taps read contiguous
//! memory. Outputs are computed in blocks of `ROWS` rows x `LANES` columns.

use super::{BackwardPlan, BackwardSlices, Geometry, GradSlices, Gradients, LANES, OutGrad, ScratchShape, Target, Task, Vector, Wanted, backward_groups, forward_groups, run};

/// Output rows per register block: `ROWS` vectors of accumulators.
const ROWS: usize = 8;

pub(super) fn forward(fma: bool, x: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &Geometry) -> Vec<f32> {
    let (plane_in, taps) = (g.height * g.width, g.taps());
    let shape = input_scratch(g);
    forward_groups(g, 1, |scratch: &mut Scratch, group, out| {
        let task = ForwardPlane {
            x: group.planes(x, plane_in),
            weight: group.rows(weight, g, taps),
            bias: bias.map_or(0.0, |bias| bias[group.first_channel(g)]),
            geometry: g,
            shape,
            out,
        };
        run(fma, task, scratch);
    })
}

pub(super) fn backward(fma: bool, x: &[f32], weight: &[f32], out_grad: OutGrad, g: &Geometry, wanted: Wanted) -> Gradients {
    let (plane_in, taps) = (g.height * g.width, g.taps());
    // The weight gradient reads the output gradient in row pairs and LANES-column blocks.
    let plan = BackwardPlan::new(g, [ROWS, LANES], [2, LANES]);
    let input_shape = input_scratch(g);
    backward_groups(g, out_grad, wanted, 1, |scratch: &mut Scratch, slices: BackwardSlices| {
        let task = BackwardPlane {
            x: slices.group.planes(x, plane_in),
            weight: slices.group.rows(weight, g, taps),
            geometry: g,
            plan: &plan,
            input_shape,
            grads: slices.grads,
            partial: slices.partial,
        };
        run(fma, task, scratch);
    })
}

/// The padded input with `stride` column phases: what the forward pass and the weight gradient
/// read.
fn input_scratch(g: &Geometry) -> ScratchShape {
    let (k, s) = (g.kernel, g.stride);
    ScratchShape {
        top: g.padding,
        left: g.padding,
        rows: (g.out_height().next_multiple_of(ROWS) - 1) * s + k,
        cols: g.out_width().next_multiple_of(LANES) + (k - 1) / s,
    }
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
    shape: ScratchShape,
    out: &'a mut [f32],
}

impl Task for ForwardPlane<'_> {
    type Scratch = Scratch;

    #[inline(always)]
    fn run<V: Vector>(self, scratch: &mut Scratch) {
        let g = self.geometry;
        let (out_height, out_width) = (g.out_height(), g.out_width());
        scratch.input.fill::<V>(self.x, g.height, g.width, self.shape, g.stride);
        let target = Target { dst: self.out, plane: 0, offset: 0, row_stride: out_width, col_stride: 1, rows: out_height, cols: out_width };
        let taps = Taps { values: self.weight, cols: g.kernel };
        correlate::<V>(&scratch.input, 0, 0, g.stride, taps, self.bias, target);
    }
}

struct BackwardPlane<'a> {
    x: &'a [f32],
    weight: &'a [f32],
    geometry: &'a Geometry,
    plan: &'a BackwardPlan,
    input_shape: ScratchShape,
    grads: GradSlices<'a>,
    partial: Option<&'a mut [f32]>,
}

impl Task for BackwardPlane<'_> {
    type Scratch = Scratch;

    #[inline(always)]
    fn run<V: Vector>(self, scratch: &mut Scratch) {
        let (g, plan) = (self.geometry, self.plan);
        let (k, s) = (g.kernel, g.stride);
        let (out_height, out_width) = (g.out_height(), g.out_width());
        let ScratchShape { top, left, .. } = plan.out_grad_scratch;
        scratch.out_grad.fill::<V>(self.grads.out_grad(), out_height, out_width, plan.out_grad_scratch, 1);

        if let Some(partial) = self.partial {
            scratch.input.fill::<V>(self.x, g.height, g.width, self.input_shape, s);
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
            bias_grad[0] = sum(self.grads.out_grad());
        }

        // Last: the input gradient may overwrite the output gradient (now in scratch).
        if let Some(x_grad) = self.grads.into_x_grad() {
            for a in &plan.phases_h {
                for b in &plan.phases_w {
                    scratch.taps.clear();
                    scratch.taps.extend(super::Phase::flipped_taps(a, b, k, s).map(|t| self.weight[t]));
                    let target = Target {
                        dst: &mut *x_grad,
                        plane: 0,
                        offset: a.first_input * g.width + b.first_input,
                        row_stride: s * g.width,
                        col_stride: s,
                        rows: a.count,
                        cols: b.count,
                    };
                    let taps = Taps { values: &scratch.taps, cols: b.taps };
                    correlate::<V>(&scratch.out_grad, a.first_read(top), b.first_read(left), 1, taps, 0.0, target);
                }
            }
        }
    }
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
    layout: Option<(ScratchShape, usize, usize, usize)>,
}

impl Padded {
    #[inline(always)]
    /// `shape.cols` columns per phase.
    fn fill<V: Vector>(&mut self, src: &[f32], src_rows: usize, src_cols: usize, shape: ScratchShape, phases: usize) {
        let ScratchShape { top, left, rows, cols: len } = shape;
        if self.layout != Some((shape, phases, src_rows, src_cols)) {
            self.layout = Some((shape, phases, src_rows, src_cols));
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
    let Target { dst, offset, row_stride, col_stride, rows, cols, .. } = target;
    let data = plane.data.as_slice();
    let row_step = step * plane.len;
    // Where tap (i, j) reads, relative to the block's first output: column j is column j / step
    // of phase j % step. Computed once, by counting, so that no loop divides by `step`.
    let mut tap_offsets = [0; super::MAX_KERNEL * super::MAX_KERNEL];
    for (i, row_offsets) in tap_offsets[..taps.values.len()].chunks_exact_mut(taps.cols).enumerate() {
        let (mut phase, mut shift) = (0, 0);
        for tap_offset in row_offsets {
            *tap_offset = plane.offset(phase, row0 + i) + col0 + shift;
            phase += 1;
            if phase == step {
                (phase, shift) = (0, shift + 1);
            }
        }
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
    // Where kernel column kw reads in a row: column kw / s of phase kw % s, counted as in
    // `correlate`.
    let mut kw_offsets = [0; K];
    let (mut phase, mut shift) = (0, 0);
    for kw_offset in &mut kw_offsets {
        *kw_offset = input.offset(phase, 0) + shift;
        phase += 1;
        if phase == s {
            (phase, shift) = (0, shift + 1);
        }
    }
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
