//! What each layer of a forward pass produced: output shape, parameters, FLOPs and, on request,
//! the activations themselves, for `ferrovision summary` and `ferrovision viz activations`
//! (the role of PyTorch's forward hooks and torchinfo).
//!
//! The models run their convolutions, BatchNorms and linear layers through the functions here;
//! while `trace` runs a forward pass they report to a recorder of the calling thread, otherwise
//! they only forward. A layer is identified by its weight's `ParamId`, which `summarize` maps to
//! the parameter path, so no model has to name its layers twice.

use std::cell::RefCell;
use std::time::Instant;

use burn::module::ParamId;
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, Linear};
use burn::prelude::*;

use super::layers::{Act, ConvKernel};
use super::{Classifier, group_digits, named_params};

/// The kind of a traced layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    Conv2d,
    BatchNorm,
    Linear,
}

impl LayerKind {
    pub fn name(self) -> &'static str {
        match self {
            LayerKind::Conv2d => "Conv2d",
            LayerKind::BatchNorm => "BatchNorm2d",
            LayerKind::Linear => "Linear",
        }
    }
}

/// One layer's call during a traced forward pass.
#[derive(Clone, Debug)]
pub struct Layer {
    /// The layer's parameter path without the leaf and without `net.<Variant>.`
    /// (`stages.0.first.conv`, `head.fc`): the names `viz activations --layers` takes. Set by
    /// `summarize`; empty in a bare `trace`.
    pub name: String,
    /// The id of the layer's weight (BatchNorm: gamma).
    pub weight: ParamId,
    pub kind: LayerKind,
    /// Input shape without the batch dimension.
    pub input: Vec<usize>,
    /// Output shape without the batch dimension.
    pub output: Vec<usize>,
    /// A convolution's stride (both directions' when they differ: `[vertical, horizontal]`);
    /// `[1, 1]` for the other kinds.
    pub stride: [usize; 2],
    /// Trainable parameters (weight and bias; BatchNorm's running statistics are buffers).
    pub params: usize,
    /// Floating-point operations per image, a multiply-add counted as two.
    pub flops: u64,
    /// The output, `[batch, channels, height, width]` (a linear layer's as `[batch, features, 1, 1]`),
    /// when the trace keeps activations.
    pub activation: Option<Tensor<4>>,
    /// A convolution's weight `[out, in / groups, kh, kw]`.
    pub kernel: Option<Tensor<4>>,
    /// The kernel a convolution ran on.
    pub runs_on: Option<ConvKernel>,
    /// Wall-clock seconds of the call (the CPU backend runs each op when it is called).
    pub seconds: f64,
}

struct Recorder {
    keep_activations: bool,
    calls: Vec<Layer>,
    /// Set by [`probe`] only.
    probe: Option<Probe>,
}

/// What a channel probe records: every traced call (layers, residual additions, channel gates)
/// with its inputs, and which output channel of which call it perturbs.
struct Probe {
    perturb: Option<(usize, usize)>,
    nodes: Vec<Node>,
}

/// What a traced call does with channels, as a channel probe sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A convolution, BatchNorm or linear layer (its [`Layer`] says which).
    Layer,
    /// A residual addition: both inputs and the output share their channels.
    Add,
    /// Channel gating (squeeze-excite's `x * gates`): the same.
    Gate,
}

/// One traced call of a channel probe.
#[derive(Clone, Debug)]
pub struct Node {
    pub kind: NodeKind,
    /// The index of the call's [`Layer`] for `NodeKind::Layer`.
    pub layer: Option<usize>,
    /// The inputs, `[batch, channels, height, width]` (a linear layer's as `[batch, features, 1, 1]`).
    pub inputs: Vec<Tensor<4>>,
    pub output_channels: usize,
}

thread_local! {
    static RECORDER: RefCell<Option<Recorder>> = const { RefCell::new(None) };
}

/// Runs `forward` while recording every traced layer call it makes on this thread.
pub fn trace<R>(keep_activations: bool, forward: impl FnOnce() -> R) -> (R, Vec<Layer>) {
    let (result, recorder) = run_recorded(Recorder { keep_activations, calls: Vec::new(), probe: None }, forward);
    (result, recorder.calls)
}

/// Runs `forward` as a channel probe: records every traced call with its inputs (see [`Node`])
/// and, where `perturb` is `(node, channel)`, adds a fixed pattern to that output channel of that
/// call. Comparing the inputs of later calls with those of an unperturbed probe shows which of
/// their channels read that channel (what `prune::graph` builds its dependency groups from).
pub fn probe<R>(perturb: Option<(usize, usize)>, forward: impl FnOnce() -> R) -> (R, Vec<Layer>, Vec<Node>) {
    let recorder = Recorder { keep_activations: false, calls: Vec::new(), probe: Some(Probe { perturb, nodes: Vec::new() }) };
    let (result, recorder) = run_recorded(recorder, forward);
    (result, recorder.calls, recorder.probe.map(|p| p.nodes).unwrap_or_default())
}

fn run_recorded<R>(recorder: Recorder, forward: impl FnOnce() -> R) -> (R, Recorder) {
    RECORDER.with(|r| *r.borrow_mut() = Some(recorder));
    // Taken back even if `forward` panics, so a later trace starts clean.
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            RECORDER.with(|r| r.borrow_mut().take());
        }
    }
    let reset = Reset;
    let result = forward();
    let recorder = RECORDER.with(|r| r.borrow_mut().take()).expect("the recorder is set for the whole forward pass");
    drop(reset);
    (result, recorder)
}

/// In a channel probe, records a call's inputs as a [`Node`] (of the layer recorded last for
/// `NodeKind::Layer`) and perturbs its output where the probe says so; otherwise returns `output`.
fn node<const D: usize>(kind: NodeKind, inputs: Vec<Tensor<D>>, output: Tensor<D>) -> Tensor<D> {
    RECORDER.with(|r| {
        let mut recorder = r.borrow_mut();
        let Some(recorder) = recorder.as_mut() else { return output };
        let layer = (kind == NodeKind::Layer).then(|| recorder.calls.len() - 1);
        let Some(probe) = recorder.probe.as_mut() else { return output };
        let index = probe.nodes.len();
        let inputs = inputs.into_iter().map(as_4d).collect();
        let dims = output.dims();
        probe.nodes.push(Node { kind, layer, inputs, output_channels: dims[1] });
        match probe.perturb {
            Some((target, channel)) if target == index => output.clone() + channel_pattern(&dims, channel, &output.device()),
            _ => output,
        }
    })
}

/// `x` as `[batch, channels, height, width]` (features as channels of 1x1 for a 2-D tensor).
fn as_4d<const D: usize>(x: Tensor<D>) -> Tensor<4> {
    let dims = x.dims();
    let shape = if D == 4 { [dims[0], dims[1], dims[2], dims[3]] } else { [dims[0], dims[1], 1, 1] };
    x.reshape(shape)
}

/// Zeros but for channel `channel`, which gets values of both signs and of magnitude 1 to 10 (so
/// that some of them pass any ReLU, ReLU6 or max-pooling that follows).
fn channel_pattern<const D: usize>(dims: &[usize; D], channel: usize, device: &Device) -> Tensor<D> {
    let per_channel: usize = dims[2..].iter().product();
    let values: Vec<f32> = (0..dims.iter().product::<usize>())
        .map(|i| {
            if (i / per_channel) % dims[1] != channel {
                return 0.0;
            }
            let h = (i as u32).wrapping_mul(2_654_435_761).rotate_left(13);
            let magnitude = 1.0 + 9.0 * (h % 1000) as f32 / 1000.0;
            // Positive first: a channel of one value (a linear layer's output) passes a ReLU.
            if (i % per_channel).is_multiple_of(2) { magnitude } else { -magnitude }
        })
        .collect();
    Tensor::from_data(TensorData::new(values, dims.to_vec()), device)
}

// One call per layer kind, each passing what it measured; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
fn record<const D: usize>(
    weight: ParamId,
    kind: LayerKind,
    input: &[usize],
    stride: [usize; 2],
    start: Instant,
    output: &Tensor<D>,
    kernel: Option<(&Tensor<4>, ConvKernel)>,
    params: usize,
    flops: impl FnOnce(&[usize]) -> u64,
) {
    RECORDER.with(|r| {
        let mut recorder = r.borrow_mut();
        let Some(recorder) = recorder.as_mut() else { return };
        let seconds = start.elapsed().as_secs_f64();
        let dims = output.dims();
        let activation = recorder.keep_activations.then(|| {
            let [batch, rest @ ..] = dims.as_slice() else { unreachable!("a layer output has a batch dimension") };
            let features: usize = rest.iter().product();
            let shape = if D == 4 { [dims[0], dims[1], dims[2], dims[3]] } else { [*batch, features, 1, 1] };
            output.clone().reshape(shape)
        });
        let (kernel, runs_on) = kernel.map(|(weight, runs_on)| (weight.clone(), runs_on)).unzip();
        let output = dims[1..].to_vec();
        let flops = flops(&output);
        recorder.calls.push(Layer {
            name: String::new(),
            weight,
            kind,
            input: input[1..].to_vec(),
            output,
            stride,
            params,
            flops,
            activation,
            kernel,
            runs_on,
            seconds,
        });
    });
}

/// `residual + shortcut` (a residual addition), traced for channel probes.
pub fn add(residual: Tensor<4>, shortcut: Tensor<4>) -> Tensor<4> {
    if !is_tracing() {
        return residual + shortcut;
    }
    node(NodeKind::Add, vec![residual.clone(), shortcut.clone()], residual + shortcut)
}

/// `x * gates` (gates `[batch, channels, 1, 1]`, squeeze-excite's), traced for channel probes.
pub fn gate(x: Tensor<4>, gates: Tensor<4>) -> Tensor<4> {
    if !is_tracing() {
        return x * gates;
    }
    node(NodeKind::Gate, vec![x.clone(), gates.clone()], x * gates)
}

pub(crate) fn is_tracing() -> bool {
    RECORDER.with(|r| r.borrow().is_some())
}

/// `conv.forward(x)` (depthwise convs through our kernel, see `layers::conv_forward`), traced.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let (input, start) = (x.dims(), Instant::now());
    // The input is kept only while tracing: an unshared tensor may be reused in place.
    let kept = is_tracing().then(|| x.clone());
    let y = super::layers::conv_forward(conv, x);
    if is_tracing() {
        let [out_channels, in_per_group, kh, kw] = conv.weight.dims();
        let bias = conv.bias.as_ref().map_or(0, |b| b.dims()[0]);
        let params = out_channels * in_per_group * kh * kw + bias;
        let (runs_on, _) = super::layers::conv_plan(conv, [input[1], input[2], input[3]]);
        record(conv.weight.id, LayerKind::Conv2d, &input, conv.stride, start, &y, Some((&conv.weight.val(), runs_on)), params, |out| {
            let pixels = (out[1] * out[2]) as u64;
            pixels * (2 * (in_per_group * kh * kw) as u64 * out_channels as u64 + bias as u64)
        });
        return node(NodeKind::Layer, kept.into_iter().collect(), y);
    }
    y
}

/// `act.apply(bn.forward(x))`, the BatchNorm traced (its output before the activation, as a
/// forward hook on PyTorch's `BatchNorm2d` sees it); one fused operation when not tracing.
pub fn batch_norm(bn: &BatchNorm, x: Tensor<4>, act: Act) -> Tensor<4> {
    if !is_tracing() {
        return super::layers::batch_norm_forward(bn, x, act);
    }
    let (input, start) = (x.dims(), Instant::now());
    let kept = x.clone();
    let y = super::layers::batch_norm_forward(bn, x, Act::Identity);
    {
        let channels = bn.gamma.dims()[0];
        // Normalize and scale/shift folded into one multiply-add per element.
        record(bn.gamma.id, LayerKind::BatchNorm, &input, [1, 1], start, &y, None, 2 * channels, |out| {
            2 * out.iter().product::<usize>() as u64
        });
    }
    act.apply(node(NodeKind::Layer, vec![kept], y))
}

/// `act(bn(conv(x)))`: the conv and the BatchNorm traced as two layers, or, when not tracing,
/// `layers::conv_bn_forward` (which folds them into one at inference).
pub fn conv_bn(conv: &Conv2d, bn: &BatchNorm, x: Tensor<4>, act: Act) -> Tensor<4> {
    if !is_tracing() {
        return super::layers::conv_bn_forward(conv, bn, x, act);
    }
    batch_norm(bn, conv2d(conv, x), act)
}

/// `fc.forward(x)`, traced.
pub fn linear(fc: &Linear, x: Tensor<2>) -> Tensor<2> {
    let (input, start) = (x.dims(), Instant::now());
    let kept = is_tracing().then(|| x.clone());
    let y = super::layers::linear_forward(fc, x);
    if is_tracing() {
        let [inputs, outputs] = fc.weight.dims();
        let bias = fc.bias.as_ref().map_or(0, |b| b.dims()[0]);
        record(fc.weight.id, LayerKind::Linear, &input, [1, 1], start, &y, None, inputs * outputs + bias, |_| {
            (2 * inputs * outputs + bias) as u64
        });
        return node(NodeKind::Layer, kept.into_iter().collect(), y);
    }
    y
}

/// Runs `images` through `model`, recording each layer, and names the layers.
pub fn summarize(model: &Classifier, images: Tensor<4>, keep_activations: bool) -> (Tensor<2>, Vec<Layer>) {
    let (logits, mut layers) = trace(keep_activations, || model.forward(images));
    name_layers(model, &mut layers);
    (logits, layers)
}

/// Sets the names of `model`'s traced layers: their parameter paths without the leaf and without
/// `net.<Variant>.` (a head's layers keep `head.`).
pub fn name_layers(model: &Classifier, layers: &mut [Layer]) {
    let variant = format!("net.{}.", model.net.name());
    let paths = named_params(model);
    for layer in layers {
        let path = paths.iter().find(|p| p.id == layer.weight).map_or("?", |p| p.path.as_str());
        let module = path.rsplit_once('.').map_or(path, |(module, _)| module);
        layer.name = module.strip_prefix(&variant).unwrap_or(module).to_string();
    }
}

/// The layers a user's name picks: the layer of that name, or, for a module holding several
/// (`stages.1`, `blocks.3`), the last layer inside it: its output is the module's output up to
/// any activation or residual addition after that layer. `None` if nothing matches.
pub fn find_layer<'a>(layers: &'a [Layer], name: &str, variant: &str) -> Option<&'a Layer> {
    let name = name.strip_prefix(&format!("net.{variant}.")).unwrap_or(name);
    layers
        .iter()
        .find(|l| l.name == name)
        .or_else(|| layers.iter().rev().find(|l| l.name.starts_with(name) && l.name[name.len()..].starts_with('.')))
}

/// The summary as a text table with totals, under `title`.
pub fn table(layers: &[Layer], title: &str) -> String {
    let width = layers.iter().map(|l| l.name.len()).max().unwrap_or(0).max(5);
    let mut out = format!("{title}\n{:<width$}  {:<11}  {:<16}  {:>12}  {:>15}\n", "layer", "type", "output", "parameters", "FLOPs");
    for l in layers {
        let shape = l.output.iter().map(usize::to_string).collect::<Vec<_>>().join("x");
        let (params, flops) = (group_digits(l.params), group_digits(l.flops as usize));
        out += &format!("{:<width$}  {:<11}  {:<16}  {params:>12}  {flops:>15}\n", l.name, l.kind.name(), shape);
    }
    let params: usize = layers.iter().map(|l| l.params).sum();
    let flops: u64 = layers.iter().map(|l| l.flops).sum();
    let macs: u64 = layers.iter().filter(|l| l.kind != LayerKind::BatchNorm).map(|l| l.flops / 2).sum();
    out += &format!(
        "{} layers, {} trainable parameters, {:.3} GFLOPs per image ({:.3} G multiply-adds in convolutions and linear layers)\n",
        layers.len(),
        group_digits(params),
        flops as f64 / 1e9,
        macs as f64 / 1e9
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ModelConfig;
    use crate::models::{build, registry, trainable_params};

    fn model(name: &str, classes: usize) -> Classifier {
        build(&ModelConfig { name: name.into(), ..Default::default() }, classes, &Device::flex()).unwrap()
    }

    /// Every parameter is in exactly one traced layer: the summary's total is the model's count.
    #[test]
    fn every_layer_of_every_model_is_traced_once() {
        for entry in registry() {
            let model = model(entry.name, 10);
            let (logits, layers) = summarize(&model, Tensor::zeros([1, 3, 32, 32], &Device::flex()), false);
            assert_eq!(logits.dims(), [1, 10]);
            assert_eq!(layers.iter().map(|l| l.params).sum::<usize>(), trainable_params(&model), "{}", entry.name);
            let mut names: Vec<&str> = layers.iter().map(|l| l.name.as_str()).collect();
            assert!(!names.contains(&"?"), "{}: a layer without a parameter path", entry.name);
            names.sort();
            names.dedup();
            assert_eq!(names.len(), layers.len(), "{}: a layer traced twice", entry.name);
        }
    }

    /// Multiply-adds of the convolutions and linear layers at 224x224 against torchvision's
    /// published "GFLOPS" (which count multiply-adds): resnet18 1.81, resnet50 4.09, vgg16 15.47,
    /// mobilenet_v2 0.30, efficientnet_b0 0.39.
    #[test]
    fn flops_match_the_published_counts() {
        for (name, published) in
            [("resnet18", 1.81), ("resnet50", 4.09), ("vgg16", 15.47), ("mobilenet_v2", 0.30), ("efficientnet_b0", 0.39)]
        {
            let model = model(name, 1000);
            let (_, layers) = summarize(&model, Tensor::zeros([1, 3, 224, 224], &Device::flex()), false);
            let macs = layers.iter().filter(|l| l.kind != LayerKind::BatchNorm).map(|l| l.flops).sum::<u64>() as f64 / 2e9;
            assert!((macs / published - 1.0).abs() < 0.03, "{name}: {macs:.3} GMACs, published {published}");
        }
    }

    #[test]
    fn shapes_activations_and_layer_lookup() {
        let model = model("resnet18_cifar", 10);
        let (_, layers) = summarize(&model, Tensor::ones([2, 3, 32, 32], &Device::flex()), true);
        let stem = &layers[0];
        assert_eq!((stem.name.as_str(), stem.kind, stem.output.as_slice()), ("stem.conv", LayerKind::Conv2d, &[64, 32, 32][..]));
        assert_eq!(stem.params, 64 * 3 * 9);
        assert_eq!(stem.flops, 32 * 32 * 2 * 27 * 64);
        assert_eq!(stem.activation.as_ref().unwrap().dims(), [2, 64, 32, 32]);
        let fc = layers.last().unwrap();
        assert_eq!((fc.name.as_str(), fc.output.as_slice()), ("fc", &[10][..]));
        assert_eq!(fc.activation.as_ref().unwrap().dims(), [2, 10, 1, 1]);
        // A module name picks its last layer; the full path works too; a near miss does not.
        assert_eq!(find_layer(&layers, "blocks.0", "ResNet").unwrap().name, "blocks.0.convs.1.bn");
        assert_eq!(find_layer(&layers, "net.ResNet.stem.conv", "ResNet").unwrap().name, "stem.conv");
        assert!(find_layer(&layers, "block", "ResNet").is_none());
        // Outside a trace nothing is recorded (and nothing is left over from one).
        let (_, calls) = trace(false, || ());
        assert!(calls.is_empty());
    }
}
