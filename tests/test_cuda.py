"""CUDA-only checks (skipped without a GPU; ``benchmarks/gpu_check.sh`` runs them with
``-k cuda``): the optimizer's vector math on a GPU agrees with the same update on the CPU, the
accelerator branches of ``_vec`` (tensor coefficients, no host read) work, and a bf16-autocast,
channels_last ResNet step runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import xsam
from xsam.models import build_model
from xsam.optim._vec import add_scaled_, precise_sq_sums

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _update(device: str, cls: str, alpha: float | None = 0.5) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1).double().to(device)
    x = torch.randn(16, 1, 28, 28, dtype=torch.float64).to(device)
    y = torch.randint(0, 10, (16,)).to(device)
    kw = {"alpha": alpha} if cls == "XSAM" else {}
    opt = getattr(xsam, cls)(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, **kw)

    def closure():
        loss = F.cross_entropy(model(x), y)
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    return [p.detach().cpu() for p in model.parameters()]


@needs_cuda
@pytest.mark.parametrize(("cls", "alpha"), [("SAM", None), ("XSAM", 0.5), ("XSAM", 1.7)])
def test_cuda_update_matches_cpu(cls, alpha):
    cpu, gpu = _update("cpu", cls, alpha), _update("cuda", cls, alpha)
    for a, b in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@needs_cuda
def test_cuda_vec_helpers():
    xs = [torch.randn(70_000, device="cuda"), torch.randn(3, 5, device="cuda")]
    ref = sum(float((t.double() ** 2).sum()) for t in xs)
    got = float(precise_sq_sums([xs], torch.float32)[0])
    assert abs(got - ref) / ref < 1e-6
    ys = [torch.zeros_like(t) for t in xs]
    add_scaled_(ys, xs, torch.tensor(0.5, dtype=torch.float64, device="cuda"))
    for y, x in zip(ys, xs):
        torch.testing.assert_close(y, 0.5 * x)


@needs_cuda
def test_cuda_bf16_channels_last_resnet_step():
    model = build_model("resnet18", 10, 3).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 32, 32, device="cuda").to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,), device="cuda")
    opt = xsam.XSAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.05, model=model)

    def closure():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    for _ in range(2):
        opt.step(closure)
    assert opt.updates == 2 and opt.skipped_updates == 0
