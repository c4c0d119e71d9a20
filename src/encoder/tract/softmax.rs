//! A row softmax for the plans where tract's own would take its per-row kernel path.
//!
//! tract 0.23.9 evaluates a softmax over the last axis with one whole-buffer kernel only where
//! it has one for the host (aarch64 and wasm) and the rows are a multiple of four long.
//! Everywhere else it calls three reduction kernels per row, each with its own set-up, which
//! on ViT-B-32's attention (12 × 12 × 50 rows of 50 per image) cost 4.5 ms per image on one x86
//! core: most of it call overhead. [`RowSoftmax`] replaces exactly those nodes with one pass per
//! row written so the compiler vectorises it (max, `exp(x - max)` with the sum, scale by
//! `1 / sum`). It is applied to the optimised plan only: the graph cache holds the graph
//! before optimisation, so it never has to serialise this op.

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::nn::{Softmax, SoftmaxKind};

/// Softmax over the last axis of a contiguous f32 tensor, rows of `row_len`.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct RowSoftmax {
    pub row_len: usize,
}

impl Op for RowSoftmax {
    fn name(&self) -> StaticName {
        "RowSoftmax".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("rows of {}", self.row_len)])
    }

    op_as_typed_op!();
}

impl EvalOp for RowSoftmax {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        ensure!(
            input.datum_type() == f32::datum_type(),
            "RowSoftmax expects f32, got {:?}",
            input.datum_type()
        );
        let mut output = input.into_tensor();
        ensure!(
            output.shape().last() == Some(&self.row_len)
                && output.strides() == &*Tensor::natural_strides(output.shape()),
            "RowSoftmax expects contiguous rows of {}, got shape {:?}",
            self.row_len,
            output.shape()
        );
        let row_len = self.row_len;
        if row_len > 0 {
            let mut plain = output.try_as_plain_ram_mut()?;
            let data = plain.as_slice_mut::<f32>()?;
            let total = data.len();
            // Rows are split across the executor's threads (a lane's executor has one).
            tract_linalg::multithread::par_chunks_mut(data, row_len, total, |_, chunk| {
                chunk.chunks_exact_mut(row_len).for_each(softmax_row);
                Ok(())
            })?;
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for RowSoftmax {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// Replace every softmax node of `model` that tract would evaluate row by row with
/// [`RowSoftmax`]: f32, over the last axis only, with a concrete row length. Returns how many
/// nodes were replaced.
pub fn use_row_softmax(model: &mut TypedModel) -> TractResult<usize> {
    let host_kernel = tract_linalg::routines::softmax_rows_f32().is_some();
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(sm) = node.op_as::<Softmax>() else {
            continue;
        };
        let fact = model.outlet_fact(node.inputs[0])?;
        let rank = fact.rank();
        let row_len = fact.shape.as_concrete().and_then(|s| s.last().copied());
        let Some(row_len) = row_len else { continue };
        let own_fast_path = host_kernel && row_len % 4 == 0;
        if sm.kind != SoftmaxKind::Softmax
            || sm.quant_output_dt.is_some()
            || fact.datum_type != f32::datum_type()
            || *sm.axes != [rank - 1]
            || own_fast_path
        {
            continue;
        }
        let patch =
            TypedModelPatch::replace_single_op(model, node, &node.inputs, RowSoftmax { row_len })?;
        patch.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}

/// Lanes the row loops are written in: wide enough for AVX2 and two NEON registers.
const W: usize = 8;

/// `row ← softmax(row)`. A NaN anywhere makes the whole row NaN, like the reference.
fn softmax_row(row: &mut [f32]) {
    let max = row_max(row);
    let mut sums = [0f32; W];
    let mut chunks = row.chunks_exact_mut(W);
    for chunk in &mut chunks {
        for (x, s) in chunk.iter_mut().zip(sums.iter_mut()) {
            *x = exp_nonpositive(*x - max);
            *s += *x;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp_nonpositive(*x - max);
        sum += *x;
    }
    let scale = sum.recip();
    row.iter_mut().for_each(|x| *x *= scale);
}

/// The largest element, NaNs skipped (they reach the output through `exp`).
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; W];
    let mut chunks = row.chunks_exact(W);
    for chunk in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    let max = lanes.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    chunks.remainder().iter().fold(max, |m, &x| m.max(x))
}

/// `e^x` for `x ≤ 0` (what `x - max` is), with a relative error of a few ulp; below −87.3
/// (where `e^x` leaves the normal range) the result is ~1e-38, nil next to the row's 1.
/// Branch-free and made of adds, multiplies and bit moves only, so it vectorises on any SIMD
/// level: `x = k·ln2 + r` with `|r| ≤ ln2/2`, `e^r` by a degree-6 polynomial, `2^k` built in the
/// exponent bits.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5·2^23 rounds to the nearest integer, which then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // A select rather than `max`, which would turn a NaN into -87.3.
    let x = if x < -87.3 { -87.3 } else { x };
    let t = x * LOG2E + ROUND;
    let k = t - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let p = (p * r) * r + r + 1.0;
    // k ∈ [-126, 0] here, so k + 127 is a normal exponent.
    let bits = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let scale = f32::from_bits(((bits + 127) as u32) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(row: &[f32]) -> Vec<f32> {
        let max = row
            .iter()
            .cloned()
            .fold(f64::NEG_INFINITY, |m, x| m.max(x as f64));
        let e: Vec<f64> = row.iter().map(|&x| (x as f64 - max).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| (v / s) as f32).collect()
    }

    #[test]
    fn exp_is_accurate_over_the_range_a_softmax_feeds_it() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let got = exp_nonpositive(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1e30) < 1e-37);
        assert!(exp_nonpositive(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn rows_of_any_length_match_the_reference() {
        let mut rng = crate::rng::Rng::new(7);
        for len in [1usize, 2, 3, 7, 8, 9, 16, 50, 77, 197] {
            let row: Vec<f32> = (0..len).map(|_| rng.normal() as f32 * 6.0).collect();
            let mut got = row.clone();
            softmax_row(&mut got);
            let want = reference(&row);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-6 + 1e-5 * w, "len {len}: {g} vs {w}");
            }
            let total: f32 = got.iter().sum();
            assert!((total - 1.0).abs() < 1e-5, "len {len}: sums to {total}");
        }
    }

    #[test]
    fn masked_and_nan_entries_behave_like_a_softmax() {
        // A causal mask: -inf entries get exactly nothing, the rest share the mass.
        let mut row = vec![0.5, -1.0, f32::NEG_INFINITY, f32::NEG_INFINITY, 2.0];
        softmax_row(&mut row);
        assert!(row[2] < 1e-37 && row[3] < 1e-37);
        let want = reference(&[0.5, -1.0, 2.0]);
        for (g, w) in [row[0], row[1], row[4]].iter().zip(&want) {
            assert!((g - w).abs() < 1e-6);
        }
        let mut row = vec![1.0, f32::NAN, 3.0];
        softmax_row(&mut row);
        assert!(row.iter().all(|x| x.is_nan()));
    }

    /// The op against tract's own softmax on a whole attention-shaped tensor, and the rewrite
    /// replacing the node in a model.
    #[test]
    fn replaces_tracts_softmax_and_agrees_with_it() -> TractResult<()> {
        let mut rng = crate::rng::Rng::new(11);
        let shape = [2usize, 3, 5, 50];
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| rng.normal() as f32 * 4.0).collect();
        let input = tract_ndarray::ArrayD::from_shape_vec(&shape[..], data)?.into_tensor();

        let mut model = TypedModel::default();
        let src = model.add_source("x", f32::fact(shape))?;
        let sm = model.wire_node(
            "sm",
            Softmax::new(tvec![3], None, SoftmaxKind::Softmax),
            &[src],
        )?;
        model.select_output_outlets(&sm)?;
        let want = model
            .clone()
            .into_runnable()?
            .run(tvec!(input.clone().into_tvalue()))?
            .remove(0);

        assert_eq!(use_row_softmax(&mut model)?, 1);
        assert!(model.nodes().iter().any(|n| n.op_is::<RowSoftmax>()));
        let got = model
            .into_runnable()?
            .run(tvec!(input.into_tvalue()))?
            .remove(0);
        // tract's own is an approximation too (its NEON `exp` differs from ours by a few ulp).
        let (got, want) = (
            got.to_plain_array_view::<f32>()?,
            want.to_plain_array_view::<f32>()?,
        );
        assert_eq!(got.shape(), want.shape());
        for (g, w) in got.iter().zip(want.iter()) {
            assert!((g - w).abs() <= 1e-6 + 1e-5 * w, "{g} vs {w}");
        }
        Ok(())
    }

    #[test]
    fn leaves_softmaxes_over_other_axes_alone() -> TractResult<()> {
        let mut model = TypedModel::default();
        let src = model.add_source("x", f32::fact([4usize, 50, 6]))?;
        let sm = model.wire_node(
            "sm",
            Softmax::new(tvec![1], None, SoftmaxKind::Softmax),
            &[src],
        )?;
        model.select_output_outlets(&sm)?;
        assert_eq!(use_row_softmax(&mut model)?, 0);
        Ok(())
    }
}
