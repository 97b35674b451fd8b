//! Data sources: image folders (JPEG / PNG), IDX files (MNIST, Fashion-MNIST) and the
//! CIFAR-10 / CIFAR-100 binary format, behind one [`Source`] trait and the [`Dataset`]
//! enum that [`Dataset::open`] fills by looking at what a folder holds.

use crate::error::{Error, Result};
use flate2::read::GzDecoder;
use image::RgbImage;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// What `cim` can read, for error messages.
pub const EXPECTED_FORMATS: &str = "expected one of: an IDX folder (MNIST / Fashion-MNIST: \
train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz], and t10k-images-idx3-ubyte[.gz] + \
t10k-labels-idx1-ubyte[.gz] for the test split); a CIFAR binary folder (CIFAR-10: data_batch_1..5.bin + \
test_batch.bin; CIFAR-100: train.bin + test.bin); or an image folder (JPEG / PNG files, searched \
recursively, one first-level sub-folder per class, optional train/ and val/ (or test/) split folders). \
For Fashion-MNIST, `apt-get install dataset-fashion-mnist` installs it to \
/usr/share/datasets/fashion-mnist; or pass another folder with --data DIR";

/// Where the Debian package `dataset-fashion-mnist` installs Fashion-MNIST.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// A data error.
pub(crate) fn data_err<T>(detail: impl Into<String>) -> Result<T> {
    Err(Error::Data { detail: detail.into() })
}

/// Which part of a data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// Training images (`train-*`, `data_batch_*.bin`, `train.bin`, `train/`).
    Train,
    /// Held-out images (`t10k-*`, `test_batch.bin`, `test.bin`, `val/` or `test/`).
    Test,
}

/// One image and its class.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The decoded image, 8-bit RGB (grayscale is replicated into the three channels).
    pub image: RgbImage,
    /// The class index, `None` where the data set has none for this image.
    pub label: Option<u32>,
}

impl Sample {
    /// The image as `[3, h, w]` `f32` values in `[0, 1]`.
    pub fn to_chw(&self) -> Vec<f32> {
        let (w, h) = self.image.dimensions();
        let plane = (w * h) as usize;
        let mut out = vec![0f32; 3 * plane];
        for (i, p) in self.image.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = p.0[c] as f32 / 255.0;
            }
        }
        out
    }
}

/// A random-access set of labelled images, shareable across threads.
pub trait Source: Send + Sync {
    /// The number of images.
    fn len(&self) -> usize;
    /// Whether there is no image.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Image `index` (`< len()`), decoded; an unreadable or corrupt image is an error
    /// (the loader skips it and reports it).
    fn get(&self, index: usize) -> Result<Sample>;
    /// Where image `index` comes from: its file, or `FILE#index` for an image inside an
    /// archive file.
    fn item_path(&self, index: usize) -> PathBuf;
    /// The number of classes, where known.
    fn num_classes(&self) -> Option<usize> {
        None
    }
}

/// The format [`Dataset::open`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// IDX files (MNIST, Fashion-MNIST).
    Idx,
    /// CIFAR-10 binary batches.
    Cifar10,
    /// CIFAR-100 binary files (the fine label is used).
    Cifar100,
    /// A folder of JPEG / PNG images.
    ImageFolder,
    /// Images held in memory, built with [`ArraySource::new`].
    Memory,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Idx => "IDX",
            Format::Cifar10 => "CIFAR-10",
            Format::Cifar100 => "CIFAR-100",
            Format::ImageFolder => "image folder",
            Format::Memory => "in-memory images",
        }
    }
}

// ---------------------------------------------------------------------------------------
// In-memory images (IDX, CIFAR, synthetic)
// ---------------------------------------------------------------------------------------

/// Equal-sized 8-bit images held in memory: what IDX and CIFAR files decode to, and a
/// way to feed synthetic data to the loader.
#[derive(Clone, Debug)]
pub struct ArraySource {
    format: Format,
    origin: PathBuf,
    width: u32,
    height: u32,
    channels: usize,
    planar: bool,
    pixels: Vec<u8>,
    labels: Option<Vec<u32>>,
    num_classes: Option<usize>,
}

impl ArraySource {
    /// `pixels` holds `n` images of `height × width × channels` bytes (`channels` 1 or 3),
    /// interleaved (`HWC`) or, with `planar`, channel after channel (`CHW`, as CIFAR);
    /// `labels`, where given, one per image. `origin` names the images in reports
    /// (`ORIGIN#index`).
    pub fn new(
        origin: impl Into<PathBuf>,
        width: u32,
        height: u32,
        channels: usize,
        planar: bool,
        pixels: Vec<u8>,
        labels: Option<Vec<u32>>,
    ) -> Result<Self> {
        let origin = origin.into();
        if width == 0 || height == 0 || !(channels == 1 || channels == 3) {
            return data_err(format!(
                "{}: images of {width}x{height} pixels with {channels} channels; need a non-zero size and 1 or 3 \
                 channels",
                origin.display()
            ));
        }
        let per = width as usize * height as usize * channels;
        if !pixels.len().is_multiple_of(per) {
            return data_err(format!(
                "{}: {} bytes of pixels is not a whole number of {width}x{height}x{channels} images",
                origin.display(),
                pixels.len()
            ));
        }
        let n = pixels.len() / per;
        if let Some(l) = &labels {
            if l.len() != n {
                return data_err(format!("{}: {n} images but {} labels", origin.display(), l.len()));
            }
        }
        let num_classes = labels.as_ref().and_then(|l| l.iter().max().map(|&m| m as usize + 1));
        Ok(ArraySource { format: Format::Memory, origin, width, height, channels, planar, pixels, labels, num_classes })
    }

    fn with_format(mut self, format: Format, num_classes: Option<usize>) -> Self {
        self.format = format;
        if num_classes.is_some() {
            self.num_classes = num_classes;
        }
        self
    }

    pub fn format(&self) -> Format {
        self.format
    }
    pub fn width(&self) -> u32 {
        self.width
    }
    pub fn height(&self) -> u32 {
        self.height
    }
    /// 1 (grayscale) or 3.
    pub fn channels(&self) -> usize {
        self.channels
    }
    /// The labels, one per image, where the source has them.
    pub fn labels(&self) -> Option<&[u32]> {
        self.labels.as_deref()
    }
}

impl Source for ArraySource {
    fn len(&self) -> usize {
        self.pixels.len() / (self.width as usize * self.height as usize * self.channels)
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let n = self.len();
        if index >= n {
            return data_err(format!("{}: image {index} out of range ({n} images)", self.origin.display()));
        }
        let plane = self.width as usize * self.height as usize;
        let per = plane * self.channels;
        let src = &self.pixels[index * per..(index + 1) * per];
        let mut buf = vec![0u8; plane * 3];
        match (self.channels, self.planar) {
            (1, _) => {
                for (o, &v) in buf.chunks_exact_mut(3).zip(src) {
                    o.fill(v);
                }
            }
            (_, false) => buf.copy_from_slice(src),
            (_, true) => {
                for (i, o) in buf.chunks_exact_mut(3).enumerate() {
                    for (c, v) in o.iter_mut().enumerate() {
                        *v = src[c * plane + i];
                    }
                }
            }
        }
        let image = RgbImage::from_raw(self.width, self.height, buf).expect("buffer sized to the image");
        Ok(Sample { image, label: self.labels.as_ref().map(|l| l[index]) })
    }

    fn item_path(&self, index: usize) -> PathBuf {
        PathBuf::from(format!("{}#{index}", self.origin.display()))
    }

    fn num_classes(&self) -> Option<usize> {
        self.num_classes
    }
}

// ---------------------------------------------------------------------------------------
// IDX
// ---------------------------------------------------------------------------------------

/// A file's bytes, gunzipped when it starts with the gzip magic (whatever its name).
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = fs::read(path).map_err(|e| Error::Data { detail: format!("cannot read {}: {e}", path.display()) })?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::Data { detail: format!("{}: corrupt or truncated gzip data: {e}", path.display()) })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// The dimensions and payload of an unsigned-byte IDX array of `ndims` dimensions.
pub(crate) fn parse_idx<'a>(path: &Path, bytes: &'a [u8], allowed_ndims: &[u8]) -> Result<(Vec<usize>, &'a [u8])> {
    let what = if allowed_ndims.contains(&1) { "labels (00 00 08 01)" } else { "images (00 00 08 03)" };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        let head = &bytes[..bytes.len().min(4)];
        return data_err(format!("{}: not an IDX file: bad magic number {head:02x?}; expected {what}", path.display()));
    }
    if bytes[2] != 0x08 {
        return data_err(format!(
            "{}: IDX element type 0x{:02x} is not supported: only unsigned bytes (0x08); expected {what}",
            path.display(),
            bytes[2]
        ));
    }
    let nd = bytes[3];
    if !allowed_ndims.contains(&nd) {
        return data_err(format!(
            "{}: IDX array of {nd} dimensions (magic {:02x?}); expected {what}",
            path.display(),
            &bytes[..4]
        ));
    }
    let header = 4 + 4 * nd as usize;
    if bytes.len() < header {
        return data_err(format!(
            "{}: truncated IDX header: {} bytes, the {nd} dimensions need {header}",
            path.display(),
            bytes.len()
        ));
    }
    let dims: Vec<usize> = (0..nd as usize)
        .map(|d| u32::from_be_bytes(bytes[4 + 4 * d..8 + 4 * d].try_into().expect("4 bytes")) as usize)
        .collect();
    let size = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let Some(size) = size else {
        return data_err(format!("{}: IDX dimensions {dims:?} overflow", path.display()));
    };
    let payload = &bytes[header..];
    if payload.len() < size {
        return data_err(format!(
            "{}: truncated IDX file: dimensions {dims:?} need {size} bytes of data, the file has {}",
            path.display(),
            payload.len()
        ));
    }
    if payload.len() > size {
        return data_err(format!(
            "{}: IDX file has {} bytes of data, {} more than its dimensions {dims:?} say",
            path.display(),
            payload.len(),
            payload.len() - size
        ));
    }
    Ok((dims, payload))
}

/// The names an IDX file of `prefix` (`train`, `t10k`) and `kind` (`images`, `labels`)
/// goes by: dashes or a dot before `idx`, gzipped or not.
fn idx_names(prefix: &str, kind: &str) -> Vec<String> {
    let nd = if kind == "images" { 3 } else { 1 };
    let mut v = Vec::new();
    for sep in ['-', '.'] {
        let base = format!("{prefix}-{kind}{sep}idx{nd}-ubyte");
        v.push(format!("{base}.gz"));
        v.push(base);
    }
    v
}

fn is_idx_name(name: &str) -> bool {
    (name.contains("-idx") || name.contains(".idx")) && name.contains("-ubyte")
}

fn idx_prefix(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "t10k",
    }
}

/// Read an IDX image / label pair of `split` from `dir`.
pub fn open_idx(dir: &Path, split: Split) -> Result<ArraySource> {
    let prefix = idx_prefix(split);
    let find = |kind: &str| -> Result<PathBuf> {
        let names = idx_names(prefix, kind);
        for n in &names {
            let p = dir.join(n);
            if p.is_file() {
                return Ok(p);
            }
        }
        let present: Vec<String> = list_names(dir).into_iter().filter(|n| is_idx_name(n)).collect();
        data_err(format!(
            "IDX folder {}: no {kind} file for the {split:?} split: expected {} or {} (gzipped or not); the folder has \
             {present:?}",
            dir.display(),
            names[1],
            names[3],
        ))
    };
    let img_path = find("images")?;
    let lab_path = find("labels")?;
    let img_bytes = read_maybe_gz(&img_path)?;
    let (dims, pixels) = parse_idx(&img_path, &img_bytes, &[3, 4])?;
    let channels = if dims.len() == 4 { dims[3] } else { 1 };
    if dims.len() == 4 && !(channels == 1 || channels == 3) {
        return data_err(format!(
            "{}: IDX images of dimensions {dims:?}: the last dimension must be 1 or 3 channels",
            img_path.display()
        ));
    }
    let (n, h, w) = (dims[0], dims[1], dims[2]);
    if n == 0 || h == 0 || w == 0 {
        return data_err(format!("{}: empty IDX image array {dims:?}", img_path.display()));
    }
    let lab_bytes = read_maybe_gz(&lab_path)?;
    let (ldims, labels) = parse_idx(&lab_path, &lab_bytes, &[1])?;
    if ldims[0] != n {
        return data_err(format!(
            "{} has {n} images but {} has {} labels",
            img_path.display(),
            lab_path.display(),
            ldims[0]
        ));
    }
    let labels: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
    let (Ok(w32), Ok(h32)) = (u32::try_from(w), u32::try_from(h)) else {
        return data_err(format!("{}: IDX images of {w}x{h} pixels are too large", img_path.display()));
    };
    let src = ArraySource::new(img_path, w32, h32, channels, false, pixels.to_vec(), Some(labels))?;
    Ok(src.with_format(Format::Idx, None))
}

// ---------------------------------------------------------------------------------------
// CIFAR
// ---------------------------------------------------------------------------------------

const CIFAR_PIXELS: usize = 3 * 32 * 32;

/// The CIFAR-10 batch files of `split` in `dir`, in order (`data_batch_1.bin`, ... by number).
fn cifar10_files(dir: &Path, split: Split) -> Vec<PathBuf> {
    match split {
        Split::Test => {
            let p = dir.join("test_batch.bin");
            if p.is_file() {
                vec![p]
            } else {
                vec![]
            }
        }
        Split::Train => {
            let mut v: Vec<(u64, String)> = list_names(dir)
                .into_iter()
                .filter_map(|n| {
                    let num = n.strip_prefix("data_batch_")?.strip_suffix(".bin")?.parse::<u64>().ok()?;
                    Some((num, n))
                })
                .collect();
            v.sort();
            v.into_iter().map(|(_, n)| dir.join(n)).filter(|p| p.is_file()).collect()
        }
    }
}

fn has_cifar10(dir: &Path) -> bool {
    !cifar10_files(dir, Split::Train).is_empty() || !cifar10_files(dir, Split::Test).is_empty()
}

fn has_cifar100(dir: &Path) -> bool {
    dir.join("train.bin").is_file() || dir.join("test.bin").is_file()
}

/// Read CIFAR binary records: `label_bytes` label bytes (the last one is used: CIFAR-10's
/// label, CIFAR-100's fine label) then 3072 planar RGB bytes of a 32x32 image.
pub fn read_cifar_files(files: &[PathBuf], label_bytes: usize, classes: u32) -> Result<(Vec<u8>, Vec<u32>)> {
    let rec = label_bytes + CIFAR_PIXELS;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for f in files {
        let bytes = fs::read(f).map_err(|e| Error::Data { detail: format!("cannot read {}: {e}", f.display()) })?;
        if bytes.is_empty() || !bytes.len().is_multiple_of(rec) {
            return data_err(format!(
                "{}: {} bytes is not a whole number of CIFAR records of {rec} bytes ({label_bytes} label byte(s) + \
                 3072 pixels): truncated or not a CIFAR-{} file",
                f.display(),
                bytes.len(),
                if label_bytes == 1 { 10 } else { 100 }
            ));
        }
        pixels.reserve(bytes.len() / rec * CIFAR_PIXELS);
        for (i, r) in bytes.chunks_exact(rec).enumerate() {
            let label = r[label_bytes - 1] as u32;
            if label >= classes {
                return data_err(format!(
                    "{}: record {i} has label {label}, out of 0..{classes}: not a CIFAR-{classes} file",
                    f.display()
                ));
            }
            labels.push(label);
            pixels.extend_from_slice(&r[label_bytes..]);
        }
    }
    Ok((pixels, labels))
}

/// Read the CIFAR-10 or CIFAR-100 files of `split` in `dir`.
pub fn open_cifar(dir: &Path, split: Split) -> Result<ArraySource> {
    let (format, files, label_bytes, classes) = if has_cifar10(dir) {
        let files = cifar10_files(dir, split);
        if files.is_empty() {
            let want = if split == Split::Train { "data_batch_1.bin .. data_batch_5.bin" } else { "test_batch.bin" };
            return data_err(format!("CIFAR-10 folder {}: no {split:?} split: expected {want}", dir.display()));
        }
        (Format::Cifar10, files, 1, 10u32)
    } else {
        let name = if split == Split::Train { "train.bin" } else { "test.bin" };
        let p = dir.join(name);
        if !p.is_file() {
            return data_err(format!("CIFAR-100 folder {}: no {split:?} split: expected {name}", dir.display()));
        }
        (Format::Cifar100, vec![p], 2, 100u32)
    };
    let (pixels, labels) = read_cifar_files(&files, label_bytes, classes)?;
    let origin = if files.len() == 1 { files[0].clone() } else { dir.to_path_buf() };
    let src = ArraySource::new(origin, 32, 32, 3, true, pixels, Some(labels))?;
    Ok(src.with_format(format, Some(classes as usize)))
}

// ---------------------------------------------------------------------------------------
// Image folder
// ---------------------------------------------------------------------------------------

/// A folder of JPEG / PNG images, searched recursively in sorted order; an image's class
/// is the index, in sorted order, of its first-level sub-folder among those holding at
/// least one image; images directly in the root have no class. Names starting with `.`
/// are ignored.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    root: PathBuf,
    files: Vec<(PathBuf, Option<u32>)>,
    classes: Vec<String>,
}

const MAX_DEPTH: usize = 32;

fn is_image_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".png") || lower.ends_with(".jpg") || lower.ends_with(".jpeg")
}

/// The sorted, non-hidden entry names of `dir` (empty when it cannot be read).
fn list_names(dir: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(dir) else { return vec![] };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    if depth > MAX_DEPTH {
        return data_err(format!("{}: folders nested deeper than {MAX_DEPTH} levels (a link loop?)", dir.display()));
    }
    let rd = fs::read_dir(dir).map_err(|e| Error::Data { detail: format!("cannot list {}: {e}", dir.display()) })?;
    let mut entries: Vec<(std::ffi::OsString, PathBuf)> = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::Data { detail: format!("cannot list {}: {e}", dir.display()) })?;
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        entries.push((name, e.path()));
    }
    entries.sort();
    for (name, path) in entries {
        // `metadata` follows links; a dangling link is skipped.
        let Ok(meta) = fs::metadata(&path) else { continue };
        if meta.is_dir() {
            walk(&path, depth + 1, out)?;
        } else if meta.is_file() && is_image_name(&name.to_string_lossy()) {
            out.push(path);
        }
    }
    Ok(())
}

impl ImageFolder {
    /// Index the images under `root` (none is decoded yet). No image is an error.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let mut top: Vec<(std::ffi::OsString, PathBuf)> = fs::read_dir(&root)
            .map_err(|e| Error::Data { detail: format!("cannot list {}: {e}", root.display()) })?
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| (e.file_name(), e.path()))
            .collect();
        top.sort();
        let mut files = Vec::new();
        let mut classes = Vec::new();
        for (name, path) in top {
            let Ok(meta) = fs::metadata(&path) else { continue };
            if meta.is_dir() {
                let mut found = Vec::new();
                walk(&path, 1, &mut found)?;
                if !found.is_empty() {
                    let label = classes.len() as u32;
                    classes.push(name.to_string_lossy().into_owned());
                    files.extend(found.into_iter().map(|p| (p, Some(label))));
                }
            } else if meta.is_file() && is_image_name(&name.to_string_lossy()) {
                files.push((path, None));
            }
        }
        if files.is_empty() {
            return data_err(format!(
                "no data set found in {}: no IDX files, no CIFAR .bin files, no JPEG or PNG images; {EXPECTED_FORMATS}",
                root.display()
            ));
        }
        Ok(ImageFolder { root, files, classes })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The class names (first-level sub-folders), in label order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }
    /// The image files and their labels, in index order.
    pub fn files(&self) -> &[(PathBuf, Option<u32>)] {
        &self.files
    }
}

/// Decode an image file (format guessed from its bytes, else its name) to 8-bit RGB.
pub fn decode_file(path: &Path) -> Result<RgbImage> {
    let bytes = fs::read(path).map_err(|e| Error::Data { detail: format!("cannot read {}: {e}", path.display()) })?;
    let mut reader = image::ImageReader::new(std::io::Cursor::new(&bytes[..]));
    if let Ok(fmt) = image::ImageFormat::from_path(path) {
        reader.set_format(fmt);
    }
    let reader = reader
        .with_guessed_format()
        .map_err(|e| Error::Data { detail: format!("cannot decode {}: {e}", path.display()) })?;
    let img = reader.decode().map_err(|e| Error::Data { detail: format!("cannot decode {}: {e}", path.display()) })?;
    if img.width() == 0 || img.height() == 0 {
        return data_err(format!("{}: empty image", path.display()));
    }
    Ok(img.to_rgb8())
}

impl Source for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let Some((path, label)) = self.files.get(index) else {
            return data_err(format!("{}: image {index} out of range ({} images)", self.root.display(), self.len()));
        };
        Ok(Sample { image: decode_file(path)?, label: *label })
    }

    fn item_path(&self, index: usize) -> PathBuf {
        self.files.get(index).map(|(p, _)| p.clone()).unwrap_or_else(|| self.root.join(format!("#{index}")))
    }

    fn num_classes(&self) -> Option<usize> {
        (!self.classes.is_empty()).then_some(self.classes.len())
    }
}

// ---------------------------------------------------------------------------------------
// Detection
// ---------------------------------------------------------------------------------------

/// A data set opened by [`Dataset::open`].
#[derive(Clone, Debug)]
pub enum Dataset {
    /// IDX files (MNIST, Fashion-MNIST), decoded into memory.
    Idx(ArraySource),
    /// CIFAR-10 / CIFAR-100 binaries, decoded into memory.
    Cifar(ArraySource),
    /// An image folder, decoded image by image.
    Folder(ImageFolder),
}

impl Dataset {
    /// Open the `split` of the data set at `path`, recognizing the format: a folder (or
    /// its `raw/` sub-folder) with IDX files is IDX; one (or its `cifar-10-batches-bin/`
    /// or `cifar-100-binary/` sub-folder) with CIFAR `.bin` files is CIFAR; anything else
    /// is an image folder, whose `train/` and `val/` (or `test/`) sub-folders, where
    /// present, are the splits (else the whole folder serves both splits).
    pub fn open(path: impl AsRef<Path>, split: Split) -> Result<Dataset> {
        let path = path.as_ref();
        if !path.exists() {
            let hint = if path == Path::new(FASHION_MNIST_DIR) {
                " (install it with `apt-get install dataset-fashion-mnist`)"
            } else {
                ""
            };
            return data_err(format!("data set {} does not exist{hint}; {EXPECTED_FORMATS}", path.display()));
        }
        if !path.is_dir() {
            return data_err(format!("data set {} is not a folder; {EXPECTED_FORMATS}", path.display()));
        }
        for dir in [path.to_path_buf(), path.join("raw")] {
            if dir.is_dir() && list_names(&dir).iter().any(|n| is_idx_name(n)) {
                return Ok(Dataset::Idx(open_idx(&dir, split)?));
            }
        }
        for dir in [path.to_path_buf(), path.join("cifar-10-batches-bin"), path.join("cifar-100-binary")] {
            if dir.is_dir() && (has_cifar10(&dir) || has_cifar100(&dir)) {
                return Ok(Dataset::Cifar(open_cifar(&dir, split)?));
            }
        }
        let names = list_names(path);
        let has = |n: &str| names.iter().any(|x| x == n) && path.join(n).is_dir();
        let dir = if has("train") || has("val") || has("test") {
            let pick = match split {
                Split::Train => ["train", "train"],
                Split::Test => ["val", "test"],
            };
            match pick.iter().find(|n| has(n)) {
                Some(n) => path.join(n),
                None => {
                    return data_err(format!(
                        "image folder {} has split folders but no {} folder for the {split:?} split",
                        path.display(),
                        if split == Split::Train { "train/" } else { "val/ or test/" }
                    ))
                }
            }
        } else {
            path.to_path_buf()
        };
        Ok(Dataset::Folder(ImageFolder::open(&dir)?))
    }

    /// The format found.
    pub fn format(&self) -> Format {
        match self {
            Dataset::Idx(a) | Dataset::Cifar(a) => a.format(),
            Dataset::Folder(_) => Format::ImageFolder,
        }
    }

    /// One line: format, size, image size where fixed, classes.
    pub fn describe(&self) -> String {
        let classes = self.num_classes().map(|c| format!(", {c} classes")).unwrap_or_default();
        match self {
            Dataset::Idx(a) | Dataset::Cifar(a) => format!(
                "{}: {} images of {}x{}{}{classes}",
                a.format().name(),
                a.len(),
                a.width(),
                a.height(),
                if a.channels() == 1 { " grayscale" } else { " RGB" }
            ),
            Dataset::Folder(f) => format!("image folder {}: {} images{classes}", f.root().display(), f.len()),
        }
    }

    fn inner(&self) -> &dyn Source {
        match self {
            Dataset::Idx(a) | Dataset::Cifar(a) => a,
            Dataset::Folder(f) => f,
        }
    }
}

impl Source for Dataset {
    fn len(&self) -> usize {
        self.inner().len()
    }
    fn get(&self, index: usize) -> Result<Sample> {
        self.inner().get(index)
    }
    fn item_path(&self, index: usize) -> PathBuf {
        self.inner().item_path(index)
    }
    fn num_classes(&self) -> Option<usize> {
        self.inner().num_classes()
    }
}
