"""Independent NumPy reference for clipd's transductive refinement (docs/transduction.md).

Two algorithms, written the plain way (float64, loops, clarity over speed) so that the Rust code
in src/transduct/ can be checked against them to 1e-4:

- ``em_dirichlet`` / ``em_dirichlet_from_features``: EM-Dirichlet (Martin et al., CVPR 2024),
  soft and hard variants, zero-shot (Hungarian cluster->class matching) and few-shot;
- ``transclip``: TransCLIP (Zanella et al., NeurIPS 2024), zero-shot and few-shot.

Every sum goes through ``math.fsum`` and every exp/log through the ``math`` module, and no BLAS
matrix product is used: the results then depend neither on the BLAS kernel nor on NumPy's SIMD
dispatch, so the committed fixtures regenerate byte for byte on other x86-64 machines too.
Nothing here is shared with, or optimised like, the Rust implementation: it is the independent
check. Do not import it from production code.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.special import digamma, gammaln

#: bumped whenever a change to this file changes any output (recorded in the fixtures' README)
REFERENCE_VERSION = 1

EMPTY_MASS = 1e-12  # docs/transduction.md: "if mass_k < 1e-12" -> empty cluster


# ------------------------------------------------------------------------------------ helpers

def _fsum(values) -> float:
    """Correctly rounded sum (any iterable of numbers; arrays of any shape)."""
    if isinstance(values, np.ndarray):
        values = values.ravel().tolist()
    return math.fsum(float(v) for v in values)


def _exp(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return np.array([math.exp(float(v)) for v in a.ravel()], dtype=np.float64).reshape(a.shape)


def _log(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return np.array([math.log(float(v)) for v in a.ravel()], dtype=np.float64).reshape(a.shape)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Correctly rounded sum of the (rounded) elementwise products. Symmetric in a, b."""
    return _fsum(np.asarray(a, dtype=np.float64) * np.asarray(b, dtype=np.float64))


def _normalise(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / math.sqrt(_dot(v, v))


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.array([_normalise(row) for row in x], dtype=np.float64).reshape(x.shape)


def _argmax(row) -> int:
    """Index of the largest entry, the lowest index on ties."""
    best = 0
    for k in range(1, len(row)):
        if row[k] > row[best]:
            best = k
    return best


def _softmax_row(logits) -> np.ndarray:
    m = max(float(v) for v in logits)
    e = np.array([math.exp(float(v) - m) for v in logits], dtype=np.float64)
    return e / _fsum(e)


def _log_softmax_row(logits) -> np.ndarray:
    m = max(float(v) for v in logits)
    lse = m + math.log(_fsum(math.exp(float(v) - m) for v in logits))
    return np.array([float(v) - lse for v in logits], dtype=np.float64)


def _cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a·bᵀ for rows that are already L2-normalised, one correctly rounded dot per entry."""
    return np.array([[_dot(ai, bj) for bj in b] for ai in a], dtype=np.float64).reshape(
        len(a), len(b))


# ------------------------------------------------------------------------------ EM-Dirichlet

def dirichlet_objective(alpha: np.ndarray, y: np.ndarray, mass) -> float:
    """Σ_k mass_k·(lgamma(Σ_j α_kj) − Σ_j lgamma(α_kj) + Σ_j (α_kj − 1)·y_kj)."""
    K = alpha.shape[0]
    lg = gammaln(alpha)
    terms = []
    for k in range(K):
        row = gammaln(_fsum(alpha[k])) - _fsum(lg[k]) + _fsum((alpha[k] - 1.0) * y[k])
        terms.append(mass[k] * row)
    return _fsum(terms)


def mm_update(alpha: np.ndarray, y: np.ndarray, frozen, mass, *, mm_max_steps: int,
              mm_tol: float, mm_check_every: int, record_objective: bool = True):
    """MM(α, y) of docs/transduction.md, every non-frozen entry updated together. Returns
    (α, steps run, objective after each step (index 0: before the first step), convergence
    criteria evaluated as (step, value))."""
    alpha = np.array(alpha, dtype=np.float64)
    K = alpha.shape[0]
    frozen = np.array(frozen, dtype=bool)
    objective = [dirichlet_objective(alpha, y, mass)] if record_objective else []
    criteria = []
    steps = 0
    for step in range(1, mm_max_steps + 1):
        steps = step
        a = alpha
        # ψ(Σ_j' α_kj') with α before this step, one value per row
        psi_sum = digamma(np.array([_fsum(alpha[k]) for k in range(K)]))[:, None]
        small = a <= 1e-11
        safe = np.where(small, 1.0, a)  # only to keep the unused branch finite
        c = np.where(small, math.pi ** 2 / 6.0,
                     np.abs(2.0 * (safe * digamma(safe + 1.0) - gammaln(safe + 1.0))
                            / (safe * safe)))
        b = digamma(a + 1.0) - psi_sum - c * a - y
        new = (-b + np.sqrt(b * b + 4.0 * c)) / (2.0 * c)
        new[frozen] = alpha[frozen]  # frozen rows unchanged
        if record_objective:
            objective.append(dirichlet_objective(new, y, mass))
        if step % mm_check_every == 0:
            diff = new - alpha
            crit = _fsum(diff * diff) / _fsum(alpha * alpha)
            criteria.append((step, crit))
            if crit < mm_tol:
                alpha = new
                break
        alpha = new
    return alpha, steps, objective, criteria


def em_dirichlet(z, *, hard: bool = False, support_z=None, support_labels=None,
                 temperature=None, prior_weight, iterations: int, mm_max_steps: int = 1000,
                 mm_tol: float = 1e-11, mm_check_every: int = 50, eps: float = 1e-15,
                 empty_y: float = -10.0, record_objective: bool = True):
    """EM-Dirichlet on probabilities ``z`` (N×K). Few-shot when ``support_z`` (S×K) and
    ``support_labels`` (S ints) are given. ``temperature`` is not used (``z`` are already
    probabilities); it is accepted so that fixture parameters can be passed through unchanged.

    Returns (Z, pred, info): Z = u (N×K) as the last iteration leaves it (cluster space; one-hot
    in the hard variant), pred the class of each row (zero-shot: through the Hungarian
    cluster->class mapping), info a dict with alpha, mapping, iterations, cluster_means
    (zero-shot) and per-iteration lists: mass, frozen, mm_steps, mm_objective (the Dirichlet
    objective before the first MM step and after each one), mm_criteria ((step, value) of each
    convergence check), u_margin (smallest top-1 minus top-2 of u before hard rounding), alphas
    (α after the MM). ``record_objective=False`` skips the per-step objective (diagnostics
    only; the result is the same).
    """
    z = np.array(z, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError("z must be N×K")
    N, K = z.shape
    w = float(prior_weight)
    L = _log(z + eps)
    few = support_z is not None
    if few:
        zs = np.array(support_z, dtype=np.float64).reshape(-1, K)
        ys = [int(v) for v in support_labels]
        if len(ys) != zs.shape[0]:
            raise ValueError("one label per support row")
        Ls = _log(zs + eps)
    else:
        zs = np.zeros((0, K))
        ys = []
        Ls = np.zeros((0, K))
    shots_of = [[s for s in range(len(ys)) if ys[s] == k] for k in range(K)]

    u = z.copy()
    alpha = np.ones((K, K), dtype=np.float64)
    info = {"temperature": temperature, "iterations": 0, "mass": [], "frozen": [],
            "mm_steps": [], "mm_objective": [], "mm_criteria": [], "u_margin": [],
            "alphas": []}

    for _ in range(iterations):
        # 1. mass and the sufficient statistics y
        mass = []
        frozen = []
        y = np.zeros((K, K), dtype=np.float64)
        for k in range(K):
            m = _fsum(list(u[:, k]) + [float(len(shots_of[k]))])
            mass.append(m)
            if m < EMPTY_MASS:
                frozen.append(True)
                y[k, :] = empty_y
                continue
            frozen.append(False)
            for j in range(K):
                num = _fsum(list(u[:, k] * L[:, j]) + [Ls[s, j] for s in shots_of[k]])
                y[k, j] = num / m
        # 2. MM on α (frozen rows unchanged)
        alpha, steps, objective, criteria = mm_update(
            alpha, y, frozen, mass, mm_max_steps=mm_max_steps, mm_tol=mm_tol,
            mm_check_every=mm_check_every, record_objective=record_objective)
        # 3. class proportions (queries only), from the u that step 1 used
        v = np.array([math.log(_fsum(u[:, k]) / N + eps) for k in range(K)], dtype=np.float64)
        # 4. new assignments
        const = np.array([gammaln(_fsum(alpha[k])) - _fsum(gammaln(alpha[k]))
                          for k in range(K)], dtype=np.float64)
        new_u = np.zeros((N, K), dtype=np.float64)
        margin = math.inf
        for n in range(N):
            ell = np.array([const[k] + _fsum((alpha[k] - 1.0) * L[n]) for k in range(K)])
            row = _softmax_row(ell + w * v)
            if K > 1:
                srt = sorted(row, reverse=True)
                margin = min(margin, srt[0] - srt[1])
            if hard:
                one = np.zeros(K, dtype=np.float64)
                one[_argmax(row)] = 1.0
                row = one
            new_u[n] = row
        u = new_u
        info["iterations"] += 1
        info["mass"].append(mass)
        info["frozen"].append(frozen)
        info["mm_steps"].append(steps)
        info["mm_objective"].append(objective)
        info["mm_criteria"].append(criteria)
        info["u_margin"].append(margin)
        info["alphas"].append(alpha.copy())

    cluster = [_argmax(u[n]) for n in range(N)]
    if few:
        mapping = list(range(K))
        info["cluster_means"] = None
    else:
        means = np.zeros((K, K), dtype=np.float64)
        for k in range(K):
            m = _fsum(u[:, k])
            if m < EMPTY_MASS:
                continue  # zeros for an empty cluster
            for j in range(K):
                means[k, j] = _fsum(u[:, k] * z[:, j]) / m
        rows, cols = linear_sum_assignment(means, maximize=True)
        mapping = [0] * K
        for r, c in zip(rows, cols):
            mapping[int(r)] = int(c)
        info["cluster_means"] = means
    pred = np.array([mapping[c] for c in cluster], dtype=np.int64)
    info["alpha"] = alpha
    info["mapping"] = mapping
    return u, pred, info


def probabilities_from_features(f, t, temperature: float) -> np.ndarray:
    """softmax(T · f·tᵀ) with f, t L2-normalised first."""
    f = _normalise_rows(np.atleast_2d(np.asarray(f, dtype=np.float64)))
    t = _normalise_rows(np.atleast_2d(np.asarray(t, dtype=np.float64)))
    cos = _cosine_matrix(f, t)
    return np.array([_softmax_row(temperature * row) for row in cos],
                    dtype=np.float64).reshape(cos.shape)


def em_dirichlet_from_features(f, t, temperature: float, *, support_f=None,
                               support_labels=None, **kwargs):
    """EM-Dirichlet with z = softmax(T · f·tᵀ) (and the shots' zs built the same way)."""
    z = probabilities_from_features(f, t, temperature)
    support_z = None
    if support_f is not None:
        support_z = probabilities_from_features(support_f, t, temperature)
    return em_dirichlet(z, support_z=support_z, support_labels=support_labels,
                        temperature=temperature, **kwargs)


# ---------------------------------------------------------------------------------- TransCLIP

def knn_order(x: np.ndarray, i: int, knn: int) -> list[int]:
    """Rows j ≠ i by decreasing cos(x_i, x_j), ties to the lower index; the first `knn`
    are row i's neighbours. Exclusion is by index, so a duplicate of row i is a candidate."""
    cos = [(-_dot(x[i], x[j]), j) for j in range(len(x)) if j != i]
    cos.sort()
    return [j for _, j in cos]


def knn_affinity(x: np.ndarray, knn: int) -> np.ndarray:
    """W: R×R, W_ij = cos(x_i, x_j) for the `knn` nearest rows j ≠ i, else 0 (x normalised).
    Rows with fewer than `knn` other rows take all of them."""
    R = len(x)
    W = np.zeros((R, R), dtype=np.float64)
    for i in range(R):
        for j in knn_order(x, i, knn)[:knn]:
            W[i, j] = _dot(x[i], x[j])
    return W


def top_rows(scores, count: int) -> list[int]:
    """Indices of the `count` largest scores, ties to the lower index."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return order[:count]


def transclip(f, t, *, support_f=None, support_labels=None, init_logprobs=None,
              scale: float = 100.0, knn: int = 3, lam=None, outer_steps: int = 10,
              sweeps: int = 5, init_top: int = 8, gamma: float = 0.002,
              g_divisor: float = 50.0, shot_weight: float = 50.0):
    """TransCLIP on query features ``f`` (N×d) and class text embeddings ``t`` (K×d); few-shot
    when ``support_f`` (S×d) and ``support_labels`` are given. ``init_logprobs`` (N×K) replaces
    log_softmax(scale · f·tᵀ) (an adapter's log-probabilities). Features are L2-normalised here.

    Returns (Z, pred): the query rows of z (N×K) and their argmax. A zero-shot buffer with
    N < init_top is returned unchanged (Z = ŷ).
    """
    f = _normalise_rows(np.atleast_2d(np.asarray(f, dtype=np.float64)))
    t = _normalise_rows(np.atleast_2d(np.asarray(t, dtype=np.float64)))
    N, d = f.shape
    K = t.shape[0]
    few = support_f is not None
    if few:
        fs = _normalise_rows(np.atleast_2d(np.asarray(support_f, dtype=np.float64)))
        ys = [int(v) for v in support_labels]
        if len(ys) != fs.shape[0]:
            raise ValueError("one label per support row")
    else:
        fs = np.zeros((0, d), dtype=np.float64)
        ys = []
    S = len(ys)
    if lam is None:
        lam = 0.5 if few else 1.0

    # log ŷ, computed in log space
    if init_logprobs is None:
        cos = _cosine_matrix(f, t)
        log_yhat = np.array([_log_softmax_row(scale * row) for row in cos]).reshape(N, K)
    else:
        log_yhat = np.array(init_logprobs, dtype=np.float64).reshape(N, K)
    yhat = _exp(log_yhat)

    if not few and N < init_top:
        return yhat.copy(), np.array([_argmax(r) for r in yhat], dtype=np.int64)

    # affinity over [queries; shots]
    x = np.concatenate([f, fs], axis=0)
    R = N + S
    W = knn_affinity(x, knn)
    A = W + W.T

    z = np.zeros((R, K), dtype=np.float64)
    z[:N] = yhat
    for s in range(S):
        z[N + s, ys[s]] = 1.0  # fixed one-hot, never updated

    # initial centroids and variance
    mu = np.zeros((K, d), dtype=np.float64)
    if few:
        for k in range(K):
            members = [s for s in range(S) if ys[s] == k]
            if not members:
                raise ValueError(f"few-shot TransCLIP needs at least one shot of class {k}")
            mean = np.array([_fsum(fs[members, j]) / len(members) for j in range(d)])
            mu[k] = _normalise(mean)
    else:
        for k in range(K):
            top = top_rows(yhat[:, k], init_top)
            acc = np.array([_fsum(yhat[i, k] * f[i, j] for i in top) for j in range(d)])
            mu[k] = _normalise(acc)
    sigma2 = np.full(d, 1.0 / d, dtype=np.float64)
    shot_w = gamma * shot_weight / S if few else 0.0

    def z_step(z, mu, sigma2):
        G = np.zeros((N, K), dtype=np.float64)
        for i in range(N):
            for k in range(K):
                G[i, k] = -0.5 * _fsum((f[i] - mu[k]) ** 2 / sigma2)
        for _ in range(sweeps):
            new = z.copy()
            for i in range(N):
                logits = np.zeros(K, dtype=np.float64)
                for k in range(K):
                    affinity = _fsum(A[i, :] * z[:, k])
                    logits[k] = (lam * log_yhat[i, k] + G[i, k] / g_divisor
                                 + affinity / (2.0 * knn))
                new[i] = _softmax_row(logits)
            z = new  # Jacobi: every row of this sweep used the previous sweep's z
        return z

    def mu_step(z):
        new = np.zeros((K, d), dtype=np.float64)
        for k in range(K):
            members = [s for s in range(S) if ys[s] == k]
            acc = np.array([_fsum(z[:N, k] * f[:, j]) / N
                            + shot_w * _fsum(fs[members, j]) for j in range(d)])
            new[k] = _normalise(acc)
        return new

    def sigma2_step(z, mu):
        new = np.zeros(d, dtype=np.float64)
        for j in range(d):
            q = _fsum(z[i, k] * (f[i, j] - mu[k, j]) ** 2
                      for i in range(N) for k in range(K)) / N
            s_term = _fsum((fs[s, j] - mu[ys[s], j]) ** 2 for s in range(S))
            new[j] = (q + shot_w * s_term) / (1.0 + gamma * shot_weight * (1.0 if few else 0.0))
        return new

    for _ in range(outer_steps):
        z = z_step(z, mu, sigma2)
        mu = mu_step(z)
        sigma2 = sigma2_step(z, mu)
    z = z_step(z, mu, sigma2)

    Z = z[:N].copy()
    return Z, np.array([_argmax(r) for r in Z], dtype=np.int64)
