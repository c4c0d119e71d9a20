#!/usr/bin/env python3
"""emojiset: a few-shot benchmark made of real, openly licensed emoji artwork (EMOJISET.md).

    python models/export/emojiset.py fetch                       # npm artwork -> out/emoji-cache
    python models/export/emojiset.py generate --seed 0 --out out/emojiset0
    python models/export/emojiset.py generate --seed 0 --out DIR \\
        --style mine=/path/to/img/mine/64 --support mine --test fluent-high-contrast
    python models/export/emojiset.py generate --seed 0 --out DIR --slice

`fetch` packs pinned npm packages (Noto, Twemoji, OpenMoji, Fluent, emojibase-data), checks each
tarball's sha256 against the pins below, unpacks them and renders the SVG sets with resvg into
`<cache>/img/<style>/64/<codepoint>.png`, the layout of emoji-datasource's `img/<vendor>/64/`.
Any folder laid out that way is a style: `--style NAME=DIR` adds one.

`generate` composites one deployment style's emoji into camera-like scenes (background, scale,
position, rotation, distractor emoji, partial occlusion, perspective, then fieldset's camera
shift) and writes the support pool from the support style and val/test from the test style:
shots and test frames are different drawings. `test_same/` holds frames of the support style
under the test split's compositions: near-duplicate retrieval, reported beside the headline
but never used to choose anything.

Every image is a pure function of (seed, split, class, i) and the source artwork, so the same
seed and sources give byte-identical output (for fixed Pillow/numpy/libjpeg builds).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tooling import sha256_file  # noqa: E402

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import fieldset  # noqa: E402  (camera shift and backgrounds are shared with the fieldset)

DEFAULT_CACHE = REPO / "out" / "emoji-cache"
SLICE_SOURCES = REPO / "models" / "emojiset" / "sources" / "img"
SLICE_DIR = REPO / "tests" / "fixtures" / "emojiset"

# npm packages, exact versions and the sha256 of the tarball `npm pack` fetches. A package whose
# tarball hashes differently is refused: the artwork is part of the benchmark's definition.
PINS = {
    "emoji-datasource-google": ("16.0.0",
                                "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438"),
    "emoji-datasource-twitter": ("16.0.0",
                                 "f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877"),
    "openmoji": ("17.0.0", "55ee7d13485dec86e9f38c1f3a645a13382d33ff97c0cd845ee824b0aef45e68"),
    "fluentui-emoji": ("1.3.0", "ec892e607e854859b812c7d827801756adc19955b0ef56d4ae8afcddd19492c5"),
    "emojibase-data": ("17.0.0", "d01d0e2ca4e22cb402679532155342c71e2e871f25c32223c013b8b166ebdf5a"),
}

# style name -> (package, licence, how it is obtained). Apple's and Facebook's artwork are not
# openly licensed and appear nowhere (emoji-datasource-apple/-facebook are never fetched).
STYLES = {
    "noto": ("emoji-datasource-google", "Apache-2.0", "png package/img/google/64"),
    "twemoji": ("emoji-datasource-twitter", "CC-BY-4.0", "png package/img/twitter/64"),
    "openmoji-color": ("openmoji", "CC-BY-SA-4.0", "svg package/color/svg"),
    "openmoji-black": ("openmoji", "CC-BY-SA-4.0", "svg package/black/svg"),
    "fluent-modern": ("fluentui-emoji", "MIT", "svg package/icons/modern"),
    "fluent-flat": ("fluentui-emoji", "MIT", "svg package/icons/flat"),
    "fluent-high-contrast": ("fluentui-emoji", "MIT", "svg package/icons/high-contrast"),
}
# Pretraining never sees any Fluent style: the deployment artwork is new to the model, and Fluent
# flat (the same drawings as Fluent modern, flat-shaded) would leak it.
PRETRAIN_STYLES = ("noto", "twemoji", "openmoji-color", "openmoji-black")
DEPLOY_STYLES = ("fluent-modern", "fluent-flat", "fluent-high-contrast")
SUPPORT_STYLE = "fluent-modern"
TEST_STYLE = "fluent-high-contrast"
SOURCE_PX = 64

DOMAIN_NOUN = {"animal": "animal", "smiley": "smiley", "object": "object", "food": "food"}

# The benchmark: 4 domains x 25 classes, mirroring the study's Animal / Thu-dog (fine-grained:
# face-* smileys that differ in eyes and mouth) / Caltech-101 / Food-101. Names are the CLDR
# labels (lower case); hexcodes as emojibase writes them.
_DOMAIN_CLASSES = {
    "animal": [
        ("monkey", "1F412"), ("dog", "1F415"), ("fox", "1F98A"), ("cat", "1F408"),
        ("lion", "1F981"), ("tiger", "1F405"), ("horse", "1F40E"), ("zebra", "1F993"),
        ("cow", "1F404"), ("pig", "1F416"), ("camel", "1F42A"), ("giraffe", "1F992"),
        ("elephant", "1F418"), ("rabbit", "1F407"), ("bear", "1F43B"), ("panda", "1F43C"),
        ("kangaroo", "1F998"), ("chicken", "1F414"), ("penguin", "1F427"), ("owl", "1F989"),
        ("duck", "1F986"), ("frog", "1F438"), ("turtle", "1F422"), ("snake", "1F40D"),
        ("octopus", "1F419"),
    ],
    "smiley": [
        ("grinning face", "1F600"), ("grinning face with big eyes", "1F603"),
        ("grinning face with smiling eyes", "1F604"), ("beaming face with smiling eyes", "1F601"),
        ("grinning squinting face", "1F606"), ("grinning face with sweat", "1F605"),
        ("face with tears of joy", "1F602"), ("slightly smiling face", "1F642"),
        ("winking face", "1F609"), ("smiling face with smiling eyes", "1F60A"),
        ("smiling face with heart-eyes", "1F60D"), ("face blowing a kiss", "1F618"),
        ("kissing face", "1F617"), ("face with tongue", "1F61B"),
        ("winking face with tongue", "1F61C"), ("thinking face", "1F914"),
        ("neutral face", "1F610"), ("expressionless face", "1F611"), ("smirking face", "1F60F"),
        ("unamused face", "1F612"), ("pensive face", "1F614"), ("sleeping face", "1F634"),
        ("confused face", "1F615"), ("worried face", "1F61F"), ("crying face", "1F622"),
    ],
    "object": [
        ("guitar", "1F3B8"), ("violin", "1F3BB"), ("trumpet", "1F3BA"), ("saxophone", "1F3B7"),
        ("drum", "1F941"), ("hammer", "1F528"), ("wrench", "1F527"), ("screwdriver", "1FA9B"),
        ("axe", "1FA93"), ("magnet", "1F9F2"), ("scissors", "2702"), ("paperclip", "1F4CE"),
        ("pushpin", "1F4CC"), ("pencil", "270F"), ("briefcase", "1F4BC"),
        ("clipboard", "1F4CB"), ("light bulb", "1F4A1"), ("flashlight", "1F526"),
        ("candle", "1F56F"), ("camera", "1F4F7"), ("television", "1F4FA"), ("chair", "1FA91"),
        ("bed", "1F6CF"), ("broom", "1F9F9"), ("bucket", "1FAA3"),
    ],
    "food": [
        ("grapes", "1F347"), ("watermelon", "1F349"), ("banana", "1F34C"),
        ("pineapple", "1F34D"), ("red apple", "1F34E"), ("pear", "1F350"),
        ("cherries", "1F352"), ("strawberry", "1F353"), ("lemon", "1F34B"),
        ("avocado", "1F951"), ("carrot", "1F955"), ("broccoli", "1F966"),
        ("ear of corn", "1F33D"), ("bread", "1F35E"), ("croissant", "1F950"),
        ("cheese wedge", "1F9C0"), ("hamburger", "1F354"), ("pizza", "1F355"),
        ("hot dog", "1F32D"), ("taco", "1F32E"), ("french fries", "1F35F"),
        ("doughnut", "1F369"), ("cookie", "1F36A"), ("birthday cake", "1F382"),
        ("lollipop", "1F36D"),
    ],
}

# Small emoji pasted near the frame edges as clutter: none is a benchmark class or looks like
# one (weather, symbols, sports gear). A style that lacks one simply skips it.
DISTRACTORS = ("2601", "2B50", "1F388", "26BD", "1F3C0", "1F4AC", "1F343", "1F341",
               "2744", "1F381", "1F4E6", "1F6A9", "2699", "1F4CD", "1F3B2", "1F9E9")


@dataclass(frozen=True)
class EmojiClass:
    index: int
    name: str
    hexcode: str
    domain: str

    @property
    def dirname(self) -> str:
        return self.name.replace(" ", "_")

    @property
    def code(self) -> str:
        return norm_code(self.hexcode)

    @property
    def prompt_domain(self) -> str:
        return DOMAIN_NOUN[self.domain]


def _build_classes() -> list[EmojiClass]:
    out = []
    for domain, items in _DOMAIN_CLASSES.items():
        for name, hexcode in items:
            out.append(EmojiClass(len(out), name, hexcode, domain))
    return out


CLASSES = _build_classes()
DOMAINS = list(_DOMAIN_CLASSES)
PROMPT_TEMPLATE = fieldset.PROMPT_TEMPLATE  # "a photo of a {name}, a type of {noun}."


def prompt(cls_index: int) -> str:
    c = CLASSES[cls_index]
    return PROMPT_TEMPLATE.format(name=c.name, noun=c.prompt_domain)


def plain_prompt(cls_index: int) -> str:
    return f"a photo of a {CLASSES[cls_index].name}."


def norm_code(code: str) -> str:
    """Canonical codepoint key: lower case, '-'-joined, variation selector FE0F dropped.

    emoji-datasource writes `2764-fe0f`, emojibase `2764`, OpenMoji `2764`: all become `2764`.
    """
    parts = [p for p in code.strip().lower().replace("_", "-").split("-") if p and p != "fe0f"]
    return "-".join(parts)


# --------------------------------------------------------------------------------------
# Artwork: fetch pinned npm packages, render the SVG styles
# --------------------------------------------------------------------------------------

class FetchError(Exception):
    pass


def fetch_package(name: str, cache: Path, log=print) -> Path:
    """`npm pack` one pinned package into cache/npm, check its sha256, unpack; return its root."""
    version, want = PINS[name]
    npm_dir = cache / "npm"
    npm_dir.mkdir(parents=True, exist_ok=True)
    tgz = npm_dir / f"{name}-{version}.tgz"
    if not tgz.is_file():
        if shutil.which("npm") is None:
            raise FetchError("npm not found: install Node.js/npm to fetch the artwork")
        log(f"npm pack {name}@{version}")
        r = subprocess.run(["npm", "pack", f"{name}@{version}", "--silent",
                            "--pack-destination", str(npm_dir)],
                           capture_output=True, text=True)
        if r.returncode != 0 or not tgz.is_file():
            raise FetchError(f"npm pack {name}@{version} failed: {r.stderr.strip()[-400:]}")
    got = sha256_file(tgz)
    if got != want:
        raise FetchError(f"{tgz}: sha256 {got} differs from the pinned {want}; "
                         "delete it to fetch again, or update PINS after reviewing the artwork")
    root = npm_dir / f"{name}-{version}"
    if not (root / "package" / "package.json").is_file():
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=npm_dir))
        with tarfile.open(tgz) as t:
            t.extractall(tmp, filter="data")
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    return root


def _slug(label: str) -> str:
    s = label.lower().replace("'", "").replace("\u2019", "")
    return re.sub(r"[^a-z0-9]+", "-", s).strip("-")


def load_emojibase(cache: Path) -> list[dict]:
    """Every emoji concept (skin-tone variants and components left out) with its CLDR label,
    tags, group and subgroup names, sorted by emojibase order."""
    root = cache / "npm" / f"emojibase-data-{PINS['emojibase-data'][0]}" / "package"
    data = json.loads((root / "en" / "data.json").read_text(encoding="utf-8"))
    meta = json.loads((root / "meta" / "groups.json").read_text(encoding="utf-8"))
    out = []
    for e in data:
        if "group" not in e or meta["groups"][str(e["group"])] == "component":
            continue
        out.append({"code": norm_code(e["hexcode"]), "hexcode": e["hexcode"],
                    "label": e["label"], "tags": list(e.get("tags", [])),
                    "group": meta["groups"][str(e["group"])],
                    "subgroup": meta["subgroups"][str(e.get("subgroup", -1))]
                    if str(e.get("subgroup", -1)) in meta["subgroups"] else "",
                    "order": e.get("order", 0)})
    out.sort(key=lambda e: (e["order"], e["code"]))
    return out


def _render_svg(svg: Path, size: int) -> Image.Image:
    import resvg_py  # imported here: only `fetch` renders SVGs (pip install resvg-py)

    png = resvg_py.svg_to_bytes(svg_path=str(svg), width=size, height=size)
    return Image.open(io.BytesIO(bytes(png))).convert("RGBA")


def build_styles(cache: Path, styles=tuple(STYLES), log=print) -> dict[str, Path]:
    """Make `<cache>/img/<style>/64/<code>.png` for every style; return style -> folder."""
    roots = {name: fetch_package(name, cache, log) for name in PINS}
    concepts = load_emojibase(cache)
    by_slug = {}
    for e in concepts:
        by_slug.setdefault(_slug(e["label"]), e["code"])
    out = {}
    for style in styles:
        pkg, _lic, how = STYLES[style]
        kind, sub = how.split(" ", 1)
        src = roots[pkg] / sub
        dst = cache / "img" / style / str(SOURCE_PX)
        done = dst.parent / ".complete"
        out[style] = dst
        if done.is_file():
            continue
        t0 = time.time()
        (cache / "img").mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{style}-", dir=cache / "img"))
        n = 0
        for f in sorted(src.iterdir()):
            if kind == "png":
                if f.suffix != ".png":
                    continue
                shutil.copyfile(f, tmp / f.name)
            else:
                if f.suffix != ".svg":
                    continue
                if style.startswith("fluent"):
                    stem = f.stem[:-len("-default")] if f.stem.endswith("-default") else f.stem
                    code = by_slug.get(stem)
                    if code is None:
                        continue  # skin-tone variants and names emojibase spells otherwise
                else:
                    code = norm_code(f.stem)
                try:
                    img = _render_svg(f, SOURCE_PX)
                except ValueError as e:
                    log(f"  {style}: {f.name}: not rendered ({e})")
                    continue
                img.save(tmp / f"{code}.png", format="PNG", compress_level=6, optimize=False)
            n += 1
        if dst.exists():
            shutil.rmtree(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dst)
        done.write_text(f"{n}\n")
        log(f"style {style}: {n} images in {time.time() - t0:.0f}s -> {dst}")
    return out


def style_index(folder: Path) -> dict[str, Path]:
    """code -> PNG path for a style folder of `<codepoint>.png` files (emoji-datasource layout)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: style folder not found")
    idx = {}
    for f in sorted(folder.iterdir()):
        if f.suffix.lower() == ".png":
            idx.setdefault(norm_code(f.stem), f)
    return idx


def load_emoji(path: Path) -> Image.Image:
    img = Image.open(path)
    img.load()
    return img.convert("RGBA")


# --------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------

SPLIT_IDS = {"pool": 1, "val": 2, "test": 3, "test_same": 3}
POOL_SEVERITY = 0.35  # shots are taken with the deployment camera too, with some care
VAL_SEVERITY = 0.6
TEST_SEVERITY = 0.6
FRAME = 96
_JPEG_OPTS = {"format": "JPEG", "quality": 90, "subsampling": 2, "optimize": False,
              "progressive": False}


def _perspective(img: Image.Image, rng: np.random.Generator, amount: float) -> Image.Image:
    """Tilt the view: move the four corners by up to `amount` of the frame, mirror-padded."""
    W, H = img.size
    d = rng.uniform(-1, 1, 8) * amount * np.array([W, H] * 4)
    dst = [(0, 0), (W, 0), (W, H), (0, H)]
    src = [(x + d[2 * k], y + d[2 * k + 1]) for k, (x, y) in enumerate(dst)]
    # coefficients mapping output (x, y) to input: solve the 8x8 system
    A, b = [], []
    for (x, y), (u, v) in zip(dst, src):
        A.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        A.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b += [u, v]
    coeffs = np.linalg.solve(np.array(A, np.float64), np.array(b, np.float64))
    pad = int(math.ceil(float(np.abs(d).max()))) + 1
    big = Image.fromarray(np.pad(np.asarray(img), ((pad, pad), (pad, pad), (0, 0)),
                                 mode="reflect"))
    c = coeffs
    # shift into the padded image: input coordinates + pad
    shifted = (c[0] + pad * c[6], c[1] + pad * c[7], c[2] + pad,
               c[3] + pad * c[6], c[4] + pad * c[7], c[5] + pad, c[6], c[7])
    return big.transform((W, H), Image.PERSPECTIVE, tuple(float(v) for v in shifted),
                         resample=Image.BILINEAR)


def _paste(canvas: Image.Image, sprite: Image.Image, cx: float, cy: float) -> None:
    x = int(round(cx - sprite.width / 2))
    y = int(round(cy - sprite.height / 2))
    canvas.paste(sprite, (x, y), sprite)


def compose(emoji: Image.Image, rng: np.random.Generator, severity: float,
            frame: tuple[int, int] = (FRAME, FRAME),
            distractors: list[Image.Image] = ()) -> Image.Image:
    """One camera-like frame of an emoji: background, distractors, the emoji (scale, position,
    rotation), partial occlusion, perspective, then fieldset's camera shift.

    The number of random draws does not depend on the inputs' content, only on `frame` and
    how many distractors are offered, so a frame is a pure function of its RNG and inputs.
    """
    W, H = frame
    short = min(W, H)
    bg, _name, _mean = fieldset._background(rng, H, W, light_bias=0.45)
    canvas = bg.convert("RGBA")
    # distractors: 0-2 small emoji near the edges, often cut off by the frame
    n_dis = int(rng.integers(0, 3))
    dis_pick = rng.integers(0, max(1, len(distractors)), 2)
    dis_xy = rng.random((2, 2))
    dis_s = rng.uniform(0.18, 0.28, 2)
    dis_rot = rng.uniform(-40, 40, 2)
    # subject
    scale = rng.uniform(0.42, 0.78)
    rot = float(np.clip(rng.normal(0, 12), -30, 30))
    cx, cy = rng.uniform(0.36, 0.64) * W, rng.uniform(0.36, 0.64) * H
    # occlusion
    occ_u, occ_kind = rng.random(), int(rng.integers(0, 3))
    occ_xy, occ_frac = rng.random(2), rng.uniform(0.12, 0.3)
    occ_col = rng.integers(0, 256, 3)
    persp = rng.random()

    if distractors:
        for j in range(n_dis):
            d = distractors[int(dis_pick[j]) % len(distractors)]
            s = max(4, int(round(dis_s[j] * short)))
            sp = d.resize((s, s), Image.BICUBIC).rotate(float(dis_rot[j]), Image.BICUBIC,
                                                        expand=True)
            # along an edge: one coordinate near 0 or 1
            x, y = dis_xy[j]
            if j == 0:
                x = 0.05 + 0.9 * x
                y = 0.08 if y < 0.5 else 0.92
            else:
                y = 0.05 + 0.9 * y
                x = 0.08 if x < 0.5 else 0.92
            _paste(canvas, sp, x * W, y * H)
    side = max(8, int(round(scale * short)))
    sprite = emoji.resize((side, side), Image.BICUBIC)
    if abs(rot) > 0.5:
        sprite = sprite.rotate(rot, Image.BICUBIC, expand=True)
    _paste(canvas, sprite, cx, cy)
    if occ_u < 0.35:
        # something in front of part of the subject: a hand-sized blob or bar
        d = ImageDraw.Draw(canvas)
        r = math.sqrt(occ_frac) * side / 2
        ox = cx + (occ_xy[0] - 0.5) * side * 0.9
        oy = cy + (occ_xy[1] - 0.5) * side * 0.9
        col = tuple(int(v) for v in occ_col) + (255,)
        if occ_kind == 0:
            d.ellipse([ox - r, oy - r, ox + r, oy + r], fill=col)
        elif occ_kind == 1:
            d.rectangle([ox - r * 1.6, oy - r * 0.6, ox + r * 1.6, oy + r * 0.6], fill=col)
        else:
            d.rectangle([ox - r * 0.6, oy - r * 1.6, ox + r * 0.6, oy + r * 1.6], fill=col)
    img = canvas.convert("RGB")
    if persp < 0.7 and severity > 0:
        img = _perspective(img, rng, 0.06 * min(severity, 1.5))
    return fieldset.camera_shift(img, rng, severity) if severity > 0 else img


def _frame_size(rng: np.random.Generator, split: str) -> tuple[int, int]:
    """Test frames vary in aspect ratio like a camera's (short side 96, long side up to 128)."""
    long = int(rng.integers(FRAME, FRAME * 4 // 3 + 1))
    landscape = rng.random() < 0.7
    if split in ("test", "test_same", "val"):
        return (long, FRAME) if landscape else (FRAME, long)
    return (FRAME, FRAME)


def benchmark_sample(seed: int, split: str, cls_index: int, i: int, emoji: Image.Image,
                     distractors: list[Image.Image] = (), severity: float | None = None
                     ) -> Image.Image:
    """The i-th frame of a class in a split. `test_same` uses the test split's random stream
    (the same compositions) with the support style's artwork."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], cls_index, i])
    if severity is None:
        severity = {"pool": POOL_SEVERITY, "val": VAL_SEVERITY, "test": TEST_SEVERITY,
                    "test_same": TEST_SEVERITY}[split]
    frame = _frame_size(rng, split)
    return compose(emoji, rng, severity, frame, distractors)


def _open_style(name: str, folder: Path) -> tuple[dict[str, Path], list[Image.Image]]:
    idx = style_index(folder)
    missing = [c.name for c in CLASSES if c.code not in idx]
    if missing:
        raise FileNotFoundError(f"style {name} ({folder}) lacks {len(missing)} benchmark "
                                f"classes: {', '.join(missing[:8])}"
                                f"{' ...' if len(missing) > 8 else ''}")
    dis = [load_emoji(idx[norm_code(c)]) for c in DISTRACTORS if norm_code(c) in idx]
    return idx, dis


def generate_benchmark(seed: int, out_dir, styles: dict[str, Path], support: str = SUPPORT_STYLE,
                       test_style: str = TEST_STYLE, pool: int = 16, val: int = 10,
                       test: int = 50, test_same: int = 50, force: bool = False,
                       classes: list[EmojiClass] | None = None, verbose: bool = False) -> Path:
    """Write the benchmark to `out_dir` (layout in EMOJISET.md) and return its path.

    Written to a temporary sibling and renamed into place, so an interrupted run leaves nothing.
    """
    classes = CLASSES if classes is None else classes
    out = Path(out_dir)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists (use --force to replace it)")
    for s in (support, test_style):
        if s not in styles:
            raise KeyError(f"unknown style {s!r} (known: {', '.join(sorted(styles))})")
    sup_idx, sup_dis = _open_style(support, styles[support])
    tst_idx, tst_dis = _open_style(test_style, styles[test_style])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        rows = []
        plan = [("pool", pool, support, sup_idx, sup_dis),
                ("val", val, test_style, tst_idx, tst_dis),
                ("test", test, test_style, tst_idx, tst_dis),
                ("test_same", test_same, support, sup_idx, sup_dis)]
        t0 = time.time()
        for split, n, style, idx, dis in plan:
            if n <= 0:
                continue
            for c in classes:
                d = tmp / split / c.dirname
                d.mkdir(parents=True, exist_ok=True)
                emoji = load_emoji(idx[c.code])
                for i in range(n):
                    img = benchmark_sample(seed, split, c.index, i, emoji, dis)
                    rel = f"{split}/{c.dirname}/{c.dirname}_{i:03d}.jpg"
                    img.save(tmp / rel, **_JPEG_OPTS)
                    rows.append((rel, c.dirname, c.domain, split, style))
            if verbose:
                print(f"{split}: {n} per class from {style}, {time.time() - t0:.1f}s",
                      file=sys.stderr)
        rows.sort()
        with open(tmp / "index.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["path", "class", "domain", "split", "style"])
            w.writerows(rows)
        meta = [{"name": c.name, "dirname": c.dirname, "domain": c.domain,
                 "prompt_domain": c.prompt_domain, "hexcode": c.hexcode} for c in classes]
        with open(tmp / "classes.json", "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
            f.write("\n")
        info = {"seed": seed, "support_style": support, "test_style": test_style,
                "pool": pool, "val": val, "test": test, "test_same": test_same,
                "severity": {"pool": POOL_SEVERITY, "val": VAL_SEVERITY,
                             "test": TEST_SEVERITY}}
        (tmp / "emojiset.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def known_styles(cache: Path) -> dict[str, Path]:
    """Styles already present: the cache's rendered ones, else the committed slice sources."""
    styles = {}
    for root in (SLICE_SOURCES, cache / "img"):
        if root.is_dir():
            for d in sorted(root.iterdir()):
                if (d / str(SOURCE_PX)).is_dir():
                    styles[d.name] = d / str(SOURCE_PX)
    return styles


def write_slice_sources(styles: dict[str, Path], dest: Path = SLICE_SOURCES,
                        names=(SUPPORT_STYLE, TEST_STYLE)) -> int:
    """Copy the benchmark classes' (and distractors') artwork of the given styles into `dest`."""
    n = 0
    for name in names:
        idx = style_index(styles[name])
        d = dest / name / str(SOURCE_PX)
        d.mkdir(parents=True, exist_ok=True)
        for code in [c.code for c in CLASSES] + [norm_code(c) for c in DISTRACTORS]:
            if code in idx:
                shutil.copyfile(idx[code], d / f"{code}.png")
                n += 1
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="fetch the pinned artwork and render every style")
    f.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    f.add_argument("--slice-sources", action="store_true",
                   help="also refresh the committed source subset (models/emojiset/sources)")
    g = sub.add_parser("generate", help="write a benchmark")
    g.add_argument("--seed", type=int, required=True)
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    g.add_argument("--style", action="append", default=[], metavar="NAME=DIR",
                   help="add a style: a folder of <codepoint>.png (emoji-datasource layout)")
    g.add_argument("--support", default=SUPPORT_STYLE, help="style of the support pool")
    g.add_argument("--test", dest="test_style", default=TEST_STYLE, help="style of val/test")
    g.add_argument("--pool", type=int, default=16)
    g.add_argument("--val", type=int, default=10)
    g.add_argument("--test-frames", type=int, default=50)
    g.add_argument("--test-same", type=int, default=50,
                   help="frames per class of the same-style split (support style)")
    g.add_argument("--slice", action="store_true",
                   help="the committed slice: --pool 4 --val 0 --test-frames 5 --test-same 0")
    g.add_argument("--force", action="store_true")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "fetch":
            styles = build_styles(a.cache)
            if a.slice_sources:
                n = write_slice_sources(styles)
                print(f"wrote {n} source images to {SLICE_SOURCES}")
            return 0
        styles = known_styles(a.cache)
        for spec in a.style:
            name, _, path = spec.partition("=")
            if not name or not path:
                raise ValueError(f"--style {spec!r}: expected NAME=DIR")
            styles[name] = Path(path)
        if a.slice:
            a.pool, a.val, a.test_frames, a.test_same = 4, 0, 5, 0
        t0 = time.time()
        out = generate_benchmark(a.seed, a.out, styles, a.support, a.test_style, a.pool, a.val,
                                 a.test_frames, a.test_same, force=a.force, verbose=True)
        if a.slice:  # a slice is committed: its artwork's attribution and licence go beside it
            for f in ("ATTRIBUTION.md", "LICENSE-fluentui-emoji.txt"):
                shutil.copyfile(SLICE_SOURCES.parent.parent / f, out / f)
        n = len(CLASSES) * (a.pool + a.val + a.test_frames + a.test_same)
        print(f"wrote {n} frames for {len(CLASSES)} classes to {out} in {time.time() - t0:.1f}s")
        return 0
    except (FetchError, FileExistsError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
