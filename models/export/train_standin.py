#!/usr/bin/env python3
"""Pretrain the emoji stand-in CLIP contrastively on every emoji concept and export it as a bundle.

    python models/export/emojiset.py fetch                          # the artwork (npm, pinned)
    python models/export/train_standin.py --out models/emoji-clip [--force]

The point is a model in CLIP's regime (shared/SCIENCE.md, "What a stand-in CLIP must share with
the real one"), so that few-shot adapters and transduction have something to gain:

- **Pretraining apart from deployment.** It sees every emoji concept emojibase lists (about
  1,900, the benchmark's 100 included, as real CLIP has seen dogs), but only in the pretraining
  styles (emojiset.PRETRAIN_STYLES: Noto, Twemoji, OpenMoji colour and black), placed simply on
  plain or soft backgrounds. No Fluent artwork, no occlusion, no distractors, at most a mild
  camera shift: the deployment styles and scenes are new to it.
- **Web-like captions, never the evaluation prompts.** Each caption is drawn from the CLDR label
  and tags: varied alt-text templates, a tag in place of the name, keyword lists, the group's
  word ("a kind of animal", "food", "smiley", "object"), and a share of noisy or partial
  captions and of captions that belong to another emoji. The exact prompt
  "a photo of a {name}, a type of {domain}." is never produced.

Same architecture family as models/tiny-clip (tiny_clip.TinyCLIP: open_clip's ViT + causal text
transformer, CLIP-id remap), same exporter (export_openclip.export_bundle), so tract 0.23.9 loads
it. Deterministic: fixed seeds, deterministic torch algorithms, a fixed thread count.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import emojiset as E  # noqa: E402
import fieldset  # noqa: E402
from export_openclip import ExportError, export_bundle, require  # noqa: E402
from train_tiny import IMAGE_SIZE, MEAN, STD, clip_transform, tokenize  # noqa: E402

CORPUS_SPLIT = 0  # emojiset's benchmark splits use ids 1-3

# The word a caption uses for a concept's kind, from its emojibase group and subgroup. The
# benchmark's domain nouns (animal, smiley, object, food) are among them, as they would be in
# alt-text; so are many others.
def kind_words(group: str, subgroup: str) -> list[str]:
    if subgroup.startswith("animal-"):
        return ["animal", subgroup.split("-", 1)[1]]
    if subgroup.startswith("plant-"):
        return ["plant", "flower" if subgroup == "plant-flower" else "nature"]
    if subgroup.startswith("face-") or subgroup in ("cat-face", "monkey-face"):
        return ["smiley", "face", "emoticon"]
    if subgroup.startswith("food-"):
        word = {"food-fruit": "fruit", "food-vegetable": "vegetable", "food-sweet": "dessert",
                "food-asian": "dish", "food-prepared": "dish"}.get(subgroup, "food")
        return ["food", word]
    if subgroup == "drink":
        return ["drink", "beverage"]
    if group == "objects":
        word = {"musical-instrument": "musical instrument", "household": "household item",
                "office": "office supply", "tool": "tool", "clothing": "clothing",
                "light-video": "device", "computer": "device", "phone": "device",
                "writing": "writing tool", "book-paper": "paper"}.get(subgroup, "thing")
        return ["object", word]
    return {"smileys-emotion": ["symbol", "emotion"], "people-body": ["person", "people"],
            "travel-places": ["place", "travel"], "activities": ["activity", "event"],
            "symbols": ["symbol", "sign"], "flags": ["flag", "banner"]}.get(group, ["thing", "icon"])


_NAME_T = ["{x}", "{x}", "{x} emoji", "an emoji of {ax}", "{x} icon", "{ax} sticker",
           "{x} clipart", "illustration of {ax}", "a picture of {ax}", "a photo of {ax}",
           "cartoon {x}", "a drawing of {ax}", "{x} vector art", "cute {x}", "the {x}",
           "{x}, transparent background", "my {x}", "image of {ax}", "{x} png"]
_KIND_T = ["{x}, a kind of {k}", "{x}, a type of {k}", "{ak} called {x}", "{x} ({k})", "{k}: {x}", "{x} {k} emoji",
           "{ak}, {x}", "{x} is {ak}", "this {k} is {ax}", "{k} icon, {x}",
           "an emoji of {ak}: {x}", "{x}, {k}"]
_JUNK = ["free", "download", "hd", "png", "vector", "stock", "new", "best", "2024", "jpg",
         "high quality", "set", "collection", "pack", "design", "logo", "wallpaper"]


def _a(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def caption(concept: dict, rng: np.random.Generator, concepts: list[dict]) -> str:
    """One alt-text-like caption for an emoji concept (see the module doc)."""
    if rng.random() < 0.03:  # alt text that belongs to another picture
        concept = concepts[int(rng.integers(len(concepts)))]
    label = concept["label"].lower()
    tags = [t for t in concept["tags"] if t] or [label]
    u = rng.random()
    if u < 0.62:
        x = label
    elif u < 0.88:
        x = tags[int(rng.integers(len(tags)))]
    else:
        k = int(rng.integers(1, min(4, len(tags)) + 1))
        x = ", ".join([label] + [tags[j] for j in rng.permutation(len(tags))[:k]])
    kinds = kind_words(concept["group"], concept["subgroup"])
    v = rng.random()
    if v < 0.55:
        text = _NAME_T[int(rng.integers(len(_NAME_T)))].format(x=x, ax=_a(x))
    elif v < 0.85:
        k = kinds[0] if rng.random() < 0.7 else kinds[int(rng.integers(len(kinds)))]
        text = _KIND_T[int(rng.integers(len(_KIND_T)))].format(x=x, ax=_a(x), k=k, ak=_a(k))
    else:  # a keyword list, as many alt texts are
        k = int(rng.integers(2, min(6, len(tags) + 1) + 1))
        words = [label] + tags
        text = " ".join(words[j] for j in rng.permutation(len(words))[:k])
    w = rng.random()
    if w < 0.10:  # partial: a word dropped
        words = text.split()
        if len(words) > 1:
            del words[int(rng.integers(len(words)))]
            text = " ".join(words)
    elif w < 0.22:  # noisy: junk words around it
        junk = [_JUNK[int(j)] for j in rng.integers(0, len(_JUNK), int(rng.integers(1, 3)))]
        text = " ".join(junk + [text]) if rng.random() < 0.5 else " ".join([text] + junk)
    return text


def pretrain_view(emoji: Image.Image, rng: np.random.Generator, size: int = IMAGE_SIZE,
                  distractors=(), p_scene: float = 0.5) -> np.ndarray:
    """One pretraining image of an emoji, as the model's uint8 CHW input.

    Half are web-like (on white or a soft background, a little off-centre, now and then slightly
    rotated or softly degraded); with probability `p_scene` it is instead a photo-like scene
    (emojiset.compose with this style's own distractor emoji, at a camera-shift severity of at
    most 0.3, half the benchmark's test severity), because web images are not all clean
    catalogue shots either. The deployment styles never appear here.
    """
    if rng.random() < p_scene:
        img = E.compose(emoji, rng, float(rng.uniform(0.0, 0.3)), (96, 96), list(distractors))
        return clip_transform(img, size)
    plain = rng.random() < 0.5
    scale = rng.uniform(0.55, 0.95)
    dx, dy = rng.uniform(-0.12, 0.12, 2)
    rot = float(rng.normal(0, 6)) if rng.random() < 0.4 else 0.0
    shift = rng.uniform(0.0, 0.3) if rng.random() < 0.4 else 0.0
    big = size * 3 // 2
    if plain:
        canvas = Image.new("RGBA", (big, big), (255, 255, 255, 255))
    else:
        bg, _n, _m = fieldset._background(rng, big, big, light_bias=0.3)
        canvas = bg.convert("RGBA")
    side = max(8, int(round(scale * big)))
    sprite = emoji.resize((side, side), Image.BICUBIC)
    if rot:
        sprite = sprite.rotate(rot, Image.BICUBIC, expand=True)
    x = int(round(big / 2 * (1 + dx) - sprite.width / 2))
    y = int(round(big / 2 * (1 + dy) - sprite.height / 2))
    canvas.paste(sprite, (x, y), sprite)
    img = canvas.convert("RGB")
    if shift > 0:
        img = fieldset.camera_shift(img, rng, shift)
    return clip_transform(img, size)


_DISTRACTORS: dict = {}


def _views_for(args):
    """Worker: every view of one (concept, style) source (a pure function of its arguments)."""
    seed, ci, si, path, views, dis_paths, p_scene = args
    key = tuple(dis_paths)
    if key not in _DISTRACTORS:
        _DISTRACTORS[key] = [E.load_emoji(Path(p)) for p in dis_paths]
    emoji = E.load_emoji(Path(path))
    out = []
    for v in range(views):
        rng = np.random.default_rng([seed, CORPUS_SPLIT, ci, si, v])
        out.append(pretrain_view(emoji, rng, distractors=_DISTRACTORS[key], p_scene=p_scene))
    return out


def build_corpus(cache: Path, seed: int, views: int, captions_per: int, styles, log,
                 workers: int = 2, p_scene: float = 0.5):
    """Images (N×3×64×64 uint8), their concept index, and a caption bank per concept."""
    import multiprocessing as mp

    import torch

    concepts = E.load_emojibase(cache)
    style_dirs = E.known_styles(cache)
    idx = {s: E.style_index(style_dirs[s]) for s in styles}
    dis = {s: [str(idx[s][E.norm_code(d)]) for d in E.DISTRACTORS if E.norm_code(d) in idx[s]]
           for s in styles}
    jobs = []
    for ci, c in enumerate(concepts):
        for si, s in enumerate(styles):
            if c["code"] in idx[s]:
                jobs.append((seed, ci, si, str(idx[s][c["code"]]), views, dis[s], p_scene))
    t0 = time.time()
    with mp.get_context("fork").Pool(workers) as pool:
        rendered = pool.map(_views_for, jobs, chunksize=64)
    images = np.stack([v for group in rendered for v in group])
    owner = np.repeat(np.array([j[1] for j in jobs]), views)
    have = sorted(set(owner.tolist()))
    log(f"corpus: {len(images)} views of {len(jobs)} sources ({len(have)} concepts, "
        f"{len(styles)} styles) in {time.time() - t0:.0f}s")
    caps = []
    for ci, c in enumerate(concepts):
        rng = np.random.default_rng([seed, CORPUS_SPLIT, 10_000_000 + ci])
        caps.extend(caption(c, rng, concepts) for _ in range(captions_per))
    ids = tokenize(caps, 77)
    log(f"captions: {len(caps)} ({captions_per} per concept), e.g. "
        + "; ".join(repr(caps[i]) for i in range(0, 7 * captions_per, captions_per)))
    return (concepts, torch.from_numpy(images), torch.from_numpy(owner), have, ids, caps)


def benchmark_prompts() -> list[str]:
    return ([E.prompt(c.index) for c in E.CLASSES] + [E.plain_prompt(c.index) for c in E.CLASSES])


def train(args, log=print):
    torch = require("torch")
    import torch.nn.functional as F

    from tiny_clip import TinyCLIP

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t_start = time.time()
    concepts, images, owner, have, ids, caps = build_corpus(
        args.cache, args.seed, args.views, args.captions, E.PRETRAIN_STYLES, log, args.workers,
        args.scene)
    corpus_seconds = time.time() - t_start
    # Train on rows cut past the longest caption (causal mask: same function as 77 tokens)
    context = int((ids != 0).sum(1).max())
    ids = ids[:, :context].contiguous()
    prompt_ids = tokenize(benchmark_prompts(), 77)
    kept = sorted(set(ids.flatten().tolist()) | set(prompt_ids.flatten().tolist()))
    model = TinyCLIP(kept_ids=kept, image_size=IMAGE_SIZE, patch_size=args.patch,
                     vision_width=args.width, vision_layers=args.vision_layers,
                     text_width=args.width, text_layers=args.text_layers,
                     heads=args.width // 32, embed_dim=args.width)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f}M parameters, small vocabulary {len(model.kept_ids) + 3}")

    have_t = torch.tensor(have)
    order = torch.argsort(owner, stable=True)
    counts = torch.bincount(owner, minlength=len(concepts))
    starts = torch.cumsum(counts, 0) - counts
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
    perm, pos = torch.randperm(len(have_t), generator=gen), 0
    for step in range(args.steps):
        lr = args.lr * (step + 1) / warmup if step < warmup else \
            0.5 * args.lr * (1 + math.cos(math.pi * (step - warmup) / (args.steps - warmup)))
        for g in opt.param_groups:
            g["lr"] = lr
        # one pair per concept in a batch: distinct concepts, drawn without replacement
        if pos + args.batch > len(perm):
            perm, pos = torch.randperm(len(have_t), generator=gen), 0
        cidx = have_t[perm[pos:pos + args.batch]]
        pos += args.batch
        pick_view = (torch.rand(len(cidx), generator=gen) * counts[cidx]).long()
        rows = order[starts[cidx] + pick_view]
        pick_cap = cidx * args.captions + torch.randint(args.captions, (len(cidx),), generator=gen)
        x = (images[rows].float() / 255.0 - mean) / std
        img, txt, scale = model(x, ids[pick_cap])
        logits = scale * img @ txt.T
        target = torch.arange(len(cidx))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 50 == 0 or step == args.steps - 1:
            acc = float((logits.argmax(1) == target).float().mean())
            curve.append({"step": step, "loss": round(float(loss.detach()), 4),
                          "batch_acc": round(acc, 3), "lr": lr})
            log(f"step {step:5d}/{args.steps} loss {float(loss):.4f} batch_acc {acc:.2f} "
                f"scale {float(scale):.1f} ({time.time() - t0:.0f}s)")
    train_seconds = time.time() - t0
    model.eval()
    info = {"corpus_seconds": round(corpus_seconds, 1), "train_seconds": round(train_seconds, 1),
            "steps": args.steps, "batch": args.batch, "parameters": n_params,
            "concepts": len(have), "views_per_source": args.views,
            "captions_per_concept": args.captions, "scene_share": args.scene, "pretrain_styles": list(E.PRETRAIN_STYLES),
            "threads": args.threads, "curve_tail": curve[-3:]}
    log(f"trained in {train_seconds:.0f}s (+ corpus {corpus_seconds:.0f}s)")
    return model, info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "models" / "emoji-clip")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--cache", type=Path, default=E.DEFAULT_CACHE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--views", type=int, default=8, help="rendered views per (concept, style)")
    ap.add_argument("--captions", type=int, default=32, help="caption bank per concept")
    ap.add_argument("--scene", type=float, default=0.5,
                    help="share of pretraining views that are photo-like scenes (0: all web-like)")
    ap.add_argument("--steps", type=int, default=3600)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--vision-layers", type=int, default=4)
    ap.add_argument("--text-layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; part of the recipe: sums depend on the split")
    ap.add_argument("--workers", type=int, default=2, help="processes rendering the corpus")
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
        export_bundle(model, name=args.out.name,
                      source={"open_clip_model": "emoji stand-in (open_clip CLIP, "
                              f"ViT {args.vision_layers}x{args.width} p{args.patch} @{IMAGE_SIZE}px, "
                              f"text {args.text_layers}x{args.width})",
                              "pretrained": f"emoji concepts in {', '.join(E.PRETRAIN_STYLES)}, "
                              f"seed {args.seed}, train_standin.py"},
                      image_size=IMAGE_SIZE, context_length=77,
                      logit_scale=float(model.logit_scale.exp()), out=args.out,
                      force=args.force, extra={"training": info})
        return 0
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
