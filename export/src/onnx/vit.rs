//! The ViT backbone as ONNX: patch embedding as a strided `Conv`, the class token and
//! position embedding, pre-norm blocks with attention as MatMul / Softmax / MatMul, the
//! final LayerNorm. Output `[N, 1 + L, D]`, as `Vit::infer_features`.

use super::graph::{Attr, Graph};
use super::layers::{gelu, layer_norm, linear, linear_rows, Weights};
use cim_core::layers::{Attention, Block};
use cim_core::models::vit::Vit;
use cim_core::{Backend, Result};

/// The features of image `x` (`[N, C, H, W]`).
pub(crate) fn features<B: Backend>(g: &mut Graph, w: &Weights<'_, B>, vit: &Vit, x: &str) -> Result<String> {
    let cfg = &vit.cfg;
    let (d, p, c, t) = (cfg.embed_dim, cfg.patch_size, cfg.in_chans, cfg.tokens());
    let pe = &vit.embed.patch;
    let wt = g.weight("patch_embed.proj.weight", &[d, c, p, p], &w.get(&pe.weight)?)?;
    let bt = g.weight("patch_embed.proj.bias", &[d], &w.get(&pe.bias)?)?;
    let pi = p as i64;
    let y = g.node(
        "Conv",
        &[x, &wt, &bt],
        "patch_embed",
        &[Attr::Ints("kernel_shape", &[pi, pi]), Attr::Ints("strides", &[pi, pi])],
    )?;
    // [N, D, h, w] → [N, L, D] (timm's flatten(2).transpose(1, 2)). Reshapes give every
    // size but the batch (-1): tract 0.22 reads a 0 ("copy") after a dimension of 1 wrong.
    let flat = g.ints(&[-1, d as i64, cfg.num_patches() as i64])?;
    let y = g.node("Reshape", &[&y, &flat], "patch_embed.flatten", &[])?;
    let y = g.node("Transpose", &[&y], "patch_embed.tokens", &[Attr::Ints("perm", &[0, 2, 1])])?;
    // The class token: a zero row in front of the patch tokens, and the class token added
    // to row 0 of the position embedding. One Pad and one Add, with no shape arithmetic
    // for the dynamic batch.
    let pads = g.ints(&[0, 1, 0, 0, 0, 0])?;
    let y = g.node("Pad", &[&y, &pads], "tokens", &[])?;
    let mut pos = w.get(&vit.embed.pos_embed)?;
    let cls = w.get(&vit.embed.cls_token)?;
    if pos.len() != t * d || cls.len() != d {
        return crate::enhancer::invalid("pos_embed / cls_token do not fit the ViT");
    }
    for (p0, c0) in pos.iter_mut().zip(&cls) {
        *p0 += c0;
    }
    let pos = g.weight("pos_embed_cls", &[1, t, d], &pos)?;
    let mut h = g.node("Add", &[&y, &pos], "embed", &[])?;
    for (i, blk) in vit.blocks.iter().enumerate() {
        h = block(g, w, blk, t, &h, &format!("blocks.{i}"))?;
    }
    match &vit.norm {
        Some(ln) => layer_norm(g, w, ln, &h, "norm"),
        None => Ok(h),
    }
}

/// `x + attn(norm1(x))`, then `+ mlp(norm2(·))`.
fn block<B: Backend>(
    g: &mut Graph,
    w: &Weights<'_, B>,
    blk: &Block,
    tokens: usize,
    x: &str,
    name: &str,
) -> Result<String> {
    let h = layer_norm(g, w, &blk.norm1, x, &format!("{name}.norm1"))?;
    let a = attention(g, w, &blk.attn, tokens, &h, &format!("{name}.attn"))?;
    let x2 = g.node("Add", &[x, &a], &format!("{name}.residual1"), &[])?;
    let h2 = layer_norm(g, w, &blk.norm2, &x2, &format!("{name}.norm2"))?;
    let m = linear(g, w, &blk.mlp.fc1, &h2, &format!("{name}.mlp.fc1"))?;
    let m = gelu(g, &m, &format!("{name}.mlp.gelu"))?;
    let m = linear(g, w, &blk.mlp.fc2, &m, &format!("{name}.mlp.fc2"))?;
    g.node("Add", &[&x2, &m], &format!("{name}.residual2"), &[])
}

/// Multi-head self-attention: timm's fused `qkv` split into three MatMuls (rows
/// `[q | k | v]`, each `[heads, head_dim]`), `softmax(q · kᵀ · head_dim^-½) · v`, heads
/// merged, `proj`.
fn attention<B: Backend>(
    g: &mut Graph,
    w: &Weights<'_, B>,
    attn: &Attention,
    tokens: usize,
    x: &str,
    name: &str,
) -> Result<String> {
    let (d, heads, hd) = (attn.dim as i64, attn.heads as i64, attn.head_dim() as i64);
    let split = g.ints(&[-1, tokens as i64, heads, hd])?;
    let d = d as usize;
    let mut parts = Vec::with_capacity(3);
    // q and v to [N, H, T, hd]; k straight to [N, H, hd, T] for q · kᵀ.
    for (j, (part, perm)) in [("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])].into_iter().enumerate() {
        let y = linear_rows(g, w, &attn.qkv, Some(j * d..(j + 1) * d), x, &format!("{name}.{part}"))?;
        let y = g.node("Reshape", &[&y, &split], &format!("{name}.{part}.heads"), &[])?;
        parts.push(g.node("Transpose", &[&y], &format!("{name}.{part}.t"), &[Attr::Ints("perm", &perm)])?);
    }
    let scale = g.scalar((1.0 / (hd as f64).sqrt()) as f32)?;
    let s = g.node("MatMul", &[&parts[0], &parts[1]], &format!("{name}.scores"), &[])?;
    let s = g.node("Mul", &[&s, &scale], &format!("{name}.scaled"), &[])?;
    let s = g.node("Softmax", &[&s], &format!("{name}.softmax"), &[Attr::Int("axis", -1)])?;
    let o = g.node("MatMul", &[&s, &parts[2]], &format!("{name}.context"), &[])?;
    let o = g.node("Transpose", &[&o], &format!("{name}.merge"), &[Attr::Ints("perm", &[0, 2, 1, 3])])?;
    let merged = g.ints(&[-1, tokens as i64, d as i64])?;
    let o = g.node("Reshape", &[&o, &merged], &format!("{name}.merged"), &[])?;
    linear(g, w, &attn.proj, &o, &format!("{name}.proj"))
}
