//! The caching allocator's bookkeeping, kept free of CUDA so that it is tested on the
//! host: blocks are rounded up to size classes, and a freed block goes to its class's
//! free list instead of back to the driver, so that a training step after the first
//! allocates nothing from CUDA.

use std::collections::HashMap;

/// The smallest block, and the granularity of small classes (bytes).
pub const MIN_BLOCK: usize = 512;

/// The size class (bytes actually reserved) of a request of `bytes`: 0 for 0; else
/// rounded up to a multiple of a sixteenth of the next power of two (at least
/// [`MIN_BLOCK`]), so at most 12.5 % of a large block and 511 bytes of a small one
/// are wasted (a request is over half its power of two), and there are few classes to keep lists of.
pub fn size_class(bytes: usize) -> usize {
    if bytes == 0 {
        return 0;
    }
    let hi = bytes.checked_next_power_of_two().unwrap_or(usize::MAX / 2 + 1);
    let step = (hi / 16).max(MIN_BLOCK);
    bytes.div_ceil(step).saturating_mul(step)
}

/// Free lists by size class, plus counters.
#[derive(Debug, Default)]
pub struct FreeLists {
    lists: HashMap<usize, Vec<u64>>,
    /// Bytes held in the free lists.
    pub cached_bytes: usize,
    /// Bytes in blocks handed out and not yet returned.
    pub live_bytes: usize,
    /// Requests served from a free list.
    pub hits: u64,
    /// Requests that needed a new block from the driver.
    pub misses: u64,
}

impl FreeLists {
    pub fn new() -> Self {
        Self::default()
    }

    /// A cached block of exactly `class` bytes, if any (counts a hit or a miss).
    pub fn take(&mut self, class: usize) -> Option<u64> {
        match self.lists.get_mut(&class).and_then(Vec::pop) {
            Some(ptr) => {
                self.hits += 1;
                self.cached_bytes -= class;
                self.live_bytes += class;
                Some(ptr)
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// Record a new block of `class` bytes from the driver as handed out.
    pub fn note_new(&mut self, class: usize) {
        self.live_bytes += class;
    }

    /// Return a block of `class` bytes for reuse.
    pub fn give(&mut self, class: usize, ptr: u64) {
        self.live_bytes = self.live_bytes.saturating_sub(class);
        self.cached_bytes += class;
        self.lists.entry(class).or_default().push(ptr);
    }

    /// Empty every list, returning the blocks (to be freed by the driver).
    pub fn drain(&mut self) -> Vec<(u64, usize)> {
        let mut out = Vec::new();
        for (class, ptrs) in self.lists.drain() {
            out.extend(ptrs.into_iter().map(|p| (p, class)));
        }
        self.cached_bytes = 0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_requests_with_bounded_waste() {
        assert_eq!(size_class(0), 0);
        assert_eq!(size_class(1), MIN_BLOCK);
        assert_eq!(size_class(512), 512);
        assert_eq!(size_class(513), 1024);
        let mut prev = 0;
        for bytes in (1..200_000).step_by(37).chain([1 << 20, (1 << 20) + 1, 3 << 30, (1 << 33) + 12345]) {
            let c = size_class(bytes);
            assert!(c >= bytes, "{bytes} -> {c}");
            assert_eq!(c % MIN_BLOCK, 0);
            assert!(c as f64 <= bytes as f64 * 1.125 + MIN_BLOCK as f64, "{bytes} -> {c}");
            assert_eq!(size_class(c), c, "classes are fixed points");
            assert!(c >= prev, "monotone");
            prev = c;
        }
    }

    #[test]
    fn free_lists_reuse_blocks_of_the_same_class() {
        let mut f = FreeLists::new();
        assert_eq!(f.take(1024), None);
        f.note_new(1024);
        assert_eq!(f.live_bytes, 1024);
        f.give(1024, 0xA000);
        assert_eq!((f.live_bytes, f.cached_bytes), (0, 1024));
        assert_eq!(f.take(2048), None, "another class does not match");
        assert_eq!(f.take(1024), Some(0xA000));
        assert_eq!((f.live_bytes, f.cached_bytes, f.hits, f.misses), (1024, 0, 1, 2));
        f.give(1024, 0xA000);
        f.give(4096, 0xB000);
        let mut drained = f.drain();
        drained.sort();
        assert_eq!(drained, vec![(0xA000, 1024), (0xB000, 4096)]);
        assert_eq!(f.cached_bytes, 0);
        assert_eq!(f.take(1024), None);
    }

    #[test]
    fn steady_state_needs_no_new_blocks() {
        // Two "training steps" with the same allocation pattern: the second is all hits.
        let mut f = FreeLists::new();
        let sizes = [100usize, 5000, 5000, 1 << 20, 77];
        let mut next = 0x1000u64;
        for step in 0..2 {
            let mut held = Vec::new();
            for &s in &sizes {
                let c = size_class(s);
                let p = f.take(c).unwrap_or_else(|| {
                    assert_eq!(step, 0, "a miss after the first step");
                    f.note_new(c);
                    next += c as u64;
                    next
                });
                held.push((c, p));
            }
            for (c, p) in held {
                f.give(c, p);
            }
        }
        assert_eq!(f.misses, sizes.len() as u64);
        assert_eq!(f.hits, sizes.len() as u64);
    }
}
