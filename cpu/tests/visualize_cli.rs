//! `cim visualize` and `cim plot` end to end: the built binary on a tiny run trained
//! here (2 steps, 16-px views, a random 16-code tokenizer) over a small image folder.

use cim_core::data::{Dataset, Source, Split};
use cim_core::tokenizer::{save_tokenizer, Tokenizer};
use cim_core::train::{pretrain, PretrainConfig, RunDir, TrainOptions};
use cim_core::visual::grid::grid_size;
use cim_cpu::commands::visualize::expected_size;
use cim_cpu::Cpu;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

const FASHION: &str = "/usr/share/datasets/fashion-mnist";

const TINY: &str = r#"
image_size = 16
tokenizer_image_size = 8
generator_depth = 2
batch = 4
steps = 2
warmup_steps = 1
log_every = 1
checkpoint_every = 1
sample_every = 0
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

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    data: PathBuf,
    run: PathBuf,
    tokenizer: PathBuf,
}

/// A folder of 12 PNG images, a random tokenizer beside the run directory (where
/// `cim pretrain` looks for it) and a 2-step run of `objective`.
fn setup(objective: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let data = dir.join("images");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..12u32 {
        let img = image::RgbImage::from_fn(20, 20, |x, y| {
            let on = (x as i32 - 10).abs() + (y as i32 - 10).abs() < 4 + (i % 5) as i32;
            image::Rgb(if on { [230, 200, 180] } else { [20, 20, 30] })
        });
        img.save(data.join(format!("{i:02}.png"))).unwrap();
    }
    let cfg = PretrainConfig {
        data: data.clone(),
        objective: objective.into(),
        ..PretrainConfig::default().overlay_toml(TINY).unwrap()
    };
    let b = Cpu::new();
    let tok = Tokenizer::new(&b, cfg.tokenizer_model.dvae(), cfg.tokenizer_image_size, 3).unwrap();
    let tokenizer = dir.join("tokenizer.safetensors");
    save_tokenizer(&tokenizer, &tok, &b, &Default::default()).unwrap();
    let run = dir.join("run");
    let source: Arc<dyn Source> = Arc::new(Dataset::open(&data, Split::Train).unwrap());
    pretrain(&b, &cfg, source, &RunDir::new(&run), &TrainOptions::default(), &mut |_| {}).unwrap();
    Setup { _tmp: tmp, dir, data, run, tokenizer }
}

fn cim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cim")).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The command succeeded and wrote a PNG of `size`.
fn png_of(o: &Output, out: &Path, size: (u32, u32)) {
    assert!(o.status.success(), "{}", text(o));
    let img = image::open(out).unwrap_or_else(|e| panic!("{}: {e}\n{}", out.display(), text(o)));
    assert_eq!((img.width(), img.height()), size, "{}", text(o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.starts_with("wrote ") && stdout.lines().count() == 1, "{}", text(o));
}

/// The command failed with one line `error: ...` containing `needle`.
fn one_error(o: &Output, needle: &str) {
    assert!(!o.status.success(), "{}", text(o));
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{}", text(o));
    assert!(lines[0].starts_with("error: ") && lines[0].contains(needle), "wanted {needle:?}: {}", text(o));
    assert!(!err.contains("panicked"), "{}", text(o));
}

#[test]
fn visualize_corrupt_from_a_run_directory_and_a_checkpoint_file() {
    let t = setup("respix");
    let out = t.dir.join("corrupt.png");
    let args = ["--data", s(&t.data), "--n", "3", "--samples", "2", "--out", s(&out)];
    let o = cim(&[&["visualize", "corrupt", "--checkpoint", s(&t.run)][..], &args].concat());
    // original, masked, dVAE recon and 2 samples; 3 rows of 16 px at 8×.
    png_of(&o, &out, expected_size(5, 3, 16));
    assert!(String::from_utf8_lossy(&o.stdout).contains("step 2"), "{}", text(&o));
    let ckpt = RunDir::new(&t.run).checkpoint_path(1);
    let o = cim(&[&["visualize", "corrupt", "--checkpoint", s(&ckpt)][..], &args].concat());
    png_of(&o, &out, expected_size(5, 3, 16));
    assert!(String::from_utf8_lossy(&o.stdout).contains("step 1"), "{}", text(&o));
}

#[test]
fn visualize_enhance_for_respix_and_revdet() {
    for (objective, cols) in [("respix", 6), ("revdet", 5)] {
        let t = setup(objective);
        let out = t.dir.join("enhance.png");
        let o = cim(&[
            "visualize",
            "enhance",
            "--checkpoint",
            s(&t.run),
            "--data",
            s(&t.data),
            "--n",
            "2",
            "--out",
            s(&out),
        ]);
        png_of(&o, &out, expected_size(cols, 2, 16));
        let word = if objective == "respix" { "RESPIX loss" } else { "REVDET accuracy" };
        assert!(String::from_utf8_lossy(&o.stdout).contains(word), "{}", text(&o));
    }
}

#[test]
fn visualize_templates_on_an_image_folder_and_fashion_mnist() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..3u8 {
        image::RgbImage::from_fn(24, 24, |x, y| image::Rgb([(x * 10) as u8, (y * 10) as u8, i * 80]))
            .save(data.join(format!("{i}.png")))
            .unwrap();
    }
    let out = tmp.path().join("t.png");
    let o = cim(&["visualize", "templates", "--data", s(&data), "--n", "5", "--out", s(&out)]);
    // Only 3 images exist: 3 rows.
    png_of(&o, &out, expected_size(3, 3, 32));
    let o = cim(&["visualize", "templates", "--data", s(&data), "--patch", "5", "--out", s(&out)]);
    one_error(&o, "does not divide");
    if Path::new(FASHION).is_dir() {
        let o = cim(&["visualize", "templates", "--n", "2", "--image-size", "16", "--out", s(&out)]);
        png_of(&o, &out, expected_size(3, 2, 16));
    } else {
        eprintln!("Fashion-MNIST part skipped: {FASHION} is not installed");
    }
}

#[test]
fn visualize_tokenizer_from_a_file_and_from_a_run() {
    let t = setup("respix");
    let out = t.dir.join("tok.png");
    let common = ["--data", s(&t.data), "--n", "3", "--pairs", "2", "--usage-images", "10", "--out", s(&out)];
    // 3 images, 2 pairs per row: 2 rows of 4 columns at 8×, over the 300-px histogram.
    let (gw, gh) = grid_size(4, 2, 128, 128, true);
    let size = (gw.max(480), gh + 4 + 300);
    let o = cim(&[&["visualize", "tokenizer", "--tokenizer", s(&t.tokenizer)][..], &common].concat());
    png_of(&o, &out, size);
    assert!(String::from_utf8_lossy(&o.stdout).contains("codes used"), "{}", text(&o));
    let o = cim(&[&["visualize", "tokenizer", "--checkpoint", s(&t.run)][..], &common].concat());
    png_of(&o, &out, size);
    let o = cim(&["visualize", "tokenizer", "--out", s(&out)]);
    one_error(&o, "--tokenizer FILE or --checkpoint RUN");
}

#[test]
fn plot_overlays_runs() {
    let (a, c) = (setup("respix"), setup("revdet"));
    let out = a.dir.join("curves.png");
    let o = cim(&["plot", s(&a.run), s(&c.run), "--out", s(&out), "--width", "900", "--height", "500"]);
    png_of(&o, &out, (900, 500));
    let o = cim(&["plot", s(&a.run), "--out", s(&out)]);
    png_of(&o, &out, (1200, 700));
    let o = cim(&["plot", s(&a.data), "--out", s(&out)]);
    one_error(&o, "no metrics.jsonl");
    let o = cim(&["plot", s(&a.run), "--out", s(&a.dir.join("curves.jpg"))]);
    one_error(&o, ".png");
}

#[test]
fn visualize_bad_arguments_are_one_clear_error() {
    let t = setup("respix");
    let out = t.dir.join("x.png");
    let corrupt = |run: &Path, extra: &[&str]| {
        cim(&[&["visualize", "corrupt", "--checkpoint", s(run), "--data", s(&t.data), "--out", s(&out)][..], extra]
            .concat())
    };
    // A run directory without checkpoints.
    let empty = t.dir.join("empty-run");
    let rd = RunDir::new(&empty);
    rd.create().unwrap();
    rd.write_config(&PretrainConfig::default().overlay_toml(TINY).unwrap()).unwrap();
    one_error(&corrupt(&empty, &[]), "has no checkpoints");
    // No such run.
    one_error(&corrupt(&t.dir.join("nope"), &[]), "does not exist");
    // A tokenizer that does not fit the model (32 codes, the run has 16).
    let cfg = PretrainConfig::default().overlay_toml(TINY).unwrap();
    let mut other = cfg.tokenizer_model.dvae();
    other.vocab_size = 32;
    let b = Cpu::new();
    let bad = t.dir.join("other-tokenizer.safetensors");
    save_tokenizer(&bad, &Tokenizer::new(&b, other, 8, 0).unwrap(), &b, &Default::default()).unwrap();
    let o = corrupt(&t.run, &["--tokenizer", s(&bad)]);
    one_error(&o, "does not fit the run's model");
    assert!(o.stderr.len() < 800, "the list of tensors is cut short: {}", text(&o));
    // The enhancer file is not a training checkpoint.
    one_error(&corrupt(&RunDir::new(&t.run).enhancer_path(), &[]), "not a cim pre-training checkpoint");
    // Images past the end, a zero count, a non-PNG output.
    one_error(&corrupt(&t.run, &["--start", "99"]), "out of range");
    one_error(&corrupt(&t.run, &["--samples", "0"]), "--samples");
    let o = cim(&["visualize", "enhance", "--checkpoint", s(&t.run), "--out", s(&t.dir.join("x.txt"))]);
    one_error(&o, ".png");
    // A tokenizer file that does not fit its named dVAE.
    let o = cim(&["visualize", "tokenizer", "--tokenizer", s(&t.tokenizer), "--arch", "dvae_small", "--out", s(&out)]);
    one_error(&o, "does not fit");
    // Data that does not exist.
    let missing = t.dir.join("no-data");
    let o = cim(&["visualize", "corrupt", "--checkpoint", s(&t.run), "--data", s(&missing), "--out", s(&out)]);
    one_error(&o, "does not exist");
}
