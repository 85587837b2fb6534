"""benchmarks/gpu_check.sh in its CPU smoke mode (QUICK=1): the throughput comparison runs
and writes finite, positive numbers, so the GPU script cannot rot on machines without one."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_mode_writes_finite_positive_throughput(tmp_path):
    env = dict(os.environ, QUICK="1", PYTHON=sys.executable)
    subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke", "--out-dir", str(tmp_path)],
        check=True,
        env=env,
        timeout=120,
        capture_output=True,
    )
    res = json.loads((tmp_path / "throughput_cpu_smoke.json").read_text())
    assert set(res["rows"]) == {"sgd", "sam", "xsam", "xsam_every2", "xsam_every4"}
    for row in res["rows"].values():
        for key in ("images_per_s", "ratio_to_sgd"):
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
    assert res["cheap_updates"]["xsam_every2"] > 0 and res["cheap_updates"]["xsam"] == 0
    assert (tmp_path / "throughput_cpu_smoke.md").read_text().startswith("Throughput")
