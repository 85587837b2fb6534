"""The analysis tools over saved weights of one model: probe every checkpoint of a series.

:func:`probe_checkpoints` loads each saved state of a model in turn and evaluates the direction
probe (and optionally the sharpness metrics, and the plane landscape at the last one) with one
``loss_fn``; it writes ``probe.jsonl`` (after every checkpoint: an interrupted probe keeps what
it finished), ``cosines.png`` and ``plane.json`` / ``plane.png`` into a folder.
:func:`probe_lines` are the log lines of one probed checkpoint. Reading a training run folder
(its config, data, model and kept checkpoints) is :func:`xsam.train.probe.probe_run`
(``xsam probe``), which calls :func:`probe_checkpoints`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .directions import claims_summary, cosine_record, probe_directions
from .landscape import plane_landscape
from .plots import plot_cosines, plot_plane_landscape
from .sharpness import hessian_top_eigenvalue, worst_case_sharpness

__all__ = ["probe_checkpoints", "probe_lines"]


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


def probe_checkpoints(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module], torch.Tensor],
    load_state: Callable[[int], Mapping[str, Any]],
    epochs: Sequence[int],
    dest: str | Path,
    *,
    rho: float,
    rho_max: float,
    max_steps_k: int = 3,
    sharpness: bool = False,
    landscape: bool = False,
    name: str = "model",
    log: Callable[[str], None] | None = None,
    write_text: Callable[[Path, str], None] | None = None,
    **probe_kwargs: Any,
) -> list[dict[str, Any]]:
    """Probe ``model`` at every saved state; return one record per epoch.

    Args:
        model, loss_fn: the model, and its loss on a fixed batch (``loss_fn(model)``).
        load_state: ``epoch -> state_dict`` of the weights to probe.
        epochs: the epochs to probe, in this order (the landscape is taken at the last).
        dest: the output folder (created).
        rho, rho_max, max_steps_k: the probe's ρ, ρ_max and K of the k-step candidates.
        sharpness: also the Hessian's top eigenvalue and the worst-case loss increase in the
            ρ-ball.
        landscape: also the v₀–v₁ plane landscape of the last epoch (``plane.png``).
        name: what is probed, for the plot's title.
        log: called with one line per step.
        write_text: ``(path, text)``, how the files are written (default
            :meth:`pathlib.Path.write_text`; ``xsam probe`` writes atomically).
        **probe_kwargs: passed to :func:`~xsam.analysis.probe_directions`.
    """
    dest = Path(dest)
    write = write_text or (lambda path, text: path.write_text(text))
    dest.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for i, epoch in enumerate(epochs, 1):
        if log is not None:
            log(f"probing epoch {epoch} ({i}/{len(epochs)}) ...")
        model.load_state_dict(load_state(epoch))
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
        write(dest / "probe.jsonl", "".join(json.dumps(r, default=float) + "\n" for r in records))
    try:
        plot_cosines(
            [cosine_record(r["probe"], r["epoch"]) for r in records],
            dest / "cosines.png",
            title=f"{name}: cosine to u* (ρ_max = {rho_max:g})",
        )
    except ImportError as exc:
        if log is not None:
            log(f"plots skipped: {exc}")
    if landscape:
        last = epochs[-1]
        model.load_state_dict(load_state(last))
        plane = plane_landscape(model, loss_fn, rho=rho, rho_max=rho_max)
        write(dest / "plane.json", json.dumps(plane, default=float))
        try:
            plot_plane_landscape(plane, dest / "plane.png", title=f"epoch {last}")
        except ImportError as exc:
            if log is not None:
                log(f"plots skipped: {exc}")
    return records
