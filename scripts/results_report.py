#!/usr/bin/env python3
"""Helpers for scripts/results: write the control/benchmark configs, then assemble
docs/results.md from what `clipd eval`, `clipd train` and `clipd bench` wrote, plus two
independent checks computed here with ONNX Runtime and scikit-learn (a peer linear probe and
diagnostics of the tiny model's feature space)."""

import argparse
import csv
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models/export"))


def toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def write_configs(data: Path, work: Path) -> None:
    classes = json.loads((data / "classes.json").read_text())
    bundle = Path("../../models/tiny-clip")  # relative to work/
    # Text-blind control: the same folders, but every class is called by an opaque code, so
    # prompts carry no information and only the shots can.
    lines = [f"bundle = {toml_str(str(bundle))}", "", "[store]", 'path = "blind.db"', ""]
    for i, c in enumerate(classes):
        code = f"item {i + 1:02d}"
        lines += ["[[classes]]", f"name = {toml_str(code)}",
                  f"prompts = [{toml_str('a photo of ' + code + '.')}]",
                  f"aliases = [{toml_str(c['dirname'])}]", ""]
    (work / "text-blind.toml").write_text("\n".join(lines))
    # 40 classes x 16 shots for the training-time benchmark (the first 40 fieldset classes).
    sub = classes[:40]
    support = work / "train40"
    support.mkdir(parents=True, exist_ok=True)
    for c in sub:
        link = support / c["dirname"]
        if not link.exists():
            link.symlink_to((data / "pool" / c["dirname"]).resolve())
    lines = [f"bundle = {toml_str(str(bundle))}", "", "[store]", 'path = "train40.db"', "",
             "[[sources]]", 'kind = "dir"', f"path = {toml_str(str((data / 'test').resolve()))}",
             ""]
    for c in sub:
        lines += ["[[classes]]", f"name = {toml_str(c['name'])}",
                  f"domain = {toml_str(c['prompt_domain'])}", ""]
    (work / "train40.toml").write_text("\n".join(lines))


def read_cells(path: Path) -> dict:
    """(method, shots) -> (top1 mean %, top1 std %, top5 mean %) from results.csv."""
    out = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            out[(r["method"], int(r["shots"]))] = (100 * float(r["top1_mean"]),
                                                  100 * float(r["top1_std"] or 0),
                                                  100 * float(r["top5_mean"] or 0))
    return out


def diagnostics(data: Path, seeds: list[int], shots_list: list[int]) -> dict:
    """Independent numbers from ONNX Runtime + scikit-learn on the same data."""
    import numpy as np
    # scikit-learn warns that 1-shot data "could be regression"; it is not.
    warnings.filterwarnings("ignore", category=UserWarning)
    from evaluate import BundleRunner, default_prompt, linear_probe, read_index

    runner = BundleRunner(ROOT / "models/tiny-clip", 2)
    rows, classes = read_index(data)
    index_of = {c["dirname"]: i for i, c in enumerate(classes)}
    feats, labels = {}, {}
    for split in ("pool", "test"):
        part = [r for r in rows if r["split"] == split]
        feats[split] = runner.encode_images(runner.preprocess_paths([data / r["path"] for r in part]))
        labels[split] = np.array([index_of[r["class"]] for r in part])
    text = runner.encode_text([default_prompt(c["name"], c["prompt_domain"]) for c in classes])
    s = runner.manifest["logit_scale"]
    pf, py, tf, ty = feats["pool"], labels["pool"], feats["test"], labels["test"]
    k = len(classes)

    def acc(logits, y):
        return 100 * float((logits.argmax(1) == y).mean())

    protos = np.stack([pf[py == c].mean(0) for c in range(k)])
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    same = (py[:, None] == py[None]) & ~np.eye(len(py), dtype=bool)
    other = (py[:, None] != py[None])
    sims = pf @ pf.T
    onehot = np.eye(k)[py]
    tip = {}
    for alpha in (0.0, 0.5, 1.0, 3.0):
        e = np.exp(-5.5 * (1 - sims))
        np.fill_diagonal(e, 0)
        tip[alpha] = acc(s * pf @ text.T + alpha * e @ onehot, py)
    lp = {}
    for n in shots_list:
        runs = [linear_probe(pf, py, tf, ty, n, seed) for seed in seeds]
        lp[n] = (100 * float(np.mean([r[0] for r in runs])), 100 * float(np.std([r[0] for r in runs])))
    return {
        "zs_pool": acc(s * pf @ text.T, py), "zs_test": acc(s * tf @ text.T, ty),
        "proto_pool": acc(pf @ protos.T, py), "proto_test": acc(tf @ protos.T, ty),
        "cos_same": float(sims[same].mean()), "cos_other": float(sims[other].mean()),
        "cos_text": float((pf @ text.T)[np.arange(len(py)), py].mean()),
        "cos_proto_text": float(np.mean(np.sum(protos * text, axis=1))),
        "tip_loo": tip, "sklearn_lp": lp,
    }


def grab(pattern: str, text: str, default: str = "?") -> str:
    m = re.search(pattern, text)
    return m.group(1) if m else default


def report(data: Path, work: Path, docs: Path, n_seeds: int) -> str:
    shots = [1, 2, 4, 8, 16]
    seeds = list(range(n_seeds))
    cells = read_cells(docs / "fieldset/results.csv")
    blind = read_cells(docs / "text-blind/results.csv")
    d = diagnostics(data, seeds, shots)
    methods = ["jclip", "clip-adapter", "tip", "tip-f", "linear", "cross-modal"]
    zs = cells[("zero-shot", 0)][0]
    zs_blind = blind[("zero-shot", 0)][0]
    fieldset_txt = (work / "fieldset.txt").read_text()
    timing_block = fieldset_txt[fieldset_txt.find("training + hyperparameter search"):].split("wrote")[0]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    manifest = json.loads((ROOT / "models/tiny-clip/manifest.json").read_text())

    def best_at(table, n):
        return max(((m, table[(m, n)][0]) for m in methods if (m, n) in table), key=lambda x: x[1])

    out = []
    w = out.append
    w("# Few-shot results\n")
    w("Generated by `scripts/results` (do not edit by hand; the discussion below is part of the "
      "generator). Commit " + commit + f", bundle `{manifest['name']}`, fieldset data seed 0, "
      f"support draws with seeds {', '.join(map(str, seeds))}.\n")
    w("Protocol: every method trains on the drawn shots only; hyperparameters (residual ratios, "
      "learning rate, epochs, α/β) are chosen by cross-validation over those shots (Tip: "
      "leave-one-out over the cache); one shot per class falls back to the documented defaults "
      "(docs/adapters.md). The test split is only ever scored. Pool images are clean, test "
      "images carry the fieldset camera shift, as a device camera would.\n")
    w("## Fieldset benchmark (50 classes, 2500 test frames)\n")
    w((docs / "fieldset/results.md").read_text())
    w("\nPeer check: scikit-learn `LogisticRegression` (C by 4-fold CV on the shots) on ONNX "
      "Runtime features, same shot counts and seeds (its own draws):\n")
    w("| shots | " + " | ".join(str(n) for n in shots) + " |")
    w("|---|" + "---|" * len(shots))
    w("| sklearn linear probe | " + " | ".join(
        f"{d['sklearn_lp'][n][0]:.1f} ± {d['sklearn_lp'][n][1]:.1f}" for n in shots) + " |")
    w("| clipd `linear` | " + " | ".join(
        f"{cells[('linear', n)][0]:.1f} ± {cells[('linear', n)][1]:.1f}" if ('linear', n) in cells
        else "-" for n in shots) + " |\n")
    w("Training curves (mean over draws; test accuracy is drawn for reading only and was never "
      "used to choose anything): "
      + ", ".join(f"[{n} shots](results/fieldset/curves-{n}shot.png)" for n in shots) + ".\n")
    w("![4-shot curves](results/fieldset/curves-4shot.png)\n")

    b4 = best_at(cells, 4)
    b16 = best_at(cells, 16)
    w("## What the figures say, and why they differ from the literature\n")
    w(f"The literature expects `jclip` and `tip-f` to beat zero-shot by several points at 4 shots. "
      f"Here the best method at 4 shots is `{b4[0]}` at {b4[1]:.1f}% against zero-shot {zs:.1f}% "
      f"({b4[1] - zs:+.1f} points), and at 16 shots `{b16[0]}` at {b16[1]:.1f}% "
      f"({b16[1] - zs:+.1f}). The adapters end where zero-shot is; `linear`, which cannot fall back "
      f"on the text, trails badly at 1–2 shots ({cells[('linear', 1)][0]:.1f}% and "
      f"{cells[('linear', 2)][0]:.1f}%), as expected.\n")
    w("The cause is the model, not the training code. The tiny CLIP was trained contrastively on "
      "one caption per class, and the captions are these very prompts, so each text embedding is "
      "already the class centre the image encoder learned to hit. The shots add nothing the text "
      "lacks (ONNX Runtime features, computed by the generator):\n")
    w(f"- mean cosine of a pool image to its own class's text: {d['cos_text']:.3f}; to another "
      f"image of its class: {d['cos_same']:.3f} (other classes: {d['cos_other']:.3f}). The text "
      "is closer to a class's images than they are to each other.")
    w(f"- the prototype of all 16 pool shots per class scores {d['proto_pool']:.1f}% on the pool "
      f"itself (in-sample) and {d['proto_test']:.1f}% on the test split; the text alone scores "
      f"{d['zs_pool']:.1f}% and {d['zs_test']:.1f}%. Cosine of prototype and text: "
      f"{d['cos_proto_text']:.3f}.")
    w("- Tip-Adapter's cache, scored leave-one-out on the 16-shot pool (β = 5.5): " + ", ".join(
        f"α = {a:g}: {v:.1f}%" for a, v in d["tip_loo"].items())
      + ". Adding the cache only hurts on held-out shots, so the search correctly takes the "
        "smallest α; the CV of the trained methods likewise keeps early epochs and small "
        "learning rates, which leaves them at zero-shot instead of overfitting below it.\n")
    w("With real CLIP weights the text embeddings are imperfect class centres (the modality gap, "
      "ambiguous names, prompts never seen in training), and that gap is what the adapters "
      "close. The control below removes the text's information on purpose to show that each "
      "method does learn from the shots when they carry information.\n")
    w("## Control: text-blind classes\n")
    w("Same images, same protocol, but every class is named by an opaque code (`item 01` … "
      "`item 50`, prompt \"a photo of item 01.\"), so zero-shot is near chance and every point "
      f"above {zs_blind:.1f}% comes from the shots.\n")
    w((docs / "text-blind/results.md").read_text())
    bb4 = best_at(blind, 4)
    w(f"\nAt 4 shots the best method is `{bb4[0]}` with {bb4[1]:.1f}%. `tip`, `tip-f`, `linear` "
      "and `cross-modal` learn the classes from the shots alone. `jclip` and `clip-adapter` stay "
      f"at chance ({blind[('jclip', 4)][0]:.1f}% and {blind[('clip-adapter', 4)][0]:.1f}% at 4 "
      "shots) by construction: they score against the class text matrix passed through one "
      "shared adapter, and when every class has the same prompt embedding (as here: the tiny "
      "model's vocabulary has no numerals, so all 50 prompts embed identically) every adapted "
      "row is the same, so no amount of training can separate the classes. They refine what the text "
      "knows; they cannot replace it. (`cross-modal` can, because it learns each class row "
      "freely from its initialisation.)\n")

    w("## Transductive refinement\n")
    w("The `default` preset is chosen on the fieldset validation split (500 mildly shifted "
      "frames) by `scripts/tune_transduct.py`; the test split below is only scored. Candidates, "
      "from the zero-shot start and from the few-shot adapters:\n")
    w((docs / "transduct-tuning.md").read_text())
    w("\n" + 'One rule picks every default: the best guarded stream accuracy (a buffer of a few classes, what a camera sees) among the settings that do not lose on the whole split. Zero-shot TransCLIP: λ = 2, G/200 (the reference lost 9 points on the stream, these lose 1). EM-Dirichlet: T = 5 with the reference prior weight; the buffers that prior collapses change most of their labels, which the guard catches. Few-shot TransCLIP: λ = 2, G/800, the rest as the reference. Started from an adapter, the reference settings lost 7.1 points on the stream (every adapter but the linear probe lost 7–9) for +0.4 on the whole split; λ = 2, G/800 gains 0.4 on the stream and 0.5 on the whole (worst run −0.6 on the stream). Three settings tie within 0.1 on the stream; this one keeps the zero-shot λ, changes two settings, and has the best whole-split figure of the three. The gain over the adapter alone is small: only the weak linear probe gains clearly (+1.3 stream, +2.1 whole); for the others the defaults mainly stop the refinement from hurting.' + "\n")
    w("\nOn the test split, starting from zero-shot and from each 4-shot adapter (first draw; "
      "the adapter's shots anchor few-shot refinement), every method in both presets:\n")
    w((docs / "fieldset/transduct.md").read_text())
    bt = (work / "bench-transduct.txt").read_text()
    w("\nCost (`clipd bench --transduct`; synthetic buffers, d = 512, one pass, default preset; "
      "then the pipeline on the demo frames with and without the refiner):\n")
    w("```\n" + bt.strip() + "\n```\n")

    w("## Training time and per-frame cost (tiny model, 2 cores)\n")
    w("`clipd train` on 40 classes × 16 shots (the first 40 fieldset classes), including the "
      "hyperparameter search; encoding the 640 shots × 11 views (plain + 10 augmentations) is "
      "listed separately. `clipd bench --adapter` then times the head alone per frame, zero-shot "
      "versus adapter, against the encoder (batch 1) in the same run.\n")
    w("| method | training + search (s) | encoding (s) | head, zero-shot (µs) | head, adapter (µs) | added to encoder + head |")
    w("|---|---|---|---|---|---|")
    for m in methods:
        t = (work / f"train40-{m}.txt").read_text()
        bt = (work / f"bench-{m}.txt").read_text()
        cols = [grab(r"training \+ search ([0-9.]+) s", t), grab(r"encoding ([0-9.]+) s", t),
                grab(r"zero-shot ([0-9.]+) µs", bt), grab(r"adapter ([0-9.]+) µs", bt),
                grab(r"adds (-?[0-9.]+%)", bt)]
        w(f"| {m} | " + " | ".join(cols) + " |")
    w("\nTargets: training + search under 60 s, and at most 5% added per frame.\n")
    w("Mean training + search time per run during the benchmark above (50 classes):\n")
    w("```\n" + timing_block.strip() + "\n```\n")
    w("Times are wall-clock on a shared 2-core machine; treat them as orders of magnitude.\n")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("configs")
    c.add_argument("--data", type=Path, required=True)
    c.add_argument("--work", type=Path, required=True)
    r = sub.add_parser("report")
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--work", type=Path, required=True)
    r.add_argument("--docs", type=Path, required=True)
    r.add_argument("--seeds", type=int, default=3)
    a = ap.parse_args()
    if a.cmd == "configs":
        write_configs(a.data, a.work)
    else:
        sys.stdout.write(report(a.data, a.work, a.docs, a.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
