//! The config's own tests: parsing, errors with file, line and key, validation.

use super::*;

fn parse_str(s: &str) -> Result<Loaded, ConfigError> {
    parse(s, Path::new("c.toml"), Path::new("/base"))
}

const OK: &str = r#"
bundle = "models/tiny-clip"

[engine]
batch = 4

[[sources]]
kind = "dir"
path = "frames"
labels_from = "parent_dir"

[[classes]]
name = "circle"
domain = "shape"

[[classes]]
name = "pizza"
domain = "food"
aliases = ["pizza_dir"]
"#;

#[test]
fn parses_with_defaults() {
    let l = parse_str(OK).unwrap();
    let c = &l.config;
    assert_eq!(c.engine.batch, 4);
    assert_eq!(c.engine.threads, 1);
    assert_eq!(c.top_k, 5);
    assert_eq!(c.store.commit_rows, 64);
    assert_eq!(c.store.synchronous, Synchronous::Normal);
    assert_eq!(c.sources[0].labels_from, LabelsFrom::ParentDir);
    assert!(c.sources[0].recursive);
    assert_eq!(
        c.classes[1].prompts(&c.prompts),
        vec!["a photo of pizza, a type of food."]
    );
    assert_eq!(
        l.resolve(Path::new("models/x")),
        PathBuf::from("/base/models/x")
    );
    assert_eq!(l.resolve(Path::new("../m/./x")), PathBuf::from("/m/x"));
    assert_eq!(normalize(Path::new("../a/../b")), PathBuf::from("../b"));
}

#[test]
fn unknown_key_names_key_and_line() {
    let bad = OK.replace("batch = 4", "batch = 4\nbatchh = 2");
    let e = parse_str(&bad).unwrap_err();
    assert_eq!(e.line, Some(6));
    assert_eq!(e.key.as_deref(), Some("engine.batchh"));
    let s = e.to_string();
    assert!(
        s.starts_with("c.toml:6: engine.batchh: unknown field `batchh`"),
        "{s}"
    );
    assert!(!s.contains('\n'));
}

#[test]
fn wrong_type_names_key_and_line() {
    let bad = OK.replace("batch = 4", "batch = \"four\"");
    let e = parse_str(&bad).unwrap_err();
    assert_eq!(e.line, Some(5));
    assert_eq!(e.key.as_deref(), Some("engine.batch"));
    let bad = OK.replace("domain = \"food\"", "domain = 3");
    let e = parse_str(&bad).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("classes[1].domain"), "{e}");
}

#[test]
fn validation_names_key() {
    let e = parse_str("bundle = \"x\"\n").unwrap_err();
    assert_eq!(e.key.as_deref(), Some("classes"));
    assert!(e.to_string().contains("no classes"));
    let dup = OK.replace("name = \"pizza\"", "name = \"circle\"");
    let e = parse_str(&dup).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("classes[1].name"));
    assert_eq!(e.line, Some(17));
    let e = parse_str(&OK.replace("batch = 4", "batch = 0")).unwrap_err();
    assert_eq!(e.to_string(), "c.toml:5: engine.batch: must be at least 1");
}

#[test]
fn engine_lanes_default_to_one_and_fit_the_batch() {
    assert_eq!(parse_str(OK).unwrap().config.engine.lanes, 1);
    let l = parse_str(&OK.replace("batch = 4", "batch = 4\nlanes = 2")).unwrap();
    assert_eq!(l.config.engine.lanes, 2);
    let e = parse_str(&OK.replace("batch = 4", "batch = 4\nlanes = 5")).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("engine.lanes"));
    assert!(
        e.to_string().contains("must be at most engine.batch"),
        "{e}"
    );
    let e = parse_str(&OK.replace("batch = 4", "batch = 4\nlanes = 0")).unwrap_err();
    assert!(
        e.to_string().ends_with("engine.lanes: must be at least 1"),
        "{e}"
    );
}

#[test]
fn engine_variant_is_optional_and_checked() {
    assert_eq!(parse_str(OK).unwrap().config.engine.variant, None);
    let l = parse_str(&OK.replace("batch = 4", "batch = 4\nvariant = \"int8\"")).unwrap();
    assert_eq!(l.config.engine.variant.as_deref(), Some("int8"));
    for bad in ["", "INT8", "int 8", "../x"] {
        let text = OK.replace("batch = 4", &format!("batch = 4\nvariant = {bad:?}"));
        let e = parse_str(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("engine.variant"), "{e}");
        assert_eq!(e.line, Some(6), "{e}");
        let s = e.to_string();
        assert!(
            s.starts_with(&format!(
                "c.toml:6: engine.variant: {bad:?} is not a variant name"
            )),
            "{s}"
        );
    }
    let e = parse_str(&OK.replace("batch = 4", "batch = 4\nvariant = 8")).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("engine.variant"), "{e}");
}

#[test]
fn annotated_example_and_demo_configs_parse() {
    let l = parse(
        include_str!("../../clipd.toml.example"),
        Path::new("clipd.toml.example"),
        Path::new("."),
    )
    .unwrap();
    assert_eq!(l.config.classes.len(), 4);
    assert_eq!(
        l.config.classes[3].prompts(&l.config.prompts).len(),
        2,
        "literal prompts"
    );
    let demo = parse(
        include_str!("../../configs/demo.toml"),
        Path::new("demo.toml"),
        Path::new("configs"),
    )
    .unwrap();
    assert_eq!(demo.config.sources[0].labels_from, LabelsFrom::ParentDir);
}

// `[engine]`: the backend and its execution providers.

fn engine(section: &str) -> Result<EngineConfig, String> {
    let text = format!("[engine]\n{section}\n[[classes]]\nname = \"cat\"\n");
    parse(&text, Path::new("c.toml"), Path::new("/etc/clipd"))
        .map(|l| l.config.engine)
        .map_err(|e| e.to_string())
}

#[test]
fn tract_is_the_default_backend() {
    let e = engine("").unwrap();
    assert_eq!(e.backend, BackendKind::Tract);
    assert_eq!(e.backend(Path::new("/etc/clipd")), Backend::Tract);
    assert_eq!(e.execution_providers, vec![ExecutionProvider::Cpu]);
}

#[test]
fn unknown_provider_is_refused_with_its_line() {
    let err = engine("execution_providers = [\"cuda\", \"tpu\"]").unwrap_err();
    assert!(
        err.starts_with("c.toml:2: engine.execution_providers"),
        "{err}"
    );
    assert!(err.contains("tpu"), "{err}");
}

#[test]
fn providers_must_be_listed_once() {
    let err = engine("execution_providers = [\"cuda\", \"cpu\", \"cuda\"]").unwrap_err();
    assert!(err.contains("engine.execution_providers"), "{err}");
    assert!(err.contains("\"cuda\" is listed twice"), "{err}");
    let err = engine("execution_providers = []").unwrap_err();
    assert!(err.contains("at least one"), "{err}");
}

#[cfg(feature = "ort")]
#[test]
fn ort_settings_keep_the_order_and_resolve_the_library() {
    let e = engine(
        "backend = \"ort\"\nexecution_providers = [\"tensorrt\", \"cuda\", \"cpu\"]\n\
             ort_library = \"lib/libonnxruntime.so\"",
    )
    .unwrap();
    let Backend::Ort(s) = e.backend(Path::new("/etc/clipd")) else {
        panic!("expected the ort backend");
    };
    assert_eq!(
        s.providers,
        vec![
            ExecutionProvider::Tensorrt,
            ExecutionProvider::Cuda,
            ExecutionProvider::Cpu
        ]
    );
    assert_eq!(
        s.library.as_deref(),
        Some(Path::new("/etc/clipd/lib/libonnxruntime.so"))
    );
    let abs = engine("backend = \"ort\"\nort_library = \"/opt/ort/libonnxruntime.so\"").unwrap();
    let Backend::Ort(s) = abs.backend(Path::new("/etc/clipd")) else {
        panic!("expected the ort backend");
    };
    assert_eq!(
        s.library.as_deref(),
        Some(Path::new("/opt/ort/libonnxruntime.so"))
    );
    assert_eq!(s.providers, vec![ExecutionProvider::Cpu]);
}

#[cfg(not(feature = "ort"))]
#[test]
fn ort_backend_without_the_feature_is_a_config_error() {
    let err = engine("backend = \"ort\"").unwrap_err();
    assert!(err.starts_with("c.toml:2: engine.backend: "), "{err}");
    assert!(err.contains("--features ort"), "{err}");
}

#[test]
fn daemon_store_options_follow_the_store_config() {
    use crate::store::StoreOptions;
    use std::time::Duration;
    let c = StoreConfig {
        retention_days: Some(1.5),
        max_rows: Some(10),
        max_size_mb: Some(2.0),
        commit_rows: 8,
        ..StoreConfig::default()
    };
    let o = c.options();
    assert_eq!(o.retention.max_age, Some(Duration::from_secs(129_600)));
    assert_eq!(o.retention.max_rows, Some(10));
    assert_eq!(o.retention.max_bytes, Some(2 * 1024 * 1024));
    assert_eq!(
        o.retention.every,
        Duration::from_secs(c.retention_every_secs)
    );
    assert_eq!(o.retention.batch, c.prune_batch);
    assert_eq!((o.quick_check, o.allow_network_fs), (true, false));
    assert_eq!(o.pending_limit(), 128, "16 commits' worth");
    assert!(o.retention.is_enabled());
    let plain = StoreConfig::default().options();
    assert!(!plain.retention.is_enabled());
    assert!(
        !StoreOptions::default().quick_check,
        "tools never move files"
    );
}

// Problems that used to be accepted silently.

#[test]
fn unknown_keys_suggest_the_closest_one() {
    let e = parse_str(&OK.replace("batch = 4", "bacth = 4")).unwrap_err();
    let s = e.to_string();
    assert!(
        s.starts_with("c.toml:5: engine.bacth: unknown field `bacth`"),
        "{s}"
    );
    assert!(s.ends_with("; did you mean `batch`?"), "{s}");
    // Nothing close: no guess.
    let e = parse_str(&OK.replace("batch = 4", "zzzzzz = 4")).unwrap_err();
    assert!(!e.to_string().contains("did you mean"), "{e}");
    assert_eq!(edit_distance("comit_rows", "commit_rows"), 1);
}

#[test]
fn templates_must_name_the_class_and_use_known_placeholders() {
    let t = |tpl: &str| {
        parse_str(&format!("{OK}\n[prompts]\ntemplates = [{tpl:?}]\n"))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert!(t("a photo of {}.").is_ok());
    assert!(t("a photo of {name}, a kind of {domain}.").is_ok());
    let e = t("a photo of a {nmae}.").unwrap_err();
    assert!(
        e.contains("prompts.templates: ") && e.contains("unknown placeholder {nmae}"),
        "{e}"
    );
    let e = t("a photo.").unwrap_err();
    assert!(e.contains("does not name the class"), "{e}");
    let per_class = OK.replace(
        "name = \"circle\"\ndomain = \"shape\"",
        "name = \"circle\"\ntemplates = [\"a {domain} of {}\"]",
    );
    let e = parse_str(&per_class).unwrap_err().to_string();
    assert!(
        e.contains("classes[0].templates") && e.contains("has no domain"),
        "{e}"
    );
}

#[test]
fn classes_that_differ_only_in_case_are_refused() {
    let e = parse_str(&OK.replace("name = \"pizza\"", "name = \"Circle\"")).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("classes[1].name"));
    assert!(e.to_string().contains("only in case"), "{e}");
}

#[test]
fn refine_is_validated_with_file_line_and_key() {
    let with = |section: &str| parse_str(&format!("{OK}\n[refine]\n{section}\n"));
    let l = with("").unwrap();
    let r = l.config.refine.unwrap();
    assert_eq!(r.method, crate::transduct::Method::EmDirichlet);
    assert_eq!(r.preset, crate::transduct::Preset::Default);
    let e = with("method = \"em-dirichet\"").unwrap_err();
    assert_eq!(e.key.as_deref(), Some("refine.method"), "{e}");
    assert_eq!(e.line, Some(22), "{e}");
    assert!(
        e.to_string().contains("transclip"),
        "names the known methods: {e}"
    );
    let e = with("preset = \"papers\"").unwrap_err();
    assert_eq!(e.key.as_deref(), Some("refine.preset"), "{e}");
    let e = with("max_changed = 1.5").unwrap_err();
    assert_eq!(e.to_string(), "c.toml:22: refine.max_changed: must be in (0, 1]: the largest share of a pass's labels it may change (1: no guard)");
    let e = with("set = [\"no_such_key=1\"]").unwrap_err();
    assert_eq!(e.key.as_deref(), Some("refine.set[0]"), "{e}");
    let e = with("buffer = 1").unwrap_err();
    assert_eq!(e.key.as_deref(), Some("refine.buffer"), "{e}");
    let e = with("[refine.smoothing]\nmin_frames = 40").unwrap_err();
    assert_eq!(e.key.as_deref(), Some("refine.smoothing.min_frames"), "{e}");
}
