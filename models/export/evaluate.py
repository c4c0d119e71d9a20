#!/usr/bin/env python3
"""Reference evaluation of a bundle on a fieldset benchmark directory, with ONNX Runtime.

    python models/export/evaluate.py --bundle models/tiny-clip --data DIR [--shots 4] [--seeds 0,1,2]

Reports zero-shot top-1/top-5 on the test split (prompt "a photo of a {name}, a type of
{domain}.", clipd's default) and a K-shot logistic-regression linear probe on L2-normalised image
features (support drawn from the pool split per seed; regularisation chosen by cross-validation
on the support set only — never on the test split). Needs numpy, pillow, onnxruntime, tokenizers,
scikit-learn; no torch.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from clip_preprocess import preprocess  # noqa: E402


def default_prompt(name: str, domain_noun: str) -> str:
    return f"a photo of a {name}, a type of {domain_noun}."


class BundleRunner:
    """ONNX Runtime sessions for both towers of a bundle, with its tokenizer."""

    def __init__(self, bundle: Path, threads: int = 2):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.bundle = Path(bundle)
        self.manifest = json.loads((self.bundle / "manifest.json").read_text())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        m = self.manifest
        self.image = ort.InferenceSession(str(self.bundle / m["image_encoder"]["file"]), opts,
                                          providers=["CPUExecutionProvider"])
        self.text = ort.InferenceSession(str(self.bundle / m["text_encoder"]["file"]), opts,
                                         providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(self.bundle / m["tokenizer"]["file"]))
        self.size = m["image"]["size"]
        self.ctx = m["text"]["context_length"]

    def token_ids(self, texts: list[str]) -> np.ndarray:
        ids = np.full((len(texts), self.ctx), self.manifest["text"]["pad_id"], dtype=np.int64)
        eot = self.manifest["text"]["eot_id"]
        for row, enc in enumerate(self.tokenizer.encode_batch(texts)):
            toks = list(enc.ids)
            if len(toks) > self.ctx:
                toks = toks[: self.ctx]
                toks[-1] = eot
            ids[row, : len(toks)] = toks
        return ids

    def encode_text(self, texts: list[str]) -> np.ndarray:
        out = self.text.run(None, {self.manifest["text_encoder"]["input"]["name"]:
                                   self.token_ids(texts)})[0]
        return out / np.linalg.norm(out, axis=-1, keepdims=True)

    def preprocess_paths(self, paths) -> np.ndarray:
        from PIL import Image

        m = self.manifest["image"]
        out = []
        for p in paths:
            with Image.open(p) as img:
                out.append(preprocess(img, self.size, m["mean"], m["std"]))
        return np.stack(out)

    def encode_images(self, pixels: np.ndarray, batch: int = 64) -> np.ndarray:
        name = self.manifest["image_encoder"]["input"]["name"]
        outs = [self.image.run(None, {name: pixels[i:i + batch]})[0]
                for i in range(0, len(pixels), batch)]
        out = np.concatenate(outs)
        return out / np.linalg.norm(out, axis=-1, keepdims=True)


def read_index(data: Path):
    with open(data / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    classes = json.loads((data / "classes.json").read_text())
    return rows, classes


def zero_shot(runner: BundleRunner, classes, feats: np.ndarray, labels: np.ndarray):
    prompts = [default_prompt(c["name"], c["prompt_domain"]) for c in classes]
    text = runner.encode_text(prompts)
    logits = runner.manifest["logit_scale"] * feats @ text.T
    order = np.argsort(-logits, axis=1)
    top1 = float((order[:, 0] == labels).mean())
    top5 = float((order[:, :5] == labels[:, None]).any(1).mean())
    return top1, top5, order[:, 0], prompts


def linear_probe(pool_feats, pool_labels, test_feats, test_labels, shots: int, seed: int):
    """Logistic regression on K shots per class; C picked by cross-validation on the shots."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(pool_labels == c), shots, replace=False)
                          for c in np.unique(pool_labels)])
    x, y = pool_feats[idx], pool_labels[idx]
    base = LogisticRegression(max_iter=2000)
    if shots >= 2:
        folds = StratifiedKFold(n_splits=min(shots, 4), shuffle=True, random_state=seed)
        clf = GridSearchCV(base, {"C": [0.1, 1.0, 10.0, 100.0]}, cv=folds).fit(x, y)
    else:
        clf = base.set_params(C=10.0).fit(x, y)  # one shot: nothing to validate on
    proba = clf.predict_proba(test_feats)
    order = clf.classes_[np.argsort(-proba, axis=1)]
    return (float((order[:, 0] == test_labels).mean()),
            float((order[:, :5] == test_labels[:, None]).any(1).mean()))


def evaluate(bundle: Path, data: Path, shots: int, seeds: list[int], threads: int = 2) -> dict:
    runner = BundleRunner(bundle, threads)
    rows, classes = read_index(data)
    index_of = {c["dirname"]: i for i, c in enumerate(classes)}
    t0 = time.time()
    split = {}
    for name in ("pool", "test"):
        part = [r for r in rows if r["split"] == name]
        feats = runner.encode_images(runner.preprocess_paths([data / r["path"] for r in part]))
        split[name] = (part, feats, np.array([index_of[r["class"]] for r in part]))
    test_rows, test_feats, test_labels = split["test"]
    top1, top5, pred, prompts = zero_shot(runner, classes, test_feats, test_labels)
    result = {"bundle": runner.manifest["name"], "data": str(data), "n_test": len(test_rows),
              "n_classes": len(classes), "zero_shot": {"top1": top1, "top5": top5},
              "prompts": {c["name"]: [p] for c, p in zip(classes, prompts)},
              "predictions": [{"path": r["path"], "class": classes[int(y)]["name"],
                               "label": classes[int(p)]["name"]}
                              for r, p, y in zip(test_rows, pred, test_labels)]}
    _, pool_feats, pool_labels = split["pool"]
    if shots and len(pool_feats):
        runs = [linear_probe(pool_feats, pool_labels, test_feats, test_labels, shots, s)
                for s in seeds]
        arr = np.array(runs)
        result["linear_probe"] = {"shots": shots, "seeds": seeds,
                                  "top1_mean": float(arr[:, 0].mean()),
                                  "top1_std": float(arr[:, 0].std()),
                                  "top5_mean": float(arr[:, 1].mean())}
    per_domain = {}
    for r, p, y in zip(test_rows, pred, test_labels):
        d = per_domain.setdefault(r["domain"], [0, 0])
        d[0] += int(p == y)
        d[1] += 1
    result["zero_shot"]["per_domain_top1"] = {k: v[0] / v[1] for k, v in sorted(per_domain.items())}
    result["seconds"] = round(time.time() - t0, 1)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="fieldset directory (index.csv)")
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the full result (with predictions) here")
    args = ap.parse_args(argv)
    for p, what in ((args.bundle / "manifest.json", "bundle"), (args.data / "index.csv", "fieldset")):
        if not p.is_file():
            print(f"error: {p}: not found (is --{'bundle' if what == 'bundle' else 'data'} right?)",
                  file=sys.stderr)
            return 2
    res = evaluate(args.bundle, args.data, args.shots, [int(s) for s in args.seeds.split(",")],
                   args.threads)
    zs = res["zero_shot"]
    print(f"zero-shot: top-1 {zs['top1']:.3f}  top-5 {zs['top5']:.3f}  "
          f"({res['n_test']} test frames, {res['n_classes']} classes)")
    print("  per domain: " + ", ".join(f"{k} {v:.3f}" for k, v in zs["per_domain_top1"].items()))
    if "linear_probe" in res:
        lp = res["linear_probe"]
        print(f"{lp['shots']}-shot linear probe: top-1 {lp['top1_mean']:.3f} ± {lp['top1_std']:.3f} "
              f"top-5 {lp['top5_mean']:.3f} (seeds {lp['seeds']})")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
