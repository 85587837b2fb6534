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
import math
import platform
import sys
import time
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
from xsam.analysis.runs import checkpoint_paths
from xsam.data import load_dataset, normalize, stratified_indices
from xsam.models import build_model
from xsam.train import TrainConfig, load_checkpoint

CANDIDATES = ("g0", "g1", "g2", "g3", "xsam1", "xsam2", "xsam3", "plane_max")
CLAIMS = (
    ("claim1_g1_beats_g0", "1. cos(g₁, u*) > cos(g₀, u*)"),
    ("claim2_g1_far", "2. cos(g₁, u*) < 0.9 (g₁ still far from u*)"),
    ("claim3_gk_decreasing", "3. cos(g_k, u*) decreasing over k = 1, 2, 3"),
    ("claim4_xsam_beats_all", "4. cos(v(α*), u*) of 1-step XSAM ≥ max over g₀, g₁..g₃"),
    ("claim4_xsam_k_beats_g_k", "4'. for every k: cos(XSAM_k) ≥ max(cos g₀, cos g_k)"),
)


def mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    m = sum(values) / n
    return m, (math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0)


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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", default="runs/fmnist/grid")
    p.add_argument("--rho", type=float, required=True, help="the ρ of the grid's SAM-family runs")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", default="1,3,5", help="epochs of the direction probe")
    p.add_argument("--examples", type=int, default=250, help="size of the fixed loss subset")
    p.add_argument("--iters", type=int, default=20, help="trials per start of the u* ascent")
    p.add_argument("--starts", type=int, default=1, help="random starts for u* besides candidates")
    p.add_argument("--cache", default="runs/fmnist/probe_cache")
    p.add_argument("--out", default="benchmarks/results/fmnist/probe")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--only", choices=("probe", "sharpness", "plane", "summary"), default=None)
    a = p.parse_args()
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
        return 2
    first = next(iter(runs.values()))
    cfg = TrainConfig.from_json(first / "config.json").validated()
    loss_fn = Subset(cfg.dataset, a.examples)
    model = build_model(cfg.model, num_classes=loss_fn.num_classes, in_channels=loss_fn.in_channels)
    rho, rho_max = a.rho, 2 * a.rho
    tag = f"rho{a.rho:g}"

    def have(label: str, seed: int, epoch: int) -> bool:
        return (label, seed) in runs and epoch in checkpoint_paths(runs[(label, seed)])

    # 1. direction probes along the XSAM (k = 1) trajectories
    probes: dict[tuple[int, int], dict[str, Any]] = {}
    for seed in seeds:
        for epoch in epochs:
            if not have("xsam k=1", seed, epoch) or a.only not in (None, "probe", "summary"):
                continue
            path = cache / f"probe-{tag}-xsam-seed{seed}-e{epoch}.json"
            if a.only == "summary" and not path.is_file():
                continue

            def compute(seed: int = seed, epoch: int = epoch) -> dict[str, Any]:
                load_weights(model, runs[("xsam k=1", seed)], epoch)
                r = probe_directions(
                    model,
                    loss_fn,
                    rho=rho,
                    rho_max=rho_max,
                    max_steps_k=3,
                    n_starts=a.starts,
                    ascent_iters=a.iters,
                    seed=seed,
                )
                return {"probe": r, "claims": claims_summary(r)}

            probes[(seed, epoch)] = cached(path, compute)
            r = probes[(seed, epoch)]
            print(
                f"probe seed {seed} epoch {epoch}: "
                + " ".join(f"{c} {r['probe']['cos'][c]:.3f}" for c in CANDIDATES)
                + f"  ({r['wall_s']:.0f} s)",
                flush=True,
            )

    # 2. sharpness at the last epoch of every method and seed
    sharp: dict[tuple[str, int], dict[str, Any]] = {}
    for (label, seed), run in runs.items():
        if a.only not in (None, "sharpness", "summary"):
            continue
        last = max(checkpoint_paths(run), default=None)
        if last is None:
            continue
        path = cache / f"sharp-{tag}-{run.name}-e{last}.json"
        if a.only == "summary" and not path.is_file():
            continue

        def compute_sharp(run: Path = run, last: int = last, seed: int = seed) -> dict[str, Any]:
            load_weights(model, run, last)
            h = hessian_top_eigenvalue(model, loss_fn, iters=50, tol=1e-3, seed=seed)
            w = worst_case_sharpness(model, loss_fn, rho=rho, iters=20, n_starts=1, seed=seed)
            return {"epoch": last, "hessian": h, "worst_case": w}

        sharp[(label, seed)] = cached(path, compute_sharp)
        s = sharp[(label, seed)]
        print(
            f"sharpness {run.name} epoch {s['epoch']}: λ_max {s['hessian']['eigenvalue']:.3f} "
            f"worst-case increase {s['worst_case']['increase']:.5f}  ({s['wall_s']:.0f} s)",
            flush=True,
        )

    # 3. the plane landscape of XSAM seed 0 at the last probed epoch
    plane = None
    if have("xsam k=1", seeds[0], epochs[-1]) and a.only in (None, "plane", "summary"):
        path = cache / f"plane-{tag}-xsam-seed{seeds[0]}-e{epochs[-1]}.json"
        if a.only != "summary" or path.is_file():

            def compute_plane() -> dict[str, Any]:
                load_weights(model, runs[("xsam k=1", seeds[0])], epochs[-1])
                return plane_landscape(model, loss_fn, rho=rho, rho_max=rho_max, resolution=31)

            plane = cached(path, compute_plane)
            plot_plane_landscape(
                plane,
                out / "plane.png",
                title=f"XSAM seed {seeds[0]}, epoch {epochs[-1]}: loss in the v₀–v₁ plane",
            )

    summary = summarize(probes, sharp, a, cfg, rho, rho_max)
    (out / "results.json").write_text(json.dumps(summary["json"], indent=2, default=float) + "\n")
    (out / "results.md").write_text(summary["md"])
    if summary["records"]:
        plot_cosines(
            summary["records"],
            out / "cosines.png",
            title=f"XSAM runs, mean ± std over seeds: cos to u* (ρ_max = {rho_max:g})",
        )
    print(summary["md"])
    return 0


def summarize(
    probes: dict[tuple[int, int], dict[str, Any]],
    sharp: dict[tuple[str, int], dict[str, Any]],
    a: argparse.Namespace,
    cfg: TrainConfig,
    rho: float,
    rho_max: float,
) -> dict[str, Any]:
    epochs = sorted({e for _, e in probes})
    lines = [
        "# Direction probe and sharpness on the Fashion-MNIST grid runs",
        "",
        f"{cfg.dataset}, {cfg.model}; ρ = {rho:g}, ρ_max = {rho_max:g}; losses on a fixed "
        f"class-balanced subset of {a.examples} training images (no augmentation, BN statistics "
        f"frozen); u* by projected gradient ascent on the ρ_max sphere from every candidate and "
        f"{a.starts} random start(s), {a.iters} trials each. Mean ± sample std over seeds.",
        "",
    ]
    records, json_probe = [], {}
    if probes:
        lines += [
            "## cos(direction, u*) along the XSAM (k = 1) runs",
            "",
            "| epoch | seeds | " + " | ".join(CANDIDATES) + " |",
            "|---:|---:|" + "---:|" * len(CANDIDATES),
        ]
        for e in epochs:
            rs = [r for (s, ep), r in sorted(probes.items()) if ep == e]
            cos = {c: mean_std([r["probe"]["cos"][c] for r in rs]) for c in CANDIDATES}
            lines.append(
                f"| {e} | {len(rs)} | " + " | ".join(pm(cos[c]) for c in CANDIDATES) + " |"
            )
            rec: dict[str, float] = {"epoch": float(e)}
            for c in CANDIDATES:
                rec[f"cos_{c}"], rec[f"cos_{c}_std"] = cos[c]
            records.append(rec)
            json_probe[e] = {"seeds": len(rs), "cos": cos}
        lines += [
            "",
            "## Loss increase L(θ₀ + ρ_max·d) − L(θ₀) along the same runs (×10⁻³)",
            "",
            "| epoch | clean loss | " + " | ".join([*CANDIDATES, "u*"]) + " |",
            "|---:|---:|" + "---:|" * (len(CANDIDATES) + 1),
        ]
        for e in epochs:
            rs = [r["probe"] for (s, ep), r in sorted(probes.items()) if ep == e]
            clean = mean_std([r["clean_loss"] for r in rs])
            inc = {
                c: mean_std([1e3 * (r["loss"][c] - r["clean_loss"]) for r in rs])
                for c in CANDIDATES
            }
            inc["u*"] = mean_std([1e3 * r["u_star"]["increase"] for r in rs])
            lines.append(
                f"| {e} | {pm(clean, 4)} | "
                + " | ".join(pm(inc[c], 3) for c in [*CANDIDATES, "u*"])
                + " |"
            )
            json_probe[e]["loss_increase_1e3"] = inc
            json_probe[e]["alpha_star"] = [r["xsam"][0]["alpha_star"] for r in rs]
        lines += [
            "",
            "## The paper's claims: in how many probes each held (by cosine; by loss reached)",
            "",
            "| claim | " + " | ".join(f"epoch {e}" for e in epochs) + " |",
            "|---|" + "---:|" * len(epochs),
        ]
        held: dict[str, dict[int, list[int]]] = {}
        for key, text in CLAIMS:
            cells = []
            for e in epochs:
                cs = [r["claims"] for (s, ep), r in sorted(probes.items()) if ep == e]
                n_cos = sum(bool(c[key]) for c in cs)
                loss_key = key + "_by_loss"
                if loss_key in cs[0]:
                    n_loss = sum(bool(c[loss_key]) for c in cs)
                    cells.append(f"{n_cos}/{len(cs)}; {n_loss}/{len(cs)}")
                else:
                    n_loss = None
                    cells.append(f"{n_cos}/{len(cs)}")
                held.setdefault(key, {})[e] = [n_cos, n_loss if n_loss is not None else -1, len(cs)]
            lines.append(f"| {text} | " + " | ".join(cells) + " |")
        conv = [r["probe"]["u_star"] for r in probes.values()]
        lines += [
            "",
            f"u* convergence over {len(conv)} probes: stationarity (‖tangential grad‖/‖grad‖) "
            f"max {max(c['stationarity'] for c in conv):.2e}; loss spread across starts "
            f"max {max(c['rel_loss_spread'] for c in conv):.2e} (relative); "
            f"probe wall time {mean_std([r['wall_s'] for r in probes.values()])[0]:.0f} s each.",
            "",
        ]
        json_probe = {"by_epoch": json_probe, "claims_held": held}
    json_sharp = {}
    if sharp:
        labels = list(dict.fromkeys(lb for lb, _ in sharp))
        lines += [
            "## Sharpness at the last epoch",
            "",
            "| method | seeds | top Hessian eigenvalue | worst-case increase in the ρ-ball (×10⁻³) |",
            "|---|---:|---:|---:|",
        ]
        order = ["sgd", "sam k=1", "xsam k=1", "sam k=3", "xsam k=3"]
        labels.sort(key=lambda lb: (order.index(lb) if lb in order else len(order), lb))
        for lb in labels:
            ss = [s for (l2, _), s in sorted(sharp.items()) if l2 == lb]
            lam = mean_std([s["hessian"]["eigenvalue"] for s in ss])
            wc = mean_std([1e3 * s["worst_case"]["increase"] for s in ss])
            lines.append(f"| {lb} | {len(ss)} | {pm(lam, 2)} | {pm(wc, 3)} |")
            json_sharp[lb] = {"seeds": len(ss), "hessian_top": lam, "worst_case_1e3": wc}
        lines.append("")
    lines += [
        f"- command: `python {' '.join(sys.argv)}`",
        f"- machine: {platform.node()}, {platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}",
        "",
    ]
    return {
        "md": "\n".join(lines),
        "records": records,
        "json": {"rho": rho, "rho_max": rho_max, "probe": json_probe, "sharpness": json_sharp},
    }


if __name__ == "__main__":
    sys.exit(main())
