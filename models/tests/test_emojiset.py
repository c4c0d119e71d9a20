"""Tests for the emojiset benchmark generator (models/export/emojiset.py) and its committed slice.

They run on the committed source artwork (models/emojiset/sources) with the light test
dependencies only: no npm, no network, no SVG renderer, no torch.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "models" / "export"))

import emojiset as E  # noqa: E402

SLICE = REPO / "tests" / "fixtures" / "emojiset"
SOURCES = REPO / "models" / "emojiset" / "sources" / "img"
FEW = [E.CLASSES[i] for i in (0, 7, 26, 31, 50, 77, 99)]  # every domain, some fine-grained


def _styles() -> dict[str, Path]:
    return {d.name: d / "64" for d in SOURCES.iterdir() if (d / "64").is_dir()}


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The same tiny benchmark generated twice with seed 0, once with seed 1."""
    base = tmp_path_factory.mktemp("emojiset")
    kw = dict(pool=2, val=1, test=2, test_same=1, classes=FEW)
    a = E.generate_benchmark(0, base / "a", _styles(), **kw)
    b = E.generate_benchmark(0, base / "b", _styles(), **kw)
    c = E.generate_benchmark(1, base / "c", _styles(), **kw)
    return a, b, c


# ---------------------------------------------------------------------------------- classes

def test_classes_mirror_the_study_domains():
    assert len(E.CLASSES) == 100
    assert E.DOMAINS == ["animal", "smiley", "object", "food"]
    for d in E.DOMAINS:
        assert sum(c.domain == d for c in E.CLASSES) == 25
    names = [c.name for c in E.CLASSES]
    assert len(set(names)) == 100 and len({c.dirname for c in E.CLASSES}) == 100
    assert len({c.code for c in E.CLASSES}) == 100
    for i, c in enumerate(E.CLASSES):
        assert c.index == i and c.name == c.name.lower().strip()
        assert c.dirname == c.name.replace(" ", "_")
    # the fine-grained domain: smileys whose names differ in a detail
    smileys = [c.name for c in E.CLASSES if c.domain == "smiley"]
    assert {"grinning face", "grinning face with big eyes",
            "grinning face with smiling eyes"} <= set(smileys)
    assert E.prompt(0) == "a photo of a monkey, a type of animal."
    assert E.plain_prompt(0) == "a photo of a monkey."


def test_codepoints_normalise_across_vendors():
    assert E.norm_code("2764-FE0F") == "2764"
    assert E.norm_code("1F43B-200D-2744-FE0F") == "1f43b-200d-2744"
    assert E.norm_code("1f600") == E.norm_code("1F600") == "1f600"


def test_pretraining_never_uses_a_deployment_style():
    assert not set(E.PRETRAIN_STYLES) & set(E.DEPLOY_STYLES)
    assert E.SUPPORT_STYLE in E.DEPLOY_STYLES and E.TEST_STYLE in E.DEPLOY_STYLES
    assert E.SUPPORT_STYLE != E.TEST_STYLE
    # Fluent flat draws the same pictures as Fluent modern: it must stay out of pretraining too
    assert not any(s.startswith("fluent") for s in E.PRETRAIN_STYLES)
    # no artwork that is not openly licensed
    for pkg in E.PINS:
        assert "apple" not in pkg and "facebook" not in pkg
    for style, (pkg, licence, _how) in E.STYLES.items():
        assert pkg in E.PINS and licence in {"Apache-2.0", "CC-BY-4.0", "CC-BY-SA-4.0", "MIT"}


def test_committed_sources_cover_every_class_in_both_deployment_styles():
    styles = _styles()
    assert set(styles) == {E.SUPPORT_STYLE, E.TEST_STYLE}
    for name, folder in styles.items():
        idx = E.style_index(folder)
        assert all(c.code in idx for c in E.CLASSES), name
        img = E.load_emoji(idx[E.CLASSES[0].code])
        assert img.size == (64, 64) and img.mode == "RGBA"


# ------------------------------------------------------------------------------ determinism

def test_same_seed_is_byte_identical(small):
    a, b, c = small
    ta, tb, tc = _tree_bytes(a), _tree_bytes(b), _tree_bytes(c)
    assert ta == tb
    frames = [k for k in ta if k.endswith(".jpg")]
    assert len(frames) == len(FEW) * 6
    assert sum(ta[k] != tc.get(k) for k in frames) == len(frames)  # another seed: all differ


def test_layout_is_what_clipd_eval_reads(small):
    a = small[0]
    for split, n in (("pool", 2), ("val", 1), ("test", 2), ("test_same", 1)):
        dirs = sorted(p.name for p in (a / split).iterdir())
        assert dirs == sorted(c.dirname for c in FEW), split
        for c in FEW:
            files = sorted((a / split / c.dirname).iterdir())
            assert [f.name for f in files] == [f"{c.dirname}_{i:03d}.jpg" for i in range(n)]
    with open(a / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "class", "domain", "split", "style"]
    assert rows == sorted(rows, key=lambda r: r["path"])
    styles = {r["split"]: r["style"] for r in rows}
    assert styles == {"pool": E.SUPPORT_STYLE, "val": E.TEST_STYLE, "test": E.TEST_STYLE,
                      "test_same": E.SUPPORT_STYLE}
    meta = json.loads((a / "classes.json").read_text())
    assert [m["name"] for m in meta] == [c.name for c in FEW]
    assert all(set(m) == {"name", "dirname", "domain", "prompt_domain", "hexcode"} for m in meta)
    info = json.loads((a / "emojiset.json").read_text())
    assert info["support_style"] == E.SUPPORT_STYLE and info["seed"] == 0


def test_frames_look_like_camera_frames(small):
    a = small[0]
    for split in ("pool", "val", "test"):
        for p in sorted((a / split).rglob("*.jpg")):
            with Image.open(p) as img:
                assert img.mode == "RGB" and min(img.size) == 96 and max(img.size) <= 128
                assert np.asarray(img, np.float32).std() > 5, p


def test_headline_split_uses_different_drawings(small):
    """A test frame and the same-style frame with the same composition differ only in the
    artwork: test_same shares the test split's random stream, pool never does."""
    a = small[0]
    c = FEW[0]
    t = np.asarray(Image.open(a / "test" / c.dirname / f"{c.dirname}_000.jpg"), np.float32)
    s = np.asarray(Image.open(a / "test_same" / c.dirname / f"{c.dirname}_000.jpg"), np.float32)
    p = np.asarray(Image.open(a / "pool" / c.dirname / f"{c.dirname}_000.jpg"), np.float32)
    assert t.shape == s.shape  # same frame size: the same composition
    assert np.abs(t - s).mean() > 1.0  # ... with another drawing
    assert p.shape != t.shape or np.abs(p - t).mean() > 10


def test_any_folder_of_codepoint_pngs_is_a_style(tmp_path):
    """emoji-datasource layout: <codepoint>.png, any case, FE0F or not."""
    src = E.style_index(_styles()[E.TEST_STYLE])
    mine = tmp_path / "img" / "mine" / "64"
    mine.mkdir(parents=True)
    for i, c in enumerate(E.CLASSES):
        name = c.hexcode.upper() if i % 2 else c.hexcode.lower() + "-fe0f"
        shutil.copyfile(src[c.code], mine / f"{name}.png")
    for code in E.DISTRACTORS:  # the clutter emoji too, or the frames differ in their clutter
        if E.norm_code(code) in src:
            shutil.copyfile(src[E.norm_code(code)], mine / f"{code}.png")
    styles = dict(_styles(), mine=mine)
    out = E.generate_benchmark(3, tmp_path / "b", styles, support=E.SUPPORT_STYLE,
                               test_style="mine", pool=1, val=0, test=1, test_same=0,
                               classes=FEW)
    ref = E.generate_benchmark(3, tmp_path / "r", _styles(), pool=1, val=0, test=1,
                               test_same=0, classes=FEW)
    got, want = _tree_bytes(out), _tree_bytes(ref)
    assert {k: v for k, v in got.items() if k not in ("index.csv", "emojiset.json")} == \
        {k: v for k, v in want.items() if k not in ("index.csv", "emojiset.json")}
    assert "mine" in (out / "index.csv").read_text()


def test_a_style_missing_classes_is_refused(tmp_path):
    few = tmp_path / "few"
    few.mkdir()
    src = E.style_index(_styles()[E.TEST_STYLE])
    shutil.copyfile(src[E.CLASSES[0].code], few / f"{E.CLASSES[0].code}.png")
    with pytest.raises(FileNotFoundError, match="lacks 99 benchmark classes"):
        E.generate_benchmark(0, tmp_path / "x", dict(_styles(), few=few), test_style="few")
    assert not (tmp_path / "x").exists()
    with pytest.raises(KeyError, match="unknown style"):
        E.generate_benchmark(0, tmp_path / "x", _styles(), test_style="nope")


def test_existing_output_is_refused(small, tmp_path):
    with pytest.raises(FileExistsError):
        E.generate_benchmark(0, small[0], _styles(), classes=FEW)


def test_a_tarball_with_another_hash_is_refused(tmp_path):
    name = "emojibase-data"
    version, _sha = E.PINS[name]
    (tmp_path / "npm").mkdir()
    bad = tmp_path / "npm" / f"{name}-{version}.tgz"
    with tarfile.open(bad, "w:gz") as t:
        t.add(__file__, arcname="package/package.json")
    with pytest.raises(E.FetchError, match="differs from the pinned"):
        E.fetch_package(name, tmp_path)
    assert not (tmp_path / "npm" / f"{name}-{version}").exists()


def test_pins_are_exact_versions_and_sha256():
    for name, (version, sha) in E.PINS.items():
        assert all(p.isdigit() for p in version.split(".")), name
        assert len(sha) == 64 and int(sha, 16) >= 0, name


# --------------------------------------------------------------------------- committed slice

def test_slice_layout_and_attribution():
    assert (SLICE / "ATTRIBUTION.md").is_file() and (SLICE / "LICENSE-fluentui-emoji.txt").is_file()
    assert (SOURCES.parent.parent / "ATTRIBUTION.md").is_file()
    assert "Microsoft" in (SLICE / "LICENSE-fluentui-emoji.txt").read_text()
    with open(SLICE / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 100 * (4 + 5)
    counts = {}
    for r in rows:
        counts[r["split"]] = counts.get(r["split"], 0) + 1
        assert (SLICE / r["path"]).is_file()
    assert counts == {"pool": 400, "test": 500}
    size = sum(p.stat().st_size for p in SLICE.rglob("*") if p.is_file())
    size += sum(p.stat().st_size for p in SOURCES.rglob("*") if p.is_file())
    assert size < 5 * 1024 * 1024, size


def test_slice_regenerates_from_the_committed_sources(tmp_path):
    """Same seed, same sources: the committed frames come back. Compared on decoded pixels
    with a tolerance, since another libjpeg or zlib build may change a few bits."""
    out = E.generate_benchmark(0, tmp_path / "s", _styles(), pool=4, val=0, test=5,
                               test_same=0, classes=FEW)
    for c in FEW:
        for split, n in (("pool", 4), ("test", 5)):
            for i in range(n):
                rel = f"{split}/{c.dirname}/{c.dirname}_{i:03d}.jpg"
                a = np.asarray(Image.open(out / rel), np.float32)
                b = np.asarray(Image.open(SLICE / rel), np.float32)
                assert a.shape == b.shape, rel
                assert np.abs(a - b).mean() < 1.0, rel
    digest = hashlib.sha256((SLICE / "classes.json").read_bytes()).hexdigest()
    assert digest == hashlib.sha256(json.dumps(
        [{"name": c.name, "dirname": c.dirname, "domain": c.domain,
          "prompt_domain": c.prompt_domain, "hexcode": c.hexcode} for c in E.CLASSES],
        indent=1).encode() + b"\n").hexdigest()
