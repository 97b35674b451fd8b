//! The counter-based RNG gives the same stream for the same seed on every backend:
//! `rand_uniform` and `sample_categorical` agree exactly between `Cpu`,
//! `Reference<f32>` and `Reference<f64>`, follow `cim_core::rng` value for value,
//! change with the seed, and generating in chunks (advancing the offset) equals
//! generating in one go.

use cim_core::{ops, rng, Backend, Reference, Tensor};
use cim_cpu::Cpu;

const SEEDS: [u64; 4] = [0, 1, 0xDEAD_BEEF, u64::MAX];
/// Offsets including one where the counters wrap around 2⁶⁴.
const OFFSETS: [u64; 4] = [0, 3, 1 << 40, u64::MAX - 5];

fn uniform<B: Backend>(b: &B, n: usize, seed: u64, offset: u64) -> Vec<f64> {
    ops::rand_uniform(b, &[n], seed, offset).unwrap().to_f64(b).unwrap()
}

fn sample<B: Backend>(b: &B, logits: &[f64], classes: usize, temp: f64, seed: u64, offset: u64) -> Vec<u32> {
    let t = Tensor::from_f64(b, &[logits.len() / classes, classes], logits).unwrap();
    ops::sample_categorical(b, &t, temp, seed, offset).unwrap().to_vec(b).unwrap()
}

/// Logits exact in `f32`, in `[-4, 4)`.
fn logits(rows: usize, classes: usize) -> Vec<f64> {
    (0..rows * classes).map(|i| (rng::uniform(99, i as u64) as f64 - 0.5) * 8.0).collect()
}

#[test]
fn uniform_is_the_same_stream_on_every_backend() {
    let n = 40_000; // beyond one parallel chunk of the CPU backend
    for seed in SEEDS {
        for offset in OFFSETS {
            let want: Vec<f64> = (0..n as u64).map(|i| rng::uniform(seed, offset.wrapping_add(i)) as f64).collect();
            assert_eq!(uniform(&Cpu::new(), n, seed, offset), want, "cpu, seed {seed}, offset {offset}");
            assert_eq!(uniform(&Reference::<f32>::new(), n, seed, offset), want, "reference f32");
            assert_eq!(uniform(&Reference::<f64>::new(), n, seed, offset), want, "reference f64");
            assert!(want.iter().all(|v| (0.0..1.0).contains(v)));
        }
    }
}

#[test]
fn uniform_changes_with_the_seed() {
    let b = Cpu::new();
    let (a, c) = (uniform(&b, 1000, 7, 0), uniform(&b, 1000, 8, 0));
    assert!(a.iter().zip(&c).filter(|(x, y)| x == y).count() < 5, "seeds 7 and 8 give the same stream");
    assert_ne!(uniform(&b, 1000, 7, 0), uniform(&b, 1000, 7, 1), "the offset must shift the stream");
}

#[test]
fn uniform_in_chunks_equals_one_shot() {
    let b = Cpu::new();
    for offset in OFFSETS {
        let whole = uniform(&b, 10_000, 42, offset);
        let mut parts = Vec::new();
        let mut at = 0u64;
        for len in [1usize, 7, 4096, 5000, 896] {
            parts.extend(uniform(&b, len, 42, offset.wrapping_add(at)));
            at += len as u64;
        }
        assert_eq!(parts, whole, "offset {offset}");
    }
}

#[test]
fn sampling_is_the_same_on_every_backend() {
    for (rows, classes) in [(1, 1), (7, 3), (500, 10), (64, 1000)] {
        let x = logits(rows, classes);
        for seed in SEEDS {
            for offset in OFFSETS {
                for temp in [1.0, 0.5] {
                    let want = sample(&Reference::<f32>::new(), &x, classes, temp, seed, offset);
                    assert_eq!(sample(&Cpu::new(), &x, classes, temp, seed, offset), want, "cpu vs reference f32");
                    assert_eq!(sample(&Reference::<f64>::new(), &x, classes, temp, seed, offset), want, "f64 vs f32");
                }
            }
        }
    }
}

#[test]
fn sampling_follows_the_gumbel_max_definition() {
    let (rows, classes, seed, offset) = (300, 12, 5, 1000);
    let x = logits(rows, classes);
    let got = sample(&Cpu::new(), &x, classes, 1.0, seed, offset);
    for r in 0..rows {
        let score = |c: usize| x[r * classes + c] as f32 + rng::gumbel(seed, offset + (r * classes + c) as u64);
        let best = (0..classes).fold(0, |b, c| if score(c) > score(b) { c } else { b });
        assert_eq!(got[r] as usize, best, "row {r}");
    }
}

#[test]
fn sampling_changes_with_the_seed_and_chunks_equal_one_shot() {
    let b = Cpu::new();
    let (rows, classes) = (400, 8);
    let x = logits(rows, classes);
    let (a, c) = (sample(&b, &x, classes, 1.0, 1, 0), sample(&b, &x, classes, 1.0, 2, 0));
    assert!(a.iter().zip(&c).filter(|(p, q)| p != q).count() > rows / 4, "seeds 1 and 2 sample alike");
    // Rows [0, 150) at offset o, rows [150, 400) at offset o + 150·classes.
    for offset in OFFSETS {
        let whole = sample(&b, &x, classes, 1.0, 3, offset);
        let split = 150;
        let mut parts = sample(&b, &x[..split * classes], classes, 1.0, 3, offset);
        let next = offset.wrapping_add((split * classes) as u64);
        parts.extend(sample(&b, &x[split * classes..], classes, 1.0, 3, next));
        assert_eq!(parts, whole, "offset {offset}");
    }
}

#[test]
fn sampling_frequencies_follow_the_softmax() {
    // p = (1, 2, 3, 4) / 10; 40 000 draws: each frequency within 5 standard deviations.
    let (rows, classes) = (40_000usize, 4usize);
    let x: Vec<f64> = (0..rows).flat_map(|_| (1..=4).map(|k| (k as f64).ln() as f32 as f64)).collect();
    let got = sample(&Cpu::new(), &x, classes, 1.0, 11, 0);
    for k in 0..classes {
        let p = (k + 1) as f64 / 10.0;
        let freq = got.iter().filter(|&&c| c as usize == k).count() as f64 / rows as f64;
        let sd = (p * (1.0 - p) / rows as f64).sqrt();
        assert!((freq - p).abs() < 5.0 * sd, "class {k}: frequency {freq}, probability {p}");
    }
}
