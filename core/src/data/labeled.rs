//! Labelled training and test splits for evaluation, and a seeded subset of a source.
//!
//! [`open_labeled`] opens both splits of a data set with [`Dataset::open`] and checks what
//! supervised evaluation needs and pre-training does not: every image has a class (an
//! image folder's loose root images have none), both splits agree on the classes (an image
//! folder's `train/` and `val/` must have the same class sub-folders, else their labels
//! would silently mean different things; an IDX test label must be a class of the training
//! split), and the test split is held out (an image folder without split folders would
//! serve the same images twice).

use super::loader::epoch_permutation;
use super::source::{data_err, Dataset, Sample, Source, Split};
use crate::error::Result;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Both splits of a labelled data set.
#[derive(Clone, Debug)]
pub struct Labeled {
    pub train: Dataset,
    pub test: Dataset,
    /// Classes; every label of both splits is below it.
    pub classes: usize,
    /// Class names where the data set has them (image folders), in label order.
    pub class_names: Option<Vec<String>>,
}

/// The largest label of `ds` plus one, or an error naming the first unlabelled image.
fn label_count(ds: &Dataset, what: &str) -> Result<usize> {
    match ds {
        Dataset::Idx(a) | Dataset::Cifar(a) => match a.labels() {
            Some(l) => Ok(a.num_classes().unwrap_or_else(|| l.iter().max().map_or(0, |&m| m as usize + 1))),
            None => data_err(format!("the {what} split ({}) has no labels", ds.describe())),
        },
        Dataset::Folder(f) => {
            if f.classes().is_empty() {
                return data_err(format!(
                    "image folder {}: no class sub-folders; evaluation needs one sub-folder of images per class",
                    f.root().display()
                ));
            }
            let loose: Vec<&PathBuf> = f.files().iter().filter(|(_, l)| l.is_none()).map(|(p, _)| p).collect();
            if let Some(first) = loose.first() {
                return data_err(format!(
                    "image folder {}: {} image(s) outside the class sub-folders have no class (first: {}); move them \
                     into a class sub-folder",
                    f.root().display(),
                    loose.len(),
                    first.display()
                ));
            }
            Ok(f.classes().len())
        }
    }
}

/// Open the training and test splits of the labelled data set at `path` and check them
/// (see the module docs).
pub fn open_labeled(path: impl AsRef<Path>) -> Result<Labeled> {
    let path = path.as_ref();
    let train = Dataset::open(path, Split::Train)?;
    let test = Dataset::open(path, Split::Test)?;
    if let (Dataset::Folder(a), Dataset::Folder(b)) = (&train, &test) {
        if a.root() == b.root() {
            return data_err(format!(
                "image folder {} has no train/ and val/ (or test/) split folders: evaluation needs a held-out test \
                 split, e.g. {0}/train/CLASS/*.png and {0}/val/CLASS/*.png",
                path.display()
            ));
        }
    }
    let k_train = label_count(&train, "training")?;
    let k_test = label_count(&test, "test")?;
    let class_names = match (&train, &test) {
        (Dataset::Folder(a), Dataset::Folder(b)) => {
            if a.classes() != b.classes() {
                let only = |x: &[String], y: &[String]| -> Vec<String> {
                    x.iter().filter(|c| !y.contains(c)).cloned().collect()
                };
                return data_err(format!(
                    "image folder {}: the splits have different classes ({} in {}, {} in {}): only in training {:?}, \
                     only in test {:?}; both need the same class sub-folders",
                    path.display(),
                    a.classes().len(),
                    a.root().display(),
                    b.classes().len(),
                    b.root().display(),
                    only(a.classes(), b.classes()),
                    only(b.classes(), a.classes())
                ));
            }
            Some(a.classes().to_vec())
        }
        _ => None,
    };
    if k_test > k_train {
        return data_err(format!(
            "{}: the test split has labels up to {} but the training split has only {k_train} classes (0..{}): class \
             counts do not match",
            path.display(),
            k_test - 1,
            k_train - 1
        ));
    }
    if k_train < 2 {
        return data_err(format!("{}: {k_train} class; classification needs at least 2", path.display()));
    }
    Ok(Labeled { train, test, classes: k_train, class_names })
}

/// Images `indices` of another source, in that order.
#[derive(Clone)]
pub struct Subset {
    inner: Arc<dyn Source>,
    indices: Vec<usize>,
}

impl Subset {
    /// `limit` images of `inner` drawn without replacement under `seed` (kept in data-set
    /// order), or all of them when `limit` is at least its size. A seeded draw rather than
    /// the first images: an image folder lists its images class by class.
    pub fn sample(inner: Arc<dyn Source>, limit: usize, seed: u64) -> Subset {
        let n = inner.len();
        let mut indices: Vec<usize> = if limit >= n {
            (0..n).collect()
        } else {
            epoch_permutation(seed, 0, n, true)[..limit].iter().map(|&i| i as usize).collect()
        };
        indices.sort_unstable();
        Subset { inner, indices }
    }

    /// `inner` itself when `limit` is 0 or covers it, else [`Subset::sample`].
    pub fn limit(inner: Arc<dyn Source>, limit: usize, seed: u64) -> Arc<dyn Source> {
        if limit == 0 || limit >= inner.len() {
            inner
        } else {
            Arc::new(Subset::sample(inner, limit, seed))
        }
    }

    /// The given images of `inner` (each below its length).
    pub fn new(inner: Arc<dyn Source>, indices: Vec<usize>) -> Result<Subset> {
        let n = inner.len();
        if let Some(&bad) = indices.iter().find(|&&i| i >= n) {
            return data_err(format!("subset: image {bad} out of range ({n} images)"));
        }
        Ok(Subset { inner, indices })
    }

    /// The indices into the inner source.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }
}

impl Source for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn get(&self, index: usize) -> Result<Sample> {
        match self.indices.get(index) {
            Some(&i) => self.inner.get(i),
            None => data_err(format!("subset: image {index} out of range ({} images)", self.indices.len())),
        }
    }
    fn item_path(&self, index: usize) -> PathBuf {
        self.indices.get(index).map(|&i| self.inner.item_path(i)).unwrap_or_else(|| PathBuf::from(format!("#{index}")))
    }
    fn num_classes(&self) -> Option<usize> {
        self.inner.num_classes()
    }
}
