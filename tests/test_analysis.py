"""Tests of xsam.analysis: closed forms on quadratics, brute force in low dimension, independent
re-computation of every candidate direction, and the sandbox contract (weights, statistics,
gradients, modes and RNG untouched)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xsam
from xsam.analysis import (
    claims_summary,
    cosine_record,
    hessian_top_eigenvalue,
    plane_landscape,
    plot_cosines,
    plot_plane_landscape,
    probe_directions,
    probe_many,
    sphere_maximum,
    worst_case_sharpness,
)

DT = torch.float64
EPS = 1e-12


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # these models are tiny: thread start-up and contention on a shared CPU would dominate
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------- problems
class Quadratic(nn.Module):
    """L(θ) = ½θᵀAθ − bᵀθ with θ split over two tensors (norms must be global)."""

    def __init__(self, A: np.ndarray, b: np.ndarray, theta: np.ndarray) -> None:
        super().__init__()
        theta = torch.tensor(theta, dtype=DT)
        self.p1 = nn.Parameter(theta[:1].clone())
        self.p2 = nn.Parameter(theta[1:].clone().reshape(-1, 1))
        self.register_buffer("A", torch.tensor(A, dtype=DT))
        self.register_buffer("b", torch.tensor(b, dtype=DT))

    def forward(self) -> torch.Tensor:
        th = torch.cat([self.p1, self.p2.reshape(-1)])
        return 0.5 * th @ self.A @ th - self.b @ th


def quad_loss(model: Quadratic) -> torch.Tensor:
    return model()


def spd(n: int, eigenvalues: list[float], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A = Q diag(eigenvalues) Qᵀ and its top eigenvector."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    ev = np.asarray(eigenvalues, dtype=float)
    return q @ np.diag(ev) @ q.T, q[:, int(np.argmax(ev))]


def quad_value(A: np.ndarray, b: np.ndarray, th: np.ndarray) -> np.ndarray:
    """L at each row of ``th``."""
    return 0.5 * np.einsum("ni,ij,nj->n", th, A, th) - th @ b


def bn_net(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(6, 3))
    model = nn.Sequential(*layers).to(DT)
    with torch.no_grad():  # non-trivial running statistics, so that "unchanged" means something
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].num_batches_tracked.fill_(7)
    return model


def bn_loss(seed: int = 1, n: int = 12):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=DT)
    y = torch.randint(0, 3, (n,), generator=g)
    return lambda model: F.cross_entropy(model(x), y)


# ---------------------------------------------------------------------------------- references
def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def ref_loss_grad(model: nn.Module, loss_fn, point: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Loss and gradient at ``point``, by hand: train mode, statistics frozen, weights restored."""
    saved = flat_params(model).clone()
    torch.nn.utils.vector_to_parameters(point, model.parameters())
    was = model.training
    model.train()
    try:
        with xsam.frozen_norm_stats(model):
            loss = loss_fn(model)
            grads = torch.autograd.grad(loss, list(model.parameters()))
    finally:
        torch.nn.utils.vector_to_parameters(saved, model.parameters())
        model.train(was)
    return float(loss.detach()), torch.cat([g.reshape(-1) for g in grads])


def ref_loss(model: nn.Module, loss_fn, point: torch.Tensor) -> float:
    return ref_loss_grad(model, loss_fn, point)[0]


def ref_xsam(model, loss_fn, rho, rho_max, k=1, grid=xsam.DEFAULT_ALPHA_GRID):
    """docs/algorithm.md §3 step by step, with the plain clamped arccos."""
    th0 = flat_params(model).clone()
    th = th0.clone()
    _, g = ref_loss_grad(model, loss_fn, th)
    for _ in range(k):
        th = th + (rho / k) * g / (g.norm() + EPS)
        _, g = ref_loss_grad(model, loss_fn, th)
    v0 = (th - th0) / ((th - th0).norm() + EPS)
    v1 = g / (g.norm() + EPS)
    psi = math.acos(max(-1.0, min(1.0, float(v0 @ v1))))
    losses = []
    for alpha in grid:
        a, b = xsam.slerp_coefficients(alpha, psi)
        losses.append(ref_loss(model, loss_fn, th0 + rho_max * (a * v0 + b * v1)))
    best = int(np.argmax(losses))  # first maximum = smallest α
    a, b = xsam.slerp_coefficients(grid[best], psi)
    return {"g_k": g, "v0": v0, "v1": v1, "psi": psi, "alpha": grid[best], "v": a * v0 + b * v1}


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "modes": [m.training for m in model.modules()],
        "rng": torch.get_rng_state(),
    }


def assert_untouched(model: nn.Module, snap: dict) -> None:
    state = model.state_dict()
    assert state.keys() == snap["state"].keys()
    for k, v in snap["state"].items():
        assert torch.equal(state[k], v), f"{k} changed"  # bit for bit (BN buffers included)
    for p, g in zip(model.parameters(), snap["grads"]):
        assert (p.grad is None) == (g is None) and (g is None or torch.equal(p.grad, g))
    assert [m.training for m in model.modules()] == snap["modes"]
    assert torch.equal(torch.get_rng_state(), snap["rng"])


# ---------------------------------------------------------------------------------- vectors
def test_flat_vector_helpers_round_trip():
    from xsam.analysis.vectors import add_flat_, get_flat, set_flat_, trainable_parameters

    model = bn_net()
    params = trainable_parameters(model)
    v = get_flat(params)
    assert v.dtype == DT and v.numel() == sum(p.numel() for p in params)
    torch.testing.assert_close(v, flat_params(model), rtol=0, atol=0)
    add_flat_(params, torch.ones_like(v), alpha=0.5)
    torch.testing.assert_close(get_flat(params), v + 0.5, rtol=0, atol=0)
    set_flat_(params, v)
    assert torch.equal(get_flat(params), v)
    with pytest.raises(ValueError, match="must be 1-D with 63 elements"):
        set_flat_(params, v[:-1])


# ---------------------------------------------------------------------------------- sharpness
def test_hessian_top_eigenvalue_quadratic():
    A, _ = spd(7, [6.0, 3.0, 2.0, 1.0, 0.5, 0.1, -1.0], seed=0)
    model = Quadratic(A, np.zeros(7), np.random.default_rng(1).standard_normal(7))
    out = hessian_top_eigenvalue(model, quad_loss, iters=500, tol=1e-12)
    top = np.linalg.eigvalsh(A).max()
    assert out["converged"] and out["iterations"] < 500
    assert abs(out["eigenvalue"] - top) <= 1e-6 * top
    assert out["residual"] < 1e-3
    json.dumps(out)


def test_hessian_top_eigenvalue_when_a_negative_eigenvalue_dominates():
    A, _ = spd(5, [2.0, 1.0, 0.5, -1.0, -5.0], seed=6)
    model = Quadratic(A, np.ones(5), np.zeros(5))
    out = hessian_top_eigenvalue(model, quad_loss, iters=2000, tol=1e-13)
    assert abs(out["dominant_eigenvalue"] + 5.0) <= 1e-6 * 5.0
    assert abs(out["eigenvalue"] - 2.0) <= 1e-6 * 2.0
    assert out["converged"] and out["residual"] < 1e-3


def test_hessian_top_eigenvalue_matches_full_hessian_of_bn_net():
    model, loss_fn = bn_net(), bn_loss()
    snap = snapshot(model)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def f(vec):
        params = {n: c.view(s) for n, c, s in zip(names, vec.split(sizes), shapes)}
        with xsam.frozen_norm_stats(model):
            return loss_fn(lambda x: torch.func.functional_call(model, params, (x,)))

    H = torch.autograd.functional.hessian(f, flat_params(model).clone()).numpy()
    eig = np.linalg.eigvalsh(H)
    out = hessian_top_eigenvalue(model, loss_fn, iters=3000, tol=1e-13)
    assert abs(out["eigenvalue"] - eig.max()) <= 1e-6 * abs(eig.max())
    assert_untouched(model, snap)


def test_worst_case_sharpness_quadratic_centred():
    A, _ = spd(6, [5.0, 2.0, 1.5, 1.0, 0.2, -0.5], seed=2)
    model = Quadratic(A, np.zeros(6), np.zeros(6))
    rho = 0.2
    out = worst_case_sharpness(model, quad_loss, rho=rho, n_starts=3)
    expected = 0.5 * 5.0 * rho**2
    assert out["loss"] == 0.0
    assert abs(out["increase"] - expected) <= 1e-6 * expected
    assert abs(out["direction_norm"] - rho) <= 1e-12
    assert out["skipped_starts"] == ["sam"]  # g₀ = 0 at the centre
    json.dumps(out)


def test_worst_case_sharpness_interior_maximum():
    # concave quadratic with its maximum inside the ball: the ascent must stop there
    A = -np.diag([2.0, 1.0, 3.0])
    b = np.array([0.05, -0.02, 0.03])  # maximiser A⁻¹b has norm < ρ
    model = Quadratic(A, b, np.zeros(3))
    out = worst_case_sharpness(model, quad_loss, rho=0.5, iters=200)
    star = np.linalg.solve(A, b)
    expected = float(quad_value(A, b, star[None])[0])
    assert abs(out["max_loss"] - expected) <= 1e-8
    assert out["direction_norm"] < 0.5


# ---------------------------------------------------------------------------------- sphere max
def test_sphere_maximum_pure_quadratic_is_top_eigenvector():
    A, v_max = spd(8, [4.0, 2.5, 2.0, 1.0, 0.3, 0.1, -0.4, -2.0], seed=3)
    model = Quadratic(A, np.zeros(8), np.zeros(8))
    rho_max = 0.3
    out = sphere_maximum(model, quad_loss, radius=rho_max, n_starts=3, ascent_iters=80)
    assert abs(float(out["direction"] @ torch.tensor(v_max))) >= 0.999
    expected = 0.5 * 4.0 * rho_max**2
    assert abs(out["loss"] - expected) <= 1e-6 * expected
    # the probe (degenerate here: g₀ = 0, every candidate is zero) finds the same maximum
    res = probe_directions(
        model,
        quad_loss,
        rho=0.15,
        rho_max=rho_max,
        max_steps_k=1,
        n_starts=3,
        ascent_iters=80,
        n_plane=16,
    )
    assert abs(res["u_star"]["loss"] - expected) <= 1e-6 * expected
    assert res["plane"]["degenerate"]
    assert {"g0", "g1", "xsam1"} <= set(res["u_star"]["skipped_starts"])


def test_sphere_maximum_2d_matches_brute_force():
    A = np.array([[1.0, 0.7], [0.7, -0.5]])
    b = np.array([0.4, -0.9])
    theta0 = np.array([0.3, -0.2])
    model = Quadratic(A, b, theta0)
    radius = 0.5
    start = {"x_axis": torch.tensor([1.0, 0.0], dtype=DT), "zero": torch.zeros(2, dtype=DT)}
    out = sphere_maximum(
        model, quad_loss, radius=radius, directions=start, n_starts=4, ascent_iters=100
    )
    assert [s["name"] for s in out["starts"]][:2] == ["x_axis", "random0"]
    assert out["skipped_starts"] == ["zero"]
    phi = np.linspace(0.0, 2.0 * np.pi, 2_000_001)
    u = np.stack([np.cos(phi), np.sin(phi)], 1)
    values = quad_value(A, b, theta0 + radius * u)
    best = int(np.argmax(values))
    assert abs(out["loss"] - values[best]) <= 1e-10
    assert float(out["direction"] @ torch.tensor(u[best])) >= 1 - 1e-8


def test_probe_u_star_3d_matches_brute_force():
    A = np.array([[2.0, 0.5, -0.3], [0.5, -1.0, 0.8], [-0.3, 0.8, 0.5]])
    b = np.array([0.5, -0.2, 0.9])
    theta0 = np.array([0.2, 0.1, -0.3])
    model = Quadratic(A, b, theta0)
    rho_max = 0.6
    res = probe_directions(
        model,
        quad_loss,
        rho=0.3,
        rho_max=rho_max,
        n_starts=4,
        ascent_iters=100,
        n_plane=90,
        return_vectors=True,
    )
    # brute force: a Fibonacci lattice of 400k points, refined on a local grid around the best
    n = 400_000
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    r, phi = np.sqrt(1 - z**2), np.pi * (1 + 5**0.5) * i
    u = np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)
    values = quad_value(A, b, theta0 + rho_max * u)
    best = u[int(np.argmax(values))]
    e1 = np.cross(best, [1.0, 0.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(best, e1)
    s = np.linspace(-0.01, 0.01, 801)
    cand = best + s[:, None, None] * e1 + s[None, :, None] * e2
    cand = (cand / np.linalg.norm(cand, axis=-1, keepdims=True)).reshape(-1, 3)
    values = quad_value(A, b, theta0 + rho_max * cand)
    brute = cand[int(np.argmax(values))]
    assert abs(res["u_star"]["loss"] - values.max()) <= 1e-8 * abs(values.max())
    assert float(res["vectors"]["u_star"] @ torch.tensor(brute)) >= 1 - 1e-6
    assert res["u_star"]["converged"]
    assert res["cos"]["u_star"] == 1.0
    # every candidate's reported loss is the loss at θ₀ + ρ_max·unit(candidate)
    for name, vec in res["vectors"].items():
        point = theta0 + rho_max * (vec / vec.norm()).numpy()
        assert res["loss"][name] == pytest.approx(quad_value(A, b, point[None])[0], abs=1e-12)
        assert res["loss"][name] <= res["u_star"]["loss"] + 1e-12


# ---------------------------------------------------------------------------------- candidates
def test_probe_candidates_match_independent_computation():
    model, loss_fn = bn_net(), bn_loss()
    model.eval()  # the tools run in train mode and must put eval mode back
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)  # existing gradients must survive untouched
    snap = snapshot(model)
    rho, rho_max = 0.2, 0.5
    res = probe_directions(
        model,
        loss_fn,
        rho=rho,
        rho_max=rho_max,
        max_steps_k=2,
        n_starts=1,
        ascent_iters=8,
        n_plane=12,
        return_vectors=True,
    )
    assert_untouched(model, snap)
    th0 = flat_params(model)
    vec = res["vectors"]
    _, g0 = ref_loss_grad(model, loss_fn, th0)
    torch.testing.assert_close(vec["g0"], g0, rtol=1e-12, atol=1e-14)
    _, g1 = ref_loss_grad(model, loss_fn, th0 + rho * g0 / g0.norm())
    torch.testing.assert_close(vec["g1"], g1, rtol=1e-10, atol=1e-13)
    for k in (1, 2):
        ref = ref_xsam(model, loss_fn, rho, rho_max, k=k)
        torch.testing.assert_close(vec[f"g{k}"], ref["g_k"], rtol=1e-10, atol=1e-13)
        entry = res["xsam"][k - 1]
        assert entry["alpha_star"] == ref["alpha"]
        assert entry["psi"] == pytest.approx(ref["psi"], abs=1e-9)
        torch.testing.assert_close(vec[f"xsam{k}"], ref["v"], rtol=1e-9, atol=1e-11)
    assert res["clean_loss"] == pytest.approx(ref_loss(model, loss_fn, th0), abs=1e-14)
    for name in ("g0", "g1", "xsam1", "u_star"):
        u = vec[name] / vec[name].norm()
        assert res["loss"][name] == pytest.approx(
            ref_loss(model, loss_fn, th0 + rho_max * u), abs=1e-12
        )
        c = float(u @ vec["u_star"]) / float(vec["u_star"].norm())
        assert res["cos"][name] == pytest.approx(c, abs=1e-12)
    assert res["plane_coords"]["g0"] == pytest.approx([1.0, 0.0], abs=1e-9)
    psi = res["xsam"][0]["psi"]
    assert res["plane_coords"]["g1"] == pytest.approx([math.cos(psi), math.sin(psi)], abs=1e-9)
    assert res["u_star"]["loss"] >= max(res["loss"].values()) - 1e-12
    del res["vectors"]
    json.dumps(res)
    summary = claims_summary(res)
    assert summary["claim2_cos_g1"] == res["cos"]["g1"]
    assert set(summary) >= {"claim1_g1_beats_g0", "claim3_gk_decreasing", "claim4_xsam_beats_all"}


def test_plane_landscape_reproduces_direct_evaluations():
    model, loss_fn = bn_net(seed=4), bn_loss(seed=5)
    snap = snapshot(model)
    rho, rho_max = 0.3, 0.6
    out = plane_landscape(
        model, loss_fn, rho=rho, rho_max=rho_max, extent=1.5, resolution=5, return_vectors=True
    )
    assert_untouched(model, snap)
    assert len(out["losses"]) == 5 and all(len(row) == 5 for row in out["losses"])
    assert out["coords"][0] == -1.5 and out["coords"][-1] == 1.5
    # the basis is v₀ and the Gram–Schmidt part of v₁, as computed independently
    ref = ref_xsam(model, loss_fn, rho, rho_max)
    e1, e2 = out["vectors"]["e1"], out["vectors"]["e2"]
    r = ref["v1"] - (ref["v1"] @ ref["v0"]) * ref["v0"]
    torch.testing.assert_close(e1, ref["v0"], rtol=0, atol=1e-10)  # ε vs exact norm
    torch.testing.assert_close(e2, r / r.norm(), rtol=0, atol=1e-10)
    assert abs(float(e1 @ e2)) < 1e-14 and abs(float(e2.norm()) - 1) < 1e-14
    # every grid value is the loss at θ₀ + ρ_max·(a·e₁ + b·e₂), evaluated directly
    th0 = flat_params(model)
    for i, j in [(0, 0), (2, 2), (1, 4), (4, 3)]:
        a, b = out["coords"][j], out["coords"][i]
        direct = ref_loss(model, loss_fn, th0 + (rho_max * a) * e1 + (rho_max * b) * e2)
        assert out["losses"][i][j] == pytest.approx(direct, rel=1e-12, abs=1e-12)
    assert out["losses"][2][2] == pytest.approx(out["clean_loss"], abs=1e-14)
    psi = ref["psi"]
    cand = out["candidates"]
    assert cand["g0"] == pytest.approx([1.0, 0.0], abs=1e-9)
    assert cand["g1"] == pytest.approx([math.cos(psi), math.sin(psi)], abs=1e-9)
    ap = ref["alpha"] * psi
    assert cand["xsam"] == pytest.approx([math.cos(ap), math.sin(ap)], abs=1e-9)
    assert out["alpha_star"] == ref["alpha"]
    assert out["ascent_point"] == pytest.approx([rho / rho_max, 0.0], abs=1e-9)
    del out["vectors"]
    json.dumps(out)
    extra = plane_landscape(
        model, loss_fn, rho=rho, rho_max=rho_max, resolution=2, directions={"e2": 3.0 * e2}
    )
    assert extra["candidates"]["e2"] == pytest.approx([0.0, 1.0], abs=1e-12)


TOOLS = {
    "probe": lambda m, f: probe_directions(
        m, f, rho=0.1, max_steps_k=2, n_starts=1, ascent_iters=4, n_plane=8
    ),
    "plane": lambda m, f: plane_landscape(m, f, rho=0.1, resolution=3),
    "hessian": lambda m, f: hessian_top_eigenvalue(m, f, iters=5),
    "worst_case": lambda m, f: worst_case_sharpness(m, f, rho=0.1, iters=4, n_starts=1),
    "sphere": lambda m, f: sphere_maximum(m, f, radius=0.2, n_starts=1, ascent_iters=4),
}


@pytest.mark.parametrize("tool", list(TOOLS))
def test_every_tool_leaves_model_and_rng_untouched_and_is_deterministic(tool):
    model, loss_fn = bn_net(seed=2, dropout=0.3), bn_loss()
    model.train()
    for p in list(model.parameters())[:2]:
        p.grad = torch.randn_like(p)
    snap = snapshot(model)
    first = TOOLS[tool](model, loss_fn)
    assert_untouched(model, snap)
    second = TOOLS[tool](model, loss_fn)
    for key in ("time_s", "direction", "delta"):
        first.pop(key, None)
        second.pop(key, None)
    assert first == second  # dropout draws the same masks at every evaluation


def test_tools_restore_weights_when_loss_fn_raises():
    model = bn_net()
    snap = snapshot(model)
    calls = []

    def flaky(m):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return bn_loss()(m)

    with pytest.raises(RuntimeError, match="boom"):
        probe_directions(model, flaky, rho=0.1, max_steps_k=2, n_plane=8)
    assert_untouched(model, snap)


def test_validation_messages():
    model, loss_fn = bn_net(), bn_loss()
    with pytest.raises(ValueError, match="rho must be finite and > 0"):
        probe_directions(model, loss_fn, rho=0.0)
    with pytest.raises(TypeError, match="loss_fn must be a callable"):
        hessian_top_eigenvalue(model, "loss")
    with pytest.raises(ValueError, match="must return a scalar"):
        worst_case_sharpness(model, lambda m: m(torch.zeros(2, 4, dtype=DT)), rho=0.1)
    with pytest.raises(RuntimeError, match="does not require grad"):
        hessian_top_eigenvalue(model, lambda m: torch.zeros((), dtype=DT))
    with pytest.raises(ValueError, match="n_plane must be >= 4"):
        probe_directions(model, loss_fn, rho=0.1, n_plane=2)


# ---------------------------------------------------------------------------------- summaries
def fake_result(cos: dict[str, float], k: int = 3) -> dict:
    return {"max_steps_k": k, "cos": cos, "loss": {n: 1.0 + c for n, c in cos.items()}}


def test_claims_summary_known_answers():
    held = fake_result(
        {
            "g0": 0.2,
            "g1": 0.5,
            "g2": 0.4,
            "g3": 0.3,
            "xsam1": 0.6,
            "xsam2": 0.45,
            "xsam3": 0.35,
            "u_star": 1.0,
        }
    )
    s = claims_summary(held)
    assert s["claim1_g1_beats_g0"] and s["claim3_gk_decreasing"] and s["claim4_xsam_beats_all"]
    assert s["claim4_xsam_k_beats_g_k"] and s["claim2_g1_far"] and s["claim2_cos_g1"] == 0.5
    assert s["claim1_g1_beats_g0_by_loss"] and s["claim4_xsam_beats_all_by_loss"]
    failed = fake_result(
        {
            "g0": 0.5,
            "g1": 0.4,
            "g2": 0.45,
            "g3": 0.3,
            "xsam1": 0.44,
            "xsam2": 0.5,
            "xsam3": 0.1,
            "u_star": 1.0,
        }
    )
    s = claims_summary(failed, far_threshold=0.3)
    assert not s["claim1_g1_beats_g0"] and not s["claim3_gk_decreasing"]
    assert not s["claim4_xsam_beats_all"] and not s["claim4_xsam_k_beats_g_k"]
    assert not s["claim2_g1_far"]
    one = claims_summary(fake_result({"g0": 0.1, "g1": 0.2, "xsam1": 0.3, "u_star": 1.0}, k=1))
    assert "claim3_gk_decreasing" not in one and one["claim4_xsam_beats_all"]


def test_probe_many_mean_std_and_claim_fractions():
    model = bn_net()
    fns = [bn_loss(seed=s) for s in (1, 2)]
    out = probe_many(model, fns, rho=0.1, max_steps_k=2, n_starts=0, ascent_iters=3, n_plane=8)
    assert out["n"] == 2 and len(out["probes"]) == 2
    c = [p["cos"]["g1"] for p in out["probes"]]
    assert out["mean"]["cos.g1"] == pytest.approx(np.mean(c), abs=1e-15)
    assert out["std"]["cos.g1"] == pytest.approx(np.std(c, ddof=1), abs=1e-15)
    assert "xsam.1.alpha_star" in out["mean"] and "u_star.loss" in out["mean"]
    assert "claim1_g1_beats_g0" in out["claims"] and "cos_g1" not in out["claims"]
    assert all(0.0 <= v <= 1.0 for v in out["claims"].values())
    assert claims_summary(out["mean"])["claim2_cos_g1"] == out["mean"]["cos.g1"]
    rec = cosine_record(out, epoch=3)
    assert rec["epoch"] == 3.0 and rec["cos_g1"] == out["mean"]["cos.g1"] and "cos_g1_std" in rec
    json.dumps(out)


# ---------------------------------------------------------------------------------- plots
def test_plots_write_png(tmp_path):
    coords = list(np.linspace(-1.5, 1.5, 7))
    landscape = {
        "coords": coords,
        "losses": [[a * a + 2 * b * b for a in coords] for b in coords],
        "rho": 0.15,
        "rho_max": 0.3,
        "steps": 1,
        "alpha_star": 1.3,
        "ascent_point": [0.5, 0.0],
        "candidates": {
            "g0": [1.0, 0.0],
            "g1": [0.8, 0.6],
            "xsam": [0.6, 0.8],
            "u_star": [0.5, 0.7],
        },
    }
    png = plot_plane_landscape(landscape, tmp_path / "plane.png")
    assert png.exists() and png.stat().st_size > 1024
    records = [
        {"epoch": e, "cos_g0": 0.1 * e, "cos_g1": 0.2, "cos_xsam1": 0.3, "cos_xsam1_std": 0.05}
        for e in (3, 1, 2)
    ]
    png = plot_cosines(records, tmp_path / "cos.png")
    assert png.exists() and png.stat().st_size > 1024
