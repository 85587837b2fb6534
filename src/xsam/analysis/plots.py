"""PNG plots of the analysis results (matplotlib, Agg canvas; pyplot's global state is not
touched, so they are safe in scripts, notebooks and threads alike)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_plane_landscape", "plot_cosines"]

_COLORS = {
    "g0": "tab:blue",
    "g1": "tab:orange",
    "xsam": "tab:red",
    "u_star": "black",
    "plane_max": "tab:purple",
}
_LABELS = {
    "g0": "g₀ (SGD)",
    "g1": "g₁@θ₀ (SAM)",
    "xsam": "XSAM v(α*)",
    "u_star": "u* (sphere max)",
    "plane_max": "in-plane max",
}
_CYCLE = ["tab:green", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]


def _figure(figsize: tuple[float, float]) -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the plots need matplotlib: pip install 'torch-xsam[plot]' (or pip install matplotlib)"
        ) from err
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _label(name: str) -> str:
    if name in _LABELS:
        return _LABELS[name]
    if name.startswith("xsam") and name[4:].isdigit():
        return f"XSAM v(α*), k={name[4:]}"
    if name.startswith("g") and name[1:].isdigit():
        return f"g_{name[1:]}@θ₀ ({name[1:]}-step SAM)"
    return name


def _color(name: str, i: int) -> str:
    if name in _COLORS:
        return _COLORS[name]
    if name == "xsam1":
        return _COLORS["xsam"]
    return _CYCLE[i % len(_CYCLE)]


def plot_plane_landscape(
    result: dict[str, Any],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    levels: int = 30,
) -> Path:
    """Draw a :func:`~xsam.analysis.plane_landscape` result as a PNG at ``path``: filled loss
    contours over the v₀–v₁ plane (units of ρ_max), the circles ‖δ‖ = ρ and ‖δ‖ = ρ_max, θ₀ and
    the ascent point θ_k, and an arrow to each candidate direction's point θ₀ + ρ_max·unit(d)
    projected on the plane. Returns the path written."""
    import numpy as np

    coords = np.asarray(result["coords"], dtype=float)
    z = np.asarray(result["losses"], dtype=float)
    z[~np.isfinite(z)] = np.nan
    fig, ax = _figure((6.4, 5.6))
    x, y = np.meshgrid(coords, coords)
    filled = ax.contourf(x, y, z, levels=levels, cmap="viridis")
    fig.colorbar(filled, ax=ax, label="training loss (fixed batch)")
    ax.contour(x, y, z, levels=levels, colors="white", linewidths=0.3, alpha=0.4)
    t = np.linspace(0.0, 2.0 * math.pi, 361)
    ratio = result["rho"] / result["rho_max"]
    handles = []
    (h,) = ax.plot(ratio * np.cos(t), ratio * np.sin(t), "w--", lw=1.2, label="‖δ‖ = ρ")
    handles.append(h)
    (h,) = ax.plot(np.cos(t), np.sin(t), "w-", lw=1.2, label="‖δ‖ = ρ_max")
    handles.append(h)
    (h,) = ax.plot([0.0], [0.0], "wo", ms=5, mec="k", label="θ₀")
    handles.append(h)
    a, b = result.get("ascent_point", (None, None))
    if a is not None:
        (h,) = ax.plot([a], [b], "ws", ms=5, mec="k", label=f"θ_{result.get('steps', 1)}")
        handles.append(h)
    for i, (name, (ca, cb)) in enumerate(result["candidates"].items()):
        color = _color(name, i)
        ax.annotate(
            "",
            xy=(ca, cb),
            xytext=(0.0, 0.0),
            arrowprops={"arrowstyle": "-|>", "color": color, "lw": 2.0, "shrinkA": 0},
        )
        (h,) = ax.plot([], [], color=color, lw=2.0, label=_label(name))
        handles.append(h)
    ax.set_xlim(coords[0], coords[-1])
    ax.set_ylim(coords[0], coords[-1])
    ax.set_aspect("equal")
    ax.set_xlabel("along v₀  [units of ρ_max]")
    ax.set_ylabel("along v₁ ⊥ v₀  [units of ρ_max]")
    if title is None:
        title = (
            f"loss in the v₀–v₁ plane (ρ={result['rho']:g}, ρ_max={result['rho_max']:g}, "
            f"α*={result.get('alpha_star', float('nan')):g})"
        )
    ax.set_title(title, fontsize=10)
    ax.legend(handles=handles, loc="upper left", fontsize=7, framealpha=0.8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    return out


def plot_cosines(
    records: Sequence[dict[str, float]],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
    """Plot cos(candidate, u*) against epoch, one line per ``cos_<name>`` key of ``records``
    (e.g. from :func:`~xsam.analysis.cosine_record`), with a ±std band where a
    ``cos_<name>_std`` key is present. Records are sorted by ``epoch``. Returns the path."""
    if not records:
        raise ValueError("records must not be empty")
    for r in records:
        if "epoch" not in r:
            raise ValueError(f"every record needs an 'epoch' key, got keys {sorted(r)}")
    rows = sorted(records, key=lambda r: float(r["epoch"]))
    names: list[str] = []
    for r in rows:
        for key in r:
            if key.startswith("cos_") and not key.endswith("_std") and key[4:] not in names:
                names.append(key[4:])
    if not names:
        raise ValueError("records hold no 'cos_<name>' entries")
    fig, ax = _figure((6.4, 4.2))
    for i, name in enumerate(names):
        pts = [(float(r["epoch"]), float(r[f"cos_{name}"])) for r in rows if f"cos_{name}" in r]
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        color = _color(name, i)
        ax.plot(xs, ys, "o-", color=color, ms=3, label=_label(name))
        stds = [float(r.get(f"cos_{name}_std", 0.0)) for r in rows if f"cos_{name}" in r]
        if any(s > 0 for s in stds):
            lo = [y - s for y, s in zip(ys, stds)]
            hi = [y + s for y, s in zip(ys, stds)]
            ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("cos(direction, u*)")
    ax.set_title(title or "alignment with the direction to the sphere maximum u*", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    return out
