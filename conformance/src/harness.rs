//! The one generic runner: build a problem's inputs on a backend, run the op, collect
//! the outputs; do it on the backend under test and on the oracles; compare.
//!
//! A [`Problem`] is written once, generically over the backend, against a [`Cx`]
//! (context) that uploads its inputs and records its outputs with the check each must
//! pass. [`compare`] runs it on the backend under test and on [`Reference<f64>`], the
//! oracle, and — only for outputs checked with [`Check::ExactInE`] — on
//! `Reference<B::E>`, the reference in the backend's own element type.

use crate::tolerance::Tolerance;
use cim_core::tensor::{View, ViewMut};
use cim_core::{Backend, Element, IndexTensor, Reference, Result, Tensor};
use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use std::fmt::Debug;

/// An op problem: inputs (held by the implementing type) and a generic way to run it.
pub trait Problem: Debug {
    /// Upload the inputs with `cx`, run the op(s) on `cx.b`, and record every output
    /// with [`Cx::out`] and friends, in the same order on every backend.
    fn run<B: Backend>(&self, cx: &mut Cx<'_, B>) -> Result<()>;
}

/// How an output is checked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Check {
    /// Within a tolerance of `Reference<f64>`.
    Close(Tolerance),
    /// Equal to `Reference<f64>`: outputs that are exact in any precision, given inputs
    /// exact in `E` — selections (argmax, max pooling and its indices, `Max`
    /// reductions), copies (gathers, upsampling, memory ops), rounding casts to a
    /// narrower type, random numbers (24-bit uniforms).
    Exact,
    /// Equal to `Reference<E>`, bit for bit: ops specified in the element type itself
    /// (Gumbel-max sampling forms its scores in `E`, so `f32` and `f64` may pick
    /// differently at a near-tie).
    ExactInE,
}

/// Output values, downloaded to the host.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    F(Vec<f64>),
    I(Vec<u32>),
}

#[derive(Clone, Debug)]
pub struct Output {
    pub name: String,
    pub values: Values,
    pub check: Check,
}

/// A value no kernel writes: fills the guard zones around [`Slot`]s, and is large
/// enough that a kernel reading it instead of its operand gives a visibly wrong result.
pub const GUARD: f64 = 1234.5;

/// A buffer holding data at an offset, between guard zones: `[GUARD; pad] data
/// [GUARD; pad]`. Its views have a nonzero offset, as the views into a flat parameter
/// buffer that layers pass to kernels; [`Cx::out_slot`] checks that the guards survive.
pub struct Slot<B: Backend> {
    buf: B::Buf,
    pad: usize,
    len: usize,
}

impl<B: Backend> Slot<B> {
    pub fn view(&self) -> View<'_, B::Buf> {
        View { buf: &self.buf, offset: self.pad, len: self.len }
    }
    pub fn view_mut(&mut self) -> ViewMut<'_, B::Buf> {
        ViewMut { buf: &mut self.buf, offset: self.pad, len: self.len }
    }
}

/// The context a [`Problem`] runs in: the backend, and the outputs recorded so far.
pub struct Cx<'a, B: Backend> {
    pub b: &'a B,
    outs: Vec<Output>,
}

impl<'a, B: Backend> Cx<'a, B> {
    pub fn new(b: &'a B) -> Self {
        Cx { b, outs: Vec::new() }
    }

    /// Upload a tensor (values exact in `f32`, so every backend sees the same input).
    pub fn t(&self, shape: &[usize], data: &[f64]) -> Result<Tensor<B>> {
        Tensor::from_f64(self.b, shape, data)
    }

    pub fn ids(&self, shape: &[usize], data: &[u32]) -> Result<IndexTensor<B>> {
        IndexTensor::from_slice(self.b, shape, data)
    }

    /// Upload `data` into a [`Slot`] with `pad` guard elements on each side.
    pub fn slot(&self, data: &[f64], pad: usize) -> Result<Slot<B>> {
        let mut all = vec![GUARD; pad];
        all.extend_from_slice(data);
        all.extend(std::iter::repeat_n(GUARD, pad));
        let host: Vec<B::E> = all.into_iter().map(B::E::of).collect();
        Ok(Slot { buf: self.b.upload(&host)?, pad, len: data.len() })
    }

    /// Record raw values.
    pub fn record(&mut self, name: impl Into<String>, values: Values, check: Check) {
        self.outs.push(Output { name: name.into(), values, check });
    }

    /// Record a tensor output, checked within `tol` of `Reference<f64>`.
    pub fn out(&mut self, name: &str, t: &Tensor<B>, tol: Tolerance) -> Result<()> {
        let v = t.to_f64(self.b)?;
        self.record(name, Values::F(v), Check::Close(tol));
        Ok(())
    }

    /// Record a tensor output that must equal `Reference<f64>` exactly.
    pub fn out_exact(&mut self, name: &str, t: &Tensor<B>) -> Result<()> {
        let v = t.to_f64(self.b)?;
        self.record(name, Values::F(v), Check::Exact);
        Ok(())
    }

    /// Record an index output, equal to `Reference<f64>`'s (`check` = [`Check::Exact`])
    /// or to `Reference<E>`'s ([`Check::ExactInE`]).
    pub fn out_ids(&mut self, name: &str, t: &IndexTensor<B>, check: Check) -> Result<()> {
        let v = t.to_vec(self.b)?;
        self.record(name, Values::I(v), check);
        Ok(())
    }

    /// Record the data of a slot (within `tol`) and its guard zones (exact).
    pub fn out_slot(&mut self, name: &str, s: &Slot<B>, tol: Tolerance) -> Result<()> {
        let all: Vec<f64> = self
            .b
            .download(View { buf: &s.buf, offset: 0, len: self.b.len(&s.buf) })?
            .into_iter()
            .map(B::E::f64)
            .collect();
        let (lo, hi) = (s.pad, s.pad + s.len);
        let guards: Vec<f64> = all[..lo].iter().chain(&all[hi..]).copied().collect();
        self.record(name, Values::F(all[lo..hi].to_vec()), Check::Close(tol));
        self.record(format!("{name} (guard zones around the view)"), Values::F(guards), Check::Exact);
        Ok(())
    }

    pub fn into_outputs(self) -> Vec<Output> {
        self.outs
    }
}

/// Run a problem on one backend and collect its outputs.
pub fn collect<P: Problem, B: Backend>(p: &P, b: &B) -> std::result::Result<Vec<Output>, String> {
    let mut cx = Cx::new(b);
    p.run(&mut cx).map_err(|e| format!("the {} backend returned an error: {e}", b.name()))?;
    b.synchronize().map_err(|e| format!("the {} backend failed to synchronize: {e}", b.name()))?;
    Ok(cx.into_outputs())
}

/// Compare one output of the backend under test with the oracle's.
fn compare_output(got: &Output, want: &Output) -> std::result::Result<(), String> {
    if got.name != want.name {
        return Err(format!("output order differs: {:?} vs {:?}", got.name, want.name));
    }
    match (&got.values, &want.values) {
        (Values::F(g), Values::F(w)) => {
            let tol = match got.check {
                Check::Close(t) => t,
                Check::Exact | Check::ExactInE => Tolerance::EXACT,
            };
            tol.check(g, w)
        }
        (Values::I(g), Values::I(w)) if g == w => Ok(()),
        (Values::I(g), Values::I(w)) => {
            if g.len() != w.len() {
                return Err(format!("length mismatch: got {} indices, want {}", g.len(), w.len()));
            }
            let bad: Vec<usize> = (0..g.len()).filter(|&i| g[i] != w[i]).collect();
            let i = bad[0];
            Err(format!("{} of {} indices differ; first at [{i}]: got {}, want {}", bad.len(), g.len(), g[i], w[i]))
        }
        _ => Err("output kinds differ".into()),
    }
}

/// With `CIM_CONFORMANCE_HEADROOM` set, the largest fraction of its tolerance each
/// output used over a test's cases ([`Tolerance::usage`]), printed when the test ends:
/// how much room a backend has, and how tight a tolerance is.
static HEADROOM: std::sync::Mutex<Vec<(String, f64)>> = std::sync::Mutex::new(Vec::new());

thread_local! {
    /// The test running on this thread (set by [`check_op`]).
    static CURRENT_TEST: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

fn note_usage(output: &str, used: f64) {
    if std::env::var_os("CIM_CONFORMANCE_HEADROOM").is_none() {
        return;
    }
    let key = format!("{}: {output}", CURRENT_TEST.with(|t| t.borrow().clone()));
    let mut h = HEADROOM.lock().unwrap_or_else(|e| e.into_inner());
    match h.iter_mut().find(|(k, _)| *k == key) {
        Some((_, u)) => *u = u.max(used),
        None => h.push((key, used)),
    }
}

fn print_headroom(test: &str) {
    let h = HEADROOM.lock().unwrap_or_else(|e| e.into_inner());
    for (k, u) in h.iter().filter(|(k, _)| k.starts_with(test) && k[test.len()..].starts_with(':')) {
        println!("headroom {k}: used {:.1}% of the tolerance", 100.0 * u);
    }
}

/// Run `p` on the backend under test and on the oracles, and check every output.
pub fn compare<P: Problem, B: Backend>(p: &P, b: &B) -> std::result::Result<(), String> {
    let got = collect(p, b)?;
    let want = collect(p, &Reference::<f64>::new())?;
    let exact = if got.iter().any(|o| o.check == Check::ExactInE) {
        Some(collect(p, &Reference::<B::E>::new())?)
    } else {
        None
    };
    if got.len() != want.len() {
        return Err(format!("{} outputs on {}, {} on the reference", got.len(), b.name(), want.len()));
    }
    let mut failures = Vec::new();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let w = match (g.check, &exact) {
            (Check::ExactInE, Some(e)) => &e[i],
            _ => w,
        };
        if let Err(e) = compare_output(g, w) {
            failures.push(format!("  {}: {e}", g.name));
        }
        if let (Check::Close(t), Values::F(gv), Values::F(wv)) = (g.check, &g.values, &w.values) {
            note_usage(&g.name, t.usage(gv, wv));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{} vs reference:\n{}", b.name(), failures.join("\n")))
    }
}

/// The number of cases per conformance test: `CIM_PROPTEST_CASES`, default 48.
pub fn suite_cases() -> u32 {
    std::env::var("CIM_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(48)
}

/// The base seed: `CIM_PROPTEST_SEED` (decimal), default fixed so CI is reproducible.
pub fn base_seed() -> u64 {
    std::env::var("CIM_PROPTEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0xC1A0_2023)
}

/// Run `test` on `cases` values of `strategy` (a deterministic stream per test name and
/// base seed), shrinking a failure to a minimal case, and panic with a report.
pub fn run_cases<S>(name: &str, cases: u32, strategy: S, test: impl Fn(S::Value) -> std::result::Result<(), String>)
where
    S: Strategy,
    S::Value: Debug,
{
    let seed = base_seed();
    // FNV-1a of the name, so each test draws its own cases.
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, c| (h ^ c as u64).wrapping_mul(0x100_0000_01b3));
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&h.to_le_bytes());
    let config = Config { cases: cases.max(1), failure_persistence: None, max_shrink_iters: 1024, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
    match runner.run(&strategy, |v| test(v).map_err(TestCaseError::fail)) {
        Ok(()) => {}
        Err(TestError::Fail(reason, value)) => {
            let mut case = format!("{value:?}");
            if case.len() > 4000 {
                let cut = (0..=4000).rev().find(|&i| case.is_char_boundary(i)).unwrap_or(0);
                case = format!("{}… ({} more bytes)", &case[..cut], case.len() - cut);
            }
            panic!("{name} failed (CIM_PROPTEST_SEED={seed}): {reason}\nminimal failing case: {case}")
        }
        Err(TestError::Abort(reason)) => panic!("{name} aborted (CIM_PROPTEST_SEED={seed}): {reason}"),
    }
}

/// Check one op of backend `b` against the reference over [`suite_cases`] random problems.
pub fn check_op<B, S>(name: &str, b: &B, strategy: S)
where
    B: Backend<E = f32>,
    S: Strategy,
    S::Value: Problem,
{
    // The cases depend on the op's name only: every backend sees the same problems.
    let test = format!("{name} on {}", b.name());
    CURRENT_TEST.with(|t| *t.borrow_mut() = test.clone());
    run_cases(name, suite_cases(), strategy, |p| compare(&p, b));
    print_headroom(&test);
}

/// A backend constructor's result that may say "not here": `Option<B>` (`None`: not
/// available) or `Result<B, E>` (the error, displayed, is the reason). See
/// [`crate::backend_suite!`].
pub trait Availability {
    type Backend: Backend;
    fn available(self) -> std::result::Result<Self::Backend, String>;
}

impl<B: Backend> Availability for Option<B> {
    type Backend = B;
    fn available(self) -> std::result::Result<B, String> {
        self.ok_or_else(|| "backend not available on this machine".into())
    }
}

impl<B: Backend, E: std::fmt::Display> Availability for std::result::Result<B, E> {
    type Backend = B;
    fn available(self) -> std::result::Result<B, String> {
        self.map_err(|e| e.to_string())
    }
}
