//! `cim tokenizer roundtrip` end to end: a random-weight tiny tokenizer on a folder of
//! generated PNG images (one of them corrupt).

use cim_core::models::dvae::DvaeConfig;
use cim_core::tokenizer::{save_tokenizer, Tokenizer};
use cim_core::Reference;
use ndarray::ArrayD;
use std::path::Path;
use std::process::{Command, Output};

fn cim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cim")).args(["tokenizer", "roundtrip"]).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{:?}\n{}\n{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Five 12-px gradient images and one file that is not an image.
fn image_folder(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..5u32 {
        let img = image::RgbImage::from_fn(12, 12, |x, y| image::Rgb([(x * 20) as u8, (y * 20) as u8, (i * 50) as u8]));
        img.save(dir.join(format!("{i}.png"))).unwrap();
    }
    std::fs::write(dir.join("broken.png"), b"not a png").unwrap();
}

#[test]
fn roundtrip_writes_maps_reconstructions_and_a_picture() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    image_folder(&data);
    let b = Reference::<f32>::new();
    let cfg = DvaeConfig { group_count: 2, n_hid: 8, n_blk_per_group: 1, input_channels: 3, vocab_size: 16, n_init: 8 };
    let tok = Tokenizer::new(&b, cfg, 8, 1).unwrap();
    let tok_path = tmp.path().join("tok.safetensors");
    save_tokenizer(&tok_path, &tok, &b, &Default::default()).unwrap();
    let out = tmp.path().join("out");
    let o = cim(&[
        "--tokenizer",
        tok_path.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--n",
        "64",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    // Six files, one corrupt: reported, its slot filled by the next readable image.
    assert!(stdout.contains("6 test images at 8 px -> 4×4 tokens") && stdout.contains("of 16 codes used"), "{stdout}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("warning: skipped") && text(&o).contains("broken.png"));
    let tokens: ArrayD<u32> = ndarray_npy::read_npy(out.join("tokens.npy")).unwrap();
    assert_eq!(tokens.shape(), &[6, 4, 4]);
    assert!(tokens.iter().all(|&t| t < 16));
    let rec: ArrayD<f32> = ndarray_npy::read_npy(out.join("reconstructions.npy")).unwrap();
    assert_eq!(rec.shape(), &[6, 3, 8, 8]);
    let images: ArrayD<f32> = ndarray_npy::read_npy(out.join("images.npy")).unwrap();
    assert_eq!(images.shape(), &[6, 3, 8, 8]);
    let usage: ArrayD<u64> = ndarray_npy::read_npy(out.join("usage.npy")).unwrap();
    assert_eq!(usage.iter().sum::<u64>(), 6 * 16);
    // 8-px cells upscaled 8× to 64 px, 2-px gaps: 6 columns, one band of two rows.
    let png = image::open(out.join("roundtrip.png")).unwrap();
    assert_eq!((png.width(), png.height()), (6 * 66 + 2, 2 * 64 + 3 * 2 + 2));
}

#[test]
fn roundtrip_bad_inputs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("none.safetensors");
    let o = cim(&["--tokenizer", missing.to_str().unwrap(), "--out", tmp.path().to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("none.safetensors"), "{}", text(&o));
    // A file that is not a tokenizer.
    let junk = tmp.path().join("junk.safetensors");
    std::fs::write(&junk, b"\x08\0\0\0\0\0\0\0{}      ").unwrap();
    let o = cim(&["--tokenizer", junk.to_str().unwrap(), "--out", tmp.path().to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("error: "), "{}", text(&o));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"), "{}", text(&o));
}
