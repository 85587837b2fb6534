"""Choose ρ on a validation split, never on the test set: ``xsam tune`` / :func:`tune_rho`.

The sweep is a comparison (:mod:`xsam.train.compare`) of the variants ``<optimizer>:rho=R``
for every candidate ``R``, each with every seed, in one folder (complete runs are skipped and
stopped ones resumed when the same command is run again). The rule: the ρ with the highest
mean final validation accuracy over the seeds; ties go to the smaller ρ. Every run still
evaluates the test set each epoch (it stays in the run folders), but the choice, ``tune.json``,
``tune.md`` and what the command prints are made from the validation accuracy alone.
"""

from __future__ import annotations

import json
import math
import platform
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text
from .compare import (
    RunsFailed,
    Variant,
    load_runs,
    mean_std,
    parse_variants,
    plan_runs,
    prepare_comparison,
    train_plan,
)
from .config import ConfigError, TrainConfig

__all__ = [
    "RULE",
    "TUNE_JSON",
    "TUNE_MD",
    "choose_rho",
    "chosen_line",
    "edge_note",
    "format_candidates",
    "parse_rhos",
    "rho_variants",
    "tune_rho",
]

TUNE_JSON, TUNE_MD = "tune.json", "tune.md"
RULE = (
    "the rho with the highest mean final validation accuracy over the seeds; "
    "ties go to the smaller rho"
)
_TIE = 1e-9  # accuracies (in %) closer than this are equal


def _rho_text(rho: float) -> str:
    text = format(rho, "g")
    return text if float(text) == rho else repr(rho)


def parse_rhos(text: str | Sequence[float]) -> list[float]:
    """``"0.05,0.1,0.2"`` (or numbers) -> distinct values >= 0, ascending."""
    items = text.replace(";", ",").split(",") if isinstance(text, str) else list(text)
    try:
        rhos = [float(str(r).strip()) for r in items if str(r).strip()]
    except ValueError:
        raise ConfigError(f"rhos should be numbers like 0.05,0.1,0.2 but are: {text!r}") from None
    if not rhos or any(not math.isfinite(r) or r < 0 for r in rhos):
        raise ConfigError(f"rhos should be numbers >= 0 like 0.05,0.1,0.2 but are: {text!r}")
    if len(set(rhos)) != len(rhos):
        raise ConfigError(f"rhos should be distinct but are: {text!r}")
    return sorted(rhos)


def rho_variants(optimizer_variant: str, rhos: Sequence[float]) -> list[Variant]:
    """``"xsam:adaptive=true"``, ``[0.05, 0.1]`` -> the variants ``xsam:adaptive=true,rho=0.05``
    and ``xsam:adaptive=true,rho=0.1``. The variant must be ``sam`` or ``xsam`` and must not
    fix ρ itself."""
    (variant,) = parse_variants([optimizer_variant])
    name = variant.overrides["optimizer"]
    if name not in ("sam", "xsam"):
        raise ConfigError(f"xsam tune chooses rho of sam or xsam; {name} has no rho")
    if "rho" in variant.overrides:
        raise ConfigError(
            f"optimizer variant {variant.label!r} fixes rho, which is what tune chooses; "
            "give the candidates with --rhos"
        )
    sep = "," if ":" in variant.label else ":"
    return parse_variants([f"{variant.label}{sep}rho={_rho_text(r)}" for r in rhos])


def choose_rho(candidates: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The candidate (``{"rho", "val_acc_mean", ...}``) with the highest ``val_acc_mean``;
    of equal ones (within 1e-9 points) the one with the smaller ρ."""
    if not candidates:
        raise ConfigError("no candidate rho has a validation accuracy to choose by")
    best = None
    for c in sorted(candidates, key=lambda c: c["rho"]):
        if best is None or c["val_acc_mean"] > best["val_acc_mean"] + _TIE:
            best = c
    assert best is not None
    return best


def tune_rho(
    base_config: TrainConfig,
    optimizer_variant: str,
    rhos: str | Sequence[float],
    seeds: Sequence[int],
    out_dir: str | Path,
    jobs: int = 1,
    *,
    force: bool = False,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the sweep ``optimizer_variant`` × ``rhos`` × ``seeds`` in ``out_dir`` (``jobs``
    runs at a time), choose ρ by :data:`RULE` and write ``tune.json`` and ``tune.md``.

    ``base_config`` must hold out a validation split (``val_size``): without one there is
    nothing but the test set to choose on, and that is refused (:class:`ConfigError`).

    Returns ``{"optimizer", "seeds", "val_size", "rule", "candidates", "chosen", "edge",
    "files"}``: each candidate ``{"rho", "label", "n", "seeds", "val_acc", "val_acc_mean",
    "val_acc_std", "runs"}`` (final validation accuracies in %, per seed and mean ± sample
    std), ``chosen`` one of them, ``edge`` ``"smallest"`` / ``"largest"`` when the chosen ρ is
    at that end of two or more candidates (widen the sweep), ``"only"`` for a single
    candidate, else ``None``. No test accuracy is read. Raises :class:`RunsFailed` when runs
    of a parallel sweep failed (no choice is made)."""
    base = base_config.validated()
    if not base.val_size:
        raise ConfigError(
            "xsam tune needs --val-size N: rho is chosen on N training examples held out "
            "for validation, never on the test set"
        )
    rhos = parse_rhos(rhos)
    variants = rho_variants(optimizer_variant, rhos)
    seeds = list(seeds)
    if not seeds:
        raise ConfigError("xsam tune needs at least one seed")
    out_dir = Path(out_dir)
    plan = plan_runs(base_config, variants, seeds, out_dir)
    prepare_comparison(base_config, plan, out_dir, force=force)
    for name in (TUNE_JSON, TUNE_MD):  # an earlier sweep's: written anew at the end
        (out_dir / name).unlink(missing_ok=True)
    failed = train_plan(plan, force=force, jobs=jobs, log=log, progress=progress, epoch_lines=False)
    if failed:
        raise RunsFailed(failed)
    runs = load_runs(out_dir)
    candidates = []
    for rho, variant in zip(rhos, variants):
        done = [r for r in runs if r["label"] == variant.label and r["complete"] and r["metrics"]]
        vals = [
            (r["seed"], 100.0 * r["metrics"][-1]["val_acc"], r["dir"])
            for r in done
            if r["metrics"][-1].get("val_acc") is not None
        ]
        mean, std = mean_std([v for _, v, _ in vals])
        candidates.append(
            {
                "rho": rho,
                "label": variant.label,
                "n": len(vals),
                "seeds": [s for s, _, _ in vals],
                "val_acc": [v for _, v, _ in vals],
                "val_acc_mean": mean,
                "val_acc_std": std,
                "runs": [Path(d).name for _, _, d in vals],
            }
        )
    complete = [c for c in candidates if c["n"] == len(seeds)]
    if len(complete) < len(candidates):
        missing = ", ".join(c["label"] for c in candidates if c["n"] < len(seeds))
        raise ConfigError(f"the sweep is incomplete ({missing}); run the same command again")
    chosen = choose_rho(candidates)
    edge = None
    if len(candidates) == 1:
        edge = "only"
    elif chosen["rho"] == rhos[-1]:
        edge = "largest"
    elif chosen["rho"] == rhos[0]:
        edge = "smallest"
    result: dict[str, Any] = {
        "optimizer": parse_variants([optimizer_variant])[0].label,
        "seeds": seeds,
        "val_size": base.val_size,
        "rule": RULE,
        "candidates": candidates,
        "chosen": chosen,
        "edge": edge,
        "test_set": "not used: the choice reads the final validation accuracy only",
    }
    files = [out_dir / TUNE_JSON, out_dir / TUNE_MD]
    atomic_write_text(files[0], json.dumps(result, indent=2) + "\n")
    atomic_write_text(files[1], _tune_markdown(base, result))
    result["files"] = [str(f) for f in files]
    return result


# ---------------------------------------------------------------------- text
def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("s" if n != 1 else "")


def _acc(c: dict[str, Any]) -> str:
    if c["n"] == 0:
        return "–"
    if c["n"] == 1:
        return f"{c['val_acc_mean']:.2f}"
    return f"{c['val_acc_mean']:.2f} ± {c['val_acc_std']:.2f}"


def chosen_line(result: dict[str, Any]) -> str:
    """``chosen rho = 0.1 (final val acc 51.20 ± 0.30% over 3 seeds); the test accuracy was
    not looked at``."""
    c = result["chosen"]
    return (
        f"chosen rho = {_rho_text(c['rho'])} (final val acc {_acc(c)}% over "
        f"{_plural(c['n'], 'seed')}); "
        "the test accuracy was not looked at"
    )


def edge_note(result: dict[str, Any]) -> str | None:
    """What to do when the chosen ρ is at an end of the candidates (``None`` otherwise)."""
    edge, rho = result["edge"], result["chosen"]["rho"]
    if edge == "largest":
        return (
            f"note: the chosen rho ({_rho_text(rho)}) is the largest one tried; the best may lie "
            f"above it: widen the sweep (e.g. add {_rho_text(2 * rho)})"
        )
    if edge == "smallest":
        return (
            f"note: the chosen rho ({_rho_text(rho)}) is the smallest one tried; the best may "
            f"lie below it: widen the sweep (e.g. add {_rho_text(rho / 2)})"
        )
    if edge == "only":
        return "note: only one rho was tried; give several with --rhos to choose among them"
    return None


def format_candidates(result: dict[str, Any]) -> str:
    """A markdown table of the candidates' final validation accuracy, the choice marked."""
    lines = ["| rho | runs | final val acc (%) | |", "|---:|---:|---:|---|"]
    for c in result["candidates"]:
        mark = "chosen" if c["rho"] == result["chosen"]["rho"] else ""
        lines.append(f"| {_rho_text(c['rho'])} | {c['n']} | {_acc(c)} | {mark} |")
    return "\n".join(lines)


def _tune_markdown(base: TrainConfig, result: dict[str, Any]) -> str:
    what = (
        f"{base.dataset}, {base.model}, {_plural(base.epochs, 'epoch')}, batch "
        f"{base.batch_size}, {base.base} lr {base.lr:g}, {base.schedule} schedule, augment "
        f"{base.augment}"
        + (f", preset {base.preset}" if base.preset else "")
        + f", {base.val_size} training examples held out for validation"
        + (f", {base.limit_train} of the others trained on" if base.limit_train else "")
    )
    note = edge_note(result)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"# Choosing rho for {result['optimizer']} on a validation split\n\n"
        f"{what}; final validation accuracy, mean ± sample std over seeds "
        f"{', '.join(map(str, result['seeds']))}.\n\n"
        f"{format_candidates(result)}\n\n"
        f"- rule: {RULE}\n"
        f"- {chosen_line(result)}\n"
        + (f"- {note.removeprefix('note: ')}\n" if note else "")
        + f"- command: `{' '.join(['xsam', *sys.argv[1:]])}`\n"
        f"- machine: {platform.node()}\n"
        f"- date: {when}\n"
    )
