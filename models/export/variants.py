"""Reduced-precision copies of a bundle's encoders, with their measured cost in accuracy.

    python models/export/variants.py --bundle DIR --variants int8,fp16

- int8: ONNX Runtime dynamic quantisation (`quantize_dynamic`, weights int8 per channel,
  activations quantised at run time). Meant for ONNX Runtime; tract runs it slowly.
- fp16: weights and activations in float16 with float32 inputs/outputs (needs
  `pip install onnxconverter-common`).

Each variant is written next to the fp32 file (`image_encoder.int8.onnx`, …), its sha256 added to
the manifest's `files`, and its embedding cosine vs fp32 on a fixed random batch recorded under
`variants` in the manifest, so the price of the speed is visible wherever the bundle goes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from export_openclip import ExportError, require, sha256_file  # noqa: E402


def _quantize_int8(src: Path, dst: Path) -> None:
    require("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)


def _convert_fp16(src: Path, dst: Path) -> None:
    onnx = require("onnx")
    f16 = require("onnxconverter_common", "onnxconverter-common")
    model = f16.float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


CONVERTERS = {"int8": _quantize_int8, "fp16": _convert_fp16}


def _probe_inputs(manifest: dict):
    rng = np.random.default_rng(0)
    size = manifest["image"]["size"]
    images = rng.standard_normal((8, 3, size, size)).astype(np.float32)
    ids = np.zeros((4, manifest["text"]["context_length"]), dtype=np.int64)
    for row, toks in enumerate([[320, 1125, 539, 320, 2368], [1929], [320, 1125] * 5, [539]]):
        ids[row, 0], ids[row, 1:1 + len(toks)], ids[row, 1 + len(toks)] = 49406, toks, 49407
    return {"image_encoder": images, "text_encoder": ids}


def _embed(path: Path, input_name: str, x) -> np.ndarray:
    ort = require("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {input_name: x})[0].astype(np.float32)
    return out / np.linalg.norm(out, axis=-1, keepdims=True)


def write_variants(bundle: Path, variants: list[str], log=print) -> dict:
    bundle = Path(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    probes = _probe_inputs(manifest)
    report = manifest.get("variants", {})
    for variant in variants:
        if variant not in CONVERTERS:
            raise ExportError(f"unknown variant '{variant}' (known: {', '.join(CONVERTERS)})")
        entry = {}
        for tower in ("image_encoder", "text_encoder"):
            spec = manifest[tower]
            src = bundle / spec["file"]
            dst = bundle / spec["file"].replace(".onnx", f".{variant}.onnx")
            CONVERTERS[variant](src, dst)
            name = spec["input"]["name"]
            cos = np.sum(_embed(src, name, probes[tower]) * _embed(dst, name, probes[tower]), -1)
            entry[tower] = {"file": dst.name, "bytes": dst.stat().st_size,
                            "min_cosine_vs_fp32": round(float(cos.min()), 6),
                            "mean_cosine_vs_fp32": round(float(cos.mean()), 6)}
            manifest["files"][dst.name] = sha256_file(dst)
            log(f"  {dst.name}: {entry[tower]}")
        report[variant] = entry
    manifest["variants"] = report
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--variants", default="int8")
    args = ap.parse_args(argv)
    try:
        if not (args.bundle / "manifest.json").is_file():
            raise ExportError(f"{args.bundle}: not a bundle (no manifest.json)")
        write_variants(args.bundle, [v for v in args.variants.split(",") if v])
        return 0
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
