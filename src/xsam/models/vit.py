"""A small vision transformer for small images (Dosovitskiy et al., ICLR 2021).

The image is cut into non-overlapping ``patch × patch`` squares (28×28 with 7×7 patches: 16
patches), each flattened and projected linearly to ``width``; a learned class token is put in
front and a learned position embedding added. ``depth`` pre-norm blocks follow
(``x + attention(LayerNorm(x))``, then ``x + MLP(LayerNorm(x))``, the MLP ``width → mlp_ratio ·
width → width`` with GELU), then a final LayerNorm and a linear head on the class token. No
dropout. Linear weights, the class token and the position embedding start from a normal
distribution of standard deviation 0.02 (truncated at ±2σ), biases at 0, LayerNorm at weight 1
and bias 0; construction is deterministic under :func:`torch.manual_seed`.

:meth:`ViT.no_weight_decay` names the parameters that weight decay should leave alone besides
the biases and LayerNorm weights: the class token and the position embedding (see
:func:`decay_groups`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._common import check_positive_int

__all__ = ["Attention", "Block", "ViT", "decay_groups", "vit"]


class Attention(nn.Module):
    """Multi-head self-attention: one ``width → 3·width`` projection for queries, keys and
    values, softmax(q kᵀ / √d_head) v per head, then a ``width → width`` projection."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width ({width}) should be a multiple of heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(w // self.heads))
        out = att.softmax(dim=-1) @ v  # (b, heads, t, d_head)
        return self.proj(out.transpose(1, 2).reshape(b, t, w))


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """Patches → linear embedding, class token, position embedding, ``depth`` pre-norm blocks,
    LayerNorm, linear head on the class token.

    Args:
        num_classes: output logits (>= 1).
        in_channels: image channels (>= 1).
        image_size: image height = width, a multiple of ``patch``.
        patch: the side of a patch (default 7: 16 patches of a 28×28 image).
        width: the token width (a multiple of ``heads``).
        depth: the number of blocks.
        heads: attention heads per block.
        mlp_ratio: the MLP's hidden width over ``width``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        patch: int = 7,
        width: int = 96,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: int = 2,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_classes", num_classes),
            ("in_channels", in_channels),
            ("image_size", image_size),
            ("patch", patch),
            ("width", width),
            ("depth", depth),
            ("heads", heads),
            ("mlp_ratio", mlp_ratio),
        ):
            check_positive_int(name, value)
        if image_size % patch:
            raise ValueError(f"image_size ({image_size}) should be a multiple of patch ({patch})")
        self.patch = patch
        self.tokens = (image_size // patch) ** 2
        self.embed = nn.Linear(in_channels * patch * patch, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.tokens + 1, width))
        self.blocks = nn.Sequential(*(Block(width, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)
                nn.init.zeros_(m.bias)
        for p in (self.cls_token, self.pos_embed):
            nn.init.trunc_normal_(p, std=0.02, a=-0.04, b=0.04)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, c, h, w)`` → ``(b, tokens, c·patch²)``: the patches in row-major order, each
        flattened channel-first."""
        b, c, _, _ = x.shape
        p = self.patch
        x = x.unfold(2, p, p).unfold(3, p, p)  # (b, c, h/p, w/p, p, p)
        return x.permute(0, 2, 3, 1, 4, 5).reshape(b, -1, c * p * p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(self.patches(x))
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        h = torch.cat([cls, tokens], dim=1) + self.pos_embed
        h = self.norm(self.blocks(h))
        return self.head(h[:, 0])

    def no_weight_decay(self) -> set[str]:
        """Names of parameters that weight decay should leave alone although they are not
        biases or norm weights: the class token and the position embedding."""
        return {"cls_token", "pos_embed"}


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two parameter groups: the weight matrices (parameters with 2 or more dimensions, except
    the names ``model.no_weight_decay()`` returns, if it has that method) with
    ``weight_decay``, and every other parameter (biases, norm weights, tokens, embeddings the
    model names) with 0. Parameters that do not require gradients are left out; a group with
    no parameters is dropped. The order within a group is ``named_parameters()``'s order."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and name not in skip else plain).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def vit(
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 28,
    width: int = 96,
    depth: int = 4,
    patch: int = 7,
    heads: int = 4,
) -> ViT:
    """Build a :class:`ViT` (defaults: 7×7 patches, width 96, depth 4, 4 heads, MLP ratio 2)."""
    return ViT(num_classes, in_channels, image_size, patch, width, depth, heads)
