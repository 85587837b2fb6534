"""The paper's direction claims and sharpness, measured on the Fashion-MNIST grid runs (issue 4).

Reads the run folders written by ``benchmarks/run_fmnist.sh`` (trained with
``--keep-checkpoints``) and measures, on a fixed class-balanced subset of the training set:

1. the direction probe (:func:`xsam.analysis.probe_directions`, K = 3) at the kept checkpoints
   of the XSAM (k = 1) runs, every seed, at several epochs: cos(candidate, u*) and the loss
   reached at θ₀ + ρ_max·candidate for g₀, g₁..g₃ and XSAM's v(α*), and the four claims;
2. sharpness at the last epoch of every method and seed: the Hessian's top eigenvalue and the
   worst-case loss increase in the ρ-ball;
3. the v₀–v₁ plane landscape of XSAM seed 0 at the last epoch.

Every measurement is cached as one JSON file (``--cache``), so a stopped run resumes where it
was; the summary (``results.md``, ``results.json``, ``cosines.png``, ``plane.png``) is written to
``--out`` from the cache each time.

    .venv/bin/python benchmarks/probe_fmnist.py --rho 0.02 --seeds 0,1,2 --epochs 1,3,5
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from xsam.analysis import (
    claims_summary,
    hessian_top_eigenvalue,
    plane_landscape,
    plot_cosines,
    plot_plane_landscape,
    probe_directions,
    worst_case_sharpness,
)
from xsam.data import load_dataset, normalize, stratified_indices
from xsam.models import build_model
from xsam.train import TrainConfig, load_checkpoint
from xsam.train.checkpoint import run_status
from xsam.train.compare import mean_std
from xsam.train.probe import checkpoint_paths
from xsam.train.state import model_options

CANDIDATES = ("g0", "g1", "g2", "g3", "xsam1", "xsam2", "xsam3", "plane_max")
CLAIMS = (
    ("claim1_g1_beats_g0", "1. cos(g₁, u*) > cos(g₀, u*)"),
    ("claim2_g1_far", "2. cos(g₁, u*) < 0.9 (g₁ still far from u*)"),
    ("claim3_gk_decreasing", "3. cos(g_k, u*) decreasing over k = 1, 2, 3"),
    ("claim4_xsam_beats_all", "4. cos(v(α*), u*) of 1-step XSAM ≥ max over g₀, g₁..g₃"),
    ("claim4_xsam_k_beats_g_k", "4'. for every k: cos(XSAM_k) ≥ max(cos g₀, cos g_k)"),
)
Probes = dict[tuple[int, int], dict[str, Any]]  # {(seed, epoch): cached probe record}


def pm(ms: tuple[float, float], digits: int = 3) -> str:
    return f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


class Subset:
    """The fixed loss: mean cross-entropy on a class-balanced training subset (seeded)."""

    def __init__(self, dataset: str, examples: int) -> None:
        data = load_dataset(dataset)
        per_class = max(1, examples // data.num_classes)
        idx = stratified_indices(data.train_y, per_class, torch.Generator().manual_seed(0))
        self.x = normalize(data.train_x[idx].float() / 255.0, data.mean, data.std)
        self.y = data.train_y[idx]
        self.num_classes, self.in_channels = data.num_classes, data.image_shape[0]

    def __call__(self, model: torch.nn.Module) -> torch.Tensor:
        return F.cross_entropy(model(self.x), self.y)


def runs_of(grid: Path, rho: float, seeds: list[int]) -> dict[tuple[str, int], Path]:
    """``{(label, seed): run_dir}`` for SGD and every SAM-family run with this ρ."""
    found = {}
    for run in sorted(grid.iterdir()):
        if not (run / "config.json").is_file() or "-seed" not in run.name:
            continue
        cfg = TrainConfig.from_json(run / "config.json")
        if cfg.seed not in seeds or (cfg.optimizer != "sgd" and cfg.rho != rho):
            continue
        label = cfg.optimizer
        if cfg.optimizer != "sgd":
            label += f" k={cfg.steps}" + (" adaptive" if cfg.adaptive else "")
        found[(label, cfg.seed)] = run
    return found


def cached(path: Path, compute: Any) -> dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    record = compute()
    record["wall_s"] = time.perf_counter() - t0
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, default=float))
    tmp.replace(path)
    return record


def load_weights(model: torch.nn.Module, run: Path, epoch: int) -> None:
    model.load_state_dict(load_checkpoint(checkpoint_paths(run)[epoch])["model"])


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", default="runs/fmnist/grid")
    p.add_argument("--rho", type=float, required=True, help="the ρ of the grid's SAM-family runs")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", default="1,3,5", help="epochs of the direction probe")
    p.add_argument(
        "--probe-rhos",
        default=None,
        help="radii ρ of the probes and of the worst-case sharpness, ρ_max = 2ρ (default: --rho)",
    )
    p.add_argument("--examples", type=int, default=250, help="size of the fixed loss subset")
    p.add_argument("--iters", type=int, default=20, help="trials per start of the u* ascent")
    p.add_argument("--starts", type=int, default=1, help="random starts for u* besides candidates")
    p.add_argument("--cache", default="runs/fmnist/probe_cache")
    p.add_argument("--out", default="benchmarks/results/fmnist/probe")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--only",
        choices=("probe", "sharpness", "plane", "summary"),
        default=None,
        help="compute only this part; the others come from the cache (summary: nothing new)",
    )
    return p.parse_args()


@dataclass
class Context:
    """What every part of the measurement shares: the runs, the model, the loss, the paths."""

    a: argparse.Namespace
    seeds: list[int]
    epochs: list[int]
    cache: Path
    out: Path
    runs: dict[tuple[str, int], Path]
    cfg: TrainConfig
    loss_fn: Subset
    model: torch.nn.Module
    radii: list[float]
    tag: str

    def have(self, label: str, seed: int, epoch: int) -> bool:
        return (label, seed) in self.runs and epoch in checkpoint_paths(self.runs[(label, seed)])

    def cached_only(self, part: str) -> bool:
        """Parts not asked for by --only are read from the cache (so results.md stays whole)."""
        return self.a.only not in (None, part)


def make_context(a: argparse.Namespace) -> Context | None:
    """The shared context, or None (after saying so) when the grid has no matching runs."""
    if a.threads:
        torch.set_num_threads(a.threads)
    seeds = [int(s) for s in a.seeds.split(",")]
    epochs = [int(e) for e in a.epochs.split(",")]
    grid, cache, out = Path(a.grid), Path(a.cache), Path(a.out)
    cache.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    runs = runs_of(grid, a.rho, seeds)
    if not runs:
        print(f"no runs with rho={a.rho} and seeds {seeds} in {grid}", file=sys.stderr)
        return None
    first = next(iter(runs.values()))
    cfg = TrainConfig.from_json(first / "config.json").validated()
    loss_fn = Subset(cfg.dataset, a.examples)
    model = build_model(
        cfg.model,
        num_classes=loss_fn.num_classes,
        in_channels=loss_fn.in_channels,
        **model_options(cfg),  # the runs' width/depth (mlp), else their checkpoints do not fit
    )
    radii = [float(r) for r in a.probe_rhos.split(",")] if a.probe_rhos else [a.rho]
    return Context(
        a, seeds, epochs, cache, out, runs, cfg, loss_fn, model, radii, tag=f"rho{a.rho:g}"
    )


def direction_probes(ctx: Context) -> dict[float, Probes]:
    """1. direction probes along the XSAM (k = 1) trajectories, at every radius."""
    probes: dict[float, Probes] = {r: {} for r in ctx.radii}
    for radius in ctx.radii:
        for seed in ctx.seeds:
            for epoch in ctx.epochs:
                if not ctx.have("xsam k=1", seed, epoch):
                    continue
                path = ctx.cache / f"probe-{ctx.tag}-at{radius:g}-xsam-seed{seed}-e{epoch}.json"
                if ctx.cached_only("probe") and not path.is_file():
                    continue
                rec = probes[radius][(seed, epoch)] = cached(
                    path, lambda s=seed, e=epoch, r=radius: _probe(ctx, s, e, r)
                )
                print(
                    f"probe ρ={radius:g} seed {seed} epoch {epoch}: "
                    + " ".join(f"{c} {rec['probe']['cos'][c]:.3f}" for c in CANDIDATES)
                    + f"  ({rec['wall_s']:.0f} s)",
                    flush=True,
                )
    return probes


def _probe(ctx: Context, seed: int, epoch: int, r: float) -> dict[str, Any]:
    load_weights(ctx.model, ctx.runs[("xsam k=1", seed)], epoch)
    res = probe_directions(
        ctx.model,
        ctx.loss_fn,
        rho=r,
        rho_max=2 * r,
        max_steps_k=3,
        n_starts=ctx.a.starts,
        ascent_iters=ctx.a.iters,
        seed=seed,
    )
    return {"probe": res, "claims": claims_summary(res)}


def sharpness(ctx: Context) -> dict[tuple[str, int], dict[str, Any]]:
    """2. sharpness at the last epoch of every method and seed."""
    sharp: dict[tuple[str, int], dict[str, Any]] = {}
    for (label, seed), run in ctx.runs.items():
        if run_status(run)[0] != "complete":
            continue  # only finished runs: their last epoch is the one every method shares
        last = max(checkpoint_paths(run), default=None)
        if last is None:
            continue
        at = ",".join(f"{r:g}" for r in ctx.radii)
        path = ctx.cache / f"sharp-{run.name}-e{last}-at{at}.json"
        if ctx.cached_only("sharpness") and not path.is_file():
            continue
        s = sharp[(label, seed)] = cached(
            path, lambda run=run, last=last, seed=seed: _sharpness(ctx, run, last, seed)
        )
        print(
            f"sharpness {run.name} epoch {s['epoch']}: λ_max {s['hessian']['eigenvalue']:.3f} "
            + " ".join(
                f"worst-case increase at {r} {w['increase']:.5f}"
                for r, w in s["worst_case"].items()
            )
            + f"  ({s['wall_s']:.0f} s)",
            flush=True,
        )
    return sharp


def _sharpness(ctx: Context, run: Path, last: int, seed: int) -> dict[str, Any]:
    load_weights(ctx.model, run, last)
    h = hessian_top_eigenvalue(ctx.model, ctx.loss_fn, iters=50, tol=1e-3, seed=seed)
    w = {
        f"{r:g}": worst_case_sharpness(
            ctx.model, ctx.loss_fn, rho=r, iters=20, n_starts=0, seed=seed
        )
        for r in ctx.radii
    }
    return {"epoch": last, "hessian": h, "worst_case": w}


def plane(ctx: Context) -> None:
    """3. the plane landscape of XSAM seed 0 at the last probed epoch, at the largest radius."""
    big, seed, epoch = max(ctx.radii), ctx.seeds[0], ctx.epochs[-1]
    if not ctx.have("xsam k=1", seed, epoch):
        return
    path = ctx.cache / f"plane-{ctx.tag}-at{big:g}-xsam-seed{seed}-e{epoch}.json"
    if ctx.cached_only("plane") and not path.is_file():
        return

    def compute_plane() -> dict[str, Any]:
        load_weights(ctx.model, ctx.runs[("xsam k=1", seed)], epoch)
        return plane_landscape(ctx.model, ctx.loss_fn, rho=big, rho_max=2 * big, resolution=31)

    plot_plane_landscape(
        cached(path, compute_plane),
        ctx.out / "plane.png",
        title=f"XSAM (ρ={ctx.a.rho:g}) seed {seed}, epoch {epoch}: "
        f"loss in the v₀–v₁ plane at ρ = {big:g}",
    )


def write_results(
    ctx: Context,
    probes: dict[float, Probes],
    sharp: dict[tuple[str, int], dict[str, Any]],
) -> None:
    """results.md, results.json and the cosine plots in --out; results.md also printed."""
    a, out = ctx.a, ctx.out
    md, js = [_header(a, ctx.cfg)], {"train_rho": a.rho, "radii": ctx.radii, "probe": {}}
    for radius in ctx.radii:
        if probes[radius]:
            text, records, data = probe_section(probes[radius], radius, a)
            md.append(text)
            js["probe"][f"{radius:g}"] = data
            plot_cosines(
                records,
                out / f"cosines_rho{radius:g}.png",
                title=f"XSAM (ρ={a.rho:g}) runs, mean ± std over seeds: "
                f"cos to u* at ρ_max = {2 * radius:g}",
            )
    if sharp:
        text, js["sharpness"] = sharpness_section(sharp, ctx.radii)
        md.append(text)
    md.append(
        f"- command: `python {' '.join(sys.argv)}`\n"
        f"- machine: {platform.node()}, {platform.machine()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}\n"
    )
    (out / "results.md").write_text("\n".join(md))
    (out / "results.json").write_text(json.dumps(js, indent=2, default=float) + "\n")
    print("\n".join(md))


def main() -> int:
    ctx = make_context(parse_args())
    if ctx is None:
        return 2
    probes = direction_probes(ctx)
    sharp = sharpness(ctx)
    plane(ctx)
    write_results(ctx, probes, sharp)
    return 0


def _header(a: argparse.Namespace, cfg: TrainConfig) -> str:
    return (
        "# Direction probe and sharpness on the Fashion-MNIST grid runs\n\n"
        f"{cfg.dataset}, {cfg.model}, runs trained with ρ = {a.rho:g}. Losses on a fixed "
        f"class-balanced subset of {a.examples} training images (no augmentation, BN statistics "
        f"frozen); u* by projected gradient ascent on the ρ_max sphere from every candidate and "
        f"{a.starts} random start(s), {a.iters} trials each. Mean ± sample std over seeds.\n"
    )


def probe_section(
    probes: Probes, radius: float, a: argparse.Namespace
) -> tuple[str, list[dict[str, float]], dict[str, Any]]:
    epochs = sorted({e for _, e in probes})
    lines = [f"## Probe radius ρ = {radius:g}, ρ_max = {2 * radius:g}", ""]
    cos_lines, records, by_epoch = _cos_table(probes, epochs)
    claim_lines, held = _claims_table(probes, epochs)
    lines += cos_lines + _loss_table(probes, epochs, by_epoch) + claim_lines
    conv = [r["probe"]["u_star"] for r in probes.values()]
    walls = [r["wall_s"] for r in probes.values()]
    lines += [
        "",
        f"u* convergence over {len(conv)} probes: stationarity (‖tangential grad‖/‖grad‖) "
        f"max {max(c['stationarity'] for c in conv):.2e}; relative loss spread across starts "
        f"max {max(c['rel_loss_spread'] for c in conv):.2e}; wall time "
        f"{sum(walls) / len(walls):.0f} s per probe.",
        "",
    ]
    return "\n".join(lines), records, {"by_epoch": by_epoch, "claims_held": held}


def _cos_table(
    probes: Probes, epochs: list[int]
) -> tuple[list[str], list[dict[str, float]], dict[int, dict[str, Any]]]:
    """The cos(candidate, u*) table, its plot records and the per-epoch summary it starts."""
    lines = [
        "cos(direction, u*) along the XSAM (k = 1) runs:",
        "",
        "| epoch | seeds | " + " | ".join(CANDIDATES) + " |",
        "|---:|---:|" + "---:|" * len(CANDIDATES),
    ]
    records, by_epoch = [], {}
    for e in epochs:
        rs = [r for (_, ep), r in sorted(probes.items()) if ep == e]
        cos = {c: mean_std([r["probe"]["cos"][c] for r in rs]) for c in CANDIDATES}
        lines.append(f"| {e} | {len(rs)} | " + " | ".join(pm(cos[c]) for c in CANDIDATES) + " |")
        rec: dict[str, float] = {"epoch": float(e)}
        for c in CANDIDATES:
            rec[f"cos_{c}"], rec[f"cos_{c}_std"] = cos[c]
        records.append(rec)
        by_epoch[e] = {"seeds": len(rs), "cos": cos}
    return lines, records, by_epoch


def _loss_table(
    probes: Probes, epochs: list[int], by_epoch: dict[int, dict[str, Any]]
) -> list[str]:
    """The loss-increase table; adds its numbers to ``by_epoch``."""
    lines = [
        "",
        "Loss increase L(θ₀ + ρ_max·d) − L(θ₀), ×10⁻³:",
        "",
        "| epoch | clean loss | " + " | ".join([*CANDIDATES, "u*"]) + " | α* (XSAM k=1) |",
        "|---:|---:|" + "---:|" * (len(CANDIDATES) + 2),
    ]
    for e in epochs:
        rs = [r["probe"] for (_, ep), r in sorted(probes.items()) if ep == e]
        clean = mean_std([r["clean_loss"] for r in rs])
        inc = {
            c: mean_std([1e3 * (r["loss"][c] - r["clean_loss"]) for r in rs]) for c in CANDIDATES
        }
        inc["u*"] = mean_std([1e3 * r["u_star"]["increase"] for r in rs])
        alphas = [r["xsam"][0]["alpha_star"] for r in rs]
        lines.append(
            f"| {e} | {pm(clean, 4)} | "
            + " | ".join(pm(inc[c], 3) for c in [*CANDIDATES, "u*"])
            + f" | {', '.join(f'{x:g}' for x in alphas)} |"
        )
        by_epoch[e].update(clean_loss=clean, loss_increase_1e3=inc, alpha_star=alphas)
    return lines


def _claims_table(probes: Probes, epochs: list[int]) -> tuple[list[str], dict[str, list[int]]]:
    """The table of how often each claim held, and those counts."""
    lines = [
        "",
        "The paper's claims: in how many probes each held (by cosine; by the loss reached):",
        "",
        "| claim | " + " | ".join(f"epoch {e}" for e in epochs) + " | all |",
        "|---|" + "---:|" * (len(epochs) + 1),
    ]
    held: dict[str, list[int]] = {}
    for key, text in CLAIMS:
        cells, tot = [], [0, 0, 0]
        for e in epochs:
            cs = [r["claims"] for (_, ep), r in sorted(probes.items()) if ep == e]
            n_cos = sum(bool(c[key]) for c in cs)
            lk = key + "_by_loss"
            n_loss = sum(bool(c[lk]) for c in cs) if lk in cs[0] else None
            cells.append(
                f"{n_cos}/{len(cs)}" + (f"; {n_loss}/{len(cs)}" if n_loss is not None else "")
            )
            tot = [tot[0] + n_cos, tot[1] + (n_loss or 0), tot[2] + len(cs)]
        has_loss = key + "_by_loss" in next(iter(probes.values()))["claims"]
        cells.append(f"{tot[0]}/{tot[2]}" + (f"; {tot[1]}/{tot[2]}" if has_loss else ""))
        held[key] = tot if has_loss else [tot[0], tot[2]]
        lines.append(f"| {text} | " + " | ".join(cells) + " |")
    return lines, held


def sharpness_section(
    sharp: dict[tuple[str, int], dict[str, Any]], radii: list[float]
) -> tuple[str, dict[str, Any]]:
    order = ["sgd", "sam k=1", "xsam k=1", "sam k=3", "xsam k=3"]
    labels = sorted(
        dict.fromkeys(lb for lb, _ in sharp),
        key=lambda lb: (order.index(lb) if lb in order else len(order), lb),
    )
    lines = [
        "## Sharpness at the last epoch",
        "",
        "| method | seeds | top Hessian eigenvalue | "
        + " | ".join(f"worst-case increase, ρ = {r:g} (×10⁻³)" for r in radii)
        + " |",
        "|---|---:|---:|" + "---:|" * len(radii),
    ]
    data = {}
    for lb in labels:
        ss = [s for (l2, _), s in sorted(sharp.items()) if l2 == lb]
        lam = mean_std([s["hessian"]["eigenvalue"] for s in ss])
        wc = {
            f"{r:g}": mean_std([1e3 * s["worst_case"][f"{r:g}"]["increase"] for s in ss])
            for r in radii
        }
        lines.append(
            f"| {lb} | {len(ss)} | {pm(lam, 2)} | "
            + " | ".join(pm(v, 3) for v in wc.values())
            + " |"
        )
        data[lb] = {"seeds": len(ss), "hessian_top": lam, "worst_case_1e3": wc}
    walls = [s["wall_s"] for s in sharp.values()]
    lines += ["", f"Wall time {sum(walls) / len(walls):.0f} s per run.", ""]
    return "\n".join(lines), data


if __name__ == "__main__":
    sys.exit(main())
