//! The ONNX Runtime backend (feature `ort`) against tract on the shipped tiny model, with the
//! CPU provider of the libonnxruntime in the `onnxruntime` pip wheel (models/requirements-test.txt)
//! or the library named by ORT_DYLIB_PATH. Run with `cargo test --features ort --test ort_backend`.
#![cfg(feature = "ort")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use clipd::bundle::Bundle;
use clipd::encoder::{
    encode_texts, ensure_library, l2_normalize_rows, EncoderError, EncoderOptions,
    ExecutionProvider, ImageEncoder, OrtImageEncoder, OrtSettings, OrtTextEncoder,
    TractImageEncoder, TractTextEncoder, REQUIRED_MINOR_VERSION,
};
use clipd::npy;
use clipd::tokenizer::ClipTokenizer;
use common::*;

fn cpu_settings() -> OrtSettings {
    OrtSettings {
        library: Some(ort_library()),
        providers: vec![ExecutionProvider::Cpu],
    }
}

fn opts(batch: usize) -> EncoderOptions {
    EncoderOptions {
        batch,
        threads: 1,
        lanes: 1,
    }
}

#[test]
fn the_test_library_is_new_enough_and_loads_once() {
    let lib = ensure_library(Some(&ort_library())).unwrap();
    let minor: u32 = lib.version.split('.').nth(1).unwrap().parse().unwrap();
    assert!(minor >= REQUIRED_MINOR_VERSION, "{}", lib.version);
    // Asking again for the same file is free; another file cannot replace it in this process.
    assert_eq!(ensure_library(Some(&lib.path)).unwrap(), lib);
    let other = Path::new("/opt/other/libonnxruntime.so");
    let msg = ensure_library(Some(other)).unwrap_err().to_string();
    assert!(
        msg.starts_with("/opt/other/libonnxruntime.so: ONNX Runtime library: "),
        "{msg}"
    );
    assert!(msg.contains("already loaded from"), "{msg}");
}

#[test]
fn image_embeddings_equal_tract_and_the_python_reference() {
    let bundle = Bundle::open(&bundle_dir()).unwrap();
    let (names, px) = fixture_pixels(&bundle);
    let d = bundle.manifest.embed_dim;
    let mut ort = OrtImageEncoder::load(&bundle, opts(4), &cpu_settings()).unwrap();
    let mut tract = TractImageEncoder::load(&bundle, opts(4)).unwrap();
    assert_eq!(ort.embed_dim(), d);
    assert_eq!(ort.image_size(), bundle.manifest.image.size);
    let got = embed_images(&mut ort, &px, names.len());
    let want = embed_images(&mut tract, &px, names.len());
    let reference: npy::Array<f32> = npy::read(&fixtures().join("image_embeds.npy")).unwrap();
    assert_eq!(reference.shape, vec![names.len(), d]);
    let mut worst = 1f32;
    for (i, name) in names.iter().enumerate() {
        let row = |v: &[f32]| v[i * d..(i + 1) * d].to_vec();
        let c = cosine(&row(&got), &row(&want));
        assert!(c >= 0.9999, "{name}: ort vs tract cosine {c} < 0.9999");
        let r = cosine(&row(&got), &row(&reference.data));
        assert!(r >= 0.9999, "{name}: ort vs Python reference cosine {r}");
        worst = worst.min(c);
    }
    eprintln!(
        "image: worst ort/tract cosine {worst:.7} over {} images",
        names.len()
    );
}

#[test]
fn text_embeddings_equal_tract() {
    let bundle = Bundle::open(&bundle_dir()).unwrap();
    let prompts = fixture_strings("prompts.json");
    let tok = ClipTokenizer::load(&bundle.tokenizer_path(), &bundle.manifest.text).unwrap();
    let ids = tok.encode_all(&prompts).unwrap();
    let d = bundle.manifest.embed_dim;
    let mut ort = OrtTextEncoder::load(&bundle, opts(4), &cpu_settings()).unwrap();
    let mut tract = TractTextEncoder::load(&bundle, opts(4)).unwrap();
    let mut got = encode_texts(&mut ort, &ids).unwrap();
    let mut want = encode_texts(&mut tract, &ids).unwrap();
    assert_eq!(got.len(), prompts.len() * d);
    l2_normalize_rows(&mut got, d);
    l2_normalize_rows(&mut want, d);
    for (i, p) in prompts.iter().enumerate() {
        let c = cosine(&got[i * d..(i + 1) * d], &want[i * d..(i + 1) * d]);
        assert!(c >= 0.9999, "{p:.40?}: ort vs tract cosine {c} < 0.9999");
    }
}

#[test]
fn short_batches_are_padded_without_leaking_into_the_rows() {
    let bundle = Bundle::open(&bundle_dir()).unwrap();
    let (names, px) = fixture_pixels(&bundle);
    let per = px.len() / names.len();
    let d = bundle.manifest.embed_dim;
    let mut one = OrtImageEncoder::load(&bundle, opts(1), &cpu_settings()).unwrap();
    let mut eight = OrtImageEncoder::load(&bundle, opts(8), &cpu_settings()).unwrap();
    let three = eight.encode(&px[..3 * per], 3).unwrap();
    assert_eq!(three.len(), 3 * d);
    for i in 0..3 {
        let alone = one.encode(&px[i * per..(i + 1) * per], 1).unwrap();
        let c = cosine(&alone, &three[i * d..(i + 1) * d]);
        assert!(c >= 0.99999, "image {i}: batch 1 vs batch 8 cosine {c}");
    }
    match one.encode(&px[..2 * per], 2) {
        Err(EncoderError::BatchTooLarge { got: 2, max: 1 }) => {}
        other => panic!("expected BatchTooLarge, got {other:?}"),
    }
    match one.encode(&px[..per - 1], 1) {
        Err(EncoderError::InputLength { .. }) => {}
        other => panic!("expected InputLength, got {other:?}"),
    }
}

#[test]
fn a_graph_that_disagrees_with_the_manifest_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let b = tampered_bundle(tmp.path(), &[], &[], |m| {
        m["image_encoder"]["input"]["name"] = "pixels".into();
    });
    let bundle = Bundle::open(&b).unwrap();
    let msg = match OrtImageEncoder::load(&bundle, opts(1), &cpu_settings()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a renamed input was accepted"),
    };
    assert!(
        msg.contains(
            "image_encoder.input.name: graph input is \"image\", manifest says \"pixels\""
        ),
        "{msg}"
    );
}

// ---- `clipd classify` end to end -------------------------------------------------------------

/// A config with the demo's classes and the given `[engine]` lines.
fn engine_config(dir: &Path, engine: &str) -> PathBuf {
    let demo = std::fs::read_to_string(root().join("configs/demo.toml")).unwrap();
    let classes = &demo[demo.find("[[classes]]").unwrap()..];
    let text = format!(
        "bundle = {:?}\ntop_k = 3\n\n[engine]\nbatch = 4\nthreads = 1\n{engine}\n\n[store]\npath = {:?}\n\n{classes}",
        bundle_dir(),
        dir.join("never.db"),
    );
    let path = dir.join(format!("c{}.toml", std::fs::read_dir(dir).unwrap().count()));
    std::fs::write(&path, text).unwrap();
    path
}

/// Two frames from each of the first six classes of the benchmark slice.
fn some_frames() -> Vec<String> {
    let test = fixtures().join("fieldset/test");
    let mut classes: Vec<PathBuf> = std::fs::read_dir(&test)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    classes.sort();
    let mut frames = Vec::new();
    for c in classes.iter().take(6) {
        let mut files: Vec<PathBuf> = std::fs::read_dir(c)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        frames.extend(
            files
                .iter()
                .take(2)
                .map(|p| p.to_str().unwrap().to_string()),
        );
    }
    frames
}

fn classify(cfg: &Path, frames: &[String], log: bool) -> std::process::Output {
    let mut c = clipd();
    c.args([
        "classify",
        "--config",
        cfg.to_str().unwrap(),
        "--format",
        "json",
    ])
    .args(frames)
    .env_remove("ORT_DYLIB_PATH");
    if log {
        c.env("RUST_LOG", "info");
    }
    c.output().unwrap()
}

#[test]
fn classify_on_ort_agrees_with_tract_and_logs_the_provider_it_got() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = some_frames();
    let tract_cfg = engine_config(tmp.path(), "");
    let ort_cfg = engine_config(
        tmp.path(),
        &format!(
            "backend = \"ort\"\nexecution_providers = [\"cuda\", \"cpu\"]\nort_library = {:?}",
            ort_library()
        ),
    );
    let t = classify(&tract_cfg, &frames, false);
    assert!(t.status.success(), "tract: {}", stderr(&t));
    let o = classify(&ort_cfg, &frames, true);
    assert!(o.status.success(), "ort: {}", stderr(&o));
    // The CPU-only wheel has no CUDA: the session falls back to the CPU and says so once.
    let err = stderr(&o);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("image_encoder.onnx: ONNX Runtime"))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("runs on cpu (unavailable: cuda: not in this ONNX Runtime build)"),
        "{err}"
    );
    let rows = |out: &std::process::Output| -> Vec<serde_json::Value> {
        serde_json::from_str::<serde_json::Value>(&stdout(out))
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    let (want, got) = (rows(&t), rows(&o));
    assert_eq!(got.len(), frames.len());
    assert_eq!(want.len(), frames.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g["path"], w["path"]);
        assert_eq!(g["label"], w["label"], "{}", g["path"]);
        let (gs, ws) = (g["score"].as_f64().unwrap(), w["score"].as_f64().unwrap());
        assert!((gs - ws).abs() < 1e-3, "{}: {gs} vs {ws}", g["path"]);
    }
    assert!(!tmp.path().join("never.db").exists());
}

/// `clipd embed` encodes images on the configured backend, like `classify`: the ort config's
/// rows match tract's, the log names ONNX Runtime, and a config whose library is missing fails.
#[test]
fn embed_follows_the_configured_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = some_frames();
    let embed = |cfg: &Path, out: &Path| {
        clipd()
            .args(["embed", "--config", cfg.to_str().unwrap(), "--out"])
            .arg(out)
            .args(&frames)
            .env("RUST_LOG", "info")
            .env_remove("ORT_DYLIB_PATH")
            .output()
            .unwrap()
    };
    let (t_out, o_out) = (tmp.path().join("t.npy"), tmp.path().join("o.npy"));
    let t = embed(&engine_config(tmp.path(), ""), &t_out);
    assert!(t.status.success(), "tract: {}", stderr(&t));
    let ort_cfg = engine_config(
        tmp.path(),
        &format!("backend = \"ort\"\nort_library = {:?}", ort_library()),
    );
    let o = embed(&ort_cfg, &o_out);
    assert!(o.status.success(), "ort: {}", stderr(&o));
    assert!(
        stderr(&o).contains("image_encoder.onnx: ONNX Runtime"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&t).contains("ONNX Runtime"), "{}", stderr(&t));
    let (want, got): (npy::Array<f32>, npy::Array<f32>) =
        (npy::read(&t_out).unwrap(), npy::read(&o_out).unwrap());
    assert_eq!(got.shape, want.shape);
    let d = want.shape[1];
    for (i, (g, w)) in got.data.chunks(d).zip(want.data.chunks(d)).enumerate() {
        let c = cosine(g, w);
        assert!(c >= 0.9999, "{}: ort vs tract cosine {c}", frames[i]);
    }
    let missing = tmp.path().join("no-such-libonnxruntime.so");
    let bad = embed(
        &engine_config(
            tmp.path(),
            &format!("backend = \"ort\"\nort_library = {missing:?}"),
        ),
        &tmp.path().join("bad.npy"),
    );
    assert_eq!(bad.status.code(), Some(3), "{}", stderr(&bad));
    assert!(!tmp.path().join("bad.npy").exists());
}

#[test]
fn classify_with_a_bad_library_fails_in_one_line_with_exit_3() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = &some_frames()[..1];
    let fake = tmp.path().join("libonnxruntime.so");
    std::fs::write(&fake, "not a shared library").unwrap();
    let missing = tmp.path().join("nowhere/libonnxruntime.so");
    for (engine, needle) in [
        (
            format!("backend = \"ort\"\nort_library = {fake:?}"),
            format!("{}: ONNX Runtime library: cannot be loaded", fake.display()),
        ),
        (
            format!("backend = \"ort\"\nort_library = {missing:?}"),
            format!("{}: ONNX Runtime library: ", missing.display()),
        ),
        (
            "backend = \"ort\"".to_string(),
            "set engine.ort_library in the config or the ORT_DYLIB_PATH".to_string(),
        ),
    ] {
        let cfg = engine_config(tmp.path(), &engine);
        let o = classify(&cfg, frames, false);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(3), "{engine}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
        assert!(err.contains(&needle), "{needle:?} not in: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A stand-in library exporting only `OrtGetApiBase`, reporting `version` and providing no API
/// table, built with the system C compiler.
fn fake_onnxruntime(dir: &Path, version: &str) -> PathBuf {
    let src = dir.join(format!("fake-{version}.c"));
    let lib = dir.join(format!("fake-{version}/libonnxruntime.so"));
    std::fs::create_dir_all(lib.parent().unwrap()).unwrap();
    std::fs::write(
        &src,
        format!(
            "#include <stddef.h>\n\
             typedef struct {{ const void *(*GetApi)(unsigned); const char *(*GetVersionString)(void); }} OrtApiBase;\n\
             static const void *get_api(unsigned v) {{ (void)v; return NULL; }}\n\
             static const char *version(void) {{ return \"{version}\"; }}\n\
             static const OrtApiBase base = {{ get_api, version }};\n\
             const OrtApiBase *OrtGetApiBase(void) {{ return &base; }}\n"
        ),
    )
    .unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("{cc}: {e} (a C compiler builds the stand-in library)"));
    assert!(status.success(), "{cc} failed");
    lib
}

#[test]
fn classify_refuses_a_too_old_library_before_any_session() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = &some_frames()[..1];
    let old = fake_onnxruntime(tmp.path(), "1.16.3");
    // A version new enough on paper whose library lacks the API table is refused too.
    let hollow = fake_onnxruntime(tmp.path(), "1.99.0");
    for (lib, needle) in [
        (
            &old,
            format!(
                "{}: ONNX Runtime library: version 1.16.3 is too old: clipd needs ONNX Runtime 1.{REQUIRED_MINOR_VERSION} or newer",
                old.display()
            ),
        ),
        (
            &hollow,
            format!(
                "{}: ONNX Runtime library: ONNX Runtime 1.99.0 does not provide C API version {REQUIRED_MINOR_VERSION}",
                hollow.display()
            ),
        ),
    ] {
        let cfg = engine_config(tmp.path(), &format!("backend = \"ort\"\nort_library = {lib:?}"));
        let o = classify(&cfg, frames, false);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(3), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
        assert!(err.contains(&needle), "{needle:?} not in: {err}");
    }
}
