//! Where in the TOML text a key is: parse errors carry a byte offset, validation errors a
//! dotted key, and both are reported as `file:line: key`.

/// Line (1-based) and dotted key at byte `offset` of a TOML document.
pub(super) fn locate(text: &str, offset: usize) -> (usize, Option<String>) {
    let offset = offset.min(text.len());
    let line_no = text[..offset].matches('\n').count() + 1;
    let mut table: Option<String> = None;
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    let mut key_here = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if i + 1 > line_no {
            break;
        }
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let name = name.trim().to_string();
            let n = counts.entry(name.clone()).or_insert(0);
            table = Some(format!("{name}[{n}]"));
            *n += 1;
            key_here = None;
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            table = Some(name.trim().to_string());
            key_here = None;
        } else if i + 1 == line_no {
            key_here = line
                .split('=')
                .next()
                .map(str::trim)
                .filter(|k| !k.is_empty() && !k.starts_with('#') && line.contains('='))
                .map(|k| k.trim_matches('"').to_string());
        }
    }
    let key = match (table, key_here) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(t), None) => Some(t),
        (None, None) => None,
    };
    (line_no, key)
}

/// Best-effort line of a dotted key such as `classes[3].name` or `engine.batch`.
pub(super) fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let (table, field) = match key.rsplit_once('.') {
        Some((t, f)) => (Some(t), f),
        None => (None, key),
    };
    let (name, index) = match table {
        Some(t) => match t.split_once('[') {
            Some((n, rest)) => (Some(n), rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (Some(t), None),
        },
        None => (None, None),
    };
    let mut in_table = name.is_none();
    let mut seen = 0usize;
    let mut header_line = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            let inner = line
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim();
            in_table = match (name, index) {
                (Some(n), Some(ix)) if line.starts_with("[[") && inner == n => {
                    seen += 1;
                    seen - 1 == ix
                }
                (Some(n), None) => inner == n,
                _ => false,
            };
            if in_table {
                header_line = Some(i + 1);
            }
            continue;
        }
        if in_table {
            let k = line.split('=').next().map(str::trim).unwrap_or("");
            if line.contains('=') && k == field {
                return Some(i + 1);
            }
        }
    }
    header_line
}
