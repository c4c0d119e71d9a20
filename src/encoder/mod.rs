//! Image and text encoders behind backend-neutral traits. The tract backend is the default;
//! ONNX Runtime (feature `ort`) implements the same traits for GPUs and NPUs, and
//! `backend.rs` picks one from the configuration (see docs/backends.md).

mod backend;
#[cfg(feature = "ort")]
mod ort;
mod tract;

pub use self::backend::{
    load_image_encoder, load_text_encoder, Backend, BackendKind, ExecutionProvider, OrtSettings,
};
#[cfg(feature = "ort")]
pub use self::ort::{
    check_version, ensure_library, OrtImageEncoder, OrtLibrary, OrtTextEncoder,
    REQUIRED_MINOR_VERSION,
};
pub use self::tract::{OpTime, TractImageEncoder, TractStock, TractTextEncoder};

use crate::error::{ExitClass, HasExitClass};
use std::path::PathBuf;

/// Why an encoder could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    /// The ONNX graph disagrees with the manifest (names the file and the manifest field).
    #[error("{}: {field}: {msg}", path.display())]
    Graph {
        path: PathBuf,
        field: String,
        msg: String,
    },
    #[error("{}: cannot load model: {msg}", path.display())]
    Load { path: PathBuf, msg: String },
    #[error("{}: inference failed: {msg}", path.display())]
    Run { path: PathBuf, msg: String },
    #[error("batch of {got} exceeds the encoder's fixed batch size {max}")]
    BatchTooLarge { got: usize, max: usize },
    #[error("input length {got} does not match {n} items of {per} values")]
    InputLength { got: usize, n: usize, per: usize },
    /// The ONNX Runtime shared library is missing, unloadable or too old (names the path).
    #[error("{}: ONNX Runtime library: {msg}", path.display())]
    Library { path: PathBuf, msg: String },
    #[error("engine.backend = \"ort\" but no ONNX Runtime library is given: set engine.ort_library in the config or the ORT_DYLIB_PATH environment variable to a libonnxruntime.so (for example the one in the onnxruntime pip wheel's capi/ directory)")]
    NoLibrary,
    #[error("engine.backend = \"ort\" needs clipd built with ONNX Runtime support (cargo build --release --features ort); use backend = \"tract\" otherwise")]
    BackendNotBuilt,
}

impl HasExitClass for EncoderError {
    fn exit_class(&self) -> ExitClass {
        ExitClass::Model
    }
}

/// How a backend should be set up: decided once at load time, never per frame.
#[derive(Debug, Clone, Copy)]
pub struct EncoderOptions {
    /// Fixed batch size the graph is specialised for; shorter batches are zero-padded.
    pub batch: usize,
    /// Worker threads for the backend's matrix kernels (1 = run on the calling thread).
    pub threads: usize,
    /// tract only: frame-level parallelism. A batch larger than `batch / lanes` runs as `lanes`
    /// concurrent single-thread runs of one shared plan; 1 = every batch runs once on `threads`
    /// threads. ONNX Runtime schedules its own threads and ignores it.
    pub lanes: usize,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        EncoderOptions {
            batch: 1,
            threads: 1,
            lanes: 1,
        }
    }
}

/// Turns preprocessed images into raw (not normalised) embeddings.
pub trait ImageEncoder: Send {
    /// The fixed batch size; `encode` accepts 1..=batch images.
    fn batch_size(&self) -> usize;
    fn embed_dim(&self) -> usize;
    /// Side length of the square input.
    fn image_size(&self) -> usize;
    /// `pixels` holds `n` CHW float images back to back; returns `n × embed_dim` values.
    fn encode(&mut self, pixels: &[f32], n: usize) -> Result<Vec<f32>, EncoderError>;
}

/// Turns token id rows into raw (not normalised) embeddings.
pub trait TextEncoder: Send {
    fn batch_size(&self) -> usize;
    fn embed_dim(&self) -> usize;
    fn context_length(&self) -> usize;
    /// `ids` holds `n` rows of `context_length` ids; returns `n × embed_dim` values.
    fn encode(&mut self, ids: &[i64], n: usize) -> Result<Vec<f32>, EncoderError>;
}

/// A boxed encoder is an encoder, so callers can hold whichever backend the config chose.
impl<E: ImageEncoder + ?Sized> ImageEncoder for Box<E> {
    fn batch_size(&self) -> usize {
        (**self).batch_size()
    }
    fn embed_dim(&self) -> usize {
        (**self).embed_dim()
    }
    fn image_size(&self) -> usize {
        (**self).image_size()
    }
    fn encode(&mut self, pixels: &[f32], n: usize) -> Result<Vec<f32>, EncoderError> {
        (**self).encode(pixels, n)
    }
}

impl<E: TextEncoder + ?Sized> TextEncoder for Box<E> {
    fn batch_size(&self) -> usize {
        (**self).batch_size()
    }
    fn embed_dim(&self) -> usize {
        (**self).embed_dim()
    }
    fn context_length(&self) -> usize {
        (**self).context_length()
    }
    fn encode(&mut self, ids: &[i64], n: usize) -> Result<Vec<f32>, EncoderError> {
        (**self).encode(ids, n)
    }
}

/// Encode any number of rows by splitting them into batches the encoder accepts.
pub fn encode_texts(enc: &mut dyn TextEncoder, ids: &[i64]) -> Result<Vec<f32>, EncoderError> {
    let ctx = enc.context_length();
    let rows = ids.len() / ctx.max(1);
    let mut out = Vec::with_capacity(rows * enc.embed_dim());
    for chunk in ids.chunks(enc.batch_size() * ctx) {
        out.extend(enc.encode(chunk, chunk.len() / ctx)?);
    }
    Ok(out)
}

/// L2-normalise each `dim`-long row in place (rows of zeros stay zero).
pub fn l2_normalize_rows(data: &mut [f32], dim: usize) {
    for row in data.chunks_mut(dim.max(1)) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_rows() {
        let mut v = vec![3.0, 4.0, 0.0, 0.0];
        l2_normalize_rows(&mut v, 2);
        assert_eq!(v, vec![0.6, 0.8, 0.0, 0.0]);
    }
}
