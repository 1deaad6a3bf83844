//! `ferrovision viz activations`: the feature maps chosen layers produce for one image, and the
//! first convolution's filters, as one PNG sheet.

use anyhow::{Result, bail};

use super::canvas::Section;
use crate::augment::Image;
use crate::models::trace::{self, Layer, LayerKind};
use crate::serve::predict::Predictor;

/// Feature maps per row of a layer's grid.
const COLUMNS: usize = 16;
/// Small maps are scaled up to about this many pixels.
const TARGET_SIDE: usize = 64;

/// What `sheet` shows besides the requested layers.
pub struct SheetOptions {
    /// At most this many channels of each layer (the first ones).
    pub max_channels: usize,
    pub first_layer_filters: bool,
}

/// The sheet for one input image: the image as the model sees it (resized), the first conv's
/// filters, then one grid per layer name (see `trace::find_layer` for module names). An unknown
/// name is an error listing the layer names.
pub fn sheet(predictor: &Predictor, image: &Image, layers: &[String], options: &SheetOptions) -> Result<Vec<Section>> {
    let resized = predictor.resize.apply(image);
    let input = predictor.input(std::slice::from_ref(image));
    let (_, traced) = trace::summarize(&predictor.model, input, true);
    let variant = predictor.model.net.name();
    let mut sections = vec![Section {
        title: Some(format!("input {}x{}", resized.width, resized.height)),
        cells: vec![(String::new(), resized.clone())],
        columns: 1,
        zoom: zoom_for(resized.height.max(resized.width), 128),
    }];
    if options.first_layer_filters
        && let Some(section) = filter_section(&traced)
    {
        sections.push(section);
    }
    for name in layers {
        let Some(layer) = trace::find_layer(&traced, name, variant) else {
            let names: Vec<&str> = traced.iter().map(|l| l.name.as_str()).collect();
            bail!("--layers: no layer or module `{name}` in this model; layers: {}", names.join(", "));
        };
        sections.push(feature_maps(layer, name, options.max_channels));
    }
    Ok(sections)
}

/// A layer's output channels for the first image, each min-max scaled on its own and coloured
/// with the viridis map.
fn feature_maps(layer: &Layer, asked: &str, max_channels: usize) -> Section {
    let activation = layer.activation.clone().expect("traced with activations");
    let [_, channels, height, width] = activation.dims();
    let shown = channels.min(max_channels.max(1));
    let values: Vec<f32> = activation.slice([0..1, 0..shown]).into_data().try_to_vec::<f32>().expect("f32 activations");
    let cells = values.chunks(height * width).map(|map| (String::new(), colour_map(map, height, width))).collect();
    let shape = layer.output.iter().map(usize::to_string).collect::<Vec<_>>().join("x");
    let name = if asked == layer.name { layer.name.clone() } else { format!("{asked} (its last layer {})", layer.name) };
    Section {
        title: Some(format!("{name}: {} {shape}, channels 0-{} of {channels}", layer.kind.name(), shown - 1)),
        cells,
        columns: COLUMNS,
        zoom: zoom_for(height.max(width), TARGET_SIDE),
    }
}

/// The first convolution's filters as RGB tiles (where it reads the 3 image channels), each
/// scaled to its own min..max.
fn filter_section(traced: &[Layer]) -> Option<Section> {
    let first = traced.iter().find(|l| l.kind == LayerKind::Conv2d)?;
    let kernel = first.kernel.clone()?;
    let [filters, inputs, kh, kw] = kernel.dims();
    if inputs != 3 {
        return None;
    }
    let values: Vec<f32> = kernel.into_data().try_to_vec::<f32>().ok()?;
    let cells = values
        .chunks(3 * kh * kw)
        .map(|filter| {
            let (lo, hi) = min_max(filter);
            let pixels = (0..kh * kw).flat_map(|p| (0..3).map(move |c| filter[c * kh * kw + p])).map(|v| scale(v, lo, hi)).collect();
            (String::new(), Image::new(pixels, kh, kw))
        })
        .collect();
    Some(Section {
        title: Some(format!("first-layer filters: {} ({filters} of {inputs}x{kh}x{kw})", first.name)),
        cells,
        columns: COLUMNS,
        zoom: zoom_for(kh.max(kw), 24),
    })
}

fn zoom_for(side: usize, target: usize) -> usize {
    (target / side.max(1)).clamp(1, 16)
}

fn min_max(values: &[f32]) -> (f32, f32) {
    values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

fn scale(v: f32, lo: f32, hi: f32) -> u8 {
    if hi > lo { (255.0 * (v - lo) / (hi - lo)).round() as u8 } else { 0 }
}

/// Matplotlib's viridis at nine evenly spaced points, interpolated linearly.
const VIRIDIS: [[f32; 3]; 9] = [
    [68.0, 1.0, 84.0],
    [71.0, 44.0, 122.0],
    [59.0, 81.0, 139.0],
    [44.0, 113.0, 142.0],
    [33.0, 144.0, 141.0],
    [39.0, 173.0, 129.0],
    [92.0, 200.0, 99.0],
    [170.0, 220.0, 50.0],
    [253.0, 231.0, 37.0],
];

fn colour_map(map: &[f32], height: usize, width: usize) -> Image {
    let (lo, hi) = min_max(map);
    let pixels = map
        .iter()
        .flat_map(|&v| {
            let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.0 } * (VIRIDIS.len() - 1) as f32;
            let (i, frac) = ((t.floor() as usize).min(VIRIDIS.len() - 2), t - t.floor().min((VIRIDIS.len() - 2) as f32));
            (0..3).map(move |c| (VIRIDIS[i][c] + (VIRIDIS[i + 1][c] - VIRIDIS[i][c]) * frac).round() as u8)
        })
        .collect();
    Image::new(pixels, height, width)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_map_runs_from_dark_violet_to_yellow() {
        let image = colour_map(&[0.0, 0.5, 1.0, 1.0], 2, 2);
        assert_eq!(&image.pixels[..3], &[68, 1, 84]);
        assert_eq!(&image.pixels[3..6], &[33, 144, 141]);
        assert_eq!(&image.pixels[6..9], &[253, 231, 37]);
        // A constant map is the low colour, not NaN.
        assert_eq!(&colour_map(&[3.0; 4], 2, 2).pixels[..3], &[68, 1, 84]);
    }
}
