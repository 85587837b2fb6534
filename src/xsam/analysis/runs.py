"""The analysis tools applied to a training run folder: probe every kept checkpoint.

A run trained with ``keep_checkpoints`` (``xsam train --keep-checkpoints``) holds
``checkpoints/epochNNN.pt``. :func:`probe_run` loads each, evaluates the direction probe (and
optionally the sharpness metrics and the plane landscape) on a fixed, class-balanced subset of
the training set (no augmentation, the run's normalisation), and writes ``probe.jsonl``,
``cosines.png`` and ``plane.png`` into an output folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data import load_dataset, normalize, stratified_indices
from ..models import build_model
from ..train.checkpoint import CONFIG, atomic_write_text, load_checkpoint
from ..train.config import ConfigError, TrainConfig
from ..train.state import model_options
from .directions import claims_summary, cosine_record, probe_directions
from .landscape import plane_landscape
from .plots import plot_cosines, plot_plane_landscape
from .sharpness import hessian_top_eigenvalue, worst_case_sharpness

__all__ = ["checkpoint_paths", "probe_lines", "probe_run"]

CHECKPOINT_DIR = "checkpoints"


def checkpoint_paths(run_dir: str | Path) -> dict[int, Path]:
    """``{epoch: path}`` of the checkpoints kept in ``run_dir``."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    out = {}
    for p in sorted(folder.glob("epoch*.pt")):
        try:
            out[int(p.stem[len("epoch") :])] = p
        except ValueError:
            continue
    return out


def probe_lines(rec: dict[str, Any]) -> list[str]:
    """The log lines of one probed checkpoint (a record of :func:`probe_run`): the cosine to
    u* of every candidate g0, g1..gK, xsam1..xsamK with XSAM's α* per k, and, when measured,
    the sharpness numbers."""
    result, epoch = rec["probe"], rec["epoch"]
    ks = range(1, len(result["xsam"]) + 1)
    cos = "  ".join(f"{n} {result['cos'][n]:.3f}" for n in ["g0", *(f"g{k}" for k in ks)])
    cos += "  " + "  ".join(f"xsam{k} {result['cos'][f'xsam{k}']:.3f}" for k in ks)
    alphas = ", ".join(f"{s['alpha_star']:g}" for s in result["xsam"])
    lines = [
        f"epoch {epoch}: cos to u*  {cos}  (α* per k: {alphas}; clean loss "
        f"{result['clean_loss']:.4f}, ‖g0‖ {result['grad_norm']:.4g})"
    ]
    if "hessian" in rec:
        h, w = rec["hessian"], rec["worst_case"]
        note = "" if h["converged"] else ", not converged"
        lines.append(
            f"epoch {epoch}: Hessian λ_max {h['eigenvalue']:.4g} ({h['iterations']} iterations"
            f"{note}); worst-case loss increase in the ρ = {w['rho']:g} ball {w['increase']:.4g} "
            f"(loss {w['loss']:.4f} -> {w['max_loss']:.4f})"
        )
    return lines


def probe_run(
    run_dir: str | Path,
    *,
    epochs: Sequence[int] | None = None,
    examples: int = 250,
    rho: float | None = None,
    rho_max: float | None = None,
    max_steps_k: int = 3,
    sharpness: bool = False,
    landscape: bool = False,
    out: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    **probe_kwargs: Any,
) -> list[dict[str, Any]]:
    """Probe the kept checkpoints of a run; return one record per epoch.

    Args:
        run_dir: a run folder written by ``xsam train`` with ``keep_checkpoints``.
        epochs: which epochs (default: every kept one).
        examples: size of the fixed class-balanced training subset the losses are taken on.
        rho, rho_max: default to the run's ρ and ρ_max.
        max_steps_k: K of the k-step candidates.
        sharpness: also the Hessian's top eigenvalue and the worst-case loss increase in the
            ρ-ball.
        landscape: also the v₀–v₁ plane landscape of the last probed epoch (``plane.png``).
        out: output folder (default ``<run_dir>/probe``).
        **probe_kwargs: passed to :func:`~xsam.analysis.probe_directions`.

    Raises:
        ConfigError: not a run folder, no kept checkpoints, or an unknown epoch.
    """
    run = Path(run_dir)
    if not (run / CONFIG).is_file():
        raise ConfigError(f"{run} is not a run folder (no {CONFIG})")
    cfg = TrainConfig.from_json(run / CONFIG).validated()
    found = checkpoint_paths(run)
    if not found:
        raise ConfigError(
            f"{run} has no kept checkpoints ({CHECKPOINT_DIR}/epochNNN.pt); train it with "
            "--keep-checkpoints"
        )
    wanted = sorted(found) if epochs is None else sorted(set(epochs))
    missing = [e for e in wanted if e not in found]
    if missing:
        raise ConfigError(f"{run}: no checkpoint for epoch(s) {missing}; kept: {sorted(found)}")
    rho = cfg.rho if rho is None else rho
    rho_max = (cfg.rho_max or 2 * rho) if rho_max is None else rho_max
    if rho <= 0:
        raise ConfigError(f"rho should be > 0 for a probe but is: {rho}")

    data = load_dataset(cfg.dataset, cfg.data_dir)
    per_class = max(1, examples // data.num_classes)
    idx = stratified_indices(data.train_y, per_class, torch.Generator().manual_seed(0))
    x = normalize(data.train_x[idx].float() / 255.0, data.mean, data.std)
    y = data.train_y[idx]
    model = build_model(
        cfg.model,
        num_classes=data.num_classes,
        in_channels=data.image_shape[0],
        image_size=data.image_shape[-1],
        **model_options(cfg),
    )

    def loss_fn(m: torch.nn.Module) -> torch.Tensor:
        return F.cross_entropy(m(x), y)

    dest = Path(out) if out is not None else run / "probe"
    dest.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for i, epoch in enumerate(wanted, 1):
        if log is not None:
            log(f"probing epoch {epoch} ({i}/{len(wanted)}) ...")
        model.load_state_dict(load_checkpoint(found[epoch])["model"])
        result = probe_directions(
            model, loss_fn, rho=rho, rho_max=rho_max, max_steps_k=max_steps_k, **probe_kwargs
        )
        rec: dict[str, Any] = {"epoch": epoch, "claims": claims_summary(result), "probe": result}
        if sharpness:
            rec["hessian"] = hessian_top_eigenvalue(model, loss_fn)
            rec["worst_case"] = worst_case_sharpness(model, loss_fn, rho=rho)
        records.append(rec)
        if log is not None:
            for line in probe_lines(rec):
                log(line)
        # written after every checkpoint: an interrupted probe keeps what it finished
        atomic_write_text(
            dest / "probe.jsonl", "".join(json.dumps(r, default=float) + "\n" for r in records)
        )
    try:
        plot_cosines(
            [cosine_record(r["probe"], r["epoch"]) for r in records],
            dest / "cosines.png",
            title=f"{cfg.optimizer} on {cfg.dataset}: cosine to u* (ρ_max = {rho_max:g})",
        )
    except ImportError as exc:
        if log is not None:
            log(f"plots skipped: {exc}")
    if landscape:
        last = wanted[-1]
        model.load_state_dict(load_checkpoint(found[last])["model"])
        plane = plane_landscape(model, loss_fn, rho=rho, rho_max=rho_max)
        atomic_write_text(dest / "plane.json", json.dumps(plane, default=float))
        try:
            plot_plane_landscape(plane, dest / "plane.png", title=f"epoch {last}")
        except ImportError as exc:
            if log is not None:
                log(f"plots skipped: {exc}")
    return records
