//! Training the dVAE tokenizer that CIM freezes (DALL-E's recipe plus the fixes that a
//! small vocabulary needs, see `DESIGN.md` §7).
//!
//! ```text
//! image x ∈ [0,1] ─ map_pixels ─ encoder ─ logits z [B, V, h, w] ─ permute ─ [B, h, w, V]
//!   hard  = one_hot(argmax(z + g))              g: Gumbel noise (counter-based RNG)
//!   soft  = softmax((z + g) / τ)                τ annealed τ₀ → τ₁ exponentially
//!   codes = hard (forward), ∂/∂z through soft (backward: straight-through estimator)
//!   codes ─ permute ─ [B, V, h, w] ─ decoder ─ out [B, 2c, H, W]
//! ```
//! Loss, all terms averaged (`q = softmax(z)`, the noiseless code distribution of a token,
//! `q̄` its mean over every token of the batch):
//! - reconstruction ([`Recon::L2`], the default): `mean (sigmoid(out[:, :c]) − map_pixels(x))²`,
//!   i.e. the MSE of the decoder means against the *mapped* pixels (the reconstruction is
//!   [`crate::models::dvae::reconstruct`] = `unmap_pixels(sigmoid(out[:, :c]))`, so the
//!   pixel-space error is this one divided by `0.8²`, up to clamping); or
//!   [`Recon::LogitLaplace`], DALL-E's negative log-likelihood of the mapped pixels
//!   under the logit-Laplace distribution (means `out[:, :c]`, log-scales `out[:, c:]`);
//! - `kl_weight · KL(q ‖ uniform)` per token (DALL-E's prior term; pushes towards spread);
//! - `usage_weight · KL(q̄ ‖ uniform)` (codebook usage: a diverse batch);
//! - `entropy_weight · H(q)` per token (sharp codes).
//!
//! Without the usage term a vocabulary of 512 collapses to a handful of codes; without
//! the entropy penalty each token spreads its mass over many interchangeable codes,
//! which makes "a replaced token" meaningless. [`CodebookStats`] reports codes used,
//! perplexity and sharpness so a user sees either failure.
//!
//! The trained encoder and decoder live in one [`crate::params::ParamStore`] under the
//! prefixes of CIM's tokenizer table (`encoder.` / `decoder.`, [`crate::cim::ENCODER`],
//! [`crate::cim::DECODER`]); [`save_tokenizer`] writes both into one safetensors file
//! that `checkpoint::load_into(path, &mut tok, b, "")` (or [`load_tokenizer`]) loads
//! into the tokenizer store of a [`crate::cim::CimModel`].

#[cfg(feature = "std")]
pub mod roundtrip;
#[cfg(test)]
mod tests;
pub mod train;

#[cfg(feature = "std")]
pub use roundtrip::{roundtrip, Roundtrip};
pub use train::*;

use crate::arch::{ArchKind, ArchSpec};
use crate::error::{invalid, Result};
use crate::models::dvae::DvaeConfig;
use alloc::format;
use alloc::string::{String, ToString};

pub(crate) const OP: &str = "tokenizer";

/// The reconstruction loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Recon {
    /// MSE between `sigmoid(means)` and the mapped pixels (default: simple and robust).
    #[default]
    L2,
    /// DALL-E's logit-Laplace negative log-likelihood (means and log-scales).
    LogitLaplace,
}

impl Recon {
    /// `l2` or `logit-laplace`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "l2" | "mse" => Ok(Recon::L2),
            "logit-laplace" | "logit_laplace" | "laplace" => Ok(Recon::LogitLaplace),
            _ => invalid(OP, format!("unknown reconstruction loss {s:?} (l2, logit-laplace)")),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Recon::L2 => "l2",
            Recon::LogitLaplace => "logit-laplace",
        }
    }
}

/// The dVAE configuration a tokenizer name stands for: `dvae_small`
/// ([`DvaeConfig::small`]), `dalle` ([`DvaeConfig::dalle`]), or any `dvae_encoder` /
/// `dvae_decoder` registry name or serialized configuration of [`crate::arch`] (e.g.
/// `dvae_encoder(groups=2,n_hid=32,vocab=256)`).
pub fn tokenizer_config(name: &str) -> Result<DvaeConfig> {
    match name {
        "dvae_small" => Ok(DvaeConfig::small()),
        "dalle" | "dall_e" => Ok(DvaeConfig::dalle()),
        _ => match ArchSpec::parse(name) {
            Ok(ArchSpec { kind: ArchKind::DvaeEncoder { cfg, .. } | ArchKind::DvaeDecoder { cfg, .. } }) => Ok(cfg),
            Ok(spec) => invalid(OP, format!("{name:?} is a {}, not a dVAE", spec.family())),
            Err(e) => invalid(
                OP,
                format!("unknown tokenizer architecture {name:?} (dvae_small, dalle, or a dvae_encoder(...) configuration): {e}"),
            ),
        },
    }
}

/// The name a tokenizer checkpoint records as `cim.arch`: `dvae_small`, `dalle`, or the
/// serialized encoder configuration.
pub fn tokenizer_arch_name(cfg: &DvaeConfig, image_size: usize) -> String {
    if *cfg == DvaeConfig::small() {
        "dvae_small".to_string()
    } else if *cfg == DvaeConfig::dalle() {
        "dalle".to_string()
    } else {
        ArchSpec { kind: ArchKind::DvaeEncoder { cfg: *cfg, img_size: image_size } }.serialize()
    }
}
