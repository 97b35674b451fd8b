//! The backend trait: the op set every backend implements (DESIGN.md §3).
//!
//! Kernels take [`View`]s into backend buffers and write into [`ViewMut`]s. They
//! trust their arguments: lengths and shapes are validated once, in [`crate::ops`]
//! and in the layers, so every backend shares the same checks and the same typed
//! errors. A backend may still return an error (out of memory, driver failure).
//!
//! Conventions, the same for every kernel:
//! - row-major layouts; images are NCHW;
//! - outputs named `d*` of an *activation* (`dx`, `dlogits`) are overwritten;
//! - outputs that are *parameter gradients* (`dw`, `db`, `dgamma`, `dbeta`, the
//!   GEMM `C` with `beta = 1`, `scatter_add_rows`) are **accumulated** (`+=`), so a
//!   parameter used twice (weight sharing) sums its gradients, and zeroing the
//!   gradient buffer is the caller's job.

use crate::element::{DType, Element};
use crate::error::Result;
use crate::tensor::{View, ViewMut};
use alloc::vec::Vec;

/// Batched, strided GEMM: `C[b] = alpha · op(A[b]) · op(B[b]) + beta · C[b]` for `b < batch`.
///
/// `op(A)` is `m×k`: `A` is stored `m×k`, or `k×m` when `trans_a`. Likewise `op(B)` is
/// `k×n`, stored `n×k` when `trans_b`. `C` is `m×n`. Matrix `b` of each operand starts at
/// `b · stride_*` elements; a stride of 0 broadcasts one matrix over the batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
    pub alpha: f64,
    pub beta: f64,
}

impl Gemm {
    /// A plain `m×k · k×n` product, packed operands, `alpha = 1`, `beta = 0`.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        Gemm {
            batch: 1,
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
            stride_a: m * k,
            stride_b: k * n,
            stride_c: m * n,
            alpha: 1.0,
            beta: 0.0,
        }
    }
    /// Elements spanned by each operand (the minimal buffer length).
    pub fn span_a(&self) -> usize {
        span(self.batch, self.stride_a, self.m * self.k)
    }
    pub fn span_b(&self) -> usize {
        span(self.batch, self.stride_b, self.k * self.n)
    }
    pub fn span_c(&self) -> usize {
        span(self.batch, self.stride_c, self.m * self.n)
    }
    pub fn flops(&self) -> f64 {
        2.0 * self.batch as f64 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

fn span(batch: usize, stride: usize, one: usize) -> usize {
    if batch == 0 || one == 0 {
        0
    } else {
        (batch - 1) * stride + one
    }
}

/// A 2-D convolution (cross-correlation, as PyTorch): `x: [n, c_in, h, w]`,
/// `w: [c_out, c_in, kh, kw]`, `bias: [c_out]`, `y: [n, c_out, out_h, out_w]`.
/// Zero padding; no dilation, no groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub pad: (usize, usize),
}

impl Conv2d {
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad.0 - self.kh) / self.stride.0 + 1
    }
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad.1 - self.kw) / self.stride.1 + 1
    }
    pub fn x_len(&self) -> usize {
        self.n * self.c_in * self.h * self.w
    }
    pub fn w_len(&self) -> usize {
        self.c_out * self.c_in * self.kh * self.kw
    }
    pub fn y_len(&self) -> usize {
        self.n * self.c_out * self.out_h() * self.out_w()
    }
    pub fn flops(&self) -> f64 {
        2.0 * self.y_len() as f64 * (self.c_in * self.kh * self.kw) as f64
    }
}

/// A 2-D pooling window over `x: [n, c, h, w]`, `y: [n, c, out_h, out_w]`.
/// Padding counts as `-inf` for max pooling; for average pooling it counts as zero
/// and is included in the divisor when `count_include_pad` (PyTorch's default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2d {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    pub count_include_pad: bool,
}

impl Pool2d {
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad.0 - self.kh) / self.stride.0 + 1
    }
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad.1 - self.kw) / self.stride.1 + 1
    }
    pub fn x_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub fn y_len(&self) -> usize {
        self.n * self.c * self.out_h() * self.out_w()
    }
}

/// Batch normalization over `x: [n, c, hw]` per channel `c`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNorm {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
    pub eps: f64,
    /// Running statistics update: `r = (1 - momentum) · r + momentum · batch_stat` (PyTorch).
    pub momentum: f64,
}

/// Elementwise binary operations with NumPy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
}

/// Elementwise unary operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Exp,
    Ln,
    Sqrt,
    Abs,
    Square,
    Recip,
    Sigmoid,
    Tanh,
    /// -1, 0 or 1.
    Sign,
}

/// Reductions over one axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
}

/// Hyper-parameters of one AdamW step (Loshchilov & Hutter; PyTorch's `AdamW`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// 1-based step count, for bias correction.
    pub step: u64,
}

/// A contiguous range of the flat parameter buffer with its own learning rate and
/// weight decay (no decay on biases and norms; layer-wise learning-rate decay).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamGroup {
    pub offset: usize,
    pub len: usize,
    pub lr: f64,
    pub weight_decay: f64,
}

/// The op set of `cim`. See the module docs for the conventions.
pub trait Backend: Send + Sync {
    /// The element type the backend computes in.
    type E: Element;
    /// A buffer of `E` on the backend's device.
    type Buf: Send + Sync;
    /// A buffer of `u32` indices on the backend's device.
    type IBuf: Send + Sync;

    /// A short name for messages ("reference", "cpu", "cuda").
    fn name(&self) -> &'static str;

    // ---- memory -------------------------------------------------------------------------
    /// A zero-filled buffer of `len` elements.
    fn alloc(&self, len: usize) -> Result<Self::Buf>;
    fn upload(&self, data: &[Self::E]) -> Result<Self::Buf>;
    fn download(&self, src: View<'_, Self::Buf>) -> Result<Vec<Self::E>>;
    fn len(&self, buf: &Self::Buf) -> usize;
    fn alloc_idx(&self, len: usize) -> Result<Self::IBuf>;
    fn upload_idx(&self, data: &[u32]) -> Result<Self::IBuf>;
    fn download_idx(&self, src: View<'_, Self::IBuf>) -> Result<Vec<u32>>;
    fn len_idx(&self, buf: &Self::IBuf) -> usize;
    fn copy(&self, src: View<'_, Self::Buf>, dst: ViewMut<'_, Self::Buf>) -> Result<()>;
    fn fill(&self, dst: ViewMut<'_, Self::Buf>, v: Self::E) -> Result<()>;
    /// Wait until queued work is done (a no-op on synchronous backends).
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    // ---- layout -------------------------------------------------------------------------
    /// `y = x.permute(perm)` for `x` of row-major `shape`: `y` has shape
    /// `[shape[perm[0]], ...]` and `y[i] = x[j]` with `j[perm[a]] = i[a]`.
    /// The default goes through the host; device backends override it.
    fn permute(
        &self,
        shape: &[usize],
        perm: &[usize],
        x: View<'_, Self::Buf>,
        y: ViewMut<'_, Self::Buf>,
    ) -> Result<()> {
        let host = self.download(x)?;
        let mut out = host.clone();
        crate::reference::kernels::permute(shape, perm, &host, &mut out);
        let tmp = self.upload(&out)?;
        self.copy(View { buf: &tmp, offset: 0, len: out.len() }, y)
    }

    // ---- linear algebra -----------------------------------------------------------------
    fn gemm(&self, p: &Gemm, a: View<'_, Self::Buf>, b: View<'_, Self::Buf>, c: ViewMut<'_, Self::Buf>) -> Result<()>;

    // ---- convolution --------------------------------------------------------------------
    /// `y = conv(x, w) + bias` (overwrites `y`).
    fn conv2d(
        &self,
        p: &Conv2d,
        x: View<'_, Self::Buf>,
        w: View<'_, Self::Buf>,
        bias: Option<View<'_, Self::Buf>>,
        y: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;
    /// `dx = conv_transpose(dy, w)` (overwrites `dx`).
    fn conv2d_grad_input(
        &self,
        p: &Conv2d,
        dy: View<'_, Self::Buf>,
        w: View<'_, Self::Buf>,
        dx: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;
    /// `dw += x ⋆ dy` (accumulates).
    fn conv2d_grad_weight(
        &self,
        p: &Conv2d,
        x: View<'_, Self::Buf>,
        dy: View<'_, Self::Buf>,
        dw: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;
    /// `db[c] += Σ_{n,h,w} dy[n,c,h,w]` (accumulates).
    fn conv2d_grad_bias(&self, p: &Conv2d, dy: View<'_, Self::Buf>, db: ViewMut<'_, Self::Buf>) -> Result<()>;

    // ---- normalization ------------------------------------------------------------------
    /// Training-mode batch norm: normalizes with the batch statistics (biased variance),
    /// updates the running statistics (unbiased variance, as PyTorch), and saves the
    /// batch mean and `1/sqrt(var + eps)` for the backward pass.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_train(
        &self,
        p: &BatchNorm,
        x: View<'_, Self::Buf>,
        gamma: View<'_, Self::Buf>,
        beta: View<'_, Self::Buf>,
        running_mean: ViewMut<'_, Self::Buf>,
        running_var: ViewMut<'_, Self::Buf>,
        y: ViewMut<'_, Self::Buf>,
        save_mean: ViewMut<'_, Self::Buf>,
        save_invstd: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;
    /// Evaluation-mode batch norm with the running statistics.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_eval(
        &self,
        p: &BatchNorm,
        x: View<'_, Self::Buf>,
        gamma: View<'_, Self::Buf>,
        beta: View<'_, Self::Buf>,
        running_mean: View<'_, Self::Buf>,
        running_var: View<'_, Self::Buf>,
        y: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;
    /// Backward of [`Backend::batch_norm_train`]: overwrites `dx`, accumulates `dgamma`, `dbeta`.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward(
        &self,
        p: &BatchNorm,
        x: View<'_, Self::Buf>,
        dy: View<'_, Self::Buf>,
        gamma: View<'_, Self::Buf>,
        save_mean: View<'_, Self::Buf>,
        save_invstd: View<'_, Self::Buf>,
        dx: ViewMut<'_, Self::Buf>,
        dgamma: ViewMut<'_, Self::Buf>,
        dbeta: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;
    /// Layer norm over the last axis of `x: [rows, d]`; saves mean and `1/sqrt(var + eps)` per row.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm(
        &self,
        rows: usize,
        d: usize,
        eps: f64,
        x: View<'_, Self::Buf>,
        gamma: View<'_, Self::Buf>,
        beta: View<'_, Self::Buf>,
        y: ViewMut<'_, Self::Buf>,
        mean: ViewMut<'_, Self::Buf>,
        rstd: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;
    /// Backward of [`Backend::layer_norm`]: overwrites `dx`, accumulates `dgamma`, `dbeta`.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm_backward(
        &self,
        rows: usize,
        d: usize,
        x: View<'_, Self::Buf>,
        dy: View<'_, Self::Buf>,
        gamma: View<'_, Self::Buf>,
        mean: View<'_, Self::Buf>,
        rstd: View<'_, Self::Buf>,
        dx: ViewMut<'_, Self::Buf>,
        dgamma: ViewMut<'_, Self::Buf>,
        dbeta: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    // ---- softmax ------------------------------------------------------------------------
    /// Softmax over the last axis of `[rows, d]`.
    fn softmax(&self, rows: usize, d: usize, x: View<'_, Self::Buf>, y: ViewMut<'_, Self::Buf>) -> Result<()>;
    /// `dx = y ⊙ (dy - Σ dy ⊙ y)` from the softmax output `y`.
    fn softmax_backward(
        &self,
        rows: usize,
        d: usize,
        y: View<'_, Self::Buf>,
        dy: View<'_, Self::Buf>,
        dx: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;
    fn log_softmax(&self, rows: usize, d: usize, x: View<'_, Self::Buf>, y: ViewMut<'_, Self::Buf>) -> Result<()>;
    /// `dx = dy - exp(y) · Σ dy` from the log-softmax output `y`.
    fn log_softmax_backward(
        &self,
        rows: usize,
        d: usize,
        y: View<'_, Self::Buf>,
        dy: View<'_, Self::Buf>,
        dx: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    // ---- activations --------------------------------------------------------------------
    /// Exact GELU: `0.5 · x · (1 + erf(x / √2))`.
    fn gelu(&self, x: View<'_, Self::Buf>, y: ViewMut<'_, Self::Buf>) -> Result<()>;
    fn gelu_backward(&self, x: View<'_, Self::Buf>, dy: View<'_, Self::Buf>, dx: ViewMut<'_, Self::Buf>) -> Result<()>;
    fn relu(&self, x: View<'_, Self::Buf>, y: ViewMut<'_, Self::Buf>) -> Result<()>;
    /// `dx = dy · [x > 0]`.
    fn relu_backward(&self, x: View<'_, Self::Buf>, dy: View<'_, Self::Buf>, dx: ViewMut<'_, Self::Buf>) -> Result<()>;

    // ---- pooling and resampling ---------------------------------------------------------
    /// Max pooling; `idx` receives, per output, the flat index `ih · w + iw` of the
    /// chosen input within its `(n, c)` plane (the first maximum wins, as PyTorch).
    fn max_pool2d(
        &self,
        p: &Pool2d,
        x: View<'_, Self::Buf>,
        y: ViewMut<'_, Self::Buf>,
        idx: ViewMut<'_, Self::IBuf>,
    ) -> Result<()>;
    /// Routes `dy` to the saved positions (overwrites `dx`; overlapping windows sum).
    fn max_pool2d_backward(
        &self,
        p: &Pool2d,
        dy: View<'_, Self::Buf>,
        idx: View<'_, Self::IBuf>,
        dx: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;
    fn avg_pool2d(&self, p: &Pool2d, x: View<'_, Self::Buf>, y: ViewMut<'_, Self::Buf>) -> Result<()>;
    fn avg_pool2d_backward(&self, p: &Pool2d, dy: View<'_, Self::Buf>, dx: ViewMut<'_, Self::Buf>) -> Result<()>;
    /// Mean over the last axis of `[nc, hw]`, giving `[nc]`.
    fn global_avg_pool(&self, nc: usize, hw: usize, x: View<'_, Self::Buf>, y: ViewMut<'_, Self::Buf>) -> Result<()>;
    fn global_avg_pool_backward(
        &self,
        nc: usize,
        hw: usize,
        dy: View<'_, Self::Buf>,
        dx: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;
    /// Nearest upsampling of `[nc, h, w]` by an integer factor to `[nc, h·s, w·s]`.
    fn upsample_nearest(
        &self,
        nc: usize,
        h: usize,
        w: usize,
        scale: usize,
        x: View<'_, Self::Buf>,
        y: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;
    /// Sums each `s×s` block of `dy` (overwrites `dx`).
    fn upsample_nearest_backward(
        &self,
        nc: usize,
        h: usize,
        w: usize,
        scale: usize,
        dy: View<'_, Self::Buf>,
        dx: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    // ---- embedding ----------------------------------------------------------------------
    /// `out[i, :] = table[ids[i], :]` with rows of width `d`.
    fn gather_rows(
        &self,
        d: usize,
        table: View<'_, Self::Buf>,
        ids: View<'_, Self::IBuf>,
        out: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;
    /// `table[ids[i], :] += src[i, :]` (accumulates; repeated ids sum).
    fn scatter_add_rows(
        &self,
        d: usize,
        ids: View<'_, Self::IBuf>,
        src: View<'_, Self::Buf>,
        table: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    // ---- elementwise and reductions -----------------------------------------------------
    /// `out = a op b` with NumPy broadcasting. The three shapes have the same rank; each
    /// axis of `a` and `b` is either the output's size or 1.
    #[allow(clippy::too_many_arguments)]
    fn binary(
        &self,
        op: BinaryOp,
        a: View<'_, Self::Buf>,
        a_shape: &[usize],
        b: View<'_, Self::Buf>,
        b_shape: &[usize],
        out: ViewMut<'_, Self::Buf>,
        out_shape: &[usize],
    ) -> Result<()>;
    fn unary(&self, op: UnaryOp, x: View<'_, Self::Buf>, y: ViewMut<'_, Self::Buf>) -> Result<()>;
    /// `y = alpha · x + beta` with scalars.
    fn affine(&self, alpha: f64, beta: f64, x: View<'_, Self::Buf>, y: ViewMut<'_, Self::Buf>) -> Result<()>;
    /// `y += alpha · x`.
    fn axpy(&self, alpha: f64, x: View<'_, Self::Buf>, y: ViewMut<'_, Self::Buf>) -> Result<()>;
    /// Reduce the middle axis of `x: [outer, axis, inner]` into `y: [outer, inner]`.
    fn reduce(
        &self,
        op: ReduceOp,
        outer: usize,
        axis: usize,
        inner: usize,
        x: View<'_, Self::Buf>,
        y: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    // ---- RESPIX sliding-window statistics -----------------------------------------------
    /// Mean and (biased) variance over the `k×k` window around each pixel of
    /// `x: [nc, h, w]`, same-size outputs. The window of pixel `(i, j)` spans rows
    /// `i - k/2 ..= i + (k-1)/2` (likewise columns), clipped to the image; only pixels
    /// inside the image count (PyTorch's `avg_pool2d(count_include_pad=False)`).
    #[allow(clippy::too_many_arguments)]
    fn window_stats(
        &self,
        nc: usize,
        h: usize,
        w: usize,
        k: usize,
        x: View<'_, Self::Buf>,
        mean: ViewMut<'_, Self::Buf>,
        var: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;
    /// Gradient of [`Backend::window_stats`] given upstream `dmean`, `dvar` (overwrites `dx`).
    #[allow(clippy::too_many_arguments)]
    fn window_stats_backward(
        &self,
        nc: usize,
        h: usize,
        w: usize,
        k: usize,
        x: View<'_, Self::Buf>,
        mean: View<'_, Self::Buf>,
        dmean: View<'_, Self::Buf>,
        dvar: View<'_, Self::Buf>,
        dx: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    // ---- losses (per element or per row; reduce with `reduce`) --------------------------
    /// `loss[r] = logsumexp(logits[r]) - logits[r, target[r]]`.
    fn cross_entropy(
        &self,
        rows: usize,
        classes: usize,
        logits: View<'_, Self::Buf>,
        targets: View<'_, Self::IBuf>,
        loss: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;
    /// `dlogits[r] = dloss[r] · (softmax(logits[r]) - onehot(target[r]))`.
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy_backward(
        &self,
        rows: usize,
        classes: usize,
        logits: View<'_, Self::Buf>,
        targets: View<'_, Self::IBuf>,
        dloss: View<'_, Self::Buf>,
        dlogits: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;
    /// `loss = max(z, 0) - z·t + ln(1 + exp(-|z|))` (stable BCE with logits).
    fn bce_with_logits(
        &self,
        logits: View<'_, Self::Buf>,
        targets: View<'_, Self::Buf>,
        loss: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;
    /// `dlogits = dloss · (sigmoid(z) - t)`.
    fn bce_with_logits_backward(
        &self,
        logits: View<'_, Self::Buf>,
        targets: View<'_, Self::Buf>,
        dloss: View<'_, Self::Buf>,
        dlogits: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;
    /// `loss = |p - t|`.
    fn l1_loss(
        &self,
        pred: View<'_, Self::Buf>,
        target: View<'_, Self::Buf>,
        loss: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;
    /// `dpred = dloss · sign(p - t)` (0 where equal).
    fn l1_loss_backward(
        &self,
        pred: View<'_, Self::Buf>,
        target: View<'_, Self::Buf>,
        dloss: View<'_, Self::Buf>,
        dpred: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;
    /// `loss = (p - t)²`.
    fn l2_loss(
        &self,
        pred: View<'_, Self::Buf>,
        target: View<'_, Self::Buf>,
        loss: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;
    /// `dpred = 2 · dloss · (p - t)`.
    fn l2_loss_backward(
        &self,
        pred: View<'_, Self::Buf>,
        target: View<'_, Self::Buf>,
        dloss: View<'_, Self::Buf>,
        dpred: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    // ---- randomness and selection -------------------------------------------------------
    /// Draw one class per row from `softmax(logits / temperature)` by the Gumbel-max trick,
    /// with the noise of [`crate::rng::gumbel`] at counter `offset + r · classes + c`.
    /// Every backend returns the same samples for the same seed.
    #[allow(clippy::too_many_arguments)]
    fn sample_categorical(
        &self,
        rows: usize,
        classes: usize,
        temperature: f64,
        seed: u64,
        offset: u64,
        logits: View<'_, Self::Buf>,
        out: ViewMut<'_, Self::IBuf>,
    ) -> Result<()>;
    /// `out[i] = uniform(seed, offset + i)` in `[0, 1)` ([`crate::rng::uniform`]).
    fn rand_uniform(&self, seed: u64, offset: u64, out: ViewMut<'_, Self::Buf>) -> Result<()>;
    /// Index of the first maximum of each row of `[rows, d]`.
    fn argmax(&self, rows: usize, d: usize, x: View<'_, Self::Buf>, out: ViewMut<'_, Self::IBuf>) -> Result<()>;

    // ---- precision ----------------------------------------------------------------------
    /// `y = round_to(dtype, x)`: the nearest value representable in `dtype` (ties to even).
    fn cast(&self, dtype: DType, x: View<'_, Self::Buf>, y: ViewMut<'_, Self::Buf>) -> Result<()>;

    // ---- optimizer ----------------------------------------------------------------------
    /// `out[0] = Σ x²` (for the global gradient norm).
    fn sum_squares(&self, x: View<'_, Self::Buf>, out: ViewMut<'_, Self::Buf>) -> Result<()>;
    /// One fused AdamW step over the ranges in `groups` of the flat buffers. Gradients are
    /// multiplied by `grad_scale[0]` first when given (clipping, loss-scale undo), read on
    /// the device so that no host synchronization is needed. Decoupled weight decay:
    /// `p -= lr · (m̂ / (√v̂ + eps) + wd · p)`.
    #[allow(clippy::too_many_arguments)]
    fn adamw(
        &self,
        hp: &AdamW,
        groups: &[ParamGroup],
        params: ViewMut<'_, Self::Buf>,
        grads: View<'_, Self::Buf>,
        m: ViewMut<'_, Self::Buf>,
        v: ViewMut<'_, Self::Buf>,
        grad_scale: Option<View<'_, Self::Buf>>,
    ) -> Result<()>;
}
