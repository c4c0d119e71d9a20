//! Image and text encoders behind backend-neutral traits. The tract backend is the default;
//! another runtime (e.g. ONNX Runtime for a GPU/NPU) can implement the same traits.

mod tract;

pub use self::tract::{TractImageEncoder, TractTextEncoder};

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
}

/// How a backend should be set up: decided once at load time, never per frame.
#[derive(Debug, Clone, Copy)]
pub struct EncoderOptions {
    /// Fixed batch size the graph is specialised for; shorter batches are zero-padded.
    pub batch: usize,
    /// Worker threads for the backend's matrix kernels (1 = run on the calling thread).
    pub threads: usize,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        EncoderOptions {
            batch: 1,
            threads: 1,
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
