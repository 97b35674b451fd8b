//! Max and average pooling, global average pooling, nearest upsampling.

use crate::backend::Pool2d;
use crate::element::Element;
use alloc::vec;

/// The in-image input coordinates `lo..hi` covered by the window of output position
/// `o` along an axis of length `len` (window start `o · stride - pad`, size `k`).
fn window(o: usize, k: usize, stride: usize, pad: usize, len: usize) -> (usize, usize) {
    let start = o * stride; // in padded coordinates
    let end = start + k;
    let lo = start.saturating_sub(pad).min(len);
    let hi = end.saturating_sub(pad).min(len);
    (lo, hi)
}

/// Max pooling; padding counts as `-inf`. `idx` receives the flat index `ih · w + iw`
/// of the first maximum in row-major window order (NaN counts as the maximum). A
/// window with no in-image pixel outputs `-inf` with index 0.
pub fn max_pool2d<T: Element>(p: &Pool2d, x: &[T], y: &mut [T], idx: &mut [u32]) {
    let (oh_n, ow_n) = (p.out_h(), p.out_w());
    let plane = p.h * p.w;
    for nc in 0..p.n * p.c {
        let xp = &x[nc * plane..(nc + 1) * plane];
        for oh in 0..oh_n {
            let (h0, h1) = window(oh, p.kh, p.stride.0, p.pad.0, p.h);
            for ow in 0..ow_n {
                let (w0, w1) = window(ow, p.kw, p.stride.1, p.pad.1, p.w);
                let mut best = f64::NEG_INFINITY;
                let mut best_i = 0usize;
                let mut found = false;
                for ih in h0..h1 {
                    for iw in w0..w1 {
                        let v = xp[ih * p.w + iw].f64();
                        if !found || super::beats(v, best) {
                            best = v;
                            best_i = ih * p.w + iw;
                            found = true;
                        }
                    }
                }
                let o = (nc * oh_n + oh) * ow_n + ow;
                y[o] = T::of(best);
                idx[o] = best_i as u32;
            }
        }
    }
}

/// `dx = 0`, then `dx[plane, idx[o]] += dy[o]` for every output `o` (overlapping windows
/// sum). Outputs whose window had no in-image pixel route nothing.
pub fn max_pool2d_backward<T: Element>(p: &Pool2d, dy: &[T], idx: &[u32], dx: &mut [T]) {
    let (oh_n, ow_n) = (p.out_h(), p.out_w());
    let plane = p.h * p.w;
    let out_plane = oh_n * ow_n;
    let mut acc = vec![0.0f64; plane];
    for nc in 0..p.n * p.c {
        acc.iter_mut().for_each(|a| *a = 0.0);
        for oh in 0..oh_n {
            let (h0, h1) = window(oh, p.kh, p.stride.0, p.pad.0, p.h);
            for ow in 0..ow_n {
                let (w0, w1) = window(ow, p.kw, p.stride.1, p.pad.1, p.w);
                if h0 == h1 || w0 == w1 {
                    continue; // window entirely in padding
                }
                let o = nc * out_plane + oh * ow_n + ow;
                acc[idx[o] as usize] += dy[o].f64();
            }
        }
        for (d, a) in dx[nc * plane..(nc + 1) * plane].iter_mut().zip(&acc) {
            *d = T::of(*a);
        }
    }
}

/// The divisor of output window `(h0..h1) × (w0..w1)`.
fn divisor(p: &Pool2d, h0: usize, h1: usize, w0: usize, w1: usize) -> f64 {
    if p.count_include_pad {
        (p.kh * p.kw) as f64
    } else {
        ((h1 - h0) * (w1 - w0)) as f64
    }
}

/// Average pooling with zero padding; the divisor is `kh · kw` when
/// `count_include_pad`, else the number of in-image pixels of the window (an empty
/// window then outputs 0).
pub fn avg_pool2d<T: Element>(p: &Pool2d, x: &[T], y: &mut [T]) {
    let (oh_n, ow_n) = (p.out_h(), p.out_w());
    let plane = p.h * p.w;
    for nc in 0..p.n * p.c {
        let xp = &x[nc * plane..(nc + 1) * plane];
        for oh in 0..oh_n {
            let (h0, h1) = window(oh, p.kh, p.stride.0, p.pad.0, p.h);
            for ow in 0..ow_n {
                let (w0, w1) = window(ow, p.kw, p.stride.1, p.pad.1, p.w);
                let mut s = 0.0f64;
                for ih in h0..h1 {
                    for iw in w0..w1 {
                        s += xp[ih * p.w + iw].f64();
                    }
                }
                let div = divisor(p, h0, h1, w0, w1);
                let v = if div > 0.0 { s / div } else { 0.0 };
                y[(nc * oh_n + oh) * ow_n + ow] = T::of(v);
            }
        }
    }
}

/// The exact adjoint of [`avg_pool2d`]: each `dy[o] / divisor(o)` is added to every
/// in-image pixel of window `o` (overwrites `dx`).
pub fn avg_pool2d_backward<T: Element>(p: &Pool2d, dy: &[T], dx: &mut [T]) {
    let (oh_n, ow_n) = (p.out_h(), p.out_w());
    let plane = p.h * p.w;
    let mut acc = vec![0.0f64; plane];
    for nc in 0..p.n * p.c {
        acc.iter_mut().for_each(|a| *a = 0.0);
        for oh in 0..oh_n {
            let (h0, h1) = window(oh, p.kh, p.stride.0, p.pad.0, p.h);
            for ow in 0..ow_n {
                let (w0, w1) = window(ow, p.kw, p.stride.1, p.pad.1, p.w);
                let div = divisor(p, h0, h1, w0, w1);
                if div == 0.0 {
                    continue;
                }
                let g = dy[(nc * oh_n + oh) * ow_n + ow].f64() / div;
                for ih in h0..h1 {
                    for iw in w0..w1 {
                        acc[ih * p.w + iw] += g;
                    }
                }
            }
        }
        for (d, a) in dx[nc * plane..(nc + 1) * plane].iter_mut().zip(&acc) {
            *d = T::of(*a);
        }
    }
}

/// `y[i] = mean(x[i, :])` over `[nc, hw]` (0 when `hw == 0`).
pub fn global_avg_pool<T: Element>(nc: usize, hw: usize, x: &[T], y: &mut [T]) {
    for i in 0..nc {
        let s = super::sum_f64(x[i * hw..(i + 1) * hw].iter().map(|v| v.f64()));
        y[i] = T::of(if hw > 0 { s / hw as f64 } else { 0.0 });
    }
}

/// `dx[i, :] = dy[i] / hw` (overwrites).
pub fn global_avg_pool_backward<T: Element>(nc: usize, hw: usize, dy: &[T], dx: &mut [T]) {
    for i in 0..nc {
        let g = T::of(dy[i].f64() / hw as f64);
        for d in &mut dx[i * hw..(i + 1) * hw] {
            *d = g;
        }
    }
}

/// `y[c, i, j] = x[c, i / s, j / s]` for `y: [nc, h·s, w·s]`.
pub fn upsample_nearest<T: Element>(nc: usize, h: usize, w: usize, scale: usize, x: &[T], y: &mut [T]) {
    let (oh, ow) = (h * scale, w * scale);
    for c in 0..nc {
        for i in 0..oh {
            for j in 0..ow {
                y[(c * oh + i) * ow + j] = x[(c * h + i / scale) * w + j / scale];
            }
        }
    }
}

/// `dx[c, i, j] = Σ_{a, b < s} dy[c, i·s + a, j·s + b]` (overwrites).
pub fn upsample_nearest_backward<T: Element>(nc: usize, h: usize, w: usize, scale: usize, dy: &[T], dx: &mut [T]) {
    let (oh, ow) = (h * scale, w * scale);
    for c in 0..nc {
        for i in 0..h {
            for j in 0..w {
                let mut s = 0.0f64;
                for a in 0..scale {
                    for b in 0..scale {
                        s += dy[(c * oh + i * scale + a) * ow + j * scale + b].f64();
                    }
                }
                dx[(c * h + i) * w + j] = T::of(s);
            }
        }
    }
}
