//! Parity with the Python / ONNX Runtime reference fixtures (tests/fixtures/README.md):
//! preprocessing, tokenizer, image and text embeddings. Expected values always come from the
//! fixture files, so retraining the model only means regenerating them.

mod common;

use clipd::bundle::Bundle;
use clipd::classes::PromptEmbedder;
use clipd::encoder::{l2_normalize_rows, EncoderOptions, ImageEncoder, TractImageEncoder};
use clipd::npy;
use clipd::preprocess::{DecodeLimits, Transform};
use clipd::tokenizer::ClipTokenizer;
use common::*;

fn image_names() -> Vec<String> {
    read_json(&fixtures().join("images.json"))
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn preprocessing_matches_pil_reference() {
    let bundle = Bundle::open(&bundle_dir()).unwrap();
    let t = Transform::from_spec(&bundle.manifest.image);
    let names = image_names();
    assert!(names.len() >= 8);
    let mut worst = (0f32, String::new());
    for name in &names {
        let got = t
            .load(
                &fixtures().join("images").join(name),
                &DecodeLimits::default(),
            )
            .unwrap();
        let want: npy::Array<f32> =
            npy::read(&fixtures().join("preprocess").join(format!("{name}.npy"))).unwrap();
        assert_eq!(want.shape, vec![3, t.size, t.size], "{name}");
        let diff = got
            .iter()
            .zip(&want.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        if diff > worst.0 {
            worst = (diff, name.clone());
        }
        assert!(diff <= 0.06, "{name}: max abs diff {diff} > 0.06");
    }
    eprintln!(
        "preprocess: worst max abs diff {:.4} ({})",
        worst.0, worst.1
    );
}

#[test]
fn image_embeddings_match_onnx_runtime() {
    let bundle = Bundle::open(&bundle_dir()).unwrap();
    let t = Transform::from_spec(&bundle.manifest.image);
    let names = image_names();
    let want: npy::Array<f32> = npy::read(&fixtures().join("image_embeds.npy")).unwrap();
    let d = bundle.manifest.embed_dim;
    assert_eq!(want.shape, vec![names.len(), d]);
    let mut enc = TractImageEncoder::load(
        &bundle,
        EncoderOptions {
            batch: 4,
            threads: 1,
            lanes: 1,
        },
    )
    .unwrap();
    let mut got = Vec::new();
    for chunk in names.chunks(enc.batch_size()) {
        let mut px = Vec::new();
        for n in chunk {
            px.extend(
                t.load(&fixtures().join("images").join(n), &DecodeLimits::default())
                    .unwrap(),
            );
        }
        got.extend(enc.encode(&px, chunk.len()).unwrap());
    }
    l2_normalize_rows(&mut got, d);
    for (i, name) in names.iter().enumerate() {
        let c = cosine(&got[i * d..(i + 1) * d], &want.data[i * d..(i + 1) * d]);
        assert!(c >= 0.999, "{name}: cosine {c} < 0.999");
    }
}

#[test]
fn text_embeddings_match_onnx_runtime() {
    let bundle = Bundle::open(&bundle_dir()).unwrap();
    let prompts: Vec<String> = read_json(&fixtures().join("prompts.json"))
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let want: npy::Array<f32> = npy::read(&fixtures().join("text_embeds.npy")).unwrap();
    let d = bundle.manifest.embed_dim;
    assert_eq!(want.shape, vec![prompts.len(), d]);
    let got = PromptEmbedder::new(&bundle, 1).embed(&prompts).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let c = cosine(&got[i], &want.data[i * d..(i + 1) * d]);
        assert!(c >= 0.999, "prompt {i} {p:.40?}: cosine {c} < 0.999");
    }
}

#[test]
fn tokenizer_matches_open_clip_golden_ids() {
    let bundle = Bundle::open(&bundle_dir()).unwrap();
    let golden = read_json(&fixtures().join("tokenizer_golden.json"));
    let ctx = golden["context_length"].as_u64().unwrap() as usize;
    assert_eq!(ctx, bundle.manifest.text.context_length);
    let tok = ClipTokenizer::load(&bundle.tokenizer_path(), &bundle.manifest.text).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<i64> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let got = tok.encode(text).unwrap();
        assert_eq!(got.len(), ctx);
        if got != want {
            failures.push(format!(
                "{text:?}: got {:?}…, want {:?}…",
                &got[..8],
                &want[..8]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
