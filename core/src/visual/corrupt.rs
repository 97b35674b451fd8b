//! The paper's Figure 2: for each image a row with the original, the masked image
//! (masked patches grey), the dVAE's reconstruction of its golden tokens (what the
//! corruption starts from: nothing replaced) and several corrupted images sampled from
//! the generator with the same mask ([`CimModel::corrupt`], the training step's path).
//!
//! Sample `j` draws its replacement tokens with the key of `(input.seed, input.step +
//! j)`, so a picture is the same for the same input and weights.

use super::{grey_masked, tile, tiles, Grid};
use crate::backend::Backend;
use crate::cim::{CimModel, StepInput};
use crate::error::Result;
use crate::params::ParamStore;

/// What the corrupted samples of a picture replaced.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CorruptStats {
    /// Masked patches over all patches.
    pub masked_frac: f64,
    /// Tokens that differ from the golden ones over all tokens, mean over samples.
    pub replaced_frac: f64,
}

/// The grid of Figure 2 for the images and masks of `input` with `samples` corrupted
/// images per row. See the module docs.
pub fn corrupt_grid<B: Backend>(
    b: &B,
    model: &CimModel,
    store: &ParamStore<B>,
    tokenizer: &ParamStore<B>,
    input: &StepInput<'_, B>,
    samples: usize,
) -> Result<(Grid, CorruptStats)> {
    let cfg = &model.cfg;
    let (size, patch, l) = (cfg.image_size, cfg.enhancer.patch_size(), cfg.num_patches());
    let (n, _) = model.check_views(input.enhancer_view, input.tokenizer_view, input.masks)?;
    let masks = input.masks;
    let mut cols = vec!["original".to_string(), "masked".to_string(), "dVAE recon".to_string()];
    cols.extend((1..=samples).map(|j| format!("sample {j}")));
    let mut per_image: Vec<Vec<_>> = Vec::new();
    let mut replaced = 0usize;
    let mut golden = Vec::new();
    for j in 0..samples.max(1) {
        let draw = StepInput { step: input.step.wrapping_add(j as u64), ..*input };
        let c = model.corrupt(b, store, tokenizer, &draw)?;
        if j == 0 {
            golden = c.golden;
        }
        if j < samples {
            replaced += c.replaced;
            per_image.push(tiles(b, &c.image, tile)?);
        }
    }
    let originals = input.enhancer_view.to_f64(b)?;
    let recon = tiles(b, &model.decode_image(b, tokenizer, &golden)?, tile)?;
    let mut grid = Grid::new(cols);
    let per = 3 * size * size;
    for (i, (orig, rec)) in originals.chunks_exact(per).zip(recon).enumerate() {
        let mask = &masks[i * l..(i + 1) * l];
        let mut row = vec![tile(orig, size, size)?, tile(&grey_masked(orig, size, patch, mask), size, size)?, rec];
        row.extend(per_image.iter().map(|s| s[i].clone()));
        grid.push_row(row)?;
    }
    let all = (n * l).max(1) as f64;
    let stats = CorruptStats {
        masked_frac: masks.iter().filter(|&&m| m != 0).count() as f64 / all,
        replaced_frac: if samples > 0 { replaced as f64 / (samples as f64 * all) } else { 0.0 },
    };
    Ok((grid, stats))
}
