//! Which runtime runs the encoders (`[engine] backend`) and loading an encoder on it. tract is
//! built in and pure Rust; ONNX Runtime (feature `ort`) reaches GPUs and NPUs through its
//! execution providers. Both sit behind the same traits, so nothing past loading knows which.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use super::{EncoderError, EncoderOptions, ImageEncoder, TextEncoder};
use super::{TractImageEncoder, TractTextEncoder};
use crate::bundle::Bundle;

/// The runtime named in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// tract: compiled in, no shared library needed.
    #[default]
    Tract,
    /// ONNX Runtime, loaded from a shared library at start-up (needs the `ort` feature).
    Ort,
}

/// An ONNX Runtime execution provider, by the name used in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    /// NVIDIA TensorRT (Jetson, discrete GPUs).
    Tensorrt,
    /// NVIDIA CUDA.
    Cuda,
    /// Intel CPUs, integrated GPUs and NPUs.
    Openvino,
    /// Qualcomm NPUs (Hexagon) through the QNN SDK.
    Qnn,
    /// Apple Neural Engine / GPU.
    Coreml,
    /// XNNPACK kernels for ARM (and x86) CPUs.
    Xnnpack,
    /// Arm Compute Library for ARM CPUs.
    Acl,
    /// ONNX Runtime's own CPU kernels (always the final fallback).
    Cpu,
}

impl ExecutionProvider {
    /// The configuration spelling.
    pub fn name(self) -> &'static str {
        match self {
            ExecutionProvider::Tensorrt => "tensorrt",
            ExecutionProvider::Cuda => "cuda",
            ExecutionProvider::Openvino => "openvino",
            ExecutionProvider::Qnn => "qnn",
            ExecutionProvider::Coreml => "coreml",
            ExecutionProvider::Xnnpack => "xnnpack",
            ExecutionProvider::Acl => "acl",
            ExecutionProvider::Cpu => "cpu",
        }
    }
}

impl fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// ONNX Runtime settings with the library path already resolved against the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrtSettings {
    /// The libonnxruntime shared library; `None`: the `ORT_DYLIB_PATH` environment variable.
    pub library: Option<PathBuf>,
    /// Execution providers in order of preference; ONNX Runtime's CPU kernels remain the
    /// fallback for whatever the others cannot run.
    pub providers: Vec<ExecutionProvider>,
}

impl Default for OrtSettings {
    fn default() -> Self {
        OrtSettings {
            library: None,
            providers: vec![ExecutionProvider::Cpu],
        }
    }
}

/// The runtime an engine loads its encoders on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Backend {
    #[default]
    Tract,
    Ort(OrtSettings),
}

impl Backend {
    /// The configuration spelling of this backend.
    pub fn kind(&self) -> BackendKind {
        match self {
            Backend::Tract => BackendKind::Tract,
            Backend::Ort(_) => BackendKind::Ort,
        }
    }
}

/// Load the bundle's image encoder on `backend`.
pub fn load_image_encoder(
    bundle: &Bundle,
    opts: EncoderOptions,
    backend: &Backend,
) -> Result<Box<dyn ImageEncoder>, EncoderError> {
    match backend {
        Backend::Tract => Ok(Box::new(TractImageEncoder::load(bundle, opts)?)),
        #[cfg(feature = "ort")]
        Backend::Ort(settings) => Ok(Box::new(super::OrtImageEncoder::load(
            bundle, opts, settings,
        )?)),
        #[cfg(not(feature = "ort"))]
        Backend::Ort(_) => Err(EncoderError::BackendNotBuilt),
    }
}

/// Load the bundle's text encoder on `backend`.
pub fn load_text_encoder(
    bundle: &Bundle,
    opts: EncoderOptions,
    backend: &Backend,
) -> Result<Box<dyn TextEncoder>, EncoderError> {
    match backend {
        Backend::Tract => Ok(Box::new(TractTextEncoder::load(bundle, opts)?)),
        #[cfg(feature = "ort")]
        Backend::Ort(settings) => Ok(Box::new(super::OrtTextEncoder::load(
            bundle, opts, settings,
        )?)),
        #[cfg(not(feature = "ort"))]
        Backend::Ort(_) => Err(EncoderError::BackendNotBuilt),
    }
}
