//! tract backend: the graph is loaded, checked against the manifest, its input fixed to the
//! concrete batch size, optimised once and made runnable; `encode` then only runs the plan.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::runtime::RunOptions;
use tract_onnx::tract_hir::infer::Factoid;

use super::{EncoderError, EncoderOptions, ImageEncoder, TextEncoder};
use crate::bundle::{shape_str, Bundle, EncoderSpec};

type Plan = Arc<TypedRunnableModel>;

/// A loaded graph with one fixed-shape input and one `[batch, embed_dim]` output.
struct Graph {
    path: PathBuf,
    plan: Plan,
    batch: usize,
    embed_dim: usize,
    /// Shape of one input item (without the batch axis).
    item_shape: Vec<usize>,
}

fn load_err(path: &Path, e: impl std::fmt::Display) -> EncoderError {
    EncoderError::Load {
        path: path.to_path_buf(),
        msg: format!("{e:#}"),
    }
}

impl Graph {
    fn load(
        path: &Path,
        field: &str,
        spec: &EncoderSpec,
        item_shape: Vec<usize>,
        dt: DatumType,
        embed_dim: usize,
        opts: EncoderOptions,
    ) -> Result<Graph, EncoderError> {
        let graph_err = |sub: &str, msg: String| EncoderError::Graph {
            path: path.to_path_buf(),
            field: format!("{field}.{sub}"),
            msg,
        };
        let batch = opts.batch.max(1);
        let mut model = tract_onnx::onnx()
            .model_for_path(path)
            .map_err(|e| load_err(path, e))?;
        let inputs = model
            .input_outlets()
            .map_err(|e| load_err(path, e))?
            .to_vec();
        if inputs.len() != 1 {
            return Err(graph_err(
                "input",
                format!("graph has {} inputs, expected 1", inputs.len()),
            ));
        }
        let in_name = model.node(inputs[0].node).name.clone();
        if in_name != spec.input.name {
            return Err(graph_err(
                "input.name",
                format!(
                    "graph input is {in_name:?}, manifest says {:?}",
                    spec.input.name
                ),
            ));
        }
        let declared = model.input_fact(0).map_err(|e| load_err(path, e))?.clone();
        if let Some(rank) = declared.shape.rank().concretize() {
            if rank as usize != item_shape.len() + 1 {
                return Err(graph_err(
                    "input.shape",
                    format!(
                        "graph input has rank {rank}, manifest says {}",
                        shape_str(&spec.input.shape)
                    ),
                ));
            }
        }
        for (axis, want) in item_shape.iter().enumerate() {
            if let Some(got) = declared
                .shape
                .dim(axis + 1)
                .and_then(|d| d.concretize())
                .and_then(|d| d.to_i64().ok())
                .map(|d| d as usize)
            {
                if got != *want {
                    return Err(graph_err(
                        "input.shape",
                        format!(
                            "graph input axis {} is {got}, manifest says {}",
                            axis + 1,
                            shape_str(&spec.input.shape)
                        ),
                    ));
                }
            }
        }
        let mut full = vec![batch];
        full.extend_from_slice(&item_shape);
        model = model
            .with_input_fact(0, InferenceFact::dt_shape(dt, &full))
            .map_err(|e| load_err(path, e))?;
        let outputs = model
            .output_outlets()
            .map_err(|e| load_err(path, e))?
            .to_vec();
        let Some(out0) = outputs.first() else {
            return Err(graph_err("output", "graph has no outputs".into()));
        };
        let out_name = model.node(out0.node).name.clone();
        if out_name != spec.output.name {
            // ONNX names outputs by tensor, tract by node; the label is the tensor name.
            let label = model.outlet_label(*out0).map(str::to_string);
            if label.as_deref() != Some(spec.output.name.as_str()) {
                return Err(graph_err(
                    "output.name",
                    format!(
                        "graph output is {:?}, manifest says {:?}",
                        label.unwrap_or(out_name),
                        spec.output.name
                    ),
                ));
            }
        }
        model = model
            .with_output_fact(0, InferenceFact::default())
            .map_err(|e| load_err(path, e))?;
        let typed = model.into_typed().map_err(|e| load_err(path, e))?;
        let out_fact = typed.output_fact(0).map_err(|e| load_err(path, e))?;
        let got: Option<Vec<usize>> = out_fact.shape.as_concrete().map(|s| s.to_vec());
        if got.as_deref() != Some(&[batch, embed_dim][..]) {
            return Err(graph_err(
                "output.shape",
                format!(
                    "graph output has shape {}, manifest says [batch, {embed_dim}] (embed_dim)",
                    got.map(|g| format!("{g:?}"))
                        .unwrap_or_else(|| format!("{:?}", out_fact.shape))
                ),
            ));
        }
        let optimized = typed.into_optimized().map_err(|e| load_err(path, e))?;
        let mut run_opts = RunOptions::default();
        if opts.threads > 1 {
            run_opts.executor = Some(tract_linalg::multithread::Executor::multithread_with_name(
                opts.threads,
                "clipd-tract",
            ));
        }
        let plan = optimized
            .into_runnable_with_options(&run_opts)
            .map_err(|e| load_err(path, e))?;
        Ok(Graph {
            path: path.to_path_buf(),
            plan,
            batch,
            embed_dim,
            item_shape,
        })
    }

    fn run<T: Datum + Copy + Default>(
        &self,
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
        let run_err = |e: TractError| EncoderError::Run {
            path: self.path.clone(),
            msg: format!("{e:#}"),
        };
        let mut full = vec![self.batch];
        full.extend_from_slice(&self.item_shape);
        // The plan is specialised for a fixed batch: pad a short batch with zeros.
        let mut buf = Vec::with_capacity(self.batch * per);
        buf.extend_from_slice(data);
        buf.resize(self.batch * per, T::default());
        let input = Tensor::from_shape(&full, &buf).map_err(run_err)?;
        let out = self.plan.run(tvec!(input.into_tvalue())).map_err(run_err)?;
        let view = out[0].to_plain_array_view::<f32>().map_err(run_err)?;
        Ok(view.iter().take(n * self.embed_dim).copied().collect())
    }
}

/// The bundle's image encoder on tract.
pub struct TractImageEncoder {
    graph: Graph,
    size: usize,
}

impl TractImageEncoder {
    pub fn load(bundle: &Bundle, opts: EncoderOptions) -> Result<Self, EncoderError> {
        let m = &bundle.manifest;
        let s = m.image.size;
        let graph = Graph::load(
            &bundle.image_encoder_path(),
            "image_encoder",
            &m.image_encoder,
            vec![3, s, s],
            f32::datum_type(),
            m.embed_dim,
            opts,
        )?;
        Ok(TractImageEncoder { graph, size: s })
    }
}

impl ImageEncoder for TractImageEncoder {
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

/// The bundle's text encoder on tract.
pub struct TractTextEncoder {
    graph: Graph,
    context: usize,
}

impl TractTextEncoder {
    pub fn load(bundle: &Bundle, opts: EncoderOptions) -> Result<Self, EncoderError> {
        let m = &bundle.manifest;
        let ctx = m.text.context_length;
        let graph = Graph::load(
            &bundle.text_encoder_path(),
            "text_encoder",
            &m.text_encoder,
            vec![ctx],
            i64::datum_type(),
            m.embed_dim,
            opts,
        )?;
        Ok(TractTextEncoder {
            graph,
            context: ctx,
        })
    }
}

impl TextEncoder for TractTextEncoder {
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
