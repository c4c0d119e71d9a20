//! Reduced-precision encoder variants end to end: the shipped tiny model with its int8, qdq and
//! fp16 variants (tests/fixtures/tiny-int8, laid over a copy of models/tiny-clip) run by tract,
//! against the fp32 originals and ONNX Runtime; the engine and `clipd bench` following the
//! chosen variant.

mod common;

use std::path::{Path, PathBuf};

use clipd::bundle::{Bundle, BundleError};
use clipd::classes::ClassSpec;
use clipd::encoder::{
    encode_texts, l2_normalize_rows, Backend, EncoderOptions, TractImageEncoder, TractTextEncoder,
};
use clipd::engine::{Engine, EngineError};
use clipd::store::{Store, StoreOptions};
use clipd::tokenizer::ClipTokenizer;
use common::*;

/// models/tiny-clip plus the committed int8 and qdq encoders and the manifest that lists them.
fn variant_bundle(dir: &Path) -> PathBuf {
    let b = dir.join("tiny-int8");
    std::fs::create_dir_all(&b).unwrap();
    for f in ["image_encoder.onnx", "text_encoder.onnx", "tokenizer.json"] {
        if std::fs::hard_link(bundle_dir().join(f), b.join(f)).is_err() {
            std::fs::copy(bundle_dir().join(f), b.join(f)).unwrap();
        }
    }
    let fixture = fixtures().join("tiny-int8");
    for f in [
        "image_encoder.int8.onnx",
        "text_encoder.int8.onnx",
        "image_encoder.qdq.onnx",
        "image_encoder.fp16.onnx",
        "text_encoder.fp16.onnx",
        "manifest.json",
    ] {
        std::fs::copy(fixture.join(f), b.join(f)).unwrap();
    }
    b
}

fn opts(batch: usize) -> EncoderOptions {
    EncoderOptions {
        batch,
        threads: 1,
        lanes: 1,
    }
}

/// Per-row cosines of two `rows × d` matrices.
fn row_cosines(a: &[f32], b: &[f32], d: usize) -> Vec<f32> {
    a.chunks(d)
        .zip(b.chunks(d))
        .map(|(x, y)| cosine(x, y))
        .collect()
}

#[test]
fn int8_image_encoder_on_tract_stays_close_to_fp32() {
    let tmp = tempfile::tempdir().unwrap();
    let fp32 = Bundle::open(&variant_bundle(tmp.path())).unwrap();
    let int8 = fp32.clone().with_variant(Some("int8")).unwrap();
    assert!(int8
        .image_encoder_path()
        .ends_with("image_encoder.int8.onnx"));
    let (names, px) = fixture_pixels(&fp32);
    let n = names.len();
    let d = fp32.manifest.embed_dim;
    let want = embed_images(
        &mut TractImageEncoder::load(&fp32, opts(4)).unwrap(),
        &px,
        n,
    );
    let got = embed_images(
        &mut TractImageEncoder::load(&int8, opts(4)).unwrap(),
        &px,
        n,
    );
    let cos = row_cosines(&got, &want, d);
    let worst = cos.iter().copied().fold(1f32, f32::min);
    eprintln!("int8 vs fp32 image cosine over {n} images: worst {worst:.6}");
    assert!(worst >= 0.99, "int8 vs fp32 image cosine {worst} < 0.99");
    // It really ran another graph: quantisation moves every embedding a little.
    assert!(
        worst < 0.99999,
        "int8 embeddings equal fp32's: variant not loaded"
    );

    // The default (no variant) is the fp32 original, unchanged by the variant's presence.
    let shipped = Bundle::open(&bundle_dir()).unwrap();
    let plain = embed_images(
        &mut TractImageEncoder::load(&shipped, opts(4)).unwrap(),
        &px,
        n,
    );
    assert_eq!(plain, want, "fp32 path changed");
}

#[test]
fn qdq_image_encoder_on_tract_matches_onnx_runtime_and_stays_close_to_fp32() {
    let tmp = tempfile::tempdir().unwrap();
    let fp32 = Bundle::open(&variant_bundle(tmp.path())).unwrap();
    let qdq = fp32.clone().with_variant(Some("qdq")).unwrap();
    assert!(qdq.image_encoder_path().ends_with("image_encoder.qdq.onnx"));
    // The variant quantises the image tower only: the text tower stays fp32.
    assert_eq!(qdq.text_encoder_path(), fp32.text_encoder_path());
    let (names, px) = fixture_pixels(&fp32);
    let n = names.len();
    let d = fp32.manifest.embed_dim;
    let want = embed_images(
        &mut TractImageEncoder::load(&fp32, opts(4)).unwrap(),
        &px,
        n,
    );
    let got = embed_images(&mut TractImageEncoder::load(&qdq, opts(4)).unwrap(), &px, n);
    let reference: clipd::npy::Array<f32> =
        clipd::npy::read(&fixtures().join("tiny-int8/ort_qdq_image_embeds_b1.npy")).unwrap();
    assert_eq!(reference.shape, vec![n, d]);
    let worst = |a: &[f32], b: &[f32]| row_cosines(a, b, d).into_iter().fold(1f32, f32::min);
    let (vs_fp32, vs_ort) = (worst(&got, &want), worst(&got, &reference.data));
    eprintln!(
        "qdq on tract over {n} images: worst cosine {vs_fp32:.6} vs fp32, {vs_ort:.6} vs ONNX \
         Runtime's qdq"
    );
    // Static quantisation fixes every scale in the graph, so tract (which dequantises and
    // multiplies in f32) and ONNX Runtime (int8 kernels) agree whatever shares the batch.
    assert!(
        vs_ort >= 0.999,
        "tract qdq vs ONNX Runtime qdq cosine {vs_ort}"
    );
    assert!(vs_fp32 >= 0.99, "qdq vs fp32 cosine {vs_fp32} < 0.99");
    assert!(
        vs_fp32 < 0.99999,
        "qdq embeddings equal fp32's: variant not loaded"
    );
}

#[test]
fn int8_text_encoder_on_tract_stays_close_to_fp32() {
    let tmp = tempfile::tempdir().unwrap();
    let fp32 = Bundle::open(&variant_bundle(tmp.path())).unwrap();
    let int8 = fp32.clone().with_variant(Some("int8")).unwrap();
    let prompts = fixture_strings("prompts.json");
    let tok = ClipTokenizer::load(&fp32.tokenizer_path(), &fp32.manifest.text).unwrap();
    let ids = tok.encode_all(&prompts).unwrap();
    let d = fp32.manifest.embed_dim;
    let embed = |b: &Bundle| {
        let mut enc = TractTextEncoder::load(b, opts(4)).unwrap();
        let mut e = encode_texts(&mut enc, &ids).unwrap();
        l2_normalize_rows(&mut e, d);
        e
    };
    let cos = row_cosines(&embed(&int8), &embed(&fp32), d);
    let worst = cos.iter().copied().fold(1f32, f32::min);
    eprintln!(
        "int8 vs fp32 text cosine over {} prompts: worst {worst:.6}",
        prompts.len()
    );
    assert!(worst >= 0.99, "int8 vs fp32 text cosine {worst} < 0.99");
    assert!(worst < 0.99999, "int8 text embeddings equal fp32's");
}

/// tract runs both float16 towers (float16 weights and arithmetic, float32 at the edges) close
/// to fp32: the variant's Gemm nodes were rewritten as MatMul + Add, which tract 0.23.9 loads.
#[test]
fn fp16_encoders_on_tract_stay_close_to_fp32() {
    let tmp = tempfile::tempdir().unwrap();
    let fp32 = Bundle::open(&variant_bundle(tmp.path())).unwrap();
    let fp16 = fp32.clone().with_variant(Some("fp16")).unwrap();
    assert!(fp16
        .image_encoder_path()
        .ends_with("image_encoder.fp16.onnx"));
    assert!(fp16.text_encoder_path().ends_with("text_encoder.fp16.onnx"));
    let d = fp32.manifest.embed_dim;
    let worst = |a: &[f32], b: &[f32]| row_cosines(a, b, d).into_iter().fold(1f32, f32::min);

    let (names, px) = fixture_pixels(&fp32);
    let n = names.len();
    let images =
        |b: &Bundle| embed_images(&mut TractImageEncoder::load(b, opts(4)).unwrap(), &px, n);
    let (half, full) = (images(&fp16), images(&fp32));
    let image_cos = worst(&half, &full);

    let prompts = fixture_strings("prompts.json");
    let tok = ClipTokenizer::load(&fp32.tokenizer_path(), &fp32.manifest.text).unwrap();
    let ids = tok.encode_all(&prompts).unwrap();
    let texts = |b: &Bundle| {
        let mut e = encode_texts(&mut TractTextEncoder::load(b, opts(4)).unwrap(), &ids).unwrap();
        l2_normalize_rows(&mut e, d);
        e
    };
    let (half_t, full_t) = (texts(&fp16), texts(&fp32));
    let text_cos = worst(&half_t, &full_t);
    eprintln!(
        "fp16 vs fp32 on tract: worst cosine {image_cos:.6} over {n} images, {text_cos:.6} over \
         {} prompts",
        prompts.len()
    );
    assert!(image_cos >= 0.999, "fp16 vs fp32 image cosine {image_cos}");
    assert!(text_cos >= 0.999, "fp16 vs fp32 text cosine {text_cos}");
    // Another graph really ran: float16 rounding moves every embedding a little.
    assert_ne!(
        half, full,
        "fp16 image embeddings equal fp32's: variant not loaded"
    );
    assert_ne!(
        half_t, full_t,
        "fp16 text embeddings equal fp32's: variant not loaded"
    );
}

fn classes() -> Vec<ClassSpec> {
    ["circle", "square", "triangle"]
        .iter()
        .map(|n| ClassSpec {
            name: n.to_string(),
            domain: Some("shape".into()),
            prompts: vec![format!("a photo of a {n}.")],
            aliases: vec![],
        })
        .collect()
}

#[test]
fn engine_runs_the_variant_and_keeps_its_prompt_cache_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = variant_bundle(tmp.path());
    let db = tmp.path().join("cache.db");
    let load = |variant: Option<&str>| {
        Engine::load(
            &Backend::Tract,
            variant,
            &dir,
            classes(),
            opts(1),
            Some(&db),
            None,
        )
        .unwrap()
    };
    let fp32 = load(None);
    assert_eq!(fp32.bundle.variant(), None);
    let mut store = Store::open(&db, &StoreOptions::default()).unwrap();
    fp32.save_text_side(&mut store).unwrap();
    drop(store);

    // int8 replaces the text tower: fp32 prompt embeddings must not be reused for it.
    let int8 = load(Some("int8"));
    assert_eq!(int8.bundle.variant(), Some("int8"));
    assert_eq!(int8.cached_prompts, 0);
    assert_eq!(int8.new_prompt_embeddings.len(), 3);
    let d = int8.bundle.manifest.embed_dim;
    for (i, c) in row_cosines(int8.head.weights(), fp32.head.weights(), d)
        .into_iter()
        .enumerate()
    {
        assert!(c >= 0.99, "class {i}: int8 vs fp32 text cosine {c}");
    }
    // The same bundle and variant still share one model id (history rows stay comparable).
    assert_eq!(int8.bundle.model_id(), fp32.bundle.model_id());
    let again = load(None);
    assert_eq!(again.cached_prompts, 3, "fp32 reuses its own cache");

    // An unknown variant is a bundle error naming what the bundle has.
    let err = match Engine::load(
        &Backend::Tract,
        Some("int4"),
        &dir,
        classes(),
        opts(1),
        None,
        None,
    ) {
        Err(e) => e,
        Ok(_) => panic!("an unknown variant loaded"),
    };
    assert!(
        matches!(&err, EngineError::Bundle(BundleError::UnknownVariant { known, .. }) if known == &["fp16".to_string(), "int8".to_string(), "qdq".to_string()]),
        "{err}"
    );
}

/// A config for `clipd bench` on the int8 bundle with a few fieldset frames.
fn bench_config(dir: &Path, bundle: &Path, engine: &str) -> PathBuf {
    let frames = dir.join("frames");
    copy_frames(&frames, &["circle", "square"], 1);
    let cfg = dir.join("clipd.toml");
    std::fs::write(
        &cfg,
        format!(
            "bundle = {bundle:?}\n[engine]\n{engine}\n[[sources]]\nkind = \"dir\"\npath = {frames:?}\n\n[[classes]]\nname = \"circle\"\n\n[[classes]]\nname = \"square\"\n"
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn bench_variant_flag_overrides_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = variant_bundle(tmp.path());
    let cfg = bench_config(tmp.path(), &bundle, "variant = \"int4\"");
    let cfg = cfg.to_str().unwrap();
    let common = [
        "bench",
        "--config",
        cfg,
        "--encoder-only",
        "--batch",
        "1",
        "--rounds",
        "1",
        "--json",
    ];
    // The config's int4 is not in the bundle: a bundle error (exit 3) naming the fix.
    let o = run(&common);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("variant \"int4\" is not in this bundle"),
        "{err}"
    );
    assert!(err.contains("it has: fp16, int8, qdq"), "{err}");
    // --variant int8 overrides it, and each row says which variant it timed.
    let mut args = common.to_vec();
    args.extend(["--variant", "int8"]);
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let row: serde_json::Value = serde_json::from_str(stdout(&o).lines().next().unwrap()).unwrap();
    assert_eq!(row["variant"], "int8");
    assert_eq!(row["backend"], "tract");
    let mut args = common.to_vec();
    args.extend(["--variant", "Int8"]);
    let o = run(&args);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[cfg(feature = "ort")]
mod ort {
    use super::*;
    use clipd::encoder::{ExecutionProvider, OrtImageEncoder, OrtSettings};

    /// ONNX Runtime's dynamic quantisation scales activations per whole input tensor, so an
    /// image's int8 embedding depends on what shares its batch: compared at batch 1, against
    /// ONNX Runtime's own (Python) result for the committed graph on this machine (its int8
    /// kernels differ by release and instruction set), or, where Python cannot run it, against the
    /// committed reference within the looser bound that holds across CPUs.
    #[test]
    fn ort_on_the_int8_variant_matches_onnx_runtime_and_stays_near_fp32() {
        let tmp = tempfile::tempdir().unwrap();
        let fp32 = Bundle::open(&variant_bundle(tmp.path())).unwrap();
        let int8 = fp32.clone().with_variant(Some("int8")).unwrap();
        let settings = OrtSettings {
            library: Some(ort_library()),
            providers: vec![ExecutionProvider::Cpu],
        };
        let (names, px) = fixture_pixels(&int8);
        let n = names.len();
        let d = int8.manifest.embed_dim;
        let got = embed_images(
            &mut OrtImageEncoder::load(&int8, opts(1), &settings).unwrap(),
            &px,
            n,
        );
        let size = int8.manifest.image.size;
        let (reference, bound, source) = match onnx_runtime_on_this_machine(
            &int8.image_encoder_path(),
            &px,
            n,
            &[3, size, size],
        ) {
            Some(here) => (here, 0.999, "ONNX Runtime (Python) on this machine"),
            None => {
                let committed: clipd::npy::Array<f32> =
                    clipd::npy::read(&fixtures().join("tiny-int8/ort_image_embeds_b1.npy"))
                        .unwrap();
                assert_eq!(committed.shape, vec![n, d]);
                (committed.data, 0.98, "the committed ONNX Runtime reference")
            }
        };
        assert_eq!(reference.len(), n * d);
        let worst_ref = row_cosines(&got, &reference, d)
            .into_iter()
            .fold(1f32, f32::min);
        let want = embed_images(
            &mut TractImageEncoder::load(&fp32, opts(1)).unwrap(),
            &px,
            n,
        );
        let worst_fp32 = row_cosines(&got, &want, d).into_iter().fold(1f32, f32::min);
        eprintln!(
            "ort int8 over {n} images: worst cosine {worst_ref:.6} vs {source}, \
             {worst_fp32:.6} vs fp32"
        );
        assert!(
            worst_ref >= bound,
            "ort int8 vs {source}: cosine {worst_ref} < {bound}"
        );
        assert!(
            worst_fp32 >= 0.98,
            "ort int8 vs fp32 cosine {worst_fp32} < 0.98"
        );
        assert!(
            worst_fp32 < 0.9999,
            "int8 embeddings equal fp32's: variant not loaded"
        );
    }

    /// A float16 graph with a Transpose → Cast(fp16→fp32) → MatMul section
    /// (tests/fixtures/ort-float16) kills the process inside ONNX Runtime's NchwcTransformer on
    /// x86-64 unless the ort backend leaves that optimizer out for the fp16 variant: here it
    /// loads and computes what the graph says.
    #[test]
    fn ort_loads_a_float16_variant_that_crashes_onnx_runtimes_layout_optimizer() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("bundle");
        std::fs::create_dir(&dir).unwrap();
        for f in ["image_encoder.onnx", "text_encoder.onnx", "tokenizer.json"] {
            std::fs::copy(bundle_dir().join(f), dir.join(f)).unwrap();
        }
        let half = dir.join("image_encoder.fp16.onnx");
        std::fs::copy(
            fixtures().join("ort-float16/image_encoder.fp16.onnx"),
            &half,
        )
        .unwrap();
        let mut manifest = read_json(&bundle_dir().join("manifest.json"));
        manifest["files"]["image_encoder.fp16.onnx"] =
            clipd::bundle::sha256_file(&half).unwrap().into();
        manifest["variants"] =
            serde_json::json!({"fp16": {"image_encoder": {"file": "image_encoder.fp16.onnx"}}});
        std::fs::write(
            dir.join("manifest.json"),
            serde_json::to_string(&manifest).unwrap(),
        )
        .unwrap();
        let bundle = Bundle::open(&dir)
            .unwrap()
            .with_variant(Some("fp16"))
            .unwrap();
        let settings = OrtSettings {
            library: Some(ort_library()),
            providers: vec![ExecutionProvider::Cpu],
        };
        let mut enc = OrtImageEncoder::load(&bundle, opts(2), &settings).unwrap();
        let (s, d) = (bundle.manifest.image.size, bundle.manifest.embed_dim);
        let plane = s * s;
        // Two images, each channel a constant (so its mean is exact in float16).
        let means = [[0.5f32, -1.0, 2.0], [0.25, 0.75, -0.125]];
        let px: Vec<f32> = means
            .iter()
            .flat_map(|m| m.iter().flat_map(|&v| std::iter::repeat_n(v, plane)))
            .collect();
        let got = clipd::encoder::ImageEncoder::encode(&mut enc, &px, 2).unwrap();
        assert_eq!(got.len(), 2 * d);
        for (b, m) in means.iter().enumerate() {
            for j in 0..d {
                let want: f32 = (0..3)
                    .map(|c| m[c] * (c + 1) as f32 * (j as f32 - 64.0) / 64.0)
                    .sum();
                let v = got[b * d + j];
                assert!((v - want).abs() < 1e-4, "image {b}, dim {j}: {v} vs {want}");
            }
        }
    }
}

/// `classify` and `run --once` load the configured variant: an unknown one is refused naming
/// it, and int8 classifies every frame with the int8 graphs (the load says so).
#[test]
fn classify_and_run_follow_the_configured_variant() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = variant_bundle(tmp.path());
    let frame = fixtures()
        .join("fieldset/test/circle")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let frame = frame.to_str().unwrap();
    for (cmd, extra) in [("classify", vec![frame]), ("run", vec!["--once"])] {
        let cfg = bench_config(tmp.path(), &bundle, "variant = \"int4\"");
        let cfg = cfg.to_str().unwrap();
        let mut args = vec![cmd, "--config", cfg];
        args.extend(&extra);
        let o = run(&args);
        assert_eq!(o.status.code(), Some(3), "{cmd}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("variant \"int4\" is not in this bundle"),
            "{cmd}: {}",
            stderr(&o)
        );
        let cfg = bench_config(tmp.path(), &bundle, "variant = \"int8\"");
        let cfg = cfg.to_str().unwrap();
        let mut args = vec![cmd, "--config", cfg];
        args.extend(&extra);
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_clipd"))
            .args(&args)
            .env("RUST_LOG", "info")
            .current_dir(tmp.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{cmd}: {}", stderr(&o));
        let log = stderr(&o);
        assert!(log.contains("variant int8"), "{cmd}: {log}");
        assert!(log.contains("image_encoder.int8.onnx"), "{cmd}: {log}");
    }
}
