//! Deterministic image operations (torchvision.transforms.functional on PIL images, matching Pillow).
//!
//! Each op reproduces the arithmetic of the Pillow routine torchvision calls: integer luma, blends
//! computed in f32 and truncated, 16.16 fixed-point nearest sampling, unrounded bilinear sampling.
//! The goal is that an image augmented here is the one a PyTorch pipeline would have produced, so
//! recipes and accuracies carry over; the tests compare against fixtures made with Pillow.

use super::resize::Interpolation;
use super::{Image, PaddingMode};

const C: usize = Image::CHANNELS;

/// The parameters of torchvision's `F.affine`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AffineParams {
    /// Degrees; positive turns the content clockwise (torchvision's `F.affine`, unlike `F.rotate`).
    pub angle: f32,
    /// Pixels, (x, y), applied after the rotation.
    pub translate: (f32, f32),
    pub scale: f32,
    /// Degrees, (x, y).
    pub shear: (f32, f32),
    /// Pixel coordinates from the top-left corner; `None` is the image centre `(w/2, h/2)`.
    pub center: Option<(f32, f32)>,
}

impl AffineParams {
    pub fn identity() -> Self {
        Self { angle: 0.0, translate: (0.0, 0.0), scale: 1.0, shear: (0.0, 0.0), center: None }
    }
}

/// torchvision `F.affine` on a PIL image: Pillow's `transform(AFFINE)` with the inverse matrix
/// torchvision computes; pixels that map outside the source get `fill`.
pub fn affine(image: &Image, params: &AffineParams, interpolation: Interpolation, fill: [u8; 3]) -> Image {
    let center = params.center.map_or(image_center(image), |(x, y)| (x as f64, y as f64));
    let matrix = inverse_affine_matrix(
        center,
        params.angle as f64,
        (params.translate.0 as f64, params.translate.1 as f64),
        params.scale as f64,
        (params.shear.0 as f64, params.shear.1 as f64),
    );
    warp_affine(image, &matrix, interpolation, fill)
}

/// torchvision `F.rotate` (expand=False): Pillow's `Image.rotate`, counter-clockwise degrees around
/// the image centre.
pub fn rotate(image: &Image, angle: f32, interpolation: Interpolation, fill: [u8; 3]) -> Image {
    // Pillow rounds the matrix to 15 decimals, which makes right angles exact.
    let round15 = |v: f64| format!("{v:.15}").parse::<f64>().expect("formatted float parses");
    let radians = -(angle as f64).rem_euclid(360.0).to_radians();
    let (cos, sin) = (round15(radians.cos()), round15(radians.sin()));
    let (cx, cy) = image_center(image);
    let mut m = [cos, sin, 0.0, -sin, cos, 0.0];
    m[2] = m[0] * -cx + m[1] * -cy + cx;
    m[5] = m[3] * -cx + m[4] * -cy + cy;
    warp_affine(image, &m, interpolation, fill)
}

fn image_center(image: &Image) -> (f64, f64) {
    (image.width as f64 * 0.5, image.height as f64 * 0.5)
}

/// torchvision's `_get_inverse_affine_matrix`: output pixel -> source pixel, in f64 with
/// torchvision's order of operations so that sampling decisions agree.
pub(super) fn inverse_affine_matrix((cx, cy): (f64, f64), angle: f64, (tx, ty): (f64, f64), scale: f64, shear: (f64, f64)) -> [f64; 6] {
    let rot = angle.to_radians();
    let (sx, sy) = (shear.0.to_radians(), shear.1.to_radians());
    let a = (rot - sy).cos() / sy.cos();
    let b = -(rot - sy).cos() * sx.tan() / sy.cos() - rot.sin();
    let c = (rot - sy).sin() / sy.cos();
    let d = -(rot - sy).sin() * sx.tan() / sy.cos() + rot.cos();
    let mut m = [d, -b, 0.0, -c, a, 0.0].map(|v| v / scale);
    m[2] = m[0] * (-cx - tx) + m[1] * (-cy - ty) + cx;
    m[5] = m[3] * (-cx - tx) + m[4] * (-cy - ty) + cy;
    m
}

/// Pillow's `Image.transform(size, AFFINE, m)`: output pixel centre `(x + 0.5, y + 0.5)` samples
/// the source at `(m0 x + m1 y + m2, m3 x + m4 y + m5)`.
pub(super) fn warp_affine(image: &Image, m: &[f64; 6], interpolation: Interpolation, fill: [u8; 3]) -> Image {
    let mut out = Image::new(fill.repeat(image.height * image.width), image.height, image.width);
    match interpolation {
        Interpolation::Nearest => nearest_affine(image, m, &mut out),
        Interpolation::Bilinear => sample_affine(image, m, &mut out, bilinear),
        Interpolation::Bicubic => sample_affine(image, m, &mut out, bicubic),
    }
    out
}

/// Pillow's nearest-neighbour affine engines: 16.16 fixed point stepped along each row when the
/// coordinates fit, otherwise (and for pure scale/translate) f64 stepping truncated toward zero.
fn nearest_affine(src: &Image, m: &[f64; 6], out: &mut Image) {
    let (w, h) = (src.width, src.height);
    let copy = |out: &mut Image, x: usize, y: usize, sx: i64, sy: i64| {
        if (0..w as i64).contains(&sx) && (0..h as i64).contains(&sy) {
            let from = (sy as usize * w + sx as usize) * C;
            out.pixels[(y * w + x) * C..][..C].copy_from_slice(&src.pixels[from..from + C]);
        }
    };
    let fits = |x: f64, y: f64| (x * m[0] + y * m[1] + m[2]).abs() < 32768.0 && (x * m[3] + y * m[4] + m[5]).abs() < 32768.0;
    let (wf, hf) = (w as f64, h as f64);
    let scale_only = m[1] == 0.0 && m[3] == 0.0;
    if !scale_only && fits(0.0, 0.0) && fits(wf, hf) && fits(0.0, hf) && fits(wf, 0.0) {
        let fix = |v: f64| (v * 65536.0 + 0.5).floor() as i32;
        let (a0, a1, a3, a4) = (fix(m[0]), fix(m[1]), fix(m[3]), fix(m[4]));
        let (mut row_x, mut row_y) = (fix(m[2] + m[0] * 0.5 + m[1] * 0.5), fix(m[5] + m[3] * 0.5 + m[4] * 0.5));
        for y in 0..h {
            let (mut xx, mut yy) = (row_x, row_y);
            for x in 0..w {
                copy(out, x, y, (xx >> 16) as i64, (yy >> 16) as i64);
                xx = xx.wrapping_add(a0);
                yy = yy.wrapping_add(a3);
            }
            row_x = row_x.wrapping_add(a1);
            row_y = row_y.wrapping_add(a4);
        }
    } else {
        let coord = |v: f64| if v < 0.0 { -1 } else { v as i64 };
        let (mut row_x, mut row_y) = (m[2] + m[1] * 0.5 + m[0] * 0.5, m[5] + m[4] * 0.5 + m[3] * 0.5);
        for y in 0..h {
            let (mut xx, mut yy) = (row_x, row_y);
            for x in 0..w {
                copy(out, x, y, coord(xx), coord(yy));
                xx += m[0];
                yy += m[3];
            }
            row_x += m[1];
            row_y += m[4];
        }
    }
}

/// Pillow's generic transform loop: computes each source point and lets `filter` write the
/// pixel, which keeps the fill when the point lies outside the source.
fn sample_affine(src: &Image, m: &[f64; 6], out: &mut Image, filter: impl Fn(&Image, f64, f64, &mut [u8])) {
    let w = src.width;
    for (y, row) in out.pixels.chunks_exact_mut(w * C).enumerate() {
        let yc = y as f64 + 0.5;
        for (x, pixel) in row.chunks_exact_mut(C).enumerate() {
            let xc = x as f64 + 0.5;
            filter(src, m[0] * xc + m[1] * yc + m[2], m[3] * xc + m[4] * yc + m[5], pixel);
        }
    }
}

fn inside(src: &Image, x: f64, y: f64) -> bool {
    x >= 0.0 && x < src.width as f64 && y >= 0.0 && y < src.height as f64
}

/// Pillow's `bilinear_filter32RGB`: edge-clamped 2x2 interpolation in f64, truncated (not rounded).
fn bilinear(src: &Image, x: f64, y: f64, out: &mut [u8]) {
    if !inside(src, x, y) {
        return;
    }
    let (x, y) = (x - 0.5, y - 0.5);
    let (fx, fy) = (x.floor(), y.floor());
    let (dx, dy) = (x - fx, y - fy);
    let (w, h) = (src.width as i64, src.height as i64);
    let (xi, yi) = (fx as i64, fy as i64);
    let cols = [xi.clamp(0, w - 1), (xi + 1).clamp(0, w - 1)];
    let lerp = |a: f64, b: f64, t: f64| a + (b - a) * t;
    let at = |row: i64, col: i64, ch: usize| src.pixels[(row * w + col) as usize * C + ch] as f64;
    for (ch, o) in out.iter_mut().enumerate() {
        let row_value = |row: i64| lerp(at(row, cols[0], ch), at(row, cols[1], ch), dx);
        let top = row_value(yi.clamp(0, h - 1));
        // Below the last row Pillow reuses the top value instead of clamping.
        let bottom = if yi + 1 < h { row_value(yi + 1) } else { top };
        *o = lerp(top, bottom, dy) as u8;
    }
}

/// Pillow's `bicubic_filter32RGB`: Catmull-Rom (a = -0.5) over 4x4 taps, clamped and truncated.
fn bicubic(src: &Image, x: f64, y: f64, out: &mut [u8]) {
    if !inside(src, x, y) {
        return;
    }
    let (x, y) = (x - 0.5, y - 0.5);
    let (fx, fy) = (x.floor(), y.floor());
    let (dx, dy) = (x - fx, y - fy);
    let (w, h) = (src.width as i64, src.height as i64);
    let (x0, y0) = (fx as i64 - 1, fy as i64 - 1);
    let cols: [i64; 4] = std::array::from_fn(|k| (x0 + k as i64).clamp(0, w - 1));
    let cubic = |v: [f64; 4], d: f64| {
        let (p1, p2) = (v[1], -v[0] + v[2]);
        let (p3, p4) = (2.0 * (v[0] - v[1]) + v[2] - v[3], -v[0] + v[1] - v[2] + v[3]);
        p1 + d * (p2 + d * (p3 + d * p4))
    };
    for (ch, o) in out.iter_mut().enumerate() {
        let row_value = |row: i64| cubic(cols.map(|col| src.pixels[(row * w + col) as usize * C + ch] as f64), dx);
        let mut rows = [row_value(y0.clamp(0, h - 1)); 4];
        for k in 1..4 {
            // Rows outside the image repeat the previous row's value, as in Pillow.
            rows[k] = if (0..h).contains(&(y0 + k as i64)) { row_value(y0 + k as i64) } else { rows[k - 1] };
        }
        *o = cubic(rows, dy).clamp(0.0, 255.0) as u8;
    }
}

/// Pillow's `Image.blend(degenerate, image, factor)`, the core of every `ImageEnhance` class:
/// `d + factor * (p - d)` in f32, clamped and truncated.
fn blend(degenerate: &[u8], image: &Image, factor: f32) -> Image {
    let pixels = degenerate.iter().zip(&image.pixels).map(|(&d, &p)| (d as f32 + factor * (p as i32 - d as i32) as f32) as u8).collect();
    Image::new(pixels, image.height, image.width)
}

/// Pillow's `convert("L")`: ITU-R 601-2 luma in 16.16 fixed point, rounded half up.
fn luma(p: &[u8]) -> u8 {
    ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16) as u8
}

/// `ImageEnhance.Brightness`: blend with black.
pub fn adjust_brightness(image: &Image, factor: f32) -> Image {
    blend(&vec![0; image.pixels.len()], image, factor)
}

/// `ImageEnhance.Contrast`: blend with the mean grey of the L image, rounded half up to an integer.
pub fn adjust_contrast(image: &Image, factor: f32) -> Image {
    let sum: u64 = image.pixels.chunks_exact(C).map(|p| luma(p) as u64).sum();
    let mean = (sum as f64 / (image.height * image.width) as f64 + 0.5) as u8;
    blend(&vec![mean; image.pixels.len()], image, factor)
}

/// `ImageEnhance.Color`: blend with the grayscale image.
pub fn adjust_saturation(image: &Image, factor: f32) -> Image {
    blend(&to_grayscale(image).pixels, image, factor)
}

/// `ImageEnhance.Sharpness`: blend with Pillow's SMOOTH filter (3x3, centre 5, others 1, sum 13),
/// which leaves the one-pixel border unfiltered.
pub fn adjust_sharpness(image: &Image, factor: f32) -> Image {
    blend(&smooth(image).pixels, image, factor)
}

/// Pillow's `ImagingFilter3x3` with the SMOOTH kernel: f32 weights, rows summed bottom to top,
/// +0.5 and truncation. Images smaller than the kernel are returned unchanged, as in Pillow.
fn smooth(image: &Image) -> Image {
    let (w, h) = (image.width, image.height);
    let mut out = image.clone();
    if w < 3 || h < 3 {
        return out;
    }
    let (side, centre) = (1.0f32 / 13.0, 5.0f32 / 13.0);
    let px = &image.pixels;
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            for ch in 0..C {
                let at = |yy: usize, xx: usize| px[(yy * w + xx) * C + ch] as f32;
                let row = |yy: usize, mid: f32| at(yy, x - 1) * side + at(yy, x) * mid + at(yy, x + 1) * side;
                let mut sum = 0.5f32;
                sum += row(y + 1, side);
                sum += row(y, centre);
                sum += row(y - 1, side);
                out.pixels[(y * w + x) * C + ch] = sum.clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// torchvision `F.adjust_hue` on PIL: Pillow's RGB -> HSV conversion, the H channel shifted by
/// `int(hue_factor * 255)` with uint8 wrap-around, and back. `hue_factor` is in [-0.5, 0.5].
pub fn adjust_hue(image: &Image, hue_factor: f32) -> Image {
    assert!((-0.5..=0.5).contains(&hue_factor), "hue_factor ({hue_factor}) is not in [-0.5, 0.5]");
    let shift = (hue_factor as f64 * 255.0) as i32 as u8;
    let mut out = image.clone();
    for p in out.pixels.chunks_exact_mut(C) {
        let [h, s, v] = rgb_to_hsv(p);
        p.copy_from_slice(&hsv_to_rgb([h.wrapping_add(shift), s, v]));
    }
    out
}

fn clip8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// Pillow's `rgb2hsv_row`, keeping its mix of f32 variables and f64 constants.
fn rgb_to_hsv(p: &[u8]) -> [u8; 3] {
    let (r, g, b) = (p[0], p[1], p[2]);
    let (max, min) = (r.max(g).max(b), r.min(g).min(b));
    if max == min {
        return [0, 0, max];
    }
    let range = (max - min) as f32;
    let s = range / max as f32;
    let (rc, gc, bc) = ((max - r) as f32 / range, (max - g) as f32 / range, (max - b) as f32 / range);
    let h = if r == max {
        bc - gc
    } else if g == max {
        (2.0 + rc as f64 - bc as f64) as f32
    } else {
        (4.0 + gc as f64 - rc as f64) as f32
    };
    let h = ((h as f64 / 6.0 + 1.0) % 1.0) as f32;
    [clip8((h as f64 * 255.0) as i32), clip8((s as f64 * 255.0) as i32), max]
}

/// Pillow's `hsv2rgb`.
fn hsv_to_rgb([h, s, v]: [u8; 3]) -> [u8; 3] {
    if s == 0 {
        return [v; 3];
    }
    let sector = h as f32 as f64 * 6.0 / 255.0;
    let i = sector.floor() as i32;
    let f = (sector - i as f64) as f32;
    let fs = (s as f64 / 255.0) as f32;
    let vf = v as f64;
    let p = clip8((vf * (1.0 - fs as f64)).round() as i32);
    let q = clip8((vf * (1.0 - (fs * f) as f64)).round() as i32);
    let t = clip8((vf * (1.0 - fs as f64 * (1.0 - f as f64))).round() as i32);
    match i % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// Pillow's `convert("L")` replicated to three channels (torchvision `rgb_to_grayscale(img, 3)`).
pub fn to_grayscale(image: &Image) -> Image {
    let pixels = image.pixels.chunks_exact(C).flat_map(|p| [luma(p); C]).collect();
    Image::new(pixels, image.height, image.width)
}

/// Applies one lookup table per channel, as Pillow's `Image.point` does for `ImageOps`.
fn map_channels(image: &Image, luts: &[[u8; 256]; C]) -> Image {
    let mut out = image.clone();
    for p in out.pixels.chunks_exact_mut(C) {
        for (v, lut) in p.iter_mut().zip(luts) {
            *v = lut[*v as usize];
        }
    }
    out
}

fn map_all(image: &Image, f: impl Fn(u8) -> u8) -> Image {
    let lut: [u8; 256] = std::array::from_fn(|i| f(i as u8));
    map_channels(image, &[lut; C])
}

fn histograms(image: &Image) -> [[u64; 256]; C] {
    let mut hist = [[0u64; 256]; C];
    for p in image.pixels.chunks_exact(C) {
        for (h, &v) in hist.iter_mut().zip(p) {
            h[v as usize] += 1;
        }
    }
    hist
}

/// `ImageOps.posterize`: keep the `bits` high bits of each channel (0 gives black; Pillow itself
/// accepts 1 to 8).
pub fn posterize(image: &Image, bits: u8) -> Image {
    assert!(bits <= 8, "posterize keeps 0 to 8 bits, not {bits}");
    let mask = !((1u16 << (8 - bits)) - 1) as u8;
    map_all(image, |v| v & mask)
}

/// `ImageOps.solarize`: values `>= threshold` are inverted.
pub fn solarize(image: &Image, threshold: u8) -> Image {
    map_all(image, |v| if v < threshold { v } else { 255 - v })
}

/// `ImageOps.invert`.
pub fn invert(image: &Image) -> Image {
    map_all(image, |v| 255 - v)
}

/// `ImageOps.equalize`, per channel: Pillow's cumulative-histogram lookup table, where `step`
/// leaves out the count of the highest value present and a channel with one value is unchanged.
pub fn equalize(image: &Image) -> Image {
    let luts = histograms(image).map(|h| {
        let present = || h.iter().filter(|&&n| n > 0);
        let step = match present().next_back() {
            Some(last) if present().count() > 1 => (h.iter().sum::<u64>() - last) / 255,
            _ => 0,
        };
        if step == 0 {
            return std::array::from_fn(|i| i as u8);
        }
        let mut n = step / 2;
        std::array::from_fn(|i| {
            let v = (n / step).min(255) as u8;
            n += h[i];
            v
        })
    });
    map_channels(image, &luts)
}

/// `ImageOps.autocontrast` (cutoff 0), per channel: stretch the lowest..highest present value to
/// 0..255 with Pillow's truncating lookup table.
pub fn autocontrast(image: &Image) -> Image {
    let luts = histograms(image).map(|h| {
        let lo = h.iter().position(|&n| n > 0).unwrap_or(0);
        let hi = h.iter().rposition(|&n| n > 0).unwrap_or(0);
        if hi <= lo {
            return std::array::from_fn(|i| i as u8);
        }
        let scale = 255.0 / (hi - lo) as f64;
        let offset = -(lo as f64) * scale;
        std::array::from_fn(|i| ((i as f64 * scale + offset) as i64).clamp(0, 255) as u8)
    });
    map_channels(image, &luts)
}

/// torchvision `F.gaussian_blur`: the f32 kernel torchvision builds, reflect padding, a separable
/// convolution in f32 (torchvision convolves with the outer product; the results agree to float
/// rounding), then round-half-to-even back to u8. `kernel_size` and `sigma` are (x, y); sizes
/// must be odd.
pub fn gaussian_blur(image: &Image, kernel_size: (usize, usize), sigma: (f32, f32)) -> Image {
    assert!(kernel_size.0 % 2 == 1 && kernel_size.1 % 2 == 1, "kernel sizes must be odd, got {kernel_size:?}");
    assert!(sigma.0 > 0.0 && sigma.1 > 0.0, "sigma must be positive, got {sigma:?}");
    let (w, h) = (image.width, image.height);
    let (kx, ky) = (gaussian_kernel(kernel_size.0, sigma.0), gaussian_kernel(kernel_size.1, sigma.1));
    // Source index of each tap, reflected at the borders.
    let taps = |len: usize, size: usize| -> Vec<usize> {
        let r = (size / 2) as isize;
        (0..len as isize)
            .flat_map(|i| (-r..=r).map(move |k| PaddingMode::Reflect.source(i + k, len).expect("reflect maps inside")))
            .collect()
    };
    let (cols, rows) = (taps(w, kx.len()), taps(h, ky.len()));
    let mut horizontal = vec![0f32; image.pixels.len()];
    for y in 0..h {
        for x in 0..w {
            for ch in 0..C {
                let src = cols[x * kx.len()..][..kx.len()].iter().map(|&sx| image.pixels[(y * w + sx) * C + ch] as f32);
                horizontal[(y * w + x) * C + ch] = kx.iter().zip(src).map(|(k, v)| k * v).sum();
            }
        }
    }
    let mut out = vec![0u8; image.pixels.len()];
    for y in 0..h {
        for (i, o) in out[y * w * C..(y + 1) * w * C].iter_mut().enumerate() {
            let src = rows[y * ky.len()..][..ky.len()].iter().map(|&sy| horizontal[sy * w * C + i]);
            *o = ky.iter().zip(src).map(|(k, v)| k * v).sum::<f32>().round_ties_even().clamp(0.0, 255.0) as u8;
        }
    }
    Image::new(out, h, w)
}

/// torchvision's `_get_gaussian_kernel1d` in f32: exp(-x²/2σ²) at `linspace(-r, r)`, normalised.
fn gaussian_kernel(size: usize, sigma: f32) -> Vec<f32> {
    let half = (size / 2) as f32;
    let pdf: Vec<f32> = (0..size).map(|i| (-0.5 * ((i as f32 - half) / sigma).powi(2)).exp()).collect();
    let sum: f32 = pdf.iter().sum();
    pdf.iter().map(|p| p / sum).collect()
}

/// torchvision `F.erase` with a constant value: the window `top..top+height`, `left..left+width`
/// (clipped to the image, as tensor slicing does) is set to `value`.
pub fn erase(image: &Image, top: usize, left: usize, height: usize, width: usize, value: [u8; 3]) -> Image {
    let mut out = image.clone();
    let (right, bottom) = ((left + width).min(image.width), (top + height).min(image.height));
    for y in top.min(bottom)..bottom {
        for x in left.min(right)..right {
            out.pixels[(y * image.width + x) * C..][..C].copy_from_slice(&value);
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::Value;
    use std::path::PathBuf;

    fn fixture_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/augment/testdata/pillow")
    }

    fn load_png(name: &str) -> Image {
        let img = image::open(fixture_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}")).into_rgb8();
        let (w, h) = img.dimensions();
        Image::new(img.into_raw(), h as usize, w as usize)
    }

    /// The fixtures written by `testdata/pillow/make_fixtures.py`.
    pub(crate) fn manifest() -> Value {
        let text = std::fs::read_to_string(fixture_dir().join("manifest.json")).expect("manifest.json");
        serde_json::from_str(&text).expect("manifest.json parses")
    }

    /// One reference case: its op, arguments, source image and Pillow's output.
    pub(crate) struct Case {
        pub op: String,
        pub args: Value,
        pub input: Image,
        pub expected: Image,
    }

    /// The manifest's cases whose op satisfies `select`.
    pub(crate) fn cases(select: impl Fn(&str) -> bool) -> Vec<Case> {
        let manifest = manifest();
        let mut out = Vec::new();
        for case in manifest["cases"].as_array().expect("cases") {
            let op = case["op"].as_str().expect("op").to_string();
            if !select(&op) {
                continue;
            }
            let input = load_png(case["input"].as_str().expect("input"));
            let atlas = load_png(case["expected"].as_str().expect("expected"));
            let tile = case["tile"].as_u64().expect("tile") as usize;
            let size = input.pixels.len();
            let expected = Image::new(atlas.pixels[tile * size..(tile + 1) * size].to_vec(), input.height, input.width);
            out.push(Case { op, args: case["args"].clone(), input, expected });
        }
        out
    }

    pub(crate) fn f32_arg(args: &Value, key: &str) -> f32 {
        args[key].as_f64().unwrap_or_else(|| panic!("{key} in {args}")) as f32
    }

    fn usize_arg(args: &Value, key: &str) -> usize {
        args[key].as_u64().unwrap_or_else(|| panic!("{key} in {args}")) as usize
    }

    fn pair(args: &Value, key: &str) -> (f32, f32) {
        (args[key][0].as_f64().expect("pair") as f32, args[key][1].as_f64().expect("pair") as f32)
    }

    pub(crate) fn rgb_arg(args: &Value, key: &str) -> [u8; 3] {
        std::array::from_fn(|i| args[key][i].as_u64().expect("rgb") as u8)
    }

    pub(crate) fn interpolation_arg(args: &Value) -> Interpolation {
        serde_json::from_value(args["interpolation"].clone()).expect("interpolation")
    }

    /// (mean, max) absolute difference over all channels.
    pub(crate) fn difference(a: &Image, b: &Image) -> (f64, u8) {
        assert_eq!((a.height, a.width), (b.height, b.width));
        let diffs = a.pixels.iter().zip(&b.pixels).map(|(&x, &y)| x.abs_diff(y));
        let (sum, max) = diffs.fold((0u64, 0u8), |(s, m), d| (s + d as u64, m.max(d)));
        (sum as f64 / a.pixels.len() as f64, max)
    }

    /// Compares every case with Pillow's output: the mean absolute difference must be at most one
    /// grey level, and ops listed in `exact` must match bit for bit. Prints a per-op summary.
    pub(crate) fn check_against_pillow(cases: &[Case], exact: &[&str], run: impl Fn(&Case) -> (String, Image)) {
        let mut failures = Vec::new();
        let mut summary: Vec<(String, f64, u8, usize)> = Vec::new();
        for case in cases {
            let (label, actual) = run(case);
            let (mean, max) = difference(&actual, &case.expected);
            match summary.iter_mut().find(|s| s.0 == label) {
                Some(s) => *s = (label.clone(), s.1.max(mean), s.2.max(max), s.3 + 1),
                None => summary.push((label.clone(), mean, max, 1)),
            }
            if mean > 1.0 || (exact.contains(&label.as_str()) && max > 0) {
                failures.push(format!("{label} {} on {}x{}: mean {mean:.4}, max {max}", case.args, case.input.width, case.input.height));
            }
        }
        for (label, mean, max, n) in &summary {
            println!("{label:<28} {n:>3} cases  worst mean |diff| {mean:.4}  max {max}");
        }
        assert!(failures.is_empty(), "differences from Pillow:\n{}", failures.join("\n"));
    }

    #[test]
    fn ops_match_pillow() {
        let cases = cases(|op| op != "policy_op");
        assert!(cases.len() > 60, "only {} cases", cases.len());
        let exact = [
            "affine nearest",
            "affine bilinear",
            "affine bicubic",
            "rotate nearest",
            "rotate bilinear",
            "rotate bicubic",
            "adjust_brightness",
            "adjust_contrast",
            "adjust_saturation",
            "adjust_sharpness",
            "adjust_hue",
            "to_grayscale",
            "posterize",
            "solarize",
            "equalize",
            "autocontrast",
            "invert",
            "erase",
        ];
        check_against_pillow(&cases, &exact, |case| {
            let (a, img) = (&case.args, &case.input);
            let factor = || f32_arg(a, "factor");
            let out = match case.op.as_str() {
                "affine" => {
                    let params = AffineParams {
                        angle: f32_arg(a, "angle"),
                        translate: pair(a, "translate"),
                        scale: f32_arg(a, "scale"),
                        shear: pair(a, "shear"),
                        center: (!a["center"].is_null()).then(|| pair(a, "center")),
                    };
                    affine(img, &params, interpolation_arg(a), rgb_arg(a, "fill"))
                }
                "rotate" => rotate(img, f32_arg(a, "angle"), interpolation_arg(a), rgb_arg(a, "fill")),
                "adjust_brightness" => adjust_brightness(img, factor()),
                "adjust_contrast" => adjust_contrast(img, factor()),
                "adjust_saturation" => adjust_saturation(img, factor()),
                "adjust_sharpness" => adjust_sharpness(img, factor()),
                "adjust_hue" => adjust_hue(img, f32_arg(a, "hue_factor")),
                "to_grayscale" => to_grayscale(img),
                "posterize" => posterize(img, usize_arg(a, "bits") as u8),
                "solarize" => solarize(img, usize_arg(a, "threshold") as u8),
                "equalize" => equalize(img),
                "autocontrast" => autocontrast(img),
                "invert" => invert(img),
                "gaussian_blur" => {
                    let size = (a["kernel_size"][0].as_u64().unwrap() as usize, a["kernel_size"][1].as_u64().unwrap() as usize);
                    gaussian_blur(img, size, pair(a, "sigma"))
                }
                "erase" => erase(
                    img,
                    usize_arg(a, "top"),
                    usize_arg(a, "left"),
                    usize_arg(a, "height"),
                    usize_arg(a, "width"),
                    rgb_arg(a, "value"),
                ),
                other => panic!("no Rust op for fixture op {other}"),
            };
            let label = match case.op.as_str() {
                "affine" | "rotate" => format!("{} {}", case.op, a["interpolation"].as_str().unwrap()),
                op => op.to_string(),
            };
            (label, out)
        });
    }

    fn gradient() -> Image {
        let pixels = (0..6 * 5).flat_map(|i| [(i * 8) as u8, (255 - i * 5) as u8, (i % 7 * 30) as u8]).collect();
        Image::new(pixels, 6, 5)
    }

    #[test]
    fn identity_parameters_leave_the_image_unchanged() {
        let img = gradient();
        for interpolation in [Interpolation::Nearest, Interpolation::Bilinear, Interpolation::Bicubic] {
            assert_eq!(affine(&img, &AffineParams::identity(), interpolation, [1, 2, 3]), img, "{interpolation:?}");
            assert_eq!(rotate(&img, 360.0, interpolation, [1, 2, 3]), img, "{interpolation:?}");
        }
        for f in [adjust_brightness, adjust_contrast, adjust_saturation, adjust_sharpness] {
            assert_eq!(f(&img, 1.0), img);
        }
        assert_eq!(posterize(&img, 8), img);
        assert_eq!(solarize(&img, 0), invert(&img));
        assert_eq!(invert(&invert(&img)), img);
        assert_eq!(erase(&img, 10, 10, 3, 3, [0; 3]), img);
    }

    #[test]
    fn translation_moves_pixels_and_fills_the_rest() {
        let img = gradient();
        let params = AffineParams { translate: (2.0, 1.0), ..AffineParams::identity() };
        let out = affine(&img, &params, Interpolation::Nearest, [7, 8, 9]);
        let px = |im: &Image, y: usize, x: usize| im.pixels[(y * im.width + x) * C..][..C].to_vec();
        assert_eq!(px(&out, 1, 2), px(&img, 0, 0));
        assert_eq!(px(&out, 5, 4), px(&img, 4, 2));
        assert_eq!(px(&out, 0, 0), vec![7, 8, 9]);
        assert_eq!(px(&out, 3, 1), vec![7, 8, 9]);
    }

    #[test]
    fn constant_image_stays_constant_under_blur_and_enhancers() {
        let flat = Image::new(vec![77; 9 * 8 * 3], 9, 8);
        assert_eq!(gaussian_blur(&flat, (5, 3), (1.3, 0.7)), flat);
        assert_eq!(adjust_sharpness(&flat, 1.8), flat);
        assert_eq!(adjust_contrast(&flat, 0.3), flat);
        assert_eq!(autocontrast(&flat), flat);
        assert_eq!(equalize(&flat), flat);
    }
}
