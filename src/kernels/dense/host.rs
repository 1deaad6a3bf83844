//! Dense 2D convolution (one group, any kernel, stride and symmetric zero padding, no dilation)
//! on host f32 NCHW data, as matrix products on the `gemm` crate over chunks of images, `cols`
//! being a chunk's im2col matrix `[in, ky, kx][image, pixel]`:
//! - forward: `Y[out][image, pixel] = W[out][in, ky, kx] · cols`;
//! - input gradient: `dcols = Wᵀ · dY`, added back onto the input's pixels (col2im);
//! - weight gradient: `dW += dY · colsᵀ`.
//!
//! A chunk holds enough images for the products to be wide (burn-flex's per-image products are
//! thin at the 8x8 and 4x4 maps of late ResNet stages); chunks run in parallel, each rayon task
//! summing its weight gradient on its own.

use std::mem::MaybeUninit;

use crate::kernels::activation::{Act, Pointwise, with_pointwise};
use crate::kernels::{
    InputNorm, SharedSlice, XGradDone, assume_written, fma_available, matmul, plane_moments, sized, sum_in_parallel, uninit_chunks,
    with_buffers,
};

/// Output pixels (summed over the chunk's images) one product takes.
const CHUNK_PIXELS: usize = 1024;

/// Values of one image's im2col block (see [`row_blocks`]).
const BLOCK_VALUES: usize = 1 << 17;

/// Sizes of one dense convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

impl Geometry {
    pub fn out_height(&self) -> usize {
        (self.height + 2 * self.padding[0] - self.kernel[0]) / self.stride[0] + 1
    }

    pub fn out_width(&self) -> usize {
        (self.width + 2 * self.padding[1] - self.kernel[1]) / self.stride[1] + 1
    }

    /// A 1x1 convolution with stride 1 and no padding: an image's im2col matrix is the image.
    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.padding == [0, 0]
    }

    /// Values per filter: `in_channels * kh * kw`.
    fn filter_len(&self) -> usize {
        self.in_channels * self.kernel[0] * self.kernel[1]
    }
}

/// `y = act(conv2d(x, weight) + bias)` `[batch, out, out_height, out_width]`, the bias and the
/// activation applied to each chunk's product while it is in cache; with `moments`, also each
/// output plane's `[mean, Σ (y - mean)²]` (`kernels::plane_moments`), taken as each chunk is written.
/// `norm` (pointwise convolutions only) is applied to `x` as each chunk's matrix is copied.
pub fn forward(
    x: &[f32],
    norm: Option<InputNorm>,
    weight: &[f32],
    bias: Option<&[f32]>,
    act: Act,
    g: &Geometry,
    moments: bool,
) -> (Vec<f32>, Option<Vec<f64>>) {
    assert!(norm.is_none() || g.is_pointwise(), "conv: an input norm needs a pointwise convolution");
    let pixels = g.out_height() * g.out_width();
    assert_eq!(x.len(), g.batch * g.in_channels * g.height * g.width, "conv: input size");
    assert_eq!(weight.len(), g.out_channels * g.filter_len(), "conv: weight size");
    let (outs, filter) = (g.out_channels, g.filter_len());
    let per_chunk = images_per_chunk(g);
    let fma = fma_available();
    let fill = |chunk: usize, y: &mut [MaybeUninit<f32>]| {
        with_buffers(|[cols, product]| {
            let images = chunk * per_chunk..(chunk * per_chunk + per_chunk).min(g.batch);
            // One image's product, [out][pixel], is laid out as its part of `y`: each block of
            // rows goes straight there (row stride `pixels`).
            if images.len() == 1 {
                for rows in row_blocks(g, 1) {
                    let (first, columns) = (rows.start * g.out_width(), rows.len() * g.out_width());
                    let cols = im2col(x, norm, g, images.clone(), rows, cols);
                    // SAFETY: weight is [outs][filter], cols [filter][columns]; the product writes
                    // columns first.. of each of the outs rows of y ([outs][pixels]).
                    unsafe {
                        matmul(
                            outs,
                            columns,
                            filter,
                            (y.as_mut_ptr().cast::<f32>().add(first), 1, pixels as isize),
                            false,
                            (weight.as_ptr(), 1, filter as isize),
                            (cols.as_ptr(), 1, columns as isize),
                        )
                    };
                    if bias.is_some() || act != Act::Identity {
                        for (o, row) in y.chunks_mut(pixels).enumerate() {
                            // SAFETY: the product above wrote these values.
                            let row = unsafe { assume_written(&mut row[first..][..columns]) };
                            with_pointwise!(act, affine(fma, None, row, 1.0, bias.map_or(0.0, |b| b[o])));
                        }
                    }
                }
                return;
            }
            let columns = images.len() * pixels;
            let cols = im2col(x, norm, g, images.clone(), 0..g.out_height(), cols);
            let product = sized(product, outs * columns);
            // SAFETY: weight is [outs][filter], cols [filter][columns], product [outs][columns].
            unsafe {
                matmul(
                    outs,
                    columns,
                    filter,
                    (product.as_mut_ptr(), 1, columns as isize),
                    false,
                    (weight.as_ptr(), 1, filter as isize),
                    (cols.as_ptr(), 1, columns as isize),
                )
            };
            // [out][image, pixel] -> [image][out][pixel], plus the bias.
            for (o, row) in product.chunks(columns).enumerate() {
                let b = bias.map_or(0.0, |b| b[o]);
                for (i, values) in row.chunks(pixels).enumerate() {
                    with_pointwise!(act, add_bias(fma, values, b, &mut y[(i * outs + o) * pixels..][..pixels]));
                }
            }
        })
    };
    let mut moments_values = moments.then(|| vec![[0f64; 2]; g.batch * outs]);
    let moments_out = moments_values.as_mut().map(|moments| SharedSlice::new(moments));
    // SAFETY: `fill` writes each chunk's images in full, by the products' blocks or the scatter.
    let y = unsafe {
        uninit_chunks(g.batch * outs * pixels, per_chunk * outs * pixels, |chunk, y| {
            fill(chunk, y);
            if let Some(moments) = &moments_out {
                // SAFETY: written in full by `fill`; the chunk's planes' moments are its own.
                let moments = moments.run(chunk * per_chunk * outs, y.len() / pixels);
                plane_moments(fma, assume_written(y), moments);
            }
        })
    };
    (y, moments_values.map(|moments| moments.into_flattened()))
}

/// The output rows of each product on a chunk of `images`: for one image, blocks whose im2col
/// matrix (about [`BLOCK_VALUES`]) stays in cache while the product reads it, where written whole
/// it went out to memory and back (a ResNet stem's is 7 MB per image); all rows for several
/// images (small maps) and for a pointwise convolution (an image is its own matrix).
fn row_blocks(g: &Geometry, images: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let out_height = g.out_height();
    let rows =
        if images > 1 || g.is_pointwise() { out_height } else { (BLOCK_VALUES / (g.filter_len() * g.out_width())).clamp(1, out_height) };
    (0..out_height).step_by(rows).map(move |first| first..(first + rows).min(out_height))
}

with_avx2! {
    /// `out = act(source * scale + shift)` value by value, `source` being `out` itself where `None`
    /// (one pass where a copy and then the pass in place took two).
    avx512 fn affine<A: Pointwise>(source: Option<&[f32]>, out: &mut [f32], scale: f32, shift: f32) {
        match source {
            Some(source) => {
                for (out, &value) in out.iter_mut().zip(source) {
                    *out = A::value(value * scale + shift);
                }
            }
            None => {
                for value in out {
                    *value = A::value(*value * scale + shift);
                }
            }
        }
    }
}

with_avx2! {
    /// `out = act(values + bias)`.
    avx512 fn add_bias<A: Pointwise>(values: &[f32], bias: f32, out: &mut [MaybeUninit<f32>]) {
        for (out, &v) in out.iter_mut().zip(values) {
            out.write(A::value(v + bias));
        }
    }
}

/// The input gradient `[batch, in, height, width]` of `y = conv2d(x, weight)` from `out_grad`;
/// `x_grad_done` sees each chunk's share as soon as it is written.
pub fn input_gradient(out_grad: &[f32], weight: &[f32], g: &Geometry, x_grad_done: Option<XGradDone>) -> Vec<f32> {
    let pixels = g.out_height() * g.out_width();
    assert_eq!(out_grad.len(), g.batch * g.out_channels * pixels, "conv input gradient: output gradient size");
    let (outs, filter, image_len) = (g.out_channels, g.filter_len(), g.in_channels * g.height * g.width);
    let per_chunk = images_per_chunk(g);
    let fill = |chunk: usize, dx: &mut [MaybeUninit<f32>]| {
        with_buffers(|[dy, dcols]| {
            let images = chunk * per_chunk..(chunk * per_chunk + per_chunk).min(g.batch);
            let columns = images.len() * pixels;
            let dy = gather_out_grad(out_grad, g, images.clone(), dy);
            // `dcols = Wᵀ · dy` for the output columns `first..first + len` (product columns).
            let multiply = |dcols: *mut f32, first: usize, len: usize| {
                // SAFETY: weight is [outs][filter] (read transposed), dy [outs][columns] with
                // `first + len <= columns`, dcols [filter][len].
                unsafe {
                    matmul(
                        filter,
                        len,
                        outs,
                        (dcols, 1, len as isize),
                        false,
                        (weight.as_ptr(), filter as isize, 1),
                        (dy.as_ptr().add(first), 1, columns as isize),
                    )
                }
            };
            // A pointwise convolution's dcols of one image is its part of `dx`.
            if images.len() == 1 && g.is_pointwise() {
                multiply(dx.as_mut_ptr().cast(), 0, columns);
                return;
            }
            // [in][image, pixel] -> [image][in][pixel]: a pointwise convolution's pixels map one
            // to one.
            if g.is_pointwise() {
                let dcols = sized(dcols, filter * columns);
                multiply(dcols.as_mut_ptr(), 0, columns);
                for (c, row) in dcols.chunks(columns).enumerate() {
                    for (i, values) in row.chunks(pixels).enumerate() {
                        for (dx, &value) in dx[(i * g.in_channels + c) * pixels..][..pixels].iter_mut().zip(values) {
                            dx.write(value);
                        }
                    }
                }
                return;
            }
            dx.iter_mut().for_each(|dx| {
                dx.write(0.0);
            });
            // SAFETY: written just above.
            let dx = unsafe { assume_written(dx) };
            for rows in row_blocks(g, images.len()) {
                let (first, len) = (rows.start * g.out_width(), images.len() * rows.len() * g.out_width());
                let dcols = sized(dcols, filter * len);
                multiply(dcols.as_mut_ptr(), first, len);
                col2im(dcols, g, images.len(), rows, dx);
            }
        })
    };
    // SAFETY: `fill` writes each chunk in full: by the product, the pointwise scatter, or zeros and
    // col2im.
    unsafe {
        uninit_chunks(g.batch * image_len, per_chunk * image_len, |chunk, dx| {
            fill(chunk, dx);
            if let Some(done) = x_grad_done {
                done(chunk * per_chunk * g.in_channels, assume_written(dx));
            }
        })
    }
}

/// Images per chunk: about [`CHUNK_PIXELS`] output pixels, and at least two chunks per thread
/// where the batch allows.
fn images_per_chunk(g: &Geometry) -> usize {
    let pixels = g.out_height() * g.out_width();
    (CHUNK_PIXELS / pixels.max(1)).clamp(1, g.batch.div_ceil(2 * rayon::current_num_threads()).max(1))
}

/// The weight gradient `[out, in, kh, kw]` of `y = conv2d(x, weight)` from `x` (through `norm`,
/// as [`forward`]) and `out_grad` (`y`'s shape).
pub fn weight_gradient(x: &[f32], norm: Option<InputNorm>, out_grad: &[f32], g: &Geometry) -> Vec<f32> {
    let pixels = g.out_height() * g.out_width();
    assert_eq!(x.len(), g.batch * g.in_channels * g.height * g.width, "conv weight gradient: input size");
    assert_eq!(out_grad.len(), g.batch * g.out_channels * pixels, "conv weight gradient: output gradient size");
    let (outs, filter) = (g.out_channels, g.filter_len());
    let images_per_chunk = images_per_chunk(g);
    let chunks: Vec<(usize, usize)> = (0..g.batch).step_by(images_per_chunk).map(|n| (n, (n + images_per_chunk).min(g.batch))).collect();
    sum_in_parallel(chunks, outs * filter, |(first, end), dw| {
        with_buffers(|[dy, cols]| {
            let columns = (end - first) * pixels;
            let dy = gather_out_grad(out_grad, g, first..end, dy);
            for rows in row_blocks(g, end - first) {
                let (at, len) = (rows.start * g.out_width(), (end - first) * rows.len() * g.out_width());
                let cols = im2col(x, norm, g, first..end, rows, cols);
                // dwᵀ = cols · dyᵀ, so that the gemm crate's destination is column-major (its own
                // layout; written as dw = dy · colsᵀ the weight gradients ran about 20% slower).
                // SAFETY: dy is [outs][columns] with `at + len <= columns`, cols [filter][len],
                // dw [outs][filter], as the strides say.
                unsafe {
                    matmul(
                        filter,
                        outs,
                        len,
                        (dw.as_mut_ptr(), filter as isize, 1),
                        true,
                        (cols.as_ptr(), 1, len as isize),
                        (dy.as_ptr().add(at), columns as isize, 1),
                    )
                };
            }
        })
    })
}

/// `out_grad` of `images` as `[out][image, pixel]`, in `dy` (one image's is in `out_grad` as is).
fn gather_out_grad<'a>(out_grad: &'a [f32], g: &Geometry, images: std::ops::Range<usize>, dy: &'a mut Vec<f32>) -> &'a [f32] {
    let pixels = g.out_height() * g.out_width();
    let columns = images.len() * pixels;
    if images.len() == 1 {
        return &out_grad[images.start * g.out_channels * pixels..][..columns * g.out_channels];
    }
    let dy = sized(dy, g.out_channels * columns);
    for (o, row) in dy.chunks_mut(columns).enumerate() {
        for (i, n) in images.clone().enumerate() {
            row[i * pixels..][..pixels].copy_from_slice(&out_grad[(n * g.out_channels + o) * pixels..][..pixels]);
        }
    }
    dy
}

/// The im2col matrix of `images`' output rows `rows`: row `(c, ky, kx)`, column `(image, oy -
/// rows.start, ox)` holds `x[image][c][oy * sy + ky - py][ox * sx + kx - px]`, zero outside the
/// input; in `cols` (one image of a pointwise convolution is its own matrix, in `x`, unless
/// `norm`, which only pointwise convolutions take, is applied to it).
fn im2col<'a>(
    x: &'a [f32],
    norm: Option<InputNorm>,
    g: &Geometry,
    images: std::ops::Range<usize>,
    rows: std::ops::Range<usize>,
    cols: &'a mut Vec<f32>,
) -> &'a [f32] {
    let out_width = g.out_width();
    let pixels = rows.len() * out_width;
    let columns = images.len() * pixels;
    let plane_len = g.height * g.width;
    if g.is_pointwise() {
        debug_assert_eq!(rows, 0..g.out_height(), "a pointwise convolution's image is one block");
        if images.len() == 1 && norm.is_none() {
            return &x[images.start * g.in_channels * pixels..][..g.in_channels * pixels];
        }
    }
    let ([kh, kw], [sy, sx], [py, px]) = (g.kernel, g.stride, g.padding);
    let cols = sized(cols, g.filter_len() * columns);
    for (r, row) in cols.chunks_mut(columns).enumerate() {
        let (c, ky, kx) = (r / (kh * kw), r / kw % kh, r % kw);
        let (first, end) = inside_columns(g, kx);
        for (i, n) in images.clone().enumerate() {
            let plane = &x[(n * g.in_channels + c) * plane_len..][..plane_len];
            if g.is_pointwise() {
                let row = &mut row[i * pixels..][..pixels];
                match norm {
                    Some(norm) => with_pointwise!(norm.act, affine(fma_available(), Some(plane), row, norm.scale[c], norm.shift[c])),
                    None => row.copy_from_slice(plane),
                }
                continue;
            }
            for (at, oy) in rows.clone().enumerate() {
                let target = &mut row[i * pixels + at * out_width..][..out_width];
                let y = (oy * sy + ky) as isize - py as isize;
                if y < 0 || y >= g.height as isize {
                    target.fill(0.0);
                    continue;
                }
                target[..first].fill(0.0);
                target[end..].fill(0.0);
                if first == end {
                    continue;
                }
                gather(&mut target[first..end], &plane[y as usize * g.width + first * sx + kx - px..], sx);
            }
        }
    }
    cols
}

/// `target[i] = source[i * stride]`; strides 1 and 2 with a constant step, which the compiler
/// turns into vector shuffles (a stem's stride-2 gather was a scalar loop of ten instructions per
/// value).
fn gather(target: &mut [f32], source: &[f32], stride: usize) {
    /// All but the last value through `STRIDE`-long chunks (the source may end right after the
    /// last value read).
    #[inline(always)]
    fn by<const STRIDE: usize>(target: &mut [f32], source: &[f32]) {
        let Some((last, rest)) = target.split_last_mut() else { return };
        for (value, chunk) in rest.iter_mut().zip(source.chunks_exact(STRIDE)) {
            *value = chunk[0];
        }
        *last = source[rest.len() * STRIDE];
    }
    match stride {
        1 => target.copy_from_slice(&source[..target.len()]),
        2 => by::<2>(target, source),
        _ => target.iter_mut().zip(source.iter().step_by(stride)).for_each(|(value, &source)| *value = source),
    }
}

/// The output columns `first..end` whose input column `ox * sx + kx - px` lies inside the input,
/// for the kernel column `kx` (the others read the zero padding).
fn inside_columns(g: &Geometry, kx: usize) -> (usize, usize) {
    let ([sx], [px]) = ([g.stride[1]], [g.padding[1]]);
    let first = px.saturating_sub(kx).div_ceil(sx);
    let end = (g.width + px).saturating_sub(kx).div_ceil(sx).min(g.out_width());
    (first.min(end), end)
}

/// Adds `dcols` (`[in, ky, kx][image, pixel]` of `images` images' output rows `rows`) onto the
/// pixels of `dx` (those images, `[image][in][height][width]`) they were read from: im2col's
/// adjoint.
fn col2im(dcols: &[f32], g: &Geometry, images: usize, rows: std::ops::Range<usize>, dx: &mut [f32]) {
    let out_width = g.out_width();
    let pixels = rows.len() * out_width;
    let ([kh, kw], [sy, sx], [py, px]) = (g.kernel, g.stride, g.padding);
    for (r, row) in dcols.chunks(images * pixels).enumerate() {
        let (c, ky, kx) = (r / (kh * kw), r / kw % kh, r % kw);
        let (first, end) = inside_columns(g, kx);
        for i in 0..images {
            let plane = &mut dx[(i * g.in_channels + c) * g.height * g.width..][..g.height * g.width];
            for (at, oy) in rows.clone().enumerate() {
                let y = (oy * sy + ky) as isize - py as isize;
                if y < 0 || y >= g.height as isize || first == end {
                    continue;
                }
                let target = &mut plane[y as usize * g.width + first * sx + kx - px..];
                let values = &row[i * pixels + at * out_width..][first..end];
                for (target, &value) in target.iter_mut().step_by(sx).zip(values) {
                    *target += value;
                }
            }
        }
    }
}
