//! The reference backend: plain loops over host memory, `no_std`, generic over `f32`
//! and `f64`. It is the oracle every other backend is held to, and the embedded
//! inference path. Its kernels live in [`kernels`] as functions over slices, so that
//! faster host backends can reuse the ones they do not speed up.

pub mod kernels;

use crate::backend::*;
use crate::element::{DType, Element};
use crate::error::{Error, Result};
use crate::tensor::{View, ViewMut};

use alloc::vec::Vec;
use core::marker::PhantomData;

/// The reference backend over element type `T`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reference<T: Element = f32>(PhantomData<T>);

impl<T: Element> Reference<T> {
    pub fn new() -> Self {
        Reference(PhantomData)
    }
}

/// Host allocation that reports failure instead of aborting.
pub(crate) fn try_zeroed<V: Clone + Default>(len: usize, backend: &str) -> Result<Vec<V>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| Error::OutOfMemory {
        backend: backend.into(),
        bytes: len.saturating_mul(core::mem::size_of::<V>()),
    })?;
    v.resize(len, V::default());
    Ok(v)
}

type B<'a, T> = View<'a, Vec<T>>;
type M<'a, T> = ViewMut<'a, Vec<T>>;
type I<'a> = View<'a, Vec<u32>>;
type IM<'a> = ViewMut<'a, Vec<u32>>;

impl<T: Element> Backend for Reference<T> {
    type E = T;
    type Buf = Vec<T>;
    type IBuf = Vec<u32>;

    fn name(&self) -> &'static str {
        "reference"
    }

    fn alloc(&self, len: usize) -> Result<Vec<T>> {
        try_zeroed(len, "reference")
    }
    fn upload(&self, data: &[T]) -> Result<Vec<T>> {
        let mut v = try_zeroed(data.len(), "reference")?;
        v.copy_from_slice(data);
        Ok(v)
    }
    fn download(&self, src: B<'_, T>) -> Result<Vec<T>> {
        Ok(src.slice().to_vec())
    }
    fn len(&self, buf: &Vec<T>) -> usize {
        buf.len()
    }
    fn alloc_idx(&self, len: usize) -> Result<Vec<u32>> {
        try_zeroed(len, "reference")
    }
    fn upload_idx(&self, data: &[u32]) -> Result<Vec<u32>> {
        Ok(data.to_vec())
    }
    fn download_idx(&self, src: I<'_>) -> Result<Vec<u32>> {
        Ok(src.slice().to_vec())
    }
    fn len_idx(&self, buf: &Vec<u32>) -> usize {
        buf.len()
    }
    fn copy(&self, src: B<'_, T>, dst: M<'_, T>) -> Result<()> {
        dst.slice().copy_from_slice(src.slice());
        Ok(())
    }
    fn fill(&self, dst: M<'_, T>, v: T) -> Result<()> {
        dst.slice().fill(v);
        Ok(())
    }

    fn permute(&self, shape: &[usize], perm: &[usize], x: B<'_, T>, y: M<'_, T>) -> Result<()> {
        kernels::permute(shape, perm, x.slice(), y.slice());
        Ok(())
    }

    fn gemm(&self, p: &Gemm, a: B<'_, T>, b: B<'_, T>, c: M<'_, T>) -> Result<()> {
        kernels::gemm(p, a.slice(), b.slice(), c.slice());
        Ok(())
    }

    fn conv2d(&self, p: &Conv2d, x: B<'_, T>, w: B<'_, T>, bias: Option<B<'_, T>>, y: M<'_, T>) -> Result<()> {
        kernels::conv2d(p, x.slice(), w.slice(), bias.map(|b| b.slice()), y.slice());
        Ok(())
    }
    fn conv2d_grad_input(&self, p: &Conv2d, dy: B<'_, T>, w: B<'_, T>, dx: M<'_, T>) -> Result<()> {
        kernels::conv2d_grad_input(p, dy.slice(), w.slice(), dx.slice());
        Ok(())
    }
    fn conv2d_grad_weight(&self, p: &Conv2d, x: B<'_, T>, dy: B<'_, T>, dw: M<'_, T>) -> Result<()> {
        kernels::conv2d_grad_weight(p, x.slice(), dy.slice(), dw.slice());
        Ok(())
    }
    fn conv2d_grad_bias(&self, p: &Conv2d, dy: B<'_, T>, db: M<'_, T>) -> Result<()> {
        kernels::conv2d_grad_bias(p, dy.slice(), db.slice());
        Ok(())
    }

    fn batch_norm_train(
        &self,
        p: &BatchNorm,
        x: B<'_, T>,
        gamma: B<'_, T>,
        beta: B<'_, T>,
        running_mean: M<'_, T>,
        running_var: M<'_, T>,
        y: M<'_, T>,
        save_mean: M<'_, T>,
        save_invstd: M<'_, T>,
    ) -> Result<()> {
        kernels::batch_norm_train(
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
        x: B<'_, T>,
        gamma: B<'_, T>,
        beta: B<'_, T>,
        running_mean: B<'_, T>,
        running_var: B<'_, T>,
        y: M<'_, T>,
    ) -> Result<()> {
        kernels::batch_norm_eval(
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
        x: B<'_, T>,
        dy: B<'_, T>,
        gamma: B<'_, T>,
        save_mean: B<'_, T>,
        save_invstd: B<'_, T>,
        dx: M<'_, T>,
        dgamma: M<'_, T>,
        dbeta: M<'_, T>,
    ) -> Result<()> {
        kernels::batch_norm_backward(
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
        x: B<'_, T>,
        gamma: B<'_, T>,
        beta: B<'_, T>,
        y: M<'_, T>,
        mean: M<'_, T>,
        rstd: M<'_, T>,
    ) -> Result<()> {
        kernels::layer_norm(
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
        x: B<'_, T>,
        dy: B<'_, T>,
        gamma: B<'_, T>,
        mean: B<'_, T>,
        rstd: B<'_, T>,
        dx: M<'_, T>,
        dgamma: M<'_, T>,
        dbeta: M<'_, T>,
    ) -> Result<()> {
        kernels::layer_norm_backward(
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
        );
        Ok(())
    }

    fn softmax(&self, rows: usize, d: usize, x: B<'_, T>, y: M<'_, T>) -> Result<()> {
        kernels::softmax(rows, d, x.slice(), y.slice());
        Ok(())
    }
    fn softmax_backward(&self, rows: usize, d: usize, y: B<'_, T>, dy: B<'_, T>, dx: M<'_, T>) -> Result<()> {
        kernels::softmax_backward(rows, d, y.slice(), dy.slice(), dx.slice());
        Ok(())
    }
    fn log_softmax(&self, rows: usize, d: usize, x: B<'_, T>, y: M<'_, T>) -> Result<()> {
        kernels::log_softmax(rows, d, x.slice(), y.slice());
        Ok(())
    }
    fn log_softmax_backward(&self, rows: usize, d: usize, y: B<'_, T>, dy: B<'_, T>, dx: M<'_, T>) -> Result<()> {
        kernels::log_softmax_backward(rows, d, y.slice(), dy.slice(), dx.slice());
        Ok(())
    }

    fn gelu(&self, x: B<'_, T>, y: M<'_, T>) -> Result<()> {
        kernels::gelu(x.slice(), y.slice());
        Ok(())
    }
    fn gelu_backward(&self, x: B<'_, T>, dy: B<'_, T>, dx: M<'_, T>) -> Result<()> {
        kernels::gelu_backward(x.slice(), dy.slice(), dx.slice());
        Ok(())
    }
    fn relu(&self, x: B<'_, T>, y: M<'_, T>) -> Result<()> {
        kernels::relu(x.slice(), y.slice());
        Ok(())
    }
    fn relu_backward(&self, x: B<'_, T>, dy: B<'_, T>, dx: M<'_, T>) -> Result<()> {
        kernels::relu_backward(x.slice(), dy.slice(), dx.slice());
        Ok(())
    }

    fn max_pool2d(&self, p: &Pool2d, x: B<'_, T>, y: M<'_, T>, idx: IM<'_>) -> Result<()> {
        kernels::max_pool2d(p, x.slice(), y.slice(), idx.slice());
        Ok(())
    }
    fn max_pool2d_backward(&self, p: &Pool2d, dy: B<'_, T>, idx: I<'_>, dx: M<'_, T>) -> Result<()> {
        kernels::max_pool2d_backward(p, dy.slice(), idx.slice(), dx.slice());
        Ok(())
    }
    fn avg_pool2d(&self, p: &Pool2d, x: B<'_, T>, y: M<'_, T>) -> Result<()> {
        kernels::avg_pool2d(p, x.slice(), y.slice());
        Ok(())
    }
    fn avg_pool2d_backward(&self, p: &Pool2d, dy: B<'_, T>, dx: M<'_, T>) -> Result<()> {
        kernels::avg_pool2d_backward(p, dy.slice(), dx.slice());
        Ok(())
    }
    fn global_avg_pool(&self, nc: usize, hw: usize, x: B<'_, T>, y: M<'_, T>) -> Result<()> {
        kernels::global_avg_pool(nc, hw, x.slice(), y.slice());
        Ok(())
    }
    fn global_avg_pool_backward(&self, nc: usize, hw: usize, dy: B<'_, T>, dx: M<'_, T>) -> Result<()> {
        kernels::global_avg_pool_backward(nc, hw, dy.slice(), dx.slice());
        Ok(())
    }
    fn upsample_nearest(&self, nc: usize, h: usize, w: usize, scale: usize, x: B<'_, T>, y: M<'_, T>) -> Result<()> {
        kernels::upsample_nearest(nc, h, w, scale, x.slice(), y.slice());
        Ok(())
    }
    fn upsample_nearest_backward(
        &self,
        nc: usize,
        h: usize,
        w: usize,
        scale: usize,
        dy: B<'_, T>,
        dx: M<'_, T>,
    ) -> Result<()> {
        kernels::upsample_nearest_backward(nc, h, w, scale, dy.slice(), dx.slice());
        Ok(())
    }

    fn gather_rows(&self, d: usize, table: B<'_, T>, ids: I<'_>, out: M<'_, T>) -> Result<()> {
        kernels::gather_rows(d, table.slice(), ids.slice(), out.slice());
        Ok(())
    }
    fn scatter_add_rows(&self, d: usize, ids: I<'_>, src: B<'_, T>, table: M<'_, T>) -> Result<()> {
        kernels::scatter_add_rows(d, ids.slice(), src.slice(), table.slice());
        Ok(())
    }

    fn binary(
        &self,
        op: BinaryOp,
        a: B<'_, T>,
        a_shape: &[usize],
        b: B<'_, T>,
        b_shape: &[usize],
        out: M<'_, T>,
        out_shape: &[usize],
    ) -> Result<()> {
        kernels::binary(op, a.slice(), a_shape, b.slice(), b_shape, out.slice(), out_shape);
        Ok(())
    }
    fn unary(&self, op: UnaryOp, x: B<'_, T>, y: M<'_, T>) -> Result<()> {
        kernels::unary(op, x.slice(), y.slice());
        Ok(())
    }
    fn affine(&self, alpha: f64, beta: f64, x: B<'_, T>, y: M<'_, T>) -> Result<()> {
        kernels::affine(alpha, beta, x.slice(), y.slice());
        Ok(())
    }
    fn axpy(&self, alpha: f64, x: B<'_, T>, y: M<'_, T>) -> Result<()> {
        kernels::axpy(alpha, x.slice(), y.slice());
        Ok(())
    }
    fn reduce(&self, op: ReduceOp, outer: usize, axis: usize, inner: usize, x: B<'_, T>, y: M<'_, T>) -> Result<()> {
        kernels::reduce(op, outer, axis, inner, x.slice(), y.slice());
        Ok(())
    }

    fn window_stats(
        &self,
        nc: usize,
        h: usize,
        w: usize,
        k: usize,
        x: B<'_, T>,
        mean: M<'_, T>,
        var: M<'_, T>,
    ) -> Result<()> {
        kernels::window_stats(nc, h, w, k, x.slice(), mean.slice(), var.slice());
        Ok(())
    }
    fn window_stats_backward(
        &self,
        nc: usize,
        h: usize,
        w: usize,
        k: usize,
        x: B<'_, T>,
        mean: B<'_, T>,
        dmean: B<'_, T>,
        dvar: B<'_, T>,
        dx: M<'_, T>,
    ) -> Result<()> {
        kernels::window_stats_backward(nc, h, w, k, x.slice(), mean.slice(), dmean.slice(), dvar.slice(), dx.slice());
        Ok(())
    }

    fn cross_entropy(
        &self,
        rows: usize,
        classes: usize,
        logits: B<'_, T>,
        targets: I<'_>,
        loss: M<'_, T>,
    ) -> Result<()> {
        kernels::cross_entropy(rows, classes, logits.slice(), targets.slice(), loss.slice());
        Ok(())
    }
    fn cross_entropy_backward(
        &self,
        rows: usize,
        classes: usize,
        logits: B<'_, T>,
        targets: I<'_>,
        dloss: B<'_, T>,
        dlogits: M<'_, T>,
    ) -> Result<()> {
        kernels::cross_entropy_backward(rows, classes, logits.slice(), targets.slice(), dloss.slice(), dlogits.slice());
        Ok(())
    }
    fn bce_with_logits(&self, logits: B<'_, T>, targets: B<'_, T>, loss: M<'_, T>) -> Result<()> {
        kernels::bce_with_logits(logits.slice(), targets.slice(), loss.slice());
        Ok(())
    }
    fn bce_with_logits_backward(
        &self,
        logits: B<'_, T>,
        targets: B<'_, T>,
        dloss: B<'_, T>,
        dlogits: M<'_, T>,
    ) -> Result<()> {
        kernels::bce_with_logits_backward(logits.slice(), targets.slice(), dloss.slice(), dlogits.slice());
        Ok(())
    }
    fn l1_loss(&self, pred: B<'_, T>, target: B<'_, T>, loss: M<'_, T>) -> Result<()> {
        kernels::l1_loss(pred.slice(), target.slice(), loss.slice());
        Ok(())
    }
    fn l1_loss_backward(&self, pred: B<'_, T>, target: B<'_, T>, dloss: B<'_, T>, dpred: M<'_, T>) -> Result<()> {
        kernels::l1_loss_backward(pred.slice(), target.slice(), dloss.slice(), dpred.slice());
        Ok(())
    }
    fn l2_loss(&self, pred: B<'_, T>, target: B<'_, T>, loss: M<'_, T>) -> Result<()> {
        kernels::l2_loss(pred.slice(), target.slice(), loss.slice());
        Ok(())
    }
    fn l2_loss_backward(&self, pred: B<'_, T>, target: B<'_, T>, dloss: B<'_, T>, dpred: M<'_, T>) -> Result<()> {
        kernels::l2_loss_backward(pred.slice(), target.slice(), dloss.slice(), dpred.slice());
        Ok(())
    }

    fn sample_categorical(
        &self,
        rows: usize,
        classes: usize,
        temperature: f64,
        seed: u64,
        offset: u64,
        logits: B<'_, T>,
        out: IM<'_>,
    ) -> Result<()> {
        kernels::sample_categorical(rows, classes, temperature, seed, offset, logits.slice(), out.slice());
        Ok(())
    }
    fn rand_uniform(&self, seed: u64, offset: u64, out: M<'_, T>) -> Result<()> {
        kernels::rand_uniform(seed, offset, out.slice());
        Ok(())
    }
    fn argmax(&self, rows: usize, d: usize, x: B<'_, T>, out: IM<'_>) -> Result<()> {
        kernels::argmax(rows, d, x.slice(), out.slice());
        Ok(())
    }

    fn cast(&self, dtype: DType, x: B<'_, T>, y: M<'_, T>) -> Result<()> {
        kernels::cast(dtype, x.slice(), y.slice());
        Ok(())
    }

    fn sum_squares(&self, x: B<'_, T>, out: M<'_, T>) -> Result<()> {
        kernels::sum_squares(x.slice(), out.slice());
        Ok(())
    }
    fn adamw(
        &self,
        hp: &AdamW,
        groups: &[ParamGroup],
        params: M<'_, T>,
        grads: B<'_, T>,
        m: M<'_, T>,
        v: M<'_, T>,
        grad_scale: Option<B<'_, T>>,
    ) -> Result<()> {
        let scale = grad_scale.map(|s| s.slice()[0]).unwrap_or(T::one());
        kernels::adamw(hp, groups, params.slice(), grads.slice(), m.slice(), v.slice(), scale);
        Ok(())
    }
}
