//! Pictures (feature `std`): what a person looks at to judge a generator, an enhancer
//! and a tokenizer, as PNG files. Generic over the backend; inference only.
//!
//! - [`grid`]: labeled grids of small images (columns with labels, spacing, nearest-
//!   neighbour upscaling so that a 32-px image is shown at 4×);
//! - [`corrupt`]: the paper's Figure 2, an original, its masked image and several
//!   corrupted images sampled with the same mask;
//! - [`enhance`]: Figure 3, the enhancer's output on a corrupted image (RESPIX mapped
//!   back to pixels with the original's statistics, §A.2, and raw; REVDET as a map);
//! - [`templates`]: Figure 4, the non-overlapping and the sliding-window normalization;
//! - [`tokenizer`]: dVAE reconstructions and the codebook-usage histogram;
//! - [`plot`]: training curves of one or more runs from `metrics.jsonl`;
//! - [`run`]: a trained run (configuration, checkpoint, tokenizer) loaded for pictures.
//!
//! Text is laid out by `ab_glyph` in DejaVu Sans, compiled in (the `dejavu` crate), on
//! `plotters`' bitmap backend, so no system font library or font file is needed at run
//! time.

pub mod corrupt;
pub mod enhance;
pub mod grid;
pub mod plot;
pub mod run;
pub mod templates;
#[cfg(test)]
mod tests;
mod text;
pub mod tokenizer;

pub use corrupt::{corrupt_grid, CorruptStats};
pub use enhance::{enhance_grid, EnhanceStats};
pub use grid::Grid;
pub use plot::plot_runs;
pub use run::{find_tokenizer, load_run, read_run_config, LoadedRun};
pub use templates::templates_grid;
pub use tokenizer::{tokenizer_from_file, tokenizer_picture, TokenizerPicture};

use crate::backend::Backend;
use crate::cim::{CimConfig, StepInput};
use crate::data::{Augment, Filter, Source};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use image::{Rgb, RgbImage};
use std::path::Path;
use std::sync::OnceLock;

pub(crate) const OP: &str = "picture";

/// The font family every picture's text is drawn in.
pub(crate) const FONT: &str = "cim-sans";

/// Key of the fixed masks of pictures (xored into the seed), apart from training's.
pub const PICTURE_MASK_TAG: u64 = 0x7069_6374_7572_6521;

pub(crate) fn err(detail: impl Into<String>) -> Error {
    Error::Invalid { op: OP, detail: detail.into() }
}

/// `detail` cut to about `max` characters (a load error can list hundreds of tensors).
pub(crate) fn brief(detail: &str, max: usize) -> String {
    match detail.char_indices().nth(max) {
        Some((i, _)) => format!("{} …", &detail[..i]),
        None => detail.to_string(),
    }
}

/// Register the compiled-in font with `plotters` (once per process): the family name
/// its text styles carry; the glyphs themselves are drawn by [`text::Canvas`].
pub(crate) fn font() -> Result<&'static str> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, plotters::style::FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if ok {
        Ok(FONT)
    } else {
        Err(err("the built-in font cannot be loaded"))
    }
}

/// A `[3, h, w]` image with values in `[0, 1]` (clamped) as an RGB image.
pub fn tile(chw: &[f64], h: usize, w: usize) -> Result<RgbImage> {
    tile_with(chw, h, w, |v| v)
}

/// A `[3, h, w]` map of normalized values (mean 0, about unit variance) as an RGB
/// image: 0 is mid-grey and `±range` black and white.
pub fn tile_signed(chw: &[f64], h: usize, w: usize, range: f64) -> Result<RgbImage> {
    let r = if range > 0.0 { range } else { 1.0 };
    tile_with(chw, h, w, |v| 0.5 + v / (2.0 * r))
}

fn tile_with(chw: &[f64], h: usize, w: usize, f: impl Fn(f64) -> f64) -> Result<RgbImage> {
    let plane = h * w;
    if plane == 0 || chw.len() != 3 * plane {
        return Err(err(format!("{} values are not a [3, {h}, {w}] image", chw.len())));
    }
    let byte = |v: f64| {
        let v = f(v);
        if v.is_nan() {
            0
        } else {
            (v.clamp(0.0, 1.0) * 255.0).round() as u8
        }
    };
    Ok(RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let i = y as usize * w + x as usize;
        Rgb([byte(chw[i]), byte(chw[plane + i]), byte(chw[2 * plane + i])])
    }))
}

/// The images of a batch `[n, 3, h, w]`, each through `make`.
pub fn tiles<B: Backend>(
    b: &B,
    x: &Tensor<B>,
    make: impl Fn(&[f64], usize, usize) -> Result<RgbImage>,
) -> Result<Vec<RgbImage>> {
    let s = x.shape();
    if s.len() != 4 || s[1] != 3 {
        return Err(err(format!("images {s:?} are not [n, 3, h, w]")));
    }
    let v = x.to_f64(b)?;
    let per = 3 * s[2] * s[3];
    v.chunks_exact(per.max(1)).map(|c| make(c, s[2], s[3])).collect()
}

/// `[3, size, size]` pixels with the masked patches (row-major over the `size / patch`
/// grid, 1 = masked) painted mid-grey.
pub fn grey_masked(chw: &[f64], size: usize, patch: usize, mask: &[u8]) -> Vec<f64> {
    let mut out = chw.to_vec();
    let g = size.checked_div(patch).unwrap_or(0);
    if g == 0 || mask.len() != g * g || chw.len() != 3 * size * size {
        return out;
    }
    for (i, _) in mask.iter().enumerate().filter(|(_, &m)| m != 0) {
        let (gy, gx) = (i / g, i % g);
        for c in 0..3 {
            for y in gy * patch..(gy + 1) * patch {
                let row = c * size * size + y * size;
                out[row + gx * patch..row + (gx + 1) * patch].fill(0.5);
            }
        }
    }
    out
}

/// `[3, size, size]` pixels tinted red where `weight` (one value in `[0, 1]` per
/// patch of the `size / patch` grid, row-major) is high; the rest turned grey so that
/// the tint stands out.
pub fn tint_patches(chw: &[f64], size: usize, patch: usize, weight: &[f64]) -> Vec<f64> {
    let plane = size * size;
    let g = size.checked_div(patch).unwrap_or(0);
    let mut out = vec![0.0; 3 * plane];
    if g == 0 || weight.len() != g * g || chw.len() != 3 * plane {
        return chw.to_vec();
    }
    for y in 0..size {
        for x in 0..size {
            let i = y * size + x;
            let grey = (chw[i] + chw[plane + i] + chw[2 * plane + i]) / 3.0;
            let a = 0.75 * weight[(y / patch) * g + x / patch].clamp(0.0, 1.0);
            out[i] = (1.0 - a) * grey + a;
            out[plane + i] = (1.0 - a) * grey + a * 0.1;
            out[2 * plane + i] = (1.0 - a) * grey + a * 0.1;
        }
    }
    out
}

/// A batch of images as a CIM model sees them: the enhancer view and the tokenizer
/// view of each whole image (no random crop).
pub struct ImageBatch<B: Backend> {
    /// `[n, 3, H, W]` in `[0, 1]`.
    pub enhancer: Tensor<B>,
    /// `[n, 3, h, w]` in `[0, 1]`.
    pub tokenizer: Tensor<B>,
    pub len: usize,
}

impl<B: Backend> ImageBatch<B> {
    /// The batch with `masks` as the input of one corruption, sampling keyed by
    /// `(seed, step)`.
    pub fn input<'a>(&'a self, masks: &'a [u8], seed: u64, step: u64) -> StepInput<'a, B> {
        StepInput { enhancer_view: &self.enhancer, tokenizer_view: &self.tokenizer, masks, seed, step }
    }
}

/// Images `start .. start + n` of `source` (fewer where the source ends), each resized
/// whole to `image_size` (bicubic, the enhancer view) and `tokenizer_size` (Lanczos).
pub fn load_images<B: Backend>(
    b: &B,
    source: &dyn Source,
    start: usize,
    n: usize,
    image_size: usize,
    tokenizer_size: usize,
) -> Result<ImageBatch<B>> {
    let total = source.len();
    if n == 0 {
        return Err(err("the number of images must be positive"));
    }
    if start >= total {
        return Err(err(format!("image {start} is out of range: the data set has {total} images")));
    }
    let end = (start + n).min(total);
    let aug = Augment::resize(image_size as u32).with_tokenizer(tokenizer_size as u32, Filter::Lanczos);
    let (mut e, mut t) = (Vec::new(), Vec::new());
    for i in start..end {
        let v = aug.render(&source.get(i)?.image, None);
        e.extend(v.enhancer.iter().map(|&x| x as f64));
        t.extend(v.tokenizer.iter().map(|&x| x as f64));
    }
    let len = end - start;
    Ok(ImageBatch {
        enhancer: Tensor::from_f64(b, &[len, 3, image_size, image_size], &e)?,
        tokenizer: Tensor::from_f64(b, &[len, 3, tokenizer_size, tokenizer_size], &t)?,
        len,
    })
}

/// `n` masks of `cfg`'s masking, fixed by `seed` (image `i` draws from stream `i` of
/// `seed ^ PICTURE_MASK_TAG`): the same pictures for the same seed.
pub fn fixed_masks(cfg: &CimConfig, seed: u64, n: usize) -> Result<Vec<u8>> {
    let m = cfg.masking()?;
    Ok((0..n as u64).flat_map(|i| m.sample_for(seed ^ PICTURE_MASK_TAG, i)).collect())
}

/// Images one above the other, left-aligned on white, `gap` pixels apart.
pub fn stack_vertical(images: &[RgbImage], gap: u32) -> RgbImage {
    let w = images.iter().map(|i| i.width()).max().unwrap_or(1).max(1);
    let h = images.iter().map(|i| i.height()).sum::<u32>() + gap * images.len().saturating_sub(1) as u32;
    let mut out = RgbImage::from_pixel(w, h.max(1), Rgb([255, 255, 255]));
    let mut y = 0;
    for img in images {
        image::imageops::replace(&mut out, img, 0, y as i64);
        y += img.height() + gap;
    }
    out
}

/// Encode as PNG (best compression; one grey channel where every pixel is grey, which
/// most pictures of grey data sets are) and write atomically (a temporary file, then a
/// rename); creates the parent folder.
pub fn save_png(path: &Path, img: &RgbImage) -> Result<()> {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    use image::{ExtendedColorType, ImageEncoder};
    let fail = |d: String| err(format!("cannot write {}: {d}", path.display()));
    if path.is_dir() {
        return Err(fail("it is a folder".into()));
    }
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).map_err(|e| fail(format!("cannot create {}: {e}", d.display())))?;
    }
    let grey = img.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]);
    let (data, color) = if grey {
        (img.pixels().map(|p| p.0[0]).collect::<Vec<u8>>(), ExtendedColorType::L8)
    } else {
        (img.as_raw().clone(), ExtendedColorType::Rgb8)
    };
    let mut bytes = Vec::new();
    PngEncoder::new_with_quality(&mut bytes, CompressionType::Best, FilterType::Adaptive)
        .write_image(&data, img.width(), img.height(), color)
        .map_err(|e| fail(e.to_string()))?;
    crate::checkpoint::write_atomic(path, &bytes).map_err(|e| match e {
        Error::Checkpoint { detail, .. } => fail(detail),
        e => e,
    })
}
