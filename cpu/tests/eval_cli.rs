//! `cim eval linear-probe` and `cim eval finetune` end to end: the built binary on tiny
//! generated data in the three formats (an IDX pair, a CIFAR-10 binary, an image folder
//! with class sub-folders), its one-line errors, and one real Fashion-MNIST run.
//!
//! The Fashion-MNIST test needs `/usr/share/datasets/fashion-mnist`
//! (`apt-get install dataset-fashion-mnist`); without it the test says so and passes
//! only when `CIM_REQUIRE_DATA` is unset (`.ci/run` sets it).

use cim_core::checkpoint;
use cim_core::eval::{FinetuneResult, ProbeReport};
use cim_core::rng::Stream;
use image::{Rgb, RgbImage};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FASHION: &str = "/usr/share/datasets/fashion-mnist";
/// A ViT small enough for a test: 8 px, patch 4, width 8, one block.
const TINY_VIT: &str = "vit(img=8,patch=4,dim=8,depth=1,heads=2,mlp_ratio=2)";
const TINY_RESNET: &str = "resnet(block=basic,layers=1-1-1-1,width=2,stem=small,img=8)";

fn cim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cim")).arg("eval").args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The class of image `i` of `n` (three classes, all present).
fn class(i: usize, n: usize) -> usize {
    (i * 7 + n) % 3
}

/// An `s`×`s` image of class `k`: a bright band over the rows `k·s/3 ..` over noise.
fn pixel(rng: &mut Stream, k: usize, y: usize, s: usize) -> u8 {
    if y * 3 / s == k {
        200 + (rng.next_u32() % 55) as u8
    } else {
        (rng.next_u32() % 90) as u8
    }
}

fn idx(magic: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, magic];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

/// train / t10k IDX files of 8×8 grey images.
fn write_idx(dir: &Path, n_train: usize, n_test: usize) {
    let mut rng = Stream::new(1);
    for (prefix, n) in [("train", n_train), ("t10k", n_test)] {
        let mut px = Vec::new();
        let labels: Vec<u8> = (0..n).map(|i| class(i, n) as u8).collect();
        for &k in &labels {
            for y in 0..8 {
                for _ in 0..8 {
                    px.push(pixel(&mut rng, k as usize, y, 8));
                }
            }
        }
        fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), idx(3, &[n as u32, 8, 8], &px)).unwrap();
        fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), idx(1, &[n as u32], &labels)).unwrap();
    }
}

/// CIFAR-10 batches of 32×32 colour images (the band in the red channel).
fn write_cifar(dir: &Path, n_train: usize, n_test: usize) {
    let mut rng = Stream::new(2);
    for (name, n) in [("data_batch_1.bin", n_train), ("test_batch.bin", n_test)] {
        let mut bytes = Vec::new();
        for i in 0..n {
            let k = class(i, n);
            bytes.push(k as u8);
            for c in 0..3 {
                for y in 0..32 {
                    for _ in 0..32 {
                        bytes.push(if c == 0 { pixel(&mut rng, k, y, 32) } else { (rng.next_u32() % 60) as u8 });
                    }
                }
            }
        }
        fs::write(dir.join(name), bytes).unwrap();
    }
}

/// train/ and val/ folders with one sub-folder of 10×10 PNGs per class.
fn write_folder(dir: &Path, n_train: usize, n_test: usize) {
    let mut rng = Stream::new(3);
    for (split, n) in [("train", n_train), ("val", n_test)] {
        for i in 0..n {
            let k = class(i, n);
            let img = RgbImage::from_fn(10, 10, |_, y| {
                let v = pixel(&mut rng, k, y as usize, 10);
                Rgb([v, v / 2, 255 - v])
            });
            let p = dir.join(format!("{split}/class-{k}/{i}.png"));
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            img.save(&p).unwrap();
        }
    }
}

fn probe(data: &Path, extra: &[&str], json: &Path) -> ProbeReport {
    let mut args = vec!["linear-probe", "--data", data.to_str().unwrap(), "--quiet"];
    for (flag, default) in [("--epochs", "8"), ("--workers", "1")] {
        if !extra.contains(&flag) {
            args.extend_from_slice(&[flag, default]);
        }
    }
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--json", json.to_str().unwrap()]);
    let o = cim(&args);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.lines().last().unwrap().starts_with("linear probe: top-1 "), "{}", text(&o));
    ProbeReport::from_json(&fs::read_to_string(json).unwrap()).unwrap()
}

fn finetune(data: &Path, extra: &[&str], run: &Path) -> FinetuneResult {
    let mut args = vec!["finetune", "--data", data.to_str().unwrap(), "--run", run.to_str().unwrap()];
    for (flag, default) in [("--steps", "4"), ("--batch", "6"), ("--log-every", "2"), ("--workers", "1")] {
        if !extra.contains(&flag) {
            args.extend_from_slice(&[flag, default]);
        }
    }
    args.push("--quiet");
    args.extend_from_slice(extra);
    let o = cim(&args);
    assert!(o.status.success(), "{}", text(&o));
    let last = String::from_utf8_lossy(&o.stdout).lines().last().unwrap().to_string();
    assert!(last.starts_with("fine-tuning: top-1 "), "{}", text(&o));
    for f in ["config.toml", "metrics.jsonl", "model.safetensors", "checkpoints/latest"] {
        assert!(run.join(f).is_file(), "{f} missing: {}", text(&o));
    }
    FinetuneResult::from_json(&fs::read_to_string(run.join("result.json")).unwrap()).unwrap()
}

#[test]
fn both_commands_on_the_three_formats() {
    let tmp = tempfile::tempdir().unwrap();
    type Writer = fn(&Path, usize, usize);
    let formats: [(&str, Writer); 3] = [("idx", write_idx), ("cifar", write_cifar), ("folder", write_folder)];
    for (name, write) in formats {
        let data = tmp.path().join(name);
        fs::create_dir_all(&data).unwrap();
        write(&data, 30, 12);
        let ctx = |what: &str| format!("{name}: {what}");
        // Random-init ViT and ResNet features, and raw pixels.
        let r = probe(&data, &["--arch", TINY_VIT], &tmp.path().join(format!("{name}-vit.json")));
        // CIFAR-10 has ten classes whatever labels the files use.
        let classes = if name == "cifar" { 10 } else { 3 };
        let got = (r.result.train_len, r.result.test_len, r.result.classes, r.result.dim);
        assert_eq!(got, (30, 12, classes, 8), "{}", ctx("vit"));
        assert_eq!(r.result.grid.len(), 8);
        assert_eq!(r.pool, "mean");
        let r = probe(&data, &["--arch", TINY_RESNET, "--lr", "0.1", "--wd", "0"], &tmp.path().join("r.json"));
        assert_eq!((r.result.dim, r.result.grid.len()), (16, 1), "{}", ctx("resnet"));
        let r = probe(&data, &["--pixels", "--image-size", "6"], &tmp.path().join("p.json"));
        let want_dim = if name == "idx" { 36 } else { 108 };
        assert_eq!(r.result.dim, want_dim, "{}", ctx("pixels"));
        // The bands are linearly separable: raw pixels find them.
        assert!(r.result.test_top1 > 0.8, "{}: {:?}", ctx("pixels"), r.result);
        // Fine-tuning from scratch, ViT and ResNet.
        let res = finetune(&data, &["--arch", TINY_VIT], &tmp.path().join(format!("{name}-ft")));
        assert_eq!((res.steps, res.test_len, res.train_len, res.classes), (4, 12, 30, classes), "{}", ctx("finetune"));
        assert!(res.from_scratch);
        let res = finetune(&data, &["--arch", TINY_RESNET, "--mixup", "0.8", "--cutmix", "1"], &tmp.path().join("ftr"));
        assert!(res.arch.starts_with("resnet(") && res.arch.contains("width=2"), "{}", ctx(&res.arch));
    }
}

#[test]
fn finetune_from_a_checkpoint_resumes_and_from_scratch() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    fs::create_dir_all(&data).unwrap();
    write_idx(&data, 24, 9);
    // A pre-trained file as cim writes one (with cim.arch), with a final norm.
    let b = cim_core::Reference::<f32>::new();
    let spec = cim_core::arch::by_name(TINY_VIT).unwrap();
    let mut t = cim_core::params::ParamTable::new();
    spec.build(&mut t, "").unwrap();
    let store = t.build(&b, 5).unwrap();
    let file = tmp.path().join("enc.safetensors");
    checkpoint::save(&file, &store, &b, "", &spec.metadata()).unwrap();
    let f = file.to_str().unwrap();
    let pre = finetune(&data, &["--checkpoint", f], &tmp.path().join("pre"));
    assert!(!pre.from_scratch && pre.init.contains("enc.safetensors"), "{pre:?}");
    let scratch = finetune(&data, &["--checkpoint", f, "--from-scratch"], &tmp.path().join("scratch"));
    assert!(scratch.from_scratch && scratch.init.contains("random init"));
    // The probe reads the same file.
    let r = probe(&data, &["--checkpoint", f, "--pool", "cls"], &tmp.path().join("c.json"));
    assert!(r.features.contains("enc.safetensors") && r.pool == "cls", "{r:?}");
    // --resume of a finished run only evaluates again: the same result.
    let run = tmp.path().join("pre");
    let o = cim(&[
        "finetune",
        "--data",
        data.to_str().unwrap(),
        "--run",
        run.to_str().unwrap(),
        "--checkpoint",
        f,
        "--steps",
        "4",
        "--batch",
        "6",
        "--log-every",
        "2",
        "--workers",
        "1",
        "--quiet",
        "--resume",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("resuming from"), "{}", text(&o));
    let again = FinetuneResult::from_json(&fs::read_to_string(run.join("result.json")).unwrap()).unwrap();
    assert_eq!(again.test_correct, pre.test_correct);
}

/// A failed command: a non-zero exit, one `error:` line naming `want`, no panic.
fn fails(args: &[&str], want: &str) {
    let o = cim(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{args:?} succeeded: {}", text(&o));
    assert!(err.contains(want), "{args:?}: {want:?} not in: {}", text(&o));
    assert!(!err.contains("panicked"), "{args:?}: {}", text(&o));
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: {}", text(&o));
    assert!(lines[0].starts_with("error: "), "{}", text(&o));
}

#[test]
fn errors_are_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |x: &Path| x.to_str().unwrap().to_string();
    let idx_dir = tmp.path().join("idx");
    fs::create_dir_all(&idx_dir).unwrap();
    write_idx(&idx_dir, 12, 6);
    let d = p(&idx_dir);
    fails(&["linear-probe", "--data", &d], "--checkpoint RUN_OR_FILE, --arch NAME");
    fails(&["linear-probe", "--data", &d, "--pixels", "--arch", TINY_VIT], "--pixels");
    fails(&["linear-probe", "--data", &d, "--arch", TINY_VIT, "--pool", "max"], "unknown pooling");
    fails(&["linear-probe", "--data", &d, "--arch", "vit_huge"], "unknown architecture");
    fails(&["linear-probe", "--data", &d, "--arch", "dvae_small_encoder"], "ViT or a ResNet");
    fails(&["linear-probe", "--data", &d, "--checkpoint", &p(&tmp.path().join("none"))], "does not exist");
    fails(&["linear-probe", "--data", &d, "--checkpoint", &p(tmp.path())], "not a run directory");
    fails(&["linear-probe", "--data", &p(&tmp.path().join("nodata")), "--pixels"], "does not exist");
    fails(&["linear-probe", "--data", &d, "--pixels", "--lr=-1"], "learning rates");
    fails(&["finetune", "--data", &d], "name the pre-trained weights");
    fails(&["finetune", "--data", &d, "--from-scratch"], "--from-scratch needs");
    fails(
        &["finetune", "--data", &d, "--arch", TINY_VIT, "--batch", "64", "--run", &p(&tmp.path().join("r"))],
        "fewer than one batch",
    );
    fails(
        &["finetune", "--data", &d, "--arch", TINY_VIT, "--layer-decay", "2", "--run", &p(&tmp.path().join("r"))],
        "layer_decay",
    );
    let bad_cfg = tmp.path().join("bad.toml");
    fs::write(&bad_cfg, "learning_rate = 3\n").unwrap();
    fails(&["finetune", "--config", &p(&bad_cfg), "--arch", TINY_VIT], "unknown field `learning_rate`");
    // A missing label file.
    fs::remove_file(idx_dir.join("t10k-labels-idx1-ubyte")).unwrap();
    fails(&["linear-probe", "--data", &d, "--pixels"], "no labels file for the Test split");
    // Splits with different classes.
    let folder = tmp.path().join("folder");
    write_folder(&folder, 9, 6);
    fs::rename(folder.join("val/class-2"), folder.join("val/class-9")).unwrap();
    fails(&["linear-probe", "--data", &p(&folder), "--pixels"], "different classes");
    fails(
        &["finetune", "--data", &p(&folder), "--arch", TINY_VIT, "--run", &p(&tmp.path().join("r"))],
        "different classes",
    );
}

fn fashion_present() -> bool {
    if Path::new(FASHION).is_dir() {
        return true;
    }
    let msg = format!("{FASHION} is not installed (apt-get install dataset-fashion-mnist)");
    assert!(std::env::var_os("CIM_REQUIRE_DATA").is_none(), "{msg}");
    eprintln!("skipped: {msg}");
    false
}

/// The linear probe on real Fashion-MNIST (seeded samples of 3000 training and 1000 test
/// images): raw pixels and the features of a randomly initialized tiny ViT both beat
/// chance (10%) by a wide margin; a short fine-tuning run learns.
#[test]
fn fashion_mnist_probe_and_finetune() {
    if !fashion_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = PathBuf::from(FASHION);
    let limits = ["--train-limit", "3000", "--test-limit", "1000", "--seed", "1", "--epochs", "100", "--workers", "0"];
    let pixels = probe(&data, &[&["--pixels"][..], &limits[..]].concat(), &tmp.path().join("px.json"));
    println!("raw pixels: {:.2}%", 100.0 * pixels.result.test_top1);
    assert!(pixels.result.test_top1 > 0.7, "{:?}", pixels.result);
    let vit = "vit(img=32,patch=4,dim=192,depth=4,heads=3)";
    let feats = probe(&data, &[&["--arch", vit][..], &limits[..]].concat(), &tmp.path().join("vit.json"));
    println!("random-init ViT features: {:.2}%", 100.0 * feats.result.test_top1);
    assert!(feats.result.test_top1 > 0.5, "{:?}", feats.result);
    let small = "vit(img=16,patch=4,dim=32,depth=2,heads=2)";
    let run = tmp.path().join("ft");
    let r = finetune(
        &data,
        &["--arch", small, "--steps", "400", "--batch", "32", "--test-limit", "1000", "--lr", "2e-3"],
        &run,
    );
    println!("fine-tuned small ViT: {:.2}%", 100.0 * r.test_top1);
    assert!(r.test_top1 > 0.4, "{r:?}");
}
