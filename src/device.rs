//! `--device` names to burn devices. GPU backends exist only in builds with their cargo feature.

use anyhow::{Result, bail};
use burn::prelude::Device;

/// The names `--device` accepts in this build.
pub fn available() -> Vec<&'static str> {
    let mut names = vec!["flex"];
    if cfg!(feature = "vulkan") {
        names.push("vulkan");
    }
    if cfg!(feature = "cuda") {
        names.push("cuda");
    }
    names
}

/// Runs this program again, in place (`exec`), with glibc's malloc asking the kernel for
/// transparent huge pages (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`: its heaps advised with
/// `madvise(MADV_HUGEPAGE)` as they grow, where the kernel leaves that to programs as most
/// distributions' "madvise" setting does), unless `GLIBC_TUNABLES` already says. A training step
/// streams activations of tens of megabytes; with 2 MiB pages instead of 4 KiB ones (a TLB miss
/// every 4 KiB of each stream) training steps ran 3-7% faster (MobileNetV2, EfficientNet-B0 and
/// Lite0, ResNet-18). glibc reads the setting only at start, hence the restart;
/// `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` keeps 4 KiB pages. Call first thing: where the restart
/// fails, the program goes on as it is.
pub fn restart_with_huge_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        const TUNABLE: &str = "glibc.malloc.hugetlb";
        let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        if current.contains(TUNABLE) {
            return;
        }
        let Ok(program) = std::env::current_exe() else { return };
        let tunables = if current.is_empty() { format!("{TUNABLE}=1") } else { format!("{current}:{TUNABLE}=1") };
        let mut args = std::env::args_os();
        let mut command = std::process::Command::new(program);
        if let Some(name) = args.next() {
            command.arg0(name);
        }
        // Returns only where the program could not be started again.
        let _ = command.args(args).env("GLIBC_TUNABLES", tunables).exec();
    }
}

/// Tells glibc's malloc to keep freed memory for reuse instead of handing it back to the kernel.
/// By default blocks above 32 MiB (its largest mmap threshold) are fresh mmap pages, unmapped on
/// free, so each training step page-faulted and zeroed its large activations again: page faults
/// were 15% of an EfficientNet-Lite0 step (batch 32, 128 px), which runs 15-29% faster without
/// them. Freed memory stays with the process; peak RSS moved by 0-4% in the benchmarks. Call once,
/// before the work starts.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; glibc applies them to later calls.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Makes the calling thread one of rayon's workers: the global pool then holds one thread per core
/// (or `RAYON_NUM_THREADS`) counting this one, not that many beside it. Otherwise each parallel op
/// called from here put this thread to sleep and woke the workers, which then spun while this
/// thread ran the step's sequential parts: three threads on two cores, 26,793 context switches in
/// 22 `resnet18_cifar` batch-32 steps against 6,360 with this, and the step about 5% slower. Call
/// once, first thing. With a single thread the pool keeps its own worker: this thread blocks on
/// the data loader, whose parallel work would then wait for it.
pub fn make_this_thread_a_worker() {
    let threads = std::env::var("RAYON_NUM_THREADS").ok().and_then(|n| n.parse().ok()).filter(|&n: &usize| n > 0);
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads >= 2 {
        // Fails only where a global pool exists already; then that one stays.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).use_current_thread().build_global();
    }
}

/// The device a name selects (without autodiff; training adds it).
pub fn parse(name: &str) -> Result<Device> {
    match name {
        "flex" | "cpu" => Ok(Device::flex()),
        "vulkan" | "cuda" => match gpu_device(name) {
            Some(device) => probe_gpu(name, device),
            None => bail!("device `{name}` needs a build with its GPU backend: cargo build --release --features {name}"),
        },
        other => bail!("unknown device `{other}`; this build supports: {}", available().join(", ")),
    }
}

/// The GPU device of that name, where this build has its backend.
fn gpu_device(name: &str) -> Option<Device> {
    #[cfg(feature = "gpu")]
    keep_tuning_results(&std::path::Path::new(crate::data::config::DEFAULT_CACHE_DIR).join("cubecl"));
    #[cfg(feature = "vulkan")]
    if name == "vulkan" {
        return Some(Device::vulkan(burn::tensor::DeviceKind::DefaultDevice));
    }
    #[cfg(feature = "cuda")]
    if name == "cuda" {
        return Some(Device::cuda(0));
    }
    let _ = name;
    None
}

/// Makes burn's GPU backends keep their autotune results (the fastest kernel per operation, shape
/// and device) in `dir`, so that a shape is tuned once per machine, not in every process. A
/// `cubecl.toml` (or `burn.toml [cubecl]`) that names its own `[environment] path` wins; so does a
/// configuration set earlier in the process. Runs once per process (it reads configuration files).
#[cfg(feature = "gpu")]
fn keep_tuning_results(dir: &std::path::Path) {
    use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig, cache::CacheConfig};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
        if matches!(config.environment.path, CacheConfig::Target) {
            config.environment.path = CacheConfig::Directory(dir.to_path_buf());
        }
        CubeClRuntimeConfig::try_set(config);
    });
}

/// GPU runtimes start lazily and panic (on their own thread) when no adapter exists; one tiny
/// operation up front turns that into an error naming the device.
fn probe_gpu(name: &str, device: Device) -> Result<Device> {
    use std::sync::{Arc, Mutex};
    let first_panic = Arc::new(Mutex::new(None::<String>));
    let recorder = first_panic.clone();
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let mut slot = recorder.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert_with(|| info.to_string());
    }));
    let probe = std::panic::catch_unwind(|| {
        let _ = burn::tensor::Tensor::<1>::zeros([1], &device).into_data();
    });
    std::panic::set_hook(previous_hook);
    match probe {
        Ok(()) => Ok(device),
        Err(_) => {
            let detail = first_panic.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
            bail!("device `{name}` could not be started: {}", detail.lines().last().unwrap_or("unknown error"))
        }
    }
}

/// The GPU code path on any Vulkan driver (on CPU-only machines Mesa's lavapipe, which runs
/// Vulkan on the CPU): the same training steps on `vulkan` and on `flex` agree.
#[cfg(all(test, feature = "vulkan"))]
mod vulkan_tests {
    use burn::module::{Flag, Module, Param};
    use burn::prelude::*;

    use crate::models::params::{PathMapper, map_with_paths};
    use crate::models::{Classifier, ModelConfig, build};
    use crate::train::config::TrainConfig;
    use crate::train::precision::{MixedPrecision, Precision};
    use crate::train::test_support::{batch, cosine, gradient_values, sized_batch, small_resnet};
    use crate::train::{backward, optim, step_once};

    fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
        tensor.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    /// The largest difference between `got` and `expected`, relative to `expected`'s largest value.
    fn relative_error(got: &[f32], expected: &[f32]) -> f32 {
        assert_eq!(got.len(), expected.len());
        let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        got.iter().zip(expected).fold(0f32, |m, (g, e)| m.max((g - e).abs())) / scale
    }

    /// `model` with dropout and stochastic depth off (BatchNorm still in training mode): each
    /// device draws their masks from its own generator, so the outputs could not agree.
    fn without_random_layers(model: Classifier) -> Classifier {
        struct Off;
        impl PathMapper for Off {
            fn map_float<const D: usize>(&mut self, _path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                param
            }
            fn map_flag(&mut self, path: &str, flag: Param<Flag>) -> Param<Flag> {
                if path.contains("drop") { flag.with_value(false) } else { flag }
            }
        }
        map_with_paths(model, Off).0
    }

    /// A copy of `model`, `images` and `targets` on `device`.
    fn moved(model: &Classifier, images: &Tensor<4>, targets: &Tensor<2>, device: &Device) -> (Classifier, Tensor<4>, Tensor<2>) {
        (model.clone().fork(device), Tensor::from_data(images.to_data(), device), Tensor::from_data(targets.to_data(), device))
    }

    /// What the comparison looks at: the logits of a forward pass, every parameter's gradient, and
    /// the logits of the third of three SGD steps with momentum (weights, BatchNorm statistics and
    /// optimizer state carried along).
    struct Trajectory {
        logits: Vec<f32>,
        gradients: Vec<f32>,
        third_step: Vec<f32>,
    }

    impl Trajectory {
        fn of(model: Classifier, images: &Tensor<4>, targets: &Tensor<2>) -> Self {
            let (grads, _, logits) = backward(&model, model.forward(images.clone()), targets.clone(), 1.0);
            let (gradients, count) = gradient_values(&grads, &model);
            assert!(count > 0);
            let config = TrainConfig { momentum: 0.9, ..Default::default() };
            let (mut optimizer, mut mixed) = (optim::build(&config, &[]), MixedPrecision::new(Precision::F32));
            let (mut model, mut third_step) = (model, Vec::new());
            for _ in 0..3 {
                let (next, _, logits) = step_once(model, &mut optimizer, images.clone(), targets.clone(), 0.01, &mut mixed);
                (model, third_step) = (next, values(logits));
            }
            Self { logits: values(logits), gradients, third_step }
        }

        /// Relative errors of the logits and the third step's logits, and 1 - the gradients'
        /// cosine similarity, against `expected`.
        fn distance(&self, expected: &Trajectory) -> [f32; 3] {
            [
                relative_error(&self.logits, &expected.logits),
                (1.0 - cosine(&self.gradients, &expected.gradients)) as f32,
                relative_error(&self.third_step, &expected.third_step),
            ]
        }
    }

    /// The same training steps on `vulkan` and on `flex` agree for convolutions with BatchNorm and
    /// residual additions, and for the depthwise and squeeze-excite families: no further apart than
    /// flex is from itself when each pixel moves by up to one part in 10^5 (the reach of float
    /// rounding in that network; a random factor per pixel, since scaling all the pixels alike is
    /// undone by the first BatchNorm), times 10. Logits and gradients are always compared; the
    /// third step's logits where that reach is small (MobileNetV2 at batch 8 amplifies it to tens
    /// of percent in three steps, on flex alone, so there they would compare nothing).
    #[test]
    fn training_steps_on_vulkan_match_flex() {
        let flex = Device::flex().autodiff();
        let vulkan = super::parse("vulkan").expect("a Vulkan driver (lavapipe: apt-get install mesa-vulkan-drivers)").autodiff();
        let models = [
            ("small resnet", small_resnet(&flex), 32),
            ("mobilenet_v2", build(&ModelConfig::named("mobilenet_v2"), 10, &flex).unwrap(), 64),
            ("efficientnet_b0", build(&ModelConfig::named("efficientnet_b0"), 10, &flex).unwrap(), 64),
        ];
        for (name, model, side) in models {
            let model = without_random_layers(model);
            let (images, targets, _) = sized_batch(&flex, side);
            let (gpu_model, gpu_images, gpu_targets) = moved(&model, &images, &targets, &vulkan);
            let expected = Trajectory::of(model.clone(), &images, &targets);
            let jitter = Tensor::<4>::random(images.dims(), burn::tensor::Distribution::Uniform(1.0 - 1e-5, 1.0 + 1e-5), &flex);
            let rounding = Trajectory::of(model, &(images.clone() * jitter), &targets).distance(&expected);
            let got = Trajectory::of(gpu_model, &gpu_images, &gpu_targets).distance(&expected);
            eprintln!("{name}: vulkan {got:?}, flex with the images moved {rounding:?}");
            for (index, ((what, got), rounding)) in ["logits", "gradients", "third step's logits"].iter().zip(got).zip(rounding).enumerate()
            {
                let comparable = rounding < 1e-2;
                assert!(comparable || index == 2, "{name}: {what} too sensitive to compare ({rounding} from rounding)");
                assert!(!comparable || got <= 10.0 * rounding + 1e-5, "{name}: {what} differ by {got} (rounding: {rounding})");
            }
        }
    }

    /// Mixed precision on the GPU where the driver offers the type (f32 gradients pointing where
    /// flex's f32 ones do); otherwise the error names the device and the type.
    #[test]
    fn reduced_precision_on_vulkan_steps_or_says_why_not() {
        let flex = Device::flex().autodiff();
        let vulkan = super::parse("vulkan").unwrap().autodiff();
        let (images, targets, _) = batch(&flex);
        let model = small_resnet(&flex);
        let (expected, _) = gradient_values(&backward(&model, model.forward(images.clone()), targets.clone(), 1.0).0, &model);
        let (gpu_model, gpu_images, gpu_targets) = moved(&model, &images, &targets, &vulkan);
        for precision in [Precision::F16, Precision::Bf16] {
            if let Err(error) = precision.check(&vulkan, "vulkan") {
                let message = error.to_string();
                assert!(message.contains("vulkan") && message.contains(&precision.to_string()), "{message}");
                eprintln!("{precision} on this Vulkan driver: {message}");
                continue;
            }
            let mut mixed = MixedPrecision::new(precision);
            let logits = precision.logits(&gpu_model, gpu_images.clone());
            let (mut grads, loss, _) = backward(&gpu_model, logits, gpu_targets.clone(), mixed.loss_scale());
            let loss = loss.into_scalar::<f32>();
            assert!(loss.is_finite() && mixed.unscale(&mut grads, &gpu_model), "{precision}: loss {loss}");
            let similarity = cosine(&gradient_values(&grads, &gpu_model).0, &expected);
            assert!(similarity > 0.99, "{precision}: gradients' cosine similarity {similarity} against flex's f32");
        }
    }
}
