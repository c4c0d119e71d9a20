#!/usr/bin/env python3
"""Regenerate the Rust parity fixtures in tests/fixtures/ from the shipped bundle.

    python models/export/make_fixtures.py [--bundle models/tiny-clip] [--out tests/fixtures]

Writes (see tests/fixtures/README.md):
- images/: sample images covering the decoder paths (JPEG, PNG, grayscale, 16-bit grayscale,
  alpha, palette, EXIF-rotated JPEG, large downscale, small upscale, odd aspect ratios);
- images.json: their order; preprocess/<name>.npy: reference preprocessing (float32 [3,S,S]);
- image_embeds.npy: ONNX Runtime embeddings of those images (N×d, L2-normalised);
- prompts.json + text_embeds.npy: the same for prompts;
- fieldset/: the committed benchmark slice (seed 0: 4 pool shots + 10 test frames per class);
- zeroshot_reference.json: ONNX Runtime zero-shot predictions and accuracy on that slice.
Needs numpy, pillow, onnxruntime, tokenizers, scikit-learn (no torch).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import fieldset  # noqa: E402
from clip_preprocess import preprocess  # noqa: E402
from evaluate import BundleRunner, evaluate  # noqa: E402

PROMPTS = [
    "a photo of a circle, a type of shape.",
    "a photo of a house, a type of object.",
    "a photo of a seven, a type of handwritten digit.",
    "a photo of a checkerboard, a type of texture.",
    "a blurry photo of a red star.",
    "a drawing of the boat",
    "a photo of a golden retriever, a type of dog.",
    "a photo of pad thai, a type of food.",
    "",
    "a very long prompt " + "that keeps going " * 40,
]


def _by_name(name: str) -> int:
    for c in fieldset.CLASSES:
        c = c if isinstance(c, dict) else vars(c)
        if c["name"] == name:
            return c["index"]
    raise KeyError(name)


def sample_images(out: Path) -> list[str]:
    """Deterministic images exercising every decode/convert path the runtime supports."""
    out.mkdir(parents=True, exist_ok=True)
    r = lambda i: np.random.default_rng([7, i])  # noqa: E731
    made = []

    def save(img: Image.Image, name: str, **kw):
        img.save(out / name, **kw)
        made.append(name)

    save(fieldset.render(_by_name("star"), r(0), 96), "star_rgb.png", optimize=False)
    house = fieldset.render(_by_name("house"), r(1), 96).resize((160, 96), Image.BICUBIC)
    save(house, "house_wide.jpg", quality=90)
    tex = fieldset.render(_by_name("checkerboard"), r(2), 140).crop((30, 0, 110, 140))
    save(tex, "checkerboard_tall.png")
    digit = fieldset.render(_by_name("seven"), r(3), 72).convert("L")
    save(digit, "seven_gray.png")
    alpha = fieldset.render(_by_name("circle"), r(4), 100).crop((0, 5, 100, 95)).convert("RGBA")
    a = np.asarray(alpha).copy()
    a[..., 3] = np.linspace(40, 255, a.shape[1], dtype=np.uint8)[None, :]
    save(Image.fromarray(a), "circle_alpha.png")
    pal = fieldset.render(_by_name("boat"), r(5), 120).quantize(colors=32, dither=Image.Dither.NONE)
    save(pal, "boat_palette.png")
    big = fieldset.render(_by_name("tree"), r(6), 480).resize((640, 480), Image.BICUBIC)
    save(big, "tree_large.jpg", quality=85)
    save(fieldset.render(_by_name("fish"), r(7), 40).resize((40, 30), Image.BICUBIC), "fish_small.png")
    g16 = (np.asarray(fieldset.render(_by_name("waves"), r(8), 64).convert("L"), np.uint16) * 257)
    save(Image.fromarray(g16.astype(np.uint16)), "waves_gray16.png")
    rot = fieldset.render(_by_name("arrow"), r(9), 96).resize((120, 80), Image.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    save(rot, "arrow_exif_rot.jpg", quality=92, exif=exif)
    return made


def reference_pixels(path: Path, size: int, mean, std) -> np.ndarray:
    """The reference transform; 16-bit images are scaled to 8 bits first (value / 257, rounded).

    PIL's own I;16 → RGB conversion clips at 255 instead of scaling, which no decoder should
    copy; every other mode goes straight through clip_preprocess.
    """
    with Image.open(path) as img:
        if img.mode.startswith("I;16") or img.mode == "I":
            arr = np.asarray(img, dtype=np.float64)
            img = Image.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8))
        return preprocess(img, size, mean, std)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=REPO / "models" / "tiny-clip")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures")
    ap.add_argument("--seed", type=int, default=0, help="fieldset seed of the committed slice")
    args = ap.parse_args(argv)
    out = args.out
    runner = BundleRunner(args.bundle, threads=2)
    m = runner.manifest["image"]

    img_dir = out / "images"
    shutil.rmtree(img_dir, ignore_errors=True)
    names = sample_images(img_dir)
    pre_dir = out / "preprocess"
    shutil.rmtree(pre_dir, ignore_errors=True)
    pre_dir.mkdir(parents=True)
    pixels = []
    for name in names:
        x = reference_pixels(img_dir / name, m["size"], m["mean"], m["std"])
        np.save(pre_dir / f"{name}.npy", x)
        pixels.append(x)
    (out / "images.json").write_text(json.dumps(names, indent=1) + "\n")
    np.save(out / "image_embeds.npy", runner.encode_images(np.stack(pixels)).astype(np.float32))
    (out / "prompts.json").write_text(json.dumps(PROMPTS, indent=1) + "\n")
    np.save(out / "text_embeds.npy", runner.encode_text(PROMPTS).astype(np.float32))

    slice_dir = out / "fieldset"
    fieldset.generate_benchmark(args.seed, slice_dir, pool=4, val=0, test=10, force=True)
    res = evaluate(args.bundle, slice_dir, shots=4, seeds=[0, 1, 2])
    ref = {"bundle_sha256": runner.manifest.get("files", {}),
           "prompts": res["prompts"],
           "predictions": res["predictions"],
           "top1_accuracy": res["zero_shot"]["top1"],
           "top5_accuracy": res["zero_shot"]["top5"],
           "linear_probe_4shot": res.get("linear_probe")}
    (out / "zeroshot_reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(f"fixtures written to {out}: {len(names)} images, {len(PROMPTS)} prompts; slice "
          f"zero-shot top-1 {ref['top1_accuracy']:.3f} top-5 {ref['top5_accuracy']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
