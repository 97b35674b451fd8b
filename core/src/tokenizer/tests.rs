//! Tests of the tokenizer training: gradients of the straight-through loss, a short run
//! on synthetic patterns, and the checkpoint round trip into a CIM tokenizer table.

use super::*;
use crate::backend::Backend;
use crate::models::dvae::DvaeConfig;
use crate::reference::Reference;
use crate::tensor::Tensor;
use alloc::vec::Vec;

type R32 = Reference<f32>;
type R64 = Reference<f64>;

/// 2 groups (grid = image / 2), widths 8, one block per group, 16 codes.
fn tiny() -> DvaeConfig {
    DvaeConfig { group_count: 2, n_hid: 8, n_blk_per_group: 1, input_channels: 3, vocab_size: 16, n_init: 8 }
}

fn images<B: Backend>(b: &B, n: usize, seed: u64) -> Tensor<B> {
    let mut s = crate::rng::Stream::new(seed);
    let data: Vec<f64> = (0..n * 3 * 64).map(|_| 0.05 + 0.9 * s.next_f32() as f64).collect();
    Tensor::from_f64(b, &[n, 3, 8, 8], &data).unwrap()
}

/// Central differences of the loss w.r.t. a few elements of `name`, against `grad`.
fn check_param(
    tok: &mut Tokenizer<R64>,
    b: &R64,
    x: &Tensor<R64>,
    noise: &Tensor<R64>,
    w: &LossWeights,
    name: &str,
    grad: &[f64],
) {
    let base = tok.store.get(b, name).unwrap();
    let shape = tok.store.table.entry(name).unwrap().shape.clone();
    let eps = 1e-6;
    let picks = [0, base.len() / 3, base.len() / 2, base.len() - 1];
    for &i in &picks {
        let mut v = base.clone();
        v[i] = base[i] + eps;
        tok.store.set(b, name, &shape, &v).unwrap();
        let lp = tok.loss(b, x, noise, 0.7, w, false).unwrap().total;
        v[i] = base[i] - eps;
        tok.store.set(b, name, &shape, &v).unwrap();
        let lm = tok.loss(b, x, noise, 0.7, w, false).unwrap().total;
        tok.store.set(b, name, &shape, &base).unwrap();
        let fd = (lp - lm) / (2.0 * eps);
        let tol = 1e-6 + 1e-4 * fd.abs().max(grad[i].abs());
        assert!((fd - grad[i]).abs() < tol, "{name}[{i}]: finite difference {fd} vs gradient {}", grad[i]);
    }
}

fn grads_of(
    tok: &mut Tokenizer<R64>,
    b: &R64,
    x: &Tensor<R64>,
    noise: &Tensor<R64>,
    w: &LossWeights,
) -> Tokenizer<R64> {
    // A copy of the gradients, keyed by the same table.
    tok.store.zero_grads(b).unwrap();
    tok.loss(b, x, noise, 0.7, w, true).unwrap();
    let (encoder, decoder, t) = tokenizer_table(tok.cfg).unwrap();
    let mut store = t.build(b, 0).unwrap();
    store.params = b
        .upload(
            &b.download(crate::tensor::View { buf: &tok.store.grads, offset: 0, len: tok.store.table.params_len() })
                .unwrap(),
        )
        .unwrap();
    Tokenizer { cfg: tok.cfg, image_size: tok.image_size, encoder, decoder, store }
}

const DECODER_PARAMS: &[&str] = &[
    "decoder.blocks.input.w",
    "decoder.blocks.input.b",
    "decoder.blocks.group_1.block_1.res_path.conv_2.w",
    "decoder.blocks.group_2.block_1.id_path.w",
    "decoder.blocks.output.conv.w",
    "decoder.blocks.output.conv.b",
];

#[test]
fn tokenizer_decoder_gradients_match_finite_differences() {
    let b = R64::new();
    for recon in [Recon::L2, Recon::LogitLaplace] {
        let mut tok = Tokenizer::new(&b, tiny(), 8, 3).unwrap();
        let x = images(&b, 2, 5);
        let noise = tok.gumbel_noise(&b, 2, 11, 0).unwrap();
        let w = LossWeights { recon, kl: 0.01, usage: 0.3, entropy: 0.05 };
        let g = grads_of(&mut tok, &b, &x, &noise, &w);
        for name in DECODER_PARAMS {
            let grad = g.store.get(&b, name).unwrap();
            assert!(grad.iter().any(|v| *v != 0.0), "{name} has no gradient");
            check_param(&mut tok, &b, &x, &noise, &w, name, &grad);
        }
    }
}

/// The hard codes are piecewise constant in the encoder, so the loss's derivative w.r.t.
/// an encoder parameter is that of the regularizers alone: the full gradient minus the
/// straight-through one (regularizer weights zero).
#[test]
fn tokenizer_encoder_regularizer_gradients_match_finite_differences() {
    let b = R64::new();
    let mut tok = Tokenizer::new(&b, tiny(), 8, 4).unwrap();
    let x = images(&b, 2, 6);
    let noise = tok.gumbel_noise(&b, 2, 12, 0).unwrap();
    let w = LossWeights { recon: Recon::L2, kl: 0.01, usage: 0.3, entropy: 0.05 };
    let w0 = LossWeights { kl: 0.0, usage: 0.0, entropy: 0.0, ..w };
    let full = grads_of(&mut tok, &b, &x, &noise, &w);
    let st = grads_of(&mut tok, &b, &x, &noise, &w0);
    for name in ["encoder.blocks.output.conv.w", "encoder.blocks.output.conv.b", "encoder.blocks.input.w"] {
        let f = full.store.get(&b, name).unwrap();
        let s = st.store.get(&b, name).unwrap();
        assert!(s.iter().any(|v| *v != 0.0), "{name}: no straight-through gradient");
        let reg: Vec<f64> = f.iter().zip(&s).map(|(a, c)| a - c).collect();
        check_param(&mut tok, &b, &x, &noise, &w, name, &reg);
    }
}

/// Four distinct 8-px patterns (quadrants in different colours).
fn patterns(step: u64, batch: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(batch * 3 * 64);
    for i in 0..batch {
        let k = (i as u64 + step) % 4;
        for c in 0..3 {
            for y in 0..8 {
                for xx in 0..8 {
                    let quad = (y / 4) * 2 + xx / 4;
                    let on = quad as u64 == k;
                    let v = if on { 0.9 - 0.3 * c as f32 } else { 0.1 + 0.2 * ((k as usize + c) % 2) as f32 };
                    out.push(v);
                }
            }
        }
    }
    out
}

#[test]
fn tokenizer_short_training_lowers_reconstruction_and_uses_codes() {
    let b = R32::new();
    let mut cfg = TokenizerTrainConfig::new(tiny(), 8, 200);
    cfg.batch = 8;
    cfg.lr = 3e-3;
    cfg.log_every = 10;
    cfg.seed = 7;
    let x = Tensor::from_f64(&b, &[8, 3, 8, 8], &patterns(0, 8).iter().map(|&v| v as f64).collect::<Vec<_>>()).unwrap();
    let before = Tokenizer::new(&b, tiny(), 8, cfg.seed).unwrap().evaluate(&b, &x).unwrap();
    let mut recons = Vec::new();
    let tok = train_tokenizer(
        &b,
        &cfg,
        |s| Ok(patterns(s, 8)),
        |r| {
            recons.push(r.loss.recon);
            Ok(())
        },
    )
    .unwrap();
    let after = tok.evaluate(&b, &x).unwrap();
    assert_eq!(recons.len(), 20);
    let early: f64 = recons[..2].iter().sum::<f64>() / 2.0;
    let late: f64 = recons[recons.len() - 2..].iter().sum::<f64>() / 2.0;
    assert!(late < 0.7 * early, "training reconstruction {early} → {late}");
    assert!(after.recon_mse < 0.7 * before.recon_mse, "held-out MSE {} → {}", before.recon_mse, after.recon_mse);
    eprintln!("synthetic: {early} → {late}; {before:?} → {after:?}");
    assert!(after.codes_used > 1, "{after:?}");
    assert!(after.perplexity > 1.0 && after.sharpness > 0.0 && after.sharpness <= 1.0, "{after:?}");
}

#[test]
fn tokenizer_names_and_schedule() {
    assert_eq!(tokenizer_config("dvae_small").unwrap(), DvaeConfig::small());
    assert_eq!(tokenizer_config("dalle").unwrap(), DvaeConfig::dalle());
    assert_eq!(tokenizer_config("dvae_small_encoder").unwrap(), DvaeConfig::small());
    let c = tokenizer_config("dvae_encoder(groups=2,n_hid=8,blocks=1,vocab=16,n_init=8)").unwrap();
    assert_eq!(c, tiny());
    assert!(tokenizer_config("resnet50").is_err());
    assert!(tokenizer_config("nope").is_err());
    assert_eq!(tokenizer_arch_name(&DvaeConfig::small(), 16), "dvae_small");
    assert_eq!(tokenizer_config(&tokenizer_arch_name(&tiny(), 8)).unwrap(), tiny());
    let cfg = TokenizerTrainConfig::new(tiny(), 8, 101);
    assert!((cfg.tau(0) - 1.0).abs() < 1e-12);
    assert!((cfg.tau(100) - 0.0625).abs() < 1e-12);
    assert!((cfg.tau(50) - 0.25).abs() < 1e-12);
    let mut bad = cfg;
    bad.image_size = 7;
    assert!(bad.validate().is_err());
    assert_eq!(Recon::parse("logit-laplace").unwrap(), Recon::LogitLaplace);
    assert!(Recon::parse("l3").is_err());
}

#[cfg(feature = "std")]
#[test]
fn tokenizer_checkpoint_loads_into_a_cim_tokenizer_table() {
    use crate::checkpoint::{load_into, read_metadata};
    use crate::cim::{CimConfig, CimModel, EnhancerKind, Objective, RespixNorm};
    use crate::layers::Layer;
    use crate::models::vit::VitConfig;
    use alloc::collections::BTreeMap;

    let b = R32::new();
    let mut cfg = TokenizerTrainConfig::new(tiny(), 8, 3);
    cfg.batch = 4;
    let tok = train_tokenizer(&b, &cfg, |s| Ok(patterns(s, 4)), |_| Ok(())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tok.safetensors");
    let mut extra = BTreeMap::new();
    extra.insert("cim.tokenizer.steps".to_string(), "3".to_string());
    save_tokenizer(&path, &tok, &b, &extra).unwrap();
    let meta = read_metadata(&path).unwrap();
    assert_eq!(meta["cim.family"], "dvae_tokenizer");
    assert_eq!(tokenizer_config(&meta["cim.arch"]).unwrap(), tiny());
    assert_eq!(meta["cim.tokenizer.steps"], "3");

    // The CIM tokenizer table (enhancer grid 16/4 = tokenizer grid 8/2).
    let v = VitConfig { mlp_ratio: 2.0, ..VitConfig::new(16, 4, 8, 3, 2) };
    let mut cc = CimConfig::new(EnhancerKind::Vit(v), 16, Objective::Respix { norm: RespixNorm::PAPER }, tiny(), 8);
    cc.generator_depth = 2;
    let (model, _, mut tok_store) = CimModel::build(cc, &b, 99).unwrap();
    let report = load_into(&path, &mut tok_store, &b, "").unwrap();
    assert_eq!(report.loaded, tok.store.table.entries().len());
    let x = images(&b, 2, 8);
    let xm = crate::models::dvae::map_pixels(&b, &x).unwrap();
    let ya = tok.encoder.infer(&b, &tok.store.params, &xm).unwrap().to_f64(&b).unwrap();
    let yb = model.encoder.infer(&b, &tok_store.params, &xm).unwrap().to_f64(&b).unwrap();
    assert_eq!(ya, yb);
    let ga = tok.encoder.encode_tokens(&b, &tok.store.params, &xm).unwrap().to_vec(&b).unwrap();
    let gb = model.golden_tokens(&b, &tok_store, &x).unwrap().to_vec(&b).unwrap();
    assert_eq!(ga, gb);

    // And into a fresh tokenizer through load_tokenizer.
    let mut other = Tokenizer::new(&b, tiny(), 8, 1234).unwrap();
    load_tokenizer(&path, &mut other.store, &b).unwrap();
    let yc = other.encoder.infer(&b, &other.store.params, &xm).unwrap().to_f64(&b).unwrap();
    assert_eq!(ya, yc);
    // A tokenizer of another size does not load.
    let mut wrong = Tokenizer::new(&b, DvaeConfig { vocab_size: 32, ..tiny() }, 8, 1).unwrap();
    assert!(load_tokenizer(&path, &mut wrong.store, &b).is_err());
}

#[test]
fn tokenizer_file_round_trip_encode_decode() {
    let b = R32::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tok.safetensors");
    let tok = Tokenizer::new(&b, tiny(), 8, 3).unwrap();
    save_tokenizer(&path, &tok, &b, &Default::default()).unwrap();
    let opened = Tokenizer::open(&b, &path).unwrap();
    assert_eq!((opened.cfg, opened.image_size), (tok.cfg, 8));
    assert_eq!(
        opened.store.get(&b, "decoder.blocks.output.conv.w").unwrap(),
        tok.store.get(&b, "decoder.blocks.output.conv.w").unwrap()
    );

    let x = images(&b, 3, 4);
    let r = roundtrip(&b, &opened, &x).unwrap();
    assert_eq!(r.tokens.len(), 3 * 4 * 4);
    assert_eq!(r.reconstructions.len(), 3 * 3 * 8 * 8);
    assert!(r.reconstructions.iter().all(|v| (0.0..=1.0).contains(v)));
    assert_eq!(r.histogram.iter().sum::<usize>(), r.tokens.len());
    assert_eq!(r.histogram.iter().filter(|&&k| k > 0).count(), r.stats.codes_used);
    // The per-image errors average to evaluate()'s MSE (f32 arithmetic on both sides).
    let mean = r.image_mse.iter().sum::<f64>() / 3.0;
    assert!((mean - r.stats.recon_mse).abs() < 1e-5 * (1.0 + mean), "{mean} vs {}", r.stats.recon_mse);
    // Decoding the encoded maps again gives the same images.
    let again = opened.decode(&b, &r.tokens).unwrap().to_vec(&b).unwrap();
    assert_eq!(again, r.reconstructions);
}

#[test]
fn tokenizer_round_trip_errors_are_clear() {
    let b = R32::new();
    let dir = tempfile::tempdir().unwrap();
    let tok = Tokenizer::new(&b, tiny(), 8, 3).unwrap();
    // A checkpoint without tokenizer metadata.
    let plain = dir.path().join("plain.safetensors");
    crate::checkpoint::save(&plain, &tok.store, &b, "", &Default::default()).unwrap();
    let e = Tokenizer::<R32>::open(&b, &plain).err().unwrap().to_string();
    assert!(e.contains("not a tokenizer file"), "{e}");
    assert!(Tokenizer::<R32>::open(&b, dir.path().join("missing.safetensors")).is_err());
    // Wrong image size, out-of-vocabulary and partial token maps.
    let e = tok.encode(&b, &Tensor::zeros(&b, &[1, 3, 16, 16]).unwrap()).err().unwrap().to_string();
    assert!(e.contains("[1, 3, 16, 16]"), "{e}");
    assert!(tok.decode(&b, &[16; 16]).err().unwrap().to_string().contains("outside the vocabulary"));
    assert!(tok.decode(&b, &[0; 15]).err().unwrap().to_string().contains("whole"));
}
