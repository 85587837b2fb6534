"""Validate the parity oracle ``tests/reference.py`` against hand-derived closed forms.

The oracle is only worth something if it is itself right, so these tests check it, in float64,
against (a) closed forms worked out by hand on a 2-D bilinear loss L(x, y) = x·y + x, where
every quantity of docs/algorithm.md §3 is a rotation by a known angle; (b) an independent NumPy
transcription of §3 on quadratics L(θ) = ½θᵀAθ − bᵀθ with the analytic gradient Aθ − b
(single tensor, split tensors, two groups, per-group ρ, ASAM geometry); (c) the identities
of §3 (α = 1 ⇒ k-step SAM bit for bit, ρ = 0 ⇒ base optimizer bit for bit, ‖d‖ = ‖g_k‖,
k = 1 & α = 0 ⇒ ‖g₁‖·g₀/‖g₀‖); (d) the α search on losses built so that the winning grid
point, a tie and NaN probes are known in advance; (e) BatchNorm running statistics.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from torch import nn

try:  # pytest's default "prepend" import mode puts tests/ on sys.path
    from reference import DEFAULT_ALPHA_GRID, reference_sam_update, reference_update
except ImportError:  # pragma: no cover - imported as a package
    from tests.reference import DEFAULT_ALPHA_GRID, reference_sam_update, reference_update

DT = torch.float64
RTOL = 1e-12
GRID = [round(i * 0.1, 10) for i in range(21)]


def noop() -> None:
    """A base optimizer that does nothing, so the parameters after the update are θ₀."""


def np_(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def flat_d(out: dict) -> np.ndarray:
    return np.concatenate([np_(t).reshape(-1) for t in out["d"] if t is not None])


# ------------------------------------------------------------------------------------------
# problems
# ------------------------------------------------------------------------------------------
def bilinear(extra=None):
    """L(x, y) = x·y + x (+ extra(θ)) at θ₀ = (0, 0): g₀ = (1, 0)."""
    theta = torch.zeros(2, dtype=DT, requires_grad=True)
    calls = []

    def loss_fn():
        calls.append(torch.is_grad_enabled())
        x, y = theta[0], theta[1]
        value = x * y + x
        if extra is not None:
            value = extra(theta, value)
        return value

    return theta, loss_fn, calls


def bilinear_grad(p):
    return np.array([p[1] + 1.0, p[0]])


class Quadratic:
    """L(θ) = ½θᵀAθ − bᵀθ with θ split into tensors of ``sizes`` placed in ``groups``."""

    def __init__(self, A, b, theta0, sizes=None, groups=None):
        self.A, self.b, self.theta0 = A, b, theta0
        n = len(theta0)
        sizes = [n] if sizes is None else sizes
        groups = [0] * len(sizes) if groups is None else groups
        self.tensors = []
        offset = 0
        for s in sizes:
            self.tensors.append(
                torch.tensor(theta0[offset : offset + s], dtype=DT).requires_grad_(True)
            )
            offset += s
        self.groups = [
            [t for t, g in zip(self.tensors, groups) if g == gi] for gi in range(max(groups) + 1)
        ]
        # the flattened order of the reference (groups, then params) must match θ's order
        order = [t for grp in self.groups for t in grp]
        assert [id(t) for t in order] == [id(t) for t in self.tensors]
        self.At = torch.tensor(A, dtype=DT)
        self.bt = torch.tensor(b, dtype=DT)
        self.calls = 0

    def loss_fn(self):
        self.calls += 1
        th = torch.cat([t.reshape(-1) for t in self.tensors])
        return 0.5 * th @ (self.At @ th) - self.bt @ th

    def theta(self):
        return np.concatenate([np_(t).reshape(-1) for t in self.tensors])


def random_quadratic(n=6, seed=0, spd=True):
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n, n))
    A = M @ M.T / n + 0.5 * np.eye(n) if spd else (M + M.T) / 2
    return A, rng.standard_normal(n), rng.standard_normal(n)


def np_xsam(A, b, theta0, rho_vec, k, alpha, rho_max_vec=None, grid=GRID, eps=1e-12, T=None):
    """docs/algorithm.md §3 transcribed in NumPy for a quadratic (analytic gradient)."""
    norm = np.linalg.norm

    def grad(th):
        return A @ th - b

    def loss(th):
        return 0.5 * th @ A @ th - b @ th

    T = np.ones_like(theta0) if T is None else T
    rho_max_vec = 2 * rho_vec if rho_max_vec is None else rho_max_vec
    th, g = theta0.copy(), grad(theta0)
    g0 = g
    for _ in range(k):
        th = th + (rho_vec / k) * T * (T * g) / (norm(T * g) + eps)
        g = grad(th)
    disp_t, gk_t = (th - theta0) / T, T * g
    v0, v1 = disp_t / (norm(disp_t) + eps), gk_t / (norm(gk_t) + eps)
    psi = np.arccos(np.clip(v0 @ v1, -1.0, 1.0))

    def v(a):
        if np.sin(psi) < 1e-8:
            return v1
        return (np.sin((1 - a) * psi) * v0 + np.sin(a * psi) * v1) / np.sin(psi)

    probes = None
    if alpha is None:
        probes = np.array([loss(theta0 + rho_max_vec * T * v(a)) for a in grid])
        alpha = grid[int(np.argmax(np.where(np.isnan(probes), -np.inf, probes)))]
    d = g.copy() if alpha == 1 else norm(gk_t) * v(alpha) / T
    return dict(d=d, psi=psi, alpha=alpha, probes=probes, theta_k=th, g0=g0, gk=g, v0=v0, v1=v1)


# ------------------------------------------------------------------------------------------
# (a) closed forms on the bilinear loss
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 1.7, 2.0])
def test_closed_form_k1(alpha):
    # θ₀ = 0, g₀ = (1, 0), ρ = 1, ε = 0: θ₁ = (1, 0), g₁ = (1, 1), v₀ = e_x, v₁ = (1, 1)/√2,
    # ψ = π/4, and v(α) is e_x rotated by απ/4, so d = √2·(cos απ/4, sin απ/4).
    theta, loss_fn, _ = bilinear()
    out = reference_update([[theta]], loss_fn, noop, rho=1.0, alpha=alpha, eps=0.0)
    phi = alpha * math.pi / 4
    assert_allclose(np_(out["theta_k"][0]), [1.0, 0.0], rtol=RTOL, atol=0)
    assert_allclose(np_(out["v0"]), [1.0, 0.0], rtol=RTOL, atol=0)
    assert_allclose(np_(out["v1"]), [2**-0.5, 2**-0.5], rtol=RTOL)
    assert out["psi"] == pytest.approx(math.pi / 4, rel=RTOL)
    assert out["loss0"] == 0.0 and out["g0_norm"] == 1.0
    assert out["gk_norm"] == pytest.approx(math.sqrt(2), rel=RTOL)
    assert_allclose(
        np_(out["d"][0]),
        math.sqrt(2) * np.array([math.cos(phi), math.sin(phi)]),
        rtol=RTOL,
        atol=1e-15,
    )
    assert out["alpha"] == alpha and out["probe_losses"] is None
    assert torch.equal(theta.detach(), torch.zeros(2, dtype=DT))  # θ₀ restored exactly


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 1.7])
def test_closed_form_k2(alpha):
    # ρ = 1, k = 2, ε = 0, by hand: θ₁ = (½, 0), g₁ = (1, ½), ‖g₁‖ = √5/2,
    # θ₂ = θ₁ + ½·g₁/‖g₁‖ = (½ + 1/√5, 1/(2√5)), g₂ = (1 + 1/(2√5), ½ + 1/√5).
    # In 2-D, v(α) is v₀ rotated by αψ towards v₁: d = ‖g₂‖·(cos(φ₀+αψ), sin(φ₀+αψ)).
    s5 = math.sqrt(5)
    theta2 = np.array([0.5 + 1 / s5, 1 / (2 * s5)])
    g2 = np.array([1 + 1 / (2 * s5), 0.5 + 1 / s5])
    phi0, phi1 = math.atan2(theta2[1], theta2[0]), math.atan2(g2[1], g2[0])
    psi = phi1 - phi0
    theta, loss_fn, _ = bilinear()
    out = reference_update([[theta]], loss_fn, noop, rho=1.0, steps=2, alpha=alpha, eps=0.0)
    assert_allclose(np_(out["theta_k"][0]), theta2, rtol=RTOL)
    assert out["psi"] == pytest.approx(psi, rel=RTOL)
    angle = phi0 + alpha * psi
    expected = np.linalg.norm(g2) * np.array([math.cos(angle), math.sin(angle)])
    assert_allclose(np_(out["d"][0]), expected, rtol=RTOL)
    assert out["gk_norm"] == pytest.approx(np.linalg.norm(g2), rel=RTOL)


# ------------------------------------------------------------------------------------------
# (b) NumPy transcription on quadratics: layouts, globality, per-group ρ
# ------------------------------------------------------------------------------------------
LAYOUTS = {
    "one_tensor": dict(sizes=None, groups=None),
    "two_tensors": dict(sizes=[2, 4], groups=[0, 0]),
    "two_groups": dict(sizes=[2, 1, 3], groups=[0, 1, 1]),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 1.7, None])
def test_matches_numpy(layout, k, alpha):
    A, b, theta0 = random_quadratic(seed=k)
    q = Quadratic(A, b, theta0, **LAYOUTS[layout])
    rho = 0.3
    out = reference_update(q.groups, q.loss_fn, noop, rho=rho, steps=k, alpha=alpha)
    ref = np_xsam(A, b, theta0, np.full(6, rho), k, alpha)
    assert_allclose(flat_d(out), ref["d"], rtol=RTOL)
    assert out["psi"] == pytest.approx(ref["psi"], rel=RTOL)
    assert out["alpha"] == ref["alpha"]
    if alpha is None:
        assert_allclose(out["probe_losses"], ref["probes"], rtol=RTOL)
    assert out["g0_norm"] == pytest.approx(np.linalg.norm(ref["g0"]), rel=RTOL)
    assert out["gk_norm"] == pytest.approx(np.linalg.norm(ref["gk"]), rel=RTOL)
    assert out["loss0"] == pytest.approx(0.5 * theta0 @ A @ theta0 - b @ theta0, rel=RTOL)
    assert_allclose(q.theta(), theta0, rtol=0, atol=0)  # θ₀ restored exactly


def test_norms_are_global():
    # Same ρ in two groups == one tensor; per-tensor normalisation would give another answer.
    A, b, theta0 = random_quadratic(seed=7)
    outs = []
    for layout in LAYOUTS.values():
        q = Quadratic(A, b, theta0, **layout)
        outs.append(flat_d(reference_update(q.groups, q.loss_fn, noop, rho=0.4, alpha=0.5)))
    for d in outs[1:]:
        assert_allclose(d, outs[0], rtol=1e-14)
    # the per-tensor alternative (normalising each of the [2, 4] pieces) differs visibly
    g0 = A @ theta0 - b
    local = np.concatenate([g0[:2] / np.linalg.norm(g0[:2]), g0[2:] / np.linalg.norm(g0[2:])])
    theta1_local = theta0 + 0.4 * local
    theta1_global = theta0 + 0.4 * g0 / np.linalg.norm(g0)
    assert np.linalg.norm(theta1_local - theta1_global) > 1e-2


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.7, None])
def test_per_group_rho_and_rho_max(k, alpha):
    A, b, theta0 = random_quadratic(seed=11)
    q = Quadratic(A, b, theta0, sizes=[2, 4], groups=[0, 1])
    rhos, rho_maxs = [0.05, 0.2], [0.3, 0.1]
    rho_vec = np.array([0.05] * 2 + [0.2] * 4)
    rho_max_vec = np.array([0.3] * 2 + [0.1] * 4)
    out = reference_update(
        q.groups, q.loss_fn, noop, rho=rhos, steps=k, alpha=alpha, rho_max=rho_maxs
    )
    ref = np_xsam(A, b, theta0, rho_vec, k, alpha, rho_max_vec=rho_max_vec)
    assert_allclose(flat_d(out), ref["d"], rtol=RTOL)
    assert_allclose(np.concatenate([np_(t) for t in out["theta_k"]]), ref["theta_k"], rtol=RTOL)
    assert out["alpha"] == ref["alpha"]
    if alpha is None:
        assert_allclose(out["probe_losses"], ref["probes"], rtol=RTOL)
    # default ρ_max = 2ρ per group
    q2 = Quadratic(A, b, theta0, sizes=[2, 4], groups=[0, 1])
    out2 = reference_update(q2.groups, q2.loss_fn, noop, rho=rhos, steps=k, alpha=None)
    ref2 = np_xsam(A, b, theta0, rho_vec, k, None)
    assert_allclose(out2["probe_losses"], ref2["probes"], rtol=RTOL)


# ------------------------------------------------------------------------------------------
# (c) identities of §3
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 4])
def test_alpha_one_is_k_step_sam_bitwise(k):
    A, b, theta0 = random_quadratic(seed=3)
    q = Quadratic(A, b, theta0, sizes=[2, 4], groups=[0, 1])
    out = reference_update(q.groups, q.loss_fn, noop, rho=[0.2, 0.5], steps=k, alpha=1.0)
    # g_k recomputed independently by autograd at the reported θ_k
    with torch.no_grad():
        for t, v in zip(q.tensors, out["theta_k"]):
            t.copy_(v)
    gk = torch.autograd.grad(q.loss_fn(), q.tensors)
    for d, g in zip(out["d"], gk):
        assert torch.equal(d, g)
    q2 = Quadratic(A, b, theta0, sizes=[2, 4], groups=[0, 1])
    sam = reference_sam_update(q2.groups, q2.loss_fn, noop, rho=[0.2, 0.5], steps=k)
    for d, d_sam in zip(out["d"], sam["d"]):
        assert torch.equal(d, d_sam)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize(("eps", "rtol"), [(0.0, RTOL), (1e-12, 1e-10)])
def test_norm_of_d_is_norm_of_gk(k, eps, rtol):
    # exact up to rounding with ε = 0; ε shrinks ‖v₀‖ to 1 − ε/‖θ_k − θ₀‖ (~3e-12 here)
    A, b, theta0 = random_quadratic(seed=5)
    for alpha in GRID:
        q = Quadratic(A, b, theta0, sizes=[2, 4], groups=[0, 1])
        out = reference_update(q.groups, q.loss_fn, noop, rho=0.3, steps=k, alpha=alpha, eps=eps)
        assert np.linalg.norm(flat_d(out)) == pytest.approx(out["gk_norm"], rel=rtol)


def test_k1_alpha0_is_sgd_plus():
    # d = ‖g₁‖·g₀/‖g₀‖; ε perturbs v₀ by ~ε/ρ relative, hence rtol 1e-10 (1e-14 with ε = 0)
    A, b, theta0 = random_quadratic(seed=9)
    for eps, rtol in [(1e-12, 1e-10), (0.0, 1e-14)]:
        q = Quadratic(A, b, theta0, sizes=[2, 4], groups=[0, 1])
        out = reference_update(q.groups, q.loss_fn, noop, rho=0.3, alpha=0.0, eps=eps)
        g0 = A @ theta0 - b
        g1 = A @ (theta0 + 0.3 * g0 / (np.linalg.norm(g0) + eps)) - b
        assert_allclose(flat_d(out), np.linalg.norm(g1) * g0 / np.linalg.norm(g0), rtol=rtol)


def tiny_bn_model(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 1)).to(DT)
    x = torch.randn(8, 3, dtype=DT)
    y = torch.randn(8, 1, dtype=DT)
    return model, x, y


def test_rho_zero_is_base_optimizer_bitwise():
    model, x, y = tiny_bn_model()
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    calls = []

    def loss_fn():
        calls.append(1)
        return nn.functional.mse_loss(model(x), y)

    for _ in range(3):
        out = reference_update(
            [list(model.parameters())],
            loss_fn,
            opt.step,
            rho=0.0,
            alpha=None,
            bn_modules=[model[1]],
        )
        opt_twin.zero_grad()
        nn.functional.mse_loss(twin(x), y).backward()
        for d, p in zip(out["d"], twin.parameters()):
            assert torch.equal(d, p.grad)  # d = g₀
        opt_twin.step()
        assert out["alpha"] is None and out["psi"] == 0.0 and out["probe_losses"] is None
    assert len(calls) == 3  # one pass per update, nothing else
    for p, p_twin in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, p_twin)
    for buf, buf_twin in zip(model.buffers(), twin.buffers()):
        assert torch.equal(buf, buf_twin)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, None])
def test_zero_gradient_gives_no_nan(k, alpha):
    q = Quadratic(np.eye(4) * 2.0, np.zeros(4), np.zeros(4), sizes=[1, 3], groups=[0, 1])
    out = reference_update(q.groups, q.loss_fn, noop, rho=0.1, steps=k, alpha=alpha)
    assert np.all(flat_d(out) == 0.0)
    assert math.isfinite(out["psi"])
    if alpha is None:
        assert out["alpha"] == 0.0  # every probe ties at L(θ₀) = 0 → smallest α
        assert out["probe_losses"] == [0.0] * 21


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.7, None])
def test_nearly_parallel_directions(alpha):
    # A = 3I: g₁ = g₀·(1 + 3ρ/‖g₀‖) ∥ g₀. With ε the unit vectors are 1 − O(ε/ρ) short, so
    # ⟨v₀,v₁⟩ ≈ 1 − 5e-12 and ψ ≈ √(1e-11) ≈ 3e-6 (the slerp, not the guard, runs); either
    # way every v(α) is v₁ to ~1e-11 and d ≈ g₁, with no NaN.
    rng = np.random.default_rng(1)
    theta0, b = rng.standard_normal(5), rng.standard_normal(5)
    q = Quadratic(3.0 * np.eye(5), b, theta0)
    out = reference_update(q.groups, q.loss_fn, noop, rho=0.2, alpha=alpha)
    g0 = 3.0 * theta0 - b
    g1 = 3.0 * (theta0 + 0.2 * g0 / (np.linalg.norm(g0) + 1e-12)) - b
    assert np.all(np.isfinite(flat_d(out)))
    assert out["psi"] < 1e-5
    assert_allclose(flat_d(out), g1, rtol=1e-10)


def test_rounding_past_one_is_clamped():
    # Parallel case with ε = 0: ⟨v₀,v₁⟩ rounds to 1 + 2.2e-16 for a fair share of seeds;
    # arccos would return NaN there without the clamp of §3 step 3.
    past_one = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        theta0, b = rng.standard_normal(5), rng.standard_normal(5)
        q = Quadratic(3.0 * np.eye(5), b, theta0)
        out = reference_update(q.groups, q.loss_fn, noop, rho=0.2, alpha=0.5, eps=0.0)
        past_one += float(torch.dot(out["v0"], out["v1"])) > 1.0
        assert math.isfinite(out["psi"]) and np.all(np.isfinite(flat_d(out)))
        assert_allclose(flat_d(out), 3.0 * (theta0 + 0.2 * out["v0"].numpy()) - b, rtol=1e-13)
    assert past_one > 0


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.7, None])
@pytest.mark.parametrize(("a", "g1"), [(3.0, 4.0), (-3.0, -2.0)])
def test_sin_psi_guard_uses_v1(alpha, a, g1):
    # One scalar parameter and ε = 0 make v₀, v₁ = ±1 exactly. L = ½aθ² + θ at θ₀ = 0, ρ = 1:
    # g₀ = 1, θ₁ = 1, g₁ = a + 1. a = 3: ψ = 0 (parallel); a = −3: ψ = π, sin ψ ≈ 1.2e-16
    # (antiparallel), where the unguarded slerp would divide by ~1e-16. Both must give d = g₁.
    theta = torch.zeros(1, dtype=DT, requires_grad=True)
    out = reference_update(
        [[theta]],
        lambda: 0.5 * a * (theta**2).sum() + theta.sum(),
        noop,
        rho=1.0,
        alpha=alpha,
        eps=0.0,
    )
    assert out["psi"] == (0.0 if a > 0 else math.pi)
    assert_allclose(np_(out["d"][0]), [g1], rtol=1e-15)


# ------------------------------------------------------------------------------------------
# (d) α search on losses with a known answer
# ------------------------------------------------------------------------------------------
# On the bilinear loss with θ₀ = 0, ρ = 1, ρ_max = 2, ε = 0: ψ = π/4 and the probe for α is the
# point 2·(cos απ/4, sin απ/4), where x·y + x = 2 sin(απ/2) + 2 cos(απ/4).
def probe_base(a):
    return 2 * math.sin(a * math.pi / 2) + 2 * math.cos(a * math.pi / 4)


@pytest.mark.parametrize("target", [0.0, 0.7, 1.0, 1.3, 2.0])
def test_search_finds_planted_maximum(target):
    # A narrow Gaussian bump of height 100 centred on the probe point for `target`; it is
    # exactly 0 (exp underflows) with zero gradient at θ₀ and θ₁, so g₀, g₁, ψ are unchanged.
    centre = 2.0 * torch.tensor(
        [math.cos(target * math.pi / 4), math.sin(target * math.pi / 4)], dtype=DT
    )

    def bump(theta, value):
        return value + 100.0 * torch.exp(-((theta - centre) ** 2).sum() / 0.03**2)

    theta, loss_fn, _ = bilinear(bump)
    out = reference_update([[theta]], loss_fn, noop, rho=1.0, alpha=None, eps=0.0)
    assert out["alpha"] == target
    assert out["psi"] == pytest.approx(math.pi / 4, rel=RTOL)
    probes = np.array(out["probe_losses"])
    expected_base = np.array([probe_base(a) for a in GRID])
    others = np.arange(21) != GRID.index(target)
    assert_allclose(probes[others], expected_base[others], rtol=1e-9, atol=1e-12)
    assert probes[GRID.index(target)] == pytest.approx(100.0 + probe_base(target), rel=1e-9)
    if target == 1.0:  # α* = 1 takes the exact k-step-SAM branch
        assert torch.equal(out["d"][0], torch.tensor([1.0, 1.0], dtype=DT))
    # an unsorted custom grid is searched in ascending order
    theta, loss_fn, _ = bilinear(bump)
    grid = [2.0, target, 0.5, 0.0] if target not in (0.0, 2.0) else [1.5, target, 0.5]
    out = reference_update([[theta]], loss_fn, noop, rho=1.0, alpha=None, eps=0.0, alpha_grid=grid)
    assert out["alpha"] == target and out["alpha_grid"] == sorted(grid)


def test_search_tie_keeps_smallest_alpha():
    # clamp(x·y + x, max=3): every grid α with base value ≥ 3 probes to exactly 3.0.
    # By hand: base(0.3) = 2.85 < 3 ≤ base(0.4) = 3.08, ..., so the first of the tie is 0.4.
    theta, loss_fn, _ = bilinear(lambda th, v: torch.clamp(v, max=3.0))
    out = reference_update([[theta]], loss_fn, noop, rho=1.0, alpha=None, eps=0.0)
    tied = [a for a, v in zip(GRID, out["probe_losses"]) if v == 3.0]
    assert len(tied) >= 5 and tied[0] == 0.4
    assert out["alpha"] == 0.4
    assert min(abs(probe_base(a) - 3.0) for a in GRID) > 1e-2  # no grid point near the edge


def test_search_ignores_nan_probes():
    # Probes whose base value exceeds 3.3 return NaN (α = 0.6 … 1.0 by hand); of the rest,
    # base(1.1) = 3.274 > base(0.5) = 3.262 > others, so α* = 1.1.
    nan = torch.tensor(float("nan"), dtype=DT)
    theta, loss_fn, _ = bilinear(lambda th, v: torch.where(v > 3.3, nan, v))
    out = reference_update([[theta]], loss_fn, noop, rho=1.0, alpha=None, eps=0.0)
    probes = np.array(out["probe_losses"])
    assert np.isnan(probes).sum() == 5
    assert out["alpha"] == 1.1
    assert np.all(np.isfinite(np_(out["d"][0])))


def test_pass_counts_and_grad_mode():
    for k, alpha, n_grad, n_nograd in [(1, 0.5, 2, 0), (3, 1.0, 4, 0), (2, None, 3, 21)]:
        theta, loss_fn, calls = bilinear()
        reference_update([[theta]], loss_fn, noop, rho=1.0, steps=k, alpha=alpha)
        assert calls == [True] * n_grad + [False] * n_nograd
    theta, loss_fn, calls = bilinear()
    reference_update([[theta]], loss_fn, noop, rho=1.0, alpha=None, alpha_grid=[0.0, 1.0, 2.0])
    assert calls == [True, True, False, False, False]


# ------------------------------------------------------------------------------------------
# (e) BatchNorm running statistics, the base step, inactive parameters, dtype
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("momentum", [0.1, None])
def test_bn_stats_only_from_clean_pass(momentum):
    model, x, y = tiny_bn_model()
    model[1].momentum = momentum
    twin = copy.deepcopy(model)
    twin(x)  # the clean forward only
    theta0 = [p.detach().clone() for p in model.parameters()]

    def loss_fn():
        return nn.functional.mse_loss(model(x), y)

    out = reference_update(
        [list(model.parameters())],
        loss_fn,
        noop,
        rho=0.5,
        steps=2,
        alpha=None,
        bn_modules=[model[1]],
    )
    assert out["probe_losses"] is not None
    for (name, buf), buf_twin in zip(model.named_buffers(), twin.buffers()):
        assert torch.equal(buf, buf_twin), name
    assert int(model[1].num_batches_tracked) == 1
    for p, p0 in zip(model.parameters(), theta0):
        assert torch.equal(p, p0)
    # teeth: without bn_modules the extra 2 + 21 passes move the statistics
    model2, _, _ = tiny_bn_model()
    model2[1].momentum = momentum
    reference_update(
        [list(model2.parameters())],
        lambda: nn.functional.mse_loss(model2(x), y),
        noop,
        rho=0.5,
        steps=2,
        alpha=None,
    )
    assert int(model2[1].num_batches_tracked) == 24
    assert not torch.equal(model2[1].running_mean, twin[1].running_mean)


def test_base_step_sees_d():
    A, b, theta0 = random_quadratic(seed=2)
    q = Quadratic(A, b, theta0, sizes=[2, 4], groups=[0, 1])
    opt = torch.optim.SGD(
        [{"params": q.groups[0]}, {"params": q.groups[1], "lr": 0.05}], lr=0.1, momentum=0.9
    )
    out = reference_update(q.groups, q.loss_fn, opt.step, rho=[0.1, 0.3], alpha=0.6)
    for t, d in zip(q.tensors, out["d"]):
        assert torch.equal(t.grad, d)
    d = flat_d(out)
    lr = np.array([0.1] * 2 + [0.05] * 4)
    assert_allclose(q.theta(), theta0 - lr * d, rtol=RTOL)


def test_inactive_and_frozen_params():
    used = torch.tensor([0.5, -1.0, 2.0], dtype=DT, requires_grad=True)
    unused = torch.tensor([3.0], dtype=DT, requires_grad=True)
    frozen = torch.tensor([4.0, 5.0], dtype=DT)
    frozen.grad = torch.tensor([7.0, 7.0], dtype=DT)
    unused.grad = torch.tensor([9.0], dtype=DT)
    A = np.diag([1.0, 2.0, 3.0])
    q = Quadratic(A, np.array([1.0, 0.0, -1.0]), np_(used))

    def loss_fn():
        return 0.5 * used @ (q.At @ used) - q.bt @ used + 0.0 * frozen.sum()

    out = reference_update([[used, unused], [frozen]], loss_fn, noop, rho=0.2, alpha=0.3)
    ref = np_xsam(A, q.b, q.theta0, np.full(3, 0.2), 1, 0.3)
    assert_allclose(np_(out["d"][0]), ref["d"], rtol=RTOL)
    assert out["d"][1] is None and out["d"][2] is None
    assert unused.grad is None and unused.item() == 3.0
    assert torch.equal(frozen.grad, torch.tensor([7.0, 7.0], dtype=DT))
    assert torch.equal(frozen, torch.tensor([4.0, 5.0], dtype=DT))


def test_float32_stays_float32():
    theta = torch.tensor([0.3, -0.2], requires_grad=True)
    out = reference_update(
        [[theta]], lambda: (theta**4).sum() + theta[0] * theta[1], noop, rho=0.1, alpha=None
    )
    assert out["d"][0].dtype == torch.float32 and theta.dtype == torch.float32
    assert np.all(np.isfinite(np_(out["d"][0])))


def test_default_grid():
    assert list(DEFAULT_ALPHA_GRID) == GRID and len(GRID) == 21 and GRID[10] == 1.0
    assert GRID == list(np.round(np.linspace(0.0, 2.0, 21), 10))


# ------------------------------------------------------------------------------------------
# adaptive (ASAM geometry, T = |θ₀| + η)
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("alpha", [0.0, 0.7, 1.0, None])
def test_adaptive_with_unit_T_is_plain(k, alpha):
    # θ₀ = 0 and η = 1 make T ≡ 1 exactly, so ASAM must reproduce the plain update bit for bit.
    outs = []
    for adaptive in (False, True):
        theta, loss_fn, _ = bilinear()
        outs.append(
            reference_update(
                [[theta]], loss_fn, noop, rho=1.0, steps=k, alpha=alpha, adaptive=adaptive, eta=1.0
            )
        )
    assert torch.equal(outs[0]["d"][0], outs[1]["d"][0])
    assert outs[0]["psi"] == outs[1]["psi"] and outs[0]["alpha"] == outs[1]["alpha"]


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("alpha", [0.0, 0.7, None])
def test_adaptive_with_constant_T_rescales_rho(k, alpha):
    # θ₀ = 0, η = c: T ≡ c, ascent steps ρ/k·c²g/(c‖g‖) = cρ/k·g/‖g‖, probes at c·ρ_max·ṽ and
    # d = c⁻¹·c‖g_k‖·ṽ: the plain update with ρ → cρ and ρ_max → cρ_max. Exact with ε = 0
    # only (‖Tg‖ + ε = c‖g‖ + ε is not c(‖g‖ + ε)).
    c = 2.0
    theta, loss_fn, _ = bilinear()
    plain = reference_update(
        [[theta]], loss_fn, noop, rho=c * 0.7, steps=k, alpha=alpha, rho_max=c * 1.1, eps=0.0
    )
    theta, loss_fn, _ = bilinear()
    asam = reference_update(
        [[theta]],
        loss_fn,
        noop,
        rho=0.7,
        steps=k,
        alpha=alpha,
        rho_max=1.1,
        adaptive=True,
        eta=c,
        eps=0.0,
    )
    assert_allclose(np_(asam["d"][0]), np_(plain["d"][0]), rtol=1e-14)
    assert asam["alpha"] == plain["alpha"]
    if alpha is None:
        assert_allclose(asam["probe_losses"], plain["probe_losses"], rtol=1e-14)


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 1.7, None])
@pytest.mark.parametrize("eta", [0.01, 0.5])
def test_adaptive_matches_numpy(k, alpha, eta):
    A, b, theta0 = random_quadratic(seed=13)
    q = Quadratic(A, b, theta0, sizes=[2, 4], groups=[0, 1])
    out = reference_update(
        q.groups, q.loss_fn, noop, rho=[0.1, 0.4], steps=k, alpha=alpha, adaptive=True, eta=eta
    )
    T = np.abs(theta0) + eta
    rho_vec = np.array([0.1] * 2 + [0.4] * 4)
    ref = np_xsam(A, b, theta0, rho_vec, k, alpha, T=T)
    assert_allclose(flat_d(out), ref["d"], rtol=RTOL)
    assert out["psi"] == pytest.approx(ref["psi"], rel=RTOL)
    assert out["alpha"] == ref["alpha"]
    if alpha is None:
        assert_allclose(out["probe_losses"], ref["probes"], rtol=RTOL)
    d = flat_d(out)
    # ‖T d‖ = ‖T g_k‖ (the adaptive analogue of ‖d‖ = ‖g_k‖; up to ε/‖T⁻¹(θ_k−θ₀)‖ ~ 1e-11)
    assert np.linalg.norm(T * d) == pytest.approx(out["gk_tnorm"], rel=1e-10)
    assert out["gk_tnorm"] == pytest.approx(np.linalg.norm(T * ref["gk"]), rel=RTOL)
    if out["alpha"] == 1.0:
        assert_allclose(d, ref["gk"], rtol=RTOL)


def test_adaptive_identities():
    A, b, theta0 = random_quadratic(seed=17)
    T = np.abs(theta0) + 0.05
    # k = 1: ṽ₀ = T⁻¹(θ₁−θ₀)/‖·‖ = T g₀/‖T g₀‖
    q = Quadratic(A, b, theta0)
    out = reference_update(q.groups, q.loss_fn, noop, rho=0.3, alpha=0.4, adaptive=True, eta=0.05)
    g0 = A @ theta0 - b
    assert_allclose(np_(out["v0"]), T * g0 / np.linalg.norm(T * g0), rtol=1e-10)
    # α = 1 ⇒ d = g_k bit for bit, also adaptive
    q = Quadratic(A, b, theta0, sizes=[3, 3], groups=[0, 1])
    out = reference_update(
        q.groups, q.loss_fn, noop, rho=0.3, steps=2, alpha=1.0, adaptive=True, eta=0.05
    )
    with torch.no_grad():
        for t, v in zip(q.tensors, out["theta_k"]):
            t.copy_(v)
    for d, g in zip(out["d"], torch.autograd.grad(q.loss_fn(), q.tensors)):
        assert torch.equal(d, g)
