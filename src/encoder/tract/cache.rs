//! On-disk cache of tract-ready graphs, so a restart skips the ONNX parse.
//!
//! What is cached is the graph after ONNX parsing, type analysis and decluttering, with its batch
//! fixed, written in NNEF (tract's own format: a tar of a graph text and raw tensor files). tract
//! reads that straight into its typed model, one copy of the weights at a time, where the ONNX
//! route holds the protobuf and the converted tensors side by side. Optimisation still runs on
//! every start (tract cannot serialise an optimised plan), but it is the cheap part.
//!
//! An entry is named by the bundle's sha256 (which pins every file's hash), the graph file, the
//! batch and tract's version, so any change to the bundle or to tract misses and a fresh entry
//! replaces the stale ones of that graph. Each entry carries its own sha256 in a sidecar file and
//! is checked on load: a truncated or damaged entry is reported once and rebuilt, never trusted.
//! The cache is an optimisation only: every failure here falls back to loading the ONNX file.

use std::fs;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tract_nnef::framework::Nnef;
use tract_onnx::prelude::*;
use tract_onnx::WithOnnx;

/// tract's version: a cached graph is only read back by the tract that wrote it.
const TRACT_VERSION: &str = "0.23.9";

/// Where cached graphs live: `$CLIPD_CACHE_DIR` (`off` disables the cache), else systemd's
/// `$CACHE_DIRECTORY` (`CacheDirectory=clipd`), else `$XDG_CACHE_HOME/clipd`, else
/// `~/.cache/clipd`.
pub fn default_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = var("CLIPD_CACHE_DIR") {
        return (d != Path::new("off")).then_some(d);
    }
    if let Some(d) = var("CACHE_DIRECTORY") {
        // systemd may list several, colon separated: the first is ours.
        let first = d.to_string_lossy().split(':').next().map(PathBuf::from);
        return first;
    }
    if let Some(d) = var("XDG_CACHE_HOME") {
        return Some(d.join("clipd"));
    }
    var("HOME").map(|h| h.join(".cache").join("clipd"))
}

/// One graph's place in the cache.
pub struct Entry {
    /// `<dir>/tract/<bundle name>/`.
    folder: PathBuf,
    /// `<sha16>-<graph stem>-b<batch>-tract<version>`.
    name: String,
    /// `-<graph stem>-b<batch>-tract`: what this graph's entries for any bundle hash share.
    family: String,
}

impl Entry {
    pub fn new(
        dir: &Path,
        bundle_name: &str,
        bundle_sha: &str,
        graph: &Path,
        batch: usize,
    ) -> Entry {
        let stem = graph
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "graph".into());
        let safe = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        let family = format!("-{}-b{batch}-tract", safe(&stem));
        let sha: String = bundle_sha.chars().take(16).collect();
        Entry {
            folder: dir.join("tract").join(safe(bundle_name)),
            name: format!("{}{family}{TRACT_VERSION}", safe(&sha)),
            family,
        }
    }

    pub fn tar(&self) -> PathBuf {
        self.folder.join(format!("{}.nnef.tar", self.name))
    }

    fn sum(&self) -> PathBuf {
        self.folder.join(format!("{}.sha256", self.name))
    }

    /// The cached graph, `Ok(None)` when there is none, `Err` when there is one that cannot be
    /// used (damaged, unreadable): the caller reports it and rebuilds it.
    pub fn load(&self) -> Result<Option<TypedModel>, String> {
        let tar = self.tar();
        let want = match fs::read_to_string(self.sum()) {
            Ok(s) => s.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", self.sum().display())),
        };
        let file = match fs::File::open(&tar) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", tar.display())),
        };
        // Hash while tract reads, so the file is read once.
        let mut reader = HashingReader {
            inner: BufReader::with_capacity(1 << 20, file),
            hash: Sha256::new(),
        };
        let proto = nnef()
            .proto_model_for_read(&mut reader)
            .map_err(|e| format!("{}: {e:#}", tar.display()))?;
        // tract stops at the tar's end-of-archive marker: hash whatever follows too.
        std::io::copy(&mut reader, &mut std::io::sink())
            .map_err(|e| format!("{}: {e}", tar.display()))?;
        let got = hex(&reader.hash.finalize());
        if got != want {
            return Err(format!(
                "{}: sha256 {got} does not match the recorded {want}",
                tar.display()
            ));
        }
        nnef()
            .model_for_proto_model(&proto)
            .map(Some)
            .map_err(|e| format!("{}: {e:#}", tar.display()))
    }

    /// Write `model` as this entry (through a temporary file renamed into place), then remove
    /// this graph's entries for other bundle hashes or tract versions.
    pub fn store(&self, model: &TypedModel) -> Result<(), String> {
        let ctx = |p: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", p.display());
        fs::create_dir_all(&self.folder).map_err(|e| ctx(&self.folder, &e))?;
        let tar = self.tar();
        let tmp = self
            .folder
            .join(format!(".{}.{}.tmp", self.name, std::process::id()));
        let result = (|| -> Result<(), String> {
            let file = fs::File::create(&tmp).map_err(|e| ctx(&tmp, &e))?;
            let writer = HashingWriter {
                inner: BufWriter::with_capacity(1 << 20, file),
                hash: Sha256::new(),
            };
            let mut writer = nnef()
                .write_to_tar(model, writer)
                .map_err(|e| ctx(&tmp, &format!("{e:#}")))?;
            writer.flush().map_err(|e| ctx(&tmp, &e))?;
            let sum = hex(&writer.hash.finalize());
            let file = writer.inner.into_inner().map_err(|e| ctx(&tmp, &e))?;
            file.sync_all().map_err(|e| ctx(&tmp, &e))?;
            fs::rename(&tmp, &tar).map_err(|e| ctx(&tar, &e))?;
            // The sum goes last: an entry without one is never read.
            let sum_tmp = self.folder.join(format!(".{}.sha256.tmp", self.name));
            fs::write(&sum_tmp, format!("{sum}\n")).map_err(|e| ctx(&sum_tmp, &e))?;
            fs::rename(&sum_tmp, self.sum()).map_err(|e| ctx(&self.sum(), &e))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
            return result;
        }
        self.prune();
        Ok(())
    }

    /// Remove this graph's entries made for other bundle hashes or tract versions.
    fn prune(&self) {
        let Ok(dir) = fs::read_dir(&self.folder) else {
            return;
        };
        for f in dir.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let stem = name
                .strip_suffix(".nnef.tar")
                .or_else(|| name.strip_suffix(".sha256"));
            if let Some(stem) = stem {
                if stem != self.name && stem.contains(&self.family) {
                    let _ = fs::remove_file(f.path());
                }
            }
        }
    }
}

fn nnef() -> Nnef {
    tract_nnef::nnef().with_onnx()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct HashingReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
