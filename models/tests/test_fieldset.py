"""Tests for the procedural fieldset generator (models/export/fieldset.py).

The benchmark's value rests on three properties checked here: it is reproducible
byte-for-byte from a seed, its layout is what consumers parse, and training data never
overlaps the benchmark.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))

import fieldset as F  # noqa: E402


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny benchmark (1 pool, 1 val, 1 test image per class), generated twice with the
    same seed and once with another."""
    base = tmp_path_factory.mktemp("fieldset")
    a = F.generate_benchmark(0, base / "a", pool=1, val=1, test=1)
    b = F.generate_benchmark(0, base / "b", pool=1, val=1, test=1)
    c = F.generate_benchmark(1, base / "c", pool=1, val=1, test=1)
    return a, b, c


# ------------------------------------------------------------------------------ classes

def test_classes_are_well_formed():
    assert len(F.CLASSES) >= 40
    assert len(F.DOMAINS) >= 4
    assert set(F.DOMAIN_NOUN) == set(F.DOMAINS)
    for domain in F.DOMAINS:
        assert sum(c.domain == domain for c in F.CLASSES) == 10
    names = [c.name for c in F.CLASSES]
    assert len(set(names)) == len(names)
    assert len({c.dirname for c in F.CLASSES}) == len(names)
    for i, c in enumerate(F.CLASSES):
        assert c.index == i and c["index"] == i and c["name"] == c.name
        assert c.name == c.name.lower().strip()
        assert c.dirname == c.name.replace(" ", "_") and " " not in c.dirname
    assert F.CLASSES[names.index("wood grain")].dirname == "wood_grain"
    assert [c.name for c in F.CLASSES if c.domain == "digit"] == [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def test_render_every_class():
    for c in F.CLASSES:
        img, attrs = F.render_with_attrs(c.index, np.random.default_rng([3, c.index]))
        assert img.mode == "RGB" and img.size == (96, 96)
        assert attrs["domain"] == c.domain
        again = F.render(c.index, np.random.default_rng([3, c.index]))
        assert img.tobytes() == again.tobytes(), c.name
        other = F.render(c.index, np.random.default_rng([4, c.index]))
        assert img.tobytes() != other.tobytes(), c.name
        # not a blank frame: the figure must stand out from the background
        assert np.asarray(img, np.float32).std() > 8, c.name
    assert F.render(0, np.random.default_rng(0), size=64).size == (64, 64)


def test_digit_sources_are_disjoint():
    train, support, test = (set(F.digit_indices(p).tolist())
                            for p in ("train", "support", "test"))
    assert not (train & support) and not (train & test) and not (support & test)
    assert len(train | support | test) == 1797


# ----------------------------------------------------------------------------- captions

def test_captions_contain_class_name():
    rng = np.random.default_rng(0)
    for c in F.CLASSES:
        seen = set()
        for k in range(6):
            _, attrs = F.render_with_attrs(c.index, np.random.default_rng([5, c.index, k]))
            for j in range(6):
                attrs["shifted"] = j % 2 == 0
                text = F.caption(c.index, rng, attrs if j % 3 else None)
                assert c.name in text, (c.name, text)
                assert text == text.lower() and "{" not in text and "  " not in text, text
                seen.add(text)
        assert len(seen) > 5, (c.name, seen)  # templates actually vary
    assert F.prompt(F.CLASS_NAMES.index("seven")) == (
        "a photo of a seven, a type of handwritten digit.")


# ------------------------------------------------------------------------------- shift

def test_camera_shift_zero_is_identity():
    for c in (0, 15, 27, 33, 44):
        img = F.render(c, np.random.default_rng(c))
        out = F.camera_shift(img, np.random.default_rng(1), severity=0.0)
        assert out.size == img.size and out.tobytes() == img.tobytes()


def test_camera_shift_grows_with_severity():
    diffs = {s: [] for s in (0.25, 0.5, 1.0, 2.0)}
    for c in range(0, len(F.CLASSES), 5):
        img = F.render(c, np.random.default_rng([7, c]))
        ref = np.asarray(img, np.float32)
        for s in diffs:
            out = F.camera_shift(img, np.random.default_rng([8, c]), severity=s)
            diffs[s].append(np.abs(np.asarray(out, np.float32) - ref).mean())
    means = [np.mean(v) for v in diffs.values()]
    assert all(a < b for a, b in zip(means, means[1:])), means


def test_camera_shift_keeps_frame_size():
    img = Image.new("RGB", (128, 96), (120, 30, 200))
    out = F.camera_shift(img, np.random.default_rng(0), F.TEST_SEVERITY)
    assert out.size == (128, 96) and out.mode == "RGB"


# ------------------------------------------------------------------------------ corpus

def test_corpus_is_balanced_deterministic_and_separate():
    n = len(F.CLASSES)
    items = list(F.corpus(0, 2, size=64))
    assert len(items) == 2 * n
    assert [k for _, _, k in items] == list(range(n)) * 2  # class-interleaved
    for img, text, k in items:
        assert img.size == (64, 64) and img.mode == "RGB"
        assert F.CLASSES[k].name in text
    again = F.corpus_sample(0, 7, 1, size=64)
    assert again[0].tobytes() == items[n + 7][0].tobytes() and again[1] == items[n + 7][1]
    # the corpus stream is not the benchmark's pool stream
    pool = F.benchmark_sample(0, "pool", 7, 1, size=64)
    assert pool.tobytes() != again[0].tobytes()


# --------------------------------------------------------------------------- benchmark

def test_benchmark_is_byte_identical_per_seed(tiny):
    a, b, c = tiny
    ta, tb, tc = _tree_bytes(a), _tree_bytes(b), _tree_bytes(c)
    assert ta == tb
    assert ta.keys() == tc.keys()
    images = [k for k in ta if k.endswith((".png", ".jpg"))]
    assert all(ta[k] != tc[k] for k in images)


def test_benchmark_layout(tiny):
    root = tiny[0]
    rows = list(csv.reader((root / "index.csv").open(encoding="utf-8")))
    assert rows[0] == ["path", "class", "domain", "split"]
    body = rows[1:]
    assert body == sorted(body)
    assert len(body) == len(F.CLASSES) * 3
    by_dirname = {c.dirname: c for c in F.CLASSES}
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert files == {r[0] for r in body} | {"index.csv", "classes.json"}
    per_split = {}
    for path, cls, domain, split in body:
        c = by_dirname[cls]
        assert domain == c.domain
        assert path.startswith(f"{split}/{cls}/{cls}_")
        assert path.endswith(".jpg" if split == "test" else ".png")
        per_split.setdefault(split, set()).add(cls)
        with Image.open(root / path) as im:
            assert im.mode == "RGB"
            w, h = im.size
            if split == "test":
                assert min(w, h) == 96 and 96 <= max(w, h) <= 128
            else:
                assert (w, h) == (96, 96)
    assert set(per_split) == {"pool", "val", "test"}
    assert all(v == set(by_dirname) for v in per_split.values())
    classes = json.loads((root / "classes.json").read_text(encoding="utf-8"))
    assert classes == [{"name": c.name, "dirname": c.dirname, "domain": c.domain,
                        "prompt_domain": F.DOMAIN_NOUN[c.domain]} for c in F.CLASSES]


def test_benchmark_order_independent(tiny):
    """Any single image can be regenerated on its own, without the rest of the run."""
    root = tiny[0]
    k = F.CLASS_NAMES.index("umbrella")
    img = F.benchmark_sample(0, "val", k, 0)
    with Image.open(root / "val/umbrella/umbrella_000.png") as saved:
        assert np.array_equal(np.asarray(img), np.asarray(saved))


def test_benchmark_refuses_existing_dir_unless_forced(tmp_path):
    out = tmp_path / "bench"
    F.generate_benchmark(0, out, pool=1, val=0, test=0)
    with pytest.raises(FileExistsError):
        F.generate_benchmark(0, out, pool=1, val=0, test=0)
    (out / "stale.txt").write_text("x")
    F.generate_benchmark(0, out, pool=0, val=0, test=1, force=True)
    assert not (out / "stale.txt").exists() and not (out / "pool").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]  # no temp leftovers


def test_cli(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cli"
    assert F.main(["--seed", "3", "--out", str(out), "--pool", "1", "--val", "0",
                   "--test", "0"]) == 0
    assert len(list((out / "pool").rglob("*.png"))) == len(F.CLASSES)
    assert F.main(["--seed", "3", "--out", str(out), "--pool", "1"]) == 2  # exists

    seen = {}
    monkeypatch.setattr(F, "generate_benchmark",
                        lambda seed, out, **kw: seen.update(kw, seed=seed) or Path(out))
    assert F.main(["--seed", "5", "--out", str(tmp_path / "s"), "--slice"]) == 0
    assert (seen["seed"], seen["pool"], seen["val"], seen["test"]) == (5, 4, 0, 10)
