#!/usr/bin/env python3
"""Procedural multi-domain image/caption generator ("fieldset").

One module serves two purposes that must agree on what every class looks like:

* the training corpus for a small CLIP model trained from scratch (``corpus``), and
* a few-shot benchmark with a camera-like distribution shift on its test split
  (``generate_benchmark``).

Everything is drawn procedurally from numpy + Pillow, plus the handwritten digits bundled
with scikit-learn (``load_digits``), so nothing is downloaded and the data can be
regenerated anywhere. Each image is a pure function of ``(seed, split, class, i)``: it is
drawn from ``np.random.default_rng([seed, split_id, cls, i])``, so output does not depend
on generation order and regenerating with the same seed gives identical files.

See ``FIELDSET.md`` next to this file for the classes, the shift model and the on-disk
layout.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageEnhance, ImageFilter, ImageFont

# --------------------------------------------------------------------------------------
# Classes
# --------------------------------------------------------------------------------------

#: Domain -> noun used in prompts ("a photo of a {name}, a type of {noun}.").
DOMAIN_NOUN = {
    "shape": "shape",
    "digit": "handwritten digit",
    "texture": "texture",
    "object": "object",
    "letter": "letter",
}

_DOMAIN_CLASSES = {
    "shape": ["circle", "square", "triangle", "star", "hexagon",
              "pentagon", "diamond", "cross", "crescent", "arrow"],
    "digit": ["zero", "one", "two", "three", "four",
              "five", "six", "seven", "eight", "nine"],
    "texture": ["stripes", "checkerboard", "dots", "grid", "waves",
                "zigzag", "bricks", "wood grain", "speckles", "rings"],
    "object": ["house", "tree", "sun", "car", "boat",
               "flower", "fish", "mountain", "umbrella", "cup"],
    # Letters that cannot be mistaken for a digit (O/0, I/1, S/5, Z/2, B/8, G/6) or for a
    # rotated shape (X is a cross turned by 45 degrees).
    "letter": ["letter a", "letter e", "letter f", "letter h", "letter k",
               "letter m", "letter p", "letter r", "letter w", "letter y"],
}


@dataclass(frozen=True)
class FieldClass:
    """One benchmark class. Supports attribute access and ``cls["name"]`` alike."""

    index: int
    name: str      # caption form, may contain spaces ("wood grain")
    dirname: str   # filesystem form ("wood_grain")
    domain: str

    def __getitem__(self, key: str):
        return getattr(self, key)

    def as_dict(self) -> dict:
        return asdict(self)


CLASSES: list[FieldClass] = [
    FieldClass(index=i, name=name, dirname=name.replace(" ", "_"), domain=domain)
    for i, (domain, name) in enumerate(
        (d, n) for d, names in _DOMAIN_CLASSES.items() for n in names)
]
CLASS_NAMES = [c.name for c in CLASSES]
DOMAINS = list(_DOMAIN_CLASSES)
assert len(set(CLASS_NAMES)) == len(CLASS_NAMES), "class names must be unique"

#: Canonical zero-shot prompt. Fixed article "a" as in the original CLIP prompts, so the
#: trainer, the benchmark and the runtime can all build the same string.
PROMPT_TEMPLATE = "a photo of a {name}, a type of {noun}."


def prompt(cls_index: int) -> str:
    """The canonical zero-shot prompt for a class (also one of the caption templates)."""
    c = CLASSES[cls_index]
    return PROMPT_TEMPLATE.format(name=c.name, noun=DOMAIN_NOUN[c.domain])


# --------------------------------------------------------------------------------------
# Shift severities and split bookkeeping
# --------------------------------------------------------------------------------------

#: Camera-shift severity of the benchmark test split. The knob for how hard the shift is:
#: raise it to push a model's test accuracy down (the effect is monotone), lower it to
#: ease it. 1.0 is a strong but still recognisable camera.
TEST_SEVERITY = 0.6
#: Validation split: same kind of shift, milder, for choosing hyperparameters.
VAL_SEVERITY = 0.4
#: The support pool is clean (like the training corpus): support images are "catalogue"
#: shots, queries are camera shots.
POOL_SEVERITY = 0.0

#: Per-split stream ids for ``np.random.default_rng([seed, split_id, cls, i])``. The corpus
#: has its own id, so training images never coincide with benchmark images.
SPLIT_IDS = {"corpus": 0, "pool": 1, "val": 2, "test": 3}

# Which load_digits images each split may use (disjoint, so no benchmark digit image was
# seen in training). Fractions of each digit's ~180 samples.
_DIGIT_PARTS = {"train": (0.0, 0.55), "support": (0.55, 0.70), "test": (0.70, 1.0)}
_SPLIT_DIGIT_PART = {"corpus": "train", "train": "train", "pool": "support",
                     "val": "support", "test": "test"}

# Drawing is done at 2x and box-downsampled: ImageDraw does not antialias, and jagged
# edges would be an easy, unrealistic cue.
_SS = 2

# --------------------------------------------------------------------------------------
# Colours
# --------------------------------------------------------------------------------------

PALETTE = {
    "red": (215, 40, 40), "orange": (240, 135, 30), "yellow": (240, 215, 45),
    "green": (55, 165, 60), "blue": (40, 85, 205), "purple": (130, 55, 175),
    "pink": (240, 135, 185), "brown": (125, 78, 40), "black": (28, 28, 28),
    "white": (240, 240, 236), "gray": (128, 128, 128), "cyan": (45, 195, 210),
}
_PAL_NAMES = list(PALETTE)
_PAL_ARR = np.array([PALETTE[n] for n in _PAL_NAMES], dtype=np.float32)


def _jitter(rgb, rng, amount=18.0) -> tuple[int, int, int]:
    c = np.asarray(rgb, np.float32) + rng.uniform(-amount, amount, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


def _pick_colour(rng, exclude=(), choices=None) -> tuple[str, tuple[int, int, int]]:
    names = [n for n in (choices or _PAL_NAMES) if n not in exclude]
    name = names[int(rng.integers(len(names)))]
    return name, _jitter(PALETTE[name], rng)


def _contrasting(rng, other_rgb, exclude=(), choices=None, min_dist=130.0):
    """Pick a palette colour far from ``other_rgb`` so the figure never vanishes."""
    dist = dict(zip(_PAL_NAMES, np.linalg.norm(
        _PAL_ARR - np.asarray(other_rgb, np.float32), axis=1).tolist()))
    names = [n for n in (choices or _PAL_NAMES)
             if n not in exclude and dist[n] >= min_dist + 25]
    if not names:
        names = [n for n in _PAL_NAMES if dist[n] >= min_dist]
    name = names[int(rng.integers(len(names)))]
    return name, _jitter(PALETTE[name], rng, 12.0)


# Plural class names take no indefinite article ("a photo of stripes"); the canonical
# prompt keeps CLIP's fixed "a" regardless.
_PLURAL = {"stripes", "dots", "waves", "bricks", "speckles", "rings"}


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" and not word.startswith("one") else "a"


def _fix_articles(text: str) -> str:
    """'a arrow' -> 'an arrow' wherever a template put a fixed 'a' before a vowel."""
    return re.sub(r"\ba ([a-z]+)", lambda m: f"{_article(m.group(1))} {m.group(1)}", text)


def _with_article(word: str) -> str:
    return word if word in _PLURAL else f"{_article(word)} {word}"


# --------------------------------------------------------------------------------------
# Backgrounds and small numpy helpers
# --------------------------------------------------------------------------------------

def _smooth_noise(rng, h, w, cells) -> np.ndarray:
    """Low-frequency noise in [0, 1] (bicubic-upsampled random grid); cheap and smooth."""
    g = rng.random((cells, cells), dtype=np.float32)
    up = Image.fromarray(g).resize((w, h), Image.BICUBIC)
    return np.clip(np.asarray(up), 0.0, 1.0)


def _background(rng, h, w, light_bias=0.5) -> tuple[Image.Image, str, np.ndarray]:
    """A flat, gradient or blotchy background: (RGB image, colour name, mean colour).

    Backgrounds are sampled independently of the class so they never leak the label.
    ``light_bias`` is the probability of a pale "paper" colour. They are low-frequency by
    construction, so they are computed on a small grid and upsampled (much cheaper).
    """
    if rng.random() < light_bias:
        base = np.array([rng.uniform(200, 250)] * 3, np.float32) + rng.uniform(-15, 15, 3)
        name = "white"
    else:
        name, rgb = _pick_colour(rng)
        base = np.asarray(rgb, np.float32)
    style = rng.random()
    if style < 0.45:
        base = np.clip(base, 0, 255)
        return Image.new("RGB", (w, h), tuple(int(v) for v in base)), name, base
    n = 16
    other = np.clip(base + rng.normal(0, 45 if style < 0.85 else 40, 3), 0, 255)
    if style < 0.85:
        ang = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / (n - 1) - 0.5
        t = np.clip(xx * np.cos(ang) + yy * np.sin(ang) + 0.5, 0, 1)
        small = Image.fromarray(_u8(base * (1 - t[..., None]) + other * t[..., None]))
        img = small.resize((w, h), Image.BILINEAR)
    else:
        cells = int(rng.integers(3, 7))
        t = rng.random((cells, cells), dtype=np.float32)[..., None]
        small = Image.fromarray(_u8(base * (1 - t) + other * t))
        img = small.resize((w, h), Image.BICUBIC)
    return img, name, (base + other) / 2


def _clamp(x: float, lo: float, hi: float) -> float:
    """Scalar clip (np.clip on Python scalars is ~50x slower)."""
    return lo if x < lo else hi if x > hi else float(x)


def _u8(arr: np.ndarray) -> np.ndarray:
    return np.clip(arr + 0.5, 0, 255).astype(np.uint8)


def _to_image(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(_u8(arr))


def _downsample(img: Image.Image, size: int) -> Image.Image:
    if img.size == (size, size):
        return img
    if img.size == (size * _SS, size * _SS):
        return img.reduce(_SS)
    return img.resize((size, size), Image.BOX)


class _Pen:
    """Maps local figure coordinates (about [-1, 1], y down) to canvas pixels.

    Figures are described once in local coordinates; pose variation (scale, rotation,
    mirror, position) is applied here, so every polygon of a figure moves together.
    """

    def __init__(self, image: Image.Image, cx, cy, scale, angle_deg=0.0, flip=False):
        self.image, self.draw = image, ImageDraw.Draw(image)
        self.cx, self.cy, self.s = cx, cy, scale
        a = math.radians(angle_deg)
        self.ca, self.sa = math.cos(a), math.sin(a)
        self.fx = -1.0 if flip else 1.0

    def on(self, draw: ImageDraw.ImageDraw) -> "_Pen":
        """The same pose drawing onto another layer (e.g. a mask)."""
        p = _Pen.__new__(_Pen)
        p.__dict__.update(self.__dict__)
        p.draw = draw
        return p

    def pts(self, pts) -> list[tuple[float, float]]:
        out = []
        for x, y in pts:
            x *= self.fx
            out.append((self.cx + self.s * (x * self.ca - y * self.sa),
                        self.cy + self.s * (x * self.sa + y * self.ca)))
        return out

    def poly(self, pts, fill=None, outline=None, width=0):
        p = self.pts(pts)
        if fill is not None:
            self.draw.polygon(p, fill=fill)
        if outline is not None and width > 0:
            self.draw.line(p + [p[0]], fill=outline, width=max(1, int(round(width * self.s))),
                           joint="curve")

    def line(self, pts, fill, width):
        self.draw.line(self.pts(pts), fill=fill, width=max(1, int(round(width * self.s))),
                       joint="curve")

    def ellipse(self, cx, cy, rx, ry, fill=None, outline=None, width=0, n=32,
                a0=0.0, a1=2 * math.pi):
        self.poly(_arc(cx, cy, rx, ry, a0, a1, n), fill=fill, outline=outline, width=width)

    def rect(self, x0, y0, x1, y1, fill=None, outline=None, width=0):
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], fill=fill, outline=outline,
                  width=width)


def _arc(cx, cy, rx, ry, a0, a1, n):
    t = np.linspace(a0, a1, n, endpoint=not math.isclose(a1 - a0, 2 * math.pi))
    return list(zip((cx + rx * np.cos(t)).tolist(), (cy + ry * np.sin(t)).tolist()))


def _regular(n, r=1.0, rot=-math.pi / 2):
    return [(r * math.cos(rot + 2 * math.pi * k / n), r * math.sin(rot + 2 * math.pi * k / n))
            for k in range(n)]


# --------------------------------------------------------------------------------------
# Domain: shapes
# --------------------------------------------------------------------------------------

def _shape_points(name, rng) -> list[tuple[float, float]]:
    """Outline of a shape in local coordinates, with per-sample proportions."""
    if name == "circle":
        ry = rng.uniform(0.9, 1.0)
        return _arc(0, 0, 1.0, ry, 0, 2 * math.pi, 48)
    if name == "square":
        r = rng.uniform(0.78, 0.86)
        return [(-r, -r), (r, -r), (r, r), (-r, r)]
    if name == "triangle":
        return [(x + rng.normal(0, 0.05), y + rng.normal(0, 0.05))
                for x, y in _regular(3, 1.05, rot=-math.pi / 2)]
    if name == "star":
        inner = rng.uniform(0.36, 0.5)
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else inner
            a = -math.pi / 2 + math.pi * k / 5
            pts.append((r * math.cos(a), r * math.sin(a)))
        return pts
    if name == "hexagon":
        return _regular(6, 1.0, rot=0.0)
    if name == "pentagon":
        return _regular(5, 1.0)
    if name == "diamond":
        a = rng.uniform(0.5, 0.66)  # unequal diagonals: a rotated square is not a diamond
        return [(0, -1), (a, 0), (0, 1), (-a, 0)]
    if name == "cross":
        w = rng.uniform(0.24, 0.34)
        return [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1),
                (-w, w), (-1, w), (-1, -w), (-w, -w)]
    if name == "crescent":
        # Unit circle minus a circle of radius r2 shifted by d; polygon from the two arcs.
        d, r2 = rng.uniform(0.38, 0.55), rng.uniform(0.82, 0.95)
        x = (1 + d * d - r2 * r2) / (2 * d)
        y = math.sqrt(max(1e-6, 1 - x * x))
        phi = math.atan2(y, x)
        psi = math.atan2(y, x - d)
        outer = _arc(0, 0, 1, 1, phi, 2 * math.pi - phi, 40)
        t = np.linspace(2 * math.pi - psi, psi, 40)
        inner = list(zip((d + r2 * np.cos(t)).tolist(), (r2 * np.sin(t)).tolist()))
        return [(px + 0.25, py) for px, py in outer + inner]
    if name == "arrow":
        w, h, neck = rng.uniform(0.13, 0.22), rng.uniform(0.45, 0.62), rng.uniform(0.05, 0.3)
        return [(-1, -w), (neck, -w), (neck, -h), (1, 0), (neck, h), (neck, w), (-1, w)]
    raise KeyError(name)


def _render_shape(name, rng, size):
    S = size * _SS
    img, bg_name, mean_bg = _background(rng, S, S)
    fg_name, fg = _contrasting(rng, mean_bg)
    r = rng.uniform(0.24, 0.40) * S
    cx, cy = rng.uniform(r, S - r), rng.uniform(r, S - r)
    pen = _Pen(img, cx, cy, r, rng.uniform(0, 360), flip=rng.random() < 0.5)
    pts = _shape_points(name, rng)
    outline = rng.random() < 0.35
    if outline:
        pen.poly(pts, outline=fg, width=rng.uniform(0.09, 0.16))
    else:
        pen.poly(pts, fill=fg)
        if rng.random() < 0.3:  # a contrasting rim now and then
            _, rim = _contrasting(rng, fg, min_dist=100)
            pen.poly(pts, outline=rim, width=rng.uniform(0.05, 0.1))
    attrs = {"colour": fg_name, "background": bg_name,
             "style": "outlined" if outline else "filled"}
    return _downsample(img, size), attrs


# --------------------------------------------------------------------------------------
# Domain: handwritten digits (scikit-learn's bundled load_digits)
# --------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _digit_bank() -> dict:
    """Digit images grouped by (label, part). The split into parts is a fixed permutation
    (independent of the user seed) so training and benchmark never share a source image."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)
    bank = {}
    perm_rng = np.random.default_rng(20240601)
    for label in range(10):
        idx = np.flatnonzero(d.target == label)
        idx = idx[perm_rng.permutation(len(idx))]
        for part, (lo, hi) in _DIGIT_PARTS.items():
            sel = idx[int(round(lo * len(idx))):int(round(hi * len(idx)))]
            bank[(label, part)] = (images[np.sort(sel)], np.sort(sel))
    return bank


def digit_indices(part: str) -> np.ndarray:
    """load_digits sample indices used by a part ("train", "support", "test")."""
    bank = _digit_bank()
    return np.sort(np.concatenate([bank[(lab, part)][1] for lab in range(10)]))


def _render_digit(label, rng, size, split):
    images, _ = _digit_bank()[(label, _SPLIT_DIGIT_PART[split])]
    src = images[int(rng.integers(len(images)))]
    src = np.pad(src, 1)  # breathing room so rotation does not clip strokes
    d = int(size * rng.uniform(0.6, 0.95))
    up = Image.fromarray(src).resize((d, d), Image.BICUBIC)
    angle = rng.normal(0, 8)
    up = up.rotate(angle, resample=Image.BICUBIC)
    v = np.asarray(up)
    # Soft threshold turns the blurry upscaled 8x8 into pen-like strokes of varying weight.
    t, w = rng.uniform(0.22, 0.45), rng.uniform(0.12, 0.3)
    m = np.clip((v - t) / w, 0, 1)
    mask = np.zeros((size, size), np.float32)
    ox, oy = rng.integers(0, size - d + 1, 2)
    mask[oy:oy + d, ox:ox + d] = m

    style = rng.random()
    if style < 0.45:  # dark ink on pale paper, like the originals
        bg, bg_name, _ = _background(rng, size, size, light_bias=1.0)
        ink_name, ink = _pick_colour(rng, choices=["black", "blue", "purple", "brown", "red",
                                                   "green"])
    elif style < 0.65:  # inverted: light chalk on a dark board
        bg, bg_name = Image.new("RGB", (size, size), _jitter((35, 45, 40), rng, 25)), "black"
        ink_name, ink = _pick_colour(rng, choices=["white", "yellow", "cyan", "pink"])
    else:
        bg, bg_name, mean_bg = _background(rng, size, size, light_bias=0.2)
        ink_name, ink = _contrasting(rng, mean_bg)
    bg.paste(ink, (0, 0, size, size), Image.fromarray(_u8(mask * 255.0)))
    return bg, {"colour": ink_name, "background": bg_name}


# --------------------------------------------------------------------------------------
# Domain: textures (vectorised numpy)
# --------------------------------------------------------------------------------------

def _aa(signal, px_per_unit):
    """Antialiased step: ``signal`` changes by ``px_per_unit`` per pixel near its zero."""
    return np.clip(0.5 + signal / max(px_per_unit, 1e-3), 0.0, 1.0)


def _tri(x):
    """Triangle wave with period 1 and range [-1, 1]."""
    return 4.0 * np.abs(x - np.floor(x + 0.5)) - 1.0


def _render_texture(name, rng, size):
    h = w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, np.pi)
    ox, oy = rng.uniform(0, 50, 2)
    u = (xx + ox) * np.cos(ang) + (yy + oy) * np.sin(ang)
    v = -(xx + ox) * np.sin(ang) + (yy + oy) * np.cos(ang)
    k = size / 96.0  # keep feature sizes relative to the frame
    c1_name, c1 = _pick_colour(rng)
    c2_name, c2 = _contrasting(rng, c1)
    soft = None  # continuous blend instead of a two-colour mask

    if name == "stripes":
        p = rng.uniform(7, 16) * k
        m = _aa(np.sin(2 * np.pi * u / p) + rng.uniform(-0.4, 0.4), 2 * np.pi / p)
    elif name == "checkerboard":
        p = rng.uniform(14, 30) * k
        m = _aa(np.sin(2 * np.pi * u / p) * np.sin(2 * np.pi * v / p), 2 * np.pi / p)
    elif name == "dots":
        p = rng.uniform(10, 19) * k
        r = p * rng.uniform(0.2, 0.33)
        row = np.floor(v / p)
        uu = u + (row % 2) * p * 0.5 * (rng.random() < 0.5)
        du = (uu % p) - p / 2
        dv = (v % p) - p / 2
        m = _aa(r - np.sqrt(du * du + dv * dv), 1.0)
    elif name == "grid":
        p = rng.uniform(10, 20) * k
        lw = rng.uniform(1.3, 2.8) * k
        d = np.minimum(np.abs((u % p) - p / 2), np.abs((v % p) - p / 2))
        m = _aa(lw / 2 - d, 1.0)
    elif name == "waves":
        p = rng.uniform(9, 16) * k
        a, q = rng.uniform(3, 7) * k, rng.uniform(24, 48) * k
        s = u + a * np.sin(2 * np.pi * v / q + rng.uniform(0, 6.3))
        m = _aa(np.sin(2 * np.pi * s / p) + rng.uniform(-0.3, 0.3), 2 * np.pi / p)
    elif name == "zigzag":
        p = rng.uniform(9, 15) * k
        a, q = rng.uniform(3, 6) * k, rng.uniform(10, 18) * k
        s = u + a * _tri(v / q)
        m = _aa(np.sin(2 * np.pi * s / p) + rng.uniform(-0.3, 0.3), 2 * np.pi / p)
    elif name == "bricks":
        # Bricks are usually level: small tilt, sometimes a quarter turn.
        t = rng.normal(0, 0.12) + (np.pi / 2 if rng.random() < 0.25 else 0)
        bu = xx * np.cos(t) + yy * np.sin(t) + ox
        bv = -xx * np.sin(t) + yy * np.cos(t) + oy
        bh = rng.uniform(8, 14) * k
        bw = bh * rng.uniform(1.8, 2.8)
        row = np.floor(bv / bh)
        bu = bu + (row % 2) * bw / 2
        mw = rng.uniform(1.0, 2.2) * k
        # > 0 within half a mortar width of a brick's edge, in either direction
        d = np.maximum(np.abs((bu % bw) - bw / 2) - (bw / 2 - mw / 2),
                       np.abs((bv % bh) - bh / 2) - (bh / 2 - mw / 2))
        mortar = _aa(d, 1.0)  # 1 on mortar
        col = np.floor(bu / bw)
        shade = (np.sin(row * 12.9898 + col * 78.233) * 43758.5453) % 1.0  # per-brick hash
        base = np.asarray(c1, np.float32)
        brick = base[None, None] * (0.8 + 0.35 * shade[..., None])
        if rng.random() < 0.6:
            c2_name, c2 = "white", _jitter((215, 210, 200), rng, 20)
        out = brick * (1 - mortar[..., None]) + np.asarray(c2, np.float32) * mortar[..., None]
        soft = out
        m = None
    elif name == "wood grain":
        if rng.random() < 0.65:  # mostly wood coloured, sometimes stained
            c1_name, c1 = "brown", _jitter((rng.uniform(150, 215), rng.uniform(95, 150),
                                            rng.uniform(50, 90)), rng, 10)
            c2 = tuple(int(x * rng.uniform(0.45, 0.65)) for x in c1)
            c2_name = "brown"
        el = rng.uniform(6, 14)
        # Elongated growth rings around a centre just off the frame: "cathedral" arches
        # and near-parallel lines, bent by low-frequency noise, with thin dark latewood
        # bands and fine streaks along the grain (what sets it apart from waves).
        cu = rng.uniform(-30, 30) * k
        cv = rng.uniform(15, 80) * k * (1 if rng.random() < 0.5 else -1)
        n = _smooth_noise(rng, h, w, int(rng.integers(2, 5)))
        rr = np.sqrt(((u - u.mean() - cu) / el) ** 2 + (v - v.mean() - cv) ** 2)
        p = rng.uniform(9, 17) * k
        g = (0.5 + 0.5 * np.sin(2 * np.pi * (rr + 14 * k * n) / p)) ** rng.uniform(1.5, 3.0)
        vs = np.arange(math.floor(v.min()) - 2, math.ceil(v.max()) + 3, 1.2 * k)
        streak = np.interp(v + 3 * k * n, vs, rng.random(len(vs))).astype(np.float32)
        g = np.clip(0.75 * g + 0.45 * (streak - 0.5) + 0.1, 0, 1)
        soft = (np.asarray(c1, np.float32)[None, None] * (1 - g[..., None])
                + np.asarray(c2, np.float32)[None, None] * g[..., None])
        m = None
    elif name == "speckles":
        dens = rng.uniform(0.07, 0.16)
        cells = max(4, int(size / rng.uniform(2.0, 3.2)))  # 2-3 px specks
        spk = rng.random((cells, cells), dtype=np.float32)
        pick = rng.random((cells, cells), dtype=np.float32)
        c3_name, c3 = _contrasting(rng, c1, exclude=(c2_name,))
        lut = np.array([c2, c3], np.float32)
        colmap = lut[(pick < 0.5).astype(int)]
        sp = Image.fromarray((spk < dens).astype(np.uint8) * 255).resize((w, h), Image.NEAREST)
        cm = Image.fromarray(colmap.astype(np.uint8)).resize((w, h), Image.NEAREST)
        mm = np.asarray(sp, np.float32)[..., None] / 255.0
        soft = (np.asarray(c1, np.float32)[None, None] * (1 - mm)
                + np.asarray(cm, np.float32) * mm)
        m = None
    elif name == "rings":
        p = rng.uniform(7, 14) * k
        cx, cy = rng.uniform(0.2, 0.8, 2) * size
        rr = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        m = _aa(np.sin(2 * np.pi * rr / p) + rng.uniform(-0.3, 0.3), 2 * np.pi / p)
    else:
        raise KeyError(name)

    if soft is None:
        m = m[..., None]
        soft = (np.asarray(c1, np.float32)[None, None] * m
                + np.asarray(c2, np.float32)[None, None] * (1 - m))
    # Gentle uneven lighting so the two colours are not perfectly flat.
    light = 0.85 + 0.3 * _smooth_noise(rng, h, w, 3)
    out = soft * light[..., None]
    return _to_image(out), {"colour": c1_name, "colour2": c2_name}


# --------------------------------------------------------------------------------------
# Domain: simple objects (ImageDraw, local coordinates through _Pen)
# --------------------------------------------------------------------------------------

def _obj_house(pen, rng, fg):
    wall = fg
    _, roof = _pick_colour(rng, choices=["red", "brown", "gray", "blue", "black", "orange"])
    _, door = _pick_colour(rng, choices=["brown", "black", "red", "blue", "green"])
    hw = rng.uniform(0.55, 0.8)
    top = rng.uniform(-0.2, 0.05)
    pen.rect(-hw, top, hw, 0.9, fill=wall, outline=(40, 40, 40), width=0.04)
    peak = rng.uniform(-0.95, -0.7)
    if rng.random() < 0.75:
        pen.poly([(-hw - 0.15, top), (0, peak), (hw + 0.15, top)], fill=roof)
    else:  # flat-topped trapezoid roof
        pen.poly([(-hw - 0.15, top), (-hw * 0.45, peak), (hw * 0.45, peak), (hw + 0.15, top)],
                 fill=roof)
    if rng.random() < 0.5:
        pen.rect(hw * 0.45, peak * 0.75, hw * 0.45 + 0.16, top - 0.05, fill=roof)
    dx = rng.uniform(-hw + 0.3, hw - 0.3)
    pen.rect(dx - 0.14, 0.45, dx + 0.14, 0.9, fill=door)
    win = (200, 225, 245) if rng.random() < 0.7 else (250, 230, 120)
    for wx in (-hw + 0.25, hw - 0.25):
        if abs(wx - dx) > 0.35:
            pen.rect(wx - 0.12, top + 0.2, wx + 0.12, top + 0.44, fill=win,
                     outline=(40, 40, 40), width=0.03)


def _obj_tree(pen, rng, fg):
    _, trunk = _pick_colour(rng, choices=["brown"])
    pen.rect(-0.11, 0.1, 0.11, 1.0, fill=trunk)
    if rng.random() < 0.55:  # round canopy from overlapping blobs
        for _ in range(int(rng.integers(3, 6))):
            pen.ellipse(rng.uniform(-0.3, 0.3), rng.uniform(-0.55, -0.15),
                        rng.uniform(0.35, 0.5), rng.uniform(0.32, 0.45), fill=fg)
    else:  # conifer: stacked triangles
        n = int(rng.integers(2, 4))
        for j in range(n):
            y0 = 0.3 - j * 0.45
            wd = 0.75 - j * 0.15
            pen.poly([(-wd, y0), (0, y0 - 0.7), (wd, y0)], fill=fg)


def _obj_sun(pen, rng, fg):
    n = int(rng.integers(8, 15))
    r0, r1 = rng.uniform(0.6, 0.68), rng.uniform(0.85, 1.0)
    wd = rng.uniform(0.06, 0.12)
    off = rng.uniform(0, 2 * math.pi)
    for j in range(n):
        a = off + 2 * math.pi * j / n
        pen.line([(r0 * math.cos(a), r0 * math.sin(a)), (r1 * math.cos(a), r1 * math.sin(a))],
                 fill=fg, width=wd)
    pen.ellipse(0, 0, 0.5, 0.5, fill=fg)


def _obj_car(pen, rng, fg):
    _, glass = _pick_colour(rng, choices=["cyan", "white", "gray"])
    pen.poly([(-1, 0.05), (-0.95, -0.1), (0.9, -0.1), (1, 0.05), (1, 0.42), (-1, 0.42)],
             fill=fg)
    ft, bt = rng.uniform(0.2, 0.45), rng.uniform(0.45, 0.7)
    pen.poly([(-0.62, -0.1), (-bt, -0.5), (ft, -0.5), (0.62, -0.1)], fill=fg)
    pen.poly([(-0.5, -0.14), (-bt + 0.06, -0.44), (-0.05, -0.44), (-0.05, -0.14)], fill=glass)
    pen.poly([(0.05, -0.14), (0.05, -0.44), (ft - 0.05, -0.44), (0.5, -0.14)], fill=glass)
    for wx in (-0.58, 0.58):
        pen.ellipse(wx, 0.42, 0.24, 0.24, fill=(25, 25, 25))
        pen.ellipse(wx, 0.42, 0.1, 0.1, fill=(170, 170, 170))


def _obj_boat(pen, rng, fg):
    _, sail = _pick_colour(rng, choices=["white", "yellow", "red", "orange", "cyan"])
    pen.poly([(-1, 0.3), (1, 0.3), (0.7, 0.7), (-0.7, 0.7)], fill=fg)
    pen.line([(0, 0.3), (0, -0.95)], fill=(70, 50, 30), width=0.05)
    pen.poly([(0.06, -0.9), (0.06, 0.22), (rng.uniform(0.6, 0.85), 0.22)], fill=sail,
             outline=(60, 60, 60), width=0.02)
    if rng.random() < 0.6:
        pen.poly([(-0.06, -0.75), (-0.06, 0.22), (-rng.uniform(0.45, 0.7), 0.22)], fill=sail,
                 outline=(60, 60, 60), width=0.02)
    if rng.random() < 0.6:  # a few waves under the hull
        water = _jitter((40, 90, 200), rng, 25)
        xs = np.linspace(-1.1, 1.1, 30)
        pen.line([(x, 0.8 + 0.05 * math.sin(8 * x)) for x in xs], fill=water, width=0.06)


def _obj_flower(pen, rng, fg):
    _, stem = _pick_colour(rng, choices=["green"])
    pen.line([(0, -0.3), (rng.uniform(-0.15, 0.15), 1.0)], fill=stem, width=0.07)
    if rng.random() < 0.7:
        pen.poly([(0.02, 0.55), (0.4, 0.3), (0.45, 0.45), (0.05, 0.62)], fill=stem)
    n = int(rng.integers(5, 9))
    pr, pw = rng.uniform(0.28, 0.36), rng.uniform(0.12, 0.18)
    off = rng.uniform(0, 2 * math.pi)
    for j in range(n):
        a = off + 2 * math.pi * j / n
        cx, cy = pr * math.cos(a), -0.3 + pr * math.sin(a)
        pts = [(cx + 0.3 * math.cos(t) * math.cos(a) - pw * math.sin(t) * math.sin(a),
                cy + 0.3 * math.cos(t) * math.sin(a) + pw * math.sin(t) * math.cos(a))
               for t in np.linspace(0, 2 * math.pi, 16, endpoint=False)]
        pen.poly(pts, fill=fg)
    _, centre = _pick_colour(rng, choices=["yellow", "brown", "orange", "black"])
    pen.ellipse(0, -0.3, 0.16, 0.16, fill=centre)


def _obj_fish(pen, rng, fg):
    _, fin = _contrasting(rng, fg, min_dist=60)
    ry = rng.uniform(0.3, 0.45)
    pen.poly([(0.05, -ry * 0.8), (0.35, -ry - 0.25), (0.45, -ry * 0.5)], fill=fin)
    pen.poly([(0.5, 0), (1.0, -rng.uniform(0.3, 0.5)), (0.9, 0), (1.0, rng.uniform(0.3, 0.5))],
             fill=fin)
    pen.ellipse(-0.1, 0, 0.68, ry, fill=fg)
    pen.ellipse(-0.5, -ry * 0.25, 0.09, 0.09, fill=(250, 250, 250))
    pen.ellipse(-0.52, -ry * 0.25, 0.045, 0.045, fill=(10, 10, 10))
    if rng.random() < 0.5:  # gill line
        pen.line(_arc(-0.35, 0, 0.15, ry * 0.7, -1.2, 1.2, 8), fill=fin, width=0.04)


def _obj_mountain(pen, rng, fg):
    snow = (245, 245, 250)
    peaks = rng.uniform(-0.45, 0.45, int(rng.integers(1, 4))).tolist()
    for j, px in enumerate(peaks):  # tallest first, lower (darker) ridges in front
        hgt = rng.uniform(-0.95, -0.35) if j else -0.95
        col = tuple(int(c * (1.0 - 0.12 * j)) for c in fg)
        half = rng.uniform(0.6, 0.85)
        pen.poly([(px - half, 0.85), (px, hgt), (px + half, 0.85)], fill=col)
        if rng.random() < 0.75:
            f = rng.uniform(0.22, 0.35)
            yb = hgt + f * (0.85 - hgt)
            xo = half * f
            pen.poly([(px - xo, yb), (px - xo * 0.4, yb - 0.06), (px, yb + 0.03),
                      (px + xo * 0.5, yb - 0.05), (px + xo, yb), (px, hgt)], fill=snow)


def _obj_umbrella(pen, rng, fg):
    _, alt = _contrasting(rng, fg, min_dist=90)
    ry = rng.uniform(0.55, 0.75)
    n = int(rng.integers(4, 7))
    sag = rng.uniform(0.08, 0.16)
    # Canopy outline: dome on top, hem sagging up between the rib tips (scallops).
    outline = _arc(0, 0, 1.0, ry, math.pi, 2 * math.pi, 33)
    for j in reversed(range(n)):
        outline += _arc(-1 + (2 * j + 1) / n, 0, 1.0 / n, sag, 0, -math.pi, 9)[1:]
    if rng.random() < 0.4:  # striped panels, clipped to the canopy through a mask
        size = pen.image.size
        layer = Image.new("RGB", size, fg)
        mask = Image.new("L", size, 0)
        lp, mp = pen.on(ImageDraw.Draw(layer)), pen.on(ImageDraw.Draw(mask))
        for j in range(1, n, 2):
            a0, a1 = math.pi + math.pi * j / n, math.pi + math.pi * (j + 1) / n
            lp.poly([(0, 0.05)] + _arc(0, 0, 1.1, ry * 1.1, a0, a1, 6), fill=alt)
        mp.poly(outline, fill=255)
        pen.image.paste(layer, (0, 0), mask)
    else:
        pen.poly(outline, fill=fg)
    dark = (60, 60, 60)
    pen.line([(0, -ry), (0, -ry - 0.1)], fill=dark, width=0.05)
    pen.line([(0, -sag), (0, 0.8)], fill=dark, width=0.06)
    pen.line(_arc(-0.14, 0.8, 0.14, 0.14, 0, math.pi, 10), fill=dark, width=0.06)


def _obj_cup(pen, rng, fg):
    _, saucer = _pick_colour(rng, choices=["white", "gray", "blue", "yellow"])
    if rng.random() < 0.5:
        pen.ellipse(0, 0.68, 0.95, 0.13, fill=saucer, outline=(60, 60, 60), width=0.03)
    pen.ellipse(0.58, 0.0, 0.28, 0.3, outline=fg, width=0.12)
    tw, bw = rng.uniform(0.5, 0.62), rng.uniform(0.35, 0.5)
    pen.poly([(-tw, -0.5), (tw, -0.5), (bw, 0.62), (-bw, 0.62)], fill=fg)
    pen.ellipse(0, -0.5, tw, 0.1, fill=(95, 60, 35) if rng.random() < 0.6 else (230, 230, 225))
    if rng.random() < 0.4:  # steam
        for sx in (-0.2, 0.1):
            ys = np.linspace(-0.65, -1.0, 8)
            pen.line([(sx + 0.06 * math.sin(12 * y), y) for y in ys], fill=(150, 150, 150),
                     width=0.04)


_OBJECTS = {
    "house": (_obj_house, None), "tree": (_obj_tree, ["green", "green", "green", "orange",
                                                      "yellow", "red"]),
    "sun": (_obj_sun, ["yellow", "yellow", "orange", "red"]),
    "car": (_obj_car, None), "boat": (_obj_boat, None), "flower": (_obj_flower, None),
    "fish": (_obj_fish, None),
    "mountain": (_obj_mountain, ["gray", "brown", "purple", "blue", "green", "black"]),
    "umbrella": (_obj_umbrella, None), "cup": (_obj_cup, None),
}


def _render_object(name, rng, size):
    S = size * _SS
    img, bg_name, mean_bg = _background(rng, S, S, light_bias=0.35)
    if rng.random() < 0.3:  # a ground band behind the object
        gy = int(S * rng.uniform(0.65, 0.85))
        _, ground = _pick_colour(rng, choices=["green", "brown", "gray", "yellow", "blue"])
        img.paste(ground, (0, gy, S, S))
    fn, choices = _OBJECTS[name]
    fg_name, fg = _contrasting(rng, mean_bg, choices=choices, min_dist=90)
    r = rng.uniform(0.28, 0.42) * S
    cx, cy = rng.uniform(r, S - r), rng.uniform(r, S - r)
    pen = _Pen(img, cx, cy, r, rng.normal(0, 8), flip=rng.random() < 0.5)
    fn(pen, rng, fg)
    return _downsample(img, size), {"colour": fg_name, "background": bg_name}


# --------------------------------------------------------------------------------------
# Domain: letters (Pillow's bundled default font)
# --------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def _font(px: int):
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, OSError, ImportError):  # no FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _glyph_mask(ch: str, canvas: int, px: int, stroke: int) -> Image.Image:
    """White glyph centred on a black ``canvas`` square, about ``px`` pixels tall."""
    font = _font(px)
    if isinstance(font, ImageFont.FreeTypeFont):
        mask = Image.new("L", (canvas, canvas), 0)
        ImageDraw.Draw(mask).text((canvas / 2, canvas / 2), ch, fill=255, font=font,
                                  anchor="mm", stroke_width=stroke, stroke_fill=255)
        return mask
    # Pillow without FreeType only has a fixed ~11 px bitmap font: draw small, upscale.
    small = Image.new("L", (16, 16), 0)
    ImageDraw.Draw(small).text((8, 8), ch, fill=255, font=font, anchor="mm")
    big = small.resize((px * 16 // 11,) * 2, Image.BICUBIC)
    mask = Image.new("L", (canvas, canvas), 0)
    mask.paste(big, ((canvas - big.size[0]) // 2, (canvas - big.size[1]) // 2))
    return mask


def _render_letter(name, rng, size):
    ch = name.split()[-1].upper()
    S = size  # FreeType antialiases on its own: no supersampling needed
    img, bg_name, mean_bg = _background(rng, S, S)
    fg_name, fg = _contrasting(rng, mean_bg)
    px = int(S * rng.uniform(0.5, 0.85)) // 2 * 2  # coarse sizes keep the font cache small
    mask = _glyph_mask(ch, S, px, int(rng.integers(0, 3)) * S // 96)
    sh = rng.normal(0, 0.12)  # italic-like shear, then shift and rotate
    dx, dy = rng.uniform(-0.18, 0.18, 2) * S
    mask = mask.transform((S, S), Image.AFFINE, (1, sh, -sh * S / 2 - dx, 0, 1, -dy),
                          resample=Image.BILINEAR)
    mask = mask.rotate(rng.normal(0, 10), resample=Image.BICUBIC)
    img.paste(fg, (0, 0, S, S), mask)
    return img, {"colour": fg_name, "background": bg_name}


# --------------------------------------------------------------------------------------
# Public rendering API
# --------------------------------------------------------------------------------------

def render_with_attrs(cls_index: int, rng: np.random.Generator, size: int = 96,
                      split: str = "train") -> tuple[Image.Image, dict]:
    """Render one clean sample of a class; also return attributes usable in captions.

    ``split`` only matters for digits: it selects which disjoint part of load_digits the
    handwriting comes from ("train"/"corpus", "pool"/"val", "test").
    """
    c = CLASSES[cls_index]
    if c.domain == "shape":
        img, attrs = _render_shape(c.name, rng, size)
    elif c.domain == "digit":
        img, attrs = _render_digit(c.index - _first("digit"), rng, size, split)
    elif c.domain == "texture":
        img, attrs = _render_texture(c.name, rng, size)
    elif c.domain == "object":
        img, attrs = _render_object(c.name, rng, size)
    elif c.domain == "letter":
        img, attrs = _render_letter(c.name, rng, size)
    else:  # pragma: no cover - CLASSES is static
        raise ValueError(c.domain)
    attrs["domain"] = c.domain
    return img, attrs


def render(cls_index: int, rng: np.random.Generator, size: int = 96,
           split: str = "train") -> Image.Image:
    """Render one clean RGB sample (see ``render_with_attrs``)."""
    return render_with_attrs(cls_index, rng, size, split)[0]


@functools.lru_cache(maxsize=None)
def _first(domain: str) -> int:
    return next(c.index for c in CLASSES if c.domain == domain)


# --------------------------------------------------------------------------------------
# Camera shift
# --------------------------------------------------------------------------------------

_N_CLUTTER = 8
_NOISE_BANK_SIZE = 384


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """Fixed Gaussian noise (1 luminance + 3 chroma planes), tiled on demand.

    Drawing fresh normals for every image dominated camera_shift's cost; a random window
    into a fixed bank is statistically the same per image and much cheaper.
    """
    n = _NOISE_BANK_SIZE
    return np.random.default_rng(7919).standard_normal((n, n, 4), dtype=np.float32)


def _noise_patch(oy: int, ox: int, h: int, w: int) -> np.ndarray:
    bank = _noise_bank()
    n = _NOISE_BANK_SIZE
    if oy + h <= n and ox + w <= n:
        return bank[oy:oy + h, ox:ox + w]
    return np.take(np.take(bank, np.arange(oy, oy + h) % n, axis=0),
                   np.arange(ox, ox + w) % n, axis=1)


def camera_shift(img: Image.Image, rng: np.random.Generator,
                 severity: float = 1.0) -> Image.Image:
    """Degrade an image the way a cheap camera would.

    Order follows a capture pipeline: framing (scale/rotation/translation, i.e. partial
    crops) -> scene clutter -> optics (defocus blur, vignetting) -> sensor/ISP (exposure,
    contrast, white balance, gamma, noise) -> JPEG compression.

    All random draws happen up front and their number does not depend on ``severity``;
    every effect's magnitude is then proportional to ``severity``. So for a fixed RNG state
    the degradation grows monotonically and smoothly with ``severity``, and 0 is the
    identity. Values above 1 are allowed (effects are clipped to stay sane).
    """
    s = float(severity)
    img = img.convert("RGB")
    W, H = img.size
    # --- draw every random number first (fixed count) -----------------------------------
    g_ang, g_zoom = rng.normal(0, 1), rng.uniform(-1, 1)
    g_t = rng.normal(0, 1, 2)
    cl_u = rng.random(_N_CLUTTER)
    cl_kind = rng.integers(0, 3, _N_CLUTTER)
    cl_xy = rng.random((_N_CLUTTER, 4))
    cl_col = rng.integers(0, 256, (_N_CLUTTER, 3))
    cl_w = rng.random(_N_CLUTTER)
    blur_u = abs(rng.normal(0, 1))
    vig_u, vig_c = rng.random(), rng.uniform(-0.2, 0.2, 2)
    ex = rng.normal(0, 1, 4)
    wb = rng.normal(0, 1, 3)
    nz_read, nz_shot, nz_chroma = rng.random(3)
    jpeg_u = rng.random()
    noise_off = rng.integers(0, _NOISE_BANK_SIZE, 2)
    if s <= 0:
        return img.copy()

    # --- framing --------------------------------------------------------------------------
    angle = _clamp(g_ang * 10 * s, -35, 35)
    # zoom > 1 crops into the subject (partial crops), < 1 backs off (subject smaller)
    zoom = math.exp(_clamp(g_zoom * 0.28 * s + 0.06 * s, -0.6, 0.7))
    tx = _clamp(g_t[0] * 0.07 * s, -0.3, 0.3) * W
    ty = _clamp(g_t[1] * 0.07 * s, -0.3, 0.3) * H
    a = math.radians(angle)
    ca, sa = math.cos(a) / zoom, math.sin(a) / zoom
    # Output pixel (x, y) samples the input at A @ (x - W/2, y - H/2) + (W/2 - tx, H/2 - ty).
    # Where that falls outside the frame, sample a mirror-padded copy: only as much padding
    # as the corners need (cheap for mild shifts), never more than one reflection allows.
    corners = [(x - W / 2, y - H / 2) for x in (0, W) for y in (0, H)]
    src = [(ca * x - sa * y + W / 2 - tx, sa * x + ca * y + H / 2 - ty) for x, y in corners]
    need = max([0.0] + [-px for px, _ in src] + [px - W for px, _ in src]
               + [-py for _, py in src] + [py - H for _, py in src])
    pad = min(int(math.ceil(need)) + 1, min(W, H) - 1)
    big = img
    if pad > 0:
        arr = np.pad(np.asarray(img), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        big = Image.fromarray(arr)
    coeffs = (ca, -sa, W / 2 + pad - tx - ca * W / 2 + sa * H / 2,
              sa, ca, H / 2 + pad - ty - sa * W / 2 - ca * H / 2)
    img = big.transform((W, H), Image.AFFINE, coeffs, resample=Image.BILINEAR)

    # --- clutter: distractor strokes and blobs ---------------------------------------------
    p_clutter = min(1.0, 0.3 * s)
    picked = np.flatnonzero(cl_u < p_clutter)
    if len(picked):
        over = Image.new("RGBA", (W, H), (0, 0, 0, 0))
        d = ImageDraw.Draw(over)
        alpha = int(255 * min(1.0, 0.3 + 0.5 * s))
        for j in picked:
            col = tuple(int(v) for v in cl_col[j]) + (alpha,)
            x0, y0, x1, y1 = cl_xy[j] * (W, H, W, H)
            if cl_kind[j] == 0:  # stroke
                d.line([(x0, y0), (x1, y1)], fill=col, width=max(1, int(1 + cl_w[j] * 4)))
            elif cl_kind[j] == 1:  # small blob
                r = (0.04 + 0.08 * cl_w[j]) * min(W, H)
                d.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=col)
            else:  # scribble arc
                r = (0.1 + 0.2 * cl_w[j]) * min(W, H)
                d.arc([x0 - r, y0 - r, x0 + r, y0 + r], start=float(x1 / W * 360),
                      end=float(x1 / W * 360 + 60 + 200 * cl_w[j]), fill=col,
                      width=max(1, int(1 + cl_w[j] * 3)))
        img = Image.alpha_composite(img.convert("RGBA"), over).convert("RGB")

    # --- optics ------------------------------------------------------------------------------
    radius = min(4.0, blur_u * 0.9 * s) * min(W, H) / 96.0
    if radius > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(radius))
    v = min(0.8, vig_u * 0.55 * s)
    if v > 0:
        yy, xx = np.ogrid[0:H, 0:W]
        rx = (xx / max(W - 1, 1) - 0.5 - vig_c[0] * s) * 2
        ry = (yy / max(H - 1, 1) - 0.5 - vig_c[1] * s) * 2
        fall = 1 - v * np.clip((rx * rx + ry * ry) / 2, 0, 1)
        img = ImageChops.multiply(img, Image.fromarray(_u8(fall * 255.0)).convert("RGB"))

    # --- sensor / ISP -------------------------------------------------------------------------
    # Gain, white balance, contrast (about the mean) and gamma are per-channel point
    # operations: folded into one 3x256 lookup table.
    gain = math.exp(_clamp(ex[0] * 0.3 * s, -1.2, 1.2))
    contrast = math.exp(_clamp(ex[1] * 0.3 * s, -1.2, 0.8))
    gamma = math.exp(_clamp(ex[2] * 0.2 * s, -0.8, 0.8))
    sat = math.exp(_clamp(ex[3] * 0.3 * s, -1.5, 0.7))
    wbm = np.exp(np.clip(wb * 0.09 * s, -0.5, 0.5))
    chan_mean = np.asarray(img).reshape(-1, 3).mean(0) / 255.0
    mean = float((chan_mean * gain * wbm).mean())
    ramp = np.arange(256, dtype=np.float64) / 255.0
    lut = (ramp[None, :] * (gain * wbm)[:, None] - mean) * contrast + mean
    lut = np.clip(lut, 0, 1) ** gamma
    img = img.point(_u8(lut * 255.0).ravel().tolist())
    if abs(sat - 1) > 1e-3:
        img = ImageEnhance.Color(img).enhance(sat)
    read = nz_read * 0.035 * s
    shot = nz_shot * 0.03 * s
    if read > 0 or shot > 0:
        # in 0..255 units: sigma^2 = read^2 + shot^2 * intensity
        x = np.asarray(img, np.float32)
        sigma = np.sqrt(x * (shot * shot * 255.0) + (read * 255.0) ** 2)
        nz = _noise_patch(int(noise_off[0]), int(noise_off[1]), H, W)
        mix = 0.3 + 0.5 * nz_chroma
        x += sigma * ((1 - mix) * nz[..., :1] + mix * nz[..., 1:])
        img = Image.fromarray(_u8(x))

    # --- compression ----------------------------------------------------------------------------
    quality = int(round(_clamp(95 - s * (25 + 50 * jpeg_u), 8, 95)))
    if quality < 95:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality, subsampling=2)
        buf.seek(0)
        img = Image.open(buf).convert("RGB")
    return img


# --------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------

_GENERIC = [
    "a photo of a {name}.", "a picture of {a_name}.", "{a_name}.", "an image of {a_name}.",
    "a close-up photo of the {name}.", "a drawing of the {name}.", "a rendering of {a_name}.",
    "this is {a_name}.", "the {name}.",
    "{a_name}, a kind of {noun}.", "a good photo of the {name}.",
]
_COLOURED = ["{a_colour} {name}.", "a photo of {a_colour} {name}.", "the {colour} {name}."]
_BACKGROUND = ["{a_name} on {a_background} background.",
               "{a_colour} {name} on {a_background} background."]
_SHIFTED = ["a blurry photo of a {name}.", "a low quality photo of a {name}.",
            "a noisy photo of the {name}.", "a bad photo of a {name}.",
            "a jpeg compressed photo of a {name}.", "a dark photo of the {name}.",
            "a cropped photo of the {name}."]
_DOMAIN_TEMPLATES = {
    "shape": ["a {name} shape.", "a simple {name} shape.", "a geometric {name}.",
              "{a_colour} {name} shape.", "{a_style} {name}."],
    "digit": ["a handwritten {name}.", "the digit {name}, written by hand.", "the number {name}.",
              "a handwritten digit {name}.", "{name}, a handwritten digit.",
              "a scan of a handwritten {name}."],
    "texture": ["a {name} texture.", "a {name} pattern.", "a close-up of a {name} pattern.",
                "{a_colour} and {colour2} {name} pattern.", "a surface with a {name} pattern.",
                "{name}."],
    "object": ["a drawing of {a_name}.", "a cartoon {name}.", "a simple illustration of {a_name}.",
               "a clip art {name}.", "{a_colour} {name}.", "a sketch of {a_name}."],
    "letter": ["the {name}.", "a printed {name}.", "the capital {name}.",
               "an uppercase {name}.", "{a_colour} {name}.", "a {name} in a sans serif font."],
}
#: Share of captions that are exactly the canonical prompt, so the zero-shot prompt is a
#: string the text encoder has seen many times.
P_CANONICAL = 0.25


def caption(cls_index: int, rng: np.random.Generator, img_attrs: dict | None = None) -> str:
    """A varied, domain-aware caption; always contains the class name verbatim.

    ``img_attrs`` (from ``render_with_attrs``; optionally with ``shifted=True`` when the
    image went through ``camera_shift``) unlocks templates mentioning colour, style,
    background or image quality, so those words in captions are actually true.
    """
    c = CLASSES[cls_index]
    noun = DOMAIN_NOUN[c.domain]
    attrs = dict(img_attrs or {})
    if rng.random() < P_CANONICAL:
        return prompt(cls_index)
    pool = list(_GENERIC)
    for t in _DOMAIN_TEMPLATES[c.domain]:
        needs = [k for k in ("colour2", "colour", "style")
                 if "{" + k + "}" in t or "{a_" + k + "}" in t]
        if all(attrs.get(k) for k in needs):
            pool.append(t)
            pool.append(t)  # domain templates weigh double
    if attrs.get("colour"):
        pool += _COLOURED
        if attrs.get("background") and attrs["background"] != attrs["colour"]:
            pool += _BACKGROUND[1:] if c.domain != "texture" else []
            pool += _BACKGROUND[:1]
    elif attrs.get("background"):
        pool += _BACKGROUND[:1]
    if attrs.get("shifted"):
        pool += _SHIFTED * 2
    t = pool[int(rng.integers(len(pool)))]
    colour, style = attrs.get("colour", ""), attrs.get("style", "")
    text = t.format(name=c.name, a_name=_with_article(c.name), noun=noun,
                    colour=colour, a_colour=f"{_article(colour)} {colour}",
                    colour2=attrs.get("colour2", ""), a_style=f"{_article(style)} {style}",
                    a_background=f"{_article(attrs.get('background', ''))} "
                                 f"{attrs.get('background', '')}")
    text = _fix_articles(text)
    assert c.name in text
    return text


# --------------------------------------------------------------------------------------
# Training corpus
# --------------------------------------------------------------------------------------

def corpus_sample(seed: int, cls_index: int, i: int, size: int = 96,
                  train_shift: float = 0.3, p_shift: float = 0.5
                  ) -> tuple[Image.Image, str, int]:
    """The i-th corpus sample of a class (pure function of its arguments)."""
    rng = np.random.default_rng([seed, SPLIT_IDS["corpus"], cls_index, i])
    img, attrs = render_with_attrs(cls_index, rng, size, split="corpus")
    if rng.random() < p_shift and train_shift > 0:
        img = camera_shift(img, rng, train_shift * rng.uniform(0.3, 1.0))
        attrs["shifted"] = True
    return img, caption(cls_index, rng, attrs), cls_index


def corpus(seed: int, n_per_class: int, size: int = 96, train_shift: float = 0.3,
           p_shift: float = 0.5) -> Iterator[tuple[Image.Image, str, int]]:
    """Yield ``(image, caption, cls_index)`` for the training corpus.

    Uses its own RNG stream (split id 0) and its own digit images, so nothing overlaps
    with the benchmark. Samples come class-interleaved (all classes for i=0, then i=1, ...)
    so any prefix is balanced. A light camera shift (at most ``train_shift``) is applied
    with probability ``p_shift`` so a model is not helpless on camera images, while the
    test split's stronger shift remains a real shift.
    """
    for i in range(n_per_class):
        for c in range(len(CLASSES)):
            yield corpus_sample(seed, c, i, size, train_shift, p_shift)


# --------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------

_PNG_OPTS = {"format": "PNG", "compress_level": 6, "optimize": False}
_JPEG_OPTS = {"format": "JPEG", "quality": 90, "subsampling": 2, "optimize": False,
              "progressive": False}


def benchmark_sample(seed: int, split: str, cls_index: int, i: int, size: int = 96,
                     severity: float | None = None) -> Image.Image:
    """The i-th benchmark image of a class in a split (pure function of its arguments).

    Test frames vary in size and aspect ratio (short side ``size``, long side up to 4/3 of
    it, mostly landscape): the subject is rendered on a square of the long side and cropped,
    so a consumer's shortest-side resize + centre crop sees a slightly zoomed, sometimes
    cut-off subject, as with a real camera.
    """
    rng = np.random.default_rng([seed, SPLIT_IDS[split], cls_index, i])
    if severity is None:
        severity = {"pool": POOL_SEVERITY, "val": VAL_SEVERITY, "test": TEST_SEVERITY}[split]
    if split == "test":
        long = int(rng.integers(size, size * 4 // 3 + 1))
        img = render(cls_index, rng, long, split=split)
        off = int(rng.integers(0, long - size + 1))
        if rng.random() < 0.7:
            img = img.crop((0, off, long, off + size))  # landscape long x size
        else:
            img = img.crop((off, 0, off + size, long))  # portrait size x long
    else:
        img = render(cls_index, rng, size, split=split)
    if severity > 0:
        img = camera_shift(img, rng, severity)
    return img


def _file_name(c: FieldClass, i: int, ext: str) -> str:
    return f"{c.dirname}_{i:03d}.{ext}"


def generate_benchmark(seed: int, out_dir, pool: int = 16, val: int = 10, test: int = 50,
                       size: int = 96, test_severity: float | None = None,
                       force: bool = False, val_severity: float | None = None,
                       verbose: bool = False) -> Path:
    """Write the benchmark to ``out_dir`` and return its path.

    Layout (paths in ``index.csv`` are relative to ``out_dir``)::

        pool/<dirname>/<dirname>_000.png   clean support pool (K-shot sets are drawn from it)
        val/<dirname>/<dirname>_000.png    mild camera shift
        test/<dirname>/<dirname>_000.jpg   camera shift, varied frame sizes
        index.csv                          path,class,domain,split (class = dirname), sorted
        classes.json                       [{name, dirname, domain, prompt_domain}, ...]

    Everything is written to a temporary sibling directory that is renamed into place at
    the end, so an interrupted run never leaves a half-written benchmark. An existing
    ``out_dir`` is refused unless ``force``. Severities default to the module constants
    ``TEST_SEVERITY`` / ``VAL_SEVERITY`` as they are at call time (so a tuned value set on
    the module is picked up).
    """
    if test_severity is None:
        test_severity = TEST_SEVERITY
    if val_severity is None:
        val_severity = VAL_SEVERITY
    out = Path(out_dir)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists (use force=True / --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        rows = []
        plan = [("pool", pool, POOL_SEVERITY, "png"), ("val", val, val_severity, "png"),
                ("test", test, test_severity, "jpg")]
        t0 = time.time()
        for split, n, sev, ext in plan:
            for c in CLASSES:
                if n <= 0:
                    continue
                d = tmp / split / c.dirname
                d.mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    img = benchmark_sample(seed, split, c.index, i, size, severity=sev)
                    rel = f"{split}/{c.dirname}/{_file_name(c, i, ext)}"
                    img.save(tmp / rel, **(_PNG_OPTS if ext == "png" else _JPEG_OPTS))
                    rows.append((rel, c.dirname, c.domain, split))
            if verbose:
                print(f"{split}: {n} per class, {time.time() - t0:.1f}s", file=sys.stderr)
        rows.sort()
        with open(tmp / "index.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["path", "class", "domain", "split"])
            w.writerows(rows)
        classes = [{"name": c.name, "dirname": c.dirname, "domain": c.domain,
                    "prompt_domain": DOMAIN_NOUN[c.domain]} for c in CLASSES]
        with open(tmp / "classes.json", "w", encoding="utf-8") as f:
            json.dump(classes, f, indent=1)
            f.write("\n")
        os.chmod(tmp, 0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--out", required=True, help="output directory (must not exist)")
    ap.add_argument("--pool", type=int, default=16, help="support-pool images per class")
    ap.add_argument("--val", type=int, default=10, help="validation images per class")
    ap.add_argument("--test", type=int, default=50, help="test images per class")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--test-severity", type=float, default=None,
                    help=f"camera-shift severity of the test split (default {TEST_SEVERITY})")
    ap.add_argument("--slice", action="store_true",
                    help="small preset for the repo: --pool 4 --val 0 --test 10")
    ap.add_argument("--force", action="store_true", help="replace an existing --out")
    a = ap.parse_args(argv)
    if a.slice:
        a.pool, a.val, a.test = 4, 0, 10
    t0 = time.time()
    try:
        out = generate_benchmark(a.seed, a.out, pool=a.pool, val=a.val, test=a.test,
                                 size=a.size, test_severity=a.test_severity, force=a.force,
                                 verbose=True)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = len(CLASSES) * (a.pool + a.val + a.test)
    print(f"wrote {n} images for {len(CLASSES)} classes to {out} in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
