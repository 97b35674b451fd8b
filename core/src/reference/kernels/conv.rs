//! 2-D convolution (cross-correlation with zero padding) and its gradients.

use crate::backend::Conv2d;
use crate::element::Element;

/// The input coordinate that output position `o` with kernel tap `t` reads, if it lies
/// inside an input axis of length `len`: `o · stride + t - pad`.
fn in_coord(o: usize, t: usize, stride: usize, pad: usize, len: usize) -> Option<usize> {
    let pos = o * stride + t;
    if pos < pad || pos - pad >= len {
        None
    } else {
        Some(pos - pad)
    }
}

/// The output coordinate whose kernel tap `t` reads input coordinate `i`, if any:
/// the `o < out_len` with `o · stride + t = i + pad`.
fn out_coord(i: usize, t: usize, stride: usize, pad: usize, out_len: usize) -> Option<usize> {
    let pos = i + pad;
    if pos < t || !(pos - t).is_multiple_of(stride) {
        return None;
    }
    let o = (pos - t) / stride;
    if o < out_len {
        Some(o)
    } else {
        None
    }
}

/// `y[n, co, oh, ow] = bias[co] + Σ_{ci, ki, kj} x[n, ci, oh·sh + ki - ph, ow·sw + kj - pw] · w[co, ci, ki, kj]`.
pub fn conv2d<T: Element>(p: &Conv2d, x: &[T], w: &[T], bias: Option<&[T]>, y: &mut [T]) {
    let (oh_n, ow_n) = (p.out_h(), p.out_w());
    let (sh, sw) = p.stride;
    let (ph, pw) = p.pad;
    for n in 0..p.n {
        for co in 0..p.c_out {
            let b = bias.map_or(0.0, |b| b[co].f64());
            for oh in 0..oh_n {
                for ow in 0..ow_n {
                    let mut acc = 0.0f64;
                    for ci in 0..p.c_in {
                        for ki in 0..p.kh {
                            let Some(ih) = in_coord(oh, ki, sh, ph, p.h) else {
                                continue;
                            };
                            for kj in 0..p.kw {
                                let Some(iw) = in_coord(ow, kj, sw, pw, p.w) else {
                                    continue;
                                };
                                let xv = x[((n * p.c_in + ci) * p.h + ih) * p.w + iw];
                                let wv = w[((co * p.c_in + ci) * p.kh + ki) * p.kw + kj];
                                acc += xv.f64() * wv.f64();
                            }
                        }
                    }
                    y[((n * p.c_out + co) * oh_n + oh) * ow_n + ow] = T::of(acc + b);
                }
            }
        }
    }
}

/// `dx[n, ci, ih, iw] = Σ dy[n, co, oh, ow] · w[co, ci, ki, kj]` over the `(co, ki, kj)`
/// and output positions with `oh·sh + ki - ph = ih`, `ow·sw + kj - pw = iw` (overwrites).
pub fn conv2d_grad_input<T: Element>(p: &Conv2d, dy: &[T], w: &[T], dx: &mut [T]) {
    let (oh_n, ow_n) = (p.out_h(), p.out_w());
    let (sh, sw) = p.stride;
    let (ph, pw) = p.pad;
    for n in 0..p.n {
        for ci in 0..p.c_in {
            for ih in 0..p.h {
                for iw in 0..p.w {
                    let mut acc = 0.0f64;
                    for co in 0..p.c_out {
                        for ki in 0..p.kh {
                            let Some(oh) = out_coord(ih, ki, sh, ph, oh_n) else {
                                continue;
                            };
                            for kj in 0..p.kw {
                                let Some(ow) = out_coord(iw, kj, sw, pw, ow_n) else {
                                    continue;
                                };
                                let g = dy[((n * p.c_out + co) * oh_n + oh) * ow_n + ow];
                                let wv = w[((co * p.c_in + ci) * p.kh + ki) * p.kw + kj];
                                acc += g.f64() * wv.f64();
                            }
                        }
                    }
                    dx[((n * p.c_in + ci) * p.h + ih) * p.w + iw] = T::of(acc);
                }
            }
        }
    }
}

/// `dw[co, ci, ki, kj] += Σ_{n, oh, ow} x[n, ci, oh·sh + ki - ph, ow·sw + kj - pw] · dy[n, co, oh, ow]`.
pub fn conv2d_grad_weight<T: Element>(p: &Conv2d, x: &[T], dy: &[T], dw: &mut [T]) {
    let (oh_n, ow_n) = (p.out_h(), p.out_w());
    let (sh, sw) = p.stride;
    let (ph, pw) = p.pad;
    for co in 0..p.c_out {
        for ci in 0..p.c_in {
            for ki in 0..p.kh {
                for kj in 0..p.kw {
                    let mut acc = 0.0f64;
                    for n in 0..p.n {
                        for oh in 0..oh_n {
                            let Some(ih) = in_coord(oh, ki, sh, ph, p.h) else {
                                continue;
                            };
                            for ow in 0..ow_n {
                                let Some(iw) = in_coord(ow, kj, sw, pw, p.w) else {
                                    continue;
                                };
                                let xv = x[((n * p.c_in + ci) * p.h + ih) * p.w + iw];
                                let g = dy[((n * p.c_out + co) * oh_n + oh) * ow_n + ow];
                                acc += xv.f64() * g.f64();
                            }
                        }
                    }
                    let wi = ((co * p.c_in + ci) * p.kh + ki) * p.kw + kj;
                    dw[wi] = T::of(dw[wi].f64() + acc);
                }
            }
        }
    }
}

/// `db[co] += Σ_{n, oh, ow} dy[n, co, oh, ow]`.
pub fn conv2d_grad_bias<T: Element>(p: &Conv2d, dy: &[T], db: &mut [T]) {
    let plane = p.out_h() * p.out_w();
    for co in 0..p.c_out {
        let mut acc = 0.0f64;
        for n in 0..p.n {
            let base = (n * p.c_out + co) * plane;
            for v in &dy[base..base + plane] {
                acc += v.f64();
            }
        }
        db[co] = T::of(db[co].f64() + acc);
    }
}
