//! Parameters: one flat buffer per model (or per pair of models that share weights),
//! with a name → (offset, shape) table, a mirror buffer of gradients, and a separate
//! flat buffer of non-trainable state (batch-norm running statistics).
//!
//! Layers hold [`Param`] handles: plain offsets, cheap to copy. Weight sharing is an
//! alias: a second name for the same range, so both models read the same values and
//! their backward passes accumulate into the same gradient range.

use crate::backend::{Backend, ParamGroup};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::rng;
use crate::tensor::{numel, View, ViewMut};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// How a tensor is initialized (host side, deterministic under the store's seed).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    Const(f64),
    /// Normal with `std`, truncated to `[lo, hi]` in absolute units (timm's `trunc_normal_`).
    TruncNormal {
        std: f64,
        lo: f64,
        hi: f64,
    },
    Normal {
        std: f64,
    },
    Uniform {
        lo: f64,
        hi: f64,
    },
    /// He normal with fan-out, as torchvision initializes ResNet convolutions.
    KaimingNormalFanOut,
    /// PyTorch's default for `nn.Linear`/`nn.Conv2d` weights and biases:
    /// uniform in `±1/sqrt(fan_in)`.
    DefaultFanIn {
        fan_in: usize,
    },
}

impl Init {
    /// timm's ViT initialization: truncated normal, std 0.02, bounds ±2.
    pub const TIMM: Init = Init::TruncNormal { std: 0.02, lo: -2.0, hi: 2.0 };

    fn value(&self, shape: &[usize], seed: u64, counter: u64) -> f64 {
        match *self {
            Init::Zeros => 0.0,
            Init::Ones => 1.0,
            Init::Const(c) => c,
            Init::TruncNormal { std, lo, hi } => rng::trunc_normal(seed, counter, std, lo, hi),
            Init::Normal { std } => rng::normal(seed, counter) * std,
            Init::Uniform { lo, hi } => lo + (hi - lo) * rng::uniform(seed, counter) as f64,
            Init::KaimingNormalFanOut => {
                // weight [c_out, c_in, kh, kw]: fan_out = c_out · kh · kw.
                let fan_out = shape.first().copied().unwrap_or(1) * shape.iter().skip(2).product::<usize>();
                rng::normal(seed, counter) * libm::sqrt(2.0 / fan_out.max(1) as f64)
            }
            Init::DefaultFanIn { fan_in } => {
                let bound = 1.0 / libm::sqrt(fan_in.max(1) as f64);
                -bound + 2.0 * bound * rng::uniform(seed, counter) as f64
            }
        }
    }
}

/// Whether a tensor is learned (lives in `params`, has a gradient) or is state
/// (lives in `state`, e.g. running statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Trainable,
    State,
}

/// A handle to a range of a flat buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param {
    pub offset: usize,
    pub len: usize,
    pub kind: Kind,
}

impl Param {
    /// This range of `buf` (the parameter values, or the state buffer for state).
    pub fn of<'a, S>(&self, buf: &'a S) -> View<'a, S> {
        View { buf, offset: self.offset, len: self.len }
    }
    /// This range of `buf`, writable (the gradient mirror, or the state buffer).
    pub fn of_mut<'a, S>(&self, buf: &'a mut S) -> ViewMut<'a, S> {
        ViewMut { buf, offset: self.offset, len: self.len }
    }
}

/// One entry of the name table.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub name: String,
    pub shape: Vec<usize>,
    pub param: Param,
    pub init: Init,
    /// Weight decay applies (weights of rank ≥ 2 by default; not biases, norms, tokens).
    pub decay: bool,
    /// Another entry's name when this one is an alias (shared weight).
    pub alias_of: Option<String>,
}

/// The name → (offset, shape) table of a store, built before any memory exists.
#[derive(Clone, Debug, Default)]
pub struct ParamTable {
    entries: Vec<Entry>,
    by_name: BTreeMap<String, usize>,
    params_len: usize,
    state_len: usize,
}

impl ParamTable {
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&mut self, e: Entry) -> Result<Param> {
        if self.by_name.contains_key(&e.name) {
            return Err(Error::Param { name: e.name, detail: "registered twice".to_string() });
        }
        let p = e.param;
        self.by_name.insert(e.name.clone(), self.entries.len());
        self.entries.push(e);
        Ok(p)
    }

    fn add(&mut self, name: &str, shape: &[usize], init: Init, kind: Kind, decay: bool) -> Result<Param> {
        let len = numel(shape);
        if len == 0 {
            return Err(Error::Param { name: name.to_string(), detail: format!("zero-sized shape {shape:?}") });
        }
        let offset = match kind {
            Kind::Trainable => self.params_len,
            Kind::State => self.state_len,
        };
        let param = Param { offset, len, kind };
        let p =
            self.insert(Entry { name: name.to_string(), shape: shape.to_vec(), param, init, decay, alias_of: None })?;
        match kind {
            Kind::Trainable => self.params_len += len,
            Kind::State => self.state_len += len,
        }
        Ok(p)
    }

    /// A trainable tensor; weight decay applies when its rank is at least 2.
    pub fn param(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Param> {
        self.add(name, shape, init, Kind::Trainable, shape.len() >= 2)
    }

    /// A trainable tensor exempt from weight decay (class token, position embedding...).
    pub fn param_no_decay(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Param> {
        self.add(name, shape, init, Kind::Trainable, false)
    }

    /// A non-trainable state tensor (running statistics).
    pub fn state(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Param> {
        self.add(name, shape, init, Kind::State, false)
    }

    /// Register `name` as a second name for the tensor already registered as `existing`
    /// (weight sharing). Returns the shared handle.
    pub fn alias(&mut self, name: &str, existing: &str) -> Result<Param> {
        let src = self
            .entry(existing)
            .ok_or_else(|| Error::Param {
                name: existing.to_string(),
                detail: "not registered; cannot share it".to_string(),
            })?
            .clone();
        let root = src.alias_of.clone().unwrap_or(src.name.clone());
        self.insert(Entry { name: name.to_string(), alias_of: Some(root), ..src })
    }

    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }
    pub fn get(&self, name: &str) -> Option<Param> {
        self.entry(name).map(|e| e.param)
    }
    /// All entries in registration order, aliases included.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
    /// Entries whose name starts with `prefix` (one model of a shared store).
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries.iter().filter(move |e| e.name.starts_with(prefix))
    }
    /// Elements of the trainable buffer.
    pub fn params_len(&self) -> usize {
        self.params_len
    }
    /// Elements of the state buffer.
    pub fn state_len(&self) -> usize {
        self.state_len
    }

    /// Optimizer groups covering every trainable element once: contiguous runs with the
    /// same decay flag, each with `lr` and (where decay applies) `weight_decay`.
    /// `lr_scale(name)` multiplies the learning rate per tensor (layer-wise decay);
    /// tensors are split into separate groups where their scales differ.
    pub fn groups(&self, lr: f64, weight_decay: f64, lr_scale: impl Fn(&str) -> f64) -> Vec<ParamGroup> {
        let mut owned: Vec<&Entry> =
            self.entries.iter().filter(|e| e.alias_of.is_none() && e.param.kind == Kind::Trainable).collect();
        owned.sort_by_key(|e| e.param.offset);
        let mut groups: Vec<ParamGroup> = Vec::new();
        for e in owned {
            let g = ParamGroup {
                offset: e.param.offset,
                len: e.param.len,
                lr: lr * lr_scale(&e.name),
                weight_decay: if e.decay { weight_decay } else { 0.0 },
            };
            match groups.last_mut() {
                Some(last)
                    if last.offset + last.len == g.offset && last.lr == g.lr && last.weight_decay == g.weight_decay =>
                {
                    last.len += g.len
                }
                _ => groups.push(g),
            }
        }
        groups
    }

    /// Allocate and initialize the buffers on backend `b`. Initial values depend only on
    /// `seed` and each tensor's offset, not on the backend.
    pub fn build<B: Backend>(self, b: &B, seed: u64) -> Result<ParamStore<B>> {
        let mut host = alloc::vec![B::E::zero(); self.params_len];
        let mut state = alloc::vec![B::E::zero(); self.state_len];
        for e in self.entries.iter().filter(|e| e.alias_of.is_none()) {
            let (dst, stream) = match e.param.kind {
                Kind::Trainable => (&mut host, seed),
                Kind::State => (&mut state, seed ^ 0x5EED_0F57_A7E0),
            };
            for (i, v) in dst[e.param.offset..e.param.offset + e.param.len].iter_mut().enumerate() {
                *v = B::E::of(e.init.value(&e.shape, stream, (e.param.offset + i) as u64));
            }
        }
        Ok(ParamStore {
            params: b.upload(&host)?,
            grads: b.alloc(self.params_len)?,
            state: b.upload(&state)?,
            table: self,
        })
    }
}

use num_traits::Zero;

/// The flat buffers of a model: values, gradients (same layout) and state.
pub struct ParamStore<B: Backend> {
    pub table: ParamTable,
    pub params: B::Buf,
    pub grads: B::Buf,
    pub state: B::Buf,
}

impl<B: Backend> ParamStore<B> {
    /// Zero every gradient.
    pub fn zero_grads(&mut self, b: &B) -> Result<()> {
        let len = self.table.params_len();
        b.fill(ViewMut { buf: &mut self.grads, offset: 0, len }, B::E::zero())
    }

    fn lookup(&self, name: &str) -> Result<&Entry> {
        self.table
            .entry(name)
            .ok_or_else(|| Error::Param { name: name.to_string(), detail: "no such parameter".to_string() })
    }

    /// The values of a named tensor, on the host.
    pub fn get(&self, b: &B, name: &str) -> Result<Vec<B::E>> {
        let e = self.lookup(name)?;
        let buf = match e.param.kind {
            Kind::Trainable => &self.params,
            Kind::State => &self.state,
        };
        b.download(e.param.of(buf))
    }

    /// The gradient of a named trainable tensor, on the host.
    pub fn grad(&self, b: &B, name: &str) -> Result<Vec<B::E>> {
        let e = self.lookup(name)?;
        if e.param.kind != Kind::Trainable {
            return Err(Error::Param { name: name.to_string(), detail: "is state and has no gradient".to_string() });
        }
        b.download(e.param.of(&self.grads))
    }

    /// Overwrite a named tensor from host values; the shape must match exactly.
    pub fn set(&mut self, b: &B, name: &str, shape: &[usize], data: &[B::E]) -> Result<()> {
        let e = self.lookup(name)?.clone();
        if e.shape != shape || data.len() != e.param.len {
            return Err(Error::Param {
                name: name.to_string(),
                detail: format!("expected shape {:?}, got {:?} ({} values)", e.shape, shape, data.len()),
            });
        }
        let src = b.upload(data)?;
        let buf = match e.param.kind {
            Kind::Trainable => &mut self.params,
            Kind::State => &mut self.state,
        };
        b.copy(View { buf: &src, offset: 0, len: data.len() }, e.param.of_mut(buf))
    }

    /// Global L2 norm of all gradients (downloads one scalar).
    pub fn grad_norm(&self, b: &B) -> Result<f64> {
        let mut out = b.alloc(1)?;
        b.sum_squares(
            View { buf: &self.grads, offset: 0, len: self.table.params_len() },
            ViewMut { buf: &mut out, offset: 0, len: 1 },
        )?;
        let v = b.download(View { buf: &out, offset: 0, len: 1 })?;
        Ok(libm::sqrt(v[0].f64()))
    }
}
