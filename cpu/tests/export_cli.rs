//! `cim export`, `cim infer --model` and `cim bench infer` end to end: the built binary on
//! weights files, training checkpoints and run directories written here.

use cim_core::arch::by_name;
use cim_core::checkpoint::{self, SaveOptions};
use cim_core::cim::{CimModel, OptState, ENHANCER};
use cim_core::train::{presets, EnhancerSpec, PretrainConfig, RunDir};
use cim_cpu::Cpu;
use cim_export::{Enhancer, HeadKind};
use ndarray::{ArrayD, IxDyn};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const VIT: &str = "vit(img=16,patch=4,dim=16,depth=2,heads=2,classes=3)";

fn cim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cim")).args(args).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn succeeds(o: &Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "exit {:?}\nstdout: {out}\nstderr: {}", o.status, String::from_utf8_lossy(&o.stderr));
    eprint!("{out}");
    out
}

/// Fails cleanly: non-zero exit, one `error:` line naming `want`, no panic.
fn fails_with(o: &Output, want: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    eprint!("{err}");
    assert!(!o.status.success(), "expected a failure; stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.starts_with("error: ") && err.trim_end().lines().count() == 1, "not one error line: {err}");
    for w in want {
        assert!(err.contains(w), "{w:?} not in: {err}");
    }
}

fn write_npy(path: &Path, shape: &[usize], data: Vec<f32>) {
    ndarray_npy::write_npy(path, &ArrayD::from_shape_vec(IxDyn(shape), data).unwrap()).unwrap();
}

fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let a: ArrayD<f32> = ndarray_npy::read_npy(path).unwrap();
    (a.shape().to_vec(), a.iter().copied().collect())
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn write_png(path: &Path, side: u32) {
    let img =
        image::RgbImage::from_fn(side, side, |i, j| image::Rgb([(i * 12) as u8, (j * 12) as u8, ((i + j) * 6) as u8]));
    img.save(path).unwrap();
}

/// A cim-written weights file of `VIT` (with its 3-class head), random weights.
fn weights(dir: &Path) -> PathBuf {
    let b = Cpu::new();
    let spec = by_name(VIT).unwrap();
    let (_, store) = Enhancer::random(&b, &spec, HeadKind::Classifier, None, 4).unwrap();
    let path = dir.join("vit.safetensors");
    checkpoint::save_model(&path, &spec, &store, &b, "", SaveOptions::default()).unwrap();
    path
}

#[test]
fn export_then_infer_matches_the_weights_path() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let w = weights(d);
    let m = d.join("m.onnx");
    let out = succeeds(&cim(&["export", "--checkpoint", s(&w), "--out", s(&m), "--check"]));
    assert!(out.contains("head none") && out.contains("max abs error") && out.contains("max rel error"), "{out}");
    assert!(out.contains("image [batch, 3, 16, 16] -> features [batch, 17, 16]"), "{out}");
    let out = succeeds(&cim(&[
        "export",
        "--checkpoint",
        s(&w),
        "--out",
        s(&d.join("c.onnx")),
        "--head",
        "classifier",
        "--half",
        "--check",
    ]));
    assert!(out.contains("logits [batch, 3]") && out.contains("f16 weights"), "{out}");

    // The same .npy through both paths (batch 3: the dynamic batch).
    let x = d.join("x.npy");
    let xs: Vec<f32> = (0..3 * 3 * 16 * 16).map(|i| ((i * 31 % 101) as f32 / 50.0) - 1.0).collect();
    write_npy(&x, &[3, 3, 16, 16], xs);
    let (y1, y2) = (d.join("y1.npy"), d.join("y2.npy"));
    succeeds(&cim(&["infer", "--model", s(&m), "--input", s(&x), "--out", s(&y1)]));
    succeeds(&cim(&["infer", "--weights", s(&w), "--input", s(&x), "--out", s(&y2)]));
    let ((s1, v1), (s2, v2)) = (read_npy(&y1), read_npy(&y2));
    assert_eq!((s1.as_slice(), s2.as_slice()), (&[3, 17, 16][..], &[3, 17, 16][..]));
    assert!(max_rel(&v1, &v2) < 1e-4);
    // An image: the same resize and normalization on both paths.
    let png = d.join("in.png");
    write_png(&png, 20);
    succeeds(&cim(&["infer", "--model", s(&m), "--input", s(&png), "--out", s(&y1)]));
    succeeds(&cim(&["infer", "--weights", s(&w), "--input", s(&png), "--out", s(&y2)]));
    let ((s1, v1), (_, v2)) = (read_npy(&y1), read_npy(&y2));
    assert_eq!(s1, [1, 17, 16]);
    assert!(max_rel(&v1, &v2) < 1e-4);
    // Only a RESPIX model writes an image.
    fails_with(&cim(&["infer", "--model", s(&m), "--input", s(&png), "--out", s(&d.join("r.png"))]), &["RESPIX"]);
}

/// A training checkpoint (step 1) and the trainer's enhancer file in `run`, as
/// `cim pretrain` leaves them, for a small configuration with `enhancer`.
fn training_run(run: &Path, enhancer: EnhancerSpec, objective: &str) -> PretrainConfig {
    let mut cfg = presets::tiny_respix();
    cfg.enhancer = enhancer;
    cfg.objective = objective.into();
    cfg.generator_depth = 2;
    let b = Cpu::new();
    let cim = cfg.cim().unwrap();
    let (_, store, _) = CimModel::build(cim, &b, 3).unwrap();
    let opt = OptState::new(&b, &store.table, &cfg.adamw()).unwrap();
    let rd = RunDir::new(run);
    rd.create().unwrap();
    rd.save_state(&b, 1, &store, &opt, &cfg).unwrap();
    checkpoint::save(rd.enhancer_path(), &store, &b, ENHANCER, &cim.enhancer_metadata()).unwrap();
    cfg
}

#[test]
fn training_checkpoints_export_with_their_head() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let run = d.join("run");
    let vit = EnhancerSpec { arch: "vit".into(), patch_size: 4, width: 16, depth: 2, heads: 2, ..Default::default() };
    training_run(&run, vit, "respix");
    let r = d.join("respix.onnx");
    let out = succeeds(&cim(&["export", "--checkpoint", s(&run), "--head", "respix", "--out", s(&r), "--check"]));
    assert!(out.contains("head respix") && out.contains("pixels [batch, 3, 32, 32]"), "{out}");
    let ckpt = RunDir::new(&run).checkpoint_path(1);
    fails_with(
        &cim(&["export", "--checkpoint", s(&ckpt), "--head", "revdet", "--out", s(&r)]),
        &["pre-trained with respix"],
    );
    fails_with(&cim(&["export", "--checkpoint", s(&ckpt), "--head", "classifier", "--out", s(&r)]), &["classifier"]);
    fails_with(&cim(&["export", "--checkpoint", s(&ckpt), "--arch", "resnet18", "--out", s(&r)]), &["drop --arch"]);
    // The trainer's enhancer file records its architecture, so no --arch is needed; it
    // carries no CIM head.
    let enh = RunDir::new(&run).enhancer_path();
    let e = d.join("enhancer.onnx");
    succeeds(&cim(&["export", "--checkpoint", s(&enh), "--out", s(&e), "--check"]));
    fails_with(
        &cim(&["export", "--checkpoint", s(&enh), "--head", "respix", "--out", s(&e)]),
        &["training checkpoints"],
    );

    // The restored image from a RESPIX model, at the model's size.
    let png = d.join("in.png");
    write_png(&png, 40);
    let restored = d.join("restored.png");
    let out = succeeds(&cim(&["infer", "--model", s(&r), "--input", s(&png), "--out", s(&restored)]));
    assert!(out.contains("[1, 3, 32, 32]"), "{out}");
    let img = image::open(&restored).unwrap();
    assert_eq!((img.width(), img.height()), (32, 32));
    // A RESPIX model also writes its raw output as .npy.
    let raw = d.join("raw.npy");
    succeeds(&cim(&["infer", "--model", s(&r), "--input", s(&png), "--out", s(&raw)]));
    assert_eq!(read_npy(&raw).0, [1, 3, 32, 32]);

    // A ResNet run with REVDET: the conv head, one logit per 4-px token.
    let run2 = d.join("run2");
    let resnet = EnhancerSpec { arch: "resnet18".into(), patch_size: 4, stem: "small".into(), ..Default::default() };
    training_run(&run2, resnet, "revdet");
    let out = succeeds(&cim(&[
        "export",
        "--checkpoint",
        s(&run2),
        "--head",
        "revdet",
        "--out",
        s(&d.join("rd.onnx")),
        "--half",
        "--check",
    ]));
    assert!(out.contains("logits [batch, 64]"), "{out}");
}

#[test]
fn bad_files_names_and_inputs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let w = weights(d);
    let m = d.join("m.onnx");
    succeeds(&cim(&["export", "--checkpoint", s(&w), "--out", s(&m)]));
    let x = d.join("x.npy");
    write_npy(&x, &[1, 3, 16, 16], vec![0.1; 768]);
    let y = d.join("y.npy");
    // Malformed and truncated ONNX files.
    let bytes = std::fs::read(&m).unwrap();
    let bad = d.join("bad.onnx");
    for (i, content) in
        [b"garbage, not protobuf".to_vec(), bytes[..bytes.len() / 2].to_vec(), bytes[..7].to_vec(), vec![]]
            .into_iter()
            .enumerate()
    {
        std::fs::write(&bad, content).unwrap();
        fails_with(
            &cim(&["infer", "--model", s(&bad), "--input", s(&x), "--out", s(&y)]),
            &["bad.onnx", "not a valid ONNX model"],
        );
        assert!(!y.exists(), "case {i} wrote an output");
    }
    fails_with(
        &cim(&["infer", "--model", s(&d.join("none.onnx")), "--input", s(&x), "--out", s(&y)]),
        &["cannot read"],
    );
    // An input of the wrong size.
    let small = d.join("small.npy");
    write_npy(&small, &[1, 3, 8, 8], vec![0.1; 192]);
    fails_with(
        &cim(&["infer", "--model", s(&m), "--input", s(&small), "--out", s(&y)]),
        &["[1, 3, 8, 8]", "[batch, 3, 16, 16]"],
    );
    // An unknown architecture; a file that is not an enhancer; a head the file lacks.
    let bare = d.join("bare.safetensors");
    let b = Cpu::new();
    let spec = by_name(VIT).unwrap();
    let (_, store) = Enhancer::random(&b, &spec, HeadKind::Classifier, None, 4).unwrap();
    checkpoint::save(&bare, &store, &b, "", &Default::default()).unwrap();
    let o = d.join("o.onnx");
    fails_with(&cim(&["export", "--checkpoint", s(&bare), "--out", s(&o)]), &["cim.arch", "--arch"]);
    fails_with(
        &cim(&["export", "--checkpoint", s(&bare), "--arch", "vit_huge", "--out", s(&o)]),
        &["unknown architecture", "vit_huge", "resnet50"],
    );
    succeeds(&cim(&["export", "--checkpoint", s(&bare), "--arch", VIT, "--out", s(&o)]));
    let dvae = d.join("dvae.safetensors");
    let dspec = by_name("dvae_small_encoder").unwrap();
    let mut t = cim_core::params::ParamTable::new();
    dspec.build(&mut t, "").unwrap();
    checkpoint::save_model(&dvae, &dspec, &t.build(&b, 1).unwrap(), &b, "", SaveOptions::default()).unwrap();
    fails_with(&cim(&["export", "--checkpoint", s(&dvae), "--out", s(&o)]), &["ViT and ResNet"]);
    let headless = d.join("headless.safetensors");
    let hspec = by_name("vit(img=16,patch=4,dim=16,depth=1,heads=2)").unwrap();
    let (_, hstore) = Enhancer::random(&b, &hspec, HeadKind::None, None, 4).unwrap();
    checkpoint::save_model(&headless, &hspec, &hstore, &b, "", SaveOptions::default()).unwrap();
    fails_with(
        &cim(&["export", "--checkpoint", s(&headless), "--head", "classifier", "--out", s(&o)]),
        &["no classifier"],
    );
    fails_with(&cim(&["export", "--checkpoint", s(&d.join("missing.safetensors")), "--out", s(&o)]), &["cannot open"]);
    fails_with(&cim(&["export", "--checkpoint", s(d), "--out", s(&o)]), &["without a training checkpoint"]);
    let corrupt = d.join("corrupt.safetensors");
    std::fs::write(&corrupt, &std::fs::read(&w).unwrap()[..100]).unwrap();
    fails_with(&cim(&["export", "--checkpoint", s(&corrupt), "--out", s(&o)]), &["truncated or corrupt"]);
}

#[test]
fn bench_infer_runs_both_runtimes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = succeeds(&cim(&[
        "bench",
        "infer",
        "--arch",
        "vit_tiny_patch4_32,resnet18_small",
        "--batch",
        "1,2",
        "--seconds",
        "0.05",
        "--onnx-dir",
        s(tmp.path()),
    ]));
    for want in ["vit_tiny_patch4_32", "resnet18_small", "cpu", "tract", "img/s"] {
        assert!(out.contains(want), "{want} not in {out}");
    }
    assert_eq!(out.lines().filter(|l| l.contains(" tract ")).count(), 4, "{out}");
    assert!(tmp.path().join("vit_tiny_patch4_32.onnx").is_file());
}
