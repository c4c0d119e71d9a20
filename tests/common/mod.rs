//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod tmpfs;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}

pub fn bundle_dir() -> PathBuf {
    root().join("models/tiny-clip")
}

pub fn read_json(p: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// The `clipd` binary, run from the repository root.
pub fn clipd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_clipd"));
    c.current_dir(root());
    c.env_remove("RUST_LOG");
    c
}

pub fn run(args: &[&str]) -> Output {
    clipd().args(args).output().expect("clipd runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `(relative path, class)` of the fieldset slice's test frames, from index.csv.
pub fn fieldset_test_frames() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(fixtures().join("fieldset/index.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (p, c, s) = (col("path"), col("class"), col("split"));
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f[s] == "test")
        .map(|f| (f[p].to_string(), f[c].to_string()))
        .collect()
}

/// Copy of the shipped bundle in `dir`: encoders and tokenizer hard-linked or copied, the
/// manifest rewritten by `edit` (as JSON) after `files` has been refreshed for replaced files.
pub fn tampered_bundle(
    dir: &Path,
    skip: &[&str],
    replace: &[(&str, Vec<u8>)],
    edit: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    let b = dir.join("bundle");
    std::fs::create_dir_all(&b).unwrap();
    let src = bundle_dir();
    let mut manifest = read_json(&src.join("manifest.json"));
    for f in ["image_encoder.onnx", "text_encoder.onnx", "tokenizer.json"] {
        if skip.contains(&f) {
            continue;
        }
        if let Some((_, bytes)) = replace.iter().find(|(n, _)| *n == f) {
            std::fs::write(b.join(f), bytes).unwrap();
            manifest["files"][f] = clipd::bundle::sha256_hex(bytes).into();
        } else if std::fs::hard_link(src.join(f), b.join(f)).is_err() {
            std::fs::copy(src.join(f), b.join(f)).unwrap();
        }
    }
    edit(&mut manifest);
    std::fs::write(
        b.join("manifest.json"),
        serde_json::to_string_pretty(&manifest).unwrap(),
    )
    .unwrap();
    b
}

/// A config with the given classes and one directory source.
pub fn write_config(
    dir: &Path,
    frames: &Path,
    db: &Path,
    classes: &[&str],
    extra: &str,
) -> PathBuf {
    let mut s = format!(
        "bundle = {:?}\n{extra}\n[store]\npath = {:?}\ncommit_ms = 50\n\n[[sources]]\nkind = \"dir\"\nname = \"cam\"\npath = {:?}\nlabels_from = \"parent_dir\"\npoll_ms = 50\n",
        bundle_dir(),
        db,
        frames
    );
    for c in classes {
        s.push_str(&format!(
            "\n[[classes]]\nname = {c:?}\ndomain = \"shape\"\n"
        ));
    }
    let p = dir.join("clipd.toml");
    std::fs::write(&p, s).unwrap();
    p
}

/// Copy a few fieldset test frames (keeping their class directories) into `dir`.
pub fn copy_frames(dir: &Path, classes: &[&str], per_class: usize) -> usize {
    let mut n = 0;
    for c in classes {
        let src = fixtures().join("fieldset/test").join(c);
        let dst = dir.join(c);
        std::fs::create_dir_all(&dst).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(&src)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files.into_iter().take(per_class) {
            std::fs::copy(&f, dst.join(f.file_name().unwrap())).unwrap();
            n += 1;
        }
    }
    n
}

/// Minimal protobuf writer for hand-made ONNX test graphs.
pub mod pb {
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
    }
    pub fn int(out: &mut Vec<u8>, field: u32, v: i64) {
        varint(out, (field as u64) << 3);
        varint(out, v as u64);
    }
    pub fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
        varint(out, ((field as u64) << 3) | 2);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
    pub fn msg(field: u32, body: Vec<u8>) -> Vec<u8> {
        let mut out = Vec::new();
        bytes(&mut out, field, &body);
        out
    }
}

/// An ONNX text "encoder": int64 ids `[batch, ctx]` → Cast → MatMul with a `ctx × dim`
/// weight → float `[batch, dim]`, named like the bundle's text tower.
pub fn onnx_text_tower(ctx: usize, dim: usize) -> Vec<u8> {
    use pb::*;
    let value_info = |name: &str, elem: i64, dims: &[Option<i64>]| {
        let mut shape = Vec::new();
        for d in dims {
            let mut dim_msg = Vec::new();
            match d {
                Some(v) => int(&mut dim_msg, 1, *v),
                None => bytes(&mut dim_msg, 2, b"batch"),
            }
            shape.extend(msg(1, dim_msg));
        }
        let mut tensor = Vec::new();
        int(&mut tensor, 1, elem);
        tensor.extend(msg(2, shape));
        let mut vi = Vec::new();
        bytes(&mut vi, 1, name.as_bytes());
        vi.extend(msg(2, msg(1, tensor)));
        vi
    };
    let mut cast = Vec::new();
    bytes(&mut cast, 1, b"input_ids");
    bytes(&mut cast, 2, b"ids_f");
    bytes(&mut cast, 4, b"Cast");
    let mut attr = Vec::new();
    bytes(&mut attr, 1, b"to");
    int(&mut attr, 3, 1);
    int(&mut attr, 20, 2);
    cast.extend(msg(5, attr));
    let mut matmul = Vec::new();
    bytes(&mut matmul, 1, b"ids_f");
    bytes(&mut matmul, 1, b"W");
    bytes(&mut matmul, 2, b"text_embeds");
    bytes(&mut matmul, 4, b"MatMul");
    let mut w = Vec::new();
    int(&mut w, 1, ctx as i64);
    int(&mut w, 1, dim as i64);
    int(&mut w, 2, 1);
    bytes(&mut w, 8, b"W");
    let raw: Vec<u8> = (0..ctx * dim)
        .flat_map(|i| ((i % 7) as f32 * 0.01).to_le_bytes())
        .collect();
    bytes(&mut w, 9, &raw);
    let mut graph = Vec::new();
    graph.extend(msg(1, cast));
    graph.extend(msg(1, matmul));
    bytes(&mut graph, 2, b"tower");
    graph.extend(msg(5, w));
    graph.extend(msg(
        11,
        value_info("input_ids", 7, &[None, Some(ctx as i64)]),
    ));
    graph.extend(msg(
        12,
        value_info("text_embeds", 1, &[None, Some(dim as i64)]),
    ));
    let mut opset = Vec::new();
    bytes(&mut opset, 1, b"");
    int(&mut opset, 2, 13);
    let mut model = Vec::new();
    int(&mut model, 1, 8);
    model.extend(msg(8, opset));
    model.extend(msg(7, graph));
    model
}

/// The ONNX Runtime library the `ort` backend tests load: ORT_DYLIB_PATH, else the one in the
/// installed `onnxruntime` pip wheel (models/requirements-test.txt).
pub fn ort_library() -> PathBuf {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))",
        ])
        .output();
    let dir = match out {
        Ok(o) if o.status.success() => {
            PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("capi")
        }
        _ => panic!(
            "these tests need ONNX Runtime: pip install -r models/requirements-test.txt, \
             or set ORT_DYLIB_PATH to a libonnxruntime.so"
        ),
    };
    let mut libs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so"))
        })
        .collect();
    libs.sort();
    libs.pop()
        .unwrap_or_else(|| panic!("no libonnxruntime.so* in {}", dir.display()))
}

/// ONNX Runtime's own (Python, CPU provider) L2-normalised outputs of `model` for `count`
/// inputs of `pixels`, one input per run, computed on this machine: its int8 kernels differ by
/// release and by instruction set (AVX2, AVX-512 VNNI, AMX), so a reference made elsewhere
/// agrees only to about 0.99 cosine. `None` when `ORT_DYLIB_PATH` names a library
/// other than the wheel's (versions may differ) or Python cannot run ONNX Runtime.
pub fn onnx_runtime_on_this_machine(
    model: &Path,
    pixels: &[f32],
    count: usize,
    input_shape: &[usize],
) -> Option<Vec<f32>> {
    if std::env::var_os("ORT_DYLIB_PATH").is_some_and(|p| !p.is_empty()) {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (input, output) = (tmp.path().join("in.npy"), tmp.path().join("out.npy"));
    let mut shape = vec![count];
    shape.extend_from_slice(input_shape);
    clipd::npy::write(&input, &shape, pixels).unwrap();
    let script = r#"
import sys
import numpy as np
import onnxruntime as ort
model, src, dst = sys.argv[1:4]
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name
x = np.load(src).astype(np.float32)
e = np.stack([sess.run(None, {name: x[i:i + 1]})[0][0] for i in range(len(x))]).astype(np.float32)
np.save(dst, e / np.linalg.norm(e, axis=1, keepdims=True))
"#;
    let ran = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(model)
        .arg(&input)
        .arg(&output)
        .output()
        .ok()?;
    if !ran.status.success() {
        eprintln!(
            "ONNX Runtime (Python) did not run: {}",
            String::from_utf8_lossy(&ran.stderr)
        );
        return None;
    }
    let out: clipd::npy::Array<f32> = clipd::npy::read(&output).unwrap();
    Some(out.data)
}

/// A fixture file holding a JSON list of strings (`images.json`, `prompts.json`).
pub fn fixture_strings(name: &str) -> Vec<String> {
    read_json(&fixtures().join(name))
        .as_array()
        .unwrap_or_else(|| panic!("{name}: not a JSON list"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// The fixture images' names (`images.json` order) and their pixels, preprocessed for
/// `bundle`, back to back.
pub fn fixture_pixels(bundle: &clipd::bundle::Bundle) -> (Vec<String>, Vec<f32>) {
    let t = clipd::preprocess::Transform::from_spec(&bundle.manifest.image);
    let names = fixture_strings("images.json");
    let mut px = Vec::new();
    for n in &names {
        let path = fixtures().join("images").join(n);
        px.extend(
            t.load(&path, &clipd::preprocess::DecodeLimits::default())
                .unwrap(),
        );
    }
    (names, px)
}

/// L2-normalised embeddings of the `count` images in `px`, a batch of the encoder's at a time.
pub fn embed_images(
    enc: &mut dyn clipd::encoder::ImageEncoder,
    px: &[f32],
    count: usize,
) -> Vec<f32> {
    let per = px.len() / count;
    let mut out = Vec::new();
    for chunk in px.chunks(enc.batch_size() * per) {
        out.extend(enc.encode(chunk, chunk.len() / per).unwrap());
    }
    clipd::encoder::l2_normalize_rows(&mut out, enc.embed_dim());
    out
}
