#!/usr/bin/env python3
"""Train the shipped tiny CLIP on the procedural fieldset corpus and export it as a bundle.

    python models/export/train_tiny.py --out models/tiny-clip [--force]

Deterministic: fixed seeds, deterministic torch algorithms, a fixed thread count (floating-point
sums depend on how work is split across threads). Runs on 2 CPU cores; see models/README.md for
the measured time.

Recipe (CLIP's, scaled down): symmetric InfoNCE over image/caption pairs with a learned logit
scale (init 1/0.07, clamped at 100), AdamW, warmup + cosine schedule. Each batch holds one
image–caption pair per class, so no caption in a batch is a false negative for another image.
Captions come from domain-aware templates ("a photo of a {name}, a type of {domain}." among
others); the corpus sees only mild camera shift, so the benchmark's test split is a real shift.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

from export_openclip import ExportError, export_bundle, require  # noqa: E402

IMAGE_SIZE = 64
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def clip_transform(img, size=IMAGE_SIZE):
    """open_clip's eval transform: bicubic resize of the shortest side, centre crop → uint8 CHW."""
    import numpy as np
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BICUBIC)
    left = int(round((nw - size) / 2.0))
    top = int(round((nh - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def normalise(batch_u8):
    import torch

    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (batch_u8.float() / 255.0 - mean) / std


def tokenize(texts, context_length):
    """CLIP ids via open_clip's own tokenizer (the exact ids the exported graph will receive)."""
    open_clip = require("open_clip", "open_clip_torch")
    return open_clip.tokenize(texts, context_length=context_length)


def prompt_texts(fieldset) -> list[str]:
    """The zero-shot prompts, one per class, in clipd's default template."""
    return [fieldset.prompt(k) for k in range(len(fieldset.CLASSES))]


def build_corpus(fieldset, seed: int, per_class: int, log):
    import numpy as np
    import torch

    t0 = time.time()
    images, captions, labels = [], [], []
    for img, cap, cls in fieldset.corpus(seed, per_class):
        images.append(clip_transform(img))
        captions.append(cap)
        labels.append(cls)
    log(f"corpus: {len(images)} pairs from {len(fieldset.CLASSES)} classes in {time.time() - t0:.1f}s")
    ids = tokenize(captions, 77)
    # Train on rows cut just past the longest caption: with the causal mask the EOT output does
    # not see the padding, so this is the exported 77-token function at a fraction of the cost.
    context = int((ids != 0).sum(1).max())
    return (torch.from_numpy(np.stack(images)), ids[:, :context].contiguous(),
            torch.tensor(labels), captions)


def evaluate(model, fieldset, seed: int, per_class: int, severity: float, prompts_ids):
    """Zero-shot top-1 on freshly rendered, camera-shifted frames (a quick health check)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    rng_images, labels = [], []
    for cls in range(len(fieldset.CLASSES)):
        for i in range(per_class):
            rng = np.random.default_rng([seed, 99, cls, i])
            img = fieldset.render(cls, rng)
            img = fieldset.camera_shift(img, rng, severity) if severity > 0 else img
            rng_images.append(clip_transform(img))
            labels.append(cls)
    x = normalise(torch.from_numpy(np.stack(rng_images)))
    with torch.no_grad():
        t = F.normalize(model.encode_text(prompts_ids), dim=-1)
        f = F.normalize(model.encode_image(x), dim=-1)
    pred = (f @ t.T).argmax(1).numpy()
    return float((pred == np.array(labels)).mean())


def train(args, log=print):
    torch = require("torch")
    import numpy as np
    import torch.nn.functional as F

    import fieldset
    from tiny_clip import TinyCLIP

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    images, ids, labels, captions = build_corpus(fieldset, args.seed, args.per_class, log)
    prompts = prompt_texts(fieldset)
    prompt_ids_full = tokenize(prompts, 77)
    kept = sorted(set(ids.flatten().tolist()) | set(prompt_ids_full.flatten().tolist()))
    model = TinyCLIP(kept_ids=kept, image_size=IMAGE_SIZE, patch_size=args.patch,
                     vision_width=args.width,
                     vision_layers=args.vision_layers, text_width=args.width,
                     text_layers=args.text_layers, heads=args.width // 32, embed_dim=args.width)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f}M parameters, small vocabulary {len(model.kept_ids) + 3}")

    n_classes = len(fieldset.CLASSES)
    by_class = [torch.nonzero(labels == c).flatten() for c in range(n_classes)]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, args.steps // 20)
    gen = torch.Generator().manual_seed(args.seed)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    curve = []
    t0 = time.time()
    model.train()
    for step in range(args.steps):
        lr = args.lr * (step + 1) / warmup if step < warmup else \
            0.5 * args.lr * (1 + math.cos(math.pi * (step - warmup) / (args.steps - warmup)))
        for g in opt.param_groups:
            g["lr"] = lr
        pick = torch.stack([idx[torch.randint(len(idx), (1,), generator=gen)] for idx in by_class]).flatten()
        x = (images[pick].float() / 255.0 - mean) / std
        if torch.rand(1, generator=gen).item() < 0.5:
            x = x.flip(3)  # mirror: every class in the corpus is mirror-invariant in meaning
        img, txt, scale = model(x, ids[pick])
        logits = scale * img @ txt.T
        target = torch.arange(len(pick))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 50 == 0 or step == args.steps - 1:
            acc = float((logits.argmax(1) == target).float().mean())
            curve.append({"step": step, "loss": float(loss.detach()), "batch_acc": acc, "lr": lr})
            log(f"step {step:5d}/{args.steps} loss {float(loss):.4f} batch_acc {acc:.2f} "
                f"scale {float(scale):.1f} ({time.time() - t0:.0f}s)")
    train_seconds = time.time() - t0
    model.eval()
    prompt_ids = prompt_ids_full[:, :int((prompt_ids_full != 0).sum(1).max())]
    clean = evaluate(model, fieldset, args.seed + 1000, 10, 0.0, prompt_ids)
    shifted = evaluate(model, fieldset, args.seed + 1000, 10, fieldset.TEST_SEVERITY, prompt_ids)
    log(f"zero-shot on fresh frames: clean {clean:.3f}, camera-shifted {shifted:.3f}")
    return model, {"train_seconds": round(train_seconds, 1), "steps": args.steps,
                   "parameters": n_params, "curve_tail": curve[-5:],
                   "zero_shot_clean": clean, "zero_shot_shifted": shifted}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "models" / "tiny-clip")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-class", type=int, default=400, help="corpus pairs per class")
    ap.add_argument("--steps", type=int, default=9000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--vision-layers", type=int, default=4)
    ap.add_argument("--text-layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; part of the recipe: sums depend on the split")
    ap.add_argument("--checkpoint", type=Path, help="also save the PyTorch weights here")
    args = ap.parse_args(argv)
    try:
        if args.out.exists() and not args.force:
            raise ExportError(f"{args.out}: output directory exists (pass --force to replace it)")
        model, info = train(args)
        torch = require("torch")
        if args.checkpoint:
            torch.save({"state_dict": model.state_dict(), "kept_ids": model.kept_ids,
                        "config": model.config}, args.checkpoint)
        scale = float(model.logit_scale.exp())
        export_bundle(model, name="tiny-clip",
                      source={"open_clip_model": "tiny-clip (open_clip CLIP, "
                              f"ViT {args.vision_layers}x{args.width} p{args.patch} @{IMAGE_SIZE}px, "
                              f"text {args.text_layers}x{args.width})",
                              "pretrained": f"fieldset corpus seed {args.seed}, train_tiny.py"},
                      image_size=IMAGE_SIZE, context_length=77, logit_scale=scale,
                      out=args.out, force=args.force, extra={"training": info})
        return 0
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
