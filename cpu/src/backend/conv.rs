//! Convolutions by blocked im2col + GEMM.
//!
//! Work is cut into tasks of (image, block of output pixels[, block of channels]) so
//! that a column block of at most [`COL_BLOCK`] floats stays in cache and every worker
//! allocates its scratch once per call. 1×1 stride-1 unpadded convolutions skip
//! im2col: the image already is the column matrix.

use super::gemm::Mm;
use super::math;
use super::par::{ceil_div, try_zeroed, SyncPtr, CHUNK};
use super::Cpu;
use cim_core::backend::Conv2d;
use cim_core::Result;
use rayon::prelude::*;

/// Floats in one worker's column block (1 MiB).
const COL_BLOCK: usize = 1 << 18;
/// Fewest output pixels in a block cut for parallelism.
const MIN_BLOCK: usize = 32;
/// Floats all the per-worker weight-gradient partial sums may take (256 MiB).
const PARTIAL_BUDGET: usize = 1 << 26;
/// Convolutions of fewer flops run on the calling thread.
const SEQ_FLOPS: f64 = 4.0e6;

#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    ow: usize,
    /// Output pixels per image.
    l: usize,
    /// Input pixels per channel.
    hw: usize,
    /// `kh · kw`.
    khw: usize,
    /// Rows of the column matrix: `c_in · kh · kw`.
    kk: usize,
    pointwise: bool,
}

impl Geom {
    fn new(p: &Conv2d) -> Geom {
        let (oh, ow) = (p.out_h(), p.out_w());
        Geom {
            n: p.n,
            c_in: p.c_in,
            h: p.h,
            w: p.w,
            c_out: p.c_out,
            kh: p.kh,
            kw: p.kw,
            sh: p.stride.0,
            sw: p.stride.1,
            ph: p.pad.0,
            pw: p.pad.1,
            ow,
            l: oh * ow,
            hw: p.h * p.w,
            khw: p.kh * p.kw,
            kk: p.c_in * p.kh * p.kw,
            pointwise: p.kh == 1 && p.kw == 1 && p.stride == (1, 1) && p.pad == (0, 0),
        }
    }

    fn check(&self, x: usize, w: usize, y: usize) {
        assert!(
            x >= self.n * self.c_in * self.hw && w >= self.c_out * self.kk && y >= self.n * self.c_out * self.l,
            "conv2d: buffer shorter than its shape"
        );
    }

    /// Input row of output row `oy` under kernel row `ki`, if inside the image.
    #[inline]
    fn iy(&self, oy: usize, ki: usize) -> Option<usize> {
        let t = oy * self.sh + ki;
        if t < self.ph || t - self.ph >= self.h {
            None
        } else {
            Some(t - self.ph)
        }
    }

    /// The output columns `[lo, hi)` whose input column under kernel column `kj` is
    /// inside the image.
    #[inline]
    fn valid_ox(&self, kj: usize) -> (usize, usize) {
        let lo = if self.pw > kj { ceil_div(self.pw - kj, self.sw) } else { 0 };
        let hi = if self.w + self.pw > kj { ceil_div(self.w + self.pw - kj, self.sw) } else { 0 };
        (lo, hi)
    }

    /// Visit the pieces of output pixels `[l0, l1)` that lie on one output row:
    /// `f(offset_in_block, oy, ox0, ox1)`.
    #[inline]
    fn rows_of(&self, l0: usize, l1: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
        let mut l = l0;
        while l < l1 {
            let oy = l / self.ow;
            let ox0 = l % self.ow;
            let ox1 = self.ow.min(ox0 + (l1 - l));
            f(l - l0, oy, ox0, ox1);
            l += ox1 - ox0;
        }
    }
}

/// Pixels per block: at most `cap`, cut further so that `n` images give `want` blocks.
fn block_len(l: usize, cap: usize, n: usize, want: usize) -> usize {
    let per_img = ceil_div(want, n);
    let mut b = l.min(cap.max(1));
    if per_img > 1 {
        b = b.min((ceil_div(l, per_img).div_ceil(8) * 8).max(MIN_BLOCK));
    }
    b.max(1)
}

/// Column block of output pixels `[l0, l1)` for channels `[c0, c1)` of one image:
/// `col[((c - c0)·kh + ki)·kw + kj][l - l0]`.
fn im2col(g: &Geom, x: &[f32], c0: usize, c1: usize, l0: usize, l1: usize, col: &mut [f32]) {
    let lb = l1 - l0;
    let mut r = 0;
    for ci in c0..c1 {
        let plane = &x[ci * g.hw..(ci + 1) * g.hw];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let dst = &mut col[r * lb..(r + 1) * lb];
                r += 1;
                let (lo, hi) = g.valid_ox(kj);
                g.rows_of(l0, l1, |off, oy, ox0, ox1| {
                    let seg = &mut dst[off..off + (ox1 - ox0)];
                    let Some(iy) = g.iy(oy, ki) else {
                        seg.fill(0.0);
                        return;
                    };
                    let src = &plane[iy * g.w..(iy + 1) * g.w];
                    let a = lo.clamp(ox0, ox1);
                    let b = hi.clamp(a, ox1);
                    seg[..a - ox0].fill(0.0);
                    seg[b - ox0..].fill(0.0);
                    let out = &mut seg[a - ox0..b - ox0];
                    if a == b {
                        // No input column of this kernel tap falls on the segment.
                    } else if g.sw == 1 {
                        let s0 = a + kj - g.pw;
                        out.copy_from_slice(&src[s0..s0 + (b - a)]);
                    } else {
                        for (o, ox) in out.iter_mut().zip(a..b) {
                            *o = src[ox * g.sw + kj - g.pw];
                        }
                    }
                });
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds the column block into `dx` (channels `[0, c1 - c0)`
/// of `dx` are channels `[c0, c1)` of the image).
fn col2im(g: &Geom, col: &[f32], nch: usize, l0: usize, l1: usize, dx: &mut [f32]) {
    let lb = l1 - l0;
    let mut r = 0;
    for ci in 0..nch {
        let plane = &mut dx[ci * g.hw..(ci + 1) * g.hw];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let src = &col[r * lb..(r + 1) * lb];
                r += 1;
                let (lo, hi) = g.valid_ox(kj);
                g.rows_of(l0, l1, |off, oy, ox0, ox1| {
                    let Some(iy) = g.iy(oy, ki) else {
                        return;
                    };
                    let a = lo.clamp(ox0, ox1);
                    let b = hi.clamp(a, ox1);
                    let seg = &src[off + (a - ox0)..off + (b - ox0)];
                    let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
                    if a == b {
                        // Nothing to add.
                    } else if g.sw == 1 {
                        let s0 = a + kj - g.pw;
                        for (d, v) in dst[s0..s0 + (b - a)].iter_mut().zip(seg) {
                            *d += v;
                        }
                    } else {
                        for (v, ox) in seg.iter().zip(a..b) {
                            dst[ox * g.sw + kj - g.pw] += v;
                        }
                    }
                });
            }
        }
    }
}

impl Cpu {
    /// Workers worth using for `p`: one for small problems.
    fn conv_threads(&self, p: &Conv2d) -> usize {
        if p.flops() < SEQ_FLOPS {
            1
        } else {
            self.threads()
        }
    }

    pub(crate) fn conv2d_impl(
        &self,
        p: &Conv2d,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) -> Result<()> {
        let g = Geom::new(p);
        if g.n == 0 || g.c_out == 0 || g.l == 0 {
            return Ok(());
        }
        g.check(x.len(), w.len(), y.len());
        assert!(bias.is_none_or(|b| b.len() >= g.c_out), "conv2d: short bias");
        let threads = self.conv_threads(p);
        let cap = if g.pointwise { g.l } else { (COL_BLOCK / g.kk.max(1)).max(64) };
        let lb = block_len(g.l, cap, g.n, 2 * threads);
        let nlb = ceil_div(g.l, lb);
        let img_tasks = g.n * nlb;
        // Few images of few pixels (late layers, batch 1): also cut output channels.
        let ncb = if img_tasks < threads && g.c_out >= 128 {
            ceil_div(2 * threads, img_tasks).min(g.c_out / 64).max(1)
        } else {
            1
        };
        let cb = ceil_div(g.c_out, ncb);
        let ncb = ceil_div(g.c_out, cb);
        let scratch = if g.pointwise { 0 } else { g.kk * lb };
        let yp = SyncPtr::new(y);
        self.tasks::<f32>(threads, g.n * nlb * ncb, scratch, |t, col| {
            let i = t / (nlb * ncb);
            let (bl, bc) = ((t / ncb) % nlb, t % ncb);
            let (l0, l1) = (bl * lb, ((bl + 1) * lb).min(g.l));
            let (co0, co1) = (bc * cb, ((bc + 1) * cb).min(g.c_out));
            let x_img = &x[i * g.c_in * g.hw..(i + 1) * g.c_in * g.hw];
            let (b, rsb) = if g.pointwise {
                (x_img.as_ptr().wrapping_add(l0), g.l)
            } else {
                im2col(&g, x_img, 0, g.c_in, l0, l1, col);
                (col.as_ptr(), l1 - l0)
            };
            let mm = Mm {
                m: co1 - co0,
                n: l1 - l0,
                k: g.kk,
                alpha: 1.0,
                beta: 0.0,
                a: w.as_ptr().wrapping_add(co0 * g.kk),
                rsa: g.kk,
                csa: 1,
                b,
                rsb,
                csb: 1,
                c: yp.ptr().wrapping_add((i * g.c_out + co0) * g.l + l0),
                rsc: g.l,
                csc: 1,
            };
            // SAFETY: operands lie in the checked buffers; this task alone writes
            // rows co0..co1, columns l0..l1 of image i.
            unsafe { mm.run() };
            if let Some(bias) = bias {
                for (co, &bv) in bias.iter().enumerate().take(co1).skip(co0) {
                    // SAFETY: as above.
                    let row = unsafe { yp.slice((i * g.c_out + co) * g.l + l0, l1 - l0) };
                    for v in row {
                        *v += bv;
                    }
                }
            }
        })
    }

    pub(crate) fn conv2d_grad_input_impl(&self, p: &Conv2d, dy: &[f32], w: &[f32], dx: &mut [f32]) -> Result<()> {
        let g = Geom::new(p);
        if g.n == 0 || g.c_in == 0 || g.hw == 0 {
            return Ok(());
        }
        g.check(dx.len(), w.len(), dy.len());
        let threads = self.conv_threads(p);
        let dxp = SyncPtr::new(dx);
        if g.pointwise {
            // dx_i[:, block] = Wᵀ · dy_i[:, block], straight into dx.
            let lb = block_len(g.l, g.l, g.n, 2 * threads);
            let nlb = ceil_div(g.l, lb);
            return self.tasks::<f32>(threads, g.n * nlb, 0, |t, _| {
                let (i, bl) = (t / nlb, t % nlb);
                let (l0, l1) = (bl * lb, ((bl + 1) * lb).min(g.l));
                let mm = Mm {
                    m: g.c_in,
                    n: l1 - l0,
                    k: g.c_out,
                    alpha: 1.0,
                    beta: 0.0,
                    a: w.as_ptr(),
                    rsa: 1,
                    csa: g.kk,
                    b: dy.as_ptr().wrapping_add(i * g.c_out * g.l + l0),
                    rsb: g.l,
                    csb: 1,
                    c: dxp.ptr().wrapping_add(i * g.c_in * g.l + l0),
                    rsc: g.l,
                    csc: 1,
                };
                // SAFETY: in-bounds operands; this task alone writes columns l0..l1
                // of image i.
                unsafe { mm.run() };
            });
        }
        // Tasks own (image, block of input channels): col2im of one channel only
        // reads that channel's rows of the column matrix, so tasks never collide.
        let ncb = ceil_div(2 * threads, g.n).min(g.c_in).max(1);
        let cib = ceil_div(g.c_in, ncb);
        let ncb = ceil_div(g.c_in, cib);
        let rows = cib * g.khw;
        let lb = g.l.min((COL_BLOCK / rows.max(1)).max(64));
        self.tasks::<f32>(threads, g.n * ncb, rows * lb, |t, col| {
            let (i, bc) = (t / ncb, t % ncb);
            let (ci0, ci1) = (bc * cib, ((bc + 1) * cib).min(g.c_in));
            // SAFETY: this task alone touches channels ci0..ci1 of image i.
            let dx_blk = unsafe { dxp.slice((i * g.c_in + ci0) * g.hw, (ci1 - ci0) * g.hw) };
            dx_blk.fill(0.0);
            let mut l0 = 0;
            while l0 < g.l {
                let l1 = (l0 + lb).min(g.l);
                let mm = Mm {
                    m: (ci1 - ci0) * g.khw,
                    n: l1 - l0,
                    k: g.c_out,
                    alpha: 1.0,
                    beta: 0.0,
                    a: w.as_ptr().wrapping_add(ci0 * g.khw),
                    rsa: 1,
                    csa: g.kk,
                    b: dy.as_ptr().wrapping_add(i * g.c_out * g.l + l0),
                    rsb: g.l,
                    csb: 1,
                    c: col.as_mut_ptr(),
                    rsc: l1 - l0,
                    csc: 1,
                };
                // SAFETY: in-bounds operands; `col` is this worker's scratch.
                unsafe { mm.run() };
                col2im(&g, col, ci1 - ci0, l0, l1, dx_blk);
                l0 = l1;
            }
        })
    }

    pub(crate) fn conv2d_grad_weight_impl(&self, p: &Conv2d, x: &[f32], dy: &[f32], dw: &mut [f32]) -> Result<()> {
        let g = Geom::new(p);
        let wl = g.c_out * g.kk;
        if wl == 0 || g.n == 0 || g.l == 0 {
            return Ok(());
        }
        g.check(x.len(), dw.len(), dy.len());
        let threads = self.conv_threads(p);
        let cap = if g.pointwise { g.l } else { (COL_BLOCK / g.kk).max(64) };
        let lb = block_len(g.l, cap, g.n, threads);
        let nlb = ceil_div(g.l, lb);
        let ntasks = g.n * nlb;
        // Worker 0 accumulates straight into dw, the others into partial sums added
        // at the end in worker order (deterministic for a given thread count).
        let workers = threads.min(ntasks).min(PARTIAL_BUDGET / wl + 1).max(1);
        let scratch = if g.pointwise { 0 } else { g.kk * lb };
        let dwp = SyncPtr::new(dw);
        let partials = self.workers(workers, |wi| -> Result<Option<Vec<f32>>> {
            let mut col = try_zeroed::<f32>(scratch)?;
            let mut part = if wi == 0 { None } else { Some(try_zeroed::<f32>(wl)?) };
            let target = match &mut part {
                Some(v) => v.as_mut_ptr(),
                None => dwp.ptr(),
            };
            for t in wi * ntasks / workers..(wi + 1) * ntasks / workers {
                let (i, bl) = (t / nlb, t % nlb);
                let (l0, l1) = (bl * lb, ((bl + 1) * lb).min(g.l));
                let x_img = &x[i * g.c_in * g.hw..(i + 1) * g.c_in * g.hw];
                let (b, csb) = if g.pointwise {
                    (x_img.as_ptr().wrapping_add(l0), g.l)
                } else {
                    im2col(&g, x_img, 0, g.c_in, l0, l1, &mut col);
                    (col.as_ptr(), l1 - l0)
                };
                let mm = Mm {
                    m: g.c_out,
                    n: g.kk,
                    k: l1 - l0,
                    alpha: 1.0,
                    beta: 1.0,
                    a: dy.as_ptr().wrapping_add(i * g.c_out * g.l + l0),
                    rsa: g.l,
                    csa: 1,
                    b,
                    rsb: 1,
                    csb,
                    c: target,
                    rsc: g.kk,
                    csc: 1,
                };
                // SAFETY: in-bounds operands; `target` is dw for worker 0 only, else
                // this worker's own partial sum.
                unsafe { mm.run() };
            }
            Ok(part)
        })?;
        let parts: Vec<&[f32]> = partials.iter().flatten().map(|v| v.as_slice()).collect();
        if !parts.is_empty() {
            self.chunks_mut(dw, CHUNK, |off, d| {
                let n = d.len();
                for p in &parts {
                    for (a, b) in d.iter_mut().zip(&p[off..off + n]) {
                        *a += b;
                    }
                }
            });
        }
        Ok(())
    }

    pub(crate) fn conv2d_grad_bias_impl(&self, p: &Conv2d, dy: &[f32], db: &mut [f32]) {
        let (n, c, l) = (p.n, p.c_out, p.out_h() * p.out_w());
        assert!(dy.len() >= n * c * l && db.len() >= c, "conv2d_grad_bias: short buffer");
        let chan = |co: usize| -> f32 {
            let mut acc = 0f64;
            for i in 0..n {
                acc += math::sum(&dy[(i * c + co) * l..(i * c + co + 1) * l]) as f64;
            }
            acc as f32
        };
        let db = &mut db[..c];
        if n * c * l <= 4 * CHUNK {
            for (co, d) in db.iter_mut().enumerate() {
                *d += chan(co);
            }
        } else {
            self.install(|| db.par_iter_mut().enumerate().for_each(|(co, d)| *d += chan(co)));
        }
    }
}
