//! Random problem ingredients: proptest strategies for shapes and geometry (these
//! shrink towards small, simple problems), and [`Gen`], a seeded generator for the
//! values (a problem is "geometry + seed", so a failing case is reported with its
//! shrunk geometry and reproduces exactly from its seed).

use cim_core::rng::Stream;
use proptest::prelude::*;

/// A dimension in `1..=9`, size 1 more often than uniform (edge cases: single rows,
/// single pixels, degenerate batches).
pub fn dim() -> impl Strategy<Value = usize> + Clone {
    prop_oneof![1 => Just(1usize), 4 => 1usize..=9]
}

/// A dimension in `1..=max`, size 1 more often.
pub fn dim_to(max: usize) -> impl Strategy<Value = usize> + Clone {
    prop_oneof![1 => Just(1usize), 4 => 1usize..=max]
}

/// A dimension: usually from [`dim`], one time in eight from `big` — sizes that reach a
/// backend's blocked, vectorized and multi-threaded paths.
pub fn dim_or(big: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = usize> + Clone {
    prop_oneof![1 => Just(1usize), 6 => 1usize..=9, 1 => big]
}

/// A shape of rank `1..=max_rank` with dims from [`dim`] (at most 9⁴ elements).
pub fn small_shape(max_rank: usize) -> impl Strategy<Value = Vec<usize>> + Clone {
    proptest::collection::vec(dim(), 1..=max_rank)
}

/// A shape of rank `1..=max_rank` with dims from [`dim`]; one time in eight a large
/// `[a, b]` instead (up to 180 000 elements, beyond any parallel chunk size).
pub fn shape(max_rank: usize) -> impl Strategy<Value = Vec<usize>> + Clone {
    prop_oneof![
        7 => small_shape(max_rank),
        1 => (dim(), 1000usize..=20000).prop_map(|(a, b)| vec![a, b]),
    ]
}

/// Combine a geometry strategy with a seed and build the problem from both.
pub fn with_data<S, P>(params: S, build: fn(S::Value, &mut Gen) -> P) -> impl Strategy<Value = P>
where
    S: Strategy,
    P: std::fmt::Debug,
{
    (params, any::<u64>()).prop_map(move |(p, seed)| build(p, &mut Gen::new(seed)))
}

/// Geometry of a 2-D convolution: `x: [n, c_in, h, w]`, `w: [c_out, c_in, kh, kw]`,
/// stride up to 3, padding up to `k − 1`, the input at least as large as the kernel once
/// padded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub pad: (usize, usize),
}

impl ConvGeom {
    pub fn x_shape(&self) -> [usize; 4] {
        [self.n, self.c_in, self.h, self.w]
    }
    pub fn w_shape(&self) -> [usize; 4] {
        [self.c_out, self.c_in, self.kh, self.kw]
    }
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad.0 - self.kh) / self.stride.0 + 1
    }
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad.1 - self.kw) / self.stride.1 + 1
    }
    pub fn y_shape(&self) -> [usize; 4] {
        [self.n, self.c_out, self.out_h(), self.out_w()]
    }
}

/// Convolution geometry with channels up to `max_c`, kernels up to `max_k` and images up
/// to `max_hw` a side (small sizes, 1 more often).
pub fn conv_geom(max_c: usize, max_k: usize, max_hw: usize) -> impl Strategy<Value = ConvGeom> + Clone {
    conv_geom_from(dim_to(2), dim_to(max_c), max_k, dim_to(max_hw))
}

/// Convolution geometry from strategies for the batch, the channel counts and the image
/// sides.
pub fn conv_geom_from<S, C, H>(n: S, c: C, max_k: usize, hw: H) -> impl Strategy<Value = ConvGeom> + Clone
where
    S: Strategy<Value = usize> + Clone,
    C: Strategy<Value = usize> + Clone,
    H: Strategy<Value = usize> + Clone,
{
    let side = (1usize..=max_k, 0usize..max_k, hw, 1usize..=3);
    (n, c.clone(), c, side.clone(), side).prop_map(|(n, c_in, c_out, (kh, ph, h, sh), (kw, pw, w, sw))| {
        let (ph, pw) = (ph.min(kh - 1), pw.min(kw - 1));
        ConvGeom {
            n,
            c_in,
            c_out,
            kh,
            kw,
            h: h.max(kh.saturating_sub(2 * ph)),
            w: w.max(kw.saturating_sub(2 * pw)),
            stride: (sh, sw),
            pad: (ph, pw),
        }
    })
}

/// Geometry of a 2-D pooling window over `x: [n, c, h, w]`: kernel `1..=5`, stride up to
/// 3, padding up to `k / 2`, the input at least as large as the window once padded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: (usize, usize),
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    pub count_include_pad: bool,
}

impl PoolGeom {
    pub fn x_shape(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }
    pub fn y_shape(&self) -> [usize; 4] {
        let oh = (self.h + 2 * self.pad.0 - self.k.0) / self.stride.0 + 1;
        let ow = (self.w + 2 * self.pad.1 - self.k.1) / self.stride.1 + 1;
        [self.n, self.c, oh, ow]
    }
}

/// Pooling geometry with up to `max_c` channels and images up to `max_hw` a side (small
/// sizes, 1 more often).
pub fn pool_geom(max_c: usize, max_hw: usize) -> impl Strategy<Value = PoolGeom> + Clone {
    pool_geom_from(dim_to(2), dim_to(max_c), dim_to(max_hw))
}

/// Pooling geometry from strategies for the batch, the channels and the image sides.
pub fn pool_geom_from<S, C, H>(n: S, c: C, hw: H) -> impl Strategy<Value = PoolGeom> + Clone
where
    S: Strategy<Value = usize> + Clone,
    C: Strategy<Value = usize> + Clone,
    H: Strategy<Value = usize> + Clone,
{
    let side = (1usize..=5, 0usize..=2, hw, 1usize..=3);
    (n, c, side.clone(), side, any::<bool>()).prop_map(|(n, c, (kh, ph, h, sh), (kw, pw, w, sw), count_include_pad)| {
        let (ph, pw) = (ph.min(kh / 2), pw.min(kw / 2));
        PoolGeom {
            n,
            c,
            h: h.max(kh - 2 * ph),
            w: w.max(kw - 2 * pw),
            k: (kh, kw),
            stride: (sh, sw),
            pad: (ph, pw),
            count_include_pad,
        }
    })
}

/// Seeded values for a problem (the counter-based stream of `cim_core::rng`). Every
/// value is rounded to `f32`, so the backend under test and the `f64` oracle see the
/// same numbers.
#[derive(Clone, Debug)]
pub struct Gen(Stream);

/// Round to the nearest `f32`.
pub fn f32r(v: f64) -> f64 {
    v as f32 as f64
}

impl Gen {
    pub fn new(seed: u64) -> Self {
        Gen(Stream::new(seed))
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        self.0.next_f32() as f64
    }
    /// Uniform in `[lo, hi)`, rounded to `f32`.
    pub fn f(&mut self, lo: f64, hi: f64) -> f64 {
        f32r(lo + (hi - lo) * self.unit())
    }
    /// `n` values uniform in `[lo, hi)`.
    pub fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.f(lo, hi)).collect()
    }
    /// `n` values uniform in `[-2, 2)`, the default input distribution.
    pub fn std(&mut self, n: usize) -> Vec<f64> {
        self.vec(n, -2.0, 2.0)
    }
    /// `n` values with `gap ≤ |v| < hi` and a random sign (away from a kink or pole at 0).
    pub fn away(&mut self, n: usize, gap: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.f(gap, hi) * if self.bool() { 1.0 } else { -1.0 }).collect()
    }
    /// `n` distinct values spread evenly over `[lo, hi]` in random order (no ties for
    /// argmax and max pooling; neighbours at least `(hi − lo) / n` apart).
    pub fn distinct(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        let mut v: Vec<f64> = (0..n).map(|i| f32r(lo + (hi - lo) * (i as f64 + 0.5) / n as f64)).collect();
        self.shuffle(&mut v);
        v
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
    /// Uniform integer in `[0, n)`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0.below(n as u32) as usize
    }
    /// Uniform integer in `[lo, hi]`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
    /// `n` indices in `[0, bound)` (repeats likely when `n` is large against `bound`).
    pub fn ids(&mut self, n: usize, bound: usize) -> Vec<u32> {
        (0..n).map(|_| self.below(bound) as u32).collect()
    }
    pub fn bool(&mut self) -> bool {
        self.0.next_u32() & 1 == 1
    }
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
    pub fn u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    pub fn u64(&mut self) -> u64 {
        (self.0.next_u32() as u64) << 32 | self.0.next_u32() as u64
    }
}

/// The largest magnitude in `v` (0 when empty).
pub fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// Put `-a` and `+a` at the first two positions of each normalization group so its
/// variance is bounded below (well-conditioned `1/σ` for batch and layer norm).
/// `index(g, j)` is the flat index of element `j` of group `g`.
pub fn anchor_groups(x: &mut [f64], groups: usize, size: usize, a: f64, index: impl Fn(usize, usize) -> usize) {
    if size < 2 {
        return;
    }
    for g in 0..groups {
        x[index(g, 0)] = -a;
        x[index(g, 1)] = a;
    }
}

/// The flat index of element `j` of channel `c` in `[n, c, hw]` (batch-norm groups).
pub fn nchw_channel_index(c_count: usize, hw: usize) -> impl Fn(usize, usize) -> usize {
    move |c, j| ((j / hw) * c_count + c) * hw + j % hw
}
