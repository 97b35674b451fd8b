//! A dVAE tokenizer at a glance: originals beside their reconstructions from the argmax
//! codes (what CIM's corruption starts from), then the codebook usage over a larger set
//! of images as a histogram, with the statistics of [`Tokenizer::evaluate`] in its
//! caption.

use super::plot::usage_histogram;
use super::{err, stack_vertical, tile, tiles, Grid};
use crate::arch::{self, ArchKind};
use crate::backend::Backend;
use crate::checkpoint;
use crate::error::{Error, Result};
use crate::models::dvae::{map_pixels, reconstruct};
use crate::tensor::Tensor;
use crate::tokenizer::{load_tokenizer, tokenizer_config, CodebookStats, Tokenizer};
use image::{Rgb, RgbImage};
use std::path::Path;

/// Height of the histogram under the grid.
pub const HISTOGRAM_HEIGHT: u32 = 300;
/// The histogram is at least this wide (and as wide as the grid).
pub const HISTOGRAM_MIN_WIDTH: u32 = 480;

/// What [`tokenizer_picture`] made.
pub struct TokenizerPicture {
    pub image: RgbImage,
    /// Over the histogram's images.
    pub stats: CodebookStats,
    /// The grid alone (its size is the top part of the picture).
    pub grid_size: (u32, u32),
}

/// Originals `shown: [n, 3, S, S]` and their reconstructions, `pairs` pairs per row, over
/// the usage histogram of the codes of `usage: [m, 3, S, S]` (pixels in `[0, 1]`, `S` the
/// tokenizer's image size), upscaled by `scale` (0: automatic), under `title` where
/// given. The picture is `max(grid width, 480)` wide and the grid's height + 4 + 300
/// high.
pub fn tokenizer_picture<B: Backend>(
    b: &B,
    tok: &Tokenizer<B>,
    shown: &Tensor<B>,
    usage: &Tensor<B>,
    pairs: usize,
    scale: u32,
    title: Option<&str>,
) -> Result<TokenizerPicture> {
    if pairs == 0 {
        return Err(err("at least one pair per row"));
    }
    let params = &tok.store.params;
    let tokens = tok.encoder.encode_tokens(b, params, &map_pixels(b, shown)?)?;
    let rec = reconstruct(b, &tok.decoder.decode_tokens(b, params, &tokens)?)?;
    drop(tokens);
    let (orig, rec) = (tiles(b, shown, tile)?, tiles(b, &rec, tile)?);
    let mut cols = Vec::new();
    for _ in 0..pairs.min(orig.len()) {
        cols.extend(["original", "dVAE"]);
    }
    let mut grid = Grid::new(cols);
    grid.scale = scale;
    grid.title = title.map(str::to_string);
    let blank = RgbImage::from_pixel(orig[0].width(), orig[0].height(), Rgb([255, 255, 255]));
    let pairs = pairs.min(orig.len());
    for chunk in orig.into_iter().zip(rec).collect::<Vec<_>>().chunks(pairs) {
        let mut row: Vec<RgbImage> = chunk.iter().flat_map(|(o, r)| [o.clone(), r.clone()]).collect();
        row.resize(2 * pairs, blank.clone());
        grid.push_row(row)?;
    }
    let grid_img = grid.render()?;

    let stats = tok.evaluate(b, usage)?;
    let ids = tok.encoder.encode_tokens(b, params, &map_pixels(b, usage)?)?.to_vec(b)?;
    let mut counts = vec![0usize; tok.cfg.vocab_size];
    for &t in &ids {
        if let Some(c) = counts.get_mut(t as usize) {
            *c += 1;
        }
    }
    let caption = format!(
        "codes over {} images: {} of {} used, perplexity {:.1}, MSE {:.4}",
        stats.images, stats.codes_used, stats.vocab, stats.perplexity, stats.recon_mse
    );
    let hist = usage_histogram(&counts, &caption, grid_img.width().max(HISTOGRAM_MIN_WIDTH), HISTOGRAM_HEIGHT)?;
    let grid_size = grid_img.dimensions();
    Ok(TokenizerPicture { image: stack_vertical(&[grid_img, hist], 4), stats, grid_size })
}

/// Load the tokenizer file at `path`. Its dVAE is `arch` where given (a name of
/// [`tokenizer_config`]), else the file's `cim.encoder` metadata (written by
/// `cim tokenizer train` and `cim pretrain`); its image size is `image_size`, else the
/// metadata's, else 16.
pub fn tokenizer_from_file<B: Backend>(
    b: &B,
    path: &Path,
    arch: Option<&str>,
    image_size: Option<usize>,
) -> Result<Tokenizer<B>> {
    if !path.is_file() {
        return Err(err(format!("tokenizer {} does not exist", path.display())));
    }
    let meta = checkpoint::read_metadata(path)?;
    let from_meta = match meta.get("cim.encoder").map(|s| arch::by_name(s)) {
        Some(Ok(spec)) => match spec.kind {
            ArchKind::DvaeEncoder { cfg, img_size } => Some((cfg, img_size)),
            _ => None,
        },
        _ => None,
    };
    let (cfg, size) = match (arch, from_meta) {
        (Some(a), m) => (tokenizer_config(a)?, m.map_or(16, |m| m.1)),
        (None, Some(m)) => m,
        (None, None) => {
            return Err(err(format!(
                "tokenizer {} does not record its dVAE (no cim.encoder metadata): name it with --arch \
                 (dvae_small, dalle, or a dvae_encoder(...) configuration)",
                path.display()
            )))
        }
    };
    let size = image_size.unwrap_or(size);
    let d = cfg.downsample();
    if size == 0 || !size.is_multiple_of(d) {
        return Err(err(format!(
            "the tokenizer's image size {size} is not a positive multiple of its downsampling {d}"
        )));
    }
    let mut tok = Tokenizer::new(b, cfg, size, 0)?;
    load_tokenizer(path, &mut tok.store, b).map_err(|e| {
        let detail = match e {
            Error::Checkpoint { detail, .. } => detail,
            e => e.to_string(),
        };
        let detail = super::brief(&detail, 300);
        err(format!(
            "tokenizer {} does not fit a dVAE of {} groups, {} wide, {} codes: {detail}",
            path.display(),
            cfg.group_count,
            cfg.n_hid,
            cfg.vocab_size
        ))
    })?;
    Ok(tok)
}
