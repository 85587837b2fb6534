"""The benchmark drivers (``benchmarks/*.sh``): every one parses, and the ρ sweep they share
(``benchmarks/_sweep.sh``) widens past the end of the list that won, and only then."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_every_driver_parses(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def _sweep(tmp_path: Path, call: str, chosen: float) -> str:
    (tmp_path / "tune.json").write_text(json.dumps({"chosen": {"rho": chosen}}))
    command = f"cd {ROOT} && PY={sys.executable} && source benchmarks/_sweep.sh && {call}"
    out = subprocess.run(["bash", "-c", command], check=True, capture_output=True, text=True)
    return out.stdout.strip()


@pytest.mark.parametrize(
    ("chosen", "grown"),
    [(0.2, "0.025,0.05,0.1,0.2,0.4"), (0.025, "0.0125,0.025,0.05,0.1,0.2"), (0.05, ""), (0.1, "")],
)
def test_the_sweep_widens_past_the_end_that_won(tmp_path, chosen, grown):
    assert _sweep(tmp_path, f"widen {tmp_path} 0.1,0.025,0.2,0.05", chosen) == grown
    assert _sweep(tmp_path, f"chosen {tmp_path}", chosen) == str(chosen)
