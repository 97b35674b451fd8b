//! The CUDA C sources of the backend's kernels, compiled at run time (NVRTC on the GPU,
//! a host C++ compiler in the emulator), and the kernel signatures parsed from them, so
//! that every launch is checked against the parameter list it passes.

/// Device-side prelude for NVRTC.
pub const PRELUDE_GPU: &str = include_str!("prelude_gpu.cuh");
/// Host-side prelude for the emulator.
pub const PRELUDE_HOST: &str = include_str!("prelude_host.h");
/// Helpers shared by every source (after a prelude).
pub const COMMON: &str = include_str!("common.cuh");

/// The kernel sources, by file name.
pub const SOURCES: &[(&str, &str)] = &[
    ("elementwise.cu", include_str!("elementwise.cu")),
    ("rows.cu", include_str!("rows.cu")),
    ("norm.cu", include_str!("norm.cu")),
    ("pool.cu", include_str!("pool.cu")),
    ("misc.cu", include_str!("misc.cu")),
];

/// One translation unit: a prelude, the common helpers and the given sources.
pub fn program(prelude: &str, sources: &[(&str, &str)]) -> String {
    let mut s = String::with_capacity(64 * 1024);
    s.push_str(prelude);
    s.push('\n');
    s.push_str(COMMON);
    for (name, src) in sources {
        s.push_str(&format!("\n// ---- {name} ----\n"));
        s.push_str(src);
    }
    s
}

/// The C type of a kernel parameter, as the launcher passes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgKind {
    /// Any pointer (`float*`, `const unsigned int*`, `double*`): a 64-bit device address.
    Ptr,
    /// `int`.
    I32,
    /// `long long`.
    I64,
    /// `unsigned long long`.
    U64,
    /// `float`.
    F32,
    /// `double`.
    F64,
    /// `Dims8` (eight `long long`, by value).
    Dims8,
}

/// A kernel's name and its parameters: declared type text and kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub name: String,
    pub params: Vec<(String, ArgKind)>,
}

/// Classify one parameter declaration (`const float* x`, `long long n`, ...).
/// Returns the declared type text (without the name) and its kind.
pub fn classify_param(decl: &str) -> Result<(String, ArgKind), String> {
    let decl = decl.split_whitespace().collect::<Vec<_>>().join(" ");
    let name_start = decl
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map(|i| i + 1)
        .ok_or_else(|| format!("parameter `{decl}` has no type"))?;
    let ty = decl[..name_start].trim().to_string();
    if ty.is_empty() {
        return Err(format!("parameter `{decl}` has no type"));
    }
    let kind = if ty.ends_with('*') {
        ArgKind::Ptr
    } else {
        match ty.trim_start_matches("const ").trim() {
            "int" => ArgKind::I32,
            "long long" => ArgKind::I64,
            "unsigned long long" => ArgKind::U64,
            "float" => ArgKind::F32,
            "double" => ArgKind::F64,
            "Dims8" => ArgKind::Dims8,
            other => return Err(format!("parameter `{decl}`: unsupported type `{other}`")),
        }
    };
    Ok((ty, kind))
}

/// Every `CIM_KERNEL name(params)` of a source, in order.
pub fn parse_signatures(src: &str) -> Result<Vec<Signature>, String> {
    const MARK: &str = "CIM_KERNEL ";
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(at) = rest.find(MARK) {
        let after = &rest[at + MARK.len()..];
        // Skip the macro's own definition in a prelude.
        let open = after.find('(').ok_or("kernel without a parameter list")?;
        let name = after[..open].trim();
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || name.is_empty() {
            rest = after;
            continue;
        }
        let close = after[open..].find(')').ok_or_else(|| format!("kernel {name}: unterminated parameter list"))?;
        let list = &after[open + 1..open + close];
        let params = if list.trim().is_empty() {
            Vec::new()
        } else {
            list.split(',').map(classify_param).collect::<Result<Vec<_>, _>>().map_err(|e| format!("{name}: {e}"))?
        };
        out.push(Signature { name: name.to_string(), params });
        rest = &after[open + close..];
    }
    Ok(out)
}

/// The signatures of every kernel of [`SOURCES`].
pub fn all_signatures() -> Result<Vec<Signature>, String> {
    let mut all = Vec::new();
    for (file, src) in SOURCES {
        all.extend(parse_signatures(src).map_err(|e| format!("{file}: {e}"))?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_classified() {
        assert_eq!(classify_param(" const float* x").unwrap(), ("const float*".into(), ArgKind::Ptr));
        assert_eq!(classify_param("unsigned int *idx").unwrap().1, ArgKind::Ptr);
        assert_eq!(classify_param("long long n").unwrap(), ("long long".into(), ArgKind::I64));
        assert_eq!(classify_param("unsigned long long seed").unwrap().1, ArgKind::U64);
        assert_eq!(classify_param("double eps").unwrap().1, ArgKind::F64);
        assert_eq!(classify_param("float t").unwrap().1, ArgKind::F32);
        assert_eq!(classify_param("int op").unwrap().1, ArgKind::I32);
        assert_eq!(classify_param("Dims8 shape").unwrap().1, ArgKind::Dims8);
        assert!(classify_param("size_t n").is_err());
        assert!(classify_param("n").is_err());
    }

    #[test]
    fn every_kernel_parses_and_names_are_unique() {
        let sigs = all_signatures().unwrap();
        assert!(sigs.len() >= 40, "only {} kernels found", sigs.len());
        let mut names: Vec<&str> = sigs.iter().map(|s| s.name.as_str()).collect();
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate kernel names");
        assert!(names.iter().all(|n| n.starts_with("cim_")));
        // The preludes define the macro but no kernel.
        assert!(parse_signatures(PRELUDE_GPU).unwrap().is_empty());
        assert!(parse_signatures(PRELUDE_HOST).unwrap().is_empty());
    }

    #[test]
    fn sources_avoid_what_the_emulator_cannot_run() {
        for (file, src) in SOURCES {
            for banned in ["__shared__", "__syncthreads", "__shfl", "threadIdx", "blockIdx", "#include"] {
                assert!(!src.contains(banned), "{file} uses {banned}");
            }
        }
    }
}
