//! Just enough dense linear algebra for few-shot training on precomputed features: a row-major
//! matrix, three GEMM shapes (backed by `matrixmultiply`), L2 row normalisation with its
//! backward pass, and softmax cross-entropy.
//!
//! Everything is generic over [`Real`] so the same forward/backward code runs in `f32` for
//! training and in `f64` for the finite-difference gradient checks.

use std::fmt::Debug;

/// A float type the adapters can train in.
pub trait Real:
    num_traits::Float
    + std::iter::Sum
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + Debug
    + Default
    + Send
    + Sync
    + 'static
{
    /// A constant (lossless for the literals used here).
    fn c(x: f64) -> Self;

    /// As `f64`, for reporting.
    fn as_f64(self) -> f64;

    /// `c = alpha·a·b + beta·c` with arbitrary row/column strides (matrixmultiply's contract).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: &[Self],
        rsa: isize,
        csa: isize,
        b: &[Self],
        rsb: isize,
        csb: isize,
        beta: Self,
        c: &mut [Self],
        rsc: isize,
        csc: isize,
    );
}

/// Checks that a strided `rows × cols` view fits in `len` elements (the GEMM safety contract).
fn fits(len: usize, rows: usize, cols: usize, rs: isize, cs: isize) -> bool {
    if rows == 0 || cols == 0 {
        return true;
    }
    if rs < 0 || cs < 0 {
        return false;
    }
    let last = (rows - 1) * rs as usize + (cols - 1) * cs as usize;
    last < len
}

macro_rules! impl_real {
    ($t:ty, $gemm:path) => {
        impl Real for $t {
            #[inline]
            fn c(x: f64) -> Self {
                x as $t
            }
            #[inline]
            fn as_f64(self) -> f64 {
                self as f64
            }
            fn gemm(
                m: usize,
                k: usize,
                n: usize,
                alpha: Self,
                a: &[Self],
                rsa: isize,
                csa: isize,
                b: &[Self],
                rsb: isize,
                csb: isize,
                beta: Self,
                c: &mut [Self],
                rsc: isize,
                csc: isize,
            ) {
                assert!(
                    fits(a.len(), m, k, rsa, csa)
                        && fits(b.len(), k, n, rsb, csb)
                        && fits(c.len(), m, n, rsc, csc),
                    "gemm operands out of bounds"
                );
                // SAFETY: the assertion above proves every element matrixmultiply addresses
                // through these pointers and strides lies inside the three slices; `c` is a
                // unique borrow, so it aliases neither input.
                unsafe {
                    $gemm(
                        m,
                        k,
                        n,
                        alpha,
                        a.as_ptr(),
                        rsa,
                        csa,
                        b.as_ptr(),
                        rsb,
                        csb,
                        beta,
                        c.as_mut_ptr(),
                        rsc,
                        csc,
                    )
                }
            }
        }
    };
}

impl_real!(f32, matrixmultiply::sgemm);
impl_real!(f64, matrixmultiply::dgemm);

/// A dense row-major matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Mat<T> {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<T>,
}

impl<T: Real> Mat<T> {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Mat {
            rows,
            cols,
            data: vec![T::zero(); rows * cols],
        }
    }

    /// Wrap `data` (`rows × cols`, row-major). Panics on a length mismatch, which is a
    /// programming error, never an input error.
    pub fn from_vec(rows: usize, cols: usize, data: Vec<T>) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data length");
        Mat { rows, cols, data }
    }

    /// Build from `f32` data (features and embeddings arrive as `f32`).
    pub fn from_f32(rows: usize, cols: usize, data: &[f32]) -> Self {
        Self::from_vec(rows, cols, data.iter().map(|&v| T::c(v as f64)).collect())
    }

    /// Convert to `f32` (for storing).
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|v| v.as_f64() as f32).collect()
    }

    pub fn row(&self, i: usize) -> &[T] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    pub fn row_mut(&mut self, i: usize) -> &mut [T] {
        &mut self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// The rows at `idx`, in that order.
    pub fn select_rows(&self, idx: &[usize]) -> Self {
        let mut data = Vec::with_capacity(idx.len() * self.cols);
        for &i in idx {
            data.extend_from_slice(self.row(i));
        }
        Mat::from_vec(idx.len(), self.cols, data)
    }

    /// `op(a)·op(b)` into a new `m × n` matrix, where each operand is viewed through its
    /// (row, column) strides: `(cols, 1)` as stored, `(1, cols)` transposed.
    fn product(
        m: usize,
        k: usize,
        n: usize,
        a: (&[T], isize, isize),
        b: (&[T], isize, isize),
    ) -> Mat<T> {
        let mut out = Mat::zeros(m, n);
        T::gemm(
            m,
            k,
            n,
            T::one(),
            a.0,
            a.1,
            a.2,
            b.0,
            b.1,
            b.2,
            T::zero(),
            &mut out.data,
            n as isize,
            1,
        );
        out
    }

    /// `self · other`.
    pub fn matmul(&self, other: &Mat<T>) -> Mat<T> {
        assert_eq!(self.cols, other.rows, "matmul shapes");
        let a = (self.data.as_slice(), self.cols as isize, 1);
        let b = (other.data.as_slice(), other.cols as isize, 1);
        Mat::product(self.rows, self.cols, other.cols, a, b)
    }

    /// `self · otherᵀ`.
    pub fn matmul_t(&self, other: &Mat<T>) -> Mat<T> {
        assert_eq!(self.cols, other.cols, "matmul_t shapes");
        if self.rows <= 2 {
            // One frame against a class matrix or cache on the frame path: GEMM would repack
            // all of `other` per call, which costs more than the dot products themselves.
            let mut out = Mat::zeros(self.rows, other.rows);
            for (i, o) in out.data.chunks_exact_mut(other.rows.max(1)).enumerate() {
                let a = self.row(i);
                for (v, b) in o.iter_mut().zip(other.data.chunks_exact(other.cols.max(1))) {
                    *v = dot(a, b);
                }
            }
            return out;
        }
        let a = (self.data.as_slice(), self.cols as isize, 1);
        let b = (other.data.as_slice(), 1, other.cols as isize);
        Mat::product(self.rows, self.cols, other.rows, a, b)
    }

    /// `selfᵀ · other`.
    pub fn t_matmul(&self, other: &Mat<T>) -> Mat<T> {
        assert_eq!(self.rows, other.rows, "t_matmul shapes");
        let a = (self.data.as_slice(), 1, self.cols as isize);
        let b = (other.data.as_slice(), other.cols as isize, 1);
        Mat::product(self.cols, self.rows, other.cols, a, b)
    }

    /// `self · s` element-wise, in place.
    pub fn scale(&mut self, s: T) {
        self.data.iter_mut().for_each(|v| *v *= s);
    }

    /// `a·self + b·other`, element-wise.
    pub fn lerp(&self, a: T, other: &Mat<T>, b: T) -> Mat<T> {
        assert_eq!(self.data.len(), other.data.len(), "lerp shapes");
        let data = self
            .data
            .iter()
            .zip(&other.data)
            .map(|(&x, &y)| a * x + b * y)
            .collect();
        Mat::from_vec(self.rows, self.cols, data)
    }

    pub fn relu(&self) -> Mat<T> {
        let data = self.data.iter().map(|&v| v.max(T::zero())).collect();
        Mat::from_vec(self.rows, self.cols, data)
    }

    /// Zero the gradient where the ReLU's output was zero (its input was ≤ 0).
    pub fn relu_mask(&mut self, relu_out: &Mat<T>) {
        for (g, &o) in self.data.iter_mut().zip(&relu_out.data) {
            if o <= T::zero() {
                *g = T::zero();
            }
        }
    }

    /// Sum of squares (for relative-change and gradient checks).
    pub fn sq_norm(&self) -> T {
        self.data.iter().map(|&v| v * v).sum()
    }
}

/// Dot product with eight independent partial sums: a single running sum is one long chain of
/// dependent additions, while eight let the compiler keep a vector register busy.
pub fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: T = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().copied().sum::<T>() + tail
}

/// L2-normalise every row; returns the normalised rows and the original norms (needed by
/// [`normalize_rows_backward`]). A zero row stays zero.
pub fn normalize_rows<T: Real>(x: &Mat<T>) -> (Mat<T>, Vec<T>) {
    let mut out = x.clone();
    let mut norms = Vec::with_capacity(x.rows);
    for i in 0..x.rows {
        let r = out.row_mut(i);
        let n = r.iter().map(|&v| v * v).sum::<T>().sqrt();
        if n > T::zero() {
            r.iter_mut().for_each(|v| *v = *v / n);
        }
        norms.push(n);
    }
    (out, norms)
}

/// Gradient through `u = v/‖v‖`: `dv = (du − u·(u·du)) / ‖v‖`, row by row.
pub fn normalize_rows_backward<T: Real>(du: &Mat<T>, u: &Mat<T>, norms: &[T]) -> Mat<T> {
    let mut dv = du.clone();
    for (i, &n) in norms.iter().enumerate() {
        let ur = u.row(i);
        let dot: T = ur.iter().zip(du.row(i)).map(|(&a, &b)| a * b).sum();
        let r = dv.row_mut(i);
        if n > T::zero() {
            for (d, &uu) in r.iter_mut().zip(ur) {
                *d = (*d - uu * dot) / n;
            }
        } else {
            r.iter_mut().for_each(|d| *d = T::zero());
        }
    }
    dv
}

/// Row-wise softmax of `logits`.
pub fn softmax_rows<T: Real>(logits: &Mat<T>) -> Mat<T> {
    let mut p = logits.clone();
    for i in 0..p.rows {
        let r = p.row_mut(i);
        let max = r.iter().copied().fold(T::neg_infinity(), T::max);
        let mut sum = T::zero();
        for v in r.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        r.iter_mut().for_each(|v| *v = *v / sum);
    }
    p
}

/// Mean cross-entropy of `logits` against `labels`, its gradient with respect to the logits,
/// and how many rows were classified correctly (argmax, lowest index on ties).
pub fn cross_entropy<T: Real>(logits: &Mat<T>, labels: &[usize]) -> (T, Mat<T>, usize) {
    assert_eq!(logits.rows, labels.len(), "one label per row");
    let n = T::c(logits.rows.max(1) as f64);
    let mut grad = softmax_rows(logits);
    let mut loss = T::zero();
    let mut correct = 0;
    for (i, &y) in labels.iter().enumerate() {
        let r = grad.row_mut(i);
        loss -= r[y].max(T::min_positive_value()).ln();
        if argmax(logits.row(i)) == y {
            correct += 1;
        }
        r[y] -= T::one();
        r.iter_mut().for_each(|v| *v = *v / n);
    }
    (loss / n, grad, correct)
}

/// Index of the largest value (the first one on ties).
pub fn argmax<T: Real>(v: &[T]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rows: usize, cols: usize, v: &[f64]) -> Mat<f64> {
        Mat::from_vec(rows, cols, v.to_vec())
    }

    #[test]
    fn gemm_shapes_agree_with_naive_products() {
        let a = m(2, 3, &[1., 2., 3., 4., 5., 6.]);
        let b = m(3, 2, &[7., 8., 9., 10., 11., 12.]);
        assert_eq!(a.matmul(&b).data, vec![58., 64., 139., 154.]);
        let bt = m(2, 3, &[7., 9., 11., 8., 10., 12.]);
        assert_eq!(a.matmul_t(&bt).data, vec![58., 64., 139., 154.]);
        let at = m(3, 2, &[1., 4., 2., 5., 3., 6.]);
        assert_eq!(at.t_matmul(&b).data, vec![58., 64., 139., 154.]);
        let f = Mat::<f32>::from_f32(2, 3, &[1., 2., 3., 4., 5., 6.]);
        let g = Mat::<f32>::from_f32(3, 2, &[7., 8., 9., 10., 11., 12.]);
        assert_eq!(f.matmul(&g).data, vec![58., 64., 139., 154.]);
    }

    #[test]
    fn single_row_path_agrees_with_gemm() {
        let mut r = crate::rng::Rng::new(5);
        let mut rand = |rows: usize, cols: usize| {
            Mat::from_vec(rows, cols, (0..rows * cols).map(|_| r.normal()).collect())
        };
        let (x, other) = (rand(5, 21), rand(9, 21));
        let all = x.matmul_t(&other);
        for i in 0..5 {
            let one = x.select_rows(&[i]).matmul_t(&other);
            for (a, b) in one.data.iter().zip(all.row(i)) {
                assert!((a - b).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn normalisation_gradient_is_orthogonal_to_the_row() {
        let v = m(1, 3, &[3., 4., 12.]);
        let (u, n) = normalize_rows(&v);
        assert!((n[0] - 13.0).abs() < 1e-12);
        assert!((u.sq_norm() - 1.0).abs() < 1e-12);
        // A gradient along u itself does not change a unit vector: it must vanish.
        let dv = normalize_rows_backward(&u, &u, &n);
        assert!(dv.sq_norm() < 1e-24);
    }

    #[test]
    fn cross_entropy_matches_hand_computation() {
        let z = m(1, 2, &[0.0, 2f64.ln()]);
        let (loss, g, correct) = cross_entropy(&z, &[0]);
        // p = [1/3, 2/3]; loss = ln 3; grad = p − onehot.
        assert!((loss - 3f64.ln()).abs() < 1e-12);
        assert!((g.data[0] + 2.0 / 3.0).abs() < 1e-12 && (g.data[1] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(correct, 0);
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
    }
}
