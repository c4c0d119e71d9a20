//! tract backend: the graph is loaded, checked against the manifest, its input fixed to the
//! concrete batch size, optimised once and made runnable; `encode` then only runs the plan.
//!
//! Every run happens inside an explicit rayon executor, even a one-thread one: on ViT-B-32 that
//! is markedly faster than tract's built-in single-thread path (docs/performance.md has the
//! figures). Frame-level parallelism ("lanes") runs the one plan from several threads at once,
//! each lane single-threaded on its own slice of a full batch, sharing the weights: tract
//! threads only its matrix products, so one single-core run per core also parallelises the
//! softmaxes, transposes and normalisations between them. A batch that fits one lane runs on
//! one lane with all the threads instead, so a lone frame still gets every core.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

mod cache;
mod dense;
mod softmax;

use super::{EncoderError, EncoderOptions, ImageEncoder, TextEncoder};
use crate::bundle::{shape_str, Bundle, EncoderSpec};

type Plan = Arc<TypedRunnableModel>;

/// A loaded graph with one fixed-shape input and one `[batch, embed_dim]` output.
struct Graph {
    path: PathBuf,
    plan: Plan,
    /// The batch the plan is specialised for (per lane).
    batch: usize,
    embed_dim: usize,
    /// Shape of one input item (without the batch axis).
    item_shape: Vec<usize>,
    /// One executor per lane; lanes run the shared plan concurrently on disjoint items of a
    /// batch too large for one lane.
    lanes: Vec<Executor>,
    /// The executor for a batch that fits one lane: every configured thread.
    solo: Executor,
}

/// How the tract plan is run; the defaults are what measured fastest (docs/performance.md).
#[derive(Debug, Clone, Copy)]
struct TractTuning {
    /// Frame-level parallelism: concurrent single-thread runs of the one plan, each on its
    /// share of the batch.
    lanes: usize,
    /// Run inside an explicit rayon executor even with one thread. `false` leaves tract on its
    /// built-in single-thread path (whatever the thread count): kept only to measure the
    /// difference.
    executor: bool,
    /// Swap the softmaxes tract would evaluate row by row for [`softmax::RowSoftmax`].
    /// `false` keeps tract's own: kept only to measure the difference.
    row_softmax: bool,
    /// Run the products with constant weights as [`dense::Dense`] where the CPU allows.
    /// `false` keeps tract's own: kept only to measure the difference.
    dense: bool,
}

/// Which of clipd's tract tunings to leave out, to measure what each gives; the default leaves
/// out none.
#[derive(Debug, Clone, Copy, Default)]
pub struct TractStock {
    /// Leave tract on its built-in single-thread path, whatever the thread count.
    pub no_executor: bool,
    /// Keep tract's own softmax everywhere.
    pub softmax: bool,
    /// Keep tract's own matrix products for the dense (constant-weight) layers.
    pub matmul: bool,
}

impl Default for TractTuning {
    fn default() -> Self {
        TractTuning {
            lanes: 1,
            executor: true,
            row_softmax: true,
            dense: true,
        }
    }
}

/// A rayon pool of `threads` workers for tract's kernels. tract panics when the pool cannot be
/// built (threads cannot be spawned); that becomes a load error here.
fn executor(path: &Path, threads: usize) -> Result<Executor, EncoderError> {
    let threads = threads.max(1);
    std::panic::catch_unwind(|| Executor::multithread_with_name(threads, "clipd-tract"))
        .map_err(|_| load_err(path, format!("cannot start {threads} encoder thread(s)")))
}

fn load_err(path: &Path, e: impl std::fmt::Display) -> EncoderError {
    EncoderError::Load {
        path: path.to_path_buf(),
        msg: format!("{e:#}"),
    }
}

/// What `Graph::load` needs to know about the graph it loads.
struct GraphSpec<'a> {
    path: &'a Path,
    /// The manifest field describing it (`image_encoder`, `text_encoder`), for errors.
    field: &'a str,
    spec: &'a EncoderSpec,
    /// Shape of one input item (without the batch axis).
    item_shape: Vec<usize>,
    dt: DatumType,
    embed_dim: usize,
}

/// Graphs at least this large go through the on-disk cache; smaller ones parse in milliseconds.
const CACHE_MIN_BYTES: u64 = 32 << 20;

/// The cache entry for `path` at `batch`, when caching is on and the graph is worth it.
fn cache_entry(bundle: &Bundle, path: &Path, batch: usize) -> Option<cache::Entry> {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if size < CACHE_MIN_BYTES {
        return None;
    }
    let dir = cache::default_dir()?;
    Some(cache::Entry::new(
        &dir,
        &bundle.manifest.name,
        &bundle.sha256,
        path,
        batch,
    ))
}

impl Graph {
    /// Load `g.path` for `lanes` concurrent runs of `opts.batch / lanes` items (rounded up),
    /// each lane with `opts.threads` kernel threads; through `cache` when given (see
    /// `cache.rs`): read from it when it holds the graph, else parsed and written to it.
    fn load(
        g: GraphSpec,
        opts: EncoderOptions,
        tuning: TractTuning,
        cache: Option<&cache::Entry>,
    ) -> Result<Graph, EncoderError> {
        let started = Instant::now();
        let path = g.path;
        let lanes = tuning.lanes.clamp(1, opts.batch.max(1));
        let batch = opts.batch.max(1).div_ceil(lanes);
        let cached = match cache.map(|c| c.load()) {
            Some(Ok(m)) => m,
            Some(Err(msg)) => {
                log::warn!("tract graph cache entry not used: {msg}; loading the ONNX file");
                None
            }
            None => None,
        };
        let from_cache = cached.is_some();
        let typed = match cached {
            Some(m) => m,
            None => {
                let typed = Self::parse_onnx(&g, batch)?;
                if let Some(c) = cache {
                    match c.store(&typed) {
                        Ok(()) => log::info!(
                            "{}: tract graph cached at {}",
                            path.display(),
                            c.tar().display()
                        ),
                        Err(msg) => log::warn!("tract graph not cached: {msg}"),
                    }
                }
                typed
            }
        };
        let analysed = started.elapsed();
        let out_fact = typed.output_fact(0).map_err(|e| load_err(path, e))?;
        let got: Option<Vec<usize>> = out_fact.shape.as_concrete().map(|s| s.to_vec());
        let embed_dim = g.embed_dim;
        if got.as_deref() != Some(&[batch, embed_dim][..]) {
            return Err(EncoderError::Graph {
                path: path.to_path_buf(),
                field: format!("{}.output.shape", g.field),
                msg: format!(
                    "graph output has shape {}, manifest says [batch, {embed_dim}] (embed_dim)",
                    got.map(|g| format!("{g:?}"))
                        .unwrap_or_else(|| format!("{:?}", out_fact.shape))
                ),
            });
        }
        let mut optimized = typed;
        optimized.declutter().map_err(|e| load_err(path, e))?;
        if tuning.dense {
            let n = dense::use_dense(&mut optimized).map_err(|e| load_err(path, e))?;
            if n > 0 {
                log::debug!("{}: {n} product(s) run as Dense", path.display());
            }
        }
        optimized.optimize().map_err(|e| load_err(path, e))?;
        if tuning.row_softmax {
            let n = softmax::use_row_softmax(&mut optimized).map_err(|e| load_err(path, e))?;
            if n > 0 {
                log::debug!("{}: {n} softmax node(s) run as RowSoftmax", path.display());
            }
        }
        let optimised = started.elapsed();
        // The executor is not baked into the plan: each run enters one around itself.
        let plan = optimized.into_runnable().map_err(|e| load_err(path, e))?;
        let solo = match tuning.executor {
            true => executor(path, opts.threads)?,
            false => Executor::SingleThread,
        };
        // One lane uses every thread; several lanes take one core each.
        let lanes = match lanes {
            1 => vec![solo.clone()],
            n => vec![Executor::SingleThread; n],
        };
        log::info!(
            "{}: tract plan for batch {} x {} lane(s), {} thread(s) for a batch of up to {}, \
             ready in {:.2} s ({} {:.2} s, optimise {:.2} s)",
            path.display(),
            batch,
            lanes.len(),
            opts.threads.max(1),
            batch,
            started.elapsed().as_secs_f64(),
            if from_cache {
                "read from cache"
            } else {
                "parse and analyse"
            },
            analysed.as_secs_f64(),
            (optimised - analysed).as_secs_f64(),
        );
        Ok(Graph {
            path: path.to_path_buf(),
            plan,
            batch,
            embed_dim,
            item_shape: g.item_shape,
            lanes,
            solo,
        })
    }

    /// Parse the ONNX file, check it against the manifest and fix its input to `batch` items.
    fn parse_onnx(g: &GraphSpec, batch: usize) -> Result<TypedModel, EncoderError> {
        let (path, field, spec, item_shape, dt) = (g.path, g.field, g.spec, &g.item_shape, g.dt);
        let graph_err = |sub: &str, msg: String| EncoderError::Graph {
            path: path.to_path_buf(),
            field: format!("{field}.{sub}"),
            msg,
        };
        // value_info (intermediate shapes, written by ONNX shape inference, e.g. in quantised
        // variants) names the symbolic batch, which clashes with the fixed batch set below;
        // tract infers those shapes itself.
        let mut model = tract_onnx::onnx()
            .with_ignore_value_info(true)
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
        full.extend_from_slice(item_shape);
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
        model.into_typed().map_err(|e| load_err(path, e))
    }

    /// Items one `run` accepts: the per-lane batch times the lanes.
    fn capacity(&self) -> usize {
        self.batch * self.lanes.len()
    }

    fn run<T: Datum + Copy + Default + Send + Sync>(
        &self,
        data: &[T],
        n: usize,
    ) -> Result<Vec<f32>, EncoderError> {
        if n > self.capacity() {
            return Err(EncoderError::BatchTooLarge {
                got: n,
                max: self.capacity(),
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
        if n <= self.batch {
            return self.run_lane(&self.solo, data, n);
        }
        // Frame-level parallelism: each lane takes the next `batch` items on its own thread.
        let chunks: Vec<&[T]> = data.chunks(self.batch * per).collect();
        let results: Vec<Result<Vec<f32>, EncoderError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunks
                .iter()
                .zip(&self.lanes)
                .map(|(chunk, lane)| {
                    scope.spawn(move || self.run_lane(lane, chunk, chunk.len() / per.max(1)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(EncoderError::Run {
                            path: self.path.clone(),
                            msg: "an encoder lane panicked".into(),
                        })
                    })
                })
                .collect()
        });
        let mut out = Vec::with_capacity(n * self.embed_dim);
        for r in results {
            out.extend(r?);
        }
        Ok(out)
    }

    /// Run the plan once on `n` ≤ `batch` items inside the executor `lane`.
    fn run_lane<T: Datum + Copy + Default>(
        &self,
        lane: &Executor,
        data: &[T],
        n: usize,
    ) -> Result<Vec<f32>, EncoderError> {
        let run_err = |e| self.run_err(e);
        let input = self.padded_input(data)?;
        let out =
            multithread_tract_scope(lane.clone(), || self.plan.run(tvec!(input.into_tvalue())))
                .map_err(run_err)?;
        let view = out[0].to_plain_array_view::<f32>().map_err(run_err)?;
        Ok(view.iter().take(n * self.embed_dim).copied().collect())
    }

    /// The plan's input tensor for up to `batch` items: the plan is specialised for a fixed
    /// batch, so a short batch is padded with zeros.
    fn padded_input<T: Datum + Copy + Default>(&self, data: &[T]) -> Result<Tensor, EncoderError> {
        let per: usize = self.item_shape.iter().product();
        let mut full = vec![self.batch];
        full.extend_from_slice(&self.item_shape);
        let mut buf = Vec::with_capacity(self.batch * per);
        buf.extend_from_slice(data);
        buf.resize(self.batch * per, T::default());
        Tensor::from_shape(&full, &buf).map_err(|e| self.run_err(e))
    }

    fn run_err(&self, e: TractError) -> EncoderError {
        EncoderError::Run {
            path: self.path.clone(),
            msg: format!("{e:#}"),
        }
    }
}

/// Time spent in one kind of operator over a profiled run (`TractImageEncoder::profile`).
#[derive(Debug, Clone)]
pub struct OpTime {
    /// tract's operator name after optimisation (e.g. `OptMatMul`, `Softmax`, `MoveAxis`).
    pub op: String,
    /// Wall time in the operator, summed over every node and run.
    pub total: std::time::Duration,
    /// Node evaluations counted in `total`.
    pub calls: usize,
}

impl Graph {
    /// Run the plan `runs` times on one lane with every thread, timing every node;
    /// per-operator totals, largest first. For tuning only: the per-node timing itself costs a
    /// little.
    fn profile(&self, data: &[f32], runs: usize) -> Result<Vec<OpTime>, EncoderError> {
        let run_err = |e| self.run_err(e);
        let per: usize = self.item_shape.iter().product();
        let input = self.padded_input(&data[..data.len().min(self.batch * per)])?;
        let mut totals: std::collections::HashMap<String, OpTime> = Default::default();
        // Per node as well, for the slowest-nodes listing at debug level.
        let mut per_node: std::collections::HashMap<usize, std::time::Duration> =
            Default::default();
        let mut state =
            tract_onnx::tract_core::plan::SimpleState::new(&self.plan).map_err(run_err)?;
        for _ in 0..runs.max(1) {
            let input = input.clone().into_tvalue();
            multithread_tract_scope(self.solo.clone(), || {
                state.run_plan_with_eval(tvec!(input), |ctx, op_state, node, inputs| {
                    let started = Instant::now();
                    let out = tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
                    let name = node.op().name().to_string();
                    let t = totals.entry(name.clone()).or_insert(OpTime {
                        op: name,
                        total: Default::default(),
                        calls: 0,
                    });
                    let spent = started.elapsed();
                    t.total += spent;
                    t.calls += 1;
                    *per_node.entry(node.id).or_default() += spent;
                    out
                })
            })
            .map_err(run_err)?;
        }
        if log::log_enabled!(log::Level::Debug) {
            let mut nodes: Vec<(usize, std::time::Duration)> = per_node.into_iter().collect();
            nodes.sort_by_key(|(_, t)| std::cmp::Reverse(*t));
            for (id, spent) in nodes.into_iter().take(24) {
                let node = self.plan.model().node(id);
                let info = node.op().info().unwrap_or_default().join(" | ");
                log::debug!(
                    "{:>8.2} ms/run  #{id} {} ({}): {info}",
                    spent.as_secs_f64() * 1e3 / runs.max(1) as f64,
                    node.op().name(),
                    node.name,
                );
            }
        }
        let mut v: Vec<OpTime> = totals.into_values().collect();
        v.sort_by_key(|o| std::cmp::Reverse(o.total));
        Ok(v)
    }
}

/// The bundle's image encoder on tract.
pub struct TractImageEncoder {
    graph: Graph,
    size: usize,
}

impl TractImageEncoder {
    /// Load with `opts.lanes` lanes (capped at the batch size): a batch larger than
    /// `opts.batch / lanes` (rounded up) is split into that many single-thread runs of one
    /// shared plan side by side; a smaller one runs once with `opts.threads` threads.
    pub fn load(bundle: &Bundle, opts: EncoderOptions) -> Result<Self, EncoderError> {
        Self::load_tuned(bundle, opts, TractStock::default())
    }

    /// As `load`, with tract's stock behaviour restored where `stock` says so: slower, kept to
    /// measure the difference (`clipd bench`).
    pub fn load_tuned(
        bundle: &Bundle,
        opts: EncoderOptions,
        stock: TractStock,
    ) -> Result<Self, EncoderError> {
        let tuning = TractTuning {
            lanes: opts.lanes,
            executor: !stock.no_executor,
            row_softmax: !stock.softmax,
            dense: !stock.matmul,
        };
        warn_if_int8(bundle);
        let m = &bundle.manifest;
        let s = m.image.size;
        let path = bundle.image_encoder_path();
        let lanes = tuning.lanes.clamp(1, opts.batch.max(1));
        let cache = cache_entry(bundle, &path, opts.batch.max(1).div_ceil(lanes));
        let graph = Graph::load(
            GraphSpec {
                path: &path,
                field: "image_encoder",
                spec: &m.image_encoder,
                item_shape: vec![3, s, s],
                dt: f32::datum_type(),
                embed_dim: m.embed_dim,
            },
            opts,
            tuning,
            cache.as_ref(),
        )?;
        Ok(TractImageEncoder { graph, size: s })
    }
}

/// The `int8` variant is ONNX Runtime's dynamic quantisation, which tract runs far slower than
/// the fp32 graph: said once per process, with the fix.
fn warn_if_int8(bundle: &Bundle) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if bundle.variant() == Some("int8") {
        WARNED.call_once(|| {
            log::warn!(
                "engine.variant = \"int8\" on tract: tract runs dynamically quantised int8 graphs far slower than fp32; use backend = \"ort\" for int8, or drop engine.variant (docs/performance.md)"
            )
        });
    }
}

impl TractImageEncoder {
    /// Where the plan spends its time, per operator kind, over `runs` runs of one batch made
    /// from `pixels` (`clipd bench --tract-profile`).
    pub fn profile(&self, pixels: &[f32], runs: usize) -> Result<Vec<OpTime>, EncoderError> {
        self.graph.profile(pixels, runs)
    }
}

impl ImageEncoder for TractImageEncoder {
    fn batch_size(&self) -> usize {
        self.graph.capacity()
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
        let path = bundle.text_encoder_path();
        let cache = cache_entry(bundle, &path, opts.batch.max(1));
        let graph = Graph::load(
            GraphSpec {
                path: &path,
                field: "text_encoder",
                spec: &m.text_encoder,
                item_shape: vec![ctx],
                dt: i64::datum_type(),
                embed_dim: m.embed_dim,
            },
            opts,
            TractTuning::default(),
            cache.as_ref(),
        )?;
        Ok(TractTextEncoder {
            graph,
            context: ctx,
        })
    }
}

impl TextEncoder for TractTextEncoder {
    fn batch_size(&self) -> usize {
        self.graph.capacity()
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
    use crate::encoder::l2_normalize_rows;
    use crate::npy;
    use crate::preprocess::{DecodeLimits, Transform};

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    /// The first `n` fixture images, preprocessed, with their ONNX Runtime reference embeddings.
    fn fixtures(bundle: &Bundle, n: usize) -> (Vec<f32>, Vec<f32>) {
        let fx = root().join("tests/fixtures");
        let names: Vec<String> =
            serde_json::from_slice(&std::fs::read(fx.join("images.json")).unwrap()).unwrap();
        let t = Transform::from_spec(&bundle.manifest.image);
        let mut px = Vec::new();
        for name in &names[..n] {
            px.extend(
                t.load(&fx.join("images").join(name), &DecodeLimits::default())
                    .unwrap(),
            );
        }
        let want: npy::Array<f32> = npy::read(&fx.join("image_embeds.npy")).unwrap();
        let d = bundle.manifest.embed_dim;
        (px, want.data[..n * d].to_vec())
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (na * nb)
    }

    #[test]
    fn lanes_split_a_batch_and_agree_with_one_plan_and_the_reference() {
        let bundle = Bundle::open(&root().join("models/tiny-clip")).unwrap();
        let d = bundle.manifest.embed_dim;
        let opts = |lanes| EncoderOptions {
            batch: 4,
            threads: 2,
            lanes,
        };
        let mut one = TractImageEncoder::load(&bundle, opts(1)).unwrap();
        let mut two = TractImageEncoder::load(&bundle, opts(2)).unwrap();
        assert_eq!(one.batch_size(), 4);
        assert_eq!(two.batch_size(), 4);
        assert_eq!(one.graph.lanes.len(), 1);
        assert!(matches!(one.graph.lanes[0], Executor::MultiThread(_)));
        assert_eq!(two.graph.lanes.len(), 2);
        assert_eq!(two.graph.batch, 2);
        // Lanes take one core each; a batch that fits one lane gets every thread.
        assert!(two
            .graph
            .lanes
            .iter()
            .all(|l| matches!(l, Executor::SingleThread)));
        assert!(matches!(two.graph.solo, Executor::MultiThread(_)));
        // 3 items: the first lane takes two, the second one (zero-padded); 2 and 1 items fit
        // one lane and run once on both threads.
        for n in [4, 3, 2, 1] {
            let (px, want) = fixtures(&bundle, n);
            let mut a = one.encode(&px, n).unwrap();
            let mut b = two.encode(&px, n).unwrap();
            assert_eq!(a.len(), n * d);
            assert_eq!(b.len(), n * d);
            let diff = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(diff <= 1e-4, "n={n}: lanes differ from one plan by {diff}");
            l2_normalize_rows(&mut a, d);
            l2_normalize_rows(&mut b, d);
            for i in 0..n {
                let c = cosine(&b[i * d..(i + 1) * d], &want[i * d..(i + 1) * d]);
                assert!(c >= 0.999, "n={n} item {i}: cosine {c} vs reference");
            }
        }
    }

    #[test]
    fn profile_times_every_planned_node_of_every_run() {
        let bundle = Bundle::open(&root().join("models/tiny-clip")).unwrap();
        let enc = TractImageEncoder::load(
            &bundle,
            EncoderOptions {
                batch: 2,
                threads: 1,
                lanes: 1,
            },
        )
        .unwrap();
        let (px, _) = fixtures(&bundle, 2);
        let nodes = enc.graph.plan.order_without_consts().len();
        for runs in [1, 3] {
            let ops = enc.profile(&px, runs).unwrap();
            let calls: usize = ops.iter().map(|o| o.calls).sum();
            // Every node the plan evaluates, once per run (constants may be folded in).
            assert!(calls % runs == 0, "{calls} calls over {runs} runs");
            assert!(
                calls / runs >= nodes,
                "{} of {nodes} nodes timed",
                calls / runs
            );
            assert!(
                ops.windows(2).all(|w| w[0].total >= w[1].total),
                "not sorted"
            );
            let mut names: Vec<&str> = ops.iter().map(|o| o.op.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), ops.len(), "one row per operator kind");
            assert!(
                ops.iter().any(|o| o.op.contains("MatMul")),
                "no matrix product among {names:?}"
            );
        }
    }

    /// Load the tiny image tower for `batch` as shipped and with `stock`'s parts of tract
    /// restored, check that both give the same embeddings, and return both plans' operator
    /// names. (Both towers as shipped are also held to the reference in tests/parity.rs.)
    fn agrees_with_stock_on_a_whole_tower(
        stock: TractStock,
        batch: usize,
    ) -> (Vec<String>, Vec<String>) {
        let bundle = Bundle::open(&root().join("models/tiny-clip")).unwrap();
        let opts = EncoderOptions {
            batch,
            threads: 1,
            lanes: 1,
        };
        let mut ours = TractImageEncoder::load(&bundle, opts).unwrap();
        let mut theirs = TractImageEncoder::load_tuned(&bundle, opts, stock).unwrap();
        let ops = |g: &Graph| -> Vec<String> {
            g.plan
                .order_without_consts()
                .iter()
                .map(|&n| g.plan.model().node(n).op().name().to_string())
                .collect()
        };
        let (px, _) = fixtures(&bundle, batch);
        let a = ours.encode(&px, batch).unwrap();
        let b = theirs.encode(&px, batch).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
        assert!(cosine(&a, &b) > 0.999_999);
        (ops(&ours.graph), ops(&theirs.graph))
    }

    /// The row softmax swap on a whole model: the same embeddings as with tract's own softmax,
    /// and the swap happens wherever tract would take its per-row path.
    #[test]
    fn row_softmax_matches_tracts_own_on_a_whole_tower() {
        let stock = TractStock {
            softmax: true,
            ..TractStock::default()
        };
        let (ours_ops, theirs_ops) = agrees_with_stock_on_a_whole_tower(stock, 2);
        let swapped = ours_ops.iter().filter(|o| *o == "RowSoftmax").count();
        let stock_softmaxes = theirs_ops.iter().filter(|o| *o == "Softmax").count();
        assert!(stock_softmaxes > 0, "no softmax in {theirs_ops:?}");
        assert!(!theirs_ops.iter().any(|o| o == "RowSoftmax"));
        if tract_linalg::routines::softmax_rows_f32().is_none() {
            assert_eq!(
                swapped, stock_softmaxes,
                "every softmax swapped: {ours_ops:?}"
            );
        }
    }

    /// The dense-layer swap on a whole model: the same embeddings as with tract's own matrix
    /// products, and every linear layer swapped where the CPU has AVX2 and FMA, at batch 1
    /// (where tract folds the `Reshape`s around each `Gemm` into the product, leaving a unit
    /// axis that only the activation has) as at batch 2.
    #[test]
    fn dense_layers_match_tracts_own_on_a_whole_tower() {
        let stock = TractStock {
            matmul: true,
            ..TractStock::default()
        };
        for batch in [1, 2] {
            let (ours_ops, theirs_ops) = agrees_with_stock_on_a_whole_tower(stock, batch);
            let count = |ops: &[String], name: &str| ops.iter().filter(|o| *o == name).count();
            let dense = count(&ours_ops, "Dense");
            let blocks = count(&theirs_ops, "RowSoftmax") + count(&theirs_ops, "Softmax");
            assert!(blocks > 0, "no attention in {theirs_ops:?}");
            assert_eq!(count(&theirs_ops, "Dense"), 0);
            if dense::available() {
                // Every linear layer: 4 per block (qkv, output, MLP in and out) and the
                // projection; attention's 2 products of two activations per block and the
                // patch embedding (a convolution: im2col and a product) stay tract's.
                assert_eq!(dense, 4 * blocks + 1, "batch {batch}: {ours_ops:?}");
                assert_eq!(
                    count(&ours_ops, "OptMatMul"),
                    2 * blocks + 1,
                    "batch {batch}"
                );
                assert_eq!(
                    count(&ours_ops, "OptMatMul") + dense,
                    count(&theirs_ops, "OptMatMul")
                );
            } else {
                assert_eq!(dense, 0);
            }
        }
    }

    #[test]
    fn lanes_refuse_more_items_than_they_hold_and_cap_at_the_batch() {
        let bundle = Bundle::open(&root().join("models/tiny-clip")).unwrap();
        let opts = EncoderOptions {
            batch: 2,
            threads: 1,
            lanes: 5,
        };
        // More lanes than items in a batch: one item per lane.
        let mut enc = TractImageEncoder::load(&bundle, opts).unwrap();
        assert_eq!(enc.graph.lanes.len(), 2);
        assert_eq!(enc.batch_size(), 2);
        let (px, _) = fixtures(&bundle, 3);
        let err = enc.encode(&px, 3).unwrap_err();
        assert!(
            matches!(err, EncoderError::BatchTooLarge { got: 3, max: 2 }),
            "{err}"
        );
        let err = enc.encode(&px[..10], 2).unwrap_err();
        assert!(matches!(err, EncoderError::InputLength { .. }), "{err}");
    }

    /// The tiny bundle's image graph at batch 2, through `entry`.
    fn load_via(bundle: &Bundle, entry: &cache::Entry) -> Graph {
        let s = bundle.manifest.image.size;
        Graph::load(
            GraphSpec {
                path: &bundle.image_encoder_path(),
                field: "image_encoder",
                spec: &bundle.manifest.image_encoder,
                item_shape: vec![3, s, s],
                dt: f32::datum_type(),
                embed_dim: bundle.manifest.embed_dim,
            },
            EncoderOptions {
                batch: 2,
                threads: 1,
                lanes: 1,
            },
            TractTuning::default(),
            Some(entry),
        )
        .unwrap()
    }

    #[test]
    fn graph_cache_round_trips_and_is_keyed_by_the_bundle_hash() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = Bundle::open(&root().join("models/tiny-clip")).unwrap();
        let path = bundle.image_encoder_path();
        let entry = cache::Entry::new(dir.path(), "tiny", &bundle.sha256, &path, 2);
        assert!(entry.load().unwrap().is_none(), "empty cache");
        let (px, _) = fixtures(&bundle, 2);
        let fresh = load_via(&bundle, &entry).run(&px, 2).unwrap();
        assert!(entry.tar().is_file(), "a miss writes the entry");
        assert!(entry.load().unwrap().is_some(), "and it reads back");
        let cached = load_via(&bundle, &entry).run(&px, 2).unwrap();
        let diff = fresh
            .iter()
            .zip(&cached)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff <= 1e-6, "cached graph differs by {diff}");

        // Another bundle hash (a changed bundle) misses, and its entry replaces the stale one.
        let other_sha = "f".repeat(64);
        let changed = cache::Entry::new(dir.path(), "tiny", &other_sha, &path, 2);
        assert!(
            changed.load().unwrap().is_none(),
            "a changed bundle must miss"
        );
        let _ = load_via(&bundle, &changed);
        assert!(changed.tar().is_file());
        assert!(!entry.tar().exists(), "the stale entry is pruned");
        // Another batch is another entry, and is not pruned by this one.
        let b4 = cache::Entry::new(dir.path(), "tiny", &other_sha, &path, 4);
        assert_ne!(b4.tar(), changed.tar());
        // A variant's graph (another file stem) is another entry.
        let int8 = path.with_file_name("image_encoder.int8.onnx");
        let int8 = cache::Entry::new(dir.path(), "tiny", &other_sha, &int8, 2);
        assert_ne!(int8.tar(), changed.tar());
    }

    #[test]
    fn damaged_graph_cache_entry_is_refused_then_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = Bundle::open(&root().join("models/tiny-clip")).unwrap();
        let entry = cache::Entry::new(
            dir.path(),
            "tiny",
            &bundle.sha256,
            &bundle.image_encoder_path(),
            2,
        );
        let (px, _) = fixtures(&bundle, 2);
        let want = load_via(&bundle, &entry).run(&px, 2).unwrap();
        // Flip one byte in the middle (inside the weights), then truncate: both are refused.
        let mut bytes = std::fs::read(entry.tar()).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        std::fs::write(entry.tar(), &bytes).unwrap();
        let err = entry.load().unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        std::fs::write(entry.tar(), &bytes[..mid]).unwrap();
        assert!(entry.load().is_err(), "a truncated entry must be refused");
        // Loading through it falls back to the ONNX file and rewrites a good entry.
        let got = load_via(&bundle, &entry).run(&px, 2).unwrap();
        assert_eq!(got, want);
        assert!(entry.load().unwrap().is_some(), "the entry was rebuilt");
    }

    #[test]
    fn text_graph_survives_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = Bundle::open(&root().join("models/tiny-clip")).unwrap();
        let m = &bundle.manifest;
        let path = bundle.text_encoder_path();
        let entry = cache::Entry::new(dir.path(), "tiny", &bundle.sha256, &path, 2);
        let load = || {
            Graph::load(
                GraphSpec {
                    path: &path,
                    field: "text_encoder",
                    spec: &m.text_encoder,
                    item_shape: vec![m.text.context_length],
                    dt: i64::datum_type(),
                    embed_dim: m.embed_dim,
                },
                EncoderOptions {
                    batch: 2,
                    threads: 1,
                    lanes: 1,
                },
                TractTuning::default(),
                Some(&entry),
            )
            .unwrap()
        };
        let ctx = m.text.context_length;
        // Two token rows: SOT, a few ids, EOT (the largest id), padding.
        let mut ids = vec![0i64; 2 * ctx];
        for (row, words) in [[320i64, 1125, 539], [1929, 14, 320]].iter().enumerate() {
            ids[row * ctx] = 49406;
            ids[row * ctx + 1..row * ctx + 4].copy_from_slice(words);
            ids[row * ctx + 4] = 49407;
        }
        let fresh = load().run(&ids, 2).unwrap();
        assert!(entry.load().unwrap().is_some());
        let cached = load().run(&ids, 2).unwrap();
        assert_eq!(fresh, cached);
    }
}
