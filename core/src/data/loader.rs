//! The batch loader: batches of `N` samples assembled on worker threads, a bounded
//! prefetch queue, and determinism under a seed.
//!
//! - Step `s` is batch `s mod S` of epoch `s div S` (`S` = [`Loader::steps_per_epoch`]);
//!   the loader is an endless iterator over steps, across epochs.
//! - The epoch's order is a Fisher–Yates permutation drawn from `(seed, epoch)`; every
//!   augmentation draw of the sample in slot `i` of the permutation is drawn from
//!   `(seed, epoch, dataset index)`. Nothing depends on thread count or timing, so a
//!   batch is the same with 1 or 16 workers, and [`Loader::skip_to`] resumes exactly.
//! - An unreadable or corrupt image is skipped: the slot takes the next readable image
//!   in dataset order (`index + 1`, `index + 2`, ... wrapping) with the slot's own
//!   augmentation draws; the file and reason are kept in the [`LoaderReport`].

use crate::error::{Error, Result};
use crate::rng::Stream;
use std::collections::{BTreeMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use super::augment::Augment;
use super::source::{data_err, Sample, Source};

/// How the loader batches and transforms.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderConfig {
    /// Samples per batch, `N`.
    pub batch_size: usize,
    pub seed: u64,
    /// Shuffle each epoch (else dataset order).
    pub shuffle: bool,
    /// Drop the last, short batch of each epoch.
    pub drop_last: bool,
    /// Threads that assemble a batch (1: on the loader's own background thread).
    pub workers: usize,
    /// Finished batches waiting in the queue.
    pub prefetch: usize,
    pub augment: Augment,
}

fn default_workers() -> usize {
    thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(16)
}

impl LoaderConfig {
    /// Training: shuffled, last short batch dropped, one worker per core (at most 16),
    /// 2 batches prefetched.
    pub fn train(batch_size: usize, seed: u64, augment: Augment) -> Self {
        LoaderConfig {
            batch_size,
            seed,
            shuffle: true,
            drop_last: true,
            workers: default_workers(),
            prefetch: 2,
            augment,
        }
    }

    /// Evaluation: dataset order, every image (the last batch may be short).
    pub fn eval(batch_size: usize, augment: Augment) -> Self {
        LoaderConfig { shuffle: false, drop_last: false, ..LoaderConfig::train(batch_size, 0, augment) }
    }
}

/// One batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// The step (global batch number) and its epoch.
    pub step: u64,
    pub epoch: u64,
    /// `[n, 3, E, E]`, `f32` in `[0, 1]`.
    pub enhancer: Vec<f32>,
    pub enhancer_size: usize,
    /// `[n, 3, T, T]`, `f32` in `[0, 1]`; empty (and `tokenizer_size` 0) without a
    /// tokenizer view.
    pub tokenizer: Vec<f32>,
    pub tokenizer_size: usize,
    /// The classes, where every sample of the batch has one.
    pub labels: Option<Vec<u32>>,
    /// The dataset index of each sample (a skipped image's replacement where one was
    /// unreadable).
    pub indices: Vec<usize>,
}

impl Batch {
    /// The number of samples, `n`.
    pub fn len(&self) -> usize {
        self.indices.len()
    }
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
    /// `[n, 3, E, E]`.
    pub fn enhancer_shape(&self) -> [usize; 4] {
        [self.len(), 3, self.enhancer_size, self.enhancer_size]
    }
    /// `[n, 3, T, T]`, where there is a tokenizer view.
    pub fn tokenizer_shape(&self) -> Option<[usize; 4]> {
        (self.tokenizer_size > 0).then_some([self.len(), 3, self.tokenizer_size, self.tokenizer_size])
    }
}

/// The images the loader skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoaderReport {
    /// Each skipped file once, with the reason, sorted by path.
    pub skipped: Vec<(PathBuf, String)>,
    /// How many times a slot skipped an image (each epoch again; batches prefetched but
    /// not yet taken included).
    pub skip_count: u64,
}

#[derive(Default)]
struct ReportState {
    skipped: BTreeMap<PathBuf, String>,
    count: u64,
    bad: HashSet<usize>,
}

struct Shared {
    source: Arc<dyn Source>,
    cfg: LoaderConfig,
    steps_per_epoch: u64,
    report: Mutex<ReportState>,
}

struct Producer {
    rx: Receiver<Result<Batch>>,
    handle: JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl Producer {
    fn shutdown(self) {
        let Producer { rx, handle, stop } = self;
        stop.store(true, Ordering::Relaxed);
        drop(rx); // unblocks a full queue
        let _ = handle.join();
    }
}

/// The batch loader; an endless iterator of `Result<Batch>` (an error only where no
/// image of the data set can be read).
pub struct Loader {
    shared: Arc<Shared>,
    next_step: u64,
    producer: Option<Producer>,
}

const PERM_TAG: u64 = 0x7065_726d_7574_6521;
const SAMPLE_TAG: u64 = 0x6175_676d_656e_7421;

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The key of the stream for `(tag, epoch, index)` under `seed`.
fn key(seed: u64, tag: u64, epoch: u64, index: u64) -> u64 {
    seed ^ splitmix64(splitmix64(tag ^ splitmix64(epoch)) ^ index)
}

/// The random stream of sample `index`'s augmentation in `epoch`.
pub fn sample_stream(seed: u64, epoch: u64, index: usize) -> Stream {
    Stream::new(key(seed, SAMPLE_TAG, epoch, index as u64))
}

/// The order of `n` samples in `epoch`: a Fisher–Yates shuffle drawn from
/// `(seed, epoch)`, or `0..n` without `shuffle`.
pub fn epoch_permutation(seed: u64, epoch: u64, n: usize, shuffle: bool) -> Vec<u32> {
    let mut p: Vec<u32> = (0..n as u32).collect();
    if shuffle {
        let mut rng = Stream::new(key(seed, PERM_TAG, epoch, 0));
        for i in (1..n).rev() {
            let j = rng.below(i as u32 + 1) as usize;
            p.swap(i, j);
        }
    }
    p
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

impl Shared {
    /// The first readable image at or after `index` (wrapping), skipping and recording
    /// unreadable ones.
    fn load_valid(&self, index: usize) -> Result<(usize, Sample)> {
        let n = self.source.len();
        let mut first_reason = None;
        for k in 0..n {
            let j = (index + k) % n;
            {
                let mut r = self.report.lock().unwrap_or_else(|e| e.into_inner());
                if r.bad.contains(&j) {
                    r.count += 1;
                    continue;
                }
            }
            let got = catch_unwind(AssertUnwindSafe(|| self.source.get(j)))
                .unwrap_or_else(|p| data_err(format!("the decoder panicked: {}", panic_text(&*p))));
            match got {
                Ok(s) => return Ok((j, s)),
                Err(e) => {
                    let reason = match e {
                        Error::Data { detail } => detail,
                        e => e.to_string(),
                    };
                    if first_reason.is_none() {
                        first_reason = Some(reason.clone());
                    }
                    let path = self.source.item_path(j);
                    let mut r = self.report.lock().unwrap_or_else(|e| e.into_inner());
                    r.count += 1;
                    r.bad.insert(j);
                    r.skipped.entry(path).or_insert(reason);
                }
            }
        }
        data_err(format!(
            "no readable image in the data set: all {n} failed ({})",
            first_reason.unwrap_or_else(|| "skipped before".into())
        ))
    }

    /// Fill one slot: sample `index` of `epoch`, augmented.
    fn slot(&self, epoch: u64, index: usize, enh: &mut [f32], tok: &mut [f32]) -> Result<(usize, Option<u32>)> {
        let (used, sample) = self.load_valid(index)?;
        let mut rng = sample_stream(self.cfg.seed, epoch, index);
        let views = self.cfg.augment.apply(&sample.image, &mut rng);
        enh.copy_from_slice(&views.enhancer);
        tok.copy_from_slice(&views.tokenizer);
        Ok((used, sample.label))
    }

    fn batch(&self, step: u64, perm: &mut Option<(u64, Vec<u32>)>) -> Result<Batch> {
        let n_total = self.source.len();
        let spe = self.steps_per_epoch;
        let (epoch, b) = (step / spe, (step % spe) as usize);
        if perm.as_ref().is_none_or(|(e, _)| *e != epoch) {
            *perm = Some((epoch, epoch_permutation(self.cfg.seed, epoch, n_total, self.cfg.shuffle)));
        }
        let order = &perm.as_ref().expect("set above").1;
        let bs = self.cfg.batch_size;
        let start = b * bs;
        let end = (start + bs).min(n_total);
        let slots: Vec<usize> = order[start..end].iter().map(|&i| i as usize).collect();
        let n = slots.len();
        let e = self.cfg.augment.enhancer.size as usize;
        let t = self.cfg.augment.tokenizer.map_or(0, |t| t.size as usize);
        let (es, ts) = (3 * e * e, 3 * t * t);
        let mut enh = vec![0f32; n * es];
        let mut tok = vec![0f32; n * ts];
        let mut out: Vec<Result<(usize, Option<u32>)>> = Vec::with_capacity(n);
        let workers = self.cfg.workers.clamp(1, n.max(1));
        let per = n.div_ceil(workers);
        let run = |slots: &[usize], enh: &mut [f32], tok: &mut [f32]| -> Vec<Result<(usize, Option<u32>)>> {
            let mut enh_it = enh.chunks_mut(es.max(1));
            let mut tok_it = tok.chunks_mut(ts.max(1));
            slots
                .iter()
                .map(|&i| {
                    let ec = if es > 0 { enh_it.next().expect("sized") } else { &mut [][..] };
                    let tc = if ts > 0 { tok_it.next().expect("sized") } else { &mut [][..] };
                    self.slot(epoch, i, ec, tc)
                })
                .collect()
        };
        if workers == 1 {
            out = run(&slots, &mut enh, &mut tok);
        } else {
            thread::scope(|s| {
                let handles: Vec<_> = slots
                    .chunks(per)
                    .zip(enh.chunks_mut((per * es).max(1)))
                    .zip(tok.chunks_mut((per * ts).max(1)).map(Some).chain(std::iter::repeat_with(|| None)))
                    .map(|((sl, ec), tc)| {
                        let run = &run;
                        s.spawn(move || run(sl, ec, tc.unwrap_or(&mut [])))
                    })
                    .collect();
                for (h, sl) in handles.into_iter().zip(slots.chunks(per)) {
                    match h.join() {
                        Ok(r) => out.extend(r),
                        Err(p) => out.extend(
                            sl.iter().map(|_| data_err(format!("a loader worker panicked: {}", panic_text(&*p)))),
                        ),
                    }
                }
            });
        }
        let mut indices = Vec::with_capacity(n);
        let mut labels = Vec::with_capacity(n);
        for r in out {
            let (used, label) = r?;
            indices.push(used);
            labels.push(label);
        }
        let labels = labels.into_iter().collect::<Option<Vec<u32>>>();
        Ok(Batch { step, epoch, enhancer: enh, enhancer_size: e, tokenizer: tok, tokenizer_size: t, labels, indices })
    }
}

impl Loader {
    /// A loader over `source`. Errors: a zero batch size, an empty source, fewer images
    /// than a batch with `drop_last`, bad augmentation parameters.
    pub fn new(source: impl Source + 'static, config: LoaderConfig) -> Result<Self> {
        Self::from_shared(Arc::new(source), config)
    }

    /// A loader over a shared source.
    pub fn from_shared(source: Arc<dyn Source>, config: LoaderConfig) -> Result<Self> {
        config.augment.validate()?;
        let n = source.len();
        let bs = config.batch_size;
        if bs == 0 {
            return data_err("loader: the batch size must be positive");
        }
        if n == 0 {
            return data_err("loader: the data set is empty");
        }
        let steps = if config.drop_last { n / bs } else { n.div_ceil(bs) };
        if steps == 0 {
            return data_err(format!(
                "loader: the data set has {n} images, fewer than one batch of {bs} (drop_last is on)"
            ));
        }
        if u32::try_from(n).is_err() {
            return data_err(format!("loader: {n} images is more than 2^32 - 1"));
        }
        let shared = Arc::new(Shared {
            source,
            cfg: config,
            steps_per_epoch: steps as u64,
            report: Mutex::new(ReportState::default()),
        });
        Ok(Loader { shared, next_step: 0, producer: None })
    }

    /// Batches per epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        self.shared.steps_per_epoch
    }
    /// The step the next batch will have.
    pub fn step(&self) -> u64 {
        self.next_step
    }
    /// The epoch of the next batch.
    pub fn epoch(&self) -> u64 {
        self.next_step / self.shared.steps_per_epoch
    }
    pub fn config(&self) -> &LoaderConfig {
        &self.shared.cfg
    }
    pub fn source(&self) -> &Arc<dyn Source> {
        &self.shared.source
    }

    /// Resume at `step`: the next batch is the one iterating from 0 would give at `step`.
    pub fn skip_to(&mut self, step: u64) {
        if let Some(p) = self.producer.take() {
            p.shutdown();
        }
        self.next_step = step;
    }

    /// The batch of `step`, built now on the calling thread (and the workers), without
    /// touching the queue.
    pub fn batch_at(&self, step: u64) -> Result<Batch> {
        self.shared.batch(step, &mut None)
    }

    /// The skipped images so far.
    pub fn report(&self) -> LoaderReport {
        let r = self.shared.report.lock().unwrap_or_else(|e| e.into_inner());
        LoaderReport { skipped: r.skipped.iter().map(|(p, s)| (p.clone(), s.clone())).collect(), skip_count: r.count }
    }

    fn start(&mut self) -> Result<()> {
        let cap = self.shared.cfg.prefetch;
        let (tx, rx) = sync_channel(cap);
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::clone(&self.shared);
        let stop2 = Arc::clone(&stop);
        let mut step = self.next_step;
        let handle = thread::Builder::new()
            .name("cim-loader".into())
            .spawn(move || {
                let mut perm = None;
                while !stop2.load(Ordering::Relaxed) {
                    let r = shared.batch(step, &mut perm);
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        break;
                    }
                    step += 1;
                }
            })
            .map_err(|e| Error::Data { detail: format!("cannot start the loader thread: {e}") })?;
        self.producer = Some(Producer { rx, handle, stop });
        Ok(())
    }

    /// The next batch.
    pub fn next_batch(&mut self) -> Result<Batch> {
        if self.producer.is_none() {
            self.start()?;
        }
        let got = self.producer.as_ref().expect("started").rx.recv();
        match got {
            Ok(Ok(b)) => {
                self.next_step += 1;
                Ok(b)
            }
            Ok(Err(e)) => {
                // The producer stops after an error; the next call retries this step.
                if let Some(p) = self.producer.take() {
                    p.shutdown();
                }
                Err(e)
            }
            Err(_) => {
                if let Some(p) = self.producer.take() {
                    p.shutdown();
                }
                data_err("the loader thread stopped unexpectedly")
            }
        }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        Some(self.next_batch())
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        if let Some(p) = self.producer.take() {
            p.shutdown();
        }
    }
}
