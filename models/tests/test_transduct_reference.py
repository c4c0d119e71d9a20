"""Tests for the NumPy reference of the transductive methods (models/reference/) and for the
fixtures it produces (tests/fixtures/transduct/cases.json), which the Rust code in
src/transduct/ is checked against. The algorithms are specified in docs/transduction.md.

Needs numpy and scipy only.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "transduct" / "cases.json"
sys.path.insert(0, str(REPO / "models" / "reference"))

import make_transduct_fixtures as MF  # noqa: E402
import transduct_reference as R  # noqa: E402

E = np.eye(4)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _check_rows(Z: np.ndarray, K: int, N: int) -> None:
    assert Z.shape == (N, K)
    assert np.all(np.isfinite(Z))
    assert np.all(Z >= 0.0)
    np.testing.assert_allclose(Z.sum(axis=1), 1.0, atol=1e-12)


def _scene(seed: int, K: int, d: int, labels, noise: float = 0.25):
    """Frames around orthogonal-ish class centres, text embeddings near the centres."""
    rng = np.random.default_rng(seed)
    centres = np.array([_unit(v) for v in rng.normal(size=(K, d))])
    t = np.array([_unit(c + 0.1 * rng.normal(size=d)) for c in centres])
    f = np.array([_unit(centres[k] + noise * rng.normal(size=d) / math.sqrt(d))
                  for k in labels])
    return f, t


# ------------------------------------------------------------------------- EM-Dirichlet

TWO_CLUSTERS = np.array([[0.90, 0.10], [0.80, 0.20], [0.95, 0.05], [0.70, 0.30],
                         [0.15, 0.85], [0.10, 0.90], [0.25, 0.75], [0.05, 0.95]])


@pytest.mark.parametrize("hard", [False, True])
def test_em_two_separated_clusters_keep_their_labels(hard):
    Z, pred, info = R.em_dirichlet(TWO_CLUSTERS, hard=hard, prior_weight=0,
                                   iterations=10 if hard else 20)
    _check_rows(Z, 2, 8)
    assert pred.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert info["mapping"] == [0, 1]
    assert info["iterations"] == (10 if hard else 20)
    if hard:
        assert set(np.unique(Z)) <= {0.0, 1.0}
        assert Z[:, 0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    else:
        assert np.all(Z[:4, 0] > 0.5) and np.all(Z[4:, 1] > 0.5)


def test_em_hungarian_maps_clusters_to_classes():
    # Cluster k's mean probability vector decides its class; here the identity wins by far.
    Z, pred, info = R.em_dirichlet(TWO_CLUSTERS[::-1], prior_weight=0, iterations=5)
    assert sorted(info["mapping"]) == [0, 1]
    means = info["cluster_means"]
    assert means[0, 0] > means[0, 1] and means[1, 1] > means[1, 0]
    assert pred.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]


def test_em_few_shot_clusters_are_classes():
    # Three classes; the two ambiguous frames are pulled to the class their shots share.
    z = np.array([[0.80, 0.15, 0.05], [0.10, 0.85, 0.05], [0.05, 0.10, 0.85],
                  [0.75, 0.20, 0.05], [0.15, 0.10, 0.75], [0.10, 0.80, 0.10]])
    zs = np.array([[0.90, 0.05, 0.05], [0.05, 0.90, 0.05], [0.05, 0.05, 0.90]])
    Z, pred, info = R.em_dirichlet(z, support_z=zs, support_labels=[0, 1, 2], prior_weight=0,
                                   iterations=20)
    _check_rows(Z, 3, 6)
    assert info["mapping"] == [0, 1, 2] and info["cluster_means"] is None
    assert pred.tolist() == [0, 1, 2, 0, 2, 1]
    assert pred.tolist() == Z.argmax(axis=1).tolist()


def test_em_from_features_is_em_on_softmax_probabilities():
    f, t = _scene(3, 3, 8, [0, 1, 2, 0, 1, 2, 0])
    z = R.probabilities_from_features(f, t, 30.0)
    expect = np.exp(30.0 * (f @ t.T))
    np.testing.assert_allclose(z, expect / expect.sum(1, keepdims=True), rtol=1e-12)
    a = R.em_dirichlet_from_features(f, t, 30.0, prior_weight=0, iterations=3,
                                     record_objective=False)
    b = R.em_dirichlet(z, prior_weight=0, iterations=3, record_objective=False)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def _objective_cases():
    f, t = _scene(5, 4, 8, [0, 1, 2, 3] * 4)
    z = R.probabilities_from_features(f, t, 30.0)
    zs = R.probabilities_from_features(f[:4], t, 30.0)
    one_class = R.probabilities_from_features(_scene(6, 3, 8, [0] * 6)[0],
                                              _scene(6, 3, 8, [0] * 6)[1], 30.0)
    return [
        dict(z=z, prior_weight=1, iterations=5),
        dict(z=z, hard=True, prior_weight=0, iterations=5),
        dict(z=z, support_z=zs, support_labels=[0, 1, 2, 3], prior_weight=0, iterations=5),
        dict(z=one_class, hard=True, prior_weight=0, iterations=4),
        dict(z=TWO_CLUSTERS, prior_weight=0, iterations=3, mm_check_every=7),
    ]


@pytest.mark.parametrize("case", range(5))
def test_em_every_mm_step_does_not_decrease_the_dirichlet_objective(case):
    kw = _objective_cases()[case]
    z = kw.pop("z")
    _, _, info = R.em_dirichlet(z, **kw)
    checked = 0
    for objective in info["mm_objective"]:
        assert len(objective) >= 2
        for before, after in zip(objective, objective[1:]):
            assert after >= before - 1e-10 * max(1.0, abs(before)), (before, after)
            checked += 1
        assert objective[-1] >= objective[0]
    assert checked > 0


def test_em_mm_convergence_is_checked_only_every_mm_check_every_steps():
    for every in (50, 7):
        _, _, info = R.em_dirichlet(TWO_CLUSTERS, prior_weight=0, iterations=6,
                                    mm_check_every=every, mm_max_steps=1000)
        for steps, criteria in zip(info["mm_steps"], info["mm_criteria"]):
            assert steps % every == 0 or steps == 1000
            assert [s for s, _ in criteria] == list(range(every, steps + 1, every))
            if steps < 1000:
                assert criteria[-1][1] < 1e-11
                assert all(c >= 1e-11 for _, c in criteria[:-1])
    _, _, info = R.em_dirichlet(TWO_CLUSTERS, prior_weight=0, iterations=1, mm_max_steps=30)
    assert info["mm_steps"] == [30] and info["mm_criteria"] == [[]]


def test_em_empty_cluster_freezes_its_alpha_row():
    # Every frame is class 0: with the prior on cluster sizes, the first hard step puts every
    # frame in cluster 0 and clusters 1 and 2 hold nothing from then on.
    z = np.array([[0.90, 0.06, 0.04], [0.85, 0.10, 0.05], [0.95, 0.03, 0.02],
                  [0.80, 0.12, 0.08], [0.88, 0.05, 0.07]])
    Z, pred, info = R.em_dirichlet(z, hard=True, prior_weight=1, iterations=4,
                                   record_objective=False)
    _check_rows(Z, 3, 5)
    assert Z[:, 0].tolist() == [1.0] * 5
    assert pred.tolist() == [0] * 5
    assert info["frozen"][0] == [False, False, False]
    for it in range(1, 4):
        assert info["frozen"][it] == [False, True, True]
        assert info["mass"][it][1] == 0.0 and info["mass"][it][2] == 0.0
        np.testing.assert_array_equal(info["alphas"][it][1:], info["alphas"][it - 1][1:])
    assert not np.array_equal(info["alphas"][1][0], info["alphas"][0][0])
    # the empty clusters' mean vectors are zeros
    np.testing.assert_array_equal(info["cluster_means"][1:], 0.0)


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("prior_weight", [0, 1])
def test_em_one_class_holding_every_frame(hard, prior_weight):
    f, t = _scene(11, 3, 8, [1] * 9)
    z = R.probabilities_from_features(f, t, 30.0)
    assert z.argmax(1).tolist() == [1] * 9
    Z, pred, info = R.em_dirichlet(z, hard=hard, prior_weight=prior_weight, iterations=10,
                                   record_objective=False)
    _check_rows(Z, 3, 9)
    assert sorted(info["mapping"]) == [0, 1, 2]
    if prior_weight:
        # the size prior keeps the buffer in one cluster, which the matching calls class 1
        assert pred.tolist() == [1] * 9
    # Without it the clusters are not anchored to classes: the frames spread over clusters
    # (hard) or the cluster holding them is matched to another class because the near-empty
    # clusters' mean vectors are just as close to class 1 (soft). Only invariants hold then.


@pytest.mark.parametrize("N", [1, 2, 7, 8])
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("few", [False, True])
def test_em_invariants_on_small_buffers(N, hard, few):
    labels = [n % 3 for n in range(N)]
    f, t = _scene(20 + N, 3, 8, labels)
    z = R.probabilities_from_features(f, t, 30.0)
    kw = {}
    if few:
        fs, _ = _scene(20 + N, 3, 8, [0, 1, 2])
        kw = dict(support_z=R.probabilities_from_features(fs, t, 30.0),
                  support_labels=[0, 1, 2])
    Z, pred, info = R.em_dirichlet(z, hard=hard, prior_weight=0, iterations=3,
                                   mm_max_steps=200, record_objective=False, **kw)
    _check_rows(Z, 3, N)
    assert pred.shape == (N,) and all(0 <= p < 3 for p in pred)
    assert sorted(info["mapping"]) == [0, 1, 2]
    assert np.all(np.isfinite(info["alpha"])) and np.all(info["alpha"] > 0)


def test_em_duplicate_rows_get_identical_rows():
    f, t = _scene(30, 3, 8, [0, 1, 2, 0, 1])
    f = np.concatenate([f, f[[0, 0, 3]]])
    z = R.probabilities_from_features(f, t, 30.0)
    for hard in (False, True):
        Z, pred, _ = R.em_dirichlet(z, hard=hard, prior_weight=0, iterations=5,
                                    record_objective=False)
        _check_rows(Z, 3, 8)
        np.testing.assert_array_equal(Z[5], Z[0])
        np.testing.assert_array_equal(Z[6], Z[0])
        np.testing.assert_array_equal(Z[7], Z[3])
        assert pred[5] == pred[6] == pred[0] and pred[7] == pred[3]


# ---------------------------------------------------------------------------- TransCLIP

def _two_clusters_and_a_misfit():
    """Five frames around e0, five around e1, and one frame x that sits among the e1 frames
    but that the text embeddings put (narrowly) in class 0."""
    rng = np.random.default_rng(0)
    c0 = [_unit(E[0] + 0.15 * rng.normal(size=4) * [0, 1, 1, 1]) for _ in range(5)]
    c1 = [_unit(E[1] + 0.15 * rng.normal(size=4) * [1, 0, 1, 1]) for _ in range(5)]
    x = _unit(E[1] + 1.0486 * E[2])
    t = np.array([_unit(0.3 * E[0] + E[2]), E[1]])
    return np.array(c0 + c1 + [x]), t


def test_transclip_two_separated_clusters_keep_their_labels():
    f, t = _two_clusters_and_a_misfit()
    f, t = f[:10], t
    Z, pred = R.transclip(f, t)
    _check_rows(Z, 2, 10)
    assert pred.tolist() == [0] * 5 + [1] * 5


def test_transclip_corrects_a_frame_inside_another_class_cluster():
    f, t = _two_clusters_and_a_misfit()
    yhat = R.probabilities_from_features(f, t, 100.0)
    assert yhat.argmax(1).tolist() == [0] * 5 + [1] * 5 + [0]  # zero-shot gets x wrong
    assert 0.5 < yhat[10, 0] < 0.7
    Z, pred = R.transclip(f, t)
    _check_rows(Z, 2, 11)
    assert pred.tolist() == [0] * 5 + [1] * 5 + [1]
    assert Z[10, 1] > 0.55
    # the same with an adapter's probabilities in place of the text-based ones
    p = np.array([[0.9, 0.1]] * 5 + [[0.1, 0.9]] * 5 + [[0.6, 0.4]])
    Z, pred = R.transclip(f, t, init_logprobs=np.log(p))
    assert pred.tolist() == [0] * 5 + [1] * 5 + [1]


def test_transclip_few_shot_follows_the_shots():
    f, t = _two_clusters_and_a_misfit()
    fs = np.array([_unit(E[0] + 0.1 * E[3]), _unit(E[1] + 0.1 * E[3])])
    Z, pred = R.transclip(f, t, support_f=fs, support_labels=[0, 1])
    _check_rows(Z, 2, 11)
    assert pred.tolist() == [0] * 5 + [1] * 5 + [1]
    # few-shot runs below init_top too (the N >= init_top rule is for zero-shot only)
    Z, pred = R.transclip(f[:3], t, support_f=fs, support_labels=[0, 1])
    _check_rows(Z, 2, 3)
    assert not np.array_equal(pred, [0, 0, 0]) or not np.allclose(
        np.log(Z), np.log(R.probabilities_from_features(f[:3], t, 100.0)))


@pytest.mark.parametrize("N", [1, 2, 7])
def test_transclip_returns_buffers_below_init_top_unchanged(N):
    f, t = _scene(40 + N, 3, 8, [n % 3 for n in range(N)])
    Z, pred = R.transclip(f, t)
    yhat = R.probabilities_from_features(f, t, 100.0)
    _check_rows(Z, 3, N)
    np.testing.assert_allclose(Z, yhat, rtol=1e-13, atol=1e-300)
    assert pred.tolist() == yhat.argmax(1).tolist()


@pytest.mark.parametrize("N", [8, 12])
def test_transclip_invariants_from_init_top_up(N):
    f, t = _scene(50 + N, 3, 8, [n % 3 for n in range(N)], noise=0.8)
    Z, pred = R.transclip(f, t)
    _check_rows(Z, 3, N)
    assert not np.allclose(np.log(Z), np.log(R.probabilities_from_features(f, t, 100.0)))
    assert pred.tolist() == Z.argmax(1).tolist()


def test_transclip_duplicate_frames():
    f, t = _scene(60, 3, 8, [0, 1, 2] * 3)
    f = np.concatenate([f, f[[0, 0, 4]]])
    Z, pred = R.transclip(f, t)
    _check_rows(Z, 3, 12)
    assert pred[9] == pred[10] == pred[0] and pred[11] == pred[4]


def test_transclip_one_class_holding_every_frame():
    f, t = _scene(70, 3, 8, [2] * 10)
    Z, pred = R.transclip(f, t)
    _check_rows(Z, 3, 10)
    assert pred.tolist() == [2] * 10


def test_transclip_works_in_log_space():
    # scale 1000 makes ŷ underflow to 0 for the losing classes; log ŷ stays finite.
    f, t = _scene(80, 3, 8, [0, 1, 2] * 4, noise=1.0)
    Z, pred = R.transclip(f, t, scale=1000.0, lam=0.5)
    _check_rows(Z, 3, 12)


def test_knn_excludes_self_by_index_and_breaks_ties_to_the_lower_index():
    a, b, c = _unit([1, 0, 0]), _unit([0.8, 0.6, 0]), _unit([0, 0, 1])
    x = np.array([a, a, a, b, c])
    W = R.knn_affinity(x, 2)
    assert np.all(np.diag(W) == 0.0)
    # row 0: its duplicates 1 and 2 (cos 1) are its neighbours
    assert np.flatnonzero(W[0]).tolist() == [1, 2] and W[0, 1] == W[0, 2] == 1.0
    # row 2: rows 0 and 1 tie at cos 1
    assert np.flatnonzero(W[2]).tolist() == [0, 1]
    # row 3 (b): rows 0, 1, 2 tie at cos 0.8; the two lowest indices win
    assert np.flatnonzero(W[3]).tolist() == [0, 1]
    np.testing.assert_allclose(W[3, [0, 1]], 0.8, rtol=1e-15)
    # with knn larger than the other rows, all of them
    assert np.count_nonzero(R.knn_affinity(x[:3], 5)[0]) == 2
    assert R.top_rows([0.5, 0.9, 0.5, 0.9, 0.1], 3) == [1, 3, 0]


# ----------------------------------------------------------------------------- fixtures

CASE_KEYS = {"name", "method", "params", "probs", "support_probs", "features", "text",
             "support_features", "support_labels", "expected_z", "expected_pred"}
EM_PARAMS = {"temperature", "prior_weight", "iterations", "mm_max_steps", "mm_tol",
             "mm_check_every", "eps", "empty_y"}
TC_PARAMS = {"scale", "knn", "lambda", "outer_steps", "sweeps", "init_top", "gamma",
             "g_divisor", "shot_weight"}


def test_fixture_file_is_well_formed():
    raw = FIXTURE.read_bytes()
    assert len(raw) < 300_000
    cases = json.loads(raw)
    names = [c["name"] for c in cases]
    assert len(set(names)) == len(names)
    methods = {c["method"] for c in cases}
    assert methods == {"em-dirichlet", "hard-em-dirichlet", "transclip"}
    sizes = set()
    for c in cases:
        assert set(c) == CASE_KEYS, c["name"]
        em = c["method"] != "transclip"
        assert set(c["params"]) == (EM_PARAMS if em else TC_PARAMS), c["name"]
        f = np.array(c["features"])
        t = np.array(c["text"])
        N, K = len(f), len(t)
        # inputs are float32 values (exact for an f32 reader), L2-normalised to f32 precision
        for key in ("features", "text", "support_features", "probs", "support_probs"):
            if c[key] is not None:
                a = np.array(c[key])
                assert np.array_equal(a.astype(np.float32).astype(np.float64), a), key
        np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-6)
        Z = np.array(c["expected_z"])
        _check_rows(Z, K, N)
        assert len(c["expected_pred"]) == N
        if em:
            z = np.array(c["probs"])
            assert z.shape == (N, K)
            np.testing.assert_allclose(
                z, R.probabilities_from_features(f, t, c["params"]["temperature"]), rtol=1e-7)
            if c["method"] == "hard-em-dirichlet":
                assert set(np.unique(Z)) <= {0.0, 1.0}
        else:
            assert c["probs"] is None and c["support_probs"] is None
        if c["support_labels"] is not None:
            S = len(c["support_labels"])
            assert np.array(c["support_features"]).shape == (S, f.shape[1])
            if em:
                assert np.array(c["support_probs"]).shape == (S, K)
        sizes.add((c["method"], N))
    # the coverage the Rust tests rely on
    assert ("transclip", 8) in sizes and ("transclip", 7) in sizes
    assert any(m != "transclip" and n == 2 for m, n in sizes)
    assert any(m != "transclip" and n == 7 for m, n in sizes)
    ref = next(c for c in cases if c["name"] == "em-soft-zeroshot-reference")
    assert ref["params"]["prior_weight"] == len(ref["text"]) // 5 >= 1


def test_fixture_generator_reproduces_cases_json_byte_for_byte(tmp_path):
    out = tmp_path / "cases.json"
    assert MF.main(["--out", str(out), "--quiet", "--skip-robustness"]) == 0
    fresh, committed = out.read_bytes(), FIXTURE.read_bytes()
    if fresh != committed:
        a, b = json.loads(fresh), json.loads(committed)
        worst = 0.0
        for ca, cb in zip(a, b):
            for key in ("expected_z", "probs", "features"):
                if ca[key] is not None and cb[key] is not None:
                    worst = max(worst, float(np.max(np.abs(np.array(ca[key])
                                                           - np.array(cb[key])))))
        pytest.fail(f"regenerated cases.json differs from the committed one (largest numeric "
                    f"difference {worst:.3g}; {len(a)} vs {len(b)} cases). Regenerate with "
                    f"python models/reference/make_transduct_fixtures.py and review the diff.")
