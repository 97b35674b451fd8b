//! [`Cuda`]: the backend trait on the GPU. Buffers come from a caching allocator;
//! all work is queued on one stream, and the host waits only in `download*` and
//! `synchronize`.
//!
//! | ops | how |
//! | --- | --- |
//! | `gemm` | cuBLAS `SgemmStridedBatched`, FP32 math (no TF32), operands swapped for row-major ([`crate::blas`]) |
//! | `conv2d*` | im2col (chunks of images) + cuBLAS; 1×1 stride-1 unpadded convolutions use the input as the columns; col2im in gather form |
//! | everything else | NVRTC kernels ([`crate::kernels`]): one thread per output, `double` accumulation |

use crate::alloc::{size_class, FreeLists};
use crate::blas::to_col_major;
use crate::emu::Emu;
use crate::exec::{AllocError, Exec};
use crate::gpu::Gpu;
use crate::launch::{self, blocks_for, broadcast_strides, coalesce, dims8, i64_arg, permute_plan, Arg};
use cim_core::backend::*;
use cim_core::{DType, Error, Result, View, ViewMut};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

fn be(detail: impl Into<String>) -> Error {
    Error::Backend { backend: "cuda".into(), detail: detail.into() }
}

/// Elements of an im2col column buffer per chunk (256 MiB of `f32`).
const COLS_LIMIT: usize = 1 << 26;
/// Elements per thread in the first pass of `sum_squares`.
const SUMSQ_CHUNK: usize = 4096;

/// The caching allocator: freed blocks wait in free lists by size class.
pub(crate) struct Pool {
    exec: Arc<Exec>,
    lists: Mutex<FreeLists>,
}

impl Pool {
    fn lists(&self) -> std::sync::MutexGuard<'_, FreeLists> {
        self.lists.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A block of at least `bytes` (contents undefined): `(address, class)`.
    fn alloc(&self, bytes: usize) -> Result<(u64, usize)> {
        let class = size_class(bytes);
        if class == 0 {
            return Ok((0, 0));
        }
        if let Some(p) = self.lists().take(class) {
            return Ok((p, class));
        }
        let fresh = |pool: &Pool| -> std::result::Result<u64, AllocError> {
            let p = pool.exec.malloc(class)?;
            pool.lists().note_new(class);
            Ok(p)
        };
        match fresh(self) {
            Ok(p) => Ok((p, class)),
            Err(AllocError::OutOfMemory) => {
                // Give the cached blocks back to the driver and try once more.
                let cached = self.lists().drain();
                self.exec.free(&cached).map_err(be)?;
                fresh(self).map(|p| (p, class)).map_err(|e| match e {
                    AllocError::OutOfMemory => Error::OutOfMemory { backend: "cuda".into(), bytes },
                    AllocError::Other(s) => be(s),
                })
            }
            Err(AllocError::Other(s)) => Err(be(s)),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let blocks = self.lists().drain();
        // Nothing to report to from a destructor; the driver reclaims memory at exit.
        let _ = self.exec.free(&blocks);
    }
}

/// A buffer of `T` in device memory. Dropping it returns its block to the allocator's
/// free list; work already queued on it completes first (one stream orders everything).
pub struct CudaBuf<T> {
    ptr: u64,
    len: usize,
    class: usize,
    pool: Arc<Pool>,
    _t: PhantomData<T>,
}

impl<T> CudaBuf<T> {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T> Drop for CudaBuf<T> {
    fn drop(&mut self) {
        if self.class > 0 {
            self.pool.lists().give(self.class, self.ptr);
        }
    }
}

/// Allocator counters, for tests and diagnostics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryStats {
    pub live_bytes: usize,
    pub cached_bytes: usize,
    pub hits: u64,
    pub misses: u64,
}

/// The CUDA backend over `f32`.
pub struct Cuda {
    pool: Arc<Pool>,
    exec: Arc<Exec>,
    emulated: bool,
}

type B<'a> = View<'a, CudaBuf<f32>>;
type M<'a> = ViewMut<'a, CudaBuf<f32>>;
type I<'a> = View<'a, CudaBuf<u32>>;
type IM<'a> = ViewMut<'a, CudaBuf<u32>>;

fn addr<T>(v: &View<'_, CudaBuf<T>>) -> u64 {
    v.buf.ptr + (v.offset * std::mem::size_of::<T>()) as u64
}
fn addr_mut<T>(v: &ViewMut<'_, CudaBuf<T>>) -> u64 {
    v.buf.ptr + (v.offset * std::mem::size_of::<T>()) as u64
}
fn p<T>(v: &View<'_, CudaBuf<T>>) -> Arg {
    Arg::Ptr(addr(v))
}
fn pm<T>(v: &ViewMut<'_, CudaBuf<T>>) -> Arg {
    Arg::Ptr(addr_mut(v))
}
fn n(v: usize) -> Arg {
    i64_arg(v)
}

impl Cuda {
    /// The backend on GPU 0.
    pub fn new() -> Result<Cuda> {
        Cuda::on_device(0)
    }

    /// The backend on GPU `ordinal`. No driver, no device, a missing NVRTC or cuBLAS,
    /// or kernels that do not compile for the device's architecture: an
    /// [`Error::Backend`] saying which.
    pub fn on_device(ordinal: usize) -> Result<Cuda> {
        let gpu = Gpu::new(ordinal).map_err(be)?;
        Ok(Cuda::with(Exec::Gpu(gpu), false))
    }

    /// The same backend on the host emulator (see [`crate::emu`]): for testing the
    /// backend's logic and kernels on machines without a GPU. Needs a C++ compiler.
    pub fn emulated() -> Result<Cuda> {
        let emu = Emu::new().map_err(be)?;
        Ok(Cuda::with(Exec::Emu(emu), true))
    }

    fn with(exec: Exec, emulated: bool) -> Cuda {
        let exec = Arc::new(exec);
        Cuda { pool: Arc::new(Pool { exec: exec.clone(), lists: Mutex::new(FreeLists::new()) }), exec, emulated }
    }

    /// What this backend runs on.
    pub fn describe(&self) -> String {
        self.exec.describe()
    }

    pub fn memory_stats(&self) -> MemoryStats {
        let l = self.pool.lists();
        MemoryStats { live_bytes: l.live_bytes, cached_bytes: l.cached_bytes, hits: l.hits, misses: l.misses }
    }

    /// A buffer of `len` elements with undefined contents.
    fn raw<T>(&self, len: usize) -> Result<CudaBuf<T>> {
        let bytes = len.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| be("allocation size overflows"))?;
        let (ptr, class) = self.pool.alloc(bytes)?;
        Ok(CudaBuf { ptr, len, class, pool: self.pool.clone(), _t: PhantomData })
    }

    fn zeroed<T>(&self, len: usize) -> Result<CudaBuf<T>> {
        let b = self.raw::<T>(len)?;
        let words = len * std::mem::size_of::<T>() / 4;
        if words > 0 {
            self.exec.memset32(b.ptr, 0, words).map_err(be)?;
        }
        Ok(b)
    }

    fn upload_raw<T: Copy>(&self, data: &[T]) -> Result<CudaBuf<T>> {
        let b = self.raw::<T>(data.len())?;
        if !data.is_empty() {
            // SAFETY: plain-old-data element types (f32, u32), viewed as bytes.
            let bytes = unsafe { std::slice::from_raw_parts(data.as_ptr() as *const u8, std::mem::size_of_val(data)) };
            self.exec.htod(b.ptr, bytes).map_err(be)?;
        }
        Ok(b)
    }

    fn download_raw<T: Copy + Default>(&self, src: u64, len: usize) -> Result<Vec<T>> {
        let mut out = vec![T::default(); len];
        if len > 0 {
            // SAFETY: as in upload_raw.
            let bytes =
                unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, std::mem::size_of_val(&out[..])) };
            self.exec.dtoh(bytes, src).map_err(be)?;
        }
        Ok(out)
    }

    /// Launch `name` over `items` grid-stride items (nothing when there are none).
    fn launch(&self, name: &str, items: usize, mut args: Vec<Arg>) -> Result<()> {
        match blocks_for(items) {
            None => Ok(()),
            Some(blocks) => self.exec.launch(name, blocks, &mut args).map_err(be),
        }
    }

    fn fill_addr(&self, dst: u64, len: usize, v: f32) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.exec.memset32(dst, v.to_bits(), len).map_err(be)
    }

    /// The trait's GEMM on raw addresses (also used by the convolutions).
    fn gemm_addr(&self, g: &Gemm, a: u64, b: u64, c: u64) -> Result<()> {
        if g.batch == 0 || g.m == 0 || g.n == 0 {
            return Ok(());
        }
        if g.k == 0 {
            // C = alpha·0 + beta·C, matrix by matrix (BLAS leaves k = 0 to the caller's reading).
            for bi in 0..g.batch {
                let ci = c + (bi * g.stride_c * 4) as u64;
                if g.beta == 0.0 {
                    self.fill_addr(ci, g.m * g.n, 0.0)?;
                } else {
                    let args = vec![Arg::F64(g.beta), Arg::F64(0.0), Arg::Ptr(ci), Arg::Ptr(ci), n(g.m * g.n)];
                    self.launch("cim_affine", g.m * g.n, args)?;
                }
            }
            return Ok(());
        }
        let cm = to_col_major(g).map_err(be)?;
        // Column-major: cuBLAS's first operand is the trait's B.
        self.exec.sgemm(&cm, b, a, c).map_err(be)
    }

    fn conv_geometry(p: &Conv2d) -> (usize, usize, bool) {
        let k = p.c_in * p.kh * p.kw;
        let plane = p.out_h() * p.out_w();
        let direct = p.kh == 1 && p.kw == 1 && p.stride == (1, 1) && p.pad == (0, 0);
        (k, plane, direct)
    }

    fn conv_args(p: &Conv2d, img0: usize, count: usize) -> Vec<Arg> {
        vec![
            n(img0),
            n(count),
            n(p.c_in),
            n(p.h),
            n(p.w),
            n(p.kh),
            n(p.kw),
            n(p.stride.0),
            n(p.stride.1),
            n(p.pad.0),
            n(p.pad.1),
            n(p.out_h()),
            n(p.out_w()),
        ]
    }

    /// Columns of images `img0 .. img0 + count` into `cols`.
    fn im2col(&self, p: &Conv2d, x: u64, cols: u64, img0: usize, count: usize) -> Result<()> {
        let (k, plane, _) = Self::conv_geometry(p);
        let mut args = vec![Arg::Ptr(x), Arg::Ptr(cols)];
        args.extend(Self::conv_args(p, img0, count));
        self.launch("cim_im2col", count * k * plane, args)
    }

    fn row_op(&self, name: &str, rows: usize, d: usize, x: B<'_>, y: M<'_>) -> Result<()> {
        self.launch(name, rows, vec![p(&x), pm(&y), n(rows), n(d)])
    }
}

impl Backend for Cuda {
    type E = f32;
    type Buf = CudaBuf<f32>;
    type IBuf = CudaBuf<u32>;

    fn name(&self) -> &'static str {
        if self.emulated {
            "cuda-emulated"
        } else {
            "cuda"
        }
    }

    // ---- memory -------------------------------------------------------------------------
    fn alloc(&self, len: usize) -> Result<CudaBuf<f32>> {
        self.zeroed(len)
    }
    fn upload(&self, data: &[f32]) -> Result<CudaBuf<f32>> {
        self.upload_raw(data)
    }
    fn download(&self, src: B<'_>) -> Result<Vec<f32>> {
        self.download_raw(addr(&src), src.len)
    }
    fn len(&self, buf: &CudaBuf<f32>) -> usize {
        buf.len
    }
    fn alloc_idx(&self, len: usize) -> Result<CudaBuf<u32>> {
        self.zeroed(len)
    }
    fn upload_idx(&self, data: &[u32]) -> Result<CudaBuf<u32>> {
        self.upload_raw(data)
    }
    fn download_idx(&self, src: I<'_>) -> Result<Vec<u32>> {
        self.download_raw(addr(&src), src.len)
    }
    fn len_idx(&self, buf: &CudaBuf<u32>) -> usize {
        buf.len
    }
    fn copy(&self, src: B<'_>, dst: M<'_>) -> Result<()> {
        let len = src.len.min(dst.len);
        if len == 0 {
            return Ok(());
        }
        self.exec.dtod(addr_mut(&dst), addr(&src), len * 4).map_err(be)
    }
    fn fill(&self, dst: M<'_>, v: f32) -> Result<()> {
        self.fill_addr(addr_mut(&dst), dst.len, v)
    }
    fn synchronize(&self) -> Result<()> {
        self.exec.synchronize().map_err(be)
    }

    // ---- layout -------------------------------------------------------------------------
    fn permute(&self, shape: &[usize], perm: &[usize], x: B<'_>, y: M<'_>) -> Result<()> {
        let total = y.len;
        let (out_shape, src) = permute_plan(shape, perm);
        let (cs, st) = coalesce(&out_shape, &[src]);
        match (dims8(&cs), dims8(&st[0])) {
            (Ok(shape8), Ok(st8)) => {
                let args = vec![p(&x), pm(&y), n(total), Arg::I32(cs.len() as i32), shape8, st8];
                self.launch("cim_strided_copy", total, args)
            }
            _ => {
                // More than eight axes that cannot be merged: through the host.
                let host = self.download(x)?;
                let mut out = host.clone();
                cim_core::reference::kernels::permute(shape, perm, &host, &mut out);
                let tmp = self.upload(&out)?;
                self.copy(View { buf: &tmp, offset: 0, len: out.len() }, y)
            }
        }
    }

    // ---- linear algebra -----------------------------------------------------------------
    fn gemm(&self, g: &Gemm, a: B<'_>, b: B<'_>, c: M<'_>) -> Result<()> {
        self.gemm_addr(g, addr(&a), addr(&b), addr_mut(&c))
    }

    // ---- convolution --------------------------------------------------------------------
    fn conv2d(&self, pc: &Conv2d, x: B<'_>, w: B<'_>, bias: Option<B<'_>>, y: M<'_>) -> Result<()> {
        let (k, plane, direct) = Self::conv_geometry(pc);
        let (xa, wa, ya) = (addr(&x), addr(&w), addr_mut(&y));
        if y.len == 0 {
            return Ok(());
        }
        let per_out = pc.c_out * plane;
        let gemm = |count: usize, cols: u64, y0: u64| {
            let g = Gemm {
                batch: count,
                m: pc.c_out,
                n: plane,
                k,
                trans_a: false,
                trans_b: false,
                stride_a: 0,
                stride_b: k * plane,
                stride_c: per_out,
                alpha: 1.0,
                beta: 0.0,
            };
            self.gemm_addr(&g, wa, cols, y0)
        };
        if direct {
            gemm(pc.n, xa, ya)?;
        } else {
            let chunk = launch::conv_chunk(pc.n, k * plane, COLS_LIMIT);
            let cols = self.raw::<f32>(chunk * k * plane)?;
            for img0 in (0..pc.n).step_by(chunk) {
                let count = chunk.min(pc.n - img0);
                self.im2col(pc, xa, cols.ptr, img0, count)?;
                gemm(count, cols.ptr, ya + (img0 * per_out * 4) as u64)?;
            }
        }
        if let Some(bias) = bias {
            let total = pc.n * per_out;
            self.launch("cim_add_channel_bias", total, vec![p(&bias), Arg::Ptr(ya), n(total), n(pc.c_out), n(plane)])?;
        }
        Ok(())
    }

    fn conv2d_grad_input(&self, pc: &Conv2d, dy: B<'_>, w: B<'_>, dx: M<'_>) -> Result<()> {
        let (k, plane, direct) = Self::conv_geometry(pc);
        let (dya, wa, dxa) = (addr(&dy), addr(&w), addr_mut(&dx));
        if dx.len == 0 {
            return Ok(());
        }
        if pc.c_out == 0 || plane == 0 {
            return self.fill_addr(dxa, dx.len, 0.0);
        }
        // cols[img] = Wᵀ · dy[img]: W is stored c_out×K, so op(A) = Wᵀ is K×c_out.
        let gemm = |count: usize, dy0: u64, cols: u64| {
            let g = Gemm {
                batch: count,
                m: k,
                n: plane,
                k: pc.c_out,
                trans_a: true,
                trans_b: false,
                stride_a: 0,
                stride_b: pc.c_out * plane,
                stride_c: k * plane,
                alpha: 1.0,
                beta: 0.0,
            };
            self.gemm_addr(&g, wa, dy0, cols)
        };
        if direct {
            return gemm(pc.n, dya, dxa);
        }
        let chunk = launch::conv_chunk(pc.n, k * plane, COLS_LIMIT);
        let cols = self.raw::<f32>(chunk * k * plane)?;
        for img0 in (0..pc.n).step_by(chunk) {
            let count = chunk.min(pc.n - img0);
            gemm(count, dya + (img0 * pc.c_out * plane * 4) as u64, cols.ptr)?;
            let mut args = vec![Arg::Ptr(cols.ptr), Arg::Ptr(dxa)];
            args.extend(Self::conv_args(pc, img0, count));
            self.launch("cim_col2im", count * pc.c_in * pc.h * pc.w, args)?;
        }
        Ok(())
    }

    fn conv2d_grad_weight(&self, pc: &Conv2d, x: B<'_>, dy: B<'_>, dw: M<'_>) -> Result<()> {
        let (k, plane, direct) = Self::conv_geometry(pc);
        let (xa, dya, dwa) = (addr(&x), addr(&dy), addr_mut(&dw));
        if dw.len == 0 || plane == 0 || pc.n == 0 {
            return Ok(());
        }
        // dW += dy[img] · cols[img]ᵀ, one image at a time (each accumulates into dW).
        let gemm = |dy0: u64, cols: u64| {
            let g = Gemm {
                batch: 1,
                m: pc.c_out,
                n: k,
                k: plane,
                trans_a: false,
                trans_b: true,
                stride_a: pc.c_out * plane,
                stride_b: k * plane,
                stride_c: pc.c_out * k,
                alpha: 1.0,
                beta: 1.0,
            };
            self.gemm_addr(&g, dy0, cols, dwa)
        };
        let dy_img = |img: usize| dya + (img * pc.c_out * plane * 4) as u64;
        if direct {
            for img in 0..pc.n {
                gemm(dy_img(img), xa + (img * k * plane * 4) as u64)?;
            }
            return Ok(());
        }
        let chunk = launch::conv_chunk(pc.n, k * plane, COLS_LIMIT);
        let cols = self.raw::<f32>(chunk * k * plane)?;
        for img0 in (0..pc.n).step_by(chunk) {
            let count = chunk.min(pc.n - img0);
            self.im2col(pc, xa, cols.ptr, img0, count)?;
            for i in 0..count {
                gemm(dy_img(img0 + i), cols.ptr + (i * k * plane * 4) as u64)?;
            }
        }
        Ok(())
    }

    fn conv2d_grad_bias(&self, pc: &Conv2d, dy: B<'_>, db: M<'_>) -> Result<()> {
        let plane = pc.out_h() * pc.out_w();
        self.launch("cim_channel_sum_acc", pc.c_out, vec![p(&dy), pm(&db), n(pc.n), n(pc.c_out), n(plane)])
    }

    // ---- normalization ------------------------------------------------------------------
    fn batch_norm_train(
        &self,
        bn: &BatchNorm,
        x: B<'_>,
        gamma: B<'_>,
        beta: B<'_>,
        running_mean: M<'_>,
        running_var: M<'_>,
        y: M<'_>,
        save_mean: M<'_>,
        save_invstd: M<'_>,
    ) -> Result<()> {
        let args = vec![
            p(&x),
            p(&gamma),
            p(&beta),
            pm(&running_mean),
            pm(&running_var),
            pm(&y),
            pm(&save_mean),
            pm(&save_invstd),
            n(bn.n),
            n(bn.c),
            n(bn.hw),
            Arg::F64(bn.eps),
            Arg::F64(bn.momentum),
        ];
        self.launch("cim_batch_norm_train", bn.c, args)
    }
    fn batch_norm_eval(
        &self,
        bn: &BatchNorm,
        x: B<'_>,
        gamma: B<'_>,
        beta: B<'_>,
        running_mean: B<'_>,
        running_var: B<'_>,
        y: M<'_>,
    ) -> Result<()> {
        let total = bn.n * bn.c * bn.hw;
        let args = vec![
            p(&x),
            p(&gamma),
            p(&beta),
            p(&running_mean),
            p(&running_var),
            pm(&y),
            n(total),
            n(bn.c),
            n(bn.hw),
            Arg::F64(bn.eps),
        ];
        self.launch("cim_batch_norm_eval", total, args)
    }
    fn batch_norm_backward(
        &self,
        bn: &BatchNorm,
        x: B<'_>,
        dy: B<'_>,
        gamma: B<'_>,
        save_mean: B<'_>,
        save_invstd: B<'_>,
        dx: M<'_>,
        dgamma: M<'_>,
        dbeta: M<'_>,
    ) -> Result<()> {
        let args = vec![
            p(&x),
            p(&dy),
            p(&gamma),
            p(&save_mean),
            p(&save_invstd),
            pm(&dx),
            pm(&dgamma),
            pm(&dbeta),
            n(bn.n),
            n(bn.c),
            n(bn.hw),
        ];
        self.launch("cim_batch_norm_backward", bn.c, args)
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
        let args = vec![p(&x), p(&gamma), p(&beta), pm(&y), pm(&mean), pm(&rstd), n(rows), n(d), Arg::F64(eps)];
        self.launch("cim_layer_norm", rows, args)
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
        let args = vec![p(&x), p(&dy), p(&gamma), p(&mean), p(&rstd), pm(&dx), n(rows), n(d)];
        self.launch("cim_layer_norm_backward_dx", rows, args)?;
        let args = vec![p(&x), p(&dy), p(&mean), p(&rstd), pm(&dgamma), pm(&dbeta), n(rows), n(d)];
        self.launch("cim_layer_norm_backward_params", d, args)
    }

    // ---- softmax ------------------------------------------------------------------------
    fn softmax(&self, rows: usize, d: usize, x: B<'_>, y: M<'_>) -> Result<()> {
        self.row_op("cim_softmax", rows, d, x, y)
    }
    fn softmax_backward(&self, rows: usize, d: usize, y: B<'_>, dy: B<'_>, dx: M<'_>) -> Result<()> {
        self.launch("cim_softmax_backward", rows, vec![p(&y), p(&dy), pm(&dx), n(rows), n(d)])
    }
    fn log_softmax(&self, rows: usize, d: usize, x: B<'_>, y: M<'_>) -> Result<()> {
        self.row_op("cim_log_softmax", rows, d, x, y)
    }
    fn log_softmax_backward(&self, rows: usize, d: usize, y: B<'_>, dy: B<'_>, dx: M<'_>) -> Result<()> {
        self.launch("cim_log_softmax_backward", rows, vec![p(&y), p(&dy), pm(&dx), n(rows), n(d)])
    }

    // ---- activations --------------------------------------------------------------------
    fn gelu(&self, x: B<'_>, y: M<'_>) -> Result<()> {
        self.launch("cim_gelu", y.len, vec![p(&x), pm(&y), n(y.len)])
    }
    fn gelu_backward(&self, x: B<'_>, dy: B<'_>, dx: M<'_>) -> Result<()> {
        self.launch("cim_gelu_backward", dx.len, vec![p(&x), p(&dy), pm(&dx), n(dx.len)])
    }
    fn relu(&self, x: B<'_>, y: M<'_>) -> Result<()> {
        self.launch("cim_relu", y.len, vec![p(&x), pm(&y), n(y.len)])
    }
    fn relu_backward(&self, x: B<'_>, dy: B<'_>, dx: M<'_>) -> Result<()> {
        self.launch("cim_relu_backward", dx.len, vec![p(&x), p(&dy), pm(&dx), n(dx.len)])
    }

    // ---- pooling and resampling ---------------------------------------------------------
    fn max_pool2d(&self, pp: &Pool2d, x: B<'_>, y: M<'_>, idx: IM<'_>) -> Result<()> {
        let mut args = vec![p(&x), pm(&y), pm(&idx)];
        args.extend(pool_args(pp));
        self.launch("cim_max_pool2d", pp.y_len(), args)
    }
    fn max_pool2d_backward(&self, pp: &Pool2d, dy: B<'_>, idx: I<'_>, dx: M<'_>) -> Result<()> {
        let mut args = vec![p(&dy), p(&idx), pm(&dx)];
        args.extend(pool_args(pp));
        self.launch("cim_max_pool2d_backward", pp.x_len(), args)
    }
    fn avg_pool2d(&self, pp: &Pool2d, x: B<'_>, y: M<'_>) -> Result<()> {
        let mut args = vec![p(&x), pm(&y)];
        args.extend(pool_args(pp));
        args.push(Arg::I32(pp.count_include_pad as i32));
        self.launch("cim_avg_pool2d", pp.y_len(), args)
    }
    fn avg_pool2d_backward(&self, pp: &Pool2d, dy: B<'_>, dx: M<'_>) -> Result<()> {
        let mut args = vec![p(&dy), pm(&dx)];
        args.extend(pool_args(pp));
        args.push(Arg::I32(pp.count_include_pad as i32));
        self.launch("cim_avg_pool2d_backward", pp.x_len(), args)
    }
    fn global_avg_pool(&self, nc: usize, hw: usize, x: B<'_>, y: M<'_>) -> Result<()> {
        self.launch("cim_global_avg_pool", nc, vec![p(&x), pm(&y), n(nc), n(hw)])
    }
    fn global_avg_pool_backward(&self, nc: usize, hw: usize, dy: B<'_>, dx: M<'_>) -> Result<()> {
        self.launch("cim_global_avg_pool_backward", nc * hw, vec![p(&dy), pm(&dx), n(nc), n(hw)])
    }
    fn upsample_nearest(&self, nc: usize, h: usize, w: usize, scale: usize, x: B<'_>, y: M<'_>) -> Result<()> {
        let items = nc * h * scale * w * scale;
        self.launch("cim_upsample_nearest", items, vec![p(&x), pm(&y), n(nc), n(h), n(w), n(scale)])
    }
    fn upsample_nearest_backward(
        &self,
        nc: usize,
        h: usize,
        w: usize,
        scale: usize,
        dy: B<'_>,
        dx: M<'_>,
    ) -> Result<()> {
        self.launch("cim_upsample_nearest_backward", nc * h * w, vec![p(&dy), pm(&dx), n(nc), n(h), n(w), n(scale)])
    }

    // ---- embedding ----------------------------------------------------------------------
    fn gather_rows(&self, d: usize, table: B<'_>, ids: I<'_>, out: M<'_>) -> Result<()> {
        self.launch("cim_gather_rows", ids.len * d, vec![p(&table), p(&ids), pm(&out), n(ids.len), n(d)])
    }
    fn scatter_add_rows(&self, d: usize, ids: I<'_>, src: B<'_>, table: M<'_>) -> Result<()> {
        self.launch("cim_scatter_add_rows", ids.len * d, vec![p(&ids), p(&src), pm(&table), n(ids.len), n(d)])
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
        let total = out.len;
        let (shape, st) = coalesce(out_shape, &[broadcast_strides(a_shape), broadcast_strides(b_shape)]);
        let code = match op {
            BinaryOp::Add => 0,
            BinaryOp::Sub => 1,
            BinaryOp::Mul => 2,
            BinaryOp::Div => 3,
            BinaryOp::Max => 4,
            BinaryOp::Min => 5,
        };
        let args = vec![
            Arg::I32(code),
            p(&a),
            p(&b),
            pm(&out),
            n(total),
            Arg::I32(shape.len() as i32),
            dims8(&shape).map_err(be)?,
            dims8(&st[0]).map_err(be)?,
            dims8(&st[1]).map_err(be)?,
        ];
        self.launch("cim_binary", total, args)
    }
    fn unary(&self, op: UnaryOp, x: B<'_>, y: M<'_>) -> Result<()> {
        let code = match op {
            UnaryOp::Neg => 0,
            UnaryOp::Exp => 1,
            UnaryOp::Ln => 2,
            UnaryOp::Sqrt => 3,
            UnaryOp::Abs => 4,
            UnaryOp::Square => 5,
            UnaryOp::Recip => 6,
            UnaryOp::Sigmoid => 7,
            UnaryOp::Tanh => 8,
            UnaryOp::Sign => 9,
        };
        self.launch("cim_unary", y.len, vec![Arg::I32(code), p(&x), pm(&y), n(y.len)])
    }
    fn affine(&self, alpha: f64, beta: f64, x: B<'_>, y: M<'_>) -> Result<()> {
        self.launch("cim_affine", y.len, vec![Arg::F64(alpha), Arg::F64(beta), p(&x), pm(&y), n(y.len)])
    }
    fn axpy(&self, alpha: f64, x: B<'_>, y: M<'_>) -> Result<()> {
        self.launch("cim_axpy", y.len, vec![Arg::F64(alpha), p(&x), pm(&y), n(y.len)])
    }
    fn reduce(&self, op: ReduceOp, outer: usize, axis: usize, inner: usize, x: B<'_>, y: M<'_>) -> Result<()> {
        let code = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Mean => 1,
            ReduceOp::Max => 2,
        };
        self.launch("cim_reduce", outer * inner, vec![Arg::I32(code), p(&x), pm(&y), n(outer), n(axis), n(inner)])
    }

    // ---- RESPIX sliding-window statistics -----------------------------------------------
    fn window_stats(&self, nc: usize, h: usize, w: usize, k: usize, x: B<'_>, mean: M<'_>, var: M<'_>) -> Result<()> {
        self.launch("cim_window_stats", nc * h * w, vec![p(&x), pm(&mean), pm(&var), n(nc), n(h), n(w), n(k)])
    }
    fn window_stats_backward(
        &self,
        nc: usize,
        h: usize,
        w: usize,
        k: usize,
        x: B<'_>,
        mean: B<'_>,
        dmean: B<'_>,
        dvar: B<'_>,
        dx: M<'_>,
    ) -> Result<()> {
        let args = vec![p(&x), p(&mean), p(&dmean), p(&dvar), pm(&dx), n(nc), n(h), n(w), n(k)];
        self.launch("cim_window_stats_backward", nc * h * w, args)
    }

    // ---- losses -------------------------------------------------------------------------
    fn cross_entropy(&self, rows: usize, classes: usize, logits: B<'_>, targets: I<'_>, loss: M<'_>) -> Result<()> {
        self.launch("cim_cross_entropy", rows, vec![p(&logits), p(&targets), pm(&loss), n(rows), n(classes)])
    }
    fn cross_entropy_backward(
        &self,
        rows: usize,
        classes: usize,
        logits: B<'_>,
        targets: I<'_>,
        dloss: B<'_>,
        dlogits: M<'_>,
    ) -> Result<()> {
        let args = vec![p(&logits), p(&targets), p(&dloss), pm(&dlogits), n(rows), n(classes)];
        self.launch("cim_cross_entropy_backward", rows, args)
    }
    fn bce_with_logits(&self, logits: B<'_>, targets: B<'_>, loss: M<'_>) -> Result<()> {
        self.launch("cim_loss", loss.len, vec![Arg::I32(0), p(&logits), p(&targets), pm(&loss), n(loss.len)])
    }
    fn bce_with_logits_backward(&self, logits: B<'_>, targets: B<'_>, dloss: B<'_>, dlogits: M<'_>) -> Result<()> {
        let args = vec![Arg::I32(0), p(&logits), p(&targets), p(&dloss), pm(&dlogits), n(dlogits.len)];
        self.launch("cim_loss_backward", dlogits.len, args)
    }
    fn l1_loss(&self, pred: B<'_>, target: B<'_>, loss: M<'_>) -> Result<()> {
        self.launch("cim_loss", loss.len, vec![Arg::I32(1), p(&pred), p(&target), pm(&loss), n(loss.len)])
    }
    fn l1_loss_backward(&self, pred: B<'_>, target: B<'_>, dloss: B<'_>, dpred: M<'_>) -> Result<()> {
        let args = vec![Arg::I32(1), p(&pred), p(&target), p(&dloss), pm(&dpred), n(dpred.len)];
        self.launch("cim_loss_backward", dpred.len, args)
    }
    fn l2_loss(&self, pred: B<'_>, target: B<'_>, loss: M<'_>) -> Result<()> {
        self.launch("cim_loss", loss.len, vec![Arg::I32(2), p(&pred), p(&target), pm(&loss), n(loss.len)])
    }
    fn l2_loss_backward(&self, pred: B<'_>, target: B<'_>, dloss: B<'_>, dpred: M<'_>) -> Result<()> {
        let args = vec![Arg::I32(2), p(&pred), p(&target), p(&dloss), pm(&dpred), n(dpred.len)];
        self.launch("cim_loss_backward", dpred.len, args)
    }

    // ---- randomness and selection -------------------------------------------------------
    fn sample_categorical(
        &self,
        rows: usize,
        classes: usize,
        temperature: f64,
        seed: u64,
        offset: u64,
        logits: B<'_>,
        out: IM<'_>,
    ) -> Result<()> {
        let args = vec![
            p(&logits),
            pm(&out),
            n(rows),
            n(classes),
            Arg::F32(temperature as f32),
            Arg::U64(seed),
            Arg::U64(offset),
        ];
        self.launch("cim_sample_categorical", rows, args)
    }
    fn rand_uniform(&self, seed: u64, offset: u64, out: M<'_>) -> Result<()> {
        self.launch("cim_rand_uniform", out.len, vec![pm(&out), n(out.len), Arg::U64(seed), Arg::U64(offset)])
    }
    fn argmax(&self, rows: usize, d: usize, x: B<'_>, out: IM<'_>) -> Result<()> {
        self.launch("cim_argmax", rows, vec![p(&x), pm(&out), n(rows), n(d)])
    }

    // ---- precision ----------------------------------------------------------------------
    fn cast(&self, dtype: DType, x: B<'_>, y: M<'_>) -> Result<()> {
        let code = match dtype {
            DType::F64 => 0,
            DType::F32 => 1,
            DType::F16 => 2,
            DType::BF16 => 3,
        };
        self.launch("cim_cast", y.len, vec![Arg::I32(code), p(&x), pm(&y), n(y.len)])
    }

    // ---- optimizer ----------------------------------------------------------------------
    fn sum_squares(&self, x: B<'_>, out: M<'_>) -> Result<()> {
        let len = x.len;
        if len == 0 {
            return self.fill_addr(addr_mut(&out), 1, 0.0);
        }
        let parts = len.div_ceil(SUMSQ_CHUNK);
        let partial = self.raw::<f64>(parts)?;
        let args = vec![p(&x), Arg::Ptr(partial.ptr), n(len), n(SUMSQ_CHUNK), n(parts)];
        self.launch("cim_sum_squares_partial", parts, args)?;
        self.launch("cim_sum_partials", 1, vec![Arg::Ptr(partial.ptr), pm(&out), n(parts)])
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
        let bc1 = 1.0 - libm::pow(hp.beta1, hp.step as f64);
        let bc2 = 1.0 - libm::pow(hp.beta2, hp.step as f64);
        let (scale, has_scale) = match &grad_scale {
            Some(s) => (addr(s), 1),
            None => (0, 0),
        };
        let (pa, ga, ma, va) = (addr_mut(&params), addr(&grads), addr_mut(&m), addr_mut(&v));
        for g in groups {
            let at = |base: u64| Arg::Ptr(base + (g.offset * 4) as u64);
            let args = vec![
                at(pa),
                at(ga),
                at(ma),
                at(va),
                n(g.len),
                Arg::F64(g.lr),
                Arg::F64(g.weight_decay),
                Arg::F64(hp.beta1),
                Arg::F64(hp.beta2),
                Arg::F64(hp.eps),
                Arg::F64(bc1),
                Arg::F64(bc2),
                Arg::Ptr(scale),
                Arg::I32(has_scale),
            ];
            self.launch("cim_adamw", g.len, args)?;
        }
        Ok(())
    }
}

fn pool_args(pp: &Pool2d) -> Vec<Arg> {
    vec![
        n(pp.n * pp.c),
        n(pp.h),
        n(pp.w),
        n(pp.kh),
        n(pp.kw),
        n(pp.stride.0),
        n(pp.stride.1),
        n(pp.pad.0),
        n(pp.pad.1),
        n(pp.out_h()),
        n(pp.out_w()),
    ]
}
