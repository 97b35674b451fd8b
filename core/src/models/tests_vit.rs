//! Tests of the ViT, the generator's BEiT, the ViT heads and the mask generators:
//! parameter counts and names against timm, layouts, central finite differences in
//! `f64` on the reference backend, weight sharing, shape errors.
//!
//! Tolerance (as `layers::tests`): central differences with `ε = 1e-6` have a
//! truncation error of order `ε²·|f'''|` and a rounding error of order
//! `1e-16·|f|/ε ≈ 1e-10·|f|`, with `f = ⟨dy, y⟩` a sum of at most a few hundred terms of
//! order one; the check allows `1e-6 · (1 + |value|)`.

use super::beit::{Beit, BeitConfig};
use super::heads::{ClassifierHead, Pool, RespixHead, RevdetHead};
use super::masking::{mask_values, scaled_range, BlockMasking, Masking, RandomMasking};
use super::vit::{patchify, unpatchify, Vit, VitConfig};
use crate::error::Error;
use crate::layers::{Conv2d, Conv2dConfig, Layer};
use crate::params::{ParamStore, ParamTable};
use crate::rng::Stream;
use crate::tensor::Tensor;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::testing::{fd_check, host, tensor, uniform, R};

/// Build the store with every parameter drawn uniformly in `±scale` (initial values
/// such as LayerNorm's ones or zero biases would hide errors in some terms).
fn setup(table: ParamTable, seed: u64, scale: f64) -> (ParamStore<R>, Stream) {
    let mut s = Stream::new(seed);
    let mut store = table.build(&R::new(), seed).unwrap();
    let n = store.params.len();
    store.params = uniform(&mut s, n, scale);
    (store, s)
}

/// img 8, patch 4 (2×2 grid, 5 tokens), width 8, 2 blocks, 2 heads.
fn tiny() -> VitConfig {
    VitConfig { mlp_ratio: 2.0, ..VitConfig::new(8, 4, 8, 2, 2) }
}

fn grad_of(store: &ParamStore<R>, grads: &[f64], name: &str) -> Vec<f64> {
    let p = store.table.get(name).unwrap_or_else(|| panic!("no {name}"));
    grads[p.offset..p.offset + p.len].to_vec()
}

fn is_shape_err<T>(r: crate::Result<T>) -> bool {
    matches!(r, Err(Error::Shape { .. }))
}

fn is_invalid<T>(r: crate::Result<T>) -> bool {
    matches!(r, Err(Error::Invalid { .. }))
}

// ---- sizes and names ----------------------------------------------------------------------

fn count_with_head(cfg: VitConfig, classes: usize) -> usize {
    let mut t = ParamTable::new();
    Vit::new(&mut t, "", cfg).unwrap();
    ClassifierHead::timm(&mut t, "", &cfg, classes).unwrap();
    t.params_len()
}

#[test]
fn parameter_counts_match_timm() {
    assert_eq!(count_with_head(VitConfig::base(), 1000), 86_567_656);
    assert_eq!(count_with_head(VitConfig::small(), 1000), 22_050_664);
    assert_eq!(count_with_head(VitConfig::tiny(), 1000), 5_717_416);
    assert_eq!(count_with_head(VitConfig::large(), 1000), 304_326_632);
    // Mean pooling with fc_norm instead of the final norm: the same count.
    let cfg = VitConfig { final_norm: false, ..VitConfig::base() };
    let mut t = ParamTable::new();
    Vit::new(&mut t, "", cfg).unwrap();
    ClassifierHead::new(&mut t, "", 768, 1000, Pool::Mean, true, 1e-6).unwrap();
    assert_eq!(t.params_len(), 86_567_656);
    assert!(t.entry("norm.weight").is_none() && t.entry("fc_norm.weight").is_some());
}

#[test]
fn parameter_names_follow_timm() {
    let cfg = VitConfig::tiny().with_img(32, 4).with_depth(2);
    let mut t = ParamTable::new();
    Vit::new(&mut t, "", cfg).unwrap();
    ClassifierHead::timm(&mut t, "", &cfg, 10).unwrap();
    let names: Vec<(&str, &[usize], bool)> =
        t.entries().iter().map(|e| (e.name.as_str(), &e.shape[..], e.decay)).collect();
    assert_eq!(
        names[..4],
        [
            ("cls_token", &[1, 1, 192][..], false),
            ("pos_embed", &[1, 65, 192][..], false),
            ("patch_embed.proj.weight", &[192, 3, 4, 4][..], true),
            ("patch_embed.proj.bias", &[192][..], false),
        ]
    );
    assert_eq!(names[4].0, "blocks.0.norm1.weight");
    assert_eq!(names[16].0, "blocks.1.norm1.weight");
    let tail: Vec<&str> = names[names.len() - 4..].iter().map(|e| e.0).collect();
    assert_eq!(tail, ["norm.weight", "norm.bias", "head.weight", "head.bias"]);
    assert_eq!(t.entry("head.weight").unwrap().shape, [10, 192]);

    let mut t = ParamTable::new();
    Beit::new(&mut t, "gen", BeitConfig::for_resnet_enhancer(32, 4, 4, 512)).unwrap();
    for (name, shape) in [
        ("gen.cls_token", &[1, 1, 384][..]),
        ("gen.mask_token", &[1, 1, 384]),
        ("gen.pos_embed", &[1, 65, 384]),
        ("gen.patch_embed.proj.weight", &[384, 3, 4, 4]),
        ("gen.blocks.3.mlp.fc2.weight", &[384, 1536]),
        ("gen.norm.bias", &[384]),
        ("gen.lm_head.weight", &[512, 384]),
        ("gen.lm_head.bias", &[512]),
    ] {
        assert_eq!(t.entry(name).unwrap_or_else(|| panic!("{name}")).shape, shape, "{name}");
    }
    assert!(t.entry("gen.blocks.4.norm1.weight").is_none());
    let heads = |t: &ParamTable| t.entry("gen.blocks.0.attn.qkv.weight").unwrap().shape.clone();
    assert_eq!(heads(&t), [1152, 384]);
}

#[test]
fn initialization_follows_deit() {
    let b = R::new();
    let cfg = tiny();
    let mut t = ParamTable::new();
    Vit::new(&mut t, "", cfg).unwrap();
    let store = t.build(&b, 5).unwrap();
    let get = |n: &str| store.get(&b, n).unwrap();
    for name in ["cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight"] {
        let v = get(name);
        assert!(v.iter().all(|&x| x != 0.0 && x.abs() < 0.1), "{name}");
    }
    assert!(get("patch_embed.proj.bias").iter().all(|&x| x == 0.0));
    assert!(get("norm.weight").iter().all(|&x| x == 1.0));
    assert!(get("norm.bias").iter().all(|&x| x == 0.0));
    // The std of a large trunc-normal draw is near 0.02.
    let mut t = ParamTable::new();
    Vit::new(&mut t, "", VitConfig::tiny().with_depth(1)).unwrap();
    let store = t.build(&b, 9).unwrap();
    let w = store.get(&b, "patch_embed.proj.weight").unwrap();
    let sd = (w.iter().map(|x| x * x).sum::<f64>() / w.len() as f64).sqrt();
    assert!((sd - 0.02).abs() < 0.001, "std {sd}");
}

#[test]
fn config_errors() {
    for cfg in [
        VitConfig::tiny().with_img(30, 4),
        VitConfig::tiny().with_img(224, 0),
        VitConfig { heads: 5, ..VitConfig::tiny() },
        VitConfig { in_chans: 0, ..VitConfig::tiny() },
    ] {
        assert!(is_invalid(Vit::new(&mut ParamTable::new(), "", cfg)), "{cfg:?}");
    }
    assert!(is_invalid(Beit::new(&mut ParamTable::new(), "", BeitConfig::new(tiny(), 0))));
    assert!(Vit::new(&mut ParamTable::new(), "", VitConfig::tiny().with_img(32, 4)).is_ok());
    assert!(Vit::new(&mut ParamTable::new(), "", VitConfig::tiny().with_img(28, 14)).is_ok());
}

// ---- layouts ------------------------------------------------------------------------------

#[test]
fn embedding_equals_timm_conv_patch_embedding() {
    let b = R::new();
    let cfg = VitConfig { in_chans: 2, ..VitConfig::new(12, 4, 6, 1, 2) };
    let mut t = ParamTable::new();
    let vit = Vit::new(&mut t, "", cfg).unwrap();
    let (store, mut s) = setup(t, 21, 0.5);
    let (nb, n, d, tok) = (3, 9, 6, 10);
    let x = uniform(&mut s, nb * 2 * 12 * 12, 1.0);
    let img = tensor(&[nb, 2, 12, 12], &x);
    let got = host(&vit.embed.infer(&b, &store.params, &img, None).unwrap());
    // timm: conv (kernel = stride = p) → flatten(2) → transpose(1, 2) → cat cls → + pos.
    let conv = Conv2d {
        weight: vit.embed.patch.weight,
        bias: Some(vit.embed.patch.bias),
        cfg: Conv2dConfig::new(2, d, 4).stride(4),
    };
    let y = host(&conv.infer(&b, &store.params, &img).unwrap()); // [nb, d, 3, 3]
    let cls = store.get(&b, "cls_token").unwrap();
    let pos = store.get(&b, "pos_embed").unwrap();
    for bi in 0..nb {
        for ti in 0..tok {
            for c in 0..d {
                let v = if ti == 0 { cls[c] } else { y[(bi * d + c) * n + ti - 1] };
                let want = v + pos[ti * d + c];
                let g = got[(bi * tok + ti) * d + c];
                assert!((g - want).abs() < 1e-12, "token {ti} channel {c}: {g} vs {want}");
            }
        }
    }
}

#[test]
fn patchify_layout_and_inverse() {
    let b = R::new();
    let (nb, c, gh, gw, p) = (2, 3, 2, 3, 2);
    let (h, w) = (gh * p, gw * p);
    let x: Vec<f64> = (0..nb * c * h * w).map(|i| i as f64).collect();
    let img = tensor(&[nb, c, h, w], &x);
    let patches = patchify(&b, &img, p).unwrap();
    assert_eq!(patches.shape(), [nb, gh * gw, c * p * p]);
    let pv = host(&patches);
    for bi in 0..nb {
        for i in 0..gh {
            for j in 0..gw {
                for ch in 0..c {
                    for ki in 0..p {
                        for kj in 0..p {
                            let got = pv[((bi * gh * gw + i * gw + j) * c + ch) * p * p + ki * p + kj];
                            let want = x[((bi * c + ch) * h + i * p + ki) * w + j * p + kj];
                            assert_eq!(got, want);
                        }
                    }
                }
            }
        }
    }
    let back = unpatchify(&b, &patches, c, gh, gw, p).unwrap();
    assert_eq!(back.shape(), [nb, c, h, w]);
    assert_eq!(host(&back), x);
    assert!(is_shape_err(patchify(&b, &tensor(&[1, 1, 5, 4], &[0.0; 20]), 2)));
    assert!(is_shape_err(unpatchify(&b, &patches, c, gh, gw + 1, p)));
}

#[test]
fn respix_head_layout() {
    // Token (i, j), output (c, ki, kj) lands on pixel (c, i·p + ki, j·p + kj).
    let b = R::new();
    let cfg = VitConfig { in_chans: 3, ..VitConfig::new(4, 2, 4, 1, 1) };
    let mut t = ParamTable::new();
    let head = RespixHead::new(&mut t, "respix_head", &cfg).unwrap();
    let (store, mut s) = setup(t, 22, 0.5);
    let feats = uniform(&mut s, 2 * 5 * 4, 1.0);
    let img = host(&head.infer(&b, &store.params, &tensor(&[2, 5, 4], &feats)).unwrap());
    let w = store.get(&b, "respix_head.weight").unwrap(); // [12, 4]
    let bias = store.get(&b, "respix_head.bias").unwrap();
    for bi in 0..2 {
        for i in 0..2 {
            for j in 0..2 {
                let tok = &feats[(bi * 5 + 1 + i * 2 + j) * 4..][..4];
                for c in 0..3 {
                    for ki in 0..2 {
                        for kj in 0..2 {
                            let o = (c * 2 + ki) * 2 + kj;
                            let want = bias[o] + (0..4).map(|e| w[o * 4 + e] * tok[e]).sum::<f64>();
                            let got = img[((bi * 3 + c) * 4 + i * 2 + ki) * 4 + j * 2 + kj];
                            assert!((got - want).abs() < 1e-12);
                        }
                    }
                }
            }
        }
    }
}

// ---- gradients ----------------------------------------------------------------------------

#[test]
fn vit_gradients() {
    let b = R::new();
    for cfg in [tiny(), VitConfig { final_norm: false, qkv_bias: false, ..tiny() }] {
        let mut t = ParamTable::new();
        let vit = Vit::new(&mut t, "", cfg).unwrap();
        let (mut store, mut s) = setup(t, 31, 0.5);
        let shape = [2, 3, 8, 8];
        let x = uniform(&mut s, 384, 1.0);
        let img = tensor(&shape, &x);
        let (y, cache) = vit.forward_features(&b, &store.params, &img).unwrap();
        assert_eq!(y.shape(), [2, 5, 8]);
        assert_eq!(host(&vit.infer_features(&b, &store.params, &img).unwrap()), host(&y));
        // The staged entry points compose to the same thing.
        let e = vit.embed.infer(&b, &store.params, &img, None).unwrap();
        let (h, _) = vit.forward_blocks(&b, &store.params, e, 0..1).unwrap();
        let h = vit.infer_blocks(&b, &store.params, &h, 1..2).unwrap();
        let h = match &vit.norm {
            Some(ln) => ln.infer(&b, &store.params, &h).unwrap(),
            None => h,
        };
        assert_eq!(host(&h), host(&y));
        let dy = uniform(&mut s, y.numel(), 1.0);
        let dx = vit.backward(&b, &store.params, &mut store.grads, &cache, &tensor(y.shape(), &dy)).unwrap();
        assert_eq!(dx.shape(), shape);
        // The parameter-only pass gives the same parameter gradients.
        let mut g2 = vec![0.0; store.grads.len()];
        vit.backward_params(&b, &store.params, &mut g2, &cache, &tensor(y.shape(), &dy)).unwrap();
        assert_eq!(g2, store.grads);
        for name in
            ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "blocks.1.mlp.fc2.weight"]
        {
            assert!(grad_of(&store, &store.grads, name).iter().any(|&g| g != 0.0), "{name}");
        }
        let mut f =
            |p: &[f64], ins: &[Vec<f64>]| host(&vit.infer_features(&b, &p.to_vec(), &tensor(&shape, &ins[0])).unwrap());
        fd_check("vit", &mut f, (&store.params, &store.grads), (&[x], &[host(&dx)]), &dy, None);
    }
}

/// A mask over `2 × 4` patches with both values in each image.
const MASK: [f64; 8] = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0];

#[test]
fn beit_gradients() {
    let b = R::new();
    let cfg = BeitConfig::new(tiny(), 5);
    let mut t = ParamTable::new();
    let beit = Beit::new(&mut t, "", cfg).unwrap();
    let (mut store, mut s) = setup(t, 41, 0.5);
    let shape = [2, 3, 8, 8];
    let x = uniform(&mut s, 384, 1.0);
    let mask = tensor(&[2, 4], &MASK);
    let (y, cache) = beit.forward(&b, &store.params, &tensor(&shape, &x), &mask).unwrap();
    assert_eq!(y.shape(), [2, 4, 5]);
    assert_eq!(host(&beit.infer(&b, &store.params, &tensor(&shape, &x), &mask).unwrap()), host(&y));
    let dy = uniform(&mut s, y.numel(), 1.0);
    let dx = beit.backward_input(&b, &store.params, &mut store.grads, &cache, &tensor(y.shape(), &dy)).unwrap();
    let mut g2 = vec![0.0; store.grads.len()];
    beit.backward(&b, &store.params, &mut g2, &cache, &tensor(y.shape(), &dy)).unwrap();
    assert_eq!(g2, store.grads);
    assert!(grad_of(&store, &store.grads, "mask_token").iter().all(|&g| g != 0.0));
    // Masked patches are replaced entirely: their pixels get no gradient.
    let dxv = host(&dx);
    for bi in 0..2 {
        for c in 0..3 {
            for yy in 0..8 {
                for xx in 0..8 {
                    let patch = (yy / 4) * 2 + xx / 4;
                    let g = dxv[((bi * 3 + c) * 8 + yy) * 8 + xx];
                    assert_eq!(g == 0.0, MASK[bi * 4 + patch] == 1.0, "pixel gradient {g} of patch {patch}");
                }
            }
        }
    }
    let mut f =
        |p: &[f64], ins: &[Vec<f64>]| host(&beit.infer(&b, &p.to_vec(), &tensor(&shape, &ins[0]), &mask).unwrap());
    fd_check("beit", &mut f, (&store.params, &store.grads), (&[x], &[dxv]), &dy, None);
}

#[test]
fn beit_without_masked_patches_is_a_vit_with_a_head() {
    // With an all-zero mask, the embedding equals the plain ViT embedding.
    let b = R::new();
    let mut t = ParamTable::new();
    let beit = Beit::new(&mut t, "", BeitConfig::new(tiny(), 3)).unwrap();
    let (store, mut s) = setup(t, 42, 0.5);
    let img = tensor(&[2, 3, 8, 8], &uniform(&mut s, 384, 1.0));
    let plain = beit.embed.infer(&b, &store.params, &img, None);
    assert!(is_invalid(Vit::new(&mut ParamTable::new(), "", tiny()).unwrap().embed.infer(
        &b,
        &store.params,
        &img,
        Some(&tensor(&[2, 4], &[0.0; 8]))
    )));
    let zero = beit.embed.infer(&b, &store.params, &img, Some(&tensor(&[2, 4], &[0.0; 8]))).unwrap();
    assert_eq!(host(&plain.unwrap()), host(&zero));
    // An all-one mask makes the output independent of the image.
    let ones = tensor(&[2, 4], &[1.0; 8]);
    let a = host(&beit.infer(&b, &store.params, &img, &ones).unwrap());
    let other = tensor(&[2, 3, 8, 8], &uniform(&mut s, 384, 1.0));
    assert_eq!(a, host(&beit.infer(&b, &store.params, &other, &ones).unwrap()));
}

/// Finite-difference check of a head on random features `[2, 5, 8]`.
fn check_head<L: Layer<R>>(what: &str, head: &L, table: ParamTable, out_shape: &[usize]) {
    let b = R::new();
    let (mut store, mut s) = setup(table, 51, 0.5);
    let shape = [2, 5, 8];
    let x = uniform(&mut s, 80, 1.0);
    let xt = tensor(&shape, &x);
    let (y, cache) = head.forward(&b, &store.params, &xt).unwrap();
    assert_eq!(y.shape(), out_shape, "{what}");
    assert_eq!(host(&head.infer(&b, &store.params, &xt).unwrap()), host(&y), "{what}: infer");
    let dy = uniform(&mut s, y.numel(), 1.0);
    let dx = head.backward(&b, &store.params, &mut store.grads, &cache, &tensor(y.shape(), &dy)).unwrap();
    assert_eq!(dx.shape(), shape, "{what}: dx shape");
    let mut f = |p: &[f64], ins: &[Vec<f64>]| host(&head.infer(&b, &p.to_vec(), &tensor(&shape, &ins[0])).unwrap());
    fd_check(what, &mut f, (&store.params, &store.grads), (&[x], &[host(&dx)]), &dy, None);
}

#[test]
fn head_gradients() {
    let cfg = tiny();
    let mut t = ParamTable::new();
    let h = RevdetHead::new(&mut t, "revdet_head", 8).unwrap();
    check_head("revdet", &h, t, &[2, 4]);
    let mut t = ParamTable::new();
    let h = RespixHead::new(&mut t, "respix_head", &cfg).unwrap();
    check_head("respix", &h, t, &[2, 3, 8, 8]);
    for (pool, fc_norm) in [(Pool::Cls, false), (Pool::Mean, false), (Pool::Mean, true), (Pool::Cls, true)] {
        let mut t = ParamTable::new();
        let h = ClassifierHead::new(&mut t, "", 8, 3, pool, fc_norm, 1e-6).unwrap();
        check_head(&format!("classifier {pool:?} fc_norm {fc_norm}"), &h, t, &[2, 3]);
    }
}

#[test]
fn classifier_pooling_values() {
    let b = R::new();
    let feats: Vec<f64> = (0..2 * 3 * 2).map(|i| i as f64).collect(); // [2, 3, 2]
    let x = tensor(&[2, 3, 2], &feats);
    for (pool, want) in [(Pool::Cls, [0.0, 1.0, 6.0, 7.0]), (Pool::Mean, [3.0, 4.0, 9.0, 10.0])] {
        let mut t = ParamTable::new();
        let h = ClassifierHead::new(&mut t, "", 2, 2, pool, false, 1e-6).unwrap();
        let mut store = t.build(&b, 1).unwrap();
        store.set(&b, "head.weight", &[2, 2], &[1.0, 0.0, 0.0, 1.0]).unwrap();
        assert_eq!(host(&h.infer(&b, &store.params, &x).unwrap()), want, "{pool:?}");
    }
}

// ---- weight sharing -----------------------------------------------------------------------

#[test]
fn generator_shares_patch_embedding_and_two_blocks() {
    let b = R::new();
    let enh_cfg = VitConfig { depth: 3, ..tiny() };
    let mut t = ParamTable::new();
    let enh = Vit::new(&mut t, "enhancer", enh_cfg).unwrap();
    let n_enh = t.params_len();
    let gen = Beit::new_shared(&mut t, "generator", BeitConfig::for_vit_enhancer(&enh_cfg, 3, 5), "enhancer").unwrap();
    assert_eq!(gen.shared_blocks, 2);
    assert_eq!(gen.embed.patch, enh.embed.patch);
    assert_eq!(gen.blocks[..2], enh.blocks[..2]);
    assert_ne!(gen.blocks[2], enh.blocks[2]);
    // The generator's own tensors: cls, mask, pos, one block, norm, head.
    let mut solo = ParamTable::new();
    Beit::new(&mut solo, "", BeitConfig::for_vit_enhancer(&enh_cfg, 3, 5)).unwrap();
    let shared_len: usize = t.with_prefix("generator.").filter(|e| e.alias_of.is_some()).map(|e| e.param.len).sum();
    assert_eq!(t.params_len(), n_enh + solo.params_len() - shared_len);
    for e in t.with_prefix("generator.") {
        let shared = e.name.starts_with("generator.patch_embed.proj.")
            || e.name.starts_with("generator.blocks.0.")
            || e.name.starts_with("generator.blocks.1.");
        let want = shared.then(|| e.name.replacen("generator.", "enhancer.", 1));
        assert_eq!(e.alias_of, want, "{}", e.name);
    }
    let groups = t.groups(1.0, 0.05, |_| 1.0);
    assert_eq!(groups.iter().map(|g| g.len).sum::<usize>(), t.params_len(), "every element once");

    let (store, mut s) = setup(t, 61, 0.5);
    let p = &store.params;
    let shape = [2, 3, 8, 8];
    let (x1, x2) = (uniform(&mut s, 384, 1.0), uniform(&mut s, 384, 1.0));
    let mask = tensor(&[2, 4], &MASK);
    let (y1, c1) = enh.forward_features(&b, p, &tensor(&shape, &x1)).unwrap();
    let (y2, c2) = gen.forward(&b, p, &tensor(&shape, &x2), &mask).unwrap();
    let dy1 = uniform(&mut s, y1.numel(), 1.0);
    let dy2 = uniform(&mut s, y2.numel(), 1.0);
    let zeros = vec![0.0; store.params.len()];
    let run_enh = |g: &mut Vec<f64>| enh.backward_params(&b, p, g, &c1, &tensor(y1.shape(), &dy1)).unwrap();
    let run_gen = |g: &mut Vec<f64>| gen.backward(&b, p, g, &c2, &tensor(y2.shape(), &dy2)).unwrap();
    let (mut g_enh, mut g_gen, mut g_both) = (zeros.clone(), zeros.clone(), zeros.clone());
    run_enh(&mut g_enh);
    run_gen(&mut g_gen);
    run_gen(&mut g_both);
    run_enh(&mut g_both);

    let own = |prefix: &str| -> Vec<String> {
        store.table.with_prefix(prefix).filter(|e| e.alias_of.is_none()).map(|e| e.name.clone()).collect()
    };
    let shared: Vec<String> = store.table.with_prefix("generator.").filter_map(|e| e.alias_of.clone()).collect();
    let enh_only: Vec<String> = own("enhancer.").into_iter().filter(|n| !shared.contains(n)).collect();
    assert!(enh_only.contains(&String::from("enhancer.blocks.2.attn.qkv.weight")));
    assert!(enh_only.contains(&String::from("enhancer.norm.weight")));
    for n in &enh_only {
        assert!(grad_of(&store, &g_gen, n).iter().all(|&g| g == 0.0), "generator loss reached {n}");
    }
    let gen_only = own("generator.");
    assert!(gen_only.contains(&String::from("generator.mask_token")));
    assert!(gen_only.contains(&String::from("generator.lm_head.weight")));
    for n in &gen_only {
        assert!(grad_of(&store, &g_enh, n).iter().all(|&g| g == 0.0), "enhancer loss reached {n}");
    }
    for n in &shared {
        let (ge, gg) = (grad_of(&store, &g_enh, n), grad_of(&store, &g_gen, n));
        assert!(ge.iter().any(|&g| g != 0.0) && gg.iter().any(|&g| g != 0.0), "{n} gets both");
    }
    for i in 0..zeros.len() {
        let want = g_enh[i] + g_gen[i];
        assert!((g_both[i] - want).abs() <= 1e-12 * (1.0 + want.abs()), "element {i}: sum of the two");
    }
    // Each model's gradient, shared ranges included, against its own finite differences,
    // and the sum against the joint loss.
    let mut f_enh =
        |p: &[f64], _: &[Vec<f64>]| host(&enh.infer_features(&b, &p.to_vec(), &tensor(&shape, &x1)).unwrap());
    fd_check("enhancer (shared store)", &mut f_enh, (p, &g_enh), (&[], &[]), &dy1, None);
    let mut f_gen = |p: &[f64], _: &[Vec<f64>]| host(&gen.infer(&b, &p.to_vec(), &tensor(&shape, &x2), &mask).unwrap());
    fd_check("generator (shared store)", &mut f_gen, (p, &g_gen), (&[], &[]), &dy2, None);
    let dy_joint: Vec<f64> = dy1.iter().chain(&dy2).copied().collect();
    let mut f_joint = |p: &[f64], _: &[Vec<f64>]| {
        let mut y = host(&enh.infer_features(&b, &p.to_vec(), &tensor(&shape, &x1)).unwrap());
        y.extend(host(&gen.infer(&b, &p.to_vec(), &tensor(&shape, &x2), &mask).unwrap()));
        y
    };
    let shared_idx: Vec<usize> = shared
        .iter()
        .flat_map(|n| {
            let q = store.table.get(n).unwrap();
            q.offset..q.offset + q.len
        })
        .collect();
    fd_check("enhancer + generator", &mut f_joint, (p, &g_both), (&[], &[]), &dy_joint, Some(&shared_idx));
}

#[test]
fn sharing_needs_matching_enhancer() {
    let mut t = ParamTable::new();
    Vit::new(&mut t, "enc", tiny()).unwrap();
    // A different width, a different patch size, or a missing enhancer.
    let wide = BeitConfig::new(VitConfig::new(8, 4, 16, 2, 2), 5);
    assert!(matches!(Beit::new_shared(&mut t.clone(), "gen", wide, "enc"), Err(Error::Param { .. })));
    let patch2 = BeitConfig::new(tiny().with_img(8, 2), 5);
    assert!(matches!(Beit::new_shared(&mut t.clone(), "gen", patch2, "enc"), Err(Error::Param { .. })));
    let ok = BeitConfig::new(tiny(), 5);
    assert!(matches!(Beit::new_shared(&mut t.clone(), "gen", ok, "nowhere"), Err(Error::Param { .. })));
    // A one-block generator shares its only block.
    let one = Beit::new_shared(&mut t, "gen", BeitConfig::new(tiny().with_depth(1), 5), "enc").unwrap();
    assert_eq!(one.shared_blocks, 1);
}

// ---- shape errors -------------------------------------------------------------------------

#[test]
fn shape_errors_are_errors() {
    let b = R::new();
    let mut t = ParamTable::new();
    let vit = Vit::new(&mut t, "", tiny()).unwrap();
    let beit = Beit::new(&mut t, "gen", BeitConfig::new(tiny(), 5)).unwrap();
    let revdet = RevdetHead::new(&mut t, "revdet_head", 8).unwrap();
    let respix = RespixHead::new(&mut t, "respix_head", &tiny()).unwrap();
    let cls = ClassifierHead::timm(&mut t, "", &tiny(), 4).unwrap();
    let (store, _) = setup(t, 71, 0.5);
    let p = &store.params;
    let z = |shape: &[usize]| Tensor::<R>::zeros(&b, shape).unwrap();
    // Wrong image size, channel count, rank, empty batch.
    assert!(is_shape_err(vit.forward_features(&b, p, &z(&[2, 3, 16, 16]))));
    assert!(is_shape_err(vit.forward_features(&b, p, &z(&[2, 1, 8, 8]))));
    assert!(is_shape_err(vit.infer_features(&b, p, &z(&[3, 8, 8]))));
    assert!(is_shape_err(vit.infer_features(&b, p, &z(&[0, 3, 8, 8]))));
    assert!(is_shape_err(vit.infer_features(&b, p, &z(&[1, 3, 8, 8, 1]))));
    // Wrong gradient shape; block range out of bounds.
    let (_, c) = vit.forward_features(&b, p, &z(&[2, 3, 8, 8])).unwrap();
    let mut g = vec![0.0; p.len()];
    assert!(is_shape_err(vit.backward(&b, p, &mut g, &c, &z(&[2, 4, 8]))));
    assert!(is_invalid(vit.infer_blocks(&b, p, &z(&[2, 5, 8]), 1..3)));
    // BEiT: mask shape, image shape, logits gradient shape.
    assert!(is_shape_err(beit.forward(&b, p, &z(&[2, 3, 8, 8]), &z(&[2, 5]))));
    assert!(is_shape_err(beit.forward(&b, p, &z(&[2, 3, 8, 8]), &z(&[1, 4]))));
    assert!(is_shape_err(beit.infer(&b, p, &z(&[2, 3, 8, 4]), &z(&[2, 4]))));
    let (_, c) = beit.forward(&b, p, &z(&[2, 3, 8, 8]), &z(&[2, 4])).unwrap();
    assert!(is_shape_err(beit.backward(&b, p, &mut g, &c, &z(&[2, 4, 6]))));
    // Heads: width, token count, gradient shapes.
    assert!(is_shape_err(revdet.forward(&b, p, &z(&[2, 5, 6]))));
    assert!(is_shape_err(revdet.forward(&b, p, &z(&[2, 1, 8]))));
    assert!(is_shape_err(respix.forward(&b, p, &z(&[2, 6, 8]))));
    assert!(is_shape_err(cls.infer(&b, p, &z(&[2, 8]))));
    let (_, c) = respix.forward(&b, p, &z(&[2, 5, 8])).unwrap();
    assert!(is_shape_err(respix.backward(&b, p, &mut g, &c, &z(&[2, 3, 8, 4]))));
    let (_, c) = revdet.forward(&b, p, &z(&[2, 5, 8])).unwrap();
    assert!(is_shape_err(revdet.backward(&b, p, &mut g, &c, &z(&[2, 5]))));
}

// ---- masking ------------------------------------------------------------------------------

#[test]
fn scaled_range_keeps_the_paper_fraction() {
    assert_eq!(scaled_range(196), (100, 120));
    assert_eq!(scaled_range(64), (33, 39));
    assert_eq!(scaled_range(16), (8, 10));
    assert_eq!(scaled_range(4), (2, 2));
    assert_eq!(scaled_range(1), (1, 1));
}

#[test]
fn random_masking_counts() {
    let m = RandomMasking::paper(196).unwrap();
    let mut s = Stream::new(3);
    let mut seen = [false; 21];
    for _ in 0..2000 {
        let mask = m.sample(&mut s);
        assert_eq!(mask.len(), 196);
        assert!(mask.iter().all(|&v| v <= 1));
        let k = mask.iter().filter(|&&v| v == 1).count();
        assert!((100..=120).contains(&k), "{k}");
        seen[k - 100] = true;
    }
    assert!(seen.iter().all(|&x| x), "every k in 100..=120 drawn");
    // Exactly k when the range is one value; every position is masked about equally.
    let m = RandomMasking::new(64, 20, 20).unwrap();
    let mut hits = [0usize; 64];
    for _ in 0..4000 {
        let mask = m.sample(&mut s);
        assert_eq!(mask.iter().filter(|&&v| v == 1).count(), 20);
        for (h, &v) in hits.iter_mut().zip(&mask) {
            *h += v as usize;
        }
    }
    let expect = 4000.0 * 20.0 / 64.0;
    assert!(hits.iter().all(|&h| (h as f64 - expect).abs() < 0.15 * expect), "{hits:?}");
    assert!(is_invalid(RandomMasking::new(10, 5, 4)));
    assert!(is_invalid(RandomMasking::new(10, 5, 11)));
    assert!(is_invalid(RandomMasking::new(0, 0, 0)));
}

#[test]
fn masks_are_deterministic_under_a_seed() {
    for m in
        [Masking::Random(RandomMasking::paper(196).unwrap()), Masking::Block(BlockMasking::new(14, 14, 75).unwrap())]
    {
        let a = m.sample_batch(&mut Stream::new(11), 4);
        assert_eq!(a, m.sample_batch(&mut Stream::new(11), 4));
        assert_ne!(a, m.sample_batch(&mut Stream::new(12), 4));
        assert_eq!(a.len(), 4 * 196);
        assert_eq!(m.sample_for(5, 3), m.sample_for(5, 3));
        assert_ne!(m.sample_for(5, 3), m.sample_for(5, 4));
    }
    assert_eq!(mask_values::<f64>(&[0, 1, 1]), [0.0, 1.0, 1.0]);
}

/// Sizes of the 4-connected components of the masked patches.
fn components(mask: &[u8], h: usize, w: usize) -> Vec<usize> {
    let mut seen = vec![false; mask.len()];
    let mut sizes = Vec::new();
    for start in 0..mask.len() {
        if mask[start] == 0 || seen[start] {
            continue;
        }
        let (mut stack, mut size) = (vec![start], 0);
        seen[start] = true;
        while let Some(i) = stack.pop() {
            size += 1;
            let (r, c) = (i / w, i % w);
            let mut visit = |j: usize| {
                if mask[j] == 1 && !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            };
            if r > 0 {
                visit(i - w);
            }
            if r + 1 < h {
                visit(i + w);
            }
            if c > 0 {
                visit(i - 1);
            }
            if c + 1 < w {
                visit(i + 1);
            }
        }
        sizes.push(size);
    }
    sizes
}

#[test]
fn block_masking_counts_and_contiguity() {
    for (h, w, target) in [(14, 14, 75), (14, 14, 98), (8, 8, 32), (14, 7, 40)] {
        let m = BlockMasking::new(h, w, target).unwrap();
        let mut s = Stream::new(21);
        let (mut total, mut comps, mut isolated) = (0, 0, 0);
        let runs = 300;
        for _ in 0..runs {
            let mask = m.sample(&mut s);
            let k = mask.iter().filter(|&&v| v == 1).count();
            assert!(k <= target, "{k} > {target}");
            assert!(k + m.min_num_patches >= target, "{h}×{w}: {k} of {target}");
            total += k;
            let c = components(&mask, h, w);
            comps += c.len();
            isolated += c.iter().filter(|&&sz| sz == 1).count();
        }
        let mean_k = total as f64 / runs as f64;
        assert!(mean_k > target as f64 - 1.0, "{h}×{w}: mean count {mean_k} of {target}");
        // Blocks, not scattered patches: few components, almost no isolated patches.
        let mean_comps = comps as f64 / runs as f64;
        assert!(mean_comps < target as f64 / 8.0, "{h}×{w}: {mean_comps} components per mask");
        assert!((isolated as f64 / runs as f64) < 0.5, "{h}×{w}: {isolated} isolated patches");
        // Random masking of the same count is far more scattered.
        let r = RandomMasking::new(h * w, target, target).unwrap();
        let rc: usize = (0..runs).map(|_| components(&r.sample(&mut s), h, w).len()).sum();
        assert!(rc as f64 > 2.0 * comps as f64, "random {rc} vs block {comps} components");
    }
    assert_eq!(BlockMasking::new(14, 14, 75).unwrap().min_num_patches, 16);
    assert_eq!(BlockMasking::new(8, 8, 32).unwrap().min_num_patches, 5);
    assert_eq!(BlockMasking::new(2, 2, 2).unwrap().min_num_patches, 1);
    assert!(is_invalid(BlockMasking::new(14, 14, 197)));
    assert!(is_invalid(BlockMasking::new(0, 14, 0)));
}
