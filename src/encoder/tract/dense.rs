//! Products of an activation with constant weights ("dense" layers) for x86-64 with AVX2 + FMA.
//!
//! Nine tenths of a ViT's time is spent in its linear layers: `x · W (+ b)` with `W` a constant.
//! On x86-64, tract 0.23.9 runs them through its generic tile machinery: weights packed in
//! 16-row panels, the activation packed by a separate node before every product, each 16 × 6
//! tile dispatched through an interpreter of fused operations and stored one float at a time.
//! On ViT-B-32's MLP shape (400 × 768 by 768 × 3072, one core) that reaches about 78 GFLOP/s
//! where ONNX Runtime's MLAS reaches about 88.
//!
//! [`Dense`] does the same arithmetic with less around it: the weights are repacked once, at
//! load, into panels of 16 output columns (`[k][16]`, contiguous); the activation is read in
//! place (its contracted axes are trailing, so every row is a contiguous run of `k` floats);
//! a register tile of 6 rows × 16 columns accumulates over the whole of `k` while its weight
//! panel stays in cache; the bias is added and the tile stored with full-width stores. Rows may
//! land anywhere in the output (an einsum such as `bmak,nak->mbn` transposes its row axes), so
//! each row's output offset comes from the output's strides. About 92 GFLOP/s on the same
//! shape and core: the product alone is 15% faster than tract's, and the separate packing node
//! disappears.
//!
//! At batch 1 the weights stream from memory once per image, and the hardware prefetcher does
//! not cross from one panel to the next in time: the first row tile of each panel prefetches
//! the next panel towards L2 (one line per step), which brought one core from 0.88× to 0.97×
//! of ONNX Runtime at batch 1 and left larger batches as they were (docs/performance.md).
//!
//! [`use_dense`] swaps in [`Dense`] for exactly the einsums it can run (f32, one constant
//! operand, the contracted axes trailing in the activation, the output column axis last), with
//! the bias `Add` that follows, in the decluttered model before tract's code generation. It is
//! applied only where the CPU has AVX2 and FMA; elsewhere (aarch64 boards: tract has tuned NEON
//! kernels there) tract keeps its own. The graph cache holds the graph before this step, so it
//! never serialises this op.

use std::sync::Arc;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ndarray::Ix2;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::math::Add;

/// Output columns per weight panel: two 8-lane AVX registers.
const NR: usize = 16;
/// Rows per register tile: 6 × 2 accumulators, 2 weight registers and 1 broadcast use 15 of
/// the 16 AVX registers.
const MR: usize = 6;

/// Whether this CPU can run [`Dense`].
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Weights `[k][n]` repacked as `ceil(n / 16)` panels of `[k][16]` floats, zero past column
/// `n`, so that one panel is one contiguous stream for the kernel.
#[derive(Debug)]
struct Panels {
    k: usize,
    n: usize,
    data: Vec<f32>,
    /// The bias, zero-padded to whole panels (zeros when the layer has none).
    bias: Vec<f32>,
}

impl Panels {
    fn pack(w: tract_onnx::tract_core::ndarray::ArrayView2<f32>, bias: Option<&[f32]>) -> Panels {
        let (k, n) = w.dim();
        let panels = n.div_ceil(NR);
        let mut data = vec![0f32; panels * k * NR];
        for (p, panel) in data.chunks_exact_mut(k * NR).enumerate() {
            let cols = (p * NR)..(n.min(p * NR + NR));
            for (kk, dst) in panel.chunks_exact_mut(NR).enumerate() {
                for (d, col) in dst.iter_mut().zip(cols.clone()) {
                    *d = w[(kk, col)];
                }
            }
        }
        let mut padded = vec![0f32; panels * NR];
        if let Some(b) = bias {
            padded[..n].copy_from_slice(b);
        }
        Panels {
            k,
            n,
            data,
            bias: padded,
        }
    }

    fn panel_count(&self) -> usize {
        self.n.div_ceil(NR)
    }
}

/// `out[rows…, n] = x[rows…, k] · W[k, n] + b`, the rows laid out in the output as the einsum it
/// replaces had them. See the module documentation.
#[derive(Debug, Clone)]
pub struct Dense {
    weights: Arc<Panels>,
    /// Input axes contracted: the trailing `contracted` axes of the input, `k` floats in all.
    contracted: usize,
    /// The output's (concrete) shape.
    out_shape: TVec<usize>,
    /// For each row axis of the input (its leading axes), in input order, its output axis;
    /// `None` for a unit axis the output drops (a batch of one, once tract has folded the
    /// `Reshape` around a `Gemm` into the product).
    row_axes_out: TVec<Option<usize>>,
}

impl PartialEq for Dense {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.weights, &other.weights)
            && self.contracted == other.contracted
            && self.out_shape == other.out_shape
            && self.row_axes_out == other.row_axes_out
    }
}

impl Eq for Dense {}

impl Op for Dense {
    fn name(&self) -> StaticName {
        "Dense".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "k:{} n:{} output {:?}, row axes to {:?}",
            self.weights.k, self.weights.n, self.out_shape, self.row_axes_out
        )])
    }

    op_as_typed_op!();
}

impl Dense {
    /// Each input row's offset in the output, in input row order.
    fn row_offsets(&self, input_shape: &[usize]) -> TractResult<Vec<usize>> {
        let row_dims = &input_shape[..input_shape.len() - self.contracted];
        let strides = Tensor::natural_strides(&self.out_shape);
        let rows: usize = row_dims.iter().product();
        let mut offsets = Vec::with_capacity(rows);
        let mut index = vec![0usize; row_dims.len()];
        for _ in 0..rows {
            let offset = index
                .iter()
                .zip(&self.row_axes_out)
                .filter_map(|(i, axis)| axis.map(|axis| i * strides[axis] as usize))
                .sum();
            offsets.push(offset);
            // Row-major odometer over the row axes.
            for (i, dim) in index.iter_mut().zip(row_dims).rev() {
                *i += 1;
                if *i < *dim {
                    break;
                }
                *i = 0;
            }
        }
        Ok(offsets)
    }
}

impl EvalOp for Dense {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let (k, n) = (self.weights.k, self.weights.n);
        ensure!(
            x.datum_type() == f32::datum_type(),
            "Dense expects f32, got {:?}",
            x.datum_type()
        );
        ensure!(available(), "Dense needs a CPU with AVX2 and FMA");
        let rank = x.rank();
        ensure!(
            rank >= self.contracted
                && x.shape()[rank - self.contracted..]
                    .iter()
                    .product::<usize>()
                    == k
                && rank - self.contracted == self.row_axes_out.len(),
            "Dense expects an input of {} row axes and {} contracted ones ({k} values), got {:?}",
            self.row_axes_out.len(),
            self.contracted,
            x.shape()
        );
        let offsets = self.row_offsets(x.shape())?;
        ensure!(
            offsets.len() * n == self.out_shape.iter().product::<usize>(),
            "Dense: input {:?} does not fill output {:?}",
            x.shape(),
            self.out_shape
        );
        // Every element is written below: each row's offset, each of its n columns.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&self.out_shape)? };
        {
            let xv = x.try_as_plain_ram()?;
            let xs = xv.as_slice::<f32>()?;
            let mut ov = out.try_as_plain_ram_mut()?;
            let os = ov.as_slice_mut::<f32>()?;
            run(&self.weights, xs, &offsets, os);
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for Dense {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type());
        Ok(tvec!(f32::fact(&*self.out_shape)))
    }

    as_op!();
}

/// A raw output pointer shared by the threads, each writing its own panels' columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the threads write disjoint column ranges of the output (see `run`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// All rows by all panels; the panels split across the executor's threads.
fn run(w: &Panels, x: &[f32], offsets: &[usize], out: &mut [f32]) {
    let panels = w.panel_count();
    let out = OutPtr(out.as_mut_ptr());
    let threads = match tract_linalg::multithread::current_tract_executor() {
        tract_linalg::multithread::Executor::MultiThread(pool) => {
            Some(pool).filter(|p| p.current_num_threads() > 1)
        }
        _ => None,
    };
    match threads {
        Some(pool) => {
            use rayon::prelude::*;
            let chunks = (4 * pool.current_num_threads()).min(panels).max(1);
            let per = panels.div_ceil(chunks);
            pool.install(|| {
                (0..chunks).into_par_iter().for_each(|c| {
                    let range = (c * per)..panels.min(c * per + per);
                    // SAFETY: `range`s are disjoint, so are the columns they write.
                    unsafe { run_panels(w, x, offsets, out, range) }
                })
            });
        }
        None => unsafe { run_panels(w, x, offsets, out, 0..panels) },
    }
}

/// Every row through the panels in `range`: for each panel (kept in cache), every row tile.
///
/// # Safety
/// `out` must hold every `offsets[r] + n` (checked by `Dense::eval`), `x` every row's `k`
/// floats, the CPU must have AVX2 and FMA, and no other thread may write these panels' columns.
unsafe fn run_panels(
    w: &Panels,
    x: &[f32],
    offsets: &[usize],
    out: OutPtr,
    range: std::ops::Range<usize>,
) {
    let (k, n) = (w.k, w.n);
    let rows = offsets.len();
    debug_assert!(x.len() >= rows * k);
    let end = range.end;
    for p in range {
        let panel = unsafe { w.data.as_ptr().add(p * k * NR) };
        // The next panel, fetched towards L2 while the first tile works on this one: at small
        // batches the weights stream from memory once per run, and the hardware prefetcher
        // does not cross into the next panel soon enough.
        let next = (p + 1 < end).then(|| unsafe { panel.add(k * NR) });
        let bias = unsafe { w.bias.as_ptr().add(p * NR) };
        let cols = NR.min(n - p * NR);
        let mut r = 0;
        while r < rows {
            let tile_rows = MR.min(rows - r);
            let mut dst = [std::ptr::null_mut::<f32>(); MR];
            for (d, off) in dst.iter_mut().zip(&offsets[r..r + tile_rows]) {
                *d = unsafe { out.0.add(off + p * NR) };
            }
            let xr = unsafe { x.as_ptr().add(r * k) };
            let prefetch = if r == 0 { next } else { None };
            unsafe { tile(tile_rows, k, xr, panel, bias, &dst, cols, prefetch) };
            r += tile_rows;
        }
    }
}

/// One tile of `rows` (1 to 6) rows by one panel.
///
/// # Safety
/// As [`run_panels`]; `dst[..rows]` are the rows' first output column of this panel.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    rows: usize,
    k: usize,
    x: *const f32,
    panel: *const f32,
    bias: *const f32,
    dst: &[*mut f32; MR],
    cols: usize,
    prefetch: Option<*const f32>,
) {
    #[cfg(target_arch = "x86_64")]
    unsafe {
        let pf = prefetch.unwrap_or(std::ptr::null());
        match (rows, prefetch.is_some()) {
            (6, false) => avx2::tile::<6, false>(k, x, panel, bias, dst, cols, pf),
            (6, true) => avx2::tile::<6, true>(k, x, panel, bias, dst, cols, pf),
            (5, false) => avx2::tile::<5, false>(k, x, panel, bias, dst, cols, pf),
            (5, true) => avx2::tile::<5, true>(k, x, panel, bias, dst, cols, pf),
            (4, false) => avx2::tile::<4, false>(k, x, panel, bias, dst, cols, pf),
            (4, true) => avx2::tile::<4, true>(k, x, panel, bias, dst, cols, pf),
            (3, false) => avx2::tile::<3, false>(k, x, panel, bias, dst, cols, pf),
            (3, true) => avx2::tile::<3, true>(k, x, panel, bias, dst, cols, pf),
            (2, false) => avx2::tile::<2, false>(k, x, panel, bias, dst, cols, pf),
            (2, true) => avx2::tile::<2, true>(k, x, panel, bias, dst, cols, pf),
            (_, false) => avx2::tile::<1, false>(k, x, panel, bias, dst, cols, pf),
            (_, true) => avx2::tile::<1, true>(k, x, panel, bias, dst, cols, pf),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // Unreachable: `use_dense` never plants the op without `available()`, and `eval`
        // checks it again.
        let _ = (rows, k, x, panel, bias, dst, cols, prefetch);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// `R` consecutive input rows (stride `k`) times one `[k][16]` panel, plus the bias; the
    /// first `cols` columns stored at `dst[r]`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `x` holds `R * k` floats, `panel` `k * 16`, `bias` 16, and
    /// each `dst[r]` (r < R) `cols` writable floats. With `PF`, `next` is another `k * 16`
    /// panel, one cache line of which is prefetched per step.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const R: usize, const PF: bool>(
        k: usize,
        x: *const f32,
        panel: *const f32,
        bias: *const f32,
        dst: &[*mut f32; MR],
        cols: usize,
        next: *const f32,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for p in 0..k {
            if PF {
                // 16 floats are one 64-byte line: step p fetches the next panel's row p.
                unsafe { _mm_prefetch::<_MM_HINT_T1>(next.add(p * NR) as *const i8) };
            }
            let (w0, w1) = unsafe {
                (
                    _mm256_loadu_ps(panel.add(p * NR)),
                    _mm256_loadu_ps(panel.add(p * NR + 8)),
                )
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                let v = unsafe { _mm256_broadcast_ss(&*x.add(r * k + p)) };
                acc[0] = _mm256_fmadd_ps(w0, v, acc[0]);
                acc[1] = _mm256_fmadd_ps(w1, v, acc[1]);
            }
        }
        let (b0, b1) = unsafe { (_mm256_loadu_ps(bias), _mm256_loadu_ps(bias.add(8))) };
        for (acc, &d) in acc.iter().zip(dst.iter()) {
            let (v0, v1) = (_mm256_add_ps(acc[0], b0), _mm256_add_ps(acc[1], b1));
            if cols == NR {
                unsafe {
                    _mm256_storeu_ps(d, v0);
                    _mm256_storeu_ps(d.add(8), v1);
                }
            } else {
                let mut full = [0f32; NR];
                unsafe {
                    _mm256_storeu_ps(full.as_mut_ptr(), v0);
                    _mm256_storeu_ps(full.as_mut_ptr().add(8), v1);
                    std::ptr::copy_nonoverlapping(full.as_ptr(), d, cols);
                }
            }
        }
    }
}

/// What [`use_dense`] found to replace: the activation, the operator, and the outlet (the
/// einsum's, or its bias `Add`'s) whose consumers it takes over.
struct Candidate {
    x: OutletId,
    op: Dense,
    replaces: OutletId,
}

/// The einsum at `id` as a [`Dense`], when it is one (see the module documentation).
fn candidate(model: &TypedModel, id: usize) -> TractResult<Option<Candidate>> {
    let node = model.node(id);
    let Some(einsum) = node.op_as::<EinSum>() else {
        return Ok(None);
    };
    let f32_dt = f32::datum_type();
    if einsum.operating_dt != f32_dt || einsum.q_params.is_some() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let facts = [
        model.outlet_fact(node.inputs[0])?,
        model.outlet_fact(node.inputs[1])?,
    ];
    let (ix, iw) = match (facts[0].konst.is_some(), facts[1].konst.is_some()) {
        (false, true) => (0, 1),
        (true, false) => (1, 0),
        _ => return Ok(None),
    };
    let (xf, wf) = (facts[ix], facts[iw]);
    let out_fact = model.outlet_fact(OutletId::new(id, 0))?;
    let Some(weights) = wf.konst.clone() else {
        return Ok(None);
    };
    let (Some(x_shape), Some(out_shape)) = (xf.shape.as_concrete(), out_fact.shape.as_concrete())
    else {
        return Ok(None);
    };
    if xf.datum_type != f32_dt || weights.datum_type() != f32_dt || out_fact.datum_type != f32_dt {
        return Ok(None);
    }
    let (x_rank, w_rank, out_rank) = (x_shape.len(), weights.rank(), out_shape.len());
    // (x position, w position) of each contracted axis; the column axis; the row axes.
    let mut contracted: Vec<(usize, usize)> = vec![];
    // (w position, output position)
    let mut column: Option<(usize, usize)> = None;
    // (x position, output position, or none for a unit axis the output drops)
    let mut rows: Vec<(usize, Option<usize>)> = vec![];
    for axis in einsum.axes.iter_all_axes() {
        let (in_x, in_w, out) = (
            &axis.inputs[ix][..],
            &axis.inputs[iw][..],
            &axis.outputs[0][..],
        );
        if in_x.len() > 1 || in_w.len() > 1 || out.len() > 1 {
            return Ok(None); // a diagonal
        }
        match (in_x.first(), in_w.first(), out.first()) {
            (Some(&xp), Some(&wp), None) => contracted.push((xp, wp)),
            (None, Some(&wp), Some(&op)) if column.is_none() => column = Some((wp, op)),
            (Some(&xp), None, Some(&op)) => rows.push((xp, Some(op))),
            (Some(&xp), None, None) if x_shape[xp] == 1 => rows.push((xp, None)),
            (None, None, Some(&op)) if out_shape[op] == 1 => {}
            _ => return Ok(None), // a batch axis, a sum over one operand, a second column axis
        }
    }
    let Some((w_col, out_col)) = column else {
        return Ok(None);
    };
    contracted.sort_unstable();
    rows.sort_unstable();
    let trailing = contracted
        .iter()
        .enumerate()
        .all(|(i, (xp, _))| *xp == x_rank - contracted.len() + i);
    if contracted.is_empty()
        || !trailing
        || w_rank != contracted.len() + 1
        || out_col != out_rank - 1
        || rows.len() + contracted.len() != x_rank
    {
        return Ok(None);
    }
    // The weights as [k][n], k in the activation's order of the contracted axes.
    let mut perm: Vec<usize> = contracted.iter().map(|(_, wp)| *wp).collect();
    perm.push(w_col);
    let k: usize = contracted.iter().map(|(xp, _)| x_shape[*xp]).product();
    let n = out_shape[out_col];
    let view = weights.to_plain_array_view::<f32>()?.permuted_axes(perm);
    let view = view.as_standard_layout();
    let w2 = view
        .to_shape((k, n))
        .map_err(|e| format_err!("{e}"))?
        .into_dimensionality::<Ix2>()?;

    // A bias `Add` right after, with a constant of n values along the column axis, is fused.
    let mut replaces = OutletId::new(id, 0);
    let mut bias: Option<Vec<f32>> = None;
    let succs = &node.outputs[0].successors;
    let is_output = model.output_outlets()?.contains(&replaces);
    if let (1, false) = (succs.len(), is_output) {
        let add = model.node(succs[0].node);
        if let Some(b) = bias_of(model, add, replaces, n, out_shape)? {
            bias = Some(b);
            replaces = OutletId::new(add.id, 0);
        }
    }
    let op = Dense {
        weights: Arc::new(Panels::pack(w2.view(), bias.as_deref())),
        contracted: contracted.len(),
        out_shape: out_shape.into(),
        row_axes_out: rows.iter().map(|(_, op)| *op).collect(),
    };
    Ok(Some(Candidate {
        x: node.inputs[ix],
        op,
        replaces,
    }))
}

/// The bias `add` adds to `product` (the n-column output of a product of shape `out_shape`),
/// when `add` is an f32 `Add` of a constant that varies along the last axis only.
fn bias_of(
    model: &TypedModel,
    add: &TypedNode,
    product: OutletId,
    n: usize,
    out_shape: &[usize],
) -> TractResult<Option<Vec<f32>>> {
    let Some(bin) = add.op_as::<TypedBinOp>() else {
        return Ok(None);
    };
    if !bin.0.is::<Add>() || bin.1.is_some_and(|dt| dt != f32::datum_type()) {
        return Ok(None);
    }
    let Some(other) = add.inputs.iter().find(|i| **i != product) else {
        return Ok(None);
    };
    if add.inputs.len() != 2 || add.inputs.iter().filter(|i| **i == product).count() != 1 {
        return Ok(None);
    }
    let Some(b) = model.outlet_fact(*other)?.konst.clone() else {
        return Ok(None);
    };
    let add_out = model.outlet_fact(OutletId::new(add.id, 0))?;
    let shape = b.shape();
    let along_last = shape.last() == Some(&n) && shape.iter().rev().skip(1).all(|d| *d == 1);
    if b.datum_type() != f32::datum_type()
        || !along_last
        || shape.len() > out_shape.len()
        || add_out.shape.as_concrete() != Some(out_shape)
    {
        return Ok(None);
    }
    Ok(Some(b.try_as_plain_ram()?.as_slice::<f32>()?.to_vec()))
}

/// Replace every einsum of the decluttered `model` that [`Dense`] can run, with its bias `Add`
/// where there is one. Returns how many were replaced; 0 where the CPU lacks AVX2 or FMA. The
/// replaced weights are freed as each layer is repacked, so the model never holds both.
pub fn use_dense(model: &mut TypedModel) -> TractResult<usize> {
    if !available() {
        return Ok(0);
    }
    let mut replaced = 0;
    for id in model.eval_order()? {
        let Some(c) = candidate(model, id)? else {
            continue;
        };
        let name = format!("{}.dense", model.node(id).name);
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, c.x)?;
        let out = patch.wire_node(name, c.op, &[x])?[0];
        patch.shunt_outside(model, c.replaces, out)?;
        patch.apply(model)?;
        replaced += 1;
    }
    if replaced > 0 {
        model.compact()?;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ndarray::ArrayD;
    use tract_onnx::tract_core::ops::konst::Const;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = crate::rng::Rng::new(seed);
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        ArrayD::from_shape_vec(shape, data).unwrap().into_tensor()
    }

    /// A model of one einsum `expr` of a source `x` and constant weights (first when
    /// `weights_first`), plus a bias `Add` of `bias_shape` when given.
    fn model(
        expr: &str,
        x: &[usize],
        w: &[usize],
        weights_first: bool,
        bias_shape: Option<&[usize]>,
    ) -> TractResult<TypedModel> {
        let mut model = TypedModel::default();
        let src = model.add_source("x", f32::fact(x))?;
        let weights = model.add_const("w", random(w, 7))?;
        let inputs = if weights_first {
            [weights, src]
        } else {
            [src, weights]
        };
        let op = EinSum::new(expr.parse()?, f32::datum_type());
        let mut out = model.wire_node("product", op, &inputs)?;
        if let Some(shape) = bias_shape {
            let b = model.add_const("b", random(shape, 8))?;
            out = model.wire_node(
                "bias",
                tract_onnx::tract_core::ops::math::add(),
                &[out[0], b],
            )?;
        }
        model.select_output_outlets(&out)?;
        Ok(model)
    }

    fn run(model: TypedModel, x: &Tensor) -> TractResult<Tensor> {
        Ok(model
            .into_runnable()?
            .run(tvec!(x.clone().into_tvalue()))?
            .remove(0)
            .into_tensor())
    }

    /// Rewrite `model`, check what was replaced, and compare with tract's own result on `x`.
    fn agrees(mut model: TypedModel, x_shape: &[usize], expect_replaced: usize) -> TractResult<()> {
        let x = random(x_shape, 3);
        let want = run(model.clone(), &x)?;
        let replaced = use_dense(&mut model)?;
        if !available() {
            assert_eq!(replaced, 0, "nothing is replaced without AVX2 + FMA");
            return Ok(());
        }
        assert_eq!(replaced, expect_replaced);
        let denses = model.nodes().iter().filter(|n| n.op_is::<Dense>()).count();
        assert_eq!(denses, expect_replaced);
        if expect_replaced > 0 {
            // The einsum, its weights and a fused bias are gone from the model.
            assert!(!model.nodes().iter().any(|n| n.op_is::<EinSum>()));
            assert!(!model.nodes().iter().any(|n| n.op_is::<TypedBinOp>()));
            assert!(!model.nodes().iter().any(|n| n.op_is::<Const>()));
        }
        let got = run(model, &x)?;
        assert_eq!(got.shape(), want.shape());
        let (got, want) = (
            got.to_plain_array_view::<f32>()?,
            want.to_plain_array_view::<f32>()?,
        );
        for (g, w) in got.iter().zip(want.iter()) {
            assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{g} vs {w}");
        }
        Ok(())
    }

    #[test]
    fn plain_product_matches_an_f64_reference_at_awkward_sizes() -> TractResult<()> {
        // Rows not a multiple of 6, columns not a multiple of 16, an odd k.
        for (rows, k, n) in [
            (1, 1, 1),
            (7, 19, 37),
            (13, 64, 16),
            (6, 33, 48),
            (50, 8, 70),
        ] {
            let mut m = model("mk,kn->mn", &[rows, k], &[k, n], false, None)?;
            let x = random(&[rows, k], 3);
            let w = random(&[k, n], 7);
            let replaced = use_dense(&mut m)?;
            assert_eq!(replaced, usize::from(available()));
            let got = run(m, &x)?;
            let (x, w) = (
                x.to_plain_array_view::<f32>()?,
                w.to_plain_array_view::<f32>()?,
            );
            let got = got.to_plain_array_view::<f32>()?;
            for r in 0..rows {
                for c in 0..n {
                    let want: f64 = (0..k).map(|i| x[[r, i]] as f64 * w[[i, c]] as f64).sum();
                    let g = got[[r, c]] as f64;
                    assert!(
                        (g - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{g} vs {want}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn fuses_the_bias_and_agrees_with_tract() -> TractResult<()> {
        // A ViT MLP layer: [batch, tokens, k] by [k, n], bias [1, 1, n].
        let m = model(
            "amk,kn->amn",
            &[2, 9, 24],
            &[24, 40],
            false,
            Some(&[1, 1, 40]),
        )?;
        agrees(m, &[2, 9, 24], 1)?;
        // The weights as the first operand.
        let m = model("kn,amk->amn", &[3, 5, 8], &[8, 20], true, Some(&[1, 1, 20]))?;
        agrees(m, &[3, 5, 8], 1)
    }

    #[test]
    fn handles_transposed_weights_split_contractions_and_moved_rows() -> TractResult<()> {
        // Attention's output projection: two contracted axes (heads, head width), weights
        // [n, heads, width], the row axes swapped in the output.
        let m = model("bmak,nak->mbn", &[7, 2, 3, 8], &[24, 3, 8], false, None)?;
        agrees(m, &[7, 2, 3, 8], 1)?;
        // The qkv projection: a unit axis that only the output has, rows swapped.
        let m = model("mak,kn->bamn", &[2, 5, 16], &[16, 48], false, None)?;
        agrees(m, &[2, 5, 16], 1)?;
        // ViT-B-32's MLP and qkv projections at batch 1: a unit axis that only the activation
        // has, alone and beside one that only the output has.
        let m = model("amk,kn->mn", &[1, 17, 32], &[32, 40], false, Some(&[1, 40]))?;
        agrees(m, &[1, 17, 32], 1)?;
        let m = model("bmk,kn->amcn", &[1, 17, 32], &[32, 40], false, None)?;
        agrees(m, &[1, 17, 32], 1)
    }

    #[test]
    fn leaves_alone_what_it_cannot_run() -> TractResult<()> {
        // A batch axis on the weights.
        let m = model("bmk,bkn->bmn", &[2, 4, 8], &[2, 8, 16], false, None)?;
        agrees(m, &[2, 4, 8], 0)?;
        // The contracted axis not trailing in the activation.
        let m = model("km,kn->mn", &[8, 4], &[8, 16], false, None)?;
        agrees(m, &[8, 4], 0)?;
        // The column axis not last in the output.
        let m = model("mk,kn->nm", &[4, 8], &[8, 16], false, None)?;
        agrees(m, &[4, 8], 0)?;
        // Two activations (attention scores).
        let mut m = TypedModel::default();
        let a = m.add_source("a", f32::fact([4, 8]))?;
        let b = m.add_source("b", f32::fact([8, 16]))?;
        let op = EinSum::new("mk,kn->mn".parse()?, f32::datum_type());
        let out = m.wire_node("product", op, &[a, b])?;
        m.select_output_outlets(&out)?;
        assert_eq!(use_dense(&mut m)?, 0);
        Ok(())
    }

    #[test]
    fn threads_split_the_panels_and_agree_with_one() -> TractResult<()> {
        use tract_linalg::multithread::{multithread_tract_scope, Executor};
        let mut m = model(
            "amk,kn->amn",
            &[2, 25, 64],
            &[64, 200],
            false,
            Some(&[1, 1, 200]),
        )?;
        use_dense(&mut m)?;
        let x = random(&[2, 25, 64], 3);
        let one = run(m.clone(), &x)?;
        let two = multithread_tract_scope(Executor::multithread(2), || run(m, &x))?;
        assert_eq!(
            one, two,
            "the split changes which thread computes, not the sums"
        );
        Ok(())
    }
}
