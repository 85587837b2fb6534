#!/usr/bin/env bash
# Perturbation schedules on the label-noise benchmark (issue 13): how much of XSAM's gain over
# SGD a schedule keeps, and at what cost. Results and their reading: BENCHMARKS.md.
#   sudo apt-get install -y dataset-fashion-mnist      # the full data set, offline
#   benchmarks/run_schedules.sh                        # about 3 h on 2 CPU cores
# Resumable: rerun the same command and finished runs are skipped, stopped ones resumed.
#
# XSAM at rho = 0.1, the radius its validation sweep chose on this benchmark (run_noise.sh).
# 1) LookSAM's lambda for every=4, chosen on the noisy validation split (seed 0): 0, 0.5, 1, 2.
# 2) SGD, XSAM and the schedules, seeds 0-4, paired (a seed gives every variant the same
#    initialisation, data order and prob draws); the grid folders are joined in compare.json.
# 3) the interleaved per-update cost of SGD / SAM / XSAM / cheap / cheap+reuse steps (schedule_cost.py)
# 4) the table with paired intervals and the Pareto plot (schedule_tradeoff.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/schedules}
COMMON=(--preset fmnist-noise-mlp --quiet --threads 1 --jobs "${JOBS:-1}")
X="xsam:rho=0.1"
$PY -m xsam compare "${COMMON[@]}" --seeds 0 --out "$OUT/lambda" --optimizers \
  "$X,perturb_every=4,$X,perturb_every=4,perturb_reuse=0.5,$X,perturb_every=4,perturb_reuse=1,$X,perturb_every=4,perturb_reuse=2"
$PY -m xsam compare "${COMMON[@]}" --seeds 0-4 --out "$OUT/grid" --optimizers \
  "sgd,$X,$X,perturb_every=4,$X,perturb_every=8,$X,perturb_start=0.75"
$PY -m xsam compare "${COMMON[@]}" --seeds 0-4 --out "$OUT/grid2" --optimizers \
  "$X,perturb_every=4,perturb_reuse=0.5,$X,perturb_every=8,perturb_reuse=0.5,$X,perturb_every=2,perturb_reuse=0.5"
$PY -m xsam compare "${COMMON[@]}" --seeds 0-4 --out "$OUT/grid3" --optimizers "$X,perturb_prob=0.25"
$PY -m xsam compare "${COMMON[@]}" --seeds 0-4 --out "$OUT/grid4" --optimizers \
  "$X,perturb_start=0.5,$X,perturb_prob=0.5"
# SAM (rho 0.2, its validation-chosen radius) and LookSAM proper (SAM with reuse), lambda as above
S="sam:rho=0.2"
$PY -m xsam compare "${COMMON[@]}" --seeds 0-4 --out "$OUT/grid5" --optimizers \
  "$S,$S,perturb_every=4,perturb_reuse=0.5"
$PY -m xsam compare "${COMMON[@]}" --seeds 0-4 --out "$OUT/grid6" --optimizers \
  "$S,perturb_every=8,perturb_reuse=0.5"
$PY - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = []
for part in ("grid", "grid2", "grid3", "grid4", "grid5", "grid6"):
    for r in json.loads((out / part / "compare.json").read_text())["runs"]:
        runs.append({**r, "dir": f"{part}/{r['dir']}"})
(out / "compare.json").write_text(json.dumps({"runs": runs}, indent=1) + "\n")
PYEOF
for i in 1 2 3; do  # three measurements on a quiet machine, their rounds pooled
  $PY benchmarks/schedule_cost.py --threads 1 --rounds 150 --json "$OUT/cost_$i.json"
done
$PY benchmarks/schedule_cost.py --pool "$OUT"/cost_{1,2,3}.json --json "$OUT/cost.json"
$PY benchmarks/schedule_tradeoff.py "$OUT" --sgd sgd --full "$X" --cost "$OUT/cost.json"
# every run of every comparison folder also in its runs.jsonl (what is committed: benchmarks/README.md)
$PY benchmarks/consolidate_results.py "$OUT"
