//! Model bundles: a directory with `manifest.json`, two ONNX encoders and a tokenizer
//! (see `models/BUNDLE_FORMAT.md`). Opening a bundle checks the manifest's internal consistency
//! and every file's sha256; the encoder backends check the ONNX graphs against it when they load.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

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
}

/// A verified bundle: manifest consistent, every listed file present with the right hash.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// sha256 of `manifest.json`, which pins every file's hash: the bundle's identity.
    pub sha256: String,
}

impl Bundle {
    /// Open and verify the bundle in `dir`.
    pub fn open(dir: &Path) -> Result<Bundle, BundleError> {
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
        })
    }

    /// Short identifier logged with every frame: `name@<first 12 hex of the bundle hash>`.
    pub fn model_id(&self) -> String {
        format!("{}@{}", self.manifest.name, &self.sha256[..12])
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join(MANIFEST)
    }

    pub fn image_encoder_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.image_encoder.file)
    }

    pub fn text_encoder_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.text_encoder.file)
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
        assert!(matches!(
            Bundle::open(empty.path()),
            Err(BundleError::NoManifest { .. })
        ));
    }
}
