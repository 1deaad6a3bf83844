//! A white sheet of titled sections, each a grid of labelled image cells, drawn with an 8x8
//! bitmap font (no font files) and written as PNG.

use std::path::Path;

use anyhow::Result;

use crate::augment::Image;

/// Height of a text line (8x8 font plus a margin).
pub const LABEL_HEIGHT: usize = 12;
pub const GAP: usize = 4;
pub const BACKGROUND: [u8; 3] = [255, 255, 255];
pub const TEXT: [u8; 3] = [20, 20, 20];

/// Cells laid out `columns` to a row under an optional title, each scaled up `zoom` times
/// (nearest neighbour, so pixels stay visible) with its label above it.
pub struct Section {
    pub title: Option<String>,
    pub cells: Vec<(String, Image)>,
    pub columns: usize,
    pub zoom: usize,
}

impl Section {
    fn cell_size(&self) -> (usize, usize) {
        let h = self.cells.iter().map(|(_, c)| c.height).max().unwrap_or(0) * self.zoom;
        let w = self.cells.iter().map(|(_, c)| c.width).max().unwrap_or(0) * self.zoom;
        (h, w)
    }

    /// The label line is left out where no cell has a label.
    fn label_height(&self) -> usize {
        if self.cells.iter().any(|(label, _)| !label.is_empty()) { LABEL_HEIGHT } else { 0 }
    }

    fn rows(&self) -> usize {
        self.cells.len().div_ceil(self.columns.max(1))
    }

    fn height(&self) -> usize {
        let title = if self.title.is_some() { LABEL_HEIGHT } else { 0 };
        title + self.rows() * (self.label_height() + self.cell_size().0 + GAP)
    }

    fn width(&self) -> usize {
        self.columns.min(self.cells.len()) * (self.cell_size().1 + GAP) + GAP
    }
}

/// Draws the sections one under the other.
pub fn render(sections: &[Section]) -> Image {
    let width = sections.iter().map(Section::width).max().unwrap_or(GAP);
    let height = GAP + sections.iter().map(Section::height).sum::<usize>();
    let mut canvas = Image::new(BACKGROUND.repeat(height * width), height, width);
    let mut top = GAP;
    for section in sections {
        if let Some(title) = &section.title {
            draw_text(&mut canvas, top + 2, GAP, title, width - GAP);
            top += LABEL_HEIGHT;
        }
        let (cell_h, cell_w) = section.cell_size();
        let label_height = section.label_height();
        for (i, (label, cell)) in section.cells.iter().enumerate() {
            let (row, column) = (i / section.columns.max(1), i % section.columns.max(1));
            let cell_top = top + row * (label_height + cell_h + GAP);
            let left = GAP + column * (cell_w + GAP);
            draw_text(&mut canvas, cell_top + 2, left, label, cell_w);
            blit_zoomed(&mut canvas, cell, cell_top + label_height, left, section.zoom);
        }
        top += section.rows() * (label_height + cell_h + GAP);
    }
    canvas
}

/// Writes an image as PNG (temp file, then rename).
pub fn write_png(image: &Image, path: &Path) -> Result<()> {
    let png = image::RgbImage::from_raw(image.width as u32, image.height as u32, image.pixels.clone()).expect("RGB buffer of its size");
    let mut bytes = Vec::new();
    png.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    crate::files::write_atomic(path, &bytes)
}

fn blit_zoomed(canvas: &mut Image, cell: &Image, top: usize, left: usize, zoom: usize) {
    for y in 0..cell.height * zoom {
        for x in 0..cell.width * zoom {
            let src = ((y / zoom) * cell.width + x / zoom) * 3;
            let dst = ((top + y) * canvas.width + left + x) * 3;
            canvas.pixels[dst..dst + 3].copy_from_slice(&cell.pixels[src..src + 3]);
        }
    }
}

/// ASCII text in the 8x8 font, cut at `max_width` pixels.
fn draw_text(canvas: &mut Image, top: usize, left: usize, text: &str, max_width: usize) {
    for (n, ch) in text.chars().take(max_width / 8).enumerate() {
        let glyph = font8x8::legacy::BASIC_LEGACY[if ch.is_ascii() { ch as usize } else { '?' as usize }];
        for (dy, bits) in glyph.iter().enumerate() {
            for dx in 0..8 {
                if bits >> dx & 1 == 1 {
                    let dst = ((top + dy) * canvas.width + left + n * 8 + dx) * 3;
                    canvas.pixels[dst..dst + 3].copy_from_slice(&TEXT);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_stack_with_titles_and_wrap_their_rows() {
        let cell = Image::new(vec![7; 2 * 3 * 3], 2, 3);
        let sections = [
            Section { title: Some("first".into()), cells: vec![("a".into(), cell.clone())], columns: 4, zoom: 2 },
            Section { title: None, cells: vec![(String::new(), cell.clone()); 5], columns: 2, zoom: 1 },
        ];
        let image = render(&sections);
        // Title + label + 4-pixel-high cell, then three unlabelled rows of 2-pixel cells.
        assert_eq!(image.height, GAP + (LABEL_HEIGHT + LABEL_HEIGHT + 4 + GAP) + 3 * (2 + GAP));
        assert_eq!(image.width, 2 * (3 + GAP) + GAP, "the widest section");
        let pixel = |y: usize, x: usize| image.pixels[(y * image.width + x) * 3];
        assert_eq!(pixel(GAP + 2 * LABEL_HEIGHT, GAP), 7);
        let second = GAP + 2 * LABEL_HEIGHT + 4 + GAP;
        assert_eq!((pixel(second, GAP), pixel(second, 2 * GAP + 3), pixel(second + 2 * (2 + GAP), GAP)), (7, 7, 7));
        // The title row has dark text pixels.
        assert!((GAP..GAP + LABEL_HEIGHT).any(|y| (GAP..image.width).any(|x| pixel(y, x) == TEXT[0])));
    }
}
