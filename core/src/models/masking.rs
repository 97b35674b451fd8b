//! Mask generators for the generator's BEiT, on the host and deterministic under a seed
//! ([`Stream`]). A mask is one byte per patch in row-major grid order (the order of the
//! ViT's patch tokens): 1 = masked (replaced by the mask token), 0 = visible.
//!
//! - [`RandomMasking`]: exactly `k` of `n` patches, uniformly, with `k` drawn per image
//!   uniformly from `[k_min, k_max]` (CIM, A.3/A.4: 100 to 120 of 196 patches;
//!   [`scaled_range`] keeps that fraction on other grids).
//! - [`BlockMasking`]: BEiT's block-wise `MaskingGenerator`: rectangles of at least
//!   `min_num_patches` patches (BEiT: 16 on 14×14) with a log-uniform aspect ratio in
//!   `[0.3, 1/0.3]`, added until the target count is reached, 10 attempts per block. A
//!   block never adds more than the patches still missing, so the count never exceeds
//!   the target; like BEiT, the generator stops early (a little short of the target)
//!   when 10 attempts in a row add nothing.

use crate::element::Element;
use crate::error::{invalid, Result};
use crate::rng::{self, Stream};
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

const OP: &str = "masking";

/// The paper's masked count, 100 to 120 of 196 patches (51–61 %), scaled to `n`
/// patches (rounded to nearest): `(100, 120)` for `n = 196`, `(33, 39)` for `n = 64`.
pub fn scaled_range(n: usize) -> (usize, usize) {
    let round = |num: usize| (2 * n * num + 196) / 392;
    (round(100).min(n), round(120).min(n))
}

/// A uniform value in `[lo, hi]` (or `[hi, lo]`), like Python's `random.uniform`.
fn uniform(s: &mut Stream, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * s.next_f32() as f64
}

/// A uniform integer in `[lo, hi]`, like Python's `random.randint`.
fn randint(s: &mut Stream, lo: usize, hi: usize) -> usize {
    lo + s.below((hi - lo + 1) as u32) as usize
}

/// Random masking of exactly `k` of `num_patches` patches, `k ~ U{k_min, …, k_max}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RandomMasking {
    pub num_patches: usize,
    pub k_min: usize,
    pub k_max: usize,
}

impl RandomMasking {
    pub fn new(num_patches: usize, k_min: usize, k_max: usize) -> Result<Self> {
        if num_patches == 0 || u32::try_from(num_patches).is_err() {
            return invalid(OP, format!("{num_patches} patches"));
        }
        if k_min > k_max || k_max > num_patches {
            return invalid(OP, format!("masked range {k_min}..={k_max} does not fit 0..={num_patches}"));
        }
        Ok(RandomMasking { num_patches, k_min, k_max })
    }

    /// The paper's setting scaled to `num_patches` ([`scaled_range`]).
    pub fn paper(num_patches: usize) -> Result<Self> {
        let (lo, hi) = scaled_range(num_patches);
        Self::new(num_patches, lo, hi)
    }

    /// One mask: `k` draws of a partial Fisher–Yates shuffle.
    pub fn sample(&self, s: &mut Stream) -> Vec<u8> {
        let n = self.num_patches;
        let k = randint(s, self.k_min, self.k_max);
        let mut order: Vec<u32> = (0..n as u32).collect();
        let mut mask = vec![0u8; n];
        for i in 0..k {
            let j = i + s.below((n - i) as u32) as usize;
            order.swap(i, j);
            mask[order[i] as usize] = 1;
        }
        mask
    }
}

/// BEiT's block-wise masking on a `height × width` grid. See the module docs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockMasking {
    pub height: usize,
    pub width: usize,
    /// The target count.
    pub num_masking_patches: usize,
    /// Smallest block area drawn (BEiT: 16).
    pub min_num_patches: usize,
    /// Largest block area drawn (BEiT: the target).
    pub max_num_patches: usize,
    pub min_aspect: f64,
    pub max_aspect: f64,
}

impl BlockMasking {
    /// BEiT's settings for `num_masking_patches` of a `height × width` grid: aspect
    /// ratios in `[0.3, 1/0.3]`, blocks of at least 16 patches on a 14×14 grid, scaled
    /// to the grid's size on others (`max(1, round(16 · n / 196))`, e.g. 5 on 8×8), so
    /// that blocks cover the same fraction of the image.
    pub fn new(height: usize, width: usize, num_masking_patches: usize) -> Result<Self> {
        let n = height * width;
        let min_num_patches = ((32 * n + 196) / 392).clamp(1, 16);
        Self::with(height, width, num_masking_patches, min_num_patches, num_masking_patches, 0.3, 1.0 / 0.3)
    }

    /// All settings explicit.
    pub fn with(
        height: usize,
        width: usize,
        num_masking_patches: usize,
        min_num_patches: usize,
        max_num_patches: usize,
        min_aspect: f64,
        max_aspect: f64,
    ) -> Result<Self> {
        let n = height * width;
        if n == 0 || u32::try_from(n).is_err() {
            return invalid(OP, format!("grid {height}×{width}"));
        }
        if num_masking_patches > n {
            return invalid(OP, format!("target {num_masking_patches} exceeds the {n} patches"));
        }
        if min_num_patches == 0 || max_num_patches == 0 {
            return invalid(OP, "block areas must be positive");
        }
        if !(min_aspect > 0.0 && max_aspect >= min_aspect && max_aspect.is_finite()) {
            return invalid(OP, format!("aspect range [{min_aspect}, {max_aspect}]"));
        }
        Ok(BlockMasking {
            height,
            width,
            num_masking_patches,
            min_num_patches,
            max_num_patches,
            min_aspect,
            max_aspect,
        })
    }

    pub fn num_patches(&self) -> usize {
        self.height * self.width
    }

    /// One mask (BEiT's `MaskingGenerator.__call__`).
    pub fn sample(&self, s: &mut Stream) -> Vec<u8> {
        let mut mask = vec![0u8; self.num_patches()];
        let mut count = 0;
        while count < self.num_masking_patches {
            let max_mask_patches = (self.num_masking_patches - count).min(self.max_num_patches);
            let delta = self.block(s, &mut mask, max_mask_patches);
            if delta == 0 {
                break;
            }
            count += delta;
        }
        mask
    }

    /// Add one block that masks between 1 and `max_mask_patches` new patches (BEiT's
    /// `_mask`); returns how many it added (0 after 10 failed attempts).
    fn block(&self, s: &mut Stream, mask: &mut [u8], max_mask_patches: usize) -> usize {
        let (log_lo, log_hi) = (libm::log(self.min_aspect), libm::log(self.max_aspect));
        for _ in 0..10 {
            let target_area = uniform(s, self.min_num_patches as f64, max_mask_patches as f64);
            let aspect = libm::exp(uniform(s, log_lo, log_hi));
            // Python's round() rounds half to even, as `rint` does.
            let h = libm::rint(libm::sqrt(target_area * aspect)) as usize;
            let w = libm::rint(libm::sqrt(target_area / aspect)) as usize;
            if w < self.width && h < self.height {
                let top = randint(s, 0, self.height - h);
                let left = randint(s, 0, self.width - w);
                let rows = top..top + h;
                let at = |i: usize, j: usize| i * self.width + j;
                let masked: usize =
                    rows.clone().map(|i| (left..left + w).filter(|&j| mask[at(i, j)] != 0).count()).sum();
                let new = h * w - masked;
                if 0 < new && new <= max_mask_patches {
                    for i in rows {
                        for j in left..left + w {
                            mask[at(i, j)] = 1;
                        }
                    }
                    return new;
                }
            }
        }
        0
    }
}

/// A mask generator.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Masking {
    Random(RandomMasking),
    Block(BlockMasking),
}

impl Masking {
    pub fn num_patches(&self) -> usize {
        match self {
            Masking::Random(r) => r.num_patches,
            Masking::Block(b) => b.num_patches(),
        }
    }

    /// One mask of [`Masking::num_patches`] bytes.
    pub fn sample(&self, s: &mut Stream) -> Vec<u8> {
        match self {
            Masking::Random(r) => r.sample(s),
            Masking::Block(b) => b.sample(s),
        }
    }

    /// `batch` masks in a row, `[batch, num_patches]`.
    pub fn sample_batch(&self, s: &mut Stream, batch: usize) -> Vec<u8> {
        (0..batch).flat_map(|_| self.sample(s)).collect()
    }

    /// The mask of image `index` under `seed`, from its own stream: independent of the
    /// batch layout and the order in which images are drawn.
    pub fn sample_for(&self, seed: u64, index: u64) -> Vec<u8> {
        let sub = ((rng::bits(seed, 2 * index) as u64) << 32) | rng::bits(seed, 2 * index + 1) as u64;
        self.sample(&mut Stream::new(sub))
    }
}

/// A mask as backend elements (0.0 / 1.0), ready to upload as a `[batch, N]` tensor.
pub fn mask_values<E: Element>(mask: &[u8]) -> Vec<E> {
    mask.iter().map(|&m| E::of(if m != 0 { 1.0 } else { 0.0 })).collect()
}

/// A mask as `f32` (0.0 / 1.0).
pub fn mask_to_f32(mask: &[u8]) -> Vec<f32> {
    mask_values(mask)
}
