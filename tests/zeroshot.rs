//! Zero-shot accuracy of the Rust path on the committed fieldset slice equals the Python ONNX
//! Runtime figure on the same frames (tests/fixtures/zeroshot_reference.json) within 1 point.

mod common;

use std::collections::HashMap;

use clipd::bundle::Bundle;
use clipd::classes::{build_head, ClassSpec, PromptEmbedder};
use clipd::encoder::{l2_normalize_rows, EncoderOptions, ImageEncoder, TractImageEncoder};
use clipd::preprocess::{DecodeLimits, Transform};
use common::*;

#[test]
fn fieldset_zero_shot_accuracy_matches_reference() {
    let reference = read_json(&fixtures().join("zeroshot_reference.json"));
    let bundle = Bundle::open(&bundle_dir()).unwrap();
    let prompts = reference["prompts"].as_object().unwrap();
    let classes_json = read_json(&fixtures().join("fieldset/classes.json"));
    // Classes in the slice's order, with the reference's prompts.
    let classes: Vec<ClassSpec> = classes_json
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap().to_string();
            let p = prompts[&name]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            ClassSpec {
                name,
                domain: None,
                prompts: p,
                aliases: vec![],
            }
        })
        .collect();
    let all: Vec<String> = clipd::classes::distinct_prompts(&classes);
    let rows = PromptEmbedder::new(&bundle, 2).embed(&all).unwrap();
    let emb: HashMap<String, Vec<f32>> = all.into_iter().zip(rows).collect();
    let m = &bundle.manifest;
    let (head, _) = build_head(&classes, &emb, m.embed_dim, m.logit_scale).unwrap();

    let predictions = reference["predictions"].as_array().unwrap();
    let ref_label: HashMap<&str, &str> = predictions
        .iter()
        .map(|p| (p["path"].as_str().unwrap(), p["label"].as_str().unwrap()))
        .collect();
    // index.csv names classes by directory; classes.json maps those to class names.
    let by_dir: HashMap<&str, &str> = classes_json
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["dirname"].as_str().unwrap(), c["name"].as_str().unwrap()))
        .collect();
    let frames = fieldset_test_frames();
    assert_eq!(frames.len(), predictions.len());

    let t = Transform::from_spec(&m.image);
    let mut enc = TractImageEncoder::load(
        &bundle,
        EncoderOptions {
            batch: 10,
            threads: 2,
            lanes: 1,
        },
    )
    .unwrap();
    let d = m.embed_dim;
    let (mut correct, mut agree) = (0usize, 0usize);
    for chunk in frames.chunks(enc.batch_size()) {
        let mut px = Vec::new();
        for (p, _) in chunk {
            px.extend(
                t.load(
                    &fixtures().join("fieldset").join(p),
                    &DecodeLimits::default(),
                )
                .unwrap(),
            );
        }
        let mut e = enc.encode(&px, chunk.len()).unwrap();
        l2_normalize_rows(&mut e, d);
        for (i, (path, class)) in chunk.iter().enumerate() {
            let pred = head.predict(&e[i * d..(i + 1) * d], 1);
            let label = &head.labels()[pred.class];
            correct += usize::from(Some(label.as_str()) == by_dir.get(class.as_str()).copied());
            agree += usize::from(Some(label.as_str()) == ref_label.get(path.as_str()).copied());
        }
    }
    let n = frames.len() as f64;
    let rust = correct as f64 / n;
    let python = reference["top1_accuracy"].as_f64().unwrap();
    eprintln!(
        "zero-shot top-1: rust {:.3}, python {python:.3}, same prediction on {:.1}% of frames",
        rust,
        100.0 * agree as f64 / n
    );
    assert!(
        (rust - python).abs() <= 0.01 + 1e-9,
        "rust {rust:.3} vs python {python:.3}"
    );
}
