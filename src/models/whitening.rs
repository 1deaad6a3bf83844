//! Patch whitening (the first layer of the airbench and hlb-CIFAR10 speed-run nets): a frozen
//! `k x k` convolution, without padding, whose filters are the eigenvectors of the training
//! images' patch covariance scaled by `1 / sqrt(eigenvalue + eps)`, each followed by its negative.
//! Its outputs are decorrelated, unit-variance views of every patch, so the layers above start
//! from whitened input; only its bias trains. The filters come from data, not from a random draw:
//! [`PatchWhitening::fit`] sets them from a sample of training images before training starts.

use burn::module::{Module, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::TensorData;

use super::{layers, trace};

/// Added to every eigenvalue before the square root: directions of (almost) no variance are
/// amplified by at most `1 / sqrt(eps)`.
pub const EIGENVALUE_EPS: f64 = 5e-4;

#[derive(Module, Debug)]
pub struct PatchWhitening {
    pub conv: Conv2d,
}

impl PatchWhitening {
    /// `2 * channels * patch^2` filters over `patch x patch` windows (an image of side `s` comes
    /// out at `s - patch + 1`); the weight is frozen, the bias starts at zero and trains.
    pub fn new(channels: usize, patch: usize, device: &Device) -> Self {
        // A pruned model's plan may keep fewer filters (see `layers::planned_channels`).
        let [channels, filters] = layers::planned_channels([channels, 2 * channels * patch * patch]);
        let mut conv =
            Conv2dConfig::new([channels, filters], [patch, patch]).with_padding(PaddingConfig2d::Valid).with_bias(true).init(device);
        layers::constructed(conv.weight.id);
        conv.weight = conv.weight.set_require_grad(false);
        // `zeros_like` is untracked: the bias is marked trainable again.
        conv.bias = conv.bias.map(|b| b.map(|b| b.zeros_like()).set_require_grad(true));
        Self { conv }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        trace::conv2d(&self.conv, x)
    }

    /// The filters computed from `images` (`[n, channels, height, width]`, normalized as the
    /// network sees them): the eigenvectors of the uncentred patch covariance, largest eigenvalue
    /// first, each scaled by `1 / sqrt(eigenvalue + eps)`, then the same filters negated.
    pub fn fit(mut self, images: &Tensor<4>) -> anyhow::Result<Self> {
        let [filters, channels, patch, _] = self.conv.weight.dims();
        let d = channels * patch * patch;
        anyhow::ensure!(
            filters == 2 * d,
            "patch whitening: the layer has {filters} filters, fitting needs {} (a pruned layer is not refitted)",
            2 * d
        );
        let dims = images.dims();
        anyhow::ensure!(dims[1] == channels, "patch whitening: images have {} channels, the layer reads {channels}", dims[1]);
        anyhow::ensure!(
            dims[2] >= patch && dims[3] >= patch,
            "patch whitening: images of {}x{} are smaller than a patch",
            dims[2],
            dims[3]
        );
        let values: Vec<f32> = images.clone().into_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let covariance = patch_covariance(&values, dims, patch);
        let (eigenvalues, eigenvectors) = symmetric_eigen(covariance, d);
        let mut weights = Vec::with_capacity(filters * d);
        for sign in [1.0, -1.0] {
            for (value, vector) in eigenvalues.iter().zip(&eigenvectors) {
                let scale = sign / (value.max(0.0) + EIGENVALUE_EPS).sqrt();
                weights.extend(vector.iter().map(|v| (v * scale) as f32));
            }
        }
        let device = self.conv.weight.device();
        let weight = Tensor::<4>::from_data(TensorData::new(weights, [filters, channels, patch, patch]), &device);
        self.conv.weight = Param::initialized(self.conv.weight.id, weight).set_require_grad(false);
        Ok(self)
    }
}

/// `E[p p^T]` over every `patch x patch` window `p` of the images (`dims` = `[n, c, h, w]`,
/// row-major values), a `d x d` matrix with `d = c * patch^2` ordered like a conv filter
/// (channel, row, column). Uncentred, as the speed-run nets compute it.
pub fn patch_covariance(values: &[f32], [n, c, h, w]: [usize; 4], patch: usize) -> Vec<f64> {
    let d = c * patch * patch;
    let (rows, cols) = (h + 1 - patch, w + 1 - patch);
    let mut sums = vec![0.0f64; d * d];
    let mut p = vec![0.0f64; d];
    for image in values.chunks_exact(c * h * w) {
        for y in 0..rows {
            for x in 0..cols {
                for (i, v) in p.iter_mut().enumerate() {
                    let (ch, ky, kx) = (i / (patch * patch), i / patch % patch, i % patch);
                    *v = image[ch * h * w + (y + ky) * w + x + kx] as f64;
                }
                for i in 0..d {
                    for j in i..d {
                        sums[i * d + j] += p[i] * p[j];
                    }
                }
            }
        }
    }
    let count = (n * rows * cols).max(1) as f64;
    for i in 0..d {
        for j in i..d {
            let mean = sums[i * d + j] / count;
            sums[i * d + j] = mean;
            sums[j * d + i] = mean;
        }
    }
    sums
}

/// Eigenvalues (largest first) and unit eigenvectors of a symmetric `d x d` matrix (row-major),
/// by cyclic Jacobi rotations: exact to rounding for the small matrices whitening needs.
pub fn symmetric_eigen(mut a: Vec<f64>, d: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    assert_eq!(a.len(), d * d, "symmetric_eigen: expected a {d}x{d} matrix");
    let mut v: Vec<f64> = (0..d * d).map(|i| if i / d == i % d { 1.0 } else { 0.0 }).collect();
    let scale = a.iter().map(|x| x * x).sum::<f64>().max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..d * d).filter(|i| i / d != i % d).map(|i| a[i] * a[i]).sum();
        if off <= 1e-30 * scale {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq == 0.0 {
                    continue;
                }
                // The rotation in the (p, q) plane that zeroes a[p][q] (Numerical Recipes' choice
                // of the smaller angle).
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                let rotate = |m: &mut [f64], i: usize, j: usize| {
                    let (x, y) = (m[i], m[j]);
                    m[i] = c * x - s * y;
                    m[j] = s * x + c * y;
                };
                for k in 0..d {
                    rotate(&mut a, k * d + p, k * d + q);
                    rotate(&mut v, k * d + p, k * d + q);
                }
                for k in 0..d {
                    rotate(&mut a, p * d + k, q * d + k);
                }
            }
        }
    }
    let mut pairs: Vec<(f64, Vec<f64>)> = (0..d).map(|j| (a[j * d + j], (0..d).map(|k| v[k * d + j]).collect())).collect();
    pairs.sort_by(|x, y| y.0.total_cmp(&x.0));
    pairs.into_iter().unzip()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn eigenpairs_reconstruct_the_matrix() {
        // A random symmetric 12x12 matrix (the size of 2x2 RGB patches).
        let d = 12;
        let mut state = 7u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let b: Vec<f64> = (0..d * d).map(|_| next()).collect();
        let a: Vec<f64> = (0..d * d).map(|i| b[i] + b[i % d * d + i / d]).collect();
        let (values, vectors) = symmetric_eigen(a.clone(), d);
        assert!(values.windows(2).all(|w| w[0] >= w[1]), "largest first: {values:?}");
        for (value, vector) in values.iter().zip(&vectors) {
            let norm: f64 = vector.iter().map(|x| x * x).sum();
            assert!((norm - 1.0).abs() < 1e-12);
            for i in 0..d {
                let av: f64 = (0..d).map(|k| a[i * d + k] * vector[k]).sum();
                assert!((av - value * vector[i]).abs() < 1e-10, "A v = lambda v, row {i}");
            }
        }
        // The trace is the sum of the eigenvalues.
        let trace: f64 = (0..d).map(|i| a[i * d + i]).sum();
        assert!((trace - values.iter().sum::<f64>()).abs() < 1e-10);
    }

    #[test]
    fn the_covariance_of_known_patches_is_exact() {
        // One 1-channel 2x3 image, 2x2 patches at x = 0 and 1: [1,2,4,5] and [2,3,5,6].
        let image = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let cov = patch_covariance(&image, [1, 1, 2, 3], 2);
        let (p, q) = ([1.0, 2.0, 4.0, 5.0], [2.0, 3.0, 5.0, 6.0]);
        for i in 0..4 {
            for j in 0..4 {
                assert_eq!(cov[i * 4 + j], (p[i] * p[j] + q[i] * q[j]) / 2.0);
            }
        }
    }

    #[test]
    fn fitted_filters_whiten_data_of_known_covariance() {
        // Pixels with a known correlation: every image is `a * u + b * v + small noise` for fixed
        // 2x2x3 patterns u, v repeated over the image, so the patch covariance has two large
        // eigenvalues; after whitening the first half of the outputs must be uncorrelated with
        // (close to) unit variance.
        let device = Device::flex();
        device.seed(1);
        let n = 256;
        let base = Tensor::<4>::random([n, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);
        let row_mix = base.clone().slice([0..n, 0..3, 0..1, 0..8]).repeat_dim(2, 8).mul_scalar(3.0);
        let images = base + row_mix; // strongly correlated rows: a non-identity covariance
        let layer = PatchWhitening::new(3, 2, &device).fit(&images).unwrap();
        let out = layer.forward(images);
        let [_, filters, h, w] = out.dims();
        assert_eq!((filters, h, w), (24, 7, 7));
        let half = out.slice([0..n, 0..12, 0..7, 0..7]).swap_dims(0, 1).reshape([12, n * 49]);
        let covariance = half.clone().matmul(half.transpose()).div_scalar((n * 49) as f64);
        let cov: Vec<f32> = covariance.into_data().try_to_vec::<f32>().unwrap();
        for i in 0..12 {
            for j in 0..12 {
                let expected = if i == j { 1.0 } else { 0.0 };
                assert!((cov[i * 12 + j] - expected).abs() < 0.02, "whitened covariance [{i}][{j}] = {}", cov[i * 12 + j]);
            }
        }
    }
}
