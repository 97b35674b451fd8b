//! Tests of the data module, on fixtures written to temporary folders.

use super::*;
use crate::rng::Stream;
use flate2::write::GzEncoder;
use flate2::Compression;
use image::{Rgb, RgbImage};
use std::fs;
use std::io::Write;
use std::path::Path;

fn idx_bytes(magic_type: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, magic_type, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Three 2x3 images (pixel = 10 * image + 3 * row + col) with labels 1, 0, 7.
fn idx_fixture() -> (Vec<u8>, Vec<u8>) {
    let mut px = Vec::new();
    for i in 0..3u8 {
        for r in 0..2u8 {
            for c in 0..3u8 {
                px.push(10 * i + 3 * r + c + 1);
            }
        }
    }
    (idx_bytes(0x08, &[3, 2, 3], &px), idx_bytes(0x08, &[3], &[1, 0, 7]))
}

fn write_idx_dir(dir: &Path, prefix: &str, gzipped: bool) {
    let (img, lab) = idx_fixture();
    let (img, lab, ext) = if gzipped { (gz(&img), gz(&lab), ".gz") } else { (img, lab, "") };
    fs::write(dir.join(format!("{prefix}-images-idx3-ubyte{ext}")), img).unwrap();
    fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")), lab).unwrap();
}

fn err_text<T: std::fmt::Debug>(r: crate::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn idx_reads_back_exactly_gz_and_plain() {
    for gzipped in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        write_idx_dir(dir.path(), "train", gzipped);
        write_idx_dir(dir.path(), "t10k", gzipped);
        for split in [Split::Train, Split::Test] {
            let ds = Dataset::open(dir.path(), split).unwrap();
            assert_eq!(ds.format(), Format::Idx);
            assert_eq!(ds.len(), 3);
            assert_eq!(ds.num_classes(), Some(8));
            let labels: Vec<_> = (0..3).map(|i| ds.get(i).unwrap().label).collect();
            assert_eq!(labels, [Some(1), Some(0), Some(7)]);
            for i in 0..3u32 {
                let s = ds.get(i as usize).unwrap();
                assert_eq!(s.image.dimensions(), (3, 2));
                for r in 0..2u32 {
                    for c in 0..3u32 {
                        let v = (10 * i + 3 * r + c + 1) as u8;
                        assert_eq!(s.image.get_pixel(c, r), &Rgb([v, v, v]), "gz {gzipped} image {i} ({r},{c})");
                    }
                }
            }
            assert!(ds.item_path(2).to_string_lossy().ends_with("#2"));
        }
    }
}

#[test]
fn idx_dotted_names_and_raw_subfolder() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw");
    fs::create_dir(&raw).unwrap();
    let (img, lab) = idx_fixture();
    fs::write(raw.join("train-images.idx3-ubyte"), img).unwrap();
    fs::write(raw.join("train-labels.idx1-ubyte"), lab).unwrap();
    let ds = Dataset::open(dir.path(), Split::Train).unwrap();
    assert_eq!(ds.len(), 3);
    // The test split is missing: the error names the files it wants.
    let e = err_text(Dataset::open(dir.path(), Split::Test));
    assert!(e.contains("t10k-images-idx3-ubyte"), "{e}");
}

#[test]
fn idx_wrong_magic_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (img, lab) = idx_fixture();
    // Labels where images are expected (magic 00 00 08 01).
    fs::write(dir.path().join("train-images-idx3-ubyte"), &lab).unwrap();
    fs::write(dir.path().join("train-labels-idx1-ubyte"), &lab).unwrap();
    let e = err_text(Dataset::open(dir.path(), Split::Train));
    assert!(e.contains("train-images-idx3-ubyte") && e.contains("00 00 08 03"), "{e}");
    // Not an IDX file at all.
    fs::write(dir.path().join("train-images-idx3-ubyte"), b"PK\x03\x04 not idx").unwrap();
    let e = err_text(Dataset::open(dir.path(), Split::Train));
    assert!(e.contains("bad magic") && e.contains("train-images-idx3-ubyte"), "{e}");
    // Wrong element type (0x0D: float).
    let mut bad = img.clone();
    bad[2] = 0x0d;
    fs::write(dir.path().join("train-images-idx3-ubyte"), &bad).unwrap();
    let e = err_text(Dataset::open(dir.path(), Split::Train));
    assert!(e.contains("element type 0x0d"), "{e}");
}

#[test]
fn idx_truncated_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (img, lab) = idx_fixture();
    fs::write(dir.path().join("train-images-idx3-ubyte"), &img[..img.len() - 5]).unwrap();
    fs::write(dir.path().join("train-labels-idx1-ubyte"), &lab).unwrap();
    let e = err_text(Dataset::open(dir.path(), Split::Train));
    assert!(e.contains("truncated") && e.contains("18 bytes"), "{e}");
    // A truncated gzip stream.
    let z = gz(&img);
    fs::remove_file(dir.path().join("train-images-idx3-ubyte")).unwrap();
    fs::write(dir.path().join("train-images-idx3-ubyte.gz"), &z[..z.len() / 2]).unwrap();
    let e = err_text(Dataset::open(dir.path(), Split::Train));
    assert!(e.contains("truncated") && e.contains("train-images-idx3-ubyte.gz"), "{e}");
    // A truncated header.
    fs::write(dir.path().join("train-images-idx3-ubyte.gz"), gz(&img[..9])).unwrap();
    let e = err_text(Dataset::open(dir.path(), Split::Train));
    assert!(e.contains("truncated IDX header"), "{e}");
    // Image and label counts disagree.
    fs::write(dir.path().join("train-images-idx3-ubyte.gz"), gz(&img)).unwrap();
    fs::write(dir.path().join("train-labels-idx1-ubyte"), idx_bytes(8, &[2], &[1, 2])).unwrap();
    let e = err_text(Dataset::open(dir.path(), Split::Train));
    assert!(e.contains("3 images but") && e.contains("2 labels"), "{e}");
}

fn cifar_record(label_bytes: &[u8], seed: u8) -> Vec<u8> {
    let mut r = label_bytes.to_vec();
    r.extend((0..3072u32).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    r
}

#[test]
fn cifar10_exact_pixels_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("cifar-10-batches-bin");
    fs::create_dir(&sub).unwrap();
    let b1: Vec<u8> = [cifar_record(&[3], 0), cifar_record(&[9], 1)].concat();
    let b2: Vec<u8> = cifar_record(&[5], 2);
    fs::write(sub.join("data_batch_2.bin"), &b2).unwrap();
    fs::write(sub.join("data_batch_1.bin"), &b1).unwrap();
    fs::write(sub.join("test_batch.bin"), cifar_record(&[0], 3)).unwrap();
    let ds = Dataset::open(dir.path(), Split::Train).unwrap();
    assert_eq!(ds.format(), Format::Cifar10);
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.num_classes(), Some(10));
    for (i, (label, seed)) in [(3u32, 0u8), (9, 1), (5, 2)].into_iter().enumerate() {
        let s = ds.get(i).unwrap();
        assert_eq!(s.label, Some(label));
        for (x, y) in [(0u32, 0u32), (31, 0), (5, 17), (31, 31)] {
            let p = (y * 32 + x) as usize;
            let want = [0, 1, 2].map(|c| ((c * 1024 + p) as u8).wrapping_mul(7).wrapping_add(seed));
            assert_eq!(s.image.get_pixel(x, y).0, want, "image {i} at ({x},{y})");
        }
    }
    let test = Dataset::open(dir.path(), Split::Test).unwrap();
    assert_eq!(test.len(), 1);
    assert_eq!(test.get(0).unwrap().label, Some(0));
    // A truncated batch.
    fs::write(sub.join("data_batch_2.bin"), &b2[..3000]).unwrap();
    let e = err_text(Dataset::open(dir.path(), Split::Train));
    assert!(e.contains("data_batch_2.bin") && e.contains("truncated"), "{e}");
}

#[test]
fn cifar100_uses_the_fine_label() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("train.bin"), [cifar_record(&[4, 77], 9), cifar_record(&[19, 99], 8)].concat()).unwrap();
    let ds = Dataset::open(dir.path(), Split::Train).unwrap();
    assert_eq!(ds.format(), Format::Cifar100);
    assert_eq!(ds.num_classes(), Some(100));
    assert_eq!(ds.get(0).unwrap().label, Some(77));
    assert_eq!(ds.get(1).unwrap().label, Some(99));
    assert_eq!(ds.get(1).unwrap().image.get_pixel(1, 0).0[0], 1u8.wrapping_mul(7).wrapping_add(8));
    let e = err_text(Dataset::open(dir.path(), Split::Test));
    assert!(e.contains("test.bin"), "{e}");
}

/// An image whose red channel encodes the column and green the row.
fn position_image(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([(x * 255 / (w - 1)) as u8, (y * 255 / (h - 1)) as u8, 77]))
}

fn save(img: &RgbImage, path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

/// root/cat/a.png, root/cat/deep/b.jpg, root/dog/c.PNG, root/dog/d.jpeg, root/loose.png,
/// root/empty/, root/.hidden/x.png, root/notes.txt.
fn folder_fixture(root: &Path) {
    save(&position_image(9, 7), &root.join("cat/a.png"));
    save(&position_image(12, 10), &root.join("cat/deep/b.jpg"));
    save(&position_image(8, 8), &root.join("dog/c.PNG"));
    save(&position_image(10, 6), &root.join("dog/d.jpeg"));
    save(&position_image(5, 5), &root.join("loose.png"));
    save(&position_image(5, 5), &root.join(".hidden/x.png"));
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::write(root.join("notes.txt"), "not an image").unwrap();
}

#[test]
fn image_folder_labels_by_sorted_folder() {
    let dir = tempfile::tempdir().unwrap();
    folder_fixture(dir.path());
    let ds = Dataset::open(dir.path(), Split::Train).unwrap();
    assert_eq!(ds.format(), Format::ImageFolder);
    let Dataset::Folder(f) = &ds else { panic!("not a folder") };
    assert_eq!(f.classes(), ["cat", "dog"]);
    let got: Vec<(String, Option<u32>)> = f
        .files()
        .iter()
        .map(|(p, l)| (p.strip_prefix(dir.path()).unwrap().to_string_lossy().into_owned(), *l))
        .collect();
    let want = [
        ("cat/a.png", Some(0)),
        ("cat/deep/b.jpg", Some(0)),
        ("dog/c.PNG", Some(1)),
        ("dog/d.jpeg", Some(1)),
        ("loose.png", None),
    ];
    assert_eq!(got, want.map(|(p, l)| (p.to_string(), l)));
    // PNG decodes exactly; JPEG closely.
    let a = ds.get(0).unwrap();
    assert_eq!(a.image, position_image(9, 7));
    let b = ds.get(1).unwrap();
    assert_eq!(b.image.dimensions(), (12, 10));
    assert!((b.image.get_pixel(11, 5).0[0] as i32 - 255).abs() < 40);
    assert_eq!(ds.num_classes(), Some(2));
}

#[test]
fn image_folder_split_folders() {
    let dir = tempfile::tempdir().unwrap();
    save(&position_image(4, 4), &dir.path().join("train/a/1.png"));
    save(&position_image(4, 4), &dir.path().join("train/b/2.png"));
    save(&position_image(4, 4), &dir.path().join("val/b/3.png"));
    assert_eq!(Dataset::open(dir.path(), Split::Train).unwrap().len(), 2);
    let test = Dataset::open(dir.path(), Split::Test).unwrap();
    assert_eq!(test.len(), 1);
    assert_eq!(test.get(0).unwrap().label, Some(0));
}

#[test]
fn missing_or_empty_dataset_names_the_formats() {
    let dir = tempfile::tempdir().unwrap();
    let check = |e: String| {
        for word in ["IDX", "train-images-idx3-ubyte", "CIFAR", "data_batch_1", "image folder", "JPEG"] {
            assert!(e.contains(word), "{word} not in: {e}");
        }
        assert!(e.contains("apt-get install dataset-fashion-mnist") && e.contains("--data DIR"), "{e}");
    };
    let e = err_text(Dataset::open(dir.path().join("nowhere"), Split::Train));
    assert!(e.contains("does not exist"), "{e}");
    check(e);
    fs::write(dir.path().join("readme.txt"), "nothing here").unwrap();
    fs::create_dir(dir.path().join("sub")).unwrap();
    let e = err_text(Dataset::open(dir.path(), Split::Train));
    assert!(e.contains("no data set found"), "{e}");
    check(e);
    let e = err_text(Dataset::open(dir.path().join("readme.txt"), Split::Train));
    check(e);
}

#[test]
fn corrupt_image_is_skipped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    folder_fixture(dir.path());
    let mut junk = Stream::new(5);
    let bytes: Vec<u8> = (0..300).map(|_| junk.next_u32() as u8).collect();
    fs::write(dir.path().join("cat/bad.png"), bytes).unwrap();
    // Order: cat/a.png, cat/bad.png, cat/deep/b.jpg, dog/c.PNG, dog/d.jpeg, loose.png.
    let ds = Dataset::open(dir.path(), Split::Train).unwrap();
    assert_eq!(ds.len(), 6);
    assert!(ds.get(1).is_err());
    for workers in [1, 3] {
        let cfg =
            LoaderConfig { workers, ..LoaderConfig::eval(3, Augment::resize(8).with_tokenizer(4, Filter::Bicubic)) };
        let mut loader = Loader::new(ds.clone(), cfg).unwrap();
        assert_eq!(loader.steps_per_epoch(), 2);
        let b0 = loader.next_batch().unwrap();
        // The corrupt slot takes the next image (cat/deep/b.jpg, index 2).
        assert_eq!(b0.indices, [0, 2, 2]);
        assert_eq!(b0.labels, Some(vec![0, 0, 0]));
        assert_eq!(b0.enhancer.len(), 3 * 3 * 8 * 8);
        assert_eq!(b0.tokenizer_shape(), Some([3, 3, 4, 4]));
        let b1 = loader.next_batch().unwrap();
        assert_eq!(b1.indices, [3, 4, 5]);
        assert_eq!(b1.labels, None, "loose.png has no label");
        let b2 = loader.next_batch().unwrap();
        assert_eq!((b2.epoch, b2.step), (1, 2));
        let report = loader.report();
        assert_eq!(report.skipped.len(), 1);
        let (path, reason) = &report.skipped[0];
        assert_eq!(path, &dir.path().join("cat/bad.png"));
        assert!(reason.contains("bad.png") && reason.contains("decode"), "{reason}");
        assert!(report.skip_count >= 2);
    }
}

#[test]
fn all_images_corrupt_is_an_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.png"), b"nope").unwrap();
    fs::write(dir.path().join("b.jpg"), b"nope").unwrap();
    let ds = Dataset::open(dir.path(), Split::Train).unwrap();
    let mut loader = Loader::new(ds, LoaderConfig::eval(2, Augment::resize(4))).unwrap();
    let e = err_text(loader.next_batch());
    assert!(e.contains("no readable image"), "{e}");
    assert_eq!(loader.report().skipped.len(), 2);
    assert!(loader.next_batch().is_err());
}

#[test]
fn random_resized_crop_bounds() {
    let rrc = RandomResizedCrop::default();
    let mut rng = Stream::new(11);
    let mut fallbacks = 0;
    for &(w, h) in &[(300u32, 200u32), (224, 224), (57, 91), (2000, 30), (30, 2000)] {
        for _ in 0..2000 {
            let b = rrc.sample(w, h, &mut rng);
            assert!(b.width >= 1 && b.height >= 1 && b.x + b.width <= w && b.y + b.height <= h, "{b:?} in {w}x{h}");
            let frac = (b.width * b.height) as f64 / (w * h) as f64;
            let ratio = b.width as f64 / b.height as f64;
            if b.fallback {
                fallbacks += 1;
                // Central crop, clamped to the ratio range.
                assert_eq!((b.x, b.y), ((w - b.width) / 2, (h - b.height) / 2));
                assert!(b.width == w || b.height == h, "{b:?}");
                continue;
            }
            // Rounding to whole pixels moves each side by at most half a pixel.
            let (lo_w, lo_h) = (b.width as f64 + 0.5, b.height as f64 + 0.5);
            let (hi_w, hi_h) = ((b.width as f64 - 0.5).max(0.0), (b.height as f64 - 0.5).max(0.0));
            assert!(lo_w * lo_h >= 0.08 * (w * h) as f64, "{b:?} area {frac}");
            assert!(frac <= 1.0);
            assert!(lo_w / hi_h >= 0.75 - 1e-9 && hi_w / lo_h <= 4.0 / 3.0 + 1e-9, "{b:?} ratio {ratio}");
        }
    }
    // Only the extreme aspect ratios fall back (almost always).
    assert!(fallbacks > 1000, "{fallbacks}");
    // Square images: the area fraction covers [0.08, 1].
    let fr: Vec<f64> = (0..4000)
        .map(|_| {
            let b = rrc.sample(500, 500, &mut rng);
            (b.width * b.height) as f64 / 250_000.0
        })
        .collect();
    assert!(fr.iter().cloned().fold(1.0, f64::min) < 0.1);
    assert!(fr.iter().cloned().fold(0.0, f64::max) > 0.9);
}

#[test]
fn flip_probability_about_half() {
    let aug = Augment::pretrain(8, 4);
    let mut rng = Stream::new(3);
    let flips = (0..4000).filter(|_| aug.sample_crop(40, 30, &mut rng).unwrap().flip).count();
    assert!((1800..2200).contains(&flips), "{flips}");
}

fn at(view: &[f32], size: usize, c: usize, y: usize, x: usize) -> f32 {
    view[c * size * size + y * size + x]
}

#[test]
fn both_views_come_from_the_same_crop() {
    let (w, h) = (320u32, 240u32);
    let img = RgbImage::from_fn(w, h, |x, y| Rgb([(x * 255 / (w - 1)) as u8, (y * 255 / (h - 1)) as u8, 200]));
    let (e, t) = (64usize, 32usize);
    let aug = Augment::pretrain(e as u32, t as u32);
    let mut rng = Stream::new(99);
    let mut checked = 0;
    for _ in 0..40 {
        let v = aug.apply(&img, &mut rng);
        let b = v.crop.unwrap();
        assert_eq!(v.enhancer.len(), 3 * e * e);
        assert_eq!(v.tokenizer.len(), 3 * t * t);
        // Each view pixel's center maps into the crop; the red (green) channel there is
        // the source column (row), so every interior pixel tells where it came from.
        for (view, s) in [(&v.enhancer, e), (&v.tokenizer, t)] {
            for (py, px) in [(s / 2, s / 2), (s / 4, 3 * s / 4), (3 * s / 4, s / 4)] {
                let sx = b.x as f64 + (px as f64 + 0.5) * b.width as f64 / s as f64 - 0.5;
                let sx = if b.flip { (2 * b.x + b.width - 1) as f64 - sx } else { sx };
                let sy = b.y as f64 + (py as f64 + 0.5) * b.height as f64 / s as f64 - 0.5;
                let r = at(view, s, 0, py, px) as f64 * (w - 1) as f64;
                let g = at(view, s, 1, py, px) as f64 * (h - 1) as f64;
                assert!((r - sx).abs() < 2.5, "{b:?} view {s} ({py},{px}): column {r} vs {sx}");
                assert!((g - sy).abs() < 2.5, "{b:?} view {s} ({py},{px}): row {g} vs {sy}");
                assert!((at(view, s, 2, py, px) - 200.0 / 255.0).abs() < 1e-3);
            }
        }
        // The enhancer view downscaled is the tokenizer view, give or take resampling.
        let enh = image::Rgb32FImage::from_fn(e as u32, e as u32, |x, y| {
            Rgb([0, 1, 2].map(|c| at(&v.enhancer, e, c, y as usize, x as usize)))
        });
        let down = image::imageops::resize(&enh, t as u32, t as u32, image::imageops::FilterType::Lanczos3);
        let mut max = 0f32;
        for y in 2..t - 2 {
            for x in 2..t - 2 {
                for c in 0..3 {
                    max = max.max((down.get_pixel(x as u32, y as u32).0[c] - at(&v.tokenizer, t, c, y, x)).abs());
                }
            }
        }
        assert!(max < 0.02, "{b:?}: enhancer downscaled vs tokenizer differ by {max}");
        checked += 1;
    }
    assert_eq!(checked, 40);
}

#[test]
fn flip_flips_both_views() {
    let img = RgbImage::from_fn(50, 40, |x, y| Rgb([(x * 5) as u8, (y * 6) as u8, ((x * y) % 251) as u8]));
    let aug = Augment::pretrain(16, 8);
    let crop = CropBox { x: 7, y: 3, width: 30, height: 25, flip: false, fallback: false };
    let plain = aug.render(&img, Some(&crop));
    let flipped = aug.render(&img, Some(&CropBox { flip: true, ..crop }));
    for (a, b, s) in [(&plain.enhancer, &flipped.enhancer, 16), (&plain.tokenizer, &flipped.tokenizer, 8)] {
        for c in 0..3 {
            for y in 0..s {
                for x in 0..s {
                    let d = (at(a, s, c, y, x) - at(b, s, c, y, s - 1 - x)).abs();
                    assert!(d < 1e-4, "view {s} ({c},{y},{x}) differs by {d}");
                }
            }
        }
    }
    assert_ne!(plain.enhancer, flipped.enhancer);
}

#[test]
fn eval_and_resize_transforms() {
    // An image that already has the size: a copy.
    let img = RgbImage::from_fn(28, 28, |x, y| Rgb([(x * 9) as u8, (y * 9) as u8, 3]));
    let sample = Sample { image: img.clone(), label: None };
    let mut rng = Stream::new(0);
    assert_eq!(Augment::resize(28).apply(&img, &mut rng).enhancer, sample.to_chw());
    assert_eq!(Augment::eval(28, 28).apply(&img, &mut rng).enhancer, sample.to_chw());
    // 28 px resized to 32: the corners stay put.
    let v = Augment::resize(32).apply(&img, &mut rng);
    assert_eq!(v.enhancer.len(), 3 * 32 * 32);
    assert!((at(&v.enhancer, 32, 0, 0, 31) - 243.0 / 255.0).abs() < 0.02);
    // Resize the shorter side to 20 (40x30 -> 26x20), center crop 16: columns 5..21 and
    // rows 2..18 of the resized image.
    let img = position_image(40, 30);
    let v = Augment::eval(20, 16).apply(&img, &mut rng);
    assert_eq!(v.enhancer.len(), 3 * 16 * 16);
    assert!(v.tokenizer.is_empty() && v.crop.is_none());
    let col = |rx: f64| ((rx + 0.5) * 40.0 / 26.0 - 0.5) / 39.0;
    let row = |ry: f64| ((ry + 0.5) * 30.0 / 20.0 - 0.5) / 29.0;
    for (y, x) in [(8usize, 8usize), (4, 11)] {
        assert!((at(&v.enhancer, 16, 0, y, x) as f64 - col(x as f64 + 5.0)).abs() < 0.02);
        assert!((at(&v.enhancer, 16, 1, y, x) as f64 - row(y as f64 + 2.0)).abs() < 0.02);
    }
    let bad = Augment::eval(10, 16);
    assert!(bad.validate().is_err());
}

fn synthetic(n: usize) -> ArraySource {
    let mut rng = Stream::new(1234);
    let (w, h) = (20u32, 16u32);
    let pixels: Vec<u8> = (0..n * (w * h * 3) as usize).map(|_| rng.next_u32() as u8).collect();
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();
    ArraySource::new("synthetic", w, h, 3, false, pixels, Some(labels)).unwrap()
}

fn take(loader: &mut Loader, k: usize) -> Vec<Batch> {
    (0..k).map(|_| loader.next_batch().unwrap()).collect()
}

#[test]
fn loader_is_deterministic_across_thread_counts() {
    let src = synthetic(37);
    let cfg = |seed: u64, workers: usize| LoaderConfig {
        workers,
        prefetch: 3,
        ..LoaderConfig::train(5, seed, Augment::pretrain(12, 6))
    };
    let mut one = Loader::new(src.clone(), cfg(7, 1)).unwrap();
    assert_eq!(one.steps_per_epoch(), 7); // 37 / 5, the short batch dropped
    let a = take(&mut one, 16);
    let mut four = Loader::new(src.clone(), cfg(7, 4)).unwrap();
    let b = take(&mut four, 16);
    assert_eq!(a, b);
    assert_eq!(one.epoch(), 2);
    for (s, batch) in a.iter().enumerate() {
        assert_eq!(batch.step, s as u64);
        assert_eq!(batch.epoch, s as u64 / 7);
        assert_eq!(batch.len(), 5);
        assert_eq!(batch.enhancer_shape(), [5, 3, 12, 12]);
        assert_eq!(batch.tokenizer.len(), 5 * 3 * 6 * 6);
        let labels = batch.labels.as_ref().unwrap();
        assert_eq!(labels, &batch.indices.iter().map(|&i| i as u32 % 10).collect::<Vec<_>>());
        assert!(batch.enhancer.iter().chain(&batch.tokenizer).all(|v| (0.0..=1.0).contains(v)));
    }
    // Within an epoch no image repeats; epochs are ordered differently.
    let epoch0: Vec<usize> = a[..7].iter().flat_map(|b| b.indices.clone()).collect();
    let mut sorted = epoch0.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 35);
    let epoch1: Vec<usize> = a[7..14].iter().flat_map(|b| b.indices.clone()).collect();
    assert_ne!(epoch0, epoch1);
    // Another seed, other batches.
    let mut other = Loader::new(src.clone(), cfg(8, 4)).unwrap();
    let c = take(&mut other, 2);
    assert_ne!(c[0].indices, a[0].indices);
    assert_ne!(c[0].enhancer, a[0].enhancer);
    // Resuming: skip_to(k) gives what iterating k batches gives, fresh or mid-way.
    let mut resumed = Loader::new(src.clone(), cfg(7, 2)).unwrap();
    resumed.skip_to(9);
    assert_eq!(resumed.step(), 9);
    assert_eq!(take(&mut resumed, 3), a[9..12]);
    resumed.skip_to(2);
    assert_eq!(resumed.next().unwrap().unwrap(), a[2]);
    assert_eq!(one.batch_at(13).unwrap(), a[13]);
}

#[test]
fn eval_loader_covers_every_image_in_order() {
    let mut l = Loader::new(synthetic(12), LoaderConfig::eval(5, Augment::resize(20))).unwrap();
    assert_eq!(l.steps_per_epoch(), 3);
    let b = take(&mut l, 4);
    assert_eq!(b[0].indices, [0, 1, 2, 3, 4]);
    assert_eq!(b[2].indices, [10, 11]);
    assert_eq!(b[2].enhancer.len(), 2 * 3 * 20 * 20);
    assert_eq!(b[2].tokenizer_shape(), None);
    assert_eq!((b[3].epoch, b[3].indices.clone()), (1, vec![0, 1, 2, 3, 4]));
    // Fewer images than a batch with drop_last, or a zero batch size: errors.
    assert!(Loader::new(synthetic(3), LoaderConfig::train(4, 0, Augment::resize(8))).is_err());
    assert!(Loader::new(synthetic(3), LoaderConfig::train(0, 0, Augment::resize(8))).is_err());
}

#[test]
fn permutation_is_a_permutation() {
    let p = epoch_permutation(5, 3, 1000, true);
    let mut s = p.clone();
    s.sort();
    assert_eq!(s, (0..1000).collect::<Vec<u32>>());
    assert_eq!(p, epoch_permutation(5, 3, 1000, true));
    assert_ne!(p, epoch_permutation(5, 4, 1000, true));
    assert_eq!(epoch_permutation(5, 3, 4, false), [0, 1, 2, 3]);
}

#[test]
fn fashion_mnist_if_installed() {
    let dir = Path::new(FASHION_MNIST_DIR);
    if !dir.exists() {
        let msg = format!("{FASHION_MNIST_DIR} is absent (apt-get install dataset-fashion-mnist)");
        assert!(std::env::var_os("CIM_REQUIRE_DATA").is_none(), "{msg}");
        println!("skipped: {msg}");
        return;
    }
    let train = Dataset::open(dir, Split::Train).unwrap();
    assert_eq!(train.format(), Format::Idx);
    assert_eq!(train.len(), 60_000);
    assert_eq!(train.num_classes(), Some(10));
    let s = train.get(0).unwrap();
    assert_eq!(s.image.dimensions(), (28, 28));
    // The first training image is an ankle boot (class 9).
    assert_eq!(s.label, Some(9));
    assert!(s.image.pixels().any(|p| p.0[0] > 200));
    assert!(s.image.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
    let test = Dataset::open(dir, Split::Test).unwrap();
    assert_eq!(test.len(), 10_000);
    // 28-px images resized to 32 for the model.
    let mut l = Loader::new(train, LoaderConfig::train(64, 1, Augment::resize(32))).unwrap();
    let b = l.next_batch().unwrap();
    assert_eq!(b.enhancer_shape(), [64, 3, 32, 32]);
    assert_eq!(b.labels.unwrap().len(), 64);
}

#[test]
fn labeled_idx_splits_and_missing_labels() {
    let dir = tempfile::tempdir().unwrap();
    write_idx_dir(dir.path(), "train", false);
    write_idx_dir(dir.path(), "t10k", true);
    let l = open_labeled(dir.path()).unwrap();
    assert_eq!((l.train.len(), l.test.len(), l.classes), (3, 3, 8));
    assert!(l.class_names.is_none());
    assert_eq!(l.test.get(2).unwrap().label, Some(7));
    // A test label beyond the training split's classes.
    fs::write(dir.path().join("t10k-labels-idx1-ubyte.gz"), gz(&idx_bytes(8, &[3], &[1, 9, 0]))).unwrap();
    let e = err_text(open_labeled(dir.path()));
    assert!(e.contains("labels up to 9") && e.contains("only 8 classes") && e.contains("do not match"), "{e}");
    // The test split's label file is missing.
    fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let e = err_text(open_labeled(dir.path()));
    assert!(e.contains("no labels file for the Test split") && e.contains("t10k-labels-idx1-ubyte"), "{e}");
    // One class only.
    fs::write(dir.path().join("train-labels-idx1-ubyte"), idx_bytes(8, &[3], &[0, 0, 0])).unwrap();
    fs::write(dir.path().join("t10k-labels-idx1-ubyte"), idx_bytes(8, &[3], &[0, 0, 0])).unwrap();
    let e = err_text(open_labeled(dir.path()));
    assert!(e.contains("at least 2"), "{e}");
}

#[test]
fn labeled_cifar10_reads_labels() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("data_batch_1.bin"), [cifar_record(&[3], 0), cifar_record(&[9], 1)].concat()).unwrap();
    fs::write(dir.path().join("test_batch.bin"), cifar_record(&[4], 2)).unwrap();
    let l = open_labeled(dir.path()).unwrap();
    assert_eq!((l.train.len(), l.test.len(), l.classes), (2, 1, 10));
    assert_eq!(l.train.get(1).unwrap().label, Some(9));
    // No test batch: the error names it.
    fs::remove_file(dir.path().join("test_batch.bin")).unwrap();
    let e = err_text(open_labeled(dir.path()));
    assert!(e.contains("test_batch.bin"), "{e}");
}

#[test]
fn labeled_image_folder_checks_classes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for (split, class, name) in
        [("train", "bag", "1"), ("train", "coat", "2"), ("val", "bag", "3"), ("val", "coat", "4")]
    {
        save(&position_image(6, 6), &root.join(format!("{split}/{class}/{name}.png")));
    }
    let l = open_labeled(root).unwrap();
    assert_eq!((l.train.len(), l.test.len(), l.classes), (2, 2, 2));
    assert_eq!(l.class_names.as_deref(), Some(&["bag".to_string(), "coat".to_string()][..]));
    assert_eq!(l.test.get(1).unwrap().label, Some(1));
    // A class missing from the test split would shift its labels: refused.
    save(&position_image(6, 6), &root.join("train/dress/5.png"));
    let e = err_text(open_labeled(root));
    assert!(e.contains("different classes") && e.contains("only in training [\"dress\"]"), "{e}");
    save(&position_image(6, 6), &root.join("val/dress/6.png"));
    assert_eq!(open_labeled(root).unwrap().classes, 3);
    // An image outside the class folders has no label.
    save(&position_image(6, 6), &root.join("val/loose.png"));
    let e = err_text(open_labeled(root));
    assert!(e.contains("outside the class sub-folders") && e.contains("loose.png"), "{e}");
    // No split folders: no held-out test split.
    let flat = tempfile::tempdir().unwrap();
    save(&position_image(6, 6), &flat.path().join("bag/1.png"));
    save(&position_image(6, 6), &flat.path().join("coat/2.png"));
    let e = err_text(open_labeled(flat.path()));
    assert!(e.contains("no train/ and val/"), "{e}");
    // Images but no class folders at all.
    let bare = tempfile::tempdir().unwrap();
    save(&position_image(6, 6), &bare.path().join("train/1.png"));
    save(&position_image(6, 6), &bare.path().join("val/2.png"));
    let e = err_text(open_labeled(bare.path()));
    assert!(e.contains("no class sub-folders"), "{e}");
}

#[test]
fn subset_is_a_seeded_sorted_sample() {
    let src: std::sync::Arc<dyn Source> = std::sync::Arc::new(synthetic(50));
    let a = Subset::sample(src.clone(), 20, 3);
    assert_eq!(a.len(), 20);
    assert!(a.indices().windows(2).all(|w| w[0] < w[1]));
    assert_eq!(a.indices(), Subset::sample(src.clone(), 20, 3).indices());
    assert_ne!(a.indices(), Subset::sample(src.clone(), 20, 4).indices());
    assert_eq!(a.get(5).unwrap(), src.get(a.indices()[5]).unwrap());
    assert!(a.get(20).is_err());
    assert_eq!(Subset::sample(src.clone(), 80, 3).len(), 50);
    assert!(Subset::new(src, vec![1, 50]).is_err());
}
