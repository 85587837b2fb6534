"""Two CPU processes on the gloo backend: DDP local/global perturbation and FSDP.

Each test spawns 2 ranks once and checks numbers against single-process computations:
- ``"global"`` equals one process on the concatenated batch;
- ``"local"`` equals the mean of the per-rank XSAM directions computed independently (by the
  plain reference implementation) with the α* picked from the rank-averaged probe losses;
- replicas stay bit-identical; a non-finite pass on one rank skips the update on all.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from toy import closure_for as _closure

import xsam
from xsam.train.process_group import close_process_group

DT = torch.float64
WORLD = 2
N_LOCAL = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _net(seed: int = 0, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(5, 8)]
    if bn:
        layers.append(nn.BatchNorm1d(8))
    layers += [nn.Tanh(), nn.Linear(8, 8), nn.Softplus(), nn.Linear(8, 3)]
    return nn.Sequential(*layers).to(DT)


def _global_batches(n: int, seed: int = 7):
    """Per update: a batch of WORLD*N_LOCAL rows; rank r takes rows [r*N_LOCAL, (r+1)*N_LOCAL).
    The two halves come from different distributions so the ranks' local problems differ."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(WORLD * N_LOCAL, 5, generator=g, dtype=DT)
        x[N_LOCAL:] = 2.5 * x[N_LOCAL:] + 1.0
        y = torch.randint(0, 3, (WORLD * N_LOCAL,), generator=g)
        out.append((x, y))
    return out


def _local(x, y, rank):
    sl = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
    return x[sl], y[sl]


def _flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _gather(t: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(t) for _ in range(WORLD)]
    dist.all_gather(out, t)
    return out


def _entry(rank, fn, port, tmp, args):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60)
    )
    finished = False
    try:
        fn(rank, *args)
        finished = True
    finally:
        close_process_group(synchronise=finished)


# ------------------------------------------------------------------------------ workers
def _worker_global_equals_single(rank, cls_name, steps):
    data = _global_batches(4)
    ddp_model = nn.parallel.DistributedDataParallel(_net())
    kw = dict(rho=0.3, steps=steps, lr=0.1, momentum=0.9)
    if cls_name == "XSAM":
        kw.update(alpha_every=2)
    cls = getattr(xsam, cls_name)
    opt = cls(ddp_model.parameters(), torch.optim.SGD, model=ddp_model, perturbation="global", **kw)
    single = _net()
    ref = cls(single.parameters(), torch.optim.SGD, **kw)
    for x, y in data:
        xl, yl = _local(x, y, rank)
        opt.step(_closure(ddp_model, xl, yl))
        ref.step(_closure(single, x, y))
        if cls_name == "XSAM":
            assert opt.alpha == ref.alpha
    mine = _flat_params(ddp_model.module)
    torch.testing.assert_close(mine, _flat_params(single), rtol=1e-10, atol=1e-12)
    other = _gather(mine)
    assert torch.equal(other[0], other[1])


def _worker_local_is_mean_of_rank_directions(rank, steps):
    sys.path.insert(0, os.path.dirname(__file__))
    from reference import reference_update

    data = _global_batches(3, seed=11)
    lr = 0.1
    ddp_model = nn.parallel.DistributedDataParallel(_net(bn=True))
    opt = xsam.XSAM(
        ddp_model.parameters(),
        torch.optim.SGD,
        rho=0.3,
        steps=steps,
        lr=lr,
        model=ddp_model,
        alpha_every=1,
    )
    assert opt.perturbation == "local"
    local_choices = []
    for x, y in data:
        xl, yl = _local(x, y, rank)
        # independent per-rank computation on a plain copy, before the DDP update
        twin = _net(bn=True)
        twin.load_state_dict(ddp_model.module.state_dict())
        twin_params = list(twin.parameters())
        bn = [m for m in twin.modules() if isinstance(m, nn.BatchNorm1d)]
        searched = reference_update(
            [twin_params],
            lambda twin=twin, xl=xl, yl=yl: F.cross_entropy(twin(xl), yl),
            lambda: None,
            rho=0.3,
            steps=steps,
            alpha=None,
            bn_modules=bn,
        )
        for p, b in zip(twin_params, ddp_model.module.parameters()):
            p.data.copy_(b.detach())
        twin.load_state_dict(ddp_model.module.state_dict())
        mean_probe = torch.tensor(searched["probe_losses"], dtype=DT)
        dist.all_reduce(mean_probe)
        mean_probe /= WORLD
        alpha_star = xsam.DEFAULT_ALPHA_GRID[int(torch.argmax(mean_probe))]
        local_choices.append(searched["alpha"])
        fixed = reference_update(
            [twin_params],
            lambda twin=twin, xl=xl, yl=yl: F.cross_entropy(twin(xl), yl),
            lambda: None,
            rho=0.3,
            steps=steps,
            alpha=alpha_star,
            bn_modules=bn,
        )
        d_mean = torch.cat([d.reshape(-1) for d in fixed["d"]])
        dist.all_reduce(d_mean)
        d_mean /= WORLD
        before = _flat_params(ddp_model.module)

        opt.step(_closure(ddp_model, xl, yl))

        assert opt.alpha == alpha_star
        torch.testing.assert_close(
            _flat_params(ddp_model.module), before - lr * d_mean, rtol=1e-10, atol=1e-12
        )
        assert int(ddp_model.module[1].num_batches_tracked) == len(local_choices)
    alphas = _gather(torch.tensor([opt.alpha], dtype=DT))
    assert alphas[0] == alphas[1]
    mine = _flat_params(ddp_model.module)
    other = _gather(mine)
    assert torch.equal(other[0], other[1])
    # the ranks' own searches disagreed at least once, yet the optimizer agreed every time
    choices = _gather(torch.tensor(local_choices, dtype=DT))
    assert not torch.equal(choices[0], choices[1])


def _worker_nonfinite_on_one_rank(rank, perturbation):
    data = _global_batches(2)
    ddp_model = nn.parallel.DistributedDataParallel(_net())
    opt = xsam.XSAM(
        ddp_model.parameters(),
        torch.optim.SGD,
        rho=0.2,
        lr=0.1,
        momentum=0.9,
        model=ddp_model,
        perturbation=perturbation,
    )
    x, y = _local(*data[0], rank)
    opt.step(_closure(ddp_model, x, y))
    before = _flat_params(ddp_model.module)
    x, y = _local(*data[1], rank)
    calls = []

    def bad():
        calls.append(1)
        loss = F.cross_entropy(ddp_model(x), y)
        if rank == 1 and len(calls) == 2:
            loss = loss * float("nan")
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.step(bad)
    assert opt.skipped_updates == 1
    assert torch.equal(_flat_params(ddp_model.module), before)


def _worker_fsdp_global_equals_single(rank, schedule=None):
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    data = _global_batches(3 if schedule is None else 6)
    model = _net()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    assert any(isinstance(p, DTensor) for p in model.parameters())
    kw = dict(rho=0.3, steps=2, lr=0.1, momentum=0.9, alpha_every=2, schedule=schedule)
    opt = xsam.XSAM(model.parameters(), torch.optim.SGD, model=model, **kw)
    assert opt.perturbation == "global"
    single = _net()
    ref = xsam.XSAM(single.parameters(), torch.optim.SGD, **kw)
    for x, y in data:
        xl, yl = _local(x, y, rank)
        opt.step(_closure(model, xl, yl))
        ref.step(_closure(single, x, y))
        assert opt.alpha == ref.alpha
        if "psi" in ref.last_stats:  # a full update (a cheap step has no angle)
            assert opt.last_stats["psi"] == pytest.approx(ref.last_stats["psi"], rel=1e-9)
    assert opt.cheap_updates == ref.cheap_updates
    full = torch.cat([p.full_tensor().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(full, _flat_params(single), rtol=1e-10, atol=1e-12)


class _Heads(nn.Module):
    """A trunk and three heads: rank r uses head r, nobody uses ``spare``."""

    def __init__(self, widths=(3, 3)):
        super().__init__()
        torch.manual_seed(3)
        self.trunk = nn.Linear(5, 8).to(DT)
        self.heads = nn.ModuleList([nn.Linear(8, w).to(DT) for w in widths])
        self.spare = nn.Linear(8, 3).to(DT)
        self.rank = 0

    def forward(self, x):
        return self.heads[self.rank](torch.tanh(self.trunk(x)))[:, :3]


def _worker_rank_dependent_unused(rank, widths, momentum):
    """DDP(find_unused_parameters=True) with local perturbation where each rank uses its own
    head: the update is the mean of the per-rank XSAM directions over one rank-independent
    parameter list (zeros where a rank had no gradient), replicas stay bit-identical, and a
    parameter no rank uses keeps .grad None and is not stepped (not even by weight decay)."""
    data = _global_batches(3, seed=5)
    model = _Heads(widths)
    model.rank = rank
    ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    lr, wd = 0.1, (0.1 if momentum else 0.0)
    kw = dict(rho=0.3, alpha=0.5, lr=lr, momentum=momentum, weight_decay=wd)
    opt = xsam.XSAM(ddp.parameters(), torch.optim.SGD, model=ddp, **kw)
    spare = [p.detach().clone() for p in model.spare.parameters()]
    for x, y in data:
        xl, yl = _local(x, y, rank)
        twin = _Heads(widths)
        twin.load_state_dict(model.state_dict())
        twin.rank = rank
        solo = xsam.XSAM(twin.parameters(), torch.optim.SGD, rho=0.3, alpha=0.5, lr=1.0)
        solo.step(_closure(twin, xl, yl))  # θ − d_r: this rank's own direction
        d_mine = _flat_params(model) - _flat_params(twin)
        d_mean = d_mine.clone()
        dist.all_reduce(d_mean)
        d_mean /= WORLD
        before = _flat_params(model)
        opt.step(_closure(ddp, xl, yl))
        if not momentum:
            torch.testing.assert_close(
                _flat_params(model), before - lr * d_mean, rtol=1e-10, atol=1e-12
            )
    assert all(p.grad is None for p in model.spare.parameters())
    assert all(torch.equal(a, b) for a, b in zip(spare, model.spare.parameters()))
    mine = _flat_params(model)
    other = _gather(mine)
    assert torch.equal(other[0], other[1])


def _worker_schedule(rank, perturbation):
    """A perturbation schedule under DDP: every rank takes the same full/cheap decisions,
    cheap steps use the all-reduced gradient, the reuse vector is the same on every rank, and
    replicas stay bit-identical; with global perturbation it equals one process on the
    concatenated batch."""
    data = _global_batches(7, seed=13)
    schedule = xsam.PerturbationSchedule(every=2, prob=0.8, seed=3, reuse=0.5)
    lr = 0.1
    kw = dict(rho=0.3, lr=lr, alpha_every=2, schedule=schedule)
    ddp = nn.parallel.DistributedDataParallel(_net())
    opt = xsam.XSAM(ddp.parameters(), torch.optim.SGD, model=ddp, perturbation=perturbation, **kw)
    single = _net()
    ref = xsam.XSAM(single.parameters(), torch.optim.SGD, **kw)
    cheap = 0
    for x, y in data:
        xl, yl = _local(x, y, rank)
        full = opt.perturb_due
        if not full and opt.cheap_updates:  # the cheap step in closed form
            twin = _net()
            twin.load_state_dict(ddp.module.state_dict())
            F.cross_entropy(twin(xl), yl).backward()
            g = torch.cat([p.grad.reshape(-1) for p in twin.parameters()])
            dist.all_reduce(g)
            g /= WORLD
            v = torch.cat([opt.state[p]["sam_reuse"].reshape(-1) for p in ddp.parameters()])
            expected = _flat_params(ddp.module) - lr * (g + 0.5 * g.norm() * v)
        opt.step(_closure(ddp, xl, yl))
        ref.step(_closure(single, x, y))
        if not full and cheap:
            torch.testing.assert_close(_flat_params(ddp.module), expected, rtol=1e-10, atol=1e-12)
        cheap += not full
    assert opt.cheap_updates == cheap >= 2 and opt.step_index == len(data)
    if perturbation == "global":
        torch.testing.assert_close(
            _flat_params(ddp.module), _flat_params(single), rtol=1e-10, atol=1e-12
        )
    v = torch.cat([opt.state[p]["sam_reuse"].reshape(-1) for p in ddp.parameters()])
    for t in (_flat_params(ddp.module), v, torch.tensor([opt.alpha, opt.cheap_updates])):
        other = _gather(t.to(DT))
        assert torch.equal(other[0], other[1])


# ------------------------------------------------------------------------------ tests
SCENARIOS = {
    "global-xsam-k1": (_worker_global_equals_single, ("XSAM", 1)),
    "global-xsam-k2": (_worker_global_equals_single, ("XSAM", 2)),
    "global-sam-k2": (_worker_global_equals_single, ("SAM", 2)),
    "local-k1": (_worker_local_is_mean_of_rank_directions, (1,)),
    "local-k2": (_worker_local_is_mean_of_rank_directions, (2,)),
    "nonfinite-local": (_worker_nonfinite_on_one_rank, ("local",)),
    "nonfinite-global": (_worker_nonfinite_on_one_rank, ("global",)),
    "fsdp-global": (_worker_fsdp_global_equals_single, ()),
    "fsdp-schedule": (
        _worker_fsdp_global_equals_single,
        (xsam.PerturbationSchedule(every=3, reuse=0.5),),
    ),
    "unused-per-rank": (_worker_rank_dependent_unused, ((3, 3), 0.0)),
    "unused-per-rank-shapes": (_worker_rank_dependent_unused, ((3, 6), 0.9)),
    "schedule-local": (_worker_schedule, ("local",)),
    "schedule-global": (_worker_schedule, ("global",)),
}


def _all_scenarios(rank, out_dir):
    """Run every scenario in one pair of processes (spawning costs seconds); record each
    outcome so that the tests below report them one by one."""
    import json
    import traceback

    results = {}
    for name, (fn, args) in SCENARIOS.items():
        dist.barrier()
        try:
            fn(rank, *args)
            results[name] = ""
        except Exception:
            results[name] = traceback.format_exc()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump(results, fh)


def _spawn_scenarios() -> list[dict[str, str]] | None:
    """Every scenario's outcome per rank, or None when a process died before recording them
    (a port taken between choosing and binding it, an abort in gloo's start-up)."""
    import json

    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        files = [os.path.join(tmp, f"rank{r}.json") for r in range(WORLD)]
        try:
            mp.spawn(_entry, args=(_all_scenarios, port, tmp, (tmp,)), nprocs=WORLD, join=True)
        except mp.ProcessExitedException:
            # every outcome is in the files once both exist: an exit signal after that (gloo's
            # teardown) does not change what the scenarios measured
            if not all(os.path.exists(f) for f in files):
                return None
        return [json.load(open(f)) for f in files]


@pytest.fixture(scope="module")
def outcomes():
    """Run the scenarios; a process that dies before recording any outcome is an
    infrastructure failure, retried once on a new port (a failed scenario is recorded, not
    retried)."""
    for _ in range(2):
        found = _spawn_scenarios()
        if found is not None:
            return found
    pytest.fail("the two scenario processes died twice before recording their outcomes")


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_two_process_scenario(outcomes, name):
    """global-*: DDP global perturbation equals one process on the concatenated batch.
    local-*: DDP local perturbation equals the mean of per-rank XSAM directions (reference
    implementation) with α* from rank-averaged probe losses, though the ranks' own searches
    disagree. nonfinite-*: a NaN on one rank skips the update on both. fsdp-global: FSDP2
    (fully_shard) equals one process on the concatenated batch."""
    failures = [f"rank {r}:\n{o[name]}" for r, o in enumerate(outcomes) if o[name]]
    assert not failures, "\n".join(failures)


def test_perturbation_argument_validation():
    m = _net()
    with pytest.raises(ValueError, match="perturbation"):
        xsam.XSAM(m.parameters(), torch.optim.SGD, lr=0.1, perturbation="ring")
    with pytest.raises(ValueError, match="DistributedDataParallel"):
        xsam.XSAM(m.parameters(), torch.optim.SGD, lr=0.1, perturbation="local")


@pytest.mark.slow  # a torchrun launch (~10 s); the DDP contract itself: the two-process scenarios
def test_torchrun_cli_trains_and_resumes_on_two_processes(tmp_path):
    """`torchrun --nproc_per_node=2 -m xsam train`: rank 0 writes the run folder, the data is
    sharded per rank, and --resume continues on both ranks."""
    import json
    import subprocess

    out = tmp_path / "run"
    base = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        f"--master_port={_free_port()}", "-m", "xsam", "train",
        "--preset", "fmnist-sample-cnn", "--limit-train", "200", "--limit-test", "100",
        "--epochs", "2", "--batch-size", "50", "--threads", "1", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    first = subprocess.run(
        base + ["--stop-after", "1"], capture_output=True, text=True, env=env, timeout=240
    )
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.count("stopped after epoch 1") == 1  # only rank 0 speaks
    second = subprocess.run(
        base + ["--resume"], capture_output=True, text=True, env=env, timeout=240
    )
    assert second.returncode == 0, second.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert json.loads((out / "run.json").read_text())["processes"] == 2
    assert json.loads((out / "config.json").read_text())["perturbation"] == "local"
