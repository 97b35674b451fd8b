//! Picture tests on the reference backend with a tiny random-weight model: 16-px
//! enhancer view, patch 4, a 16-code dVAE on an 8-px tokenizer view.

use super::grid::{grid_size, HEADER_HEIGHT, MARGIN};
use super::*;
use crate::checkpoint;
use crate::cim::target::{denormalize_image, normalize_image, respix_inverse, respix_target};
use crate::cim::{CimModel, RespixNorm, TARGET_EPS};
use crate::data::ArraySource;
use crate::params::ParamStore;
use crate::reference::Reference;
use crate::rng::Stream;
use crate::tokenizer::Tokenizer;
use crate::train::{EnhancerSpec, MetricsRecord, PretrainConfig, RunDir, TokenizerSpec};

type R = Reference<f32>;

fn tiny(objective: &str) -> PretrainConfig {
    PretrainConfig {
        image_size: 16,
        tokenizer_image_size: 8,
        enhancer: EnhancerSpec { width: 16, depth: 2, heads: 2, mlp_ratio: 2.0, ..EnhancerSpec::default() },
        tokenizer_model: TokenizerSpec { group_count: 2, n_hid: 8, n_blk_per_group: 1, vocab_size: 16, n_init: 8 },
        generator_depth: 2,
        objective: objective.into(),
        ..PretrainConfig::default()
    }
}

/// 12 grey 20×20 images with some structure.
fn source() -> ArraySource {
    let mut s = Stream::new(3);
    let mut px = Vec::new();
    for _ in 0..12 {
        let (cx, cy) = (s.next_f32() * 20.0, s.next_f32() * 20.0);
        for y in 0..20 {
            for x in 0..20 {
                let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
                px.push(if d < 7.0 { 220 } else { 10 });
            }
        }
    }
    ArraySource::new("synthetic", 20, 20, 1, false, px, None).unwrap()
}

fn model(b: &R, objective: &str) -> (CimModel, ParamStore<R>, ParamStore<R>, ImageBatch<R>, Vec<u8>) {
    let cfg = tiny(objective).cim().unwrap();
    let (m, store, tok) = CimModel::build(cfg, b, 1).unwrap();
    let batch = load_images(b, &source(), 2, 3, 16, 8).unwrap();
    let masks = fixed_masks(&cfg, 0, batch.len).unwrap();
    (m, store, tok, batch, masks)
}

fn png_bytes(img: &RgbImage) -> Vec<u8> {
    let mut v = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut v), image::ImageFormat::Png).unwrap();
    v
}

/// Pixels darker than light grey inside `y0..y1` (text or content).
fn dark_pixels(img: &RgbImage, y0: u32, y1: u32) -> usize {
    (y0..y1.min(img.height()))
        .flat_map(|y| (0..img.width()).map(move |x| (x, y)))
        .filter(|&(x, y)| img.get_pixel(x, y).0[0] < 128)
        .count()
}

#[test]
fn grid_has_the_documented_size_labels_and_sharp_upscaling() {
    let t = RgbImage::from_fn(32, 32, |x, y| if (x + y) % 2 == 0 { Rgb([0, 0, 0]) } else { Rgb([255, 255, 255]) });
    let mut g = Grid::new(["original", "masked", "a rather long label that must shrink"]);
    for _ in 0..2 {
        g.push_row(vec![t.clone(), t.clone(), t.clone()]).unwrap();
    }
    assert!(g.push_row(vec![t.clone()]).is_err());
    assert_eq!(g.effective_scale(), 4);
    let img = g.render().unwrap();
    assert_eq!(img.dimensions(), grid_size(3, 2, 128, 128, false));
    assert_eq!(img.dimensions(), (2 * 6 + 3 * 128 + 2 * 4, 2 * 6 + 20 + 2 * 128 + 4));
    // The labels are drawn (dark pixels in the header band).
    assert!(dark_pixels(&img, MARGIN, MARGIN + HEADER_HEIGHT) > 50);
    // Nearest-neighbour 4×: each source pixel is a 4×4 block.
    let (x0, y0) = (MARGIN, MARGIN + HEADER_HEIGHT);
    assert_eq!(img.get_pixel(x0, y0), img.get_pixel(x0 + 3, y0 + 3));
    assert_ne!(img.get_pixel(x0, y0), img.get_pixel(x0 + 4, y0));
    let titled = g.clone().with_title("title").render().unwrap();
    assert_eq!(titled.height(), img.height() + grid::TITLE_HEIGHT);
    assert!(Grid::new(["a"]).render().is_err(), "an empty grid is an error");
}

#[test]
fn respix_inverse_undoes_the_target() {
    let b = R::new();
    let batch = load_images(&b, &source(), 0, 2, 16, 8).unwrap();
    let mean = [0.485, 0.456, 0.406];
    let std = [0.229, 0.224, 0.225];
    let x = normalize_image(&b, &batch.enhancer, &mean, &std).unwrap();
    for norm in [RespixNorm::SlidingWindow { k: 8 }, RespixNorm::Patch { p: 4 }, RespixNorm::None] {
        let t = respix_target(&b, &x, norm, TARGET_EPS).unwrap();
        let back = denormalize_image(&b, &respix_inverse(&b, &t, &x, norm, TARGET_EPS).unwrap(), &mean, &std).unwrap();
        let (a, c) = (back.to_f64(&b).unwrap(), batch.enhancer.to_f64(&b).unwrap());
        let err = a.iter().zip(&c).map(|(a, c)| (a - c).abs()).fold(0.0, f64::max);
        assert!(err < 1e-3, "{norm:?}: max error {err}");
    }
    let wrong = Tensor::<R>::zeros(&b, &[1, 3, 16, 16]).unwrap();
    assert!(respix_inverse(&b, &wrong, &x, RespixNorm::PAPER, TARGET_EPS).is_err());
}

#[test]
fn corrupt_grid_is_deterministic_with_masked_patches_grey() {
    let b = R::new();
    let (m, store, tok, batch, masks) = model(&b, "respix");
    let (g, st) = corrupt_grid(&b, &m, &store, &tok, &batch.input(&masks, 7, 0), 2).unwrap();
    assert_eq!(g.columns, ["original", "masked", "dVAE recon", "sample 1", "sample 2"]);
    assert_eq!(g.rows.len(), 3);
    assert!(st.masked_frac > 0.3 && st.masked_frac < 0.7, "{st:?}");
    assert!(st.replaced_frac <= st.masked_frac, "{st:?}");
    let img = g.render().unwrap();
    assert_eq!(img.dimensions(), grid_size(5, 3, 128, 128, false));
    // A masked patch of the first image is mid-grey in the "masked" tile.
    let first = masks.iter().position(|&v| v != 0).unwrap();
    let (gy, gx) = (first / 4, first % 4);
    assert_eq!(g.rows[0][1].get_pixel(gx as u32 * 4 + 1, gy as u32 * 4 + 1).0, [128, 128, 128]);
    let (again, _) = corrupt_grid(&b, &m, &store, &tok, &batch.input(&masks, 7, 0), 2).unwrap();
    assert_eq!(png_bytes(&again.render().unwrap()), png_bytes(&img), "same seed, same picture");
}

#[test]
fn enhance_grid_for_both_objectives() {
    let b = R::new();
    for (objective, cols) in [("respix", 6), ("revdet", 5)] {
        let (m, store, tok, batch, masks) = model(&b, objective);
        let (g, st) = enhance_grid(&b, &m, &store, &tok, &batch.input(&masks, 0, 0)).unwrap();
        assert_eq!(g.columns.len(), cols, "{objective}");
        assert_eq!(g.render().unwrap().dimensions(), grid_size(cols as u32, 3, 128, 128, false));
        match st {
            EnhanceStats::Respix { loss } => assert!(loss.is_finite() && objective == "respix"),
            EnhanceStats::Revdet { accuracy, .. } => assert!((0.0..=1.0).contains(&accuracy) && objective == "revdet"),
        }
    }
}

#[test]
fn templates_grid_shows_three_columns_and_checks_sizes() {
    let b = R::new();
    let batch = load_images(&b, &source(), 0, 4, 32, 32).unwrap();
    let (mean, std) = ([0.5; 3], [0.25; 3]);
    let g = templates_grid(&b, &batch.enhancer, 8, 8, &mean, &std).unwrap();
    assert_eq!(g.columns, ["original", "patch 8×8", "sliding 8×8"]);
    assert_eq!(g.render().unwrap().dimensions(), grid_size(3, 4, 128, 128, false));
    // The flat background normalizes to 0, mid-grey.
    assert_eq!(g.rows[0][2].get_pixel(0, 0).0, [128, 128, 128]);
    assert!(templates_grid(&b, &batch.enhancer, 5, 8, &mean, &std).is_err());
    assert!(templates_grid(&b, &batch.enhancer, 8, 0, &mean, &std).is_err());
}

#[test]
fn tokenizer_picture_and_file_loading() {
    let b = R::new();
    let cfg = tiny("respix").tokenizer_model.dvae();
    let tok = Tokenizer::<R>::new(&b, cfg, 8, 4).unwrap();
    let shown = load_images(&b, &source(), 0, 5, 8, 8).unwrap();
    let usage = load_images(&b, &source(), 0, 12, 8, 8).unwrap();
    let p = tokenizer_picture(&b, &tok, &shown.enhancer, &usage.enhancer, 2, 0, None).unwrap();
    assert_eq!(p.grid_size, grid_size(4, 3, 128, 128, false));
    assert_eq!(p.image.dimensions(), (p.grid_size.0.max(480), p.grid_size.1 + 4 + 300));
    assert_eq!(p.stats.images, 12);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tok.safetensors");
    crate::tokenizer::save_tokenizer(&file, &tok, &b, &Default::default()).unwrap();
    let back = tokenizer_from_file::<R>(&b, &file, None, None).unwrap();
    assert_eq!((back.cfg, back.image_size), (cfg, 8));
    let plain = dir.path().join("plain.safetensors");
    checkpoint::save(&plain, &tok.store, &b, "", &Default::default()).unwrap();
    let e = tokenizer_from_file::<R>(&b, &plain, None, None).err().unwrap().to_string();
    assert!(e.contains("--arch"), "{e}");
    let e = tokenizer_from_file::<R>(&b, &plain, Some("dvae_small"), Some(16)).err().unwrap().to_string();
    assert!(e.contains("does not fit"), "{e}");
}

#[test]
fn curves_and_histogram_are_drawn() {
    let rec = |step: u64, f: f64| MetricsRecord {
        step,
        epoch: 0,
        loss: 10.0 * f,
        mim_loss: 5.0 * f,
        mim_acc: 1.0 - f,
        enh_loss: f,
        replaced_frac: 0.4 * f,
        lr: 1e-4 * f,
        grad_norm: 1.0,
        images_per_s: 1.0,
    };
    let a: Vec<_> = (1..=20).map(|s| rec(s * 10, 1.0 / s as f64)).collect();
    let c: Vec<_> = (1..=5).map(|s| rec(s * 10, 0.5 / s as f64)).collect();
    let img = plot_runs(&[("a".into(), a), ("b".into(), c.clone())], 900, 500).unwrap();
    assert_eq!(img.dimensions(), (900, 500));
    assert!(dark_pixels(&img, 0, 500) > 1000, "axes, ticks and text are drawn");
    let one = plot_runs(&[("one point".into(), c[..1].to_vec())], 600, 400).unwrap();
    assert_eq!(one.dimensions(), (600, 400));
    assert!(plot_runs(&[("none".into(), vec![])], 600, 400).is_err());
    assert!(plot_runs(&[("a".into(), c)], 10, 10).is_err());
    let h = plot::usage_histogram(&[5, 0, 3, 9], "caption", 480, 300).unwrap();
    assert_eq!(h.dimensions(), (480, 300));
}

#[test]
fn load_run_errors_are_clear() {
    let b = R::new();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let e = load_run::<R>(&b, &missing, None).err().unwrap().to_string();
    assert!(e.contains("does not exist"), "{e}");
    let run = RunDir::new(dir.path().join("run"));
    run.create().unwrap();
    run.write_config(&tiny("respix")).unwrap();
    let e = load_run::<R>(&b, &run.root, None).err().unwrap().to_string();
    assert!(e.contains("has no checkpoints"), "{e}");
    let stray = dir.path().join("other.safetensors");
    let (_, _, tok) = CimModel::build(tiny("respix").cim().unwrap(), &b, 0).unwrap();
    checkpoint::save(&stray, &tok, &b, "", &Default::default()).unwrap();
    let e = load_run::<R>(&b, &stray, None).err().unwrap().to_string();
    assert!(e.contains("not a cim pre-training checkpoint"), "{e}");
}

#[test]
fn save_png_writes_a_decodable_file_and_refuses_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let img = RgbImage::from_pixel(7, 5, Rgb([1, 2, 3]));
    let p = dir.path().join("sub/x.png");
    save_png(&p, &img).unwrap();
    let back = image::open(&p).unwrap().to_rgb8();
    assert_eq!(back, img);
    // A grey picture is stored with one channel and reads back the same.
    let grey = RgbImage::from_fn(9, 4, |x, y| Rgb([(x * 20 + y) as u8; 3]));
    save_png(&p, &grey).unwrap();
    assert_eq!(image::open(&p).unwrap().color(), image::ColorType::L8);
    assert_eq!(image::open(&p).unwrap().to_rgb8(), grey);
    let e = save_png(dir.path(), &img).unwrap_err().to_string();
    assert!(e.contains("folder"), "{e}");
}
