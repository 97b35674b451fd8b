//! The paper's Figure 3: what the enhancer makes of a corrupted image. Each row: the
//! original, the masked image, one corrupted image (sample key `(input.seed,
//! input.step)`), then
//! - RESPIX: the output mapped back to pixels with the *original's* window (or patch)
//!   statistics and the input mean/std (§A.2: this injects the original's statistics,
//!   as the paper's Figure 3a does), the raw normalized output (no injection, Figure
//!   3b's counterpart) and the target it regresses, both as signed maps (0 grey, ±3
//!   black/white; Fashion-MNIST's flat background is 0 in both);
//! - REVDET: the predicted probability that a token was replaced (`p(replaced)`), as
//!   a red tint over the corrupted image, beside the truly replaced tokens.
//!
//! The enhancer runs in evaluation mode ([`CimModel::enhancer_infer`]: batch norms with
//! their running statistics).

use super::{grey_masked, tile, tile_signed, tiles, tint_patches, Grid};
use crate::backend::Backend;
use crate::cim::target::{denormalize_image, normalize_image, respix_inverse, respix_target};
use crate::cim::{CimModel, Objective, StepInput};
use crate::error::Result;
use crate::params::ParamStore;

/// The range of the signed maps: `±SIGNED_RANGE` is black / white.
pub const SIGNED_RANGE: f64 = 3.0;

/// How well the enhancer did on the pictured images.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EnhanceStats {
    /// The RESPIX loss (L1 + L2 against the target, as in training).
    Respix { loss: f64 },
    /// REVDET: accuracy of `p > 0.5` over all tokens, and the replaced fraction.
    Revdet { accuracy: f64, replaced_frac: f64 },
}

/// The grid of Figure 3 for the images and masks of `input`. See the module docs.
pub fn enhance_grid<B: Backend>(
    b: &B,
    model: &CimModel,
    store: &ParamStore<B>,
    tokenizer: &ParamStore<B>,
    input: &StepInput<'_, B>,
) -> Result<(Grid, EnhanceStats)> {
    let cfg = &model.cfg;
    let (size, patch, l) = (cfg.image_size, cfg.enhancer.patch_size(), cfg.num_patches());
    let (n, _) = model.check_views(input.enhancer_view, input.tokenizer_view, input.masks)?;
    let masks = input.masks;
    let c = model.corrupt(b, store, tokenizer, input)?;
    let xc = normalize_image(b, &c.image, &cfg.mean, &cfg.std)?;
    let out = model.enhancer_infer(b, &store.params, &store.state, &xc)?;
    drop(xc);
    let originals = input.enhancer_view.to_f64(b)?;
    let corrupted = c.image.to_f64(b)?;
    let per = 3 * size * size;
    let base = |i: usize| -> Result<Vec<_>> {
        let orig = &originals[i * per..(i + 1) * per];
        let mask = &masks[i * l..(i + 1) * l];
        Ok(vec![
            tile(orig, size, size)?,
            tile(&grey_masked(orig, size, patch, mask), size, size)?,
            tile(&corrupted[i * per..(i + 1) * per], size, size)?,
        ])
    };
    let mut cols = vec!["original", "masked", "corrupted"];
    match cfg.objective {
        Objective::Respix { norm } => {
            cols.extend(["output", "raw output", "target"]);
            let x = normalize_image(b, input.enhancer_view, &cfg.mean, &cfg.std)?;
            let target = respix_target(b, &x, norm, cfg.target_eps)?;
            let pixels =
                denormalize_image(b, &respix_inverse(b, &out, &x, norm, cfg.target_eps)?, &cfg.mean, &cfg.std)?;
            let signed = |v: &[f64], h, w| tile_signed(v, h, w, SIGNED_RANGE);
            let (pix, raw, tgt) = (tiles(b, &pixels, tile)?, tiles(b, &out, signed)?, tiles(b, &target, signed)?);
            let (o, t) = (out.to_f64(b)?, target.to_f64(b)?);
            let loss = o.iter().zip(&t).map(|(o, t)| (o - t).abs() + (o - t) * (o - t)).sum::<f64>() / o.len() as f64;
            let mut grid = Grid::new(cols);
            for (i, ((p, r), t)) in pix.into_iter().zip(raw).zip(tgt).enumerate() {
                let mut row = base(i)?;
                row.extend([p, r, t]);
                grid.push_row(row)?;
            }
            Ok((grid, EnhanceStats::Respix { loss }))
        }
        Objective::Revdet => {
            cols.extend(["p(replaced)", "replaced"]);
            let logits = out.to_f64(b)?;
            if logits.len() != n * l {
                return Err(super::err(format!("the REVDET head gave {:?}, not one logit per token", out.shape())));
            }
            let prob: Vec<f64> = logits.iter().map(|&z| 1.0 / (1.0 + (-z).exp())).collect();
            let truth: Vec<f64> =
                c.corrupted.iter().zip(&c.golden).map(|(c, g)| if c != g { 1.0 } else { 0.0 }).collect();
            let right = prob.iter().zip(&truth).filter(|&(p, t)| (*p > 0.5) == (*t > 0.5)).count();
            let mut grid = Grid::new(cols);
            for i in 0..n {
                let cor = &corrupted[i * per..(i + 1) * per];
                let mut row = base(i)?;
                row.push(tile(&tint_patches(cor, size, patch, &prob[i * l..(i + 1) * l]), size, size)?);
                row.push(tile(&tint_patches(cor, size, patch, &truth[i * l..(i + 1) * l]), size, size)?);
                grid.push_row(row)?;
            }
            let n = truth.len().max(1) as f64;
            Ok((grid, EnhanceStats::Revdet { accuracy: right as f64 / n, replaced_frac: c.replaced as f64 / n }))
        }
    }
}
