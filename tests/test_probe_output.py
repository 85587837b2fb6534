"""What `xsam probe` prints: every k's cosines and α*, the sharpness numbers, and every file
it wrote."""

from __future__ import annotations

import functools
import json

import pytest

from xsam.train import TrainConfig, train
from xsam.train.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("probe-out") / "run"
    cfg = TrainConfig(model="mlp", width=32, depth=1, limit_train=100, limit_test=50, epochs=1,
                      batch_size=50, keep_checkpoints=True, threads=1, out=str(out))  # fmt: skip
    train(cfg)
    return out


def test_probe_prints_every_k_the_sharpness_and_every_file(run_dir, tmp_path, capsys, monkeypatch):
    import xsam.analysis.runs as runs_mod

    # coarse grids: the printing is under test, not the probe
    for name, kw in (("plane_landscape", {"resolution": 3}), ("probe_directions", {"n_plane": 8})):
        monkeypatch.setattr(runs_mod, name, functools.partial(getattr(runs_mod, name), **kw))
    argv = ["probe", str(run_dir), "--k", "2", "--sharpness", "--landscape", "--examples", "10",
            "--starts", "1", "--iters", "1", "--threads", "1", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    (rec,) = [json.loads(s) for s in (tmp_path / "probe.jsonl").read_text().splitlines()]
    cos = rec["probe"]["cos"]
    for name in ("g0", "g1", "g2", "xsam1", "xsam2"):
        assert f"{name} {cos[name]:.3f}" in out, name
    alphas = ", ".join(f"{s['alpha_star']:g}" for s in rec["probe"]["xsam"])
    assert f"α* per k: {alphas};" in out
    assert f"λ_max {rec['hessian']['eigenvalue']:.4g}" in out
    assert f"increase in the ρ = {rec['worst_case']['rho']:g} ball" in out
    assert f"{rec['worst_case']['increase']:.4g}" in out
    last = out.strip().splitlines()[-1]
    assert last == (
        f"probed 1 checkpoint(s); wrote in {tmp_path}: probe.jsonl, cosines.png, plane.json, "
        "plane.png"
    )
    # a second probe without the landscape does not claim the plane files it left alone
    assert main(argv[:4] + argv[6:]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.endswith(f"wrote in {tmp_path}: probe.jsonl, cosines.png")
