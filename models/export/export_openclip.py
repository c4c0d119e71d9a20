#!/usr/bin/env python3
"""Export an open_clip model to a clipd model bundle (see models/README.md).

    python models/export/export_openclip.py --model ViT-B-32 --pretrained openai --out DIR

`--pretrained none` exports the same graph with random weights (no download: that is what runs
offline). `--pretrained /path/to/checkpoint.pt` loads local weights.

What the export does to make the graphs portable, and why:
- The legacy TorchScript exporter (`dynamo=False`) at opset 17: it writes LayerNormalization
  and plain MatMul/Gemm nodes that every runtime we target (tract, ONNX Runtime, TensorRT)
  reads; the dynamo exporter emits a different op mix per torch release.
- One dynamic axis only (`batch`); every other dimension is static. The runtime fixes the batch
  when it loads the graph.
- `value_info` is cleared and not re-inferred. Intermediate shape annotations (the tracer's, or
  those onnx's shape inference adds) are what makes tract's analysis trip (at the final
  projection MatMul, or at the patch-embedding Conv); with none, tract derives every shape itself
  from the fixed input fact.
- onnxsim folds the shape arithmetic the tracer leaves behind (Shape→Gather→Concat chains) into
  constants where the batch axis allows it.
After writing, the bundle is verified: onnx.checker, ONNX Runtime vs PyTorch on a batch of 3
(max abs diff ≤ 1e-4 on L2-normalised embeddings), and tract (python package `tract`) loading
and running both graphs with fixed shapes and no workaround flags.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_TOKENIZER = REPO / "models" / "tokenizer" / "tokenizer.json"
OPSET = 17
FORMAT_VERSION = 1
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# Shared with variants.py (which this module calls), so neither imports the other.
from tooling import ExportError, require, sha256_file  # noqa: E402,F401


def _clean_graph(path: Path, simplify: bool) -> None:
    """Drop tracer shape annotations and optionally simplify; save in place.

    The result deliberately carries no `value_info`: a graph annotated by
    `onnx.shape_inference.infer_shapes` fails tract's analysis (tract 0.23.9 rejects the
    annotated patch-embedding Conv of ViT-B-32), while the bare graph lets tract derive every
    shape from the input fact it is given.
    """
    onnx = require("onnx")
    model = onnx.load(str(path))
    del model.graph.value_info[:]
    if simplify:
        onnxsim = require("onnxsim")
        simplified, ok = onnxsim.simplify(model)
        if ok:
            model = simplified
            del model.graph.value_info[:]
    onnx.save(model, str(path))


def _export_tower(module, example, path: Path, input_name: str, output_name: str,
                  simplify: bool) -> None:
    import torch

    torch.onnx.export(
        module, (example,), str(path), input_names=[input_name], output_names=[output_name],
        dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
        opset_version=OPSET, do_constant_folding=True, dynamo=False,
    )
    _clean_graph(path, simplify)


def export_bundle(model, *, name: str, source: dict, image_size: int, context_length: int,
                  logit_scale: float, out: Path, tokenizer: Path = DEFAULT_TOKENIZER,
                  mean=CLIP_MEAN, std=CLIP_STD, force: bool = False, simplify: bool = True,
                  verify: bool = True, extra: dict | None = None, log=print) -> dict:
    """Write a complete bundle for any model exposing open_clip's encode_image/encode_text.

    Writes into a temporary sibling directory and renames it into place only after every check
    passed, so a failure never leaves a half-written bundle behind.
    """
    import torch
    from torch import nn

    out = Path(out)
    if out.exists() and not force:
        raise ExportError(f"{out}: output directory exists (pass --force to replace it)")
    if not tokenizer.is_file():
        raise ExportError(f"{tokenizer}: tokenizer.json not found "
                          "(build it: python models/export/build_tokenizer.py)")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    except OSError as e:
        raise ExportError(f"{parent}: cannot write the bundle there ({e.strerror})")

    class ImageTower(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, image):
            return self.m.encode_image(image)

    class TextTower(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids):
            return self.m.encode_text(ids)

    try:
        model = model.eval()
        image_ex = torch.zeros(1, 3, image_size, image_size)
        ids_ex = torch.zeros(1, context_length, dtype=torch.int64)
        ids_ex[0, 0], ids_ex[0, 1], ids_ex[0, 2] = 49406, 320, 49407
        with torch.no_grad():
            embed_dim = int(model.encode_image(image_ex).shape[-1])
            text_dim = int(model.encode_text(ids_ex).shape[-1])
        if embed_dim != text_dim:
            raise ExportError(f"{name}: image tower gives {embed_dim}-d embeddings, "
                              f"text tower {text_dim}-d: not a CLIP pair")
        log(f"exporting {name}: embed_dim {embed_dim}, image {image_size}px, context {context_length}")
        _export_tower(ImageTower(model), image_ex, tmp / "image_encoder.onnx", "image",
                      "image_embeds", simplify)
        _export_tower(TextTower(model), ids_ex, tmp / "text_encoder.onnx", "input_ids",
                      "text_embeds", simplify)
        shutil.copyfile(tokenizer, tmp / "tokenizer.json")

        manifest = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "source": source,
            "embed_dim": embed_dim,
            "image": {"size": image_size, "mean": list(mean), "std": list(std),
                      "resize": "shortest_side", "interpolation": "bicubic", "crop": "center"},
            "text": {"context_length": context_length, "sot_id": 49406, "eot_id": 49407,
                     "pad_id": 0},
            "logit_scale": float(logit_scale),
            "outputs_normalized": False,
            "image_encoder": {
                "file": "image_encoder.onnx",
                "input": {"name": "image", "shape": ["batch", 3, image_size, image_size],
                          "dtype": "float32"},
                "output": {"name": "image_embeds", "shape": ["batch", embed_dim],
                           "dtype": "float32"},
            },
            "text_encoder": {
                "file": "text_encoder.onnx",
                "input": {"name": "input_ids", "shape": ["batch", context_length],
                          "dtype": "int64"},
                "output": {"name": "text_embeds", "shape": ["batch", embed_dim],
                           "dtype": "float32"},
            },
            "tokenizer": {"file": "tokenizer.json"},
        }
        if extra:
            manifest.update(extra)
        report = {}
        if verify:
            report = verify_bundle(tmp, manifest, model, log=log)
        manifest["files"] = {f: sha256_file(tmp / f) for f in
                             ("image_encoder.onnx", "text_encoder.onnx", "tokenizer.json")}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a bundle is meant to be shared
        os.replace(tmp, out)
        log(f"wrote {out}")
        return {"manifest": manifest, "checks": report}
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def verify_bundle(bundle: Path, manifest: dict, model=None, log=print) -> dict:
    """onnx.checker, ORT vs PyTorch on a batch of 3, tract with fixed shapes. Returns figures."""
    import numpy as np

    onnx = require("onnx")
    ort = require("onnxruntime")
    size = manifest["image"]["size"]
    ctx = manifest["text"]["context_length"]
    report = {}
    rng = np.random.default_rng(0)
    images = rng.standard_normal((3, 3, size, size)).astype(np.float32)
    ids = np.zeros((3, ctx), dtype=np.int64)
    for row, toks in enumerate([[320, 1125, 539, 320, 2368], [1929], [320, 1125, 539] * 4]):
        ids[row, 0] = 49406
        ids[row, 1:1 + len(toks)] = toks
        ids[row, 1 + len(toks)] = 49407
    for tower, x in (("image_encoder", images), ("text_encoder", ids)):
        path = bundle / manifest[tower]["file"]
        onnx.checker.check_model(str(path), full_check=True)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {manifest[tower]["input"]["name"]: x})[0]
        got_n = got / np.linalg.norm(got, axis=-1, keepdims=True)
        entry = {"onnx_checker": "ok"}
        if model is not None:
            import torch

            with torch.no_grad():
                fn = model.encode_image if tower == "image_encoder" else model.encode_text
                ref = fn(torch.from_numpy(x)).numpy()
            ref_n = ref / np.linalg.norm(ref, axis=-1, keepdims=True)
            diff = float(np.abs(got_n - ref_n).max())
            entry["ort_vs_torch_max_abs_diff"] = diff
            if diff > 1e-4:
                raise ExportError(f"{path.name}: ONNX Runtime differs from PyTorch by {diff:.2e} "
                                  "(> 1e-4) on normalised embeddings")
        entry["tract"] = tract_check(path, list(x.shape), "f32" if x.dtype == np.float32 else "i64",
                                     x, got)
        log(f"  {path.name}: {entry}")
        report[tower] = entry
    return report


def tract_check(path: Path, shape: list[int], dt: str, x, expected) -> str:
    """Load in tract with a fixed input shape, optimise, run; compare with ONNX Runtime."""
    import numpy as np

    try:
        import tract
    except ImportError:
        return "skipped (pip install tract)"
    model = tract.onnx().load(str(path))
    model.set_input_fact(0, f"{','.join(str(d) for d in shape)},{dt}")
    runnable = model.into_model().into_runnable()
    got = runnable.run([x])[0].to_numpy()
    cos = float(np.min(np.sum(got * expected, -1) /
                       (np.linalg.norm(got, axis=-1) * np.linalg.norm(expected, axis=-1))))
    if cos < 0.9999:
        raise ExportError(f"{path.name}: tract output differs from ONNX Runtime (cosine {cos:.6f})")
    return f"ok (min cosine vs ORT {cos:.6f})"


def _fuse_train_time_branches(model):
    """Fold MobileOne/RepMixer-style parallel branches into single convolutions.

    MobileCLIP's timm towers keep their training-time multi-branch blocks until they are
    reparameterised; traced as they are, the exported graph does not reproduce PyTorch (measured
    on MobileCLIP-S1: max abs diff 0.32). timm's `reparameterize_model` fuses them exactly, and is
    a no-op for models without such blocks (the open_clip ViTs).
    """
    try:
        from timm.utils import reparameterize_model
    except ImportError:
        return model
    return reparameterize_model(model)


def load_openclip(model_name: str, pretrained: str):
    """Create an open_clip model; `none` gives random weights, a file path loads local weights."""
    open_clip = require("open_clip", "open_clip_torch")
    require("torch")
    known = open_clip.list_models()
    if model_name not in known:
        close = [m for m in known if model_name.lower().replace("/", "-") in m.lower()][:8]
        hint = f" (did you mean: {', '.join(close)})" if close else ""
        raise ExportError(f"unknown open_clip model '{model_name}'{hint}; "
                          "list them with: python -c 'import open_clip; print(open_clip.list_models())'")
    tag = None if pretrained.lower() == "none" else pretrained
    try:
        model = open_clip.create_model(model_name, pretrained=tag, device="cpu")
    except Exception as e:  # open_clip raises several types for missing/unknown weights
        raise ExportError(f"{model_name}: cannot load pretrained '{pretrained}' ({str(e).splitlines()[0]}); "
                          "offline, pass a local checkpoint file or --pretrained none")
    model = _fuse_train_time_branches(model.eval())
    cfg = open_clip.get_model_config(model_name) or {}
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else int(image_size)
    context_length = int(getattr(model, "context_length", cfg.get("text_cfg", {}).get("context_length", 77)))
    mean = getattr(model.visual, "image_mean", None) or CLIP_MEAN
    std = getattr(model.visual, "image_std", None) or CLIP_STD
    return model, image_size, context_length, tuple(mean), tuple(std)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="open_clip model name, e.g. ViT-B-32")
    ap.add_argument("--pretrained", default="none",
                    help="open_clip pretrained tag, a local checkpoint path, or 'none' (random)")
    ap.add_argument("--out", required=True, type=Path, help="bundle directory to create")
    ap.add_argument("--name", help="bundle name (default: MODEL-PRETRAINED)")
    ap.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER)
    ap.add_argument("--force", action="store_true", help="replace an existing output directory")
    ap.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    ap.add_argument("--variants", default="", help="comma list of extra variants: fp16,int8,qdq")
    ap.add_argument("--calibration", type=Path,
                    help="qdq: a directory of images like the deployment's frames")
    args = ap.parse_args(argv)
    try:
        if args.out.exists() and not args.force:
            raise ExportError(f"{args.out}: output directory exists (pass --force to replace it)")
        if "qdq" in args.variants.split(",") and args.calibration is None:
            raise ExportError("--variants qdq needs --calibration DIR: images like the "
                              "deployment's frames, to measure activation ranges on")
        import torch

        torch.manual_seed(0)
        model, size, ctx, mean, std = load_openclip(args.model, args.pretrained)
        scale = float(model.logit_scale.exp().item()) if hasattr(model, "logit_scale") else 100.0
        result = export_bundle(
            model, name=args.name or f"{args.model}-{Path(args.pretrained).name}",
            source={"open_clip_model": args.model, "pretrained": args.pretrained},
            image_size=size, context_length=ctx, logit_scale=min(scale, 100.0), out=args.out,
            tokenizer=args.tokenizer, mean=mean, std=std, force=args.force,
            simplify=not args.no_simplify)
        variants = [v for v in args.variants.split(",") if v]
        if variants:
            from variants import write_variants

            write_variants(args.out, variants, calibration=args.calibration)
        del result
        return 0
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
