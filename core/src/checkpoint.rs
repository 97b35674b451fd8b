//! Checkpoints in both directions: safetensors files under timm's, torchvision's and
//! OpenAI `dall_e`'s tensor names (the names the models register, see
//! [`crate::models`]), through the `safetensors` crate. Needs the `std` feature.
//!
//! # Saving
//! [`save`] writes the tensors of one model of a store, selected by name prefix
//! (`"enhancer."` or `"enhancer"`; empty for the whole store), with the prefix
//! stripped, so the file holds exactly that model under its timm / torchvision names.
//! An alias (a shared weight) is written under its own name with its root's data, even
//! when the root lies outside the prefix. Values are written as `F32` (or `F16` with
//! [`SaveOptions`]; a value too large for `F16` is an error, not an infinity).
//!
//! Batch norms: for every `X.running_mean` state tensor an `X.num_batches_tracked`
//! tensor is written as torchvision has it, an `I64` scalar (shape `[]`), holding 0
//! (cim does not count batches; with a fixed momentum torchvision does not read the
//! count either), so that torchvision's `load_state_dict(strict=True)` accepts the file.
//!
//! Metadata (`__metadata__`): what the caller passes (e.g. [`ArchSpec::metadata`]:
//! `cim.arch` and the input normalization; [`save_model`] adds it), plus
//! `cim.version`, `cim.dtype`, and `format = pt` (the key Hugging Face's loaders look
//! for).
//!
//! Saving is atomic: the bytes go to a temporary file in the target's directory, which
//! is flushed to disk (`fsync`) and renamed over the target, and the directory is
//! synced. A failure at any step (no such directory, the target is a directory, a full
//! disk) returns an error, removes the temporary file, and leaves a previous file at
//! the target untouched.
//!
//! # Loading
//! [`load_into`] fills the tensors of a store under a prefix from a file. Every tensor
//! of the model must be in the file with exactly its shape, and every tensor of the
//! file must belong to the model (`num_batches_tracked` of a model batch norm is
//! accepted and ignored); otherwise the error lists every missing, unexpected and
//! wrongly shaped tensor (and any of an unsupported dtype), and the store is not
//! touched. `F32`, `F16`, `BF16` and `F64` convert to the backend's element type.
//! A truncated or corrupt file is an error, never a panic.
//!
//! [`load_model`] builds the model a file holds, named by its `cim.arch` metadata or,
//! for a file without it (timm, torchvision), by the caller (a name of
//! [`crate::arch::NAMES`] or a serialized configuration), and loads it. The classifier
//! (`head.*` of a ViT, `fc.*` of a ResNet) follows the file: its class count is taken
//! from the file's `head.weight` / `fc.weight`, and a file without one loads into the
//! headless model (timm's `num_classes=0`). Everything else must fit exactly.

use crate::arch::{self, ArchSpec, Model, NAMES};
use crate::backend::Backend;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::params::{Entry, Kind, ParamStore, ParamTable};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The torchvision batch-norm buffer that cim writes (as 0) and ignores on load.
pub const NUM_BATCHES_TRACKED: &str = "num_batches_tracked";

/// The largest header [`read_metadata`] accepts (the `safetensors` crate's limit).
const MAX_HEADER: u64 = 100_000_000;

/// The element type tensors are written in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SaveDtype {
    #[default]
    F32,
    F16,
}

/// Options of [`save_with`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SaveOptions {
    pub dtype: SaveDtype,
}

/// What [`load_into`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    /// Tensors written into the store.
    pub loaded: usize,
    /// Tensors of the file that were accepted and skipped (`num_batches_tracked`).
    pub ignored: Vec<String>,
    /// How many of the loaded tensors came in each file dtype (`"F32"`, `"F16"`...).
    pub dtypes: BTreeMap<String, usize>,
    /// The file's `__metadata__`.
    pub metadata: BTreeMap<String, String>,
}

/// A model built from a checkpoint by [`load_model`].
pub struct Loaded<B: Backend> {
    pub spec: ArchSpec,
    pub model: Model,
    pub store: ParamStore<B>,
    pub report: LoadReport,
}

fn ck(path: &Path, detail: impl Into<String>) -> Error {
    Error::Checkpoint { path: path.display().to_string(), detail: detail.into() }
}

/// `"enhancer"` and `"enhancer."` both select the names under `enhancer.`.
fn norm_prefix(prefix: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('.') {
        prefix.to_string()
    } else {
        format!("{prefix}.")
    }
}

/// The entries under `prefix` (normalized), keyed by their names without it.
fn entries_under<'a>(table: &'a ParamTable, prefix: &'a str) -> BTreeMap<String, &'a Entry> {
    table.with_prefix(prefix).map(|e| (e.name[prefix.len()..].to_string(), e)).collect()
}

// ---- saving -------------------------------------------------------------------------------

/// A tensor ready to be written.
struct Owned {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for Owned {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn encode<E: Element>(name: &str, values: &[E], dtype: SaveDtype) -> std::result::Result<Owned, String> {
    let mut data = Vec::with_capacity(values.len() * 4);
    match dtype {
        SaveDtype::F32 => {
            for v in values {
                data.extend_from_slice(&(v.f64() as f32).to_le_bytes());
            }
        }
        SaveDtype::F16 => {
            for v in values {
                let h = half::f16::from_f64(v.f64());
                if h.is_infinite() && v.f64().is_finite() {
                    return Err(format!("{name}: value {} does not fit F16 (save as F32)", v.f64()));
                }
                data.extend_from_slice(&h.to_le_bytes());
            }
        }
    }
    let dtype = match dtype {
        SaveDtype::F32 => Dtype::F32,
        SaveDtype::F16 => Dtype::F16,
    };
    Ok(Owned { dtype, shape: Vec::new(), data })
}

/// Save the tensors of `store` under `prefix` (stripped) to `path`, with `metadata`,
/// as `F32`. See the module docs.
pub fn save<B: Backend>(
    path: impl AsRef<Path>,
    store: &ParamStore<B>,
    b: &B,
    prefix: &str,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    save_with(path, store, b, prefix, metadata, SaveOptions::default())
}

/// [`save`] with the model's architecture metadata ([`ArchSpec::metadata`]) and options.
pub fn save_model<B: Backend>(
    path: impl AsRef<Path>,
    spec: &ArchSpec,
    store: &ParamStore<B>,
    b: &B,
    prefix: &str,
    opts: SaveOptions,
) -> Result<()> {
    save_with(path, store, b, prefix, &spec.metadata(), opts)
}

/// [`save`] with options (the element type written).
pub fn save_with<B: Backend>(
    path: impl AsRef<Path>,
    store: &ParamStore<B>,
    b: &B,
    prefix: &str,
    metadata: &BTreeMap<String, String>,
    opts: SaveOptions,
) -> Result<()> {
    let path = path.as_ref();
    let p = norm_prefix(prefix);
    let entries = entries_under(&store.table, &p);
    if entries.is_empty() {
        return Err(ck(path, format!("nothing to save: the store has no tensor under the prefix {p:?}")));
    }
    let mut tensors: BTreeMap<String, Owned> = BTreeMap::new();
    let mut counters: Vec<String> = Vec::new();
    for (name, e) in &entries {
        let values = store.get(b, &e.name)?;
        let mut t = encode(name, &values, opts.dtype).map_err(|d| ck(path, d))?;
        t.shape = e.shape.clone();
        if e.param.kind == Kind::State {
            if let Some(stem) = name.strip_suffix("running_mean") {
                if stem.is_empty() || stem.ends_with('.') {
                    counters.push(format!("{stem}{NUM_BATCHES_TRACKED}"));
                }
            }
        }
        tensors.insert(name.clone(), t);
    }
    for c in counters {
        tensors.entry(c).or_insert_with(|| Owned {
            dtype: Dtype::I64,
            shape: Vec::new(),
            data: 0i64.to_le_bytes().to_vec(),
        });
    }
    let mut meta: HashMap<String, String> = metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    meta.entry("format".to_string()).or_insert_with(|| "pt".to_string());
    meta.insert("cim.version".to_string(), env!("CARGO_PKG_VERSION").to_string());
    let dtype = match opts.dtype {
        SaveDtype::F32 => "F32",
        SaveDtype::F16 => "F16",
    };
    meta.insert("cim.dtype".to_string(), dtype.to_string());
    let bytes = safetensors::serialize(tensors, Some(meta)).map_err(|e| ck(path, format!("cannot serialize: {e}")))?;
    write_atomic(path, &bytes)
}

static TEMP_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Write `bytes` to `path` atomically (see the module docs).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// The directory of `path` ("." for a bare file name).
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// [`write_atomic`] with the writing step given (tests inject failures here).
fn write_atomic_with(path: &Path, write: impl FnOnce(&mut File) -> io::Result<()>) -> Result<()> {
    let Some(file_name) = path.file_name() else {
        return Err(ck(path, "not a file path"));
    };
    let dir = dir_of(path);
    if !dir.is_dir() {
        return Err(ck(path, format!("cannot save: directory {} does not exist", dir.display())));
    }
    if path.is_dir() {
        return Err(ck(path, "cannot save: the target is a directory"));
    }
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp: PathBuf = dir.join(format!(".{}.{}.{}.tmp", file_name.to_string_lossy(), std::process::id(), n));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| ck(path, format!("cannot save: cannot create {}: {e}", tmp.display())))?;
    let written = write(&mut f).and_then(|()| f.sync_all());
    drop(f);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(ck(path, format!("cannot save: writing failed ({e}); any previous file is unchanged")));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(ck(path, format!("cannot save: cannot replace the file ({e}); any previous file is unchanged")));
    }
    // Make the rename itself durable (best effort: not every system syncs directories).
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

// ---- loading ------------------------------------------------------------------------------

/// The `__metadata__` of a safetensors file, reading only its header.
pub fn read_metadata(path: impl AsRef<Path>) -> Result<BTreeMap<String, String>> {
    let path = path.as_ref();
    let bad = |d: String| ck(path, format!("not a valid safetensors file (truncated or corrupt?): {d}"));
    let mut f = File::open(path).map_err(|e| ck(path, format!("cannot open: {e}")))?;
    let len = f.metadata().map_err(|e| ck(path, format!("cannot read: {e}")))?.len();
    let mut n8 = [0u8; 8];
    f.read_exact(&mut n8).map_err(|_| bad(format!("only {len} bytes")))?;
    let n = u64::from_le_bytes(n8);
    if n > MAX_HEADER || n.saturating_add(8) > len {
        return Err(bad(format!("header length {n} does not fit a file of {len} bytes")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| bad(e.to_string()))?;
    let v: serde_json::Value = serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
    let obj = v.as_object().ok_or_else(|| bad("the header is not a JSON object".into()))?;
    let mut out = BTreeMap::new();
    match obj.get("__metadata__") {
        None => {}
        Some(serde_json::Value::Object(m)) => {
            for (k, v) in m {
                let s = v.as_str().ok_or_else(|| bad(format!("metadata {k:?} is not a string")))?;
                out.insert(k.clone(), s.to_string());
            }
        }
        Some(_) => return Err(bad("__metadata__ is not an object".into())),
    }
    Ok(out)
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| ck(path, format!("cannot read: {e}")))
}

/// Parse a whole file: its tensors and metadata.
fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<(SafeTensors<'a>, BTreeMap<String, String>)> {
    let bad = |e: safetensors::SafeTensorError| {
        ck(path, format!("not a valid safetensors file (truncated or corrupt?): {e}"))
    };
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(bad)?;
    let metadata = meta.metadata().clone().unwrap_or_default().into_iter().collect();
    Ok((SafeTensors::deserialize(bytes).map_err(bad)?, metadata))
}

fn dtype_name(d: Dtype) -> String {
    format!("{d:?}")
}

/// Convert a tensor's little-endian data to `E` (`None` for an unsupported dtype).
fn decode<E: Element>(v: &TensorView<'_>) -> Option<Vec<E>> {
    let d = v.data();
    Some(match v.dtype() {
        Dtype::F32 => d.chunks_exact(4).map(|c| E::of(f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)).collect(),
        Dtype::F64 => d
            .chunks_exact(8)
            .map(|c| E::of(f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])))
            .collect(),
        Dtype::F16 => d.chunks_exact(2).map(|c| E::of(half::f16::from_le_bytes([c[0], c[1]]).to_f64())).collect(),
        Dtype::BF16 => d.chunks_exact(2).map(|c| E::of(half::bf16::from_le_bytes([c[0], c[1]]).to_f64())).collect(),
        _ => return None,
    })
}

fn supported(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16)
}

/// `"3 missing from the file: a, b, c"`.
fn listed(items: &[String], what: &str) -> Option<String> {
    if items.is_empty() {
        return None;
    }
    let noun = if items.len() == 1 { "tensor" } else { "tensors" };
    Some(format!("{} {noun} {what}: {}", items.len(), items.join(", ")))
}

/// Load the parsed file into the tensors of `store` under `prefix`.
fn load_parsed<B: Backend>(
    path: &Path,
    st: &SafeTensors<'_>,
    metadata: BTreeMap<String, String>,
    store: &mut ParamStore<B>,
    b: &B,
    prefix: &str,
) -> Result<LoadReport> {
    let p = norm_prefix(prefix);
    let expected: BTreeMap<String, Entry> =
        entries_under(&store.table, &p).into_iter().map(|(k, e)| (k, e.clone())).collect();
    if expected.is_empty() {
        return Err(ck(path, format!("the model has no tensor under the prefix {p:?}")));
    }
    let file: BTreeMap<String, TensorView<'_>> = st.iter().map(|(n, v)| (n.to_string(), v)).collect();
    let (mut missing, mut unexpected, mut wrong_shape, mut bad_dtype, mut ignored) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (name, e) in &expected {
        match file.get(name) {
            None => missing.push(name.clone()),
            Some(v) if v.shape() != e.shape.as_slice() => {
                wrong_shape.push(format!("{name} (file {:?}, model {:?})", v.shape(), e.shape))
            }
            Some(v) if !supported(v.dtype()) => bad_dtype.push(format!("{name} ({:?})", v.dtype())),
            Some(_) => {}
        }
    }
    for name in file.keys() {
        if expected.contains_key(name) {
            continue;
        }
        let bn_counter = name
            .strip_suffix(NUM_BATCHES_TRACKED)
            .filter(|stem| stem.is_empty() || stem.ends_with('.'))
            .is_some_and(|stem| expected.contains_key(&format!("{stem}running_mean")));
        if bn_counter {
            ignored.push(name.clone());
        } else {
            unexpected.push(name.clone());
        }
    }
    let problems: Vec<String> = [
        listed(&missing, "missing from the file"),
        listed(&unexpected, "in the file but not in the model (unexpected)"),
        listed(&wrong_shape, "of the wrong shape"),
        listed(&bad_dtype, "of an unsupported dtype (F32, F16, BF16 and F64 load)"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !problems.is_empty() {
        let matched = expected.len() - missing.len();
        let hint = if matched == 0 { "no tensor name matches (wrong architecture or prefix?); " } else { "" };
        let arch = metadata.get("cim.arch").map(|a| format!(" (the file says cim.arch = {a})")).unwrap_or_default();
        let at = if p.is_empty() { String::new() } else { format!(" under prefix {p:?}") };
        return Err(ck(path, format!("does not fit the model{at}{arch}: {hint}{}", problems.join("; "))));
    }
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    for (name, e) in &expected {
        let v = &file[name];
        let data = decode::<B::E>(v).ok_or_else(|| ck(path, format!("{name}: unsupported dtype {:?}", v.dtype())))?;
        store.set(b, &e.name, &e.shape, &data)?;
        *dtypes.entry(dtype_name(v.dtype())).or_default() += 1;
    }
    Ok(LoadReport { loaded: expected.len(), ignored, dtypes, metadata })
}

/// Fill the tensors of `store` under `prefix` from the file at `path`. Nothing is
/// written unless every tensor fits (see the module docs).
pub fn load_into<B: Backend>(
    path: impl AsRef<Path>,
    store: &mut ParamStore<B>,
    b: &B,
    prefix: &str,
) -> Result<LoadReport> {
    let path = path.as_ref();
    let bytes = read_bytes(path)?;
    let (st, metadata) = parse(path, &bytes)?;
    load_parsed(path, &st, metadata, store, b, prefix)
}

/// The architecture of a file: `arch` when given (a registry name or a serialized
/// configuration), else the file's `cim.arch` metadata.
fn resolve_arch(path: &Path, arch: Option<&str>, metadata: &BTreeMap<String, String>) -> Result<ArchSpec> {
    match (arch, metadata.get("cim.arch")) {
        (Some(a), _) => arch::by_name(a),
        (None, Some(a)) => arch::by_name(a).map_err(|e| {
            ck(path, format!("its cim.arch metadata {a:?} is not understood ({e}); name the architecture"))
        }),
        (None, None) => Err(ck(
            path,
            format!(
                "has no cim.arch metadata (not written by cim?): name its architecture (cim infer --arch NAME), \
                 one of: {}",
                NAMES.join(", ")
            ),
        )),
    }
}

/// The classifier follows the file (see the module docs).
fn fit_head(spec: ArchSpec, st: &SafeTensors<'_>) -> ArchSpec {
    let Some((w, bias)) = spec.head_names() else {
        return spec;
    };
    match st.tensor(w) {
        Ok(v) if v.shape().len() == 2 && v.shape()[0] > 0 => spec.with_classes(Some(v.shape()[0])),
        Err(_) if st.tensor(bias).is_err() => spec.with_classes(None),
        _ => spec,
    }
}

/// Build the model a checkpoint holds and load it (see the module docs). `arch`
/// overrides the file's `cim.arch`; a file without `cim.arch` needs it.
pub fn load_model<B: Backend>(path: impl AsRef<Path>, arch: Option<&str>, b: &B) -> Result<Loaded<B>> {
    let path = path.as_ref();
    let bytes = read_bytes(path)?;
    let (st, metadata) = parse(path, &bytes)?;
    let spec = fit_head(resolve_arch(path, arch, &metadata)?, &st);
    let mut table = ParamTable::new();
    let model = spec.build(&mut table, "")?;
    // Zero buffers rather than `ParamTable::build`'s initialization (seconds of random
    // numbers for a large model): the load below overwrites every tensor, or fails.
    let (n, s) = (table.params_len(), table.state_len());
    let mut store = ParamStore { params: b.alloc(n)?, grads: b.alloc(n)?, state: b.alloc(s)?, table };
    let report = load_parsed(path, &st, metadata, &mut store, b, "")?;
    Ok(Loaded { spec, model, store, report })
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use crate::arch::by_name;
    use crate::element::DType;
    use crate::layers::LayerNorm;
    use crate::models::vit::{build_blocks, build_embed, Vit, VitConfig};
    use crate::reference::Reference;
    use crate::tensor::Tensor;

    type R = Reference<f32>;

    const VIT: &str = "vit(img=8,patch=4,dim=8,depth=2,heads=2,classes=3)";
    const RESNET: &str = "resnet(block=basic,layers=1-1-1-1,width=4,stem=small,classes=5,img=8)";
    const ENC: &str = "dvae_encoder(groups=2,n_hid=8,blocks=1,vocab=16,n_init=8,img=8)";
    const DEC: &str = "dvae_decoder(groups=2,n_hid=8,blocks=1,vocab=16,n_init=8,img=8)";

    fn built(arch: &str, seed: u64) -> (ArchSpec, Model, ParamStore<R>) {
        let spec = by_name(arch).unwrap();
        let mut t = ParamTable::new();
        let model = spec.build(&mut t, "").unwrap();
        (spec, model, t.build(&R::new(), seed).unwrap())
    }

    /// Deterministic, non-trivial values for every state tensor (running statistics).
    fn randomize_state(store: &mut ParamStore<R>) {
        let b = R::new();
        let states: Vec<Entry> =
            store.table.entries().iter().filter(|e| e.param.kind == Kind::State).cloned().collect();
        for (k, e) in states.iter().enumerate() {
            let data: Vec<f32> = (0..e.param.len).map(|i| 0.5 + ((i * 7 + k * 3) % 11) as f32 / 10.0).collect();
            store.set(&b, &e.name, &e.shape, &data).unwrap();
        }
    }

    fn input(shape: &[usize]) -> Tensor<R> {
        let n: usize = shape.iter().product();
        let data: Vec<f64> = (0..n).map(|i| ((i * 37 % 101) as f64 / 101.0) - 0.3).collect();
        Tensor::from_f64(&R::new(), shape, &data).unwrap()
    }

    fn all_values(store: &ParamStore<R>) -> BTreeMap<String, Vec<f32>> {
        let b = R::new();
        store.table.entries().iter().map(|e| (e.name.clone(), store.get(&b, &e.name).unwrap())).collect()
    }

    fn roundtrip(arch: &str, x_shape: &[usize]) {
        let b = R::new();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let (spec, model, mut store) = built(arch, 7);
        randomize_state(&mut store);
        save_model(&path, &spec, &store, &b, "", SaveOptions::default()).unwrap();
        let meta = read_metadata(&path).unwrap();
        assert_eq!(meta["cim.arch"], spec.arch_string());
        assert_eq!(meta["cim.version"], env!("CARGO_PKG_VERSION"));
        let loaded = load_model(&path, None, &b).unwrap();
        assert_eq!(loaded.spec, spec);
        assert_eq!(all_values(&loaded.store), all_values(&store));
        let x = input(x_shape);
        let y0 = model.infer(&b, &store, &x).unwrap().to_vec(&b).unwrap();
        let y1 = loaded.model.infer(&b, &loaded.store, &x).unwrap().to_vec(&b).unwrap();
        assert_eq!(y0, y1);
        // A freshly initialized store with another seed differs, and load_into fixes it.
        let (_, _, mut other) = built(arch, 99);
        assert_ne!(all_values(&other), all_values(&store));
        let report = load_into(&path, &mut other, &b, "").unwrap();
        assert_eq!(report.loaded, store.table.entries().len());
        assert_eq!(all_values(&other), all_values(&store));
    }

    #[test]
    fn vit_roundtrip() {
        roundtrip(VIT, &[2, 3, 8, 8]);
    }

    #[test]
    fn resnet_roundtrip_with_running_stats() {
        roundtrip(RESNET, &[2, 3, 8, 8]);
        // The file carries torchvision's num_batches_tracked as an I64 scalar.
        let b = R::new();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.safetensors");
        let (spec, _, store) = built(RESNET, 1);
        save_model(&path, &spec, &store, &b, "", SaveOptions::default()).unwrap();
        let bytes = fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for name in ["bn1.num_batches_tracked", "layer2.0.downsample.1.num_batches_tracked"] {
            let v = st.tensor(name).unwrap();
            assert_eq!((v.dtype(), v.shape()), (Dtype::I64, &[][..]), "{name}");
        }
        assert!(st.tensor("layer1.0.downsample.0.weight").is_err(), "layer1 keeps its width");
        assert!(st.tensor("layer2.0.downsample.0.weight").is_ok());
        assert!(st.tensor("fc.weight").is_ok() && st.tensor("bn1.running_var").is_ok());
    }

    #[test]
    fn dvae_roundtrip() {
        roundtrip(ENC, &[1, 3, 8, 8]);
        roundtrip(DEC, &[1, 16, 4, 4]);
    }

    #[test]
    fn registry_names_save_as_names() {
        let spec = by_name("dvae_small_encoder").unwrap();
        assert_eq!(spec.metadata()["cim.arch"], "dvae_small_encoder");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("enc.safetensors");
        let b = R::new();
        let mut t = ParamTable::new();
        spec.build(&mut t, "").unwrap();
        let store = t.build(&b, 3).unwrap();
        save_model(&path, &spec, &store, &b, "", SaveOptions::default()).unwrap();
        let names: Vec<String> = SafeTensors::deserialize(&fs::read(&path).unwrap())
            .unwrap()
            .names()
            .iter()
            .map(|s| s.to_string())
            .collect();
        for n in ["blocks.input.w", "blocks.group_1.block_1.res_path.conv_1.w", "blocks.output.conv.b"] {
            assert!(names.iter().any(|x| x == n), "{n}");
        }
        assert_eq!(load_model(&path, None, &b).unwrap().spec, spec);
    }

    /// Rewrite a file's tensors through `edit` (name → (dtype, shape, bytes)).
    fn rewrite(src: &Path, dst: &Path, edit: impl FnOnce(&mut BTreeMap<String, Owned>)) {
        let bytes = fs::read(src).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut m: BTreeMap<String, Owned> = st
            .iter()
            .map(|(n, v)| {
                (n.to_string(), Owned { dtype: v.dtype(), shape: v.shape().to_vec(), data: v.data().to_vec() })
            })
            .collect();
        edit(&mut m);
        fs::write(dst, safetensors::serialize(m, None).unwrap()).unwrap();
    }

    #[test]
    fn mismatches_name_every_tensor_and_leave_the_store_alone() {
        let b = R::new();
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.safetensors");
        let bad = dir.path().join("bad.safetensors");
        let (spec, _, store) = built(RESNET, 1);
        save_model(&good, &spec, &store, &b, "", SaveOptions::default()).unwrap();
        rewrite(&good, &bad, |m| {
            m.remove("layer3.0.conv2.weight").unwrap();
            m.remove("bn1.running_var").unwrap();
            m.insert("extra.weight".into(), Owned { dtype: Dtype::F32, shape: vec![1], data: vec![0; 4] });
            let w = m.get_mut("fc.bias").unwrap();
            w.shape = vec![1, 5];
        });
        let (_, _, mut other) = built(RESNET, 2);
        let before = all_values(&other);
        let e = load_into(&bad, &mut other, &b, "").unwrap_err().to_string();
        for want in [
            "layer3.0.conv2.weight",
            "bn1.running_var",
            "extra.weight",
            "fc.bias (file [1, 5], model [5])",
            "2 tensors missing",
            "1 tensor in the file but not in the model",
            "1 tensor of the wrong shape",
        ] {
            assert!(e.contains(want), "{want:?} not in: {e}");
        }
        assert_eq!(all_values(&other), before, "a failed load writes nothing");
        // Loading into the wrong architecture says so.
        let (_, _, mut vit) = built(VIT, 2);
        let e = load_into(&good, &mut vit, &b, "").unwrap_err().to_string();
        assert!(e.contains("wrong architecture") && e.contains("cim.arch = resnet("), "{e}");
        // An unsupported dtype is named too.
        rewrite(&good, &bad, |m| {
            let w = m.get_mut("fc.bias").unwrap();
            w.dtype = Dtype::I32;
        });
        let e = load_into(&bad, &mut other, &b, "").unwrap_err().to_string();
        assert!(e.contains("fc.bias (I32)"), "{e}");
    }

    #[test]
    fn truncated_and_corrupt_files_are_errors() {
        let b = R::new();
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.safetensors");
        let (spec, _, store) = built(VIT, 1);
        save_model(&good, &spec, &store, &b, "", SaveOptions::default()).unwrap();
        let bytes = fs::read(&good).unwrap();
        let cut = dir.path().join("cut.safetensors");
        for len in [0, 3, 8, 20, bytes.len() / 2, bytes.len() - 1] {
            fs::write(&cut, &bytes[..len]).unwrap();
            let (_, _, mut s) = built(VIT, 1);
            let e = load_into(&cut, &mut s, &b, "").unwrap_err().to_string();
            assert!(e.contains("truncated or corrupt"), "{len}: {e}");
            assert!(load_model(&cut, None, &b).is_err());
        }
        // The header-only reader notices a short file too.
        fs::write(&cut, &bytes[..20]).unwrap();
        assert!(read_metadata(&cut).unwrap_err().to_string().contains("truncated or corrupt"));
        let mut garbage = bytes.clone();
        garbage[10] = b'!';
        fs::write(&cut, &garbage).unwrap();
        assert!(load_model(&cut, None, &b).err().unwrap().to_string().contains("corrupt"));
        let missing = dir.path().join("nope.safetensors");
        assert!(load_model(&missing, None, &b).err().unwrap().to_string().contains("cannot read"));
    }

    #[test]
    fn saving_is_atomic() {
        let b = R::new();
        let dir = tempfile::tempdir().unwrap();
        let (spec, _, store) = built(VIT, 1);
        let no_dir = dir.path().join("missing").join("m.safetensors");
        let e = save_model(&no_dir, &spec, &store, &b, "", SaveOptions::default()).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        // The target is a directory: an error, and the directory is untouched.
        let as_dir = dir.path().join("d.safetensors");
        fs::create_dir(&as_dir).unwrap();
        fs::write(as_dir.join("keep"), b"x").unwrap();
        assert!(save_model(&as_dir, &spec, &store, &b, "", SaveOptions::default()).is_err());
        assert_eq!(fs::read(as_dir.join("keep")).unwrap(), b"x");
        // A write that fails half-way (a full disk) leaves the previous file intact.
        let path = dir.path().join("m.safetensors");
        save_model(&path, &spec, &store, &b, "", SaveOptions::default()).unwrap();
        let before = fs::read(&path).unwrap();
        let e = write_atomic_with(&path, |f| {
            f.write_all(&before[..before.len() / 2])?;
            Err(io::Error::other("simulated: no space left on device"))
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("no space left") && e.contains("unchanged"), "{e}");
        assert_eq!(fs::read(&path).unwrap(), before);
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 2, "no temporary file is left behind: {left:?}");
        // And a successful save replaces it.
        let (_, _, other) = built(VIT, 5);
        save_model(&path, &spec, &other, &b, "", SaveOptions::default()).unwrap();
        assert_ne!(fs::read(&path).unwrap(), before);
        // Nothing under the prefix: an error, no file.
        let e = save(dir.path().join("e.safetensors"), &store, &b, "nope", &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("nothing to save"), "{e}");
        assert!(!dir.path().join("e.safetensors").exists());
    }

    #[test]
    fn f16_bf16_and_f64_files_convert() {
        let b = R::new();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.safetensors");
        let (spec, _, store) = built(ENC, 4);
        save_model(&path, &spec, &store, &b, "", SaveOptions { dtype: SaveDtype::F16 }).unwrap();
        assert_eq!(read_metadata(&path).unwrap()["cim.dtype"], "F16");
        let loaded = load_model(&path, None, &b).unwrap();
        assert_eq!(loaded.report.dtypes.get("F16"), Some(&loaded.report.loaded));
        for (name, v) in all_values(&store) {
            let got = loaded.store.get(&b, &name).unwrap();
            for (a, g) in v.iter().zip(&got) {
                assert_eq!(DType::F16.round(*a as f64) as f32, *g, "{name}");
            }
        }
        // BF16 and F64 written by another tool.
        for (dt, width) in [(Dtype::BF16, 2), (Dtype::F64, 8)] {
            let other = dir.path().join("o.safetensors");
            let mut m = BTreeMap::new();
            for e in store.table.entries() {
                let vals = store.get(&b, &e.name).unwrap();
                let mut data = Vec::with_capacity(vals.len() * width);
                for v in &vals {
                    match dt {
                        Dtype::BF16 => data.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes()),
                        _ => data.extend_from_slice(&(*v as f64).to_le_bytes()),
                    }
                }
                m.insert(e.name.clone(), Owned { dtype: dt, shape: e.shape.clone(), data });
            }
            fs::write(&other, safetensors::serialize(m, None).unwrap()).unwrap();
            let l = load_model(&other, Some(ENC), &b).unwrap();
            let name = "blocks.input.w";
            let want: Vec<f32> = store.get(&b, name).unwrap();
            let got = l.store.get(&b, name).unwrap();
            for (w, g) in want.iter().zip(&got) {
                let r = if dt == Dtype::BF16 { DType::BF16.round(*w as f64) as f32 } else { *w };
                assert_eq!(r, *g);
            }
        }
        // A value beyond F16's range is an error, not an infinity.
        let mut big = built(ENC, 4).2;
        big.set(&b, "blocks.input.b", &[8], &[1e6; 8]).unwrap();
        let e = save_model(&path, &spec, &big, &b, "", SaveOptions { dtype: SaveDtype::F16 }).unwrap_err();
        assert!(e.to_string().contains("does not fit F16"), "{e}");
    }

    #[test]
    fn torchvision_file_with_num_batches_tracked_loads_by_name() {
        let b = R::new();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tv.safetensors");
        let (spec, model, store) = built(RESNET, 11);
        // As torchvision's state_dict, written by another tool: F32 tensors, an I64
        // scalar per batch norm, no metadata.
        let mut m = BTreeMap::new();
        let mut counters = 0;
        for e in store.table.entries() {
            let data: Vec<u8> = store.get(&b, &e.name).unwrap().iter().flat_map(|v| v.to_le_bytes()).collect();
            m.insert(e.name.clone(), Owned { dtype: Dtype::F32, shape: e.shape.clone(), data });
            if let Some(stem) = e.name.strip_suffix("running_var") {
                m.insert(
                    format!("{stem}num_batches_tracked"),
                    Owned { dtype: Dtype::I64, shape: vec![], data: 1234i64.to_le_bytes().to_vec() },
                );
                counters += 1;
            }
        }
        fs::write(&path, safetensors::serialize(m, None).unwrap()).unwrap();
        // Without a name: a clear error that says what to do.
        let e = load_model(&path, None, &b).err().unwrap().to_string();
        assert!(e.contains("--arch") && e.contains("resnet18") && e.contains("vit_base_patch16_224"), "{e}");
        let loaded = load_model(&path, Some(RESNET), &b).unwrap();
        assert_eq!(loaded.spec, spec);
        assert_eq!(loaded.report.ignored.len(), counters);
        assert!(loaded.report.ignored.contains(&"bn1.num_batches_tracked".to_string()));
        assert_eq!(all_values(&loaded.store), all_values(&store));
        let x = input(&[1, 3, 8, 8]);
        assert_eq!(
            model.infer(&b, &store, &x).unwrap().to_vec(&b).unwrap(),
            loaded.model.infer(&b, &loaded.store, &x).unwrap().to_vec(&b).unwrap()
        );
        // The head follows the file: without fc.* the headless network loads.
        let headless = dir.path().join("headless.safetensors");
        rewrite(&path, &headless, |m| {
            m.remove("fc.weight");
            m.remove("fc.bias");
        });
        let l = load_model(&headless, Some(RESNET), &b).unwrap();
        assert_eq!(l.spec.classes(), None);
        // An unknown name lists the known ones.
        let e = load_model(&path, Some("resnet19"), &b).err().unwrap().to_string();
        assert!(e.contains("resnet19") && e.contains("resnet50x2"), "{e}");
    }

    #[test]
    fn prefixed_save_resolves_aliases() {
        // A generator and an enhancer that shares its patch embedding and first block.
        let b = R::new();
        let cfg = VitConfig::new(8, 4, 8, 2, 2);
        let mut t = ParamTable::new();
        Vit::new(&mut t, "generator", cfg).unwrap();
        build_embed(&mut t, "enhancer", &cfg, false, Some("generator")).unwrap();
        build_blocks(&mut t, "enhancer", &cfg, Some(("generator", 1))).unwrap();
        LayerNorm::new(&mut t, "enhancer.norm", 8, 1e-6).unwrap();
        assert!(t.entry("enhancer.patch_embed.proj.weight").unwrap().alias_of.is_some());
        let store = t.build(&b, 5).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("enh.safetensors");
        let spec = ArchSpec { kind: crate::arch::ArchKind::Vit { cfg, classes: None } };
        save_model(&path, &spec, &store, &b, "enhancer.", SaveOptions::default()).unwrap();
        let loaded = load_model(&path, None, &b).unwrap();
        assert_eq!(loaded.store.table.entries().len(), store.table.with_prefix("enhancer.").count());
        for name in ["patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.bias", "norm.weight"] {
            assert_eq!(loaded.store.get(&b, name).unwrap(), store.get(&b, &format!("enhancer.{name}")).unwrap());
        }
        assert_eq!(
            loaded.store.get(&b, "patch_embed.proj.weight").unwrap(),
            store.get(&b, "generator.patch_embed.proj.weight").unwrap()
        );
        // Loading back under the prefix writes through the alias into the shared root.
        let mut t2 = ParamTable::new();
        Vit::new(&mut t2, "generator", cfg).unwrap();
        build_embed(&mut t2, "enhancer", &cfg, false, Some("generator")).unwrap();
        build_blocks(&mut t2, "enhancer", &cfg, Some(("generator", 1))).unwrap();
        LayerNorm::new(&mut t2, "enhancer.norm", 8, 1e-6).unwrap();
        let mut store2 = t2.build(&b, 77).unwrap();
        load_into(&path, &mut store2, &b, "enhancer").unwrap();
        assert_eq!(
            store2.get(&b, "generator.blocks.0.attn.qkv.weight").unwrap(),
            store.get(&b, "generator.blocks.0.attn.qkv.weight").unwrap()
        );
    }

    #[test]
    fn timm_names_are_registered() {
        let spec = by_name("vit(img=8,patch=4,dim=8,depth=1,heads=2,classes=10)").unwrap();
        let mut t = ParamTable::new();
        spec.build(&mut t, "").unwrap();
        for n in [
            "patch_embed.proj.weight",
            "cls_token",
            "pos_embed",
            "blocks.0.attn.qkv.weight",
            "norm.weight",
            "head.weight",
        ] {
            assert!(t.entry(n).is_some(), "{n}");
        }
        let spec = by_name("resnet50").unwrap();
        let mut t = ParamTable::new();
        spec.build(&mut t, "").unwrap();
        for n in ["conv1.weight", "bn1.running_mean", "bn1.running_var", "layer1.0.downsample.0.weight", "fc.weight"] {
            assert!(t.entry(n).is_some(), "{n}");
        }
    }
}
