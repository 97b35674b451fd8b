//! `cim pretrain` end to end: the built binary with a tiny configuration and a tiny
//! random-weight tokenizer written here.

use cim_core::checkpoint;
use cim_core::cim::CimModel;
use cim_core::train::{PretrainConfig, RunDir};
use cim_core::Reference;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

type R = Reference<f32>;

const FASHION: &str = "/usr/share/datasets/fashion-mnist";

/// Tiny sizes: 16-px views, patch 4, width 16, 2 blocks, a 16-code dVAE on 8 px.
const TINY: &str = r#"
image_size = 16
tokenizer_image_size = 8
generator_depth = 2
batch = 4
steps = 4
warmup_steps = 1
log_every = 1
checkpoint_every = 2
workers = 1

[enhancer]
width = 16
depth = 2
heads = 2
mlp_ratio = 2.0

[tokenizer_model]
group_count = 2
n_hid = 8
n_blk_per_group = 1
vocab_size = 16
n_init = 8
"#;

/// The config file and a matching random tokenizer in `dir`.
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let cfg_path = dir.join("tiny.toml");
    std::fs::write(&cfg_path, TINY).unwrap();
    let cfg = PretrainConfig::default().overlay_toml(TINY).unwrap();
    let b = R::new();
    let (_, _, tok) = CimModel::build(cfg.cim().unwrap(), &b, 5).unwrap();
    let tok_path = dir.join("tok.safetensors");
    checkpoint::save(&tok_path, &tok, &b, "", &Default::default()).unwrap();
    (cfg_path, tok_path)
}

fn cim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cim")).arg("pretrain").args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn pretrain_tiny_on_fashion_mnist() {
    if !Path::new(FASHION).is_dir() {
        let msg = format!("{FASHION} is not installed (apt-get install dataset-fashion-mnist)");
        assert!(std::env::var_os("CIM_REQUIRE_DATA").is_none(), "{msg}");
        eprintln!("skipped: {msg}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, tok) = setup(tmp.path());
    let run = tmp.path().join("run");
    let o = cim(&[
        "--config",
        cfg.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--run",
        run.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let rd = RunDir::new(&run);
    let resolved = PretrainConfig::from_toml(&std::fs::read_to_string(rd.config_path()).unwrap()).unwrap();
    assert_eq!((resolved.steps, resolved.image_size, resolved.enhancer.width), (4, 16, 16));
    let m = rd.read_metrics().unwrap();
    assert_eq!(m.len(), 4, "{}", text(&o));
    assert_eq!(m.iter().map(|r| r.step).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    assert!(m.iter().all(|r| r.loss.is_finite()));
    assert!(rd.checkpoint_path(2).is_file() && rd.checkpoint_path(4).is_file());
    assert_eq!(rd.latest(), Some(rd.checkpoint_path(4)));
    assert!(rd.enhancer_path().is_file());
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("image_size = 16"), "the resolved config is printed: {stdout}");
}

#[test]
fn pretrain_missing_dataset_is_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, tok) = setup(tmp.path());
    let missing = tmp.path().join("no-such-data");
    let o = cim(&[
        "--config",
        cfg.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--data",
        missing.to_str().unwrap(),
        "--run",
        tmp.path().join("run").to_str().unwrap(),
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{}", text(&o));
    assert!(lines[0].starts_with("error: ") && lines[0].contains("does not exist"), "{}", text(&o));
    assert!(lines[0].contains("--data"), "{}", text(&o));
    assert!(!err.contains("panicked"), "{}", text(&o));
}

#[test]
fn pretrain_unknown_preset_and_bad_config_are_errors() {
    let o = cim(&["--preset", "nope"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("error: unknown preset") && err.contains("tiny-respix"), "{}", text(&o));
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "bogus_key = 3\n").unwrap();
    let o = cim(&["--config", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("error: ") && err.contains("bogus_key") && !err.contains("panicked"), "{}", text(&o));
}

/// On the CPU backend, 3 steps + resume 3 give the same metrics as 6 straight, bit for
/// bit (synthetic data: no data set needed).
#[test]
fn pretrain_resume_is_exact_on_cpu() {
    use cim_core::data::{ArraySource, Source};
    use cim_core::train::{pretrain, Event, TrainOptions};
    use cim_cpu::Cpu;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let tmp = tempfile::tempdir().unwrap();
    let (_, tok) = setup(tmp.path());
    let cfg = PretrainConfig {
        steps: 6,
        checkpoint_every: 100,
        tokenizer: tok,
        ..PretrainConfig::default().overlay_toml(TINY).unwrap()
    };
    let px: Vec<u8> = (0..64 * 20 * 20).map(|i| ((i * 37 + i / 400 * 11) % 251) as u8).collect();
    let source =
        || -> Arc<dyn Source> { Arc::new(ArraySource::new("synthetic", 20, 20, 1, false, px.clone(), None).unwrap()) };
    let b = Cpu::new();
    let metrics = |dir: &Path| -> Vec<_> {
        RunDir::new(dir).read_metrics().unwrap().iter().map(|r| r.deterministic_part()).collect()
    };

    let straight = tmp.path().join("straight");
    pretrain(&b, &cfg, source(), &RunDir::new(&straight), &TrainOptions::default(), &mut |_| {}).unwrap();

    let split = tmp.path().join("split");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let opts = TrainOptions { resume: false, stop: Some(stop) };
    let mut on = |e: &Event| {
        if let Event::Step { step: 3, .. } = e {
            flag.store(true, Ordering::Relaxed);
        }
    };
    let half = pretrain(&b, &cfg, source(), &RunDir::new(&split), &opts, &mut on).unwrap();
    assert!(half.interrupted && half.steps == 3);
    let opts = TrainOptions { resume: true, stop: None };
    let rest = pretrain(&b, &cfg, source(), &RunDir::new(&split), &opts, &mut |_| {}).unwrap();
    assert_eq!((rest.start_step, rest.steps), (3, 6));
    let (a, c) = (metrics(&straight), metrics(&split));
    assert_eq!(a.len(), 6);
    assert_eq!(a, c, "resumed metrics differ from the uninterrupted run");
}

#[test]
fn bench_pretrain_prints_images_per_second() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, _) = setup(tmp.path());
    let bench = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cim"))
            .args(["bench", "pretrain", "--config", cfg.to_str().unwrap(), "--warmup", "1"])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = bench(&["--steps", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("batch 4") && out.contains("images/s"), "{out}");
    let o = bench(&["--steps", "0"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("at least one timed step"), "{}", text(&o));
}
