"""Optimizer benchmark: XSAM against SAM, SGD and a per-tensor-loop implementation.

Measures, side by side in one run (the targets: docs/architecture.md, "Design targets"):

1. whole-update time (forward + backward passes included) of SGD, SAM k=1, XSAM k=1 with a
   fixed α = 0.5, XSAM k=1 with ``alpha="auto"`` between searches, and one update that runs
   the α search; on a small CNN (1×28×28) and on ResNet-20 (3×32×32). Targets: XSAM/SAM ≤ 1.03
   per update, and ≤ 1.03 over an "epoch" of ``--alpha-every`` updates with one search.
2. optimizer-only time (``.grad`` filled from fixed random tensors, no forward/backward):
   ascent_step + descent_direction + base step of ``xsam.XSAM`` against ``PlainXSAM``
   (benchmarks/plain_xsam.py) on the ResNet-18 parameter list (62 tensors, 11.2M parameters)
   and on smaller lists. Target: xsam ≥ 3× faster. The two are first checked to give the same
   ``d`` to float tolerance.
2b. optimizer-only time against a memory-bandwidth floor measured in the same run (a plain
   copy between parameter-sized buffers): SGD's base step, SAM and XSAM (ascent_step +
   descent_direction) and a cheap step of ``PerturbationSchedule(every=2, reuse=0.7)``, each
   as time / floor (``optbench/floor.py`` counts the passes); ``--baseline-src`` times another
   checkout's package side by side (before/after a change); ``--floor-only`` runs this alone.
3. memory: bytes the optimizer keeps beyond the base optimizer's state, relative to the
   parameter bytes (target ≤ 1 parameter-sized buffer), and the transient peak of one update
   (CPU: from the profiler's allocation events; CUDA: ``torch.cuda.max_memory_allocated``).

Variants are interleaved: every round runs each variant once, in a fresh random order, and the
reported figures are medians over rounds; ratios are medians of the per-round ratios, so slow
phases of a shared machine hit both sides of a ratio alike. A second SAM instance is the
control (its ratio to the first is the resolution of the run), and XSAM's extra optimizer time
inside each update gives a decomposed, low-noise estimate of the per-update ratio.

Usage::

    python benchmarks/bench_optimizer.py                 # full run, CPU (about 10 minutes)
    python benchmarks/bench_optimizer.py --quick         # smoke run (under a minute)
    python benchmarks/bench_optimizer.py --device cuda   # the same on a GPU

Writes the markdown to stdout and everything (raw per-round times included) to
``benchmarks/results/optimizer_<device>.json``.

Layout. This script is the entry point: options and their defaults (``build_parser``,
``make_plan``), the order of the sections (``run_sections``), the summary and the JSON
(``main``). The measurements live in the package ``benchmarks/optbench/``, imported from this
script's folder (as is ``plain_xsam.py``, so run it as a script; any working directory will do):

- ``config.py``: targets, ρ, the fixed α, the base SGD settings, the variant names.
- ``measure.py``: ``timed`` (device-synchronised seconds), ``Schedule`` and
  ``interleaved_rounds`` (warm-up, then timed rounds until the time budget is spent), medians,
  IQR, bootstrap intervals, storage bytes.
- ``machine.py``: the ``machine`` record (CPU, versions, threads, command, load average).
- ``parity.py``: ``check_parity``, run first; the run stops if the two implementations differ.
- ``opt_only.py``: section 2, ``bench_opt_only``; ``OptOnly`` (one optimizer fed fixed
  gradients), also used by the parity check and the memory section.
- ``memory.py``: section 3, ``bench_memory`` (one ``memory_row`` per optimizer).
- ``updates.py``: section 1, ``bench_updates``: ``build_runs`` (a model and optimizer per
  variant), ``time_rounds`` (interleaved timing), then ``time_stats``, ``ratio_stats``,
  ``decomposed_stats``.
- ``report.py``: ``render``, the markdown report, from the results dict alone.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from optbench.config import BASE_KW, FIXED_ALPHA, RHO, TARGETS
from optbench.floor import bench_floor, load_baseline
from optbench.machine import loadavg, machine_info
from optbench.measure import Schedule, log
from optbench.memory import bench_memory
from optbench.opt_only import bench_opt_only
from optbench.parity import check_parity
from optbench.report import render
from optbench.updates import bench_updates

import xsam

# (parameter set, input channels, × --rounds-opt, share of the optimizer-only budget)
OPT_ONLY_SETS = (("resnet18", 3, 1, 0.6), ("resnet20", 3, 2, 0.2), ("small_cnn", 1, 2, 0.2))
# (model, input channels, input size) of the whole-update section
UPDATE_MODELS = (("small_cnn", 1, 28), ("resnet20", 3, 32))


def _positive(kind: type) -> Any:
    """An argparse type: a number of ``kind`` that is > 0 (0 used to mean "the default")."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"should be > 0 but is: {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    ap.add_argument(
        "--threads", type=_positive(int), default=2, help="torch intra-op threads (default 2)"
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: few rounds, small batch")
    ap.add_argument(
        "--batch", type=_positive(int), default=None, help="batch size (default 128; quick 32)"
    )
    ap.add_argument(
        "--rounds-small", type=_positive(int), default=None, help="rounds, small_cnn (100)"
    )
    ap.add_argument(
        "--rounds-resnet20", type=_positive(int), default=None, help="rounds, resnet20 (80)"
    )
    ap.add_argument(
        "--rounds-opt", type=_positive(int), default=None, help="rounds, optimizer-only (60)"
    )
    ap.add_argument(
        "--budget-min",
        type=_positive(float),
        default=None,
        help="time budget in minutes (default 9; quick 0.75): a timing section that has spent "
        "its share stops after its minimum number of rounds (5; quick 2)",
    )
    ap.add_argument(
        "--alpha-every", type=_positive(int), default=400, help="updates per α search (400)"
    )
    ap.add_argument(
        "--search-every-rounds",
        type=_positive(int),
        default=None,
        help="time the search update in every n-th round only (default 4; quick 1)",
    )
    ap.add_argument(
        "--floor-only",
        action="store_true",
        help="run only the optimizer-only time against the copy floor (section 2b)",
    )
    ap.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="the src/ folder of another checkout: its SAM, XSAM and cheap step are timed "
        "beside this one's in section 2b (e.g. a git worktree of the previous commit)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default results/...)")
    return ap


@dataclass(frozen=True)
class Plan:
    """The settings of one run: the options, with the defaults (full or quick) filled in."""

    device: torch.device
    quick: bool
    batch: int
    rounds: dict[str, int]  # timed rounds at most: small_cnn, resnet20, optimizer_only
    warmup_opt: int  # warm-up rounds, optimizer-only (the whole-update section runs one)
    min_rounds: int
    search_every: int
    budget_s: float
    alpha_every: int
    seed: int
    out: Path
    floor_only: bool = False
    baseline_src: Path | None = None

    def share(self, section: str) -> float:
        """Seconds of the budget for a timing section (the rest: parity and memory)."""
        if self.floor_only:
            return {"floor": 0.9}.get(section, 0.0) * self.budget_s
        shares = {"opt": 0.12, "floor": 0.1, "small_cnn": 0.23, "resnet20": 0.47}
        return shares[section] * self.budget_s


def make_plan(args: argparse.Namespace) -> Plan:
    q = args.quick
    device = torch.device(args.device)
    return Plan(
        device=device,
        quick=q,
        batch=args.batch or (32 if q else 128),
        rounds={
            "small_cnn": args.rounds_small or (3 if q else 100),
            "resnet20": args.rounds_resnet20 or (2 if q else 80),
            "optimizer_only": args.rounds_opt or (3 if q else 60),
        },
        warmup_opt=1 if q else 2,
        min_rounds=2 if q else 5,
        search_every=args.search_every_rounds or (1 if q else 4),
        budget_s=60.0 * (args.budget_min or (0.75 if q else 9.0)),
        alpha_every=args.alpha_every,
        seed=args.seed,
        out=args.out
        or Path(__file__).resolve().parent / "results" / f"optimizer_{device.type}.json",
        floor_only=args.floor_only,
        baseline_src=args.baseline_src,
    )


def settings_record(plan: Plan) -> dict[str, Any]:
    """``settings`` of the JSON."""
    return {
        "budget_s": plan.budget_s,
        "max_rounds": dict(plan.rounds),
        "min_rounds": plan.min_rounds,
        "search_every_rounds": plan.search_every,
        "rho": RHO,
        "fixed_alpha": FIXED_ALPHA,
        "base": {"class": "torch.optim.SGD", **BASE_KW},
        "dtype": "float32",
        "batch": plan.batch,
        "alpha_grid_size": len(xsam.DEFAULT_ALPHA_GRID),
    }


def run_opt_only(plan: Plan) -> list[dict[str, Any]]:
    results = []
    for name, in_ch, factor, weight in OPT_ONLY_SETS:
        schedule = Schedule(
            rounds=plan.rounds["optimizer_only"] * factor,
            warmup=plan.warmup_opt,
            min_rounds=plan.min_rounds,
            budget_s=plan.share("opt") * weight,
        )
        results.append(bench_opt_only(name, in_ch, schedule, plan.device, plan.seed))
    return results


def run_floor(plan: Plan) -> list[dict[str, Any]]:
    baseline = load_baseline(plan.baseline_src) if plan.baseline_src else None
    results = []
    for name, in_ch, factor, weight in OPT_ONLY_SETS:
        schedule = Schedule(
            rounds=plan.rounds["optimizer_only"] * factor,
            warmup=plan.warmup_opt,
            min_rounds=plan.min_rounds,
            budget_s=plan.share("floor") * weight,
        )
        results.append(bench_floor(name, in_ch, schedule, plan.device, plan.seed, baseline))
    return results


def run_updates(plan: Plan) -> list[dict[str, Any]]:
    results = []
    for name, in_ch, size in UPDATE_MODELS:
        schedule = Schedule(
            rounds=plan.rounds[name],
            warmup=1,
            min_rounds=plan.min_rounds,
            budget_s=plan.share(name),
        )
        results.append(
            bench_updates(
                name,
                in_ch,
                size,
                plan.batch,
                schedule,
                plan.alpha_every,
                plan.search_every,
                plan.device,
                plan.seed,
            )
        )
    return results


def run_sections(plan: Plan, res: dict[str, Any]) -> None:
    """The measurements, in order, each into its key of ``res``."""
    if plan.floor_only:
        log("optimizer-only time against the copy floor ...")
        res["floor"] = run_floor(plan)
        return
    log("parity check: xsam.XSAM vs PlainXSAM ...")
    res["parity"] = check_parity(plan.device, plan.seed, plan.quick)
    log("optimizer-only timing ...")
    res["opt_only"] = run_opt_only(plan)
    log("optimizer-only time against the copy floor ...")
    res["floor"] = run_floor(plan)
    log("memory ...")
    res["memory"] = bench_memory("resnet18", 3, plan.device, plan.seed)
    log("whole-update timing ...")
    res["updates"] = run_updates(plan)


def summary(res: dict[str, Any]) -> dict[str, bool]:
    """Met / not met per target, over every model or parameter set it applies to."""
    if "updates" not in res:  # --floor-only
        return {}
    updates = res["updates"]
    return {
        "update_ratio_met": all(u["met_update"] for u in updates),
        "epoch_ratio_met": all(u["met_epoch"] for u in updates),
        "update_ratio_met_decomposed": all(u["decomposed"]["met_update"] for u in updates),
        "epoch_ratio_met_decomposed": all(u["decomposed"]["met_epoch"] for u in updates),
        "optimizer_only_speedup_met_resnet18": res["opt_only"][0]["met"],
        "memory_met": all(r["met"] for r in res["memory"]["rows"]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    plan = make_plan(args)
    if plan.device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = False

    t0 = time.perf_counter()
    res: dict[str, Any] = {"machine": machine_info(plan.device), "quick": plan.quick}
    res["settings"] = settings_record(plan)
    res["targets"] = dict(TARGETS)
    run_sections(plan, res)
    res["machine"]["loadavg_end"] = loadavg()
    res["wall_s"] = time.perf_counter() - t0
    res["summary"] = summary(res)
    md = render(res)
    res["markdown"] = md
    plan.out.parent.mkdir(parents=True, exist_ok=True)
    plan.out.write_text(json.dumps(_finite(res), indent=1, default=_json_default) + "\n")
    print(md)
    log(f"\nwrote {plan.out} ({res['wall_s']:.0f}s)")
    return 0


def _finite(o: Any) -> Any:
    """``o`` with every non-finite float written as a string ("nan", "inf"): JSON has no NaN,
    and ``json.dumps`` hands floats to no ``default`` hook."""
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _json_default(o: Any) -> Any:
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


if __name__ == "__main__":
    raise SystemExit(main())
