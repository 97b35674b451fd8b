//! Counter-based random numbers (Philox4x32-10, Salmon et al. 2011), shared by every
//! backend: the value at counter `i` under a seed depends on nothing else, so CPU and
//! GPU kernels produce the same stream without sharing state, in any order.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

#[inline]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    ((p >> 32) as u32, p as u32)
}

/// One Philox4x32 block: ten rounds over a 128-bit counter under a 64-bit key.
#[inline]
pub fn philox4x32(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// The 32 random bits at counter `i` under `seed`.
#[inline]
pub fn bits(seed: u64, i: u64) -> u32 {
    let block = i / 4;
    let out = philox4x32([block as u32, (block >> 32) as u32, 0, 0], [seed as u32, (seed >> 32) as u32]);
    out[(i % 4) as usize]
}

/// A uniform `f32` in `[0, 1)` with 24 random bits.
#[inline]
pub fn uniform(seed: u64, i: u64) -> f32 {
    (bits(seed, i) >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// A uniform `f32` in the open interval `(0, 1)`.
#[inline]
pub fn uniform_open(seed: u64, i: u64) -> f32 {
    ((bits(seed, i) >> 8) as f32 + 0.5) * (1.0 / 16_777_216.0)
}

/// Standard Gumbel noise `-ln(-ln u)`, computed in `f32` so that every backend agrees.
#[inline]
pub fn gumbel(seed: u64, i: u64) -> f32 {
    -libm::logf(-libm::logf(uniform_open(seed, i)))
}

/// `out[j] = gumbel(seed, start + j)`, one Philox block per four counters instead of
/// one per counter (the same values: each counter's word is the one [`bits`] picks).
pub fn gumbel_fill(seed: u64, start: u64, out: &mut [f32]) {
    let key = [seed as u32, (seed >> 32) as u32];
    let mut block = u64::MAX;
    let mut words = [0u32; 4];
    for (j, o) in out.iter_mut().enumerate() {
        let i = start.wrapping_add(j as u64);
        if i / 4 != block || j == 0 {
            block = i / 4;
            words = philox4x32([block as u32, (block >> 32) as u32, 0, 0], key);
        }
        let u = ((words[(i % 4) as usize] >> 8) as f32 + 0.5) * (1.0 / 16_777_216.0);
        *o = -libm::logf(-libm::logf(u));
    }
}

/// A standard normal `f64` by Box–Muller from counters `2i` and `2i + 1` (host-side
/// initialization only; kernels use [`uniform`] and [`gumbel`]).
pub fn normal(seed: u64, i: u64) -> f64 {
    let u1 = uniform_open(seed, 2 * i) as f64;
    let u2 = uniform(seed, 2 * i + 1) as f64;
    libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(core::f64::consts::TAU * u2)
}

/// A normal with standard deviation `std` truncated to `[lo, hi]` (absolute bounds, as
/// timm's `trunc_normal_(std, a=-2, b=2)`), by rejection; draw `i` owns counters
/// `64i .. 64i + 63` of the normal stream.
pub fn trunc_normal(seed: u64, i: u64, std: f64, lo: f64, hi: f64) -> f64 {
    for attempt in 0..64 {
        let z = normal(seed, i.wrapping_mul(64).wrapping_add(attempt)) * std;
        if (lo..=hi).contains(&z) {
            return z;
        }
    }
    (lo + hi) / 2.0
}

/// A small stateful generator over the counter stream, for host-side work
/// (shuffling, masking on the host, initialization).
#[derive(Clone, Debug)]
pub struct Stream {
    seed: u64,
    counter: u64,
}

impl Stream {
    pub fn new(seed: u64) -> Self {
        Stream { seed, counter: 0 }
    }
    pub fn next_u32(&mut self) -> u32 {
        let v = bits(self.seed, self.counter);
        self.counter += 1;
        v
    }
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 * (1.0 / 16_777_216.0)
    }
    /// Uniform integer in `[0, n)` (Lemire's multiply-shift; `n > 0`).
    pub fn below(&mut self, n: u32) -> u32 {
        ((self.next_u32() as u64 * n as u64) >> 32) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gumbel_fill_equals_gumbel() {
        // Aligned and unaligned starts, and a start that wraps around the counter space.
        for (seed, start, n) in [(1u64, 0u64, 37usize), (7, 3, 50), (9, 1 << 40, 9), (3, u64::MAX - 5, 12)] {
            let mut out = alloc::vec![0f32; n];
            gumbel_fill(seed, start, &mut out);
            for (j, &g) in out.iter().enumerate() {
                assert_eq!(g.to_bits(), gumbel(seed, start.wrapping_add(j as u64)).to_bits(), "{seed} {start} {j}");
            }
        }
    }

    #[test]
    fn philox_known_answer() {
        // Known-answer vectors of Random123 (kat_vectors, philox4x32_10).
        assert_eq!(philox4x32([0, 0, 0, 0], [0, 0]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
        assert_eq!(philox4x32([0xffffffff; 4], [0xffffffff; 2]), [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
        assert_eq!(
            philox4x32([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn uniform_moments() {
        let n = 100_000u64;
        let mean: f64 = (0..n).map(|i| uniform(7, i) as f64).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        let g: f64 = (0..n).map(|i| gumbel(7, i) as f64).sum::<f64>() / n as f64;
        // Mean of the standard Gumbel is the Euler–Mascheroni constant.
        assert!((g - 0.5772).abs() < 0.02, "gumbel mean {g}");
    }
}
