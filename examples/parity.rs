//! Numerical parity with the PyTorch reference definitions: loads the reference weights written by
//! `bench/parity/make_reference.py`, runs our eval-mode forward pass on the same input batch and
//! prints the largest absolute difference of the logits per architecture.
//! Usage: cargo run --release --example parity -- DIR [model ...]

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::prelude::*;
use burn::tensor::TensorData;
use ferrovision::models;
use ferrovision::models::ModelConfig;
use ferrovision::weights::{self, LoadOptions};

/// Tolerance of the issue: 1e-4 max absolute difference.
const TOLERANCE: f32 = 1e-4;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().context("usage: parity DIR [model ...]")?);
    let only: Vec<String> = args.collect();
    let device = Device::flex();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("{}: run bench/parity/make_reference.py first", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| only.is_empty() || only.contains(n))
        .collect();
    names.sort();
    println!("| model | input | max abs diff | max abs logit | within {TOLERANCE:e} |");
    println!("|---|---|---|---|---|");
    let mut failures = 0;
    for name in names {
        let folder = dir.join(&name);
        let io = weights::read_state_dict(&folder.join("io.pth"))?;
        let (input, reference) = (&io.tensors["input"], &io.tensors["output"]);
        let config = ModelConfig { name: name.clone(), ..Default::default() };
        let model = models::build(&config, reference.shape[1], &device)?;
        let (model, _) = weights::load_into(model, &name, &folder.join("weights.pth"), &LoadOptions::default())?;
        let shape: [usize; 4] = input.shape.clone().try_into().expect("NCHW input");
        let x = Tensor::<4>::from_data(TensorData::new(input.values.clone(), shape), &device);
        let ours = model.forward(x).into_data().try_to_vec::<f32>().expect("f32 logits");
        let diff = ours.iter().zip(&reference.values).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        let scale = reference.values.iter().map(|v| v.abs()).fold(0.0, f32::max);
        let ok = diff <= TOLERANCE;
        failures += usize::from(!ok);
        println!("| {name} | {}x{} | {diff:.2e} | {scale:.2} | {} |", shape[2], shape[3], if ok { "yes" } else { "NO" });
    }
    anyhow::ensure!(failures == 0, "{failures} architecture(s) differ from the reference by more than {TOLERANCE:e}");
    Ok(())
}
