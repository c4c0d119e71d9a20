#!/usr/bin/env python3
"""Choose the transduction `default` preset on the fieldset *validation* split (never the test
split): zero-shot features from `clipd embed`, candidate settings run with `clipd transduct`,
scored on (a) a stream of windows where a few classes dominate and (b) the whole split.

    python3 scripts/tune_transduct.py --data out/fieldset-seed0 [--bin target/release/clipd]

Prints one line per candidate (stream and whole top-1 %, seconds) and writes the table as
Markdown to --out (default docs/results/transduct-tuning.md)."""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))}: {r.stderr.strip()}")
    return r


def windows(labels, k, dominant, background, seed):
    """Groups of `dominant` classes supply most of each window; the rest is dealt round-robin."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(k)
    groups = [order[i:i + dominant] for i in range(0, k, dominant)]
    group_of = {int(c): g for g, members in enumerate(groups) for c in members}
    wins = [[] for _ in groups]
    spill = []
    for c in range(k):
        frames = rng.permutation(np.flatnonzero(labels == c))
        keep = int(round(len(frames) * (1 - background)))
        wins[group_of[c]].extend(frames[:keep].tolist())
        spill.extend(frames[keep:].tolist())
    spill = rng.permutation(spill).tolist()
    for i, f in enumerate(spill):
        wins[i % len(wins)].append(f)
    return [w for w in wins if w]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--bin", type=Path, default=ROOT / "target/release/clipd")
    ap.add_argument("--split", default="val")
    ap.add_argument("--dominant", type=int, default=5)
    ap.add_argument("--guard", type=float, default=0.3,
                    help="refiner guard: passes changing more than this share are dropped")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/results/transduct-tuning.md")
    a = ap.parse_args()

    classes = json.loads((a.data / "classes.json").read_text())
    manifest = json.loads((ROOT / "models/tiny-clip/manifest.json").read_text())
    scale = manifest["logit_scale"]
    paths, labels = [], []
    for i, c in enumerate(classes):
        for p in sorted((a.data / a.split / c["dirname"]).iterdir()):
            paths.append(p)
            labels.append(i)
    labels = np.array(labels)
    k = len(classes)
    tmp = Path(tempfile.mkdtemp(prefix="clipd-tune-"))
    cfg = ROOT / "configs/demo.toml"
    run([a.bin, "embed", "--config", cfg, "--out", tmp / "x.npy", *paths])
    prompts = [f"a photo of a {c['name']}, a type of {c['prompt_domain']}." for c in classes]
    text_args = [arg for p in prompts for arg in ("--text", p)]
    run([a.bin, "embed", "--config", cfg, "--out", tmp / "t.npy", *text_args])
    x = np.load(tmp / "x.npy")
    t = np.load(tmp / "t.npy")
    zs = float(((x @ t.T).argmax(1) == labels).mean())
    wins = windows(labels, k, a.dominant, 0.2, 0)

    # The daemon starts TransCLIP from the classifier's own logits (scale = the bundle's).
    sc = "scale=%r" % scale
    candidates = [("transclip", [sc]),
                  ("transclip", [sc, "lambda=0.5"]),
                  ("transclip", [sc, "knn=5"]),
                  ("transclip", [sc, "lambda=2"]),
                  ("transclip", [sc, "g_divisor=200"]),
                  ("transclip", [sc, "lambda=2", "g_divisor=200"])]
    fast_mm = ["mm_tol=1e-6", "mm_check_every=5", "mm_max_steps=200"]
    for method in ("em-dirichlet", "hard-em-dirichlet"):
        for temp in (5, 10, 30):
            for w in (0, 1, k // 5):
                candidates.append((method, [f"temperature={temp}", f"prior_weight={w}"]))
        candidates.append((method, ["temperature=5", f"prior_weight={k // 5}", *fast_mm]))
        candidates.append((method, ["temperature=10", "prior_weight=1", *fast_mm]))

    start = (x @ t.T).argmax(1)

    def score(method, sets, rows):
        """Correct frames without and with the refiner's guard (a pass that would change more
        than `guard` of its frames is not applied)."""
        np.save(tmp / "xw.npy", x[rows])
        sargs = [arg for s in sets for arg in ("--set", s)]
        run([a.bin, "transduct", "--method", method, "--preset", "reference", *sargs,
             "--features", tmp / "xw.npy", "--text", tmp / "t.npy",
             "--out", tmp / "z.npy", "--pred-out", tmp / "p.npy"])
        pred = np.load(tmp / "p.npy")
        raw = int((pred == labels[rows]).sum())
        changed = float((pred != start[rows]).mean())
        guarded = raw if changed <= a.guard else int((start[rows] == labels[rows]).sum())
        return raw, guarded

    lines = [f"Zero-shot on the {a.split} split: {100 * zs:.1f}% ({len(labels)} frames, "
             f"{len(wins)} stream windows of {a.dominant} dominant classes).", "",
             f"Guarded: a pass that would change more than {100 * a.guard:.0f}% of its frames is "
             "not applied (the refiner's `max_changed`).", "",
             "| method | settings (on the reference preset) | stream | whole | stream, guarded "
             "| whole, guarded | seconds |",
             "|:---|:---|---:|---:|---:|---:|---:|"]
    for method, sets in candidates:
        t0 = time.time()
        per_window = [score(method, sets, np.array(w)) for w in wins]
        stream = sum(r for r, _ in per_window) / len(labels)
        stream_g = sum(g for _, g in per_window) / len(labels)
        whole, whole_g = (v / len(labels) for v in score(method, sets, np.arange(len(labels))))
        secs = time.time() - t0
        row = (f"| {method} | {', '.join(sets)} | {100 * stream:.1f} | {100 * whole:.1f} | "
               f"{100 * stream_g:.1f} | {100 * whole_g:.1f} | {secs:.1f} |")
        print(row, flush=True)
        lines.append(row)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
