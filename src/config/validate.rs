//! Semantic checks after parsing: every error names the key (`classes[3].name`), so the
//! caller can add the file and line.

use super::*;

/// Semantic checks; the error names the key, e.g. `classes[3].name`.
pub fn validate(c: &Config) -> Result<(), (String, String)> {
    let err = |k: String, m: &str| Err((k, m.to_string()));
    if c.classes.is_empty() {
        return err(
            "classes".into(),
            "no classes configured: add at least one [[classes]] table with a name",
        );
    }
    let mut seen = std::collections::HashMap::new();
    for (i, class) in c.classes.iter().enumerate() {
        let name = class.name.trim();
        if name.is_empty() {
            return err(format!("classes[{i}].name"), "must not be empty");
        }
        // Labels are matched without regard to case (queries, known labels): `boat` and
        // `Boat` would be one class to every reader of the history.
        if let Some(j) = seen.insert(name.to_lowercase(), i) {
            let other = c.classes[j].name.trim();
            let msg = if other == name {
                format!("duplicate class {name:?} (also classes[{j}])")
            } else {
                format!(
                    "class {name:?} differs from classes[{j}] {other:?} only in case; use one name"
                )
            };
            return Err((format!("classes[{i}].name"), msg));
        }
        let templates = class.templates.as_ref().or(c.prompts.templates.as_ref());
        if class.prompts.is_none() {
            for t in templates.into_iter().flatten() {
                let key = if class.templates.is_some() {
                    format!("classes[{i}].templates")
                } else {
                    "prompts.templates".to_string()
                };
                crate::head::check_template(t).map_err(|m| (key.clone(), m))?;
                if t.contains("{domain}") && class.domain.is_none() {
                    return Err((
                        key,
                        format!(
                            "{t:?} uses {{domain}}, but class {name:?} has no domain: set classes[{i}].domain"
                        ),
                    ));
                }
            }
        }
        if class.prompts.as_ref().is_some_and(|p| p.is_empty()) {
            return err(format!("classes[{i}].prompts"), "must not be empty");
        }
        if class.templates.as_ref().is_some_and(|t| t.is_empty()) {
            return err(format!("classes[{i}].templates"), "must not be empty");
        }
    }
    if c.prompts.templates.as_ref().is_some_and(|t| t.is_empty()) {
        return err("prompts.templates".into(), "must not be empty");
    }
    if c.top_k == 0 {
        return err("top_k".into(), "must be at least 1");
    }
    let e = &c.engine;
    for (k, v) in [
        ("engine.batch", e.batch),
        ("engine.threads", e.threads),
        ("engine.lanes", e.lanes),
        ("engine.decode_threads", e.decode_threads),
        ("engine.queue", e.queue),
    ] {
        if v == 0 {
            return err(k.into(), "must be at least 1");
        }
    }
    if e.batch > 256 {
        return err("engine.batch".into(), "must be at most 256");
    }
    if e.lanes > e.batch {
        return err(
            "engine.lanes".into(),
            "must be at most engine.batch (each lane encodes at least one frame of a batch)",
        );
    }
    #[cfg(not(feature = "ort"))]
    if e.backend == BackendKind::Ort {
        return err(
            "engine.backend".into(),
            "\"ort\" needs clipd built with ONNX Runtime support (cargo build --release --features ort); use \"tract\" otherwise",
        );
    }
    if e.execution_providers.is_empty() {
        return err(
            "engine.execution_providers".into(),
            "must list at least one provider (e.g. [\"cpu\"])",
        );
    }
    for (i, p) in e.execution_providers.iter().enumerate() {
        if e.execution_providers[..i].contains(p) {
            return Err((
                "engine.execution_providers".into(),
                format!("{:?} is listed twice", p.name()),
            ));
        }
    }
    if e.ort_library
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        return err("engine.ort_library".into(), "must not be empty");
    }
    if let Some(v) = &e.variant {
        if !crate::bundle::is_variant_name(v) {
            return Err((
                "engine.variant".into(),
                format!(
                    "{v:?} is not a variant name (lowercase ASCII letters, digits, '_' and '-', e.g. \"int8\"); remove the key to run the fp32 encoders"
                ),
            ));
        }
    }
    if c.decode.max_side == 0 {
        return err("decode.max_side".into(), "must be at least 1");
    }
    if c.store.commit_rows == 0 {
        return err("store.commit_rows".into(), "must be at least 1");
    }
    if c.store.path.as_os_str().is_empty() {
        return err("store.path".into(), "must not be empty");
    }
    if let Some(d) = c.store.retention_days {
        if !positive(d) {
            return err(
                "store.retention_days".into(),
                "must be a positive number of days",
            );
        }
    }
    if c.store.max_rows == Some(0) {
        return err("store.max_rows".into(), "must be at least 1");
    }
    if let Some(m) = c.store.max_size_mb {
        if !(m.is_finite() && m >= 1.0) {
            return err("store.max_size_mb".into(), "must be at least 1 (MiB)");
        }
    }
    if c.store.prune_batch == 0 {
        return err("store.prune_batch".into(), "must be at least 1");
    }
    if c.store.retention_every_secs == 0 {
        return err("store.retention_every_secs".into(), "must be at least 1");
    }
    if let Some(r) = &c.refine {
        validate_refine(r, c.classes.len())?;
    }
    let d = &c.daemon;
    for (k, v) in [
        ("daemon.shutdown_timeout_secs", d.shutdown_timeout_secs),
        ("daemon.status_interval_secs", d.status_interval_secs),
        ("daemon.hung_after_secs", d.hung_after_secs),
    ] {
        if !positive(v) {
            return err(k.into(), "must be a positive number of seconds");
        }
    }
    for (i, s) in c.sources.iter().enumerate() {
        let key = |f: &str| format!("sources[{i}].{f}");
        if s.path.trim().is_empty() {
            let f = if s.kind == SourceKind::Camera {
                "device"
            } else {
                "path"
            };
            return err(key(f), "must not be empty");
        }
        if let Some(f) = s.max_fps {
            if !positive(f) {
                return err(key("max_fps"), "must be a positive number");
            }
        }
        if s.every_nth == 0 {
            return err(key("every_nth"), "must be at least 1");
        }
        if let Some(n) = s.novelty {
            if !(0.0..=1.0).contains(&n) {
                return err(key("novelty"), "must be between 0 and 1");
            }
        }
        if s.kind == SourceKind::Camera {
            if s.formats.is_empty() {
                return err(key("formats"), "must list at least one pixel format");
            }
            if !positive(s.stall_secs) {
                return err(key("stall_secs"), "must be a positive number of seconds");
            }
            if s.reconnect_min_ms == 0 || s.reconnect_max_ms < s.reconnect_min_ms {
                return err(
                    key("reconnect_max_ms"),
                    "need 0 < reconnect_min_ms <= reconnect_max_ms",
                );
            }
            for (f, v) in [("width", s.width), ("height", s.height), ("fps", s.fps)] {
                if v == Some(0) {
                    return err(key(f), "must be at least 1");
                }
            }
        } else {
            let camera_only = [
                ("width", s.width.is_some()),
                ("height", s.height.is_some()),
                ("fps", s.fps.is_some()),
            ];
            if let Some((f, _)) = camera_only.iter().find(|(_, set)| *set) {
                return err(key(f), "only applies to kind = \"camera\"");
            }
        }
        if s.kind == SourceKind::Glob {
            if let Err(e) = glob::Pattern::new(&s.path) {
                return Err((format!("sources[{i}].path"), format!("bad glob: {e}")));
            }
        }
    }
    Ok(())
}

/// `[refine]`: sizes, schedule, guard and smoothing, and every `set` override against the
/// method's parameters.
fn validate_refine(r: &crate::refiner::RefineConfig, k: usize) -> Result<(), (String, String)> {
    let err = |k: &str, m: &str| Err((format!("refine.{k}"), m.to_string()));
    if r.buffer < 2 {
        return err("buffer", "must be at least 2 (frames refined together)");
    }
    if r.every_frames == 0 {
        return err("every_frames", "must be at least 1");
    }
    if !positive(r.every_secs) {
        return err("every_secs", "must be a positive number of seconds");
    }
    if !(r.max_changed > 0.0 && r.max_changed <= 1.0) {
        return err(
            "max_changed",
            "must be in (0, 1]: the largest share of a pass's labels it may change (1: no guard)",
        );
    }
    let s = &r.smoothing;
    if s.window == 0 {
        return err("smoothing.window", "must be at least 1");
    }
    if s.min_frames == 0 || s.min_frames > s.window {
        return err(
            "smoothing.min_frames",
            "must be between 1 and smoothing.window",
        );
    }
    if !(s.agreement > 0.0 && s.agreement <= 1.0) {
        return err("smoothing.agreement", "must be in (0, 1]");
    }
    let mut params = crate::transduct::Params::new(r.method, r.preset, k.max(1), false);
    for (i, a) in r.set.iter().enumerate() {
        params
            .set_assignment(a)
            .map_err(|e| (format!("refine.set[{i}]"), e.to_string()))?;
    }
    params
        .validate()
        .map_err(|e| ("refine.set".to_string(), e.to_string()))?;
    Ok(())
}

/// A finite number above zero (NaN is not).
fn positive(v: f64) -> bool {
    v > 0.0 && v.is_finite()
}
