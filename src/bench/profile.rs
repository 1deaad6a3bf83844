//! `ferrovision bench train --profile`: where the time of a training step goes, op by op.
//!
//! The step's three phases (forward with the loss, backward, optimizer update) are timed inside
//! the step itself. In the forward pass every convolution, BatchNorm and linear layer is timed as
//! it runs (the CPU backend computes an op when it is called; `models::trace` records it). The
//! backward pass runs inside burn's autodiff graph, where ops cannot be timed one by one, so each
//! layer's backward is timed alone at the same shapes (for a convolution: the input gradient and
//! the weight gradient separately). What the measured phases hold beyond the timed layers
//! (activations, residual adds, pooling, the loss, graph bookkeeping, allocation) is reported as
//! the rest of that phase.

use std::time::Instant;

use anyhow::Result;
use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{BatchNormConfig, PaddingConfig2d};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::Distribution;

use super::{StepBench, Workload};
use crate::models::layers::{self, ConvKernel};
use crate::models::trace::{self, Layer, LayerKind};
use crate::train::loss;

/// One line of the profile: seconds per step and the floating-point operations done in them
/// (0 where not counted).
#[derive(Debug, Clone)]
pub struct Row {
    pub op: String,
    pub seconds: f64,
    pub flops: f64,
}

/// A training step's time, measured (`step`) and split into [`Row`]s that add up to it.
#[derive(Debug, Clone)]
pub struct Profile {
    pub step: f64,
    pub batch: usize,
    pub rows: Vec<Row>,
}

impl Profile {
    /// The profile as a table: per op milliseconds, share of the step and, for convolutions,
    /// GFLOP/s and their fraction of `peak` (GFLOP/s).
    pub fn table(&self, peak: f64) -> String {
        let mut lines = vec![format!("{:<66} {:>9} {:>6} {:>8} {:>6}", "op", "ms/step", "share", "GFLOP/s", "peak")];
        for row in &self.rows {
            let mut line = format!("{:<66} {:>9.1} {:>5.1}%", row.op, 1e3 * row.seconds, 100.0 * row.seconds / self.step);
            if row.flops > 0.0 && row.seconds > 0.0 {
                let rate = row.flops / row.seconds / 1e9;
                line += &format!(" {rate:>8.1} {:>5.0}%", 100.0 * rate / peak);
            }
            lines.push(line);
        }
        lines.push(format!("{:<66} {:>9.1} 100.0%", "training step", 1e3 * self.step));
        lines.join("\n")
    }
}

/// Profiles training steps of the workload, averaged over `steps` after `warmup`.
pub fn train_step(w: &Workload, steps: usize, warmup: usize, device: &Device) -> Result<Profile> {
    let StepBench { mut model, mut optimizer, images, targets } = StepBench::new(w, device)?;
    let batch = w.batch;
    let device = device.clone().autodiff();
    let (mut phases, mut layers) = ([0.0; 3], Vec::new());
    for i in 0..warmup + steps {
        let start = Instant::now();
        let ((loss, _), traced) = trace::trace(false, || {
            let loss = loss::cross_entropy(w.precision.logits(&model, images.clone()), targets.clone());
            let value: f32 = loss.clone().into_scalar();
            (loss, value)
        });
        let forward = start.elapsed().as_secs_f64();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let backward = start.elapsed().as_secs_f64() - forward;
        model = optimizer.step(0.01, model, grads);
        let update = start.elapsed().as_secs_f64() - forward - backward;
        if i < warmup {
            continue;
        }
        for (total, t) in phases.iter_mut().zip([forward, backward, update]) {
            *total += t / steps as f64;
        }
        if layers.is_empty() {
            layers = traced.iter().map(|layer| Layer { seconds: 0.0, ..layer.clone() }).collect();
        }
        for (layer, call) in layers.iter_mut().zip(&traced) {
            layer.seconds += call.seconds / steps as f64;
        }
    }
    let [forward, backward, update] = phases;
    let mut rows = Vec::new();
    let mut add = |op: String, seconds: f64, flops: f64| rows.push(Row { op, seconds, flops });
    let convs: Vec<&Layer> = layers.iter().filter(|l| l.kind == LayerKind::Conv2d).collect();
    let mut timed = [0.0; 2];
    for kernel in [ConvKernel::Winograd, ConvKernel::Depthwise, ConvKernel::Dense, ConvKernel::Burn] {
        let members: Vec<&Layer> = convs.iter().copied().filter(|l| l.runs_on == Some(kernel)).collect();
        if members.is_empty() {
            continue;
        }
        let flops = |l: &Layer| batch as f64 * l.flops as f64;
        let name = format!("{}, {} layers", kernel_name(kernel), members.len());
        let fwd: f64 = members.iter().map(|l| l.seconds).sum();
        add(format!("forward: {name}"), fwd, members.iter().map(|l| flops(l)).sum());
        // The network's first convolution reads the images, whose gradient nobody needs.
        let needs_input_grad = |l: &&&Layer| convs.first().is_none_or(|first| first.weight != l.weight);
        let grad_layers: Vec<&Layer> = members.iter().filter(needs_input_grad).copied().collect();
        let input_grad: f64 = grad_layers.iter().map(|l| conv_backward_seconds(l, batch, Wrt::Input, &device)).sum();
        if !grad_layers.is_empty() {
            add(format!("backward: {name}, input grad"), input_grad, grad_layers.iter().map(|l| flops(l)).sum());
        }
        let weight_grad: f64 = members.iter().map(|l| conv_backward_seconds(l, batch, Wrt::Weight, &device)).sum();
        add(format!("backward: {name}, weight grad"), weight_grad, members.iter().map(|l| flops(l)).sum());
        timed[0] += fwd;
        timed[1] += input_grad + weight_grad;
    }
    let norms: Vec<&Layer> = layers.iter().filter(|l| l.kind == LayerKind::BatchNorm).collect();
    let bn_fwd: f64 = norms.iter().map(|l| l.seconds).sum();
    let bn_bwd: f64 = norms.iter().map(|l| batch_norm_backward_seconds(l, batch, &device)).sum();
    add(format!("forward: BatchNorm ({} layers)", norms.len()), bn_fwd, 0.0);
    add(format!("backward: BatchNorm ({} layers)", norms.len()), bn_bwd, 0.0);
    // The rest: what the measured phase holds beyond its timed layers (the backward rest can come
    // out negative: alone, a layer's backward runs with colder caches than inside the step).
    add("forward: rest (activations, adds, pooling, linear, loss)".into(), forward - timed[0] - bn_fwd, 0.0);
    add("backward: rest (step's backward - layers timed alone)".into(), backward - timed[1] - bn_bwd, 0.0);
    add("optimizer update (SGD momentum)".into(), update, 0.0);
    Ok(Profile { step: forward + backward + update, batch, rows })
}

/// How the profile names the convolutions of each kernel.
fn kernel_name(kernel: ConvKernel) -> &'static str {
    match kernel {
        ConvKernel::Winograd => "conv 3x3 s1 (ours, Winograd)",
        ConvKernel::Depthwise => "conv depthwise (ours)",
        ConvKernel::Dense => "conv, other (ours, im2col products)",
        ConvKernel::Burn => "conv (burn-flex)",
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Wrt {
    Input,
    Weight,
}

/// Repetitions of each isolated measurement (after one untimed run).
const REPEATS: usize = 2;

/// Mean seconds of `run` over [`REPEATS`] calls after one untimed call.
fn time(mut run: impl FnMut()) -> f64 {
    run();
    let start = Instant::now();
    for _ in 0..REPEATS {
        run();
    }
    start.elapsed().as_secs_f64() / REPEATS as f64
}

/// Seconds of one gradient of a traced convolution, run alone at `batch` through the models'
/// own convolution path: forward + that backward, minus the forward.
fn conv_backward_seconds(layer: &Layer, batch: usize, wrt: Wrt, device: &Device) -> f64 {
    let (&[channels, height, width], &[_, out_height, out_width]) = (&layer.input[..], &layer.output[..]) else { return 0.0 };
    let Some([outs, per_group, kh, kw]) = layer.kernel.as_ref().map(|k| k.dims()) else { return 0.0 };
    let [sh, sw] = layer.stride;
    // Symmetric padding that gives the traced output size (TensorFlow's uneven "SAME" padding is
    // off by one pixel, which does not matter for timing).
    let pad = |out: usize, k: usize, s: usize, size: usize| ((out - 1) * s + k).saturating_sub(size).div_ceil(2);
    let (ph, pw) = (pad(out_height, kh, sh, height), pad(out_width, kw, sw, width));
    let conv = Conv2dConfig::new([channels, outs], [kh, kw])
        .with_stride([sh, sw])
        .with_padding(PaddingConfig2d::Explicit(ph, pw, ph, pw))
        .with_groups(channels / per_group)
        .with_bias(false)
        .init(device);
    let x = Tensor::<4>::random([batch, channels, height, width], Distribution::Normal(0.0, 1.0), device);
    let (conv, x) = match wrt {
        Wrt::Input => (conv.no_grad(), x.require_grad()),
        Wrt::Weight => (conv, x),
    };
    let forward = time(|| {
        let _ = layers::conv_forward(&conv, x.clone()).into_data();
    });
    let both = time(|| {
        let _ = layers::conv_forward(&conv, x.clone()).sum().backward();
    });
    (both - forward).max(0.0)
}

/// Seconds of a traced BatchNorm's backward in training mode, run alone at `batch` through the
/// models' own BatchNorm path.
fn batch_norm_backward_seconds(layer: &Layer, batch: usize, device: &Device) -> f64 {
    let &[channels, height, width] = &layer.input[..] else { return 0.0 };
    let bn = BatchNormConfig::new(channels).init(device);
    let x = Tensor::<4>::random([batch, channels, height, width], Distribution::Normal(0.0, 1.0), device).require_grad();
    let forward = time(|| {
        let _ = crate::kernels::batch_norm::forward(&bn, x.clone(), crate::kernels::activation::Act::Identity).into_data();
    });
    let both = time(|| {
        let _ = crate::kernels::batch_norm::forward(&bn, x.clone(), crate::kernels::activation::Act::Identity).sum().backward();
    });
    (both - forward).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ModelConfig;
    use crate::train::Precision;

    #[test]
    fn rows_add_up_to_the_step_and_sort_the_convolutions_by_kernel() {
        let model = ModelConfig { name: "resnet18_cifar".into(), ..Default::default() };
        let workload = Workload { model: &model, classes: 10, batch: 2, size: 32, precision: Precision::F32 };
        let profile = train_step(&workload, 1, 1, &Device::flex()).unwrap();
        let total: f64 = profile.rows.iter().map(|row| row.seconds).sum();
        assert!((total - profile.step).abs() < 1e-9 * profile.step.max(1.0), "{total} vs {}", profile.step);
        let ops: Vec<&str> = profile.rows.iter().map(|row| row.op.as_str()).collect();
        // 17 3x3 convs, 3 of them strided, and 3 1x1 projections; 20 BatchNorms. The 3-channel stem
        // goes to the im2col products (`winograd::pays_off`).
        for op in [
            "forward: conv 3x3 s1 (ours, Winograd), 13 layers",
            "forward: conv, other (ours, im2col products), 7 layers",
            "forward: BatchNorm (20 layers)",
        ] {
            assert!(ops.contains(&op), "{op} missing from {ops:?}");
        }
        for row in profile.rows.iter().filter(|row| row.op.contains("conv")) {
            assert!(row.seconds > 0.0 && row.flops > 0.0, "{row:?}");
        }
    }
}
