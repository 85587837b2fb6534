"""Contract tests of the SAM-family optimizers: identities, closed forms, safety, state."""

from __future__ import annotations

import copy
import io
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from toy import DT, data, net

import xsam


# ---------------------------------------------------------------------------------- helpers
def make_closure(model, x, y, counter: list | None = None, guard: bool = True):
    def closure():
        if counter is not None:
            counter.append(
                [None if p.grad is None else p.grad.abs().sum().item() for p in model.parameters()]
            )
        loss = F.cross_entropy(model(x), y)
        if not guard or torch.is_grad_enabled():
            loss.backward()
        return loss

    return closure


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


class Quadratic(nn.Module):
    """L(θ) = ½θᵀAθ − bᵀθ with θ split over two tensors (so norms must be global)."""

    def __init__(self, A: np.ndarray, b: np.ndarray, theta: np.ndarray, split: int = 2):
        super().__init__()
        self.A = torch.tensor(A, dtype=DT)
        self.b = torch.tensor(b, dtype=DT)
        t = torch.tensor(theta, dtype=DT)
        self.p1 = nn.Parameter(t[:split].clone())
        self.p2 = nn.Parameter(t[split:].clone())

    def forward(self) -> torch.Tensor:
        th = torch.cat([self.p1, self.p2])
        return 0.5 * th @ self.A @ th - self.b @ th


def quad_problem(seed: int = 0, n: int = 5):
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n, n))
    A = M @ M.T + 0.5 * np.eye(n)
    b = rng.standard_normal(n)
    theta = rng.standard_normal(n)
    return A, b, theta


def quad_closure(q: Quadratic):
    def closure():
        loss = q()
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    return closure


def np_slerp_d(A, b, theta, rho, k, alpha):
    """Closed-form XSAM direction on the quadratic, by numpy."""
    eps = 1e-12
    grad = lambda t: A @ t - b  # noqa: E731
    th = theta.copy()
    for _ in range(k):
        g = grad(th)
        th = th + (rho / k) * g / (np.linalg.norm(g) + eps)
    gk = grad(th)
    v0 = (th - theta) / (np.linalg.norm(th - theta) + eps)
    v1 = gk / (np.linalg.norm(gk) + eps)
    psi = math.acos(max(-1.0, min(1.0, float(v0 @ v1))))
    if alpha == 1.0:
        return gk, psi, v0, v1
    s = math.sin(psi)
    v = v1 if s < 1e-8 else (math.sin((1 - alpha) * psi) * v0 + math.sin(alpha * psi) * v1) / s
    return np.linalg.norm(gk) * v, psi, v0, v1


def descent_grad(opt, closure, params, loss_fn=None):
    """Run one update through the low-level API but stop before the base step: return d."""
    opt.zero_grad()
    closure()
    for _ in range(opt.steps):
        opt.ascent_step()
        closure()
    assert opt.descent_direction(loss_fn)
    return [p.grad.clone() for p in params]


# ---------------------------------------------------------------------------------- identities
@pytest.mark.parametrize("k", [1, 2, 3])
def test_alpha_one_is_k_step_sam_bitwise(k):
    x, y = data()
    m1, m2 = net(), net()
    o1 = xsam.XSAM(
        m1.parameters(), torch.optim.SGD, rho=0.1, steps=k, alpha=1.0, lr=0.1, momentum=0.9
    )
    o2 = xsam.SAM(m2.parameters(), torch.optim.SGD, rho=0.1, steps=k, lr=0.1, momentum=0.9)
    for _ in range(3):
        l1 = o1.step(make_closure(m1, x, y))
        l2 = o2.step(make_closure(m2, x, y))
        assert torch.equal(l1, l2)
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("cls", [xsam.XSAM, xsam.SAM])
def test_rho_zero_is_base_optimizer_bitwise(cls):
    """Including dropout RNG: exactly one closure call, nothing perturbed."""
    x, y = data()
    m1, m2 = net(dropout=0.3), net(dropout=0.3)
    o1 = cls(m1.parameters(), torch.optim.AdamW, rho=0.0, lr=1e-2, weight_decay=0.1)
    o2 = torch.optim.AdamW(m2.parameters(), lr=1e-2, weight_decay=0.1)
    torch.manual_seed(5)
    calls: list = []
    for _ in range(4):
        o1.step(make_closure(m1, x, y, calls))
    rng1 = torch.get_rng_state()
    torch.manual_seed(5)
    for _ in range(4):
        o2.zero_grad()
        o2.step(make_closure(m2, x, y))
    assert torch.equal(rng1, torch.get_rng_state())
    assert len(calls) == 4
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 1.7, -0.3])
def test_quadratic_closed_form(k, alpha):
    A, b, theta = quad_problem(k)
    q = Quadratic(A, b, theta)
    opt = xsam.XSAM(q.parameters(), torch.optim.SGD, rho=0.3, steps=k, alpha=alpha, lr=0.1)
    d = flat(descent_grad(opt, quad_closure(q), list(q.parameters()))).numpy()
    d_ref, psi, _, _ = np_slerp_d(A, b, theta, 0.3, k, alpha)
    np.testing.assert_allclose(d, d_ref, rtol=1e-10, atol=1e-12)
    # θ₀ restored exactly (a copy, not an add-then-subtract)
    assert np.array_equal(flat(q.parameters()).detach().numpy(), theta)
    if alpha != 1.0:
        # the spec's arccos of the ε-shrunk unit vectors differs from the true angle by
        # O(ε/(‖δ‖·sin ψ)); the library computes the true angle of the two directions
        _, _, v0, v1 = np_slerp_d(A, b, theta, 0.3, k, alpha)
        true_psi = 2 * math.atan2(np.linalg.norm(v0 - v1), np.linalg.norm(v0 + v1))
        assert opt.last_stats["psi"] == pytest.approx(true_psi, rel=1e-12)
        assert opt.last_stats["psi"] == pytest.approx(psi, rel=1e-7)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0, 1.5, 2.0])
def test_norm_of_d_equals_norm_of_gk(alpha):
    A, b, theta = quad_problem(3)
    q = Quadratic(A, b, theta)
    opt = xsam.XSAM(q.parameters(), torch.optim.SGD, rho=0.2, steps=2, alpha=alpha, lr=0.1)
    d = flat(descent_grad(opt, quad_closure(q), list(q.parameters())))
    gk = np_slerp_d(A, b, theta, 0.2, 2, 1.0)[0]
    # equal up to the ε of the normalisation: ‖v₀‖ = ‖δ‖/(‖δ‖+ε)
    assert float(d.norm()) == pytest.approx(float(np.linalg.norm(gk)), rel=1e-10)


def test_k1_alpha0_is_g0_direction_with_g1_length():
    A, b, theta = quad_problem(4)
    q = Quadratic(A, b, theta)
    opt = xsam.XSAM(q.parameters(), torch.optim.SGD, rho=0.25, alpha=0.0, lr=0.1)
    d = flat(descent_grad(opt, quad_closure(q), list(q.parameters()))).numpy()
    g0 = A @ theta - b
    g1 = A @ (theta + 0.25 * g0 / np.linalg.norm(g0)) - b
    np.testing.assert_allclose(d, np.linalg.norm(g1) * g0 / np.linalg.norm(g0), rtol=1e-11)


def test_parallel_vectors_use_v1():
    """Isotropic quadratic: g₁ ∥ g₀, so sin ψ ≈ 0 and d = ‖g₁‖·v₁ for any α."""
    n = 4
    theta = np.arange(1.0, n + 1)
    q = Quadratic(2.0 * np.eye(n), np.zeros(n), theta)
    opt = xsam.XSAM(q.parameters(), torch.optim.SGD, rho=0.1, alpha=0.37, lr=0.1)
    d = flat(descent_grad(opt, quad_closure(q), list(q.parameters()))).numpy()
    g1 = 2.0 * (theta + 0.1 * theta / np.linalg.norm(theta))
    np.testing.assert_allclose(d, g1, rtol=1e-12)
    assert math.isfinite(opt.last_stats["psi"])


def test_update_is_base_step_on_d():
    """SGD with momentum and weight decay consumes d like any gradient."""
    A, b, theta = quad_problem(6)
    q = Quadratic(A, b, theta)
    opt = xsam.XSAM(
        q.parameters(),
        torch.optim.SGD,
        rho=0.2,
        alpha=0.6,
        lr=0.05,
        momentum=0.9,
        weight_decay=1e-3,
    )
    opt.step(quad_closure(q))
    d, _, _, _ = np_slerp_d(A, b, theta, 0.2, 1, 0.6)
    expected = theta - 0.05 * (d + 1e-3 * theta)
    np.testing.assert_allclose(flat(q.parameters()).detach().numpy(), expected, rtol=1e-10)


# ---------------------------------------------------------------------------------- α search
def test_alpha_search_matches_brute_force():
    A, b, theta = quad_problem(7)
    q = Quadratic(A, b, theta)
    opt = xsam.XSAM(q.parameters(), torch.optim.SGD, rho=0.4, rho_max=1.1, lr=0.1)
    d = flat(descent_grad(opt, quad_closure(q), list(q.parameters()), loss_fn=q)).numpy()
    _, psi, v0, v1 = np_slerp_d(A, b, theta, 0.4, 1, 1.0)
    L = lambda t: 0.5 * t @ A @ t - b @ t  # noqa: E731
    losses = []
    for al in xsam.DEFAULT_ALPHA_GRID:
        v = (math.sin((1 - al) * psi) * v0 + math.sin(al * psi) * v1) / math.sin(psi)
        losses.append(L(theta + 1.1 * v))
    best = xsam.DEFAULT_ALPHA_GRID[int(np.argmax(losses))]
    assert opt.alpha == best
    np.testing.assert_allclose(opt.last_probe_losses, losses, rtol=1e-10)
    d_ref = np_slerp_d(A, b, theta, 0.4, 1, best)[0]
    np.testing.assert_allclose(d, d_ref, rtol=1e-10)


def test_alpha_search_tie_keeps_smallest_and_grid_is_sorted():
    q = Quadratic(np.eye(3), np.zeros(3), np.zeros(3))  # zero gradient: every probe at θ₀
    opt = xsam.XSAM(
        q.parameters(), torch.optim.SGD, rho=0.1, alpha_grid=[0.5, 0.2, 1.0, 0.2], lr=0.1
    )
    assert opt.alpha_grid == (0.2, 0.5, 1.0)
    opt.step(quad_closure(q))
    assert opt.alpha == 0.2
    assert opt.last_probe_losses == [0.0, 0.0, 0.0]
    assert all(torch.isfinite(p.detach()).all() for p in q.parameters())


def test_alpha_schedule_every_n_and_on_request():
    x, y = data()
    m = net()
    opt = xsam.XSAM(m.parameters(), torch.optim.SGD, rho=0.1, alpha_every=3, lr=0.1)
    due = []
    for i in range(7):
        due.append(opt.search_due)
        if i == 4:
            opt.request_alpha_search()
            assert opt.search_due
        opt.step(make_closure(m, x, y))
    assert due == [True, False, False, True, False, False, False]  # the request restarts the count
    assert opt.search_due  # 3 updates after the requested search
    m.zero_grad()  # opt's last direction would be discarded (and warned about)
    opt2 = xsam.XSAM(m.parameters(), torch.optim.SGD, rho=0.1, alpha_every=None, lr=0.1)
    seen = []
    for i in range(4):
        if i == 2:
            opt2.request_alpha_search()
        seen.append(opt2.search_due)
        opt2.step(make_closure(m, x, y))
    assert seen == [True, False, True, False]


def test_probe_count_and_closure_calls():
    x, y = data()
    m = net()
    calls: list = []
    opt = xsam.XSAM(m.parameters(), torch.optim.SGD, rho=0.1, steps=2, lr=0.1)
    opt.step(make_closure(m, x, y, calls))
    assert len(calls) == 3 + len(xsam.DEFAULT_ALPHA_GRID)
    # gradients were zeroed (None) before each gradient pass
    assert all(v is None for v in calls[0]) and all(v is None for v in calls[1])
    calls.clear()
    opt.step(make_closure(m, x, y, calls))
    assert len(calls) == 3


def test_unguarded_closure_falls_back_with_same_result():
    x, y = data()
    m1, m2 = net(), net()
    o1 = xsam.XSAM(m1.parameters(), torch.optim.SGD, rho=0.2, lr=0.1, momentum=0.9)
    o2 = xsam.XSAM(m2.parameters(), torch.optim.SGD, rho=0.2, lr=0.1, momentum=0.9)
    with pytest.warns(RuntimeWarning, match="is_grad_enabled"):
        o1.step(make_closure(m1, x, y, guard=False))
    o2.step(make_closure(m2, x, y))
    assert o1.alpha == o2.alpha
    np.testing.assert_allclose(o1.last_probe_losses, o2.last_probe_losses, rtol=1e-12)
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)


def test_search_needs_loss_fn_in_low_level_path():
    A, b, theta = quad_problem(1)
    q = Quadratic(A, b, theta)
    opt = xsam.XSAM(q.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    quad_closure(q)()
    opt.ascent_step()
    quad_closure(q)()
    with pytest.raises(RuntimeError, match="loss_fn"):
        opt.descent_direction()
    assert np.array_equal(flat(q.parameters()).detach().numpy(), theta)


# ---------------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("alpha", ["auto", 0.5, 1.0])
@pytest.mark.parametrize("k", [1, 2])
def test_batchnorm_stats_only_from_clean_pass(alpha, k):
    x, y = data()
    m = net(bn=True)
    ref = copy.deepcopy(m)
    ref.train()
    with torch.no_grad():
        ref(x)  # the clean forward alone
    opt = xsam.XSAM(m.parameters(), torch.optim.SGD, rho=0.3, steps=k, alpha=alpha, lr=0.1, model=m)
    opt.step(make_closure(m, x, y))
    bn, bn_ref = m[1], ref[1]
    assert torch.equal(bn.running_mean, bn_ref.running_mean)
    assert torch.equal(bn.running_var, bn_ref.running_var)
    assert int(bn.num_batches_tracked) == 1
    assert bn.track_running_stats is True


def test_without_model_every_pass_updates_stats():
    """Documented behaviour without model=: each closure call counts (what davda54 does)."""
    x, y = data()
    m = net(bn=True)
    opt = xsam.SAM(m.parameters(), torch.optim.SGD, rho=0.1, steps=2, lr=0.1)
    opt.step(make_closure(m, x, y))
    assert int(m[1].num_batches_tracked) == 3


def test_instance_norm_with_tracking_is_restored():
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv1d(2, 4, 3),
        nn.InstanceNorm1d(4, track_running_stats=True, affine=True),
        nn.Flatten(),
        nn.LazyLinear(3),
    ).to(DT)
    x = torch.randn(6, 2, 9, dtype=DT)
    y = torch.randint(0, 3, (6,))
    m(x)
    ref = copy.deepcopy(m)
    with torch.no_grad():
        ref(x)
    opt = xsam.XSAM(m.parameters(), torch.optim.SGD, rho=0.3, lr=0.1, model=m)
    opt.step(make_closure(m, x, y))
    assert torch.equal(m[1].running_mean, ref[1].running_mean)
    assert torch.equal(m[1].running_var, ref[1].running_var)


def test_frozen_norm_stats_output_unchanged_and_exception_safe():
    x, _ = data()
    m = net(bn=True)
    m2 = copy.deepcopy(m)
    with xsam.frozen_norm_stats(m):
        out = m(x)
    assert torch.equal(out, m2(x))  # train-mode output uses batch statistics either way
    with pytest.raises(KeyError):
        with xsam.frozen_norm_stats(m):
            raise KeyError
    assert m[1].track_running_stats is True


# ---------------------------------------------------------------------------------- safety
def _nan_on_call(model, x, y, bad_call: int, calls: list):
    def closure():
        calls.append(1)
        loss = F.cross_entropy(model(x), y)
        if len(calls) == bad_call:
            loss = loss * float("nan")
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("bad_call", [1, 2, 3])
@pytest.mark.parametrize("cls", [xsam.XSAM, xsam.SAM])
def test_non_finite_pass_skips_update_bit_identically(bad_call, cls):
    x, y = data()
    m = net(bn=True)
    opt = cls(m.parameters(), torch.optim.SGD, rho=0.1, steps=2, lr=0.1, momentum=0.9, model=m)
    opt.step(make_closure(m, x, y))  # build momentum state
    before = copy.deepcopy(m.state_dict())
    opt_before = copy.deepcopy(opt.state_dict())
    calls: list = []
    with pytest.warns(RuntimeWarning, match="skipped"):
        opt.step(_nan_on_call(m, x, y, bad_call, calls))
    after = m.state_dict()
    for key in before:
        assert torch.equal(before[key], after[key]), key  # weights and BN buffers
    sd = opt.state_dict()
    for pid, st in opt_before["state"].items():
        assert torch.equal(st["momentum_buffer"], sd["state"][pid]["momentum_buffer"])
    assert opt.skipped_updates == 1 and opt.updates == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calls.clear()
        opt.step(_nan_on_call(m, x, y, 1, calls))  # warned once only
    assert opt.skipped_updates == 2


def test_rho_zero_also_skips_non_finite():
    x, y = data()
    m = net()
    opt = xsam.XSAM(m.parameters(), torch.optim.SGD, rho=0.0, lr=0.1)
    before = [p.clone() for p in m.parameters()]
    with pytest.warns(RuntimeWarning):
        opt.step(_nan_on_call(m, x, y, 1, []))
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))


@pytest.mark.parametrize("alpha", ["auto", 0.0, 0.5, 1.0])
@pytest.mark.parametrize("adaptive", [False, True])
def test_zero_gradient_gives_no_nan(alpha, adaptive):
    q = Quadratic(np.eye(4), np.zeros(4), np.zeros(4))
    opt = xsam.XSAM(
        q.parameters(),
        torch.optim.SGD,
        rho=0.1,
        steps=2,
        alpha=alpha,
        adaptive=adaptive,
        lr=0.1,
        momentum=0.9,
    )
    for _ in range(2):
        opt.step(quad_closure(q))
    assert opt.skipped_updates == 0
    assert torch.equal(flat(q.parameters()), torch.zeros(4, dtype=DT))
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in q.parameters())


def test_exception_in_closure_restores_theta0():
    x, y = data()
    m = net()
    opt = xsam.XSAM(m.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    before = [p.clone() for p in m.parameters()]
    calls: list = []

    def closure():
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return make_closure(m, x, y)()

    with pytest.raises(KeyboardInterrupt):
        opt.step(closure)
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
    opt.step(make_closure(m, x, y))  # usable afterwards


# ---------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"rho": -0.1}, "rho"),
        ({"rho": float("nan")}, "rho"),
        ({"steps": 0}, "steps"),
        ({"steps": 1.5}, "steps"),
        ({"alpha": "max"}, "alpha"),
        ({"alpha": float("inf")}, "alpha"),
        ({"rho_max": 0.0}, "rho_max"),
        ({"rho_max": -1.0}, "rho_max"),
        ({"alpha_grid": []}, "alpha_grid"),
        ({"alpha_grid": [0.0, float("nan")]}, "alpha_grid"),
        ({"alpha_grid": [0.0, 1.0], "alpha": 0.5}, "alpha_grid"),
        ({"alpha_every": 0}, "alpha_every"),
        ({"eta": -1.0}, "eta"),
        ({"adaptive": True, "eta": 0.0}, "eta"),
    ],
)
def test_invalid_arguments_name_themselves(kwargs, name):
    m = net()
    with pytest.raises(ValueError, match=name) as info:
        xsam.XSAM(m.parameters(), torch.optim.SGD, lr=0.1, **kwargs)
    assert "\n" not in str(info.value)


def test_bad_base_optimizer_and_collisions():
    m = net()
    with pytest.raises(TypeError, match="class"):
        xsam.SAM(m.parameters(), torch.optim.SGD(m.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="collide"):
        xsam.SAM(m.parameters(), torch.optim.Adadelta, lr=1.0)
    with pytest.raises(ValueError, match="rho"):
        xsam.SAM([{"params": list(m.parameters()), "rho": -1.0}], torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match="closure"):
        xsam.SAM(m.parameters(), torch.optim.SGD, lr=0.1).step()


def test_wrapper_state_is_separate_from_base_state():
    """pytorch_optimizer #442: the wrapper's θ₀ buffers never land in the base's state."""
    x, y = data()
    m = net()
    opt = xsam.XSAM(m.parameters(), torch.optim.Adam, rho=0.1, lr=1e-3)
    opt.step(make_closure(m, x, y))
    for st in opt.base_optimizer.state.values():
        assert set(st) == {"step", "exp_avg", "exp_avg_sq"}
    for st in opt.state.values():
        assert set(st) == {"theta0"}
    assert "theta0" not in str(opt.state_dict()["state"])


# ---------------------------------------------------------------------------------- torch conformance
def test_param_groups_per_group_rho_and_lr():
    A, b, theta = quad_problem(8)
    q = Quadratic(A, b, theta)
    opt = xsam.XSAM(
        [{"params": [q.p1], "rho": 0.3, "lr": 0.01}, {"params": [q.p2], "lr": 0.02}],
        torch.optim.SGD,
        rho=0.1,
        alpha=1.0,
        lr=0.5,
    )
    assert [g["rho"] for g in opt.param_groups] == [0.3, 0.1]
    assert opt.param_groups is opt.base_optimizer.param_groups
    quad_closure(q)()
    opt.ascent_step()
    g0 = A @ theta - b
    step = flat(q.parameters()).detach().numpy() - theta
    n = np.linalg.norm(g0)
    np.testing.assert_allclose(step[:2], 0.3 * g0[:2] / n, rtol=1e-12)
    np.testing.assert_allclose(step[2:], 0.1 * g0[2:] / n, rtol=1e-12)
    quad_closure(q)()
    opt.descent_direction()
    d = flat([q.p1.grad, q.p2.grad]).numpy()
    opt.base_optimizer.step()
    after = flat(q.parameters()).detach().numpy()
    np.testing.assert_allclose(after[:2], theta[:2] - 0.01 * d[:2], rtol=1e-12)
    np.testing.assert_allclose(after[2:], theta[2:] - 0.02 * d[2:], rtol=1e-12)


def test_add_param_group_and_params_without_grad():
    x, y = data()
    m = net()
    frozen = nn.Parameter(torch.ones(3, dtype=DT))
    opt = xsam.XSAM(list(m[0].parameters()), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)
    opt.add_param_group({"params": list(m[2].parameters()), "lr": 0.01, "rho": 0.05})
    opt.add_param_group({"params": [frozen]})
    g = opt.param_groups
    assert (g[1]["lr"], g[1]["rho"], g[1]["momentum"], g[2]["rho"], g[2]["lr"]) == (
        0.01,
        0.05,
        0.9,
        0.1,
        0.1,
    )
    before = [p.clone() for p in m.parameters()]
    opt.step(make_closure(m, x, y))
    assert torch.equal(frozen, torch.ones(3, dtype=DT)) and frozen.grad is None
    assert all(not torch.equal(a, b) for a, b in zip(before, m.parameters()))
    with pytest.raises(ValueError, match="rho"):
        opt.add_param_group({"params": [nn.Parameter(torch.ones(1))], "rho": -2})


@pytest.mark.parametrize("attach", ["wrapper", "base"])
def test_lr_scheduler_on_either_optimizer(attach):
    x, y = data()
    m = net()
    opt = xsam.XSAM(m.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)
    target = opt if attach == "wrapper" else opt.base_optimizer
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(target, T_max=4)
        lrs = []
        for _ in range(4):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step(make_closure(m, x, y))
            sched.step()
    expected = [0.05 * (1 + math.cos(math.pi * t / 4)) for t in range(4)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (xsam.XSAM, {"rho": 0.2, "alpha_every": 2, "steps": 2}),
        (xsam.XSAM, {"rho": 0.2, "alpha": 0.7, "adaptive": True}),
        (xsam.SAM, {"rho": 0.1, "steps": 1}),
    ],
)
def test_state_dict_round_trip_is_bit_exact(cls, kwargs):
    x, y = data()
    xs = [data(seed=s) for s in range(6)]

    def build():
        m = net(bn=True)
        o = cls(
            m.parameters(),
            torch.optim.SGD,
            lr=0.1,
            momentum=0.9,
            weight_decay=1e-3,
            model=m,
            **kwargs,
        )
        s = torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=6)
        return m, o, s

    m1, o1, s1 = build()
    for xb, yb in xs:
        o1.step(make_closure(m1, xb, yb))
        s1.step()

    m2, o2, s2 = build()
    for xb, yb in xs[:3]:
        o2.step(make_closure(m2, xb, yb))
        s2.step()
    buf = io.BytesIO()
    torch.save({"model": m2.state_dict(), "opt": o2.state_dict(), "sched": s2.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    m3, o3, s3 = build()
    m3.load_state_dict(ck["model"])
    o3.load_state_dict(ck["opt"])
    s3.load_state_dict(ck["sched"])
    assert o3.param_groups is o3.base_optimizer.param_groups
    for xb, yb in xs[3:]:
        o3.step(make_closure(m3, xb, yb))
        s3.step()
    for a, b in zip(m1.state_dict().values(), m3.state_dict().values()):
        assert torch.equal(a, b)
    if cls is xsam.XSAM:
        assert (o1.alpha, o1.updates) == (o3.alpha, o3.updates)


def test_load_state_dict_rejects_foreign_state():
    m = net()
    opt = xsam.XSAM(m.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="sam_family"):
        opt.load_state_dict(torch.optim.SGD(m.parameters(), lr=0.1).state_dict())
    with pytest.raises(ValueError, match="SAM"):
        opt.load_state_dict(xsam.SAM(m.parameters(), torch.optim.SGD, lr=0.1).state_dict())


def test_low_level_path_equals_closure_path():
    x, y = data()
    m1, m2 = net(), net()
    kw = dict(rho=0.2, steps=2, lr=0.1, momentum=0.9)
    o1 = xsam.XSAM(m1.parameters(), torch.optim.SGD, **kw)
    o2 = xsam.XSAM(m2.parameters(), torch.optim.SGD, **kw)
    for _ in range(3):
        o1.step(make_closure(m1, x, y))
        c2 = make_closure(m2, x, y)
        o2.zero_grad()
        c2()
        for _ in range(o2.steps):
            o2.ascent_step()
            c2()
        assert o2.descent_step(loss_fn=lambda: F.cross_entropy(m2(x), y))
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(RuntimeError, match="ascent_step"):
        o2.descent_step()


def test_gradient_accumulation_in_closure_equals_full_batch():
    """Micro-batches accumulated inside the closure give the full-batch update."""
    x, y = data(n=16)
    m1, m2 = net(), net()
    o1 = xsam.XSAM(m1.parameters(), torch.optim.SGD, rho=0.2, lr=0.1)
    o2 = xsam.XSAM(m2.parameters(), torch.optim.SGD, rho=0.2, lr=0.1)

    def accum():
        total = 0.0
        for xb, yb in zip(x.split(4), y.split(4)):
            loss = F.cross_entropy(m2(xb), yb) / 4
            if torch.is_grad_enabled():
                loss.backward()
            total = total + loss.detach()
        return total

    o1.step(make_closure(m1, x, y))
    o2.step(accum)
    assert o1.alpha == o2.alpha
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_grad_clipping_in_closure_is_clipping_d():
    """Global-norm clipping in every pass leaves the ascent directions alone and clips d."""
    A, b, theta = quad_problem(9)
    q = Quadratic(A, b, theta)
    opt = xsam.XSAM(q.parameters(), torch.optim.SGD, rho=0.2, alpha=0.5, lr=1.0)

    def closure():
        loss = q()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(q.parameters(), 0.5)
        return loss

    opt.step(closure)
    d, _, _, _ = np_slerp_d(A, b, theta, 0.2, 1, 0.5)
    expected = theta - 0.5 * d / np.linalg.norm(d)
    np.testing.assert_allclose(flat(q.parameters()).detach().numpy(), expected, rtol=1e-5)


# ---------------------------------------------------------------------------------- mixed precision
def _amp_update(opt, model, scaler, x, y, nan_pass=None):
    def fwd():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return F.cross_entropy(model(x), y)

    opt.zero_grad()
    scaler.scale(fwd()).backward()
    for i in range(opt.steps):
        opt.ascent_step()
        loss = fwd()
        if nan_pass == i + 1:
            loss = loss * float("inf")
        scaler.scale(loss).backward()
    ok = opt.descent_step(loss_fn=fwd, scaler=scaler)
    scaler.update()
    return ok


def test_grad_scaler_path_matches_unscaled_and_skips_on_overflow():
    x, y = data(dtype=torch.float32)
    m1, m2 = net(dtype=torch.float32), net(dtype=torch.float32)
    kw = dict(rho=0.1, steps=2, lr=0.1, momentum=0.9)
    o1 = xsam.XSAM(m1.parameters(), torch.optim.SGD, **kw)
    o2 = xsam.XSAM(m2.parameters(), torch.optim.SGD, **kw)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    off = torch.amp.GradScaler("cpu", enabled=False)
    for _ in range(2):
        assert _amp_update(o1, m1, scaler, x, y)
        assert _amp_update(o2, m2, off, x, y)
    assert o1.alpha == o2.alpha
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    before = [p.clone() for p in m1.parameters()]
    mom = [st["momentum_buffer"].clone() for st in o1.base_optimizer.state.values()]
    with pytest.warns(RuntimeWarning, match="skipped"):
        assert not _amp_update(o1, m1, scaler, x, y, nan_pass=1)
    assert all(torch.equal(a, b) for a, b in zip(before, m1.parameters()))
    assert all(
        torch.equal(a, st["momentum_buffer"])
        for a, st in zip(mom, o1.base_optimizer.state.values())
    )
    assert scaler.get_scale() == 2.0**9  # backed off once


def test_sync_batchnorm_stats_only_from_clean_pass():
    """SyncBatchNorm is a _BatchNorm: frozen the same way (single process, CPU)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 7), nn.SyncBatchNorm(7), nn.Tanh(), nn.Linear(7, 3)).to(DT)
    x, y = data()
    ref = copy.deepcopy(m)
    with torch.no_grad():
        ref(x)
    opt = xsam.XSAM(m.parameters(), torch.optim.SGD, rho=0.3, steps=2, lr=0.1, model=m)
    opt.step(make_closure(m, x, y))
    assert torch.equal(m[1].running_mean, ref[1].running_mean)
    assert int(m[1].num_batches_tracked) == 1
