//! Squeeze-and-excitation (EfficientNet-B's blocks) as one operation:
//! `x * sigmoid(expand(act(reduce(mean(x)))))`, `reduce` and `expand` 1x1 convs with bias, the
//! mean over each plane. In training, the BatchNorm and activation before it join the operation
//! where they run on our kernels ([`batch_norm_squeeze_excite`]).
//!
//! burn computes it from generic ops: two reductions for the mean; the broadcast multiply; and
//! backward the multiply's two full-size products (`dy * gates`, `dy * x`) before one of them is
//! reduced, the mean's gradient broadcast to a full-size tensor and added to the gate's. That is
//! about ten passes over the block's widest activation, a fifth of an EfficientNet-B0 training
//! step. Here the forward pass reads `x` twice (the means, then the gated output) and writes once;
//! the backward reads `dy` and `x` once (each plane's `Σ dy x`), then writes the input gradient
//! `dy * gate + d(mean) / pixels` over `dy`. The two small layers between run as matrix products on
//! `[batch, channels]` rows.

use std::mem::MaybeUninit;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::BatchNorm;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

use super::activation::Act;
use super::batch_norm::{self, host::Layer};
use super::{OptionalTensor, contiguous, exclusive_f32s, f32s};

/// Whether [`squeeze_excite`] runs our kernel for these layers: f32 on flex, `reduce` a 1x1 conv
/// with bias from `x`'s channels to some `squeezed`, `expand` one from `squeezed` back.
pub fn applies(x: &Tensor<4>, reduce: &Conv2d, expand: &Conv2d) -> bool {
    let pointwise = |conv: &Conv2d| {
        conv.kernel_size == [1, 1]
            && conv.groups == 1
            && matches!(conv.padding, PaddingConfig2d::Valid | PaddingConfig2d::Same | PaddingConfig2d::Explicit(0, 0, 0, 0))
            && conv.weight.val().dtype() == DType::F32
            && conv.bias.as_ref().is_some_and(|bias| bias.val().dtype() == DType::F32)
    };
    let channels = x.dims()[1];
    let [squeezed, reduce_inputs, ..] = reduce.weight.dims();
    let [expand_outputs, expand_inputs, ..] = expand.weight.dims();
    super::enabled()
        && x.dtype() == DType::F32
        && x.device().inner() == Device::flex()
        && pointwise(reduce)
        && pointwise(expand)
        && (reduce_inputs, expand_inputs, expand_outputs) == (channels, squeezed, channels)
}

/// `x * sigmoid(expand(act(reduce(mean over HxW of x))))` for `x` `[batch, channels, height,
/// width]`, where [`applies`] says so (the caller composes burn's ops elsewhere).
pub fn squeeze_excite(x: Tensor<4>, reduce: &Conv2d, expand: &Conv2d, act: Act) -> Tensor<4> {
    debug_assert!(applies(&x, reduce, expand));
    let [rw, rb, ew, eb] = weights(reduce, expand);
    Tensor::from_dispatch(<Dispatch as SqueezeExciteBackend>::squeeze_excite(x.into_dispatch(), rw, rb, ew, eb, act))
}

/// `squeeze_excite(bn_act(bn(x)))` with `bn` training (as `batch_norm::forward_with_moments`,
/// its statistics from `moments` of `x`'s planes where given), where [`applies`] and `bn` trains
/// on our kernel: the BatchNorm's output is never stored, and backward the squeeze-excite's input
/// gradient goes into the BatchNorm's without being written (see [`BatchNormSqueezeExciteBackward`]).
pub(crate) fn batch_norm_squeeze_excite(
    bn: &BatchNorm,
    x: Tensor<4>,
    moments: Option<Tensor<1>>,
    bn_act: Act,
    reduce: &Conv2d,
    expand: &Conv2d,
    act: Act,
) -> Tensor<4> {
    debug_assert!(applies(&x, reduce, expand) && batch_norm::trains_on_kernel(bn, &x));
    let [rw, rb, ew, eb] = weights(reduce, expand);
    let moments = OptionalTensor::from_option(moments.map(Tensor::into_dispatch));
    let (y, stats) = <Dispatch as SqueezeExciteBackend>::batch_norm_squeeze_excite(
        x.into_dispatch(),
        bn.gamma.val().into_dispatch(),
        bn.beta.val().into_dispatch(),
        moments,
        rw,
        rb,
        ew,
        eb,
        bn.epsilon,
        bn_act,
        act,
    );
    batch_norm::update_running_statistics(bn, Tensor::from_dispatch(stats));
    Tensor::from_dispatch(y)
}

/// The reduce conv's weight and bias, then the expand conv's.
fn weights(reduce: &Conv2d, expand: &Conv2d) -> [FloatTensor<Dispatch>; 4] {
    let bias = |conv: &Conv2d| conv.bias.as_ref().expect("squeeze-excite convs have a bias").val().into_dispatch();
    [reduce.weight.val().into_dispatch(), bias(reduce), expand.weight.val().into_dispatch(), bias(expand)]
}

#[backend_extension(Flex, Autodiff)]
trait SqueezeExciteBackend: Backend {
    fn squeeze_excite(
        x: FloatTensor<Self>,
        reduce_weight: FloatTensor<Self>,
        reduce_bias: FloatTensor<Self>,
        expand_weight: FloatTensor<Self>,
        expand_bias: FloatTensor<Self>,
        act: Act,
    ) -> FloatTensor<Self>;

    /// `(output, [mean.., variance..] of x)`, the statistics outside the graph.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_squeeze_excite(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        #[extension_type] moments: OptionalTensor<Self>,
        reduce_weight: FloatTensor<Self>,
        reduce_bias: FloatTensor<Self>,
        expand_weight: FloatTensor<Self>,
        expand_bias: FloatTensor<Self>,
        epsilon: f64,
        bn_act: Act,
        act: Act,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

impl SqueezeExciteBackend for Flex {
    fn squeeze_excite(x: FlexTensor, rw: FlexTensor, rb: FlexTensor, ew: FlexTensor, eb: FlexTensor, act: Act) -> FlexTensor {
        forward(&contiguous(x), None, [rw, rb, ew, eb], act).0
    }

    #[allow(clippy::too_many_arguments)]
    fn batch_norm_squeeze_excite(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        moments: OptionalTensor<Self>,
        rw: FlexTensor,
        rb: FlexTensor,
        ew: FlexTensor,
        eb: FlexTensor,
        epsilon: f64,
        bn_act: Act,
        act: Act,
    ) -> (FlexTensor, FlexTensor) {
        let (x, gamma, beta) = (contiguous(x), contiguous(gamma), contiguous(beta));
        let (y, stats, _) = normed_forward(&x, [&gamma, &beta], moments.into_option(), [rw, rb, ew, eb], epsilon, [bn_act, act]);
        (y, stats)
    }
}

/// The BatchNorm (`norm` = `[gamma, beta]`, `stats` `[mean.., variance..]` or none yet) before a
/// squeeze-excite on `x`, and its activation.
fn layer<'a>(x: &FlexTensor, [gamma, beta]: [&'a FlexTensor; 2], stats: &'a [f32], epsilon: f64, act: Act) -> Layer<'a> {
    let [batch, _, height, width] = x.shape().dims();
    Layer { gamma: f32s(gamma), beta: f32s(beta), stats, epsilon, act, batch, plane: height * width }
}

/// The training BatchNorm (`norm` = `[gamma, beta]`, its statistics from `x`'s planes' `moments`
/// where given) and `acts[0]`, then the squeeze-excite with `acts[1]`: the output, the batch's
/// `[mean.., variance..]` and what the backward pass needs.
fn normed_forward(
    x: &FlexTensor,
    norm: [&FlexTensor; 2],
    moments: Option<FlexTensor>,
    weights: [FlexTensor; 4],
    epsilon: f64,
    [bn_act, act]: [Act; 2],
) -> (FlexTensor, FlexTensor, host::Gates) {
    let moments = moments.map(contiguous);
    let stats =
        batch_norm::host::statistics(f32s(x), &layer(x, norm, &[], epsilon, bn_act), moments.as_ref().map(batch_norm::moment_pairs));
    let (y, gates) = forward(x, Some(&layer(x, norm, &stats, epsilon, bn_act)), weights, act);
    let len = stats.len();
    (y, FlexTensor::from_data(TensorData::new(stats, [len])), gates)
}

/// The output, and what the backward pass needs besides `x` and the weights; `act(bn(x))` gated
/// where `bn` is given (with its statistics).
fn forward(x: &FlexTensor, bn: Option<&Layer>, weights: [FlexTensor; 4], act: Act) -> (FlexTensor, host::Gates) {
    let [rw, rb, ew, eb] = weights.map(contiguous);
    let shape = x.shape();
    let [batch, channels, height, width] = shape.dims();
    let sizes = host::Sizes { batch, channels, squeezed: rb.shape().num_elements(), plane: height * width };
    // With a BatchNorm, its output is written with each plane's mean, then gated in place.
    let (normalized, pooled) = match bn {
        Some(layer) => {
            let (y, means) = host::normalize_with_means(f32s(x), layer);
            (Some(y), means)
        }
        None => (None, host::plane_means_of(f32s(x), sizes.plane)),
    };
    let gates = host::gates(pooled, [f32s(&rw), f32s(&rb), f32s(&ew), f32s(&eb)], sizes, act);
    let y = match normalized {
        Some(mut y) => {
            host::gate(&mut y, &gates.gates, None, sizes.plane);
            y
        }
        None => host::scale(f32s(x), &gates.gates, sizes.plane),
    };
    (FlexTensor::from_data(TensorData::new(y, shape)), gates)
}

impl<C: CheckpointStrategy> SqueezeExciteBackend for Autodiff<Flex, C> {
    fn squeeze_excite(
        x: FloatTensor<Self>,
        rw: FloatTensor<Self>,
        rb: FloatTensor<Self>,
        ew: FloatTensor<Self>,
        eb: FloatTensor<Self>,
        act: Act,
    ) -> FloatTensor<Self> {
        match SqueezeExciteBackward.prepare::<C>([x.node(), rw.node(), rb.node(), ew.node(), eb.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let ids = [prep.checkpoint(&x), prep.checkpoint(&rw), prep.checkpoint(&ew)];
                let weights = [rw, rb, ew, eb].map(|w| w.into_primitive());
                let (y, gates) = forward(&contiguous(x.into_primitive()), None, weights, act);
                prep.finish((ids, gates, act), y)
            }
            OpsKind::UnTracked(prep) => {
                let weights = [rw, rb, ew, eb].map(|w| w.into_primitive());
                prep.finish(forward(&contiguous(x.into_primitive()), None, weights, act).0)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn batch_norm_squeeze_excite(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        moments: OptionalTensor<Self>,
        rw: FloatTensor<Self>,
        rb: FloatTensor<Self>,
        ew: FloatTensor<Self>,
        eb: FloatTensor<Self>,
        epsilon: f64,
        bn_act: Act,
        act: Act,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let [x_values, gamma_values, beta_values] = [&x, &gamma, &beta].map(|tensor| contiguous(tensor.clone().into_primitive()));
        let moments = moments.into_option().map(|moments| moments.into_primitive());
        let weights = [&rw, &rb, &ew, &eb].map(|w| w.clone().into_primitive());
        let (y, stats, gates) = normed_forward(&x_values, [&gamma_values, &beta_values], moments, weights, epsilon, [bn_act, act]);
        let parents = [x.node(), gamma.node(), beta.node(), rw.node(), rb.node(), ew.node(), eb.node()];
        let output = match BatchNormSqueezeExciteBackward.prepare::<C>(parents).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let ids = [&x, &gamma, &beta, &rw, &ew].map(|tensor| prep.checkpoint(tensor));
                prep.finish((ids, stats.clone(), epsilon, [bn_act, act], gates), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        (output, <Self as AutodiffBackend>::from_inner(stats))
    }
}

/// Backward step of [`SqueezeExciteBackend::squeeze_excite`]; parents are `[x, reduce weight,
/// reduce bias, expand weight, expand bias]`.
#[derive(Debug)]
struct SqueezeExciteBackward;

impl Backward<Flex, 5> for SqueezeExciteBackward {
    /// The checkpointed `x` and the two weights, the forward pass's [`host::Gates`], the activation.
    type State = ([NodeId; 3], host::Gates, Act);

    fn backward(self, ops: Ops<Self::State, 5>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let mut out_grad = contiguous(grads.consume::<Flex>(&ops.node));
        let ([x_id, rw_id, ew_id], gates, act) = ops.state;
        let [x, rw, ew] = [x_id, rw_id, ew_id].map(|id| contiguous(checkpointer.retrieve_node_output::<FlexTensor>(id)));
        let plane = gates.sizes.plane;
        let dots = host::plane_dots(f32s(&x), f32s(&out_grad), plane);
        let small = host::small_gradients(&gates, &dots, f32s(&rw), f32s(&ew), act);
        let parents: [_; 5] = std::array::from_fn(|i| ops.parents[i].as_ref().map(|node| node.id));
        let x_grad = parents[0].is_some().then(|| {
            // The output gradient becomes the input gradient in place where nothing else holds it.
            if exclusive_f32s(&mut out_grad).is_none() {
                out_grad = to_tensor(f32s(&out_grad).to_vec(), out_grad.shape().to_vec());
            }
            let dx = exclusive_f32s(&mut out_grad).expect("a fresh copy is exclusive");
            host::gate(dx, &gates.gates, Some(&small.pooled), plane);
            out_grad
        });
        let [rw, rb, ew, eb] = small.weight_gradients(&gates.sizes);
        register(grads, parents.into_iter().zip([x_grad, Some(rw), Some(rb), Some(ew), Some(eb)]));
    }
}

/// Backward step of [`SqueezeExciteBackend::batch_norm_squeeze_excite`]; parents are `[x, gamma,
/// beta, reduce weight, reduce bias, expand weight, expand bias]`.
///
/// The squeeze-excite's input gradient is `dy gate + d(mean) / pixels` per plane, an affine
/// function of the output gradient `dy`; so one pass over `x` and `dy` takes each plane's gate
/// gradient `Σ dy act(x̂')` together with the four sums that give the BatchNorm's gradient sums for
/// any such affine (`x̂'` the normalized input, `act'` the activation's derivative): `Σ act' dy`,
/// `Σ act' dy (x - mean)`, `Σ act'`, `Σ act' (x - mean)`. The BatchNorm's input-gradient pass then
/// applies the affine to `dy` as it reads it.
#[derive(Debug)]
struct BatchNormSqueezeExciteBackward;

impl Backward<Flex, 7> for BatchNormSqueezeExciteBackward {
    /// The checkpointed `[x, gamma, beta, reduce weight, expand weight]`, the batch statistics,
    /// epsilon, the BatchNorm's and the squeeze-excite's activations, the forward pass's gates.
    type State = ([NodeId; 5], FlexTensor, f64, [Act; 2], host::Gates);

    fn backward(self, ops: Ops<Self::State, 7>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let out_grad = contiguous(grads.consume::<Flex>(&ops.node));
        let (ids, stats, epsilon, [bn_act, act], gates) = ops.state;
        let [x, gamma, beta, rw, ew] = ids.map(|id| contiguous(checkpointer.retrieve_node_output::<FlexTensor>(id)));
        let stats = contiguous(stats);
        let host::Sizes { channels, plane, .. } = gates.sizes;
        let layer = layer(&x, [&gamma, &beta], f32s(&stats), epsilon, bn_act);
        let channel_norms = layer.channels();
        let (x_values, dy) = (f32s(&x), f32s(&out_grad));
        let sums = host::normed_sums(x_values, dy, &channel_norms, bn_act, plane);
        let dots: Vec<f32> = sums.iter().map(|sums| sums[0] as f32).collect();
        let small = host::small_gradients(&gates, &dots, f32s(&rw), f32s(&ew), act);
        let (affine, bn_sums): (Vec<[f32; 2]>, Vec<[f64; 2]>) = sums
            .iter()
            .zip(gates.gates.iter().zip(&small.pooled))
            .map(|(&[_, dz, dz_centred, d, d_centred], (&gate, &d_mean))| {
                let shift = d_mean / plane as f32;
                let (a, b) = (gate as f64, shift as f64);
                ([gate, shift], [a * dz + b * d, a * dz_centred + b * d_centred])
            })
            .unzip();
        let parents: [_; 7] = std::array::from_fn(|i| ops.parents[i].as_ref().map(|node| node.id));
        let (x_grad, sum_dy, sum_dy_xhat) =
            batch_norm::host::backward(x_values, dy, &layer, Some(&bn_sums), Some(&affine), parents[0].is_some());
        let x_grad = x_grad.map(|values| to_tensor(values, x.shape().to_vec()));
        let [rw, rb, ew, eb] = small.weight_gradients(&gates.sizes);
        let gradients = [
            x_grad,
            Some(to_tensor(sum_dy_xhat, vec![channels])),
            Some(to_tensor(sum_dy, vec![channels])),
            Some(rw),
            Some(rb),
            Some(ew),
            Some(eb),
        ];
        register(grads, parents.into_iter().zip(gradients));
    }
}

impl host::SmallGradients {
    /// The two small layers' weight and bias gradients as tensors: reduce, then expand.
    fn weight_gradients(self, sizes: &host::Sizes) -> [FlexTensor; 4] {
        let host::Sizes { channels, squeezed, .. } = *sizes;
        [
            to_tensor(self.reduce_weight, vec![squeezed, channels, 1, 1]),
            to_tensor(self.reduce_bias, vec![squeezed]),
            to_tensor(self.expand_weight, vec![channels, squeezed, 1, 1]),
            to_tensor(self.expand_bias, vec![channels]),
        ]
    }
}

fn to_tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// Each gradient registered for its parent, where the parent wants one.
fn register(grads: &mut Gradients, gradients: impl IntoIterator<Item = (Option<NodeId>, Option<FlexTensor>)>) {
    for (node, gradient) in gradients {
        if let (Some(node), Some(gradient)) = (node, gradient) {
            grads.register::<Flex>(node, gradient);
        }
    }
}

/// The kernels on host f32 data: `x` `[batch, channels, plane]`, the small layers' values as
/// row-major `[batch, channels]` and `[batch, squeezed]` matrices.
mod host {
    use super::*;
    use crate::kernels::activation::{Pointwise, sigmoid, with_pointwise};
    use crate::kernels::batch_norm::host::{Channel, normalize_planes};
    use crate::kernels::{SharedSlice, assume_written, fma_available, lane_sums, matmul, uninit_chunks};

    #[derive(Clone, Copy, Debug)]
    pub struct Sizes {
        pub batch: usize,
        pub channels: usize,
        pub squeezed: usize,
        pub plane: usize,
    }

    /// The forward pass's small values, kept for the backward.
    #[derive(Clone, Debug)]
    pub struct Gates {
        pub sizes: Sizes,
        /// Each plane's mean, `[batch, channels]`.
        pub pooled: Vec<f32>,
        /// `reduce(pooled)` before the activation, `[batch, squeezed]`.
        pub hidden: Vec<f32>,
        /// `act(hidden)`.
        pub activated: Vec<f32>,
        /// `sigmoid(expand(activated))`, `[batch, channels]`.
        pub gates: Vec<f32>,
    }

    /// The gradients of the small layers' weights and of the plane means.
    pub struct SmallGradients {
        pub pooled: Vec<f32>,
        pub reduce_weight: Vec<f32>,
        pub reduce_bias: Vec<f32>,
        pub expand_weight: Vec<f32>,
        pub expand_bias: Vec<f32>,
    }

    /// Planes per parallel task: a few tasks per thread.
    fn planes_per_task(planes: usize) -> usize {
        planes.div_ceil(4 * rayon::current_num_threads()).max(1)
    }

    /// Each plane's mean.
    pub fn plane_means_of(x: &[f32], plane: usize) -> Vec<f32> {
        let fma = fma_available();
        let mut means = vec![0f32; x.len() / plane];
        let task = planes_per_task(means.len());
        means.par_chunks_mut(task).zip(x.par_chunks(task * plane)).for_each(|(means, x)| plane_means(fma, x, means));
        means
    }

    /// The BatchNorm's output `act(x scale + shift)` and each of its planes' mean, taken as the
    /// plane is written (while in cache).
    pub fn normalize_with_means(x: &[f32], layer: &Layer) -> (Vec<f32>, Vec<f32>) {
        let (channels, plane, fma) = (layer.channels(), layer.plane, fma_available());
        let mut means = vec![0f32; x.len() / plane];
        let task = planes_per_task(means.len());
        let shared = SharedSlice::new(&mut means);
        // SAFETY: each task writes its planes of y, and their means, from the planes of x under them.
        let y = unsafe {
            uninit_chunks(x.len(), task * plane, |i, y| {
                let means = shared.run(i * task, y.len() / plane);
                for (j, (y, x)) in y.chunks_exact_mut(plane).zip(x[i * task * plane..].chunks_exact(plane)).enumerate() {
                    with_pointwise!(layer.act, normalize_planes(fma, x, y, plane, &channels, i * task + j));
                    plane_means(fma, assume_written(y), &mut means[j..j + 1]);
                }
            })
        };
        (y, means)
    }

    /// The gates from the plane means `pooled`; `weights` are the reduce conv's weight
    /// `[squeezed, channels]` and bias, then the expand conv's `[channels, squeezed]` and bias.
    pub fn gates(pooled: Vec<f32>, [rw, rb, ew, eb]: [&[f32]; 4], sizes: Sizes, act: Act) -> Gates {
        let Sizes { batch, channels, squeezed, .. } = sizes;
        let mut hidden = product(batch, squeezed, channels, (&pooled, 1, channels), (rw, channels, 1));
        add_rows(&mut hidden, rb);
        let activated = with_pointwise!(act, map(&hidden));
        let mut gates = product(batch, channels, squeezed, (&activated, 1, squeezed), (ew, squeezed, 1));
        add_rows(&mut gates, eb);
        gates.iter_mut().for_each(|g| *g = sigmoid(*g));
        Gates { sizes, pooled, hidden, activated, gates }
    }

    /// `x * gate`, each plane by its own gate.
    pub fn scale(x: &[f32], gates: &[f32], plane: usize) -> Vec<f32> {
        let (fma, task) = (fma_available(), planes_per_task(gates.len()));
        // SAFETY: each task writes its planes of the output from the planes of x under them.
        unsafe {
            uninit_chunks(x.len(), task * plane, |i, y| scale_planes(fma, &x[i * task * plane..][..y.len()], &gates[i * task..], y, plane))
        }
    }

    /// For each plane of `x` `[Σ dy a, Σ a' dy, Σ a' dy (x - mean), Σ a', Σ a' (x - mean)]`, `a`
    /// the activation `act` of the BatchNorm's output (of `channels`), `a'` its derivative there:
    /// the gate's gradient and the sums that give the BatchNorm's (see [`super::BatchNormSqueezeExciteBackward`]).
    pub fn normed_sums(x: &[f32], dy: &[f32], channels: &[Channel], act: Act, plane: usize) -> Vec<[f64; 5]> {
        let fma = fma_available();
        let mut sums = vec![[0f64; 5]; x.len() / plane];
        let task = planes_per_task(sums.len());
        sums.par_chunks_mut(task).enumerate().for_each(|(i, sums)| {
            let at = i * task * plane;
            let (x, dy) = (&x[at..][..sums.len() * plane], &dy[at..][..sums.len() * plane]);
            with_pointwise!(act, normed_plane_sums(fma, x, dy, sums, i * task, channels));
        });
        sums
    }

    /// Each plane's `Σ dy x`.
    pub fn plane_dots(x: &[f32], dy: &[f32], plane: usize) -> Vec<f32> {
        let fma = fma_available();
        let mut dots = vec![0f32; x.len() / plane];
        let task = planes_per_task(dots.len());
        dots.par_chunks_mut(task).enumerate().for_each(|(i, dots)| {
            let at = i * task * plane;
            plane_dot_products(fma, &x[at..][..dots.len() * plane], &dy[at..][..dots.len() * plane], dots)
        });
        dots
    }

    /// Back through the gates and the small layers, from each plane's `Σ dy x` (the gate's
    /// gradient).
    pub fn small_gradients(forward: &Gates, dots: &[f32], rw: &[f32], ew: &[f32], act: Act) -> SmallGradients {
        let Sizes { batch, channels, squeezed, .. } = forward.sizes;
        let d_logits: Vec<f32> = dots.iter().zip(&forward.gates).map(|(&d, &g)| d * g * (1.0 - g)).collect();
        let expand_weight = product(channels, squeezed, batch, (&d_logits, channels, 1), (&forward.activated, 1, squeezed));
        let d_activated = product(batch, squeezed, channels, (&d_logits, 1, channels), (ew, 1, squeezed));
        let d_hidden = with_pointwise!(act, map_gradient(&forward.hidden, &d_activated));
        let reduce_weight = product(squeezed, channels, batch, (&d_hidden, squeezed, 1), (&forward.pooled, 1, channels));
        let pooled = product(batch, channels, squeezed, (&d_hidden, 1, squeezed), (rw, 1, channels));
        SmallGradients {
            pooled,
            reduce_weight,
            reduce_bias: column_sums(&d_hidden, squeezed),
            expand_weight,
            expand_bias: column_sums(&d_logits, channels),
        }
    }

    /// `values * gate` in place, each plane by its own gate; plus `d_mean / plane` where
    /// `d_means` are given (the input gradient from the output's: `values` are then `dy`).
    pub fn gate(values: &mut [f32], gates: &[f32], d_means: Option<&[f32]>, plane: usize) {
        let (fma, task) = (fma_available(), planes_per_task(gates.len()));
        values
            .par_chunks_mut(task * plane)
            .enumerate()
            .for_each(|(i, values)| gate_planes(fma, values, &gates[i * task..], d_means.map(|d_means| &d_means[i * task..]), plane));
    }

    /// `lhs · rhs` for `lhs` `m x k` and `rhs` `k x n`, each given as (values, column stride, row
    /// stride), into a new row-major `m x n` matrix.
    fn product(
        m: usize,
        n: usize,
        k: usize,
        (lhs, lhs_cs, lhs_rs): (&[f32], usize, usize),
        (rhs, rhs_cs, rhs_rs): (&[f32], usize, usize),
    ) -> Vec<f32> {
        let spans = |cs: usize, rs: usize, rows: usize, cols: usize| (rows - 1) * rs + (cols - 1) * cs + 1;
        assert!(lhs.len() >= spans(lhs_cs, lhs_rs, m, k) && rhs.len() >= spans(rhs_cs, rhs_rs, k, n), "squeeze-excite: operands too short");
        let mut out = vec![0f32; m * n];
        // SAFETY: the operands hold the matrices their strides address (checked above), `out` is
        // `m x n` row-major and a buffer of its own.
        unsafe {
            matmul(
                m,
                n,
                k,
                (out.as_mut_ptr(), 1, n as isize),
                false,
                (lhs.as_ptr(), lhs_cs as isize, lhs_rs as isize),
                (rhs.as_ptr(), rhs_cs as isize, rhs_rs as isize),
            )
        };
        out
    }

    /// `bias` added to every row of `matrix`.
    fn add_rows(matrix: &mut [f32], bias: &[f32]) {
        matrix.chunks_exact_mut(bias.len()).for_each(|row| row.iter_mut().zip(bias).for_each(|(v, b)| *v += b));
    }

    /// The sum of each column of a row-major matrix `columns` wide.
    fn column_sums(matrix: &[f32], columns: usize) -> Vec<f32> {
        let mut sums = vec![0f32; columns];
        matrix.chunks_exact(columns).for_each(|row| sums.iter_mut().zip(row).for_each(|(s, v)| *s += v));
        sums
    }

    /// The activation of every value (a few hundred: a scalar loop does).
    fn map<A: Pointwise>(x: &[f32]) -> Vec<f32> {
        x.iter().map(|&x| A::value(x)).collect()
    }

    /// The activation's gradient at `x` times `g`, value by value.
    fn map_gradient<A: Pointwise>(x: &[f32], g: &[f32]) -> Vec<f32> {
        x.iter().zip(g).map(|(&x, &g)| A::gradient(x, g)).collect()
    }

    with_avx2! {
        /// The mean of each plane of a run of planes.
        fn plane_means(x: &[f32], means: &mut [f32]) {
            let plane = x.len() / means.len();
            for (x, mean) in x.chunks_exact(plane).zip(means) {
                *mean = (lane_sums(x, x, |v, _| [v])[0] / plane as f64) as f32;
            }
        }
    }

    with_avx2! {
        /// [`normed_sums`] of a run of planes, the first plane `first` of the batch.
        avx512 fn normed_plane_sums<A: Pointwise>(x: &[f32], dy: &[f32], sums: &mut [[f64; 5]], first: usize, channels: &[Channel]) {
            let plane = x.len() / sums.len();
            for (i, ((x, dy), sums)) in x.chunks_exact(plane).zip(dy.chunks_exact(plane)).zip(sums).enumerate() {
                let ch = channels[(first + i) % channels.len()];
                *sums = lane_sums(x, dy, |x, dy| {
                    let (value, derivative) = A::value_and_derivative(x * ch.scale + ch.shift);
                    let centred = x - ch.mean;
                    [dy * value, derivative * dy, derivative * dy * centred, derivative, derivative * centred]
                });
            }
        }
    }

    with_avx2! {
        /// `Σ x dy` of each plane of a run of planes.
        fn plane_dot_products(x: &[f32], dy: &[f32], dots: &mut [f32]) {
            let plane = x.len() / dots.len();
            for ((x, dy), dot) in x.chunks_exact(plane).zip(dy.chunks_exact(plane)).zip(dots) {
                *dot = lane_sums(x, dy, |x, dy| [x * dy])[0] as f32;
            }
        }
    }

    with_avx2! {
        /// [`scale`] of a run of planes, `gates` from the run's first plane on.
        fn scale_planes(x: &[f32], gates: &[f32], y: &mut [MaybeUninit<f32>], plane: usize) {
            for ((y, x), &gate) in y.chunks_exact_mut(plane).zip(x.chunks_exact(plane)).zip(gates) {
                for (y, &x) in y.iter_mut().zip(x) {
                    y.write(x * gate);
                }
            }
        }
    }

    with_avx2! {
        /// [`gate`] of a run of planes, `gates` and `d_means` from its first plane on.
        fn gate_planes(values: &mut [f32], gates: &[f32], d_means: Option<&[f32]>, plane: usize) {
            for (i, (values, &gate)) in values.chunks_exact_mut(plane).zip(gates).enumerate() {
                let shift = d_means.map_or(0.0, |d_means| d_means[i] / plane as f32);
                for v in values.iter_mut() {
                    *v = *v * gate + shift;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::activation::{relu, sigmoid, silu};
    use burn::tensor::{Distribution, Tolerance};

    use super::*;

    /// The two 1x1 convs of a squeeze-excite block on `channels`, `squeezed` wide, random weights.
    fn layers(channels: usize, squeezed: usize, device: &Device) -> (Conv2d, Conv2d) {
        let conv = |channels: [usize; 2]| Conv2dConfig::new(channels, [1, 1]).init(device);
        let (reduce, expand) = (conv([channels, squeezed]), conv([squeezed, channels]));
        // Biases away from 0, so that a dropped bias shows.
        let shifted = |conv: Conv2d| Conv2d { bias: conv.bias.map(|b| b.map(|b| b.add_scalar(0.3).detach().require_grad())), ..conv };
        (shifted(reduce), shifted(expand))
    }

    /// burn's own ops: the mean, its 1x1 convs, the activation, the sigmoid gate.
    fn reference(x: Tensor<4>, reduce: &Conv2d, expand: &Conv2d, act: Act) -> Tensor<4> {
        let activation = |h: Tensor<4>| match act {
            Act::Identity => h,
            Act::Relu => relu(h),
            Act::Silu => silu(h),
            other => panic!("no reference for {other:?}"),
        };
        let pooled = x.clone().mean_dim(2).mean_dim(3);
        x * sigmoid(expand.forward(activation(reduce.forward(pooled))))
    }

    /// Each of `ours` equals `burn`'s result at its place within `[relative, absolute]`, the
    /// absolute part scaled by the result's largest magnitude (at least 1).
    fn assert_results_close(ours: &[TensorData], burn: &[TensorData], [relative, absolute]: [f32; 2], context: &str) {
        for (i, (ours, burn)) in ours.iter().zip(burn).enumerate() {
            let largest = burn.iter::<f32>().fold(1f32, |largest, v| largest.max(v.abs()));
            let tolerance = Tolerance::<f32>::rel_abs(relative, absolute * largest);
            assert!(
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ours.assert_approx_eq::<f32>(burn, tolerance))).is_ok(),
                "{context}: result {i} differs from burn's:\n{ours}\n{burn}"
            );
        }
    }

    /// Output and the gradients of the input and of all four parameters equal burn's, on planes
    /// of one pixel, shorter and longer than the summing lanes (8, 32), odd sizes, one image.
    #[test]
    fn output_and_gradients_equal_burns_ops() {
        let device = Device::flex().autodiff();
        device.seed(11);
        let cases = [([2, 6, 1, 1], 2), ([3, 5, 3, 5], 3), ([1, 8, 9, 11], 4), ([4, 12, 6, 6], 5), ([2, 3, 7, 7], 1)];
        for (shape, squeezed) in cases {
            for act in [Act::Silu, Act::Relu, Act::Identity] {
                let x = Tensor::<4>::random(shape, Distribution::Normal(0.5, 2.0), &device);
                let out_grad = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
                let (reduce, expand) = layers(shape[1], squeezed, &device);
                assert!(applies(&x, &reduce, &expand));
                let run = |ours: bool| {
                    let x = x.clone().require_grad();
                    let y =
                        if ours { squeeze_excite(x.clone(), &reduce, &expand, act) } else { reference(x.clone(), &reduce, &expand, act) };
                    let grads = (y.clone() * out_grad.clone()).sum().backward();
                    let grad = |p: &Param<Tensor<4>>| p.grad(&grads).unwrap().into_data();
                    let bias_grad = |conv: &Conv2d| conv.bias.as_ref().unwrap().grad(&grads).unwrap().into_data();
                    [
                        y.into_data(),
                        x.grad(&grads).unwrap().into_data(),
                        grad(&reduce.weight),
                        bias_grad(&reduce),
                        grad(&expand.weight),
                        bias_grad(&expand),
                    ]
                };
                let context = format!("{shape:?} squeezed {squeezed} {act:?}");
                assert_results_close(&run(true), &run(false), [1e-4, 1e-5], &context);
            }
        }
    }

    /// A training BatchNorm and its activation, then the squeeze-excite, as one operation:
    /// output, the gradients of x, gamma, beta and the four weights, and the running statistics
    /// equal burn's BatchNorm, the activation and the reference in turn; with and without the
    /// planes' moments, planes of one pixel, shorter and longer than the summing lanes, odd sizes.
    #[test]
    fn batch_norm_then_squeeze_excite_equals_burns_layers() {
        use crate::kernels::dense::conv2d_dense_moments;
        use crate::kernels::training_batch_norm;

        let device = Device::flex().autodiff();
        device.seed(13);
        let cases = [
            ([2, 6, 1, 1], 2, Act::Silu, Act::Silu),
            ([3, 5, 3, 5], 3, Act::Relu6, Act::Relu),
            ([2, 8, 9, 11], 4, Act::Silu, Act::Silu),
            ([4, 12, 6, 6], 5, Act::Identity, Act::Silu),
            ([1, 3, 40, 36], 1, Act::Relu, Act::Identity),
        ];
        for (case, ([batch, channels, height, width], squeezed, bn_act, act)) in cases.into_iter().enumerate() {
            // x as a conv computes it, with its planes' moments.
            let input = Tensor::<4>::random([batch, 4, height, width], Distribution::Normal(1.0, 3.0), &device);
            let weight = Tensor::<4>::random([channels, 4, 1, 1], Distribution::Normal(0.0, 1.0), &device);
            let (x, x_moments) = conv2d_dense_moments(input, weight, None, [1, 1], [0, 0]);
            let out_grad = Tensor::<4>::random(x.dims(), Distribution::Normal(0.0, 1.0), &device);
            let (reduce, expand) = layers(channels, squeezed, &device);
            let with_moments = case % 2 == 0;
            let run = |ours: bool| {
                let bn = training_batch_norm(channels, &device);
                let x = x.clone().require_grad();
                let y = if ours {
                    assert!(applies(&x, &reduce, &expand) && batch_norm::trains_on_kernel(&bn, &x));
                    let moments = with_moments.then(|| x_moments.clone());
                    batch_norm_squeeze_excite(&bn, x.clone(), moments, bn_act, &reduce, &expand, act)
                } else {
                    reference(bn_act.apply(bn.forward(x.clone())), &reduce, &expand, act)
                };
                let grads = (y.clone() * out_grad.clone()).sum().backward();
                let grad = |p: &Param<Tensor<4>>| p.grad(&grads).unwrap().into_data();
                let bias_grad = |conv: &Conv2d| conv.bias.as_ref().unwrap().grad(&grads).unwrap().into_data();
                [
                    y.into_data(),
                    x.grad(&grads).unwrap().into_data(),
                    bn.gamma.grad(&grads).unwrap().into_data(),
                    bn.beta.grad(&grads).unwrap().into_data(),
                    grad(&reduce.weight),
                    bias_grad(&reduce),
                    grad(&expand.weight),
                    bias_grad(&expand),
                    bn.running_mean.value_sync().into_data(),
                    bn.running_var.value_sync().into_data(),
                ]
            };
            assert_results_close(&run(true), &run(false), [1e-3, 1e-4], &format!("case {case}"));
        }
    }

    /// Frozen layers (no gradient wanted) give the input's gradient only; evaluation (no
    /// autodiff) gives burn's output.
    #[test]
    fn frozen_layers_and_evaluation_equal_burns() {
        let device = Device::flex().autodiff();
        device.seed(12);
        let (reduce, expand) = layers(6, 2, &device);
        let (reduce, expand) = (reduce.no_grad(), expand.no_grad());
        let x = Tensor::<4>::random([3, 6, 4, 5], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let grads = squeeze_excite(x.clone(), &reduce, &expand, Act::Silu).sum().backward();
        let reference_grads = reference(x.clone(), &reduce, &expand, Act::Silu).sum().backward();
        let tolerance = Tolerance::<f32>::rel_abs(1e-4, 1e-5);
        x.grad(&grads).unwrap().into_data().assert_approx_eq::<f32>(&x.grad(&reference_grads).unwrap().into_data(), tolerance);
        assert!(reduce.weight.grad(&grads).is_none() && expand.bias.as_ref().unwrap().grad(&grads).is_none());

        let (reduce, expand) = (reduce.valid(), expand.valid());
        let x = Tensor::<4>::random([2, 6, 3, 3], Distribution::Normal(0.0, 1.0), &Device::flex());
        let ours = squeeze_excite(x.clone(), &reduce, &expand, Act::Silu).into_data();
        ours.assert_approx_eq::<f32>(&reference(x, &reduce, &expand, Act::Silu).into_data(), tolerance);
    }
}
