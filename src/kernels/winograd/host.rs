//! Dense 3x3 stride-1 convolution on host f32 NCHW data by Winograd's minimal filtering
//! F(m x m, 3x3) (Lavin & Gray, 2015): each m x m block of outputs (a "tile") comes from the
//! (m + 2)² input patch under it through (m + 2)² products per input/output channel pair instead
//! of 9m². F(4x4, 3x3) (36 products for 16 outputs, 4x fewer than direct) runs where its tiles
//! need fewer products than F(2x2, 3x3)'s (16 for 4, 2.25x fewer): on square maps of any size but
//! 1, 2, 5 and 6.
//!
//! With `V = Bᵀ d B` the transformed input patch and `U = G g Gᵀ` the transformed filter, each of
//! the (m + 2)² points `ξ` of the transform is one matrix product over channels,
//! `M[ξ][tile][out] = Σ_in V[ξ][tile][in] U[ξ][in][out]`, and the output tile is `Aᵀ M A`. The
//! products run on the `gemm` crate (the kernel burn-flex uses for its convolutions); the
//! transforms are ours. The gradients reuse the same pieces:
//! - input gradient: the convolution of the output gradient with the filters rotated by 180° and
//!   input/output channels swapped ([`Filters::Transposed`]), padding `2 - padding`;
//! - weight gradient: with `dM = A dY Aᵀ` the transformed output-gradient tile,
//!   `dU[ξ][in][out] = Σ_tile V[ξ][tile][in] dM[ξ][tile][out]` and `dg = Gᵀ dU G`.
//!
//! Tiles are processed in chunks of whole tile rows. Where the transformed filters are small,
//! each rayon task takes whole chunks sized so that their V and M stay in its core's L2 cache;
//! where they are large (many channels, small maps) the chunks are bigger and processed one after
//! the other, the work inside each split between the threads, so the filters are read (and
//! packed by `gemm`) fewer times.

use std::ops::Range;

use rayon::prelude::*;

use crate::kernels::{fma_available, matmul, sized, sum_in_parallel, with_buffers};

mod transform;

use transform::{Matrix, Place, Transform};

/// Bytes of V and M one task's chunk may fill: half of this CPU family's 2 MiB L2 per core.
const TASK_CHUNK_BYTES: usize = 1 << 20;
/// Transformed filters above this many bytes are shared by all threads chunk by chunk.
const SHARED_FILTER_BYTES: usize = 2 << 20;
/// Tiles per chunk when the threads share each chunk: enough rows for the products to amortize
/// packing the filters.
const SHARED_CHUNK_TILES: usize = 512;

/// Sizes of one 3x3 stride-1 convolution with symmetric zero padding `padding` (0, 1 or 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub height: usize,
    pub width: usize,
    pub padding: usize,
}

impl Geometry {
    pub fn out_height(&self) -> usize {
        self.height + 2 * self.padding - 2
    }

    pub fn out_width(&self) -> usize {
        self.width + 2 * self.padding - 2
    }

    /// The convolution that maps this one's output gradient to its input gradient.
    fn transposed(&self) -> Geometry {
        Geometry {
            batch: self.batch,
            in_channels: self.out_channels,
            out_channels: self.in_channels,
            height: self.out_height(),
            width: self.out_width(),
            padding: 2 - self.padding,
        }
    }

    fn check(&self) {
        assert!(
            self.padding <= 2 && self.height + 2 * self.padding >= 3 && self.width + 2 * self.padding >= 3,
            "winograd: bad geometry {self:?}"
        );
    }
}

/// The filters a convolution applies, from a `weight` tensor's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filters {
    /// `weight` is `[out_channels, in_channels, 3, 3]`, as conv2d takes it.
    AsGiven,
    /// `weight` is `[in_channels, out_channels, 3, 3]` and each filter is rotated by 180°: the
    /// input-gradient convolution of the forward convolution that `weight` belongs to.
    Transposed,
}

/// `y = conv2d(x, filters) + bias`: `x` `[batch, in, height, width]`, `bias` `[out]`, `y`
/// `[batch, out, out_height, out_width]`.
pub fn forward(x: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &Geometry, filters: Filters) -> Vec<f32> {
    g.check();
    assert_eq!(x.len(), g.batch * g.in_channels * g.height * g.width, "winograd: input size");
    assert_eq!(weight.len(), g.in_channels * g.out_channels * 9, "winograd: weight size");
    assert!(bias.is_none_or(|b| b.len() == g.out_channels), "winograd: bias size");
    let plan = Plan::new(g);
    let u = transform_filters(weight, g, plan.transform, filters);
    let len = g.batch * g.out_channels * g.out_height() * g.out_width();
    // Left uninitialized: the output transform writes every value (zero-filling it first cost a
    // memset pass over the whole output).
    let mut y = Vec::<f32>::with_capacity(len);
    let out = SharedMut(y.as_mut_ptr());
    let chunk = |rows: Range<usize>, [v, m]: &mut [Vec<f32>; 2], parallel: bool| {
        let tiles = rows.len() * plan.tiles_x;
        let (v, m) = plan.buffers(v, m, g, tiles);
        transform_inputs(x, g, &plan, rows.clone(), v, parallel);
        products(v, &u, m, &plan, tiles, g.in_channels, g.out_channels, parallel);
        // SAFETY: a tile row's outputs (m rows of each output plane of its image) belong to it
        // alone, and chunks hold disjoint tile rows; `y` outlives the loop.
        unsafe { transform_outputs(m, bias, g, &plan, rows, out, parallel) };
    };
    match plan.shared {
        false => (0..plan.chunks).into_par_iter().for_each(|c| with_buffers(|buffers| chunk(plan.rows(c), buffers, false))),
        true => with_buffers(|buffers| (0..plan.chunks).for_each(|c| chunk(plan.rows(c), buffers, true))),
    }
    // SAFETY: the chunks cover every tile row of every image, and the output transform of a tile
    // row writes all `out_width` values of each of its output rows in every output channel.
    unsafe { y.set_len(len) };
    y
}

/// The input gradient of `y = conv2d(x, weight)` (padding `g.padding`) from `out_grad` (`y`'s
/// shape): `[batch, in, height, width]`.
pub fn input_gradient(out_grad: &[f32], weight: &[f32], g: &Geometry) -> Vec<f32> {
    forward(out_grad, weight, None, &g.transposed(), Filters::Transposed)
}

/// The weight gradient of `y = conv2d(x, weight)` (padding `g.padding`) from `out_grad` (`y`'s
/// shape): `[out, in, 3, 3]`.
pub fn weight_gradient(x: &[f32], out_grad: &[f32], g: &Geometry) -> Vec<f32> {
    g.check();
    assert_eq!(x.len(), g.batch * g.in_channels * g.height * g.width, "winograd: input size");
    assert_eq!(out_grad.len(), g.batch * g.out_channels * g.out_height() * g.out_width(), "winograd: output gradient size");
    let plan = Plan::new(g);
    let filter_len = g.in_channels * plan.transform.points() * g.out_channels;
    // dU accumulated chunk by chunk into `du` (one [out][in] matrix per point).
    let chunk = |rows: Range<usize>, [v, dm]: &mut [Vec<f32>; 2], du: &mut [f32], parallel: bool| {
        let tiles = rows.len() * plan.tiles_x;
        let (v, dm) = plan.buffers(v, dm, g, tiles);
        transform_inputs(x, g, &plan, rows.clone(), v, parallel);
        transform_output_grads(out_grad, g, &plan, rows, dm, parallel);
        weight_products(v, dm, du, &plan, tiles, g.in_channels, g.out_channels, parallel);
    };
    let du = match plan.shared {
        false => {
            sum_in_parallel((0..plan.chunks).collect(), filter_len, |c, du| with_buffers(|buffers| chunk(plan.rows(c), buffers, du, false)))
        }
        true => {
            let mut du = vec![0f32; filter_len];
            with_buffers(|buffers| (0..plan.chunks).for_each(|c| chunk(plan.rows(c), buffers, &mut du, true)));
            du
        }
    };
    untransform_filter_gradients(&du, g, plan.transform)
}

/// The transform a convolution uses and how its tile rows (one per image and m output rows) are
/// cut into chunks.
struct Plan {
    transform: Transform,
    tiles_x: usize,
    tiles_y: usize,
    rows: usize,
    rows_per_chunk: usize,
    chunks: usize,
    /// Whether all threads work on each chunk in turn (large filters) rather than each on its own.
    shared: bool,
}

impl Plan {
    fn new(g: &Geometry) -> Plan {
        // The transform with fewer products per image (tiles x points), F(2x2) where they tie
        // (6x6 maps): F(4x4) on ResNet's 4x4 maps is one tile and 36 products per image against
        // F(2x2)'s four tiles and 64.
        let products = |t: Transform| g.out_height().div_ceil(t.m()) * g.out_width().div_ceil(t.m()) * t.points();
        let transform = if products(Transform::F4) < products(Transform::F2) { Transform::F4 } else { Transform::F2 };
        let points = transform.points();
        let tiles_x = g.out_width().div_ceil(transform.m());
        let tiles_y = g.out_height().div_ceil(transform.m());
        let rows = g.batch * tiles_y;
        let shared = points * 4 * g.in_channels * g.out_channels > SHARED_FILTER_BYTES;
        let rows_per_chunk = if shared {
            SHARED_CHUNK_TILES.div_ceil(tiles_x)
        } else {
            let fit = TASK_CHUNK_BYTES / (points * 4 * (g.in_channels + g.out_channels));
            // At least two chunks per thread where there are rows enough, so both cores stay busy.
            let per_thread = rows.div_ceil(2 * rayon::current_num_threads());
            (fit / tiles_x).clamp(1, per_thread.max(1))
        };
        let rows_per_chunk = rows_per_chunk.clamp(1, rows.max(1));
        Plan { transform, tiles_x, tiles_y, rows, rows_per_chunk, chunks: rows.div_ceil(rows_per_chunk), shared }
    }

    /// Global tile rows of chunk `chunk` (row `r` is image `r / tiles_y`, tile row `r % tiles_y`).
    fn rows(&self, chunk: usize) -> Range<usize> {
        let start = chunk * self.rows_per_chunk;
        start..(start + self.rows_per_chunk).min(self.rows)
    }

    /// A chunk's transformed tiles `[channel][ξ][tile]` of the inputs (V) and of the products or
    /// output gradients (M, dM), in `v` and `m`, for `tiles` tiles.
    fn buffers<'a>(&self, v: &'a mut Vec<f32>, m: &'a mut Vec<f32>, g: &Geometry, tiles: usize) -> (&'a mut [f32], &'a mut [f32]) {
        let points = self.transform.points();
        (sized(v, points * g.in_channels * tiles), sized(m, points * g.out_channels * tiles))
    }

    /// `(image, tile row)` of global tile row `row`.
    fn locate(&self, row: usize) -> (usize, usize) {
        (row / self.tiles_y, row % self.tiles_y)
    }
}

/// A pointer that tasks write through at places no other task touches.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);

// SAFETY: every use writes places that only one task writes (see the callers).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `f(i, block i, scratch)` for the `len`-long blocks of `data`, on all threads or on this one;
/// `scratch` is a buffer each task reuses.
fn each_block(parallel: bool, data: &mut [f32], len: usize, f: impl Fn(usize, &mut [f32], &mut Vec<f32>) + Sync + Send) {
    match parallel {
        true => data.par_chunks_mut(len).enumerate().for_each(|(i, block)| with_buffers(|[scratch]| f(i, block, scratch))),
        false => with_buffers(|[scratch]| data.chunks_mut(len).enumerate().for_each(|(i, block)| f(i, block, scratch))),
    }
}

/// `f(i, scratch)` for `i` in `0..n`, on all threads or on this one, as [`each_block`].
fn each_index(parallel: bool, n: usize, f: impl Fn(usize, &mut Vec<f32>) + Sync + Send) {
    match parallel {
        true => (0..n).into_par_iter().for_each(|i| with_buffers(|[scratch]| f(i, scratch))),
        false => with_buffers(|[scratch]| (0..n).for_each(|i| f(i, scratch))),
    }
}

/// The (m + 2)² matrices `U[ξ]` (`in` x `out`) of the transformed filters, one after the other;
/// each stored in the order its source `weight` is, so that both the transform and its reads are
/// sequential.
struct TransformedFilters {
    values: Vec<f32>,
    /// Strides between consecutive inputs and consecutive outputs in a matrix.
    in_stride: usize,
    out_stride: usize,
}

/// `U = G f Gᵀ` of every filter `f`.
fn transform_filters(weight: &[f32], g: &Geometry, t: Transform, filters: Filters) -> TransformedFilters {
    let (ins, outs) = (g.in_channels, g.out_channels);
    // `weight`'s second dimension (the work is split over the leading one).
    let minor = match filters {
        Filters::AsGiven => ins,
        Filters::Transposed => outs,
    };
    let fma = fma_available();
    let len = t.points() * ins * outs;
    let mut values = Vec::<f32>::with_capacity(len);
    let target = SharedMut(values.as_mut_ptr());
    weight.par_chunks(minor * 9).enumerate().for_each(|(a_major, row)| {
        // SAFETY: `values` holds `len` values and outlives the loop; task `a_major` alone writes
        // its row of each matrix.
        with_buffers(|[scratch]| unsafe { filter_row(fma, row, t, filters, a_major * minor, ins * outs, target, scratch) })
    });
    // SAFETY: every row of `minor` values of every matrix (`len` in all) was written above.
    unsafe { values.set_len(len) };
    match filters {
        Filters::AsGiven => TransformedFilters { values, in_stride: 1, out_stride: ins },
        Filters::Transposed => TransformedFilters { values, in_stride: outs, out_stride: 1 },
    }
}

with_avx2! {
    /// [`transform_filters`] of the filters `weight` `[minor][3][3]` that share one leading index:
    /// their transforms go to `values[ξ * matrix + offset ..][..minor]` for every point ξ. The taps
    /// are first laid out tap by tap, `[9][minor]`, so that `G` applies to all the filters at once
    /// (the former filter-by-filter transform wrote each value to its own matrix, 18% of a
    /// resnet18_cifar step at batch 32 with the gradient's untransform below).
    ///
    /// # Safety
    ///
    /// `values` points to `points * matrix` values, and only this call writes the places above.
    unsafe fn filter_row(weight: &[f32], t: Transform, filters: Filters, offset: usize, matrix: usize, values: SharedMut, scratch: &mut Vec<f32>) {
        let (minor, alpha) = (weight.len() / 9, t.alpha());
        let scratch = sized(scratch, (9 + 3 * alpha + alpha * alpha) * minor);
        let (taps, rest) = scratch.split_at_mut(9 * minor);
        let (gf, transformed) = rest.split_at_mut(3 * alpha * minor);
        for (j, filter) in weight.chunks_exact(9).enumerate() {
            for (k, &tap) in filter.iter().enumerate() {
                // The input-gradient convolution's filters are rotated by 180°.
                let k = if filters == Filters::Transposed { 8 - k } else { k };
                taps[k * minor + j] = tap;
            }
        }
        t.apply_2d(Matrix::G, taps, gf, transformed, minor);
        for (point, row) in transformed.chunks_exact(minor).enumerate() {
            // SAFETY: the caller's guarantee.
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), values.get().add(point * matrix + offset), minor) };
        }
    }
}

/// `dg = Gᵀ dU G` of every filter from `du` (one matrix `[out][in]` per point): `[out][in][3][3]`.
fn untransform_filter_gradients(du: &[f32], g: &Geometry, t: Transform) -> Vec<f32> {
    let (ins, outs) = (g.in_channels, g.out_channels);
    let fma = fma_available();
    let mut dg = vec![0f32; outs * ins * 9];
    dg.par_chunks_mut(ins * 9)
        .enumerate()
        .for_each(|(o, dg)| with_buffers(|[scratch]| filter_gradient_row(fma, du, t, o, outs, dg, scratch)));
    dg
}

with_avx2! {
    /// [`untransform_filter_gradients`] of output channel `o`'s filters, `dg` `[in][3][3]`, from
    /// its row of each point's matrix, computed for all inputs at once tap by tap as in
    /// [`filter_row`].
    fn filter_gradient_row(du: &[f32], t: Transform, o: usize, outs: usize, dg: &mut [f32], scratch: &mut Vec<f32>) {
        let (ins, alpha) = (dg.len() / 9, t.alpha());
        let scratch = sized(scratch, (3 * alpha + 9) * ins);
        let (rows, taps) = scratch.split_at_mut(3 * alpha * ins);
        for s in 0..alpha {
            // Gᵀ dU, column s (point (r, s) of row r is matrix r * alpha + s) ...
            t.apply(Matrix::Gt, (&du[(s * outs + o) * ins..], alpha * outs * ins), (&mut rows[s * ins..], alpha * ins), ins);
        }
        for a in 0..3 {
            // ... times G, row a.
            t.apply(Matrix::Gt, (&rows[a * alpha * ins..], ins), (&mut taps[a * 3 * ins..], ins), ins);
        }
        for (i, filter) in dg.chunks_exact_mut(9).enumerate() {
            filter.iter_mut().enumerate().for_each(|(k, value)| *value = taps[k * ins + i]);
        }
    }
}

/// `V = Bᵀ d B` of the tiles of `rows` into `v` `[in][ξ][tile]`.
fn transform_inputs(x: &[f32], g: &Geometry, plan: &Plan, rows: Range<usize>, v: &mut [f32], parallel: bool) {
    let fma = fma_available();
    let tiles = rows.len() * plan.tiles_x;
    each_block(parallel, v, plan.transform.points() * tiles, |c, v, scratch| input_channel(fma, x, g, plan, rows.clone(), c, v, scratch));
}

with_avx2! {
    /// [`transform_inputs`] of input channel `c` into its block `v` `[ξ][tile]`: the alpha
    /// input rows under each tile row, zero padded, then their patches' points.
    fn input_channel(x: &[f32], g: &Geometry, plan: &Plan, rows: Range<usize>, c: usize, v: &mut [f32], scratch: &mut Vec<f32>) {
        let t = plan.transform;
        let (m, alpha, n) = (t.m(), t.alpha(), plan.tiles_x);
        let tiles = rows.len() * n;
        // Columns -padding .. row_len - padding of each input row.
        let row_len = t.row_len(n);
        let padded = sized(scratch, rows.len() * alpha * row_len);
        // Zeroed once: the columns outside the image stay zero, and so do rows outside it.
        padded.fill(0.0);
        let len = g.width.min(row_len - g.padding);
        for (local, row) in rows.clone().enumerate() {
            let (image, tile_row) = plan.locate(row);
            let plane = &x[(image * g.in_channels + c) * g.height * g.width..][..g.height * g.width];
            for (i, padded) in padded[local * alpha * row_len..].chunks_exact_mut(row_len).take(alpha).enumerate() {
                let y = (m * tile_row + i) as isize - g.padding as isize;
                if y >= 0 && y < g.height as isize {
                    padded[g.padding..][..len].copy_from_slice(&plane[y as usize * g.width..][..len]);
                }
            }
        }
        t.tiles_to_points(Matrix::Bt, (padded, row_len), n, tiles, (v, tiles));
    }
}

/// `dM = A dY Aᵀ` of the output-gradient tiles of `rows` (zero beyond the output's edge) into
/// `dm` `[out][ξ][tile]`.
fn transform_output_grads(out_grad: &[f32], g: &Geometry, plan: &Plan, rows: Range<usize>, dm: &mut [f32], parallel: bool) {
    let fma = fma_available();
    let tiles = rows.len() * plan.tiles_x;
    each_block(parallel, dm, plan.transform.points() * tiles, |o, dm, scratch| {
        output_grad_channel(fma, out_grad, g, plan, rows.clone(), o, dm, scratch)
    });
}

with_avx2! {
    /// [`transform_output_grads`] of output channel `o` into its block `dm` `[ξ][tile]`: the m
    /// output-gradient rows of each tile row, zero padded, then their tiles' points.
    fn output_grad_channel(out_grad: &[f32], g: &Geometry, plan: &Plan, rows: Range<usize>, o: usize, dm: &mut [f32], scratch: &mut Vec<f32>) {
        let t = plan.transform;
        let (m, n) = (t.m(), plan.tiles_x);
        let tiles = rows.len() * n;
        let (out_height, out_width) = (g.out_height(), g.out_width());
        let row_len = t.row_len(n);
        let padded = sized(scratch, rows.len() * m * row_len);
        // Zeroed once, as in `input_channel`.
        padded.fill(0.0);
        for (local, row) in rows.clone().enumerate() {
            let (image, tile_row) = plan.locate(row);
            let plane = &out_grad[(image * g.out_channels + o) * out_height * out_width..][..out_height * out_width];
            for (r, padded) in padded[local * m * row_len..].chunks_exact_mut(row_len).take(m).enumerate() {
                let y = m * tile_row + r;
                if y < out_height {
                    padded[..out_width].copy_from_slice(&plane[y * out_width..][..out_width]);
                }
            }
        }
        t.tiles_to_points(Matrix::A, (padded, row_len), n, tiles, (dm, tiles));
    }
}

/// `M[out][ξ][tile] = Σ_in V[in][ξ][tile] U[ξ][in, out]`, one product per point.
#[allow(clippy::too_many_arguments)]
fn products(v: &[f32], u: &TransformedFilters, m: &mut [f32], plan: &Plan, tiles: usize, ins: usize, outs: usize, parallel: bool) {
    let points = plan.transform.points();
    let m_ptr = SharedMut(m.as_mut_ptr());
    let stride = (points * tiles) as isize;
    each_index(parallel, points, |point, _| {
        // SAFETY: v is [ins][points][tiles], u one ins x outs matrix per point, m
        // [outs][points][tiles]: the strides stay inside them, and point ξ writes only m[..][ξ][..].
        unsafe {
            matmul(
                tiles,
                outs,
                ins,
                (m_ptr.get().add(point * tiles), stride, 1),
                false,
                (v.as_ptr().add(point * tiles), stride, 1),
                (u.values.as_ptr().add(point * ins * outs), u.out_stride as isize, u.in_stride as isize),
            )
        }
    });
}

/// `dU[ξ][out][in] += Σ_tile V[in][ξ][tile] dM[out][ξ][tile]`, one product per point.
#[allow(clippy::too_many_arguments)]
fn weight_products(v: &[f32], dm: &[f32], du: &mut [f32], plan: &Plan, tiles: usize, ins: usize, outs: usize, parallel: bool) {
    let points = plan.transform.points();
    let du_ptr = SharedMut(du.as_mut_ptr());
    let stride = (points * tiles) as isize;
    each_index(parallel, points, |point, _| {
        // SAFETY: v is [ins][points][tiles], dm [outs][points][tiles], du [points][outs][ins]: the
        // strides stay inside them, and point ξ writes only du[ξ].
        unsafe {
            matmul(
                ins,
                outs,
                tiles,
                (du_ptr.get().add(point * outs * ins), ins as isize, 1),
                true,
                (v.as_ptr().add(point * tiles), 1, stride),
                (dm.as_ptr().add(point * tiles), stride, 1),
            )
        }
    });
}

/// `Aᵀ M A` (+ bias) of the tiles of `rows` from `m` `[out][ξ][tile]` into the output.
///
/// # Safety
///
/// `out` points to the output `[batch, out, out_height, out_width]`, and no other thread writes
/// the output rows of `rows` meanwhile.
unsafe fn transform_outputs(
    m: &[f32],
    bias: Option<&[f32]>,
    g: &Geometry,
    plan: &Plan,
    rows: Range<usize>,
    out: SharedMut,
    parallel: bool,
) {
    let fma = fma_available();
    let t = plan.transform;
    let tiles = rows.len() * plan.tiles_x;
    each_index(parallel, g.out_channels, |o, _| {
        let m = &m[o * t.points() * tiles..][..t.points() * tiles];
        let bias = bias.map_or(0.0, |b| b[o]);
        // SAFETY: the caller's guarantee, and one `o` per task.
        unsafe { output_channel(fma, m, bias, g, plan, rows.clone(), o, out) };
    });
}

with_avx2! {
    /// `Aᵀ M A + bias` of output channel `o`'s tiles of `rows`, `m` `[ξ][tile]`, written tile row
    /// by tile row to their places in the output.
    ///
    /// # Safety
    ///
    /// As [`transform_outputs`], and only this call writes channel `o`'s rows of `rows`.
    unsafe fn output_channel(m: &[f32], bias: f32, g: &Geometry, plan: &Plan, rows: Range<usize>, o: usize, out: SharedMut) {
        let t = plan.transform;
        let (mm, n) = (t.m(), plan.tiles_x);
        let (out_height, out_width) = (g.out_height(), g.out_width());
        let place = |f: usize| {
            let (image, tile_row) = plan.locate(rows.start + f / n);
            let (y, x) = (mm * tile_row, mm * (f % n));
            Place { offset: ((image * g.out_channels + o) * out_height + y) * out_width + x, rows: mm.min(out_height - y), columns: mm.min(out_width - x) }
        };
        // SAFETY: the places of the tiles of `rows` in plane (image, o) are inside the output, and
        // only this call writes them (the caller's guarantee).
        unsafe { t.points_to_tiles((m, rows.len() * n), rows.len() * n, place, (out.get(), out_width), bias) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_values as values;

    /// Direct definition, accumulated in f64: y[n,o,i,j] = b[o] + Σ w[o,c,a,b] x[n,c,i+a-p,j+b-p],
    /// and the gradients dx[n,c,i+a-p,j+b-p] += w[o,c,a,b] dy[n,o,i,j], dw[o,c,a,b] += x[..] dy[..].
    // Index loops written as the formula above reads.
    #[allow(clippy::needless_range_loop)]
    fn reference(x: &[f32], w: &[f32], bias: &[f32], dy: &[f32], g: &Geometry) -> [Vec<f32>; 3] {
        let (oh, ow, p) = (g.out_height(), g.out_width(), g.padding as isize);
        let (cin, cout) = (g.in_channels, g.out_channels);
        let mut y = vec![0f64; g.batch * cout * oh * ow];
        let mut dx = vec![0f64; x.len()];
        let mut dw = vec![0f64; w.len()];
        for n in 0..g.batch {
            for o in 0..cout {
                for i in 0..oh {
                    for j in 0..ow {
                        let out = ((n * cout + o) * oh + i) * ow + j;
                        y[out] = bias[o] as f64;
                        for c in 0..cin {
                            for a in 0..3 {
                                for b in 0..3 {
                                    let (yy, xx) = (i as isize + a as isize - p, j as isize + b as isize - p);
                                    if yy < 0 || xx < 0 || yy >= g.height as isize || xx >= g.width as isize {
                                        continue;
                                    }
                                    let input = ((n * cin + c) * g.height + yy as usize) * g.width + xx as usize;
                                    let tap = ((o * cin + c) * 3 + a) * 3 + b;
                                    y[out] += w[tap] as f64 * x[input] as f64;
                                    dx[input] += w[tap] as f64 * dy[out] as f64;
                                    dw[tap] += x[input] as f64 * dy[out] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        [y, dx, dw].map(|values| values.into_iter().map(|v| v as f32).collect())
    }

    /// Equal within 1e-4 (absolute and relative) for sums of up to 9 products of values in
    /// [-1, 1), the bound growing with the square root of the number of products `terms` (fp32
    /// rounding of the transforms, larger for F(4x4) than for F(2x2), accumulates like a random walk).
    fn assert_close(ours: &[f32], reference: &[f32], terms: usize, what: &str) {
        assert_eq!(ours.len(), reference.len(), "{what}: length");
        let scale = (terms as f32 / 9.0).sqrt().max(1.0);
        for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
            assert!((a - b).abs() <= 1e-4 * scale * (1.0 + b.abs()), "{what}[{i}]: {a} vs {b}");
        }
    }

    #[test]
    fn forward_and_gradients_equal_the_direct_definition() {
        // Both transforms (F(4x4) from 8x8 outputs up), odd and even sizes (partial tiles at the
        // right and bottom edges), rows of more than four F(4x4) tiles (gathered four at a time), every padding, more tile rows than one chunk holds, filters
        // large enough for the threads to share chunks, and long sums over channels. Each shape
        // runs after larger and after smaller ones: the threads' buffers outlive a call.
        let mut used = Vec::new();
        let shapes = [
            (1, 1, 1, 3, 3),
            (2, 3, 5, 7, 9),
            (3, 4, 2, 8, 8),
            (1, 2, 3, 5, 12),
            (5, 3, 4, 33, 6),
            (2, 200, 180, 5, 4),
            (1, 150, 20, 12, 13),
            (1, 2, 3, 8, 23),
        ];
        for &(batch, cin, cout, height, width) in shapes.iter().chain(shapes.iter().rev()) {
            for padding in 0..=2 {
                let g = Geometry { batch, in_channels: cin, out_channels: cout, height, width, padding };
                let x = values(batch * cin * height * width, 1);
                let w = values(cout * cin * 9, 2);
                let bias = values(cout, 3);
                let dy = values(batch * cout * g.out_height() * g.out_width(), 4);
                let [y, dx, dw] = reference(&x, &w, &bias, &dy, &g);
                let plan = Plan::new(&g);
                used.push((plan.transform.m(), plan.shared));
                let pixels = batch * g.out_height() * g.out_width();
                assert_close(&forward(&x, &w, Some(&bias), &g, Filters::AsGiven), &y, 9 * cin, &format!("y {g:?}"));
                assert_close(&input_gradient(&dy, &w, &g), &dx, 9 * cout, &format!("dx {g:?}"));
                assert_close(&weight_gradient(&x, &dy, &g), &dw, pixels, &format!("dw {g:?}"));
            }
        }
        assert!([(2, false), (2, true), (4, false)].iter().all(|case| used.contains(case)), "{used:?}");
    }
}
