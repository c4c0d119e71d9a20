#!/usr/bin/env python3
"""Regenerate tests/fixtures/transduct/cases.json from the NumPy reference.

    python models/reference/make_transduct_fixtures.py [--out PATH] [--skip-robustness] [--quiet]

Every case is drawn from its own fixed seed (numpy.random.default_rng) and run through
transduct_reference.py; the file is a JSON list, one case per line, floats written with repr
precision. Every input number (features, text, probabilities) is a float32 value, so a consumer
that reads them as f32 gets exactly what the reference used. Before writing, each case is checked
to be robust to round-off (no near-tie in a prediction, a kNN choice, a top-k choice, the
Hungarian matching, an empty-cluster threshold or an MM convergence check) and, unless
--skip-robustness is given, to f32-sized input perturbations (the EM cases rerun from the
features instead of the rounded probabilities, the TransCLIP cases with every feature dimension
scaled by 1 ± 1e-7): outputs must move by less than 1e-5 and predictions not at all. Needs numpy
and scipy only. See tests/fixtures/transduct/README.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_OUT = REPO / "tests" / "fixtures" / "transduct" / "cases.json"
sys.path.insert(0, str(HERE))

import transduct_reference as R  # noqa: E402

EM_FIXED = {"mm_max_steps": 1000, "mm_tol": 1e-11, "mm_check_every": 50, "eps": 1e-15,
            "empty_y": -10.0}
TC_FIXED = {"scale": 100.0, "knn": 3, "outer_steps": 10, "sweeps": 5, "init_top": 8,
            "g_divisor": 50.0, "shot_weight": 50.0}

# round-off robustness thresholds
PRED_MARGIN = 1e-6      # top-1 minus top-2 of every row whose argmax is used
TIE_GAP = 1e-6          # kNN boundary gaps (cosines) between distinct rows
LOG_TIE_GAP = 1e-4      # init_top boundary gaps in log ŷ_ik, relative to 1 − ŷ_ik (see below)
PERTURBED_Z = 1e-5      # largest change of Z allowed under f32-sized input perturbations
MM_CRIT_FACTOR = 1.001  # every MM criterion must be this far (as a ratio) from mm_tol
MASS_FACTOR = 1.5       # every cluster mass must be this far (as a ratio) from 1e-12
HUNGARIAN_MARGIN = 1e-6


# ------------------------------------------------------------------------------ data

def scene(seed: int, K: int, d: int, labels, *, shots_per_class: int = 0,
          feat_noise: float = 0.8, text_noise: float = 0.3, image_gap: float = 1.0,
          text_gap: float = 4.0):
    """CLIP-like synthetic embeddings: class directions c_k on the sphere; every image feature
    shares one "modality" direction and every text embedding another (so image-text cosines
    are close together, as with real CLIP, and softmax(100·cos) is not saturated); frames
    cluster around image_gap·g_img + c_k, text embeddings sit near (not at) text_gap·g_txt + c_k.
    Noise values are the expected norm of the noise vector. Returns L2-normalised (f64)
    (f, t, fs, ys); the callers round f, t, fs to float32 values."""
    rng = np.random.default_rng(seed)
    g_img, g_txt = R._normalise_rows(rng.normal(size=(2, d)))
    centres = R._normalise_rows(rng.normal(size=(K, d)))
    text = R._normalise_rows(text_gap * g_txt + centres
                             + rng.normal(size=(K, d)) * (text_noise / math.sqrt(d)))
    labels = [int(v) for v in labels]
    f = R._normalise_rows(image_gap * g_img + centres[labels]
                          + rng.normal(size=(len(labels), d)) * (feat_noise / math.sqrt(d)))
    ys = [k for k in range(K) for _ in range(shots_per_class)]
    fs = None
    if ys:
        fs = R._normalise_rows(image_gap * g_img + centres[ys]
                               + rng.normal(size=(len(ys), d)) * (feat_noise / math.sqrt(d)))
    return f, text, fs, (ys or None)


def random_labels(seed: int, K: int, N: int, classes=None):
    """N labels over `classes` (default all K), each class at least once when N allows."""
    rng = np.random.default_rng(seed + 1000)
    classes = list(range(K)) if classes is None else list(classes)
    base = [classes[i % len(classes)] for i in range(N)]
    return [int(v) for v in rng.permutation(base)]


def with_duplicates(f: np.ndarray, copies) -> np.ndarray:
    """Insert exact copies: `copies` is a list of (source row, position to insert at)."""
    rows = [row.copy() for row in f]
    for src, pos in copies:
        rows.insert(pos, f[src].copy())
    return np.array(rows, dtype=np.float64)


# ------------------------------------------------------------------------------ checks

def _gap(row) -> float:
    srt = sorted((float(v) for v in row), reverse=True)
    return srt[0] - srt[1] if len(srt) > 1 else math.inf


def check_em(name, Z, info, hard, few):
    if hard:
        margin = min(info["u_margin"]) if info["u_margin"] else math.inf
    else:
        margin = min(_gap(r) for r in Z)
    assert margin > PRED_MARGIN, f"{name}: argmax margin {margin}"
    for crits in info["mm_criteria"]:
        for step, crit in crits:
            tol = EM_FIXED["mm_tol"]
            assert crit == 0.0 or abs(math.log(crit / tol)) > math.log(MM_CRIT_FACTOR), (
                f"{name}: MM criterion {crit} at step {step} too close to mm_tol")
    final_mass = [R._fsum(Z[:, k]) for k in range(Z.shape[1])]
    for mass in info["mass"] + [final_mass]:
        for m in mass:
            assert m == 0.0 or abs(math.log(m / R.EMPTY_MASS)) > math.log(MASS_FACTOR), (
                f"{name}: cluster mass {m} too close to the empty threshold")
    if not few:
        # the Hungarian optimum must be unique on the clusters that predictions use
        means = info["cluster_means"]
        K = means.shape[0]
        used = sorted({R._argmax(r) for r in Z})
        scores = {}
        for perm in itertools.permutations(range(K)):
            s = R._fsum(means[k, perm[k]] for k in range(K))
            key = tuple(perm[k] for k in used)
            scores[key] = max(scores.get(key, -math.inf), s)
        ranked = sorted(scores.values(), reverse=True)
        best_key = max(scores, key=scores.get)
        assert best_key == tuple(info["mapping"][k] for k in used), f"{name}: Hungarian"
        if len(ranked) > 1:
            assert ranked[0] - ranked[1] > HUNGARIAN_MARGIN, f"{name}: Hungarian near-tie"


def _boundary_ok(values, chosen_count, rows_equal, tie_gap=TIE_GAP) -> bool:
    """values sorted as the algorithm sorts them (list of (value, index)); the boundary between
    position chosen_count-1 and chosen_count must be a clear gap or an exact tie of equal rows."""
    if chosen_count >= len(values) or chosen_count == 0:
        return True
    (va, ia), (vb, ib) = values[chosen_count - 1], values[chosen_count]
    gap = abs(va - vb)
    if gap > tie_gap:
        return True
    return gap == 0.0 and rows_equal(ia, ib)


def check_transclip(name, f, t, fs, ys, Z, params):
    assert min(_gap(r) for r in Z) > PRED_MARGIN, f"{name}: argmax margin"
    f = R._normalise_rows(f)
    t = R._normalise_rows(t)
    N = len(f)
    if fs is None and N < params["init_top"]:
        return
    x = f if fs is None else np.concatenate([f, R._normalise_rows(fs)], axis=0)

    def same(a, b):
        return bool(np.array_equal(x[a], x[b]))

    for i in range(len(x)):
        order = R.knn_order(x, i, params["knn"])
        vals = [(R._dot(x[i], x[j]), j) for j in order]
        assert _boundary_ok(vals, params["knn"], same), f"{name}: kNN near-tie at row {i}"
    if fs is None:
        cos = R._cosine_matrix(f, t)
        log_yhat = np.array([R._log_softmax_row(params["scale"] * r) for r in cos])
        yhat = R._exp(log_yhat)
        # A logit error δ moves log ŷ_ik by at most 2δ(1 − ŷ_ik): the gap in log ŷ at the
        # init_top boundary must be large against that (δ ≈ scale · 1e-7 = 1e-5).
        for k in range(t.shape[0]):
            order = R.top_rows(yhat[:, k], len(yhat))
            top = params["init_top"]
            if len(order) <= top:
                continue  # every frame is in the top set
            a, b = order[top - 1], order[top]
            rest = [R._fsum(np.delete(yhat[i], k)) for i in (a, b)]
            gap = float(log_yhat[a, k] - log_yhat[b, k])
            ok = gap > LOG_TIE_GAP * max(rest) or (gap == 0.0 and same(a, b))
            assert ok, f"{name}: top-k near-tie (class {k}, gap {gap:.3g}, 1-ŷ {max(rest):.3g})"


# ------------------------------------------------------------------------------ cases

def _mat(a):
    return None if a is None else np.asarray(a, dtype=np.float64).tolist()


def _f32(a):
    """The nearest float32 values (as float64): what an f32 consumer of the JSON reads."""
    return None if a is None else np.asarray(a, dtype=np.float32).astype(np.float64)


def _check_perturbed(name, Z, pred, Z2, pred2):
    worst = float(np.max(np.abs(Z2 - Z)))
    assert worst < PERTURBED_Z, f"{name}: perturbed inputs move Z by {worst:.2e}"
    assert pred2.tolist() == pred.tolist(), f"{name}: perturbed inputs change predictions"


def em_case(name, seed, K, d, N, *, robustness=True, temperature=30.0, prior_weight=None,
            hard=False, iterations=None, shots_per_class=0, classes=None, duplicates=None,
            **scene_kw):
    labels = random_labels(seed, K, N - len(duplicates or []), classes)
    f, t, fs, ys = scene(seed, K, d, labels, shots_per_class=shots_per_class, **scene_kw)
    acc = float(np.mean(R._cosine_matrix(f, t).argmax(1) == labels))
    if duplicates:
        f = with_duplicates(f, duplicates)
    assert len(f) == N
    params = {"temperature": float(temperature),
              "prior_weight": int(K / 5) if prior_weight is None else int(prior_weight),
              "iterations": (10 if hard else 20) if iterations is None else int(iterations),
              **EM_FIXED}
    f, t, fs = _f32(f), _f32(t), _f32(fs)
    z = _f32(R.probabilities_from_features(f, t, temperature))
    zs = None if fs is None else _f32(R.probabilities_from_features(fs, t, temperature))
    kw = dict(hard=hard, support_labels=ys, prior_weight=params["prior_weight"],
              iterations=params["iterations"], mm_max_steps=params["mm_max_steps"],
              mm_tol=params["mm_tol"], mm_check_every=params["mm_check_every"],
              eps=params["eps"], empty_y=params["empty_y"], record_objective=False)
    Z, pred, info = R.em_dirichlet(z, support_z=zs, temperature=temperature, **kw)
    check_em(name, Z, info, hard, fs is not None)
    if robustness:
        Z2, pred2, _ = R.em_dirichlet_from_features(f, t, temperature, support_f=fs, **kw)
        _check_perturbed(name, Z, pred, Z2, pred2)
    frozen = sum(any(fr) for fr in info["frozen"])
    summary = (f"{name}: N={N} K={K} d={d} S={len(ys or [])} frozen-iterations={frozen} "
               f"MM-steps={sum(info['mm_steps'])} zero-shot-acc={acc:.2f} "
               f"acc={np.mean(np.delete(pred, [p for _, p in duplicates or []]) == labels):.2f}")
    case = {"name": name, "method": "hard-em-dirichlet" if hard else "em-dirichlet",
            "params": params, "probs": _mat(z), "support_probs": _mat(zs),
            "features": _mat(f), "text": _mat(t), "support_features": _mat(fs),
            "support_labels": ys, "expected_z": _mat(Z),
            "expected_pred": [int(v) for v in pred]}
    return case, summary


def transclip_case(name, seed, K, d, N, *, robustness=True, shots_per_class=0, gamma=0.002,
                   lam=None, classes=None, duplicates=None, **scene_kw):
    labels = random_labels(seed, K, N - len(duplicates or []), classes)
    f, t, fs, ys = scene(seed, K, d, labels, shots_per_class=shots_per_class, **scene_kw)
    acc = float(np.mean(R._cosine_matrix(f, t).argmax(1) == labels))
    if duplicates:
        f = with_duplicates(f, duplicates)
    assert len(f) == N
    few = fs is not None
    params = {"scale": TC_FIXED["scale"], "knn": TC_FIXED["knn"],
              "lambda": (0.5 if few else 1.0) if lam is None else float(lam),
              "outer_steps": TC_FIXED["outer_steps"], "sweeps": TC_FIXED["sweeps"],
              "init_top": TC_FIXED["init_top"], "gamma": float(gamma),
              "g_divisor": TC_FIXED["g_divisor"], "shot_weight": TC_FIXED["shot_weight"]}
    f, t, fs = _f32(f), _f32(t), _f32(fs)
    kw = dict(support_labels=ys, scale=params["scale"], knn=params["knn"],
              lam=params["lambda"], outer_steps=params["outer_steps"], sweeps=params["sweeps"],
              init_top=params["init_top"], gamma=params["gamma"],
              g_divisor=params["g_divisor"], shot_weight=params["shot_weight"])
    Z, pred = R.transclip(f, t, support_f=fs, **kw)
    check_transclip(name, f, t, fs, ys, Z, params)
    if robustness:
        # one factor per dimension, so duplicate rows stay bit-identical
        scale = 1.0 + 1e-7 * np.random.default_rng(seed + 2000).choice([-1.0, 1.0], size=d)
        Z2, pred2 = R.transclip(f * scale, t * scale,
                                support_f=None if fs is None else fs * scale, **kw)
        _check_perturbed(name, Z, pred, Z2, pred2)
    summary = (f"{name}: N={N} K={K} d={d} S={len(ys or [])} zero-shot-acc={acc:.2f} "
               f"acc={np.mean(np.delete(pred, [p for _, p in duplicates or []]) == labels):.2f}")
    case = {"name": name, "method": "transclip", "params": params, "probs": None,
            "support_probs": None, "features": _mat(f), "text": _mat(t),
            "support_features": _mat(fs), "support_labels": ys, "expected_z": _mat(Z),
            "expected_pred": [int(v) for v in pred]}
    return case, summary


def build_cases(robustness: bool = True):
    specs = [
        # EM-Dirichlet
        (em_case, "em-soft-zeroshot-reference", 101, 5, 12, 40, {}),
        (em_case, "em-soft-zeroshot-w0", 102, 4, 10, 32, {"prior_weight": 0}),
        (em_case, "em-soft-zeroshot-t10-k6", 103, 6, 16, 36,
         {"temperature": 10.0, "prior_weight": 0}),
        (em_case, "em-hard-zeroshot-reference", 104, 5, 12, 40, {"hard": True}),
        (em_case, "em-hard-zeroshot-w0", 105, 4, 10, 30, {"hard": True, "prior_weight": 0}),
        (em_case, "em-soft-fewshot", 106, 4, 10, 24, {"shots_per_class": 2}),
        (em_case, "em-hard-fewshot-reference", 107, 5, 12, 25,
         {"shots_per_class": 1, "hard": True}),
        (em_case, "em-soft-absent-class", 108, 5, 12, 30, {"classes": [0, 1, 3, 4]}),
        (em_case, "em-soft-absent-class-w2", 114, 5, 12, 30,
         {"classes": [0, 1, 3, 4], "prior_weight": 2}),
        (em_case, "em-hard-absent-class", 109, 4, 10, 20,
         {"classes": [0, 1, 2], "hard": True, "prior_weight": 1}),
        (em_case, "em-soft-one-class", 110, 4, 8, 12, {"classes": [1], "prior_weight": 0}),
        # soft zero-shot with N < K is left out on purpose: a frame then spreads over several
        # clusters whose mean vectors coincide, an exact Hungarian tie the spec leaves open
        (em_case, "em-hard-zeroshot-n2", 111, 3, 8, 2, {"hard": True}),
        (em_case, "em-soft-fewshot-n2", 115, 3, 8, 2, {"shots_per_class": 1}),
        (em_case, "em-soft-n7", 112, 4, 8, 7, {}),
        (em_case, "em-hard-n7", 113, 4, 8, 7, {"hard": True}),
        (em_case, "em-soft-duplicates", 114, 3, 8, 14,
         {"duplicates": [(0, 3), (0, 7), (2, 10), (5, 12)]}),
        # TransCLIP
        (transclip_case, "transclip-zeroshot", 201, 5, 16, 40, {}),
        (transclip_case, "transclip-zeroshot-n60", 202, 4, 8, 60, {}),
        (transclip_case, "transclip-zeroshot-absent-class", 203, 4, 10, 20,
         {"classes": [0, 1, 2]}),
        (transclip_case, "transclip-fewshot", 204, 4, 12, 30, {"shots_per_class": 2}),
        (transclip_case, "transclip-fewshot-gamma0.2", 205, 3, 8, 20,
         {"shots_per_class": 3, "gamma": 0.2}),
        (transclip_case, "transclip-duplicates", 206, 3, 8, 16,
         {"duplicates": [(0, 1), (0, 5), (0, 9), (4, 12)]}),
        (transclip_case, "transclip-n8", 207, 3, 8, 8, {}),
        (transclip_case, "transclip-n7-unchanged", 208, 3, 8, 7, {}),
    ]
    cases, summaries = [], []
    for make, name, seed, K, d, N, kw in specs:
        case, summary = make(name, seed, K, d, N, robustness=robustness, **kw)
        cases.append(case)
        summaries.append(summary)
    return cases, summaries


def render(cases) -> str:
    return "[\n" + ",\n".join(json.dumps(c) for c in cases) + "\n]\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write cases.json")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--skip-robustness", action="store_true",
                    help="skip the perturbed reruns (same output, about half the time)")
    args = ap.parse_args(argv)
    cases, summaries = build_cases(robustness=not args.skip_robustness)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = render(cases)
    args.out.write_bytes(text.encode("utf-8"))
    if not args.quiet:
        for s in summaries:
            print(s)
        print(f"wrote {len(cases)} cases, {len(text.encode('utf-8'))} bytes to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
