//! `cim tokenizer roundtrip`: judge a trained tokenizer on held-out images.
//!
//! ```text
//! cim tokenizer roundtrip [--tokenizer runs/tokenizer.safetensors] [--data DIR]
//!                         [--n 64] [--out runs/tokenizer-roundtrip]
//! ```
//! The first `n` images of the test split (the training split where there is none),
//! resized to the tokenizer's image size, are encoded to argmax token maps and decoded
//! back. Written to `OUT/` (each file atomically):
//! - `tokens.npy`: `u32 [n, g, g]`, the token maps;
//! - `images.npy`, `reconstructions.npy`: `f32 [n, 3, S, S]` in `[0, 1]`;
//! - `usage.npy`: `u64 [vocab]`, how often each code was chosen;
//! - `roundtrip.png`: originals above their reconstructions (small images upscaled).
//!
//! Printed: the pixel MSE (and PSNR) over all images and of the worst one, codes used
//! out of the vocabulary, the code perplexity and the mean code confidence.

use crate::Cpu;
use cim_core::checkpoint::write_atomic;
use cim_core::data::{Augment, Dataset, Loader, LoaderConfig, Source, Split};
use cim_core::tokenizer::{roundtrip, Roundtrip, Tokenizer};
use cim_core::Tensor;
use clap::Args;
use image::{imageops, Rgb, RgbImage};
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::WriteNpyExt;
use std::path::{Path, PathBuf};

/// The arguments of `cim tokenizer roundtrip`.
#[derive(Args, Clone, Debug)]
pub struct RoundtripArgs {
    /// The tokenizer (written by `cim tokenizer train` or `cim pretrain`).
    #[arg(long, value_name = "FILE", default_value = "runs/tokenizer.safetensors")]
    pub tokenizer: PathBuf,
    /// The images: an IDX folder, CIFAR binaries or an image folder.
    #[arg(long, value_name = "DIR", default_value = "/usr/share/datasets/fashion-mnist")]
    pub data: PathBuf,
    /// How many images.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub n: usize,
    /// The output directory.
    #[arg(long, value_name = "DIR", default_value = "runs/tokenizer-roundtrip")]
    pub out: PathBuf,
}

/// Side of a picture cell: small images are upscaled (nearest neighbour) to at least this.
const MIN_CELL: u32 = 64;
/// Images per row of the picture.
const PER_ROW: usize = 16;

fn npy<A: ndarray_npy::WritableElement>(path: &Path, shape: &[usize], data: Vec<A>) -> Result<(), String> {
    let a = ArrayD::from_shape_vec(IxDyn(shape), data).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    a.write_npy(&mut bytes).map_err(|e| format!("cannot encode {}: {e}", path.display()))?;
    write_atomic(path, &bytes).map_err(|e| e.to_string())
}

/// Originals (top) above reconstructions (below), `PER_ROW` pairs per band.
fn picture(images: &[f32], recon: &[f32], n: usize, s: usize) -> RgbImage {
    let scale = (MIN_CELL as usize).div_ceil(s).max(1) as u32;
    let cell = s as u32 * scale;
    let gap = 2u32;
    let cols = n.min(PER_ROW) as u32;
    let bands = n.div_ceil(PER_ROW) as u32;
    let w = cols * (cell + gap) + gap;
    let h = bands * (2 * cell + 3 * gap) + gap;
    let mut out = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let tile = |src: &[f32], i: usize| {
        let px =
            |c: usize, y: usize, x: usize| (src[((i * 3 + c) * s + y) * s + x].clamp(0.0, 1.0) * 255.0).round() as u8;
        let img = RgbImage::from_fn(s as u32, s as u32, |x, y| {
            let (x, y) = (x as usize, y as usize);
            Rgb([px(0, y, x), px(1, y, x), px(2, y, x)])
        });
        imageops::resize(&img, cell, cell, imageops::FilterType::Nearest)
    };
    for i in 0..n {
        let (col, band) = ((i % PER_ROW) as u32, (i / PER_ROW) as u32);
        let x = gap + col * (cell + gap);
        let y = gap + band * (2 * cell + 3 * gap);
        imageops::replace(&mut out, &tile(images, i), x as i64, y as i64);
        imageops::replace(&mut out, &tile(recon, i), x as i64, (y + cell + gap) as i64);
    }
    out
}

fn psnr(mse: f64) -> f64 {
    10.0 * (1.0 / mse.max(1e-12)).log10()
}

/// Run `cim tokenizer roundtrip`; the error is one line.
pub fn run(args: &RoundtripArgs) -> Result<Roundtrip, String> {
    if args.n == 0 {
        return Err("--n must be at least 1".into());
    }
    let b = Cpu::new();
    let tok = Tokenizer::open(&b, &args.tokenizer).map_err(|e| e.to_string())?;
    let s = tok.image_size;
    let (data, split) = match Dataset::open(&args.data, Split::Test) {
        Ok(d) => (d, "test"),
        Err(_) => (Dataset::open(&args.data, Split::Train).map_err(|e| e.to_string())?, "train"),
    };
    let n = args.n.min(data.len());
    let mut loader = Loader::new(data, LoaderConfig::eval(n, Augment::resize(s as u32))).map_err(|e| e.to_string())?;
    let batch = loader.next_batch().map_err(|e| e.to_string())?;
    // A corrupt file's slot holds the next readable image (see `cim_core::data`).
    for (path, why) in loader.report().skipped {
        eprintln!("warning: skipped {}: {why}", path.display());
    }
    let n = batch.len();
    let x = Tensor::from_f64(&b, &[n, 3, s, s], &batch.enhancer.iter().map(|&v| v as f64).collect::<Vec<_>>())
        .map_err(|e| e.to_string())?;
    let r = roundtrip(&b, &tok, &x).map_err(|e| e.to_string())?;

    std::fs::create_dir_all(&args.out).map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let g = tok.grid();
    npy(&args.out.join("tokens.npy"), &[n, g, g], r.tokens.clone())?;
    npy(&args.out.join("images.npy"), &[n, 3, s, s], batch.enhancer.clone())?;
    npy(&args.out.join("reconstructions.npy"), &[n, 3, s, s], r.reconstructions.clone())?;
    npy(&args.out.join("usage.npy"), &[r.histogram.len()], r.histogram.iter().map(|&k| k as u64).collect())?;
    let png = args.out.join("roundtrip.png");
    let mut bytes = std::io::Cursor::new(Vec::new());
    picture(&batch.enhancer, &r.reconstructions, n, s)
        .write_to(&mut bytes, image::ImageFormat::Png)
        .map_err(|e| format!("cannot encode {}: {e}", png.display()))?;
    write_atomic(&png, bytes.get_ref()).map_err(|e| e.to_string())?;

    let st = &r.stats;
    let worst = r.image_mse.iter().cloned().fold(0.0, f64::max);
    println!(
        "{n} {split} images at {s} px -> {g}×{g} tokens: pixel MSE {:.5} (PSNR {:.1} dB), worst image {:.5}; \
         {} of {} codes used, perplexity {:.1}, mean code confidence {:.3}",
        st.recon_mse,
        psnr(st.recon_mse),
        worst,
        st.codes_used,
        st.vocab,
        st.perplexity,
        st.sharpness
    );
    println!("wrote tokens.npy, images.npy, reconstructions.npy, usage.npy, roundtrip.png in {}", args.out.display());
    Ok(r)
}
