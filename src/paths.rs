//! Path spelling shared by the config and the sources: relative paths resolve against the
//! config file's folder, and logged paths carry no `.` or `name/..` detours.

use std::path::{Component, Path, PathBuf};

/// `p` if absolute, else `base/p`, normalised.
pub fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        normalize(&base.join(p))
    }
}

/// Remove `.` and `name/..` pairs without touching the filesystem, so logged paths read
/// `tests/fixtures/x` rather than `configs/../tests/fixtures/x`.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out: Vec<Component> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) | Some(Component::Prefix(_)) => {}
                _ => out.push(c),
            },
            c => out.push(c),
        }
    }
    if out.is_empty() {
        PathBuf::from(".")
    } else {
        out.iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_and_normalises() {
        assert_eq!(
            resolve(Path::new("/base"), Path::new("models/x")),
            PathBuf::from("/base/models/x")
        );
        assert_eq!(
            resolve(Path::new("/base"), Path::new("../m/./x")),
            PathBuf::from("/m/x")
        );
        assert_eq!(
            resolve(Path::new("/base"), Path::new("/abs")),
            PathBuf::from("/abs")
        );
        assert_eq!(normalize(Path::new("../a/../b")), PathBuf::from("../b"));
        assert_eq!(normalize(Path::new("a/..")), PathBuf::from("."));
    }
}
