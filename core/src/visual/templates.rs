//! The paper's Figure 4: normalizations as learning templates for RESPIX. Each row: the
//! original, its non-overlapping `p×p` patch normalization (MAE's `norm_pix_loss`) and
//! its sliding `k×k` window normalization (the paper's), computed exactly as the RESPIX
//! targets are ([`crate::cim::target`]) on the input normalized by `mean` / `std`, and
//! shown as signed maps (0 grey, ±[`super::enhance::SIGNED_RANGE`] black / white).

use super::enhance::SIGNED_RANGE;
use super::{err, tile, tile_signed, tiles, Grid};
use crate::backend::Backend;
use crate::cim::target::{normalize_image, patch_normalize, window_normalize};
use crate::cim::TARGET_EPS;
use crate::error::Result;
use crate::tensor::Tensor;

/// The grid of Figure 4 for `images: [n, 3, S, S]` (pixels in `[0, 1]`), patch side
/// `patch`, window side `window`, input normalization `mean` / `std`.
pub fn templates_grid<B: Backend>(
    b: &B,
    images: &Tensor<B>,
    patch: usize,
    window: usize,
    mean: &[f64; 3],
    std: &[f64; 3],
) -> Result<Grid> {
    let s = images.shape();
    if s.len() != 4 || s[1] != 3 || s[2] != s[3] {
        return Err(err(format!("images {s:?} are not [n, 3, S, S]")));
    }
    if patch == 0 || !s[2].is_multiple_of(patch) {
        return Err(err(format!("the patch side {patch} does not divide the image side {}", s[2])));
    }
    if window == 0 || window > s[2] {
        return Err(err(format!("the window side {window} must be between 1 and the image side {}", s[2])));
    }
    let x = normalize_image(b, images, mean, std)?;
    let signed = |v: &[f64], h, w| tile_signed(v, h, w, SIGNED_RANGE);
    let orig = tiles(b, images, tile)?;
    let by_patch = tiles(b, &patch_normalize(b, &x, patch, TARGET_EPS)?, signed)?;
    let by_window = tiles(b, &window_normalize(b, &x, window, TARGET_EPS)?, signed)?;
    let mut grid =
        Grid::new(["original".to_string(), format!("patch {patch}×{patch}"), format!("sliding {window}×{window}")]);
    for ((o, p), w) in orig.into_iter().zip(by_patch).zip(by_window) {
        grid.push_row(vec![o, p, w])?;
    }
    Ok(grid)
}
