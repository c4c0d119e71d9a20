"""Reduced-precision copies of a bundle's encoders, with their measured cost in accuracy.

    python models/export/variants.py --bundle DIR --variants int8,fp16
    python models/export/variants.py --bundle DIR --variants qdq --calibration FRAMES_DIR

- int8: ONNX Runtime dynamic quantisation (`quantize_dynamic`, weights int8 per channel,
  activations quantised at run time). Meant for ONNX Runtime; tract runs it slowly.
- qdq: static quantisation of the image tower in QDQ form (QuantizeLinear/DequantizeLinear
  around each matrix product with weights: weights int8 per tensor, activations uint8 with
  ranges calibrated on the images under --calibration, which should look like the
  deployment's frames). The form NPU execution providers (QNN) compile, and one tract runs
  correctly. Left fp32: the patch-embedding convolution (quantising its input, the normalised
  pixels, to uint8 cost most of the accuracy: tiny model, min cosine vs fp32 0.84 with it,
  0.998 without), the products of two activations (attention; no weights to shrink, and
  tract 0.23.9 evaluates QDQ around them wrongly), and the text tower (it runs once per class
  list, and has no frames to calibrate on). Per-tensor weight scales: per-channel ones were
  no more accurate on the tiny model (0.9975 vs 0.9986) and tract agrees less with ONNX
  Runtime on them (cosine 0.998 vs 0.9994).
- fp16: weights and activations in float16 with float32 inputs/outputs (needs
  `pip install onnxconverter-common`). Gemm nodes are first rewritten as the equivalent MatMul
  + Add: tract 0.23.9 cannot load a float16 Gemm.

Each variant is written next to the fp32 file (`image_encoder.int8.onnx`, …), its sha256 added to
the manifest's `files`, and its embedding cosine vs fp32 recorded under `variants` in the
manifest, so the price of the speed is visible wherever the bundle goes. The cosine is measured
on a fixed random batch, or, with --calibration, on up to 8 of its images that the calibration
did not use.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from tooling import ExportError, require, sha256_file  # noqa: E402


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
MAX_CALIBRATION_IMAGES = 64


def _quantize_int8(src: Path, dst: Path, tower: str, ctx: dict) -> bool:
    require("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
    return True


def calibration_images(directory: Path | None, manifest: dict,
                       held_out: bool = False) -> list[np.ndarray]:
    """Up to MAX_CALIBRATION_IMAGES images under `directory`, preprocessed as the bundle's
    image tower expects, spread evenly over the sorted file list; with `held_out`, up to 8 of
    the images between them instead (to measure on frames the calibration never saw)."""
    if directory is None:
        raise ExportError("variant 'qdq' needs --calibration DIR: images like the deployment's "
                          "frames, to measure activation ranges on")
    from PIL import Image, UnidentifiedImageError

    from clip_preprocess import preprocess

    paths = sorted(p for p in Path(directory).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ExportError(f"{directory}: no images to calibrate on (looked for "
                          f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    step = max(1, len(paths) // MAX_CALIBRATION_IMAGES)
    chosen = paths[::step][:MAX_CALIBRATION_IMAGES]
    if held_out:
        seen = set(chosen)
        rest = [p for p in paths if p not in seen]
        chosen = rest[::max(1, len(rest) // 8)][:8]
    spec = manifest["image"]
    images = []
    for p in chosen:
        try:
            with Image.open(p) as img:
                images.append(preprocess(img, spec["size"], spec["mean"], spec["std"]))
        except (OSError, UnidentifiedImageError) as e:
            raise ExportError(f"{p}: cannot read calibration image: {e}") from e
    return images


def _quantize_qdq(src: Path, dst: Path, tower: str, ctx: dict) -> bool:
    if tower != "image_encoder":
        return False
    require("onnxruntime")
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    images = ctx["calibration"]()
    name = ctx["manifest"][tower]["input"]["name"]
    # Products of two activations (attention scores and mixing) stay fp32: they hold no weights
    # to shrink, and tract 0.23.9 evaluates QDQ around them wrongly.
    onnx = require("onnx")
    graph = onnx.load(str(src), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    weights |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    activation_products = [n.name for n in graph.node
                           if n.op_type == "MatMul" and not any(i in weights for i in n.input)]

    class Frames(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{name: x[None]} for x in images])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(src), str(dst), Frames(), quant_format=QuantFormat.QDQ,
                    per_channel=False, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8,
                    op_types_to_quantize=["MatMul", "Gemm"],
                    nodes_to_exclude=activation_products)
    return True


def gemm_as_matmul(model):
    """Rewrite every Gemm node of `model` (in place) as the equivalent MatMul, then Mul by alpha
    and Add of beta·C where they are not 1 / absent; transposed operands become Transpose nodes
    (or transposed initializers). The result computes the same values. Why: tract 0.23.9
    cannot load a float16 Gemm (its translation yields a float32 output and the load fails),
    while it runs a float16 MatMul + Add."""
    onnx = require("onnx")
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes = []
    copied = set()  # initializers that were given a transposed copy

    def operand(name: str, transposed: bool, tag: str) -> str:
        if not transposed:
            return name
        if name in inits:
            t = numpy_helper.to_array(inits[name]).T.copy()
            out = f"{name}_transposed"
            if out not in inits:
                inits[out] = numpy_helper.from_array(t, out)
                graph.initializer.append(inits[out])
                copied.add(name)
            return out
        out = f"{tag}_transposed"
        nodes.append(helper.make_node("Transpose", [name], [out], name=out, perm=[1, 0]))
        return out

    def scalar(value: float, tag: str) -> str:
        name = f"{tag}_scale"
        graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
        return name

    for node in graph.node:
        if node.op_type != "Gemm":
            nodes.append(node)
            continue
        attr = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        tag = node.name or node.output[0]
        a = operand(node.input[0], bool(attr.get("transA", 0)), f"{tag}_a")
        b = operand(node.input[1], bool(attr.get("transB", 0)), f"{tag}_b")
        alpha, beta = float(attr.get("alpha", 1.0)), float(attr.get("beta", 1.0))
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        out = node.output[0]
        product = out if alpha == 1.0 and bias is None else f"{tag}_matmul"
        nodes.append(helper.make_node("MatMul", [a, b], [product], name=f"{tag}_matmul"))
        if alpha != 1.0:
            scaled = out if bias is None else f"{tag}_alpha"
            nodes.append(helper.make_node("Mul", [product, scalar(alpha, f"{tag}_alpha")],
                                          [scaled], name=f"{tag}_alpha"))
            product = scaled
        if bias is not None:
            if beta != 1.0:
                nodes.append(helper.make_node("Mul", [bias, scalar(beta, f"{tag}_beta")],
                                              [f"{tag}_beta"], name=f"{tag}_beta"))
                bias = f"{tag}_beta"
            nodes.append(helper.make_node("Add", [product, bias], [out], name=f"{tag}_bias"))
    del graph.node[:]
    graph.node.extend(nodes)
    # A weight read only as a transposed operand now lives on as its transposed copy alone.
    used = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in used or i.name not in copied]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(model)
    return model


def _convert_fp16(src: Path, dst: Path, tower: str, ctx: dict) -> bool:
    onnx = require("onnx")
    f16 = require("onnxconverter_common", "onnxconverter-common")
    model = gemm_as_matmul(onnx.load(str(src)))
    model = f16.float16.convert_float_to_float16(model, keep_io_types=True)
    onnx.save(model, str(dst))
    return True


# name -> converter(src, dst, tower, ctx): writes dst and returns True, or returns False when
# the variant leaves that tower in fp32.
CONVERTERS = {"int8": _quantize_int8, "qdq": _quantize_qdq, "fp16": _convert_fp16}


def _probe_inputs(manifest: dict):
    rng = np.random.default_rng(0)
    size = manifest["image"]["size"]
    images = rng.standard_normal((8, 3, size, size)).astype(np.float32)
    ids = np.zeros((4, manifest["text"]["context_length"]), dtype=np.int64)
    for row, toks in enumerate([[320, 1125, 539, 320, 2368], [1929], [320, 1125] * 5, [539]]):
        ids[row, 0], ids[row, 1:1 + len(toks)], ids[row, 1 + len(toks)] = 49406, toks, 49407
    return {"image_encoder": images, "text_encoder": ids}


# ONNX Runtime's NchwcTransformer crashes the process (SIGSEGV) on x86-64 while loading float16
# graphs (microsoft/onnxruntime#28392); clipd's ort backend leaves it out for fp16 as well.
FLOAT16_DISABLED_OPTIMIZERS = ["NchwcTransformer"]


def _embed(path: Path, input_name: str, x, float16: bool = False) -> np.ndarray:
    ort = require("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"],
                                disabled_optimizers=FLOAT16_DISABLED_OPTIMIZERS if float16 else None)
    out = sess.run(None, {input_name: x})[0].astype(np.float32)
    return out / np.linalg.norm(out, axis=-1, keepdims=True)


def write_variants(bundle: Path, variants: list[str], log=print,
                   calibration: Path | None = None) -> dict:
    bundle = Path(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    probes = _probe_inputs(manifest)
    report = manifest.get("variants", {})
    for variant in variants:
        if variant not in CONVERTERS:
            raise ExportError(f"unknown variant '{variant}' (known: {', '.join(CONVERTERS)})")
    # Read only by a converter that calibrates (qdq, on the image tower: once).
    ctx = {"manifest": manifest, "calibration": lambda: calibration_images(calibration, manifest)}
    if calibration is not None:
        # Measure every variant's image cosine on real frames the calibration did not use.
        held = calibration_images(calibration, manifest, held_out=True)
        if held:
            probes["image_encoder"] = np.stack(held).astype(np.float32)
    for variant in variants:
        entry = {}
        for tower in ("image_encoder", "text_encoder"):
            spec = manifest[tower]
            src = bundle / spec["file"]
            dst = bundle / spec["file"].replace(".onnx", f".{variant}.onnx")
            if not CONVERTERS[variant](src, dst, tower, ctx):
                continue
            name = spec["input"]["name"]
            cos = np.sum(_embed(src, name, probes[tower])
                         * _embed(dst, name, probes[tower], float16=variant == "fp16"), -1)
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
    ap.add_argument("--variants", default="int8", help=f"comma separated: {', '.join(CONVERTERS)}")
    ap.add_argument("--calibration", type=Path,
                    help="qdq: a directory of images like the deployment's frames")
    args = ap.parse_args(argv)
    try:
        if not (args.bundle / "manifest.json").is_file():
            raise ExportError(f"{args.bundle}: not a bundle (no manifest.json)")
        write_variants(args.bundle, [v for v in args.variants.split(",") if v],
                       calibration=args.calibration)
        return 0
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
