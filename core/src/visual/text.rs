//! The drawing surface of every picture: `plotters`' RGB bitmap backend with text laid
//! out and rasterized by `ab_glyph` in DejaVu Sans (compiled in).
//!
//! `plotters`' own `ab_glyph` text path places each glyph at the pen position without
//! its left side bearing, which spaces letters unevenly ("origi nal"); [`Canvas`]
//! positions glyphs as the font says (bearings and kerning) and handles the anchors
//! and quarter-turn rotations `plotters` asks for.

use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use plotters::prelude::{BitMapBackend, DrawingBackend};
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind, FontTransform};
use std::sync::OnceLock;

/// The compiled-in font.
pub(crate) fn font() -> Result<&'static FontRef<'static>, ab_glyph::InvalidFont> {
    static FONT: OnceLock<Result<FontRef<'static>, ab_glyph::InvalidFont>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(dejavu::sans::regular())).as_ref().map_err(|e| *e)
}

/// `text` at pixel height `size`: the glyphs' pen positions on a baseline at `ascent`,
/// the advance width and the line height.
fn layout(f: &FontRef<'static>, size: f64, text: &str) -> (Vec<ab_glyph::Glyph>, f32, f32) {
    let s = f.as_scaled(PxScale::from(size as f32));
    let ascent = s.ascent();
    let mut x = 0f32;
    let mut prev = None;
    let mut glyphs = Vec::with_capacity(text.len());
    for c in text.chars() {
        let id = s.glyph_id(c);
        if let Some(p) = prev {
            x += s.kern(p, id);
        }
        glyphs.push(id.with_scale_and_position(s.scale(), point(x, ascent)));
        x += s.h_advance(id);
        prev = Some(id);
    }
    (glyphs, x, ascent - s.descent())
}

/// A bitmap backend over an RGB buffer with correctly spaced text.
pub(crate) struct Canvas<'a> {
    inner: BitMapBackend<'a>,
}

impl<'a> Canvas<'a> {
    /// Draw into `buf` (`w · h · 3` bytes, row-major RGB).
    pub(crate) fn with_buffer(buf: &'a mut [u8], size: (u32, u32)) -> Self {
        Canvas { inner: BitMapBackend::with_buffer(buf, size) }
    }
}

type Err<'a> = DrawingErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>;

impl<'a> DrawingBackend for Canvas<'a> {
    type ErrorType = <BitMapBackend<'a> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }
    fn ensure_prepared(&mut self) -> Result<(), Err<'a>> {
        self.inner.ensure_prepared()
    }
    fn present(&mut self) -> Result<(), Err<'a>> {
        self.inner.present()
    }
    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> Result<(), Err<'a>> {
        self.inner.draw_pixel(point, color)
    }
    fn draw_line<S: BackendStyle>(&mut self, from: BackendCoord, to: BackendCoord, style: &S) -> Result<(), Err<'a>> {
        self.inner.draw_line(from, to, style)
    }
    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), Err<'a>> {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }
    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), Err<'a>> {
        self.inner.draw_path(path, style)
    }
    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), Err<'a>> {
        self.inner.draw_circle(center, radius, style, fill)
    }
    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), Err<'a>> {
        self.inner.fill_polygon(vert, style)
    }
    fn blit_bitmap(&mut self, pos: BackendCoord, size: (u32, u32), src: &[u8]) -> Result<(), Err<'a>> {
        self.inner.blit_bitmap(pos, size, src)
    }

    fn estimate_text_size<T: BackendTextStyle>(&self, text: &str, style: &T) -> Result<(u32, u32), Err<'a>> {
        let f = font().map_err(|e| DrawingErrorKind::FontError(Box::new(e)))?;
        let (_, w, h) = layout(f, style.size(), text);
        Ok((w.ceil() as u32, h.ceil() as u32))
    }

    fn draw_text<T: BackendTextStyle>(&mut self, text: &str, style: &T, pos: BackendCoord) -> Result<(), Err<'a>> {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let f = font().map_err(|e| DrawingErrorKind::FontError(Box::new(e)))?;
        let (glyphs, w, h) = layout(f, style.size(), text);
        let anchor = style.anchor();
        let dx = match anchor.h_pos {
            HPos::Left => 0.0,
            HPos::Center => -w / 2.0,
            HPos::Right => -w,
        };
        let dy = match anchor.v_pos {
            VPos::Top => 0.0,
            VPos::Center => -h / 2.0,
            VPos::Bottom => -h,
        };
        let trans: FontTransform = style.transform();
        let (width, height) = self.get_size();
        let mut result = Ok(());
        for g in glyphs {
            let Some(q) = f.outline_glyph(g) else { continue };
            let b = q.px_bounds();
            q.draw(|x, y, coverage| {
                if result.is_err() || coverage <= 0.0 {
                    return;
                }
                let lx = (b.min.x + x as f32 + dx).round() as i32;
                let ly = (b.min.y + y as f32 + dy).round() as i32;
                let (tx, ty) = trans.transform(lx, ly);
                let (px, py) = (pos.0 + tx, pos.1 + ty);
                if px >= 0 && py >= 0 && (px as u32) < width && (py as u32) < height {
                    let c = BackendColor { alpha: color.alpha * coverage.min(1.0) as f64, rgb: color.rgb };
                    result = self.inner.draw_pixel((px, py), c);
                }
            });
            if result.is_err() {
                break;
            }
        }
        result
    }
}
