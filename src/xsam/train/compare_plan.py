"""Planning a comparison: the variants, seeds and pairs it names, and its run folders.

A comparison is planned before anything is trained: :func:`parse_variants` and
:func:`parse_seeds` read what the user wrote, :func:`plan_runs` gives every (variant, seed)
pair a validated :class:`~xsam.train.config.TrainConfig` in its own folder, the pairs to
compare come from :func:`parse_pairs` / :func:`check_pairs` (or :func:`default_pairs`), and
:func:`prepare_comparison` checks the folders and writes the plan (``compare.json``).
Running the plan is :mod:`xsam.train.compare_run`; its results are
:mod:`xsam.train.compare_report`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text, run_status
from .config import OPTIMIZERS, ConfigError, TrainConfig, apply_overrides
from .loop import RESUME_FREE_KEYS
from .stats import MINUS

__all__ = [
    "ALL_PAIRS_UP_TO",
    "MANIFEST",
    "PLOT_ACC",
    "PLOT_ALPHA",
    "RESULTS_JSON",
    "RESULTS_MD",
    "RESULT_FILES",
    "PlannedRun",
    "Variant",
    "check_jobs",
    "check_pairs",
    "default_pairs",
    "parse_pairs",
    "parse_seeds",
    "parse_variants",
    "plan_runs",
    "prepare_comparison",
]

MANIFEST, RESULTS_MD, RESULTS_JSON = "compare.json", "results.md", "results.json"
PLOT_ACC, PLOT_ALPHA = "test_acc.png", "alpha.png"
RESULT_FILES = (RESULTS_MD, RESULTS_JSON, PLOT_ACC, PLOT_ALPHA)


@dataclass(frozen=True)
class Variant:
    """An optimizer setting to compare: ``label`` (as the user wrote it) and overrides."""

    label: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        """The label made safe as a folder name."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.label.replace("=", "")).strip("_")


@dataclass(frozen=True)
class PlannedRun:
    variant: Variant
    seed: int
    config: TrainConfig

    @property
    def out(self) -> Path:
        assert self.config.out is not None
        return Path(self.config.out)


def parse_variants(specs: Iterable[str]) -> list[Variant]:
    """``"sgd"``, ``"sam:rho=0.05"``, ``"xsam:steps=2,alpha=auto"`` -> :class:`Variant`."""
    variants: list[Variant] = []
    for spec in specs:
        spec = spec.strip()
        name, _, rest = spec.partition(":")
        name = name.strip().lower()
        if name not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {name!r}; accepted: {', '.join(OPTIMIZERS)}")
        overrides: dict[str, Any] = {"optimizer": name}
        for item in filter(None, (t.strip() for t in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq:
                raise ConfigError(f"optimizer variant {spec!r}: expected key=value, got {item!r}")
            overrides[key.strip().replace("-", "_")] = value.strip()
        apply_overrides(TrainConfig(), overrides)  # unknown keys and bad values fail here
        label = name + (":" + rest.strip() if rest.strip() else "")
        if any(v.label == label for v in variants):
            raise ConfigError(f"optimizer variant {label!r} is listed twice")
        variants.append(Variant(label, overrides))
    if not variants:
        raise ConfigError("no optimizers to compare")
    return variants


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` -> a list of distinct seeds."""
    seeds: list[int] = []
    try:
        for part in filter(None, (t.strip() for t in text.split(","))):
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                seeds.extend(range(int(lo), int(hi) + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise ConfigError(f"seeds should look like '0,1,2' or '0-4' but are: {text!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds should be distinct integers >= 0 but are: {text!r}")
    return seeds


def plan_runs(
    base: TrainConfig, variants: Sequence[Variant], seeds: Sequence[int], out_dir: str | Path
) -> list[PlannedRun]:
    """Every (variant, seed) run, validated, each in ``out_dir/<variant>-seed<seed>``."""
    out_dir = Path(out_dir)
    plan = []
    for v in variants:
        for seed in seeds:
            overrides = {**v.overrides, "seed": seed, "out": str(out_dir / f"{v.slug}-seed{seed}")}
            plan.append(PlannedRun(v, seed, apply_overrides(base, overrides).validated()))
    return plan


def _check_existing(plan: Sequence[PlannedRun]) -> None:
    """Refuse (before training anything) to reuse a run folder made with another config."""
    for run in plan:
        status, saved, _ = run_status(run.out)
        if status == "foreign":
            raise ConfigError(f"{run.out} is not empty and holds no run; choose another --out")
        if saved is None or status == "started":
            continue
        a, b = saved.validated().to_dict(), run.config.to_dict()
        diff = [
            f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if k not in RESUME_FREE_KEYS and a[k] != b[k]
        ]
        if diff:
            raise ConfigError(
                f"{run.out} holds a run with another config ({'; '.join(diff)}); pass --force "
                "to redo it or choose another --out"
            )


def check_jobs(jobs: object) -> int:
    """``jobs`` as an integer >= 1, or :class:`ConfigError`."""
    try:
        n = int(str(jobs))
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"jobs should be an integer >= 1 but is: {jobs!r}")
    return n


def prepare_comparison(
    base: TrainConfig, plan: Sequence[PlannedRun], out_dir: str | Path, *, force: bool = False
) -> None:
    """Before training: refuse folders of other runs (unless ``force``), write the plan
    (``compare.json``) and delete the earlier comparison's results and plots."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output folder {out_dir} exists and is not a folder")
    if not force:
        _check_existing(plan)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        manifest = {
            "runs": [{"label": r.variant.label, "seed": r.seed, "dir": r.out.name} for r in plan],
            "base": base.to_dict(),
        }
        atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        for name in RESULT_FILES:  # an earlier comparison's: written anew at the end
            (out_dir / name).unlink(missing_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot write to output folder {out_dir}: {exc.strerror or exc}"
        ) from None


# ---------------------------------------------------------------------- pairs
def parse_pairs(text: str | None, labels: Sequence[str]) -> list[tuple[str, str]]:
    """``--pairs`` text, e.g. ``"xsam-sam,sam-sgd"`` (each ``B-A``, labels as in
    ``--optimizers``) -> ``[(a, b), ...]`` for the differences ``b − a``: ``[("sam", "xsam"),
    ("sgd", "sam")]``. ``None`` or empty: :func:`default_pairs`. Labels may hold
    ``-`` and ``,``; case and spaces do not matter."""
    if text is None or not text.strip():
        return default_pairs(labels)

    def norm(s: str) -> str:
        return re.sub(r"\s+", "", s).lower().replace(MINUS, "-")

    keys = sorted({norm(lb): lb for lb in labels}.items(), key=lambda kv: -len(kv[0]))
    t = norm(text).strip(",")
    if not t:
        raise ConfigError("--pairs names no pair")

    def parse(i: int) -> list[tuple[str, str]] | None:
        for kb, lb in keys:
            j = i + len(kb)
            if not (t.startswith(kb, i) and t.startswith("-", j)):
                continue
            for ka, la in keys:
                k = j + 1 + len(ka)
                if t.startswith(ka, j + 1) and (k == len(t) or t[k] == ","):
                    rest = [] if k == len(t) else parse(k + 1)
                    if rest is not None:
                        return [(la, lb), *rest]
        return None

    found = parse(0)
    if found is None:
        raise ConfigError(_pairs_error(text, labels, norm))
    return check_pairs(found, labels)


def _pairs_error(text: str, labels: Sequence[str], norm: Callable[[str], str]) -> str:
    known = {norm(lb) for lb in labels}
    accepted = f"the labels are: {', '.join(labels)}"
    for item in filter(None, (p.strip() for p in text.replace(MINUS, "-").split(","))):
        if "-" not in item:
            return f"--pairs item {item!r} should be B-A (two labels joined by '-'); {accepted}"
        cuts = [m.start() for m in re.finditer("-", item)]
        if any(norm(item[:c]) in known and norm(item[c + 1 :]) in known for c in cuts):
            continue
        unknown = next(
            (item[c + 1 :].strip() for c in cuts if norm(item[:c]) in known),
            next((item[:c].strip() for c in cuts if norm(item[c + 1 :]) in known), None),
        )
        if unknown is None:
            unknown = item[: cuts[0]].strip()
        return f"unknown label {unknown!r} in --pairs; {accepted}"
    return f"cannot read --pairs {text!r} as B-A,B-A,...; {accepted}"


ALL_PAIRS_UP_TO = 4
"""Up to this many variants every pair is compared by default; beyond, each variant against
the first (the baseline), so that a sweep does not print dozens of lines."""


def default_pairs(labels: Sequence[str]) -> list[tuple[str, str]]:
    """Every pair ``(a, b)`` with ``b`` listed after ``a`` (the difference ``b − a``) for up
    to :data:`ALL_PAIRS_UP_TO` variants; with more, ``(first, b)`` for every later ``b``."""
    if len(labels) > ALL_PAIRS_UP_TO:
        return [(labels[0], b) for b in labels[1:]]
    return [(a, b) for i, a in enumerate(labels) for b in labels[i + 1 :]]


def check_pairs(
    pairs: Sequence[tuple[str, str]] | None, labels: Sequence[str]
) -> list[tuple[str, str]]:
    """``pairs`` validated against ``labels`` (``None``: :func:`default_pairs`)."""
    if pairs is None:
        return default_pairs(labels)
    seen: set[tuple[str, str]] = set()
    out = []
    for a, b in pairs:
        for label in (a, b):
            if label not in labels:
                raise ConfigError(
                    f"unknown label {label!r} in --pairs; the labels are: {', '.join(labels)}"
                )
        if a == b:
            raise ConfigError(f"--pairs: {b}-{a} compares a variant with itself")
        if (a, b) in seen:
            raise ConfigError(f"--pairs: {b}-{a} is listed twice")
        seen.add((a, b))
        out.append((a, b))
    if not out:
        raise ConfigError("--pairs names no pair")
    return out
