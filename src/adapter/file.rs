//! The adapter file: safetensors tensors plus one JSON metadata entry (`clipd.adapter`).
//!
//! Tensors (all f32 little-endian unless noted):
//! - `text` K×d: the zero-shot class embeddings the adapter was trained against (what the
//!   history's `classes` table records); always present;
//! - `head.text` K×d: the class matrix the residual/cosine head scores against (after the
//!   text adapter for `jclip`, learned for `cross-modal`);
//! - `image.w1` d×h, `image.w2` h×d: the image-side adapter (`jclip`, `clip-adapter`);
//! - `cache.keys` S×d, `cache.labels` S (i64): Tip-Adapter(-F)'s cache;
//! - `linear.weight` K×d, `linear.bias` K: the linear probe;
//! - `support.features` S×d, `support.labels` S (i64): the shots' plain-view features, the
//!   anchors of few-shot transductive refinement.
//!
//! The file carries the class text embeddings, so the daemon needs no text encoder for the
//! classes it was trained on. Its identity (`adapter_id`, logged with every frame) is the
//! first 16 hex digits of the file's sha256.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::linalg::Mat;
use super::models::{Bottleneck, CacheModel, LinearModel};
use super::support::ShotRecord;
use super::train::{EpochStat, Hyper, Selection, Trained};
use super::{Head, Method};
use crate::bundle::Bundle;
use crate::classes::ClassSpec;
use crate::error::{ExitClass, HasExitClass};

pub const FORMAT_VERSION: u32 = 1;
const META_KEY: &str = "clipd.adapter";

#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("adapter {}: no such file (make one with `clipd train --out FILE`, or leave out --adapter / the config's `adapter` to classify zero-shot)", path.display())]
    Missing { path: PathBuf },
    #[error("{}: not a clipd adapter file: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    #[error("{}: trained for model bundle {adapter} but the loaded bundle is {bundle}; retrain with `clipd train` for this bundle", path.display())]
    Bundle {
        path: PathBuf,
        adapter: String,
        bundle: String,
    },
    #[error("{}: trained for other classes than the config's ({msg}); retrain with `clipd train` or use the adapter's class list", path.display())]
    Classes { path: PathBuf, msg: String },
}

impl HasExitClass for AdapterError {
    fn exit_class(&self) -> ExitClass {
        match self {
            AdapterError::Io { .. } => ExitClass::Io,
            AdapterError::Classes { .. } | AdapterError::Missing { .. } => ExitClass::Usage,
            _ => ExitClass::Model,
        }
    }
}

/// A class as the adapter was trained with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    pub prompts: Vec<String>,
}

/// A short account of the final training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurveSummary {
    pub epochs_run: usize,
    pub kept_epoch: Option<usize>,
    pub first_train_loss: Option<f64>,
    pub kept_train_loss: Option<f64>,
    pub kept_train_acc: Option<f64>,
    pub kept_cv_acc: Option<f64>,
}

/// Everything the file records about where the adapter came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterMeta {
    pub format_version: u32,
    pub method: String,
    pub bundle_name: String,
    pub bundle_sha256: String,
    pub embed_dim: usize,
    pub logit_scale: f32,
    pub classes: Vec<ClassMeta>,
    /// Valid shots per class.
    pub shots_per_class: Vec<usize>,
    /// The fewest shots of any class (the "K" of K-shot).
    pub shots: usize,
    pub support: Vec<ShotRecord>,
    pub skipped: Vec<String>,
    pub augment_views: usize,
    pub seed: u64,
    pub hyper: Hyper,
    pub selection: Selection,
    pub curve_summary: CurveSummary,
    pub curve: Vec<EpochStat>,
    pub created_unix_ms: i64,
    pub clipd_version: String,
}

/// A loaded (or just trained) adapter.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub meta: AdapterMeta,
    /// K×d zero-shot class embeddings.
    pub text: Mat<f32>,
    pub head: Head,
    /// The shots' normalised plain-view features and labels (refinement anchors).
    pub support: Option<(Mat<f32>, Vec<usize>)>,
    /// [`Adapter::content_id`] (empty until saved or loaded).
    pub id: String,
}

fn method_of(name: &str) -> Option<Method> {
    name.parse().ok()
}

/// A safetensors file starts with the 8-byte length of its JSON header; text (a config, a CSV)
/// read that way is a header "too large", which names the wrong problem.
fn not_text(bytes: &[u8]) -> Result<(), String> {
    let head = &bytes[..bytes.len().min(64)];
    let texty = !head.is_empty()
        && std::str::from_utf8(head).is_ok_and(|s| {
            s.chars()
                .all(|c| !c.is_control() || c.is_ascii_whitespace())
        });
    if texty {
        return Err("this is a text file, not a safetensors adapter (adapters are written by `clipd train --out FILE`; a configuration goes to --config)".into());
    }
    Ok(())
}

impl Adapter {
    /// Assemble the adapter for a training result.
    #[allow(clippy::too_many_arguments)]
    pub fn from_trained(
        trained: Trained,
        bundle: &Bundle,
        classes: &[ClassSpec],
        text: Mat<f32>,
        shots: Option<(Mat<f32>, Vec<usize>)>,
        support: Vec<ShotRecord>,
        skipped: Vec<String>,
        augment_views: usize,
        seed: u64,
    ) -> Adapter {
        let mut shots_per_class = vec![0; classes.len()];
        for s in &support {
            if let Some(c) = shots_per_class.get_mut(s.class) {
                *c += 1;
            }
        }
        let kept = trained.hyper.epochs;
        let at = |e: Option<usize>| e.and_then(|e| trained.curve.iter().find(|s| s.epoch == e));
        let curve_summary = CurveSummary {
            epochs_run: trained.curve.len(),
            kept_epoch: kept,
            first_train_loss: trained.curve.first().map(|s| s.train_loss),
            kept_train_loss: at(kept).map(|s| s.train_loss),
            kept_train_acc: at(kept).map(|s| s.train_acc),
            kept_cv_acc: at(kept).and_then(|s| s.cv_acc),
        };
        let meta = AdapterMeta {
            format_version: FORMAT_VERSION,
            method: trained.method.name().to_string(),
            bundle_name: bundle.manifest.name.clone(),
            bundle_sha256: bundle.sha256.clone(),
            embed_dim: bundle.manifest.embed_dim,
            logit_scale: bundle.manifest.logit_scale,
            classes: classes
                .iter()
                .map(|c| ClassMeta {
                    name: c.name.clone(),
                    domain: c.domain.clone(),
                    prompts: c.prompts.clone(),
                })
                .collect(),
            shots: shots_per_class.iter().copied().min().unwrap_or(0),
            shots_per_class,
            support,
            skipped,
            augment_views,
            seed,
            hyper: trained.hyper,
            selection: trained.selection,
            curve_summary,
            curve: trained.curve,
            created_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            clipd_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        Adapter {
            meta,
            text,
            head: trained.head,
            support: shots,
            id: String::new(),
        }
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let tensors = self.tensors();
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|(n, shape, dt, bytes)| {
                TensorView::new(*dt, shape.clone(), bytes)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        let meta = serde_json::to_string(&self.meta).map_err(|e| e.to_string())?;
        let info = HashMap::from([(META_KEY.to_string(), meta)]);
        safetensors::tensor::serialize(views, Some(info)).map_err(|e| e.to_string())
    }

    /// The adapter's id: a hash of what decides its predictions (method, bundle, logit scale,
    /// classes and their prompts, hyperparameters, every tensor), so the same training on the
    /// same shots with the same seed gives the same id; when it was made, how long it took and
    /// its curve do not count.
    pub fn content_id(&self) -> String {
        let mut h = Sha256::new();
        let mut part = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        let m = &self.meta;
        part(m.method.as_bytes());
        part(m.bundle_sha256.as_bytes());
        part(&m.logit_scale.to_le_bytes());
        for c in &m.classes {
            part(c.name.as_bytes());
            for p in &c.prompts {
                part(p.as_bytes());
            }
        }
        part(
            serde_json::to_string(&m.hyper)
                .unwrap_or_default()
                .as_bytes(),
        );
        for (name, shape, _, bytes) in self.tensors() {
            part(name.as_bytes());
            for s in shape {
                part(&(s as u64).to_le_bytes());
            }
            part(&bytes);
        }
        let hex = format!("{:x}", h.finalize());
        hex[..16].to_string()
    }

    /// The tensors the file holds, by name, in a fixed order.
    fn tensors(&self) -> Vec<(String, Vec<usize>, Dtype, Vec<u8>)> {
        let mut tensors: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = Vec::new();
        let f32s = |tensors: &mut Vec<_>, name: &str, m: &Mat<f32>, shape: Vec<usize>| {
            let bytes = m.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            tensors.push((name.to_string(), shape, Dtype::F32, bytes));
        };
        f32s(
            &mut tensors,
            "text",
            &self.text,
            vec![self.text.rows, self.text.cols],
        );
        match &self.head {
            Head::Residual { text, image, .. } => {
                f32s(&mut tensors, "head.text", text, vec![text.rows, text.cols]);
                if let Some((a, _)) = image {
                    f32s(&mut tensors, "image.w1", &a.w1, vec![a.w1.rows, a.w1.cols]);
                    f32s(&mut tensors, "image.w2", &a.w2, vec![a.w2.rows, a.w2.cols]);
                }
            }
            Head::Cache(m) => {
                f32s(
                    &mut tensors,
                    "cache.keys",
                    &m.keys,
                    vec![m.keys.rows, m.keys.cols],
                );
                let labels = m
                    .labels
                    .iter()
                    .flat_map(|&l| (l as i64).to_le_bytes())
                    .collect();
                tensors.push((
                    "cache.labels".into(),
                    vec![m.labels.len()],
                    Dtype::I64,
                    labels,
                ));
            }
            Head::Linear(m) => {
                f32s(
                    &mut tensors,
                    "linear.weight",
                    &m.weight,
                    vec![m.weight.rows, m.weight.cols],
                );
                f32s(&mut tensors, "linear.bias", &m.bias, vec![m.bias.cols]);
            }
        }
        if let Some((f, labels)) = &self.support {
            f32s(&mut tensors, "support.features", f, vec![f.rows, f.cols]);
            let l = labels
                .iter()
                .flat_map(|&l| (l as i64).to_le_bytes())
                .collect();
            tensors.push(("support.labels".into(), vec![labels.len()], Dtype::I64, l));
        }
        tensors
    }

    /// Write the file atomically (temporary file + rename) and set `id`.
    pub fn save(&mut self, path: &Path) -> Result<(), AdapterError> {
        let bytes = self.to_bytes().map_err(|msg| AdapterError::Format {
            path: path.to_path_buf(),
            msg,
        })?;
        let io = |source| AdapterError::Io {
            path: path.to_path_buf(),
            source,
        };
        // A missing folder is more likely a typo than a wish: refuse rather than create it.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(AdapterError::Io {
                    path: path.to_path_buf(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("folder {} does not exist (create it first)", dir.display()),
                    ),
                });
            }
        }
        let tmp = path.with_extension("safetensors.partial");
        std::fs::write(&tmp, &bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        self.id = self.content_id();
        Ok(())
    }

    /// Read and validate an adapter file (structure and shapes; not yet the bundle).
    pub fn load(path: &Path) -> Result<Adapter, AdapterError> {
        let bytes = std::fs::read(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                AdapterError::Missing {
                    path: path.to_path_buf(),
                }
            } else {
                AdapterError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        Adapter::from_bytes(&bytes).map_err(|msg| AdapterError::Format {
            path: path.to_path_buf(),
            msg,
        })
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Adapter, String> {
        not_text(bytes)?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
        let meta_json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| format!("no {META_KEY:?} metadata (not written by clipd train)"))?;
        let meta: AdapterMeta =
            serde_json::from_str(meta_json).map_err(|e| format!("metadata: {e}"))?;
        if meta.format_version != FORMAT_VERSION {
            return Err(format!(
                "format_version {} (this clipd reads {FORMAT_VERSION})",
                meta.format_version
            ));
        }
        let method =
            method_of(&meta.method).ok_or_else(|| format!("unknown method {:?}", meta.method))?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
        let (k, d) = (meta.classes.len(), meta.embed_dim);
        if k == 0 || d == 0 {
            return Err("no classes or zero embedding size".into());
        }
        let get = |name: &str, rows: Option<usize>, cols: usize| -> Result<Mat<f32>, String> {
            let t = st
                .tensor(name)
                .map_err(|_| format!("missing tensor {name:?}"))?;
            if t.dtype() != Dtype::F32 {
                return Err(format!("tensor {name:?} is {:?}, expected F32", t.dtype()));
            }
            let shape = t.shape();
            let (r, c) = match shape {
                [n] => (1, *n),
                [r, c] => (*r, *c),
                _ => return Err(format!("tensor {name:?} has shape {shape:?}")),
            };
            if c != cols || rows.is_some_and(|want| want != r) {
                return Err(format!(
                    "tensor {name:?} has shape {shape:?}, expected {}×{cols}",
                    rows.map_or("?".to_string(), |r| r.to_string())
                ));
            }
            let data: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if data.iter().any(|v| !v.is_finite()) {
                return Err(format!("tensor {name:?} holds NaN or infinite values"));
            }
            Ok(Mat::from_vec(r, c, data))
        };
        let get_labels = |name: &str, rows: usize| -> Result<Vec<usize>, String> {
            let t = st
                .tensor(name)
                .map_err(|_| format!("missing tensor {name:?}"))?;
            if t.dtype() != Dtype::I64 || t.shape() != [rows] {
                return Err(format!(
                    "tensor {name:?} is {:?} {:?}, expected I64 [{rows}]",
                    t.dtype(),
                    t.shape()
                ));
            }
            t.data()
                .chunks_exact(8)
                .map(|b| {
                    let v = i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                    usize::try_from(v).ok().filter(|&l| l < k)
                })
                .collect::<Option<_>>()
                .ok_or_else(|| format!("{name} holds a class index out of range"))
        };
        let text = get("text", Some(k), d)?;
        let scale = meta.logit_scale;
        let need = |v: Option<f64>, what: &str| v.ok_or_else(|| format!("hyper.{what} missing"));
        let head = match method {
            Method::ZeroShot | Method::CrossModal | Method::JClip | Method::ClipAdapter => {
                let head_text = get("head.text", Some(k), d)?;
                let image = match method {
                    Method::JClip | Method::ClipAdapter => {
                        let hidden = st
                            .tensor("image.w1")
                            .ok()
                            .and_then(|t| t.shape().get(1).copied())
                            .ok_or("missing tensor \"image.w1\"")?;
                        let w1 = get("image.w1", Some(d), hidden)?;
                        let w2 = get("image.w2", Some(w1.cols), d)?;
                        let ratio = need(meta.hyper.image_ratio, "image_ratio")? as f32;
                        Some((
                            Bottleneck {
                                w1,
                                w2,
                                relu_out: method == Method::ClipAdapter,
                            },
                            ratio,
                        ))
                    }
                    _ => None,
                };
                Head::Residual {
                    text: head_text,
                    image,
                    scale,
                }
            }
            Method::Tip | Method::TipF => {
                let keys = get("cache.keys", None, d)?;
                let t = st
                    .tensor("cache.labels")
                    .map_err(|_| "missing tensor \"cache.labels\"".to_string())?;
                if t.dtype() != Dtype::I64 || t.shape() != [keys.rows] {
                    return Err(format!(
                        "tensor \"cache.labels\" is {:?} {:?}, expected I64 [{}]",
                        t.dtype(),
                        t.shape(),
                        keys.rows
                    ));
                }
                let labels: Vec<usize> = t
                    .data()
                    .chunks_exact(8)
                    .map(|b| {
                        let v =
                            i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                        usize::try_from(v).ok().filter(|&l| l < k)
                    })
                    .collect::<Option<_>>()
                    .ok_or("cache.labels holds a class index out of range")?;
                Head::Cache(CacheModel {
                    keys,
                    labels,
                    text: text.clone(),
                    alpha: need(meta.hyper.alpha, "alpha")? as f32,
                    beta: need(meta.hyper.beta, "beta")? as f32,
                    scale,
                })
            }
            Method::Linear => Head::Linear(LinearModel {
                weight: get("linear.weight", Some(k), d)?,
                bias: get("linear.bias", Some(1), k)?,
            }),
        };
        let support = match st.tensor("support.features") {
            Err(_) => None,
            Ok(_) => {
                let f = get("support.features", None, d)?;
                let labels = get_labels("support.labels", f.rows)?;
                Some((f, labels))
            }
        };
        let mut adapter = Adapter {
            meta,
            text,
            head,
            support,
            id: String::new(),
        };
        adapter.id = adapter.content_id();
        Ok(adapter)
    }

    pub fn method(&self) -> Option<Method> {
        method_of(&self.meta.method)
    }

    /// Refuse an adapter trained for another bundle or another class list.
    pub fn check(
        &self,
        path: &Path,
        bundle: &Bundle,
        classes: &[ClassSpec],
    ) -> Result<(), AdapterError> {
        if self.meta.bundle_sha256 != bundle.sha256 {
            return Err(AdapterError::Bundle {
                path: path.to_path_buf(),
                adapter: format!(
                    "{}@{}",
                    self.meta.bundle_name,
                    self.meta
                        .bundle_sha256
                        .get(..12)
                        .unwrap_or(&self.meta.bundle_sha256)
                ),
                bundle: bundle.model_id(),
            });
        }
        let ours: Vec<&str> = self.meta.classes.iter().map(|c| c.name.as_str()).collect();
        let theirs: Vec<&str> = classes.iter().map(|c| c.name.as_str()).collect();
        if ours != theirs {
            let missing: Vec<&str> = theirs
                .iter()
                .filter(|c| !ours.contains(c))
                .copied()
                .collect();
            let extra: Vec<&str> = ours
                .iter()
                .filter(|c| !theirs.contains(c))
                .copied()
                .collect();
            let msg = if missing.is_empty() && extra.is_empty() {
                "same classes in a different order; list them in the adapter's order".to_string()
            } else {
                let mut parts = Vec::new();
                if !missing.is_empty() {
                    parts.push(format!(
                        "config classes not in the adapter: {}",
                        missing.join(", ")
                    ));
                }
                if !extra.is_empty() {
                    parts.push(format!(
                        "adapter classes not in the config: {}",
                        extra.join(", ")
                    ));
                }
                parts.join("; ")
            };
            return Err(AdapterError::Classes {
                path: path.to_path_buf(),
                msg,
            });
        }
        for (c, m) in classes.iter().zip(&self.meta.classes) {
            if c.prompts != m.prompts {
                log::warn!(
                    "{}: class {:?} was trained with prompts {:?}, the config now gives {:?}; the adapter's embeddings are used",
                    path.display(),
                    c.name,
                    m.prompts,
                    c.prompts
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::train::{train, Shots, TrainOptions};
    use crate::rng::Rng;

    fn bundle() -> Bundle {
        Bundle::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-clip")).unwrap()
    }

    fn classes(names: &[&str]) -> Vec<ClassSpec> {
        names
            .iter()
            .map(|n| ClassSpec {
                name: n.to_string(),
                domain: None,
                prompts: vec![format!("a photo of a {n}.")],
                aliases: vec![],
            })
            .collect()
    }

    /// Random normalised shots (2 per class) in the bundle's embedding size.
    fn shots(k: usize, d: usize) -> (Shots, Mat<f32>) {
        let mut rng = Rng::new(4);
        let mut rows = |n: usize| {
            let data: Vec<f32> = (0..n * d).map(|_| rng.normal() as f32).collect();
            crate::adapter::linalg::normalize_rows(&Mat::from_vec(n, d, data)).0
        };
        let text = rows(k);
        let views = vec![rows(2 * k), rows(2 * k)];
        let labels = (0..2 * k).map(|i| i % k).collect();
        (
            Shots {
                views,
                labels,
                classes: k,
            },
            text,
        )
    }

    #[test]
    fn every_method_round_trips_through_the_file() {
        let b = bundle();
        let cs = classes(&["cat", "dog", "cup"]);
        let (s, text) = shots(3, b.manifest.embed_dim);
        let dir = tempfile::tempdir().unwrap();
        for m in Method::FEW_SHOT {
            let t = train(
                m,
                &s,
                &text,
                b.manifest.logit_scale,
                &TrainOptions::default(),
            )
            .unwrap();
            let records = (0..s.len())
                .map(|i| ShotRecord {
                    class: s.labels[i],
                    file: format!("shot{i}.png"),
                    sha256: "0".repeat(64),
                })
                .collect();
            let anchors = Some((s.views[0].clone(), s.labels.clone()));
            let mut a =
                Adapter::from_trained(t, &b, &cs, text.clone(), anchors, records, vec![], 1, 9);
            let path = dir.path().join(format!("{m}.safetensors"));
            a.save(&path).unwrap();
            let back = Adapter::load(&path).unwrap();
            assert_eq!(back.meta, a.meta);
            assert_eq!(back.id, a.id);
            assert_eq!(back.id.len(), 16);
            assert_eq!(back.method(), Some(m));
            assert_eq!(back.text, text);
            assert_eq!(back.support, a.support);
            let x = &s.views[0];
            assert_eq!(back.head.logits(x).data, a.head.logits(x).data, "{m}");
            assert_eq!(back.meta.shots_per_class, vec![2, 2, 2]);
            back.check(&path, &b, &cs).unwrap();
        }
    }

    #[test]
    fn the_id_depends_on_what_decides_predictions_only() {
        let b = bundle();
        let cs = classes(&["cat", "dog", "cup"]);
        let (s, text) = shots(3, b.manifest.embed_dim);
        let make = || {
            let t = train(Method::Tip, &s, &text, 10.0, &TrainOptions::default()).unwrap();
            Adapter::from_trained(t, &b, &cs, text.clone(), None, vec![], vec![], 0, 0)
        };
        let dir = tempfile::tempdir().unwrap();
        let (mut a, mut b2) = (make(), make());
        b2.meta.created_unix_ms += 86_400_000;
        b2.meta.clipd_version = "0.0.0-other".into();
        a.save(&dir.path().join("a.safetensors")).unwrap();
        b2.save(&dir.path().join("b.safetensors")).unwrap();
        assert_eq!(a.id, b2.id, "same training, same id");
        assert_eq!(
            Adapter::load(&dir.path().join("b.safetensors")).unwrap().id,
            a.id
        );
        let mut c = make();
        c.meta.classes[0].prompts = vec!["a drawing of a cat.".into()];
        assert_ne!(c.content_id(), a.id, "other prompts, other id");
    }

    #[test]
    fn missing_files_folders_and_text_files_are_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let e = Adapter::load(&dir.path().join("none.safetensors")).unwrap_err();
        assert!(matches!(e, AdapterError::Missing { .. }), "{e}");
        assert!(e.to_string().contains("no such file"), "{e}");
        let toml = dir.path().join("clipd.toml");
        std::fs::write(&toml, "[[classes]]\nname = \"cat\"\n").unwrap();
        let e = Adapter::load(&toml).unwrap_err().to_string();
        assert!(
            e.contains("this is a text file, not a safetensors adapter"),
            "{e}"
        );
        let b = bundle();
        let cs = classes(&["cat", "dog", "cup"]);
        let (s, text) = shots(3, b.manifest.embed_dim);
        let t = train(Method::Tip, &s, &text, 10.0, &TrainOptions::default()).unwrap();
        let mut a = Adapter::from_trained(t, &b, &cs, text, None, vec![], vec![], 0, 0);
        let nowhere = dir.path().join("no/such/dir/a.safetensors");
        let e = a.save(&nowhere).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        assert!(!dir.path().join("no").exists(), "no folder created");
    }

    #[test]
    fn refuses_other_bundles_other_classes_and_broken_files() {
        let b = bundle();
        let cs = classes(&["cat", "dog", "cup"]);
        let (s, text) = shots(3, b.manifest.embed_dim);
        let t = train(Method::Tip, &s, &text, 10.0, &TrainOptions::default()).unwrap();
        let mut a = Adapter::from_trained(t, &b, &cs, text, None, vec![], vec![], 0, 0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.safetensors");
        a.save(&path).unwrap();

        let e = a
            .check(&path, &b, &classes(&["cat", "dog"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("adapter classes not in the config: cup"), "{e}");
        let e = a
            .check(&path, &b, &classes(&["dog", "cat", "cup"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("different order"), "{e}");
        let mut other = b.clone();
        other.sha256 = "f".repeat(64);
        let e = a.check(&path, &other, &cs).unwrap_err().to_string();
        assert!(
            e.contains("trained for model bundle tiny-clip@") && e.contains("retrain"),
            "{e}"
        );

        std::fs::write(&path, b"not safetensors").unwrap();
        let e = Adapter::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("a.safetensors") && e.contains("not a clipd adapter"),
            "{e}"
        );
        // A valid safetensors file without our metadata is refused by name.
        let plain = safetensors::tensor::serialize(
            [(
                "x",
                TensorView::new(Dtype::F32, vec![1], &[0, 0, 0, 0]).unwrap(),
            )],
            None,
        )
        .unwrap();
        std::fs::write(&path, plain).unwrap();
        let e = Adapter::load(&path).unwrap_err().to_string();
        assert!(e.contains("clipd.adapter"), "{e}");
        let e = Adapter::load(&dir.path().join("missing.safetensors")).unwrap_err();
        assert!(matches!(e, AdapterError::Missing { .. }));
    }
}
