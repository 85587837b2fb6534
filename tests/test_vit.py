"""The small vision transformer: shapes, the weight-decay split, determinism, and its pieces
against plain re-implementations (attention by an explicit loop over heads, the patch cut by
slicing, a block by its two residual formulas)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from xsam.models import MODEL_NAMES, build_model
from xsam.models.vit import Attention, Block, ViT, decay_groups, vit
from xsam.train.config import ConfigError, TrainConfig, resolve_config
from xsam.train.state import build_optimizer


def small(**kw) -> ViT:
    torch.manual_seed(0)
    return vit(**{"width": 32, "depth": 2, "heads": 4, **kw})


def test_registered_and_output_shape():
    assert "vit" in MODEL_NAMES
    torch.manual_seed(0)
    model = build_model("vit", num_classes=7, in_channels=1, image_size=28, width=32, depth=2)
    assert model.tokens == 16
    assert model.pos_embed.shape == (1, 17, 32)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 7)


def test_other_sizes_and_channels():
    torch.manual_seed(0)
    model = ViT(num_classes=4, in_channels=3, image_size=32, patch=8, width=16, depth=1, heads=2)
    assert model.tokens == 16
    assert model.embed.in_features == 3 * 64
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 4)


def test_parameter_count_closed_form():
    w, d, r, k, p2 = 32, 2, 2, 10, 49
    block = 2 * 2 * w + (3 * w * w + 3 * w) + (w * w + w) + (r * w * w + r * w) + (r * w * w + w)
    expected = (p2 * w + w) + w + 17 * w + d * block + 2 * w + (w * k + k)
    assert sum(p.numel() for p in small().parameters()) == expected


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"image_size": 30}, "multiple of patch"),
        ({"width": 30, "heads": 4}, "multiple of heads"),
        ({"depth": 0}, "depth should be >= 1"),
    ],
)
def test_bad_arguments(kw, message):
    with pytest.raises(ValueError, match=message):
        small(**kw)


def test_patches_are_the_row_major_squares():
    model = small()
    x = torch.arange(2 * 28 * 28, dtype=torch.float32).reshape(2, 1, 28, 28)
    got = model.patches(x)
    for i in range(4):
        for j in range(4):
            square = x[:, :, 7 * i : 7 * i + 7, 7 * j : 7 * j + 7].reshape(2, -1)
            assert torch.equal(got[:, 4 * i + j], square)


def test_attention_equals_an_explicit_per_head_loop():
    torch.manual_seed(1)
    att = Attention(width=12, heads=3).double()
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    q, k, v = att.qkv(x).split(12, dim=-1)
    heads = []
    for h in range(3):
        s = slice(4 * h, 4 * h + 4)
        weights = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(4), dim=-1)
        heads.append(weights @ v[..., s])
    expected = att.proj(torch.cat(heads, dim=-1))
    torch.testing.assert_close(att(x), expected, rtol=1e-12, atol=1e-12)


def test_block_is_pre_norm_residual():
    torch.manual_seed(2)
    block = Block(width=8, heads=2, mlp_ratio=2).double()
    x = torch.randn(3, 4, 8, dtype=torch.float64)
    mid = x + block.attn(F.layer_norm(x, (8,), block.ln1.weight, block.ln1.bias))
    h = F.layer_norm(mid, (8,), block.ln2.weight, block.ln2.bias)
    ff = F.linear(F.gelu(F.linear(h, block.mlp[0].weight, block.mlp[0].bias)),
                  block.mlp[2].weight, block.mlp[2].bias)  # fmt: skip
    torch.testing.assert_close(block(x), mid + ff, rtol=1e-12, atol=1e-12)


def test_zeroed_blocks_are_the_identity():
    """With every block's output projections at zero, each block is the identity, so the
    logits are head(LayerNorm(cls + pos[0])) whatever the image."""
    model = small().double()
    for block in model.blocks:
        for lin in (block.attn.proj, block.mlp[2]):
            torch.nn.init.zeros_(lin.weight)
            torch.nn.init.zeros_(lin.bias)
    h = (model.cls_token + model.pos_embed[:, :1])[0]
    expected = model.head(model.norm(h)).expand(2, -1)
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)


def test_construction_and_training_are_deterministic():
    def run() -> list[torch.Tensor]:
        model = small()
        opt = torch.optim.AdamW(decay_groups(model, 0.05), lr=1e-3)
        g = torch.Generator().manual_seed(3)
        for _ in range(2):
            x, y = torch.randn(4, 1, 28, 28, generator=g), torch.randint(0, 10, (4,), generator=g)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    a, b = run(), run()
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return sorted(n for n, p in model.named_parameters() if id(p) in ids)


def test_decay_groups_split_exactly():
    model = small(depth=1)
    decayed, plain = decay_groups(model, 0.05)
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert _names(model, decayed) == sorted(
        ["embed.weight", "head.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight",
         "blocks.0.mlp.0.weight", "blocks.0.mlp.2.weight"]
    )  # fmt: skip
    assert _names(model, plain) == sorted(
        ["cls_token", "pos_embed", "embed.bias", "head.bias", "norm.weight", "norm.bias",
         "blocks.0.ln1.weight", "blocks.0.ln1.bias", "blocks.0.ln2.weight", "blocks.0.ln2.bias",
         "blocks.0.attn.qkv.bias", "blocks.0.attn.proj.bias", "blocks.0.mlp.0.bias",
         "blocks.0.mlp.2.bias"]
    )  # fmt: skip


def test_decay_groups_of_a_model_without_the_method_and_frozen_parameters():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    model[1].weight.requires_grad_(False)
    groups = decay_groups(model, 0.1)
    assert [len(g["params"]) for g in groups] == [1, 2]
    assert groups[0]["params"][0] is model[0].weight
    only_bias = torch.nn.Linear(2, 2)
    only_bias.weight.requires_grad_(False)
    assert [g["weight_decay"] for g in decay_groups(only_bias, 0.1)] == [0.0]


@pytest.mark.parametrize("optimizer", ["sgd", "sam", "xsam"])
def test_trainer_builds_adamw_with_the_split(optimizer):
    """``weight_decay_on="matrices"``: the optimizer's groups are the split, with AdamW as the
    base; one AdamW step from zero moments decays a matrix by lr·wd and leaves a bias alone."""
    config = resolve_config("fmnist-noise-vit", {"optimizer": optimizer}).validated()
    model = small(depth=1)
    opt = build_optimizer(config, model, total_steps=10)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    base = getattr(opt, "base_optimizer", opt)
    assert isinstance(base, torch.optim.AdamW)
    assert _names(model, opt.param_groups[1])[0] == "blocks.0.attn.proj.bias"


def test_decoupled_decay_on_matrices_only():
    """With a zero gradient AdamW's step is only the decay: w ← w·(1 − lr·wd) for matrices,
    and biases, norms and tokens do not move."""
    model = small(depth=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(decay_groups(model, 0.5), lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        factor = 1 - 0.1 * 0.5 if p.ndim >= 2 and n not in ("cls_token", "pos_embed") else 1.0
        torch.testing.assert_close(p.detach(), before[n] * factor, rtol=0, atol=1e-7)


def test_config_field():
    assert TrainConfig().weight_decay_on == "all"
    assert TrainConfig(weight_decay_on="Matrices").validated().weight_decay_on == "matrices"
    with pytest.raises(ConfigError, match="unknown weight_decay_on 'some'"):
        TrainConfig(weight_decay_on="some").validated()
    preset = resolve_config("fmnist-noise-vit").validated()
    assert (preset.model, preset.base, preset.width, preset.depth) == ("vit", "adamw", 96, 4)
