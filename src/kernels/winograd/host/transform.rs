//! The matrices of F(2x2, 3x3) and F(4x4, 3x3) (Lavin & Gray, 2015), applied to many tiles at
//! once: each input row is a run of `n` values (one per tile, or per filter), and each output row
//! is a fixed combination of the input rows. The combinations are written out by hand with their
//! common subexpressions, 8 lanes at a time in registers, so that every input value is read once
//! and every output value written once (applying a sparse matrix row by row read and wrote each
//! output once per term; those transforms were 14% of a `resnet18_cifar` step at batch 32).
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
    /// `Aᵀ` (m x alpha): transform points to output tile.
    At,
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

    /// The columns of one tile row's patches from one (zero-padded) image row: `out[j * stride + tx]
    /// = row[m * tx + j]` for the first `columns` (at most alpha) columns `j` of each of the `n`
    /// tiles; `row` holds at least `m * (n + 2)` values. On x86-64, F(4x4) tiles go four at a time
    /// through SSE shuffles (a 4x4 transpose) instead of one value at a time (the scalar gather was
    /// 10% of a `fast_net` step).
    #[inline(always)]
    pub fn gather(self, row: &[f32], (out, stride): (&mut [f32], usize), columns: usize, n: usize) {
        let m = self.m();
        assert!(columns <= self.alpha() && row.len() >= m * (n + 2), "winograd gather: row too short");
        assert!(columns == 0 || (columns - 1) * stride + n <= out.len(), "winograd gather: output rows out of bounds");
        #[allow(unused_mut)]
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if self == Transform::F4 {
            while done + 4 <= n {
                // SAFETY: tiles done..done + 4 read row[4 * done..][..20] (within m * (n + 2)) and
                // write out[j * stride + done..][..4] for j < columns (within `out`), as asserted.
                unsafe { f4_gather_sse(row.as_ptr().add(4 * done), out.as_mut_ptr().add(done), stride, columns) };
                done += 4;
            }
        }
        for j in 0..columns {
            for tx in done..n {
                out[j * stride + tx] = row[m * tx + j];
            }
        }
    }

    /// `(rows in, rows out)` of `matrix`.
    const fn dims(self, matrix: Matrix) -> (usize, usize) {
        let (m, alpha) = (self.m(), self.alpha());
        match matrix {
            Matrix::Bt => (alpha, alpha),
            Matrix::At => (alpha, m),
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
            (Transform::F2, Matrix::At) => lanes::<_, _, F2At>(input, output, n),
            (Transform::F2, Matrix::A) => lanes::<_, _, F2A>(input, output, n),
            (Transform::F2, Matrix::G) => lanes::<_, _, F2G>(input, output, n),
            (Transform::F2, Matrix::Gt) => lanes::<_, _, F2Gt>(input, output, n),
            (Transform::F4, Matrix::Bt) => lanes::<_, _, F4Bt>(input, output, n),
            (Transform::F4, Matrix::At) => lanes::<_, _, F4At>(input, output, n),
            (Transform::F4, Matrix::A) => lanes::<_, _, F4A>(input, output, n),
            (Transform::F4, Matrix::G) => lanes::<_, _, F4G>(input, output, n),
            (Transform::F4, Matrix::Gt) => lanes::<_, _, F4Gt>(input, output, n),
        }
    }
}

/// [`Transform::gather`] of F(4x4) tiles `0..4` of `row`: the 16 values under them transposed,
/// `[tile][column]` to `[column][tile]`, and columns 4 and 5 (columns 0 and 1 of the next tile).
///
/// # Safety
///
/// `row` points to 20 readable values, and `out` to `columns` (at most 6) rows of 4 writable
/// values `stride` apart.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn f4_gather_sse(row: *const f32, out: *mut f32, stride: usize, columns: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's guarantee; SSE is part of x86-64.
    unsafe {
        let [a, b, c, d, e] = [0, 4, 8, 12, 16].map(|at| _mm_loadu_ps(row.add(at)));
        let (ab_low, cd_low) = (_mm_unpacklo_ps(a, b), _mm_unpacklo_ps(c, d));
        let (ab_high, cd_high) = (_mm_unpackhi_ps(a, b), _mm_unpackhi_ps(c, d));
        let (bc_low, de_low) = (_mm_unpacklo_ps(b, c), _mm_unpacklo_ps(d, e));
        let transposed = [
            _mm_movelh_ps(ab_low, cd_low),
            _mm_movehl_ps(cd_low, ab_low),
            _mm_movelh_ps(ab_high, cd_high),
            _mm_movehl_ps(cd_high, ab_high),
            _mm_movelh_ps(bc_low, de_low),
            _mm_movehl_ps(de_low, bc_low),
        ];
        for (j, column) in transposed.into_iter().take(columns).enumerate() {
            _mm_storeu_ps(out.add(j * stride), column);
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
    fn combine(rows: [Lanes; I]) -> [Lanes; O];
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
    fn combine([d0, d1, d2, d3]: [Lanes; 4]) -> [Lanes; 4] {
        [d0 - d2, d1 + d2, d2 - d1, d1 - d3]
    }
}

struct F2At;

impl Combinations<4, 2> for F2At {
    #[inline(always)]
    fn combine([m0, m1, m2, m3]: [Lanes; 4]) -> [Lanes; 2] {
        [m0 + m1 + m2, m1 - m2 - m3]
    }
}

struct F2A;

impl Combinations<2, 4> for F2A {
    #[inline(always)]
    fn combine([g0, g1]: [Lanes; 2]) -> [Lanes; 4] {
        [g0, g0 + g1, g0 - g1, -1.0 * g1]
    }
}

struct F2G;

impl Combinations<3, 4> for F2G {
    #[inline(always)]
    fn combine([f0, f1, f2]: [Lanes; 3]) -> [Lanes; 4] {
        let even = 0.5 * (f0 + f2);
        let odd = 0.5 * f1;
        [f0, even + odd, even - odd, f2]
    }
}

struct F2Gt;

impl Combinations<4, 3> for F2Gt {
    #[inline(always)]
    fn combine([u0, u1, u2, u3]: [Lanes; 4]) -> [Lanes; 3] {
        let sum = 0.5 * (u1 + u2);
        [u0 + sum, 0.5 * (u1 - u2), sum + u3]
    }
}

struct F4Bt;

impl Combinations<6, 6> for F4Bt {
    #[inline(always)]
    fn combine([d0, d1, d2, d3, d4, d5]: [Lanes; 6]) -> [Lanes; 6] {
        let (a, b) = (d4 - 4.0 * d2, d3 - 4.0 * d1);
        let (c, e) = (d4 - d2, 2.0 * (d3 - d1));
        [4.0 * d0 - 5.0 * d2 + d4, a + b, a - b, c + e, c - e, 4.0 * d1 - 5.0 * d3 + d5]
    }
}

struct F4At;

impl Combinations<6, 4> for F4At {
    #[inline(always)]
    fn combine([m0, m1, m2, m3, m4, m5]: [Lanes; 6]) -> [Lanes; 4] {
        let (s12, d12, s34, d34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
        [m0 + s12 + s34, d12 + 2.0 * d34, s12 + 4.0 * s34, d12 + 8.0 * d34 + m5]
    }
}

struct F4A;

impl Combinations<4, 6> for F4A {
    #[inline(always)]
    fn combine([g0, g1, g2, g3]: [Lanes; 4]) -> [Lanes; 6] {
        let (e1, o1) = (g0 + g2, g1 + g3);
        let (e2, o2) = (g0 + 4.0 * g2, 2.0 * g1 + 8.0 * g3);
        [g0, e1 + o1, e1 - o1, e2 + o2, e2 - o2, g3]
    }
}

struct F4G;

impl Combinations<3, 6> for F4G {
    #[inline(always)]
    fn combine([f0, f1, f2]: [Lanes; 3]) -> [Lanes; 6] {
        let s = f0 + f2;
        let (e, o) = ((1.0 / 24.0) * f0 + (1.0 / 6.0) * f2, (1.0 / 12.0) * f1);
        [0.25 * f0, (-1.0 / 6.0) * (s + f1), (-1.0 / 6.0) * (s - f1), e + o, e - o, f2]
    }
}

struct F4Gt;

impl Combinations<6, 3> for F4Gt {
    #[inline(always)]
    fn combine([u0, u1, u2, u3, u4, u5]: [Lanes; 6]) -> [Lanes; 3] {
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
            (Transform::F2, Matrix::At) => &[&[1., 1., 1., 0.], &[0., 1., -1., -1.]],
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
            (Transform::F4, Matrix::At) => {
                &[&[1., 1., 1., 1., 1., 0.], &[0., 1., -1., 2., -2., 0.], &[0., 1., 1., 4., 4., 0.], &[0., 1., -1., 8., -8., 1.]]
            }
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
            (t, Matrix::Gt) => {
                let g = definition(t, Matrix::G);
                return (0..3).map(|c| g.iter().map(|row| row[c]).collect()).collect();
            }
        };
        rows.iter().map(|row| row.to_vec()).collect()
    }

    #[test]
    fn every_matrix_equals_its_definition() {
        for t in [Transform::F2, Transform::F4] {
            for matrix in [Matrix::Bt, Matrix::At, Matrix::A, Matrix::G, Matrix::Gt] {
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

    #[test]
    fn gather_takes_each_tiles_columns() {
        for t in [Transform::F2, Transform::F4] {
            // Tile counts below, at and between multiples of the four-tile blocks.
            for n in [1, 3, 4, 7, 9] {
                for columns in [t.m(), t.alpha()] {
                    let row = values(t.m() * (n + 2), 5);
                    let stride = n + 2;
                    let mut out = vec![f32::NAN; columns * stride];
                    t.gather(&row, (&mut out, stride), columns, n);
                    for j in 0..columns {
                        for tx in 0..stride {
                            let expected = if tx < n { row[t.m() * tx + j] } else { f32::NAN };
                            assert!(
                                out[j * stride + tx].total_cmp(&expected).is_eq(),
                                "{t:?} n {n} columns {columns}: column {j} tile {tx}"
                            );
                        }
                    }
                }
            }
        }
    }
}
