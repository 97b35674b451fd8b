//! The pre-training optimizer (Table 13): AdamW with β = (0.9, 0.98), weight decay
//! 0.05, global gradient-norm clipping at 3.0, over the one flat buffer of the
//! trainable store (enhancer, head and generator together; the frozen tokenizer lives
//! in another store and is never touched).
//!
//! # Weight decay
//! [`param_groups`] applies decay to the tensors the table flags (rank ≥ 2: linear and
//! convolution weights), never to biases and norms (rank 1), and never to tensors whose
//! last name component is `cls_token`, `pos_embed` or `mask_token`, whatever their flag:
//! the generator's BEiT registers `mask_token` *with* decay (BEiT's own
//! `no_weight_decay` list omits it); here it is treated like the class token.
//! A shared tensor is one range of the buffer, updated once.
//!
//! # Clipping
//! The global norm `‖g‖` of the whole gradient buffer is read on the host
//! (`ParamStore::grad_norm`, one scalar download per step); the scale
//! `min(1, clip / (‖g‖ + 1e-6))` (PyTorch's `clip_grad_norm_`) is uploaded as a
//! one-element device buffer and applied inside the fused AdamW kernel (its
//! `grad_scale`), so the gradients themselves are not rewritten. A non-finite norm is
//! [`Error::NonFinite`] and no parameter changes.

use super::{DECODER, ENCODER, OP};
use crate::backend::{AdamW, Backend, ParamGroup};
use crate::element::Element;
use crate::error::{invalid, Error, Result};
use crate::params::{Kind, ParamStore, ParamTable};
use crate::tensor::{View, ViewMut};
use alloc::format;
use alloc::string::ToString;
use alloc::vec::Vec;

/// Tensors never decayed, by the last component of their name.
pub const NO_DECAY_NAMES: &[&str] = &["cls_token", "pos_embed", "mask_token"];

/// AdamW hyper-parameters and clipping.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Global gradient-norm bound; `None` disables clipping.
    pub clip: Option<f64>,
}

impl Default for AdamWConfig {
    /// The paper's pre-training settings (β 0.9 / 0.98, eps 1e-8, wd 0.05, clip 3.0).
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.98, eps: 1e-8, weight_decay: 0.05, clip: Some(3.0) }
    }
}

/// Whether a named table entry is decayed.
fn decays(name: &str, flag: bool) -> bool {
    let leaf = name.rsplit('.').next().unwrap_or(name);
    flag && !NO_DECAY_NAMES.contains(&leaf)
}

/// Optimizer groups covering every trainable element of `table` once (aliases skipped),
/// contiguous runs merged, with learning-rate multiplier 1 and `weight_decay` where
/// decay applies (see the module docs).
pub fn param_groups(table: &ParamTable, weight_decay: f64) -> Vec<ParamGroup> {
    let mut owned: Vec<_> =
        table.entries().iter().filter(|e| e.alias_of.is_none() && e.param.kind == Kind::Trainable).collect();
    owned.sort_by_key(|e| e.param.offset);
    let mut groups: Vec<ParamGroup> = Vec::new();
    for e in owned {
        let wd = if decays(&e.name, e.decay) { weight_decay } else { 0.0 };
        let g = ParamGroup { offset: e.param.offset, len: e.param.len, lr: 1.0, weight_decay: wd };
        match groups.last_mut() {
            Some(last) if last.offset + last.len == g.offset && last.weight_decay == g.weight_decay => {
                last.len += g.len
            }
            _ => groups.push(g),
        }
    }
    groups
}

/// AdamW's moments, step count and groups for one trainable store.
pub struct OptState<B: Backend> {
    pub m: B::Buf,
    pub v: B::Buf,
    /// Updates done so far (the next one is `step + 1`).
    pub step: u64,
    /// Groups with learning-rate multipliers (scaled by the lr of each update).
    pub groups: Vec<ParamGroup>,
}

impl<B: Backend> OptState<B> {
    /// Zero moments and the groups of [`param_groups`]. Refuses a table that holds the
    /// tokenizer (its names start with `encoder.` / `decoder.`): it must stay frozen.
    pub fn new(b: &B, table: &ParamTable, hp: &AdamWConfig) -> Result<Self> {
        if let Some(e) = table
            .entries()
            .iter()
            .find(|e| e.name.starts_with(&format!("{ENCODER}.")) || e.name.starts_with(&format!("{DECODER}.")))
        {
            return invalid(OP, format!("{} belongs to the frozen tokenizer; it has no optimizer state", e.name));
        }
        let len = table.params_len();
        Ok(OptState { m: b.alloc(len)?, v: b.alloc(len)?, step: 0, groups: param_groups(table, hp.weight_decay) })
    }
}

/// What one update did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptStats {
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// The factor applied to the gradients (1 when not clipped).
    pub clip_scale: f64,
    pub lr: f64,
    /// The 1-based step count of this update.
    pub step: u64,
}

/// One clipped AdamW update of `store` with learning rate `lr` (see the module docs).
pub fn apply_optimizer<B: Backend>(
    b: &B,
    store: &mut ParamStore<B>,
    state: &mut OptState<B>,
    hp: &AdamWConfig,
    lr: f64,
) -> Result<OptStats> {
    let len = store.table.params_len();
    if b.len(&state.m) != len || b.len(&state.v) != len {
        return invalid(OP, format!("optimizer state of {} elements for a store of {len}", b.len(&state.m)));
    }
    if !lr.is_finite() || lr < 0.0 {
        return invalid(OP, format!("learning rate must be finite and ≥ 0, got {lr}"));
    }
    if !(0.0..1.0).contains(&hp.beta1) || !(0.0..1.0).contains(&hp.beta2) || hp.eps.is_nan() || hp.eps <= 0.0 {
        return invalid(OP, format!("bad AdamW hyper-parameters {hp:?}"));
    }
    let grad_norm = store.grad_norm(b)?;
    if !grad_norm.is_finite() {
        return Err(Error::NonFinite { what: "gradient norm".to_string() });
    }
    let clip_scale = match hp.clip {
        Some(c) if c > 0.0 => (c / (grad_norm + 1e-6)).min(1.0),
        Some(c) => return invalid(OP, format!("clipping bound must be positive, got {c}")),
        None => 1.0,
    };
    let scale = b.upload(&[B::E::of(clip_scale)])?;
    let groups: Vec<ParamGroup> = state.groups.iter().map(|g| ParamGroup { lr: lr * g.lr, ..*g }).collect();
    state.step += 1;
    let adam = AdamW { beta1: hp.beta1, beta2: hp.beta2, eps: hp.eps, step: state.step };
    b.adamw(
        &adam,
        &groups,
        ViewMut { buf: &mut store.params, offset: 0, len },
        View { buf: &store.grads, offset: 0, len },
        ViewMut { buf: &mut state.m, offset: 0, len },
        ViewMut { buf: &mut state.v, offset: 0, len },
        Some(View { buf: &scale, offset: 0, len: 1 }),
    )?;
    Ok(OptStats { grad_norm, clip_scale, lr, step: state.step })
}
