"""Perturbation schedules: full SAM-family updates on some steps, cheap (one-pass) steps on the
rest, with LookSAM's reuse. Identities with today's update and with the base optimizer, a closed
form of the reuse rule, exact resume mid-schedule, skips, and the two paths agreeing."""

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
from toy import closure_for, data, lower_level_step, net

import xsam
from xsam import PerturbationSchedule as Sched


def flat(model) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in model.state_dict().values()])


def train(model, opt, n: int, start: int = 0, lower: bool = False) -> torch.Tensor:
    for i in range(start, start + n):
        x, y = data(100 + i)
        if lower:
            lower_level_step(model, opt, x, y)
        else:
            opt.step(closure_for(model, x, y))
    return flat(model)


def make(cls: str, model, schedule=None, **kw):
    base = dict(rho=0.2, lr=0.1, momentum=0.9, weight_decay=1e-2, model=model)
    if cls == "XSAM":
        base["alpha_every"] = 2
    base.update(kw)
    return getattr(xsam, cls)(model.parameters(), torch.optim.SGD, schedule=schedule, **base)


# ------------------------------------------------------------------ the schedule object
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"every": 0}, "every must be an integer >= 1"),
        ({"every": 2.0}, "every must be an integer >= 1"),
        ({"every": True}, "every must be an integer >= 1"),
        ({"start": -1}, "start must be an integer >= 0"),
        ({"prob": 1.5}, r"prob must be in \[0, 1\]"),
        ({"prob": float("nan")}, r"prob must be in \[0, 1\]"),
        ({"reuse": -0.1}, "reuse must be finite and >= 0"),
        ({"reuse": float("inf")}, "reuse must be finite and >= 0"),
        ({"seed": -3}, "seed must be an integer >= 0"),
    ],
)
def test_bad_schedule_settings_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Sched(**kwargs)


def test_schedule_argument_forms():
    model = net()
    opt = make("SAM", model, {"every": 3, "reuse": 0.5})
    assert opt.schedule == Sched(every=3, reuse=0.5)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['interval'\]"):
        make("SAM", model, {"interval": 3})
    with pytest.raises(TypeError, match="schedule must be a PerturbationSchedule"):
        make("XSAM", model, 3)
    with pytest.raises(TypeError, match="prob must be a real number"):
        Sched(prob="0.5")


def test_which_steps_are_full():
    s = Sched(every=3, start=2)
    assert [i for i in range(12) if s.full(i)] == [2, 5, 8, 11]
    assert not any(Sched(prob=0.0).full(i) for i in range(100))
    assert all(Sched().full(i) for i in range(100)) and Sched().always
    assert Sched.late_phase(0.25, 400) == Sched(start=100)
    # random switching: a pure function of (seed, index), the expected share, other seeds differ
    p, n = 0.3, 20_000
    draws = [Sched(prob=p, seed=4).full(i) for i in range(n)]
    assert draws == [Sched(prob=p, seed=4).full(i) for i in range(n)]
    assert abs(np.mean(draws) - p) < 4 * np.sqrt(p * (1 - p) / n)
    assert draws != [Sched(prob=p, seed=5).full(i) for i in range(n)]
    both = Sched(every=2, start=10, prob=0.5, seed=1)
    assert not any(both.full(i) for i in list(range(10)) + list(range(11, 400, 2)))
    for s in (Sched(every=4, start=3), Sched(every=1), Sched(start=7)):
        assert s.expected_share(50) == pytest.approx(sum(s.full(i) for i in range(50)) / 50)


# ------------------------------------------------------------------ identities
@pytest.mark.parametrize("cls", ["SAM", "XSAM"])
@pytest.mark.parametrize("schedule", [Sched(prob=0.0), Sched(start=10**6, reuse=0.7)])
@pytest.mark.parametrize("lower", [False, True])
def test_a_schedule_that_never_perturbs_is_the_base_optimizer_bit_for_bit(cls, schedule, lower):
    model, twin = net(bn=True), net(bn=True)
    opt = make(cls, model, schedule)
    base = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    mine = train(model, opt, 5, lower=lower)
    for i in range(5):
        x, y = data(100 + i)
        base.zero_grad()
        F.cross_entropy(twin(x), y).backward()
        base.step()
    assert torch.equal(mine, flat(twin))
    assert (opt.updates, opt.cheap_updates, opt.step_index) == (5, 5, 5)


@pytest.mark.parametrize("cls", ["SAM", "XSAM"])
@pytest.mark.parametrize(
    "schedule", [Sched(), Sched(reuse=0.7), Sched(prob=1.0, seed=9, reuse=0.3)]
)
def test_a_schedule_that_always_perturbs_is_todays_update_bit_for_bit(cls, schedule):
    model, twin = net(bn=True), net(bn=True)
    opt = make(cls, model, schedule, steps=2)
    ref = make(cls, twin, None, steps=2)
    assert torch.equal(train(model, opt, 5), train(twin, ref, 5))
    assert (opt.updates, opt.cheap_updates) == (5, 0)


@pytest.mark.parametrize("cls", ["SAM", "XSAM"])
def test_every_third_step_interleaves_the_full_update_and_base_steps(cls):
    """Reference: today's optimizer on the full steps; its own base optimizer alone on the
    others (so momentum and the α schedule are shared exactly as they must be)."""
    model, twin = net(bn=True), net(bn=True)
    opt = make(cls, model, Sched(every=3, start=1))
    ref = make(cls, twin, None)
    due = []
    for i in range(8):
        x, y = data(100 + i)
        due.append(opt.perturb_due)
        opt.step(closure_for(model, x, y))
        if i % 3 == 1:
            ref.zero_grad()  # the manual backward's gradients: stale for step()
            ref.step(closure_for(twin, x, y))
        else:
            ref.zero_grad()
            F.cross_entropy(twin(x), y).backward()
            ref.base_optimizer.step()
        assert torch.equal(flat(model), flat(twin)), i
    assert due == [False, True, False, False, True, False, False, True]
    assert (opt.updates, opt.cheap_updates, opt.step_index) == (8, 5, 8)
    if cls == "XSAM":  # alpha_every counts full updates only
        assert opt.alpha == ref.alpha and opt.search_due == ref.search_due


@pytest.mark.parametrize("cls", ["SAM", "XSAM"])
def test_lower_level_path_equals_the_closure_path(cls):
    model, twin = net(bn=True), net(bn=True)
    kw = dict(alpha_every=1) if cls == "XSAM" else {}
    schedule = Sched(every=2, prob=0.8, seed=2, reuse=0.5)
    a = make(cls, model, schedule, **kw)
    b = make(cls, twin, schedule, **kw)
    assert torch.equal(train(model, a, 7), train(twin, b, 7, lower=True))
    assert (a.cheap_updates, a.step_index) == (b.cheap_updates, b.step_index)


def test_ascent_on_a_cheap_step_and_descent_direction_are_refused():
    model = net()
    opt = make("SAM", model, Sched(every=2))
    train(model, opt, 1)  # step 0 full, step 1 cheap
    x, y = data(0)
    with opt.clean_pass():
        F.cross_entropy(model(x), y).backward()
    with pytest.raises(RuntimeError, match="cheap step"):
        opt.ascent_step()
    with pytest.raises(RuntimeError, match="cheap step of the schedule: call descent_step"):
        opt.descent_direction()
    assert opt.descent_step() and opt.cheap_updates == 1


# ------------------------------------------------------------------ the reuse rule
class Quad(nn.Module):
    """L(θ) = ½θᵀAθ − bᵀθ over two tensors (norms and dots must be global)."""

    def __init__(self, A, b, theta):
        super().__init__()
        self.A, self.b = torch.tensor(A), torch.tensor(b)
        self.p1 = nn.Parameter(torch.tensor(theta[:2]))
        self.p2 = nn.Parameter(torch.tensor(theta[2:]))

    def forward(self):
        t = torch.cat([self.p1, self.p2])
        return 0.5 * t @ self.A @ t - self.b @ t

    def theta(self):
        return torch.cat([self.p1, self.p2]).detach().numpy()


@pytest.mark.parametrize("cls", ["SAM", "XSAM"])
def test_cheap_steps_reuse_the_orthogonal_part_of_the_last_full_direction(cls):
    rng = np.random.default_rng(3)
    M = rng.normal(size=(4, 4))
    A, b, theta = M @ M.T + np.eye(4), rng.normal(size=4), rng.normal(size=4)
    q = Quad(A, b, theta)
    lr, lam, rho = 0.05, 0.7, 0.3
    kw = dict(alpha=0.6) if cls == "XSAM" else {}
    opt = getattr(xsam, cls)(
        q.parameters(), torch.optim.SGD, rho=rho, lr=lr, schedule=Sched(every=3, reuse=lam), **kw
    )

    def closure():
        loss = q()
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    g0 = A @ theta - b
    opt.step(closure)  # full: d is left in .grad
    d = torch.cat([q.p1.grad, q.p2.grad]).numpy()
    if cls == "SAM":  # d = g_k, in closed form
        np.testing.assert_allclose(d, A @ (theta + rho * g0 / np.linalg.norm(g0)) - b, rtol=1e-12)
    v = d - (d @ g0) / (g0 @ g0) * g0
    v /= np.linalg.norm(v)
    th = theta - lr * d
    for _ in range(2):  # two cheap steps
        g = A @ th - b
        opt.step(closure)
        th = th - lr * (g + lam * np.linalg.norm(g) * v)
        np.testing.assert_allclose(q.theta(), th, rtol=1e-12, atol=1e-14)
    assert opt.cheap_updates == 2


def test_a_skipped_full_update_leaves_no_vector_to_reuse():
    model, twin = net(), net()
    opt = make("SAM", model, Sched(every=2, reuse=0.7))
    ref = make("SAM", twin, Sched(prob=0.0, reuse=0.7))  # never full: plain cheap steps
    bad_x, y = data(0)
    bad_x[0, 0] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        opt.step(closure_for(model, bad_x, y))  # a full update, skipped
        ref.step(closure_for(twin, bad_x, y))  # a cheap step, skipped
    assert opt.skipped_updates == ref.skipped_updates == 1
    x, y = data(1)
    opt.step(closure_for(model, x, y))
    ref.step(closure_for(twin, x, y))
    assert torch.equal(flat(model), flat(twin))


# ------------------------------------------------------------------ skips, state, copies
def test_a_skipped_cheap_step_changes_nothing_and_lowers_the_loss_scale():
    model = net(bn=True, dtype=torch.float32)
    opt = make("XSAM", model, Sched(every=2, reuse=0.5))
    x, y = data(0, dtype=torch.float32)
    lower_level_step(model, opt, x, y)  # full
    before = (flat(model).clone(), copy.deepcopy(opt.base_optimizer.state_dict()))
    scaler = torch.amp.GradScaler("cpu", init_scale=16.0)
    bad = x.clone()
    bad[3, 1] = float("inf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert not lower_level_step(model, opt, bad, y, scaler=scaler)  # cheap, skipped
    scaler.update()
    assert torch.equal(flat(model), before[0])  # weights and BatchNorm statistics
    after = opt.base_optimizer.state_dict()
    for k, st in before[1]["state"].items():
        assert torch.equal(st["momentum_buffer"], after["state"][k]["momentum_buffer"])
    assert scaler.get_scale() == 8.0
    assert (opt.skipped_updates, opt.cheap_updates, opt.step_index) == (1, 0, 2)


@pytest.mark.parametrize("cls", ["SAM", "XSAM"])
def test_resume_mid_schedule_is_exact(cls):
    schedule = Sched(every=2, prob=0.8, seed=1, reuse=0.5)
    model = net(bn=True)
    opt = make(cls, model, schedule)
    whole = train(model, opt, 9)

    model = net(bn=True)
    opt = make(cls, model, schedule)
    train(model, opt, 5)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    assert any("sam_reuse" in st for st in saved["opt"]["state"].values())
    model2 = net(seed=5, bn=True)
    opt2 = make(cls, model2, schedule)
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    assert (opt2.step_index, opt2.cheap_updates) == (opt.step_index, opt.cheap_updates)
    assert not any("sam_reuse" in st for st in opt2.base_optimizer.state.values())
    assert torch.equal(train(model2, opt2, 4, start=5), whole)


def test_loading_another_schedule_is_refused_and_changes_nothing():
    model = net()
    opt = make("XSAM", model, Sched(every=2, reuse=0.5))
    train(model, opt, 3)
    other = make("XSAM", net(), Sched(every=4, reuse=0.5))
    with pytest.raises(ValueError, match="saved with schedule"):
        other.load_state_dict(opt.state_dict())
    assert other.step_index == 0 and not other.base_optimizer.state
    plain = make("XSAM", net(), None)
    with pytest.raises(ValueError, match="saved with schedule"):
        plain.load_state_dict(opt.state_dict())


def test_a_copied_optimizer_keeps_its_place_in_the_schedule():
    model = net(bn=True)
    opt = make("XSAM", model, Sched(every=3, reuse=0.5))
    train(model, opt, 4)
    model2, opt2 = copy.deepcopy((model, opt))
    assert torch.equal(train(model, opt, 5, start=4), train(model2, opt2, 5, start=4))
    assert opt2.step_index == opt.step_index == 9


# ------------------------------------------------------------------ gradients on entry
def test_gradients_from_outside_the_closure_are_warned_about_once():
    model = net()
    opt = make("SAM", model)
    x, y = data(0)
    F.cross_entropy(model(x), y).backward()  # e.g. an accumulated micro-batch
    with pytest.warns(RuntimeWarning, match=r"discarded the gradient '0\.weight'"):
        opt.step(closure_for(model, x, y))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step(closure_for(model, x, y))  # the gradients it left itself: no warning
        opt.zero_grad(set_to_none=False)  # zeros: nothing is lost
        opt.step(closure_for(model, x, y))
    fresh = make("SAM", model)
    F.cross_entropy(model(x), y).backward()  # accumulates into the gradients opt left
    with pytest.raises(RuntimeError, match="differ from the closure's own"):
        fresh.step(closure_for(model, x, y))  # not the clean gradient: refused


def test_a_probe_that_runs_backward_anyway_is_warned_about_once():
    model, twin = net(), net()
    a, b = make("XSAM", model, alpha_every=1), make("XSAM", twin, alpha_every=1)
    backwards = []

    def stubborn(x, y):
        def closure():  # re-enables gradients itself, as some frameworks' closures do
            with torch.enable_grad():
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                backwards.append(1)
            return loss

        return closure

    x, y = data(0)
    with pytest.warns(RuntimeWarning, match="alpha probe ran backward"):
        a.step(stubborn(x, y))
    assert len(backwards) == 2 + len(a.alpha_grid)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a.step(stubborn(*data(1)))
    b.step(closure_for(twin, x, y))
    b.step(closure_for(twin, *data(1)))
    assert torch.equal(flat(model), flat(twin))  # the probes' gradients were discarded


# ------------------------------------------------------------------ the trainer and its config
TINY = dict(limit_train=256, limit_test=128, batch_size=64, epochs=2, threads=1)  # 4 updates/epoch


def tiny(**kw):
    from xsam.train import TrainConfig

    return TrainConfig(**{**TINY, **kw})


def _weights(result) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in result["model"].state_dict().values()])


def test_trainer_schedule_that_never_perturbs_is_the_sgd_run():
    from xsam.train import train

    sam = train(tiny(optimizer="sam", perturb_prob=0.0, perturb_reuse=0.7, epochs=1))
    sgd = train(tiny(optimizer="sgd", epochs=1))
    assert torch.equal(_weights(sam), _weights(sgd))
    assert sam["metrics"][0]["full_updates"] == 0 and sgd["metrics"][0]["full_updates"] is None


@pytest.mark.parametrize("amp", ["off", "bf16"])
@pytest.mark.parametrize(
    "kw, full",
    [
        (dict(perturb_every=2, perturb_reuse=0.5), [2, 4]),
        (dict(perturb_start=0.5), [0, 4]),
        (dict(perturb_every=3, perturb_start=0.25), [1, 2]),  # steps 2 and 5 of 0-7
    ],
)
def test_trainer_full_updates_follow_the_schedule(amp, kw, full):
    from xsam.train import train

    ms = train(tiny(optimizer="xsam", amp=amp, **kw))["metrics"]
    assert [m["full_updates"] for m in ms] == full
    assert all(math.isfinite(m["train_loss"]) and m["skipped_updates"] == 0 for m in ms)


def test_trainer_resume_mid_schedule_is_bit_identical(tmp_path):
    from xsam.train import load_checkpoint, train, without_times

    kw = dict(optimizer="xsam", perturb_every=2, perturb_prob=0.7, perturb_reuse=0.5)
    whole = train(tiny(out=str(tmp_path / "whole"), **kw))
    train(tiny(out=str(tmp_path / "part"), **kw), stop_after=1)
    resumed = train(tiny(out=str(tmp_path / "part"), **kw), resume=True)
    assert without_times(resumed["metrics"]) == without_times(whole["metrics"])
    a = load_checkpoint(tmp_path / "whole/last.pt")["optimizer"]
    b = load_checkpoint(tmp_path / "part/last.pt")["optimizer"]
    assert a["sam_family"] == b["sam_family"] and a["sam_family"]["step_index"] == 8
    for s, t in zip(a["state"].values(), b["state"].values()):
        assert torch.equal(s["sam_reuse"], t["sam_reuse"])
    with pytest.raises(Exception, match="perturb_every"):
        train(tiny(out=str(tmp_path / "part"), **{**kw, "perturb_every": 3}), resume=True)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("perturb_every", 0, "perturb_every"),
        ("perturb_prob", 1.5, r"perturb_prob should be in \[0, 1\]"),
        ("perturb_start", 2.0, r"perturb_start should be in \[0, 1\]"),
        ("perturb_reuse", -1.0, "perturb_reuse"),
    ],
)
def test_bad_schedule_config_is_named(field, value, message):
    from xsam.train import ConfigError

    with pytest.raises(ConfigError, match=message):
        tiny(optimizer="sam", **{field: value}).validated()
    tiny(optimizer="sgd", **{field: value}).validated()  # unused by sgd: accepted, ignored


def test_cli_flags_reach_the_config():
    from xsam.train.cli import build_parser

    ns = build_parser().parse_args(
        ["train", "--perturb-every", "4", "--perturb-reuse", "0.7", "--perturb-start", "0.5"]
    )
    assert (ns.perturb_every, ns.perturb_reuse, ns.perturb_start) == ("4", "0.7", "0.5")


def test_descent_direction_alone_finishes_the_update_like_descent_step():
    """A loop that steps the base optimizer itself (e.g. to clip d first) keeps the counters,
    the α search schedule and the perturbation schedule moving, and trains exactly like
    descent_step."""
    model, twin = net(bn=True), net(bn=True)
    kw = dict(alpha_every=3, schedule=Sched(every=2, reuse=0.5))
    a, b = make("XSAM", model, **kw), make("XSAM", twin, **kw)
    due = []
    for i in range(6):
        x, y = data(100 + i)
        due.append(a.search_due)
        if a.perturb_due:  # full: descent_direction, then the base step by hand
            a.zero_grad()
            with a.clean_pass():
                F.cross_entropy(model(x), y).backward()
            a.ascent_step()
            with a.perturbed_pass():
                F.cross_entropy(model(x), y).backward()
            with torch.no_grad():
                probe = lambda x=x, y=y: F.cross_entropy(model(x), y)  # noqa: E731
                assert a.descent_direction(probe)
            a.base_optimizer.step()
        else:
            lower_level_step(model, a, x, y)
        lower_level_step(twin, b, x, y)
        assert torch.equal(flat(model), flat(twin)), i
    assert (
        (a.updates, a.cheap_updates, a.step_index)
        == (6, 3, 6)
        == (
            b.updates,
            b.cheap_updates,
            b.step_index,
        )
    )
    # full updates at steps 0, 2, 4; alpha_every=3 counts them: due again after the third
    # (shown before step 5, a cheap step, so the search waits for the next full update)
    assert due == [True, False, False, False, False, True]
