"""Tools that measure the claims of the XSAM paper on any model (docs/algorithm.md §7).

* :func:`probe_directions` / :func:`probe_many` — cosines between the ascent directions (g₀,
  SAM's g₁@θ₀, k-step SAM's g_k@θ₀, XSAM's v(α*)) and the direction u* to the loss maximum on
  the sphere of radius ρ_max; :func:`claims_summary` turns one probe into the four claims.
* :func:`plane_landscape` + :func:`plot_plane_landscape` — the loss over the v₀–v₁ plane.
* :func:`hessian_top_eigenvalue`, :func:`worst_case_sharpness` — sharpness metrics.
* :func:`plot_cosines` — cosine against epoch, from :func:`cosine_record` records.
* :func:`probe_checkpoints` — all of the above over a series of saved weights of one model
  (``xsam probe`` runs it on a training run's kept checkpoints: :func:`probe_run`).

Every tool takes ``model`` and ``loss_fn(model) -> scalar loss`` on a fixed batch, runs the
model in train mode with normalisation running statistics frozen and the same random numbers
at every evaluation, and leaves the weights (bit for bit), the statistics, the ``.grad``
fields, the train/eval flags and the global RNG state as it found them. Results are dicts of
plain Python values (JSON-serialisable) unless a ``return_vector(s)`` flag asks for tensors.
"""

from .directions import (
    claims_summary,
    cosine_record,
    flatten_result,
    probe_directions,
    probe_many,
    sphere_maximum,
)
from .landscape import plane_landscape
from .plots import plot_cosines, plot_plane_landscape
from .runs import probe_checkpoints
from .sharpness import hessian_top_eigenvalue, worst_case_sharpness
from .vectors import FlatModel

__all__ = [
    "FlatModel",
    "checkpoint_paths",  # xsam.train.probe's, on first use (below)
    "probe_checkpoints",
    "probe_run",  # xsam.train.probe's, on first use (below)
    "claims_summary",
    "cosine_record",
    "flatten_result",
    "hessian_top_eigenvalue",
    "plane_landscape",
    "plot_cosines",
    "plot_plane_landscape",
    "probe_directions",
    "probe_many",
    "sphere_maximum",
    "worst_case_sharpness",
]

_RUN_FOLDER_TOOLS = ("checkpoint_paths", "probe_run")


def __getattr__(name: str) -> object:
    """``checkpoint_paths`` and ``probe_run`` read training run folders: they live in
    :mod:`xsam.train.probe` and are imported from there on first use (PEP 562), so importing
    ``xsam.analysis`` does not import ``xsam.train`` (the layers: docs/architecture.md)."""
    if name in _RUN_FOLDER_TOOLS:
        from ..train import probe  # the one use of train in analysis: a lazy re-export

        return getattr(probe, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
