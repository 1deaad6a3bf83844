//! The tables of `ferrovision bench depthwise|conv|gemm`: each benchmark measured into a report
//! whose `Display` is the table, headed by what was measured and where.

use std::fmt;

use anyhow::Result;
use burn::prelude::Device;

use super::{
    Conv3x3Shape, DepthwiseShape, GemmShape, Kernel, conv_gemm_shapes, conv3x3_seconds, conv3x3_shapes, depthwise_step, sgemm_seconds,
};
use crate::models::ModelConfig;
use crate::models::layers::ConvKernel;

/// How a layer benchmark times each layer: `steps` timed passes after `warmup` untimed ones, on
/// `batch` random inputs, on the device named `device` (as `device::parse` reads it).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerTiming {
    pub batch: usize,
    pub steps: usize,
    pub warmup: usize,
    pub device: String,
}

impl LayerTiming {
    /// The heading's common part: `batch B, S timed steps after W warm-up, device D, T threads`.
    fn describe(&self, threads: usize) -> String {
        let LayerTiming { batch, steps, warmup, device } = self;
        format!("batch {batch}, {steps} timed steps after {warmup} warm-up, device {device}, {threads} threads")
    }
}

/// Seconds per forward + backward of depthwise layers with our kernel and with burn's grouped
/// conv2d. Ends with the images per second through all the layers with our kernels.
#[derive(Clone, Debug, PartialEq)]
pub struct DepthwiseReport {
    pub timing: LayerTiming,
    pub threads: usize,
    pub rows: Vec<DepthwiseRow>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DepthwiseRow {
    pub shape: DepthwiseShape,
    pub ours: f64,
    pub burn: f64,
}

impl DepthwiseReport {
    /// Times each layer of `shapes` on `device` (the device `timing.device` names).
    pub fn measure(shapes: &[DepthwiseShape], timing: LayerTiming, device: &Device) -> Self {
        let LayerTiming { batch, steps, warmup, .. } = timing;
        let rows = shapes
            .iter()
            .map(|&shape| {
                let ours = depthwise_step(shape, Kernel::Ours, batch, steps, warmup, device);
                let burn = depthwise_step(shape, Kernel::Burn, batch, steps, warmup, device);
                DepthwiseRow { shape, ours, burn }
            })
            .collect();
        Self { timing, threads: rayon::current_num_threads(), rows }
    }
}

impl fmt::Display for DepthwiseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "depthwise conv forward + backward, {}", self.timing.describe(self.threads))?;
        writeln!(f, "{:<18} {:>10} {:>10} {:>8}", "layer", "ours s", "burn s", "speedup")?;
        let (mut ours_total, mut burn_total) = (0.0, 0.0);
        for &DepthwiseRow { shape, ours, burn } in &self.rows {
            writeln!(f, "{:<18} {ours:>10.4} {burn:>10.4} {:>7.2}x", shape.to_string(), burn / ours)?;
            (ours_total, burn_total) = (ours_total + ours, burn_total + burn);
        }
        writeln!(f, "{:<18} {ours_total:>10.4} {burn_total:>10.4} {:>7.2}x", "all layers", burn_total / ours_total)?;
        writeln!(f, "{:.1} img/s", self.timing.batch as f64 / ours_total)
    }
}

/// The kernels `bench conv` compares, in its columns' order.
pub const CONV_KERNELS: [ConvKernel; 3] = [ConvKernel::Winograd, ConvKernel::Dense, ConvKernel::Burn];

/// Seconds per forward pass and per forward + backward of a model's dense 3x3 stride-1
/// convolutions by Winograd, by our im2col products and by burn's conv2d, layer by layer, with
/// the GFLOP/s of the fastest kernel (as a direct convolution counts them) and the speedups over
/// burn.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvReport {
    pub model: String,
    pub timing: LayerTiming,
    pub threads: usize,
    pub rows: Vec<ConvRow>,
}

/// One layer shape and the number of layers of that shape in a row: seconds per pass, forward
/// then forward + backward, by each of [`CONV_KERNELS`].
#[derive(Clone, Debug, PartialEq)]
pub struct ConvRow {
    pub shape: Conv3x3Shape,
    pub layers: usize,
    pub seconds: [[f64; 3]; 2],
}

impl ConvReport {
    /// Times the dense 3x3 convolutions of `config` (the model named `model`) at a `size` x
    /// `size` input on `device` (the device `timing.device` names).
    pub fn measure(model: &str, config: &ModelConfig, size: usize, timing: LayerTiming, device: &Device) -> Result<Self> {
        let LayerTiming { batch, steps, warmup, .. } = timing;
        let rows = conv3x3_shapes(config, size)?
            .into_iter()
            .map(|(shape, layers)| {
                let seconds = [false, true]
                    .map(|training| CONV_KERNELS.map(|kernel| conv3x3_seconds(shape, kernel, training, batch, steps, warmup, device)));
                ConvRow { shape, layers, seconds }
            })
            .collect();
        Ok(Self { model: model.to_string(), timing, threads: rayon::current_num_threads(), rows })
    }
}

impl fmt::Display for ConvReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}'s dense 3x3 stride-1 convolutions, {}", self.model, self.timing.describe(self.threads))?;
        writeln!(
            f,
            "seconds per layer by Winograd, our im2col products and burn; GFLOP/s of the fastest, as a direct convolution counts them"
        )?;
        writeln!(f, "(forward 2*9*in*out*pixels, training 3x that)")?;
        writeln!(
            f,
            "{:<22} {:>6} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9} {:>8}",
            "layer", "layers", "fwd wino", "fwd i2c", "fwd burn", "GFLOP/s", "trn wino", "trn i2c", "trn burn", "GFLOP/s"
        )?;
        // Seconds over all layers per kernel, forward then training, and of the fastest kernel per layer.
        let mut totals = [[0.0; 3]; 2];
        let mut best = [0.0; 2];
        let mut flops = 0.0;
        for &ConvRow { shape, layers, seconds } in &self.rows {
            let layer_flops = shape.flops(self.timing.batch);
            let fastest = seconds.map(|t| t.into_iter().fold(f64::INFINITY, f64::min));
            let [[fw, fi, fb], [tw, ti, tb]] = seconds;
            writeln!(
                f,
                "{:<22} {layers:>6} {fw:>9.4} {fi:>9.4} {fb:>9.4} {:>8.1} {tw:>9.4} {ti:>9.4} {tb:>9.4} {:>8.1}",
                shape.to_string(),
                layer_flops / fastest[0] / 1e9,
                3.0 * layer_flops / fastest[1] / 1e9
            )?;
            for pass in 0..2 {
                totals[pass].iter_mut().zip(seconds[pass]).for_each(|(total, t)| *total += layers as f64 * t);
                best[pass] += layers as f64 * fastest[pass];
            }
            flops += layers as f64 * layer_flops;
        }
        let [[fw, fi, fb], [tw, ti, tb]] = totals;
        writeln!(
            f,
            "{:<22} {:>6} {fw:>9.4} {fi:>9.4} {fb:>9.4} {:>8.1} {tw:>9.4} {ti:>9.4} {tb:>9.4} {:>8.1}",
            "all layers",
            "",
            flops / best[0] / 1e9,
            3.0 * flops / best[1] / 1e9
        )?;
        writeln!(
            f,
            "speedup over burn, Winograd: forward {:.2}x, forward + backward {:.2}x; fastest kernel per layer: {:.2}x, {:.2}x",
            fb / fw,
            tb / tw,
            fb / best[0],
            tb / best[1]
        )
    }
}

/// GFLOP/s of the `gemm` crate (burn-flex's sgemm) on the forward im2col products of a model's
/// dense convolutions, then on a square product; ends with the GFLOP/s over all the products.
#[derive(Clone, Debug, PartialEq)]
pub struct GemmReport {
    pub model: String,
    pub batch: usize,
    pub size: usize,
    pub threads: usize,
    pub rows: Vec<GemmRow>,
    /// The side of the square product and its seconds.
    pub square: (usize, f64),
}

/// A layer's product and its seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct GemmRow {
    pub layer: String,
    pub shape: GemmShape,
    pub seconds: f64,
}

impl GemmReport {
    /// Times the products of `config` (the model named `model`) at `batch` `size` x `size`
    /// images and a `square` x `square` x `square` product, `steps` times each.
    pub fn measure(model: &str, config: &ModelConfig, batch: usize, size: usize, steps: usize, square: usize) -> Result<Self> {
        let rows = conv_gemm_shapes(config, batch, size)?
            .into_iter()
            .map(|(layer, shape)| GemmRow { seconds: sgemm_seconds(shape, steps), layer, shape })
            .collect();
        let square = (square, sgemm_seconds(GemmShape { m: square, k: square, n: square }, steps));
        Ok(Self { model: model.to_string(), batch, size, threads: rayon::current_num_threads(), rows, square })
    }
}

impl fmt::Display for GemmReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { model, batch, size, threads, .. } = self;
        writeln!(
            f,
            "sgemm (gemm crate, f32, row-major), {threads} threads: the forward im2col products of {model}'s dense convolutions, batch {batch}, {size}x{size}"
        )?;
        writeln!(f, "{:<28} {:>9} {:>6} {:>6} {:>10} {:>9}", "layer", "M", "K", "N", "ms", "GFLOP/s")?;
        let (mut flops, mut seconds) = (0.0, 0.0);
        for GemmRow { layer, shape, seconds: t } in &self.rows {
            writeln!(f, "{layer:<28} {:>9} {:>6} {:>6} {:>10.2} {:>9.1}", shape.m, shape.k, shape.n, 1e3 * t, shape.flops() / t / 1e9)?;
            (flops, seconds) = (flops + shape.flops(), seconds + t);
        }
        writeln!(f, "{:<28} {:>9} {:>6} {:>6} {:>10.2} {:>9.1}", "all convolutions", "", "", "", 1e3 * seconds, flops / seconds / 1e9)?;
        let list: Vec<String> = self.rows.iter().map(|r| format!("{},{},{}", r.shape.m, r.shape.k, r.shape.n)).collect();
        writeln!(f, "shapes (for bench/pytorch_gemm_bench.py --shapes): {}", list.join(" "))?;
        let (side, t) = self.square;
        let cube = GemmShape { m: side, k: side, n: side };
        writeln!(f, "square {side}x{side}x{side}: {:.1} GFLOP/s", cube.flops() / t / 1e9)?;
        writeln!(f, "{:.1} GFLOP/s", flops / seconds / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(batch: usize) -> LayerTiming {
        LayerTiming { batch, steps: 1, warmup: 0, device: "flex".into() }
    }

    #[test]
    fn depthwise_report_lists_each_layer_then_the_totals_and_throughput() {
        let shape = |channels| DepthwiseShape { channels, size: 8, kernel: 3, stride: 1 };
        let report = DepthwiseReport {
            timing: LayerTiming { batch: 4, steps: 10, warmup: 3, device: "flex".into() },
            threads: 2,
            rows: vec![DepthwiseRow { shape: shape(16), ours: 0.5, burn: 1.0 }, DepthwiseRow { shape: shape(32), ours: 1.5, burn: 6.0 }],
        };
        let expected = "\
depthwise conv forward + backward, batch 4, 10 timed steps after 3 warm-up, device flex, 2 threads
layer                  ours s     burn s  speedup
16@8x8 k3 s1           0.5000     1.0000    2.00x
32@8x8 k3 s1           1.5000     6.0000    4.00x
all layers             2.0000     7.0000    3.50x
2.0 img/s
";
        assert_eq!(report.to_string(), expected);
        let measured = DepthwiseReport::measure(&[shape(4)], timing(1), &Device::flex());
        assert_eq!(measured.rows.len(), 1);
        assert!(measured.rows[0].ours > 0.0 && measured.rows[0].burn > 0.0);
    }

    #[test]
    fn conv_report_totals_weigh_each_shape_by_its_layers() {
        let shape = Conv3x3Shape { in_channels: 10, out_channels: 10, size: 10, padding: 1 };
        let report = ConvReport {
            model: "m".into(),
            timing: LayerTiming { batch: 1, steps: 3, warmup: 1, device: "flex".into() },
            threads: 1,
            // 0.18 MFLOP forward per layer: 0.1 ms = 1.8 GFLOP/s.
            rows: vec![ConvRow { shape, layers: 2, seconds: [[1e-4, 2e-4, 4e-4], [3e-4, 6e-4, 6e-4]] }],
        };
        let text = report.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "m's dense 3x3 stride-1 convolutions, batch 1, 3 timed steps after 1 warm-up, device flex, 1 threads");
        assert_eq!(lines[4], "10->10@10x10 p1             2    0.0001    0.0002    0.0004      1.8    0.0003    0.0006    0.0006      1.8");
        assert_eq!(lines[5], "all layers                       0.0002    0.0004    0.0008      1.8    0.0006    0.0012    0.0012      1.8");
        assert_eq!(
            lines[6],
            "speedup over burn, Winograd: forward 4.00x, forward + backward 2.00x; fastest kernel per layer: 4.00x, 2.00x"
        );
        assert_eq!(lines.len(), 7);
    }

    #[test]
    fn gemm_report_ends_with_the_square_product_and_the_overall_rate() {
        let config = ModelConfig { name: "tutorial_net".into(), ..Default::default() };
        let report = GemmReport::measure("tutorial_net", &config, 2, 32, 1, 16).unwrap();
        assert_eq!(report.rows.len(), 2, "{report:?}");
        let text = report.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2 + report.rows.len() + 4, "{text}");
        assert!(lines[0].ends_with("the forward im2col products of tutorial_net's dense convolutions, batch 2, 32x32"), "{text}");
        assert!(lines[4].starts_with("all convolutions"), "{text}");
        assert_eq!(lines[5], "shapes (for bench/pytorch_gemm_bench.py --shapes): 1568,75,6 200,150,16");
        assert!(lines[6].starts_with("square 16x16x16: ") && lines[7].ends_with(" GFLOP/s"), "{text}");
    }
}
