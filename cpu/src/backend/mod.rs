//! The fast CPU backend: `f32` on host memory, parallel with rayon.
//!
//! | ops | how |
//! | --- | --- |
//! | `gemm` | `matrixmultiply::sgemm` (transposes as strides), split over the batch and over row or column blocks of `C` ([`gemm`]) |
//! | `conv2d*` | blocked im2col + GEMM per (image, pixel block), per-worker scratch; 1×1 stride-1 convolutions skip im2col; weight gradients in per-worker partial sums ([`conv`]) |
//! | layer norm, batch norm | own kernels, parallel over rows / channels ([`norm`]) |
//! | softmax, log-softmax, cross-entropy | own kernels with a vectorizable `exp`, AVX2 when available ([`rows`]) |
//! | GELU, `affine`, `axpy`, `binary` (same shape and one-run broadcasts) | own kernels ([`elementwise`]) |
//! | `sum_squares`, `adamw` | own kernels ([`optim`]) |
//! | `window_stats` | summed-area tables in `f64` ([`window`]) |
//! | everything else | the reference kernel, run in parallel over independent rows, planes or chunks where its contract allows, else as is |

#[macro_use]
mod simd;
mod conv;
mod elementwise;
mod gemm;
mod math;
mod norm;
mod optim;
mod par;
mod rows;
mod window;

#[cfg(test)]
mod tests;

use cim_core::backend::*;
use cim_core::reference::kernels;
use cim_core::{DType, Error, Result, View, ViewMut};
use par::{try_zeroed, CHUNK};
use rayon::prelude::*;
use rayon::ThreadPool;
use std::sync::{Arc, Once};

/// The fast CPU backend over `f32`.
///
/// Work runs on rayon: on the global pool ([`Cpu::new`]) or on a pool of its own
/// ([`Cpu::with_threads`]). GEMMs use `matrixmultiply`'s micro-kernels, with the
/// backend itself splitting the work across threads; constructing a `Cpu` therefore
/// sets `MATMUL_NUM_THREADS=1` (unless the variable is already set) so that
/// `matrixmultiply`'s own, smaller pool does not compete with rayon's.
///
/// Results agree with [`cim_core::Reference`] to rounding. Every result is
/// deterministic for a given thread count (reductions use fixed partitions and fixed
/// orders, never work-stealing order). The delegated ops, `sample_categorical` and
/// `rand_uniform` among them, give exactly the reference's values.
#[derive(Clone)]
pub struct Cpu {
    pool: Option<Arc<ThreadPool>>,
}

impl Default for Cpu {
    fn default() -> Cpu {
        Cpu::new()
    }
}

impl std::fmt::Debug for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cpu").field("threads", &self.threads()).field("own_pool", &self.pool.is_some()).finish()
    }
}

/// Keep `matrixmultiply` single-threaded: the backend parallelizes GEMMs itself, and
/// `matrixmultiply`'s pool (at most four threads, shared by all callers) would
/// serialize the concurrent products of rayon's workers. It reads the variable once,
/// at its first product, so this must run before any; an explicit setting wins.
fn init_matmul() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        if std::env::var_os("MATMUL_NUM_THREADS").is_none() {
            std::env::set_var("MATMUL_NUM_THREADS", "1");
        }
    });
}

impl Cpu {
    /// A backend on rayon's global thread pool.
    pub fn new() -> Cpu {
        init_matmul();
        Cpu { pool: None }
    }

    /// A backend on a thread pool of its own with `threads` threads (0: one per CPU).
    pub fn with_threads(threads: usize) -> Result<Cpu> {
        init_matmul();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("cim-cpu-{i}"))
            .build()
            .map_err(|e| Error::Backend {
                backend: "cpu".into(),
                detail: format!("cannot start a pool of {threads} threads: {e}"),
            })?;
        Ok(Cpu { pool: Some(Arc::new(pool)) })
    }

    /// The number of worker threads the backend spreads work over.
    pub fn threads(&self) -> usize {
        match &self.pool {
            Some(p) => p.current_num_threads(),
            None => rayon::current_num_threads(),
        }
    }
}

type B<'a> = View<'a, Vec<f32>>;
type M<'a> = ViewMut<'a, Vec<f32>>;
type I<'a> = View<'a, Vec<u32>>;
type IM<'a> = ViewMut<'a, Vec<u32>>;

/// Units (rows, planes) per parallel chunk when each unit costs `per` elements.
fn units(per: usize) -> usize {
    (CHUNK / per.max(1)).max(1)
}

impl Cpu {
    fn copy_par(&self, src: &[f32], dst: &mut [f32]) {
        self.zip1(src, dst, |s, d| d.copy_from_slice(s));
    }
}

impl Backend for Cpu {
    type E = f32;
    type Buf = Vec<f32>;
    type IBuf = Vec<u32>;

    fn name(&self) -> &'static str {
        "cpu"
    }

    // ---- memory -------------------------------------------------------------------------
    fn alloc(&self, len: usize) -> Result<Vec<f32>> {
        try_zeroed(len)
    }
    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        let mut v = try_zeroed(data.len())?;
        self.copy_par(data, &mut v);
        Ok(v)
    }
    fn download(&self, src: B<'_>) -> Result<Vec<f32>> {
        self.upload(src.slice())
    }
    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn alloc_idx(&self, len: usize) -> Result<Vec<u32>> {
        try_zeroed(len)
    }
    fn upload_idx(&self, data: &[u32]) -> Result<Vec<u32>> {
        let mut v = try_zeroed(data.len())?;
        v.copy_from_slice(data);
        Ok(v)
    }
    fn download_idx(&self, src: I<'_>) -> Result<Vec<u32>> {
        self.upload_idx(src.slice())
    }
    fn len_idx(&self, buf: &Vec<u32>) -> usize {
        buf.len()
    }
    fn copy(&self, src: B<'_>, dst: M<'_>) -> Result<()> {
        self.copy_par(src.slice(), dst.slice());
        Ok(())
    }
    fn fill(&self, dst: M<'_>, v: f32) -> Result<()> {
        self.chunks_mut(dst.slice(), 4 * CHUNK, |_, d| d.fill(v));
        Ok(())
    }

    // ---- linear algebra -----------------------------------------------------------------
    fn permute(&self, shape: &[usize], perm: &[usize], x: B<'_>, y: M<'_>) -> Result<()> {
        kernels::permute(shape, perm, x.slice(), y.slice());
        Ok(())
    }

    fn gemm(&self, p: &Gemm, a: B<'_>, b: B<'_>, c: M<'_>) -> Result<()> {
        self.gemm_impl(p, a.slice(), b.slice(), c.slice());
        Ok(())
    }

    // ---- convolution --------------------------------------------------------------------
    fn conv2d(&self, p: &Conv2d, x: B<'_>, w: B<'_>, bias: Option<B<'_>>, y: M<'_>) -> Result<()> {
        self.conv2d_impl(p, x.slice(), w.slice(), bias.map(|b| b.slice()), y.slice())
    }
    fn conv2d_grad_input(&self, p: &Conv2d, dy: B<'_>, w: B<'_>, dx: M<'_>) -> Result<()> {
        self.conv2d_grad_input_impl(p, dy.slice(), w.slice(), dx.slice())
    }
    fn conv2d_grad_weight(&self, p: &Conv2d, x: B<'_>, dy: B<'_>, dw: M<'_>) -> Result<()> {
        self.conv2d_grad_weight_impl(p, x.slice(), dy.slice(), dw.slice())
    }
    fn conv2d_grad_bias(&self, p: &Conv2d, dy: B<'_>, db: M<'_>) -> Result<()> {
        self.conv2d_grad_bias_impl(p, dy.slice(), db.slice());
        Ok(())
    }

    // ---- normalization ------------------------------------------------------------------
    fn batch_norm_train(
        &self,
        p: &BatchNorm,
        x: B<'_>,
        gamma: B<'_>,
        beta: B<'_>,
        running_mean: M<'_>,
        running_var: M<'_>,
        y: M<'_>,
        save_mean: M<'_>,
        save_invstd: M<'_>,
    ) -> Result<()> {
        self.batch_norm_train_impl(
            p,
            x.slice(),
            gamma.slice(),
            beta.slice(),
            running_mean.slice(),
            running_var.slice(),
            y.slice(),
            save_mean.slice(),
            save_invstd.slice(),
        );
        Ok(())
    }
    fn batch_norm_eval(
        &self,
        p: &BatchNorm,
        x: B<'_>,
        gamma: B<'_>,
        beta: B<'_>,
        running_mean: B<'_>,
        running_var: B<'_>,
        y: M<'_>,
    ) -> Result<()> {
        self.batch_norm_eval_impl(
            p,
            x.slice(),
            gamma.slice(),
            beta.slice(),
            running_mean.slice(),
            running_var.slice(),
            y.slice(),
        );
        Ok(())
    }
    fn batch_norm_backward(
        &self,
        p: &BatchNorm,
        x: B<'_>,
        dy: B<'_>,
        gamma: B<'_>,
        save_mean: B<'_>,
        save_invstd: B<'_>,
        dx: M<'_>,
        dgamma: M<'_>,
        dbeta: M<'_>,
    ) -> Result<()> {
        self.batch_norm_backward_impl(
            p,
            x.slice(),
            dy.slice(),
            gamma.slice(),
            save_mean.slice(),
            save_invstd.slice(),
            dx.slice(),
            dgamma.slice(),
            dbeta.slice(),
        );
        Ok(())
    }
    fn layer_norm(
        &self,
        rows: usize,
        d: usize,
        eps: f64,
        x: B<'_>,
        gamma: B<'_>,
        beta: B<'_>,
        y: M<'_>,
        mean: M<'_>,
        rstd: M<'_>,
    ) -> Result<()> {
        self.layer_norm_impl(
            rows,
            d,
            eps,
            x.slice(),
            gamma.slice(),
            beta.slice(),
            y.slice(),
            mean.slice(),
            rstd.slice(),
        );
        Ok(())
    }
    fn layer_norm_backward(
        &self,
        rows: usize,
        d: usize,
        x: B<'_>,
        dy: B<'_>,
        gamma: B<'_>,
        mean: B<'_>,
        rstd: B<'_>,
        dx: M<'_>,
        dgamma: M<'_>,
        dbeta: M<'_>,
    ) -> Result<()> {
        self.layer_norm_backward_impl(
            rows,
            d,
            x.slice(),
            dy.slice(),
            gamma.slice(),
            mean.slice(),
            rstd.slice(),
            dx.slice(),
            dgamma.slice(),
            dbeta.slice(),
        )
    }

    // ---- softmax ------------------------------------------------------------------------
    fn softmax(&self, _rows: usize, d: usize, x: B<'_>, y: M<'_>) -> Result<()> {
        self.softmax_impl(d, x.slice(), y.slice());
        Ok(())
    }
    fn softmax_backward(&self, _rows: usize, d: usize, y: B<'_>, dy: B<'_>, dx: M<'_>) -> Result<()> {
        self.softmax_backward_impl(d, y.slice(), dy.slice(), dx.slice());
        Ok(())
    }
    fn log_softmax(&self, _rows: usize, d: usize, x: B<'_>, y: M<'_>) -> Result<()> {
        self.log_softmax_impl(d, x.slice(), y.slice());
        Ok(())
    }
    fn log_softmax_backward(&self, _rows: usize, d: usize, y: B<'_>, dy: B<'_>, dx: M<'_>) -> Result<()> {
        self.log_softmax_backward_impl(d, y.slice(), dy.slice(), dx.slice());
        Ok(())
    }

    // ---- activations --------------------------------------------------------------------
    fn gelu(&self, x: B<'_>, y: M<'_>) -> Result<()> {
        self.gelu_impl(x.slice(), y.slice());
        Ok(())
    }
    fn gelu_backward(&self, x: B<'_>, dy: B<'_>, dx: M<'_>) -> Result<()> {
        self.gelu_backward_impl(x.slice(), dy.slice(), dx.slice());
        Ok(())
    }
    fn relu(&self, x: B<'_>, y: M<'_>) -> Result<()> {
        self.zip1(x.slice(), y.slice(), kernels::relu);
        Ok(())
    }
    fn relu_backward(&self, x: B<'_>, dy: B<'_>, dx: M<'_>) -> Result<()> {
        self.zip2(x.slice(), dy.slice(), dx.slice(), kernels::relu_backward);
        Ok(())
    }

    // ---- pooling and resampling: the reference kernels over blocks of planes ---------
    fn max_pool2d(&self, p: &Pool2d, x: B<'_>, y: M<'_>, idx: IM<'_>) -> Result<()> {
        let (x, y, idx) = (x.slice(), y.slice(), idx.slice());
        let (ip, op) = (p.h * p.w, p.out_h() * p.out_w());
        let ppc = units(ip.max(op));
        if p.n * p.c <= ppc || op == 0 {
            kernels::max_pool2d(p, x, y, idx);
            return Ok(());
        }
        self.install(|| {
            y.par_chunks_mut(ppc * op).zip(idx.par_chunks_mut(ppc * op)).enumerate().for_each(|(i, (y, idx))| {
                let np = y.len() / op;
                let q = Pool2d { n: 1, c: np, ..*p };
                let x = &x[i * ppc * ip..(i * ppc + np) * ip];
                kernels::max_pool2d(&q, x, y, idx);
            })
        });
        Ok(())
    }
    fn max_pool2d_backward(&self, p: &Pool2d, dy: B<'_>, idx: I<'_>, dx: M<'_>) -> Result<()> {
        let (dy, idx, dx) = (dy.slice(), idx.slice(), dx.slice());
        let (ip, op) = (p.h * p.w, p.out_h() * p.out_w());
        let ppc = units(ip.max(op));
        self.chunks_mut(dx, ppc * ip, |off, dx| {
            let (p0, np) = (off / ip.max(1), dx.len() / ip.max(1));
            let q = Pool2d { n: 1, c: np, ..*p };
            let r = p0 * op..(p0 + np) * op;
            kernels::max_pool2d_backward(&q, &dy[r.clone()], &idx[r], dx);
        });
        Ok(())
    }
    fn avg_pool2d(&self, p: &Pool2d, x: B<'_>, y: M<'_>) -> Result<()> {
        let (x, y) = (x.slice(), y.slice());
        let (ip, op) = (p.h * p.w, p.out_h() * p.out_w());
        let ppc = units(ip.max(op));
        self.chunks_mut(y, ppc * op, |off, y| {
            let (p0, np) = (off / op.max(1), y.len() / op.max(1));
            let q = Pool2d { n: 1, c: np, ..*p };
            kernels::avg_pool2d(&q, &x[p0 * ip..(p0 + np) * ip], y);
        });
        Ok(())
    }
    fn avg_pool2d_backward(&self, p: &Pool2d, dy: B<'_>, dx: M<'_>) -> Result<()> {
        let (dy, dx) = (dy.slice(), dx.slice());
        let (ip, op) = (p.h * p.w, p.out_h() * p.out_w());
        let ppc = units(ip.max(op));
        self.chunks_mut(dx, ppc * ip, |off, dx| {
            let (p0, np) = (off / ip.max(1), dx.len() / ip.max(1));
            let q = Pool2d { n: 1, c: np, ..*p };
            kernels::avg_pool2d_backward(&q, &dy[p0 * op..(p0 + np) * op], dx);
        });
        Ok(())
    }
    fn global_avg_pool(&self, _nc: usize, hw: usize, x: B<'_>, y: M<'_>) -> Result<()> {
        let (x, y) = (x.slice(), y.slice());
        self.chunks_mut(y, units(hw), |r0, y| {
            kernels::global_avg_pool(y.len(), hw, &x[r0 * hw..(r0 + y.len()) * hw], y);
        });
        Ok(())
    }
    fn global_avg_pool_backward(&self, _nc: usize, hw: usize, dy: B<'_>, dx: M<'_>) -> Result<()> {
        let (dy, dx) = (dy.slice(), dx.slice());
        if hw == 0 {
            return Ok(());
        }
        self.chunks_mut(dx, units(hw) * hw, |off, dx| {
            let (r0, nr) = (off / hw, dx.len() / hw);
            kernels::global_avg_pool_backward(nr, hw, &dy[r0..r0 + nr], dx);
        });
        Ok(())
    }
    fn upsample_nearest(&self, _nc: usize, h: usize, w: usize, scale: usize, x: B<'_>, y: M<'_>) -> Result<()> {
        let (x, y) = (x.slice(), y.slice());
        let (ip, op) = (h * w, h * w * scale * scale);
        if op == 0 {
            return Ok(());
        }
        self.chunks_mut(y, units(op) * op, |off, y| {
            let (p0, np) = (off / op, y.len() / op);
            kernels::upsample_nearest(np, h, w, scale, &x[p0 * ip..(p0 + np) * ip], y);
        });
        Ok(())
    }
    fn upsample_nearest_backward(
        &self,
        _nc: usize,
        h: usize,
        w: usize,
        scale: usize,
        dy: B<'_>,
        dx: M<'_>,
    ) -> Result<()> {
        let (dy, dx) = (dy.slice(), dx.slice());
        let (ip, op) = (h * w, h * w * scale * scale);
        if ip == 0 {
            return Ok(());
        }
        self.chunks_mut(dx, units(op) * ip, |off, dx| {
            let (p0, np) = (off / ip, dx.len() / ip);
            kernels::upsample_nearest_backward(np, h, w, scale, &dy[p0 * op..(p0 + np) * op], dx);
        });
        Ok(())
    }

    // ---- embedding ----------------------------------------------------------------------
    fn gather_rows(&self, d: usize, table: B<'_>, ids: I<'_>, out: M<'_>) -> Result<()> {
        let (table, ids, out) = (table.slice(), ids.slice(), out.slice());
        if d == 0 {
            return Ok(());
        }
        self.chunks_mut(out, units(d) * d, |off, out| {
            let (r0, nr) = (off / d, out.len() / d);
            kernels::gather_rows(d, table, &ids[r0..r0 + nr], out);
        });
        Ok(())
    }
    fn scatter_add_rows(&self, d: usize, ids: I<'_>, src: B<'_>, table: M<'_>) -> Result<()> {
        kernels::scatter_add_rows(d, ids.slice(), src.slice(), table.slice());
        Ok(())
    }

    // ---- elementwise and reductions -----------------------------------------------------
    fn binary(
        &self,
        op: BinaryOp,
        a: B<'_>,
        a_shape: &[usize],
        b: B<'_>,
        b_shape: &[usize],
        out: M<'_>,
        out_shape: &[usize],
    ) -> Result<()> {
        self.binary_impl(op, a.slice(), a_shape, b.slice(), b_shape, out.slice(), out_shape);
        Ok(())
    }
    fn unary(&self, op: UnaryOp, x: B<'_>, y: M<'_>) -> Result<()> {
        self.zip1(x.slice(), y.slice(), |x, y| kernels::unary(op, x, y));
        Ok(())
    }
    fn affine(&self, alpha: f64, beta: f64, x: B<'_>, y: M<'_>) -> Result<()> {
        self.affine_impl(alpha, beta, x.slice(), y.slice());
        Ok(())
    }
    fn axpy(&self, alpha: f64, x: B<'_>, y: M<'_>) -> Result<()> {
        self.axpy_impl(alpha, x.slice(), y.slice());
        Ok(())
    }
    fn reduce(&self, op: ReduceOp, _outer: usize, axis: usize, inner: usize, x: B<'_>, y: M<'_>) -> Result<()> {
        let (x, y) = (x.slice(), y.slice());
        if inner == 0 {
            return Ok(());
        }
        let per = axis * inner;
        if inner >= 8 && !matches!(op, ReduceOp::Max) {
            // Column sums (a bias gradient is [rows, d] → [d]): the reference's strided
            // walk is serial and cache-hostile, so accumulate whole rows into f64
            // columns instead. Each column still adds its terms in the reference's
            // order, in f64, so the result is the same to the bit; the columns are
            // split across the workers.
            let unit = (CHUNK / axis.max(1)).clamp(8, inner);
            self.chunks_mut(y, unit, |off, y| {
                let mut acc = vec![0f64; y.len()];
                let mut done = 0;
                while done < y.len() {
                    let (o, i0) = ((off + done) / inner, (off + done) % inner);
                    let len = (inner - i0).min(y.len() - done);
                    let acc = &mut acc[done..done + len];
                    for a in 0..axis {
                        let row = &x[o * per + a * inner + i0..][..len];
                        math::add_f64(acc, row);
                    }
                    done += len;
                }
                let scale = if matches!(op, ReduceOp::Mean) { Some(axis as f64) } else { None };
                for (y, s) in y.iter_mut().zip(acc) {
                    *y = match scale {
                        Some(0.0) => 0.0,
                        Some(n) => (s / n) as f32,
                        None => s as f32,
                    };
                }
            });
            return Ok(());
        }
        self.chunks_mut(y, units(per) * inner, |off, y| {
            let (o0, no) = (off / inner, y.len() / inner);
            kernels::reduce(op, no, axis, inner, &x[o0 * per..(o0 + no) * per], y);
        });
        Ok(())
    }

    // ---- RESPIX sliding-window statistics -----------------------------------------------
    fn window_stats(&self, nc: usize, h: usize, w: usize, k: usize, x: B<'_>, mean: M<'_>, var: M<'_>) -> Result<()> {
        let (x, mean, var) = (x.slice(), mean.slice(), var.slice());
        if k == 0 {
            kernels::window_stats(nc, h, w, k, x, mean, var);
            return Ok(());
        }
        self.window_stats_impl(nc, h, w, k, x, mean, var)
    }
    fn window_stats_backward(
        &self,
        _nc: usize,
        h: usize,
        w: usize,
        k: usize,
        x: B<'_>,
        mean: B<'_>,
        dmean: B<'_>,
        dvar: B<'_>,
        dx: M<'_>,
    ) -> Result<()> {
        let (x, mean, dmean, dvar, dx) = (x.slice(), mean.slice(), dmean.slice(), dvar.slice(), dx.slice());
        let hw = h * w;
        if hw == 0 {
            return Ok(());
        }
        // Each plane's gradient only reads that plane: blocks of planes are independent.
        self.chunks_mut(dx, units(hw * k.max(1)) * hw, |off, dx| {
            let (p0, np) = (off / hw, dx.len() / hw);
            let r = p0 * hw..(p0 + np) * hw;
            kernels::window_stats_backward(
                np,
                h,
                w,
                k,
                &x[r.clone()],
                &mean[r.clone()],
                &dmean[r.clone()],
                &dvar[r],
                dx,
            );
        });
        Ok(())
    }

    // ---- losses -------------------------------------------------------------------------
    fn cross_entropy(&self, _rows: usize, classes: usize, logits: B<'_>, targets: I<'_>, loss: M<'_>) -> Result<()> {
        self.cross_entropy_impl(classes, logits.slice(), targets.slice(), loss.slice());
        Ok(())
    }
    fn cross_entropy_backward(
        &self,
        _rows: usize,
        classes: usize,
        logits: B<'_>,
        targets: I<'_>,
        dloss: B<'_>,
        dlogits: M<'_>,
    ) -> Result<()> {
        self.cross_entropy_backward_impl(classes, logits.slice(), targets.slice(), dloss.slice(), dlogits.slice());
        Ok(())
    }
    fn bce_with_logits(&self, logits: B<'_>, targets: B<'_>, loss: M<'_>) -> Result<()> {
        self.zip2(logits.slice(), targets.slice(), loss.slice(), kernels::bce_with_logits);
        Ok(())
    }
    fn bce_with_logits_backward(&self, logits: B<'_>, targets: B<'_>, dloss: B<'_>, dlogits: M<'_>) -> Result<()> {
        self.zip3(logits.slice(), targets.slice(), dloss.slice(), dlogits.slice(), kernels::bce_with_logits_backward);
        Ok(())
    }
    fn l1_loss(&self, pred: B<'_>, target: B<'_>, loss: M<'_>) -> Result<()> {
        self.zip2(pred.slice(), target.slice(), loss.slice(), kernels::l1_loss);
        Ok(())
    }
    fn l1_loss_backward(&self, pred: B<'_>, target: B<'_>, dloss: B<'_>, dpred: M<'_>) -> Result<()> {
        self.zip3(pred.slice(), target.slice(), dloss.slice(), dpred.slice(), kernels::l1_loss_backward);
        Ok(())
    }
    fn l2_loss(&self, pred: B<'_>, target: B<'_>, loss: M<'_>) -> Result<()> {
        self.zip2(pred.slice(), target.slice(), loss.slice(), kernels::l2_loss);
        Ok(())
    }
    fn l2_loss_backward(&self, pred: B<'_>, target: B<'_>, dloss: B<'_>, dpred: M<'_>) -> Result<()> {
        self.zip3(pred.slice(), target.slice(), dloss.slice(), dpred.slice(), kernels::l2_loss_backward);
        Ok(())
    }

    // ---- randomness and selection -------------------------------------------------------
    fn sample_categorical(
        &self,
        _rows: usize,
        classes: usize,
        temperature: f64,
        seed: u64,
        offset: u64,
        logits: B<'_>,
        out: IM<'_>,
    ) -> Result<()> {
        let (logits, out) = (logits.slice(), out.slice());
        // Row r draws counters offset + r·classes + c: a block of rows starting at r0
        // is the same draw with its offset moved by r0·classes.
        self.chunks_mut(out, units(classes), |r0, out| {
            let x = &logits[r0 * classes..(r0 + out.len()) * classes];
            let off = offset.wrapping_add((r0 as u64).wrapping_mul(classes as u64));
            // The reference's rule (score `l / T + g` in f32, first maximum, NaN counts as
            // the greatest), with the noise of a whole chunk drawn block-wise.
            let mut g = vec![0f32; x.len()];
            cim_core::rng::gumbel_fill(seed, off, &mut g);
            let temp = temperature as f32;
            for (r, o) in out.iter_mut().enumerate() {
                let (row, noise) = (&x[r * classes..(r + 1) * classes], &g[r * classes..(r + 1) * classes]);
                let (mut best, mut best_i) = (f32::NEG_INFINITY, 0u32);
                for (c, (&l, &n)) in row.iter().zip(noise).enumerate() {
                    let v = l / temp + n;
                    if c == 0 || (!best.is_nan() && (v.is_nan() || v > best)) {
                        best = v;
                        best_i = c as u32;
                    }
                }
                *o = best_i;
            }
        });
        Ok(())
    }
    fn rand_uniform(&self, seed: u64, offset: u64, out: M<'_>) -> Result<()> {
        self.chunks_mut(out.slice(), CHUNK, |i0, out| {
            kernels::rand_uniform(seed, offset.wrapping_add(i0 as u64), out);
        });
        Ok(())
    }
    fn argmax(&self, _rows: usize, d: usize, x: B<'_>, out: IM<'_>) -> Result<()> {
        let (x, out) = (x.slice(), out.slice());
        self.chunks_mut(out, units(d), |r0, out| {
            kernels::argmax(out.len(), d, &x[r0 * d..(r0 + out.len()) * d], out);
        });
        Ok(())
    }

    // ---- precision ----------------------------------------------------------------------
    fn cast(&self, dtype: DType, x: B<'_>, y: M<'_>) -> Result<()> {
        self.zip1(x.slice(), y.slice(), |x, y| kernels::cast(dtype, x, y));
        Ok(())
    }

    // ---- optimizer ----------------------------------------------------------------------
    fn sum_squares(&self, x: B<'_>, out: M<'_>) -> Result<()> {
        self.sum_squares_impl(x.slice(), out.slice());
        Ok(())
    }
    fn adamw(
        &self,
        hp: &AdamW,
        groups: &[ParamGroup],
        params: M<'_>,
        grads: B<'_>,
        m: M<'_>,
        v: M<'_>,
        grad_scale: Option<B<'_>>,
    ) -> Result<()> {
        let scale = grad_scale.map(|s| s.slice()[0]).unwrap_or(1.0);
        self.adamw_impl(hp, groups, params.slice(), grads.slice(), m.slice(), v.slice(), scale);
        Ok(())
    }
}
