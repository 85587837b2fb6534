"""The frameworks under 2 CPU processes (gloo), started by their real launchers: Lightning's
own (``strategy="ddp"``, which re-runs the script for rank 1, and ``"ddp_spawn"``), ``torchrun``
for the Hugging Face Trainer, Accelerate's ``notebook_launcher``.

Each driver in tests/frameworks_ddp/ trains the runs of ``common.RUNS`` (SAM and XSAM, local
and global perturbation, accumulation 1 and 2) and saves every rank's weights. Asserted here:
the ranks' weights are bit-identical, and equal (float64, 1e-10) to the hand-driven reference of
the chosen mode (common.reference: global = one process on the concatenated batch; local =
each rank's own direction from its own shard, averaged, α* from rank-averaged probe losses).
Each framework's loss scaling is first measured against its own plain SGD run (a step of the
plain run divided by the step of a hand-driven mean-loss SGD), and the reference uses that
scale. Slow (``make test-slow``): each driver costs tens of seconds on 2 cores.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "frameworks_ddp"))
import common  # noqa: E402

import xsam  # noqa: E402

DRIVERS = HERE / "frameworks_ddp"
TOL = dict(rtol=1e-10, atol=1e-12)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(cmd: list[str], out: Path, timeout: float = 600) -> None:
    """Run a driver (twice at most: a port taken between choosing and binding it, or gloo
    aborting at start-up, is not what the test measures)."""
    last = None
    for _ in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}  # fmt: skip
        last = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if last.returncode == 0:
            return
    raise AssertionError(
        f"{cmd} exited {last.returncode}\n{last.stdout[-3000:]}\n{last.stderr[-6000:]}"
    )


def _ranks(out: Path, name: str) -> list[dict]:
    return [torch.load(out / f"{name}.rank{r}.pt") for r in range(common.WORLD)]


def _identical(results: list[dict]) -> torch.Tensor:
    first = results[0]["flat"]
    for other in results[1:]:
        assert torch.equal(other["flat"], first), "the replicas differ"
    return first


def _scale(out: Path, name: str, accum: int, steps: int) -> float:
    """The framework's loss scale: its plain SGD step over the hand-driven mean-loss step,
    checked to be a scalar multiple of it."""
    theta0 = common.flat(common.net())
    mine = _identical(_ranks(out, name)) - theta0
    ref = common.plain_reference(accum, steps=steps) - theta0
    c = float(mine @ ref / (ref @ ref))
    torch.testing.assert_close(mine, c * ref, **TOL)
    return c


RUN_NAMES = [f"{k}-{m}-a{a}" for k, m, a in common.RUNS]


# ------------------------------------------------------------------------------ Lightning
@pytest.fixture(scope="module")
def lightning_ddp(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lightning_ddp")
    _launch([sys.executable, str(DRIVERS / "lightning_run.py"), str(out)], out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("accum", [1, 2])
def test_lightning_plain_run_scale_is_one(lightning_ddp, accum):
    """Lightning divides each micro-batch's loss by accumulate_grad_batches and DDP averages:
    the plain step is the global mean-loss step."""
    assert _scale(lightning_ddp, f"plain-a{accum}", accum, common.STEPS) == pytest.approx(1.0)


@pytest.mark.slow
@pytest.mark.parametrize("name", RUN_NAMES)
def test_lightning_ddp_matches_reference(lightning_ddp, name):
    kind, mode, accum = name.split("-")
    got = _identical(_ranks(lightning_ddp, name))
    torch.testing.assert_close(got, common.reference(kind, mode, int(accum[1:])), **TOL)


@pytest.mark.slow
def test_lightning_ddp_modes_differ(lightning_ddp):
    """The two modes are different algorithms here: the test above can tell them apart."""
    local = _identical(_ranks(lightning_ddp, "xsam-local-a2"))
    assert float((local - common.reference("xsam", "global", 2)).abs().max()) > 1e-3


@pytest.mark.slow
def test_lightning_ddp_clipping_on_d(lightning_ddp):
    """gradient_clip_val clips the averaged d (local XSAM, accumulation 2), as the reference."""
    runs = _ranks(lightning_ddp, "xsam-local-a2-clip")
    got = _identical(runs)
    torch.testing.assert_close(got, common.reference("xsam", "local", 2, clip=0.05), **TOL)
    assert runs[0]["d_norm"] == pytest.approx(0.05, rel=1e-5)  # the clip was active


@pytest.mark.slow
def test_lightning_ddp_schedule(lightning_ddp):
    """A perturbation schedule (every 2nd update full): cheap steps use the averaged clean
    gradient."""
    got = _identical(_ranks(lightning_ddp, "sam-local-a1-schedule"))
    ref = common.reference("sam", "local", 1, schedule=xsam.PerturbationSchedule(every=2))
    torch.testing.assert_close(got, ref, **TOL)


@pytest.mark.slow
def test_lightning_ddp_bf16_mixed(lightning_ddp):
    """bf16-mixed (float32 weights, bf16 autocast), clipped: replicas bit-identical and within
    bf16 rounding of the float64 reference."""
    got = _identical(_ranks(lightning_ddp, "sam-local-a2-bf16")).double()
    ref = common.reference("sam", "local", 2, clip=0.05)
    assert float((got - ref).abs().max()) < 1e-3 * float(ref.abs().max())


@pytest.mark.slow
def test_lightning_ddp_resume_is_exact(lightning_ddp):
    """Stopped after epoch 1, saved with trainer.save_checkpoint, resumed with ckpt_path by a
    fresh Trainer: bit-identical to the uninterrupted run (XSAM's α schedule crosses the
    boundary)."""
    whole = _identical(_ranks(lightning_ddp, "resume-whole"))
    assert torch.equal(_identical(_ranks(lightning_ddp, "resume-rest")), whole)
    assert not torch.equal(_identical(_ranks(lightning_ddp, "resume-first")), whole)


@pytest.mark.slow
def test_lightning_ddp_spawn_matches_reference(tmp_path):
    out = tmp_path
    cmd = [sys.executable, str(DRIVERS / "lightning_run.py"), str(out), "--strategy",
           "ddp_spawn", "--only", "xsam-local-a2"]  # fmt: skip
    _launch(cmd, out)
    got = _identical(_ranks(out, "xsam-local-a2"))
    torch.testing.assert_close(got, common.reference("xsam", "local", 2), **TOL)


# ------------------------------------------------------------------------------ HF Trainer
@pytest.fixture(scope="module")
def hf_torchrun(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf_torchrun")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={common.WORLD}",
           f"--master_port={_free_port()}", str(DRIVERS / "hf_run.py"), str(out)]  # fmt: skip
    _launch(cmd, out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("accum", [1, 2])
def test_hf_trainer_plain_run_scale(hf_torchrun, accum):
    """Measured, not assumed: for a model whose forward takes **kwargs and ignores
    num_items_in_batch, the plain Trainer's step under 2 processes is processes x accumulation
    times the global mean-loss step (it multiplies the loss by the process count and, loss
    kwargs accepted, does not divide by the accumulation steps)."""
    c = _scale(hf_torchrun, f"plain-a{accum}", accum, 1)
    assert c == pytest.approx(common.WORLD * accum, rel=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("name", RUN_NAMES)
def test_hf_trainer_torchrun_matches_reference(hf_torchrun, name):
    """SAMTrainer under torchrun, with the Trainer's own loss scaling (measured above): equal to
    the reference of the chosen mode on the loss scaled the same way."""
    kind, mode, accum = name.split("-")
    a = int(accum[1:])
    c = _scale(hf_torchrun, f"plain-a{a}", a, 1)
    got = _identical(_ranks(hf_torchrun, name))
    torch.testing.assert_close(got, common.reference(kind, mode, a, scale=c), **TOL)


@pytest.mark.slow
def test_hf_trainer_num_items_model(hf_torchrun):
    """A model that divides its summed loss by num_items_in_batch: the plain step is the global
    mean-loss step (scale 1), and local XSAM with accumulation 2 matches its reference."""
    c = _scale(hf_torchrun, "plain-items-a2", 2, 1)
    assert c == pytest.approx(1.0, rel=1e-9)
    got = _identical(_ranks(hf_torchrun, "xsam-local-a2-items"))
    torch.testing.assert_close(got, common.reference("xsam", "local", 2), **TOL)


# ------------------------------------------------------------------------------ Accelerate
@pytest.fixture(scope="module")
def accelerate_launched(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("accelerate")
    cmd = [sys.executable, str(DRIVERS / "accelerate_run.py"), str(out), str(_free_port())]
    _launch(cmd, out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("accum", [1, 2])
def test_accelerate_plain_run_scale_is_one(accelerate_launched, accum):
    assert _scale(accelerate_launched, f"plain-a{accum}", accum, 1) == pytest.approx(1.0)


@pytest.mark.slow
@pytest.mark.parametrize("name", RUN_NAMES)
def test_accelerate_matches_reference(accelerate_launched, name):
    kind, mode, accum = name.split("-")
    got = _identical(_ranks(accelerate_launched, name))
    torch.testing.assert_close(got, common.reference(kind, mode, int(accum[1:])), **TOL)


# ------------------------------------------------------------------------------ fast checks
def test_reference_global_equals_single_process_xsam():
    """The hand-driven reference, global mode, is one process on the concatenated batch: it
    equals xsam's own single-process update (so the reference is trusted for the tests above)."""
    import torch.nn.functional as F

    for kind in ("sam", "xsam"):
        model = common.net()
        opt = common.make_opt(kind, model.parameters())
        for s in range(common.STEPS):
            window = sum((common.micro_batches(r, 2)[2 * s : 2 * s + 2] for r in range(2)), [])
            x, y = torch.cat([b[0] for b in window]), torch.cat([b[1] for b in window])

            def closure(x=x, y=y, model=model):
                loss = F.cross_entropy(model(x), y)
                if torch.is_grad_enabled():
                    loss.backward()
                return loss

            opt.step(closure)
        torch.testing.assert_close(common.flat(model), common.reference(kind, "global", 2),
                                   rtol=1e-10, atol=1e-11)  # fmt: skip


def test_attach_refuses_bad_input():
    model = common.net()
    opt = common.make_opt("xsam", model.parameters())
    with pytest.raises(TypeError, match="torch.nn.Module"):
        opt.attach("model")
    with pytest.raises(ValueError, match="every parameter"):
        opt.attach(torch.nn.Linear(5, 3))
    with pytest.raises(ValueError, match="DistributedDataParallel"):  # nothing to perturb locally
        opt.attach(model, "local")
    opt.attach(model)  # one process, plain module: as model= at construction
    assert opt.model is model and opt.perturbation == "global"


def test_attach_refused_mid_update():
    import torch.nn.functional as F

    model = common.net()
    opt = common.make_opt("sam", model.parameters(), model=model)
    x, y = common.micro_batches(0, 1)[0]
    with opt.clean_pass():
        F.cross_entropy(model(x), y).backward()
    opt.ascent_step()
    with pytest.raises(RuntimeError, match="middle of an update"):
        opt.attach(model)
    opt.abort_update()


def test_fsdp1_wrapper_refused(tmp_path):
    """FSDP1 (FullyShardedDataParallel) flattens parameters: refused, naming FSDP2 and DDP
    (one gloo process, file:// rendezvous)."""
    import warnings

    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdv'}", rank=0,
                            world_size=1)  # fmt: skip
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NO_SHARD with one process
            wrapper = FullyShardedDataParallel(common.net(), device_id=torch.device("cpu"))
        opt = common.make_opt("xsam", wrapper.parameters())
        with pytest.raises(ValueError, match="FSDP1.*fully_shard"):
            opt.attach(wrapper)
    finally:
        del wrapper
        dist.destroy_process_group()


def test_attach_fsdp2_is_global_only(tmp_path):
    """A model sharded by FSDP2 (fully_shard; one gloo process, file:// rendezvous): attach()
    resolves global perturbation, and refuses local with the reason."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdv'}", rank=0,
                            world_size=1)  # fmt: skip
    model = opt = None
    try:
        model = common.net()
        fully_shard(model)
        opt = common.make_opt("xsam", model.parameters())
        opt.attach(model)
        assert opt.perturbation == "global" and opt.model is model
        with pytest.raises(ValueError, match="local.*not possible with FSDP"):
            opt.attach(model, "local")
    finally:
        del model, opt
        dist.destroy_process_group()


def test_lightning_refuses_non_ddp_strategies_with_several_processes():
    """Lightning's FSDP strategy (FSDP1, GPU only in Lightning) and any strategy whose model is
    not DDP-wrapped: refused at the start of fit with what to use instead."""
    import types

    pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.strategies import FSDPStrategy

    sys.path.insert(0, str(DRIVERS))
    from lightning_run import Sharp

    module = Sharp("x", "/nonexistent", 1, "xsam", "local")
    strategy = FSDPStrategy()
    strategy.model = module
    module._trainer = types.SimpleNamespace(strategy=strategy, world_size=2)
    with pytest.raises(RuntimeError, match="FSDPStrategy strategy is not supported.*ddp"):
        module.on_fit_start()


def test_perturbation_settings_checked_in_one_process_too(tmp_path):
    """Each integration's perturbation setting is checked even where it is unused (one
    process); SAMTrainer takes it from sam_kwargs too (the optimizer is built before the model
    is wrapped, so it cannot take it itself), and refuses two that disagree."""
    import types

    pytest.importorskip("transformers")
    import transformers

    sys.path.insert(0, str(DRIVERS))
    from lightning_run import Sharp

    from xsam.integrations.transformers import SAMTrainer

    module = Sharp("x", "/nonexistent", 1, "xsam", "ring")
    module._trainer = types.SimpleNamespace(world_size=1)
    with pytest.raises(ValueError, match="sam_perturbation: perturbation must be.*'ring'"):
        module.on_fit_start()

    from hf_run import Classifier

    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match="SAMTrainer: perturbation must be"):
        SAMTrainer(model=Classifier(), args=args, sam="xsam", perturbation="ring")
    with pytest.raises(ValueError, match="disagree"):
        SAMTrainer(model=Classifier(), args=args, sam="xsam", perturbation="local",
                   sam_kwargs={"perturbation": "global"})  # fmt: skip
    trainer = SAMTrainer(model=Classifier(), args=args, sam="xsam",
                         sam_kwargs={"rho": 0.1, "perturbation": "global"})  # fmt: skip
    trainer.create_optimizer()  # builds XSAM on the unwrapped model: no perturbation there
    assert trainer._sam_perturbation == "global" and trainer.sam_optimizer.perturbation == "global"


def test_sam_update_checks_perturbation():
    accelerate = pytest.importorskip("accelerate")
    from xsam.integrations.accelerate import sam_update

    model = common.net()
    acc = accelerate.Accelerator(cpu=True)
    opt = acc.prepare(common.make_opt("sam", model.parameters()))
    with pytest.raises(ValueError, match="sam_update: perturbation must be"):
        sam_update(acc, opt, [common.micro_batches(0, 1)[0]], lambda b: model(b[0]).sum(),
                   perturbation="both")  # fmt: skip


def test_constructor_names_the_integrations_settings():
    """perturbation= at construction needs the DDP module; the message says where a framework
    user sets the mode instead."""
    model = common.net()
    with pytest.raises(ValueError, match="DistributedDataParallel.*SAMTrainer\\(perturbation=\\)"):
        xsam.XSAM(model.parameters(), torch.optim.SGD, lr=0.1, model=model, perturbation="global")
