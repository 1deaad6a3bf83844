//! What the training tests share: a small network, a batch of random images, and the gradients
//! of a step as one vector to compare.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::DType;

use crate::models::{Classifier, ModelConfig, build};
use crate::train::loss;

/// A small ResNet: convs, BatchNorm, residual additions, pooling, linear.
pub fn small_resnet(device: &Device) -> Classifier {
    let config = ModelConfig {
        name: "resnet18_cifar".into(),
        stem_channels: Some(8),
        widths: Some(vec![8, 16]),
        blocks: Some(vec![1, 1]),
        strides: Some(vec![1, 2]),
        ..Default::default()
    };
    build(&config, 10, device).unwrap()
}

/// Eight random 32x32 images with labels of 10 classes (seeded on `device`) and their one-hot targets.
pub fn batch(device: &Device) -> (Tensor<4>, Tensor<2>, Vec<i64>) {
    sized_batch(device, 32)
}

/// [`batch`] with images of `side` x `side` pixels.
pub fn sized_batch(device: &Device, side: usize) -> (Tensor<4>, Tensor<2>, Vec<i64>) {
    device.seed(3);
    let images = Tensor::<4>::random([8, 3, side, side], burn::tensor::Distribution::Normal(0.0, 1.0), device);
    let labels = vec![0, 3, 5, 9, 1, 2, 4, 8];
    (images, loss::batch_targets(&labels, None, 10, 0.0, device), labels)
}

/// Per-parameter gradients (all f32), concatenated in visiting order, and how many parameters had one.
pub fn gradient_values(grads: &GradientsParams, model: &Classifier) -> (Vec<f32>, usize) {
    struct Collect<'a>(&'a GradientsParams, Vec<f32>, usize);
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(param.id) {
                assert_eq!(g.dtype(), DType::F32);
                self.1.extend(g.into_data().try_to_vec::<f32>().unwrap());
                self.2 += 1;
            }
        }
    }
    let mut collect = Collect(grads, Vec::new(), 0);
    model.visit(&mut collect);
    (collect.1, collect.2)
}

/// The cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut a2, mut b2) = (0.0f64, 0.0f64, 0.0f64);
    for (&a, &b) in a.iter().zip(b) {
        (dot, a2, b2) = (dot + (a * b) as f64, a2 + (a * a) as f64, b2 + (b * b) as f64);
    }
    dot / (a2.sqrt() * b2.sqrt())
}
