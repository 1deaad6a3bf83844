use std::path::PathBuf;

use anyhow::Result;
use clap::Arg;
use ferrovision::bench::report::{ConvReport, DepthwiseReport, GemmReport, LayerTiming};
use ferrovision::bench::{self, GemmShape, Kernel};
use ferrovision::config::ExperimentConfig;
use ferrovision::train::Precision;

use super::args::{DeviceName, Overrides};
use ferrovision::{out, outln};

/// The model a benchmark builds (`--set` changes its config) and the random batches it times.
#[derive(clap::Args)]
pub struct ModelWorkload {
    #[arg(long)]
    model: String,
    #[arg(long, default_value_t = 128)]
    batch: usize,
    #[arg(long, default_value_t = 32)]
    size: usize,
    #[arg(long, default_value_t = 10)]
    steps: usize,
}

#[derive(clap::Args)]
pub struct PrecisionChoice {
    /// What the network computes in: f32, or f16 / bf16 (mixed precision, f32 weights).
    #[arg(long, default_value = "f32")]
    precision: Precision,
}

/// Untimed steps before the timed ones.
#[derive(clap::Args)]
pub struct Warmup {
    #[arg(long, default_value_t = 2)]
    warmup: usize,
}

#[derive(clap::Args)]
pub struct KernelChoice {
    /// Whose convolution kernels the models use: ours or burn's (for comparison).
    #[arg(long, value_enum, default_value_t = Kernel::Ours)]
    kernels: Kernel,
}

// The benchmarks' own defaults and help for options of the groups above.
fn default_to(value: &'static str) -> impl FnOnce(Arg) -> Arg {
    move |arg| arg.default_value(value)
}

fn resnet18_cifar_by_default(arg: Arg) -> Arg {
    arg.required(false).default_value("resnet18_cifar")
}

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Training step (forward, backward, SGD update) on random images.
    #[command(
        mut_arg("size", |arg| arg.help("Side of the square input images")),
        mut_arg("overrides", |arg| arg.help(Overrides::MODEL_KEYS_HELP))
    )]
    Train {
        #[command(flatten)]
        workload: ModelWorkload,
        #[command(flatten)]
        warmup: Warmup,
        #[command(flatten)]
        device: DeviceName,
        #[command(flatten)]
        kernels: KernelChoice,
        #[command(flatten)]
        precision: PrecisionChoice,
        /// Also print where the step's time goes, op by op.
        #[arg(long)]
        profile: bool,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Evaluation-mode forward passes.
    #[command(mut_arg("batch", default_to("256")))]
    Infer {
        #[command(flatten)]
        workload: ModelWorkload,
        #[command(flatten)]
        device: DeviceName,
        #[command(flatten)]
        kernels: KernelChoice,
        #[command(flatten)]
        precision: PrecisionChoice,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Depthwise convolution layers (forward + backward) of MobileNetV2 / EfficientNet-B0 at 224
    /// input: seconds per step with our kernels and with burn's grouped conv2d.
    #[command(mut_arg("warmup", |arg| arg.default_value("3").help("Untimed steps first: the allocator settles over the first few")))]
    Depthwise {
        // Its own --batch and --steps: with no --model and no --size (the layers are the shapes),
        // ModelWorkload does not fit, and help lists the options in declaration order.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        #[arg(long, default_value_t = 10)]
        steps: usize,
        #[command(flatten)]
        warmup: Warmup,
        #[command(flatten)]
        device: DeviceName,
        /// Only this layer, as CHANNELS,SIZE,KERNEL,STRIDE (repeatable; default: the built-in list).
        #[arg(long = "shape", value_name = "C,HW,K,S", value_parser = parse_depthwise_shape)]
        shapes: Vec<bench::DepthwiseShape>,
    },
    /// A model's dense 3x3 stride-1 convolutions by Winograd, by our im2col products and by burn's
    /// conv2d: seconds per forward pass and per forward + backward, layer by layer.
    #[command(mut_arg("model", resnet18_cifar_by_default), mut_arg("steps", default_to("3")), mut_arg("warmup", default_to("1")))]
    Conv {
        #[command(flatten)]
        workload: ModelWorkload,
        #[command(flatten)]
        warmup: Warmup,
        #[command(flatten)]
        device: DeviceName,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// This CPU's sgemm ceiling: GFLOP/s of the gemm crate (burn-flex's kernel) on the im2col
    /// products of a model's dense convolutions, and on a square product.
    #[command(mut_arg("model", resnet18_cifar_by_default), mut_arg("steps", default_to("5")))]
    Gemm {
        #[command(flatten)]
        workload: ModelWorkload,
        /// Side of the square product reported last.
        #[arg(long, default_value_t = 2048)]
        square: usize,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Augmentation throughput on one core: a config's pipeline (+ normalize) on SIZE x SIZE images.
    Augment {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value_t = 32)]
        size: usize,
        #[arg(long, default_value_t = 5000)]
        images: usize,
    },
    /// The data loader alone: crop + flip + normalize of 32x32 images on its background thread.
    Loader {
        #[arg(long, default_value_t = 512)]
        batch: usize,
        #[arg(long, default_value_t = 50_000)]
        images: usize,
    },
}

impl BenchCommand {
    pub fn run(self) -> Result<()> {
        match self {
            BenchCommand::Train {
                workload,
                warmup: Warmup { warmup },
                device,
                kernels: KernelChoice { kernels },
                precision: PrecisionChoice { precision },
                profile,
                overrides,
            } => {
                let ModelWorkload { model, batch, size, steps } = workload;
                let name = &device.device;
                let device = device.parse()?;
                precision.check(&device, name)?;
                ferrovision::kernels::set_enabled(kernels == Kernel::Ours);
                let model_config = overrides.model_config(&model)?;
                outln!(
                    "training step{}: {model}, batch {batch}, {size}x{size}, {precision}, {steps} timed steps after {warmup} warm-up, device {name}, {} threads, {kernels:?} kernels",
                    if profile { " profile" } else { "" },
                    rayon::current_num_threads()
                );
                let workload = bench::Workload { model: &model_config, classes: bench::CLASSES, batch, size, precision };
                let ips = if profile {
                    let profile = bench::profile::train_step(&workload, steps, warmup, &device)?;
                    let square = GemmShape { m: 2048, k: 2048, n: 2048 };
                    let peak = square.flops() / bench::sgemm_seconds(square, 3) / 1e9;
                    outln!(
                        "(GFLOP/s: multiply-add = 2, direct-convolution count; peak = this CPU's sgemm on a 2048 square product, {peak:.1} GFLOP/s)"
                    );
                    outln!("{}", profile.table(peak));
                    profile.batch as f64 / profile.step
                } else {
                    bench::train_step(&workload, steps, warmup, &device)?
                };
                outln!("{ips:.1} img/s");
            }
            BenchCommand::Infer {
                workload,
                device,
                kernels: KernelChoice { kernels },
                precision: PrecisionChoice { precision },
                overrides,
            } => {
                let ModelWorkload { model, batch, size, steps } = workload;
                let name = &device.device;
                let device = device.parse()?;
                precision.check(&device, name)?;
                ferrovision::kernels::set_enabled(kernels == Kernel::Ours);
                let model_config = overrides.model_config(&model)?;
                outln!("inference: {model}, batch {batch}, {size}x{size}, {precision}, {steps} steps, device {name}");
                let workload = bench::Workload { model: &model_config, classes: bench::CLASSES, batch, size, precision };
                outln!("{:.1} img/s", bench::inference(&workload, steps, &device)?);
            }
            BenchCommand::Depthwise { batch, steps, warmup: Warmup { warmup }, device: name, shapes } => {
                let device = name.parse()?;
                let shapes = if shapes.is_empty() { bench::DEPTHWISE_SHAPES.to_vec() } else { shapes };
                let timing = LayerTiming { batch, steps, warmup, device: name.device };
                out!("{}", DepthwiseReport::measure(&shapes, timing, &device));
            }
            BenchCommand::Conv { workload, warmup: Warmup { warmup }, device: name, overrides } => {
                let ModelWorkload { model, batch, size, steps } = workload;
                let device = name.parse()?;
                let timing = LayerTiming { batch, steps, warmup, device: name.device };
                out!("{}", ConvReport::measure(&model, &overrides.model_config(&model)?, size, timing, &device)?);
            }
            BenchCommand::Gemm { workload, square, overrides } => {
                let ModelWorkload { model, batch, size, steps } = workload;
                out!("{}", GemmReport::measure(&model, &overrides.model_config(&model)?, batch, size, steps, square)?);
            }
            BenchCommand::Augment { config, size, images } => {
                let config = ExperimentConfig::load(&config, &[])?;
                let pipeline = ferrovision::augment::transforms::Pipeline::from_config(&config.augment);
                let names: Vec<&str> = pipeline.transforms.iter().map(|t| t.name()).collect();
                outln!("augmentation: {} + normalize, {size}x{size}, {images} images, one thread", names.join(" + "));
                outln!("{:.1} img/s", bench::augment(&pipeline, size, images)?);
            }
            BenchCommand::Loader { batch, images } => {
                outln!("loader: crop+flip+normalize, 32x32, batch {batch}, {images} images, one background thread");
                outln!("{:.1} img/s", bench::loader(batch, images));
            }
        }
        Ok(())
    }
}

fn parse_depthwise_shape(text: &str) -> Result<bench::DepthwiseShape, String> {
    let numbers: Vec<usize> =
        text.split(',').map(|n| n.trim().parse().map_err(|_| format!("`{n}` is not a number"))).collect::<Result<_, _>>()?;
    match numbers[..] {
        [channels, size, kernel, stride] if channels > 0 && kernel > 0 && stride > 0 && size >= kernel => {
            Ok(bench::DepthwiseShape { channels, size, kernel, stride })
        }
        _ => Err("expected CHANNELS,SIZE,KERNEL,STRIDE with SIZE >= KERNEL, e.g. 144,56,3,1".into()),
    }
}
