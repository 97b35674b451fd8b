//! `cim infer` end to end: the built binary on tiny checkpoints written here.

use cim_core::arch::{by_name, ArchSpec, Model};
use cim_core::checkpoint::{self, SaveOptions};
use cim_core::params::{ParamStore, ParamTable};
use cim_core::{Reference, Tensor};
use ndarray::{ArrayD, IxDyn};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

type R = Reference<f32>;

const VIT: &str = "vit(img=16,patch=4,dim=16,depth=2,heads=2)";
const RESNET: &str = "resnet(block=basic,layers=1-1-1-1,width=4,stem=small,img=16)";
const DECODER: &str = "dvae_decoder(groups=2,n_hid=8,blocks=1,vocab=16,n_init=8,img=8)";

fn build(arch: &str, seed: u64) -> (ArchSpec, Model, ParamStore<R>) {
    let spec = by_name(arch).unwrap();
    let mut t = ParamTable::new();
    let model = spec.build(&mut t, "").unwrap();
    (spec, model, t.build(&R::new(), seed).unwrap())
}

/// A checkpoint of `arch` in `dir`, and the model and store it holds.
fn checkpoint(dir: &Path, arch: &str) -> (PathBuf, Model, ParamStore<R>) {
    let (spec, model, store) = build(arch, 3);
    let path = dir.join(format!("{}.safetensors", spec.family()));
    checkpoint::save_model(&path, &spec, &store, &R::new(), "", SaveOptions::default()).unwrap();
    (path, model, store)
}

fn values(shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    (0..n).map(|i| ((i * 29 % 97) as f32 / 97.0) - 0.5).collect()
}

fn write_npy(path: &Path, shape: &[usize], data: Vec<f32>) {
    ndarray_npy::write_npy(path, &ArrayD::from_shape_vec(IxDyn(shape), data).unwrap()).unwrap();
}

fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let a: ArrayD<f32> = ndarray_npy::read_npy(path).unwrap();
    (a.shape().to_vec(), a.iter().copied().collect())
}

fn cim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cim")).arg("infer").args(args).output().unwrap()
}

fn infer_args<'a>(weights: &'a Path, input: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec!["--weights", weights.to_str().unwrap(), "--input", input.to_str().unwrap(), "--out", out.to_str().unwrap()]
}

fn succeeds(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Fails cleanly: non-zero exit, one `error:` line naming `want`, no panic.
fn fails_with(o: &Output, want: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    eprint!("{err}"); // shown with --nocapture
    assert!(!o.status.success(), "expected a failure; stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.starts_with("error: ") && err.trim_end().lines().count() == 1, "not one error line: {err}");
    for w in want {
        assert!(err.contains(w), "{w:?} not in: {err}");
    }
}

fn reference_infer(model: &Model, store: &ParamStore<R>, shape: &[usize], data: &[f32]) -> Vec<f32> {
    let b = R::new();
    let x = Tensor::from_slice(&b, shape, data).unwrap();
    model.infer(&b, store, &x).unwrap().to_vec(&b).unwrap()
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "element {i}: {g} vs {w}");
    }
}

#[test]
fn vit_npy_in_npy_out() {
    let dir = tempfile::tempdir().unwrap();
    let (weights, model, store) = checkpoint(dir.path(), VIT);
    let (input, out) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
    let shape = [2, 3, 16, 16];
    write_npy(&input, &shape, values(&shape));
    let o = cim(&infer_args(&weights, &input, &out));
    succeeds(&o);
    let (s, y) = read_npy(&out);
    assert_eq!(s, vec![2, 17, 16]);
    assert_close(&y, &reference_infer(&model, &store, &shape, &values(&shape)));
    assert!(String::from_utf8_lossy(&o.stdout).contains("[2, 17, 16]"));
}

#[test]
fn resnet_npy_in_npy_out() {
    let dir = tempfile::tempdir().unwrap();
    let (weights, model, store) = checkpoint(dir.path(), RESNET);
    let (input, out) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
    let shape = [1, 3, 16, 16];
    write_npy(&input, &shape, values(&shape));
    succeeds(&cim(&infer_args(&weights, &input, &out)));
    let (s, y) = read_npy(&out);
    assert_eq!(s, vec![1, 32, 2, 2]);
    assert_close(&y, &reference_infer(&model, &store, &shape, &values(&shape)));
    // A float64 array works too.
    let a = ArrayD::from_shape_vec(IxDyn(&shape), values(&shape).iter().map(|&v| v as f64).collect()).unwrap();
    ndarray_npy::write_npy(&input, &a).unwrap();
    succeeds(&cim(&infer_args(&weights, &input, &out)));
    assert_close(&read_npy(&out).1, &reference_infer(&model, &store, &shape, &values(&shape)));
}

#[test]
fn png_input_is_resized_and_normalized() {
    let dir = tempfile::tempdir().unwrap();
    let (weights, model, store) = checkpoint(dir.path(), VIT);
    let (input, out) = (dir.path().join("x.png"), dir.path().join("y.npy"));
    // A uniform image: any resize keeps it uniform, so the expected input is known.
    let px = [255u8, 0, 128];
    image::RgbImage::from_pixel(23, 11, image::Rgb(px)).save(&input).unwrap();
    succeeds(&cim(&infer_args(&weights, &input, &out)));
    let (s, y) = read_npy(&out);
    assert_eq!(s, vec![1, 17, 16]);
    let (mean, std) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
    let mut x = Vec::new();
    for c in 0..3 {
        let v = ((px[c] as f64 / 255.0 - mean[c]) / std[c]) as f32;
        x.extend(std::iter::repeat_n(v, 16 * 16));
    }
    assert_close(&y, &reference_infer(&model, &store, &[1, 3, 16, 16], &x));
    // A JPEG decodes too.
    let jpg = dir.path().join("x.jpg");
    image::RgbImage::from_fn(40, 40, |i, j| image::Rgb([(i * 6) as u8, (j * 6) as u8, 90])).save(&jpg).unwrap();
    succeeds(&cim(&infer_args(&weights, &jpg, &out)));
    assert_eq!(read_npy(&out).0, vec![1, 17, 16]);
}

#[test]
fn errors_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (weights, _, store) = checkpoint(d, VIT);
    let out = d.join("y.npy");
    let good = d.join("x.npy");
    write_npy(&good, &[1, 3, 16, 16], values(&[1, 3, 16, 16]));

    // Missing files.
    fails_with(&cim(&infer_args(&d.join("none.safetensors"), &good, &out)), &["none.safetensors", "cannot read"]);
    fails_with(&cim(&infer_args(&weights, &d.join("none.npy"), &out)), &["none.npy", "cannot read input"]);
    // A corrupt and a truncated checkpoint.
    let bad = d.join("bad.safetensors");
    std::fs::write(&bad, b"definitely not safetensors").unwrap();
    fails_with(&cim(&infer_args(&bad, &good, &out)), &["bad.safetensors", "truncated or corrupt"]);
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() - 10]).unwrap();
    fails_with(&cim(&infer_args(&bad, &good, &out)), &["truncated or corrupt"]);
    // A corrupt image.
    let img = d.join("broken.png");
    std::fs::write(&img, b"\x89PNG\r\n\x1a\n not really").unwrap();
    fails_with(&cim(&infer_args(&weights, &img, &out)), &["broken.png", "image"]);
    // Wrong input shapes and types.
    let x = d.join("small.npy");
    write_npy(&x, &[1, 3, 15, 15], values(&[1, 3, 15, 15]));
    fails_with(&cim(&infer_args(&weights, &x, &out)), &["small.npy", "[1, 3, 15, 15]", "does not fit"]);
    write_npy(&x, &[3, 16, 16], values(&[3, 16, 16]));
    fails_with(&cim(&infer_args(&weights, &x, &out)), &["[3, 16, 16]", "NCHW"]);
    ndarray_npy::write_npy(&x, &ArrayD::<i32>::zeros(IxDyn(&[1, 3, 16, 16]))).unwrap();
    fails_with(&cim(&infer_args(&weights, &x, &out)), &["float32 or float64"]);
    // Unknown architecture.
    let mut args = infer_args(&weights, &good, &out);
    args.extend(["--arch", "vit_gigantic"]);
    fails_with(&cim(&args), &["vit_gigantic", "vit_base_patch16_224", "resnet50x4"]);
    // A file without cim.arch and no --arch.
    let bare = d.join("bare.safetensors");
    checkpoint::save(&bare, &store, &R::new(), "", &BTreeMap::new()).unwrap();
    fails_with(&cim(&infer_args(&bare, &good, &out)), &["--arch", "resnet18", "dalle_encoder"]);
    // ... which loads once named.
    let mut args = infer_args(&bare, &good, &out);
    args.extend(["--arch", VIT]);
    succeeds(&cim(&args));
    // A checkpoint that does not fit the named architecture.
    let mut args = infer_args(&weights, &good, &out);
    args.extend(["--arch", "resnet18_small"]);
    fails_with(&cim(&args), &["conv1.weight", "missing", "cls_token", "unexpected"]);
    // A decoder takes codes, not images.
    let (dec, _, _) = checkpoint(d, DECODER);
    let png = d.join("x.png");
    image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])).save(&png).unwrap();
    fails_with(&cim(&infer_args(&dec, &png, &out)), &["codes [B, 16, 4, 4]"]);
    // An output directory that does not exist.
    fails_with(&cim(&infer_args(&weights, &good, &d.join("no/such/dir/y.npy"))), &["does not exist"]);
}

#[test]
fn decoder_takes_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (weights, model, store) = checkpoint(dir.path(), DECODER);
    let (input, out) = (dir.path().join("z.npy"), dir.path().join("y.npy"));
    let shape = [1, 16, 4, 4];
    let mut z = vec![0f32; 16 * 16];
    for p in 0..16 {
        z[(p * 5 % 16) * 16 + p] = 1.0; // one-hot codes
    }
    write_npy(&input, &shape, z.clone());
    succeeds(&cim(&infer_args(&weights, &input, &out)));
    let (s, y) = read_npy(&out);
    assert_eq!(s, vec![1, 6, 8, 8]);
    assert_close(&y, &reference_infer(&model, &store, &shape, &z));
}
