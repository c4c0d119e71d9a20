#!/usr/bin/env python3
"""Choose the transduction `default` presets on the fieldset *validation* split (never the test
split), scored on (a) a stream of windows where a few classes dominate and (b) the whole split.

Zero-shot start: features from `clipd embed`, candidates run with `clipd transduct`.

Few-shot start (TransCLIP anchored by an adapter's shots): the same path `clipd eval
--transduct` takes, through the CLI. Each adapter is trained with `clipd train` on a K-shot
draw from the pool (never val or test frames; plain view + 10 augmentations, as eval), the val
frames are classified with it by `clipd run --once` into a scratch history (embeddings on), and
each candidate is run by `clipd refine --adapter`, which builds the refiner's own context: the
adapter's logits as the start, the zero-shot class matrix as the text side, the adapter's
plain-view shots as the support set. The guard is computed here from the unguarded passes.

    python3 scripts/tune_transduct.py --data out/fieldset-seed0 [--bin target/release/clipd]
        [--only zero-shot|few-shot] [--shots 4] [--adapters jclip,tip] [--draws 3]

Prints one line per candidate (stream and whole top-1 %, seconds) and writes the tables as
Markdown to --out (default docs/results/transduct-tuning.md), one section per start; with
--only, the other section of an existing --out is kept."""

import argparse
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ZERO_SHOT = "### Zero-shot start"
FEW_SHOT = "### Few-shot start"


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


def table_header(what):
    return [f"| {what} | settings (on the reference preset) | stream | whole | stream, guarded "
            "| whole, guarded | seconds |",
            "|:---|:---|---:|---:|---:|---:|---:|"]


def table_row(what, sets, per_window, whole, n, secs):
    """`per_window` and `whole`: (correct, correct with the guard) pairs."""
    stream = sum(r for r, _ in per_window) / n
    stream_g = sum(g for _, g in per_window) / n
    whole_r, whole_g = (v / n for v in whole)
    return (f"| {what} | {', '.join(sets) or '(reference)'} | {100 * stream:.1f} | "
            f"{100 * whole_r:.1f} | {100 * stream_g:.1f} | {100 * whole_g:.1f} | {secs:.1f} |")


def guarded(pred, start, truth, guard):
    """Correct frames without and with the refiner's guard (a pass that would change more than
    `guard` of its frames is not applied)."""
    raw = int((pred == truth).sum())
    changed = float((pred != start).mean())
    return raw, raw if changed <= guard else int((start == truth).sum())


def zero_shot_section(a, classes, paths, labels, wins, tmp):
    manifest = json.loads((ROOT / "models/tiny-clip/manifest.json").read_text())
    scale = manifest["logit_scale"]
    k = len(classes)
    cfg = ROOT / "configs/demo.toml"
    run([a.bin, "embed", "--config", cfg, "--out", tmp / "x.npy", *paths])
    prompts = [f"a photo of a {c['name']}, a type of {c['prompt_domain']}." for c in classes]
    text_args = [arg for p in prompts for arg in ("--text", p)]
    run([a.bin, "embed", "--config", cfg, "--out", tmp / "t.npy", *text_args])
    x = np.load(tmp / "x.npy")
    t = np.load(tmp / "t.npy")
    zs = float(((x @ t.T).argmax(1) == labels).mean())

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
        np.save(tmp / "xw.npy", x[rows])
        sargs = [arg for s in sets for arg in ("--set", s)]
        run([a.bin, "transduct", "--method", method, "--preset", "reference", *sargs,
             "--features", tmp / "xw.npy", "--text", tmp / "t.npy",
             "--out", tmp / "z.npy", "--pred-out", tmp / "p.npy"])
        return guarded(np.load(tmp / "p.npy"), start[rows], labels[rows], a.guard)

    lines = [ZERO_SHOT, "",
             f"Zero-shot on the {a.split} split: {100 * zs:.1f}% ({len(labels)} frames, "
             f"{len(wins)} stream windows of {a.dominant} dominant classes).", "",
             f"Guarded: a pass that would change more than {100 * a.guard:.0f}% of its frames is "
             "not applied (the refiner's `max_changed`).", "",
             *table_header("method")]
    for method, sets in candidates:
        t0 = time.time()
        per_window = [score(method, sets, np.array(w)) for w in wins]
        whole = score(method, sets, np.arange(len(labels)))
        row = table_row(method, sets, per_window, whole, len(labels), time.time() - t0)
        print(row, flush=True)
        lines.append(row)
    return lines


def few_shot_candidates():
    """TransCLIP few-shot settings, each on top of the reference few-shot preset (λ = 0.5,
    G/50, γ = 0.002, shots weighted 50, 3 neighbours). γ and `shot_weight` only act through
    their product, so γ stands for both."""
    return [[],
            ["lambda=1"],
            ["lambda=2"],
            ["g_divisor=200"],
            ["lambda=1", "g_divisor=200"],
            ["lambda=2", "g_divisor=200"],
            ["lambda=4", "g_divisor=200"],
            ["lambda=2", "g_divisor=800"],
            ["lambda=4", "g_divisor=800"],
            ["gamma=0.02"],
            ["gamma=0.2"],
            ["lambda=2", "g_divisor=200", "gamma=0.02"],
            ["lambda=2", "g_divisor=200", "gamma=0.2"],
            ["knn=5"],
            ["lambda=2", "g_divisor=200", "knn=5"]]


def history_config(a, classes, sources, db, refine):
    """A config over the given window directories, logging embeddings to `db`; the classes
    (names, domains, order) are configs/demo.toml's, as `clipd eval` uses them."""
    demo = (ROOT / "configs/demo.toml").read_text()
    class_block = demo[demo.index("[[classes]]"):]
    lines = [f'bundle = "{ROOT / "models/tiny-clip"}"', "top_k = 5", "",
             "[engine]", "batch = 8", "", "[store]", f'path = "{db}"', "embeddings = true", ""]
    if refine:
        # The guard is applied by the scorer, from the unguarded pass.
        lines += ["[refine]", 'method = "transclip"', 'preset = "reference"',
                  "max_changed = 1.0", ""]
    for name, path in sources:
        lines += ["[[sources]]", 'kind = "dir"', f'name = "{name}"', f'path = "{path}"', ""]
    return "\n".join(lines) + "\n" + class_block


def draw_shots(a, classes, seed, out):
    """`a.shots` pool images per class (seeded), copied to a support directory `out`."""
    rng = np.random.default_rng(seed)
    for c in classes:
        pool = sorted((a.data / "pool" / c["dirname"]).iterdir())
        if len(pool) < a.shots:
            sys.exit(f"{a.data / 'pool' / c['dirname']}: {len(pool)} images, --shots {a.shots}")
        (out / c["dirname"]).mkdir(parents=True)
        for j in sorted(rng.choice(len(pool), a.shots, replace=False)):
            shutil.copy(pool[j], out / c["dirname"] / pool[j].name)


def few_shot_runs(a, classes, paths, labels, wins, tmp, cands):
    """Score every candidate from every adapter and draw: {(adapter, draw): (start top-1,
    [(stream, whole, stream guarded, whole guarded) per candidate])}, and seconds per
    candidate."""
    index = {c["name"]: i for i, c in enumerate(classes)}
    n = len(labels)
    # Each stream window becomes one source; a frame's file name is its index in `paths`.
    sources = []
    for w, members in enumerate(wins):
        d = tmp / "frames" / f"w{w:02d}"
        d.mkdir(parents=True)
        for i in members:
            shutil.copy(paths[i], d / f"{i:05d}{paths[i].suffix}")
        sources.append((f"w{w:02d}", d))
    (tmp / "run.toml").write_text(history_config(a, classes, sources, tmp / "h.db", False))
    (tmp / "refine.toml").write_text(history_config(a, classes, sources, tmp / "h.db", True))
    results, secs = {}, np.zeros(len(cands))
    for draw in range(a.first_draw, a.first_draw + a.draws):
        shots_dir = tmp / f"shots-{draw}"
        draw_shots(a, classes, draw, shots_dir)
        for adapter in a.adapters:
            t0 = time.time()
            db = tmp / f"{adapter}-{draw}.db"
            weights = tmp / f"{adapter}-{draw}.safetensors"
            run([a.bin, "train", "--config", tmp / "run.toml", "--support", shots_dir,
                 "--method", adapter, "--out", weights, "--seed", str(draw)])
            run([a.bin, "run", "--once", "--config", tmp / "run.toml", "--db", db,
                 "--adapter", weights])
            with sqlite3.connect(db) as con:
                got = con.execute("SELECT frame_ref, label FROM frames WHERE label IS NOT NULL")
                start = np.full(n, -1)
                for ref, label in got:
                    start[int(Path(ref).stem)] = index[label]
            if (start < 0).any():
                sys.exit(f"{db}: {(start < 0).sum()} {a.split} frames were not classified")
            base = float((start == labels).mean())
            print(f"{adapter}, draw {draw}: {a.shots}-shot start {100 * base:.1f}% on {a.split} "
                  f"(trained and classified in {time.time() - t0:.1f} s)", flush=True)

            def refine(sets, source):
                """Refine `source` (every frame when None) in one pass; the class per frame."""
                sargs = [arg for s in sets for arg in ("--set", s)]
                src = ["--source", source] if source else []
                out = run([a.bin, "refine", "--config", tmp / "refine.toml", "--db", db,
                           "--adapter", weights, "--method", "transclip", "--preset", "reference", *sargs,
                           *src, "--window", str(n)]).stdout
                if not re.search(r"\b0 frames skipped", out):
                    sys.exit(f"refine skipped frames: {out.strip()}")
                with sqlite3.connect(db) as con:
                    q = ("SELECT frame_ref, refined_label FROM frames "
                         "WHERE (?1 IS NULL OR source = ?1)")
                    return {int(Path(r).stem): index[lab] for r, lab in con.execute(q, (source,))}

            scores = []
            for c, sets in enumerate(cands):
                t1 = time.time()
                per_window = []
                for (name, _), members in zip(sources, wins):
                    got = refine(sets, name)
                    m = np.array(members)
                    per_window.append(guarded(np.array([got[i] for i in m]), start[m],
                                              labels[m], a.guard))
                got = refine(sets, None)
                whole = guarded(np.array([got[i] for i in range(n)]), start, labels, a.guard)
                s = (sum(r for r, _ in per_window) / n, whole[0] / n,
                     sum(g for _, g in per_window) / n, whole[1] / n)
                scores.append(s)
                secs[c] += time.time() - t1
                print(f"  {', '.join(sets) or '(reference)'}: stream {100 * s[0]:.1f}, whole "
                      f"{100 * s[1]:.1f}, guarded {100 * s[2]:.1f} / {100 * s[3]:.1f}",
                      flush=True)
            results[(adapter, draw)] = (base, scores)
    return results, secs


def few_shot_section(a, classes, paths, labels, wins, tmp):
    cands = few_shot_candidates()
    results, secs = few_shot_runs(a, classes, paths, labels, wins, tmp, cands)
    runs = len(results)
    base = np.array([b for b, _ in results.values()])
    s = np.array([sc for _, sc in results.values()])  # runs × candidates × 4
    gain = s - base[:, None, None]
    pct = lambda v: f"{100 * v:.1f}"
    sgn = lambda v: f"{100 * v:+.1f}"
    lines = [FEW_SHOT, "",
             f"TransCLIP from {a.shots}-shot adapters ({', '.join(a.adapters)}), each trained on "
             f"{a.draws} seeded draws from the pool; the adapter's logits are the start and its "
             "shots the support set, as in the daemon and `clipd eval`. Run by `clipd refine` on "
             f"the {a.split} split stored as history ({len(labels)} frames, {len(wins)} stream "
             f"windows of {a.dominant} dominant classes). Mean over the {runs} adapter × draw "
             f"runs; the start (no refinement) averages {pct(base.mean())}%. Guarded as above "
             f"({100 * a.guard:.0f}%); \"worst\" is the worst run's guarded stream change.", "",
             "| settings (on the reference few-shot preset) | stream | whole | stream, guarded "
             "| whole, guarded | Δ stream, guarded | Δ whole, guarded | worst Δ stream "
             "| seconds per run |",
             "|:---|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| start (no refinement) | {pct(base.mean())} | {pct(base.mean())} | "
             f"{pct(base.mean())} | {pct(base.mean())} | | | | |"]
    for c, sets in enumerate(cands):
        m = s[:, c].mean(0)
        g = gain[:, c].mean(0)
        lines.append(f"| {', '.join(sets) or '(reference)'} | {pct(m[0])} | {pct(m[1])} | "
                     f"{pct(m[2])} | {pct(m[3])} | {sgn(g[2])} | {sgn(g[3])} | "
                     f"{sgn(gain[:, c, 2].min())} | {secs[c] / runs:.1f} |")
    lines += ["", "Per adapter, guarded stream / whole change against its start (mean over "
              "draws):", "",
              "| settings | " + " | ".join(a.adapters) + " |",
              "|:---|" + "---:|" * len(a.adapters)]
    keys = list(results)
    for c, sets in enumerate(cands):
        cells = []
        for adapter in a.adapters:
            rows = [i for i, (ad, _) in enumerate(keys) if ad == adapter]
            cells.append(f"{sgn(gain[rows, c, 2].mean())} / {sgn(gain[rows, c, 3].mean())}")
        lines.append(f"| {', '.join(sets) or '(reference)'} | " + " | ".join(cells) + " |")
    starts = []
    for adapter in a.adapters:
        rows = [i for i, (ad, _) in enumerate(keys) if ad == adapter]
        starts.append(f"{adapter} {pct(base[rows].mean())}%")
    lines += ["", "Starts (mean over draws): " + ", ".join(starts) + "."]
    return lines


def sections(text):
    """The tables of an existing output by heading; an output without headings is the zero-shot
    table of earlier versions."""
    if not text.strip():
        return {}
    if not text.startswith("### "):
        text = f"{ZERO_SHOT}\n\n{text}"
    out = {}
    for part in re.split(r"^(?=### )", text, flags=re.M):
        if part.strip():
            out[part.splitlines()[0]] = part.rstrip("\n").splitlines()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--bin", type=Path, default=ROOT / "target/release/clipd")
    ap.add_argument("--split", default="val")
    ap.add_argument("--dominant", type=int, default=5)
    ap.add_argument("--guard", type=float, default=0.3,
                    help="refiner guard: passes changing more than this share are dropped")
    ap.add_argument("--only", choices=["zero-shot", "few-shot"],
                    help="score one start only (the other section of --out is kept)")
    ap.add_argument("--shots", type=int, default=4, help="few-shot: shots per class")
    ap.add_argument("--adapters", default="jclip,clip-adapter,tip,tip-f,linear,cross-modal",
                    help="few-shot: adapters to start from, comma separated")
    ap.add_argument("--draws", type=int, default=3,
                    help="few-shot: shot draws per adapter (seeds first-draw, first-draw+1, ...)")
    ap.add_argument("--first-draw", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "docs/results/transduct-tuning.md")
    a = ap.parse_args()
    a.bin = a.bin.resolve()
    a.data = a.data.resolve()
    a.adapters = [m for m in a.adapters.split(",") if m]

    classes = json.loads((a.data / "classes.json").read_text())
    paths, labels = [], []
    for i, c in enumerate(classes):
        for p in sorted((a.data / a.split / c["dirname"]).iterdir()):
            paths.append(p)
            labels.append(i)
    labels = np.array(labels)
    wins = windows(labels, len(classes), a.dominant, 0.2, 0)
    tmp = Path(tempfile.mkdtemp(prefix="clipd-tune-"))
    try:
        kept = sections(a.out.read_text()) if a.only and a.out.exists() else {}
        if a.only != "few-shot":
            kept[ZERO_SHOT] = zero_shot_section(a, classes, paths, labels, wins, tmp)
        if a.only != "zero-shot":
            kept[FEW_SHOT] = few_shot_section(a, classes, paths, labels, wins, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    order = [h for h in (ZERO_SHOT, FEW_SHOT) if h in kept]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n\n".join("\n".join(kept[h]) for h in order) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
