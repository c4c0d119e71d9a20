"""The shipped bundle is complete and self-consistent, and the committed fixtures match it.

Runs with the light test dependencies only (numpy, pillow, onnxruntime, tokenizers).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "models" / "tiny-clip"
FIXTURES = REPO / "tests" / "fixtures"
sys.path.insert(0, str(REPO / "models" / "export"))

from clip_preprocess import preprocess  # noqa: E402


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((BUNDLE / "manifest.json").read_text())


@pytest.fixture(scope="module")
def runner():
    from evaluate import BundleRunner

    return BundleRunner(BUNDLE, threads=1)


def test_manifest_has_every_documented_field(manifest):
    assert manifest["format_version"] == 1
    for key in ("name", "source", "embed_dim", "image", "text", "logit_scale",
                "outputs_normalized", "image_encoder", "text_encoder", "tokenizer", "files"):
        assert key in manifest, key
    assert set(manifest["source"]) >= {"open_clip_model", "pretrained"}
    img = manifest["image"]
    assert img["resize"] == "shortest_side" and img["interpolation"] == "bicubic"
    assert img["crop"] == "center" and len(img["mean"]) == 3 and len(img["std"]) == 3
    assert manifest["text"] == {"context_length": 77, "sot_id": 49406, "eot_id": 49407,
                                "pad_id": 0}
    assert 0 < manifest["logit_scale"] <= 100


def test_every_file_hash_matches(manifest):
    files = manifest["files"]
    assert set(files) == {manifest["image_encoder"]["file"], manifest["text_encoder"]["file"],
                          manifest["tokenizer"]["file"]}
    for name, digest in files.items():
        assert hashlib.sha256((BUNDLE / name).read_bytes()).hexdigest() == digest, name


def test_bundle_fits_the_size_budget():
    total = sum(p.stat().st_size for p in BUNDLE.iterdir())
    assert total <= 16 * 1024 * 1024, f"{total} bytes"


def test_graph_io_matches_manifest(manifest, runner):
    for tower, sess in (("image_encoder", runner.image), ("text_encoder", runner.text)):
        spec = manifest[tower]
        (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
        assert inp.name == spec["input"]["name"] and out.name == spec["output"]["name"]
        assert list(inp.shape)[1:] == spec["input"]["shape"][1:]
        assert list(out.shape)[1:] == spec["output"]["shape"][1:] == [manifest["embed_dim"]]


def test_fixture_embeddings_reproduce(manifest, runner):
    names = json.loads((FIXTURES / "images.json").read_text())
    pixels = np.stack([np.load(FIXTURES / "preprocess" / f"{n}.npy") for n in names])
    got = runner.encode_images(pixels)
    np.testing.assert_allclose(got, np.load(FIXTURES / "image_embeds.npy"), atol=1e-5)
    prompts = json.loads((FIXTURES / "prompts.json").read_text())
    np.testing.assert_allclose(runner.encode_text(prompts), np.load(FIXTURES / "text_embeds.npy"),
                               atol=1e-5)


def test_reference_preprocessing_reproduces(manifest):
    from PIL import Image

    m = manifest["image"]
    for name in json.loads((FIXTURES / "images.json").read_text()):
        if "gray16" in name:
            continue  # scaled to 8 bits by make_fixtures before the transform
        with Image.open(FIXTURES / "images" / name) as img:
            got = preprocess(img, m["size"], m["mean"], m["std"])
        np.testing.assert_allclose(got, np.load(FIXTURES / "preprocess" / f"{name}.npy"),
                                   atol=1e-6, err_msg=name)


def test_exporter_refuses_existing_output(tmp_path, capsys):
    import export_openclip

    rc = export_openclip.main(["--model", "ViT-B-32", "--out", str(tmp_path)])
    assert rc == 2
    assert "exists (pass --force" in capsys.readouterr().err


def test_exporter_names_missing_packages():
    import export_openclip

    with pytest.raises(export_openclip.ExportError, match="pip install no-such-package"):
        export_openclip.require("no_such_module_xyz", "no-such-package")
