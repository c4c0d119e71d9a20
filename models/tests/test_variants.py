"""models/export/variants.py on the shipped tiny bundle: the statically quantised `qdq` image
tower is a real QDQ graph, recorded in the manifest, close to fp32 on frames the calibration did
not see; its failure paths name the fix.

Runs with the light test dependencies (numpy, pillow, onnx, onnxruntime).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "models" / "tiny-clip"
FRAMES = REPO / "tests" / "fixtures" / "fieldset" / "test"
sys.path.insert(0, str(REPO / "models" / "export"))

import onnx  # noqa: E402

import variants  # noqa: E402
from export_openclip import ExportError  # noqa: E402


def bundle_with(tmp_path_factory, variant: str) -> Path:
    """A copy of the shipped bundle with `variant` written into it (calibrated on FRAMES)."""
    out = tmp_path_factory.mktemp(f"bundle-{variant}")
    for f in BUNDLE.iterdir():
        shutil.copy(f, out / f.name)
    variants.write_variants(out, [variant], log=lambda *_: None, calibration=FRAMES)
    return out


@pytest.fixture(scope="module")
def qdq_bundle(tmp_path_factory) -> Path:
    return bundle_with(tmp_path_factory, "qdq")


def embed(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    e = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return e / np.linalg.norm(e, axis=-1, keepdims=True)


def test_qdq_quantises_the_image_tower_only_and_records_it(qdq_bundle):
    m = json.loads((qdq_bundle / "manifest.json").read_text())
    entry = m["variants"]["qdq"]
    assert list(entry) == ["image_encoder"], "the text tower stays fp32"
    f = qdq_bundle / entry["image_encoder"]["file"]
    assert f.name == "image_encoder.qdq.onnx"
    assert entry["image_encoder"]["bytes"] == f.stat().st_size
    assert m["files"][f.name] == hashlib.sha256(f.read_bytes()).hexdigest()
    assert not (qdq_bundle / "text_encoder.qdq.onnx").exists()
    qdq = onnx.load(str(f)).graph
    ops = [n.op_type for n in qdq.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    # Every matrix product with weights reads dequantised operands; the products of two
    # activations (attention) and the patch embedding stay fp32.
    fp32 = onnx.load(str(BUNDLE / "image_encoder.onnx")).graph
    consts = {t.name for t in fp32.initializer}
    consts |= {o for n in fp32.node if n.op_type == "Constant" for o in n.output}
    products = [n for n in fp32.node if n.op_type in ("MatMul", "Gemm")]
    weighted = {n.name for n in products if any(i in consts for i in n.input)}
    assert weighted and len(weighted) < len(products), "expected both kinds of product"
    dequantised = {o for n in qdq.node if n.op_type == "DequantizeLinear" for o in n.output}
    for n in qdq.node:
        if n.op_type in ("MatMul", "Gemm"):
            fed = any(i in dequantised for i in n.input)
            assert fed == (n.name in weighted), f"{n.name}: quantised {fed}"
    assert ops.count("Conv") == sum(n.op_type == "Conv" for n in fp32.node)
    assert not any(i in dequantised for n in qdq.node if n.op_type == "Conv" for i in n.input)
    assert 0.99 <= entry["image_encoder"]["min_cosine_vs_fp32"] <= 1.0


def test_qdq_embeddings_stay_close_to_fp32_on_unseen_frames(qdq_bundle):
    m = json.loads((qdq_bundle / "manifest.json").read_text())
    held = variants.calibration_images(FRAMES, m, held_out=True)
    calib = variants.calibration_images(FRAMES, m)
    assert len(held) == 8 and len(calib) == variants.MAX_CALIBRATION_IMAGES
    assert not any(any(np.array_equal(h, c) for c in calib) for h in held)
    x = np.stack(held).astype(np.float32)
    cos = np.sum(embed(BUNDLE / "image_encoder.onnx", x)
                 * embed(qdq_bundle / "image_encoder.qdq.onnx", x), axis=-1)
    assert cos.min() >= 0.99, cos
    assert cos.min() == pytest.approx(m["variants"]["qdq"]["image_encoder"]["min_cosine_vs_fp32"],
                                      abs=1e-5)


def test_qdq_without_calibration_frames_names_the_fix(tmp_path):
    for f in BUNDLE.iterdir():
        shutil.copy(f, tmp_path / f.name)
    with pytest.raises(ExportError, match="--calibration"):
        variants.write_variants(tmp_path, ["qdq"], log=lambda *_: None)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ExportError, match="no images to calibrate on"):
        variants.write_variants(tmp_path, ["qdq"], log=lambda *_: None, calibration=empty)
    with pytest.raises(ExportError, match="unknown variant 'int4'"):
        variants.write_variants(tmp_path, ["int4"], log=lambda *_: None)
    # Nothing was half-written.
    assert not (tmp_path / "image_encoder.qdq.onnx").exists()
    assert "variants" not in json.loads((tmp_path / "manifest.json").read_text())


@pytest.mark.parametrize("trans_a,trans_b,alpha,beta,bias,b_is_weight", [
    (0, 0, 1.0, 1.0, True, True),
    (0, 1, 1.0, 1.0, True, True),
    (1, 1, 0.5, 2.0, True, False),
    (0, 0, 1.5, 1.0, False, True),
    (1, 0, 1.0, 0.25, True, True),
])
def test_gemm_as_matmul_computes_what_gemm_does(trans_a, trans_b, alpha, beta, bias, b_is_weight):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    m, k, n = 5, 6, 4
    a_shape = [k, m] if trans_a else [m, k]
    b_value = rng.standard_normal([n, k] if trans_b else [k, n]).astype(np.float32)
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, a_shape)]
    inits = [numpy_helper.from_array(rng.standard_normal([n]).astype(np.float32), "c")]
    if b_is_weight:
        inits.append(numpy_helper.from_array(b_value, "b"))
    else:
        inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, list(b_value.shape)))
    gemm = helper.make_node("Gemm", ["a", "b", "c"] if bias else ["a", "b"], ["y"], name="g",
                            transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
    graph = helper.make_graph([gemm], "gemm", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    feed = {"a": rng.standard_normal(a_shape).astype(np.float32)}
    if not b_is_weight:
        feed["b"] = b_value

    def run(mdl):
        sess = ort.InferenceSession(mdl.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, feed)[0]

    want = run(model)
    rewritten = variants.gemm_as_matmul(model)
    assert "Gemm" not in [node.op_type for node in rewritten.graph.node]
    np.testing.assert_allclose(run(rewritten), want, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def fp16_bundle(tmp_path_factory) -> Path:
    return bundle_with(tmp_path_factory, "fp16")


def test_fp16_halves_both_towers_without_gemm_and_stays_close(fp16_bundle):
    from onnx import TensorProto

    m = json.loads((fp16_bundle / "manifest.json").read_text())
    entry = m["variants"]["fp16"]
    assert sorted(entry) == ["image_encoder", "text_encoder"]
    for tower, e in entry.items():
        f = fp16_bundle / e["file"]
        assert f.name == f"{tower}.fp16.onnx"
        assert m["files"][f.name] == hashlib.sha256(f.read_bytes()).hexdigest()
        fp32 = onnx.load(str(BUNDLE / f"{tower}.onnx"))
        half = onnx.load(str(f))
        # Weights in float16 (half their bytes; integer tables such as a vocabulary map stay),
        # the interface unchanged.
        def float_bytes(model, dtype):
            return sum(onnx.numpy_helper.to_array(i).nbytes for i in model.graph.initializer
                       if i.data_type == dtype)

        assert float_bytes(half, TensorProto.FLOAT16) == \
            pytest.approx(float_bytes(fp32, TensorProto.FLOAT) / 2, rel=0.01)
        assert float_bytes(half, TensorProto.FLOAT) < 0.01 * float_bytes(fp32, TensorProto.FLOAT)
        assert e["bytes"] == f.stat().st_size
        assert [i.type.tensor_type.elem_type for i in half.graph.input] == \
            [i.type.tensor_type.elem_type for i in fp32.graph.input]
        assert half.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
        # tract cannot load a float16 Gemm: none is left.
        assert "Gemm" not in [n.op_type for n in half.graph.node]
        assert 0.999 <= e["min_cosine_vs_fp32"] <= 1.0
    held = np.stack(variants.calibration_images(FRAMES, m, held_out=True)).astype(np.float32)
    cos = np.sum(embed(BUNDLE / "image_encoder.onnx", held)
                 * embed(fp16_bundle / "image_encoder.fp16.onnx", held), -1)
    assert cos.min() == pytest.approx(entry["image_encoder"]["min_cosine_vs_fp32"], abs=1e-5)
