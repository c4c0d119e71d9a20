"""The shipped tiny CLIP: open_clip's own ViT and causal text transformer, scaled down.

The point of this model is to make the Rust runtime exercise exactly the graph that real CLIP
needs (patch-embedding Conv, class token, pre-LN transformer blocks with multi-head attention,
GELU MLPs, a causal text transformer pooled at the EOT position, linear projections) while
weighing a few MiB. It is built from open_clip's `CLIP` class so that any change open_clip makes
to its blocks shows up here too.

Token ids: the text tower consumes real CLIP tokenizer ids (vocabulary 49408). Holding a
49408-row embedding table would cost ~25 MiB, so the graph starts with a lookup table that
remaps CLIP ids to a small vocabulary (the tokens the training corpus uses, everything else to
UNK). The remap is ordered so that EOT gets the largest small id: open_clip pools the text at
`argmax(ids)`, which must still find the EOT position after remapping.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CLIP_VOCAB_SIZE = 49408
SOT_ID = 49406
EOT_ID = 49407


class TinyCLIP(nn.Module):
    """open_clip CLIP with a CLIP-id → small-id remap in front of the text tower."""

    def __init__(self, kept_ids: list[int], image_size: int = 64, patch_size: int = 8,
                 vision_width: int = 128, vision_layers: int = 4, text_width: int = 128,
                 text_layers: int = 3, heads: int = 4, embed_dim: int = 128,
                 context_length: int = 77):
        super().__init__()
        from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

        kept = sorted(set(int(i) for i in kept_ids) - {SOT_ID, EOT_ID})
        # small ids: 0 = UNK, 1 = SOT, 2.. = kept corpus tokens, last = EOT (largest: see module doc)
        id_map = torch.zeros(CLIP_VOCAB_SIZE, dtype=torch.int64)
        id_map[SOT_ID] = 1
        for small, clip_id in enumerate(kept, start=2):
            id_map[clip_id] = small
        small_vocab = len(kept) + 3
        id_map[EOT_ID] = small_vocab - 1
        self.register_buffer("id_map", id_map)
        self.kept_ids = kept
        self.config = dict(image_size=image_size, patch_size=patch_size, vision_width=vision_width,
                           vision_layers=vision_layers, text_width=text_width,
                           text_layers=text_layers, heads=heads, embed_dim=embed_dim,
                           context_length=context_length)

        vision = CLIPVisionCfg(layers=vision_layers, width=vision_width,
                               head_width=vision_width // heads, patch_size=patch_size,
                               image_size=image_size)
        text = CLIPTextCfg(context_length=context_length, vocab_size=small_vocab,
                           width=text_width, heads=heads, layers=text_layers)
        self.clip = CLIP(embed_dim=embed_dim, vision_cfg=vision, text_cfg=text)

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) image embedding, as open_clip's `encode_image`."""
        return self.clip.encode_image(image)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Raw text embedding of CLIP token ids [B, L] (L ≤ context_length).

        Same computation as open_clip's `CLIP.encode_text`, except that it accepts a sequence
        shorter than the context: with a causal mask the output at the EOT position depends only
        on the tokens before it, so training on truncated rows (all corpus captions are short)
        gives exactly the function that the exported 77-token graph computes.
        """
        c = self.clip
        small = self.id_map[ids]
        length = small.shape[1]
        x = c.token_embedding(small)
        x = x + c.positional_embedding[:length]
        x = c.transformer(x, attn_mask=c.attn_mask[:length, :length])
        x = c.ln_final(x)
        x = x[torch.arange(x.shape[0]), small.argmax(dim=-1)]
        return x @ c.text_projection

    def forward(self, image: torch.Tensor, ids: torch.Tensor):
        img = F.normalize(self.encode_image(image), dim=-1)
        txt = F.normalize(self.encode_text(ids), dim=-1)
        return img, txt, self.clip.logit_scale.exp()
