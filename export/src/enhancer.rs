//! What `cim export` writes: an enhancer backbone — a ViT or a ResNet as the
//! architecture registry builds it — with one of four heads, and its forward pass on a
//! `cim` backend, which the exported graph reproduces.
//!
//! | head | ViT output | ResNet output |
//! | --- | --- | --- |
//! | `none` | features `[N, 1 + L, D]` (`cim infer`'s) | feature map `[N, C, H/s, W/s]` |
//! | `respix` | normalized pixels `[N, C, H, W]` (unpatchified per-token head) | `[N, 3, H, W]` (1×1 conv + pixel shuffle) |
//! | `revdet` | replaced-token logits `[N, L]` | `[N, L]` (1×1 conv + pixel shuffle, flattened) |
//! | `classifier` | class logits `[N, K]` (timm `head` on the class token) | `[N, K]` (average pool + torchvision `fc`) |
//!
//! The pre-training heads are CIM's (`cim_core::models::heads`, `conv_head`): a RESPIX
//! head predicts each pixel normalized by the statistics of the window around it, so
//! restoring an image needs the input's own statistics ([`crate::restore`]). REVDET's
//! token grid is the patch grid (a ViT) or the `P`-pixel grid of the tokenizer (a ResNet;
//! `L = (H/P)²`, row-major, one channel flattened like the ViT's).

use cim_core::arch::{ArchKind, ArchSpec, InputSpec, Model};
use cim_core::cim::{RespixNorm, ENHANCER_HEAD, TARGET_EPS};
use cim_core::layers::Layer;
use cim_core::models::conv_head::{ConvHead, ConvHeadTask};
use cim_core::models::heads::{RespixHead, RevdetHead};
use cim_core::params::{Kind, ParamStore, ParamTable};
use cim_core::{rng, Backend, Element, Error, Result, Tensor};
use std::fmt;
use std::str::FromStr;

const OP: &str = "export";

pub(crate) fn invalid<T>(detail: impl Into<String>) -> Result<T> {
    Err(Error::Invalid { op: OP, detail: detail.into() })
}

/// Which head the exported model ends with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HeadKind {
    /// The backbone's output.
    #[default]
    None,
    /// CIM's pixel head (image restoration).
    Respix,
    /// CIM's replaced-token detector.
    Revdet,
    /// The backbone's classifier (timm `head`, torchvision `fc`).
    Classifier,
}

impl HeadKind {
    pub const ALL: [HeadKind; 4] = [HeadKind::None, HeadKind::Respix, HeadKind::Revdet, HeadKind::Classifier];

    pub fn as_str(self) -> &'static str {
        match self {
            HeadKind::None => "none",
            HeadKind::Respix => "respix",
            HeadKind::Revdet => "revdet",
            HeadKind::Classifier => "classifier",
        }
    }
}

impl fmt::Display for HeadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HeadKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        HeadKind::ALL
            .into_iter()
            .find(|h| h.as_str() == s)
            .ok_or_else(|| format!("unknown head {s:?}: none, respix, revdet or classifier"))
    }
}

/// The head's layers (handles into the store).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Head {
    None,
    /// The classifier of [`Enhancer::model`].
    Classifier,
    VitRespix(RespixHead),
    VitRevdet(RevdetHead),
    /// A ResNet's RESPIX or REVDET head.
    Conv(ConvHead),
}

/// A backbone with a head, the handles of its layers and what its input and output are.
#[derive(Clone, Debug, PartialEq)]
pub struct Enhancer {
    /// The backbone (with a classifier exactly when the file has one).
    pub spec: ArchSpec,
    pub model: Model,
    pub head: Head,
    /// How an image becomes the input: side, channels, mean and std.
    pub input: InputSpec,
    /// The token grid's patch: a ViT's patch, a ResNet's tokenizer grid (when known).
    pub patch_size: Option<usize>,
    /// The RESPIX target normalization the head learned (to undo it when restoring).
    pub respix_norm: RespixNorm,
    /// Its `eps`.
    pub target_eps: f64,
}

impl Enhancer {
    /// Register `spec` (under its timm / torchvision names) and the head `head` (under
    /// `enhancer_head`, as CIM's trainer names it) in `table`. A ResNet's REVDET head
    /// needs the tokenizer grid's `patch`; a classifier needs a class count in `spec`.
    pub fn build(spec: &ArchSpec, head: HeadKind, patch: Option<usize>, table: &mut ParamTable) -> Result<Enhancer> {
        let model = spec.build(table, "")?;
        let (head, patch_size) = match (&spec.kind, head) {
            (ArchKind::Vit { cfg, .. }, h) => {
                let head = match h {
                    HeadKind::None => Head::None,
                    HeadKind::Classifier => Head::Classifier,
                    HeadKind::Respix => Head::VitRespix(RespixHead::new(table, ENHANCER_HEAD, cfg)?),
                    HeadKind::Revdet => Head::VitRevdet(RevdetHead::new(table, ENHANCER_HEAD, cfg.embed_dim)?),
                };
                if patch.is_some_and(|p| p != cfg.patch_size) {
                    return invalid(format!("the ViT's patch is {}, not {}", cfg.patch_size, patch.unwrap_or(0)));
                }
                (head, Some(cfg.patch_size))
            }
            (ArchKind::ResNet { cfg, img_size }, h) => {
                let s = cfg.stride();
                match h {
                    HeadKind::None => (Head::None, patch),
                    HeadKind::Classifier => (Head::Classifier, patch),
                    HeadKind::Respix | HeadKind::Revdet => {
                        if !img_size.is_multiple_of(s) {
                            return invalid(format!(
                                "a ResNet head needs an image size that is a multiple of its stride {s}, not {img_size}"
                            ));
                        }
                        let (task, p) = match (h, patch) {
                            (HeadKind::Respix, p) => (ConvHeadTask::Respix, p.unwrap_or(s)),
                            (_, Some(p)) => (ConvHeadTask::Revdet, p),
                            (_, None) => return invalid("a ResNet REVDET head needs the token grid's patch size"),
                        };
                        (Head::Conv(ConvHead::for_resnet(table, ENHANCER_HEAD, task, cfg, p)?), Some(p))
                    }
                }
            }
            _ => {
                return invalid(format!(
                    "{} is a {}; cim exports ViT and ResNet enhancers",
                    spec.arch_string(),
                    spec.family()
                ))
            }
        };
        if head == Head::Classifier && spec.classes().is_none() {
            return invalid(format!(
                "{} has no classifier (no {} in the weights): export it with --head none, or a head it has",
                spec.arch_string(),
                spec.head_names().map(|(w, _)| w).unwrap_or("head")
            ));
        }
        Ok(Enhancer {
            spec: spec.clone(),
            model,
            head,
            input: spec.input(),
            patch_size,
            respix_norm: RespixNorm::PAPER,
            target_eps: TARGET_EPS,
        })
    }

    /// [`Enhancer::build`] with random weights in which every tensor matters: the
    /// registry's initialization, then biases, norm scales and batch-norm statistics
    /// drawn away from their zeros and ones (for checks and benchmarks).
    pub fn random<B: Backend>(
        b: &B,
        spec: &ArchSpec,
        head: HeadKind,
        patch: Option<usize>,
        seed: u64,
    ) -> Result<(Enhancer, ParamStore<B>)> {
        let mut table = ParamTable::new();
        let e = Enhancer::build(spec, head, patch, &mut table)?;
        let mut store = table.build(b, seed)?;
        let entries: Vec<_> = store.table.entries().iter().filter(|e| e.alias_of.is_none()).cloned().collect();
        for (k, entry) in entries.iter().enumerate() {
            let leaf = entry.name.rsplit('.').next().unwrap_or("");
            let u = |i: usize| rng::uniform(seed ^ 0xC1A5_51F1, (k as u64) << 32 | i as u64) as f64;
            let draw: Option<Box<dyn Fn(usize) -> f64>> = match leaf {
                "running_var" => Some(Box::new(|i| 0.5 + u(i))),
                "running_mean" => Some(Box::new(|i| 0.4 * (u(i) - 0.5))),
                "bias" => Some(Box::new(|i| 0.2 * (u(i) - 0.5))),
                "weight" if entry.shape.len() == 1 => Some(Box::new(|i| 1.0 + 0.4 * (u(i) - 0.5))),
                _ => None,
            };
            if let Some(f) = draw {
                let v: Vec<B::E> = (0..entry.param.len).map(|i| B::E::of(f(i))).collect();
                store.set(b, &entry.name, &entry.shape, &v)?;
            }
        }
        Ok((e, store))
    }

    /// The head this model ends with.
    pub fn head_kind(&self) -> HeadKind {
        match self.head {
            Head::None => HeadKind::None,
            Head::Classifier => HeadKind::Classifier,
            Head::VitRespix(_) => HeadKind::Respix,
            Head::VitRevdet(_) => HeadKind::Revdet,
            Head::Conv(h) => match h.task {
                ConvHeadTask::Respix => HeadKind::Respix,
                ConvHeadTask::Revdet => HeadKind::Revdet,
            },
        }
    }

    /// The name of the graph's output.
    pub fn output_name(&self) -> &'static str {
        match self.head_kind() {
            HeadKind::None => "features",
            HeadKind::Respix => "pixels",
            HeadKind::Revdet | HeadKind::Classifier => "logits",
        }
    }

    /// What the output holds, in words.
    pub fn output_doc(&self) -> String {
        match self.head_kind() {
            HeadKind::None => self.spec.output_doc().to_string(),
            HeadKind::Respix => {
                "RESPIX: [B, C, H, W] pixels, each normalized by the statistics of its input window (cim.respix_norm)"
                    .into()
            }
            HeadKind::Revdet => "REVDET: [B, L] logits that each token of the grid was replaced".into(),
            HeadKind::Classifier => "class logits [B, classes]".into(),
        }
    }

    /// The input shape at batch `n`: `[n, C, H, H]`.
    pub fn input_shape(&self, n: usize) -> [usize; 4] {
        [n, self.input.channels, self.input.image_size, self.input.image_size]
    }

    /// The output shape at batch `n`.
    pub fn output_shape(&self, n: usize) -> Vec<usize> {
        let side = self.input.image_size;
        match (&self.spec.kind, self.head_kind()) {
            (ArchKind::Vit { cfg, .. }, HeadKind::None) => vec![n, cfg.tokens(), cfg.embed_dim],
            (ArchKind::ResNet { cfg, .. }, HeadKind::None) => {
                let s = side.div_ceil(cfg.stride());
                vec![n, cfg.out_channels(), s, s]
            }
            (_, HeadKind::Respix) => vec![n, self.respix_channels(), side, side],
            (_, HeadKind::Revdet) => {
                let g = side / self.patch_size.unwrap_or(1).max(1);
                vec![n, g * g]
            }
            (_, HeadKind::Classifier) => vec![n, self.spec.classes().unwrap_or(0)],
            _ => Vec::new(),
        }
    }

    fn respix_channels(&self) -> usize {
        match self.head {
            Head::VitRespix(h) => h.in_chans,
            Head::Conv(h) => h.channels,
            _ => self.input.channels,
        }
    }

    /// The forward pass of the backbone and head in evaluation mode on `b`: what the
    /// exported graph computes. `x` is a normalized image `[N, C, H, W]`.
    pub fn forward<B: Backend>(&self, b: &B, store: &ParamStore<B>, x: &Tensor<B>) -> Result<Tensor<B>> {
        let want = self.input_shape(x.shape().first().copied().unwrap_or(0));
        if x.shape() != want {
            return Err(Error::Shape {
                op: OP,
                detail: format!("input {:?} is not [batch, {}, {s}, {s}]", x.shape(), want[1], s = want[2]),
            });
        }
        let f = self.model.infer(b, store, x)?;
        let p = &store.params;
        match (&self.head, &self.model) {
            (Head::None, _) => Ok(f),
            (Head::Classifier, Model::Vit { head: Some(h), .. }) => h.infer(b, p, &f),
            (Head::Classifier, Model::ResNet(r)) => r.infer_classify(b, p, &f),
            (Head::VitRespix(h), _) => h.infer(b, p, &f),
            (Head::VitRevdet(h), _) => h.infer(b, p, &f),
            (Head::Conv(h), _) => {
                let y = h.infer(b, p, &f)?;
                match h.task {
                    ConvHeadTask::Respix => Ok(y),
                    ConvHeadTask::Revdet => {
                        let s = y.shape().to_vec();
                        y.reshape(&[s[0], s[2] * s[3]])
                    }
                }
            }
            _ => invalid("the head does not fit the backbone"),
        }
    }

    /// The host values (as `f32`) of a parameter or state tensor.
    pub(crate) fn values<B: Backend>(b: &B, store: &ParamStore<B>, p: &cim_core::params::Param) -> Result<Vec<f32>> {
        let buf = match p.kind {
            Kind::Trainable => &store.params,
            Kind::State => &store.state,
        };
        Ok(b.download(p.of(buf))?.into_iter().map(|v| v.f64() as f32).collect())
    }
}
