//! Judging a trained tokenizer (feature `std`): open a tokenizer file, encode images to
//! token maps, decode the maps back to pixels, and measure the reconstruction error and
//! codebook usage (what `cim tokenizer roundtrip` reports).

use super::train::{CodebookStats, Tokenizer};
use super::OP;
use crate::arch::{ArchKind, ArchSpec};
use crate::backend::Backend;
use crate::checkpoint;
use crate::error::{invalid, Error, Result};
use crate::models::dvae::{map_pixels, reconstruct};
use crate::ops;
use crate::tensor::Tensor;
use std::path::Path;

impl<B: Backend> Tokenizer<B> {
    /// Open a file written by [`super::save_tokenizer`]: the architecture and image size
    /// come from its `cim.encoder` metadata, then every tensor is loaded and checked.
    pub fn open(b: &B, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let meta = checkpoint::read_metadata(path)?;
        let not_a_tokenizer = |why: &str| Error::Invalid {
            op: OP,
            detail: format!("{} is not a tokenizer file ({why}); `cim tokenizer train` writes one", path.display()),
        };
        let enc = meta.get("cim.encoder").ok_or_else(|| not_a_tokenizer("no cim.encoder metadata"))?;
        let (cfg, img_size) = match ArchSpec::parse(enc)?.kind {
            ArchKind::DvaeEncoder { cfg, img_size } => (cfg, img_size),
            _ => return Err(not_a_tokenizer("cim.encoder is not a dVAE encoder")),
        };
        let mut tok = Tokenizer::new(b, cfg, img_size, 0)?;
        super::load_tokenizer(path, &mut tok.store, b)?;
        Ok(tok)
    }

    /// The argmax token map of images `x` `[n, 3, S, S]` in `[0, 1]`: `n·g·g` codes,
    /// row-major per image.
    pub fn encode(&self, b: &B, x: &Tensor<B>) -> Result<Vec<u32>> {
        self.check_images(x)?;
        let z = self.encoder.infer_logits_last(b, &self.store.params, &map_pixels(b, x)?)?;
        ops::argmax(b, &z)?.to_vec(b)
    }

    /// The images `[n, 3, S, S]` in `[0, 1]` that token maps (`n·g·g` codes) decode to.
    pub fn decode(&self, b: &B, tokens: &[u32]) -> Result<Tensor<B>> {
        let g = self.grid();
        let v = self.cfg.vocab_size;
        if tokens.is_empty() || !tokens.len().is_multiple_of(g * g) {
            return invalid(OP, format!("{} tokens are not whole {g}×{g} maps", tokens.len()));
        }
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= v) {
            return invalid(OP, format!("token {t} is outside the vocabulary of {v}"));
        }
        let ids = crate::tensor::IndexTensor::from_slice(b, &[tokens.len() / (g * g), g, g], tokens)?;
        reconstruct(b, &self.decoder.decode_tokens(b, &self.store.params, &ids)?)
    }
}

/// What [`roundtrip`] produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Roundtrip {
    /// `n·g·g` argmax codes.
    pub tokens: Vec<u32>,
    /// The reconstructions, `[n, 3, S, S]` in `[0, 1]`.
    pub reconstructions: Vec<f32>,
    /// Pixel MSE of each image.
    pub image_mse: Vec<f64>,
    /// How often each code was chosen.
    pub histogram: Vec<usize>,
    pub stats: CodebookStats,
}

/// Encode and decode images `x` `[n, 3, S, S]` in `[0, 1]`, with per-image errors and
/// the code histogram besides [`Tokenizer::evaluate`]'s statistics.
pub fn roundtrip<B: Backend>(b: &B, tok: &Tokenizer<B>, x: &Tensor<B>) -> Result<Roundtrip> {
    let tokens = tok.encode(b, x)?;
    let rec = tok.decode(b, &tokens)?;
    let stats = tok.evaluate(b, x)?;
    let (orig, rec) = (x.to_f64(b)?, rec.to_f64(b)?);
    let per = orig.len() / x.shape()[0];
    let image_mse = orig
        .chunks(per)
        .zip(rec.chunks(per))
        .map(|(a, r)| a.iter().zip(r).map(|(p, q)| (p - q) * (p - q)).sum::<f64>() / per as f64)
        .collect();
    let mut histogram = vec![0usize; tok.cfg.vocab_size];
    for &t in &tokens {
        histogram[t as usize] += 1;
    }
    Ok(Roundtrip { tokens, reconstructions: rec.iter().map(|&v| v as f32).collect(), image_mse, histogram, stats })
}
