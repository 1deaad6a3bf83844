//! Our own compute kernels for layers where burn's are slow, each behind a function and a module
//! that behave exactly like burn's equivalent (and fall back to it where ours do not apply).
//!
//! Each kernel enters burn as a backend extension (`#[backend_extension(Flex, Autodiff)]`) whose
//! flex implementation runs on the tensors' host memory; the helpers below are what they share.

pub mod batch_norm;
pub mod dense;
pub mod depthwise;
pub mod winograd;

use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, ExtensionType, TensorMetadata};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Whether the models run their layers through our kernels (the default) or through burn's own
/// ops everywhere: `bench train --kernels burn` measures the difference, and a suspected kernel
/// bug can be ruled out without a rebuild.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The optional bias of a convolution extension (the extension macro maps tensors inside
/// derived types, but not inside an `Option`).
#[derive(ExtensionType)]
enum Bias<B: Backend> {
    Add(FloatTensor<B>),
    Zero,
}

impl<B: Backend> Bias<B> {
    fn into_option(self) -> Option<FloatTensor<B>> {
        match self {
            Bias::Add(bias) => Some(bias),
            Bias::Zero => None,
        }
    }
}

fn contiguous(tensor: FlexTensor) -> FlexTensor {
    if tensor.as_slice::<f32>().is_some() { tensor } else { tensor.to_contiguous() }
}

/// The values of a contiguous f32 tensor that owns its storage alone and uses all of it.
fn exclusive_f32s(tensor: &mut FlexTensor) -> Option<&mut [f32]> {
    let len = tensor.shape().num_elements();
    tensor.try_storage_mut::<f32>().filter(|values| values.len() == len)
}

fn f32s(tensor: &FlexTensor) -> &[f32] {
    tensor.as_slice::<f32>().expect("our kernels take contiguous f32 tensors")
}

/// Whether this CPU has AVX2 and FMA (checked at run time; the kernels have a portable path).
fn fma_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A convolution's bias gradient: `out_grad` `[batch, channels, plane]` summed over images and
/// pixels, `[channels]`.
fn bias_gradient(out_grad: &[f32], batch: usize, channels: usize, plane: usize) -> Vec<f32> {
    (0..channels).into_par_iter().map(|c| (0..batch).map(|n| out_grad[(n * channels + c) * plane..][..plane].iter().sum::<f32>()).sum()).collect()
}
