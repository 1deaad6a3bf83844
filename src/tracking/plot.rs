//! Charts as SVG (plotters' SVG backend: text is written as SVG text, so no font file is needed).

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;

/// One named line of `(x, y)` points.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// A line chart with markers, axes labelled, a legend when there is more than one series; written
/// atomically to `path`.
pub fn line_chart_svg(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<()> {
    let svg = line_chart_svg_text(title, x_label, y_label, series).with_context(|| format!("plotting {}", path.display()))?;
    crate::files::write_atomic(path, svg.as_bytes())
}

/// `<stem>.svg` and `<stem>.png` of the same chart.
pub fn line_chart_files(stem: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<Vec<u8>> {
    let svg = line_chart_svg_text(title, x_label, y_label, series).with_context(|| format!("plotting {}", stem.display()))?;
    let png = svg_to_png(&svg)?;
    crate::files::write_atomic(&stem.with_extension("svg"), svg.as_bytes())?;
    crate::files::write_atomic(&stem.with_extension("png"), &png)?;
    Ok(png)
}

/// Rasterizes SVG text to PNG bytes; every font family is DejaVu Sans (shipped in the binary).
pub fn svg_to_png(svg: &str) -> Result<Vec<u8>> {
    use resvg::{tiny_skia, usvg};
    let mut fonts = usvg::fontdb::Database::new();
    fonts.load_font_data(dejavu::sans::regular().to_vec());
    fonts.set_sans_serif_family("DejaVu Sans");
    let options = usvg::Options { font_family: "DejaVu Sans".into(), fontdb: std::sync::Arc::new(fonts), ..Default::default() };
    let tree = usvg::Tree::from_str(svg, &options).context("parsing the chart's SVG")?;
    let size = tree.size().to_int_size();
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height()).context("empty chart")?;
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    pixmap.encode_png().context("encoding the chart as PNG")
}

/// The chart of `line_chart_svg` as SVG text (to embed in HTML).
pub fn line_chart_svg_text(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<String> {
    chart_svg_text(title, x_label, y_label, series, None, &[])
}

/// One value per x with its spread (e.g. the mean and standard deviation of repeated runs), the
/// spread drawn as an error bar (none where it is 0); with `categories`, x = i is labelled
/// `categories[i]` (e.g. test accuracy per optimizer of a sweep). Written atomically to `path`.
pub fn spread_chart_svg(
    path: &Path,
    title: &str,
    (x_label, y_label): (&str, &str),
    points: &[(f64, f64, f64)],
    categories: Option<&[String]>,
) -> Result<()> {
    let series = [Series { name: y_label, points: points.iter().map(|&(x, y, _)| (x, y)).collect() }];
    let bars: Vec<(f64, f64, f64)> = points.iter().filter(|p| p.2 > 0.0).map(|&(x, y, spread)| (x, y - spread, y + spread)).collect();
    let svg =
        chart_svg_text(title, x_label, y_label, &series, categories, &bars).with_context(|| format!("plotting {}", path.display()))?;
    crate::files::write_atomic(path, svg.as_bytes())
}

/// A line chart; with `categories`, x = i is labelled `categories[i]` (and only those are
/// labelled); each of `error_bars` (x, low, high) is a vertical bar with caps in the first colour.
fn chart_svg_text(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    categories: Option<&[String]>,
    error_bars: &[(f64, f64, f64)],
) -> Result<String> {
    let points = series.iter().flat_map(|s| s.points.iter().copied()).chain(error_bars.iter().flat_map(|&(x, lo, hi)| [(x, lo), (x, hi)]));
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return Err(anyhow!("nothing to plot"));
    }
    let pad = |lo: f64, hi: f64| {
        let margin = if hi > lo { (hi - lo) * 0.05 } else { lo.abs().max(1.0) * 0.05 };
        (lo - margin)..(hi + margin)
    };
    let x_range = pad(x0, x1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 440)).into_drawing_area();
        let draw = |e: DrawingAreaErrorKind<_>| anyhow!("drawing: {e:?}");
        root.fill(&WHITE).map_err(draw)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x_range.clone(), pad(y0, y1))
            .map_err(draw)?;
        let name_of = |x: &f64| {
            let i = x.round();
            let on_point = (x - i).abs() < 1e-6 && i >= 0.0;
            categories.and_then(|c| c.get(i as usize).filter(|_| on_point)).cloned().unwrap_or_default()
        };
        let mut mesh = chart.configure_mesh();
        mesh.light_line_style(WHITE).x_desc(x_label).y_desc(y_label);
        if let Some(categories) = categories {
            mesh.x_labels(categories.len()).x_label_formatter(&name_of);
        }
        mesh.draw().map_err(draw)?;
        for (s, color) in series.iter().zip(COLORS.iter().cycle()) {
            let style = ShapeStyle::from(color).stroke_width(2);
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), style))
                .map_err(draw)?
                .label(s.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(draw)?;
        }
        let cap = (x_range.end - x_range.start) * 0.01;
        let bar_style = ShapeStyle::from(&COLORS[0]).stroke_width(2);
        for &(x, lo, hi) in error_bars {
            let lines = [vec![(x, lo), (x, hi)], vec![(x - cap, lo), (x + cap, lo)], vec![(x - cap, hi), (x + cap, hi)]];
            chart.draw_series(lines.into_iter().map(|line| PathElement::new(line, bar_style))).map_err(draw)?;
        }
        if series.len() > 1 {
            chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(draw)?;
        }
        root.present().map_err(draw)?;
    }
    Ok(svg)
}

/// A confusion matrix as SVG: rows are true classes, columns predictions; each cell shaded by
/// its share of the row, labelled with the count (`normalized = false`) or that share. Class
/// names and cell labels are drawn up to 30 classes.
pub fn confusion_matrix_svg(classes: &[String], counts: &[Vec<usize>], normalized: bool, title: &str) -> Result<String> {
    let k = classes.len();
    let labelled = k <= 30;
    let cell = (640 / k.max(1)).clamp(4, 48) as i32;
    let margin_left = if labelled { 110 } else { 20 };
    let (width, height) = (margin_left + cell * k as i32 + 20, 60 + cell * k as i32 + if labelled { 90 } else { 20 });
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width as u32, height as u32)).into_drawing_area();
        let draw = |e: DrawingAreaErrorKind<_>| anyhow!("drawing: {e:?}");
        root.fill(&WHITE).map_err(draw)?;
        root.draw(&Text::new(title.to_string(), (6, 8), ("sans-serif", 15))).map_err(draw)?;
        root.draw(&Text::new("rows: true class, columns: predicted class", (6, 30), ("sans-serif", 12))).map_err(draw)?;
        let top = 50;
        for (r, row) in counts.iter().enumerate() {
            let total = row.iter().sum::<usize>().max(1) as f64;
            for (c, &n) in row.iter().enumerate() {
                let share = n as f64 / total;
                let shade = (255.0 * (1.0 - share)) as u8;
                let (x, y) = (margin_left + c as i32 * cell, top + r as i32 * cell);
                root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], RGBColor(shade, shade, 255).filled())).map_err(draw)?;
                if labelled && cell >= 20 {
                    let text = if normalized { format!("{:.2}", share) } else { n.to_string() };
                    let color = if share > 0.5 { &WHITE } else { &BLACK };
                    let style = ("sans-serif", (cell / 3).max(8)).into_font().color(color);
                    root.draw(&Text::new(text, (x + 3, y + cell / 3), style)).map_err(draw)?;
                }
            }
        }
        if labelled {
            for (i, name) in classes.iter().enumerate() {
                let y = top + i as i32 * cell + cell / 3;
                root.draw(&Text::new(name.clone(), (6, y), ("sans-serif", 12))).map_err(draw)?;
                let x = margin_left + i as i32 * cell + cell / 4;
                let style = ("sans-serif", 12).into_font().transform(FontTransform::Rotate90);
                root.draw(&Text::new(name.clone(), (x, top + k as i32 * cell + 6), style)).map_err(draw)?;
            }
        }
        root.present().map_err(draw)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_matrix_labels_cells_and_classes() {
        let classes = vec!["cat".to_string(), "dog".to_string()];
        let svg = confusion_matrix_svg(&classes, &[vec![8, 2], vec![1, 9]], false, "test split").unwrap();
        assert!(svg.contains(">\n8\n<") && svg.contains(">\n9\n<") && svg.contains("dog") && svg.contains("test split"), "{svg}");
        let shares = confusion_matrix_svg(&classes, &[vec![8, 2], vec![1, 9]], true, "t").unwrap();
        assert!(shares.contains(">\n0.80\n<") && shares.contains(">\n0.10\n<"), "{shares}");
        assert!(!svg_to_png(&svg).unwrap().is_empty());
    }

    #[test]
    fn writes_an_svg_with_the_labels_and_one_path_per_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.svg");
        let series = [
            Series { name: "clean", points: vec![(0.0, 0.9), (10.0, 0.8), (20.0, 0.6)] },
            Series { name: "other", points: vec![(0.0, 0.5), (20.0, 0.4)] },
        ];
        line_chart_svg(&path, "accuracy under rotation", "degrees", "accuracy", &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("accuracy under rotation") && svg.contains("degrees"));
        assert!(svg.contains("clean") && svg.contains("other"));
        assert!(line_chart_svg(&path, "t", "x", "y", &[]).is_err());
    }

    #[test]
    fn category_charts_label_each_point_with_its_category() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizers.svg");
        let names = ["sgd", "adam", "rmsprop"].map(String::from);
        let points = [(0.0, 71.0, 0.0), (1.0, 64.5, 0.0), (2.0, 60.0, 0.0)];
        spread_chart_svg(&path, "test accuracy", ("train.optimizer", "accuracy (%)"), &points, Some(&names)).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        for name in names {
            assert_eq!(svg.lines().filter(|l| l.trim() == name).count(), 1, "{name} labelled once:\n{svg}");
        }
        assert!(svg.contains("train.optimizer"));
    }

    #[test]
    fn a_spread_is_drawn_as_an_error_bar_within_the_axes() {
        let dir = tempfile::tempdir().unwrap();
        let (with, without) = (dir.path().join("with.svg"), dir.path().join("without.svg"));
        let points = [(0.1, 60.0, 2.0), (0.01, 50.0, 0.0)];
        spread_chart_svg(&with, "t", ("train.lr", "accuracy (%)"), &points, None).unwrap();
        spread_chart_svg(&without, "t", ("train.lr", "accuracy (%)"), &points.map(|(x, y, _)| (x, y, 0.0)), None).unwrap();
        let text = |path: &Path| std::fs::read_to_string(path).unwrap();
        // One bar (a line and two caps) for the one point with a spread.
        let series_lines = |svg: &str| svg.lines().filter(|l| l.starts_with("<polyline") && l.contains("stroke=\"#1F77B4\"")).count();
        assert_eq!((series_lines(&text(&with)), series_lines(&text(&without))), (4, 1));
        // The y axis reaches the top of the bar (62) only with it.
        let top_label = |svg: &str| svg.lines().filter_map(|l| l.trim().parse::<f64>().ok()).fold(f64::MIN, f64::max);
        assert!(top_label(&text(&with)) >= 62.0 && top_label(&text(&without)) < 62.0, "{}", text(&with));
    }

    #[test]
    fn png_copies_render_the_chart_with_text() {
        let dir = tempfile::tempdir().unwrap();
        let series = [Series { name: "val", points: vec![(1.0, 0.5), (2.0, 0.7)] }];
        let png = line_chart_files(&dir.path().join("acc"), "accuracy", "epoch", "accuracy", &series).unwrap();
        assert!(dir.path().join("acc.svg").is_file());
        let image = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!((image.width(), image.height()), (720, 440));
        // Dark pixels in the caption band: the title's glyphs were drawn.
        let dark = (0..image.width()).flat_map(|x| (0..40).map(move |y| (x, y))).filter(|&(x, y)| image.get_pixel(x, y).0[0] < 100).count();
        assert!(dark > 50, "{dark} dark pixels in the title band");
    }
}
