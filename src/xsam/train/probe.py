"""``xsam probe``: the analysis tools over the checkpoints a training run kept.

A run trained with ``keep_checkpoints`` (``xsam train --keep-checkpoints``) holds
``checkpoints/epochNNN.pt``. :func:`probe_run` reads the run folder (its config, data set and
model), and probes each kept checkpoint with :func:`xsam.analysis.runs.probe_checkpoints` on a
fixed, class-balanced subset of the training set (no augmentation, the run's normalisation),
writing ``probe.jsonl``, ``cosines.png`` and ``plane.png`` into an output folder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..analysis.runs import probe_checkpoints
from ..data import load_dataset, normalize, stratified_indices
from ..models import build_model
from .checkpoint import CONFIG, KEPT_DIR, atomic_write_text, load_checkpoint
from .config import ConfigError, TrainConfig
from .state import model_options

__all__ = ["checkpoint_paths", "probe_run"]


def checkpoint_paths(run_dir: str | Path) -> dict[int, Path]:
    """``{epoch: path}`` of the checkpoints kept in ``run_dir``."""
    folder = Path(run_dir) / KEPT_DIR
    out = {}
    for p in sorted(folder.glob("epoch*.pt")):
        try:
            out[int(p.stem[len("epoch") :])] = p
        except ValueError:
            continue
    return out


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
    wanted = _wanted_epochs(run, found, epochs)
    rho = cfg.rho if rho is None else rho
    rho_max = (cfg.rho_max or 2 * rho) if rho_max is None else rho_max
    if rho <= 0:
        raise ConfigError(f"rho should be > 0 for a probe but is: {rho}")
    model, loss_fn = _model_and_loss(cfg, examples)
    dest = Path(out) if out is not None else run / "probe"
    return probe_checkpoints(
        model,
        loss_fn,
        lambda epoch: load_checkpoint(found[epoch])["model"],
        wanted,
        dest,
        rho=rho,
        rho_max=rho_max,
        max_steps_k=max_steps_k,
        sharpness=sharpness,
        landscape=landscape,
        name=f"{cfg.optimizer} on {cfg.dataset}",
        log=log,
        write_text=atomic_write_text,
        **probe_kwargs,
    )


def _wanted_epochs(run: Path, found: dict[int, Path], epochs: Sequence[int] | None) -> list[int]:
    """The epochs to probe (every kept one by default), each with a kept checkpoint."""
    if not found:
        raise ConfigError(
            f"{run} has no kept checkpoints ({KEPT_DIR}/epochNNN.pt); train it with "
            "--keep-checkpoints"
        )
    wanted = sorted(found) if epochs is None else sorted(set(epochs))
    missing = [e for e in wanted if e not in found]
    if missing:
        raise ConfigError(f"{run}: no checkpoint for epoch(s) {missing}; kept: {sorted(found)}")
    return wanted


def _model_and_loss(
    cfg: TrainConfig, examples: int
) -> tuple[torch.nn.Module, Callable[[torch.nn.Module], torch.Tensor]]:
    """The run's model (untrained) and its loss on a fixed class-balanced subset of about
    ``examples`` training images, unaugmented, in the run's normalisation."""
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

    return model, loss_fn
