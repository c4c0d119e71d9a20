"""open_clip's evaluation transform, in PIL + numpy only (no torch), shared by every script.

Resize so the shortest side equals `size` (bicubic; PIL antialiases when shrinking), centre crop
with torchvision's rounding, convert to RGB, scale to [0, 1], normalise with the bundle's mean/std.
This is the reference the Rust preprocessing is compared against.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_crop_u8(img: Image.Image, size: int) -> np.ndarray:
    """uint8 CHW after EXIF orientation, RGB conversion, shortest-side bicubic resize, centre crop."""
    img = ImageOps.exif_transpose(img)
    img = img.convert("RGB")
    w, h = img.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    # torchvision.transforms.Resize(size) truncates the long side like this
    img = img.resize((nw, nh), Image.BICUBIC)
    top = int(round((nh - size) / 2.0))
    left = int(round((nw - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


def normalise_u8(chw: np.ndarray, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """float32 CHW in the encoder's input space."""
    x = chw.astype(np.float32) / 255.0
    return ((x - np.asarray(mean, np.float32)[:, None, None]) /
            np.asarray(std, np.float32)[:, None, None]).astype(np.float32)


def preprocess(img: Image.Image, size: int, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    return normalise_u8(resize_crop_u8(img, size), mean, std)
