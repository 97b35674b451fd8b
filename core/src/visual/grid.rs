//! Labeled grids of small images.
//!
//! ```text
//! ┌──────────────────────────────────────────────┐  MARGIN all round, white
//! │ title (optional, TITLE_HEIGHT)               │
//! │  label 1    label 2    label 3               │  HEADER_HEIGHT
//! │ ┌──────┐ ┌──────┐ ┌──────┐                   │
//! │ │ cell │ │ cell │ │ cell │   SPACING apart   │  one row per image set
//! │ └──────┘ └──────┘ └──────┘                   │
//! └──────────────────────────────────────────────┘
//! ```
//! A cell is the largest tile's size times the scale; tiles are upscaled by nearest
//! neighbour (pixels stay sharp squares) and centered in their cell. The automatic scale
//! brings the larger side to about [`TARGET_SIDE`] pixels: 4× for 32 px, 8× for 16 px,
//! 1× from 128 px up. [`grid_size`] is the size formula.

use super::text::Canvas;
use super::{err, font};
use crate::error::Result;
use image::imageops::FilterType;
use image::{Rgb, RgbImage};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// White border around everything.
pub const MARGIN: u32 = 6;
/// Gap between cells.
pub const SPACING: u32 = 4;
/// Height of the column labels.
pub const HEADER_HEIGHT: u32 = 20;
/// Height of the title line, where there is one.
pub const TITLE_HEIGHT: u32 = 22;
/// The side small images are upscaled to (about).
pub const TARGET_SIDE: u32 = 128;

/// The nearest-neighbour factor that brings `side` to about [`TARGET_SIDE`] (at least 1).
pub fn auto_scale(side: u32) -> u32 {
    (TARGET_SIDE / side.max(1)).max(1)
}

/// The size of a grid of `cols × rows` cells of `cell_w × cell_h` pixels:
/// `2·MARGIN + cols·cell_w + (cols − 1)·SPACING` wide and `2·MARGIN + [TITLE_HEIGHT] +
/// HEADER_HEIGHT + rows·cell_h + (rows − 1)·SPACING` high.
pub fn grid_size(cols: u32, rows: u32, cell_w: u32, cell_h: u32, title: bool) -> (u32, u32) {
    let w = 2 * MARGIN + cols * cell_w + cols.saturating_sub(1) * SPACING;
    let h = 2 * MARGIN
        + if title { TITLE_HEIGHT } else { 0 }
        + HEADER_HEIGHT
        + rows * cell_h
        + rows.saturating_sub(1) * SPACING;
    (w, h)
}

/// A grid of images under column labels. See the module docs.
#[derive(Clone, Debug, Default)]
pub struct Grid {
    pub title: Option<String>,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<RgbImage>>,
    /// Nearest-neighbour factor; 0: [`auto_scale`] of the largest tile side.
    pub scale: u32,
}

impl Grid {
    /// An empty grid with these column labels.
    pub fn new<S: Into<String>>(columns: impl IntoIterator<Item = S>) -> Self {
        Grid { columns: columns.into_iter().map(Into::into).collect(), ..Default::default() }
    }

    /// The same grid with a title line.
    pub fn with_title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// Add a row: one tile per column.
    pub fn push_row(&mut self, tiles: Vec<RgbImage>) -> Result<()> {
        if tiles.len() != self.columns.len() {
            return Err(err(format!("a row of {} images under {} column labels", tiles.len(), self.columns.len())));
        }
        self.rows.push(tiles);
        Ok(())
    }

    /// The largest tile, `(width, height)`.
    fn tile_size(&self) -> (u32, u32) {
        self.rows.iter().flatten().fold((1, 1), |(w, h), t| (w.max(t.width()), h.max(t.height())))
    }

    /// The nearest-neighbour factor used.
    pub fn effective_scale(&self) -> u32 {
        if self.scale > 0 {
            self.scale
        } else {
            let (w, h) = self.tile_size();
            auto_scale(w.max(h))
        }
    }

    /// The size of one cell, `(width, height)`.
    pub fn cell_size(&self) -> (u32, u32) {
        let (w, h) = self.tile_size();
        let s = self.effective_scale();
        (w * s, h * s)
    }

    /// The size of the rendered picture ([`grid_size`]).
    pub fn size(&self) -> (u32, u32) {
        let (cw, ch) = self.cell_size();
        grid_size(self.columns.len() as u32, self.rows.len() as u32, cw, ch, self.title.is_some())
    }

    /// Draw the grid.
    pub fn render(&self) -> Result<RgbImage> {
        if self.columns.is_empty() || self.rows.is_empty() {
            return Err(err("a picture needs at least one row and one column"));
        }
        let (w, h) = self.size();
        if w as u64 * h as u64 > 200_000_000 {
            return Err(err(format!("a {w}×{h} picture is too large; show fewer or smaller images")));
        }
        let s = self.effective_scale();
        let (cw, ch) = self.cell_size();
        let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
        let top = MARGIN + if self.title.is_some() { TITLE_HEIGHT } else { 0 } + HEADER_HEIGHT;
        for (r, row) in self.rows.iter().enumerate() {
            for (c, t) in row.iter().enumerate() {
                let big = if s == 1 {
                    t.clone()
                } else {
                    image::imageops::resize(t, t.width() * s, t.height() * s, FilterType::Nearest)
                };
                let x = MARGIN + c as u32 * (cw + SPACING) + (cw - big.width()) / 2;
                let y = top + r as u32 * (ch + SPACING) + (ch - big.height()) / 2;
                image::imageops::replace(&mut img, &big, x as i64, y as i64);
            }
        }
        let mut labels = Vec::new();
        if let Some(t) = &self.title {
            labels.push(Label {
                text: t.clone(),
                x: MARGIN as i32,
                y: MARGIN as i32 + 3,
                max_w: w - 2 * MARGIN,
                size: 15.0,
                center: false,
            });
        }
        let label_y = top - HEADER_HEIGHT + 4;
        for (c, text) in self.columns.iter().enumerate() {
            let x = MARGIN + c as u32 * (cw + SPACING) + cw / 2;
            labels.push(Label {
                text: text.clone(),
                x: x as i32,
                y: label_y as i32,
                max_w: cw,
                size: 14.0,
                center: true,
            });
        }
        draw_labels(&mut img, &labels)?;
        Ok(img)
    }
}

/// One line of text.
pub(crate) struct Label {
    pub text: String,
    /// Left edge, or the centre with `center`.
    pub x: i32,
    /// Top edge.
    pub y: i32,
    /// Wider text is drawn smaller (down to 8 px) to fit.
    pub max_w: u32,
    pub size: f64,
    pub center: bool,
}

/// Draw black text on `img`.
pub(crate) fn draw_labels(img: &mut RgbImage, labels: &[Label]) -> Result<()> {
    let family = font()?;
    let (w, h) = img.dimensions();
    let root = Canvas::with_buffer(img, (w, h)).into_drawing_area();
    let fail = |e: &dyn std::fmt::Display| err(format!("cannot draw text: {e}"));
    for l in labels {
        let mut size = l.size;
        let pos = if l.center { Pos::new(HPos::Center, VPos::Top) } else { Pos::new(HPos::Left, VPos::Top) };
        let style = loop {
            let style = TextStyle::from((family, size).into_font()).color(&BLACK).pos(pos);
            let (tw, _) = root.estimate_text_size(&l.text, &style).map_err(|e| fail(&e))?;
            if tw <= l.max_w || size <= 8.0 {
                break style;
            }
            size -= 1.0;
        };
        root.draw_text(&l.text, &style, (l.x, l.y)).map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))
}
