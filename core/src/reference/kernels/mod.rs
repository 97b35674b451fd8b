//! Reference kernels over host slices. Each function has the semantics of the
//! [`crate::backend::Backend`] method of the same name; arguments are trusted
//! (validated by the caller), and slices have exactly the lengths the op implies.
#![allow(clippy::too_many_arguments)]

use crate::backend::*;
use crate::element::{DType, Element};

pub fn gemm<T: Element>(p: &Gemm, a: &[T], b: &[T], c: &mut [T]) {
    todo!()
}
pub fn conv2d<T: Element>(p: &Conv2d, x: &[T], w: &[T], bias: Option<&[T]>, y: &mut [T]) {
    todo!()
}
pub fn conv2d_grad_input<T: Element>(p: &Conv2d, dy: &[T], w: &[T], dx: &mut [T]) {
    todo!()
}
pub fn conv2d_grad_weight<T: Element>(p: &Conv2d, x: &[T], dy: &[T], dw: &mut [T]) {
    todo!()
}
pub fn conv2d_grad_bias<T: Element>(p: &Conv2d, dy: &[T], db: &mut [T]) {
    todo!()
}
pub fn batch_norm_train<T: Element>(
    p: &BatchNorm,
    x: &[T],
    gamma: &[T],
    beta: &[T],
    running_mean: &mut [T],
    running_var: &mut [T],
    y: &mut [T],
    save_mean: &mut [T],
    save_invstd: &mut [T],
) {
    todo!()
}
pub fn batch_norm_eval<T: Element>(
    p: &BatchNorm,
    x: &[T],
    gamma: &[T],
    beta: &[T],
    running_mean: &[T],
    running_var: &[T],
    y: &mut [T],
) {
    todo!()
}
pub fn batch_norm_backward<T: Element>(
    p: &BatchNorm,
    x: &[T],
    dy: &[T],
    gamma: &[T],
    save_mean: &[T],
    save_invstd: &[T],
    dx: &mut [T],
    dgamma: &mut [T],
    dbeta: &mut [T],
) {
    todo!()
}
pub fn layer_norm<T: Element>(
    rows: usize,
    d: usize,
    eps: f64,
    x: &[T],
    gamma: &[T],
    beta: &[T],
    y: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
) {
    todo!()
}
pub fn layer_norm_backward<T: Element>(
    rows: usize,
    d: usize,
    x: &[T],
    dy: &[T],
    gamma: &[T],
    mean: &[T],
    rstd: &[T],
    dx: &mut [T],
    dgamma: &mut [T],
    dbeta: &mut [T],
) {
    todo!()
}
pub fn softmax<T: Element>(rows: usize, d: usize, x: &[T], y: &mut [T]) {
    todo!()
}
pub fn softmax_backward<T: Element>(rows: usize, d: usize, y: &[T], dy: &[T], dx: &mut [T]) {
    todo!()
}
pub fn log_softmax<T: Element>(rows: usize, d: usize, x: &[T], y: &mut [T]) {
    todo!()
}
pub fn log_softmax_backward<T: Element>(rows: usize, d: usize, y: &[T], dy: &[T], dx: &mut [T]) {
    todo!()
}
pub fn gelu<T: Element>(x: &[T], y: &mut [T]) {
    todo!()
}
pub fn gelu_backward<T: Element>(x: &[T], dy: &[T], dx: &mut [T]) {
    todo!()
}
pub fn relu<T: Element>(x: &[T], y: &mut [T]) {
    todo!()
}
pub fn relu_backward<T: Element>(x: &[T], dy: &[T], dx: &mut [T]) {
    todo!()
}
pub fn max_pool2d<T: Element>(p: &Pool2d, x: &[T], y: &mut [T], idx: &mut [u32]) {
    todo!()
}
pub fn max_pool2d_backward<T: Element>(p: &Pool2d, dy: &[T], idx: &[u32], dx: &mut [T]) {
    todo!()
}
pub fn avg_pool2d<T: Element>(p: &Pool2d, x: &[T], y: &mut [T]) {
    todo!()
}
pub fn avg_pool2d_backward<T: Element>(p: &Pool2d, dy: &[T], dx: &mut [T]) {
    todo!()
}
pub fn global_avg_pool<T: Element>(nc: usize, hw: usize, x: &[T], y: &mut [T]) {
    todo!()
}
pub fn global_avg_pool_backward<T: Element>(nc: usize, hw: usize, dy: &[T], dx: &mut [T]) {
    todo!()
}
pub fn upsample_nearest<T: Element>(
    nc: usize,
    h: usize,
    w: usize,
    scale: usize,
    x: &[T],
    y: &mut [T],
) {
    todo!()
}
pub fn upsample_nearest_backward<T: Element>(
    nc: usize,
    h: usize,
    w: usize,
    scale: usize,
    dy: &[T],
    dx: &mut [T],
) {
    todo!()
}
pub fn gather_rows<T: Element>(d: usize, table: &[T], ids: &[u32], out: &mut [T]) {
    todo!()
}
pub fn scatter_add_rows<T: Element>(d: usize, ids: &[u32], src: &[T], table: &mut [T]) {
    todo!()
}
pub fn binary<T: Element>(
    op: BinaryOp,
    a: &[T],
    a_shape: &[usize],
    b: &[T],
    b_shape: &[usize],
    out: &mut [T],
    out_shape: &[usize],
) {
    todo!()
}
pub fn unary<T: Element>(op: UnaryOp, x: &[T], y: &mut [T]) {
    todo!()
}
pub fn affine<T: Element>(alpha: f64, beta: f64, x: &[T], y: &mut [T]) {
    todo!()
}
pub fn axpy<T: Element>(alpha: f64, x: &[T], y: &mut [T]) {
    todo!()
}
pub fn reduce<T: Element>(
    op: ReduceOp,
    outer: usize,
    axis: usize,
    inner: usize,
    x: &[T],
    y: &mut [T],
) {
    todo!()
}
pub fn window_stats<T: Element>(
    nc: usize,
    h: usize,
    w: usize,
    k: usize,
    x: &[T],
    mean: &mut [T],
    var: &mut [T],
) {
    todo!()
}
pub fn window_stats_backward<T: Element>(
    nc: usize,
    h: usize,
    w: usize,
    k: usize,
    x: &[T],
    mean: &[T],
    dmean: &[T],
    dvar: &[T],
    dx: &mut [T],
) {
    todo!()
}
pub fn cross_entropy<T: Element>(
    rows: usize,
    classes: usize,
    logits: &[T],
    targets: &[u32],
    loss: &mut [T],
) {
    todo!()
}
pub fn cross_entropy_backward<T: Element>(
    rows: usize,
    classes: usize,
    logits: &[T],
    targets: &[u32],
    dloss: &[T],
    dlogits: &mut [T],
) {
    todo!()
}
pub fn bce_with_logits<T: Element>(logits: &[T], targets: &[T], loss: &mut [T]) {
    todo!()
}
pub fn bce_with_logits_backward<T: Element>(
    logits: &[T],
    targets: &[T],
    dloss: &[T],
    dlogits: &mut [T],
) {
    todo!()
}
pub fn l1_loss<T: Element>(pred: &[T], target: &[T], loss: &mut [T]) {
    todo!()
}
pub fn l1_loss_backward<T: Element>(pred: &[T], target: &[T], dloss: &[T], dpred: &mut [T]) {
    todo!()
}
pub fn l2_loss<T: Element>(pred: &[T], target: &[T], loss: &mut [T]) {
    todo!()
}
pub fn l2_loss_backward<T: Element>(pred: &[T], target: &[T], dloss: &[T], dpred: &mut [T]) {
    todo!()
}
pub fn sample_categorical<T: Element>(
    rows: usize,
    classes: usize,
    temperature: f64,
    seed: u64,
    offset: u64,
    logits: &[T],
    out: &mut [u32],
) {
    todo!()
}
pub fn rand_uniform<T: Element>(seed: u64, offset: u64, out: &mut [T]) {
    todo!()
}
pub fn argmax<T: Element>(rows: usize, d: usize, x: &[T], out: &mut [u32]) {
    todo!()
}
pub fn cast<T: Element>(dtype: DType, x: &[T], y: &mut [T]) {
    todo!()
}
pub fn sum_squares<T: Element>(x: &[T], out: &mut [T]) {
    todo!()
}
/// `grad_scale` multiplies every gradient before the update.
pub fn adamw<T: Element>(
    hp: &AdamW,
    groups: &[ParamGroup],
    params: &mut [T],
    grads: &[T],
    m: &mut [T],
    v: &mut [T],
    grad_scale: T,
) {
    todo!()
}
