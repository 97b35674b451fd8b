//! Gumbel-max sampling, uniform noise and argmax.

use crate::element::Element;
use crate::rng;

/// Index of the first maximum of `vals` (NaN counts as the maximum, so the first NaN
/// wins); 0 for an empty sequence.
fn first_max<I: Iterator<Item = f64>>(vals: I) -> u32 {
    let mut best = f64::NEG_INFINITY;
    let mut best_i = 0u32;
    for (i, v) in vals.enumerate() {
        if i == 0 || super::beats(v, best) {
            best = v;
            best_i = i as u32;
        }
    }
    best_i
}

/// `out[r] = argmax_c (logits[r, c] / temperature + g)` with Gumbel noise
/// `g = rng::gumbel(seed, offset + r · classes + c)`. The score is computed in `T`
/// (`logits / T::of(temperature) + T::of(g)`), as every backend does, so that all
/// backends select the same class; the first maximum wins.
pub fn sample_categorical<T: Element>(
    rows: usize,
    classes: usize,
    temperature: f64,
    seed: u64,
    offset: u64,
    logits: &[T],
    out: &mut [u32],
) {
    let temp = T::of(temperature);
    for r in 0..rows {
        let row = &logits[r * classes..(r + 1) * classes];
        let base = offset.wrapping_add((r as u64).wrapping_mul(classes as u64));
        out[r] = first_max(row.iter().enumerate().map(|(c, &l)| {
            let g = rng::gumbel(seed, base.wrapping_add(c as u64));
            (l / temp + T::of(g as f64)).f64()
        }));
    }
}

/// `out[i] = uniform(seed, offset + i)` in `[0, 1)`.
pub fn rand_uniform<T: Element>(seed: u64, offset: u64, out: &mut [T]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = T::of(rng::uniform(seed, offset.wrapping_add(i as u64)) as f64);
    }
}

/// Index of the first maximum of each row of `[rows, d]` (NaN counts as the maximum;
/// 0 for an empty row).
pub fn argmax<T: Element>(rows: usize, d: usize, x: &[T], out: &mut [u32]) {
    for r in 0..rows {
        out[r] = first_max(x[r * d..(r + 1) * d].iter().map(|v| v.f64()));
    }
}
