#!/usr/bin/env bash
# Accuracy of the SAM family on full Fashion-MNIST with the CPU-sized small CNN (issue 4).
#   sudo apt-get install -y dataset-fashion-mnist      # the full data set, offline
#   SEEDS=0,1,2 EPOCHS=5 benchmarks/run_fmnist.sh
# Resumable: rerun the same command and finished runs are skipped, stopped ones resumed.
# RHO=0.005 skips the sweep and uses that radius (the sweep's choice is committed in
# benchmarks/results/fmnist/sweep_val); THREADS sets torch's CPU threads per run.
# 1) a small ρ sweep for SAM (seed 0), trained on 50k images and judged on the 10k held out
#    (--val-size): the test set plays no part in the choice;
# 2) every method on all 60k training images with the ρ that sweep picked, ≥ 3 seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-0,1,2}
EPOCHS=${EPOCHS:-5}
OUT=${OUT:-runs/fmnist}
COMMON=(--preset fmnist-sample-cnn --dataset fashion-mnist --epochs "$EPOCHS" --quiet)
[ -n "${THREADS:-}" ] && COMMON+=(--threads "$THREADS")

if [ -z "${RHO:-}" ]; then
    $PY -m xsam compare "${COMMON[@]}" --seeds 0 --val-size 10000 --out "$OUT/sweep_val" \
        --optimizers "sam:rho=0.005 sam:rho=0.01 sam:rho=0.02 sam:rho=0.05"
    RHO=$($PY - "$OUT/sweep_val/results.json" <<'PYEOF'
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
best = max(rows, key=lambda r: r["final_val_acc"][0])  # ties: the first (smallest ρ)
print(best["label"].split("rho=")[1])
PYEOF
    )
    echo "rho chosen by the SAM sweep (final validation accuracy, seed 0): $RHO"
fi
$PY -m xsam compare "${COMMON[@]}" --seeds "$SEEDS" --out "$OUT/grid" --keep-checkpoints \
    --optimizers "sgd sam:rho=$RHO xsam:rho=$RHO sam:rho=$RHO,steps=3 xsam:rho=$RHO,steps=3 sam:rho=$RHO,adaptive=true xsam:rho=$RHO,adaptive=true"
# every run of every comparison folder also in its runs.jsonl (what is committed: benchmarks/README.md)
$PY benchmarks/consolidate_results.py "$OUT"
