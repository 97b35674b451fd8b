//! Tests of evaluation on the reference backend: the loss against finite differences,
//! mixing, the probe on separable data, the fine-tuning network's gradients, layer-wise
//! decay groups, loading encoders from every kind of checkpoint, and a tiny fine-tuning
//! run resumed exactly.

use super::finetune::{finetune_groups, read_metrics, FtModel};
use super::loss::*;
use super::pretrained::{copy_tensors, is_classifier};
use super::probe::standardize;
use super::*;
use crate::arch::by_name;
use crate::checkpoint;
use crate::cim::{param_groups, CimModel, OptState, ENHANCER};
use crate::params::ParamTable;
use crate::reference::Reference;
use crate::rng::Stream;
use crate::tensor::Tensor;
use crate::testing::{fd_check_at, uniform};
use crate::train::{presets, EnhancerSpec, PretrainConfig, RunDir, TokenizerSpec};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

type R32 = Reference<f32>;
type R64 = Reference<f64>;

fn err_text<T>(r: crate::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

// ---- loss and mixing --------------------------------------------------------------------

#[test]
fn eval_soft_cross_entropy_matches_finite_differences() {
    let (rows, k) = (5, 4);
    let mut s = Stream::new(3);
    let logits = uniform(&mut s, rows * k, 3.0);
    let labels = [0u32, 3, 1, 1, 2];
    let mut targets = smooth_targets(&labels, k, 0.1).unwrap();
    for t in targets.chunks_exact(k) {
        assert!((t.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
    assert!((targets[0] - (0.9 + 0.025)).abs() < 1e-12 && (targets[1] - 0.025).abs() < 1e-12);
    // Mixed targets (rows blended with the reversed batch) are soft targets too.
    let mut px = vec![0f32; rows * 3 * 2 * 2];
    let mix = MixConfig { mixup_alpha: 0.8, ..MixConfig::OFF };
    mix_batch(&mut px, [rows, 3, 2, 2], &mut targets, k, &mix, &mut Stream::new(1)).unwrap();
    let (loss, grad) = soft_cross_entropy(&logits, &targets, rows, k).unwrap();
    // The value, row by row.
    let mut want = 0.0;
    for (z, t) in logits.chunks_exact(k).zip(targets.chunks_exact(k)) {
        let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
        want += t.iter().zip(z).map(|(t, z)| t * (lse - z)).sum::<f64>();
    }
    assert!((loss - want / rows as f64).abs() < 1e-12, "{loss} vs {}", want / rows as f64);
    let mut f = |p: &[f64], _: &[Vec<f64>]| vec![soft_cross_entropy(p, &targets, rows, k).unwrap().0];
    fd_check_at("soft cross-entropy", &mut f, (&logits, &grad), (&[], &[]), &[1.0], None, None);
    // One-hot targets: the plain cross-entropy.
    let hard = smooth_targets(&labels, k, 0.0).unwrap();
    let (l0, _) = soft_cross_entropy(&logits, &hard, rows, k).unwrap();
    let plain: f64 = logits
        .chunks_exact(k)
        .zip(labels)
        .map(|(z, y)| z.iter().map(|v| v.exp()).sum::<f64>().ln() - z[y as usize])
        .sum::<f64>()
        / rows as f64;
    assert!((l0 - plain).abs() < 1e-12);
    assert!(smooth_targets(&[4], 4, 0.1).is_err() && smooth_targets(&[0], 4, 1.0).is_err());
    assert!(soft_cross_entropy(&logits, &hard[..4], rows, k).is_err());
}

#[test]
fn eval_mixup_and_cutmix() {
    let (n, c, h, w, k) = (4, 3, 6, 5, 3);
    let per = c * h * w;
    let orig: Vec<f32> = (0..n * per).map(|i| i as f32).collect();
    let labels = [0u32, 1, 2, 1];
    let t0 = smooth_targets(&labels, k, 0.0).unwrap();
    // Mixup: each image blended with its mirror in the batch, the targets likewise.
    let mut px = orig.clone();
    let mut t = t0.clone();
    let cfg = MixConfig { mixup_alpha: 0.8, ..MixConfig::OFF };
    let Mixed::Mixup { lam } = mix_batch(&mut px, [n, c, h, w], &mut t, k, &cfg, &mut Stream::new(5)).unwrap() else {
        panic!("not mixup")
    };
    for i in 0..n {
        let j = n - 1 - i;
        for p in [0, 7, per - 1] {
            let want = lam as f32 * orig[i * per + p] + (1.0 - lam as f32) * orig[j * per + p];
            assert!((px[i * per + p] - want).abs() < 1e-3);
        }
        for q in 0..k {
            assert!((t[i * k + q] - (lam * t0[i * k + q] + (1.0 - lam) * t0[j * k + q])).abs() < 1e-12);
        }
    }
    // CutMix: a box pasted from the mirror image, λ the share kept.
    let cfg = MixConfig { cutmix_alpha: 1.0, ..MixConfig::OFF };
    let mut found = false;
    for seed in 0..20 {
        let mut px = orig.clone();
        let mut t = t0.clone();
        let m = mix_batch(&mut px, [n, c, h, w], &mut t, k, &cfg, &mut Stream::new(seed)).unwrap();
        let Mixed::CutMix { lam, y0, y1, x0, x1 } = m else { panic!("not cutmix") };
        assert!((lam - (1.0 - ((y1 - y0) * (x1 - x0)) as f64 / (h * w) as f64)).abs() < 1e-12);
        for i in 0..n {
            let j = n - 1 - i;
            for ch in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        let p = ch * h * w + y * w + x;
                        let inside = (y0..y1).contains(&y) && (x0..x1).contains(&x);
                        let src = if inside { j } else { i };
                        assert_eq!(px[i * per + p], orig[src * per + p]);
                    }
                }
            }
            let s: f64 = t[i * k..(i + 1) * k].iter().sum();
            assert!((s - 1.0).abs() < 1e-12);
        }
        found |= y1 > y0 && x1 > x0;
    }
    assert!(found, "no draw pasted a box");
    // Off, or probability 0: untouched.
    let mut px = orig.clone();
    let mut t = t0.clone();
    let never = MixConfig { mixup_alpha: 0.8, prob: 0.0, ..MixConfig::OFF };
    for cfg in [MixConfig::OFF, never] {
        assert_eq!(mix_batch(&mut px, [n, c, h, w], &mut t, k, &cfg, &mut Stream::new(0)).unwrap(), Mixed::None);
    }
    assert_eq!((px, t), (orig, t0));
    let bad = MixConfig { mixup_alpha: -1.0, ..MixConfig::OFF };
    assert!(mix_batch(&mut [0.0; 12], [1, 3, 2, 2], &mut [1.0], 1, &bad, &mut Stream::new(0)).is_err());
}

#[test]
fn eval_beta_samples_have_the_right_moments() {
    let mut s = Stream::new(11);
    for a in [0.8, 1.0, 2.5] {
        let n = 20_000;
        let xs: Vec<f64> = (0..n).map(|_| beta_sym(&mut s, a)).collect();
        assert!(xs.iter().all(|x| (0.0..=1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        let want = 1.0 / (4.0 * (2.0 * a + 1.0));
        assert!((mean - 0.5).abs() < 0.01, "α {a}: mean {mean}");
        assert!((var - want).abs() < 0.01, "α {a}: variance {var} vs {want}");
    }
}

// ---- the probe ----------------------------------------------------------------------------

/// `n` points of `k` Gaussian clusters in `dim` dimensions, features offset and scaled
/// unevenly (the probe standardizes them).
fn clusters(n: usize, k: usize, dim: usize, seed: u64) -> Features {
    let mut s = Stream::new(seed);
    let mut centers = Stream::new(99);
    let c: Vec<f64> = uniform(&mut centers, k * dim, 1.5);
    let mut data = Vec::with_capacity(n * dim);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let y = i % k;
        for j in 0..dim {
            let noise = uniform(&mut s, 1, 0.5)[0];
            data.push(((c[y * dim + j] + noise) * (1.0 + j as f64) + 10.0 * j as f64) as f32);
        }
        labels.push(y as u32);
    }
    Features { data, labels, dim }
}

#[test]
fn eval_probe_learns_separable_clusters_deterministically() {
    let train = clusters(600, 4, 6, 1);
    let test = clusters(200, 4, 6, 2);
    let cfg =
        ProbeConfig { epochs: 15, lrs: vec![0.1, 0.01], weight_decays: vec![0.0, 1e-3], ..ProbeConfig::default() };
    let r = linear_probe(&train, &test, 4, &cfg).unwrap();
    assert_eq!(r.grid.len(), 4);
    assert_eq!((r.train_len, r.val_len, r.test_len, r.dim), (600, 60, 200, 6));
    assert!(r.test_top1 > 0.9, "{r:?}");
    let best = r.grid.iter().map(|p| p.val_top1).fold(0.0, f64::max);
    assert_eq!(r.val_top1, best);
    // The same on one thread as on several.
    let one = linear_probe(&train, &test, 4, &ProbeConfig { threads: 1, ..cfg.clone() }).unwrap();
    let three = linear_probe(&train, &test, 4, &ProbeConfig { threads: 3, ..cfg.clone() }).unwrap();
    assert_eq!(one, three);
    // A diverging learning rate scores 0 and is not chosen.
    let wild = ProbeConfig { lrs: vec![1e9, 0.05], weight_decays: vec![0.0], ..cfg.clone() };
    let r = linear_probe(&train, &test, 4, &wild.clone()).unwrap();
    assert_eq!((r.grid[0].val_top1, r.grid[0].diverged, r.lr), (0.0, true, 0.05));
    let hopeless = ProbeConfig { lrs: vec![1e9], ..wild };
    assert!(linear_probe(&train, &test, 4, &hopeless).unwrap_err().to_string().contains("diverged at every"));
    // Bad input.
    assert!(linear_probe(&train, &test, 3, &cfg).unwrap_err().to_string().contains("label 3"));
    assert!(linear_probe(&train, &test, 4, &ProbeConfig { lrs: vec![], ..cfg }).is_err());
}

#[test]
fn eval_standardize_uses_the_training_statistics() {
    let mut train = vec![1.0, 5.0, 3.0, 5.0, 5.0, 5.0];
    let mut test = [3.0, 7.0];
    standardize(&mut train, &mut [&mut test[..]], 2);
    // Column 0: mean 3, sd √(8/3); column 1 is constant and becomes 0.
    let sd = (8.0f64 / 3.0).sqrt();
    assert!((train[0] as f64 + 2.0 / sd).abs() < 1e-6 && train[2] == 0.0);
    assert!(train[1] == 0.0 && test[1] == 0.0 && test[0] == 0.0);
}

// ---- the fine-tuning network --------------------------------------------------------------

const VIT: &str = "vit(img=8,patch=4,dim=8,depth=2,heads=2,mlp_ratio=2)";
const RESNET: &str = "resnet(block=basic,layers=1-1-1-1,width=2,stem=small,img=8)";

fn ft_model<B: crate::Backend>(
    b: &B,
    arch: &str,
    classes: usize,
    seed: u64,
) -> (FtModel, crate::params::ParamStore<B>) {
    let mut t = ParamTable::new();
    let m = FtModel::new(&by_name(arch).unwrap(), classes, &mut t).unwrap();
    (m, t.build(b, seed).unwrap())
}

#[test]
fn eval_finetune_network_gradients_match_finite_differences() {
    let b = R64::new();
    for arch in [VIT, RESNET] {
        let (m, mut store) = ft_model(&b, arch, 3, 4);
        let n = 3;
        let mut s = Stream::new(8);
        let x = Tensor::from_f64(&b, &[n, 3, 8, 8], &uniform(&mut s, n * 3 * 64, 1.0)).unwrap();
        let mut targets = smooth_targets(&[0, 2, 1], 3, 0.1).unwrap();
        targets.swap(0, 1);
        let state0 = store.state.clone();
        m.train_step(&b, &mut store, &x, &targets).unwrap();
        let grads = store.grads.clone();
        let p0 = store.params.clone();
        // Batch statistics make the loss a function of the parameters alone; the running
        // statistics it updates are restored before each evaluation.
        let mut f = |p: &[f64], _: &[Vec<f64>]| {
            store.params = p.to_vec();
            store.state = state0.clone();
            vec![m.train_step(&b, &mut store, &x, &targets).unwrap().0]
        };
        let idx: Vec<usize> = (0..p0.len()).step_by((p0.len() / 40).max(1)).collect();
        fd_check_at(arch, &mut f, (&p0, &grads), (&[], &[]), &[1.0], Some(&idx), None);
        // The new head's tensors are what the pre-trained file lacks.
        let fresh: Vec<String> =
            store.table.entries().iter().filter(|e| is_classifier(&e.name)).map(|e| e.name.clone()).collect();
        let want: &[&str] = if arch == VIT {
            &["fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"]
        } else {
            &["fc.weight", "fc.bias"]
        };
        assert_eq!(fresh, want);
        assert!(store.table.get("norm.weight").is_none());
    }
}

#[test]
fn eval_layer_decay_groups() {
    let b = R32::new();
    let (m, store) = ft_model(&b, VIT, 5, 0);
    let t = &store.table;
    let groups = finetune_groups(t, 0.05, |n| m.lr_scale(n, 0.8));
    // Every trainable element once, in order.
    let mut next = 0;
    for g in &groups {
        assert_eq!(g.offset, next);
        next += g.len;
    }
    assert_eq!(next, t.params_len());
    let lr_of = |name: &str| {
        let p = t.get(name).unwrap();
        groups.iter().find(|g| g.offset <= p.offset && p.offset < g.offset + g.len).unwrap().lr
    };
    let wd_of = |name: &str| {
        let p = t.get(name).unwrap();
        groups.iter().find(|g| g.offset <= p.offset && p.offset < g.offset + g.len).unwrap().weight_decay
    };
    // Depth 2: head 1, block 1 0.8, block 0 0.64, embeddings 0.512 (BEiT's assignment).
    for (name, want) in [
        ("head.weight", 1.0),
        ("fc_norm.bias", 1.0),
        ("blocks.1.attn.qkv.weight", 0.8),
        ("blocks.0.mlp.fc2.bias", 0.64),
        ("patch_embed.proj.weight", 0.512),
        ("cls_token", 0.512),
        ("pos_embed", 0.512),
    ] {
        assert!((lr_of(name) - want).abs() < 1e-12, "{name}: {}", lr_of(name));
    }
    assert_eq!((wd_of("head.weight"), wd_of("head.bias"), wd_of("cls_token")), (0.05, 0.0, 0.0));
    // Without decay the groups are the pre-training optimizer's.
    assert_eq!(finetune_groups(t, 0.05, |_| 1.0), param_groups(t, 0.05));
    // A ResNet has no layer-wise decay.
    let (r, rs) = ft_model(&b, RESNET, 5, 0);
    assert!(rs.table.entries().iter().all(|e| r.lr_scale(&e.name, 0.8) == 1.0));
    assert_eq!(FtModel::layer_id("blocks.11.norm1.weight", 12), 12);
}

// ---- loading encoders ---------------------------------------------------------------------

fn tiny_pretrain(dir: &Path) -> PretrainConfig {
    PretrainConfig {
        data: dir.join("none"),
        image_size: 16,
        tokenizer_image_size: 8,
        enhancer: EnhancerSpec {
            arch: "vit".into(),
            patch_size: 4,
            width: 16,
            depth: 2,
            heads: 2,
            mlp_ratio: 2.0,
            ..Default::default()
        },
        tokenizer_model: TokenizerSpec { group_count: 2, n_hid: 8, n_blk_per_group: 1, vocab_size: 16, n_init: 8 },
        generator_depth: 2,
        ..presets::tiny_respix()
    }
}

#[test]
fn eval_encoders_from_runs_checkpoints_and_architectures() {
    let b = R32::new();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_pretrain(tmp.path());
    let cim = cfg.cim().unwrap();
    let (_, store, _) = CimModel::build(cim, &b, 3).unwrap();
    let opt = OptState::new(&b, &store.table, &cfg.adamw()).unwrap();
    let run = RunDir::new(tmp.path().join("run"));
    run.create().unwrap();
    let ckpt = run.save_state(&b, 7, &store, &opt, &cfg).unwrap();
    let want = |name: &str| store.get(&b, &format!("{ENHANCER}.{name}")).unwrap();
    let check = |e: &Encoder<R32>| {
        assert_eq!(e.spec, cim.enhancer_arch());
        for en in e.store.table.entries() {
            assert_eq!(e.store.get(&b, &en.name).unwrap(), want(&en.name), "{}", en.name);
        }
        assert_eq!(e.mean, cim.mean);
        assert_eq!(e.metadata["cim.objective"], "respix");
    };
    // A run without its final enhancer: the newest training checkpoint's enhancer part.
    let from_ckpt = load_encoder(&b, &run.root, None).unwrap();
    check(&from_ckpt);
    assert!(from_ckpt.origin.contains("step 7"), "{}", from_ckpt.origin);
    check(&load_encoder(&b, &ckpt, None).unwrap());
    // A finished run: RUN/enhancer.safetensors.
    checkpoint::save(run.enhancer_path(), &store, &b, ENHANCER, &cim.enhancer_metadata()).unwrap();
    let e = load_encoder(&b, &run.root, None).unwrap();
    check(&e);
    assert_eq!(e.path.as_deref(), Some(run.enhancer_path().as_path()));
    // A timm-style file with a classifier: the head is dropped.
    let spec = by_name("vit(img=8,patch=4,dim=8,depth=1,heads=2,classes=4)").unwrap();
    let mut t = ParamTable::new();
    spec.build(&mut t, "").unwrap();
    let with_head = t.build(&b, 1).unwrap();
    let f = tmp.path().join("timm.safetensors");
    checkpoint::save(&f, &with_head, &b, "", &Default::default()).unwrap();
    let e = load_encoder(&b, &f, Some(&spec.serialize())).unwrap();
    assert_eq!(e.spec.classes(), None);
    assert!(e.store.table.get("head.weight").is_none());
    assert_eq!(e.store.get(&b, "pos_embed").unwrap(), with_head.get(&b, "pos_embed").unwrap());
    assert_eq!(e.mean, crate::arch::IMAGENET_MEAN);
    // Random initializations are seeded.
    let r1 = random_encoder::<R32>(&b, "resnet18_small", 1).unwrap();
    assert_eq!(r1.spec, by_name("resnet18_small").unwrap());
    let v1 = random_encoder::<R32>(&b, VIT, 1).unwrap();
    let v2 = random_encoder::<R32>(&b, VIT, 2).unwrap();
    assert_ne!(v1.store.params, v2.store.params);
    // Copying into the fine-tuning network keeps the new head fresh.
    let (_, mut ft) = ft_model(&b, VIT, 3, 9);
    let head0 = ft.get(&b, "head.weight").unwrap();
    copy_tensors(&b, &v1.store, "", &mut ft, is_classifier).unwrap();
    assert_eq!(
        ft.get(&b, "blocks.1.attn.proj.weight").unwrap(),
        v1.store.get(&b, "blocks.1.attn.proj.weight").unwrap()
    );
    assert_eq!(ft.get(&b, "head.weight").unwrap(), head0);
    // Errors.
    let e = err_text(load_encoder(&b, &tmp.path().join("nowhere"), None));
    assert!(e.contains("does not exist"), "{e}");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = err_text(load_encoder(&b, &empty, None));
    assert!(e.contains("not a run directory"), "{e}");
    let e = err_text(random_encoder::<R32>(&b, "dvae_small_encoder", 0));
    assert!(e.contains("ViT or a ResNet"), "{e}");
    let (_, mut other) = ft_model(&b, "vit(img=8,patch=4,dim=12,depth=2,heads=2)", 3, 0);
    let e = err_text(copy_tensors(&b, &v1.store, "", &mut other, is_classifier));
    assert!(e.contains("shape"), "{e}");
}

#[test]
fn eval_narrow_resnet_enhancer_from_a_training_checkpoint() {
    let b = R32::new();
    let tmp = tempfile::tempdir().unwrap();
    let arch = "resnet(block=basic,layers=1-1-1-1,width=4,stem=small)";
    let mut cfg = tiny_pretrain(tmp.path());
    cfg.enhancer = EnhancerSpec {
        arch: arch.into(),
        patch_size: 4,
        generator_width: 16,
        generator_heads: 2,
        ..EnhancerSpec::default()
    };
    let cim = cfg.cim().unwrap();
    let crate::arch::ArchKind::ResNet { cfg: rc, img_size } = cim.enhancer_arch().kind else { panic!("not a ResNet") };
    assert_eq!((rc.base_width, rc.layers, rc.stem, img_size), (4, [1; 4], crate::models::resnet::Stem::Small, 16));
    let (_, store, _) = CimModel::build(cim, &b, 3).unwrap();
    let opt = OptState::new(&b, &store.table, &cfg.adamw()).unwrap();
    let run = RunDir::new(tmp.path().join("run"));
    run.create().unwrap();
    run.save_state(&b, 2, &store, &opt, &cfg).unwrap();
    let e = load_encoder(&b, &run.root, None).unwrap();
    assert_eq!(e.metadata["cim.family"], "resnet");
    for name in ["conv1.weight", "layer4.0.bn2.running_var", "layer2.0.downsample.0.weight"] {
        assert_eq!(e.store.get(&b, name).unwrap(), store.get(&b, &format!("{ENHANCER}.{name}")).unwrap(), "{name}");
    }
    // Features: the global average pool, 32 channels.
    let x = Tensor::from_f64(&b, &[2, 3, 16, 16], &vec![0.3; 2 * 3 * 256]).unwrap();
    assert_eq!(features::encode(&b, &e, &x, Pooling::Mean).unwrap().len(), 2 * 32);
    cfg.enhancer.arch = "resnet(block=basic,layers=1-1)".into();
    assert!(cfg.cim().unwrap_err().to_string().contains("four block counts"));
    cfg.enhancer.arch = "vit(img=16,patch=4,dim=8,depth=1,heads=2)".into();
    assert!(cfg.cim().unwrap_err().to_string().contains("unknown enhancer"));
}

// ---- a tiny fine-tuning run ---------------------------------------------------------------

/// An IDX pair in `dir`: 8×8 grey images, class `k` of 3 a bright bar at rows `2k..2k+2`
/// over noise.
pub(crate) fn write_bars(dir: &Path, n_train: usize, n_test: usize) {
    let idx = |magic: u8, dims: &[u32], data: &[u8]| {
        let mut v = vec![0, 0, 8, magic];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    };
    let mut s = Stream::new(42);
    for (prefix, n) in [("train", n_train), ("t10k", n_test)] {
        let mut px = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let k = (i * 7 + n) % 3;
            for y in 0..8 {
                for _ in 0..8 {
                    let bar = y / 2 == k;
                    px.push(if bar { 200 + (s.next_u32() % 55) as u8 } else { (s.next_u32() % 90) as u8 });
                }
            }
            labels.push(k as u8);
        }
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), idx(3, &[n as u32, 8, 8], &px)).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), idx(1, &[n as u32], &labels)).unwrap();
    }
}

fn run_ft(
    b: &R32,
    cfg: &FinetuneConfig,
    root: &Path,
    resume: bool,
    stop_at: Option<u64>,
) -> crate::Result<FinetuneSummary> {
    let stop = Arc::new(AtomicBool::new(false));
    let opts = FinetuneOptions { resume, stop: Some(stop.clone()) };
    finetune(b, cfg, &RunDir::new(root), &opts, &mut |e| {
        if let (FtEvent::Step { step, .. }, Some(s)) = (e, stop_at) {
            if *step == s {
                stop.store(true, Ordering::Relaxed);
            }
        }
    })
}

#[test]
fn eval_finetune_runs_and_resumes_exactly() {
    let b = R32::new();
    let tmp = tempfile::tempdir().unwrap();
    write_bars(tmp.path(), 48, 24);
    let cfg = FinetuneConfig {
        data: tmp.path().to_path_buf(),
        arch: VIT.into(),
        steps: 6,
        batch: 8,
        lr: 3e-3,
        mixup: 0.8,
        cutmix: 1.0,
        log_every: 1,
        checkpoint_every: 3,
        eval_every: 4,
        workers: 1,
        ..FinetuneConfig::default()
    };
    let full = run_ft(&b, &cfg, &tmp.path().join("full"), false, None).unwrap();
    let r = full.result.clone().unwrap();
    assert_eq!((r.steps, r.test_len, r.train_len, r.classes, r.batch), (6, 24, 48, 3, 8));
    assert!(r.from_scratch && r.init.contains("random init"));
    assert!((0.0..=1.0).contains(&r.test_top1));
    let full_run = RunDir::new(tmp.path().join("full"));
    let m_full = read_metrics(&full_run).unwrap();
    assert_eq!(m_full.len(), 6);
    assert!(m_full[3].test_top1.is_some() && m_full[2].test_top1.is_none());
    assert!(m_full.windows(2).all(|w| w[0].lr != w[1].lr));
    let saved = std::fs::read_to_string(super::finetune::result_path(&full_run)).unwrap();
    let back = serde_json::from_str::<FinetuneResult>(&saved).unwrap();
    let timeless = |r: &FinetuneResult| FinetuneResult { train_seconds: 0.0, eval_seconds: 0.0, ..r.clone() };
    assert_eq!(timeless(&back), timeless(&r));
    let meta = checkpoint::read_metadata(super::finetune::model_path(&full_run)).unwrap();
    assert_eq!(meta["cim.kind"], "cim-finetuned");
    assert_eq!(FinetuneConfig::from_toml(&std::fs::read_to_string(full_run.config_path()).unwrap()).unwrap(), cfg);
    // Interrupted after step 4 (a checkpoint is written there), then resumed.
    let part = tmp.path().join("part");
    let s = run_ft(&b, &cfg, &part, false, Some(4)).unwrap();
    assert!(s.interrupted && s.result.is_none() && s.steps == 4);
    let s = run_ft(&b, &cfg, &part, true, None).unwrap();
    assert_eq!(s.start_step, 4);
    let m_part = read_metrics(&RunDir::new(&part)).unwrap();
    let det = |v: &[FinetuneRecord]| v.iter().map(|r| r.deterministic_part()).collect::<Vec<_>>();
    assert_eq!(det(&m_part), det(&m_full));
    assert_eq!(s.result.unwrap().test_top1, r.test_top1);
}

#[test]
fn eval_finetune_from_a_checkpoint_and_from_scratch() {
    let b = R32::new();
    let tmp = tempfile::tempdir().unwrap();
    write_bars(tmp.path(), 32, 12);
    // A "pre-trained" encoder file with a final norm (dropped by fine-tuning).
    let spec = by_name(VIT).unwrap();
    let mut t = ParamTable::new();
    spec.build(&mut t, "").unwrap();
    let enc = t.build(&b, 77).unwrap();
    let file = tmp.path().join("enc.safetensors");
    checkpoint::save(&file, &enc, &b, "", &spec.metadata()).unwrap();
    let base = FinetuneConfig {
        data: tmp.path().to_path_buf(),
        checkpoint: file.clone(),
        steps: 2,
        batch: 8,
        workers: 1,
        ..FinetuneConfig::default()
    };
    let pre = run_ft(&b, &base, &tmp.path().join("pre"), false, None).unwrap().result.unwrap();
    assert!(!pre.from_scratch && pre.init.contains("enc.safetensors"), "{pre:?}");
    assert_eq!(pre.arch, spec.arch_string());
    let scratch = FinetuneConfig { from_scratch: true, ..base.clone() };
    let s = run_ft(&b, &scratch, &tmp.path().join("scratch"), false, None).unwrap().result.unwrap();
    assert!(s.from_scratch && s.init.contains("random init"));
    // Settings that cannot work are one-line errors.
    for (cfg, want) in [
        (FinetuneConfig { checkpoint: Default::default(), ..base.clone() }, "name the pre-trained weights"),
        (FinetuneConfig { layer_decay: 0.0, ..base.clone() }, "layer_decay"),
        (FinetuneConfig { batch: 64, ..base.clone() }, "fewer than one batch"),
        (FinetuneConfig { data: tmp.path().join("nothing"), ..base.clone() }, "does not exist"),
    ] {
        let e = err_text(run_ft(&b, &cfg, &tmp.path().join("bad"), false, None));
        assert!(e.contains(want) && !e.contains('\n'), "{want}: {e}");
    }
}
