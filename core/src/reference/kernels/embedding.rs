//! Row gather and scatter-add (embedding lookup and its gradient).

use crate::element::Element;
use alloc::vec::Vec;

/// `out[i, :] = table[ids[i], :]` with rows of width `d`.
pub fn gather_rows<T: Element>(d: usize, table: &[T], ids: &[u32], out: &mut [T]) {
    for (i, &id) in ids.iter().enumerate() {
        let src = id as usize * d;
        out[i * d..(i + 1) * d].copy_from_slice(&table[src..src + d]);
    }
}

/// `table[ids[i], :] += src[i, :]` (accumulates; repeated ids sum, in `f64`, with one
/// rounding per table element).
pub fn scatter_add_rows<T: Element>(d: usize, ids: &[u32], src: &[T], table: &mut [T]) {
    let mut acc: Vec<f64> = table.iter().map(|v| v.f64()).collect();
    for (i, &id) in ids.iter().enumerate() {
        let dst = id as usize * d;
        for j in 0..d {
            acc[dst + j] += src[i * d + j].f64();
        }
    }
    for (t, a) in table.iter_mut().zip(&acc) {
        *t = T::of(*a);
    }
}
