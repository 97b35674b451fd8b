//! The conformance suite and whole models on the CUDA backend.
//!
//! - `gpu`: the suite on GPU 0, when there is one (else every test prints why it skips);
//! - `emulated`: the suite on the host emulator of the CUDA backend (the same kernel
//!   sources and host logic, built by a C++ compiler; skips without one);
//! - `models_*`: registry models' inference and a full CIM training step, CUDA against
//!   the CPU backend, with the tolerances of `models.rs` (a model chains a few dozen
//!   ops, each within its f32 conformance tolerance).

mod gpu {
    cim_conformance::backend_suite!(optional cim_cuda::Cuda::new());
}

mod emulated {
    cim_conformance::backend_suite!(optional cim_cuda::Cuda::emulated());
}

use cim_conformance::tolerance::Tolerance;
use cim_core::arch;
use cim_core::backend::Backend;
use cim_core::cim::{CimConfig, CimModel, EnhancerKind, Objective, RespixNorm, StepInput};
use cim_core::models::dvae::DvaeConfig;
use cim_core::models::resnet::{BlockKind, ResNetConfig, Stem};
use cim_core::models::vit::VitConfig;
use cim_core::params::{ParamStore, ParamTable};
use cim_core::rng::Stream;
use cim_core::{Element, Tensor};
use cim_cpu::Cpu;
use cim_cuda::Cuda;

fn to_f64<B: Backend>(v: Vec<B::E>) -> Vec<f64> {
    v.into_iter().map(Element::f64).collect()
}

fn close(what: &str, got: &[f64], want: &[f64]) {
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    Tolerance::new(1e-3, 1e-4 * scale.max(1e-30)).check(got, want).unwrap_or_else(|e| panic!("{what}: {e}"));
}

fn pixels(n: usize, seed: u64) -> Vec<f64> {
    let mut s = Stream::new(seed);
    (0..n).map(|_| s.next_f32() as f64).collect()
}

fn backend(make: fn() -> cim_core::Result<Cuda>) -> Option<Cuda> {
    match make() {
        Ok(b) => Some(b),
        Err(e) => {
            println!("skipped: {e}");
            None
        }
    }
}

fn registry_models(cuda: &Cuda) {
    let cpu = Cpu::new();
    for name in ["vit_tiny_patch4_32", "resnet18_small", "dvae_small_encoder"] {
        let spec = arch::by_name(name).unwrap();
        let input = spec.input();
        let shape = [2, input.channels, input.image_size, input.image_size];
        let x = pixels(shape.iter().product(), 3);
        let mut table = ParamTable::new();
        let model = spec.build(&mut table, "").unwrap();
        let s_gpu = table.clone().build(cuda, 11).unwrap();
        let s_cpu = table.build(&cpu, 11).unwrap();
        let y_gpu = model.infer(cuda, &s_gpu, &Tensor::from_f64(cuda, &shape, &x).unwrap()).unwrap();
        let y_cpu = model.infer(&cpu, &s_cpu, &Tensor::from_f64(&cpu, &shape, &x).unwrap()).unwrap();
        close(name, &y_gpu.to_f64(cuda).unwrap(), &y_cpu.to_f64(&cpu).unwrap());
    }
}

fn tiny_tokenizer() -> DvaeConfig {
    DvaeConfig { group_count: 2, n_hid: 8, n_blk_per_group: 1, input_channels: 3, vocab_size: 16, n_init: 8 }
}

fn configs() -> Vec<(&'static str, CimConfig)> {
    let respix = Objective::Respix { norm: RespixNorm::PAPER };
    let vit = |objective| {
        let v = VitConfig { mlp_ratio: 2.0, ..VitConfig::new(16, 4, 16, 3, 2) };
        let mut c = CimConfig::new(EnhancerKind::Vit(v), 16, objective, tiny_tokenizer(), 8);
        c.generator_depth = 3;
        c
    };
    let resnet = |objective| {
        let rc = ResNetConfig {
            block: BlockKind::Basic,
            layers: [1, 1, 1, 1],
            base_width: 4,
            in_channels: 3,
            stem: Stem::Small,
            num_classes: None,
            zero_init_residual: false,
        };
        let e = EnhancerKind::ResNet { cfg: rc, patch_size: 4, generator_width: 8, generator_heads: 2 };
        let mut c = CimConfig::new(e, 16, objective, tiny_tokenizer(), 8);
        c.generator_depth = 2;
        c
    };
    vec![
        ("vit respix", vit(respix)),
        ("vit revdet", vit(Objective::Revdet)),
        ("resnet respix", resnet(respix)),
        ("resnet revdet", resnet(Objective::Revdet)),
    ]
}

struct Outcome {
    losses: Vec<f64>,
    corrupted: Vec<u32>,
    grads: Vec<f64>,
}

fn step_on<B: Backend>(b: &B, cfg: &CimConfig, n: usize) -> Outcome {
    let (model, mut store, tok): (CimModel, ParamStore<B>, ParamStore<B>) = CimModel::build(*cfg, b, 5).unwrap();
    let (h, t) = (cfg.image_size, cfg.tokenizer_image_size);
    let e = Tensor::from_f64(b, &[n, 3, h, h], &pixels(n * 3 * h * h, 1)).unwrap();
    let tv = Tensor::from_f64(b, &[n, 3, t, t], &pixels(n * 3 * t * t, 2)).unwrap();
    let masking = cfg.masking().unwrap();
    let masks: Vec<u8> = (0..n as u64).flat_map(|i| masking.sample_for(9, i)).collect();
    let out = model
        .step(
            b,
            &mut store,
            &tok,
            &StepInput { enhancer_view: &e, tokenizer_view: &tv, masks: &masks, seed: 4, step: 0 },
        )
        .unwrap();
    let grads = to_f64::<B>(
        b.download(cim_core::View { buf: &store.grads, offset: 0, len: store.table.params_len() }).unwrap(),
    );
    Outcome { losses: vec![out.mim_loss, out.enh_loss, out.replaced_frac], corrupted: out.corrupted, grads }
}

fn cim_steps(cuda: &Cuda) {
    let cpu = Cpu::new();
    for (name, cfg) in configs() {
        let got = step_on(cuda, &cfg, 2);
        let want = step_on(&cpu, &cfg, 2);
        // Same seeds, same logits up to rounding: Gumbel-max picks the same tokens.
        assert_eq!(got.corrupted, want.corrupted, "{name}: corrupted tokens differ");
        close(&format!("{name} losses"), &got.losses, &want.losses);
        close(&format!("{name} gradients"), &got.grads, &want.grads);
    }
}

#[test]
fn models_gpu_registry_inference_agrees_with_the_cpu() {
    if let Some(b) = backend(Cuda::new) {
        registry_models(&b);
    }
}

#[test]
fn models_gpu_cim_step_agrees_with_the_cpu() {
    if let Some(b) = backend(Cuda::new) {
        cim_steps(&b);
    }
}

#[test]
fn models_emulated_registry_inference_agrees_with_the_cpu() {
    if let Some(b) = backend(Cuda::emulated) {
        registry_models(&b);
    }
}

#[test]
fn models_emulated_cim_step_agrees_with_the_cpu() {
    if let Some(b) = backend(Cuda::emulated) {
        cim_steps(&b);
    }
}

/// The caching allocator: a second round of the same allocations takes nothing new
/// from the device.
#[test]
fn allocator_reuses_blocks() {
    for make in [Cuda::new as fn() -> _, Cuda::emulated] {
        let Some(b) = backend(make) else { continue };
        for _ in 0..2 {
            let bufs: Vec<_> = [10usize, 1000, 1000, 123_456].iter().map(|&n| b.alloc(n).unwrap()).collect();
            drop(bufs);
        }
        let s = b.memory_stats();
        assert_eq!((s.misses, s.hits, s.live_bytes), (4, 4, 0), "{s:?}");
        assert!(s.cached_bytes >= 4 * (10 + 1000 + 1000 + 123_456));
    }
}
