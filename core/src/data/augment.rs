//! Augmentation as in the CIM paper: `RandomResizedCrop` (scale 0.08–1, ratio 3/4–4/3,
//! torchvision's algorithm) and a horizontal flip, nothing else. One crop gives two
//! views: the enhancer's input (e.g. 224 px, bicubic) and the tokenizer's (e.g. 112 px;
//! BEiT's code, on which CIM's is built, resizes it with Lanczos). Views are `f32` CHW in
//! `[0, 1]`; normalization is the caller's job.
//!
//! Also an evaluation transform (resize the shorter side, center crop) and a plain resize
//! for images that already have (about) the target size.

use crate::error::Result;
use crate::rng::Stream;
use image::imageops::FilterType;
use image::{Rgb32FImage, RgbImage};

use super::source::data_err;

/// A resampling filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Filter {
    Nearest,
    /// Triangle.
    Bilinear,
    /// Catmull-Rom, as PIL's and torchvision's bicubic.
    Bicubic,
    /// Lanczos with 3 lobes.
    Lanczos,
}

impl Filter {
    pub fn to_image(self) -> FilterType {
        match self {
            Filter::Nearest => FilterType::Nearest,
            Filter::Bilinear => FilterType::Triangle,
            Filter::Bicubic => FilterType::CatmullRom,
            Filter::Lanczos => FilterType::Lanczos3,
        }
    }
}

/// A crop of the source image, in its pixels, and whether the views are flipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CropBox {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    pub width: u32,
    pub height: u32,
    /// Flipped left to right.
    pub flip: bool,
    /// No draw fitted in 10 attempts: torchvision's central-crop fallback.
    pub fallback: bool,
}

/// torchvision's `RandomResizedCrop` parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RandomResizedCrop {
    /// Range of the crop's area as a fraction of the image's.
    pub scale: (f64, f64),
    /// Range of the crop's aspect ratio, width / height (drawn log-uniformly).
    pub ratio: (f64, f64),
}

impl Default for RandomResizedCrop {
    /// The paper's: scale (0.08, 1), ratio (3/4, 4/3).
    fn default() -> Self {
        RandomResizedCrop { scale: (0.08, 1.0), ratio: (3.0 / 4.0, 4.0 / 3.0) }
    }
}

/// A uniform `f64` in `[0, 1)` with 32 random bits.
fn unit(rng: &mut Stream) -> f64 {
    rng.next_u32() as f64 * (1.0 / 4_294_967_296.0)
}

/// Python's `int(round(x))` (ties to even) for non-negative `x`.
fn round_py(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// A uniform integer in `[0, n)`, `n > 0`.
fn below(rng: &mut Stream, n: u32) -> u32 {
    rng.below(n)
}

impl RandomResizedCrop {
    /// Draw a crop of a `width × height` image as torchvision's `get_params`: up to 10
    /// attempts of an area fraction uniform in `scale` and a log-uniform ratio, keeping
    /// the first that fits, at a uniform position; else the central crop clamped to
    /// `ratio`. `flip` is left `false`.
    pub fn sample(&self, width: u32, height: u32, rng: &mut Stream) -> CropBox {
        let area = width as f64 * height as f64;
        let (lr0, lr1) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target = area * (self.scale.0 + unit(rng) * (self.scale.1 - self.scale.0));
            let aspect = (lr0 + unit(rng) * (lr1 - lr0)).exp();
            let w = round_py((target * aspect).sqrt());
            let h = round_py((target / aspect).sqrt());
            if 0 < w && w <= width as i64 && 0 < h && h <= height as i64 {
                let (w, h) = (w as u32, h as u32);
                let y = below(rng, height - h + 1);
                let x = below(rng, width - w + 1);
                return CropBox { x, y, width: w, height: h, flip: false, fallback: false };
            }
        }
        let in_ratio = width as f64 / height as f64;
        let (lo, hi) = (self.ratio.0.min(self.ratio.1), self.ratio.0.max(self.ratio.1));
        let (w, h) = if in_ratio < lo {
            (width, (round_py(width as f64 / lo) as u32).clamp(1, height))
        } else if in_ratio > hi {
            ((round_py(height as f64 * hi) as u32).clamp(1, width), height)
        } else {
            (width, height)
        };
        CropBox { x: (width - w) / 2, y: (height - h) / 2, width: w, height: h, flip: false, fallback: true }
    }
}

/// How the region the views are made from is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Geometry {
    /// Training: a random resized crop, then a flip with probability `flip_p`.
    RandomResizedCrop { crop: RandomResizedCrop, flip_p: f32 },
    /// Evaluation: resize so that the shorter side is `resize` (torchvision's
    /// `Resize(int)`), then center-crop to the enhancer's size.
    CenterCrop { resize: u32 },
    /// Resize the whole image to each view's size (a copy where it already has it).
    Resize,
}

/// One output view: a square `size × size` image resized with `filter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ViewSpec {
    pub size: u32,
    pub filter: Filter,
}

/// A transform: how to choose the region, and the views to make of it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augment {
    pub geometry: Geometry,
    /// The enhancer's (the main) view.
    pub enhancer: ViewSpec,
    /// The tokenizer's view, of the same region, where wanted.
    pub tokenizer: Option<ViewSpec>,
}

/// What a transform made of one image.
#[derive(Clone, Debug, PartialEq)]
pub struct Views {
    /// `[3, E, E]` in `[0, 1]`.
    pub enhancer: Vec<f32>,
    /// `[3, T, T]` in `[0, 1]`; empty without a tokenizer view.
    pub tokenizer: Vec<f32>,
    /// The crop both views come from (random resized crop only).
    pub crop: Option<CropBox>,
}

impl Augment {
    /// The paper's pre-training transform: random resized crop (scale 0.08–1, ratio
    /// 3/4–4/3) and flip (p = 0.5), one crop giving the enhancer view (`enhancer` px,
    /// bicubic) and the tokenizer view (`tokenizer` px, Lanczos as BEiT's
    /// `--second_interpolation`).
    pub fn pretrain(enhancer: u32, tokenizer: u32) -> Self {
        Augment {
            geometry: Geometry::RandomResizedCrop { crop: RandomResizedCrop::default(), flip_p: 0.5 },
            enhancer: ViewSpec { size: enhancer, filter: Filter::Bicubic },
            tokenizer: Some(ViewSpec { size: tokenizer, filter: Filter::Lanczos }),
        }
    }

    /// Evaluation: shorter side to `resize` (bicubic), center crop to `size`; no
    /// tokenizer view.
    pub fn eval(resize: u32, size: u32) -> Self {
        Augment {
            geometry: Geometry::CenterCrop { resize },
            enhancer: ViewSpec { size, filter: Filter::Bicubic },
            tokenizer: None,
        }
    }

    /// Resize the whole image to `size` (bicubic); no tokenizer view.
    pub fn resize(size: u32) -> Self {
        Augment { geometry: Geometry::Resize, enhancer: ViewSpec { size, filter: Filter::Bicubic }, tokenizer: None }
    }

    /// The same transform with a tokenizer view of `size` resized with `filter`.
    pub fn with_tokenizer(mut self, size: u32, filter: Filter) -> Self {
        self.tokenizer = Some(ViewSpec { size, filter });
        self
    }

    /// The same transform without the tokenizer view.
    pub fn without_tokenizer(mut self) -> Self {
        self.tokenizer = None;
        self
    }

    /// Check the parameters.
    pub fn validate(&self) -> Result<()> {
        if self.enhancer.size == 0 || self.tokenizer.is_some_and(|t| t.size == 0) {
            return data_err("augmentation: view sizes must be positive");
        }
        match self.geometry {
            Geometry::RandomResizedCrop { crop, flip_p } => {
                let (s0, s1) = crop.scale;
                let (r0, r1) = crop.ratio;
                if !(s0 > 0.0 && s0 <= s1 && s1.is_finite()) {
                    return data_err(format!("random resized crop: scale ({s0}, {s1}) must satisfy 0 < min <= max"));
                }
                if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
                    return data_err(format!("random resized crop: ratio ({r0}, {r1}) must satisfy 0 < min <= max"));
                }
                if !(0.0..=1.0).contains(&flip_p) {
                    return data_err(format!("flip probability {flip_p} is not in [0, 1]"));
                }
            }
            Geometry::CenterCrop { resize } => {
                if resize < self.enhancer.size {
                    return data_err(format!(
                        "evaluation transform: resize {resize} is smaller than the crop {}",
                        self.enhancer.size
                    ));
                }
            }
            Geometry::Resize => {}
        }
        Ok(())
    }

    /// The random part of the transform for a `width × height` image: the crop and flip
    /// (random resized crop only; no draw otherwise).
    pub fn sample_crop(&self, width: u32, height: u32, rng: &mut Stream) -> Option<CropBox> {
        match self.geometry {
            Geometry::RandomResizedCrop { crop, flip_p } => {
                let mut b = crop.sample(width, height, rng);
                b.flip = (rng.next_u32() as f64 * (1.0 / 4_294_967_296.0)) < flip_p as f64;
                Some(b)
            }
            _ => None,
        }
    }

    /// Draw the crop with `rng` and make the views.
    pub fn apply(&self, image: &RgbImage, rng: &mut Stream) -> Views {
        let crop = self.sample_crop(image.width(), image.height(), rng);
        self.render(image, crop.as_ref())
    }

    /// Make the views with a given crop (ignored unless the geometry is a random resized
    /// crop, for which `None` means the whole image, unflipped).
    pub fn render(&self, image: &RgbImage, crop: Option<&CropBox>) -> Views {
        let (w, h) = image.dimensions();
        match self.geometry {
            Geometry::RandomResizedCrop { .. } => {
                let b =
                    crop.copied().unwrap_or(CropBox { x: 0, y: 0, width: w, height: h, flip: false, fallback: false });
                let region = crop_f32(image, &b);
                Views {
                    enhancer: resize_chw(&region, self.enhancer),
                    tokenizer: self.tokenizer.map(|t| resize_chw(&region, t)).unwrap_or_default(),
                    crop: Some(b),
                }
            }
            Geometry::CenterCrop { resize } => {
                let full = crop_f32(image, &CropBox { x: 0, y: 0, width: w, height: h, flip: false, fallback: false });
                // torchvision's Resize(int): the shorter side to `resize`, the longer scaled
                // and truncated.
                let (nw, nh) = if w <= h {
                    (resize, ((resize as u64 * h as u64) / w as u64).max(1) as u32)
                } else {
                    (((resize as u64 * w as u64) / h as u64).max(1) as u32, resize)
                };
                let resized = image::imageops::resize(&full, nw, nh, self.enhancer.filter.to_image());
                let s = self.enhancer.size;
                // CenterCrop: int(round((h - s) / 2)).
                let top = round_py((nh - s) as f64 / 2.0) as u32;
                let left = round_py((nw - s) as f64 / 2.0) as u32;
                let region = image::imageops::crop_imm(&resized, left, top, s, s).to_image();
                Views {
                    enhancer: to_chw(&region),
                    tokenizer: self.tokenizer.map(|t| resize_chw(&region, t)).unwrap_or_default(),
                    crop: None,
                }
            }
            Geometry::Resize => {
                let full = crop_f32(image, &CropBox { x: 0, y: 0, width: w, height: h, flip: false, fallback: false });
                Views {
                    enhancer: resize_chw(&full, self.enhancer),
                    tokenizer: self.tokenizer.map(|t| resize_chw(&full, t)).unwrap_or_default(),
                    crop: None,
                }
            }
        }
    }
}

/// The crop as `f32` in `[0, 1]`, flipped where the box says.
pub(crate) fn crop_f32(image: &RgbImage, b: &CropBox) -> Rgb32FImage {
    let mut out = Rgb32FImage::new(b.width, b.height);
    for yy in 0..b.height {
        for xx in 0..b.width {
            let sx = if b.flip { b.x + b.width - 1 - xx } else { b.x + xx };
            let p = image.get_pixel(sx, b.y + yy).0;
            out.put_pixel(xx, yy, image::Rgb([p[0] as f32 / 255.0, p[1] as f32 / 255.0, p[2] as f32 / 255.0]));
        }
    }
    out
}

/// Resize to the view's square size, as CHW in `[0, 1]`.
fn resize_chw(region: &Rgb32FImage, v: ViewSpec) -> Vec<f32> {
    if region.dimensions() == (v.size, v.size) {
        return to_chw(region);
    }
    to_chw(&image::imageops::resize(region, v.size, v.size, v.filter.to_image()))
}

/// An `f32` image as CHW, clamped to `[0, 1]`.
pub(crate) fn to_chw(img: &Rgb32FImage) -> Vec<f32> {
    let plane = (img.width() * img.height()) as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = p.0[c].clamp(0.0, 1.0);
        }
    }
    out
}
