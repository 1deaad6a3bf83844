//! The `ferrovision` command line: parses arguments and calls the library.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use clap::{Parser, Subcommand};

use ferrovision::config::ExperimentConfig;
use ferrovision::models::layers::ConvKernel;
use ferrovision::tracking::RunDir;
use ferrovision::{bench, data, device, models, train};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[derive(Parser)]
#[command(name = "ferrovision", version, about = "Train, evaluate and benchmark image classifiers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model from a config file; writes runs/<id>/ and tests the best checkpoint.
    Train {
        #[arg(long, required_unless_present = "resume")]
        config: Option<PathBuf>,
        /// Continue an interrupted run (runs/<id>) from its last completed epoch; `--set
        /// train.epochs=N` extends a finished one.
        #[arg(long, conflicts_with_all = ["config", "data", "download", "id"])]
        resume: Option<PathBuf>,
        /// Override a config key, e.g. --set train.epochs=3 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Data set folder or archive (same as --set data.path=PATH).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Download the official CIFAR-10 archive next to data.path if it is missing.
        #[arg(long)]
        download: bool,
        /// flex (CPU, default), vulkan or cuda (builds with those features).
        #[arg(long)]
        device: Option<String>,
        /// Run id (default: <config name>-<UTC timestamp>).
        #[arg(long)]
        id: Option<String>,
    },
    /// Train one run per point of a grid (the cross product of the --grid lists), sequentially,
    /// tagged; then compare them (Markdown, CSV, HTML and a plot in the runs folder). Started
    /// again, it skips the points that finished.
    Sweep {
        #[arg(long)]
        config: PathBuf,
        /// KEY=V1,V2,... (repeatable), e.g. --grid train.optimizer='"sgd","adam"'.
        #[arg(long = "grid", value_name = "KEY=V1,V2,...", required = true)]
        grids: Vec<String>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Tag of the sweep's runs (default: sweep-<config name>).
        #[arg(long)]
        tag: Option<String>,
    },
    /// Evaluate a run's best checkpoint on its test or validation split.
    Eval {
        #[arg(long)]
        run: PathBuf,
        #[arg(long, default_value = "test", value_parser = ["test", "val"])]
        split: String,
        #[arg(long)]
        device: Option<String>,
        /// Evaluate this checkpoint name instead of `best` (e.g. `last`).
        #[arg(long, default_value = "best")]
        checkpoint: String,
        /// Robustness: also evaluate the images passed through this augmentation (seeded): a
        /// transform name, an inline entry `{ name = "random_rotation", degrees = 30 }`, or a TOML
        /// file with `transforms = [...]`.
        #[arg(long)]
        transform: Option<String>,
        /// With --transform: one evaluation per value of a parameter of its last entry, e.g.
        /// `degrees=0,10,20,30`; writes a CSV and an SVG plot into <run>/robustness/.
        #[arg(long, requires = "transform", value_name = "KEY=V1,V2,...")]
        sweep: Option<String>,
        /// Test-time augmentation (default: the run's train.tta).
        #[arg(long, value_parser = ["none", "flip", "flip_translate"])]
        tta: Option<String>,
    },
    /// Label images (files, folders or .tar.gz/.zip archives) with a run, an export or pretrained weights.
    Predict {
        /// Images, folders or .tar.gz/.zip archives of images.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        #[command(flatten)]
        model: ModelArgs,
        /// Class table: TSV with index/wnid/name columns, or one class name per line.
        #[arg(long)]
        classes: Option<PathBuf>,
        /// Score the predictions: the true class is the start of each file name (up to `_`).
        #[arg(long)]
        labels_from_file_names: bool,
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        #[arg(long, default_value_t = 16)]
        batch: usize,
    },
    /// Pictures of what a model computes.
    Viz {
        #[command(subcommand)]
        command: VizCommand,
    },
    /// A model's layers in order: name, type, output shape, parameters and FLOPs for one image.
    Summary {
        /// A registered architecture (`ferrovision models`).
        #[arg(long)]
        model: String,
        /// Side of the square input (default: the size the model was designed for).
        #[arg(long)]
        size: Option<usize>,
        #[arg(long, default_value_t = 10)]
        classes: usize,
        /// Model config keys, e.g. --set model.widths=[32,128,128] (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Export a run's best model to safetensors, with its config and classes.
    Export {
        #[arg(long)]
        run: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "best")]
        checkpoint: String,
    },
    /// The experiment journal: list runs, add conclusions, compare runs.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Look at and apply augmentation pipelines.
    Augment {
        #[command(subcommand)]
        command: AugmentCommand,
    },
    /// Pretrained weights.
    Weights {
        #[command(subcommand)]
        command: WeightsCommand,
    },
    /// Inspect data sets.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// List the model registry with trainable parameter counts.
    Models,
    /// Throughput benchmarks; each ends with a line `<number> img/s`.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

/// Where a trained or pretrained model comes from (predict, viz).
#[derive(clap::Args)]
struct ModelArgs {
    /// A training run folder (uses its best checkpoint).
    #[arg(long, conflicts_with_all = ["export", "model"])]
    run: Option<PathBuf>,
    /// A model file written by `ferrovision export`.
    #[arg(long, conflicts_with = "model")]
    export: Option<PathBuf>,
    /// A registered architecture (`ferrovision models`), with --weights or --pretrained.
    #[arg(long)]
    model: Option<String>,
    /// PyTorch checkpoint (.pth/.pt, zip or legacy format) or safetensors file for --model.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Registered pretrained weights (`ferrovision weights list`); downloaded into the cache.
    #[arg(long)]
    pretrained: Option<String>,
    /// Load what matches when the weights do not fit the model exactly, and list the rest.
    #[arg(long)]
    allow_partial: bool,
    #[arg(long, default_value = "flex")]
    device: String,
    #[arg(long, default_value = ".cache/ferrovision")]
    cache_dir: PathBuf,
}

impl ModelArgs {
    fn source(self) -> Result<ferrovision::serve::predict::ModelSource> {
        use ferrovision::serve::predict::ModelSource;
        let ModelArgs { run, export, model, weights, pretrained, allow_partial, cache_dir, .. } = self;
        Ok(match (run, export, model) {
            (Some(dir), _, _) => ModelSource::Run { dir, checkpoint: "best".into() },
            (_, Some(path), _) => ModelSource::Export(path),
            (_, _, Some(model)) => ModelSource::Weights { model, weights, pretrained, allow_partial, cache_dir },
            _ => anyhow::bail!("say which model: --run DIR, --export FILE, or --model NAME with --weights/--pretrained"),
        })
    }
}

#[derive(Subcommand)]
enum VizCommand {
    /// A PNG of the feature maps the chosen layers produce for one image, after the image and the
    /// first convolution's filters. Layer names as `ferrovision summary` lists them; a module
    /// name (`stages.1`) shows its last layer.
    Activations {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        image: PathBuf,
        /// Comma-separated layer or module names.
        #[arg(long, value_delimiter = ',', required = true)]
        layers: Vec<String>,
        /// At most this many channels per layer.
        #[arg(long, default_value_t = 32)]
        channels: usize,
        #[arg(long, default_value = "activations.png")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum WeightsCommand {
    /// The registry of known pretrained weights.
    List,
}

#[derive(Subcommand)]
enum RunsCommand {
    /// One line per run: id, name, parent, tags, model, epochs, best validation and test accuracy.
    List {
        #[arg(long, default_value = "runs")]
        dir: PathBuf,
    },
    /// Append a dated conclusion to a run's notes.md.
    Note {
        id: String,
        text: String,
        #[arg(long, default_value = "runs")]
        dir: PathBuf,
    },
    /// The settings that differ between runs and their results, as Markdown (and CSV/HTML files).
    Compare {
        /// Run ids.
        ids: Vec<String>,
        /// Every run with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// This run and every run whose parent it is.
        #[arg(long)]
        parent: Option<String>,
        #[arg(long, default_value = "runs")]
        dir: PathBuf,
        #[arg(long)]
        csv: Option<PathBuf>,
        /// A self-contained HTML report with the learning curves.
        #[arg(long)]
        html: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AugmentCommand {
    /// A PNG grid: training images (one per class in turn) next to augmented copies.
    Preview {
        #[arg(long)]
        config: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Augmented copies per image.
        #[arg(long, default_value_t = 8)]
        n: usize,
        /// Images (rows).
        #[arg(long, default_value_t = 6)]
        rows: usize,
        /// Scale factor of every cell (nearest neighbour).
        #[arg(long, default_value_t = 3)]
        zoom: usize,
        #[arg(long, default_value = "augment-preview.png")]
        out: PathBuf,
    },
    /// Write an offline-augmented copy of the config's data set: N augmented images per training
    /// image, the test split unchanged; an image folder of PNGs (resumable) or one packed file.
    Expand {
        #[arg(long)]
        config: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        #[arg(long)]
        copies: usize,
        /// Also keep each original training image.
        #[arg(long)]
        include_original: bool,
        /// folder: train/<class>/*.png + test/ (streams, resumable); packed: one .fvpack file of
        /// decoded images (built in memory, fastest to load).
        #[arg(long, default_value = "folder", value_parser = ["folder", "packed"])]
        format: String,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Detected format, image size and per-class counts.
    Info { path: PathBuf },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Training step (forward, backward, SGD update) on random images.
    Train {
        #[arg(long)]
        model: String,
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// Side of the square input images.
        #[arg(long, default_value_t = 32)]
        size: usize,
        #[arg(long, default_value_t = 10)]
        steps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value = "flex")]
        device: String,
        /// Whose convolution kernels the models use: ours or burn's (for comparison).
        #[arg(long, value_enum, default_value_t = bench::Kernel::Ours)]
        kernels: bench::Kernel,
        /// Also print where the step's time goes, op by op.
        #[arg(long)]
        profile: bool,
        /// Model config keys, e.g. --set model.widths=[32,128,128] (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Evaluation-mode forward passes.
    Infer {
        #[arg(long)]
        model: String,
        #[arg(long, default_value_t = 256)]
        batch: usize,
        #[arg(long, default_value_t = 32)]
        size: usize,
        #[arg(long, default_value_t = 10)]
        steps: usize,
        #[arg(long, default_value = "flex")]
        device: String,
        /// Whose convolution kernels the models use: ours or burn's (for comparison).
        #[arg(long, value_enum, default_value_t = bench::Kernel::Ours)]
        kernels: bench::Kernel,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Depthwise convolution layers (forward + backward) of MobileNetV2 / EfficientNet-B0 at 224
    /// input: seconds per step with our kernels and with burn's grouped conv2d.
    Depthwise {
        #[arg(long, default_value_t = 32)]
        batch: usize,
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Untimed steps first: the allocator settles over the first few.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        #[arg(long, default_value = "flex")]
        device: String,
        /// Only this layer, as CHANNELS,SIZE,KERNEL,STRIDE (repeatable; default: the built-in list).
        #[arg(long = "shape", value_name = "C,HW,K,S", value_parser = parse_depthwise_shape)]
        shapes: Vec<bench::DepthwiseShape>,
    },
    /// A model's dense 3x3 stride-1 convolutions by Winograd, by our im2col products and by burn's
    /// conv2d: seconds per forward pass and per forward + backward, layer by layer.
    Conv {
        #[arg(long, default_value = "resnet18_cifar")]
        model: String,
        #[arg(long, default_value_t = 128)]
        batch: usize,
        #[arg(long, default_value_t = 32)]
        size: usize,
        #[arg(long, default_value_t = 3)]
        steps: usize,
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        #[arg(long, default_value = "flex")]
        device: String,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// This CPU's sgemm ceiling: GFLOP/s of the gemm crate (burn-flex's kernel) on the im2col
    /// products of a model's dense convolutions, and on a square product.
    Gemm {
        #[arg(long, default_value = "resnet18_cifar")]
        model: String,
        #[arg(long, default_value_t = 128)]
        batch: usize,
        #[arg(long, default_value_t = 32)]
        size: usize,
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Side of the square product reported last.
        #[arg(long, default_value_t = 2048)]
        square: usize,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
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

fn main() {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    ferrovision::device::keep_freed_memory();
    ferrovision::device::make_this_thread_a_worker();
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: finishing the current step and saving the last checkpoint (Ctrl-C again to abort)");
    });
    if let Err(error) = run(Cli::parse()) {
        eprintln!("error: {error:#}");
        std::process::exit(if INTERRUPTED.load(Ordering::SeqCst) { 130 } else { 1 });
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train { config: None, resume: Some(dir), mut overrides, device, .. } => {
            if let Some(device) = device {
                overrides.push(format!("run.device={}", toml_string(&device)));
            }
            let (run, _) = RunDir::open(&dir)?;
            let config = ExperimentConfig::load(&dir.join(RunDir::CONFIG), &overrides)?;
            let (run, summary) = train::resume(&run, &config, &INTERRUPTED)?;
            print_summary(&run, &summary);
        }
        Command::Train { config, mut overrides, data, download, device, id, .. } => {
            let config = config.expect("clap requires --config without --resume");
            if let Some(path) = data {
                overrides.push(format!("data.path={}", toml_string(&path.display().to_string())));
            }
            if download {
                overrides.push("data.download=true".into());
            }
            if let Some(device) = device {
                overrides.push(format!("run.device={}", toml_string(&device)));
            }
            if let Some(id) = id {
                overrides.push(format!("run.id={}", toml_string(&id)));
            }
            let name = config.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
            let config = ExperimentConfig::load(&config, &overrides)?;
            let run_id = match (config.experiment.id.as_str(), config.run.id.as_str()) {
                ("", "") => default_run_id(&name),
                (id, "") | ("", id) => id.to_string(),
                (a, b) if a == b => a.to_string(),
                (a, b) => anyhow::bail!("config key `experiment.id`: `{a}` differs from run.id `{b}`; give one of them"),
            };
            let (run, summary) = train::fit(&config, &run_id, &INTERRUPTED)?;
            print_summary(&run, &summary);
        }
        Command::Eval { run, split, device, checkpoint, transform, sweep, tta } => {
            let (run, mut config) = RunDir::open(&run)?;
            if let Some(device) = device {
                config.run.device = device;
            }
            if let Some(tta) = tta {
                config.train.tta = serde_json::from_value(serde_json::Value::String(tta))?;
            }
            match transform {
                None => print!("{}", train::evaluate_run(&run, &config, &split, &checkpoint)?),
                Some(spec) => {
                    use train::robustness;
                    let settings = robustness::settings(&spec, sweep.as_deref(), config.augment.normalize)?;
                    let evaluation = train::RunEvaluation::load(&run, &config, &split, &checkpoint)?;
                    println!("run {} checkpoint {checkpoint}, {split} split ({} images)", run.id, evaluation.set.len());
                    let outcomes = robustness::evaluate_settings(&evaluation, &settings)?;
                    print!("{}", robustness::markdown(&outcomes));
                    let key = sweep.as_deref().map(|s| s.split_once('=').map_or(s, |(k, _)| k));
                    // Named after the spec's file, or after the (last) transform it names.
                    let spec_path = std::path::Path::new(&spec);
                    let base = match spec_path.is_file().then(|| spec_path.file_stem()).flatten() {
                        Some(stem) => stem.to_string_lossy().into_owned(),
                        None => {
                            settings[1].pipeline.as_ref().and_then(|p| p.transforms.last()).map_or("transform", |t| t.name()).to_string()
                        }
                    };
                    let name = key.map_or(base.clone(), |k| format!("{base}-{k}"));
                    for path in robustness::write_report(&outcomes, &run.path.join("robustness"), &name, key)? {
                        println!("wrote {}", path.display());
                    }
                }
            }
        }
        Command::Predict { inputs, model, classes, labels_from_file_names, top_k, batch } => {
            use ferrovision::serve::predict::{self, ClassNames};
            let device = device::parse(&model.device)?;
            let source = model.source()?;
            let table = classes.as_deref().map(ClassNames::read).transpose()?;
            let (predictor, classes) = predict::load_predictor(&source, table, &device)?;
            let (names, images): (Vec<String>, Vec<_>) =
                predict::read_inputs(&inputs)?.into_iter().map(|input| (input.name, input.image)).unzip();
            let predictions = predictor.predict(&images, top_k, batch);
            let label = |c: usize| classes.names.get(c).cloned().unwrap_or_else(|| c.to_string());
            let (mut top1, mut topk, mut scored) = (0, 0, 0);
            for (name, prediction) in names.iter().zip(&predictions) {
                let ranked: Vec<String> = prediction.top.iter().map(|&(c, p)| format!("{} {:.3}", label(c), p)).collect();
                println!("{name}\t{}", ranked.join("\t"));
                if labels_from_file_names {
                    let truth = classes
                        .from_file_name(name)
                        .ok_or_else(|| anyhow::anyhow!("{name}: the file name names no class of the class table"))?;
                    scored += 1;
                    top1 += usize::from(prediction.top.first().is_some_and(|&(c, _)| c == truth));
                    topk += usize::from(prediction.top.iter().any(|&(c, _)| c == truth));
                }
            }
            if labels_from_file_names {
                let pct = |n: usize| 100.0 * n as f64 / scored.max(1) as f64;
                println!("top-1 {:.2}% ({top1}/{scored}), top-{top_k} {:.2}% ({topk}/{scored})", pct(top1), pct(topk));
            }
        }
        Command::Viz { command: VizCommand::Activations { model, image, layers, channels, out } } => {
            use ferrovision::serve::predict;
            use ferrovision::viz::{activations, canvas};
            let device = device::parse(&model.device)?;
            let (predictor, _) = predict::load_predictor(&model.source()?, None, &device)?;
            let input = predict::read_inputs(std::slice::from_ref(&image))?.remove(0);
            let options = activations::SheetOptions { max_channels: channels, first_layer_filters: true };
            let sections = activations::sheet(&predictor, &input.image, &layers, &options)?;
            canvas::write_png(&canvas::render(&sections), &out)?;
            println!("wrote {} ({} layers)", out.display(), layers.len());
        }
        Command::Summary { model, size, classes, overrides } => {
            let config = named_model(&model, &overrides)?;
            let size = size.or_else(|| models::default_input_size(&model)).unwrap_or(32);
            let device = burn::prelude::Device::flex();
            let classifier = models::build(&config, classes, &device)?;
            let images = burn::prelude::Tensor::<4>::zeros([1, 3, size, size], &device);
            let (_, layers) = models::trace::summarize(&classifier, images, false);
            print!("{}", models::trace::table(&layers, &format!("{model}, input 3x{size}x{size}, {classes} classes")));
        }
        Command::Export { run, out, checkpoint } => {
            let written = ferrovision::weights::export::export_run(&run, &checkpoint, &out)?;
            println!("{} exported to {}", written, out.display());
        }
        Command::Weights { command: WeightsCommand::List } => {
            println!("{:<20} {:>5} {:>6} {:>6}  {:<9} {:<64}  source", "name", "input", "resize", "top-1", "normalize", "sha256");
            for w in ferrovision::weights::registry::all() {
                println!(
                    "{:<20} {:>5} {:>6} {:>5.1}%  {:<9} {:<64}  {}",
                    w.name,
                    w.input_size,
                    w.resize_size,
                    w.top1,
                    format!("{:?}", w.normalize).to_lowercase(),
                    w.sha256,
                    w.url
                );
            }
            println!("(torchvision publishes the first 8 hex digits of SHA-256; those are checked)");
        }
        Command::Augment { command } => augment_command(command)?,
        Command::Runs { command } => runs_command(command)?,
        Command::Sweep { config, grids, overrides, tag } => sweep_command(&config, &grids, &overrides, tag)?,
        Command::Data { command: DataCommand::Info { path } } => {
            let dataset = data::load_dataset(&path, None)?;
            print!("{}", data::describe(&dataset));
        }
        Command::Models => {
            println!("{:<20} {:>12}  description", "name", "parameters");
            let device = burn::prelude::Device::flex();
            for entry in models::registry() {
                let config = ferrovision::config::ModelConfig { name: entry.name.into(), ..Default::default() };
                let params = models::trainable_params(&models::build(&config, 10, &device)?);
                println!("{:<20} {:>12}  {}", entry.name, models::group_digits(params), entry.description);
            }
            println!("(parameters for 10 classes, counted as torchvision does: BatchNorm running statistics excluded)");
        }
        Command::Bench { command } => match command {
            BenchCommand::Train { model, batch, size, steps, warmup, device: name, kernels, profile, overrides } => {
                let device = device::parse(&name)?;
                ferrovision::kernels::set_enabled(kernels == bench::Kernel::Ours);
                let model_config = named_model(&model, &overrides)?;
                println!(
                    "training step{}: {model}, batch {batch}, {size}x{size}, {steps} timed steps after {warmup} warm-up, device {name}, {} threads, {kernels:?} kernels",
                    if profile { " profile" } else { "" },
                    rayon::current_num_threads()
                );
                let ips = if profile {
                    let profile = bench::profile::train_step(&model_config, batch, size, steps, warmup, &device)?;
                    let square = bench::GemmShape { m: 2048, k: 2048, n: 2048 };
                    let peak = square.flops() / bench::sgemm_seconds(square, 3) / 1e9;
                    println!(
                        "(GFLOP/s: multiply-add = 2, direct-convolution count; peak = this CPU's sgemm on a 2048 square product, {peak:.1} GFLOP/s)"
                    );
                    println!("{}", profile.table(peak));
                    profile.batch as f64 / profile.step
                } else {
                    bench::train_step(&model_config, batch, size, steps, warmup, &device)?
                };
                println!("{ips:.1} img/s");
            }
            BenchCommand::Infer { model, batch, size, steps, device: name, kernels, overrides } => {
                let device = device::parse(&name)?;
                ferrovision::kernels::set_enabled(kernels == bench::Kernel::Ours);
                let model_config = named_model(&model, &overrides)?;
                println!("inference: {model}, batch {batch}, {size}x{size}, {steps} steps, device {name}");
                println!("{:.1} img/s", bench::inference(&model_config, batch, size, steps, &device)?);
            }
            BenchCommand::Depthwise { batch, steps, warmup, device: name, shapes } => {
                let device = device::parse(&name)?;
                println!(
                    "depthwise conv forward + backward, batch {batch}, {steps} timed steps after {warmup} warm-up, device {name}, {} threads",
                    rayon::current_num_threads()
                );
                println!("{:<18} {:>10} {:>10} {:>8}", "layer", "ours s", "burn s", "speedup");
                let (mut ours_total, mut burn_total) = (0.0, 0.0);
                let shapes = if shapes.is_empty() { bench::DEPTHWISE_SHAPES.to_vec() } else { shapes };
                for shape in shapes {
                    let ours = bench::depthwise_step(shape, bench::Kernel::Ours, batch, steps, warmup, &device);
                    let burn = bench::depthwise_step(shape, bench::Kernel::Burn, batch, steps, warmup, &device);
                    println!("{:<18} {ours:>10.4} {burn:>10.4} {:>7.2}x", shape.to_string(), burn / ours);
                    (ours_total, burn_total) = (ours_total + ours, burn_total + burn);
                }
                println!("{:<18} {ours_total:>10.4} {burn_total:>10.4} {:>7.2}x", "all layers", burn_total / ours_total);
                // Images per second through all the layers with our kernels.
                println!("{:.1} img/s", batch as f64 / ours_total);
            }
            BenchCommand::Conv { model, batch, size, steps, warmup, device: name, overrides } => {
                let device = device::parse(&name)?;
                let shapes = bench::conv3x3_shapes(&named_model(&model, &overrides)?, size)?;
                println!(
                    "{model}'s dense 3x3 stride-1 convolutions, batch {batch}, {steps} timed steps after {warmup} warm-up, device {name}, {} threads",
                    rayon::current_num_threads()
                );
                println!(
                    "seconds per layer by Winograd, our im2col products and burn; GFLOP/s of the fastest, as a direct convolution counts them"
                );
                println!("(forward 2*9*in*out*pixels, training 3x that)");
                let kernels = [ConvKernel::Winograd, ConvKernel::Dense, ConvKernel::Burn];
                println!(
                    "{:<22} {:>6} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9} {:>8}",
                    "layer", "layers", "fwd wino", "fwd i2c", "fwd burn", "GFLOP/s", "trn wino", "trn i2c", "trn burn", "GFLOP/s"
                );
                // Seconds over all layers per kernel, forward then training, and of the fastest kernel per layer.
                let mut totals = [[0.0; 3]; 2];
                let mut best = [0.0; 2];
                let mut flops = 0.0;
                for (shape, count) in shapes {
                    let times = [false, true].map(|training| {
                        kernels.map(|kernel| bench::conv3x3_seconds(shape, kernel, training, batch, steps, warmup, &device))
                    });
                    let f = shape.flops(batch);
                    let fastest = times.map(|t| t.into_iter().fold(f64::INFINITY, f64::min));
                    let [[fw, fi, fb], [tw, ti, tb]] = times;
                    println!(
                        "{:<22} {count:>6} {fw:>9.4} {fi:>9.4} {fb:>9.4} {:>8.1} {tw:>9.4} {ti:>9.4} {tb:>9.4} {:>8.1}",
                        shape.to_string(),
                        f / fastest[0] / 1e9,
                        3.0 * f / fastest[1] / 1e9
                    );
                    for pass in 0..2 {
                        totals[pass].iter_mut().zip(times[pass]).for_each(|(total, t)| *total += count as f64 * t);
                        best[pass] += count as f64 * fastest[pass];
                    }
                    flops += count as f64 * f;
                }
                let [[fw, fi, fb], [tw, ti, tb]] = totals;
                println!(
                    "{:<22} {:>6} {fw:>9.4} {fi:>9.4} {fb:>9.4} {:>8.1} {tw:>9.4} {ti:>9.4} {tb:>9.4} {:>8.1}",
                    "all layers",
                    "",
                    flops / best[0] / 1e9,
                    3.0 * flops / best[1] / 1e9
                );
                println!(
                    "speedup over burn, Winograd: forward {:.2}x, forward + backward {:.2}x; fastest kernel per layer: {:.2}x, {:.2}x",
                    fb / fw,
                    tb / tw,
                    fb / best[0],
                    tb / best[1]
                );
            }
            BenchCommand::Gemm { model, batch, size, steps, square, overrides } => {
                let config = named_model(&model, &overrides)?;
                let shapes = bench::conv_gemm_shapes(&config, batch, size)?;
                println!(
                    "sgemm (gemm crate, f32, row-major), {} threads: the forward im2col products of {model}'s dense convolutions, batch {batch}, {size}x{size}",
                    rayon::current_num_threads()
                );
                println!("{:<28} {:>9} {:>6} {:>6} {:>10} {:>9}", "layer", "M", "K", "N", "ms", "GFLOP/s");
                let (mut flops, mut seconds) = (0.0, 0.0);
                for (name, shape) in &shapes {
                    let t = bench::sgemm_seconds(*shape, steps);
                    println!("{name:<28} {:>9} {:>6} {:>6} {:>10.2} {:>9.1}", shape.m, shape.k, shape.n, 1e3 * t, shape.flops() / t / 1e9);
                    (flops, seconds) = (flops + shape.flops(), seconds + t);
                }
                println!("{:<28} {:>9} {:>6} {:>6} {:>10.2} {:>9.1}", "all convolutions", "", "", "", 1e3 * seconds, flops / seconds / 1e9);
                let list: Vec<String> = shapes.iter().map(|(_, s)| format!("{},{},{}", s.m, s.k, s.n)).collect();
                println!("shapes (for bench/pytorch_gemm_bench.py --shapes): {}", list.join(" "));
                let cube = bench::GemmShape { m: square, k: square, n: square };
                let t = bench::sgemm_seconds(cube, steps);
                println!("square {square}x{square}x{square}: {:.1} GFLOP/s", cube.flops() / t / 1e9);
                println!("{:.1} GFLOP/s", flops / seconds / 1e9);
            }
            BenchCommand::Augment { config, size, images } => {
                let config = ExperimentConfig::load(&config, &[])?;
                let pipeline = ferrovision::augment::transforms::Pipeline::from_config(&config.augment);
                let names: Vec<&str> = pipeline.transforms.iter().map(|t| t.name()).collect();
                println!("augmentation: {} + normalize, {size}x{size}, {images} images, one thread", names.join(" + "));
                println!("{:.1} img/s", bench::augment(&pipeline, size, images)?);
            }
            BenchCommand::Loader { batch, images } => {
                println!("loader: crop+flip+normalize, 32x32, batch {batch}, {images} images, one background thread");
                println!("{:.1} img/s", bench::loader(batch, images));
            }
        },
    }
    Ok(())
}

fn print_summary(run: &RunDir, summary: &ferrovision::tracking::RunSummary) {
    println!(
        "test accuracy {:.2}% (loss {:.4}) on {} images, best epoch {}, trained {:.0}s, total {:.0}s\nrun saved in {}",
        100.0 * summary.test_acc,
        summary.test_loss,
        summary.test_images,
        summary.best_epoch,
        summary.train_seconds,
        summary.total_seconds,
        run.path.display()
    );
}

fn sweep_command(path: &std::path::Path, grids: &[String], overrides: &[String], tag: Option<String>) -> Result<()> {
    use ferrovision::tracking::{journal, plot, write_atomic};
    use train::sweep;
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "sweep".into());
    let tag = tag.unwrap_or_else(|| format!("sweep-{name}"));
    let points = sweep::points(&name, grids)?;
    let configs = sweep::configs(path, overrides, &points, &tag)?;
    let runs = configs[0].run.dir.clone();
    for (i, (point, config)) in points.iter().zip(&configs).enumerate() {
        let position = format!("sweep {}/{}: {}", i + 1, points.len(), point.id);
        match sweep::prepare_folder(&runs, &point.id)? {
            sweep::PointStatus::Finished => println!("{position} finished earlier, skipped"),
            sweep::PointStatus::Resumable => {
                println!("{position} was interrupted, resuming");
                let (run, _) = RunDir::open(&runs.join(&point.id))?;
                train::resume(&run, config, &INTERRUPTED)?;
            }
            sweep::PointStatus::Fresh => {
                println!("{position} ({})", point.overrides.join(" "));
                train::fit(config, &point.id, &INTERRUPTED)?;
            }
        }
    }
    let ids: Vec<String> = points.iter().map(|p| p.id.clone()).collect();
    let mut entries = journal::select(journal::scan(&runs)?, &ids, None, None)?;
    entries.sort_by_key(|e| ids.iter().position(|id| *id == e.run.id));
    let table = journal::compare(&entries);
    print!("{}", table.markdown());
    let mut written = vec![runs.join(format!("{tag}.csv")), runs.join(format!("{tag}.html"))];
    write_atomic(&written[0], table.csv().as_bytes())?;
    write_atomic(&written[1], journal::html_report(&entries, &tag)?.as_bytes())?;
    // One axis: test accuracy against the swept value (along a number line, or one point per value).
    if let [grid] = grids {
        let key = grid.split('=').next().unwrap_or_default();
        let accuracy: Option<Vec<f64>> = entries.iter().map(|e| e.summary.as_ref().map(|s| 100.0 * s.test_acc)).collect();
        let values: Vec<&str> = points.iter().map(|p| p.values[0].1.as_str()).collect();
        let numbers: Option<Vec<f64>> = values.iter().map(|v| v.parse().ok()).collect();
        let (svg, title) = (runs.join(format!("{tag}.svg")), format!("test accuracy, {tag}"));
        if let Some(accuracy) = accuracy {
            match numbers {
                Some(numbers) => {
                    let series = plot::Series { name: key, points: numbers.into_iter().zip(accuracy).collect() };
                    plot::line_chart_svg(&svg, &title, key, "test accuracy (%)", &[series])?;
                }
                None => {
                    let names: Vec<String> = values.iter().map(|v| v.trim_matches('"').to_string()).collect();
                    plot::category_chart_svg(&svg, &title, key, "test accuracy (%)", &names, &accuracy)?;
                }
            }
            written.push(svg);
        }
    }
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn runs_command(command: RunsCommand) -> Result<()> {
    use ferrovision::tracking::{journal, utc_now, write_atomic};
    match command {
        RunsCommand::List { dir } => print!("{}", journal::list(&journal::scan(&dir)?).markdown()),
        RunsCommand::Note { id, text, dir } => {
            journal::add_note(&dir.join(&id), &text, &utc_now().0)?;
            println!("noted in {}", dir.join(&id).join(journal::NOTES).display());
        }
        RunsCommand::Compare { ids, tag, parent, dir, csv, html } => {
            let entries = journal::select(journal::scan(&dir)?, &ids, tag.as_deref(), parent.as_deref())?;
            let table = journal::compare(&entries);
            print!("{}", table.markdown());
            if let Some(path) = csv {
                write_atomic(&path, table.csv().as_bytes())?;
                println!("wrote {}", path.display());
            }
            if let Some(path) = html {
                let title = tag.or(parent).map_or("comparison".to_string(), |t| format!("comparison: {t}"));
                write_atomic(&path, journal::html_report(&entries, &title)?.as_bytes())?;
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}

fn augment_command(command: AugmentCommand) -> Result<()> {
    use ferrovision::augment::{expand, preview, transforms::Pipeline};
    match command {
        AugmentCommand::Preview { config, overrides, n, rows, zoom, out } => {
            let config = ExperimentConfig::load(&config, &overrides)?;
            let data = train::prepare_data(&config)?;
            let pipeline = Pipeline::from_config(&config.augment);
            pipeline.output_shape(data.train.height, data.train.width)?;
            let picks = preview::pick_images(&data.train, rows);
            let grid = preview::grid(&data.train, &data.classes, &pipeline, &picks, n, zoom.max(1), config.train.seed);
            ferrovision::viz::canvas::write_png(&grid, &out)?;
            println!("wrote {} ({} images x {} augmented copies)", out.display(), picks.len(), n);
        }
        AugmentCommand::Expand { config, overrides, copies, include_original, format, out } => {
            let config = ExperimentConfig::load(&config, &overrides)?;
            let d = &config.data;
            let dataset = data::load_dataset(&d.path, Some(&d.cache_dir))?;
            let pipeline = Pipeline::from_config(&config.augment);
            let options = expand::ExpandOptions { copies, include_original, seed: config.train.seed };
            let bar = indicatif::ProgressBar::new(expand::total_files(&dataset.train, &dataset.test, &options) as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} images, {per_sec}, eta {eta}")
                    .expect("valid progress template"),
            );
            if format == "packed" {
                if !ferrovision::data::cache::is_packed(&out) {
                    anyhow::bail!(
                        "--out {}: a packed data set is one file named *.{}",
                        out.display(),
                        ferrovision::data::cache::PACKED_EXTENSION
                    );
                }
                let images = expand::expand_packed(&dataset, &pipeline, &out, &options, &bar)?;
                bar.finish_and_clear();
                println!(
                    "{}: {images} images packed ({} train x {copies} copies, {} test)",
                    out.display(),
                    dataset.train.len(),
                    dataset.test.len()
                );
                return Ok(());
            }
            let report = expand::expand(&dataset.train, &dataset.test, &dataset.classes, &pipeline, &out, &options, &bar)?;
            bar.finish_and_clear();
            println!(
                "{}: {} images written, {} already there from an earlier run ({} train x {} copies{}, {} test)",
                out.display(),
                report.written,
                report.skipped,
                dataset.train.len(),
                copies,
                if include_original { " + originals" } else { "" },
                dataset.test.len()
            );
        }
    }
    Ok(())
}

/// The model config of `summary` and the benchmarks: the named model with `--set model.KEY=VALUE` overrides.
fn named_model(name: &str, overrides: &[String]) -> Result<ferrovision::config::ModelConfig> {
    let mut all = vec![format!("model.name={}", toml_string(name))];
    all.extend_from_slice(overrides);
    Ok(ExperimentConfig::from_toml("", "bench", &all)?.model)
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

fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_string()).to_string()
}

/// `<name>-YYYYMMDD-HHMMSS` in UTC.
fn default_run_id(name: &str) -> String {
    let (date, time) = ferrovision::tracking::utc_now();
    format!("{name}-{}-{time}", date.replace('-', ""))
}
