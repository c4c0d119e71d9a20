//! File-backed sources: a fixed list of files, and a directory (optionally watched by polling).

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{is_image_path, truth_for, Frame, FrameSource, LabelsFrom, Next, Payload, SourceError};

/// A fixed list of files (the `file` and `glob` kinds).
pub struct FileListSource {
    name: String,
    files: VecDeque<PathBuf>,
    labels: LabelsFrom,
}

impl FileListSource {
    pub fn new(name: String, files: Vec<PathBuf>, labels: LabelsFrom) -> Self {
        FileListSource {
            name,
            files: files.into(),
            labels,
        }
    }
}

fn frame(source: &str, path: PathBuf, labels: LabelsFrom) -> Frame {
    Frame {
        source: source.to_string(),
        reference: path.display().to_string(),
        truth: truth_for(&path, labels),
        payload: Payload::File(path),
    }
}

impl FrameSource for FileListSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn next(&mut self) -> Result<Next, SourceError> {
        Ok(match self.files.pop_front() {
            Some(p) => Next::Frame(frame(&self.name, p, self.labels)),
            None => Next::Done,
        })
    }
}

/// Every image file under a directory in sorted order; when `poll` is set, the directory is
/// rescanned that often and files not seen before are emitted.
pub struct DirSource {
    name: String,
    dir: PathBuf,
    recursive: bool,
    labels: LabelsFrom,
    poll: Option<Duration>,
    seen: HashSet<PathBuf>,
    queue: VecDeque<PathBuf>,
}

impl DirSource {
    pub fn new(
        name: String,
        dir: PathBuf,
        recursive: bool,
        labels: LabelsFrom,
        poll: Option<Duration>,
    ) -> Result<Self, SourceError> {
        let mut s = DirSource {
            name,
            dir,
            recursive,
            labels,
            poll,
            seen: HashSet::new(),
            queue: VecDeque::new(),
        };
        s.scan()?;
        Ok(s)
    }

    /// Frames listed but not yet handed out.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    fn scan(&mut self) -> Result<(), SourceError> {
        let mut found = Vec::new();
        list_images(&self.dir, self.recursive, &mut found)?;
        found.sort();
        for p in found {
            if self.seen.insert(p.clone()) {
                self.queue.push_back(p);
            }
        }
        Ok(())
    }
}

fn list_images(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> Result<(), SourceError> {
    let io = |source| SourceError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        let ft = entry.file_type().map_err(io)?;
        if ft.is_dir() {
            if recursive {
                list_images(&path, recursive, out)?;
            }
        } else if is_image_path(&path) {
            out.push(path);
        }
    }
    Ok(())
}

impl FrameSource for DirSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn next(&mut self) -> Result<Next, SourceError> {
        if let Some(p) = self.queue.pop_front() {
            return Ok(Next::Frame(frame(&self.name, p, self.labels)));
        }
        match self.poll {
            None => Ok(Next::Done),
            Some(every) => {
                self.scan()?;
                Ok(match self.queue.pop_front() {
                    Some(p) => Next::Frame(frame(&self.name, p, self.labels)),
                    None => Next::Wait(every),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{SourceKind, SourceSpec};

    fn spec(index: usize, kind: SourceKind, path: &str, base: &Path) -> SourceSpec {
        SourceSpec {
            labels_from: LabelsFrom::ParentDir,
            poll: Duration::from_millis(10),
            ..SourceSpec::new(&format!("sources[{index}]"), kind, path, base)
        }
    }

    #[test]
    fn dir_source_lists_images_sorted_with_labels() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("cat")).unwrap();
        std::fs::write(d.path().join("cat/b.png"), b"").unwrap();
        std::fs::write(d.path().join("cat/a.JPG"), b"").unwrap();
        std::fs::write(d.path().join("notes.txt"), b"").unwrap();
        let mut s = super::super::open(&spec(0, SourceKind::Dir, ".", d.path()), true).unwrap();
        let mut got = vec![];
        while let Next::Frame(f) = s.next().unwrap() {
            got.push((f.reference.rsplit('/').next().unwrap().to_string(), f.truth));
        }
        assert_eq!(
            got,
            vec![
                ("a.JPG".to_string(), Some("cat".to_string())),
                ("b.png".to_string(), Some("cat".to_string()))
            ]
        );
    }

    #[test]
    fn empty_dir_and_missing_paths_are_setup_errors() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("readme.txt"), b"").unwrap();
        let e = super::super::open(&spec(2, SourceKind::Dir, ".", d.path()), true)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("sources[2]: ") && e.contains("no image files"),
            "{e}"
        );
        assert!(super::super::open(&spec(0, SourceKind::File, "x.png", d.path()), true).is_err());
        assert!(super::super::open(&spec(0, SourceKind::Glob, "*.png", d.path()), true).is_err());
        // Watching an empty directory is fine: frames may arrive later.
        let mut s = super::super::open(&spec(0, SourceKind::Dir, ".", d.path()), false).unwrap();
        assert!(matches!(s.next().unwrap(), Next::Wait(_)));
        std::fs::write(d.path().join("new.png"), b"").unwrap();
        assert!(matches!(s.next().unwrap(), Next::Frame(_)));
    }
}
