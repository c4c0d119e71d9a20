//! ONNX Runtime backend (feature `ort`). The shared library is found and version-checked first
//! (`library.rs`); then each encoder gets one session with the configured execution providers
//! registered in order (ONNX Runtime hands every node to the first provider that can run it,
//! its CPU kernels taking the rest), the batch axis fixed to B, and the single input and output
//! checked against the manifest before the first frame.

mod library;

pub use self::library::{check_version, ensure_library, OrtLibrary, REQUIRED_MINOR_VERSION};

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use ::ort::execution_providers::{
    ACLExecutionProvider, CUDAExecutionProvider, CoreMLExecutionProvider,
    ExecutionProvider as OrtProvider, OpenVINOExecutionProvider, QNNExecutionProvider,
    TensorRTExecutionProvider, XNNPACKExecutionProvider,
};
use ::ort::logging::LogLevel;
use ::ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ::ort::session::Session;
use ::ort::tensor::{PrimitiveTensorElementType, TensorElementType};
use ::ort::value::{TensorRef, ValueType};

use self::library::one_line;
use super::backend::{ExecutionProvider, OrtSettings};
use super::{EncoderError, EncoderOptions, ImageEncoder, TextEncoder};
use crate::bundle::{shape_str, Bundle, EncoderSpec};

/// The manifest's name for the batch axis; exported graphs use it as the symbolic dimension.
const BATCH_DIM: &str = "batch";

fn load_err(path: &Path, e: impl std::fmt::Display) -> EncoderError {
    EncoderError::Load {
        path: path.to_path_buf(),
        msg: one_line(&e),
    }
}

/// What became of one configured execution provider.
enum Outcome {
    Registered,
    /// The library was built without it (e.g. the CPU-only pip wheel and `cuda`).
    NotInLibrary,
    Failed(String),
}

/// ort's handle for a configured provider; `None` for `cpu`, which every session has anyway.
fn ort_provider(p: ExecutionProvider, threads: usize) -> Option<Box<dyn OrtProvider>> {
    Some(match p {
        ExecutionProvider::Tensorrt => Box::new(TensorRTExecutionProvider::default()),
        ExecutionProvider::Cuda => Box::new(CUDAExecutionProvider::default()),
        ExecutionProvider::Openvino => Box::new(OpenVINOExecutionProvider::default()),
        ExecutionProvider::Qnn => Box::new(QNNExecutionProvider::default()),
        ExecutionProvider::Coreml => Box::new(CoreMLExecutionProvider::default()),
        // XNNPACK runs its own thread pool; give it the configured thread count.
        ExecutionProvider::Xnnpack => Box::new(
            XNNPACKExecutionProvider::default()
                .with_intra_op_num_threads(NonZeroUsize::new(threads).unwrap_or(NonZeroUsize::MIN)),
        ),
        ExecutionProvider::Acl => Box::new(ACLExecutionProvider::default()),
        ExecutionProvider::Cpu => return None,
    })
}

fn register(
    builder: &mut SessionBuilder,
    providers: &[ExecutionProvider],
    threads: usize,
) -> Vec<(ExecutionProvider, Outcome)> {
    let mut outcomes = Vec::new();
    for &p in providers {
        let outcome = match ort_provider(p, threads) {
            None => Outcome::Registered,
            Some(ep) => match ep.is_available() {
                Ok(false) => Outcome::NotInLibrary,
                Err(e) => Outcome::Failed(one_line(&e)),
                Ok(true) => match ep.register(builder) {
                    Ok(()) => Outcome::Registered,
                    Err(e) => Outcome::Failed(one_line(&e)),
                },
            },
        };
        outcomes.push((p, outcome));
    }
    outcomes
}

/// The one line saying which providers a session got: info when the first choice was
/// obtained, a warning when the session fell back.
fn log_providers(
    path: &Path,
    lib: &OrtLibrary,
    wanted: &[ExecutionProvider],
    outcomes: &[(ExecutionProvider, Outcome)],
) {
    let mut used: Vec<&str> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Registered))
        .map(|(p, _)| p.name())
        .collect();
    if used.last() != Some(&"cpu") {
        used.push("cpu");
    }
    let skipped: Vec<String> = outcomes
        .iter()
        .filter_map(|(p, o)| match o {
            Outcome::Registered => None,
            Outcome::NotInLibrary => Some(format!("{p}: not in this ONNX Runtime build")),
            Outcome::Failed(msg) => Some(format!("{p}: {msg}")),
        })
        .collect();
    let file = path
        .file_name()
        .unwrap_or(path.as_os_str())
        .to_string_lossy();
    let line = format!(
        "{file}: ONNX Runtime {} runs on {}{}",
        lib.version,
        used.join(" > "),
        if skipped.is_empty() {
            String::new()
        } else {
            format!(" (unavailable: {})", skipped.join("; "))
        }
    );
    if wanted.first().map(|p| p.name()) == used.first().copied() {
        log::info!("{line}");
    } else {
        log::warn!("{line}");
    }
}

/// A session with one input and one `[batch, embed_dim]` output, fed fixed batches of B.
struct Graph {
    path: PathBuf,
    session: Session,
    batch: usize,
    embed_dim: usize,
    item_shape: Vec<usize>,
    output: String,
}

impl Graph {
    #[allow(clippy::too_many_arguments)]
    fn load(
        path: &Path,
        field: &str,
        spec: &EncoderSpec,
        item_shape: Vec<usize>,
        element: TensorElementType,
        embed_dim: usize,
        opts: EncoderOptions,
        settings: &OrtSettings,
        float16: bool,
    ) -> Result<Graph, EncoderError> {
        let lib = ensure_library(settings.library.as_deref())?;
        let batch = opts.batch.max(1);
        let disabled = disabled_optimizers(float16);
        let builder = |path: &Path| -> Result<SessionBuilder, EncoderError> {
            Session::builder()
                .and_then(|b| b.with_log_level(LogLevel::Warning))
                .and_then(|b| b.with_optimization_level(GraphOptimizationLevel::Level3))
                .and_then(|b| match disabled {
                    Some(list) => b.with_disabled_optimizers(list),
                    None => Ok(b),
                })
                .and_then(|b| b.with_intra_threads(opts.threads.max(1)))
                // Fixing the batch axis lets ONNX Runtime plan memory once and is required by
                // providers that compile static graphs (TensorRT, QNN).
                .and_then(|b| b.with_dimension_override(BATCH_DIM, batch as i64))
                .map_err(|e| load_err(path, e))
        };
        let mut b = builder(path)?;
        let outcomes = register(&mut b, &settings.providers, opts.threads);
        let accelerated = outcomes
            .iter()
            .any(|(p, o)| *p != ExecutionProvider::Cpu && matches!(o, Outcome::Registered));
        let session = match b.commit_from_file(path) {
            Ok(s) => {
                log_providers(path, &lib, &settings.providers, &outcomes);
                s
            }
            // A provider can register and still fail on this graph or device (no GPU, driver
            // mismatch): run on the CPU rather than not at all, and say why.
            Err(e) if accelerated => {
                let s = builder(path)?
                    .commit_from_file(path)
                    .map_err(|e| load_err(path, e))?;
                log::warn!(
                    "{}: ONNX Runtime {} runs on cpu: the session with {} failed: {}",
                    path.display(),
                    lib.version,
                    settings
                        .providers
                        .iter()
                        .map(|p| p.name())
                        .collect::<Vec<_>>()
                        .join(" > "),
                    one_line(&e)
                );
                s
            }
            Err(e) => return Err(load_err(path, e)),
        };
        let graph_err = |sub: &str, msg: String| EncoderError::Graph {
            path: path.to_path_buf(),
            field: format!("{field}.{sub}"),
            msg,
        };
        let [input] = &session.inputs[..] else {
            return Err(graph_err(
                "input",
                format!("graph has {} inputs, expected 1", session.inputs.len()),
            ));
        };
        if input.name != spec.input.name {
            return Err(graph_err(
                "input.name",
                format!(
                    "graph input is {:?}, manifest says {:?}",
                    input.name, spec.input.name
                ),
            ));
        }
        let ValueType::Tensor { ty, shape, .. } = &input.input_type else {
            return Err(graph_err("input", "graph input is not a tensor".into()));
        };
        if *ty != element {
            return Err(graph_err(
                "input.dtype",
                format!("graph input is {ty:?}, expected {element:?}"),
            ));
        }
        let mut want = vec![batch];
        want.extend_from_slice(&item_shape);
        if !shape_fits(shape, &want) {
            return Err(graph_err(
                "input.shape",
                format!(
                    "graph input has shape {}, manifest says {}",
                    dims_str(shape),
                    shape_str(&spec.input.shape)
                ),
            ));
        }
        let Some(output) = session.outputs.first() else {
            return Err(graph_err("output", "graph has no outputs".into()));
        };
        if output.name != spec.output.name {
            return Err(graph_err(
                "output.name",
                format!(
                    "graph output is {:?}, manifest says {:?}",
                    output.name, spec.output.name
                ),
            ));
        }
        if let ValueType::Tensor { shape, .. } = &output.output_type {
            if !shape_fits(shape, &[batch, embed_dim]) {
                return Err(graph_err(
                    "output.shape",
                    format!(
                        "graph output has shape {}, manifest says [batch, {embed_dim}] (embed_dim)",
                        dims_str(shape)
                    ),
                ));
            }
        }
        let output = output.name.clone();
        Ok(Graph {
            path: path.to_path_buf(),
            session,
            batch,
            embed_dim,
            item_shape,
            output,
        })
    }

    fn run<T: PrimitiveTensorElementType + Copy + Default + std::fmt::Debug + 'static>(
        &mut self,
        data: &[T],
        n: usize,
    ) -> Result<Vec<f32>, EncoderError> {
        if n > self.batch {
            return Err(EncoderError::BatchTooLarge {
                got: n,
                max: self.batch,
            });
        }
        let per: usize = self.item_shape.iter().product();
        if data.len() != n * per {
            return Err(EncoderError::InputLength {
                got: data.len(),
                n,
                per,
            });
        }
        let path = &self.path;
        let run_err = |e: ::ort::Error| EncoderError::Run {
            path: path.clone(),
            msg: one_line(&e),
        };
        let mut shape = vec![self.batch as i64];
        shape.extend(self.item_shape.iter().map(|&d| d as i64));
        // The session is planned for a fixed batch: pad a short batch with zeros.
        let mut buf = Vec::with_capacity(self.batch * per);
        buf.extend_from_slice(data);
        buf.resize(self.batch * per, T::default());
        let input = TensorRef::from_array_view((shape, &buf[..])).map_err(run_err)?;
        let outputs = self.session.run(::ort::inputs![input]).map_err(run_err)?;
        let Some(value) = outputs.get(&self.output) else {
            return Err(EncoderError::Run {
                path: path.clone(),
                msg: format!("no output named {:?}", self.output),
            });
        };
        let (got, values) = value.try_extract_tensor::<f32>().map_err(run_err)?;
        if got[..] != [self.batch as i64, self.embed_dim as i64] {
            return Err(EncoderError::Run {
                path: path.clone(),
                msg: format!(
                    "output has shape {}, expected [{}, {}]",
                    dims_str(got),
                    self.batch,
                    self.embed_dim
                ),
            });
        }
        Ok(values[..n * self.embed_dim].to_vec())
    }
}

/// Whether a declared shape (-1 for a free axis) can hold `want`.
fn shape_fits(declared: &[i64], want: &[usize]) -> bool {
    declared.len() == want.len()
        && declared
            .iter()
            .zip(want)
            .all(|(&d, &w)| d < 0 || d as usize == w)
}

fn dims_str(dims: &[i64]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|&d| if d < 0 { "?".into() } else { d.to_string() })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// ONNX Runtime optimizers to leave out for this graph. On x86-64, ONNX Runtime's
/// `NchwcTransformer` dereferences a null pointer while loading float16 graphs (the
/// Cast(fp16→fp32) nodes it meets; microsoft/onnxruntime#28392, seen with 1.24–1.32 on
/// ViT-B-32 in float16): the process dies with SIGSEGV, not an error. It only re-lays out
/// convolutions, which a ViT has one of, and is inactive on ARM, so it is dropped there only.
fn disabled_optimizers(float16: bool) -> Option<&'static str> {
    (float16 && cfg!(target_arch = "x86_64")).then_some("NchwcTransformer")
}

/// The bundle's image encoder on ONNX Runtime.
pub struct OrtImageEncoder {
    graph: Graph,
    size: usize,
}

impl OrtImageEncoder {
    pub fn load(
        bundle: &Bundle,
        opts: EncoderOptions,
        settings: &OrtSettings,
    ) -> Result<Self, EncoderError> {
        let m = &bundle.manifest;
        let s = m.image.size;
        let graph = Graph::load(
            &bundle.image_encoder_path(),
            "image_encoder",
            &m.image_encoder,
            vec![3, s, s],
            TensorElementType::Float32,
            m.embed_dim,
            opts,
            settings,
            bundle.is_float16(),
        )?;
        Ok(OrtImageEncoder { graph, size: s })
    }
}

impl ImageEncoder for OrtImageEncoder {
    fn batch_size(&self) -> usize {
        self.graph.batch
    }
    fn embed_dim(&self) -> usize {
        self.graph.embed_dim
    }
    fn image_size(&self) -> usize {
        self.size
    }
    fn encode(&mut self, pixels: &[f32], n: usize) -> Result<Vec<f32>, EncoderError> {
        self.graph.run(pixels, n)
    }
}

/// The bundle's text encoder on ONNX Runtime.
pub struct OrtTextEncoder {
    graph: Graph,
    context: usize,
}

impl OrtTextEncoder {
    pub fn load(
        bundle: &Bundle,
        opts: EncoderOptions,
        settings: &OrtSettings,
    ) -> Result<Self, EncoderError> {
        let m = &bundle.manifest;
        let ctx = m.text.context_length;
        let graph = Graph::load(
            &bundle.text_encoder_path(),
            "text_encoder",
            &m.text_encoder,
            vec![ctx],
            TensorElementType::Int64,
            m.embed_dim,
            opts,
            settings,
            bundle.is_float16(),
        )?;
        Ok(OrtTextEncoder {
            graph,
            context: ctx,
        })
    }
}

impl TextEncoder for OrtTextEncoder {
    fn batch_size(&self) -> usize {
        self.graph.batch
    }
    fn embed_dim(&self) -> usize {
        self.graph.embed_dim
    }
    fn context_length(&self) -> usize {
        self.context
    }
    fn encode(&mut self, ids: &[i64], n: usize) -> Result<Vec<f32>, EncoderError> {
        self.graph.run(ids, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_axes_fit_any_size_fixed_axes_only_their_own() {
        assert!(shape_fits(&[-1, 3, 64, 64], &[8, 3, 64, 64]));
        assert!(shape_fits(&[8, 3, 64, 64], &[8, 3, 64, 64]));
        assert!(!shape_fits(&[4, 3, 64, 64], &[8, 3, 64, 64]));
        assert!(!shape_fits(&[-1, 3, 64], &[8, 3, 64, 64]));
        assert!(!shape_fits(&[-1, 3, 32, 32], &[8, 3, 64, 64]));
        assert_eq!(dims_str(&[-1, 128]), "[?, 128]");
    }
}
