//! `cim visualize`: pictures of a run, its tokenizer and the RESPIX targets, on the CPU
//! backend (`cim_core::visual` draws them).
//!
//! ```text
//! cim visualize corrupt   --checkpoint RUN [--data DIR] [--n 8] [--samples 4] [--out corrupt.png]
//! cim visualize enhance   --checkpoint RUN [--data DIR] [--n 8] [--out enhance.png]
//! cim visualize templates [--data DIR] [--n 8] [--image-size 32] [--patch 8] [--window 8] [--out templates.png]
//! cim visualize tokenizer (--tokenizer FILE | --checkpoint RUN) [--data DIR] [--n 8] [--out tokenizer.png]
//! ```
//! `RUN` is a run directory (its newest checkpoint) or a checkpoint file. Images are the
//! data set's test split where it has one (else its training images), whole, resized to
//! the model's views; `--start` picks the first. Masks and samples are fixed by
//! `--seed`. Small images are upscaled by nearest neighbour (`--scale`, default: 32 px
//! at 4×). Every failure is a one-line error, never a panic.

use crate::Cpu;
use cim_core::cim::MaskStrategy;
use cim_core::data::{Dataset, Split, FASHION_MNIST_DIR};
use cim_core::visual::{self, grid, EnhanceStats, Grid};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

/// What to draw.
#[derive(Subcommand, Clone, Debug)]
pub enum VisualizeWhat {
    /// Originals, masked images and corrupted samples from a run's generator (Figure 2).
    Corrupt(CorruptArgs),
    /// What a run's enhancer makes of corrupted images (Figure 3).
    Enhance(EnhanceArgs),
    /// The patch and the sliding-window normalizations of images (Figure 4).
    Templates(TemplatesArgs),
    /// A dVAE tokenizer: originals beside reconstructions, and its codebook usage.
    Tokenizer(TokenizerArgs),
}

/// The run and images of `corrupt` and `enhance`.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// A run directory (its newest checkpoint) or a checkpoint file (RUN/checkpoints/step-N.safetensors).
    #[arg(long, value_name = "RUN")]
    pub checkpoint: PathBuf,
    /// Use this tokenizer instead of the run's.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// The images (default: the run's data set).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Images to show, one per row.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub n: usize,
    /// Index of the first image.
    #[arg(long, value_name = "I", default_value_t = 0)]
    pub start: usize,
    /// Seed of the masks and the sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Nearest-neighbour upscaling (0: automatic, about 128 px per image).
    #[arg(long, default_value_t = 0)]
    pub scale: u32,
}

/// `cim visualize corrupt`.
#[derive(Args, Clone, Debug)]
pub struct CorruptArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Corrupted samples per image (same mask, different draws).
    #[arg(long, value_name = "K", default_value_t = 4)]
    pub samples: usize,
    /// The picture (.png).
    #[arg(long, value_name = "FILE", default_value = "corrupt.png")]
    pub out: PathBuf,
}

/// `cim visualize enhance`.
#[derive(Args, Clone, Debug)]
pub struct EnhanceArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// The picture (.png).
    #[arg(long, value_name = "FILE", default_value = "enhance.png")]
    pub out: PathBuf,
}

/// `cim visualize templates`.
#[derive(Args, Clone, Debug)]
pub struct TemplatesArgs {
    /// The images.
    #[arg(long, value_name = "DIR", default_value = FASHION_MNIST_DIR)]
    pub data: PathBuf,
    /// Images to show, one per row.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub n: usize,
    /// Index of the first image.
    #[arg(long, value_name = "I", default_value_t = 0)]
    pub start: usize,
    /// Side the images are resized to.
    #[arg(long, value_name = "PX", default_value_t = 32)]
    pub image_size: usize,
    /// Side of the non-overlapping patches (MAE's normalization).
    #[arg(long, value_name = "P", default_value_t = 8)]
    pub patch: usize,
    /// Side of the sliding window (the paper's: 8).
    #[arg(long, value_name = "K", default_value_t = 8)]
    pub window: usize,
    /// Nearest-neighbour upscaling (0: automatic).
    #[arg(long, default_value_t = 0)]
    pub scale: u32,
    /// The picture (.png).
    #[arg(long, value_name = "FILE", default_value = "templates.png")]
    pub out: PathBuf,
}

/// `cim visualize tokenizer`.
#[derive(Args, Clone, Debug)]
pub struct TokenizerArgs {
    /// The tokenizer file (.safetensors with encoder.* and decoder.*).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Or a run directory (or checkpoint file): its tokenizer, data and view size.
    #[arg(long, value_name = "RUN")]
    pub checkpoint: Option<PathBuf>,
    /// The tokenizer's dVAE where the file does not record it: dvae_small, dalle, or a
    /// dvae_encoder(...) configuration.
    #[arg(long, value_name = "NAME")]
    pub arch: Option<String>,
    /// Side of the tokenizer's images (default: the file's or the run's).
    #[arg(long, value_name = "PX")]
    pub image_size: Option<usize>,
    /// The images (default: the run's data set, else Fashion-MNIST).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Images to show.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub n: usize,
    /// Index of the first image.
    #[arg(long, value_name = "I", default_value_t = 0)]
    pub start: usize,
    /// Original / reconstruction pairs per row.
    #[arg(long, value_name = "K", default_value_t = 4)]
    pub pairs: usize,
    /// Images whose codes make the usage histogram.
    #[arg(long, value_name = "M", default_value_t = 512)]
    pub usage_images: usize,
    /// Nearest-neighbour upscaling (0: automatic).
    #[arg(long, default_value_t = 0)]
    pub scale: u32,
    /// The picture (.png).
    #[arg(long, value_name = "FILE", default_value = "tokenizer.png")]
    pub out: PathBuf,
}

fn s(e: cim_core::Error) -> String {
    e.to_string()
}

/// The images to draw: the test split where there is one.
fn open_images(path: &Path) -> Result<Dataset, String> {
    match Dataset::open(path, Split::Test) {
        Ok(d) => Ok(d),
        Err(test_err) => Dataset::open(path, Split::Train).map_err(|_| {
            let mut m = test_err.to_string();
            if !path.exists() && !m.contains("--data") {
                m.push_str(" (pass --data DIR)");
            }
            m
        }),
    }
}

fn check_out(out: &Path) -> Result<(), String> {
    let ext = out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    if ext.as_deref() != Some("png") {
        return Err(format!("the output {} must be a .png file", out.display()));
    }
    Ok(())
}

fn wrote(out: &Path, img: &image::RgbImage, what: &str) -> String {
    format!("wrote {} ({}×{} px): {what}", out.display(), img.width(), img.height())
}

/// Run `cim visualize`; the result is one line saying what was written, the error one
/// line saying what is wrong.
pub fn run(what: &VisualizeWhat) -> Result<String, String> {
    match what {
        VisualizeWhat::Corrupt(a) => corrupt(a),
        VisualizeWhat::Enhance(a) => enhance(a),
        VisualizeWhat::Templates(a) => templates(a),
        VisualizeWhat::Tokenizer(a) => tokenizer(a),
    }
}

/// A loaded run and its images and masks.
struct Prepared {
    run: visual::LoadedRun<Cpu>,
    batch: visual::ImageBatch<Cpu>,
    masks: Vec<u8>,
}

fn prepare(b: &Cpu, a: &RunArgs) -> Result<Prepared, String> {
    if a.n == 0 {
        return Err("--n must be at least 1".into());
    }
    let run = visual::load_run(b, &a.checkpoint, a.tokenizer.as_deref()).map_err(s)?;
    let data = a.data.clone().unwrap_or_else(|| run.cfg.data.clone());
    let ds = open_images(&data)?;
    let batch =
        visual::load_images(b, &ds, a.start, a.n, run.cfg.image_size, run.cfg.tokenizer_image_size).map_err(s)?;
    let masks = visual::fixed_masks(&run.model.cfg, a.seed, batch.len).map_err(s)?;
    Ok(Prepared { run, batch, masks })
}

fn title(r: &visual::LoadedRun<Cpu>, what: &str) -> String {
    let name = r.run.root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let about = if name == r.cfg.preset {
        r.cfg.objective.to_uppercase()
    } else {
        format!("{}, {}", r.cfg.preset, r.cfg.objective.to_uppercase())
    };
    format!("{name} ({about}), step {}: {what}", r.step)
}

fn mask_words(r: &visual::LoadedRun<Cpu>) -> String {
    let (lo, hi) = r.model.cfg.mask_range;
    let how = match r.model.cfg.mask_strategy {
        MaskStrategy::Random => "random",
        MaskStrategy::Block => "block",
    };
    format!("{lo}-{hi} of {} patches masked ({how})", r.model.cfg.num_patches())
}

fn render(grid: Grid, scale: u32, out: &Path) -> Result<image::RgbImage, String> {
    let img = Grid { scale, ..grid }.render().map_err(s)?;
    visual::save_png(out, &img).map_err(s)?;
    Ok(img)
}

fn corrupt(a: &CorruptArgs) -> Result<String, String> {
    check_out(&a.out)?;
    if a.samples == 0 {
        return Err("--samples must be at least 1".into());
    }
    let b = Cpu::new();
    let p = prepare(&b, &a.run)?;
    let r = &p.run;
    let input = p.batch.input(&p.masks, a.run.seed, 0);
    let (grid, st) = visual::corrupt_grid(&b, &r.model, &r.store, &r.tokenizer, &input, a.samples).map_err(s)?;
    let grid = grid.with_title(title(r, &format!("corrupted samples, {}", mask_words(r))));
    let img = render(grid, a.run.scale, &a.out)?;
    Ok(wrote(
        &a.out,
        &img,
        &format!(
            "{} images × (original, masked, dVAE recon, {} samples) from {} (step {}); {:.0}% of patches masked, \
             {:.0}% of tokens replaced",
            p.batch.len,
            a.samples,
            r.checkpoint.display(),
            r.step,
            100.0 * st.masked_frac,
            100.0 * st.replaced_frac
        ),
    ))
}

fn enhance(a: &EnhanceArgs) -> Result<String, String> {
    check_out(&a.out)?;
    let b = Cpu::new();
    let p = prepare(&b, &a.run)?;
    let r = &p.run;
    let input = p.batch.input(&p.masks, a.run.seed, 0);
    let (grid, st) = visual::enhance_grid(&b, &r.model, &r.store, &r.tokenizer, &input).map_err(s)?;
    let (what, line) = match st {
        EnhanceStats::Respix { loss } => (
            "enhancer output (mapped back with the original's statistics), raw output and target".to_string(),
            format!("RESPIX loss {loss:.4} on these images"),
        ),
        EnhanceStats::Revdet { accuracy, replaced_frac } => (
            "replaced-token detection, predicted and true".to_string(),
            format!("REVDET accuracy {accuracy:.3} ({:.0}% of tokens replaced)", 100.0 * replaced_frac),
        ),
    };
    let img = render(grid.with_title(title(r, &what)), a.run.scale, &a.out)?;
    Ok(wrote(
        &a.out,
        &img,
        &format!("{} images from {} (step {}); {line}", p.batch.len, r.checkpoint.display(), r.step),
    ))
}

fn templates(a: &TemplatesArgs) -> Result<String, String> {
    check_out(&a.out)?;
    if a.n == 0 || a.image_size == 0 {
        return Err("--n and --image-size must be at least 1".into());
    }
    let b = Cpu::new();
    let ds = open_images(&a.data)?;
    let batch = visual::load_images(&b, &ds, a.start, a.n, a.image_size, a.image_size).map_err(s)?;
    let cfg = cim_core::train::PretrainConfig::default().cim().map_err(s)?;
    let grid = visual::templates_grid(&b, &batch.enhancer, a.patch, a.window, &cfg.mean, &cfg.std).map_err(s)?;
    let grid = grid.with_title(format!("RESPIX templates at {} px: 0 is grey, ±3 black / white", a.image_size));
    let img = render(grid, a.scale, &a.out)?;
    Ok(wrote(
        &a.out,
        &img,
        &format!(
            "{} images × (original, {p}×{p} patch normalization, {k}×{k} sliding-window normalization)",
            batch.len,
            p = a.patch,
            k = a.window
        ),
    ))
}

fn tokenizer(a: &TokenizerArgs) -> Result<String, String> {
    check_out(&a.out)?;
    if a.n == 0 || a.pairs == 0 || a.usage_images == 0 {
        return Err("--n, --pairs and --usage-images must be at least 1".into());
    }
    let b = Cpu::new();
    let (path, size, data, arch) = match (&a.tokenizer, &a.checkpoint) {
        (Some(t), None) => (t.clone(), a.image_size, a.data.clone(), a.arch.clone()),
        (t, Some(run)) => {
            let (cfg, rd) = visual::read_run_config(run).map_err(s)?;
            let path = match t {
                Some(t) => t.clone(),
                None => visual::find_tokenizer(&cfg, &rd).map_err(s)?,
            };
            let arch = a.arch.clone().or_else(|| {
                let d = cfg.tokenizer_model.dvae();
                Some(cim_core::tokenizer::tokenizer_arch_name(&d, cfg.tokenizer_image_size))
            });
            (path, a.image_size.or(Some(cfg.tokenizer_image_size)), a.data.clone().or(Some(cfg.data)), arch)
        }
        (None, None) => return Err("name the tokenizer: --tokenizer FILE or --checkpoint RUN".into()),
    };
    let tok = visual::tokenizer_from_file(&b, &path, arch.as_deref(), size).map_err(s)?;
    let data = data.unwrap_or_else(|| PathBuf::from(FASHION_MNIST_DIR));
    let ds = open_images(&data)?;
    let sz = tok.image_size;
    let shown = visual::load_images(&b, &ds, a.start, a.n, sz, sz).map_err(s)?;
    let usage = visual::load_images(&b, &ds, 0, a.usage_images, sz, sz).map_err(s)?;
    let name = cim_core::tokenizer::tokenizer_arch_name(&tok.cfg, sz);
    let title = format!("{} ({name}, {sz} px): originals and reconstructions from the argmax codes", path.display());
    let picture = visual::tokenizer_picture(&b, &tok, &shown.enhancer, &usage.enhancer, a.pairs, a.scale, Some(&title))
        .map_err(s)?;
    visual::save_png(&a.out, &picture.image).map_err(s)?;
    let st = picture.stats;
    Ok(wrote(
        &a.out,
        &picture.image,
        &format!(
            "{} images of {sz} px beside their reconstructions from {}; over {} images: {} of {} codes used, \
             perplexity {:.1}, reconstruction MSE {:.4}",
            shown.len,
            path.display(),
            st.images,
            st.codes_used,
            st.vocab,
            st.perplexity,
            st.recon_mse
        ),
    ))
}

/// The size of a grid of `rows` images of `side` px under `cols` labels with a title,
/// at the automatic scale (for tests and scripts).
pub fn expected_size(cols: u32, rows: u32, side: u32) -> (u32, u32) {
    let c = side * grid::auto_scale(side);
    grid::grid_size(cols, rows, c, c, true)
}
