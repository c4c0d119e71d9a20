#!/usr/bin/env python3
"""Measure a bundle's CLIP-like properties and few-shot peer figures on an emojiset benchmark.

    python models/export/standin_properties.py --bundle models/emoji-clip --data out/emojiset0 \\
        [--shots 1,2,4,8,16] [--seeds 0,1,2] [--json out/props.json]

Everything runs on ONNX Runtime features with numpy and scikit-learn (no torch):

- the properties a stand-in must share with real CLIP (shared/SCIENCE.md): a modality gap
  (an image is much closer to other images of its class than to its class's text), domain
  prompts beating plain ones, zero-shot beating a 4-shot linear probe, and the 16-shot class
  prototype beating the text embedding;
- peer figures for clipd's adapters: zero-shot (plain and domain prompts), a logistic-regression
  linear probe (C by cross-validation on the shots), the class prototype, and Tip-Adapter
  (training-free; alpha and beta chosen on the labelled val split, never on test), at each shot
  count over several draws, on the cross-style split (shots from pool/, frames from test/: the
  headline) and the same-style split (frames from test_same/).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from evaluate import BundleRunner, read_index  # noqa: E402

CLIP_SCALE = 100.0  # Tip-Adapter's text logits use CLIP's fixed scale (as clipd's tip does)
TIP_BETAS = np.linspace(0.1, 12.0, 24)
TIP_ALPHAS = np.linspace(0.1, 10.0, 34)


def plain_prompt(c) -> str:
    return f"a photo of a {c['name']}."


def domain_prompt(c) -> str:
    return f"a photo of a {c['name']}, a type of {c['prompt_domain']}."


def features(runner: BundleRunner, data: Path, rows, classes, cache: Path | None = None):
    """{split: (features N×d, labels N)} for every split in index.csv (cached in an .npz)."""
    index_of = {c["dirname"]: i for i, c in enumerate(classes)}
    if cache is not None and cache.is_file():
        z = np.load(cache)
        return {k[:-2]: (z[k], z[k[:-2] + "_y"]) for k in z.files if k.endswith("_x")}
    out = {}
    for split in sorted({r["split"] for r in rows}):
        part = [r for r in rows if r["split"] == split]
        x = runner.encode_images(runner.preprocess_paths([data / r["path"] for r in part]))
        out[split] = (x, np.array([index_of[r["class"]] for r in part]))
    if cache is not None:
        np.savez(cache, **{f"{k}_x": v[0] for k, v in out.items()},
                 **{f"{k}_y": v[1] for k, v in out.items()})
    return out


def top1(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


def top5(logits: np.ndarray, y: np.ndarray) -> float:
    order = np.argsort(-logits, axis=1)[:, :5]
    return float((order == y[:, None]).any(1).mean())


def draw_shots(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), shots, replace=False)
                           for c in np.unique(labels)])


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def linear_probe(x, y, test_x, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    shots = int(np.bincount(y).min())
    base = LogisticRegression(max_iter=3000)
    if shots >= 2:
        folds = StratifiedKFold(n_splits=min(shots, 4), shuffle=True, random_state=seed)
        clf = GridSearchCV(base, {"C": [0.1, 1.0, 10.0, 100.0]}, cv=folds).fit(x, y)
    else:
        clf = base.set_params(C=10.0).fit(x, y)
    return clf.decision_function(test_x)


def prototypes(x, y, k: int) -> np.ndarray:
    return normalise(np.stack([x[y == c].mean(0) for c in range(k)]))


def tip_logits(f, text, keys, values, alpha, beta):
    aff = f @ keys.T
    return CLIP_SCALE * f @ text.T + alpha * np.exp(-beta * (1 - aff)) @ values


def tip_choose(val_x, val_y, text, keys, values):
    """alpha, beta maximising val top-1 (ties: the smaller alpha, then the smaller beta)."""
    zs = CLIP_SCALE * val_x @ text.T
    aff = val_x @ keys.T
    best = (-1.0, 0.0, 0.0)
    for beta in TIP_BETAS:
        cache = np.exp(-beta * (1 - aff)) @ values
        for alpha in TIP_ALPHAS:
            acc = top1(zs + alpha * cache, val_y)
            if acc > best[0] + 1e-12:
                best = (acc, float(alpha), float(beta))
    return best[1], best[2]


def measure(runner: BundleRunner, data: Path, shots_list, seeds, feat_cache=None, log=print):
    rows, classes = read_index(data)
    k = len(classes)
    t0 = time.time()
    F = features(runner, data, rows, classes, feat_cache)
    log(f"features: {', '.join(f'{s} {len(v[1])}' for s, v in F.items())} ({time.time() - t0:.0f}s)")
    text = {"plain": runner.encode_text([plain_prompt(c) for c in classes]),
            "domain": runner.encode_text([domain_prompt(c) for c in classes])}
    pool_x, pool_y = F["pool"]
    val_x, val_y = F["val"]
    out = {"bundle": runner.manifest["name"], "data": str(data), "classes": k,
           "counts": {s: int(len(v[1])) for s, v in F.items()}}

    # --- zero-shot --------------------------------------------------------------------------
    zs = {}
    for split in ("test", "val", "test_same", "pool"):
        if split not in F:
            continue
        x, y = F[split]
        zs[split] = {p: {"top1": top1(x @ t.T, y), "top5": top5(x @ t.T, y)}
                     for p, t in text.items()}
    out["zero_shot"] = zs
    T = text["domain"]

    # --- modality gap -------------------------------------------------------------------------
    gap = {}
    for split in ("test", "test_same", "pool"):
        if split not in F:
            continue
        x, y = F[split]
        own_text = float(np.mean(np.sum(x * T[y], 1)))
        other_text = float(np.mean((x @ T.T)[y[:, None] != np.arange(k)[None, :]]))
        sims = x @ x.T
        same = (y[:, None] == y[None, :]) & ~np.eye(len(y), dtype=bool)
        diff = y[:, None] != y[None, :]
        gap[split] = {"image_own_text": own_text, "image_other_text": other_text,
                      "image_same_class_image": float(sims[same].mean()),
                      "image_other_class_image": float(sims[diff].mean())}
    tx, ty = F["test"]
    gap["test_vs_pool_same_class_image"] = float(np.mean(
        [(tx[ty == c] @ pool_x[pool_y == c].T).mean() for c in range(k)]))
    gap["prototype_text_cosine_16"] = float(np.mean(np.sum(prototypes(pool_x, pool_y, k) * T, 1)))
    out["gap"] = gap

    # --- few-shot peers ---------------------------------------------------------------------------
    evals = {"cross_style": F["test"]}
    if "test_same" in F:
        evals["same_style"] = F["test_same"]
    fs = {name: {} for name in evals}
    for shots in shots_list:
        per = {name: {m: [] for m in ("linear", "prototype", "tip", "tip_alpha", "tip_beta")}
               for name in evals}
        for seed in seeds:
            idx = draw_shots(pool_y, shots, seed)
            sx, sy = pool_x[idx], pool_y[idx]
            values = np.eye(k)[sy]
            alpha, beta = tip_choose(val_x, val_y, T, sx, values)
            proto = prototypes(sx, sy, k)
            for name, (x, y) in evals.items():
                per[name]["linear"].append(top1(linear_probe(sx, sy, x, seed), y))
                per[name]["prototype"].append(top1(x @ proto.T, y))
                per[name]["tip"].append(top1(tip_logits(x, T, sx, values, alpha, beta), y))
                per[name]["tip_alpha"].append(alpha)
                per[name]["tip_beta"].append(beta)
        for name in evals:
            fs[name][str(shots)] = {m: {"mean": float(np.mean(v)), "std": float(np.std(v)),
                                        "runs": [float(a) for a in v]}
                                    for m, v in per[name].items()}
        log(f"{shots:2d} shots: " + "; ".join(
            f"{n}: LP {fs[n][str(shots)]['linear']['mean']:.3f} proto "
            f"{fs[n][str(shots)]['prototype']['mean']:.3f} tip {fs[n][str(shots)]['tip']['mean']:.3f}"
            for n in evals) + f" ({time.time() - t0:.0f}s)")
    out["few_shot"] = fs
    out["properties"] = properties(out)
    return out


def properties(r: dict) -> dict:
    """The four properties, each with the two figures it compares."""
    g = r["gap"]["test"]
    zs = r["zero_shot"]["test"]
    lp4 = r["few_shot"]["cross_style"]["4"]["linear"]["mean"] if "4" in \
        r["few_shot"]["cross_style"] else None
    p16 = r["few_shot"]["cross_style"]["16"]["prototype"]["mean"] if "16" in \
        r["few_shot"]["cross_style"] else None
    return {
        "modality_gap": {"image_own_text": g["image_own_text"],
                         "image_same_class_image": g["image_same_class_image"],
                         "holds": g["image_own_text"] < g["image_same_class_image"] - 0.1},
        "domain_beats_plain": {"domain": zs["domain"]["top1"], "plain": zs["plain"]["top1"],
                               "holds": zs["domain"]["top1"] > zs["plain"]["top1"]},
        "zero_shot_beats_4shot_lp": {"zero_shot": zs["domain"]["top1"], "linear_4": lp4,
                                     "holds": lp4 is not None and zs["domain"]["top1"] > lp4},
        "prototype16_beats_text": {"prototype_16": p16, "text": zs["domain"]["top1"],
                                   "holds": p16 is not None and p16 > zs["domain"]["top1"]},
    }


def report(r: dict) -> str:
    """A plain-text summary of measure()'s result."""
    lines = [f"bundle {r['bundle']}, data {r['data']}, {r['classes']} classes, counts {r['counts']}"]
    for split, v in r["zero_shot"].items():
        lines.append(f"zero-shot {split:9s} plain {100 * v['plain']['top1']:.1f} / "
                     f"{100 * v['plain']['top5']:.1f}   domain {100 * v['domain']['top1']:.1f} / "
                     f"{100 * v['domain']['top5']:.1f}  (top-1 / top-5)")
    for split, v in r["gap"].items():
        lines.append(f"gap {split}: {v if not isinstance(v, dict) else {a: round(b, 3) for a, b in v.items()}}")
    for name, per in r["few_shot"].items():
        lines.append(f"{name}: shots | linear | prototype | tip (alpha, beta)")
        for shots, m in per.items():
            lines.append(f"  {shots:>2} | {100 * m['linear']['mean']:.1f} ± {100 * m['linear']['std']:.1f}"
                         f" | {100 * m['prototype']['mean']:.1f} ± {100 * m['prototype']['std']:.1f}"
                         f" | {100 * m['tip']['mean']:.1f} ± {100 * m['tip']['std']:.1f}"
                         f" ({np.mean(m['tip_alpha']['runs']):.2f}, {np.mean(m['tip_beta']['runs']):.2f})")
    for name, p in r["properties"].items():
        lines.append(f"property {name}: {'holds' if p['holds'] else 'FAILS'} "
                     f"{ {a: (round(b, 3) if isinstance(b, float) else b) for a, b in p.items() if a != 'holds'} }")
    return "\n".join(lines)


def markdown(r: dict) -> str:
    """Tables for docs/results.md: top-1 (%) mean ± std over the draws, per split."""
    zs = r["zero_shot"]
    out = []
    for name, split in (("cross_style", "test"), ("same_style", "test_same")):
        if name not in r["few_shot"]:
            continue
        per = r["few_shot"][name]
        shots = list(per)
        out.append(f"**{name.replace('_', '-')}** (frames from `{split}/`), top-1 %:\n")
        out.append("| method | " + " | ".join(f"{k} shot{'s' if k != '1' else ''}" for k in shots) + " |")
        out.append("|:---|" + "---:|" * len(shots))
        for p in ("plain", "domain"):
            v = 100 * zs[split][p]["top1"]
            out.append(f"| zero-shot, {p} prompts | " + " | ".join(f"{v:.1f}" for _ in shots) + " |")
        for m, label in (("linear", "linear probe (sklearn)"), ("prototype", "class prototype"),
                         ("tip", "Tip-Adapter (α, β on val)")):
            out.append(f"| {label} | " + " | ".join(
                f"{100 * per[k][m]['mean']:.1f} ± {100 * per[k][m]['std']:.1f}" for k in shots) + " |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--shots", default="1,2,4,8,16")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--features", type=Path, help="cache the image features in this .npz")
    ap.add_argument("--json", type=Path, help="write the full result here")
    ap.add_argument("--markdown", type=Path, help="write the result tables here")
    a = ap.parse_args(argv)
    runner = BundleRunner(a.bundle, a.threads)
    r = measure(runner, a.data, [int(s) for s in a.shots.split(",")],
                [int(s) for s in a.seeds.split(",")], a.features)
    print(report(r))
    if a.json:
        a.json.write_text(json.dumps(r, indent=1) + "\n")
    if a.markdown:
        a.markdown.write_text(markdown(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
