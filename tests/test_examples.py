"""Every example in examples/ runs in its --smoke mode (a subprocess each, as a user would run
it), exits 0, and prints the numbers it promises: a finite final loss, and where the example
checks something (accumulation = whole batch, clipping bounds d, resume = uninterrupted,
replicas identical) that number too. Marked slow: `make test-slow` (and CI) runs them."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
pytestmark = pytest.mark.slow


def run(args: list[str], timeout: float = 300) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    proc = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def value(out: str, key: str) -> float:
    found = re.findall(rf"^{key}=(\S+)$", out, flags=re.M)
    assert found, f"no {key}= line in the output:\n{out}"
    return float(found[-1])


def example(name: str, *extra: str) -> str:
    return run([sys.executable, str(EXAMPLES / name), "--smoke", *extra])


def finite_loss(out: str) -> float:
    loss = value(out, "final_loss")
    assert math.isfinite(loss) and 0.0 <= loss < 5.0
    return loss


@pytest.mark.parametrize(
    "name",
    ["plain_loop.py", "bf16_cpu.py", "torch_compile.py", "lightning_module.py", "hf_trainer.py",
     "accelerate_loop.py", "finetune_minilm.py"],
)  # fmt: skip
def test_example_trains(name):
    out = example(name)
    finite_loss(out)
    if name == "bf16_cpu.py":  # bf16 needs no scaler: no GradScaler/autocast warning at all
        assert "Warning" not in out, out


def test_example_grad_accumulation_equals_whole_batch():
    out = example("grad_accumulation.py")
    finite_loss(out)
    assert value(out, "max_abs_diff") < 1e-5


def test_example_clipping_bounds_d():
    out = example("clipping.py", "--max-norm", "0.5")
    finite_loss(out)
    assert value(out, "max_d_norm") <= 0.5 * (1 + 1e-5)


def test_example_checkpoint_resume_is_exact():
    out = example("checkpoint_resume.py")
    finite_loss(out)
    assert value(out, "resume_max_abs_diff") == 0.0


def test_example_fp16_gradscaler():
    out = example("fp16_gradscaler_cuda.py")
    if torch.cuda.is_available():
        finite_loss(out)
    else:  # says so, exits 0, and trains nothing in float32 by accident
        assert "needs CUDA" in out and "final_loss" not in out


def test_example_ddp_torchrun_two_processes():
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    out = run([*torchrun, str(EXAMPLES / "ddp_torchrun.py"), "--smoke"])
    finite_loss(out)
    assert value(out, "replica_max_abs_diff") == 0.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_example_lightning_ddp_two_processes():
    """Lightning's own launcher starts the second process (strategy="ddp", 2 CPU devices)."""
    out = example("lightning_ddp.py", "--devices", "2")
    finite_loss(out)
    assert "2 processes, perturbation=local" in out
    assert value(out, "replica_max_abs_diff") == 0.0


def test_example_hf_trainer_ddp_torchrun_two_processes():
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                f"--master_port={_free_port()}"]  # fmt: skip
    out = run([*torchrun, str(EXAMPLES / "hf_trainer_ddp.py"), "--smoke"])
    finite_loss(out)
    assert "2 processes, perturbation=local" in out
    assert value(out, "replica_max_abs_diff") == 0.0
