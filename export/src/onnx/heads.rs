//! The heads as ONNX: CIM's per-token RESPIX and REVDET heads on ViT features, the
//! ResNet head (1×1 convolution + `DepthToSpace`, PyTorch's pixel shuffle), and the
//! classifiers (timm's `head` on the class token or the token mean, torchvision's
//! average pool + `fc`). Each ends in the value named `out`.

use super::graph::{Attr, Graph};
use super::layers::{conv_bn, gemm, layer_norm, linear, Weights};
use cim_core::layers::Linear;
use cim_core::models::conv_head::{ConvHead, ConvHeadTask};
use cim_core::models::heads::{ClassifierHead, Pool, RespixHead, RevdetHead};
use cim_core::{Backend, Result};

/// The patch tokens `[N, L, D]` of features `[N, 1 + L, D]`.
fn patch_tokens(g: &mut Graph, f: &str) -> Result<String> {
    let (starts, ends, axes) = (g.ints(&[1])?, g.ints(&[i64::MAX])?, g.ints(&[1])?);
    g.node("Slice", &[f, &starts, &ends, &axes], "patch_features", &[])
}

/// RESPIX on a ViT: `D → C·p·p` per token, each token's `(c, ki, kj)` values placed on
/// pixel `(c, i·p + ki, j·p + kj)`.
pub(crate) fn vit_respix<B: Backend>(
    g: &mut Graph,
    w: &Weights<'_, B>,
    h: &RespixHead,
    f: &str,
    out: &str,
) -> Result<String> {
    let t = patch_tokens(g, f)?;
    let y = linear(g, w, &h.fc, &t, "enhancer_head")?;
    let (gr, c, p) = (h.grid as i64, h.in_chans as i64, h.patch_size as i64);
    let split = g.ints(&[-1, gr, gr, c, p, p])?;
    let y = g.node("Reshape", &[&y, &split], "respix.cells", &[])?;
    let y = g.node("Transpose", &[&y], "respix.image_order", &[Attr::Ints("perm", &[0, 3, 1, 4, 2, 5])])?;
    let image = g.ints(&[-1, c, gr * p, gr * p])?;
    g.node("Reshape", &[&y, &image], out, &[])
}

/// REVDET on a ViT: one logit per patch token, `[N, L]`.
pub(crate) fn vit_revdet<B: Backend>(
    g: &mut Graph,
    w: &Weights<'_, B>,
    h: &RevdetHead,
    tokens: usize,
    f: &str,
    out: &str,
) -> Result<String> {
    let t = patch_tokens(g, f)?;
    let y = linear(g, w, &h.fc, &t, "enhancer_head")?;
    let flat = g.ints(&[-1, (h.fc.d_out * tokens) as i64])?;
    g.node("Reshape", &[&y, &flat], out, &[])
}

/// timm's classifier: pool the tokens, optional `fc_norm`, `head`.
pub(crate) fn vit_classifier<B: Backend>(
    g: &mut Graph,
    w: &Weights<'_, B>,
    h: &ClassifierHead,
    f: &str,
    out: &str,
) -> Result<String> {
    let mut x = match h.pool {
        Pool::Cls => {
            let zero = g.index(0)?;
            g.node("Gather", &[f, &zero], "pooled", &[Attr::Int("axis", 1)])?
        }
        Pool::Mean => {
            let t = patch_tokens(g, f)?;
            g.node("ReduceMean", &[&t], "pooled", &[Attr::Ints("axes", &[1]), Attr::Int("keepdims", 0)])?
        }
    };
    if let Some(ln) = &h.fc_norm {
        x = layer_norm(g, w, ln, &x, "fc_norm")?;
    }
    gemm(g, w, &h.fc, &x, "head", out)
}

/// The ResNet head: a 1×1 convolution, then a pixel shuffle (`DepthToSpace`, mode CRD);
/// REVDET's one-channel map flattened to `[N, L]`.
pub(crate) fn conv_head<B: Backend>(
    g: &mut Graph,
    w: &Weights<'_, B>,
    h: &ConvHead,
    tokens: usize,
    f: &str,
    out: &str,
) -> Result<String> {
    let y = conv_bn(g, w, &h.conv, None, f, "enhancer_head")?;
    let attrs = [Attr::Int("blocksize", h.scale() as i64), Attr::Str("mode", "CRD")];
    match h.task {
        ConvHeadTask::Respix => g.node("DepthToSpace", &[&y], out, &attrs),
        ConvHeadTask::Revdet => {
            let y = g.node("DepthToSpace", &[&y], "revdet.map", &attrs)?;
            let flat = g.ints(&[-1, tokens as i64])?;
            g.node("Reshape", &[&y, &flat], out, &[])
        }
    }
}

/// torchvision's classifier: global average pool, `fc`.
pub(crate) fn resnet_classifier<B: Backend>(
    g: &mut Graph,
    w: &Weights<'_, B>,
    fc: &Linear,
    f: &str,
    out: &str,
) -> Result<String> {
    let p = g.node("GlobalAveragePool", &[f], "avgpool", &[])?;
    let p = g.node("Flatten", &[&p], "avgpool.flatten", &[Attr::Int("axis", 1)])?;
    gemm(g, w, fc, &p, "fc", out)
}
