//! The matrices of F(2x2, 3x3) and F(4x4, 3x3) (Lavin & Gray, 2015), applied to many tiles at
//! once: each input row is a run of `n` values (one per tile, or per filter), and each output row
//! is a fixed combination of the input rows. The combinations are written out by hand with their
//! common subexpressions, 8 lanes at a time in registers, so that every input value is read once
//! and every output value written once (applying a sparse matrix row by row read and wrote each
//! output once per term; those transforms were 14% of a `resnet18_cifar` step at batch 32).
//!
//! Input patches and output-gradient tiles ([`Transform::tiles_to_points`]) and output blocks
//! ([`Transform::points_to_tiles`]) go eight tiles at a time from their rows to their points (or
//! back) in registers, transposed with AVX2 where the CPU has it.
//!
//! The matrices, for points 0, ±1 (and infinity) for F(2x2), 0, ±1, ±2 (and infinity) for
//! F(4x4), are in the tests below, which check every combination against them.

use std::ops::{Add, Mul, Sub};

/// One F(m x m, 3x3) transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    F2,
    F4,
}

/// Which of a transform's matrices to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matrix {
    /// `Bᵀ` (alpha x alpha): input patch to transform points.
    Bt,
    /// `A` (alpha x m): output-gradient tile to transform points.
    A,
    /// `G` (alpha x 3): filter to transform points.
    G,
    /// `Gᵀ` (3 x alpha): transform-point gradient to filter gradient.
    Gt,
}

impl Transform {
    /// Outputs per tile side.
    pub const fn m(self) -> usize {
        match self {
            Transform::F2 => 2,
            Transform::F4 => 4,
        }
    }

    /// Inputs per tile side, m + 2.
    pub const fn alpha(self) -> usize {
        self.m() + 2
    }

    pub const fn points(self) -> usize {
        self.alpha() * self.alpha()
    }

    /// Values each zero-padded row given to [`tiles_to_points`](Transform::tiles_to_points)
    /// holds at least, for `n` tiles per row: their columns and whole registers read past the last.
    pub const fn row_len(self, n: usize) -> usize {
        self.m() * n + LANES
    }

    /// The transform points `M P Mᵀ` of a chunk's `tiles` tiles, for `M` = `matrix` (`Bᵀ` on input
    /// patches, `A` on output-gradient tiles, whose `i` input rows and columns are the patch's).
    /// Row `r` of tiles (tiles `r * n ..`) reads rows `rows[(r * i + row) * row_len..][..row_len]`,
    /// zero padded, at least [`row_len`](Transform::row_len) long; tile `tx`'s patch starts at
    /// their column `m * tx`. Point `(a, b)` of tile `f` goes to `out[(a * o + b) * stride + f]`.
    ///
    /// Eight tiles at a time are gathered (an 8x8 transpose with AVX2) and transformed in
    /// registers, along their rows and then down their columns, so that only the points are
    /// written (gathering the patches into memory first and transforming them in two more passes
    /// wrote each value three times).
    #[inline(always)]
    pub fn tiles_to_points(
        self,
        matrix: Matrix,
        (rows, row_len): (&[f32], usize),
        n: usize,
        tiles: usize,
        (out, stride): (&mut [f32], usize),
    ) {
        let source = Patches { rows, row_len, n, m: self.m() };
        #[cfg(target_arch = "x86_64")]
        if tiles >= LANES && std::arch::is_x86_feature_detected!("avx2") {
            return self.points_via::<Ymm>(matrix, source, tiles, (out, stride));
        }
        self.points_via::<Lanes>(matrix, source, tiles, (out, stride))
    }

    /// [`tiles_to_points`](Transform::tiles_to_points) through `V` (`Ymm` needs eight tiles or more).
    #[inline(always)]
    fn points_via<V: Vector>(self, matrix: Matrix, source: Patches, tiles: usize, (out, stride): (&mut [f32], usize))
    where
        f32: Mul<V, Output = V>,
    {
        match (self, matrix) {
            (Transform::F2, Matrix::Bt) => to_points::<V, 4, 4, F2Bt>(source, tiles, out, stride),
            (Transform::F2, Matrix::A) => to_points::<V, 2, 4, F2A>(source, tiles, out, stride),
            (Transform::F4, Matrix::Bt) => to_points::<V, 6, 6, F4Bt>(source, tiles, out, stride),
            (Transform::F4, Matrix::A) => to_points::<V, 4, 6, F4A>(source, tiles, out, stride),
            _ => panic!("winograd: {matrix:?} does not apply to tiles"),
        }
    }

    /// The output blocks `Aᵀ M A + bias` of a chunk's `tiles` tiles from their points, point `(a,
    /// b)` of tile `f` being `points[(a * alpha + b) * stride + f]`. Row `r` of tile `f`'s block
    /// goes to `out[place(f).offset + r * width..]`, its first `place(f).columns` values, for its
    /// first `place(f).rows` rows. Eight tiles at a time, in registers as
    /// [`tiles_to_points`](Transform::tiles_to_points).
    ///
    /// # Safety
    ///
    /// Those places of `out` are writable, and nothing else reads or writes them meanwhile.
    #[inline(always)]
    pub unsafe fn points_to_tiles(
        self,
        (points, stride): (&[f32], usize),
        tiles: usize,
        place: impl Fn(usize) -> Place,
        (out, width): (*mut f32, usize),
        bias: f32,
    ) {
        let target = Blocks { out, width, bias };
        #[cfg(target_arch = "x86_64")]
        if tiles >= LANES && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the caller's guarantee.
            return unsafe { self.outputs_via::<Ymm>((points, stride), tiles, place, target) };
        }
        // SAFETY: the caller's guarantee.
        unsafe { self.outputs_via::<Lanes>((points, stride), tiles, place, target) }
    }

    /// [`points_to_tiles`](Transform::points_to_tiles) through `V` (`Ymm` needs eight tiles or
    /// more).
    ///
    /// # Safety
    ///
    /// As [`points_to_tiles`](Transform::points_to_tiles).
    #[inline(always)]
    unsafe fn outputs_via<V: Vector>(self, (points, stride): (&[f32], usize), tiles: usize, place: impl Fn(usize) -> Place, target: Blocks)
    where
        f32: Mul<V, Output = V>,
    {
        // SAFETY: the caller's guarantee.
        unsafe {
            match self {
                Transform::F2 => from_points::<V, 4, 2, F2At>(points, stride, tiles, place, target),
                Transform::F4 => from_points::<V, 6, 4, F4At>(points, stride, tiles, place, target),
            }
        }
    }

    /// `(rows in, rows out)` of `matrix`.
    const fn dims(self, matrix: Matrix) -> (usize, usize) {
        let (m, alpha) = (self.m(), self.alpha());
        match matrix {
            Matrix::Bt => (alpha, alpha),
            Matrix::A => (m, alpha),
            Matrix::G => (3, alpha),
            Matrix::Gt => (alpha, 3),
        }
    }

    /// `Y = M X Mᵀ` for `M` = `matrix` (`o x i`) of `n` lanes at once: `x` is `[i][i][n]`, `y`
    /// `[o][o][n]`, and `between` (`[o][i][n]`) takes `M X`, down the columns; then each of its rows
    /// times `Mᵀ`.
    #[inline(always)]
    pub fn apply_2d(self, matrix: Matrix, x: &[f32], between: &mut [f32], y: &mut [f32], n: usize) {
        let (ins, outs) = self.dims(matrix);
        for column in 0..ins {
            self.apply(matrix, (&x[column * n..], ins * n), (&mut between[column * n..], ins * n), n);
        }
        for row in 0..outs {
            self.apply(matrix, (&between[row * ins * n..], n), (&mut y[row * outs * n..], n), n);
        }
    }

    /// `output row r = Σ_i matrix[r][i] · input row i` for the `n` lanes of each row, where input
    /// row `i` is `input[i * in_stride..][..n]` and output row `r` is `output[r * out_stride..][..n]`.
    /// Inline, so that it compiles for the caller's target features (AVX2 in `with_avx2!` bodies).
    #[inline(always)]
    pub fn apply(self, matrix: Matrix, (input, in_stride): (&[f32], usize), (output, out_stride): (&mut [f32], usize), n: usize) {
        let input = Rows { values: input, stride: in_stride };
        let output = RowsMut { values: output, stride: out_stride };
        match (self, matrix) {
            (Transform::F2, Matrix::Bt) => lanes::<_, _, F2Bt>(input, output, n),
            (Transform::F2, Matrix::A) => lanes::<_, _, F2A>(input, output, n),
            (Transform::F2, Matrix::G) => lanes::<_, _, F2G>(input, output, n),
            (Transform::F2, Matrix::Gt) => lanes::<_, _, F2Gt>(input, output, n),
            (Transform::F4, Matrix::Bt) => lanes::<_, _, F4Bt>(input, output, n),
            (Transform::F4, Matrix::A) => lanes::<_, _, F4A>(input, output, n),
            (Transform::F4, Matrix::G) => lanes::<_, _, F4G>(input, output, n),
            (Transform::F4, Matrix::Gt) => lanes::<_, _, F4Gt>(input, output, n),
        }
    }
}

/// Where one tile's output block goes: the offset of its first value, and how many of its rows
/// and columns lie inside the output.
#[derive(Debug, Clone, Copy, Default)]
pub struct Place {
    pub offset: usize,
    pub rows: usize,
    pub columns: usize,
}

/// The first tile of each group of eight of `tiles`: where the last group would be partial it
/// overlaps the one before instead (its tiles are computed twice, to the same values), so that
/// only chunks of fewer than eight tiles take a partial group.
#[inline(always)]
fn group_starts(tiles: usize) -> impl Iterator<Item = usize> {
    (0..tiles.div_ceil(LANES)).map(move |group| (group * LANES).min(tiles.saturating_sub(LANES)))
}

/// The zero-padded rows [`Transform::tiles_to_points`] reads its patches from.
#[derive(Clone, Copy)]
struct Patches<'a> {
    rows: &'a [f32],
    row_len: usize,
    n: usize,
    m: usize,
}

/// The output places [`Transform::points_to_tiles`] writes.
#[derive(Clone, Copy)]
struct Blocks {
    out: *mut f32,
    width: usize,
    bias: f32,
}

/// Eight lanes of values as the transforms combine them: [`Lanes`] anywhere, `Ymm` (one AVX
/// register) on x86-64 CPUs with AVX2. Groups of eight tiles go through `Ymm` where they can: the
/// same code on `Lanes` arrays, gathered and combined through the stack, was partly compiled to
/// scalar code.
trait Vector: Copy + Add<Output = Self> + Sub<Output = Self> {
    const ZERO: Self;

    /// The first `count` values of `values` (the other lanes zero).
    fn load(values: &[f32], count: usize) -> Self;

    /// The first `count` lanes into `values`.
    fn store(self, values: &mut [f32], count: usize);

    /// Columns `0..8` of the eight-value rows at `rows[starts[k]..]`: lane `k` of column `j` is
    /// `rows[starts[k] + j]` (for the first `count` rows; the other lanes zero).
    fn columns(rows: &[f32], starts: &[usize; LANES], count: usize) -> [Self; LANES];

    /// Row `r` of the output blocks of the tiles at `places` (the first `count`): lane `k` of
    /// `values[u]` is tile `k`'s column `u`.
    ///
    /// # Safety
    ///
    /// As [`Transform::points_to_tiles`].
    unsafe fn write_row<const M: usize>(values: &[Self; M], places: &[Place; LANES], count: usize, r: usize, target: &Blocks);
}

impl Vector for Lanes {
    const ZERO: Lanes = Lanes([0.0; LANES]);

    #[inline(always)]
    fn load(values: &[f32], count: usize) -> Lanes {
        let mut lanes = Lanes::ZERO;
        // Whole registers through a constant length: a copy of `count` values is a `memcpy` call.
        match count {
            LANES => lanes.0.copy_from_slice(&values[..LANES]),
            _ => lanes.0.iter_mut().zip(&values[..count]).for_each(|(lane, &value)| *lane = value),
        }
        lanes
    }

    #[inline(always)]
    fn store(self, values: &mut [f32], count: usize) {
        match count {
            LANES => values[..LANES].copy_from_slice(&self.0),
            _ => values[..count].iter_mut().zip(self.0).for_each(|(value, lane)| *value = lane),
        }
    }

    #[inline(always)]
    fn columns(rows: &[f32], starts: &[usize; LANES], count: usize) -> [Lanes; LANES] {
        let mut columns = [Lanes::ZERO; LANES];
        for (k, &start) in starts.iter().enumerate().take(count) {
            for (column, &value) in columns.iter_mut().zip(&rows[start..][..LANES]) {
                column.0[k] = value;
            }
        }
        columns
    }

    #[inline(always)]
    unsafe fn write_row<const M: usize>(values: &[Lanes; M], places: &[Place; LANES], count: usize, r: usize, target: &Blocks) {
        for (k, place) in places.iter().enumerate().take(count) {
            if r >= place.rows {
                continue;
            }
            for (u, values) in values.iter().enumerate().take(place.columns) {
                // SAFETY: the caller's guarantee.
                unsafe { *target.out.add(place.offset + r * target.width + u) = values.0[k] + target.bias };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
use ymm::Ymm;

#[cfg(target_arch = "x86_64")]
mod ymm {
    use std::arch::x86_64::*;
    use std::ops::{Add, Mul, Sub};

    use super::{Blocks, LANES, Lanes, Place, Vector};
    use crate::kernels::transpose_8x8;

    /// One AVX register of eight lanes. Values exist only where the CPU has AVX2 (made by
    /// [`Ymm::columns`] and [`Ymm::load`], which the transforms call after checking), which makes
    /// the intrinsics below sound. They are inlined where the code using them is compiled for
    /// AVX2 (the `with_avx2!` bodies).
    #[derive(Clone, Copy)]
    pub struct Ymm(__m256);

    impl Add for Ymm {
        type Output = Ymm;
        #[inline(always)]
        fn add(self, other: Ymm) -> Ymm {
            // SAFETY: see `Ymm`.
            Ymm(unsafe { _mm256_add_ps(self.0, other.0) })
        }
    }

    impl Sub for Ymm {
        type Output = Ymm;
        #[inline(always)]
        fn sub(self, other: Ymm) -> Ymm {
            // SAFETY: see `Ymm`.
            Ymm(unsafe { _mm256_sub_ps(self.0, other.0) })
        }
    }

    impl Mul<Ymm> for f32 {
        type Output = Ymm;
        #[inline(always)]
        fn mul(self, lanes: Ymm) -> Ymm {
            // SAFETY: see `Ymm`.
            Ymm(unsafe { _mm256_mul_ps(_mm256_set1_ps(self), lanes.0) })
        }
    }

    impl Vector for Ymm {
        // SAFETY: all bits zero is 0.0 in every lane.
        const ZERO: Ymm = Ymm(unsafe { std::mem::transmute::<[f32; LANES], __m256>([0.0; LANES]) });

        /// Eight values: `count` must be 8.
        #[inline(always)]
        fn load(values: &[f32], count: usize) -> Ymm {
            assert!(count == LANES && values.len() >= LANES);
            // SAFETY: eight values are there; see `Ymm`.
            Ymm(unsafe { _mm256_loadu_ps(values.as_ptr()) })
        }

        /// Eight values: `count` must be 8.
        #[inline(always)]
        fn store(self, values: &mut [f32], count: usize) {
            assert!(count == LANES && values.len() >= LANES);
            // SAFETY: eight values are there; see `Ymm`.
            unsafe { _mm256_storeu_ps(values.as_mut_ptr(), self.0) }
        }

        /// An 8x8 transpose: `count` must be 8.
        #[inline(always)]
        fn columns(rows: &[f32], starts: &[usize; LANES], count: usize) -> [Ymm; LANES] {
            assert!(count == LANES && starts.iter().all(|&start| start + LANES <= rows.len()), "winograd: patch rows out of bounds");
            let row = |k: usize| rows[starts[k]..].as_ptr();
            // SAFETY: each row's eight values are inside `rows`; see `Ymm`.
            unsafe {
                let (r0, r1) = (_mm256_loadu_ps(row(0)), _mm256_loadu_ps(row(1)));
                let (r2, r3) = (_mm256_loadu_ps(row(2)), _mm256_loadu_ps(row(3)));
                let (r4, r5) = (_mm256_loadu_ps(row(4)), _mm256_loadu_ps(row(5)));
                let (r6, r7) = (_mm256_loadu_ps(row(6)), _mm256_loadu_ps(row(7)));
                transpose_8x8([r0, r1, r2, r3, r4, r5, r6, r7]).map(Ymm)
            }
        }

        /// F(4x4)'s rows of four through a 4x8 transpose, one 4-value store per tile; others as
        /// `Lanes` do.
        #[inline(always)]
        unsafe fn write_row<const M: usize>(values: &[Ymm; M], places: &[Place; LANES], count: usize, r: usize, target: &Blocks) {
            if M != 4 {
                let mut lanes = [Lanes::ZERO; M];
                for (lanes, values) in lanes.iter_mut().zip(values) {
                    values.store(&mut lanes.0, LANES);
                }
                // SAFETY: the caller's guarantee.
                return unsafe { Lanes::write_row(&lanes, places, count, r, target) };
            }
            // SAFETY: see `Ymm`.
            unsafe {
                let (a, b, c, d) = (values[0].0, values[1].0, values[2].0, values[3].0);
                let (ab_low, ab_high) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
                let (cd_low, cd_high) = (_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
                // Blocks (0, 4), (1, 5), (2, 6), (3, 7), one per 128-bit half.
                let pairs = [
                    _mm256_shuffle_ps::<0x44>(ab_low, cd_low),
                    _mm256_shuffle_ps::<0xEE>(ab_low, cd_low),
                    _mm256_shuffle_ps::<0x44>(ab_high, cd_high),
                    _mm256_shuffle_ps::<0xEE>(ab_high, cd_high),
                ];
                let bias = _mm_set1_ps(target.bias);
                for (k, place) in places.iter().enumerate().take(count) {
                    if r >= place.rows {
                        continue;
                    }
                    let pair = pairs[k % 4];
                    let block = _mm_add_ps(if k < 4 { _mm256_castps256_ps128(pair) } else { _mm256_extractf128_ps::<1>(pair) }, bias);
                    // The caller's guarantee: the block's row r, its first `columns` values.
                    let out = target.out.add(place.offset + r * target.width);
                    match place.columns {
                        4 => _mm_storeu_ps(out, block),
                        columns => {
                            let mut values = [0.0; 4];
                            _mm_storeu_ps(values.as_mut_ptr(), block);
                            std::ptr::copy_nonoverlapping(values.as_ptr(), out, columns);
                        }
                    }
                }
            }
        }
    }
}

/// [`Transform::tiles_to_points`] with `matrix` as `C` (`I` rows in, `O` out).
#[inline(always)]
fn to_points<V: Vector, const I: usize, const O: usize, C: Combinations<I, O>>(
    source: Patches,
    tiles: usize,
    out: &mut [f32],
    stride: usize,
) where
    f32: Mul<V, Output = V>,
{
    assert!(source.row_len >= source.m * source.n + LANES, "winograd: patch rows too short");
    assert!((O * O - 1) * stride + tiles <= out.len(), "winograd: points out of bounds");
    for first in group_starts(tiles) {
        let count = LANES.min(tiles);
        let mut starts = [0; LANES];
        for (k, start) in starts.iter_mut().enumerate().take(count) {
            let f = first + k;
            *start = (f / source.n * I) * source.row_len + source.m * (f % source.n);
        }
        // Each patch row combined along the row, then each column of those down the column.
        let mut across = [[V::ZERO; O]; I];
        for (i, across) in across.iter_mut().enumerate() {
            let columns = V::columns(&source.rows[i * source.row_len..], &starts, count);
            let mut row = [V::ZERO; I];
            row.copy_from_slice(&columns[..I]);
            *across = C::combine(row);
        }
        for c in 0..O {
            let mut column = [V::ZERO; I];
            for (value, across) in column.iter_mut().zip(&across) {
                *value = across[c];
            }
            for (a, point) in C::combine(column).into_iter().enumerate() {
                point.store(&mut out[(a * O + c) * stride + first..], count);
            }
        }
    }
}

/// [`Transform::points_to_tiles`] with `Aᵀ` as `C` (alpha = `I` rows in, m = `O` out).
///
/// # Safety
///
/// As [`Transform::points_to_tiles`].
#[inline(always)]
unsafe fn from_points<V: Vector, const I: usize, const O: usize, C: Combinations<I, O>>(
    points: &[f32],
    stride: usize,
    tiles: usize,
    place: impl Fn(usize) -> Place,
    target: Blocks,
) where
    f32: Mul<V, Output = V>,
{
    assert!((I * I - 1) * stride + tiles <= points.len(), "winograd: points out of bounds");
    for first in group_starts(tiles) {
        let count = LANES.min(tiles);
        // Tiles beyond `count` (in a partial group) repeat the last one's place, which is not
        // written. (Filled with defaults first, the array was a `memset` call per group.)
        let places: [Place; LANES] = std::array::from_fn(|k| place(first + k.min(count - 1)));
        // Down the columns of the points, then along each resulting row.
        let mut down = [[V::ZERO; I]; O];
        for c in 0..I {
            let mut column = [V::ZERO; I];
            for (a, value) in column.iter_mut().enumerate() {
                *value = V::load(&points[(a * I + c) * stride + first..], count);
            }
            for (row, value) in down.iter_mut().zip(C::combine(column)) {
                row[c] = value;
            }
        }
        for (r, row) in down.iter().enumerate() {
            // SAFETY: the caller's guarantee.
            unsafe { V::write_row(&C::combine(*row), &places, count, r, &target) };
        }
    }
}

struct Rows<'a> {
    values: &'a [f32],
    stride: usize,
}

struct RowsMut<'a> {
    values: &'a mut [f32],
    stride: usize,
}

const LANES: usize = 8;

/// Eight lanes of a row, one AVX2 register (two SSE ones): fixed-size array arithmetic that the
/// compiler keeps in registers.
#[derive(Clone, Copy)]
struct Lanes([f32; LANES]);

impl Add for Lanes {
    type Output = Lanes;
    #[inline(always)]
    fn add(mut self, other: Lanes) -> Lanes {
        self.0.iter_mut().zip(other.0).for_each(|(a, b)| *a += b);
        self
    }
}

impl Sub for Lanes {
    type Output = Lanes;
    #[inline(always)]
    fn sub(mut self, other: Lanes) -> Lanes {
        self.0.iter_mut().zip(other.0).for_each(|(a, b)| *a -= b);
        self
    }
}

impl Mul<Lanes> for f32 {
    type Output = Lanes;
    #[inline(always)]
    fn mul(self, mut lanes: Lanes) -> Lanes {
        lanes.0.iter_mut().for_each(|a| *a *= self);
        lanes
    }
}

/// One matrix as its combinations of `I` input rows into `O` output rows. (A trait rather than a
/// function argument: a call through `Fn` was not inlined, so it ran without AVX2 and with the
/// rows in memory.)
trait Combinations<const I: usize, const O: usize> {
    fn combine<V: Vector>(rows: [V; I]) -> [V; O]
    where
        f32: Mul<V, Output = V>;
}

/// `C` applied lane by lane to the `I` input rows, giving the `O` output rows.
#[inline(always)]
fn lanes<const I: usize, const O: usize, C: Combinations<I, O>>(input: Rows, output: RowsMut, n: usize) {
    assert!(I == 0 || (I - 1) * input.stride + n <= input.values.len(), "winograd transform: input rows out of bounds");
    assert!(O == 0 || (O - 1) * output.stride + n <= output.values.len(), "winograd transform: output rows out of bounds");
    let full = n - n % LANES;
    for start in (0..full).step_by(LANES) {
        // Constant-length loops over arrays, unrolled so that the rows stay in registers.
        let mut values = [Lanes([0.0; LANES]); I];
        for (i, lanes) in values.iter_mut().enumerate() {
            lanes.0.copy_from_slice(&input.values[i * input.stride + start..][..LANES]);
        }
        let results = C::combine(values);
        for (r, result) in results.iter().enumerate() {
            output.values[r * output.stride + start..][..LANES].copy_from_slice(&result.0);
        }
    }
    if full < n {
        // The last lanes, through zero-padded registers.
        let rest = n - full;
        let values = std::array::from_fn(|i| {
            let mut lanes = [0.0; LANES];
            lanes[..rest].copy_from_slice(&input.values[i * input.stride + full..][..rest]);
            Lanes(lanes)
        });
        for (r, result) in C::combine(values).iter().enumerate() {
            output.values[r * output.stride + full..][..rest].copy_from_slice(&result.0[..rest]);
        }
    }
}

struct F2Bt;

impl Combinations<4, 4> for F2Bt {
    #[inline(always)]
    fn combine<V: Vector>([d0, d1, d2, d3]: [V; 4]) -> [V; 4]
    where
        f32: Mul<V, Output = V>,
    {
        [d0 - d2, d1 + d2, d2 - d1, d1 - d3]
    }
}

struct F2At;

impl Combinations<4, 2> for F2At {
    #[inline(always)]
    fn combine<V: Vector>([m0, m1, m2, m3]: [V; 4]) -> [V; 2]
    where
        f32: Mul<V, Output = V>,
    {
        [m0 + m1 + m2, m1 - m2 - m3]
    }
}

struct F2A;

impl Combinations<2, 4> for F2A {
    #[inline(always)]
    fn combine<V: Vector>([g0, g1]: [V; 2]) -> [V; 4]
    where
        f32: Mul<V, Output = V>,
    {
        [g0, g0 + g1, g0 - g1, -1.0 * g1]
    }
}

struct F2G;

impl Combinations<3, 4> for F2G {
    #[inline(always)]
    fn combine<V: Vector>([f0, f1, f2]: [V; 3]) -> [V; 4]
    where
        f32: Mul<V, Output = V>,
    {
        let even = 0.5 * (f0 + f2);
        let odd = 0.5 * f1;
        [f0, even + odd, even - odd, f2]
    }
}

struct F2Gt;

impl Combinations<4, 3> for F2Gt {
    #[inline(always)]
    fn combine<V: Vector>([u0, u1, u2, u3]: [V; 4]) -> [V; 3]
    where
        f32: Mul<V, Output = V>,
    {
        let sum = 0.5 * (u1 + u2);
        [u0 + sum, 0.5 * (u1 - u2), sum + u3]
    }
}

struct F4Bt;

impl Combinations<6, 6> for F4Bt {
    #[inline(always)]
    fn combine<V: Vector>([d0, d1, d2, d3, d4, d5]: [V; 6]) -> [V; 6]
    where
        f32: Mul<V, Output = V>,
    {
        let (a, b) = (d4 - 4.0 * d2, d3 - 4.0 * d1);
        let (c, e) = (d4 - d2, 2.0 * (d3 - d1));
        [4.0 * d0 - 5.0 * d2 + d4, a + b, a - b, c + e, c - e, 4.0 * d1 - 5.0 * d3 + d5]
    }
}

struct F4At;

impl Combinations<6, 4> for F4At {
    #[inline(always)]
    fn combine<V: Vector>([m0, m1, m2, m3, m4, m5]: [V; 6]) -> [V; 4]
    where
        f32: Mul<V, Output = V>,
    {
        let (s12, d12, s34, d34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
        [m0 + s12 + s34, d12 + 2.0 * d34, s12 + 4.0 * s34, d12 + 8.0 * d34 + m5]
    }
}

struct F4A;

impl Combinations<4, 6> for F4A {
    #[inline(always)]
    fn combine<V: Vector>([g0, g1, g2, g3]: [V; 4]) -> [V; 6]
    where
        f32: Mul<V, Output = V>,
    {
        let (e1, o1) = (g0 + g2, g1 + g3);
        let (e2, o2) = (g0 + 4.0 * g2, 2.0 * g1 + 8.0 * g3);
        [g0, e1 + o1, e1 - o1, e2 + o2, e2 - o2, g3]
    }
}

struct F4G;

impl Combinations<3, 6> for F4G {
    #[inline(always)]
    fn combine<V: Vector>([f0, f1, f2]: [V; 3]) -> [V; 6]
    where
        f32: Mul<V, Output = V>,
    {
        let s = f0 + f2;
        let (e, o) = ((1.0 / 24.0) * f0 + (1.0 / 6.0) * f2, (1.0 / 12.0) * f1);
        [0.25 * f0, (-1.0 / 6.0) * (s + f1), (-1.0 / 6.0) * (s - f1), e + o, e - o, f2]
    }
}

struct F4Gt;

impl Combinations<6, 3> for F4Gt {
    #[inline(always)]
    fn combine<V: Vector>([u0, u1, u2, u3, u4, u5]: [V; 6]) -> [V; 3]
    where
        f32: Mul<V, Output = V>,
    {
        let (s12, d12, s34, d34) = (u1 + u2, u2 - u1, u3 + u4, u3 - u4);
        [0.25 * u0 - (1.0 / 6.0) * s12 + (1.0 / 24.0) * s34, (1.0 / 6.0) * d12 + (1.0 / 12.0) * d34, (1.0 / 6.0) * (s34 - s12) + u5]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_values as values;

    /// The matrices by definition, row by row.
    fn definition(t: Transform, matrix: Matrix) -> Vec<Vec<f64>> {
        let rows: &[&[f64]] = match (t, matrix) {
            (Transform::F2, Matrix::Bt) => &[&[1., 0., -1., 0.], &[0., 1., 1., 0.], &[0., -1., 1., 0.], &[0., 1., 0., -1.]],
            (Transform::F2, Matrix::A) => &[&[1., 0.], &[1., 1.], &[1., -1.], &[0., -1.]],
            (Transform::F2, Matrix::G) => &[&[1., 0., 0.], &[0.5, 0.5, 0.5], &[0.5, -0.5, 0.5], &[0., 0., 1.]],
            (Transform::F4, Matrix::Bt) => &[
                &[4., 0., -5., 0., 1., 0.],
                &[0., -4., -4., 1., 1., 0.],
                &[0., 4., -4., -1., 1., 0.],
                &[0., -2., -1., 2., 1., 0.],
                &[0., 2., -1., -2., 1., 0.],
                &[0., 4., 0., -5., 0., 1.],
            ],
            (Transform::F4, Matrix::A) => {
                &[&[1., 0., 0., 0.], &[1., 1., 1., 1.], &[1., -1., 1., -1.], &[1., 2., 4., 8.], &[1., -2., 4., -8.], &[0., 0., 0., 1.]]
            }
            (Transform::F4, Matrix::G) => &[
                &[1. / 4., 0., 0.],
                &[-1. / 6., -1. / 6., -1. / 6.],
                &[-1. / 6., 1. / 6., -1. / 6.],
                &[1. / 24., 1. / 12., 1. / 6.],
                &[1. / 24., -1. / 12., 1. / 6.],
                &[0., 0., 1.],
            ],
            // Gᵀ: the transpose of G.
            (t, Matrix::Gt) => return transpose(&definition(t, Matrix::G)),
        };
        rows.iter().map(|row| row.to_vec()).collect()
    }

    fn transpose(matrix: &[Vec<f64>]) -> Vec<Vec<f64>> {
        (0..matrix[0].len()).map(|c| matrix.iter().map(|row| row[c]).collect()).collect()
    }

    /// `Σ_xy left[a][x] patch(x, y) right[b][y]`.
    fn sandwich(left: &[Vec<f64>], patch: impl Fn(usize, usize) -> f64, right: &[Vec<f64>], a: usize, b: usize) -> f64 {
        let mut sum = 0.0;
        for (x, &l) in left[a].iter().enumerate() {
            for (y, &r) in right[b].iter().enumerate() {
                sum += l * patch(x, y) * r;
            }
        }
        sum
    }

    /// Tile counts per row and rows of tiles: fewer than one group, a partial last group (computed
    /// overlapping the one before), whole groups.
    const TILE_ROWS: [(usize, usize); 5] = [(1, 1), (3, 2), (5, 3), (4, 4), (9, 2)];

    #[test]
    fn tiles_to_points_equal_the_definition() {
        for t in [Transform::F2, Transform::F4] {
            for matrix in [Matrix::Bt, Matrix::A] {
                let m = definition(t, matrix);
                let (o, i) = (m.len(), m[0].len());
                for (n, tile_rows) in TILE_ROWS {
                    let (tiles, row_len) = (n * tile_rows, t.row_len(n));
                    let rows = values(tile_rows * i * row_len, 3);
                    // Gaps between the points' rows, which must stay untouched.
                    let stride = tiles + 3;
                    let check = |out: &[f32], via: &str| {
                        for f in 0..tiles {
                            let (r, tx) = (f / n, f % n);
                            let patch = |x: usize, y: usize| rows[(r * i + x) * row_len + t.m() * tx + y] as f64;
                            for (a, b) in (0..o).flat_map(|a| (0..o).map(move |b| (a, b))) {
                                let (ours, expected) = (out[(a * o + b) * stride + f], sandwich(&m, patch, &m, a, b));
                                assert!(
                                    (ours as f64 - expected).abs() < 1e-4,
                                    "{t:?} {matrix:?} {via} n {n} tile {f} point ({a}, {b}): {ours} vs {expected}"
                                );
                            }
                        }
                        assert!(
                            (0..o * o).all(|p| out[p * stride + tiles..(p + 1) * stride].iter().all(|v| v.is_nan())),
                            "{via}: wrote into a gap"
                        );
                    };
                    let source = Patches { rows: &rows, row_len, n, m: t.m() };
                    let mut out = vec![f32::NAN; o * o * stride];
                    t.points_via::<Lanes>(matrix, source, tiles, (&mut out, stride));
                    check(&out, "Lanes");
                    #[cfg(target_arch = "x86_64")]
                    if tiles >= LANES && std::arch::is_x86_feature_detected!("avx2") {
                        let mut out = vec![f32::NAN; o * o * stride];
                        t.points_via::<Ymm>(matrix, source, tiles, (&mut out, stride));
                        check(&out, "Ymm");
                    }
                }
            }
        }
    }

    #[test]
    fn points_to_tiles_equal_the_definition() {
        for t in [Transform::F2, Transform::F4] {
            let (m, alpha) = (t.m(), t.alpha());
            let at = transpose(&definition(t, Matrix::A));
            for (n, tile_rows) in TILE_ROWS {
                let tiles = n * tile_rows;
                // The output is one plane whose last tile column and row are cut short (where
                // there are two or more), bordered by a column the blocks must not reach.
                let (width, height) = (m * n - usize::from(n > 1), m * tile_rows - usize::from(tile_rows > 1));
                let stride = tiles + 2;
                let points = values(alpha * alpha * stride, 4);
                let bias = 0.25;
                let place = |f: usize| {
                    let (y, x) = (m * (f / n), m * (f % n));
                    Place { offset: y * (width + 1) + x, rows: m.min(height - y), columns: m.min(width - x) }
                };
                let check = |out: &[f32], via: &str| {
                    for f in 0..tiles {
                        let Place { offset, rows, columns } = place(f);
                        let patch = |a: usize, b: usize| points[(a * alpha + b) * stride + f] as f64;
                        for (u, v) in (0..rows).flat_map(|u| (0..columns).map(move |v| (u, v))) {
                            let (ours, expected) = (out[offset + u * (width + 1) + v], sandwich(&at, patch, &at, u, v) + bias as f64);
                            assert!(
                                (ours as f64 - expected).abs() < 1e-3,
                                "{t:?} {via} n {n} tile {f} output ({u}, {v}): {ours} vs {expected}"
                            );
                        }
                    }
                    assert!((0..height).all(|y| out[y * (width + 1) + width].is_nan()), "{via}: wrote past the width");
                };
                let mut out = vec![f32::NAN; height * (width + 1)];
                let target = Blocks { out: out.as_mut_ptr(), width: width + 1, bias };
                // SAFETY: every place is inside `out`, which nothing else uses meanwhile.
                unsafe { t.outputs_via::<Lanes>((&points, stride), tiles, place, target) };
                check(&out, "Lanes");
                #[cfg(target_arch = "x86_64")]
                if tiles >= LANES && std::arch::is_x86_feature_detected!("avx2") {
                    let mut out = vec![f32::NAN; height * (width + 1)];
                    let target = Blocks { out: out.as_mut_ptr(), width: width + 1, bias };
                    // SAFETY: as above.
                    unsafe { t.outputs_via::<Ymm>((&points, stride), tiles, place, target) };
                    check(&out, "Ymm");
                }
            }
        }
    }

    #[test]
    fn every_matrix_equals_its_definition() {
        for t in [Transform::F2, Transform::F4] {
            for matrix in [Matrix::Bt, Matrix::A, Matrix::G, Matrix::Gt] {
                let definition = definition(t, matrix);
                let (outs, ins) = (definition.len(), definition[0].len());
                // Lane counts below, at and above one register; rows with gaps between them.
                for n in [1, 8, 21] {
                    let (in_stride, out_stride) = (n + 3, n + 5);
                    let input = values(ins * in_stride, 7);
                    let mut output = vec![f32::NAN; outs * out_stride];
                    t.apply(matrix, (&input, in_stride), (&mut output, out_stride), n);
                    for (r, row) in definition.iter().enumerate() {
                        for lane in 0..n {
                            let expected: f64 = row.iter().enumerate().map(|(i, &c)| c * input[i * in_stride + lane] as f64).sum();
                            let ours = output[r * out_stride + lane];
                            assert!(
                                (ours as f64 - expected).abs() < 1e-5,
                                "{t:?} {matrix:?} n {n}: row {r} lane {lane}: {ours} vs {expected}"
                            );
                        }
                        // The gaps between rows are left alone.
                        assert!(
                            output[r * out_stride + n..(r + 1) * out_stride].iter().all(|v| v.is_nan()),
                            "{t:?} {matrix:?}: wrote past row {r}"
                        );
                    }
                }
            }
        }
    }
}
