//! Model bundles: a directory with `manifest.json`, two ONNX encoders and a tokenizer
//! (see `models/BUNDLE_FORMAT.md`). Opening a bundle checks the manifest's internal consistency
//! and every file's sha256; the encoder backends check the ONNX graphs against it when they load.
//!
//! A bundle may also carry reduced-precision copies of its encoders (`variants`, written by
//! `models/export/variants.py`). Opening a bundle always selects the fp32 originals;
//! [`Bundle::with_variant`] selects a variant, after which the encoder paths name its files, so
//! every backend and every caller that loads encoders from the bundle runs the same graphs.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{ExitClass, HasExitClass};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The manifest file name inside a bundle directory.
pub const MANIFEST: &str = "manifest.json";

/// Why a bundle cannot be used. Every variant names the file, and where it applies the field.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a bundle: {MANIFEST} is missing", dir.display())]
    NoManifest { dir: PathBuf },
    #[error("bundle {}: no such directory (pass --bundle DIR or set `bundle` in the config; relative config paths resolve against the config's folder)", dir.display())]
    NoBundle { dir: PathBuf },
    #[error("{}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: field `{field}`: {msg}", path.display())]
    Field {
        path: PathBuf,
        field: String,
        msg: String,
    },
    #[error("{}: variant {name:?} is not in this bundle (it has: {}); {}, or remove engine.variant from the config to run the fp32 originals", path.display(), list_or_none(known), how_to_make(name, dir))]
    UnknownVariant {
        path: PathBuf,
        dir: PathBuf,
        name: String,
        known: Vec<String>,
    },
    #[error("{}: file listed in manifest `files` is missing", path.display())]
    MissingFile { path: PathBuf },
    #[error("{}: sha256 {actual} does not match manifest `files.{name}` = {expected}", path.display())]
    HashMismatch {
        path: PathBuf,
        name: String,
        expected: String,
        actual: String,
    },
}

impl HasExitClass for BundleError {
    fn exit_class(&self) -> ExitClass {
        ExitClass::Model
    }
}

/// The name `models/export/variants.py` gives its float16 variant.
const FLOAT16_VARIANT: &str = "fp16";

/// The variants `models/export/variants.py` makes.
const MADE_BY_VARIANTS_PY: [&str; 3] = ["int8", "qdq", FLOAT16_VARIANT];

/// How to add variant `name` to the bundle in `dir`: the exporter's command when it makes that
/// variant, else the names it does make.
fn how_to_make(name: &str, dir: &Path) -> String {
    if !MADE_BY_VARIANTS_PY.contains(&name) {
        return format!(
            "models/export/variants.py makes {}",
            MADE_BY_VARIANTS_PY.join(", ")
        );
    }
    let calibration = if name == "qdq" {
        " --calibration FRAMES_DIR"
    } else {
        ""
    };
    format!(
        "create it with `python models/export/variants.py --bundle {} --variants {name}{calibration}`",
        dir.display()
    )
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// One axis of a declared tensor shape: the dynamic batch axis or a fixed size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Batch,
    Fixed(usize),
}

impl<'de> Deserialize<'de> for Dim {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(usize),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Dim::Fixed(n)),
            Raw::S(s) if s == "batch" => Ok(Dim::Batch),
            Raw::S(s) => Err(serde::de::Error::custom(format!(
                "shape entry {s:?}: expected an integer or \"batch\""
            ))),
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Batch => f.write_str("batch"),
            Dim::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// Format a declared shape like `[batch, 3, 64, 64]`.
pub fn shape_str(shape: &[Dim]) -> String {
    let parts: Vec<String> = shape.iter().map(Dim::to_string).collect();
    format!("[{}]", parts.join(", "))
}

#[derive(Debug, Clone, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<Dim>,
    pub dtype: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EncoderSpec {
    pub file: String,
    pub input: TensorSpec,
    pub output: TensorSpec,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FileRef {
    pub file: String,
}

/// One tower's file in a reduced-precision variant, with the accuracy price measured when it was
/// made (embedding cosine against the fp32 original on a fixed probe batch).
#[derive(Debug, Clone, Deserialize)]
pub struct VariantFile {
    pub file: String,
    #[serde(default)]
    pub bytes: Option<u64>,
    #[serde(default)]
    pub min_cosine_vs_fp32: Option<f64>,
    #[serde(default)]
    pub mean_cosine_vs_fp32: Option<f64>,
}

/// A reduced-precision variant (`variants.<name>` in the manifest). A tower it lacks runs the
/// fp32 original.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct VariantSpec {
    #[serde(default)]
    pub image_encoder: Option<VariantFile>,
    #[serde(default)]
    pub text_encoder: Option<VariantFile>,
}

impl VariantSpec {
    /// `(tower name, file)` for each tower the variant has.
    fn towers(&self) -> impl Iterator<Item = (&'static str, &VariantFile)> {
        [
            ("image_encoder", self.image_encoder.as_ref()),
            ("text_encoder", self.text_encoder.as_ref()),
        ]
        .into_iter()
        .filter_map(|(t, f)| f.map(|f| (t, f)))
    }
}

/// Whether `name` is a valid variant name: non-empty ASCII `[a-z0-9_-]` (it becomes part of file
/// and cache names).
pub fn is_variant_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The image transform: open_clip's eval preprocessing.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageSpec {
    pub size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub resize: String,
    pub interpolation: String,
    pub crop: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TextSpec {
    pub context_length: usize,
    pub sot_id: u32,
    pub eot_id: u32,
    pub pad_id: u32,
}

/// `manifest.json`, as specified in `models/BUNDLE_FORMAT.md`.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub name: String,
    #[serde(default)]
    pub source: serde_json::Value,
    pub embed_dim: usize,
    pub image: ImageSpec,
    pub text: TextSpec,
    pub logit_scale: f32,
    pub outputs_normalized: bool,
    pub image_encoder: EncoderSpec,
    pub text_encoder: EncoderSpec,
    pub tokenizer: FileRef,
    pub files: BTreeMap<String, String>,
    /// Reduced-precision copies of the encoders, by name (`int8`, `fp16`, …).
    #[serde(default)]
    pub variants: BTreeMap<String, VariantSpec>,
}

/// A verified bundle: manifest consistent, every listed file present with the right hash.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// sha256 of `manifest.json`, which pins every file's hash: the bundle's identity.
    pub sha256: String,
    /// The selected entry of `manifest.variants`; `None`: the fp32 originals.
    variant: Option<String>,
}

impl Bundle {
    /// Open and verify the bundle in `dir`.
    pub fn open(dir: &Path) -> Result<Bundle, BundleError> {
        if !dir.exists() {
            return Err(BundleError::NoBundle {
                dir: dir.to_path_buf(),
            });
        }
        let path = dir.join(MANIFEST);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BundleError::NoManifest {
                    dir: dir.to_path_buf(),
                })
            }
            Err(source) => return Err(BundleError::Io { path, source }),
        };
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|source| BundleError::Parse {
                path: path.clone(),
                source,
            })?;
        manifest.validate(&path)?;
        // Checked before the hashes so a missing variant file is named by its manifest field.
        for (name, spec) in &manifest.variants {
            for (tower, vf) in spec.towers() {
                if !dir.join(&vf.file).is_file() {
                    return Err(BundleError::Field {
                        path: path.clone(),
                        field: format!("variants.{name}.{tower}.file"),
                        msg: format!(
                            "{:?} is missing from the bundle; re-create it with `python models/export/variants.py --bundle {} --variants {name}`",
                            vf.file,
                            dir.display()
                        ),
                    });
                }
            }
        }
        for (name, expected) in &manifest.files {
            let file = dir.join(name);
            let actual = sha256_file(&file).map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    BundleError::MissingFile { path: file.clone() }
                } else {
                    BundleError::Io {
                        path: file.clone(),
                        source,
                    }
                }
            })?;
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(BundleError::HashMismatch {
                    path: file,
                    name: name.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        Ok(Bundle {
            dir: dir.to_path_buf(),
            manifest,
            sha256: sha256_hex(&bytes),
            variant: None,
        })
    }

    /// This bundle with `variant`'s encoders selected (`None`: the fp32 originals). A tower the
    /// variant lacks stays fp32, which is logged once here.
    pub fn with_variant(mut self, variant: Option<&str>) -> Result<Bundle, BundleError> {
        let Some(name) = variant else {
            self.variant = None;
            return Ok(self);
        };
        let spec = self.variant_spec(name)?;
        for (tower, present, fp32) in [
            (
                "image_encoder",
                spec.image_encoder.is_some(),
                &self.manifest.image_encoder.file,
            ),
            (
                "text_encoder",
                spec.text_encoder.is_some(),
                &self.manifest.text_encoder.file,
            ),
        ] {
            if !present {
                log::info!(
                    "bundle {}: variant {name:?} has no {tower}; running the fp32 {fp32}",
                    self.manifest.name
                );
            }
        }
        self.variant = Some(name.to_string());
        Ok(self)
    }

    /// The selected variant's name; `None`: the fp32 originals.
    pub fn variant(&self) -> Option<&str> {
        self.variant.as_deref()
    }

    /// Whether the selected variant is the exporter's float16 one (runtimes treat its graphs
    /// differently: see the ort backend).
    pub fn is_float16(&self) -> bool {
        self.variant() == Some(FLOAT16_VARIANT)
    }

    /// The variant called `name`, or a typed error naming the variants the bundle has.
    fn variant_spec(&self, name: &str) -> Result<&VariantSpec, BundleError> {
        self.manifest
            .variants
            .get(name)
            .ok_or_else(|| BundleError::UnknownVariant {
                path: self.manifest_path(),
                dir: self.dir.clone(),
                name: name.to_string(),
                known: self.manifest.variants.keys().cloned().collect(),
            })
    }

    /// Whether the selected variant replaces the text tower (so its embeddings differ from
    /// the fp32 text encoder's).
    pub fn text_encoder_is_variant(&self) -> bool {
        self.selected_spec()
            .is_some_and(|s| s.text_encoder.is_some())
    }

    fn selected_spec(&self) -> Option<&VariantSpec> {
        self.variant
            .as_deref()
            .and_then(|n| self.manifest.variants.get(n))
    }

    /// Short identifier logged with every frame: `name@<first 12 hex of the bundle hash>`.
    pub fn model_id(&self) -> String {
        format!("{}@{}", self.manifest.name, &self.sha256[..12])
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join(MANIFEST)
    }

    /// The image encoder the selected variant runs (fp32 when none is selected).
    pub fn image_encoder_path(&self) -> PathBuf {
        let file = self.selected_spec().and_then(|s| s.image_encoder.as_ref());
        self.dir
            .join(file.map_or(&self.manifest.image_encoder.file, |f| &f.file))
    }

    /// The text encoder the selected variant runs (fp32 when none is selected).
    pub fn text_encoder_path(&self) -> PathBuf {
        let file = self.selected_spec().and_then(|s| s.text_encoder.as_ref());
        self.dir
            .join(file.map_or(&self.manifest.text_encoder.file, |f| &f.file))
    }

    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.tokenizer.file)
    }
}

impl Manifest {
    /// Check the manifest against the format rules; errors name the field.
    pub fn validate(&self, path: &Path) -> Result<(), BundleError> {
        let bad = |field: &str, msg: String| BundleError::Field {
            path: path.to_path_buf(),
            field: field.to_string(),
            msg,
        };
        if self.format_version != 1 {
            return Err(bad(
                "format_version",
                format!("{} is not supported (expected 1)", self.format_version),
            ));
        }
        if self.embed_dim == 0 {
            return Err(bad("embed_dim", "must be positive".into()));
        }
        if !(self.logit_scale.is_finite() && self.logit_scale > 0.0) {
            return Err(bad(
                "logit_scale",
                format!("{} must be a positive number", self.logit_scale),
            ));
        }
        let img = &self.image;
        if img.size == 0 {
            return Err(bad("image.size", "must be positive".into()));
        }
        if img.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(bad("image.std", "entries must be positive".into()));
        }
        for (field, value, want) in [
            ("image.resize", &img.resize, "shortest_side"),
            ("image.interpolation", &img.interpolation, "bicubic"),
            ("image.crop", &img.crop, "center"),
        ] {
            if value != want {
                return Err(bad(
                    field,
                    format!("{value:?} is not supported (expected {want:?})"),
                ));
            }
        }
        if self.text.context_length < 2 {
            return Err(bad(
                "text.context_length",
                "must hold at least SOT and EOT".into(),
            ));
        }
        let s = Dim::Fixed(img.size);
        let d = Dim::Fixed(self.embed_dim);
        let ctx = Dim::Fixed(self.text.context_length);
        let checks: [(&str, &TensorSpec, Vec<Dim>, &str); 4] = [
            (
                "image_encoder.input",
                &self.image_encoder.input,
                vec![Dim::Batch, Dim::Fixed(3), s, s],
                "float32",
            ),
            (
                "image_encoder.output",
                &self.image_encoder.output,
                vec![Dim::Batch, d],
                "float32",
            ),
            (
                "text_encoder.input",
                &self.text_encoder.input,
                vec![Dim::Batch, ctx],
                "int64",
            ),
            (
                "text_encoder.output",
                &self.text_encoder.output,
                vec![Dim::Batch, d],
                "float32",
            ),
        ];
        for (field, spec, want, dtype) in checks {
            if spec.shape != want {
                return Err(bad(
                    &format!("{field}.shape"),
                    format!(
                        "{} does not match {} (from image.size, text.context_length and embed_dim)",
                        shape_str(&spec.shape),
                        shape_str(&want)
                    ),
                ));
            }
            if spec.dtype != dtype {
                return Err(bad(
                    &format!("{field}.dtype"),
                    format!("{:?}, expected {dtype:?}", spec.dtype),
                ));
            }
        }
        for (field, file) in [
            ("image_encoder.file", &self.image_encoder.file),
            ("text_encoder.file", &self.text_encoder.file),
            ("tokenizer.file", &self.tokenizer.file),
        ] {
            if !self.files.contains_key(file) {
                return Err(bad(
                    "files",
                    format!("{field} {file:?} is not listed with a sha256"),
                ));
            }
        }
        for (name, spec) in &self.variants {
            if !is_variant_name(name) {
                return Err(bad(
                    &format!("variants.{name}"),
                    "variant names are lowercase ASCII letters, digits, '_' and '-'".into(),
                ));
            }
            if spec.image_encoder.is_none() && spec.text_encoder.is_none() {
                return Err(bad(
                    &format!("variants.{name}"),
                    "lists neither image_encoder nor text_encoder; re-create it with models/export/variants.py or remove it".into(),
                ));
            }
            for (tower, vf) in spec.towers() {
                if !self.files.contains_key(&vf.file) {
                    return Err(bad(
                        &format!("variants.{name}.{tower}.file"),
                        format!(
                            "{:?} is not listed in `files` with a sha256; re-create the variant with `python models/export/variants.py --bundle DIR --variants {name}`",
                            vf.file
                        ),
                    ));
                }
            }
        }
        for (name, hash) in &self.files {
            let p = Path::new(name);
            if p.is_absolute()
                || p.components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(bad(
                    &format!("files.{name}"),
                    "must be a relative path inside the bundle".into(),
                ));
            }
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(
                    &format!("files.{name}"),
                    format!("{hash:?} is not a sha256 hex digest"),
                ));
            }
        }
        Ok(())
    }
}

/// sha256 of a byte slice as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// sha256 of a file's contents as lowercase hex, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_json(embed_text: usize) -> String {
        format!(
            r#"{{
  "format_version": 1, "name": "t", "embed_dim": 8,
  "image": {{"size": 4, "mean": [0.5,0.5,0.5], "std": [0.5,0.5,0.5],
            "resize": "shortest_side", "interpolation": "bicubic", "crop": "center"}},
  "text": {{"context_length": 5, "sot_id": 1, "eot_id": 2, "pad_id": 0}},
  "logit_scale": 100.0, "outputs_normalized": false,
  "image_encoder": {{"file": "i.onnx",
     "input": {{"name": "image", "shape": ["batch", 3, 4, 4], "dtype": "float32"}},
     "output": {{"name": "image_embeds", "shape": ["batch", 8], "dtype": "float32"}}}},
  "text_encoder": {{"file": "t.onnx",
     "input": {{"name": "input_ids", "shape": ["batch", 5], "dtype": "int64"}},
     "output": {{"name": "text_embeds", "shape": ["batch", {embed_text}], "dtype": "float32"}}}},
  "tokenizer": {{"file": "tok.json"}},
  "files": {{"i.onnx": "{h}", "t.onnx": "{h}", "tok.json": "{h}"}}
}}"#,
            h = sha256_hex(b"x")
        )
    }

    fn write_bundle(dir: &Path, manifest: &str) {
        std::fs::write(dir.join(MANIFEST), manifest).unwrap();
        for f in ["i.onnx", "t.onnx", "tok.json"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
    }

    #[test]
    fn opens_consistent_bundle() {
        let dir = tempfile::tempdir().unwrap();
        write_bundle(dir.path(), &manifest_json(8));
        let b = Bundle::open(dir.path()).unwrap();
        assert_eq!(b.manifest.embed_dim, 8);
        assert_eq!(b.sha256.len(), 64);
        assert!(b.model_id().starts_with("t@"));
    }

    #[test]
    fn tower_dim_mismatch_names_field() {
        let dir = tempfile::tempdir().unwrap();
        write_bundle(dir.path(), &manifest_json(16));
        let e = Bundle::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("text_encoder.output.shape"), "{e}");
        assert!(e.contains("manifest.json"), "{e}");
    }

    #[test]
    fn hash_mismatch_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        write_bundle(dir.path(), &manifest_json(8));
        std::fs::write(dir.path().join("t.onnx"), b"y").unwrap();
        let e = Bundle::open(dir.path()).unwrap_err();
        assert!(matches!(e, BundleError::HashMismatch { ref name, .. } if name == "t.onnx"));
        std::fs::remove_file(dir.path().join("tok.json")).unwrap();
        std::fs::write(dir.path().join("t.onnx"), b"x").unwrap();
        let e = Bundle::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("tok.json"), "{e}");
        assert!(matches!(e, BundleError::MissingFile { .. }));
    }

    #[test]
    fn bad_shape_entry_and_version() {
        let dir = tempfile::tempdir().unwrap();
        write_bundle(
            dir.path(),
            &manifest_json(8).replace("\"batch\", 5", "\"time\", 5"),
        );
        let e = Bundle::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("\"time\""), "{e}");
        write_bundle(
            dir.path(),
            &manifest_json(8).replace("\"format_version\": 1", "\"format_version\": 2"),
        );
        let e = Bundle::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("format_version"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = Bundle::open(&empty.path().join("nope")).unwrap_err();
        assert!(matches!(e, BundleError::NoBundle { .. }), "{e}");
        assert!(e.to_string().contains("no such directory"), "{e}");
        assert!(matches!(
            Bundle::open(empty.path()),
            Err(BundleError::NoManifest { .. })
        ));
    }

    /// The test manifest with an `int8` variant of both towers (files listed and written).
    fn with_int8(dir: &Path, variants: &str, listed: &[&str]) {
        let mut files = String::new();
        for f in listed {
            files.push_str(&format!("\"{f}\": \"{}\", ", sha256_hex(b"q")));
            std::fs::write(dir.join(f), b"q").unwrap();
        }
        let m = manifest_json(8)
            .replace("\"tok.json\": \"", &format!("{files}\"tok.json\": \""))
            .replace(
                "\"files\":",
                &format!("\"variants\": {variants},\n  \"files\":"),
            );
        write_bundle(dir, &m);
    }

    const INT8: &str = r#"{"int8": {
        "image_encoder": {"file": "i.int8.onnx", "bytes": 1, "min_cosine_vs_fp32": 0.99,
                          "mean_cosine_vs_fp32": 0.995, "future_field": true},
        "text_encoder": {"file": "t.int8.onnx"}}}"#;

    #[test]
    fn variant_selects_its_files_and_none_keeps_fp32() {
        let dir = tempfile::tempdir().unwrap();
        with_int8(dir.path(), INT8, &["i.int8.onnx", "t.int8.onnx"]);
        let b = Bundle::open(dir.path()).unwrap();
        assert_eq!(b.variant(), None);
        assert_eq!(b.image_encoder_path(), dir.path().join("i.onnx"));
        assert_eq!(b.text_encoder_path(), dir.path().join("t.onnx"));
        let v = b.manifest.variants["int8"].image_encoder.clone().unwrap();
        assert_eq!(v.min_cosine_vs_fp32, Some(0.99));
        let int8 = b.with_variant(Some("int8")).unwrap();
        assert_eq!(int8.variant(), Some("int8"));
        assert_eq!(int8.image_encoder_path(), dir.path().join("i.int8.onnx"));
        assert_eq!(int8.text_encoder_path(), dir.path().join("t.int8.onnx"));
        assert!(int8.text_encoder_is_variant());
        let back = int8.with_variant(None).unwrap();
        assert_eq!(back.text_encoder_path(), dir.path().join("t.onnx"));
        assert!(!back.text_encoder_is_variant());
    }

    #[test]
    fn variant_without_a_tower_runs_that_tower_in_fp32() {
        let dir = tempfile::tempdir().unwrap();
        with_int8(
            dir.path(),
            r#"{"int8": {"image_encoder": {"file": "i.int8.onnx"}}}"#,
            &["i.int8.onnx"],
        );
        let b = Bundle::open(dir.path())
            .unwrap()
            .with_variant(Some("int8"))
            .unwrap();
        assert_eq!(b.image_encoder_path(), dir.path().join("i.int8.onnx"));
        assert_eq!(b.text_encoder_path(), dir.path().join("t.onnx"));
        assert!(!b.text_encoder_is_variant());
    }

    #[test]
    fn unknown_variant_names_what_the_bundle_has_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        with_int8(dir.path(), INT8, &["i.int8.onnx", "t.int8.onnx"]);
        let b = Bundle::open(dir.path()).unwrap();
        let e = b.clone().with_variant(Some("fp16")).unwrap_err();
        assert!(
            matches!(&e, BundleError::UnknownVariant { name, known, .. }
                if name == "fp16" && known == &["int8".to_string()]),
            "{e}"
        );
        let e = b
            .clone()
            .with_variant(Some("fp16"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("it has: int8"), "{e}");
        assert!(e.contains("variants.py --bundle"), "{e}");
        assert!(e.contains("--variants fp16"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        // qdq needs frames to calibrate on; a name the exporter does not make gets the names it does.
        let e = b.clone().with_variant(Some("qdq")).unwrap_err().to_string();
        assert!(e.contains("--variants qdq --calibration FRAMES_DIR"), "{e}");
        let e = b.with_variant(Some("int4")).unwrap_err().to_string();
        assert!(!e.contains("--variants int4"), "{e}");
        assert!(e.contains("variants.py makes int8, qdq, fp16"), "{e}");
        // A bundle without variants says so.
        let plain = tempfile::tempdir().unwrap();
        write_bundle(plain.path(), &manifest_json(8));
        let e = Bundle::open(plain.path())
            .unwrap()
            .with_variant(Some("int8"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("it has: none"), "{e}");
    }

    #[test]
    fn variant_file_missing_or_unlisted_names_its_field() {
        let dir = tempfile::tempdir().unwrap();
        with_int8(dir.path(), INT8, &["i.int8.onnx", "t.int8.onnx"]);
        std::fs::remove_file(dir.path().join("t.int8.onnx")).unwrap();
        let e = Bundle::open(dir.path()).unwrap_err();
        assert!(
            matches!(&e, BundleError::Field { field, .. } if field == "variants.int8.text_encoder.file"),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("manifest.json: field `variants.int8.text_encoder.file`"),
            "{msg}"
        );
        assert!(msg.contains("variants.py"), "{msg}");

        let dir = tempfile::tempdir().unwrap();
        with_int8(dir.path(), INT8, &["i.int8.onnx"]);
        std::fs::write(dir.path().join("t.int8.onnx"), b"q").unwrap();
        let e = Bundle::open(dir.path()).unwrap_err();
        assert!(
            matches!(&e, BundleError::Field { field, msg, .. }
                if field == "variants.int8.text_encoder.file" && msg.contains("not listed in `files`")),
            "{e}"
        );
    }

    #[test]
    fn bad_variant_names_and_empty_variants_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        with_int8(
            dir.path(),
            &INT8.replace("\"int8\"", "\"Int 8\""),
            &["i.int8.onnx", "t.int8.onnx"],
        );
        let e = Bundle::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("field `variants.Int 8`"), "{e}");
        with_int8(dir.path(), r#"{"int8": {}}"#, &[]);
        let e = Bundle::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("field `variants.int8`: lists neither"), "{e}");
        assert!(is_variant_name("fp16") && is_variant_name("int8_qdq-2"));
        assert!(!is_variant_name("") && !is_variant_name("INT8") && !is_variant_name("a/b"));
    }
}
