//! Models from a safetensors file held in memory, without `std`: the loader for devices
//! with no file system, where the weights are a byte slice (`include_bytes!`, flash).
//!
//! [`SafetensorsBytes::parse`] reads the format (an 8-byte little-endian header length,
//! a JSON header naming each tensor's dtype, shape and byte range, then the data) with a
//! small JSON reader of its own, since `serde_json` and the `safetensors` crate need
//! `std` here. [`load_model`] builds the model the bytes hold and loads it with the same
//! rules as `checkpoint::load_model` (feature `std`): the architecture from `cim.arch`
//! or the caller, the classifier following the file, every tensor present with its
//! exact shape, nothing unexpected (`num_batches_tracked` is accepted and ignored);
//! `F32`, `F16`, `BF16` and `F64` convert to the backend's element type. Truncated or
//! corrupt bytes are an error, never a panic.

use crate::arch::{self, ArchSpec, Model};
use crate::backend::Backend;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::params::{Kind, ParamStore, ParamTable};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

/// The largest header accepted (the `safetensors` crate's limit).
const MAX_HEADER: usize = 100_000_000;
/// JSON nesting deeper than this is refused (a safetensors header nests three levels).
const MAX_DEPTH: usize = 16;
/// The batch-norm counter torchvision writes and cim ignores.
const NUM_BATCHES_TRACKED: &str = "num_batches_tracked";

fn bad(detail: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: "(bytes)".to_string(),
        detail: format!("not a valid safetensors file (truncated or corrupt?): {}", detail.into()),
    }
}

/// A tensor's element type in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileDtype {
    F64,
    F32,
    F16,
    BF16,
    /// Any other type (integers, booleans, 8-bit floats): carried, not converted.
    Other(usize),
}

impl FileDtype {
    fn parse(s: &str) -> Option<FileDtype> {
        Some(match s {
            "F64" => FileDtype::F64,
            "F32" => FileDtype::F32,
            "F16" => FileDtype::F16,
            "BF16" => FileDtype::BF16,
            "I64" | "U64" => FileDtype::Other(8),
            "I32" | "U32" => FileDtype::Other(4),
            "I16" | "U16" => FileDtype::Other(2),
            "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => FileDtype::Other(1),
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            FileDtype::F64 => 8,
            FileDtype::F32 => 4,
            FileDtype::F16 | FileDtype::BF16 => 2,
            FileDtype::Other(n) => n,
        }
    }
}

/// One tensor of the file: a view of its bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorBytes<'a> {
    pub name: String,
    pub dtype: FileDtype,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

impl TensorBytes<'_> {
    /// The values as `E` (`None` for a dtype other than F32, F16, BF16, F64).
    pub fn decode<E: Element>(&self) -> Option<Vec<E>> {
        let d = self.data;
        Some(match self.dtype {
            FileDtype::F32 => {
                d.chunks_exact(4).map(|c| E::of(f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)).collect()
            }
            FileDtype::F64 => d
                .chunks_exact(8)
                .map(|c| E::of(f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])))
                .collect(),
            FileDtype::F16 => {
                d.chunks_exact(2).map(|c| E::of(half::f16::from_le_bytes([c[0], c[1]]).to_f64())).collect()
            }
            FileDtype::BF16 => {
                d.chunks_exact(2).map(|c| E::of(half::bf16::from_le_bytes([c[0], c[1]]).to_f64())).collect()
            }
            FileDtype::Other(_) => return None,
        })
    }
}

/// A parsed safetensors file in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct SafetensorsBytes<'a> {
    tensors: Vec<TensorBytes<'a>>,
    metadata: BTreeMap<String, String>,
}

impl<'a> SafetensorsBytes<'a> {
    /// Parse the header and check every tensor's byte range against the data.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let Some((len, rest)) = bytes.split_first_chunk::<8>() else {
            return Err(bad(format!("only {} bytes", bytes.len())));
        };
        let n = u64::from_le_bytes(*len);
        if n > MAX_HEADER as u64 || n > rest.len() as u64 {
            return Err(bad(format!("header length {n} does not fit {} bytes", rest.len())));
        }
        let (header, data) = rest.split_at(n as usize);
        let header = core::str::from_utf8(header).map_err(|_| bad("the header is not UTF-8"))?;
        let Json::Obj(entries) = Parser::new(header).document()? else {
            return Err(bad("the header is not a JSON object"));
        };
        let mut tensors = Vec::with_capacity(entries.len());
        let mut metadata = BTreeMap::new();
        for (name, value) in entries {
            if name == "__metadata__" {
                let Json::Obj(m) = value else { return Err(bad("__metadata__ is not an object")) };
                for (k, v) in m {
                    let Json::Str(v) = v else { return Err(bad(format!("metadata {k:?} is not a string"))) };
                    metadata.insert(k, v);
                }
                continue;
            }
            tensors.push(tensor_entry(name, value, data)?);
        }
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = tensors.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(bad(format!("tensor {} is listed twice", w[0].name)));
        }
        Ok(SafetensorsBytes { tensors, metadata })
    }

    /// The `__metadata__` entries.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Every tensor, by name.
    pub fn tensors(&self) -> &[TensorBytes<'a>] {
        &self.tensors
    }

    /// The tensor `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorBytes<'a>> {
        self.tensors.binary_search_by(|t| t.name.as_str().cmp(name)).ok().map(|i| &self.tensors[i])
    }
}

fn tensor_entry<'a>(name: String, value: Json, data: &'a [u8]) -> Result<TensorBytes<'a>> {
    let what = |d: &str| bad(format!("tensor {name}: {d}"));
    let Json::Obj(fields) = value else { return Err(what("not an object")) };
    let field = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v);
    let dtype = match field("dtype") {
        Some(Json::Str(s)) => FileDtype::parse(s).ok_or_else(|| what(&format!("unknown dtype {s}")))?,
        _ => return Err(what("no dtype")),
    };
    let ints = |k: &str| -> Result<Vec<usize>> {
        let Some(Json::Arr(items)) = field(k) else { return Err(what(&format!("no {k} list"))) };
        items
            .iter()
            .map(|v| match v {
                Json::Num(s) => {
                    s.parse::<usize>().map_err(|_| what(&format!("{k} entry {s} is not an unsigned integer")))
                }
                _ => Err(what(&format!("{k} entry is not a number"))),
            })
            .collect()
    };
    let shape = ints("shape")?;
    let offsets = ints("data_offsets")?;
    let [begin, end] = offsets[..] else { return Err(what("data_offsets is not [begin, end]")) };
    let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| what("shape overflows"))?;
    let bytes = numel.checked_mul(dtype.size()).ok_or_else(|| what("shape overflows"))?;
    if begin > end || end > data.len() || end - begin != bytes {
        return Err(what(&format!(
            "bytes {begin}..{end} do not hold {numel} values of {} bytes within the {} data bytes",
            dtype.size(),
            data.len()
        )));
    }
    Ok(TensorBytes { name, dtype, shape, data: &data[begin..end] })
}

// ---- a JSON reader for the header ---------------------------------------------------------

/// The JSON values a header holds (numbers kept as their text).
#[derive(Debug)]
enum Json {
    Null,
    Bool,
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn new(s: &'a str) -> Self {
        Parser { s: s.as_bytes(), i: 0, depth: 0 }
    }

    fn err<T>(&self, what: &str) -> Result<T> {
        Err(bad(format!("header JSON: {what} at byte {}", self.i)))
    }

    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Result<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            self.err(&format!("expected {:?}", c as char))
        }
    }

    /// The whole header: one value and nothing after it.
    fn document(&mut self) -> Result<Json> {
        let v = self.value()?;
        if self.peek().is_some() {
            return self.err("trailing characters");
        }
        Ok(v)
    }

    fn value(&mut self) -> Result<Json> {
        match self.peek() {
            Some(b'{') => self.nested(|p| p.object()),
            Some(b'[') => self.nested(|p| p.array()),
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b'-' | b'0'..=b'9') => Ok(Json::Num(self.number())),
            Some(b't') => self.word("true", Json::Bool),
            Some(b'f') => self.word("false", Json::Bool),
            Some(b'n') => self.word("null", Json::Null),
            Some(_) => self.err("unexpected character"),
            None => self.err("unexpected end"),
        }
    }

    fn nested(&mut self, f: impl FnOnce(&mut Self) -> Result<Json>) -> Result<Json> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.err("nesting too deep");
        }
        let v = f(self)?;
        self.depth -= 1;
        Ok(v)
    }

    fn word(&mut self, w: &str, v: Json) -> Result<Json> {
        if self.s[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            Ok(v)
        } else {
            self.err("unexpected word")
        }
    }

    fn number(&mut self) -> String {
        let start = self.i;
        while self.s.get(self.i).is_some_and(|c| matches!(c, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')) {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    fn object(&mut self) -> Result<Json> {
        self.eat(b'{')?;
        let mut out = Vec::new();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(Json::Obj(out));
        }
        loop {
            if self.peek() != Some(b'"') {
                return self.err("expected a key");
            }
            let k = self.string()?;
            self.eat(b':')?;
            out.push((k, self.value()?));
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Json::Obj(out));
                }
                _ => return self.err("expected ',' or '}'"),
            }
        }
    }

    fn array(&mut self) -> Result<Json> {
        self.eat(b'[')?;
        let mut out = Vec::new();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(Json::Arr(out));
        }
        loop {
            out.push(self.value()?);
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Json::Arr(out));
                }
                _ => return self.err("expected ',' or ']'"),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32> {
        let h = self.s.get(self.i..self.i + 4).and_then(|h| core::str::from_utf8(h).ok());
        match h.and_then(|h| u32::from_str_radix(h, 16).ok()) {
            Some(v) => {
                self.i += 4;
                Ok(v)
            }
            None => self.err("bad \\u escape"),
        }
    }

    fn string(&mut self) -> Result<String> {
        self.eat(b'"')?;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.i) else { return self.err("unterminated string") };
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.s.get(self.i) else { return self.err("unterminated escape") };
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) && self.s[self.i..].starts_with(b"\\u") {
                                self.i += 2;
                                match self.hex4()? {
                                    lo @ 0xDC00..0xE000 => 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00),
                                    _ => 0xFFFD,
                                }
                            } else {
                                hi
                            };
                            char::from_u32(code).unwrap_or('\u{FFFD}')
                        }
                        _ => return self.err("bad escape"),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                c => out.push(c),
            }
        }
        // The input was UTF-8 and escapes add whole characters, so this cannot fail.
        String::from_utf8(out).map_err(|_| bad("header JSON: a string is not UTF-8"))
    }
}

// ---- loading a model ----------------------------------------------------------------------

/// The classifier follows the file (as `checkpoint::load_model`).
fn fit_head(spec: ArchSpec, st: &SafetensorsBytes<'_>) -> ArchSpec {
    let Some((w, bias)) = spec.head_names() else {
        return spec;
    };
    match st.tensor(w) {
        Some(v) if v.shape.len() == 2 && v.shape[0] > 0 => spec.with_classes(Some(v.shape[0])),
        None if st.tensor(bias).is_none() => spec.with_classes(None),
        _ => spec,
    }
}

fn ck(detail: String) -> Error {
    Error::Checkpoint { path: "(bytes)".to_string(), detail }
}

/// Build the model that `bytes` (a safetensors file) holds and load it on `b`. `arch`
/// (a registry name or a serialized configuration) overrides the file's `cim.arch`;
/// a file without `cim.arch` needs it. See the module docs.
pub fn load_model<B: Backend>(b: &B, bytes: &[u8], arch: Option<&str>) -> Result<(ArchSpec, Model, ParamStore<B>)> {
    let st = SafetensorsBytes::parse(bytes)?;
    let spec = match (arch, st.metadata().get("cim.arch")) {
        (Some(a), _) => arch::by_name(a)?,
        (None, Some(a)) => arch::by_name(a)?,
        (None, None) => return Err(ck("no cim.arch metadata: name the architecture".to_string())),
    };
    let spec = fit_head(spec, &st);
    let mut table = ParamTable::new();
    let model = spec.build(&mut table, "")?;
    let mut problems = Vec::new();
    for e in table.entries() {
        match st.tensor(&e.name) {
            None => problems.push(format!("{} missing", e.name)),
            Some(t) if t.shape != e.shape => {
                problems.push(format!("{} has shape {:?}, the model {:?}", e.name, t.shape, e.shape))
            }
            Some(t) if matches!(t.dtype, FileDtype::Other(_)) => {
                problems.push(format!("{} has an unsupported dtype", e.name))
            }
            Some(_) => {}
        }
    }
    for t in st.tensors() {
        let counter = t.name.strip_suffix(NUM_BATCHES_TRACKED).is_some_and(|stem| {
            (stem.is_empty() || stem.ends_with('.')) && table.entry(&format!("{stem}running_mean")).is_some()
        });
        if table.entry(&t.name).is_none() && !counter {
            problems.push(format!("{} is not in the model", t.name));
        }
    }
    if !problems.is_empty() {
        return Err(ck(format!("does not fit {}: {}", spec.arch_string(), problems.join("; "))));
    }
    let mut params = vec![B::E::of(0.0); table.params_len()];
    let mut state = vec![B::E::of(0.0); table.state_len()];
    for e in table.entries().iter().filter(|e| e.alias_of.is_none()) {
        let values = st.tensor(&e.name).and_then(|t| t.decode::<B::E>()).unwrap_or_default();
        let dst = match e.param.kind {
            Kind::Trainable => &mut params,
            Kind::State => &mut state,
        };
        let range = e.param.offset..e.param.offset + e.param.len;
        match dst.get_mut(range) {
            Some(d) if d.len() == values.len() => d.copy_from_slice(&values),
            _ => return Err(ck(format!("{}: {} values for {}", e.name, values.len(), e.param.len))),
        }
    }
    let store = ParamStore { params: b.upload(&params)?, grads: b.alloc(0)?, state: b.upload(&state)?, table };
    Ok((spec, model, store))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Reference;
    use crate::tensor::Tensor;

    type R = Reference<f32>;

    /// A safetensors file from `(name, dtype, shape, bytes)` entries and a raw metadata body.
    fn file(entries: &[(&str, &str, &[usize], Vec<u8>)], metadata: &str) -> Vec<u8> {
        let mut header = format!("{{\"__metadata__\":{{{metadata}}}");
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in entries {
            let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            header += &format!(
                ",\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
                dims.join(","),
                data.len(),
                data.len() + bytes.len()
            );
            data.extend_from_slice(bytes);
        }
        header.push('}');
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&data);
        out
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn parses_tensors_dtypes_and_escaped_metadata() {
        let h: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect();
        let bytes = file(
            &[("a", "F32", &[2, 1], f32s(&[1.0, 2.0])), ("b", "F16", &[2], h), ("n", "I64", &[], vec![0; 8])],
            r#""cim.config":"x = \"q\"\nk = 1 \u00e9 \ud83d\ude00","k":"v""#,
        );
        let st = SafetensorsBytes::parse(&bytes).unwrap();
        assert_eq!(st.metadata()["cim.config"], "x = \"q\"\nk = 1 é 😀");
        assert_eq!(st.metadata()["k"], "v");
        let a = st.tensor("a").unwrap();
        assert_eq!((a.dtype, a.shape.as_slice()), (FileDtype::F32, &[2usize, 1][..]));
        assert_eq!(a.decode::<f32>().unwrap(), vec![1.0, 2.0]);
        assert_eq!(st.tensor("b").unwrap().decode::<f64>().unwrap(), vec![1.5, -2.0]);
        assert!(st.tensor("n").unwrap().decode::<f32>().is_none());
        assert!(st.tensor("zz").is_none());
    }

    #[test]
    fn corrupt_and_truncated_bytes_are_errors() {
        let good = file(&[("a", "F32", &[2], f32s(&[1.0, 2.0]))], "");
        assert!(SafetensorsBytes::parse(&good).is_ok());
        for len in 0..good.len() {
            let e = SafetensorsBytes::parse(&good[..len]).unwrap_err().to_string();
            assert!(e.contains("truncated or corrupt"), "{len}: {e}");
        }
        for (body, want) in [
            (r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, "do not hold"),
            (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}}"#, "do not hold"),
            (r#"{"a":{"dtype":"Q9","shape":[2],"data_offsets":[0,8]}}"#, "unknown dtype"),
            (r#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#, "unsigned"),
            (r#"{"a":{"dtype":"F32","shape":[99999999999,99999999999,9999999999],"data_offsets":[0,8]}}"#, "overflows"),
            (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}}"#, "[begin, end]"),
            (r#"{"a":1}"#, "not an object"),
            (r#"[1,2]"#, "not a JSON object"),
            (r#"{"a":{"dtype":"F32"}} x"#, "trailing"),
            (r#"{"__metadata__":{"k":3}}"#, "not a string"),
            (r#"{"a":"\q"}"#, "bad escape"),
            (r#"[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]"#, "too deep"),
        ] {
            let mut bytes = (body.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(body.as_bytes());
            bytes.extend_from_slice(&[0; 8]);
            let e = SafetensorsBytes::parse(&bytes).unwrap_err().to_string();
            assert!(e.contains(want), "{body}: {e}");
        }
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(SafetensorsBytes::parse(&huge).is_err());
    }

    #[test]
    fn loads_a_model_as_the_model_expects() {
        let spec = arch::by_name("vit(img=8,patch=4,dim=8,depth=1,heads=2,classes=3)").unwrap();
        let b = R::new();
        let mut t = ParamTable::new();
        let model = spec.build(&mut t, "").unwrap();
        let store = t.build(&b, 5).unwrap();
        let mut entries = Vec::new();
        for e in store.table.entries() {
            entries.push((e.name.clone(), store.get(&b, &e.name).unwrap()));
        }
        let owned: Vec<(&str, &str, &[usize], Vec<u8>)> = entries
            .iter()
            .zip(store.table.entries())
            .map(|((n, v), e)| (n.as_str(), "F32", e.shape.as_slice(), f32s(v)))
            .collect();
        let meta = format!("\"cim.arch\":\"{}\"", spec.arch_string());
        let bytes = file(&owned, &meta);
        let (spec2, model2, store2) = load_model(&b, &bytes, None).unwrap();
        assert_eq!(spec2, spec);
        let x =
            Tensor::from_f64(&b, &[1, 3, 8, 8], &(0..192).map(|i| (i % 7) as f64 / 7.0).collect::<Vec<_>>()).unwrap();
        assert_eq!(
            model.infer(&b, &store, &x).unwrap().to_vec(&b).unwrap(),
            model2.infer(&b, &store2, &x).unwrap().to_vec(&b).unwrap()
        );
        // Without cim.arch the caller names it; a missing tensor and an extra one are named.
        let bare = file(&owned, "");
        assert!(load_model(&b, &bare, None).err().unwrap().to_string().contains("name the architecture"));
        assert!(load_model(&b, &bare, Some(&spec.arch_string())).is_ok());
        let mut cut = owned.clone();
        cut.retain(|e| e.0 != "norm.weight");
        cut.push(("extra", "F32", &[1], f32s(&[0.0])));
        let e = load_model(&b, &file(&cut, &meta), None).err().unwrap().to_string();
        assert!(e.contains("norm.weight missing") && e.contains("extra is not in the model"), "{e}");
        let e = load_model(&b, &bytes, Some("vit_huge")).err().unwrap().to_string();
        assert!(e.contains("unknown architecture"), "{e}");
    }

    /// The example's weights (`examples/embedded_vit.rs`), through this loader and the
    /// `std` one.
    #[cfg(feature = "std")]
    #[test]
    fn example_weights_load_like_a_checkpoint() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/vit_embedded.safetensors");
        let bytes = std::fs::read(path).unwrap();
        let b = R::new();
        let (spec, model, store) = load_model(&b, &bytes, None).unwrap();
        assert_eq!(spec, arch::by_name(EXAMPLE_ARCH).unwrap());
        let loaded = crate::checkpoint::load_model(path, None, &b).unwrap();
        let x =
            Tensor::from_f64(&b, &[1, 3, 16, 16], &(0..768).map(|i| (i % 13) as f64 / 6.0 - 1.0).collect::<Vec<_>>())
                .unwrap();
        assert_eq!(
            model.infer(&b, &store, &x).unwrap().to_vec(&b).unwrap(),
            loaded.model.infer(&b, &loaded.store, &x).unwrap().to_vec(&b).unwrap()
        );
    }

    const EXAMPLE_ARCH: &str = "vit(img=16,patch=4,dim=32,depth=2,heads=2)";

    /// Writes the example's weights: `cargo test -p cim-core --lib -- --ignored write_example_weights`.
    #[cfg(feature = "std")]
    #[test]
    #[ignore]
    fn write_example_weights() {
        use crate::checkpoint::{save_model, SaveDtype, SaveOptions};
        let spec = arch::by_name(EXAMPLE_ARCH).unwrap();
        let b = R::new();
        let mut t = ParamTable::new();
        spec.build(&mut t, "").unwrap();
        let store = t.build(&b, 2023).unwrap();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/vit_embedded.safetensors");
        save_model(path, &spec, &store, &b, "", SaveOptions { dtype: SaveDtype::F16 }).unwrap();
    }
}
