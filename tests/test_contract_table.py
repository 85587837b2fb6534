"""One contract, one table: every SAM-family configuration keeps the same promises.

The table is {SAM, XSAM} × {SGD, AdamW} × {plain, adaptive} × {every step full, a perturbation
schedule with LookSAM's reuse} (16 cells; XSAM searches α at every full update). Each cell
trains the shared float64 toy (tests/toy.py, with BatchNorm) for a few updates and checks:

1. the weights and normalisation statistics follow the independent reference (tests/reference.py:
   ``reference_update`` for full updates, ``reference_cheap_step`` for cheap steps,
   ``reference_reuse_vector`` for the vector a full update leaves), to float64 rounding;
2. ``step(closure)`` and the lower-level path (``clean_pass`` / ``ascent_step`` /
   ``perturbed_pass`` / ``descent_step``) give the same weights and state_dict, bit for bit;
3. the state_dict round-trips exactly, and a run resumed from it halfway continues bit for bit
   like the uninterrupted one;
4. an optimizer pickled in the layout before the split (loose counter and α-search
   attributes) loads and continues bit for bit.

Below the table, the vector kernels the cells run (``xsam.optim._kernels``), each checked
alone against its formula or the reference.
"""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from reference import (
    _gradient_pass,
    reference_cheap_step,
    reference_reuse_vector,
    reference_update,
)
from toy import data, net, same

import xsam
from xsam.optim import _kernels as kernels

N_STEPS = 4
GRID = (0.0, 0.5, 1.0, 1.5)
BASES = {
    "SGD": (torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
    "AdamW": (torch.optim.AdamW, dict(lr=0.01, weight_decay=1e-2)),
}
SCHEDULES = {"full": None, "scheduled": dict(every=2, reuse=0.5)}
TABLE = list(itertools.product(("SAM", "XSAM"), BASES, ("plain", "adaptive"), SCHEDULES))


def batch(i: int):
    return data(seed=10 + i)


def loss_of(model, i: int) -> torch.Tensor:
    x, y = batch(i)
    return F.cross_entropy(model(x), y)


def build(cls: str, base: str, geometry: str, schedule: str, model) -> xsam.SAMFamily:
    base_cls, base_kw = BASES[base]
    kw = dict(model=model, adaptive=geometry == "adaptive", schedule=SCHEDULES[schedule])
    if cls == "SAM":
        kw["rho"] = 0.5 if geometry == "adaptive" else 0.05
        return xsam.SAM(model.parameters(), base_cls, **kw, **base_kw)
    kw.update(rho=0.5 if geometry == "adaptive" else 0.1, alpha_grid=GRID, alpha_every=1)
    return xsam.XSAM(model.parameters(), base_cls, **kw, **base_kw)


def one_update(opt: xsam.SAMFamily, model, i: int, path: str) -> None:
    def closure():
        loss = loss_of(model, i)
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    if path == "closure":
        opt.step(closure)
        return
    full = opt.perturb_due
    opt.zero_grad()
    with opt.clean_pass():
        loss_of(model, i).backward()
    if full:
        for _ in range(opt.steps):
            opt.ascent_step()
            with opt.perturbed_pass():
                loss_of(model, i).backward()
    opt.descent_step(loss_fn=lambda: loss_of(model, i))


def train(cell, path: str = "closure", steps: range = range(N_STEPS), start=None):
    model, opt = start if start is not None else (net(bn=True), None)
    opt = opt or build(*cell, model)
    for i in steps:
        one_update(opt, model, i, path)
    return model, opt


def reference_run(cell) -> list[torch.Tensor]:
    """The same updates by the independent reference, on a twin of the model."""
    cls, base, geometry, schedule = cell
    twin = net(bn=True)
    params = list(twin.parameters())
    base_cls, base_kw = BASES[base]
    opt = build(*cell, net(bn=True))  # only to read the settings the cell uses
    group = opt.param_groups[0]
    every = SCHEDULES[schedule]["every"] if SCHEDULES[schedule] else 1
    reuse = SCHEDULES[schedule]["reuse"] if SCHEDULES[schedule] else 0.0
    ref_base = base_cls(params, **base_kw)
    bn = [twin[1]]
    v = None
    for i in range(N_STEPS):
        loss_fn = lambda i=i: loss_of(twin, i)  # noqa: E731
        if i % every:
            reference_cheap_step(params, loss_fn, ref_base.step, v, reuse)
            continue
        g0 = _gradient_pass(loss_fn, params, bn)
        ref = reference_update(
            [params], loss_fn, ref_base.step, rho=group["rho"], steps=opt.steps,
            alpha=1.0 if cls == "SAM" else None, alpha_grid=GRID,
            adaptive=geometry == "adaptive", eta=group["eta"], bn_modules=bn,
        )  # fmt: skip
        d = torch.cat([t.reshape(-1) for t in ref["d"]])
        parallel = cls == "XSAM" and (ref["alpha"] == 0.0 or math.sin(ref["psi"]) < 1e-8)
        v = reference_reuse_vector(d, g0, parallel=parallel)
    return [t.detach() for t in twin.state_dict().values()]


def ids(cell) -> str:
    return "-".join(cell)


@pytest.mark.parametrize("cell", TABLE, ids=ids)
def test_each_cell_follows_the_independent_reference(cell):
    model, opt = train(cell)
    assert opt.step_index == N_STEPS and opt.skipped_updates == 0
    assert opt.cheap_updates == (N_STEPS // 2 if cell[3] == "scheduled" else 0)
    for got, want in zip(model.state_dict().values(), reference_run(cell), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("cell", TABLE, ids=ids)
def test_each_cell_closure_and_lower_level_paths_agree_bit_for_bit(cell):
    model, opt = train(cell, "closure")
    other, other_opt = train(cell, "lower level")
    assert same(model.state_dict(), other.state_dict())
    assert same(opt.state_dict(), other_opt.state_dict())


@pytest.mark.parametrize("cell", TABLE, ids=ids)
def test_each_cell_state_dict_round_trips_and_resumes_bit_for_bit(cell):
    model, opt = train(cell)
    half_model, half_opt = train(cell, steps=range(N_STEPS // 2))
    saved_model = copy.deepcopy(half_model.state_dict())
    saved = copy.deepcopy(half_opt.state_dict())
    fresh_model = net(seed=5, bn=True)  # other weights: everything must come from the files
    fresh_model.load_state_dict(saved_model)
    fresh = build(*cell, fresh_model)
    fresh.load_state_dict(copy.deepcopy(saved))
    assert same(fresh.state_dict(), saved)
    resumed, resumed_opt = train(
        cell, steps=range(N_STEPS // 2, N_STEPS), start=(fresh_model, fresh)
    )
    assert same(resumed.state_dict(), model.state_dict())
    assert same(resumed_opt.state_dict(), opt.state_dict())


def _as_previous_layout(state: dict) -> dict:
    """An optimizer's pickled state as the layout before the counters and XSAM's α search
    became one object each wrote it (loose attributes)."""
    state = dict(state)
    state.update(state.pop("_counters").to_dict())
    search = state.pop("_alpha_search", None)
    if search is not None:
        state.update(
            _auto=search.auto, _alpha=search.alpha, alpha_grid=search.grid,
            alpha_every=search.every, _searched=search.searched,
            _since_search=search.since_search, _search_requested=search.requested,
            _searched_now=search.found_now, last_probe_losses=search.probe_losses,
        )  # fmt: skip
    return state


@pytest.mark.parametrize("cell", TABLE, ids=ids)
def test_each_cell_pickled_in_the_previous_layout_loads_and_continues_bit_for_bit(cell):
    model, opt = train(cell)
    half_model, half_opt = train(cell, steps=range(N_STEPS // 2))
    twin_model, twin_opt = copy.deepcopy((half_model, half_opt))
    old = object.__new__(type(twin_opt))
    old.__setstate__(_as_previous_layout(twin_opt.__getstate__()))
    assert (old.updates, old.skipped_updates, old.cheap_updates, old.step_index) == (
        half_opt.updates, half_opt.skipped_updates, half_opt.cheap_updates, half_opt.step_index
    )  # fmt: skip
    assert same(old.state_dict(), half_opt.state_dict())
    resumed, resumed_opt = train(cell, steps=range(N_STEPS // 2, N_STEPS), start=(twin_model, old))
    assert same(resumed.state_dict(), model.state_dict())
    assert same(resumed_opt.state_dict(), opt.state_dict())


# ------------------------------------------------------------------ the kernels, alone
def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def _tensors(seed: int):
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (5,), (2, 2, 2)]
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]


@pytest.mark.parametrize("form", ["one rho", "per-tensor rho", "adaptive"])
def test_the_ascent_kernel_is_the_formula(form):
    params, grads = _tensors(1), _tensors(2)
    theta, g = _flat(params), _flat(grads)
    rho = [0.1, 0.2, 0.3] if form == "per-tensor rho" else 0.1
    scale = kernels.asam_scale(params, [0.01] * 3) if form == "adaptive" else None
    norm = kernels.ascent_(params, grads, rho, scale, torch.float64)
    r = 0.1
    if form == "per-tensor rho":
        r = torch.cat(
            [torch.full((t.numel(),), v, dtype=torch.float64) for t, v in zip(params, rho)]
        )
    if form == "adaptive":
        T = theta.abs() + 0.01
        want_norm, want = (T * g).norm(), theta + r * T * T * g / ((T * g).norm() + 1e-12)
    else:
        want_norm, want = g.norm(), theta + r * g / (g.norm() + 1e-12)
    torch.testing.assert_close(norm, want_norm, rtol=1e-14, atol=0)
    torch.testing.assert_close(_flat(params), want, rtol=1e-14, atol=1e-15)


def test_the_reuse_kernels_are_the_reference():
    g0, d, g = _tensors(3), _tensors(4), _tensors(5)
    want_v = reference_reuse_vector(_flat(d), _flat(g0), parallel=False)
    kernels.orthogonal_unit_(g0, d, torch.float64)
    torch.testing.assert_close(_flat(g0), want_v, rtol=1e-13, atol=1e-15)
    flat_g = _flat(g)
    sq = flat_g.square().sum()
    kernels.add_reuse_(g, g0, 0.7, sq)
    torch.testing.assert_close(_flat(g), flat_g + 0.7 * flat_g.norm() * want_v, rtol=1e-14, atol=0)
    parallel = [t.clone() for t in d]  # d ∥ g₀: the orthogonal part is rounding noise
    kernels.orthogonal_unit_(parallel, [2.0 * t for t in parallel], torch.float64)
    assert all(bool((t == 0).all()) for t in parallel)
