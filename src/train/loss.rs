//! Cross-entropy against soft targets, which covers plain labels and label smoothing
//! (PyTorch's `label_smoothing`: the target is `(1-e)*onehot + e/K`).

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::log_softmax;

/// Smoothed one-hot targets `[batch, classes]`, built on the host.
pub fn smoothed_targets(labels: &[i64], num_classes: usize, smoothing: f64, device: &Device) -> Tensor<2> {
    let off = (smoothing / num_classes as f64) as f32;
    let on = (1.0 - smoothing) as f32 + off;
    let mut values = vec![off; labels.len() * num_classes];
    for (row, &label) in labels.iter().enumerate() {
        values[row * num_classes + label as usize] = on;
    }
    Tensor::from_data(TensorData::new(values, [labels.len(), num_classes]), device)
}

/// Targets of a batch: smoothed one-hot labels, and when MixUp/CutMix mixed the images
/// (`mix_lambda`), the same blend of each label with the mirrored position's label (timm's
/// `mixup_target`).
pub fn batch_targets(labels: &[i64], mix_lambda: Option<f32>, num_classes: usize, smoothing: f64, device: &Device) -> Tensor<2> {
    let own = smoothed_targets(labels, num_classes, smoothing, device);
    match mix_lambda {
        Some(lambda) => {
            let mirrored: Vec<i64> = labels.iter().rev().copied().collect();
            own * lambda + smoothed_targets(&mirrored, num_classes, smoothing, device) * (1.0 - lambda)
        }
        None => own,
    }
}

/// Mean over the batch of `-sum_k target_k * log_softmax(logits)_k`.
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    (log_softmax(logits, 1) * targets).sum_dim(1).mean().neg()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_targets_blend_with_the_mirrored_label() {
        let device = Device::flex();
        let targets: Vec<f32> = batch_targets(&[0, 2], Some(0.75), 3, 0.0, &device).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(targets, vec![0.75, 0.0, 0.25, 0.25, 0.0, 0.75]);
        let plain: Vec<f32> = batch_targets(&[1], None, 2, 0.0, &device).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(plain, vec![0.0, 1.0]);
    }

    #[test]
    fn matches_hand_computed_values() {
        let device = Device::flex();
        let logits = Tensor::<2>::from_data(TensorData::new(vec![2.0f32, 0.0, 0.0, 0.0, 1.0, 3.0], [2, 3]), &device);
        let plain: f32 = cross_entropy(logits.clone(), smoothed_targets(&[0, 2], 3, 0.0, &device)).into_scalar();
        // -log softmax: row 0 label 0, row 1 label 2.
        let lse0 = (2f32.exp() + 2.0).ln();
        let lse1 = (1.0 + 1f32.exp() + 3f32.exp()).ln();
        let expected = ((lse0 - 2.0) + (lse1 - 3.0)) / 2.0;
        assert!((plain - expected).abs() < 1e-5, "{plain} vs {expected}");
        let smoothed: f32 = cross_entropy(logits, smoothed_targets(&[0, 2], 3, 0.3, &device)).into_scalar();
        let mean_nll0 = (3.0 * lse0 - 2.0) / 3.0;
        let mean_nll1 = (3.0 * lse1 - 4.0) / 3.0;
        let expected_smooth = (0.7 * (lse0 - 2.0) + 0.3 * mean_nll0 + 0.7 * (lse1 - 3.0) + 0.3 * mean_nll1) / 2.0;
        assert!((smoothed - expected_smooth).abs() < 1e-5, "{smoothed} vs {expected_smooth}");
    }
}
