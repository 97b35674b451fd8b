//! Trainer tests on the reference backend with a tiny configuration: 16-px enhancer
//! view, patch 4, width 16, a random-weight 16-code dVAE on an 8-px tokenizer view,
//! synthetic images.

use super::*;
use crate::data::ArraySource;
use crate::reference::Reference;
use crate::rng::Stream;

type R = Reference<f32>;

fn tiny_cfg(dir: &Path) -> PretrainConfig {
    PretrainConfig {
        preset: "test".into(),
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
        batch: 4,
        steps: 6,
        warmup_steps: 2,
        lr: 2e-3,
        min_lr: 1e-4,
        checkpoint_every: 3,
        log_every: 1,
        tokenizer: dir.join("tokenizer.safetensors"),
        workers: 1,
        ..presets::tiny_respix()
    }
}

/// 64 grey 16×16 images: smooth blobs and stripes, so there is structure to learn.
fn source() -> Arc<dyn Source> {
    let mut s = Stream::new(7);
    let mut px = Vec::new();
    for _ in 0..64 {
        let (cx, cy, f) = (s.next_f32() * 16.0, s.next_f32() * 16.0, 0.2 + s.next_f32());
        for y in 0..16 {
            for x in 0..16 {
                let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
                let v = 0.5 + 0.5 * (d * f).cos();
                px.push((v * 255.0) as u8);
            }
        }
    }
    Arc::new(ArraySource::new("synthetic", 16, 16, 1, false, px, None).unwrap())
}

/// A random-weight tokenizer for `cfg`, saved where the configuration expects it.
fn write_tokenizer(b: &R, cfg: &PretrainConfig) {
    let (_, _, tok) = CimModel::build(cfg.cim().unwrap(), b, 99).unwrap();
    checkpoint::save(&cfg.tokenizer, &tok, b, "", &Default::default()).unwrap();
}

fn run(b: &R, cfg: &PretrainConfig, dir: &Path, resume: bool) -> Result<TrainSummary> {
    pretrain(b, cfg, source(), &RunDir::new(dir), &TrainOptions { resume, stop: None }, &mut |_| {})
}

fn lines(dir: &Path) -> Vec<MetricsRecord> {
    RunDir::new(dir).read_metrics().unwrap().iter().map(|r| r.deterministic_part()).collect()
}

#[test]
fn train_resume_is_exact() {
    let b = R::new();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_cfg(tmp.path());
    write_tokenizer(&b, &cfg);
    let straight = tmp.path().join("straight");
    let s = run(&b, &cfg, &straight, false).unwrap();
    assert_eq!(s.steps, 6);
    let a = lines(&straight);
    assert_eq!(a.len(), 6);

    // 3 steps of the same 6-step run (stopped by the flag after step 3), then resumed.
    let split2 = tmp.path().join("split2");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let opts = TrainOptions { resume: false, stop: Some(stop) };
    let mut on = |e: &Event| {
        if let Event::Step { step: 3, .. } = e {
            flag.store(true, Ordering::Relaxed);
        }
    };
    let half = pretrain(&b, &cfg, source(), &RunDir::new(&split2), &opts, &mut on).unwrap();
    assert!(half.interrupted);
    assert_eq!(half.steps, 3);
    assert!(RunDir::new(&split2).checkpoint_path(3).is_file());
    let resumed = run(&b, &cfg, &split2, true).unwrap();
    assert_eq!((resumed.start_step, resumed.steps), (3, 6));
    let c = lines(&split2);
    assert_eq!(c.len(), 6);
    assert_eq!(a, c, "resumed metrics differ from the uninterrupted run");
    assert!(RunDir::new(&split2).enhancer_path().is_file());
    assert!(RunDir::new(&split2).config_path().is_file());
}

#[test]
fn train_losses_fall() {
    let b = R::new();
    let tmp = tempfile::tempdir().unwrap();
    // The unnormalized RESPIX target: an 8-px window of a 16-px synthetic image is often
    // nearly flat, which makes the windowed target noisy over so few steps.
    let cfg = PretrainConfig {
        steps: 30,
        batch: 8,
        warmup_steps: 3,
        checkpoint_every: 100,
        respix_norm: "none".into(),
        lr: 5e-3,
        ..tiny_cfg(tmp.path())
    };
    write_tokenizer(&b, &cfg);
    let dir = tmp.path().join("run");
    run(&b, &cfg, &dir, false).unwrap();
    let m = lines(&dir);
    assert_eq!(m.len(), 30);
    let mean = |r: &[MetricsRecord], f: fn(&MetricsRecord) -> f64| r.iter().map(f).sum::<f64>() / r.len() as f64;
    let (head, tail) = (&m[..5], &m[25..]);
    let (g0, g1) = (mean(head, |r| r.mim_loss), mean(tail, |r| r.mim_loss));
    let (a0, a1) = (mean(head, |r| r.mim_acc), mean(tail, |r| r.mim_acc));
    let (e0, e1) = (mean(head, |r| r.enh_loss), mean(tail, |r| r.enh_loss));
    // The generator learns the random tokenizer's codes quickly. The enhancer sees the
    // random decoder's scrambled image, from which little can be learnt in 30 steps:
    // its loss must only stay bounded.
    assert!(g1 < 0.9 * g0, "MIM loss {g0} -> {g1}");
    assert!(a1 > a0, "MIM accuracy {a0} -> {a1}");
    assert!(e1.is_finite() && e1 < 1.1 * e0, "enhancer loss {e0} -> {e1}");
}

#[test]
fn train_failed_checkpoint_keeps_previous() {
    let b = R::new();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = PretrainConfig { steps: 4, checkpoint_every: 2, ..tiny_cfg(tmp.path()) };
    write_tokenizer(&b, &cfg);
    let dir = tmp.path().join("run");
    let rd = RunDir::new(&dir);
    rd.create().unwrap();
    // The save of step 4 fails: its target is a directory.
    std::fs::create_dir_all(rd.checkpoint_path(4)).unwrap();
    let err = run(&b, &cfg, &dir, false).unwrap_err().to_string();
    assert!(err.contains("step-4"), "{err}");
    let latest = rd.latest().expect("a latest checkpoint");
    assert_eq!(latest, rd.checkpoint_path(2));
    // It loads, and a resume continues from step 2.
    let cim = cfg.cim().unwrap();
    let (_, mut store, _) = CimModel::build(cim, &b, 1).unwrap();
    let mut opt = OptState::new(&b, &store.table, &cfg.adamw()).unwrap();
    let r = RunDir::load_state(&latest, &b, &mut store, &mut opt).unwrap();
    assert_eq!((r.step, opt.step), (2, 2));
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(rd.checkpoints())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn train_nan_stops_naming_the_step() {
    let b = R::new();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = PretrainConfig {
        steps: 20,
        warmup_steps: 0,
        lr: 1e30,
        min_lr: 1e30,
        clip: 0.0,
        weight_decay: 0.0,
        checkpoint_every: 1,
        ..tiny_cfg(tmp.path())
    };
    write_tokenizer(&b, &cfg);
    let dir = tmp.path().join("run");
    let err = run(&b, &cfg, &dir, false).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::NonFinite { .. }), "{text}");
    assert!(text.contains("at step "), "{text}");
    let step: u64 = text.split("at step ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(step >= 2, "{text}");
    let good = RunDir::new(&dir).checkpoint_path(step - 1);
    assert!(text.contains(&good.display().to_string()), "{text}");
}

#[test]
fn train_config_toml_round_trip_and_overlay() {
    for name in PRESETS {
        let p = preset(name).unwrap();
        assert_eq!(&PretrainConfig::from_toml(&p.to_toml()).unwrap(), &p, "{name}");
        p.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let base = preset("tiny-respix").unwrap();
    let over = base.overlay_toml("batch = 8\n[enhancer]\ndepth = 2\n").unwrap();
    assert_eq!((over.batch, over.enhancer.depth, over.enhancer.width), (8, 2, base.enhancer.width));
    let err = base.overlay_toml("bogus = 1\n").unwrap_err().to_string();
    assert!(err.contains("bogus"), "{err}");
}

#[test]
fn bench_times_only_the_steps_after_warm_up() {
    let b = R::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_cfg(dir.path());
    let mut seen = Vec::new();
    let r = bench::bench_pretrain(&b, &cfg, 2, 3, &mut |i, ms| seen.push((i, ms.is_some()))).unwrap();
    assert_eq!(seen, vec![(0, false), (1, false), (2, true), (3, true), (4, true)]);
    assert_eq!((r.batch, r.steps), (4, 3));
    assert!(r.median_ms > 0.0 && r.mean_ms > 0.0 && r.last_loss.is_finite(), "{r:?}");
    assert!((r.images_per_s - 4e3 / r.median_ms).abs() < 1e-9);
    assert!(bench::bench_pretrain(&b, &cfg, 1, 0, &mut |_, _| {}).is_err());
}

#[test]
fn train_sample_pictures_do_not_change_training() {
    let b = R::new();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = PretrainConfig { steps: 4, checkpoint_every: 100, ..tiny_cfg(tmp.path()) };
    write_tokenizer(&b, &cfg);
    let off = tmp.path().join("off");
    let s = run(&b, &PretrainConfig { sample_every: 0, ..cfg.clone() }, &off, false).unwrap();
    assert!(s.warnings.is_empty() && !RunDir::new(&off).samples().exists());
    let on = tmp.path().join("on");
    let s = run(&b, &PretrainConfig { sample_every: 2, ..cfg.clone() }, &on, false).unwrap();
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    assert_eq!(lines(&off), lines(&on), "sample pictures changed the training metrics");
    let rd = RunDir::new(&on);
    for step in [2, 4] {
        let img = image::open(rd.sample_path(step)).unwrap();
        // 4 images of 16 px at 8× under a title: original, masked, dVAE recon, 3 samples.
        let cols = 3 + SAMPLE_DRAWS as u32;
        let want = crate::visual::grid::grid_size(cols, SAMPLE_IMAGES as u32, 128, 128, true);
        assert_eq!((img.width(), img.height()), want);
    }
    assert!(!rd.sample_path(1).exists() && !rd.sample_path(3).exists());
}

#[test]
fn train_sample_failure_is_a_warning() {
    let b = R::new();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = PretrainConfig { steps: 2, checkpoint_every: 100, sample_every: 1, ..tiny_cfg(tmp.path()) };
    write_tokenizer(&b, &cfg);
    let dir = tmp.path().join("run");
    let rd = RunDir::new(&dir);
    rd.create().unwrap();
    // RUN/samples is a file: no picture can be written there.
    std::fs::write(rd.samples(), b"in the way").unwrap();
    let s = run(&b, &cfg, &dir, false).unwrap();
    assert_eq!(s.steps, 2);
    assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
    assert!(s.warnings[0].starts_with("step 1: no sample picture"), "{:?}", s.warnings);
    assert!(rd.enhancer_path().is_file(), "the run finished");
}

#[test]
fn train_keeps_the_newest_checkpoints() {
    let b = R::new();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = PretrainConfig { steps: 6, checkpoint_every: 1, keep_checkpoints: 2, ..tiny_cfg(tmp.path()) };
    write_tokenizer(&b, &cfg);
    let dir = tmp.path().join("run");
    let s = run(&b, &cfg, &dir, false).unwrap();
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    let rd = RunDir::new(&dir);
    let steps: Vec<u64> = rd.step_checkpoints().into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, vec![5, 6]);
    assert_eq!(rd.latest(), Some(rd.checkpoint_path(6)));
    // 0 keeps all; the checkpoint `latest` names survives even when it is not the newest.
    let all = tmp.path().join("all");
    run(&b, &PretrainConfig { keep_checkpoints: 0, ..cfg.clone() }, &all, false).unwrap();
    assert_eq!(RunDir::new(&all).step_checkpoints().len(), 6);
    let rd = RunDir::new(&all);
    std::fs::write(rd.latest_path(), "step-1.safetensors").unwrap();
    let gone = rd.prune_checkpoints(1).unwrap();
    assert_eq!(gone.len(), 4);
    let left: Vec<u64> = rd.step_checkpoints().into_iter().map(|(s, _)| s).collect();
    assert_eq!(left, vec![1, 6]);
}
