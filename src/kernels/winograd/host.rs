//! Dense 3x3 stride-1 convolution on host f32 NCHW data by Winograd's minimal filtering
//! F(2x2, 3x3) (Lavin & Gray, 2015): each 2x2 block of outputs (a "tile") comes from the 4x4 input
//! patch under it through 16 products per input/output channel pair instead of 36.
//!
//! With `V = Bᵀ d B` the transformed input patch and `U = G g Gᵀ` the transformed filter, each of
//! the 16 points `ξ` of the transform is one matrix product over channels,
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

use crate::kernels::fma_available;

/// Defines `fn name(fma: bool, args..)` that runs `body` compiled for AVX2 + FMA when `fma` is
/// true (it must come from `fma_available`), and compiled for the baseline CPU otherwise: the
/// transforms are plain loops the compiler vectorizes, 8 lanes wide with AVX2 instead of 4.
macro_rules! with_avx2 {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        fn $name(fma: bool, $($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn body_avx2($($arg: $ty),*) {
                body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if fma {
                // SAFETY: `fma` comes from `fma_available`: the CPU has AVX2 and FMA.
                return unsafe { body_avx2($($arg),*) };
            }
            let _ = fma;
            body($($arg),*)
        }
    };
}

/// Points of the transform: a 4x4 patch per 2x2 output tile.
const POINTS: usize = 16;
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
        assert!(self.padding <= 2 && self.height + 2 * self.padding >= 3 && self.width + 2 * self.padding >= 3, "winograd: bad geometry {self:?}");
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
    let u = transform_filters(weight, g, filters);
    let plan = Plan::new(g);
    let mut y = vec![0f32; g.batch * g.out_channels * g.out_height() * g.out_width()];
    let out = SharedMut(y.as_mut_ptr());
    let chunk = |rows: Range<usize>, scratch: &mut Scratch, parallel: bool| {
        let tiles = rows.len() * plan.tiles_x;
        let (v, m) = scratch.buffers(g, tiles);
        transform_inputs(x, g, &plan, rows.clone(), v, parallel);
        products(v, &u, m, tiles, g.in_channels, g.out_channels, parallel);
        // SAFETY: a tile row's outputs (two rows of each output plane of its image) belong to it
        // alone, and chunks hold disjoint tile rows; `y` outlives the loop.
        unsafe { transform_outputs(m, bias, g, &plan, rows, out, parallel) };
    };
    match plan.shared {
        false => (0..plan.chunks).into_par_iter().for_each_init(Scratch::default, |scratch, c| chunk(plan.rows(c), scratch, false)),
        true => {
            let mut scratch = Scratch::default();
            (0..plan.chunks).for_each(|c| chunk(plan.rows(c), &mut scratch, true));
        }
    }
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
    let filter_len = g.in_channels * POINTS * g.out_channels;
    // dU accumulated chunk by chunk into `du` (16 matrices [out][in]).
    let chunk = |rows: Range<usize>, scratch: &mut Scratch, du: &mut [f32], parallel: bool| {
        let tiles = rows.len() * plan.tiles_x;
        let (v, dm) = scratch.buffers(g, tiles);
        transform_inputs(x, g, &plan, rows.clone(), v, parallel);
        transform_output_grads(out_grad, g, &plan, rows, dm, parallel);
        weight_products(v, dm, du, tiles, g.in_channels, g.out_channels, parallel);
    };
    let du = match plan.shared {
        false => (0..plan.chunks)
            .into_par_iter()
            .fold(
                || (Scratch::default(), vec![0f32; filter_len]),
                |(mut scratch, mut du), c| {
                    chunk(plan.rows(c), &mut scratch, &mut du, false);
                    (scratch, du)
                },
            )
            .map(|(_, du)| du)
            .reduce_with(|mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            })
            .unwrap_or_else(|| vec![0f32; filter_len]),
        true => {
            let (mut scratch, mut du) = (Scratch::default(), vec![0f32; filter_len]);
            (0..plan.chunks).for_each(|c| chunk(plan.rows(c), &mut scratch, &mut du, true));
            du
        }
    };
    untransform_filter_gradients(&du, g)
}

/// How the tile rows (one per image and pair of output rows) are cut into chunks.
struct Plan {
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
        let tiles_x = g.out_width().div_ceil(2);
        let tiles_y = g.out_height().div_ceil(2);
        let rows = g.batch * tiles_y;
        let shared = POINTS * 4 * g.in_channels * g.out_channels > SHARED_FILTER_BYTES;
        let rows_per_chunk = if shared {
            SHARED_CHUNK_TILES.div_ceil(tiles_x)
        } else {
            let fit = TASK_CHUNK_BYTES / (POINTS * 4 * (g.in_channels + g.out_channels));
            // At least two chunks per thread where there are rows enough, so both cores stay busy.
            let per_thread = rows.div_ceil(2 * rayon::current_num_threads());
            (fit / tiles_x).clamp(1, per_thread.max(1))
        };
        let rows_per_chunk = rows_per_chunk.clamp(1, rows.max(1));
        Plan { tiles_x, tiles_y, rows, rows_per_chunk, chunks: rows.div_ceil(rows_per_chunk), shared }
    }

    /// Global tile rows of chunk `chunk` (row `r` is image `r / tiles_y`, tile row `r % tiles_y`).
    fn rows(&self, chunk: usize) -> Range<usize> {
        let start = chunk * self.rows_per_chunk;
        start..(start + self.rows_per_chunk).min(self.rows)
    }

    /// `(image, tile row)` of global tile row `row`.
    fn locate(&self, row: usize) -> (usize, usize) {
        (row / self.tiles_y, row % self.tiles_y)
    }
}

/// A task's transformed tiles `[channel][ξ][tile]` of the inputs (V) and of the products or output
/// gradients (M, dM), reused across its chunks.
#[derive(Default)]
struct Scratch {
    v: Vec<f32>,
    m: Vec<f32>,
}

impl Scratch {
    fn buffers(&mut self, g: &Geometry, tiles: usize) -> (&mut [f32], &mut [f32]) {
        self.v.resize(POINTS * g.in_channels * tiles, 0.0);
        self.m.resize(POINTS * g.out_channels * tiles, 0.0);
        (&mut self.v[..POINTS * g.in_channels * tiles], &mut self.m[..POINTS * g.out_channels * tiles])
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

/// `f(i, block i)` for the `len`-long blocks of `data`, on all threads or on this one.
fn each_block(parallel: bool, data: &mut [f32], len: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    match parallel {
        true => data.par_chunks_mut(len).enumerate().for_each(|(i, block)| f(i, block)),
        false => data.chunks_mut(len).enumerate().for_each(|(i, block)| f(i, block)),
    }
}

/// `f(i)` for `i` in `0..n`, on all threads or on this one.
fn each_index(parallel: bool, n: usize, f: impl Fn(usize) + Sync + Send) {
    match parallel {
        true => (0..n).into_par_iter().for_each(f),
        false => (0..n).for_each(f),
    }
}

/// The 16 matrices `U[ξ]` (`in` x `out`) of the transformed filters, one after the other; each
/// stored in the order its source `weight` is, so that both the transform and its reads are
/// sequential.
struct TransformedFilters {
    values: Vec<f32>,
    /// Strides between consecutive inputs and consecutive outputs in a matrix.
    in_stride: usize,
    out_stride: usize,
}

/// `U = G f Gᵀ` of every filter `f`.
fn transform_filters(weight: &[f32], g: &Geometry, filters: Filters) -> TransformedFilters {
    let (ins, outs) = (g.in_channels, g.out_channels);
    // `weight`'s leading dimension, over which the work is split, and the other.
    let (major, minor) = match filters {
        Filters::AsGiven => (outs, ins),
        Filters::Transposed => (ins, outs),
    };
    let mut values = vec![0f32; POINTS * ins * outs];
    let matrix = ins * outs;
    let target = SharedMut(values.as_mut_ptr());
    (0..major).into_par_iter().for_each(|a_major| {
        for a_minor in 0..minor {
            let filter: &[f32; 9] = weight[(a_major * minor + a_minor) * 9..][..9].try_into().unwrap();
            let mut filter = *filter;
            if filters == Filters::Transposed {
                filter.reverse(); // rotated by 180°
            }
            for (point, value) in g_f_gt(&filter).into_iter().enumerate() {
                // SAFETY: inside `values`, and task `a_major` alone writes its row of each matrix.
                unsafe { *target.get().add(point * matrix + a_major * minor + a_minor) = value };
            }
        }
    });
    match filters {
        Filters::AsGiven => TransformedFilters { values, in_stride: 1, out_stride: ins },
        Filters::Transposed => TransformedFilters { values, in_stride: outs, out_stride: 1 },
    }
}

/// `dg = Gᵀ dU G` of every filter from `du` (16 matrices `[out][in]`): `[out][in][3][3]`.
fn untransform_filter_gradients(du: &[f32], g: &Geometry) -> Vec<f32> {
    let (ins, outs) = (g.in_channels, g.out_channels);
    let mut dg = vec![0f32; outs * ins * 9];
    dg.par_chunks_mut(ins * 9).enumerate().for_each(|(o, dg)| {
        for i in 0..ins {
            let du: [f32; 16] = std::array::from_fn(|point| du[(point * outs + o) * ins + i]);
            dg[i * 9..][..9].copy_from_slice(&gt_d_g(&du));
        }
    });
    dg
}

/// `G f Gᵀ` of a 3x3 filter, both row-major, with G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1].
#[inline(always)]
fn g_f_gt(f: &[f32; 9]) -> [f32; 16] {
    let g = |a: f32, b: f32, c: f32| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
    let columns = [g(f[0], f[3], f[6]), g(f[1], f[4], f[7]), g(f[2], f[5], f[8])];
    let mut u = [0f32; 16];
    for r in 0..4 {
        u[4 * r..][..4].copy_from_slice(&g(columns[0][r], columns[1][r], columns[2][r]));
    }
    u
}

/// `Gᵀ d G` of a 4x4 matrix, both row-major: the 3x3 filter gradient from its transform's.
#[inline(always)]
fn gt_d_g(d: &[f32; 16]) -> [f32; 9] {
    // Gᵀ = [1 ½ ½ 0; 0 ½ -½ 0; 0 ½ ½ 1] on a 4-vector.
    let gt = |a: f32, b: f32, c: f32, e: f32| [a + 0.5 * (b + c), 0.5 * (b - c), 0.5 * (b + c) + e];
    let columns = [gt(d[0], d[4], d[8], d[12]), gt(d[1], d[5], d[9], d[13]), gt(d[2], d[6], d[10], d[14]), gt(d[3], d[7], d[11], d[15])];
    let mut f = [0f32; 9];
    for a in 0..3 {
        f[3 * a..][..3].copy_from_slice(&gt(columns[0][a], columns[1][a], columns[2][a], columns[3][a]));
    }
    f
}

/// `V = Bᵀ d B` of the tiles of `rows` into `v` `[in][ξ][tile]`.
fn transform_inputs(x: &[f32], g: &Geometry, plan: &Plan, rows: Range<usize>, v: &mut [f32], parallel: bool) {
    let fma = fma_available();
    let tiles = rows.len() * plan.tiles_x;
    each_block(parallel, v, POINTS * tiles, |c, v| input_channel(fma, x, g, plan, rows.clone(), c, v));
}

with_avx2! {
    /// [`transform_inputs`] of input channel `c` into its block `v` `[ξ][tile]`.
    fn input_channel(x: &[f32], g: &Geometry, plan: &Plan, rows: Range<usize>, c: usize, v: &mut [f32]) {
        let tiles = rows.len() * plan.tiles_x;
        let width = plan.tiles_x + 1;
            // The four padded input rows under a tile row, even and odd columns apart so that the
            // combinations below read contiguous memory, then their vertical combinations:
            // `[row][parity][width]` each.
            let mut patch = vec![0f32; 16 * width];
            let (columns, combined) = patch.split_at_mut(8 * width);
            for (local, row) in rows.clone().enumerate() {
                let (image, tile_row) = plan.locate(row);
                let plane = &x[(image * g.in_channels + c) * g.height * g.width..][..g.height * g.width];
                columns.fill(0.0);
                for i in 0..4 {
                    let y = (2 * tile_row + i) as isize - g.padding as isize;
                    if y < 0 || y >= g.height as isize {
                        continue;
                    }
                    let (even, odd) = columns[2 * i * width..][..2 * width].split_at_mut(width);
                    split_columns(&plane[y as usize * g.width..][..g.width], g.padding, even, odd);
                }
                // Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1] down the columns ...
                for parity in 0..2 {
                    let d = |i: usize| &columns[(2 * i + parity) * width..][..width];
                    let (d0, d1, d2, d3) = (d(0), d(1), d(2), d(3));
                    let (t0, rest) = combined[parity * 4 * width..][..4 * width].split_at_mut(width);
                    let (t1, rest) = rest.split_at_mut(width);
                    let (t2, t3) = rest.split_at_mut(width);
                    for t in 0..width {
                        t0[t] = d0[t] - d2[t];
                        t1[t] = d1[t] + d2[t];
                        t2[t] = d2[t] - d1[t];
                        t3[t] = d1[t] - d3[t];
                    }
                }
                // ... then along each combined row: columns 2t..2t+3 are even[t], odd[t], even[t+1], odd[t+1].
                let n = plan.tiles_x;
                for k in 0..4 {
                    let (even, odd) = (&combined[k * width..][..width], &combined[(4 + k) * width..][..width]);
                    let (e0, e1, o0, o1) = (&even[..n], &even[1..], &odd[..n], &odd[1..]);
                    let first = 4 * k * tiles + local * n;
                    v[first..][..n].iter_mut().enumerate().for_each(|(t, v)| *v = e0[t] - e1[t]);
                    v[first + tiles..][..n].iter_mut().enumerate().for_each(|(t, v)| *v = o0[t] + e1[t]);
                    v[first + 2 * tiles..][..n].iter_mut().enumerate().for_each(|(t, v)| *v = e1[t] - o0[t]);
                    v[first + 3 * tiles..][..n].iter_mut().enumerate().for_each(|(t, v)| *v = o0[t] - o1[t]);
                }
            }
    }
}

/// Writes the values of `source`, placed from column `offset` on, to `even` and `odd` by the
/// parity of their column (column `c` goes to index `c / 2`).
#[inline(always)]
fn split_columns(source: &[f32], offset: usize, even: &mut [f32], odd: &mut [f32]) {
    let (mut source, mut start) = (source, offset / 2);
    if offset % 2 == 1 {
        let Some((&first, rest)) = source.split_first() else {
            return;
        };
        odd[start] = first;
        (source, start) = (rest, start + 1);
    }
    let pairs = source.chunks_exact(2);
    if let [last] = pairs.remainder() {
        even[start + source.len() / 2] = *last;
    }
    let count = source.len() / 2;
    let (even, odd) = (&mut even[start..][..count], &mut odd[start..][..count]);
    for ((pair, even), odd) in pairs.zip(even).zip(odd) {
        (*even, *odd) = (pair[0], pair[1]);
    }
}

/// `dM = A dY Aᵀ` of the output-gradient tiles of `rows` (zero beyond the output's edge) into
/// `dm` `[out][ξ][tile]`.
fn transform_output_grads(out_grad: &[f32], g: &Geometry, plan: &Plan, rows: Range<usize>, dm: &mut [f32], parallel: bool) {
    let fma = fma_available();
    let tiles = rows.len() * plan.tiles_x;
    each_block(parallel, dm, POINTS * tiles, |o, dm| output_grad_channel(fma, out_grad, g, plan, rows.clone(), o, dm));
}

with_avx2! {
    /// [`transform_output_grads`] of output channel `o` into its block `dm` `[ξ][tile]`.
    fn output_grad_channel(out_grad: &[f32], g: &Geometry, plan: &Plan, rows: Range<usize>, o: usize, dm: &mut [f32]) {
        let tiles = rows.len() * plan.tiles_x;
        let (out_height, out_width, n) = (g.out_height(), g.out_width(), plan.tiles_x);
            // The two output-gradient rows of a tile row, even and odd columns apart: `[row][parity][n]`.
            let mut columns = vec![0f32; 4 * n];
            let mut rows_of_a_dy = vec![0f32; 2 * n];
            for (local, row) in rows.clone().enumerate() {
                let (image, tile_row) = plan.locate(row);
                let plane = &out_grad[(image * g.out_channels + o) * out_height * out_width..][..out_height * out_width];
                columns.fill(0.0);
                for r in 0..2 {
                    let y = 2 * tile_row + r;
                    if y >= out_height {
                        continue;
                    }
                    let (even, odd) = columns[2 * r * n..][..2 * n].split_at_mut(n);
                    split_columns(&plane[y * out_width..][..out_width], 0, even, odd);
                }
                // A = [1 0; 1 1; 1 -1; 0 -1] on both sides: row i of A dY combines the two rows, and
                // entry s of each of its tiles the tile's two columns, the same way.
                let (top, bottom) = columns.split_at(2 * n);
                for i in 0..4 {
                    let (even, odd) = rows_of_a_dy.split_at_mut(n);
                    a_combination(i, &top[..n], &bottom[..n], even);
                    a_combination(i, &top[n..], &bottom[n..], odd);
                    for s in 0..4 {
                        a_combination(s, even, odd, &mut dm[(4 * i + s) * tiles + local * n..][..n]);
                    }
                }
            }
    }
}

/// Row `i` of `A [a; b]` with `A = [1 0; 1 1; 1 -1; 0 -1]`, element by element.
#[inline(always)]
fn a_combination(i: usize, a: &[f32], b: &[f32], out: &mut [f32]) {
    let pairs = out.iter_mut().zip(a.iter().zip(b));
    match i {
        0 => pairs.for_each(|(out, (a, _))| *out = *a),
        1 => pairs.for_each(|(out, (a, b))| *out = a + b),
        2 => pairs.for_each(|(out, (a, b))| *out = a - b),
        _ => pairs.for_each(|(out, (_, b))| *out = -b),
    }
}

/// `M[out][ξ][tile] = Σ_in V[in][ξ][tile] U[ξ][in, out]`, one product per point.
fn products(v: &[f32], u: &TransformedFilters, m: &mut [f32], tiles: usize, ins: usize, outs: usize, parallel: bool) {
    let m_ptr = SharedMut(m.as_mut_ptr());
    let stride = (POINTS * tiles) as isize;
    each_index(parallel, POINTS, |point| {
        // SAFETY: v is [ins][16][tiles], u 16 matrices of ins x outs, m [outs][16][tiles]: the
        // strides stay inside them, and point ξ writes only m[..][ξ][..].
        unsafe {
            gemm::gemm(
                tiles,
                outs,
                ins,
                m_ptr.get().add(point * tiles),
                stride,
                1,
                false,
                v.as_ptr().add(point * tiles),
                stride,
                1,
                u.values.as_ptr().add(point * ins * outs),
                u.out_stride as isize,
                u.in_stride as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    });
}

/// `dU[ξ][out][in] += Σ_tile V[in][ξ][tile] dM[out][ξ][tile]`, one product per point.
fn weight_products(v: &[f32], dm: &[f32], du: &mut [f32], tiles: usize, ins: usize, outs: usize, parallel: bool) {
    let du_ptr = SharedMut(du.as_mut_ptr());
    let stride = (POINTS * tiles) as isize;
    each_index(parallel, POINTS, |point| {
        // SAFETY: v is [ins][16][tiles], dm [outs][16][tiles], du [16][outs][ins]: the strides
        // stay inside them, and point ξ writes only du[ξ].
        unsafe {
            gemm::gemm(
                ins,
                outs,
                tiles,
                du_ptr.get().add(point * outs * ins),
                ins as isize,
                1,
                true,
                v.as_ptr().add(point * tiles),
                1,
                stride,
                dm.as_ptr().add(point * tiles),
                stride,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
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
unsafe fn transform_outputs(m: &[f32], bias: Option<&[f32]>, g: &Geometry, plan: &Plan, rows: Range<usize>, out: SharedMut, parallel: bool) {
    let fma = fma_available();
    let tiles = rows.len() * plan.tiles_x;
    let (out_height, out_width) = (g.out_height(), g.out_width());
    each_index(parallel, g.out_channels, |o| {
        let m = &m[o * POINTS * tiles..][..POINTS * tiles];
        let bias = bias.map_or(0.0, |b| b[o]);
        let mut combined = vec![0f32; 8 * plan.tiles_x];
        for (local, row) in rows.clone().enumerate() {
            let (image, tile_row) = plan.locate(row);
            let y = 2 * tile_row;
            let rows_here = (out_height - y).min(2);
            // SAFETY: rows y.. of plane (image, o) are inside the output, and only this call writes
            // them (the caller's guarantee, and one `o` per task).
            let target = unsafe {
                let plane = (image * g.out_channels + o) * out_height * out_width;
                std::slice::from_raw_parts_mut(out.get().add(plane + y * out_width), rows_here * out_width)
            };
            output_tile_row(fma, m, tiles, local * plan.tiles_x, bias, target, out_width, &mut combined);
        }
    });
}

with_avx2! {
    /// `Aᵀ M A + bias` of the `combined.len() / 8` tiles from `m[ξ * tiles + first..]` into `target`
    /// (one or two output rows of `out_width`).
    fn output_tile_row(m: &[f32], tiles: usize, first: usize, bias: f32, target: &mut [f32], out_width: usize, combined: &mut [f32]) {
        let n = combined.len() / 8;
        let point = |p: usize| &m[p * tiles + first..][..n];
        // Aᵀ = [1 1 1 0; 0 1 -1 -1] down the columns: s0j = m0j + m1j + m2j, s1j = m1j - m2j - m3j ...
        let (top, bottom) = combined.split_at_mut(4 * n);
        for j in 0..4 {
            let (m0, m1, m2, m3) = (point(j), point(4 + j), point(8 + j), point(12 + j));
            let (top, bottom) = (&mut top[j * n..][..n], &mut bottom[j * n..][..n]);
            for t in 0..n {
                top[t] = m0[t] + m1[t] + m2[t];
                bottom[t] = m1[t] - m2[t] - m3[t];
            }
        }
        // ... then along the rows, into the output rows.
        for (s, target) in [&*top, &*bottom].into_iter().zip(target.chunks_mut(out_width)) {
            let (s0, s1, s2, s3) = (&s[..n], &s[n..2 * n], &s[2 * n..3 * n], &s[3 * n..]);
            for (t, pair) in target.chunks_mut(2).enumerate() {
                pair[0] = s0[t] + s1[t] + s2[t] + bias;
                if let Some(second) = pair.get_mut(1) {
                    *second = s1[t] - s2[t] - s3[t] + bias;
                }
            }
        }
    }
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

    /// Direct definition, accumulated in f64: y[n,o,i,j] = b[o] + Σ w[o,c,a,b] x[n,c,i+a-p,j+b-p],
    /// and the gradients dx[n,c,i+a-p,j+b-p] += w[o,c,a,b] dy[n,o,i,j], dw[o,c,a,b] += x[..] dy[..].
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

    fn assert_close(ours: &[f32], reference: &[f32], what: &str) {
        assert_eq!(ours.len(), reference.len(), "{what}: length");
        for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
            assert!((a - b).abs() <= 1e-4 + 1e-4 * b.abs(), "{what}[{i}]: {a} vs {b}");
        }
    }

    #[test]
    fn forward_and_gradients_equal_the_direct_definition() {
        // Odd and even sizes (partial tiles at the right and bottom edges), every padding, more
        // tile rows than one chunk holds, and filters large enough for the threads to share chunks.
        for (batch, cin, cout, height, width) in
            [(1, 1, 1, 3, 3), (2, 3, 5, 7, 9), (3, 4, 2, 8, 8), (1, 2, 3, 5, 12), (5, 3, 4, 33, 6), (2, 200, 180, 5, 4)]
        {
            for padding in 0..=2 {
                let g = Geometry { batch, in_channels: cin, out_channels: cout, height, width, padding };
                let x = values(batch * cin * height * width, 1);
                let w = values(cout * cin * 9, 2);
                let bias = values(cout, 3);
                let dy = values(batch * cout * g.out_height() * g.out_width(), 4);
                let [y, dx, dw] = reference(&x, &w, &bias, &dy, &g);
                assert!(Plan::new(&g).shared == (cin > 100));
                assert_close(&forward(&x, &w, Some(&bias), &g, Filters::AsGiven), &y, &format!("y {g:?}"));
                assert_close(&input_gradient(&dy, &w, &g), &dx, &format!("dx {g:?}"));
                assert_close(&weight_gradient(&x, &dy, &g), &dw, &format!("dw {g:?}"));
            }
        }
    }
}
