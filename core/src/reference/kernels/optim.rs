//! Gradient norm and the fused AdamW step.

use crate::backend::{AdamW, ParamGroup};
use crate::element::Element;

/// `out[0] = Σ x²`, accumulated in `f64`.
pub fn sum_squares<T: Element>(x: &[T], out: &mut [T]) {
    out[0] = T::of(super::sum_f64(x.iter().map(|v| {
        let v = v.f64();
        v * v
    })));
}

/// One AdamW step (PyTorch's `AdamW`) over the ranges in `groups`, in `f64`. For each
/// `i` in a group, with `g = grads[i] · grad_scale`:
/// `m = b1·m + (1-b1)·g`, `v = b2·v + (1-b2)·g²`, `m̂ = m / (1 - b1^step)`,
/// `v̂ = v / (1 - b2^step)`, `p = p·(1 - lr·wd) - lr · m̂ / (√v̂ + eps)`
/// (decay applied to the old `p`: the same as `p -= lr·(m̂/(√v̂ + eps) + wd·p)`).
/// `m̂` and `v̂` use the new `m`, `v` before they are rounded to `T`. Elements outside
/// every group are untouched; overlapping groups would be updated once per group.
pub fn adamw<T: Element>(
    hp: &AdamW,
    groups: &[ParamGroup],
    params: &mut [T],
    grads: &[T],
    m: &mut [T],
    v: &mut [T],
    grad_scale: T,
) {
    let (b1, b2) = (hp.beta1, hp.beta2);
    let bc1 = 1.0 - libm::pow(b1, hp.step as f64);
    let bc2 = 1.0 - libm::pow(b2, hp.step as f64);
    let scale = grad_scale.f64();
    for gr in groups {
        for i in gr.offset..gr.offset + gr.len {
            let g = grads[i].f64() * scale;
            let mi = b1 * m[i].f64() + (1.0 - b1) * g;
            let vi = b2 * v[i].f64() + (1.0 - b2) * g * g;
            let mhat = mi / bc1;
            let vhat = vi / bc2;
            let p = params[i].f64();
            let p = p * (1.0 - gr.lr * gr.weight_decay) - gr.lr * mhat / (libm::sqrt(vhat) + hp.eps);
            m[i] = T::of(mi);
            v[i] = T::of(vi);
            params[i] = T::of(p);
        }
    }
}
